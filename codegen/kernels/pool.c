/* The thread pool behind n_threads > 1 of the kernels (mlaref.codegen.kernels.pool): C threads, no Python hand-off.
 *
 * A call hands over an array of jobs, one per part of the rows. Every job is MLA_JOB_WORDS int64 words:
 *
 *     [kind, function address, argument 0, argument 1, ..., result]
 *
 * and `kind` says which prototype the function has, so each call below is through a pointer of exactly the
 * function's type (pointers travel as integers, a float as its 32 bits). A function that returns an int (the
 * mul_mat and flash_attn_ext kernels: an allocation failure, masked-out rows) leaves it in the last word. The
 * caller runs job 0 itself, worker w runs job w + 1, and mla_pool_run returns when every job is done. Rows are
 * split between jobs by the Python side, each job writes its own rows, so the bytes do not depend on how many
 * jobs there are.
 *
 * Waking a worker: each worker owns a cache-line-sized slot holding its next job (NULL when idle). After a job
 * it watches its slot for MLA_SPIN_NS (a kernel call from Python follows the previous one within microseconds),
 * then sleeps on a condition variable; the caller takes the mutex to wake sleepers, so no wake-up is lost.
 * One caller at a time: a second caller (another Python thread) that finds the pool busy runs its jobs itself,
 * in order, which gives the same bytes. After fork() the child starts a fresh pool (a pthread_atfork handler).
 *
 * Not generated code: this is the runtime the generated kernels are called through (like neon_driver.c).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MLA_JOB_WORDS 40
#define MLA_POOL_MAX_WORKERS 255
#define MLA_SPIN_NS 200000 /* how long an idle worker (and a waiting caller) spins before it sleeps (yields) */

enum {
    MLA_JOB_QUANTIZE = 1,  /* fn(const float *x, uint8_t *y, n_rows, n, x_stride, y_stride) */
    MLA_JOB_DEQUANTIZE,    /* fn(const uint8_t *x, float *y, n_rows, n, x_stride, y_stride) */
    MLA_JOB_CONVERT,       /* fn(const uint8_t *x, uint8_t *y, float *scratch, n_rows, n, x_stride, y_stride) */
    MLA_JOB_VEC_DOT,       /* fn(const uint8_t *x, x_stride, n_rows, const uint8_t *y, y_stride, ny, n, float *out,
                              out_stride) */
    MLA_JOB_COPY,          /* fn(uint8_t *dst, const uint8_t *src, row_bytes, n_rep, ne1, ne2, ne3, s_nb1..3,
                              d_nb1..3, stream) */
    MLA_JOB_CONCAT,        /* fn(uint8_t *dst, const uint8_t *a, const uint8_t *b, a_bytes, b_bytes, ne1, ne2, ne3,
                              a_nb1..3, b_nb1..3, d_nb1..3, stream) */
    /* peers, for the benchmark: the same split, so thread hand-off costs the same on both sides */
    MLA_JOB_MEMCPY,        /* memcpy(dst, src, bytes); the function word is unused */
    MLA_JOB_FROM_FLOAT,    /* ggml from_float: fn(const float *x, void *y, int64_t k) */
    MLA_JOB_TO_FLOAT,      /* ggml to_float: fn(const void *x, float *y, int64_t k) */
    MLA_JOB_GGML_VEC_DOT,  /* ggml vec_dot fn(int n, float *s, size_t bs, const void *x, size_t bx, const void *y,
                              size_t by, int nrc), called for each (x row, y row): x, x_stride, n_rows, y,
                              y_stride, ny, n, out, out_stride as for MLA_JOB_VEC_DOT */
    MLA_JOB_MUL_MAT,       /* int fn(const uint8_t *src0, const uint8_t *src1, float *dst, 17 int64: K, M, ne02, ne03,
                              nb01..03, N, ne12, ne13, nb11..13, r0, r1, c0, c1) */
    MLA_JOB_FLASH_ATTN,    /* int fn(q, k, v, mask, float *dst, 22 int64: Dk .. mne3, float scale, float softcap,
                              int64 k_step, int64 kv_chunks, int exp_kind, int64 q_block, u0, u1) */
    MLA_JOB_QUANTIZE_CHUNK, /* fn(const float *x, uint8_t *y, const float *qw, n_rows, n, x_stride, y_stride) */
    MLA_JOB_GGML_QUANTIZE_CHUNK, /* ggml_quantize_chunk(int type, const float *src, void *dst, int64 start, int64 nrows,
                                    int64 n_per_row, const float *imatrix) */
    MLA_JOB_CAST,          /* fn(uint8_t *dst, const uint8_t *src, n, ne1, ne2, ne3, s_nb1..3, d_nb1..3) */
    MLA_JOB_FA_MERGE,      /* fn(const float *a, const float *b, float *dst, Dv, r0, r1, final) */
    MLA_JOB_KINDS
};

