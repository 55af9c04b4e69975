// fake_cuda.cpp: a stand-in for libcuda.so whose "device" is the host shim.
//
// Built together with shim_main.cpp into one library with SONAME libcuda.so
// (tests/fake_driver.rs), and loaded by absolute path before cudarc looks for the
// driver, so that gacc's real CUDA runtime (src/backend/cuda/driver.rs: probe,
// primary context, streams, events, cuModuleLoadData of the cubin NVRTC made,
// pointer attributes, copies, memsets, cuLaunchKernel with kernelParams) runs
// unchanged on a machine without a GPU. Device memory is host memory; work runs
// synchronously when queued, in call order; cuLaunchKernel runs the host-compiled
// kernel of the same name. cuModuleLoadData checks that the image is a CUDA ELF
// (e_machine 190) and cuModuleGetFunction that the kernel's name is in it.
// What it does not model: everything docs/cuda.md lists for the shim, plus real
// stream concurrency and asynchrony (every call completes before it returns).
// Counters per calling thread (fake_cuda_thread_count("sync" | "d2h" | "h2d")):
// stream/context synchronisations, device-to-host and host-to-device copies, so a
// test can prove that a call made none (tests/fake_nccl.rs: gacc_step without info).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

extern "C" int gacc_shim_launch(const char* name, unsigned grid, unsigned block, unsigned shared_bytes, void** args,
                                unsigned n_args, char* err, size_t err_len);
extern "C" int gacc_shim_arity(const char* name);

namespace {
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
const CUresult OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, INVALID_DEVICE = 101,
               INVALID_IMAGE = 200, INVALID_HANDLE = 400, NOT_FOUND = 500, LAUNCH_FAILED = 719;
const unsigned long long kMemory = 2ull << 30;

std::mutex lock;
bool initialised = false;
std::map<CUdeviceptr, size_t> allocations;
unsigned long long used = 0;
int context_token, event_token;
thread_local unsigned long long count_sync = 0, count_d2h = 0, count_h2d = 0;

struct Module {
    std::string image;
};
struct Function {
    std::string name;
};

bool is_device(CUdeviceptr p, size_t bytes) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return false;
    --it;
    return p >= it->first && p + bytes <= it->first + it->second;
}

size_t elf_size(const unsigned char* img) {
    auto u16 = [&](size_t o) { uint16_t v; std::memcpy(&v, img + o, 2); return (size_t)v; };
    auto u64 = [&](size_t o) { uint64_t v; std::memcpy(&v, img + o, 8); return (size_t)v; };
    size_t sh = u64(0x28) + u16(0x3A) * u16(0x3C);
    size_t ph = u64(0x20) + u16(0x36) * u16(0x38);
    return sh > ph ? sh : ph;
}
}  // namespace

extern "C" {

CUresult cuInit(unsigned) {
    std::lock_guard<std::mutex> g(lock);
    initialised = true;
    return OK;
}
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return OK;
}
CUresult cuDeviceGetCount(int* n) {
    if (!initialised) return NOT_INITIALIZED;
    *n = 1;
    return OK;
}
CUresult cuDeviceGet(int* dev, int ordinal) {
    if (ordinal != 0) return INVALID_DEVICE;
    *dev = 0;
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, int dev) {
    if (dev != 0) return INVALID_DEVICE;
    switch (attr) {
        case 16: *v = 2; break;   // multiprocessors
        case 75: *v = 9; break;   // compute capability major
        case 76: *v = 0; break;   // minor
        default: *v = 0;
    }
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, (size_t)len, "gacc fake device (host shim)");
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) {
    *ctx = &context_token;
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return OK; }
CUresult cuCtxSetCurrent(void* ctx) { return ctx == &context_token || ctx == nullptr ? OK : INVALID_HANDLE; }
CUresult cuCtxSynchronize() {
    count_sync++;
    return OK;
}
CUresult cuStreamCreate(void** s, unsigned) {
    *s = new int(0);
    return OK;
}
CUresult cuStreamDestroy_v2(void* s) {
    delete static_cast<int*>(s);
    return OK;
}
CUresult cuStreamSynchronize(void*) {
    count_sync++;
    return OK;
}
CUresult cuStreamWaitEvent(void*, void* e, unsigned) { return e ? OK : INVALID_HANDLE; }
CUresult cuEventCreate(void** e, unsigned) {
    *e = &event_token;
    return OK;
}
CUresult cuEventRecord(void* e, void*) { return e ? OK : INVALID_HANDLE; }
CUresult cuEventDestroy_v2(void*) { return OK; }

