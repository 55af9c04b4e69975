// fake_nccl.cpp: a stand-in for libnccl.so.2 for tests whose ranks are threads of
// one process on the fake driver (fake_cuda.cpp, whose device memory is host memory).
// A test double, built only by the tests.
//
// tests/fake_nccl.rs builds it as its own shared library and points GACC_NCCL_LIB at
// it, so gacc's real NCCL loader (src/distributed/nccl.rs) and its device
// data-parallel path run unchanged. ncclGetUniqueId makes a fresh id; the ranks
// that call ncclCommInitRank with the same id form one group (a registry keyed by
// the id's bytes; init waits for all of them). ncclAllReduce is a real all-reduce:
// every rank publishes its send buffer, a barrier, each rank sums the buffers in
// rank order (0, 1, ...) into a private copy, a barrier, each copies the sum into
// its recv buffer (so send == recv is allowed). Buffers must be fake device memory
// (checked with the fake driver's cuPointerGetAttribute, found through dlsym) and
// the stream non-NULL unless the engine really has none. As on a GPU, ncclAllReduce
// only queues the collective on the stream (fake_cuda_enqueue, found through dlsym):
// it runs on the fake driver's stream worker after the work queued before it, and
// its result is in recv only for work queued after it on that stream (or after a
// synchronisation). A rank that never arrives makes the others' collectives give up
// after 60 s; ncclCommGetAsyncError then says ncclSystemError.
// Test hooks (extern "C"), per calling thread (tests run in parallel):
// fake_nccl_fail_allreduce(skip, n): after `skip` more successful calls, the next n
// ncclAllReduce calls of this thread fail with ncclUnhandledCudaError before
// touching anything (a test fails the same call on every rank: a rank left alone
// at a barrier gives up after 60 s with ncclSystemError); fake_nccl_last_stream():
// the stream of this thread's last call; fake_nccl_allreduce_calls(): all calls.
#include <dlfcn.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {
typedef int ncclResult_t;
const ncclResult_t ncclSuccess = 0, ncclUnhandledCudaError = 1, ncclSystemError = 2, ncclInvalidArgument = 4,
                   ncclInvalidUsage = 5;
const int ncclFloat32 = 7, ncclFloat64 = 8, ncclSum = 0;

struct Id {
    char internal[128];
};

struct Group {
    int nranks;
    std::mutex m;
    std::condition_variable cv;
    int arrived = 0;
    unsigned long long generation = 0;
    std::vector<const void*> sends;
    int joined = 0;

    explicit Group(int n) : nranks(n), sends((size_t)n, nullptr) {}

    // false: the other ranks did not arrive within 60 s (a test bug; never hang).
    bool barrier(std::unique_lock<std::mutex>& lk) {
        unsigned long long gen = generation;
        if (++arrived == nranks) {
            arrived = 0;
            ++generation;
            cv.notify_all();
            return true;
        }
        if (cv.wait_for(lk, std::chrono::seconds(60), [&] { return generation != gen; })) return true;
        --arrived;
        return false;
    }
};

struct Comm {
    std::shared_ptr<Group> group;
    int rank;
    int async_error = 0;  // under the group's lock
};

std::mutex registry_lock;
std::map<std::string, std::shared_ptr<Group>> registry;
unsigned long long id_counter = 0;
thread_local int fail_left = 0, fail_skip = 0;
thread_local void* last_stream = nullptr;
unsigned long long allreduce_calls = 0;

typedef int (*PointerGetAttribute)(void*, int, unsigned long long);
typedef int (*Enqueue)(void*, void (*)(void*), void*, int);

struct Job {
    const void* send;
    void* recv;
    size_t count;
    int dtype;
    Comm* comm;
};

