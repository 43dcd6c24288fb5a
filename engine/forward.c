/*
 * forward.c - the RWKV-7 block, for a chunk of tokens or a single token.
 *
 * Design: one code path serves prefill and decoding. Tokens are processed in
 * chunks of up to max_chunk rows; every projection of a chunk is one matrix
 * product: our packed kernels (kernels.h) for decoding and batches of up
 * to K_MAX_BATCH rows, where a GEMM would run at a fraction of the memory
 * bandwidth, and for chunks of any length in the int8 / q4 / bf16-compute
 * modes and wherever the CPU has AVX2; OpenBLAS sgemm for longer chunks of
 * the exact formats on the portable kernels. Only the WKV recurrence walks
 * the tokens one by one. All activations live in the ms_ctx, allocated once
 * in ms_ctx_new: nothing allocates per token. Arithmetic is fp32 (SPEC 1.7)
 * except the opt-in quantized products.
 */
#include "model.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DECAY_SCALE 0.606531f /* SPEC 1.6 choice: the constant as the reference writes it */
#define LN_EPS 1e-5f
#define GN_EPS 64e-5f         /* BlinkDL hard-codes 64e-5 for the GroupNorm of ln_x */
#define DEFAULT_CHUNK 128
#define PANEL_ROWS 256 /* rows of a packed matrix widened (transposed) at a time for sgemm */
#define SHIFT_ITEMS 8   /* parallel items of a layer norm and token shift */
#define LOGIT_ROWS (K_MAX_BATCH + MS_MAX_CHUNKS) /* a mixed call's rows with logits, at most */

struct ms_ctx {
    const ms_model *m;
    int max_chunk;
    /* (T, C) activations */
    float *x, *xn, *xr, *xw, *xk, *xv, *xa, *xg;
    float *r, *k, *v, *w, *a, *g, *kk, *vfirst, *y, *tmp;
    float *lora; /* (4, T, rank): the decay, in-context rate, gate and value LoRAs' hidden rows */
    int rank;    /* the largest LoRA rank */
    float *hid;  /* (T, F) as FFN parts: part p's (T, ffn_unit) at p * T * ffn_unit */
    float *ffn_out; /* (FFN_PARTS - 1, T, C) the outputs of the FFN's parts after the first */
    float *s_start; /* (chunks, H, N, N) SSE heads' WKV state at a chunk's start (MS-v0
                     * pass 2): MS_MAX_CHUNKS with Meta-State heads, else one */
    float *panel;   /* (n_shares, PANEL_ROWS, panel_cols) widened weights for prefill GEMMs */
    float *prev_xn; /* (SHIFT_ITEMS, C) a shift item's recomputed previous row */
    size_t panel_cols; /* max(C, F) */
    int n_shares;   /* prefill products are split in this many row ranges (pool threads) */
    float *batch_logits; /* (min(max_chunk, K_MAX_BATCH), V): a mixed call's unwanted rows */
    int32_t *row_tok;     /* (max_chunk) tokens of a mixed call */
    /* The rows of the current call: rows [0, n_single) are one token each of
     * distinct sequences (a decode batch), then n_seg chunks of other
     * sequences, chunk i in rows [seg[i], seg[i + 1]) (row t follows row
     * t-1). row_state[t] is row t's. */
    ms_state **row_state; /* (max_chunk) */
    int n_single, n_seg;
    int seg[MS_MAX_CHUNKS + 1];
    int max_seg;          /* the longest chunk's rows */
    unsigned seg_logits;  /* bit i: chunk i's last row gets logits */
    ms_state *seg_ckpt[MS_MAX_CHUNKS]; /* NULL, or receives chunk i's state before its last row */
};

/* Row t starts its sequence in this call (reads the state's shift and
 * recurrent state), or ends it (leaves its shift vector there). The
 * sequences of a call have distinct states, and a chunk's rows are
 * consecutive. */
static int row_first(const ms_ctx *c, int t)
{
    return t == 0 || c->row_state[t] != c->row_state[t - 1];
}
static int row_last(const ms_ctx *c, int t, int T)
{
    return t == T - 1 || c->row_state[t] != c->row_state[t + 1];
}

/* The chunk that row t (>= n_single) belongs to. */
static int seg_of(const ms_ctx *c, int t)
{
    int i = 0;
    while (t >= c->seg[i + 1])
        i++;
    return i;
}

/* The checkpoint that row t's results go to besides its own state: row t
 * is the last but one of a chunk that keeps one, so what it leaves is the
 * state before the chunk's last token. NULL otherwise. */
static ms_state *ckpt_after(const ms_ctx *c, int t, int T)
{
    if (t < c->n_single || row_last(c, t, T) || !row_last(c, t + 1, T))
        return NULL;
    return c->seg_ckpt[seg_of(c, t)];
}

/* Chunk i's saved SSE head states (time_mix, self_state_encoder). */
static float *s_start_of(const ms_ctx *c, int i)
{
    return c->s_start + (size_t)i * c->m->cfg.n_embd * c->m->cfg.head_size;
}

/* The call's rows: n_single single rows, then chunks of lens[0..n) rows,
 * chunk i's last row with logits where bit i of want is set. */
static void set_rows(ms_ctx *c, int n_single, const size_t *lens, int n, unsigned want)
{
    c->n_single = n_single;
    c->n_seg = n;
    c->seg_logits = want;
    c->max_seg = 0;
    c->seg[0] = n_single;
    for (int i = 0; i < n; i++) {
        c->seg_ckpt[i] = NULL;
        c->seg[i + 1] = c->seg[i] + (int)lens[i];
        if ((int)lens[i] > c->max_seg)
            c->max_seg = (int)lens[i];
    }
}

/* ------------------------------------------------------------------------ */
/* Matrix products                                                           */

/* A prefill product split by output rows between the pool's threads, each
 * running single-threaded sgemm on its share: one threading runtime for the
 * whole engine (OpenBLAS is kept to one thread, see ms_model_load), so its
 * spinning workers never compete with ours. */
typedef struct {
    ms_ctx *c;
    float *Y;
    const float *X;
    const k_wmat *W;
    int T, per;
    float beta;
} gemm_job;

static void gemm_share(void *arg, int i)
{
    const gemm_job *g = arg;
    const k_wmat *W = g->W;
    const int out = W->rows, in = W->cols;
    const int r0 = i * g->per, r1 = r0 + g->per < out ? r0 + g->per : out;
    if (r0 >= r1)
        return;
    /* Widen and transpose a panel of rows at a time (the packed blocks are
     * column-major already) into this share's buffer. */
    float *panel = g->c->panel + (size_t)i * PANEL_ROWS * g->c->panel_cols;
    for (int p0 = r0; p0 < r1; p0 += PANEL_ROWS) {
        const int p1 = p0 + PANEL_ROWS < r1 ? p0 + PANEL_ROWS : r1;
        k_wmat_panel(W, p0, p1, panel);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->T, p1 - p0, in, 1.0f, g->X, in,
                    panel, p1 - p0, g->beta, g->Y + p0, out);
    }
}

