/* mlaref's probe of upstream ggml's CUDA back-end (ggml-cuda), built from the llama-cpp-python sdist on a GPU
   machine by mlaref.codegen.peers.cuda. One JSON object per case on stdout.

   Cases (argv, one per argument, fields separated by ':'):
     mm:TYPE:M:K:N:REPS            dst = ggml_mul_mat(weight [K, M] TYPE, src1 [K, N] f32): seconds per compute
     fa:KV:DK:DV:H:HKV:NQ:NKV:REPS ggml_flash_attn_ext(q f32 [DK, NQ, H], k KV [DK, NKV, HKV], v KV [DV, NKV, HKV],
                                   mask f16 [NKV, NQ] of zeros, scale 1/sqrt(DK))
     copy:OP:TYPE:NE0:NE1:REPS     OP = cpy (same type, [NE0, NE1] -> [NE0, NE1]), concat (two [NE0, NE1] along
                                   dim 0), repeat ([NE0, 1] -> [NE0, NE1]); the bytes moved per compute are
                                   reported so bandwidth = bytes / seconds
     dump:OP:TYPE:NE0:NE1:DIR      the same op once on small tensors; writes DIR/OP_TYPE.in0, .in1 (concat),
                                   .out (the raw bytes ggml-cuda produced) for the caller to check against the
                                   reference
   Every case first asks ggml_backend_supports_op; an unsupported case is reported as such and not run.
   Weights and K/V are random floats quantized with ggml_quantize_chunk (deterministic xorshift). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cuda.h"

static ggml_backend_t be;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static float frand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static enum ggml_type type_of(const char *s) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char *n = ggml_type_name((enum ggml_type)t);
        if (n && strcmp(n, s) == 0) return (enum ggml_type)t;
    }
    fprintf(stderr, "unknown type %s\n", s);
    exit(2);
}

/* fill a tensor of any type with random values in [-1, 1) (quantized types through ggml_quantize_chunk) */
static void fill(struct ggml_tensor *t, float amp) {
    const int64_t n0 = t->ne[0], rows = ggml_nrows(t);
    float *f = malloc(sizeof(float) * n0 * rows);
    for (int64_t i = 0; i < n0 * rows; ++i) f[i] = amp * frand();
    size_t bytes = ggml_nbytes(t);
    void *buf = malloc(bytes);
    if (t->type == GGML_TYPE_F32) {
        memcpy(buf, f, bytes);
    } else if (t->type == GGML_TYPE_F16) {
        ggml_fp32_to_fp16_row(f, buf, n0 * rows);
    } else if (t->type == GGML_TYPE_BF16) {
        ggml_fp32_to_bf16_row(f, buf, n0 * rows);
    } else {
        ggml_quantize_chunk(t->type, f, buf, 0, rows, n0, NULL);
    }
    ggml_backend_tensor_set(t, buf, 0, bytes);
    free(buf);
    free(f);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* build ctx tensors on the CUDA buffer, compute the graph of `out` reps times; prints the JSON tail */
static void run_graph(struct ggml_context *ctx, struct ggml_tensor *out, int reps, double *med, double *mn) {
    struct ggml_cgraph *g = ggml_new_graph(ctx);
    ggml_build_forward_expand(g, out);
    ggml_backend_graph_compute(be, g); /* warm-up (kernel loading, cuBLAS handles) */
    ggml_backend_synchronize(be);
    double *ts = malloc(sizeof(double) * reps);
    for (int r = 0; r < reps; ++r) {
        double t0 = now();
        ggml_backend_graph_compute(be, g);
        ggml_backend_synchronize(be);
        ts[r] = now() - t0;
    }
    qsort(ts, reps, sizeof(double), cmp_double);
    *med = ts[reps / 2];
    *mn = ts[0];
    free(ts);
}

static struct ggml_context *new_ctx(void) {
    struct ggml_init_params p = {.mem_size = 64 * ggml_tensor_overhead() + ggml_graph_overhead(),
                                 .mem_buffer = NULL, .no_alloc = true};
    return ggml_init(p);
}

/* false (and the JSON tail said, the context freed) when ggml-cuda's supports_op refuses `out` */
static int supported(struct ggml_context *ctx, const struct ggml_tensor *out) {
    if (ggml_backend_supports_op(be, out)) return 1;
    printf(", \"supported\": false}\n");
    ggml_free(ctx);
    return 0;
}

/* every source of `out` random (a flash-attention mask: zeros), `out` timed reps times; says the JSON tail with
   `key` (flop or bytes) = amount, frees the buffer and the context */
static void time_op(struct ggml_context *ctx, struct ggml_tensor *out, int reps, const char *key, double amount) {
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    for (int i = 0; i < GGML_MAX_SRC; ++i) {
        struct ggml_tensor *src = out->src[i];
        if (!src) continue;
        if (out->op == GGML_OP_FLASH_ATTN_EXT && i == 3) ggml_backend_tensor_memset(src, 0, 0, ggml_nbytes(src));
        else fill(src, 1.0f);
    }
    double med, mn;
    run_graph(ctx, out, reps, &med, &mn);
    printf(", \"supported\": true, \"reps\": %d, \"median_s\": %.9g, \"min_s\": %.9g, \"%s\": %.17g}\n", reps,
           med, mn, key, amount);
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
}

static void case_mm(char **f) {
    enum ggml_type t = type_of(f[1]);
    int64_t M = atoll(f[2]), K = atoll(f[3]), N = atoll(f[4]);
    struct ggml_context *ctx = new_ctx();
    struct ggml_tensor *y = ggml_mul_mat(ctx, ggml_new_tensor_2d(ctx, t, K, M),
                                         ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, N));
    printf("{\"case\": \"mm\", \"type\": \"%s\", \"M\": %lld, \"K\": %lld, \"N\": %lld", f[1], (long long)M,
           (long long)K, (long long)N);
    if (supported(ctx, y)) time_op(ctx, y, atoi(f[5]), "flop", 2.0 * M * K * N);
}

