/* mlaref's driver for a cross-built upstream ggml (ggml-base + ggml-cpu, static) under qemu-user.

   Reads requests from stdin until EOF and answers each on stdout; every integer is a little-endian int32, every
   float an IEEE float32, rows are raw bytes (mlaref.codegen.peers.cross writes and reads this protocol):

     'F'                                    -> 16 x int32: ggml_cpu_has_{neon, arm_fma, fp16_va, dotprod,
                                               matmul_int8, sve, sme}, then __ARM_FEATURE_{DOTPROD, FMA,
                                               FP16_VECTOR_ARITHMETIC, MATMUL_INT8, SVE} as compiled, zero padded
     'D' type n M N, M x rows, N y rows     -> M*N floats: the CPU type traits' vec_dot(n) of x row i, y row j
                                               (y rows are of the type's vec_dot_type)
     'Q' type n R, R*n floats              -> R rows of `type`: the CPU type traits' from_float
     'T' type n R, R rows of `type`         -> R*n floats: ggml_get_type_traits(type)->to_float
     'S' ne0 ne1 ne2 ne3 mask_type scale max_bias, a floats, [mask: ne0*ne1 values of mask_type]
                                            -> the floats of ggml_soft_max_ext(a, mask, scale, max_bias) computed
                                               by ggml_graph_compute_with_ctx on one thread (mask_type -1: none,
                                               0: f32, 1: f16 as ggml_type numbers)

   Every request is one byte opcode followed by its int32 header. Exit status: 0 ok, 2 bad request, 3 I/O. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-cpu.h"

static void fail(int code, const char *what) {
    fprintf(stderr, "ggml_cross_driver: %s\n", what);
    exit(code);
}

static void get(void *p, size_t n) {
    if (n && fread(p, 1, n, stdin) != n) fail(3, "short read");
}

static void put(const void *p, size_t n) {
    if (n && fwrite(p, 1, n, stdout) != n) fail(3, "short write");
}

static int32_t get_i32(void) {
    int32_t v;
    get(&v, 4);
    return v;
}

static void *get_buf(size_t n) {
    /* 64-byte aligned, rounded up, so that SIMD loads of a row never see an unaligned block array */
    void *p = aligned_alloc(64, (n + 64) / 64 * 64);
    if (!p) fail(3, "out of memory");
    get(p, n);
    return p;
}

static void features(void) {
    int32_t f[16] = {0};
    f[0] = ggml_cpu_has_neon();
    f[1] = ggml_cpu_has_arm_fma();
    f[2] = ggml_cpu_has_fp16_va();
    f[3] = ggml_cpu_has_dotprod();
    f[4] = ggml_cpu_has_matmul_int8();
    f[5] = ggml_cpu_has_sve();
    f[6] = ggml_cpu_has_sme();
#if defined(__ARM_FEATURE_DOTPROD)
    f[7] = 1;
#endif
#if defined(__ARM_FEATURE_FMA)
    f[8] = 1;
#endif
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
    f[9] = 1;
#endif
#if defined(__ARM_FEATURE_MATMUL_INT8)
    f[10] = 1;
#endif
#if defined(__ARM_FEATURE_SVE)
    f[11] = 1;
#endif
    put(f, sizeof f);
}

static void vec_dot(void) {
    const enum ggml_type type = (enum ggml_type)get_i32();
    const int n = get_i32(), m = get_i32(), k = get_i32();
    if (type < 0 || type >= GGML_TYPE_COUNT || n <= 0 || m < 0 || k < 0) fail(2, "bad vec_dot header");
    const struct ggml_type_traits_cpu *tc = ggml_get_type_traits_cpu(type);
    if (!tc->vec_dot) fail(2, "type has no vec_dot");
    const size_t bx = ggml_row_size(type, n), by = ggml_row_size(tc->vec_dot_type, n);
    uint8_t *x = get_buf(bx * (size_t)m), *y = get_buf(by * (size_t)k);
    float *out = malloc(sizeof(float) * ((size_t)m * k + 1));
    for (int i = 0; i < m; i++)
        for (int j = 0; j < k; j++)
            tc->vec_dot(n, &out[(size_t)i * k + j], 0, x + bx * i, 0, y + by * j, 0, 1);
    put(out, sizeof(float) * (size_t)m * k);
    free(x);
    free(y);
    free(out);
}