/* Y (T, out) = beta * Y + X (T, in) * W^T. Up to K_MAX_BATCH rows (decoding,
 * or a batch of sequences) stream every weight once through our kernels, as
 * do chunks of any length for the integer and bf16-dot formats and, with
 * AVX2 or AVX-512, the exact ones (k_matmul_any_rows: they beat sgemm on
 * widened weights); longer chunks of the exact formats on the portable
 * kernels go to sgemm. */
static void linear(ms_ctx *c, float *Y, const float *X, const k_wmat *W, int T, float beta)
{
    /* The single rows always take the kernels, each chunk what it would
     * take alone: each sequence gets the same bits however it is batched
     * (the kernels' rows do not depend on each other). */
    if (c->max_seg <= K_MAX_BATCH || k_matmul_any_rows(W)) {
        k_matmul(W, X, Y, T, beta);
        return;
    }
    if (c->n_single)
        k_matmul(W, X, Y, c->n_single, beta);
    const int n = c->n_shares;
    for (int i = 0; i < c->n_seg; i++) {
        const int r0 = c->seg[i], rows = c->seg[i + 1] - r0;
        float *y = Y + (size_t)r0 * W->rows;
        const float *x = X + (size_t)r0 * W->cols;
        if (rows <= K_MAX_BATCH) {
            k_matmul(W, x, y, rows, beta);
            continue;
        }
        gemm_job g = {c, y, x, W, rows, ((W->rows + n - 1) / n + 15) & ~15, beta};
        k_parallel(n, gemm_share, &g);
    }
}

/* Several linear() of T rows whose inputs are not each other's outputs:
 * those that take the kernels alone go to the pool as one loop (one wake-up
 * and wait instead of one per product); the same bits as one by one. */
static void linear_many(ms_ctx *c, const k_product *p, int n, int T)
{
    k_product kern[8];
    int nk = 0;
    for (int i = 0; i < n; i++) {
        if ((c->max_seg <= K_MAX_BATCH || k_matmul_any_rows(p[i].W)) &&
            nk < (int)(sizeof kern / sizeof kern[0]))
            kern[nk++] = p[i];
        else
            linear(c, p[i].Y, p[i].X, p[i].W, T, p[i].beta);
    }
    k_matmul_many(kern, nk, T);
}

/* ------------------------------------------------------------------------ */
/* Elementwise pieces                                                        */

static inline float sigmoidf(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

CLONES static void vec_tanh(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) /* tanh = 1 - 2 / (e^2x + 1) */
        x[i] = 1.0f - 2.0f / (exp_approx(2.0f * x[i]) + 1.0f);
}

CLONES static void vec_sigmoid(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = sigmoidf(x[i]);
}

/* The time mix's elementwise part (SPEC 1.3) for channels [c0, c0 + n) of
 * one row (pointers at channel c0): decay, in-context rate, the removal
 * key kk (normalized later), the modified key, and the value residual
 * (layer 0 records v_first instead). */
CLONES static void mix_row(float *restrict w, float *restrict a, float *restrict k,
                           float *restrict kk, float *restrict v, float *restrict vfirst,
                           const float *restrict vgate, const ms_layer *L, int first_layer, int c0,
                           int n)
{
    const float *w0 = L->w0 + c0, *a0 = L->a0 + c0, *k_k = L->k_k + c0, *k_a = L->k_a + c0;
    for (int ch = 0; ch < n; ch++) {
        w[ch] = exp_approx(-DECAY_SCALE * sigmoidf(w0[ch] + w[ch]));
        const float ai = sigmoidf(a0[ch] + a[ch]);
        a[ch] = ai;
        const float ki = k[ch];
        kk[ch] = ki * k_k[ch];
        k[ch] = ki * (1.0f + (ai - 1.0f) * k_a[ch]);
    }
    if (first_layer) {
        memcpy(vfirst, v, (size_t)n * sizeof(float));
    } else {
        const float *v0 = L->v0 + c0;
        for (int ch = 0; ch < n; ch++)
            v[ch] += (vfirst[ch] - v[ch]) * sigmoidf(v0[ch] + vgate[ch]);
    }
}

/* Statistics in 16 fp32 lanes added in a fixed order (two passes: mean,
 * then squared deviations), so the loops vectorize and every clone
 * computes the same numbers. */
CLONES static void norm_stats(const float *x, int n, float *mean, float *var)
{
    enum { LANES = 16 };
    const int n16 = n & ~(LANES - 1);
    float part[LANES] = {0};
    for (int i0 = 0; i0 < n16; i0 += LANES)
        for (int l = 0; l < LANES; l++)
            part[l] += x[i0 + l];
    float s = 0;
    for (int l = 0; l < LANES; l++)
        s += part[l];
    for (int i = n16; i < n; i++)
        s += x[i];
    const float mu = s / (float)n;
    float dev[LANES] = {0};
    for (int i0 = 0; i0 < n16; i0 += LANES)
        for (int l = 0; l < LANES; l++) {
            const float d = x[i0 + l] - mu;
            dev[l] += d * d;
        }
    float v = 0;
    for (int l = 0; l < LANES; l++)
        v += dev[l];
    for (int i = n16; i < n; i++)
        v += (x[i] - mu) * (x[i] - mu);
    *mean = mu;
    *var = v / (float)n;
}

CLONES static void layer_norm(float *dst, const float *x, const float *w, const float *b, int n)
{
    float mu, var;
    norm_stats(x, n, &mu, &var);
    const float inv = 1.0f / sqrtf(var + LN_EPS);
    for (int i = 0; i < n; i++)
        dst[i] = (x[i] - mu) * inv * w[i] + b[i];
}

/* Sum of 16 lanes as a fixed tree: lane l with l+8, then l+4, then l+2
 * and l+1 (halving). The AVX-512 step sums sixteen rows' lanes at once in
 * the same tree (sum16x16), so both give the same bits. */
static inline float sum16(const float p[16])
{
    float t[8];
    for (int l = 0; l < 8; l++)
        t[l] = p[l] + p[l + 8];
    const float u0 = t[0] + t[4], u1 = t[1] + t[5], u2 = t[2] + t[6], u3 = t[3] + t[7];
    return (u0 + u2) + (u1 + u3);
}

#define WKV512 __attribute__((target("avx512f,fma")))

/* Row i of pf's N x N state into L1, while the vector steps update their
 * own row i (pf: NULL for none). Always inlined: GCC takes a function of
 * prefetches alone for one without effects and drops its calls. */
static inline __attribute__((always_inline)) void prefetch_row(const float *pf, int i, int N)
{
    if (pf)
        for (int q = 0; q < N; q += 16)
            _mm_prefetch((const char *)(pf + (size_t)i * N + q), _MM_HINT_T0);
}

/* Lane i of the result is sum16(p[i]): the sixteen sums of a block of rows
 * by swapping halves between vectors (about 3 instructions per row, where
 * a horizontal sum took 8 and then a broadcast). */