typedef void (*mla_quantize_fn)(const float *, uint8_t *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_dequantize_fn)(const uint8_t *, float *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_convert_fn)(const uint8_t *, uint8_t *, float *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_vec_dot_fn)(const uint8_t *, int64_t, int64_t, const uint8_t *, int64_t, int64_t, int64_t,
                               float *, int64_t);
typedef void (*mla_copy_fn)(uint8_t *, const uint8_t *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                            int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_concat_fn)(uint8_t *, const uint8_t *, const uint8_t *, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t);
typedef void (*mla_quantize_chunk_fn)(const float *, uint8_t *, const float *, int64_t, int64_t, int64_t, int64_t);
typedef size_t (*mla_ggml_quantize_chunk_fn)(int, const float *, void *, int64_t, int64_t, int64_t, const float *);
typedef void (*mla_cast_fn)(uint8_t *, const uint8_t *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                            int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_fa_merge_fn)(const float *, const float *, float *, int64_t, int64_t, int64_t, int64_t);
typedef void (*mla_from_float_fn)(const float *, void *, int64_t);
typedef void (*mla_to_float_fn)(const void *, float *, int64_t);
typedef void (*mla_ggml_vec_dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
typedef int (*mla_mul_mat_fn)(const uint8_t *, const uint8_t *, float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, int64_t);
typedef int (*mla_flash_attn_fn)(const uint8_t *, const uint8_t *, const uint8_t *, const uint8_t *, float *,
                                 int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, int64_t, int64_t, float, float, int64_t, int64_t, int, int64_t,
                                 int64_t, int64_t);

/* the float whose 32 bits a job word holds */
static inline float mla_word_f32(int64_t w) {
    const uint32_t b = (uint32_t)w;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

#define MLA_P(type, k) ((type)(intptr_t)a[k])

static void mla_run_job(int64_t *job) {
    const int64_t *a = job + 2;
    const intptr_t fn = (intptr_t)job[1];
    switch (job[0]) {
    case MLA_JOB_QUANTIZE:
        ((mla_quantize_fn)fn)(MLA_P(const float *, 0), MLA_P(uint8_t *, 1), a[2], a[3], a[4], a[5]);
        break;
    case MLA_JOB_DEQUANTIZE:
        ((mla_dequantize_fn)fn)(MLA_P(const uint8_t *, 0), MLA_P(float *, 1), a[2], a[3], a[4], a[5]);
        break;
    case MLA_JOB_CONVERT:
        ((mla_convert_fn)fn)(MLA_P(const uint8_t *, 0), MLA_P(uint8_t *, 1), MLA_P(float *, 2), a[3], a[4], a[5],
                             a[6]);
        break;
    case MLA_JOB_VEC_DOT:
        ((mla_vec_dot_fn)fn)(MLA_P(const uint8_t *, 0), a[1], a[2], MLA_P(const uint8_t *, 3), a[4], a[5], a[6],
                             MLA_P(float *, 7), a[8]);
        break;
    case MLA_JOB_COPY:
        ((mla_copy_fn)fn)(MLA_P(uint8_t *, 0), MLA_P(const uint8_t *, 1), a[2], a[3], a[4], a[5], a[6], a[7], a[8],
                          a[9], a[10], a[11], a[12], a[13]);
        break;
    case MLA_JOB_CONCAT:
        ((mla_concat_fn)fn)(MLA_P(uint8_t *, 0), MLA_P(const uint8_t *, 1), MLA_P(const uint8_t *, 2), a[3], a[4],
                            a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15], a[16], a[17]);
        break;
    case MLA_JOB_QUANTIZE_CHUNK:
        ((mla_quantize_chunk_fn)fn)(MLA_P(const float *, 0), MLA_P(uint8_t *, 1), MLA_P(const float *, 2), a[3], a[4],
                                    a[5], a[6]);
        break;
    case MLA_JOB_GGML_QUANTIZE_CHUNK:
        ((mla_ggml_quantize_chunk_fn)fn)((int)a[0], MLA_P(const float *, 1), MLA_P(void *, 2), a[3], a[4], a[5],
                                         MLA_P(const float *, 6));
        break;
    case MLA_JOB_MEMCPY:
        memcpy(MLA_P(void *, 0), MLA_P(const void *, 1), (size_t)a[2]);
        break;
    case MLA_JOB_FROM_FLOAT:
        ((mla_from_float_fn)fn)(MLA_P(const float *, 0), MLA_P(void *, 1), a[2]);
        break;
    case MLA_JOB_TO_FLOAT:
        ((mla_to_float_fn)fn)(MLA_P(const void *, 0), MLA_P(float *, 1), a[2]);
        break;
    case MLA_JOB_GGML_VEC_DOT: {
        const uint8_t *x = MLA_P(const uint8_t *, 0), *y = MLA_P(const uint8_t *, 3);
        uint8_t *out = MLA_P(uint8_t *, 7);
        for (int64_t i = 0; i < a[2]; ++i)
            for (int64_t j = 0; j < a[5]; ++j)
                ((mla_ggml_vec_dot_fn)fn)((int)a[6], (float *)(out + i * a[8]) + j, 0, x + i * a[1], 0,
                                          y + j * a[4], 0, 1);
        break;
    }
    case MLA_JOB_MUL_MAT:
        job[MLA_JOB_WORDS - 1] = ((mla_mul_mat_fn)fn)(
            MLA_P(const uint8_t *, 0), MLA_P(const uint8_t *, 1), MLA_P(float *, 2), a[3], a[4], a[5], a[6], a[7],
            a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15], a[16], a[17], a[18], a[19]);
        break;
    case MLA_JOB_FLASH_ATTN:
        job[MLA_JOB_WORDS - 1] = ((mla_flash_attn_fn)fn)(
            MLA_P(const uint8_t *, 0), MLA_P(const uint8_t *, 1), MLA_P(const uint8_t *, 2), MLA_P(const uint8_t *, 3),
            MLA_P(float *, 4), a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15], a[16], a[17],
            a[18], a[19], a[20], a[21], a[22], a[23], a[24], a[25], a[26], mla_word_f32(a[27]), mla_word_f32(a[28]),
            a[29], a[30], (int)a[31], a[32], a[33], a[34]);
        break;
    case MLA_JOB_CAST:
        ((mla_cast_fn)fn)(MLA_P(uint8_t *, 0), MLA_P(const uint8_t *, 1), a[2], a[3], a[4], a[5], a[6], a[7], a[8],
                          a[9], a[10], a[11]);
        break;
    case MLA_JOB_FA_MERGE:
        ((mla_fa_merge_fn)fn)(MLA_P(const float *, 0), MLA_P(const float *, 1), MLA_P(float *, 2), a[3], a[4], a[5],
                              a[6]);
        break;
    default:
        break; /* unreachable: mla_pool_run checks every kind first */
    }
}

