/*
 * sampler.c - next-token sampling as the rwkv pip PIPELINE does it (SPEC
 * 2.4): repetition penalties and logit bias on the logits, then greedy, or
 * softmax -> nucleus cutoff on the untempered probabilities -> top-k ->
 * p^(1/T) -> one seeded draw.
 *
 * Design. Everything is allocated in ms_sampler_new; a draw allocates
 * nothing. Penalties and biases touch only the ids that have them (kept in
 * lists), so their cost does not grow with the vocabulary. The nucleus needs
 * only its cutoff, never a sorted vocabulary. First we gather the tokens
 * above 1/64 of the mass, which are exactly the head of the sorted order;
 * for a trained model they usually already hold top_p (or top_k), and a
 * quickselect over those few finds the cutoff. Otherwise (flat
 * distributions) a histogram of the mass over float-exponent buckets finds
 * the one bucket the cutoff lies in: tokens above it are kept as they are
 * and the quickselect runs on that bucket only. Either way a draw costs a
 * few linear passes over V, dominated by the V calls to expf. The RNG is
 * xoshiro256** seeded through splitmix64, and every loop runs in a fixed
 * order: the same seed gives the same tokens on every machine.
 *
 * Deliberate differences from pip: ties in greedy mode go to the lowest id
 * (pip draws among them), and when rounding keeps the cumulative sum below
 * top_p (e.g. top_p = 1) every token is kept, where pip's argmax over an
 * all-false mask falls back to greedy.
 */
#include "internal.h"
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Buckets of the probability histogram, see bucket_of(). Token i adds to
 * copy i % HIST_WAYS: a flat distribution puts neighbours in one bucket,
 * and with a single copy every add waited for the previous one's store.
 * The copies are summed in a fixed order, so every machine draws alike. */
#define HIST_BUCKETS 1024
#define HIST_WAYS 4
/* Tokens in the critical bucket from which it is narrowed, see refine_cut(). */
#define REFINE_MIN 8192

typedef struct cand {
    float p;
    int32_t id;
} cand;

struct ms_sampler {
    int32_t n;               /* vocabulary size */
    ms_sampler_params p;
    uint64_t rng[4];         /* xoshiro256** state */
    /* penalties */
    float *occ;              /* (n) occurrence count, decayed */
    unsigned char *seen;     /* (n) 1 when id is in the occurrence table */
    int32_t *seen_ids;       /* (n_seen) ids in the occurrence table */
    int32_t n_seen;
    unsigned char *exempt;   /* (n) drawing it adds 0 to its count */
    /* bias */
    float *bias;             /* (n) added to the logit */
    unsigned char *biased;   /* (n) 1 when id is in bias_ids */
    int32_t *bias_ids;       /* (n_biased) */
    int32_t n_biased;
    /* per-draw scratch */
    float *prob;             /* (n) softmax numerators exp(l - max) */
    cand *cands;             /* (n) candidates for the nucleus, sorted */
    double *weight;          /* (n) draw weights */
    double *hist_mass;       /* (HIST_WAYS, HIST_BUCKETS) softmax mass per bucket */
    int32_t *hist_count;     /* (HIST_WAYS, HIST_BUCKETS) tokens per bucket */
};

