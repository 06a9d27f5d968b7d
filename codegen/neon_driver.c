/* mlaref's driver for cross-compiled kernels under qemu-user: runs one row kernel on buffers held in files.

   usage: driver NAME N_ROWS N X_STRIDE Y_STRIDE IN_FILE OUT_FILE [N_Y Y_STRIDE Y_OFFSET]
   IN_FILE holds the input rows; OUT_FILE holds the output buffer as the caller prepared it (poison, gaps, guard
   bytes) and is overwritten with the buffer after the call, so the caller checks guards exactly as in-process.
   vec_dot kernels take the three extra arguments: IN_FILE holds the x rows and, from byte Y_OFFSET, N_Y y rows
   at Y_STRIDE; Y_STRIDE of the first group is then the output row stride.
   The kernel table (mla_table.h) is written by mlaref.codegen.build for the kernels linked in. Exit status:
   0 ok, 2 usage, 3 unknown kernel, 4 I/O. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MLA_DEQUANTIZE_ROW = 1, MLA_QUANTIZE_ROW = 2, MLA_CONVERT_ROWS = 3, MLA_VEC_DOT = 4 };

typedef void (*mla_deq_fn)(const uint8_t *, float *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_quant_fn)(const float *, uint8_t *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_conv_fn)(const uint8_t *, uint8_t *, float *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_dot_fn)(const uint8_t *, int64_t, int64_t, const uint8_t *, int64_t, int64_t, int64_t, float *,
                           int64_t);

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

int main(int argc, char **argv) {
    if (argc != 8 && argc != 11) {
        fprintf(stderr, "usage: %s NAME N_ROWS N X_STRIDE Y_STRIDE IN_FILE OUT_FILE [N_Y Y_STRIDE Y_OFFSET]\n", argv[0]);
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
    const int64_t n_rows = atoll(argv[2]), n = atoll(argv[3]), xs = atoll(argv[4]), ys = atoll(argv[5]);
    size_t in_size = 0, out_size = 0;
    uint8_t *in = read_file(argv[6], &in_size);
    uint8_t *out = read_file(argv[7], &out_size);
    if (!in || !out) {
        fprintf(stderr, "cannot read %s or %s\n", argv[6], argv[7]);
        return 4;
    }
    if (e->family == MLA_VEC_DOT) {
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
    FILE *f = fopen(argv[7], "wb");
    if (!f || fwrite(out, 1, out_size, f) != out_size) return 4;
    fclose(f);
    free(in);
    free(out);
    return 0;
}