CUresult cuModuleLoadData(void** module, const void* image) {
    const unsigned char* img = static_cast<const unsigned char*>(image);
    if (std::memcmp(img, "\x7f" "ELF", 4) != 0 || img[4] != 2) return INVALID_IMAGE;
    uint16_t machine;
    std::memcpy(&machine, img + 0x12, 2);
    if (machine != 190) return INVALID_IMAGE;  // EM_CUDA
    *module = new Module{std::string(reinterpret_cast<const char*>(img), elf_size(img))};
    return OK;
}
CUresult cuModuleUnload(void* m) {
    delete static_cast<Module*>(m);
    return OK;
}
CUresult cuModuleGetFunction(void** f, void* m, const char* name) {
    const Module* mod = static_cast<const Module*>(m);
    if (!mod) return INVALID_HANDLE;
    if (mod->image.find(std::string(name) + '\0') == std::string::npos) return NOT_FOUND;
    if (gacc_shim_arity(name) < 0) return NOT_FOUND;
    *f = new Function{name};  // leaked with the module's lifetime: tests only
    return OK;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void*, void** params, void** extra) {
    const Function* fn = static_cast<const Function*>(f);
    if (!fn || gy != 1 || gz != 1 || by != 1 || bz != 1 || extra != nullptr) return INVALID_VALUE;
    char err[512] = {0};
    int arity = gacc_shim_arity(fn->name.c_str());
    if (gacc_shim_launch(fn->name.c_str(), gx, bx, shared, params, (unsigned)arity, err, sizeof err) != 0) {
        std::fprintf(stderr, "fake cuLaunchKernel: %s\n", err);
        return LAUNCH_FAILED;
    }
    return OK;
}

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(lock);
    *free_bytes = kMemory - used;
    *total = kMemory;
    return OK;
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    std::lock_guard<std::mutex> g(lock);
    if (used + bytes > kMemory) return OUT_OF_MEMORY;
    size_t rounded = (bytes + 255) / 256 * 256;
    void* m = std::aligned_alloc(256, rounded ? rounded : 256);
    if (!m) return OUT_OF_MEMORY;
    std::memset(m, 0xFF, rounded ? rounded : 256);  // poison, as the shim runtime does
    allocations[(CUdeviceptr)m] = bytes;
    used += bytes;
    *p = (CUdeviceptr)m;
    return OK;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) return INVALID_VALUE;
    used -= it->second;
    allocations.erase(it);
    std::free((void*)p);
    return OK;
}
CUresult cuPointerGetAttribute(void* data, int attr, CUdeviceptr p) {
    std::lock_guard<std::mutex> g(lock);
    if (attr != 2) return INVALID_VALUE;  // CU_POINTER_ATTRIBUTE_MEMORY_TYPE only
    if (!is_device(p, 1)) return INVALID_VALUE;  // what the driver says of plain host memory
    *static_cast<unsigned*>(data) = 2;     // CU_MEMORYTYPE_DEVICE
    return OK;
}

static CUresult checked_copy(void* dst, const void* src, size_t bytes, bool dst_dev, bool src_dev) {
    if (dst_dev && !src_dev) count_h2d++;
    if (src_dev && !dst_dev) count_d2h++;
    {
        std::lock_guard<std::mutex> g(lock);
        if ((dst_dev && !is_device((CUdeviceptr)dst, bytes)) || (src_dev && !is_device((CUdeviceptr)src, bytes)))
            return INVALID_VALUE;
    }
    std::memmove(dst, src, bytes);
    return OK;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { return checked_copy((void*)d, s, n, true, false); }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { return checked_copy(d, (const void*)s, n, false, true); }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) {
    return checked_copy((void*)d, s, n, true, false);
}
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) {
    return checked_copy(d, (const void*)s, n, false, true);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) {
    return checked_copy((void*)d, (const void*)s, n, true, true);
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void*) {
    {
        std::lock_guard<std::mutex> g(lock);
        if (!is_device(d, n)) return INVALID_VALUE;
    }
    std::memset((void*)d, v, n);
    return OK;
}

CUresult cuGetErrorName(CUresult r, const char** s) {
    switch (r) {
        case OK: *s = "CUDA_SUCCESS"; return OK;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; return OK;
        case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; return OK;
        case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; return OK;
        case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; return OK;
        case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; return OK;
        case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; return OK;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; return OK;
        case LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; return OK;
        default: *s = nullptr; return INVALID_VALUE;
    }
}
CUresult cuGetErrorString(CUresult r, const char** s) {
    const char* name = nullptr;
    CUresult rc = cuGetErrorName(r, &name);
    *s = name ? "(fake driver)" : nullptr;
    return rc;
}

unsigned long long fake_cuda_thread_count(const char* what) {
    if (std::strcmp(what, "sync") == 0) return count_sync;
    if (std::strcmp(what, "d2h") == 0) return count_d2h;
    if (std::strcmp(what, "h2d") == 0) return count_h2d;
    return ~0ull;
}

}  // extern "C"
