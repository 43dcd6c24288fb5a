/*
 * bench_limits.c - the machine's limits that `metastate bench` divides its
 * speeds by, each measured in the bench's own process, on every core it
 * uses:
 *  - read bandwidth: a sum over a buffer far larger than the caches, read
 *    with the widest vectors and prefetches as the kernels read (both
 *    prefetch hints, the better one counts);
 *  - sgemm peak: OpenBLAS on 2048^3, the library at its best;
 *  - FMA peak: independent fused multiply-adds from registers at the widest
 *    vector width the CPU has. This is the arithmetic bound itself: OpenBLAS
 *    can miss it on CPUs newer than its kernel table (Debian 12's 0.3.21 runs
 *    its Haswell kernels on Zen 5, at half that), while our prefill kernels
 *    do not go through it.
 * Best of several passes each, since the machines are shared.
 */
#include "cli.h"

#include <cblas.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Runs fn on n_threads threads (at most 64) with jobs[t]; 0 when one failed to start. */
static int run_threads(int n_threads, void *(*fn)(void *), void *jobs, size_t job_size)
{
    pthread_t th[64];
    int started = 0;
    for (; started < n_threads; started++)
        if (pthread_create(&th[started], NULL, fn, (char *)jobs + (size_t)started * job_size))
            break;
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    return started == n_threads;
}

static int clamp_threads(int n) { return n < 1 ? 1 : n > 64 ? 64 : n; }

typedef struct {
    const uint64_t *p;
    size_t n;
    int width; /* 8 (AVX-512), 4 (AVX2) or 1 */
    int nta;   /* prefetch non-temporal (else into L1) */
    uint64_t sum;
} bw_job;

/* The bound is what this machine's best loop reads, so the probe reads as
 * the kernels do: the widest vectors and software prefetch ahead (on Zen 5
 * a plain scalar loop read 64 GB/s, this one 81, and the q4 decode kernel
 * moves more than the former), with either hint (engine/kernels.c picks
 * non-temporal on AMD, where it read best, and T0 elsewhere: an Emerald
 * Rapids read 13-17 GB/s non-temporal, ~30 with T0). */
#define BW_PF(p, i)                                                                              \
    do {                                                                                         \
        if (nta)                                                                                 \
            __builtin_prefetch((const char *)((p) + (i)) + 2048, 0, 0);                          \
        else                                                                                     \
            __builtin_prefetch((const char *)((p) + (i)) + 2048, 0, 3);                          \
    } while (0)

__attribute__((target("avx512f"))) static uint64_t bw_avx512(const uint64_t *p, size_t n, int nta)
{
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        BW_PF(p, i);
        BW_PF(p, i + 8);
        BW_PF(p, i + 16);
        BW_PF(p, i + 24);
        a = _mm512_add_epi64(a, _mm512_load_si512(p + i));
        b = _mm512_add_epi64(b, _mm512_load_si512(p + i + 8));
        c = _mm512_add_epi64(c, _mm512_load_si512(p + i + 16));
        d = _mm512_add_epi64(d, _mm512_load_si512(p + i + 24));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a, b),
                                                              _mm512_add_epi64(c, d)));
}

__attribute__((target("avx2"))) static uint64_t bw_avx2(const uint64_t *p, size_t n, int nta)
{
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i + 16 <= n; i += 16) {
        BW_PF(p, i);
        BW_PF(p, i + 8);
        a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i *)(p + i + 4)));
        c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i *)(p + i + 8)));
        d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i *)(p + i + 12)));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes,
                        _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

static void *bw_worker(void *arg)
{
    bw_job *j = arg;
    if (j->width == 8) {
        j->sum = bw_avx512(j->p, j->n, j->nta);
    } else if (j->width == 4) {
        j->sum = bw_avx2(j->p, j->n, j->nta);
    } else {
        uint64_t s[8] = {0};
        for (size_t i = 0; i + 8 <= j->n; i += 8)
            for (int k = 0; k < 8; k++)
                s[k] += j->p[i + k];
        j->sum = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    }
    return NULL;
}

double bench_bandwidth(int n_threads, uint64_t *sink)
{
    const size_t bytes = (size_t)1 << 30, n = bytes / 8;
    uint64_t *buf = aligned_alloc((size_t)2 << 20, bytes);
    if (!buf)
        return 0;
    /* On 2 MB pages like the engine's weights, so the bound is the best
     * this machine reads, not one lowered by TLB misses. */
    madvise(buf, bytes, MADV_HUGEPAGE);
    for (size_t i = 0; i < n; i++)
        buf[i] = i;
    n_threads = clamp_threads(n_threads);
    __builtin_cpu_init();
    const int width = __builtin_cpu_supports("avx512f") ? 8
                      : __builtin_cpu_supports("avx2") ? 4
                                                         : 1;
    const size_t share = n / (size_t)n_threads / 32 * 32; /* whole 256-byte steps */
    bw_job jobs[64];
    double best = 0;
    for (int rep = 0; rep < 6; rep++) { /* the hints in turns */
        for (int t = 0; t < n_threads; t++)
            jobs[t] = (bw_job){buf + share * (size_t)t, share, width, rep & 1, 0};
        double t0 = now_s();
        if (!run_threads(n_threads, bw_worker, jobs, sizeof jobs[0]))
            break;
        double bw = (double)(share * (size_t)n_threads * 8) / (now_s() - t0);
        for (int t = 0; t < n_threads; t++)
            *sink += jobs[t].sum;
        best = bw > best ? bw : best;
    }
    free(buf);
    return best;
}

