// fake_cuda.cpp: a stand-in for libcuda.so, at least as strict as a real driver, whose
// "device" is the host shim (kernels/shim/shim_main.cpp). A test double: built only by
// the tests (tests/support/cuda: build_fake_driver), never part of the product library.
//
// What it enforces (docs/cuda.md lists it with what it cannot model):
// - Asynchrony. Work queued on a stream never runs inside the call that queued it. It
//   runs on the stream's own worker thread, and only once something needs it: a
//   synchronising call (cuStreamSynchronize, cuCtxSynchronize, cuEventSynchronize, a
//   synchronous cuMemcpyDtoH, cuMemFree), a query (cuStreamQuery/cuEventQuery answer
//   CUDA_ERROR_NOT_READY first and start the work), or work that depends on it. So an
//   operation with a missing dependency runs before the work it should have waited for
//   (the order that exposes the bug). Work nobody asks for still runs after 5 s.
// - Stream order: in-stream FIFO; the legacy default stream (0, CU_STREAM_LEGACY) and
//   every blocking stream (flags 0, and the per-thread default streams) order each
//   other, non-blocking streams order with nothing; CU_STREAM_PER_THREAD is one stream
//   per thread and context; events and cuStreamWaitEvent add cross-stream edges.
// - Copies: cuMemcpyHtoD from pageable memory stages the source and returns before the
//   copy lands (ordered on the legacy stream); cuMemcpyDtoH returns once it has landed;
//   the *Async copies read/write the host buffer when they run, not when queued.
// - Kernel parameters are copied at cuLaunchKernel (sizes from the shim's signature
//   table, as a driver reads them from the cubin).
// - Contexts: a per-thread context stack (Push/Pop/Set/GetCurrent), two devices, primary
//   contexts (retain/release; the last release destroys it) and cuCtxCreate contexts.
//   Calls that need a context fail with CUDA_ERROR_INVALID_CONTEXT without one, and
//   streams, modules and functions must be used in their own context.
// - Memory: every allocation belongs to a context. cuPointerGetAttribute(s) report
//   memory type, context and device ordinal. A kernel or copy that touches memory of
//   another context (or device), or a pointer that is no live allocation, faults: the
//   context gets the sticky CUDA_ERROR_ILLEGAL_ADDRESS, pending work is dropped, and
//   every later call in that context fails with it (as on a GPU).
// - Stream capture (cuStreamBeginCapture_v2 .. cuGraphLaunch): captured work is
//   recorded with its parameters as of capture; synchronising or otherwise illegal
//   calls during a capture fail with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (or
//   _IMPLICIT for legacy-stream work next to a capturing blocking stream) and
//   invalidate it (cuStreamEndCapture then says CUDA_ERROR_STREAM_CAPTURE_INVALIDATED).
//   Host memory is all pageable here, so host<->device copies cannot be captured.
// - Fault injection, per calling thread: fake_cuda_fail_next(name, skip, count, result)
//   makes the next `count` calls of driver function `name` (after `skip` more) return
//   `result`; fake_cuda_fault_next_launch() makes the next kernel this thread launches
//   fault with a sticky CUDA_ERROR_ILLEGAL_ADDRESS when it runs.
// Every violation is also printed to stderr ("fake libcuda: ...").
// Counters per calling thread (fake_cuda_thread_count("sync" | "d2h" | "h2d")) let a
// test prove a call made no synchronisation or copy (tests/fake_nccl.rs).
// fake_cuda_enqueue(stream, fn, arg, eager) queues host work on a stream (fake NCCL).
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

extern "C" int gacc_shim_launch(const char* name, unsigned grid, unsigned block, unsigned shared_bytes, void** args,
                                unsigned n_args, char* err, size_t err_len);
extern "C" int gacc_shim_arity(const char* name);
extern "C" unsigned gacc_shim_param(const char* name, unsigned i, int* pointer);