static void from_float(void) {
    const enum ggml_type type = (enum ggml_type)get_i32();
    const int n = get_i32(), r = get_i32();
    if (type < 0 || type >= GGML_TYPE_COUNT || n <= 0 || r < 0) fail(2, "bad from_float header");
    const struct ggml_type_traits_cpu *tc = ggml_get_type_traits_cpu(type);
    if (!tc->from_float) fail(2, "type has no CPU from_float");
    const size_t row = ggml_row_size(type, n);
    float *x = get_buf(sizeof(float) * (size_t)n * r);
    uint8_t *out = aligned_alloc(64, (row * r + 64) / 64 * 64);
    for (int i = 0; i < r; i++) tc->from_float(x + (size_t)n * i, out + row * i, n);
    put(out, row * r);
    free(x);
    free(out);
}

static void to_float(void) {
    const enum ggml_type type = (enum ggml_type)get_i32();
    const int n = get_i32(), r = get_i32();
    if (type < 0 || type >= GGML_TYPE_COUNT || n <= 0 || r < 0) fail(2, "bad to_float header");
    const struct ggml_type_traits *t = ggml_get_type_traits(type);
    if (!t->to_float) fail(2, "type has no to_float");
    const size_t row = ggml_row_size(type, n);
    uint8_t *x = get_buf(row * r);
    float *out = malloc(sizeof(float) * ((size_t)n * r + 1));
    for (int i = 0; i < r; i++) t->to_float(x + row * i, out + (size_t)n * i, n);
    put(out, sizeof(float) * (size_t)n * r);
    free(x);
    free(out);
}

static void soft_max(void) {
    int64_t ne[4];
    for (int d = 0; d < 4; d++) ne[d] = get_i32();
    const int mask_type = get_i32();
    float scale, max_bias;
    get(&scale, 4);
    get(&max_bias, 4);
    if (ne[0] <= 0 || ne[1] <= 0 || ne[2] <= 0 || ne[3] <= 0 || mask_type < -1 || mask_type > 1)
        fail(2, "bad soft_max header");
    const size_t na = (size_t)(ne[0] * ne[1] * ne[2] * ne[3]);
    const size_t nm = mask_type < 0 ? 0 : (size_t)(ne[0] * ne[1]);
    struct ggml_init_params ip = {
        .mem_size = 2 * (na + nm) * sizeof(float) + 16 * ggml_tensor_overhead() + ggml_graph_overhead() + (1 << 20),
        .mem_buffer = NULL,
        .no_alloc = false,
    };
    struct ggml_context *ctx = ggml_init(ip);
    if (!ctx) fail(3, "ggml_init failed");
    struct ggml_tensor *a = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, ne[0], ne[1], ne[2], ne[3]);
    get(a->data, na * sizeof(float));
    struct ggml_tensor *mask = NULL;
    if (mask_type >= 0) {
        mask = ggml_new_tensor_2d(ctx, (enum ggml_type)mask_type, ne[0], ne[1]);
        get(mask->data, ggml_nbytes(mask));
    }
    struct ggml_tensor *out = ggml_soft_max_ext(ctx, a, mask, scale, max_bias);
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    if (ggml_graph_compute_with_ctx(ctx, gf, 1) != GGML_STATUS_SUCCESS) fail(3, "graph compute failed");
    put(out->data, na * sizeof(float));
    ggml_free(ctx);
}

int main(void) {
    ggml_cpu_init();
    int op;
    while ((op = getchar()) != EOF) {
        switch (op) {
        case 'F': features(); break;
        case 'D': vec_dot(); break;
        case 'Q': from_float(); break;
        case 'T': to_float(); break;
        case 'S': soft_max(); break;
        default: fail(2, "unknown request");
        }
    }
    fflush(stdout);
    return 0;
}