const char *bench_blas_core(void) { return openblas_get_corename(); }

double bench_sgemm_peak(int n_threads)
{
    const int n = 2048;
    openblas_set_num_threads(n_threads);
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
          *c = malloc(sizeof(float) * n * n);
    double best = 0;
    if (a && b && c) {
        for (long i = 0; i < (long)n * n; i++) {
            a[i] = (float)(i % 13) * 0.01f;
            b[i] = (float)(i % 7) * 0.02f;
        }
        for (int rep = 0; rep < 4; rep++) {
            double t0 = now_s();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                        0.0f, c, n);
            double f = 2.0 * n * n * (double)n / (now_s() - t0);
            if (rep && f > best) /* the first call warms up OpenBLAS's threads */
                best = f;
        }
    }
    free(a);
    free(b);
    free(c);
    openblas_set_num_threads(1); /* the engine splits its GEMMs itself */
    return best;
}

/* Twelve independent chains: enough to cover the FMA latency times the
 * number of FMA pipes on current x86 cores (4 x 2). Named variables, not an
 * array, so that they live in registers; the empty asm keeps the compiler
 * from merging the chains or hoisting them out of the loop. */
#define FMA_ITERS 20000000L
#define FMA12(T, SET1, FMA, SUM)                                                                 \
    T a0 = SET1(0.10f), a1 = SET1(0.11f), a2 = SET1(0.12f), a3 = SET1(0.13f), a4 = SET1(0.14f), \
      a5 = SET1(0.15f), a6 = SET1(0.16f), a7 = SET1(0.17f), a8 = SET1(0.18f), a9 = SET1(0.19f), \
      a10 = SET1(0.20f), a11 = SET1(0.21f);                                                      \
    const T b = SET1(0.999f), c = SET1(1e-4f);                                                   \
    for (long i = 0; i < FMA_ITERS; i++) {                                                       \
        a0 = FMA(a0, b, c), a1 = FMA(a1, b, c), a2 = FMA(a2, b, c), a3 = FMA(a3, b, c);          \
        a4 = FMA(a4, b, c), a5 = FMA(a5, b, c), a6 = FMA(a6, b, c), a7 = FMA(a7, b, c);          \
        a8 = FMA(a8, b, c), a9 = FMA(a9, b, c), a10 = FMA(a10, b, c), a11 = FMA(a11, b, c);      \
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5),     \
                         "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));        \
    }                                                                                            \
    return SUM(a0) + SUM(a1) + SUM(a2) + SUM(a3) + SUM(a4) + SUM(a5) + SUM(a6) + SUM(a7) +      \
           SUM(a8) + SUM(a9) + SUM(a10) + SUM(a11);

__attribute__((target("avx2,fma"))) static float sum8(__m256 v)
{
    float lanes[8], s = 0;
    _mm256_storeu_ps(lanes, v);
    for (int j = 0; j < 8; j++)
        s += lanes[j];
    return s;
}

__attribute__((target("avx512f"))) static float fma_avx512(void)
{
    FMA12(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_reduce_add_ps)
}

__attribute__((target("avx2,fma"))) static float fma_avx2(void)
{
    FMA12(__m256, _mm256_set1_ps, _mm256_fmadd_ps, sum8)
}

typedef struct {
    int width; /* 16 (AVX-512) or 8 (AVX2) */
    float sum;
} fma_job;

static void *fma_worker(void *arg)
{
    fma_job *j = arg;
    j->sum = j->width == 16 ? fma_avx512() : fma_avx2();
    return NULL;
}

double bench_fma_peak(int n_threads)
{
    __builtin_cpu_init();
    int width = __builtin_cpu_supports("avx512f")                                  ? 16
                : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 8
                                                                                   : 0;
    if (!width)
        return 0;
    n_threads = clamp_threads(n_threads);
    fma_job jobs[64];
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        for (int t = 0; t < n_threads; t++)
            jobs[t] = (fma_job){width, 0};
        double t0 = now_s();
        if (!run_threads(n_threads, fma_worker, jobs, sizeof jobs[0]))
            break;
        double f = 2.0 * width * 12 * FMA_ITERS * n_threads / (now_s() - t0);
        best = f > best ? f : best;
    }
    return best;
}
