/* Device queries and the baselines the CUDA check times mlaref's kernels against (hand-written, not generated):
   the device count and name, and cudaMemcpy device-to-device bandwidth. Every entry returns a cudaError_t. */
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

extern "C" int mlaref_cuda_device_count(int *n) { return (int)cudaGetDeviceCount(n); }

extern "C" int mlaref_cuda_device_name(char *buf, int64_t size, int *major, int *minor, int64_t *mem_bytes) {
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, 0);
    if (e != cudaSuccess) return (int)e;
    strncpy(buf, p.name, (size_t)size - 1);
    buf[size - 1] = 0;
    *major = p.major;
    *minor = p.minor;
    *mem_bytes = (int64_t)p.totalGlobalMem;
    return 0;
}

/* `iters` cudaMemcpy of `bytes` from one device buffer to another after one untimed copy; *ms for all of them. */
extern "C" int mlaref_cuda_memcpy_d2d_timed(int64_t bytes, int64_t iters, float *ms) {
    void *a = NULL, *b = NULL;
    cudaError_t e = cudaMalloc(&a, (size_t)bytes);
    if (e == cudaSuccess) e = cudaMalloc(&b, (size_t)bytes);
    if (e == cudaSuccess) e = cudaMemset(a, 1, (size_t)bytes);
    if (e == cudaSuccess) e = cudaMemcpy(b, a, (size_t)bytes, cudaMemcpyDeviceToDevice);
    cudaEvent_t t0, t1;
    if (e == cudaSuccess) {
        cudaEventCreate(&t0);
        cudaEventCreate(&t1);
        cudaEventRecord(t0);
        for (int64_t k = 0; k < iters; ++k) cudaMemcpyAsync(b, a, (size_t)bytes, cudaMemcpyDeviceToDevice);
        cudaEventRecord(t1);
        e = cudaEventSynchronize(t1);
        if (e == cudaSuccess) cudaEventElapsedTime(ms, t0, t1);
        cudaEventDestroy(t0);
        cudaEventDestroy(t1);
    }
    cudaFree(a);
    cudaFree(b);
    return (int)e;
}

extern "C" const char *mlaref_cuda_error_string(int e) { return cudaGetErrorString((cudaError_t)e); }
