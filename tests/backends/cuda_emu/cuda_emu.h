// A small CPU emulator of the CUDA features used by kernels/*.cu, so that their logic runs
// (slowly) on a machine without a GPU.  Used by tests/cuda_emu/fake_cupy.py only.
//
// Every thread of a block is a fiber (ucontext) on one OS thread; blocks run one after another.
//   __shared__            static storage: shared by the threads of a block, reused by the next
//   __syncthreads()       a rendezvous of all threads of the block
//   __shfl_*_sync         a value exchange through a slot array between two rendezvous; the
//                         kernels call shuffles in block-uniform code only, as checked here:
//                         a block whose threads split between a barrier and exiting is an error
//   atomicAdd             plain read-modify-write (fibers never interleave inside it)
// The launcher checks the number, size and kind (pointer / int / unsigned / float) of every
// argument against the kernel's signature, which catches the classic RawKernel mistakes.
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
};

namespace emu {

struct Fiber {
    ucontext_t ctx;
    bool done = false, waiting = false;
    dim3 tid{0, 0, 0};
};

inline dim3 g_threadIdx{0, 0, 0}, g_blockIdx{0, 0, 0}, g_blockDim{1, 1, 1}, g_gridDim{1, 1, 1};
inline std::vector<Fiber> g_fibers;
inline std::vector<std::vector<char>> g_stacks;
inline int g_cur = 0;
inline ucontext_t g_sched;
inline void (*g_body)(void*) = nullptr;
inline void* g_body_arg = nullptr;
inline unsigned char g_slots[1024][8];

inline int linear_tid() { return (int)(g_threadIdx.x + g_blockDim.x * (g_threadIdx.y + g_blockDim.y * g_threadIdx.z)); }

inline void barrier() {
    Fiber& f = g_fibers[g_cur];
    f.waiting = true;
    swapcontext(&f.ctx, &g_sched);
}

inline void fiber_entry() {
    g_body(g_body_arg);
    g_fibers[g_cur].done = true;
    swapcontext(&g_fibers[g_cur].ctx, &g_sched);
}

// Runs body(arg) as every thread of every block of the grid.
inline void launch(dim3 grid, dim3 block, void (*body)(void*), void* arg) {
    const int nthreads = (int)(block.x * block.y * block.z);
    if (nthreads < 1 || nthreads > 1024) throw std::runtime_error("block size must be 1..1024");
    if (grid.x < 1 || grid.y < 1 || grid.z < 1) throw std::runtime_error("empty grid");
    const size_t stack_size = 256 * 1024;
    if ((int)g_stacks.size() < nthreads) g_stacks.resize(nthreads);
    for (auto& s : g_stacks)
        if (s.size() < stack_size) s.resize(stack_size);
    g_body = body;
    g_body_arg = arg;
    g_blockDim = block;
    g_gridDim = grid;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                g_blockIdx = dim3{bx, by, bz};
                g_fibers.assign(nthreads, Fiber());
                for (int t = 0; t < nthreads; ++t) {
                    Fiber& f = g_fibers[t];
                    f.tid = dim3{(unsigned)(t % block.x), (unsigned)((t / block.x) % block.y),
                                 (unsigned)(t / (block.x * block.y))};
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = g_stacks[t].data();
                    f.ctx.uc_stack.ss_size = stack_size;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, fiber_entry, 0);
                }
                for (;;) {
                    int waiting = 0, done = 0;
                    for (int t = 0; t < nthreads; ++t) {
                        Fiber& f = g_fibers[t];
                        if (f.done) continue;
                        f.waiting = false;
                        g_cur = t;
                        g_threadIdx = f.tid;
                        swapcontext(&g_sched, &f.ctx);
                    }
                    for (auto& f : g_fibers) {
                        waiting += f.waiting && !f.done;
                        done += f.done;
                    }
                    if (done == nthreads) break;
                    if (waiting + done != nthreads)
                        throw std::runtime_error("emulator: a thread neither finished nor reached a barrier");
                    if (done > 0)
                        throw std::runtime_error("emulator: __syncthreads or a shuffle reached by only part of "
                                                 "the block (the others had exited)");
                }
            }
}

template <typename T>
T shfl_xor(T v, int mask) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    const int tid = linear_tid(), lane = tid & 31, src = (tid & ~31) | ((lane ^ mask) & 31);
    std::memcpy(g_slots[tid], &v, sizeof(T));
    barrier();
    T r;
    std::memcpy(&r, g_slots[src], sizeof(T));
    barrier();
    return r;
}