namespace {
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
const CUresult OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, INVALID_DEVICE = 101,
               INVALID_IMAGE = 200, INVALID_CONTEXT = 201, INVALID_HANDLE = 400, ILLEGAL_STATE = 401,
               NOT_FOUND = 500, NOT_READY = 600, ILLEGAL_ADDRESS = 700, LAUNCH_FAILED = 719,
               CAPTURE_UNSUPPORTED = 900, CAPTURE_INVALIDATED = 901, CAPTURE_ISOLATION = 905,
               CAPTURE_IMPLICIT = 906, CAPTURE_WRONG_THREAD = 908;
const int kDevices = 2;
const unsigned long long kMemory = 2ull << 30;
const auto kGrace = std::chrono::seconds(5);
void* const kLegacy = (void*)0x1;
void* const kPerThread = (void*)0x2;

struct Ctx;
struct Stream;

struct Op {
    std::string what;  // for FAKE_CUDA_TRACE
    std::function<void()> run;  // checks and does the work; runs on the stream's worker
    std::vector<std::shared_ptr<Op>> deps;
    Ctx* ctx = nullptr;
    bool done = false, demanded = false;
    std::chrono::steady_clock::time_point queued = std::chrono::steady_clock::now();
};
typedef std::shared_ptr<Op> OpP;

struct Graph {
    std::vector<std::function<void()>> nodes;
};

struct Stream {
    Ctx* ctx;
    bool blocking;  // orders with the legacy stream
    bool legacy = false;
    std::deque<OpP> queue;  // not yet done, in order
    OpP last;
    std::thread worker;
    bool stop = false;
    int capture = 0;  // 0 none, 1 active, 2 invalidated
    int capture_mode = 0;
    std::thread::id capture_thread;
    unsigned long long capture_id = 0;
    Graph* graph = nullptr;
};

struct Ctx {
    int device;
    bool primary;
    int refs = 1;
    bool destroyed = false;
    CUresult sticky = OK;
    Stream* legacy = nullptr;
    std::map<std::thread::id, Stream*> per_thread;
    std::set<Stream*> streams;  // every stream of the context, legacy included
};

struct Alloc {
    size_t bytes;
    Ctx* ctx;
};
struct Module {
    std::string image;
    Ctx* ctx;
};
struct Function {
    std::string name;
    Module* module;
    unsigned arity;
};
struct Event {
    Ctx* ctx;
    OpP op;  // the work the event completes after (null: complete)
    unsigned long long capture_id = 0;  // recorded inside that capture
};

// One lock for all driver state; workers wait on `cv`. Work runs without the lock.
// Never destroyed: stream workers may still wait on them while the process exits.
std::mutex& lock = *new std::mutex;
std::condition_variable& cv = *new std::condition_variable;
bool initialised = false;
std::map<CUdeviceptr, Alloc>& allocations = *new std::map<CUdeviceptr, Alloc>;
unsigned long long used[kDevices] = {0, 0};
Ctx* primary[kDevices] = {nullptr, nullptr};
std::set<Ctx*>& live_contexts = *new std::set<Ctx*>;
std::set<Stream*>& live_streams = *new std::set<Stream*>;
std::set<Function*>& live_functions = *new std::set<Function*>;
std::set<Module*>& live_modules = *new std::set<Module*>;
std::set<Event*>& live_events = *new std::set<Event*>;
std::set<Graph*>& live_graphs = *new std::set<Graph*>;
const bool trace = std::getenv("FAKE_CUDA_TRACE") != nullptr;
unsigned long long next_capture_id = 1;
thread_local std::vector<Ctx*> ctx_stack;
thread_local unsigned long long count_sync = 0, count_d2h = 0, count_h2d = 0;
struct Injection {
    int skip, count;
    CUresult result;
};
thread_local std::map<std::string, Injection> injections;
thread_local bool fault_next_launch = false;

void complain(const std::string& msg) { std::fprintf(stderr, "fake libcuda: %s\n", msg.c_str()); }

bool injected(const char* name, CUresult* r) {
    auto it = injections.find(name);
    if (it == injections.end()) return false;
    if (it->second.skip > 0) {
        it->second.skip--;
        return false;
    }
    if (it->second.count <= 0) return false;
    it->second.count--;
    *r = it->second.result;
    complain(std::string("injected failure of ") + name);
    return true;
}
#define INJECT(name)                        \
    do {                                    \
        CUresult injected_r;                \
        if (injected(name, &injected_r)) return injected_r; \
    } while (0)

const Alloc* find_alloc(CUdeviceptr p, CUdeviceptr* base = nullptr) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return nullptr;
    --it;
    if (p >= it->first && p < it->first + (it->second.bytes ? it->second.bytes : 1)) {
        if (base) *base = it->first;
        return &it->second;
    }
    return nullptr;
}

// Whether [p, p+bytes) is memory of `ctx`; otherwise makes ctx's error sticky. Under `lock`.
bool touch(Ctx* ctx, CUdeviceptr p, size_t bytes, const std::string& what) {
    CUdeviceptr base = 0;
    const Alloc* a = find_alloc(p, &base);
    std::string why;
    if (!a) {
        why = "is no live allocation";
    } else if (a->ctx != ctx) {
        why = "is memory of device " + std::to_string(a->ctx->device) + " in another context";
    } else if (p + bytes > base + a->bytes) {
        why = "runs past the end of its allocation";
    } else {
        return true;
    }
    char addr[32];
    std::snprintf(addr, sizeof addr, "%#llx", p);
    complain(what + ": address " + addr + " " + why + " (device " + std::to_string(ctx->device) +
             "): CUDA_ERROR_ILLEGAL_ADDRESS, sticky for the context");
    ctx->sticky = ILLEGAL_ADDRESS;
    return false;
}

Ctx* current() {
    if (ctx_stack.empty()) return nullptr;
    Ctx* c = ctx_stack.back();
    return c && !c->destroyed ? c : nullptr;
}

// The current context, or an error: INVALID_CONTEXT without one, its sticky error.
CUresult need_ctx(Ctx** out) {
    Ctx* c = current();
    if (!c) return INVALID_CONTEXT;
    if (c->sticky) return c->sticky;
    *out = c;
    return OK;
}

void worker_loop(Stream* s);
void demand(const OpP& root);

Stream* new_stream(Ctx* ctx, bool blocking) {
    Stream* s = new Stream{};
    s->ctx = ctx;
    s->blocking = blocking;
    ctx->streams.insert(s);
    live_streams.insert(s);
    s->worker = std::thread(worker_loop, s);
    return s;
}

Ctx* new_ctx(int device, bool is_primary) {
    Ctx* c = new Ctx{};
    c->device = device;
    c->primary = is_primary;
    c->legacy = new_stream(c, true);
    c->legacy->legacy = true;
    live_contexts.insert(c);
    return c;
}

// Resolves a stream handle (0/CU_STREAM_LEGACY, CU_STREAM_PER_THREAD, or created) to
// a stream of the current context. Under `lock`.
CUresult resolve(void* h, Stream** out) {
    if (h == nullptr || h == kLegacy || h == kPerThread) {
        Ctx* c = nullptr;
        CUresult r = need_ctx(&c);
        if (r) return r;
        if (h == kPerThread) {
            Stream*& s = c->per_thread[std::this_thread::get_id()];
            if (!s) s = new_stream(c, true);
            *out = s;
        } else {
            *out = c->legacy;
        }
        return OK;
    }
    Stream* s = static_cast<Stream*>(h);
    if (!live_streams.count(s)) return INVALID_HANDLE;
    if (s->ctx->destroyed) return INVALID_CONTEXT;
    if (s->ctx->sticky) return s->ctx->sticky;
    *out = s;
    return OK;
}