static void case_fa(char **f) {
    enum ggml_type t = type_of(f[1]);
    int64_t dk = atoll(f[2]), dv = atoll(f[3]), h = atoll(f[4]), hkv = atoll(f[5]), nq = atoll(f[6]),
            nkv = atoll(f[7]);
    struct ggml_context *ctx = new_ctx();
    struct ggml_tensor *o = ggml_flash_attn_ext(ctx, ggml_new_tensor_3d(ctx, GGML_TYPE_F32, dk, nq, h),
                                                ggml_new_tensor_3d(ctx, t, dk, nkv, hkv),
                                                ggml_new_tensor_3d(ctx, t, dv, nkv, hkv),
                                                ggml_new_tensor_2d(ctx, GGML_TYPE_F16, nkv, nq),
                                                1.0f / sqrtf((float)dk), 0.0f, 0.0f);
    ggml_prec_set_acc(o, GGML_PREC_F32);
    printf("{\"case\": \"fa\", \"type\": \"%s\", \"Dk\": %lld, \"Dv\": %lld, \"H\": %lld, \"Hkv\": %lld, "
           "\"n_q\": %lld, \"n_kv\": %lld", f[1], (long long)dk, (long long)dv, (long long)h, (long long)hkv,
           (long long)nq, (long long)nkv);
    if (supported(ctx, o)) time_op(ctx, o, atoi(f[8]), "flop", 2.0 * h * nq * nkv * (double)(dk + dv));
}

/* the copy ops: returns the output node; *a, *b the inputs (b NULL unless concat) */
static struct ggml_tensor *copy_op(struct ggml_context *ctx, const char *op, enum ggml_type t, int64_t ne0,
                                   int64_t ne1, struct ggml_tensor **a, struct ggml_tensor **b) {
    *b = NULL;
    if (strcmp(op, "cpy") == 0) {
        *a = ggml_new_tensor_2d(ctx, t, ne0, ne1);
        return ggml_cpy(ctx, *a, ggml_new_tensor_2d(ctx, t, ne0, ne1));
    }
    if (strcmp(op, "concat") == 0) {
        *a = ggml_new_tensor_2d(ctx, t, ne0, ne1);
        *b = ggml_new_tensor_2d(ctx, t, ne0, ne1);
        return ggml_concat(ctx, *a, *b, 0);
    }
    if (strcmp(op, "repeat") == 0) {
        *a = ggml_new_tensor_2d(ctx, t, ne0, 1);
        return ggml_repeat(ctx, *a, ggml_new_tensor_2d(ctx, t, ne0, ne1));
    }
    fprintf(stderr, "unknown copy op %s\n", op);
    exit(2);
}