template <typename T>
T shfl_up(T v, int delta) {
    const int tid = linear_tid(), lane = tid & 31;
    std::memcpy(g_slots[tid], &v, sizeof(T));
    barrier();
    T r = v;
    if (lane >= delta) std::memcpy(&r, g_slots[tid - delta], sizeof(T));
    barrier();
    return r;
}

// ---- argument checking and unpacking ----------------------------------------------------
template <typename T>
constexpr char kind_of() {
    return std::is_pointer<T>::value ? 'p'
           : std::is_floating_point<T>::value ? 'f'
           : std::is_signed<T>::value ? 'i' : 'u';
}

template <typename... Args, size_t... I>
void call_kernel(void (*k)(Args...), void** p, std::index_sequence<I...>) {
    k(*static_cast<typename std::decay<Args>::type*>(p[I])...);
}

template <typename... Args>
struct Call {
    void (*k)(Args...);
    void** params;
    static void body(void* self) {
        Call* c = static_cast<Call*>(self);
        call_kernel(c->k, c->params, std::index_sequence_for<Args...>{});
    }
};

// kinds: one char per argument as passed from Python ('p' pointer, 'i', 'u', 'f'), sizes in bytes
template <typename... Args>
void launch_kernel(void (*k)(Args...), dim3 grid, dim3 block, void** params, const char* kinds,
                   const int* sizes, int n) {
    constexpr int N = sizeof...(Args);
    if (n != N) throw std::runtime_error("kernel takes " + std::to_string(N) + " arguments, got " + std::to_string(n));
    const char want_kind[N > 0 ? N : 1] = {kind_of<typename std::decay<Args>::type>()...};
    const int want_size[N > 0 ? N : 1] = {(int)sizeof(typename std::decay<Args>::type)...};
    for (int i = 0; i < N; ++i) {
        const bool ptr_ok = want_kind[i] == 'p' && (kinds[i] == 'p' || (kinds[i] == 'u' && sizes[i] == 8));
        if (sizes[i] != want_size[i] || !(kinds[i] == want_kind[i] || ptr_ok))
            throw std::runtime_error("argument " + std::to_string(i) + ": kernel expects kind '" +
                                     std::string(1, want_kind[i]) + "' of " + std::to_string(want_size[i]) +
                                     " bytes, got '" + std::string(1, kinds[i]) + "' of " +
                                     std::to_string(sizes[i]) + " bytes");
    }
    Call<Args...> c{k, params};
    launch(grid, block, &Call<Args...>::body, &c);
}

}  // namespace emu

#define threadIdx (emu::g_threadIdx)
#define blockIdx (emu::g_blockIdx)
#define blockDim (emu::g_blockDim)
#define gridDim (emu::g_gridDim)

inline void __syncthreads() { emu::barrier(); }
#define __shfl_xor_sync(mask, v, o) emu::shfl_xor((v), (o))
#define __shfl_up_sync(mask, v, d) emu::shfl_up((v), (d))

template <typename T>
inline T atomicAdd(T* p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}

// the persistent kernels: dynamic shared memory, L2 loads, fences (one OS thread: plain memory)
#define DYN_SHARED(name) alignas(16) static unsigned char name[1 << 20]
template <typename T>
inline T __ldcg(const T* p) { return *p; }
inline void __threadfence() {}
inline void __nanosleep(unsigned) {}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

// the entry point a generated registry defines:
//   extern "C" int emu_launch(const char* name, const unsigned* grid3, const unsigned* block3,
//                             void** params, const char* kinds, const int* sizes, int n,
//                             char* err, int errlen);
struct EmuEntry {
    const char* name;
    void (*launch)(dim3, dim3, void**, const char*, const int*, int);
};

inline int emu_dispatch(const EmuEntry* table, int count, const char* name, const unsigned* g, const unsigned* b,
                        void** params, const char* kinds, const int* sizes, int n, char* err, int errlen) {
    try {
        for (int i = 0; i < count; ++i)
            if (std::strcmp(table[i].name, name) == 0) {
                table[i].launch(dim3{g[0], g[1], g[2]}, dim3{b[0], b[1], b[2]}, params, kinds, sizes, n);
                return 0;
            }
        throw std::runtime_error(std::string("no kernel named ") + name);
    } catch (const std::exception& e) {
        std::strncpy(err, e.what(), errlen - 1);
        err[errlen - 1] = 0;
        return 1;
    }
}