// Whether a capture forbids a potentially unsafe call (allocation, synchronisation)
// made by this thread now; invalidates the captures concerned. Under `lock`.
bool capture_forbids(const char* what) {
    bool forbid = false;
    for (Stream* s : live_streams) {
        if (s->capture == 1 && (s->capture_mode == 0 || (s->capture_mode == 1 &&
                                                         s->capture_thread == std::this_thread::get_id()))) {
            s->capture = 2;
            forbid = true;
        }
    }
    if (forbid) complain(std::string(what) + " during a stream capture: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED");
    return forbid;
}

void finish(const OpP& op) {
    op->done = true;
    op->run = nullptr;
    op->deps.clear();
}

// Queues `run` on `s` (or records it into s's capture). Under `lock`.
CUresult enqueue(Stream* s, std::function<void()> run, bool eager = false, const char* what = "") {
    if (s->capture == 2) return CAPTURE_INVALIDATED;
    if (s->capture == 1) {
        s->graph->nodes.push_back(std::move(run));
        return OK;
    }
    Ctx* c = s->ctx;
    if (s->legacy) {
        // Legacy-stream work next to a capturing blocking stream: the implicit
        // dependency cannot be captured.
        bool implicit = false;
        for (Stream* o : c->streams) {
            if (o != s && o->blocking && o->capture == 1) {
                o->capture = 2;
                implicit = true;
            }
        }
        if (implicit) {
            complain("legacy-stream work while a blocking stream captures: CUDA_ERROR_STREAM_CAPTURE_IMPLICIT");
            return CAPTURE_IMPLICIT;
        }
    }
    OpP op = std::make_shared<Op>();
    op->what = what;
    op->run = std::move(run);
    op->ctx = c;
    if (s->last && !s->last->done) op->deps.push_back(s->last);
    if (s->legacy) {
        for (Stream* o : c->streams) {
            if (o != s && o->blocking && o->last && !o->last->done) op->deps.push_back(o->last);
        }
    } else if (s->blocking && c->legacy->last && !c->legacy->last->done) {
        op->deps.push_back(c->legacy->last);
    }
    if (trace) {
        std::fprintf(stderr, "fake libcuda trace: queue %s on %p%s, %zu deps\n", what, (void*)s,
                     s->legacy ? " (legacy)" : s->blocking ? " (blocking)" : "", op->deps.size());
    }
    s->last = op;
    s->queue.push_back(op);
    if (eager) demand(op);
    cv.notify_all();
    return OK;
}

// Marks `root` and the pending work it depends on as needed now.
void demand(const OpP& root) {
    std::vector<Op*> todo{root.get()};
    while (!todo.empty()) {
        Op* op = todo.back();
        todo.pop_back();
        if (op->done || (op->demanded && op != root.get())) continue;
        op->demanded = true;
        for (auto& d : op->deps) todo.push_back(d.get());
    }
    cv.notify_all();
}

// Waits until `op` (and so everything it depends on) is done. Under `lock` (held by lk).
void wait_for(std::unique_lock<std::mutex>& lk, const OpP& op) {
    if (!op || op->done) return;
    demand(op);
    cv.wait(lk, [&] { return op->done; });
}

void worker_loop(Stream* s) {
    std::unique_lock<std::mutex> lk(lock);
    for (;;) {
        if (s->stop && s->queue.empty()) return;
        if (s->queue.empty()) {
            cv.wait(lk);
            continue;
        }
        OpP op = s->queue.front();
        bool deps_done = true;
        for (auto& d : op->deps) deps_done = deps_done && d->done;
        if (!(op->demanded || s->stop || std::chrono::steady_clock::now() - op->queued >= kGrace) || !deps_done) {
            if (!deps_done && (op->demanded || s->stop)) demand(op);
            cv.wait_until(lk, op->queued + kGrace);
            continue;
        }
        if (trace) std::fprintf(stderr, "fake libcuda trace: run %s (stream %p)\n", op->what.c_str(), (void*)s);
        if (!op->ctx->sticky) {
            std::function<void()> run = std::move(op->run);
            lk.unlock();
            run();  // takes `lock` itself for its checks
            lk.lock();
        }
        s->queue.pop_front();
        finish(op);
        cv.notify_all();
    }
}

void stop_stream(std::unique_lock<std::mutex>& lk, Stream* s) {
    s->stop = true;
    cv.notify_all();
    lk.unlock();
    s->worker.join();
    lk.lock();
    s->ctx->streams.erase(s);
    live_streams.erase(s);
    delete s;
}

void destroy_ctx(std::unique_lock<std::mutex>& lk, Ctx* c) {
    c->destroyed = true;  // the handle stays known (and invalid) for good
    std::vector<Stream*> streams(c->streams.begin(), c->streams.end());
    for (Stream* s : streams) stop_stream(lk, s);
    for (auto it = allocations.begin(); it != allocations.end();) {
        if (it->second.ctx == c) {
            used[c->device] -= it->second.bytes;
            std::free((void*)it->first);
            it = allocations.erase(it);
        } else {
            ++it;
        }
    }
    for (int d = 0; d < kDevices; ++d) {
        if (primary[d] == c) primary[d] = nullptr;
    }
}

size_t elf_size(const unsigned char* img) {
    auto u16 = [&](size_t o) { uint16_t v; std::memcpy(&v, img + o, 2); return (size_t)v; };
    auto u64 = [&](size_t o) { uint64_t v; std::memcpy(&v, img + o, 8); return (size_t)v; };
    size_t sh = u64(0x28) + u16(0x3A) * u16(0x3C);
    size_t ph = u64(0x20) + u16(0x36) * u16(0x38);
    return sh > ph ? sh : ph;
}

// A device-side copy range check at call time: INVALID_VALUE for no allocation at all
// (the driver cannot tell what it is); another context's memory faults when it runs.
bool is_any_device(CUdeviceptr p, size_t bytes) {
    CUdeviceptr base = 0;
    const Alloc* a = find_alloc(p, &base);
    return a && p + bytes <= base + a->bytes;
}

