/* A CPU stand-in for the part of CUDA that mlaref's generated kernels use, so that a kernel family's translation
   unit compiles with the host C++ compiler (tests/cuda/test_cuda_emulated.py) and its host entries run on the CPU.

   Threads: a launch runs its blocks one after another on `block` OS threads (std::thread), each with its own
   threadIdx. __syncthreads is a std::barrier of the block, __shfl_xor_sync exchanges through a per-warp
   buffer between two barriers of the warp (every lane of a warp must call it, as the kernels do), __shared__ is a
   static local (one copy for the block running). Arithmetic: each intrinsic is its IEEE operation, rounded once
   (compile with -ffp-contract=off); __half is _Float16 (conversions round to nearest even). Device memory is host
   memory. This checks what the source computes (indices, strides, barriers, orders), not what nvcc and a GPU make
   of it. */
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <barrier>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(n)

struct dim3 {
    unsigned x, y, z;
};
inline thread_local dim3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1}, gridDim{1, 1, 1};

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};

typedef int cudaError_t;
typedef int cudaEvent_t;
enum { cudaSuccess = 0 };
enum { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
inline cudaError_t cudaMalloc(void **p, size_t n) { *p = malloc(n ? n : 1); return *p ? 0 : 2; }
inline cudaError_t cudaFree(void *p) { free(p); return 0; }
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, int) { memcpy(d, s, n); return 0; }
inline cudaError_t cudaGetLastError() { return 0; }
inline cudaError_t cudaDeviceSynchronize() { return 0; }
inline cudaError_t cudaEventCreate(cudaEvent_t *) { return 0; }
inline cudaError_t cudaEventRecord(cudaEvent_t) { return 0; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return 0; }
inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t, cudaEvent_t) { *ms = 0.0f; return 0; }
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return 0; }
inline const char *cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }

typedef _Float16 __half;
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half_rn(float f) { return (__half)f; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __int2float_rn(int i) { return (float)i; }
inline int __float2int_rn(float f) { return (int)lrintf(f); }
inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline int __dp4a(int a, int b, int c) {
    for (int k = 0; k < 4; ++k) c += (int)(int8_t)(a >> (8 * k)) * (int)(int8_t)(b >> (8 * k));
    return c;
}

struct mla_emu_block {
    std::unique_ptr<std::barrier<>> all;
    std::vector<std::unique_ptr<std::barrier<>>> warp;
    std::vector<uint64_t> slots;
};
inline mla_emu_block *mla_emu_cur;

inline void __syncthreads() { mla_emu_cur->all->arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
    static_assert(sizeof(T) <= 8, "a shuffle moves one register");
    const unsigned lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    uint64_t *buf = mla_emu_cur->slots.data() + 32 * w;
    memcpy(&buf[lane], &v, sizeof v);
    mla_emu_cur->warp[w]->arrive_and_wait();
    T r;
    memcpy(&r, &buf[lane ^ (unsigned)o], sizeof r);
    mla_emu_cur->warp[w]->arrive_and_wait();
    return r;
}

/* kernel<<<grid, block>>>(args...) becomes mla_emu_launch(grid, block, kernel, args...): `block` threads run the
   blocks one after another, with a barrier between two blocks (a block's shared statics are then free). */
template <typename K, typename... A>
inline void mla_emu_launch(unsigned grid, unsigned block, K kernel, A... args) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    mla_emu_block blk;
    blk.all = std::make_unique<std::barrier<>>(block);
    for (unsigned w = 0; w < (block + 31) / 32; ++w)
        blk.warp.push_back(std::make_unique<std::barrier<>>(block - 32 * w < 32 ? block - 32 * w : 32));
    blk.slots.assign(32 * ((block + 31) / 32), 0);
    mla_emu_cur = &blk;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < block; ++t)
        ts.emplace_back([=, &blk]() {
            threadIdx = {t, 0, 0};
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx = {b, 0, 0};
                kernel(args...);
                blk.all->arrive_and_wait();
            }
        });
    for (auto &th : ts) th.join();
}