/* ======================================================================== */
/* RNG                                                                       */
/* ======================================================================== */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform(uint64_t s[4])
{
    return (double)(xoshiro_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* ======================================================================== */
/* Lifecycle                                                                 */
/* ======================================================================== */

ms_sampler_params ms_sampler_defaults(void)
{
    ms_sampler_params p = { 0 };
    p.temperature = 1.0f;
    p.top_p = 0.3f;
    p.top_k = 0;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.5f;
    p.penalty_decay = 0.996f;
    p.seed = 0;
    return p;
}

void ms_sampler_free(ms_sampler *s)
{
    if (!s)
        return;
    free(s->occ);
    free(s->seen);
    free(s->seen_ids);
    free(s->exempt);
    free(s->bias);
    free(s->biased);
    free(s->bias_ids);
    free(s->prob);
    free(s->cands);
    free(s->weight);
    free(s->hist_mass);
    free(s->hist_count);
    free(s);
}

ms_sampler *ms_sampler_new(int32_t n_vocab, const ms_sampler_params *p)
{
    if (n_vocab <= 0)
        return NULL;
    ms_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    size_t n = (size_t)n_vocab;
    s->n = n_vocab;
    s->occ = calloc(n, sizeof *s->occ);
    s->seen = calloc(n, 1);
    s->seen_ids = malloc(n * sizeof *s->seen_ids);
    s->exempt = calloc(n, 1);
    s->bias = calloc(n, sizeof *s->bias);
    s->biased = calloc(n, 1);
    s->bias_ids = malloc(n * sizeof *s->bias_ids);
    s->prob = malloc(n * sizeof *s->prob);
    s->cands = malloc(n * sizeof *s->cands);
    s->weight = malloc(n * sizeof *s->weight);
    s->hist_mass = malloc(HIST_WAYS * HIST_BUCKETS * sizeof *s->hist_mass);
    s->hist_count = malloc(HIST_WAYS * HIST_BUCKETS * sizeof *s->hist_count);
    if (!s->occ || !s->seen || !s->seen_ids || !s->exempt || !s->bias || !s->biased ||
        !s->bias_ids || !s->prob || !s->cands || !s->weight ||
        !s->hist_mass || !s->hist_count) {
        ms_sampler_free(s);
        return NULL;
    }
    ms_sampler_reset(s, p);
    return s;
}

void ms_sampler_reset(ms_sampler *s, const ms_sampler_params *p)
{
    s->p = p ? *p : ms_sampler_defaults();
    for (int32_t i = 0; i < s->n_seen; i++) {
        s->occ[s->seen_ids[i]] = 0;
        s->seen[s->seen_ids[i]] = 0;
    }
    s->n_seen = 0;
    uint64_t x = s->p.seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
}

/* Setting a bias again replaces the previous one. Biases and exemptions
 * outlive ms_sampler_reset: they describe the model and the request, not
 * the text generated so far. */
void ms_sampler_set_bias(ms_sampler *s, int32_t id, float bias)
{
    if (id < 0 || id >= s->n)
        return;
    if (!s->biased[id]) {
        s->biased[id] = 1;
        s->bias_ids[s->n_biased++] = id;
    }
    s->bias[id] = bias;
}

void ms_sampler_set_exempt(ms_sampler *s, int32_t id)
{
    if (id >= 0 && id < s->n)
        s->exempt[id] = 1;
}

/* ======================================================================== */
/* Drawing                                                                   */
/* ======================================================================== */

/* The bits of a float, which order non-negative floats as their values. */
static inline uint32_t bucket_bits(float e)
{
    uint32_t bits;
    memcpy(&bits, &e, sizeof bits);
    return bits;
}

/* Total order for top-k: higher probability first, then lower id, so the
 * result never depends on the order the candidates happen to be in. */
static int cand_before(const cand *x, const cand *y)
{
    return x->p > y->p || (x->p == y->p && x->id < y->id);
}

static void cand_swap(cand *c, int32_t i, int32_t j)
{
    cand t = c[i];
    c[i] = c[j];
    c[j] = t;
}

/* Median of three probabilities, as the pivot value. */
static float pivot_value(const cand *c, int32_t lo, int32_t hi)
{
    float a = c[lo].p, b = c[lo + (hi - lo) / 2].p, d = c[hi - 1].p;
    if (a > b) {
        float t = a;
        a = b;
        b = t;
    }
    return d <= a ? a : d >= b ? b : d;
}

/* Nucleus without sorting: finds the cutoff v, the probability where the
 * descending cumulative sum first reaches top_p, i.e. mass(p > v) < top_p
 * <= mass(p >= v), by quickselect with three-way partitions. Rearranges c
 * so that c[0..keep) are exactly the candidates with p >= v (ties at the
 * cutoff stay, as in pip) and returns keep; returns nc when the total mass
 * stays below top_p (rounding, top_p = 1). Expected O(nc). */
static int32_t nucleus(cand *c, int32_t nc, double top_p)
{
    int32_t lo = 0, hi = nc;
    double above = 0; /* mass of c[0..lo), all larger than c[lo..hi) */
    while (lo < hi) {
        float v = pivot_value(c, lo, hi);
        /* [lo,a) > v, [a,i) == v, [z,hi) < v, [i,z) unseen */
        int32_t a = lo, i = lo, z = hi;
        while (i < z) {
            if (c[i].p > v)
                cand_swap(c, a++, i++);
            else if (c[i].p < v)
                cand_swap(c, i, --z);
            else
                i++;
        }
        double m_gt = 0, m_eq = 0;
        for (int32_t k = lo; k < a; k++)
            m_gt += c[k].p;
        for (int32_t k = a; k < z; k++)
            m_eq += c[k].p;
        if (above + m_gt >= top_p) {
            hi = a; /* the cutoff is above v; a > lo since above < top_p */
        } else if (above + m_gt + m_eq >= top_p) {
            return z;
        } else {
            above += m_gt + m_eq;
            lo = z;
        }
    }
    return nc;
}

/* Moves the k first candidates in cand_before order to c[0..k) (in no
 * particular order): quickselect, expected O(n). */
static void select_top_k(cand *c, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n;
    while (hi - lo > 1) {
        int32_t mid = lo + (hi - lo) / 2;
        /* median of three to the end as pivot */
        if (cand_before(&c[mid], &c[lo]))
            cand_swap(c, mid, lo);
        if (cand_before(&c[hi - 1], &c[lo]))
            cand_swap(c, hi - 1, lo);
        if (cand_before(&c[mid], &c[hi - 1]))
            cand_swap(c, mid, hi - 1);
        cand piv = c[hi - 1];
        int32_t st = lo;
        for (int32_t i = lo; i < hi - 1; i++)
            if (cand_before(&c[i], &piv))
                cand_swap(c, i, st++);
        cand_swap(c, st, hi - 1); /* c[st] is the pivot, at its final rank */
        if (st == k || st + 1 == k)
            return;
        if (st > k)
            hi = st;
        else
            lo = st + 1;
    }
}

/* Draws one index of w[0..k) with probability proportional to w (k >= 1,
 * weights >= 0, total > 0). One body for the double and the float weight
 * arrays; the running sum is double either way. */
#define DRAW_WEIGHTED(NAME, T)                                                                   \
    static int32_t NAME(uint64_t rng[4], const T *w, int32_t k, double total)                    \
    {                                                                                            \
        double target = uniform(rng) * total, acc = 0;                                           \
        int32_t last = 0;                                                                        \
        for (int32_t i = 0; i < k; i++) {                                                        \
            if (w[i] <= 0)                                                                       \
                continue;                                                                        \
            acc += w[i];                                                                         \
            last = i;                                                                            \
            if (acc > target)                                                                    \
                return i;                                                                        \
        }                                                                                        \
        return last; /* rounding left target just above the sum */                              \
    }
DRAW_WEIGHTED(draw_weighted, double)
DRAW_WEIGHTED(draw_weighted_f, float)
#undef DRAW_WEIGHTED

/* The draw weight of a token whose softmax numerator is e = exp(l - m),
 * i.e. its probability relative to the top token's: p^(1/T) up to a common
 * factor, which cannot underflow to zero for every token even at a tiny T.
 * Zero stays zero (a banned token) also when T is huge and pow(0, 0) = 1. */
static double tempered(float e, double inv_t)
{
    if (!(e > 0))
        return 0;
    return inv_t == 1.0 ? e : pow(e, inv_t);
}

/* Histogram bucket of a softmax numerator e in [0, 1]: its float bits
 * without the lowest 20, i.e. exponent and 3 mantissa bits. Monotonic in e;
 * one bucket spans a factor 2^(1/8); e = 1 falls in bucket 1016. */
static inline uint32_t bucket_of(float e) { return bucket_bits(e) >> 20; }

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* e[i] = exp(logits[i] - m) (0 for -inf and NaN, which count as -inf), and
 * their sum. Sixteen double partial sums, added as a fixed tree: every
 * clone, so every machine, computes the same numbers. */
CLONES static double softmax_numerators(const float *logits, int32_t n, float m, float *e)
{
    enum { LANES = 16 };
    double part[LANES] = { 0 };
    const int32_t n16 = n & ~(LANES - 1);
    for (int32_t i0 = 0; i0 < n16; i0 += LANES)
        for (int l = 0; l < LANES; l++) {
            const float d = logits[i0 + l] - m;
            const float x = d >= -87.3f ? exp_approx(d) : 0.0f;
            e[i0 + l] = x;
            part[l] += x;
        }
    for (int32_t i = n16; i < n; i++) {
        const float d = logits[i] - m;
        e[i] = d >= -87.3f ? exp_approx(d) : 0.0f;
        part[i - n16] += e[i];
    }
    for (int w = LANES / 2; w; w /= 2)
        for (int l = 0; l < w; l++)
            part[l] += part[l + w];
    return part[0];
}

/* The first index of the largest logit (NaN never wins), -1 when every
 * logit is -inf or NaN: the sequential scan's answer, found per lane. */
CLONES static int32_t argmax(const float *logits, int32_t n, float *max)
{
    enum { LANES = 16 };
    float mv[LANES];
    int32_t mi[LANES];
    for (int l = 0; l < LANES; l++) {
        mv[l] = -INFINITY;
        mi[l] = -1;
    }
    const int32_t n16 = n & ~(LANES - 1);
    for (int32_t i0 = 0; i0 < n16; i0 += LANES)
        for (int l = 0; l < LANES; l++) {
            const float v = logits[i0 + l];
            const int gt = v > mv[l];
            mv[l] = gt ? v : mv[l];
            mi[l] = gt ? i0 + l : mi[l];
        }
    float m = -INFINITY;
    int32_t best = -1;
    for (int l = 0; l < LANES; l++)
        if (mi[l] >= 0 && (mv[l] > m || (mv[l] == m && mi[l] < best))) {
            m = mv[l];
            best = mi[l];
        }
    for (int32_t i = n16; i < n; i++)
        if (logits[i] > m) {
            m = logits[i];
            best = i;
        }
    *max = m;
    return best;
}

/* The numerators of e[0..n) that reach tau, as candidates in id order;
 * returns their count and (*head) their mass, summed in id order. A
 * vocabulary holds few (at most 64 reach 1/64 of the mass), so each block
 * of sixteen is first tested branch-free, which each clone does in one
 * vector compare; a branch per token was a third of a draw over 65,536
 * flat logits. */
CLONES static int32_t collect_above(const float *e, int32_t n, float tau, cand *c, double *head)
{
    int32_t nb = 0;
    double h = 0;
    for (int32_t i0 = 0; i0 < n; i0 += 16) {
        const int32_t i1 = i0 + 16 < n ? i0 + 16 : n;
        int any = 0;
        for (int32_t i = i0; i < i1; i++)
            any |= e[i] >= tau;
        if (any)
            for (int32_t i = i0; i < i1; i++)
                if (e[i] >= tau) {
                    c[nb++] = (cand){ e[i], i };
                    h += e[i];
                }
    }
    *head = h;
    return nb;
}

/* Tokens whose key (float bits >> shift) is above key_c to c[0..*na) in
 * id order, those equal to it to the back, c[n - *nb..n) from the end
 * (descending id order, as the draw has always walked them). Blocks of
 * sixteen with no key that high are skipped after one test, as above. */
CLONES static void gather_keys(const float *e, int32_t n, uint32_t shift, uint32_t key_c,
                               cand *c, int32_t *na, int32_t *nb)
{
    int32_t a = 0, b = 0;
    for (int32_t i0 = 0; i0 < n; i0 += 16) {
        const int32_t i1 = i0 + 16 < n ? i0 + 16 : n;
        int any = 0;
        for (int32_t i = i0; i < i1; i++)
            any |= (bucket_bits(e[i]) >> shift) >= key_c;
        if (!any)
            continue;
        for (int32_t i = i0; i < i1; i++) {
            const uint32_t key = bucket_bits(e[i]) >> shift;
            if (key > key_c)
                c[a++] = (cand){ e[i], i };
            else if (key == key_c)
                c[n - 1 - b++] = (cand){ e[i], i };
        }
    }
    *na = a;
    *nb = b;
}

static inline void hist_add(const float *e, int32_t i0, int32_t i1, double *hmass, int32_t *hcount)
{
    for (int32_t i = i0; i < i1; i++) {
        const size_t b = (size_t)(i % HIST_WAYS) * HIST_BUCKETS + bucket_of(e[i]);
        hmass[b] += e[i];
        hcount[b]++;
    }
}

/* The histogram of e[0..n): mass and count per (way, bucket), token i in
 * way i % HIST_WAYS. Blocks of sixteen zeros (banned or underflowed tokens:
 * 65,279 of 65,536 with the byte-level tokenizer, a draw there 152 -> 80 us
 * with add_dense) are only counted, into way 0's bucket 0, bucket_of(0):
 * only the sums over the ways are read, and adding 0 changed no mass. Not
 * a clone: GCC's AVX-512 one converts each numerator into the register of
 * the previous sum (vcvtss2sd merges), chaining every add (flat top_k draws
 * 1.6x slower). */
static void histogram(const float *e, int32_t n, double *hmass, int32_t *hcount)
{
    int32_t zeros = 0, i0 = 0;
    for (; i0 + 16 <= n; i0 += 16) {
        uint32_t w[16], any = 0; /* e >= 0: a block is all zeros when its bits are */
        memcpy(w, e + i0, sizeof w);
        for (int l = 0; l < 16; l++)
            any |= w[l];
        if (any)
            hist_add(e, i0, i0 + 16, hmass, hcount);
        else
            zeros += 16;
    }
    hist_add(e, i0, n, hmass, hcount);
    hcount[bucket_of(0.0f)] += zeros;
}

/* Where in bucket bc (sub-buckets of the next ten bits of the numerator,
 * highest first) the descending sum of e reaches need: sets *sub and
 * returns the mass of bc's tokens above that sub-bucket, or -1 when the
 * whole bucket stays under need (rounding). m and k are scratch for 1024
 * sub-buckets. Every token is added (zero outside bc), so no branch
 * depends on the data. */
static double refine_cut(const float *e, int32_t n, uint32_t bc, double need, double *m,
                         int32_t *k, uint32_t *sub)
{
    enum { SUB = 1024 };
    memset(m, 0, SUB * sizeof *m);
    memset(k, 0, SUB * sizeof *k);
    for (int32_t i = 0; i < n; i++) {
        const uint32_t bits = bucket_bits(e[i]), in = (bits >> 20) == bc;
        m[bits >> 10 & (SUB - 1)] += in ? e[i] : 0.0f;
        k[bits >> 10 & (SUB - 1)] += (int32_t)in;
    }
    double above = 0;
    for (int32_t b = SUB - 1; b >= 0; b--) {
        if (above + m[b] >= need) {
            *sub = (uint32_t)b;
            return above;
        }
        above += m[b];
    }
    return -1;
}

/* Samples from the softmax of logits (max logit m, finite). Probabilities
 * are kept unnormalized (e = exp(l - m), total `sum`): comparing against
 * top_p * sum is the same test and saves a pass over the vocabulary. */
static int32_t sample_probs(ms_sampler *s, const float *logits, float m)
{
    const int32_t n = s->n;
    float *e = s->prob;
    int top_k = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : 0;
    int use_p = s->p.top_p < 1.0f;
    double inv_t = 1.0 / s->p.temperature;
    double *w = s->weight;
    double *hmass = s->hist_mass;
    int32_t *hcount = s->hist_count;

    const double sum = softmax_numerators(logits, n, m, e);
    int32_t i;

    /* No filter: draw over the whole vocabulary in id order. */
    if (!use_p && !top_k) {
        if (inv_t == 1.0)
            return draw_weighted_f(s->rng, e, n, sum);
        double total = 0;
        for (i = 0; i < n; i++) {
            w[i] = tempered(e[i], inv_t);
            total += w[i];
        }
        return draw_weighted(s->rng, w, n, total);
    }

    const double top_mass = s->p.top_p * sum;
    cand *c = s->cands;
    int32_t na = 0, nb = 0, bc = -1, bp = -1;
    double above_p = 0;

    /* Fast path, the usual case for a trained model: the tokens above 1/64
     * of the mass already hold the nucleus (or the top_k). */
    const float tau = (float)(sum / 64);
    double head;
    nb = collect_above(e, n, tau, c, &head);
    if ((use_p && head >= top_mass) || (top_k && nb >= top_k)) {
        /* all candidates form one "critical bucket" */
        bc = 0;
        bp = use_p && head >= top_mass ? 0 : -1;
    } else {
        /* Histogram of the mass per bucket, then walk the buckets from the
         * top to the one where the nucleus mass (bp) and the top_k count
         * (bk) are reached. Tokens above the higher of the two are kept for
         * sure; only that bucket needs a closer look. */
        memset(hmass, 0, HIST_WAYS * HIST_BUCKETS * sizeof *hmass);
        memset(hcount, 0, HIST_WAYS * HIST_BUCKETS * sizeof *hcount);
        histogram(e, n, hmass, hcount);
        int32_t bk = -1;
        double cum = 0;
        int64_t cnt = 0, n_bp = 0;
        for (int32_t b = HIST_BUCKETS - 1; b >= 0 && (bp < 0 || bk < 0); b--) {
            double mass = 0;
            int64_t count = 0;
            for (int way = 0; way < HIST_WAYS; way++) {
                mass += hmass[(size_t)way * HIST_BUCKETS + (size_t)b];
                count += hcount[(size_t)way * HIST_BUCKETS + (size_t)b];
            }
            if (use_p && bp < 0 && cum + mass >= top_mass) {
                bp = b;
                above_p = cum;
                n_bp = count;
            }
            if (top_k && bk < 0 && cnt + count >= top_k)
                bk = b;
            cum += mass;
            cnt += count;
        }
        /* Rounding may leave the total just under top_mass: keep all. */
        bc = bp > bk ? bp : bk;
        if (bc < 0)
            bc = 0;

        /* A critical bucket of the nucleus alone that holds many tokens (a
         * flat distribution puts tens of thousands in one) is narrowed to
         * the sub-bucket of the next ten bits where the nucleus ends, so
         * that the quickselect below sees a few dozen tokens: its
         * unpredictable branches took 1 ms per draw over 65,536. */
        uint32_t shift = 20, key_c = (uint32_t)bc;
        if (bp == bc && bk < bc && n_bp > REFINE_MIN) {
            uint32_t sub;
            const double above = refine_cut(e, n, (uint32_t)bc, top_mass - above_p, hmass,
                                            hcount, &sub);
            if (above >= 0) {
                above_p += above;
                key_c = (uint32_t)bc << 10 | sub;
                shift = 10;
            }
        }

        /* Gather: strictly higher keys to the front (all kept, id order),
         * the critical key to the back. */
        gather_keys(e, n, shift, key_c, c, &na, &nb);
        memmove(c + na, c + n - nb, (size_t)nb * sizeof *c);
    }

    /* Nucleus cutoff inside bc when that is where top_p is reached; else
     * every token of bc is within the nucleus. Then top_k, which only
     * bites in bc too (fewer than top_k tokens lie above it). */
    int32_t keep_b = nb;
    if (bp >= 0 && bc == bp)
        keep_b = nucleus(c + na, nb, top_mass - above_p);
    int32_t keep = na + keep_b;
    if (top_k && keep > top_k) {
        select_top_k(c + na, keep_b, top_k - na);
        keep = top_k;
    }

    /* Temperature after the cutoff. The draw walks c[] in the order the
     * selection left it: deterministic, so seeded runs still replay. */
    double total = 0;
    for (i = 0; i < keep; i++) {
        w[i] = tempered(c[i].p, inv_t);
        total += w[i];
    }
    return c[draw_weighted(s->rng, w, keep, total)].id;
}

int32_t ms_sampler_sample(ms_sampler *s, float *logits)
{
    const int32_t n = s->n;
    const ms_sampler_params *p = &s->p;

    /* Penalties from the tokens generated so far, then the bias. */
    for (int32_t i = 0; i < s->n_seen; i++) {
        int32_t id = s->seen_ids[i];
        logits[id] -= p->presence_penalty + s->occ[id] * p->frequency_penalty;
    }
    /* Many biases (the byte-level tokenizer bans 65,279) are added as the
     * whole array in one vector pass rather than token by token: an unbiased
     * token adds 0 (-0 becomes +0, which no later step tells apart). */
    if (s->n_biased > n / 16)
        k_add_into(logits, s->bias, (size_t)n);
    else
        for (int32_t i = 0; i < s->n_biased; i++)
            logits[s->bias_ids[i]] += s->bias[s->bias_ids[i]];

    /* The argmax is needed either way: the answer in greedy mode, the
     * softmax shift otherwise. NaN never wins. */
    float m;
    const int32_t best = argmax(logits, n, &m);

    int32_t tok;
    int greedy = !(p->temperature > 0) || !(p->top_p > 0);
    if (best < 0)
        tok = 0; /* every logit is -inf/NaN: nothing to draw, end the text */
    else if (greedy || isinf(m))
        tok = best;
    else
        tok = sample_probs(s, logits, m);

    /* Record the token: decay everything, then count it. */
    for (int32_t i = 0; i < s->n_seen; i++)
        s->occ[s->seen_ids[i]] *= p->penalty_decay;
    if (!s->seen[tok]) {
        s->seen[tok] = 1;
        s->seen_ids[s->n_seen++] = tok;
    }
    if (!s->exempt[tok])
        s->occ[tok] += 1.0f;
    return tok;
}

typedef struct {
    ms_sampler *const *s;
    float *const *logits;
    int32_t *out;
} sample_job;

static void sample_one(void *arg, int i)
{
    const sample_job *j = arg;
    j->out[i] = ms_sampler_sample(j->s[i], j->logits[i]);
}

void ms_sampler_sample_batch(ms_sampler *const *s, float *const *logits, size_t n, int32_t *out)
{
    sample_job j = { s, logits, out };
    k_parallel((int)n, sample_one, &j);
}

/* ======================================================================== */
/* Log-probabilities                                                         */
/* ======================================================================== */

/* log-softmax in double: max shift, then log of the sum. NaN logits count as
 * -inf, as in the draw. The top-k list is kept sorted by insertion: k is
 * small, and most tokens fail the first comparison. */
float ms_logprobs(const float *logits, int32_t n, int32_t token, int k, int32_t *top_ids,
                  float *top_lp)
{
    float m = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (logits[i] > m)
            m = logits[i];
    if (!(m > -INFINITY)) {
        for (int i = 0; i < k && i < n; i++) {
            top_ids[i] = i;
            top_lp[i] = -INFINITY;
        }
        return -INFINITY;
    }
    double part[4] = { 0, 0, 0, 0 };
    for (int32_t i = 0; i < n; i++) {
        float l = logits[i];
        if (l == l)
            part[i & 3] += exp((double)l - m);
    }
    double lse = (double)m + log((part[0] + part[1]) + (part[2] + part[3]));
    if (k > n)
        k = n;
    int got = 0;
    for (int32_t i = 0; i < n && k > 0; i++) {
        float l = logits[i];
        if (l != l)
            l = -INFINITY;
        if (got == k && !(l > top_lp[k - 1]))
            continue; /* ties keep the earlier (lower) id */
        int j = got < k ? got++ : k - 1;
        while (j > 0 && l > top_lp[j - 1]) {
            top_lp[j] = top_lp[j - 1];
            top_ids[j] = top_ids[j - 1];
            j--;
        }
        top_lp[j] = l;
        top_ids[j] = i;
    }
    for (int i = 0; i < got; i++)
        top_lp[i] = (float)((double)top_lp[i] - lse);
    if (token < 0 || token >= n || logits[token] != logits[token])
        return -INFINITY;
    return (float)((double)logits[token] - lse);
}