typedef struct {
    _Atomic(int64_t *) job; /* the next job of this worker; NULL when it has none (set back when done) */
    char pad[64 - sizeof(int64_t *)];
} mla_slot;

static struct {
    pthread_mutex_t busy;  /* held by the one caller the pool serves */
    pthread_mutex_t lock;  /* guards sleepers and the condition */
    pthread_cond_t wake;
    int sleepers;
    int n_workers;
    mla_slot slot[MLA_POOL_MAX_WORKERS];
} mla_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, {{0}}};

static inline void mla_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t mla_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Set while mla_pool_run_steps_timed runs: every job then leaves its own nanoseconds in word MLA_JOB_WORDS - 2
   (no prototype has that many arguments, so the word is free), read by the arena's profile to see how long each
   thread worked and how long the step waited for the slowest. */
static atomic_int mla_time_jobs;

static void mla_run_job_timed(int64_t *job) {
    if (!atomic_load_explicit(&mla_time_jobs, memory_order_relaxed)) {
        mla_run_job(job);
        return;
    }
    const int64_t t0 = mla_now_ns();
    mla_run_job(job);
    job[MLA_JOB_WORDS - 2] = mla_now_ns() - t0;
}

static void *mla_worker(void *arg) {
    mla_slot *slot = &mla_pool.slot[(intptr_t)arg];
    for (;;) {
        int64_t *job = atomic_load_explicit(&slot->job, memory_order_acquire);
        if (!job) {
            const int64_t until = mla_now_ns() + MLA_SPIN_NS;
            for (int spin = 0; !job; ++spin) {
                mla_relax();
                job = atomic_load_explicit(&slot->job, memory_order_acquire);
                if (!job && (spin & 255) == 255 && mla_now_ns() > until)
                    break;
            }
            if (!job) {
                pthread_mutex_lock(&mla_pool.lock);
                mla_pool.sleepers++;
                while (!(job = atomic_load_explicit(&slot->job, memory_order_acquire)))
                    pthread_cond_wait(&mla_pool.wake, &mla_pool.lock);
                mla_pool.sleepers--;
                pthread_mutex_unlock(&mla_pool.lock);
            }
        }
        mla_run_job_timed(job);
        atomic_store_explicit(&slot->job, NULL, memory_order_release);
    }
    return NULL;
}