CUresult copy_async(void* dst, const void* src, size_t bytes, bool dst_dev, bool src_dev, void* h, const char* what) {
    if (dst_dev && !src_dev) count_h2d++;
    if (src_dev && !dst_dev) count_d2h++;
    std::lock_guard<std::mutex> g(lock);
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    if (current() != s->ctx) return INVALID_CONTEXT;
    if ((dst_dev && !is_any_device((CUdeviceptr)dst, bytes)) || (src_dev && !is_any_device((CUdeviceptr)src, bytes)))
        return INVALID_VALUE;
    if ((!dst_dev || !src_dev) && s->capture == 1) {
        s->capture = 2;
        complain(std::string(what) + " of pageable host memory during a capture: " +
                 "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED");
        return CAPTURE_UNSUPPORTED;
    }
    Ctx* c = s->ctx;
    std::string name = what;
    return enqueue(s, [=] {
        {
            std::lock_guard<std::mutex> g2(lock);
            if ((dst_dev && !touch(c, (CUdeviceptr)dst, bytes, name)) ||
                (src_dev && !touch(c, (CUdeviceptr)src, bytes, name)))
                return;
        }
        std::memmove(dst, src, bytes);
    }, false, what);
}

// After a synchronisation: the context's sticky error (or an injected one).
CUresult after_sync(Ctx* c) { return c->sticky; }
}  // namespace

extern "C" {

CUresult cuInit(unsigned) {
    INJECT("cuInit");
    std::lock_guard<std::mutex> g(lock);
    initialised = true;
    return OK;
}
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return OK;
}
CUresult cuDeviceGetCount(int* n) {
    INJECT("cuDeviceGetCount");
    if (!initialised) return NOT_INITIALIZED;
    *n = kDevices;
    return OK;
}
CUresult cuDeviceGet(int* dev, int ordinal) {
    if (!initialised) return NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= kDevices) return INVALID_DEVICE;
    *dev = ordinal;
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, int dev) {
    if (dev < 0 || dev >= kDevices) return INVALID_DEVICE;
    switch (attr) {
        case 16: *v = 2; break;   // multiprocessors
        case 75: *v = 9; break;   // compute capability major
        case 76: *v = 0; break;   // minor
        case 41: *v = 1; break;   // unified addressing
        default: *v = 0;
    }
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, int dev) {
    if (dev < 0 || dev >= kDevices) return INVALID_DEVICE;
    std::snprintf(name, (size_t)len, "gacc fake device %d (host shim)", dev);
    return OK;
}