WKV512 static inline __m512 sum16x16(const __m512 p[16])
{
    __m512 q[8], r[4], s[2];
    for (int i = 0; i < 8; i++) /* [rows 2i, 2i+1] lanes l + (l+8) */
        q[i] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++) /* rows 4i..4i+3, one per 128-bit lane: l + (l+4) */
        r[i] = _mm512_add_ps(_mm512_shuffle_f32x4(q[2 * i], q[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(q[2 * i], q[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++) { /* lanes 0 + 2 and 1 + 3 of rows 8i + {0..3}, 8i + {4..7} */
        const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(r[2 * i]), _mm512_castps_pd(r[2 * i + 1]));
        const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(r[2 * i]), _mm512_castps_pd(r[2 * i + 1]));
        s[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    }
    /* Position 4L + k now holds row L + 4k. */
    const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(s[0], s[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_ps(s[0], s[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i rows = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(rows, t);
}

/* The WKV step of wkv_scalar for N a multiple of 16 (every released
 * model), sixteen rows at a time: first the sixteen sa, then the sixteen
 * updated rows and outputs. Inlined with N = 64 so the rows' loops unroll. */
WKV512 static inline __attribute__((always_inline)) void
wkv_avx512_body(float *restrict S, const float *restrict r, const float *restrict w,
                const float *restrict k, const float *restrict v, const float *restrict kk,
                const float *restrict a, float *restrict y, int N, const float *pf)
{
    float b[256];
    for (int j = 0; j < N; j += 16)
        _mm512_storeu_ps(b + j, _mm512_mul_ps(_mm512_loadu_ps(kk + j), _mm512_loadu_ps(a + j)));
    for (int i0 = 0; i0 < N; i0 += 16) {
        __m512 p[16];
        float sa[16];
        for (int i = 0; i < 16; i++) {
            const float *row = S + (size_t)(i0 + i) * N;
            __m512 part = _mm512_setzero_ps();
            for (int j = 0; j < N; j += 16)
                part = _mm512_fnmadd_ps(_mm512_loadu_ps(row + j), _mm512_loadu_ps(kk + j), part);
            p[i] = part;
        }
        _mm512_storeu_ps(sa, sum16x16(p));
        for (int i = 0; i < 16; i++) {
            float *row = S + (size_t)(i0 + i) * N;
            prefetch_row(pf, i0 + i, N);
            const __m512 sai = _mm512_set1_ps(sa[i]), vi = _mm512_set1_ps(v[i0 + i]);
            __m512 acc = _mm512_setzero_ps();
            for (int j = 0; j < N; j += 16) {
                const __m512 t = _mm512_fmadd_ps(sai, _mm512_loadu_ps(b + j),
                                                 _mm512_mul_ps(vi, _mm512_loadu_ps(k + j)));
                const __m512 s = _mm512_fmadd_ps(_mm512_loadu_ps(row + j), _mm512_loadu_ps(w + j), t);
                _mm512_storeu_ps(row + j, s);
                acc = _mm512_fmadd_ps(s, _mm512_loadu_ps(r + j), acc);
            }
            p[i] = acc;
        }
        _mm512_storeu_ps(y + i0, sum16x16(p));
    }
}

WKV512 static void wkv_head_avx512(float *restrict S, const float *restrict r,
                                   const float *restrict w, const float *restrict k,
                                   const float *restrict v, const float *restrict kk,
                                   const float *restrict a, float *restrict y, int N,
                                   const float *pf)
{
    if (N == 64)
        wkv_avx512_body(S, r, w, k, v, kk, a, y, 64, pf);
    else
        wkv_avx512_body(S, r, w, k, v, kk, a, y, N, pf);
}

/* One head's WKV step (SPEC 1.3), S is N x N with S[i][j], i = value,
 * j = key; y[i] = (S_new r)[i]. `sa` must read the old row before it is
 * updated, which the row-wise loop guarantees. Meta-State's second pass
 * calls it again with r := kx: the same arithmetic in the same order
 * rebuilds exactly the states of the first pass. Fused multiply-adds, one
 * rounding each (fmaf here; an instruction in the AVX2 and AVX-512 steps,
 * which give the same bits): half the vector operations of separate
 * multiplies and adds. */
static void wkv_scalar(float *restrict S, const float *restrict r, const float *restrict w,
                       const float *restrict k, const float *restrict v,
                       const float *restrict kk, const float *restrict a, float *restrict y,
                       int N)
{
    /* Sums are kept in 16 lanes and added up in sum16's tree, the order of
     * the vector steps (which the CPUs that have them take instead). N is a
     * multiple of 16 in every released model; other sizes take the tail
     * loops. */
    enum { LANES = 16 };
    float b[256];
    const int N16 = N & ~(LANES - 1);
    for (int j = 0; j < N; j++)
        b[j] = kk[j] * a[j];
    for (int i = 0; i < N; i++) {
        float *row = S + (size_t)i * N;
        float part[LANES] = {0};
        for (int j0 = 0; j0 < N16; j0 += LANES)
            for (int l = 0; l < LANES; l++)
                part[l] = fmaf(-row[j0 + l], kk[j0 + l], part[l]);
        float sa = sum16(part);
        for (int j = N16; j < N; j++)
            sa = fmaf(-row[j], kk[j], sa);
        const float vi = v[i];
        float acc[LANES] = {0};
        for (int j0 = 0; j0 < N16; j0 += LANES)
            for (int l = 0; l < LANES; l++) {
                const int j = j0 + l;
                const float s = fmaf(row[j], w[j], fmaf(sa, b[j], vi * k[j]));
                row[j] = s;
                acc[l] = fmaf(s, r[j], acc[l]);
            }
        float out = sum16(acc);
        for (int j = N16; j < N; j++) {
            const float s = fmaf(row[j], w[j], fmaf(sa, b[j], vi * k[j]));
            row[j] = s;
            out = fmaf(s, r[j], out);
        }
        y[i] = out;
    }
}

#define WKV256 __attribute__((target("avx2,fma")))

/* Lane i of the result is sum16 of lanes lo[i] (0-7) and hi[i] (8-15):
 * the same additions in the same order as sum16, for eight rows at once by
 * swapping halves between vectors, as sum16x16 does. */
WKV256 static inline __m256 sum16x8(const __m256 lo[8], const __m256 hi[8])
{
    __m256 t[8], u[4], s[2];
    for (int i = 0; i < 8; i++) /* t[l] = p[l] + p[l + 8] */
        t[i] = _mm256_add_ps(lo[i], hi[i]);
    for (int i = 0; i < 4; i++) /* rows i, i + 4: u[l] = t[l] + t[l + 4] */
        u[i] = _mm256_add_ps(_mm256_permute2f128_ps(t[i], t[i + 4], 0x20),
                             _mm256_permute2f128_ps(t[i], t[i + 4], 0x31));
    for (int i = 0; i < 2; i++) { /* rows 2i, 2i + 1 (and + 4): u0 + u2, u1 + u3 */
        const __m256d a = _mm256_castps_pd(u[2 * i]), b = _mm256_castps_pd(u[2 * i + 1]);
        s[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
                             _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
    }
    return _mm256_add_ps(_mm256_shuffle_ps(s[0], s[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm256_shuffle_ps(s[0], s[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* wkv_scalar for N a multiple of 16 with AVX2 (GCC does not vectorize its
 * fmaf lanes): the same operations, eight lanes at a time, eight rows at a
 * time as the AVX-512 step takes sixteen (first their sa, then their
 * updates and outputs), reading pf ahead likewise. */
WKV256 static void wkv_avx2(float *restrict S, const float *restrict r, const float *restrict w,
                            const float *restrict k, const float *restrict v,
                            const float *restrict kk, const float *restrict a,
                            float *restrict y, int N, const float *pf)
{
    float b[256];
    for (int j = 0; j < N; j += 8)
        _mm256_storeu_ps(b + j, _mm256_mul_ps(_mm256_loadu_ps(kk + j), _mm256_loadu_ps(a + j)));
    for (int i0 = 0; i0 < N; i0 += 8) {
        __m256 p0[8], p1[8];
        float sa[8];
        for (int i = 0; i < 8; i++) {
            const float *row = S + (size_t)(i0 + i) * N;
            p0[i] = p1[i] = _mm256_setzero_ps();
            for (int j = 0; j < N; j += 16) {
                p0[i] = _mm256_fnmadd_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(kk + j), p0[i]);
                p1[i] = _mm256_fnmadd_ps(_mm256_loadu_ps(row + j + 8), _mm256_loadu_ps(kk + j + 8),
                                         p1[i]);
            }
        }
        _mm256_storeu_ps(sa, sum16x8(p0, p1));
        for (int i = 0; i < 8; i++) {
            float *row = S + (size_t)(i0 + i) * N;
            prefetch_row(pf, i0 + i, N);
            const __m256 sai = _mm256_set1_ps(sa[i]), vi = _mm256_set1_ps(v[i0 + i]);
            p0[i] = p1[i] = _mm256_setzero_ps();
            for (int j = 0; j < N; j += 16) {
                const __m256 t0 = _mm256_fmadd_ps(sai, _mm256_loadu_ps(b + j),
                                                  _mm256_mul_ps(vi, _mm256_loadu_ps(k + j)));
                const __m256 t1 = _mm256_fmadd_ps(sai, _mm256_loadu_ps(b + j + 8),
                                                  _mm256_mul_ps(vi, _mm256_loadu_ps(k + j + 8)));
                const __m256 s0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(w + j), t0);
                const __m256 s1 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(row + j + 8), _mm256_loadu_ps(w + j + 8), t1);
                _mm256_storeu_ps(row + j, s0);
                _mm256_storeu_ps(row + j + 8, s1);
                p0[i] = _mm256_fmadd_ps(s0, _mm256_loadu_ps(r + j), p0[i]);
                p1[i] = _mm256_fmadd_ps(s1, _mm256_loadu_ps(r + j + 8), p1[i]);
            }
        }
        _mm256_storeu_ps(y + i0, sum16x8(p0, p1));
    }
}

/* pf: another head's state, read ahead into the cache row by row while this
 * one is stepped (NULL: none); it changes no result. */
static void wkv_head(float *restrict S, const float *restrict r, const float *restrict w,
                     const float *restrict k, const float *restrict v, const float *restrict kk,
                     const float *restrict a, float *restrict y, int N, const float *pf)
{
    /* Follows the kernels' instruction set, so forcing one (METASTATE_ISA,
     * the tests' per-ISA cases) also runs the portable step. */
    if (N % 16 == 0 && N <= 256 && k_isa_avx512())
        wkv_head_avx512(S, r, w, k, v, kk, a, y, N, pf);
    else if (N % 16 == 0 && N <= 256 && k_isa_fma())
        wkv_avx2(S, r, w, k, v, kk, a, y, N, pf);
    else
        wkv_scalar(S, r, w, k, v, kk, a, y, N);
}

/* The shift vector of layer l (att or ffn) in row t's state. */
static float *shift_of(ms_ctx *c, int t, int l, int att)
{
    return att ? ms_state_att_shift(c->row_state[t], l) : ms_state_ffn_shift(c->row_state[t], l);
}

/* 1 / max(|p|, 1e-12) for p of n floats, |p| summed in double (the L2
 * normalizations of kk and of the Self-State Encoder's read-out). */
static float inv_norm(const float *p, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)p[i] * p[i];
    return 1.0f / fmaxf((float)sqrt(ss), 1e-12f);
}

/* One row of one mix: o = cur + (prev - cur) * mq. */
CLONES static void shift_mix(float *restrict o, const float *restrict cur,
                             const float *restrict prev, const float *restrict mq, int C)
{
    for (int i = 0; i < C; i++)
        o[i] = cur[i] + (prev[i] - cur[i]) * mq[i];
}

/* The channel mix's activation, max(x, 0)^2. */
CLONES static void relu_squared(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const float h = x[i] > 0.0f ? x[i] : 0.0f;
        x[i] = h * h;
    }
}

typedef struct {
    ms_ctx *c;
    const float *ln_w, *ln_b;
    const float *const *mix;
    float *const *out;
    int T, l, att, nmix, per;
} shift_job;

/* Rows [t0, t1) of a layer norm and token shift: xn = LN(x); D = prev - xn,
 * where prev is the previous row of the same sequence (normalized again
 * here when another item has it), or the state's vector for a sequence's
 * first row; then out_q = xn + D*mix_q for each mix. */
static void norm_shift_rows(void *arg, int item)
{
    const shift_job *j = arg;
    ms_ctx *c = j->c;
    const int C = c->m->cfg.n_embd;
    const int t0 = item * j->per, t1 = t0 + j->per < j->T ? t0 + j->per : j->T;
    for (int t = t0; t < t1; t++) {
        float *cur = c->xn + (size_t)t * C;
        layer_norm(cur, c->x + (size_t)t * C, j->ln_w, j->ln_b, C);
        const float *prev = cur - C;
        if (row_first(c, t)) {
            prev = shift_of(c, t, j->l, j->att);
        } else if (t == t0) {
            float *p = c->prev_xn + (size_t)item * C;
            layer_norm(p, c->x + (size_t)(t - 1) * C, j->ln_w, j->ln_b, C);
            prev = p;
        }
        for (int q = 0; q < j->nmix; q++)
            shift_mix(j->out[q] + (size_t)t * C, cur, prev, j->mix[q], C);
    }
}

/* Layer norm (ln_w, ln_b) of rows [0, T) into xn, then their token shift
 * (norm_shift_rows), on the pool when a prefill chunk is among them. Each
 * sequence's state then keeps its last row, once every item has read the
 * shift vectors it started from. */
static void norm_and_shift(ms_ctx *c, int T, int l, int att, const float *ln_w,
                           const float *ln_b, const float *const *mix, float *const *out, int nmix)
{
    const int C = c->m->cfg.n_embd;
    const int n = T < SHIFT_ITEMS ? T : SHIFT_ITEMS;
    shift_job j = {c, ln_w, ln_b, mix, out, T, l, att, nmix, (T + n - 1) / n};
    const int items = (T + j.per - 1) / j.per;
    if (T - c->n_single < 16) /* a decode batch's rows cost less than a pool pass */
        for (int i = 0; i < items; i++)
            norm_shift_rows(&j, i);
    else
        k_parallel(items, norm_shift_rows, &j);
    for (int t = 0; t < T; t++) {
        ms_state *ck = ckpt_after(c, t, T);
        if (row_last(c, t, T))
            memcpy(shift_of(c, t, l, att), c->xn + (size_t)t * C, (size_t)C * sizeof(float));
        else if (ck)
            memcpy(att ? ms_state_att_shift(ck, l) : ms_state_ffn_shift(ck, l),
                   c->xn + (size_t)t * C, (size_t)C * sizeof(float));
    }
}

/* ------------------------------------------------------------------------ */
/* The block                                                                 */

/* Hints for the pool's next pass (kernels.h k_next_*): what each worker
 * reads first in it, prefetched while the caller works alone between
 * passes (norms, shifts, its inputs' quantization: ~10 us a layer with the
 * memory idle). Decode steps and batches only; a prefill chunk's passes
 * are compute-bound. */
static int hinting(const ms_ctx *c, int T)
{
    return c->n_single > 0 && T <= K_MAX_BATCH && k_threads() > 1;
}

static void next_product(const k_wmat *W, int T)
{
    for (int t = 1; t < k_threads(); t++)
        k_next_share(t, W, T);
}

/* The FFN's pass on a decode batch: a part per thread (ffn_part). */
static int ffn_fused(const ms_layer *L, int T)
{
    return T <= K_MAX_BATCH && k_threads() <= L->ffn_parts;
}

typedef struct {
    ms_ctx *c;
    const ms_layer *L;
    int l, T;
    const k_product *lora; /* the LoRAs' second halves, run here per head */
    int n_lora;
} head_job;

/* Heads [h0, h1)'s slice of the LoRAs' second halves (their outputs of the
 * decay, in-context rate, gate and value residual) for all rows: the
 * kernels' bits, computed by the item that reads them, where a pass of the
 * pool of their own cost a wake-up, a wait and a prefetch ramp for half a
 * megabyte of weights. One slice per product for the whole range, so each
 * matrix's rows stream in one run rather than a few kilobytes per head. */
static void head_lora(const head_job *j, int h0, int h1)
{
    const int N = j->c->m->cfg.head_size;
    for (int q = 0; q < j->n_lora; q++)
        k_matmul_rows(&j->lora[q], j->T, h0 * N, h1 * N);
}

/* Head h of row t, from the projections to the gated output: the mix of
 * its channels, kk normalized, the WKV step on row t's state, GroupNorm,
 * the r.k bonus and the gate. Each (row, head) touches only its own
 * channels and state, so these run in parallel and hot in cache. */
static void head_row(const head_job *j, int t, int h, const float *pf)
{
    ms_ctx *c = j->c;
    const ms_layer *L = j->L;
    const int C = c->m->cfg.n_embd, N = c->m->cfg.head_size;
    const size_t o = (size_t)t * C + (size_t)h * N;
    mix_row(c->w + o, c->a + o, c->k + o, c->kk + o, c->v + o, c->vfirst + o, c->tmp + o, L,
            j->l == 0, h * N, N);
    float *kk = c->kk + o;
    const float kinv = inv_norm(kk, N);
    for (int i = 0; i < N; i++)
        kk[i] *= kinv;

    float *S = ms_state_wkv(c->row_state[t], j->l) + (size_t)h * N * N;
    float *y = c->y + o;
    wkv_head(S, c->r + o, c->w + o, c->k + o, c->v + o, kk, c->a + o, y, N, pf);

    float mu, var;
    norm_stats(y, N, &mu, &var);
    const float inv = 1.0f / sqrtf(var + GN_EPS);
    const float *r = c->r + o, *k = c->k + o, *v = c->v + o, *g = c->g + o;
    const float *rk = L->r_k + (size_t)h * N, *lw = L->lnx_w + (size_t)h * N,
                *lb = L->lnx_b + (size_t)h * N;
    float bonus = 0.0f;
    for (int i = 0; i < N; i++)
        bonus += r[i] * k[i] * rk[i];
    for (int i = 0; i < N; i++) {
        const float out = (y[i] - mu) * inv * lw[i] + lb[i] + bonus * v[i];
        y[i] = out * g[i];
    }
}

/* Head h over the chunks' rows, in order (row t reads the state row t-1
 * left, or its own chunk's starting state). */
static void head_rows_of_chunk(void *arg, int h)
{
    const head_job *j = arg;
    const ms_ctx *c = j->c;
    const size_t NN = (size_t)c->m->cfg.head_size * c->m->cfg.head_size;
    for (int t = c->n_single; t < j->T; t++) {
        head_row(j, t, h, NULL);
        ms_state *ck = ckpt_after(c, t, j->T);
        if (ck)
            memcpy(ms_state_wkv(ck, j->l) + (size_t)h * NN,
                   ms_state_wkv(c->row_state[t], j->l) + (size_t)h * NN, NN * sizeof(float));
    }
}

/* Share i of n of a layer's heads: heads [i * H / n, (i + 1) * H / n) of
 * every single row, then of the chunk. Every (row, head) touches state no
 * other does, so any share may run on any thread. One contiguous range per
 * thread, not one item per head: a single row's item fetches the state of
 * the item that follows it in the same share while it steps (a batch's
 * states come from memory), and a chunk's heads are long enough that two
 * shares balance. Measured against items per head: prefill 3-5% faster,
 * a q4 batch-8 step 4-9%. */
static void head_share(void *arg, int i)
{
    const head_job *j = arg;
    const ms_ctx *c = j->c;
    const int H = c->m->cfg.n_head, N = c->m->cfg.head_size, n = c->n_shares;
    const int h0 = i * H / n, h1 = (i + 1) * H / n, R = c->n_single;
    head_lora(j, h0, h1);
    for (int t = 0; t < R; t++)
        for (int h = h0; h < h1; h++) {
            const int last = h + 1 == h1, nt = last ? t + 1 : t, nh = last ? h0 : h + 1;
            const float *pf =
                nt < R ? ms_state_wkv(c->row_state[nt], j->l) + (size_t)nh * N * N : NULL;
            head_row(j, t, h, pf);
        }
    if (j->T > R)
        for (int h = h0; h < h1; h++)
            head_rows_of_chunk(arg, h);
}

/* The heads' pass next: share t's slices of the LoRAs' second halves, then
 * its heads' states, in the order head_share reads them. */
static void next_heads(const head_job *j)
{
    const ms_ctx *c = j->c;
    const int H = c->m->cfg.n_head, N = c->m->cfg.head_size, n = c->n_shares;
    const size_t NN = (size_t)N * N;
    for (int t = 1; t < n; t++) {
        const int h0 = t * H / n, h1 = (t + 1) * H / n;
        for (int q = 0; q < j->n_lora; q++)
            k_next_rows(t, j->lora[q].W, h0 * N, h1 * N);
        for (int r = 0; r < j->T && r <= c->n_single; r++) /* a chunk's rows share one */
            k_next_bytes(t, ms_state_wkv(c->row_state[r], j->l) + (size_t)h0 * NN,
                         (size_t)(h1 - h0) * NN * sizeof(float));
    }
}

static void time_mix(ms_ctx *c, const ms_layer *L, int l, int T)
{
    const ms_config *cf = &c->m->cfg;
    const int H = cf->n_head, N = cf->head_size;
    const size_t NN = (size_t)N * N;
    for (int i = 0; L->n_sse && i < c->n_seg; i++) {
        if (c->seg[i + 1] - c->seg[i] < 2)
            continue;
        /* MS-v0 prefill: the SSE heads' starting state, for pass 2 */
        const float *S = ms_state_wkv(c->row_state[c->seg[i]], l);
        for (int q = 0; q < L->n_sse; q++)
            memcpy(s_start_of(c, i) + (size_t)L->sse_head[q] * NN,
                   S + (size_t)L->sse_head[q] * NN, NN * sizeof(float));
    }

    const float *mix[6] = {L->x_r, L->x_w, L->x_k, L->x_v, L->x_a, L->x_g};
    float *const outs[6] = {c->xr, c->xw, c->xk, c->xv, c->xa, c->xg};
    norm_and_shift(c, T, l, 1, L->ln1_w, L->ln1_b, mix, outs, 6);

    /* The projections of the shifted inputs in one pass of the pool; the
     * LoRAs' second halves go with the heads (head_lora). */
    float *lw = c->lora, *la = lw + (size_t)T * c->rank, *lg = la + (size_t)T * c->rank,
          *lv = lg + (size_t)T * c->rank;
    const k_product first[] = {
        {&L->wr, c->xr, c->r, 0.0f}, {&L->wk, c->xk, c->k, 0.0f}, {&L->wv, c->xv, c->v, 0.0f},
        {&L->w1, c->xw, lw, 0.0f},   {&L->a1, c->xa, la, 0.0f},   {&L->g1, c->xg, lg, 0.0f},
        {&L->v1, c->xv, lv, 0.0f},
    };
    const k_product second[] = {
        {&L->w2, lw, c->w, 0.0f}, {&L->a2, la, c->a, 0.0f}, {&L->g2, lg, c->g, 0.0f},
        {&L->v2, lv, c->tmp, 0.0f},
    };
    const int n2 = l > 0 ? 4 : 3;
    /* Decode batches only, and when a head's rows are whole blocks: each
     * thread's slice prepares its inputs again (bf16 pairs with the integer
     * and bf16-dot formats), work that grows with a prefill chunk's rows,
     * and fused, prefill measured no faster (per head and per range). */
    const int fuse = T <= K_MAX_BATCH && N % K_ROWS == 0;
    head_job hj = {c, L, l, T, second, fuse ? n2 : 0};
    const int hint = hinting(c, T);
    if (hint && fuse)
        next_heads(&hj);
    linear_many(c, first, l > 0 ? 7 : 6, T);
    vec_tanh(lw, (size_t)T * cf->d_decay);
    vec_sigmoid(lg, (size_t)T * cf->d_gate);
    if (!fuse)
        linear_many(c, second, n2, T);

    if (hint)
        next_product(&L->wo, T);
    if (c->n_single || T >= 16)
        k_parallel(c->n_shares, head_share, &hj);
    else {
        head_lora(&hj, 0, H);
        for (int h = 0; h < H; h++)
            head_rows_of_chunk(&hj, h);
    }
    if (hint) {
        if (ffn_fused(L, T))
            for (int t = 1; t < k_threads(); t++)
                k_next_rows(t, &L->ffn_key[t], 0, L->ffn_key[t].rows);
        else
            next_product(&L->ffn_key[0], T);
    }
    linear(c, c->x, c->y, &L->wo, T, 1.0f);
}

/* MS-v0 Self-State Encoder (SPEC 3.3 C2-C6): for every SSE head h and
 * token t, u = S_t[h] kx_t[h] with the state right after token t's update,
 * L2-normalized, added to kx with the per-channel gain:
 *     e = kx + gamma * u / max(|u|, 1e-12)
 * One token reads the current state. A chunk replays the WKV recurrence of
 * the SSE heads from their saved starting state (pass 2), so no T x N x N
 * history is kept; the replay ends in the same state pass 1 left. */
static void self_state_encoder(ms_ctx *c, const ms_layer *L, int l, int T)
{
    const int C = c->m->cfg.n_embd, N = c->m->cfg.head_size;
    const size_t NN = (size_t)N * N;
    float u[256];
    for (int q = 0; q < L->n_sse; q++) {
        const int h = L->sse_head[q];
        for (int t = 0; t < T; t++) {
            const size_t o = (size_t)t * C + (size_t)h * N;
            float *kx = c->xk + o;
            if (row_first(c, t) && row_last(c, t, T)) { /* row t's state holds S_t now */
                const float *Sh = ms_state_wkv(c->row_state[t], l) + (size_t)h * NN;
                for (int i = 0; i < N; i++) {
                    float acc = 0.0f;
                    for (int j = 0; j < N; j++)
                        acc += Sh[(size_t)i * N + j] * kx[j];
                    u[i] = acc;
                }
            } else {
                wkv_head(s_start_of(c, seg_of(c, t)) + (size_t)h * NN, kx, c->w + o, c->k + o,
                         c->v + o, c->kk + o, c->a + o, u, N, NULL);
            }
            const float inv = inv_norm(u, N);
            const float *gamma = L->ms_gamma + (size_t)h * N;
            for (int i = 0; i < N; i++)
                kx[i] += gamma[i] * (u[i] * inv);
        }
    }
}

/* The FFN of T rows, part p of its hidden units (model.h): the part's
 * products write hid_p, then x (part 0, accumulating) or ffn_out. */
static k_product ffn_key_of(ms_ctx *c, const ms_layer *L, int p, int T)
{
    return (k_product){&L->ffn_key[p], c->xk, c->hid + (size_t)p * T * L->ffn_unit, 0.0f};
}
static k_product ffn_value_of(ms_ctx *c, const ms_layer *L, int p, int T)
{
    const size_t TC = (size_t)T * c->m->cfg.n_embd;
    return (k_product){&L->ffn_value[p], ffn_key_of(c, L, p, T).Y,
                       p ? c->ffn_out + (p - 1) * TC : c->x, p ? 0.0f : 1.0f};
}

enum { FFN_CHUNK_ROWS = 64 }; /* rows of a part's value product claimed at a time */

typedef struct {
    ms_ctx *c;
    const ms_layer *L;
    int T;
    atomic_int started[FFN_PARTS]; /* a thread has taken part p */
    atomic_int ready[FFN_PARTS];   /* part p's hidden units are written */
    atomic_int next[FFN_PARTS];    /* part p's next chunk of value rows */
} ffn_job;

/* One part from xk to its share of the output, on one thread: its hidden
 * units stay in that thread's cache, are prepared for the second product
 * there, and need no pass of the pool between the two products. A thread
 * done with its part then takes chunks of the value rows of a part that
 * another thread has begun, so that the two finish together; it waits for
 * that part's hidden units, which the pass would wait for anyway. A part
 * nobody has taken yet is left to whoever takes it, so nothing waits on a
 * part that the same thread would run later. */
static void ffn_part(void *arg, int p)
{
    ffn_job *j = arg;
    atomic_store_explicit(&j->started[p], 1, memory_order_relaxed);
    const k_product key = ffn_key_of(j->c, j->L, p, j->T);
    k_matmul_rows(&key, j->T, 0, key.W->rows);
    relu_squared(key.Y, (size_t)j->T * key.W->rows);
    atomic_store_explicit(&j->ready[p], 1, memory_order_release);
    for (int i = 0; i < j->L->ffn_parts; i++) {
        const int q = (p + i) % j->L->ffn_parts;
        if (q != p && !atomic_load_explicit(&j->started[q], memory_order_relaxed))
            continue;
        while (!atomic_load_explicit(&j->ready[q], memory_order_acquire))
            _mm_pause();
        const k_product value = ffn_value_of(j->c, j->L, q, j->T);
        k_matmul_rows_claim(&value, j->T, &j->next[q], FFN_CHUNK_ROWS);
    }
}

/* next: what the pass after the FFN's reads first (NULL: none). */
static void channel_mix(ms_ctx *c, const ms_layer *L, int l, int T, const k_wmat *next)
{
    const float *mix[1] = {L->ffn_x_k};
    float *const outs[1] = {c->xk};
    norm_and_shift(c, T, l, 0, L->ln2_w, L->ln2_b, mix, outs, 1);
    if (L->n_sse)
        self_state_encoder(c, L, l, T);
    const int P = L->ffn_parts, hint = next && hinting(c, T);
    if (ffn_fused(L, T)) {
        /* A decode batch on no more threads than parts: a part per thread,
         * one pass of the pool instead of two. */
        ffn_job j = {.c = c, .L = L, .T = T};
        for (int p = 0; p < P; p++) {
            atomic_init(&j.started[p], 0);
            atomic_init(&j.ready[p], 0);
            atomic_init(&j.next[p], 0);
        }
        if (hint)
            next_product(next, T);
        k_parallel(P, ffn_part, &j);
    } else {
        k_product key[FFN_PARTS], value[FFN_PARTS];
        for (int p = 0; p < P; p++) {
            key[p] = ffn_key_of(c, L, p, T);
            value[p] = ffn_value_of(c, L, p, T);
        }
        linear_many(c, key, P, T);
        relu_squared(c->hid, (size_t)T * L->dim_ffn);
        if (hint)
            next_product(next, T);
        linear_many(c, value, P, T);
    }
    for (int p = 1; p < P; p++)
        k_add_into(c->x, ffn_value_of(c, L, p, T).Y, (size_t)T * c->m->cfg.n_embd);
}

/* Runs T <= max_chunk rows (c->row_state and set_rows() say whose).
 * Logits: every row's with all_logits, else the single rows' and then, in
 * order, the last rows' of the chunks that want them; into logits (one
 * after another) or, with lrows, each into its own buffer. */
static void forward_rows(ms_ctx *c, const int32_t *tokens, int T, float *logits,
                         float *const *lrows, int all_logits)
{
    const ms_model *m = c->m;
    const ms_config *cf = &m->cfg;
    const int C = cf->n_embd;
    for (int t = 0; t < T; t++) {
        float *x = c->x + (size_t)t * C;
        k_wmat_row(&m->emb, tokens[t], x);
        layer_norm(x, x, m->ln0_w, m->ln0_b, C);
    }
    for (int l = 0; l < cf->n_layer; l++) {
        time_mix(c, &m->layers[l], l, T);
        channel_mix(c, &m->layers[l], l, T,
                    l + 1 < cf->n_layer ? &m->layers[l + 1].wr
                    : logits || lrows   ? &m->head
                                        : NULL);
    }
    if (!logits && !lrows)
        return;
    int rows = 0;
    for (int t = 0; t < T; t++) {
        const int want = all_logits || t < c->n_single ||
                         (row_last(c, t, T) && (c->seg_logits >> seg_of(c, t) & 1));
        if (want)
            layer_norm(c->xn + (size_t)rows++ * C, c->x + (size_t)t * C, m->ln_out_w,
                       m->ln_out_b, C);
    }
    if (rows < T) /* each row of the head's product is alone now: the kernels' bits */
        set_rows(c, rows, NULL, 0, 0);
    if (lrows) /* single rows, or chunks' last rows: linear() would take the kernels too */
        k_matmul_to_rows(&m->head, c->xn, lrows, rows, 0.0f);
    else
        linear(c, logits, c->xn, &m->head, rows, 0.0f);
}

/* ------------------------------------------------------------------------ */
/* Public entry points                                                       */

ms_ctx *ms_ctx_new(const ms_model *m, int max_chunk)
{
    ms_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    const ms_config *cf = &m->cfg;
    c->m = m;
    c->max_chunk = max_chunk > 0 ? max_chunk : DEFAULT_CHUNK;
    const size_t T = (size_t)c->max_chunk, C = (size_t)cf->n_embd;
    int rank = cf->d_decay;
    if (cf->d_aaa > rank) rank = cf->d_aaa;
    if (cf->d_mv > rank) rank = cf->d_mv;
    if (cf->d_gate > rank) rank = cf->d_gate;
    float **tc[] = {&c->x, &c->xn, &c->xr, &c->xw, &c->xk, &c->xv, &c->xa, &c->xg, &c->r,
                    &c->k, &c->v, &c->w, &c->a, &c->g, &c->kk, &c->vfirst, &c->y, &c->tmp};
    size_t n_tc = sizeof tc / sizeof tc[0];
    for (size_t i = 0; i < n_tc; i++)
        if (!(*tc[i] = aligned_alloc(64, ((T * C * sizeof(float)) + 63) & ~(size_t)63)))
            goto fail;
    c->rank = rank;
    size_t s_chunks = 1; /* a saved start per chunk only where pass 2 reads it */
    for (int l = 0; l < cf->n_layer; l++)
        if (m->layers[l].n_sse)
            s_chunks = MS_MAX_CHUNKS;
    if (!(c->lora = malloc(4 * T * (size_t)rank * sizeof(float))) ||
        !(c->hid = malloc(T * (size_t)cf->dim_ffn * sizeof(float))) ||
        !(c->ffn_out = malloc((FFN_PARTS - 1) * T * C * sizeof(float))) ||
        !(c->s_start = malloc(s_chunks * C * (size_t)cf->head_size * sizeof(float))) ||
        !(c->prev_xn = malloc(SHIFT_ITEMS * C * sizeof(float))) ||
        !(c->row_state = calloc(T, sizeof *c->row_state)) ||
        !(c->batch_logits = malloc((T < K_MAX_BATCH ? T : K_MAX_BATCH) * (size_t)cf->vocab_size *
                                   sizeof(float))) ||
        !(c->row_tok = malloc(T * sizeof *c->row_tok)) ||
        !(c->panel = malloc((size_t)(c->n_shares = k_threads()) * PANEL_ROWS *
                            (c->panel_cols = (size_t)(cf->dim_ffn > cf->n_embd ? cf->dim_ffn
                                                                                : cf->n_embd)) *
                            sizeof(float))))
        goto fail;
    return c;
fail:
    ms_ctx_free(c);
    return NULL;
}

void ms_ctx_free(ms_ctx *c)
{
    if (!c)
        return;
    float *bufs[] = {c->x, c->xn, c->xr, c->xw, c->xk, c->xv, c->xa, c->xg, c->r, c->k,
                     c->v, c->w, c->a, c->g, c->kk, c->vfirst, c->y, c->tmp, c->lora, c->hid,
                     c->ffn_out, c->s_start, c->prev_xn, c->panel, c->batch_logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(c->row_state);
    free(c->row_tok);
    free(c);
}

ms_status ms_forward(ms_ctx *c, ms_state *s, const int32_t *tokens, size_t n, float *logits,
                     int all_logits, ms_error *err)
{
    const int V = c->m->cfg.vocab_size;
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return ms_fail(err, MS_ERR_INVALID, "token id %d at position %zu is outside the "
                           "vocabulary (0..%d)", tokens[i], i, V - 1);
    for (size_t done = 0; done < n;) {
        size_t T = n - done;
        if (T > (size_t)c->max_chunk)
            T = (size_t)c->max_chunk;
        const int last = done + T == n;
        float *out = NULL;
        if (logits && all_logits)
            out = logits + done * (size_t)V;
        else if (logits && last)
            out = logits;
        /* A lone token is a decode row, the path ms_step_batch takes for a
         * batch of one: its heads go to the pool, which a chunk of under 16
         * rows does not use. */
        set_rows(c, T == 1, &T, T != 1, 1);
        for (size_t t = 0; t < T; t++)
            c->row_state[t] = s;
        forward_rows(c, tokens + done, (int)T, out, NULL, all_logits);
        done += T;
    }
    return MS_OK;
}

ms_status ms_step(ms_ctx *c, ms_state *s, int32_t token, float *logits, ms_error *err)
{
    return ms_forward(c, s, &token, 1, logits, 0, err);
}

ms_status ms_step_batch(ms_ctx *c, ms_state *const *states, const int32_t *tokens, size_t n,
                        float *const *logits, ms_error *err)
{
    return ms_forward_mixed(c, states, tokens, n, logits, NULL, 0, err);
}

static ms_status check_tokens(const ms_ctx *c, const int32_t *tokens, size_t n, const char *what,
                              ms_error *err)
{
    const int V = c->m->cfg.vocab_size;
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return ms_fail(err, MS_ERR_INVALID, "token id %d of %s %zu is outside the "
                           "vocabulary (0..%d)", tokens[i], what, i, V - 1);
    return MS_OK;
}

ms_status ms_forward_mixed(ms_ctx *c, ms_state *const *states, const int32_t *tokens, size_t n,
                           float *const *logits, const ms_chunk *chunks, size_t n_chunks,
                           ms_error *err)
{
    const int V = c->m->cfg.vocab_size;
    const size_t cap = c->max_chunk < K_MAX_BATCH ? (size_t)c->max_chunk : K_MAX_BATCH;
    if (check_tokens(c, tokens, n, "sequence", err))
        return MS_ERR_INVALID;
    if (n_chunks > MS_MAX_CHUNKS)
        return ms_fail(err, MS_ERR_INVALID, "%zu chunks in one call (at most %d)", n_chunks,
                       MS_MAX_CHUNKS);
    const ms_chunk *ck[MS_MAX_CHUNKS]; /* the chunks with tokens */
    size_t lens[MS_MAX_CHUNKS], rows_c = 0;
    unsigned want_c = 0;
    int k = 0;
    for (size_t i = 0; i < n_chunks; i++) {
        const ms_chunk *ch = &chunks[i];
        if (!ch->n)
            continue;
        if (check_tokens(c, ch->tokens, ch->n, "a chunk's position", err))
            return MS_ERR_INVALID;
        for (size_t q = 0; q < n; q++)
            if (states[q] == ch->state)
                return ms_fail(err, MS_ERR_INVALID, "chunk %zu's state is sequence %zu's", i, q);
        for (int q = 0; q < k; q++)
            if (ck[q]->state == ch->state)
                return ms_fail(err, MS_ERR_INVALID, "two chunks share a state (chunk %zu)", i);
        if (ch->ckpt && ch->ckpt == ch->state)
            return ms_fail(err, MS_ERR_INVALID, "chunk %zu's checkpoint is its state", i);
        want_c |= (unsigned)(ch->logits != NULL) << k;
        rows_c += lens[k] = ch->n;
        ck[k++] = ch;
    }
    if (!n && !k)
        return MS_OK;
    if (!n && k == 1 && !ck[0]->ckpt) /* one sequence's chunk: ms_forward, which splits any length */
        return ms_forward(c, ck[0]->state, ck[0]->tokens, ck[0]->n, ck[0]->logits, 0, err);
    if ((n < cap ? n : cap) + rows_c > (size_t)c->max_chunk)
        return ms_fail(err, MS_ERR_INVALID, "chunks of %zu tokens with %zu sequences exceed "
                       "the context's %d rows", rows_c, n < cap ? n : cap, c->max_chunk);
    size_t done = 0;
    do { /* groups of up to cap single rows; the chunks ride with the first */
        const size_t B = n - done < cap ? n - done : cap;
        const int nk = done ? 0 : k;
        int want = nk && want_c;
        set_rows(c, (int)B, lens, nk, want_c);
        for (int i = 0; i < nk; i++) {
            if (ck[i]->ckpt && lens[i] == 1) /* before its only token: the state as it is */
                ms_state_copy(ck[i]->ckpt, ck[i]->state);
            else
                c->seg_ckpt[i] = ck[i]->ckpt;
        }
        for (size_t i = 0; i < B; i++) {
            c->row_state[i] = states[done + i];
            c->row_tok[i] = tokens[done + i];
            want |= logits[done + i] != NULL;
        }
        size_t r = B;
        for (int i = 0; i < nk; i++)
            for (size_t t = 0; t < lens[i]; t++, r++) {
                c->row_state[r] = ck[i]->state;
                c->row_tok[r] = ck[i]->tokens[t];
            }
        /* The head writes each row's logits where its caller wants them (a
         * copy of 8 x 256 KB cost a 0.1B q4 batch step 3%); rows nobody
         * wants go to scratch. */
        float *lrows[LOGIT_ROWS];
        int rows = 0;
        for (size_t i = 0; i < B; i++, rows++)
            lrows[rows] = logits[done + i] ? logits[done + i] : c->batch_logits + i * (size_t)V;
        for (int i = 0; i < nk; i++)
            if (want_c >> i & 1)
                lrows[rows++] = ck[i]->logits;
        forward_rows(c, c->row_tok, (int)r, NULL, want ? lrows : NULL, 0);
        done += B;
    } while (done < n);
    return MS_OK;
}