/* Start workers until there are `want` (or thread creation fails); the number there is. */
static int mla_grow(int want) {
    while (mla_pool.n_workers < want) {
        pthread_attr_t attr;
        pthread_t t;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, mla_worker, (void *)(intptr_t)mla_pool.n_workers);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        mla_pool.n_workers++;
    }
    return mla_pool.n_workers;
}

/* A child of fork() has none of its parent's workers, and the parent may have held a mutex at the fork. */
static void mla_after_fork(void) {
    pthread_mutex_init(&mla_pool.busy, NULL);
    pthread_mutex_init(&mla_pool.lock, NULL);
    pthread_cond_init(&mla_pool.wake, NULL);
    mla_pool.sleepers = 0;
    mla_pool.n_workers = 0;
    for (int w = 0; w < MLA_POOL_MAX_WORKERS; ++w)
        atomic_store(&mla_pool.slot[w].job, NULL);
}

/* Run `n_jobs` jobs of MLA_JOB_WORDS words each; returns 0, or -1 (nothing run) if a kind is unknown or
   n_jobs is out of 1..MLA_POOL_MAX_WORKERS + 1. */
__attribute__((constructor)) static void mla_pool_init(void) {
    pthread_atfork(NULL, NULL, mla_after_fork);
}

int mla_pool_run(int64_t *jobs, int n_jobs) {
    if (n_jobs < 1 || n_jobs > MLA_POOL_MAX_WORKERS + 1)
        return -1;
    for (int j = 0; j < n_jobs; ++j)
        if (jobs[j * MLA_JOB_WORDS] < 1 || jobs[j * MLA_JOB_WORDS] >= MLA_JOB_KINDS)
            return -1;
    if (n_jobs == 1) {
        mla_run_job_timed(jobs);
        return 0;
    }
    if (pthread_mutex_trylock(&mla_pool.busy) != 0) {
        for (int j = 0; j < n_jobs; ++j) /* another caller has the pool: the same jobs, in turn */
            mla_run_job_timed(jobs + j * MLA_JOB_WORDS);
        return 0;
    }
    const int helpers = mla_grow(n_jobs - 1);
    const int handed = helpers < n_jobs - 1 ? helpers : n_jobs - 1;
    for (int w = 0; w < handed; ++w)
        atomic_store_explicit(&mla_pool.slot[w].job, jobs + (w + 1) * MLA_JOB_WORDS, memory_order_release);
    pthread_mutex_lock(&mla_pool.lock);
    if (mla_pool.sleepers)
        pthread_cond_broadcast(&mla_pool.wake);
    pthread_mutex_unlock(&mla_pool.lock);
    mla_run_job_timed(jobs);
    for (int j = handed + 1; j < n_jobs; ++j) /* jobs without a worker (thread creation failed) */
        mla_run_job_timed(jobs + j * MLA_JOB_WORDS);
    const int64_t until = mla_now_ns() + MLA_SPIN_NS;
    for (int w = 0; w < handed; ++w) {
        for (int spin = 0; atomic_load_explicit(&mla_pool.slot[w].job, memory_order_acquire); ++spin) {
            mla_relax();
            if ((spin & 255) == 255 && mla_now_ns() > until)
                sched_yield(); /* a worker was descheduled: give it the core */
        }
    }
    pthread_mutex_unlock(&mla_pool.busy);
    return 0;
}