CUresult cuDevicePrimaryCtxRetain(void** ctx, int dev) {
    INJECT("cuDevicePrimaryCtxRetain");
    if (dev < 0 || dev >= kDevices) return INVALID_DEVICE;
    std::lock_guard<std::mutex> g(lock);
    if (!primary[dev]) {
        primary[dev] = new_ctx(dev, true);
    } else {
        primary[dev]->refs++;
    }
    *ctx = primary[dev];
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(int dev) {
    if (dev < 0 || dev >= kDevices) return INVALID_DEVICE;
    std::unique_lock<std::mutex> lk(lock);
    Ctx* c = primary[dev];
    if (!c) return INVALID_CONTEXT;
    if (--c->refs == 0) destroy_ctx(lk, c);
    return OK;
}
static CUresult ctx_create(void** pctx, int dev) {
    INJECT("cuCtxCreate");
    if (dev < 0 || dev >= kDevices) return INVALID_DEVICE;
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = new_ctx(dev, false);
    ctx_stack.push_back(c);
    *pctx = c;
    return OK;
}
CUresult cuCtxCreate_v2(void** pctx, unsigned, int dev) { return ctx_create(pctx, dev); }
CUresult cuCtxCreate_v4(void** pctx, void*, unsigned, int dev) { return ctx_create(pctx, dev); }
CUresult cuCtxDestroy_v2(void* h) {
    std::unique_lock<std::mutex> lk(lock);
    Ctx* c = static_cast<Ctx*>(h);
    if (!live_contexts.count(c) || c->destroyed || c->primary) return INVALID_CONTEXT;
    if (!ctx_stack.empty() && ctx_stack.back() == c) ctx_stack.pop_back();
    destroy_ctx(lk, c);
    return OK;
}
static bool valid_ctx(void* h) {
    Ctx* c = static_cast<Ctx*>(h);
    return live_contexts.count(c) && !c->destroyed;
}
CUresult cuCtxSetCurrent(void* h) {
    INJECT("cuCtxSetCurrent");
    std::lock_guard<std::mutex> g(lock);
    if (h == nullptr) {
        if (!ctx_stack.empty()) ctx_stack.pop_back();
        return OK;
    }
    if (!valid_ctx(h)) return INVALID_CONTEXT;
    if (ctx_stack.empty()) {
        ctx_stack.push_back(static_cast<Ctx*>(h));
    } else {
        ctx_stack.back() = static_cast<Ctx*>(h);
    }
    return OK;
}
CUresult cuCtxPushCurrent_v2(void* h) {
    INJECT("cuCtxPushCurrent_v2");
    std::lock_guard<std::mutex> g(lock);
    if (!valid_ctx(h)) return INVALID_CONTEXT;
    ctx_stack.push_back(static_cast<Ctx*>(h));
    return OK;
}
CUresult cuCtxPopCurrent_v2(void** out) {
    std::lock_guard<std::mutex> g(lock);
    if (ctx_stack.empty()) return INVALID_CONTEXT;
    if (out) *out = ctx_stack.back();
    ctx_stack.pop_back();
    return OK;
}
CUresult cuCtxGetCurrent(void** out) {
    std::lock_guard<std::mutex> g(lock);
    *out = ctx_stack.empty() ? nullptr : ctx_stack.back();
    return OK;
}
CUresult cuCtxGetDevice(int* dev) {
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    *dev = c->device;
    return OK;
}
CUresult cuCtxSynchronize() {
    INJECT("cuCtxSynchronize");
    count_sync++;
    std::unique_lock<std::mutex> lk(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    if (capture_forbids("cuCtxSynchronize")) return CAPTURE_UNSUPPORTED;
    std::vector<OpP> lasts;
    for (Stream* s : c->streams) lasts.push_back(s->last);
    for (auto& op : lasts) wait_for(lk, op);
    return after_sync(c);
}

CUresult cuStreamCreate(void** out, unsigned flags) {
    INJECT("cuStreamCreate");
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    if (flags > 1) return INVALID_VALUE;
    *out = new_stream(c, flags == 0);
    return OK;
}
CUresult cuStreamDestroy_v2(void* h) {
    std::unique_lock<std::mutex> lk(lock);
    Stream* s = static_cast<Stream*>(h);
    if (h == nullptr || h == kLegacy || h == kPerThread || !live_streams.count(s) || s->legacy) return INVALID_HANDLE;
    if (s->capture) {
        s->capture = 2;
        return CAPTURE_UNSUPPORTED;
    }
    // The driver lets queued work finish after the handle is gone.
    std::vector<OpP> pending(s->queue.begin(), s->queue.end());
    for (auto& op : pending) demand(op);
    for (auto it = s->ctx->per_thread.begin(); it != s->ctx->per_thread.end(); ++it) {
        if (it->second == s) {
            s->ctx->per_thread.erase(it);
            break;
        }
    }
    stop_stream(lk, s);
    return OK;
}
CUresult cuStreamSynchronize(void* h) {
    INJECT("cuStreamSynchronize");
    count_sync++;
    std::unique_lock<std::mutex> lk(lock);
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    if (s->capture) {
        s->capture = 2;
        complain("cuStreamSynchronize of a capturing stream: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED");
        return CAPTURE_UNSUPPORTED;
    }
    if (s->legacy && capture_forbids("cuStreamSynchronize(legacy stream)")) return CAPTURE_UNSUPPORTED;
    OpP last = s->last;
    wait_for(lk, last);
    return after_sync(s->ctx);
}
CUresult cuStreamQuery(void* h) {
    INJECT("cuStreamQuery");
    std::lock_guard<std::mutex> g(lock);
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    if (s->capture) {
        s->capture = 2;
        return CAPTURE_UNSUPPORTED;
    }
    if (s->last && !s->last->done) {
        demand(s->last);
        return NOT_READY;
    }
    return s->ctx->sticky;
}
CUresult cuStreamWaitEvent(void* h, void* ev, unsigned) {
    INJECT("cuStreamWaitEvent");
    std::lock_guard<std::mutex> g(lock);
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    Event* e = static_cast<Event*>(ev);
    if (!live_events.count(e)) return INVALID_HANDLE;
    if (s->capture == 1) {
        if (e->capture_id == s->capture_id) return OK;  // same capture: in order already
        s->capture = 2;
        complain("cuStreamWaitEvent on an event from outside the capture: CUDA_ERROR_STREAM_CAPTURE_ISOLATION");
        return CAPTURE_ISOLATION;
    }
    if (!e->op || e->op->done) return OK;
    OpP dep = e->op;
    r = enqueue(s, [] {}, false, "cuStreamWaitEvent");
    if (r == OK) s->last->deps.push_back(dep);
    return r;
}

CUresult cuEventCreate(void** out, unsigned) {
    INJECT("cuEventCreate");
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    Event* e = new Event{};
    e->ctx = c;
    live_events.insert(e);
    *out = e;
    return OK;
}
CUresult cuEventRecord(void* ev, void* h) {
    INJECT("cuEventRecord");
    std::lock_guard<std::mutex> g(lock);
    Event* e = static_cast<Event*>(ev);
    if (!live_events.count(e)) return INVALID_HANDLE;
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    if (s->ctx != e->ctx) return INVALID_HANDLE;
    if (s->capture == 2) return CAPTURE_INVALIDATED;
    if (s->capture == 1) {
        e->capture_id = s->capture_id;
        e->op = nullptr;
        return OK;
    }
    e->capture_id = 0;
    e->op = s->last && !s->last->done ? s->last : nullptr;
    return OK;
}
CUresult cuEventQuery(void* ev) {
    std::lock_guard<std::mutex> g(lock);
    Event* e = static_cast<Event*>(ev);
    if (!live_events.count(e)) return INVALID_HANDLE;
    if (e->capture_id) return CAPTURE_UNSUPPORTED;
    if (e->op && !e->op->done) {
        demand(e->op);
        return NOT_READY;
    }
    return e->ctx->sticky;
}
CUresult cuEventSynchronize(void* ev) {
    count_sync++;
    std::unique_lock<std::mutex> lk(lock);
    Event* e = static_cast<Event*>(ev);
    if (!live_events.count(e)) return INVALID_HANDLE;
    if (e->capture_id) return CAPTURE_UNSUPPORTED;
    OpP op = e->op;
    wait_for(lk, op);
    return e->ctx->sticky;
}
CUresult cuEventDestroy_v2(void* ev) {
    std::lock_guard<std::mutex> g(lock);
    Event* e = static_cast<Event*>(ev);
    if (!live_events.erase(e)) return INVALID_HANDLE;
    delete e;  // queued waits hold the work itself, not the event
    return OK;
}

CUresult cuModuleLoadData(void** module, const void* image) {
    INJECT("cuModuleLoadData");
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    const unsigned char* img = static_cast<const unsigned char*>(image);
    if (std::memcmp(img, "\x7f" "ELF", 4) != 0 || img[4] != 2) return INVALID_IMAGE;
    uint16_t machine;
    std::memcpy(&machine, img + 0x12, 2);
    if (machine != 190) return INVALID_IMAGE;  // EM_CUDA
    Module* m = new Module{std::string(reinterpret_cast<const char*>(img), elf_size(img)), c};
    live_modules.insert(m);
    *module = m;
    return OK;
}
CUresult cuModuleUnload(void* h) {
    std::lock_guard<std::mutex> g(lock);
    Module* m = static_cast<Module*>(h);
    if (!live_modules.erase(m)) return INVALID_HANDLE;
    for (auto it = live_functions.begin(); it != live_functions.end();) {
        if ((*it)->module == m) {
            delete *it;
            it = live_functions.erase(it);
        } else {
            ++it;
        }
    }
    delete m;
    return OK;
}
CUresult cuModuleGetFunction(void** f, void* h, const char* name) {
    std::lock_guard<std::mutex> g(lock);
    Module* m = static_cast<Module*>(h);
    if (!live_modules.count(m)) return INVALID_HANDLE;
    if (m->image.find(std::string(name) + '\0') == std::string::npos) return NOT_FOUND;
    int arity = gacc_shim_arity(name);
    if (arity < 0) return NOT_FOUND;
    Function* fn = new Function{name, m, (unsigned)arity};
    live_functions.insert(fn);
    *f = fn;
    return OK;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void* h, void** params, void** extra) {
    INJECT("cuLaunchKernel");
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    Function* fn = static_cast<Function*>(f);
    if (!live_functions.count(fn)) return INVALID_HANDLE;
    if (fn->module->ctx != c) {
        complain("cuLaunchKernel of " + fn->name + " from another context's module: CUDA_ERROR_INVALID_HANDLE");
        return INVALID_HANDLE;
    }
    Stream* s = nullptr;
    r = resolve(h, &s);
    if (r) return r;
    if (s->ctx != c) {
        complain("cuLaunchKernel of " + fn->name + " on a stream of another context: CUDA_ERROR_INVALID_CONTEXT");
        return INVALID_CONTEXT;
    }
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || extra != nullptr || params == nullptr) return INVALID_VALUE;
    // The parameter values as of now, as a driver copies them.
    auto values = std::make_shared<std::vector<std::vector<unsigned char>>>();
    std::vector<bool> is_ptr;
    for (unsigned i = 0; i < fn->arity; ++i) {
        int ptr = 0;
        unsigned size = gacc_shim_param(fn->name.c_str(), i, &ptr);
        const unsigned char* p = static_cast<const unsigned char*>(params[i]);
        values->emplace_back(p, p + size);
        is_ptr.push_back(ptr != 0);
    }
    bool fault = fault_next_launch;
    fault_next_launch = false;
    std::string name = fn->name;
    unsigned arity = fn->arity;
    return enqueue(s, [=] {
        {
            std::lock_guard<std::mutex> g2(lock);
            if (fault) {
                complain("injected fault in " + name + ": CUDA_ERROR_ILLEGAL_ADDRESS, sticky for the context");
                c->sticky = ILLEGAL_ADDRESS;
                return;
            }
            for (unsigned i = 0; i < arity; ++i) {
                if (!is_ptr[i]) continue;
                CUdeviceptr p = 0;
                std::memcpy(&p, (*values)[i].data(), sizeof p);
                if (p != 0 && !touch(c, p, 1, name + " argument " + std::to_string(i))) return;
            }
        }
        std::vector<std::vector<unsigned char>> copy = *values;  // a replay must not see writes
        std::vector<void*> args;
        for (auto& v : copy) args.push_back(v.data());
        char err[512] = {0};
        if (gacc_shim_launch(name.c_str(), gx, bx, shared, args.data(), arity, err, sizeof err) != 0) {
            std::lock_guard<std::mutex> g2(lock);
            complain(std::string("cuLaunchKernel: ") + err + ": CUDA_ERROR_LAUNCH_FAILED, sticky");
            c->sticky = LAUNCH_FAILED;
        }
    }, false, fn->name.c_str());
}

// Occupancy: a function of this driver's modules, a block of 1..1024 threads; the
// answer is what an sm_90 SM holds by threads alone (2048 per SM, at most 32 blocks).
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void* f, int block, size_t dynamic_shared) {
    INJECT("cuOccupancyMaxActiveBlocksPerMultiprocessor");
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    if (!blocks || !live_functions.count(static_cast<Function*>(f))) return INVALID_HANDLE;
    if (block <= 0 || block > 1024 || dynamic_shared > 228 * 1024) return INVALID_VALUE;
    int by_threads = 2048 / block;
    *blocks = by_threads < 32 ? by_threads : 32;
    return OK;
}
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    INJECT("cuMemGetInfo_v2");
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    *free_bytes = kMemory - used[c->device];
    *total = kMemory;
    return OK;
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    INJECT("cuMemAlloc_v2");
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    if (bytes == 0) return INVALID_VALUE;
    if (capture_forbids("cuMemAlloc")) return CAPTURE_UNSUPPORTED;
    if (used[c->device] + bytes > kMemory) return OUT_OF_MEMORY;
    size_t rounded = (bytes + 255) / 256 * 256;
    void* m = std::aligned_alloc(256, rounded);
    if (!m) return OUT_OF_MEMORY;
    std::memset(m, 0xFF, rounded);  // poison: a read before any write shows
    allocations[(CUdeviceptr)m] = Alloc{bytes, c};
    used[c->device] += bytes;
    *p = (CUdeviceptr)m;
    return OK;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    INJECT("cuMemFree_v2");
    std::unique_lock<std::mutex> lk(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    if (capture_forbids("cuMemFree")) return CAPTURE_UNSUPPORTED;
    auto it = allocations.find(p);
    if (it == allocations.end()) return INVALID_VALUE;
    Ctx* owner = it->second.ctx;
    // cuMemFree waits for the device: work still queued may use the memory.
    std::vector<OpP> lasts;
    for (Stream* s : owner->streams) lasts.push_back(s->last);
    for (auto& op : lasts) wait_for(lk, op);
    it = allocations.find(p);
    if (it == allocations.end()) return INVALID_VALUE;
    used[owner->device] -= it->second.bytes;
    allocations.erase(it);
    std::free((void*)p);
    return c->sticky;
}

