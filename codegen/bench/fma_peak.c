/* The FMA peak of one core: chains of independent fused multiply-adds, nothing else.
 *
 * Each function runs `iters` rounds of ACC independent accumulators, acc[i] = acc[i] * a + b, in the widest
 * registers its ISA has (AVX2: 8 f32 lanes, AVX-512: 16). ACC = 12 chains hides the FMA latency (4 cycles on
 * Zen 3 / Ice Lake, 2 pipes: 8 chains in flight suffice; 12 leave headroom) without spilling. The loop body is
 * FMAs and one counter; the accumulators are summed and returned so the compiler keeps every chain. The caller
 * (codegen/bench/peak.py) times the call and counts 2 flops per lane per FMA.
 *
 * Compiled like every runtime module (-O2 -ffp-contract=off): the FMAs here are explicit intrinsics, so the
 * contraction setting does not matter. Each ISA's function carries its own target attribute; the caller only
 * calls the ones the CPU has.
 */
#include <stdint.h>
#include <immintrin.h>

#define ACC 12

__attribute__((target("avx2,fma")))
float mla_fma_peak_avx2(int64_t iters)
{
    __m256 acc[ACC];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < ACC; ++i) acc[i] = _mm256_set1_ps((float)i);
    for (int64_t k = 0; k < iters; ++k) {
#pragma GCC unroll 12
        for (int i = 0; i < ACC; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
    __m256 s = acc[0];
    for (int i = 1; i < ACC; ++i) s = _mm256_add_ps(s, acc[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

__attribute__((target("avx512f")))
float mla_fma_peak_avx512(int64_t iters)
{
    __m512 acc[ACC];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < ACC; ++i) acc[i] = _mm512_set1_ps((float)i);
    for (int64_t k = 0; k < iters; ++k) {
#pragma GCC unroll 12
        for (int i = 0; i < ACC; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    __m512 s = acc[0];
    for (int i = 1; i < ACC; ++i) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}
