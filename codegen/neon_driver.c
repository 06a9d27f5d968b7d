/* mlaref's driver for cross-compiled kernels under qemu-user: runs one kernel on buffers held in files.

   usage: driver NAME N_ROWS N X_STRIDE Y_STRIDE IN_FILE OUT_FILE [N_Y Y_STRIDE Y_OFFSET]
   IN_FILE holds the input rows; OUT_FILE holds the output buffer as the caller prepared it (poison, gaps, guard
   bytes) and is overwritten with the buffer after the call, so the caller checks guards exactly as in-process.
   vec_dot kernels take the three extra arguments: IN_FILE holds the x rows and, from byte Y_OFFSET, N_Y y rows
   at Y_STRIDE; Y_STRIDE of the first group is then the output row stride.
   usage: driver NAME IN_FILE OUT_FILE JOBS   (mul_mat, flash_attn_ext(_partial), fa_merge: one thread's part per job)
   JOBS: calls separated by ';', run in order on the same buffers. A call's arguments are comma-separated int64:
   the byte offsets in IN_FILE of the kernel's input pointers (mul_mat: src0, src1; flash_attn_ext: q, k, v, mask;
   fa_merge: a, b;
   -1 for NULL), then its arguments after its pointers (float arguments as their f32 bits); the output pointer is
   OUT_FILE's buffer. Each call's return value is printed as "rc N".
   The kernel table (mla_table.h) is written by mlaref.codegen.build for the kernels linked in. Exit status:
   0 ok, 2 usage, 3 unknown kernel, 4 I/O. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MLA_DEQUANTIZE_ROW = 1, MLA_QUANTIZE_ROW = 2, MLA_CONVERT_ROWS = 3, MLA_VEC_DOT = 4, MLA_MUL_MAT = 5,
       MLA_FLASH_ATTN_EXT = 6, MLA_FA_MERGE = 7 };

typedef void (*mla_deq_fn)(const uint8_t *, float *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_quant_fn)(const float *, uint8_t *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_conv_fn)(const uint8_t *, uint8_t *, float *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_dot_fn)(const uint8_t *, int64_t, int64_t, const uint8_t *, int64_t, int64_t, int64_t, float *,
                           int64_t);
typedef int (*mla_mm_fn)(const uint8_t *, const uint8_t *, float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t);
typedef int (*mla_fa_fn)(const uint8_t *, const uint8_t *, const uint8_t *, const uint8_t *, float *, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float,
                         float, int64_t, int64_t, int, int64_t, int64_t, int64_t);

typedef void (*mla_merge_fn)(const float *, const float *, float *, int64_t, int64_t, int64_t, int64_t);

struct mla_entry {
    const char *name;
    int family;
    void (*fn)(void);
};

#include "mla_table.h"

static void *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    /* 64-byte aligned, as the in-process tests align their buffers */
    void *buf = aligned_alloc(64, ((size_t)n + 64) / 64 * 64);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static float f32_of_bits(int64_t w) {
    const uint32_t u = (uint32_t)w;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* mul_mat / flash_attn_ext / fa_merge: the pointers from offsets into in (NULL for -1), the output, the other
   arguments */
static int run_mm(const struct mla_entry *e, const uint8_t *in, float *out, const char **list) {
    int64_t a[64];
    int n = 0;
    const char *c = *list;
    for (; *c && *c != ';' && n < 64; ++n) {
        char *end;
        a[n] = strtoll(c, &end, 10);
        c = *end == ',' ? end + 1 : end;
    }
    *list = *c == ';' ? c + 1 : c;
    const int n_in = e->family == MLA_FLASH_ATTN_EXT ? 4 : 2;
    if (n != n_in + (e->family == MLA_MUL_MAT ? 17 : e->family == MLA_FA_MERGE ? 4 : 30)) {
        fprintf(stderr, "%s: %d arguments\n", e->name, n);
        exit(2);
    }
    const uint8_t *p[4];
    for (int i = 0; i < n_in; ++i) p[i] = a[i] < 0 ? NULL : in + a[i];
    const int64_t *s = a + n_in;
    if (e->family == MLA_FA_MERGE) {
        ((mla_merge_fn)e->fn)((const float *)(const void *)p[0], (const float *)(const void *)p[1], out, s[0], s[1],
                              s[2], s[3]);
        return 0;
    }
    if (e->family == MLA_MUL_MAT) {
        return ((mla_mm_fn)e->fn)(p[0], p[1], out, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10],
                                  s[11], s[12], s[13], s[14], s[15], s[16]);
    }
    return ((mla_fa_fn)e->fn)(p[0], p[1], p[2], p[3], out, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9],
                              s[10], s[11], s[12], s[13], s[14], s[15], s[16], s[17], s[18], s[19], s[20], s[21],
                              f32_of_bits(s[22]), f32_of_bits(s[23]), s[24], s[25], (int)s[26], s[27], s[28], s[29]);
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 8 && argc != 11) {
        fprintf(stderr, "usage: %s NAME N_ROWS N X_STRIDE Y_STRIDE IN_FILE OUT_FILE [N_Y Y_STRIDE Y_OFFSET]\n"
                        "       %s NAME IN_FILE OUT_FILE JOBS\n", argv[0], argv[0]);
        return 2;
    }
    const struct mla_entry *e = NULL;
    for (size_t i = 0; i < sizeof(mla_table) / sizeof(mla_table[0]); ++i) {
        if (strcmp(mla_table[i].name, argv[1]) == 0) e = &mla_table[i];
    }
    if (!e) {
        fprintf(stderr, "unknown kernel %s\n", argv[1]);
        return 3;
    }
    const int mm = e->family == MLA_MUL_MAT || e->family == MLA_FLASH_ATTN_EXT || e->family == MLA_FA_MERGE;
    if (mm != (argc == 5)) return 2;
    const char *in_path = mm ? argv[2] : argv[6], *out_path = mm ? argv[3] : argv[7];
    size_t in_size = 0, out_size = 0;
    uint8_t *in = read_file(in_path, &in_size);
    uint8_t *out = read_file(out_path, &out_size);
    if (!in || !out) {
        fprintf(stderr, "cannot read %s or %s\n", in_path, out_path);
        return 4;
    }
    const int64_t n_rows = mm ? 0 : atoll(argv[2]), n = mm ? 0 : atoll(argv[3]), xs = mm ? 0 : atoll(argv[4]),
                  ys = mm ? 0 : atoll(argv[5]);
    if (mm) {
        for (const char *jobs = argv[4]; *jobs;) printf("rc %d\n", run_mm(e, in, (float *)(void *)out, &jobs));
    } else if (e->family == MLA_VEC_DOT) {
        if (argc != 11) return 2;
        const int64_t n_y = atoll(argv[8]), y_stride = atoll(argv[9]), y_off = atoll(argv[10]);
        ((mla_dot_fn)e->fn)(in, xs, n_rows, in + y_off, y_stride, n_y, n, (float *)(void *)out, ys);
    } else if (e->family == MLA_DEQUANTIZE_ROW) {
        ((mla_deq_fn)e->fn)(in, (float *)(void *)out, n_rows, n, xs, ys);
    } else if (e->family == MLA_QUANTIZE_ROW) {
        ((mla_quant_fn)e->fn)((const float *)(const void *)in, out, n_rows, n, xs, ys);
    } else {
        float *scratch = malloc((size_t)n * sizeof(float) + 64);
        ((mla_conv_fn)e->fn)(in, out, scratch, n_rows, n, xs, ys);
        free(scratch);
    }
    FILE *f = fopen(out_path, "wb");
    if (!f || fwrite(out, 1, out_size, f) != out_size) return 4;
    fclose(f);
    free(in);
    free(out);
    return 0;
}