static bool pointer_attribute(void* data, int attr, CUdeviceptr p, bool lenient) {
    const Alloc* a = find_alloc(p);
    switch (attr) {
        case 1:  // CU_POINTER_ATTRIBUTE_CONTEXT
            *static_cast<void**>(data) = a ? a->ctx : nullptr;
            return a || lenient;
        case 2:  // CU_POINTER_ATTRIBUTE_MEMORY_TYPE
            *static_cast<unsigned*>(data) = a ? 2 : 0;  // CU_MEMORYTYPE_DEVICE
            return a || lenient;
        case 3:  // CU_POINTER_ATTRIBUTE_DEVICE_POINTER
            *static_cast<CUdeviceptr*>(data) = a ? p : 0;
            return a || lenient;
        case 9:  // CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
            *static_cast<int*>(data) = a ? a->ctx->device : -2;
            return a || lenient;
        default:
            return false;
    }
}
CUresult cuPointerGetAttribute(void* data, int attr, CUdeviceptr p) {
    INJECT("cuPointerGetAttribute");
    std::lock_guard<std::mutex> g(lock);
    if (attr != 1 && attr != 2 && attr != 3 && attr != 9) return INVALID_VALUE;
    return pointer_attribute(data, attr, p, false) ? OK : INVALID_VALUE;  // host memory: INVALID_VALUE
}
CUresult cuPointerGetAttributes(unsigned n, int* attrs, void** data, CUdeviceptr p) {
    INJECT("cuPointerGetAttributes");
    std::lock_guard<std::mutex> g(lock);
    // Unlike cuPointerGetAttribute, unknown memory is not an error: default values.
    for (unsigned i = 0; i < n; ++i) {
        if (!pointer_attribute(data[i], attrs[i], p, true)) return INVALID_VALUE;
    }
    return OK;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* src, size_t n) {
    INJECT("cuMemcpyHtoD_v2");
    count_h2d++;
    std::lock_guard<std::mutex> g(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    if (!is_any_device(d, n)) return INVALID_VALUE;
    if (capture_forbids("cuMemcpyHtoD")) return CAPTURE_UNSUPPORTED;
    // Pageable source: staged now, the copy itself lands later, on the legacy stream.
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                               static_cast<const unsigned char*>(src) + n);
    return enqueue(c->legacy, [=] {
        {
            std::lock_guard<std::mutex> g2(lock);
            if (!touch(c, d, n, "cuMemcpyHtoD")) return;
        }
        std::memcpy((void*)d, staged->data(), n);
    }, false, "cuMemcpyHtoD");
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr s, size_t n) {
    INJECT("cuMemcpyDtoH_v2");
    count_d2h++;
    count_sync++;
    std::unique_lock<std::mutex> lk(lock);
    Ctx* c = nullptr;
    CUresult r = need_ctx(&c);
    if (r) return r;
    if (!is_any_device(s, n)) return INVALID_VALUE;
    if (capture_forbids("cuMemcpyDtoH")) return CAPTURE_UNSUPPORTED;
    r = enqueue(c->legacy, [=] {
        {
            std::lock_guard<std::mutex> g2(lock);
            if (!touch(c, s, n, "cuMemcpyDtoH")) return;
        }
        std::memcpy(dst, (const void*)s, n);
    }, false, "cuMemcpyDtoH");
    if (r) return r;
    OpP last = c->legacy->last;
    wait_for(lk, last);  // returns once the copy has landed
    return after_sync(c);
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void* h) {
    INJECT("cuMemcpyHtoDAsync_v2");
    return copy_async((void*)d, s, n, true, false, h, "cuMemcpyHtoDAsync");
}
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void* h) {
    INJECT("cuMemcpyDtoHAsync_v2");
    return copy_async(d, (const void*)s, n, false, true, h, "cuMemcpyDtoHAsync");
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void* h) {
    INJECT("cuMemcpyDtoDAsync_v2");
    return copy_async((void*)d, (const void*)s, n, true, true, h, "cuMemcpyDtoDAsync");
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void* h) {
    INJECT("cuMemsetD8Async");
    std::lock_guard<std::mutex> g(lock);
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    if (current() != s->ctx) return INVALID_CONTEXT;
    if (!is_any_device(d, n)) return INVALID_VALUE;
    Ctx* c = s->ctx;
    return enqueue(s, [=] {
        {
            std::lock_guard<std::mutex> g2(lock);
            if (!touch(c, d, n, "cuMemsetD8Async")) return;
        }
        std::memset((void*)d, v, n);
    }, false, "cuMemsetD8Async");
}