static void case_copy(char **f, int dump) {
    enum ggml_type t = type_of(f[2]);
    int64_t ne0 = atoll(f[3]), ne1 = atoll(f[4]);
    struct ggml_context *ctx = new_ctx();
    struct ggml_tensor *a, *b;
    struct ggml_tensor *o = copy_op(ctx, f[1], t, ne0, ne1, &a, &b);
    printf("{\"case\": \"%s\", \"op\": \"%s\", \"type\": \"%s\", \"ne0\": %lld, \"ne1\": %lld", dump ? "dump" : "copy",
           f[1], f[2], (long long)ne0, (long long)ne1);
    if (!supported(ctx, o)) return;
    if (!dump) {
        /* bytes read and written: the output, plus each input read once (repeat reads its one row into cache) */
        double moved = (double)ggml_nbytes(o) + (double)ggml_nbytes(a) * (strcmp(f[1], "repeat") ? 1.0 : 0.0) +
                       (b ? (double)ggml_nbytes(b) : 0.0);
        time_op(ctx, o, atoi(f[5]), "bytes", moved);
        return;
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    fill(a, 1.0f);
    if (b) fill(b, 1.0f);
    double med, mn;
    run_graph(ctx, o, 1, &med, &mn);
    struct ggml_tensor *ts[3] = {a, b, o};
    const char *ext[3] = {"in0", "in1", "out"};
    for (int i = 0; i < 3; ++i) {
        if (!ts[i]) continue;
        size_t n = ggml_nbytes(ts[i]);
        void *h = malloc(n);
        ggml_backend_tensor_get(ts[i], h, 0, n);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s_%s.%s", f[5], f[1], f[2], ext[i]);
        FILE *fp = fopen(path, "wb");
        if (!fp || fwrite(h, 1, n, fp) != n) {
            fprintf(stderr, "cannot write %s\n", path);
            exit(2);
        }
        fclose(fp);
        free(h);
    }
    printf(", \"supported\": true, \"out_ne\": [%lld, %lld]}\n", (long long)o->ne[0], (long long)o->ne[1]);
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
}

int main(int argc, char **argv) {
    if (ggml_backend_cuda_get_device_count() < 1) {
        printf("{\"error\": \"no CUDA device\"}\n");
        return 3;
    }
    be = ggml_backend_cuda_init(0);
    if (!be) {
        printf("{\"error\": \"ggml_backend_cuda_init(0) failed\"}\n");
        return 3;
    }
    char desc[256] = {0};
    size_t free_b = 0, total_b = 0;
    ggml_backend_cuda_get_device_description(0, desc, sizeof desc);
    ggml_backend_cuda_get_device_memory(0, &free_b, &total_b);
    printf("{\"case\": \"device\", \"description\": \"%s\", \"total_bytes\": %zu}\n", desc, total_b);
    fflush(stdout);
    for (int i = 1; i < argc; ++i) {
        char *fields[12] = {0};
        int n = 0;
        char *s = strdup(argv[i]);
        for (char *tok = strtok(s, ":"); tok && n < 12; tok = strtok(NULL, ":")) fields[n++] = tok;
        if (n == 6 && strcmp(fields[0], "mm") == 0) case_mm(fields);
        else if (n == 9 && strcmp(fields[0], "fa") == 0) case_fa(fields);
        else if (n == 6 && strcmp(fields[0], "copy") == 0) case_copy(fields, 0);
        else if (n == 6 && strcmp(fields[0], "dump") == 0) case_copy(fields, 1);
        else {
            fprintf(stderr, "bad case %s\n", argv[i]);
            return 2;
        }
        fflush(stdout);
        free(s);
    }
    ggml_backend_free(be);
    return 0;
}