// The collective itself, on the stream's worker.
void run_job(void* p) {
    std::unique_ptr<Job> job(static_cast<Job*>(p));
    Comm* comm = job->comm;
    Group& gr = *comm->group;
    const size_t count = job->count;
    const size_t elem = job->dtype == ncclFloat64 ? 8 : 4;
    std::vector<unsigned char> sum(count * elem);
    std::unique_lock<std::mutex> lk(gr.m);
    gr.sends[(size_t)comm->rank] = job->send;
    if (!gr.barrier(lk)) {
        comm->async_error = ncclSystemError;
        return;
    }
    lk.unlock();
    if (job->dtype == ncclFloat64) {
        double* out = reinterpret_cast<double*>(sum.data());
        for (size_t i = 0; i < count; ++i) {
            double s = 0.0;
            for (int r = 0; r < gr.nranks; ++r) s = r == 0 ? static_cast<const double*>(gr.sends[0])[i] : s + static_cast<const double*>(gr.sends[(size_t)r])[i];
            out[i] = s;
        }
    } else {
        float* out = reinterpret_cast<float*>(sum.data());
        for (size_t i = 0; i < count; ++i) {
            float s = 0.0f;
            for (int r = 0; r < gr.nranks; ++r) s = r == 0 ? static_cast<const float*>(gr.sends[0])[i] : s + static_cast<const float*>(gr.sends[(size_t)r])[i];
            out[i] = s;
        }
    }
    lk.lock();
    if (!gr.barrier(lk)) {  // nobody reads the send buffers any more
        comm->async_error = ncclSystemError;
        return;
    }
    lk.unlock();
    std::memcpy(job->recv, sum.data(), count * elem);
}

bool is_device(const void* p) {
    static PointerGetAttribute f = (PointerGetAttribute)dlsym(RTLD_DEFAULT, "cuPointerGetAttribute");
    if (!f) return false;
    unsigned kind = 0;
    return f(&kind, 2, (unsigned long long)p) == 0 && kind == 2;
}
}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* v) {
    *v = 22105;  // 2.21.5, as NCCL_VERSION_CODE encodes it
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(Id* id) {
    std::lock_guard<std::mutex> g(registry_lock);
    std::memset(id->internal, 0, sizeof id->internal);
    std::snprintf(id->internal, sizeof id->internal, "fake-nccl-%llu", ++id_counter);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(Comm** comm, int nranks, Id id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
    std::shared_ptr<Group> group;
    {
        std::lock_guard<std::mutex> g(registry_lock);
        std::string key(id.internal, sizeof id.internal);
        auto& slot = registry[key];
        if (!slot) slot = std::make_shared<Group>(nranks);
        if (slot->nranks != nranks) return ncclInvalidUsage;
        group = slot;
    }
    std::unique_lock<std::mutex> lk(group->m);
    group->joined++;
    if (!group->barrier(lk)) return ncclSystemError;  // init is collective
    *comm = new Comm{group, rank};
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(Comm* comm) {
    delete comm;
    return ncclSuccess;
}
ncclResult_t ncclCommAbort(Comm* comm) { return ncclCommDestroy(comm); }

ncclResult_t ncclCommGetAsyncError(Comm* comm, ncclResult_t* err) {
    if (!comm) return ncclInvalidArgument;
    std::lock_guard<std::mutex> g(comm->group->m);
    *err = comm->async_error;
    return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error (fake NCCL: injected failure)";
        case ncclSystemError: return "system error (fake NCCL: a rank never arrived)";
        case ncclInvalidArgument: return "invalid argument (fake NCCL)";
        case ncclInvalidUsage: return "invalid usage (fake NCCL)";
        default: return "unknown result code (fake NCCL)";
    }
}
const char* ncclGetLastError(Comm*) { return ""; }

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int dtype, int op, Comm* comm, void* stream) {
    if (!comm || op != ncclSum || (dtype != ncclFloat32 && dtype != ncclFloat64)) return ncclInvalidArgument;
    if (!is_device(send) || !is_device(recv)) return ncclInvalidArgument;
    {
        std::lock_guard<std::mutex> g(registry_lock);
        allreduce_calls++;
    }
    last_stream = stream;
    if (fail_skip > 0) {
        fail_skip--;
    } else if (fail_left > 0) {
        fail_left--;
        return ncclUnhandledCudaError;
    }
    static Enqueue enqueue = (Enqueue)dlsym(RTLD_DEFAULT, "fake_cuda_enqueue");
    if (!enqueue) return ncclUnhandledCudaError;
    // Eager: a collective makes progress without anybody waiting for it.
    Job* job = new Job{send, recv, count, dtype, comm};
    int r = enqueue(stream, run_job, job, 1);
    if (r != 0) {
        delete job;
        std::fprintf(stderr, "fake NCCL: queueing the all-reduce failed with CUresult %d\n", r);
        return ncclUnhandledCudaError;
    }
    return ncclSuccess;
}

void fake_nccl_fail_allreduce(int skip, int n) {
    fail_skip = skip;
    fail_left = n;
}
unsigned long long fake_nccl_allreduce_calls() {
    std::lock_guard<std::mutex> g(registry_lock);
    return allreduce_calls;
}
void* fake_nccl_last_stream() { return last_stream; }

}  // extern "C"