// ---- stream capture and graphs ----
CUresult cuStreamBeginCapture_v2(void* h, int mode) {
    INJECT("cuStreamBeginCapture_v2");
    std::lock_guard<std::mutex> g(lock);
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    if (s->legacy) {
        complain("cuStreamBeginCapture on the legacy stream: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED");
        return CAPTURE_UNSUPPORTED;
    }
    if (s->capture) return ILLEGAL_STATE;
    if (mode < 0 || mode > 2) return INVALID_VALUE;
    s->capture = 1;
    s->capture_mode = mode;
    s->capture_thread = std::this_thread::get_id();
    s->capture_id = next_capture_id++;
    s->graph = new Graph{};
    return OK;
}
CUresult cuStreamEndCapture(void* h, void** graph) {
    INJECT("cuStreamEndCapture");
    std::lock_guard<std::mutex> g(lock);
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    if (!s->capture) return ILLEGAL_STATE;
    if (s->capture_mode != 2 && s->capture_thread != std::this_thread::get_id()) return CAPTURE_WRONG_THREAD;
    bool invalid = s->capture == 2;
    s->capture = 0;
    Graph* gr = s->graph;
    s->graph = nullptr;
    if (invalid) {
        delete gr;
        *graph = nullptr;
        return CAPTURE_INVALIDATED;
    }
    live_graphs.insert(gr);
    *graph = gr;
    return OK;
}
static CUresult capture_status(void* h, int* status, unsigned long long* id) {
    std::lock_guard<std::mutex> g(lock);
    if (h == nullptr || h == kLegacy) {
        // Asking the legacy stream while a blocking stream captures is itself illegal.
        Ctx* c = current();
        if (!c) return INVALID_CONTEXT;
        for (Stream* o : c->streams) {
            if (o->blocking && !o->legacy && o->capture == 1) {
                o->capture = 2;
                return CAPTURE_IMPLICIT;
            }
        }
    }
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    if (status) *status = s->capture;
    if (id) *id = s->capture_id;
    return OK;
}
CUresult cuStreamIsCapturing(void* h, int* status) {
    INJECT("cuStreamIsCapturing");
    return capture_status(h, status, nullptr);
}
CUresult cuStreamGetCaptureInfo(void* h, int* status, unsigned long long* id) {
    return capture_status(h, status, id);
}
CUresult cuStreamGetCaptureInfo_v2(void* h, int* status, unsigned long long* id, void** graph, void** deps,
                                   size_t* n) {
    if (graph) *graph = nullptr;
    if (deps) *deps = nullptr;
    if (n) *n = 0;
    return capture_status(h, status, id);
}
CUresult cuStreamGetCaptureInfo_v3(void* h, int* status, unsigned long long* id, void** graph, void** deps,
                                   void** edges, size_t* n) {
    if (edges) *edges = nullptr;
    return cuStreamGetCaptureInfo_v2(h, status, id, graph, deps, n);
}
static CUresult instantiate(void** exec, void* graph) {
    INJECT("cuGraphInstantiate");
    std::lock_guard<std::mutex> g(lock);
    Graph* gr = static_cast<Graph*>(graph);
    if (!live_graphs.count(gr)) return INVALID_HANDLE;
    Graph* e = new Graph{*gr};
    live_graphs.insert(e);
    *exec = e;
    return OK;
}
CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) { return instantiate(exec, graph); }
CUresult cuGraphInstantiate_v2(void** exec, void* graph, void*, char*, size_t) { return instantiate(exec, graph); }
CUresult cuGraphInstantiateWithParams(void** exec, void* graph, void*) { return instantiate(exec, graph); }
CUresult cuGraphLaunch(void* exec, void* h) {
    INJECT("cuGraphLaunch");
    std::lock_guard<std::mutex> g(lock);
    Graph* e = static_cast<Graph*>(exec);
    if (!live_graphs.count(e)) return INVALID_HANDLE;
    Stream* s = nullptr;
    CUresult r = resolve(h, &s);
    if (r) return r;
    for (auto& node : e->nodes) {
        r = enqueue(s, node, false, "graph node");
        if (r) return r;
    }
    return OK;
}
static CUresult graph_destroy(void* graph) {
    std::lock_guard<std::mutex> g(lock);
    Graph* gr = static_cast<Graph*>(graph);
    if (!live_graphs.erase(gr)) return INVALID_HANDLE;
    delete gr;
    return OK;
}
CUresult cuGraphDestroy(void* graph) { return graph_destroy(graph); }
CUresult cuGraphExecDestroy(void* exec) { return graph_destroy(exec); }