/* A sequence of pool calls in one C call: step s runs the next n_per_step[s] jobs (as mla_pool_run) and starts
   only when step s - 1 is done, so a step may read what the previous one wrote (a graph's nodes in order, the
   arena executor of mlaref.codegen.arena). Returns 0, or -1 - s for the first step s that mla_pool_run refused
   (nothing of it or after it run). */
int mla_pool_run_steps(int64_t *jobs, const int32_t *n_per_step, int n_steps) {
    for (int s = 0; s < n_steps; ++s) {
        if (mla_pool_run(jobs, n_per_step[s]) != 0)
            return -1 - s;
        jobs += (int64_t)n_per_step[s] * MLA_JOB_WORDS;
    }
    return 0;
}

/* mla_pool_run_steps with a clock: ns[s] = the CLOCK_MONOTONIC nanoseconds from the start of step s to the end
   of step s (the caller's hand-off, every job, the wait for the slowest worker), read by the calling thread only, so
   the untimed mla_pool_run_steps stays as it is (but for one relaxed load per job), and every job's own time lands
   in its word MLA_JOB_WORDS - 2 (mla_run_job_timed). The profile of the arena executor (Arena.profile). */
int mla_pool_run_steps_timed(int64_t *jobs, const int32_t *n_per_step, int n_steps, int64_t *ns) {
    atomic_store(&mla_time_jobs, 1);
    int64_t t = mla_now_ns();
    for (int s = 0; s < n_steps; ++s) {
        if (mla_pool_run(jobs, n_per_step[s]) != 0) {
            atomic_store(&mla_time_jobs, 0);
            return -1 - s;
        }
        jobs += (int64_t)n_per_step[s] * MLA_JOB_WORDS;
        const int64_t now = mla_now_ns();
        ns[s] = now - t;
        t = now;
    }
    atomic_store(&mla_time_jobs, 0);
    return 0;
}

int mla_pool_workers(void) { return mla_pool.n_workers; }