CUresult cuGetErrorName(CUresult r, const char** s) {
    switch (r) {
        case OK: *s = "CUDA_SUCCESS"; return OK;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; return OK;
        case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; return OK;
        case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; return OK;
        case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; return OK;
        case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; return OK;
        case INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; return OK;
        case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; return OK;
        case ILLEGAL_STATE: *s = "CUDA_ERROR_ILLEGAL_STATE"; return OK;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; return OK;
        case NOT_READY: *s = "CUDA_ERROR_NOT_READY"; return OK;
        case ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; return OK;
        case LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; return OK;
        case CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; return OK;
        case CAPTURE_INVALIDATED: *s = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; return OK;
        case CAPTURE_ISOLATION: *s = "CUDA_ERROR_STREAM_CAPTURE_ISOLATION"; return OK;
        case CAPTURE_IMPLICIT: *s = "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT"; return OK;
        case CAPTURE_WRONG_THREAD: *s = "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD"; return OK;
        case 999: *s = "CUDA_ERROR_UNKNOWN"; return OK;
        default: *s = nullptr; return INVALID_VALUE;
    }
}
CUresult cuGetErrorString(CUresult r, const char** s) {
    const char* name = nullptr;
    CUresult rc = cuGetErrorName(r, &name);
    *s = name ? "(fake driver)" : nullptr;
    return rc;
}

// ---- test hooks ----
unsigned long long fake_cuda_thread_count(const char* what) {
    if (std::strcmp(what, "sync") == 0) return count_sync;
    if (std::strcmp(what, "d2h") == 0) return count_d2h;
    if (std::strcmp(what, "h2d") == 0) return count_h2d;
    return ~0ull;
}
/// After `skip` more calls of driver function `name` by this thread, the next `count`
/// return `result` (a CUresult value cuda.h defines: cudarc maps it to an enum).
/// count 0 clears.
void fake_cuda_fail_next(const char* name, int skip, int count, int result) {
    injections[name] = Injection{skip, count, result};
}
/// The next kernel this thread launches faults when it runs (sticky ILLEGAL_ADDRESS).
void fake_cuda_fault_next_launch() { fault_next_launch = true; }
/// Queues host work `fn(arg)` on `stream` (resolved like any stream argument, in the
/// current context). eager: it (and what it waits for) runs without being waited for,
/// as a device collective does. Returns a CUresult.
int fake_cuda_enqueue(void* stream, void (*fn)(void*), void* arg, int eager) {
    std::lock_guard<std::mutex> g(lock);
    Stream* s = nullptr;
    CUresult r = resolve(stream, &s);
    if (r) return r;
    return enqueue(s, [=] { fn(arg); }, eager != 0, "fake_cuda_enqueue");
}

}  // extern "C"
