/*
 * test_sampler.c - the SPEC 2.4 sampler: greedy, determinism of the seeded
 * RNG, nucleus / top-k / temperature (checked statistically with a fixed
 * seed, so the tolerances are checked once and cannot flake), penalties
 * computed by hand, bias and exemptions.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"

/* Penalties off, so that draws depend on the logits alone. */
static ms_sampler_params plain(float temperature, float top_p, int top_k, uint64_t seed)
{
    ms_sampler_params p = ms_sampler_defaults();
    p.temperature = temperature;
    p.top_p = top_p;
    p.top_k = top_k;
    p.presence_penalty = 0;
    p.frequency_penalty = 0;
    p.penalty_decay = 1;
    p.seed = seed;
    return p;
}

/* Draws from a copy of logits (the sampler modifies its input). */
static int32_t draw(ms_sampler *s, const float *logits, int32_t n, float *scratch)
{
    memcpy(scratch, logits, (size_t)n * sizeof *scratch);
    return ms_sampler_sample(s, scratch);
}

/* Deterministic pseudo-random logits in about [-scale, scale]. */
static void fill_logits(float *l, int32_t n, uint64_t seed, float scale)
{
    uint64_t x = seed * 2654435761u + 1;
    for (int32_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        l[i] = scale * (float)((double)(x >> 11) / 9007199254740992.0 * 2 - 1);
    }
}

/* Counts draws per token. */
static void histogram(ms_sampler *s, const float *logits, int32_t n, int draws, int *count)
{
    float scratch[16];
    cr_assert_leq(n, 16);
    memset(count, 0, (size_t)n * sizeof *count);
    for (int i = 0; i < draws; i++) {
        int32_t t = draw(s, logits, n, scratch);
        cr_assert(t >= 0 && t < n);
        count[t]++;
    }
}

Test(sampler, defaults)
{
    ms_sampler_params p = ms_sampler_defaults();
    cr_assert_float_eq(p.temperature, 1.0f, 1e-7);
    cr_assert_float_eq(p.top_p, 0.3f, 1e-7);
    cr_assert_eq(p.top_k, 0);
    cr_assert_float_eq(p.presence_penalty, 0.5f, 1e-7);
    cr_assert_float_eq(p.frequency_penalty, 0.5f, 1e-7);
    cr_assert_float_eq(p.penalty_decay, 0.996f, 1e-7);
    cr_assert_eq(p.seed, 0);
    cr_assert_null(ms_sampler_new(0, &p));
    ms_sampler *s = ms_sampler_new(10, NULL); /* NULL params = defaults */
    cr_assert_not_null(s);
    ms_sampler_free(s);
    ms_sampler_free(NULL);
}

Test(sampler, greedy_picks_max)
{
    float l[6] = { 0.5f, 2.0f, -1.0f, 3.0f, NAN, 3.0f };
    float x[6];
    ms_sampler_params p = plain(0, 0.3f, 0, 1);
    ms_sampler *s = ms_sampler_new(6, &p);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(draw(s, l, 6, x), 3, "ties go to the lowest id, NaN never wins");
    p = plain(1.0f, 0, 0, 1); /* top_p 0 is greedy too */
    ms_sampler_reset(s, &p);
    cr_assert_eq(draw(s, l, 6, x), 3);
    /* All banned: nothing to draw, end of text. */
    float none[6] = { -INFINITY, -INFINITY, NAN, -INFINITY, -INFINITY, -INFINITY };
    p = plain(1.0f, 0.5f, 0, 1);
    ms_sampler_reset(s, &p);
    cr_assert_eq(draw(s, none, 6, x), 0);
    ms_sampler_free(s);
}

Test(sampler, same_seed_same_sequence)
{
    enum { V = 1000, N = 300 };
    static float l[V], x[V];
    fill_logits(l, V, 7, 4.0f);
    int32_t a[N], b[N], c[N], again[N];
    ms_sampler_params p = plain(1.0f, 0.9f, 0, 42);
    ms_sampler *s1 = ms_sampler_new(V, &p), *s2 = ms_sampler_new(V, &p);
    ms_sampler_params q = p;
    q.seed = 43;
    ms_sampler *s3 = ms_sampler_new(V, &q);
    for (int i = 0; i < N; i++) {
        a[i] = draw(s1, l, V, x);
        b[i] = draw(s2, l, V, x);
        c[i] = draw(s3, l, V, x);
    }
    ms_sampler_reset(s1, &p); /* re-seeds: replays the sequence */
    for (int i = 0; i < N; i++)
        again[i] = draw(s1, l, V, x);
    cr_assert(memcmp(a, b, sizeof a) == 0, "same seed, same tokens");
    cr_assert(memcmp(a, again, sizeof a) == 0, "reset replays");
    int differ = 0, distinct = 0;
    for (int i = 0; i < N; i++) {
        differ += a[i] != c[i];
        int seen = 0;
        for (int j = 0; j < i; j++)
            seen |= a[j] == a[i];
        distinct += !seen;
    }
    cr_assert_gt(differ, N / 2, "different seeds gave %d/%d different tokens", differ, N);
    cr_assert_gt(distinct, 20, "the draws are not all the same token");
    ms_sampler_free(s1);
    ms_sampler_free(s2);
    ms_sampler_free(s3);
}

/* Seeded outputs are part of the API (same seed, same reply, on every
 * machine): a change of RNG, of its seeding or of the draw order shows here. */
Test(sampler, seeded_stream_is_pinned)
{
    const float l[4] = { 0, 1, 2, 3 };
    const int32_t want1[24] = { 1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2,
                                3, 2, 3, 3, 3, 3, 3, 3, 1, 2, 3, 3 };
    const int32_t want2[24] = { 3, 3, 2, 1, 1, 2, 3, 3, 3, 3, 3, 2,
                                2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3 };
    float x[4];
    ms_sampler_params p = plain(1.0f, 1.0f, 0, 42);
    ms_sampler *s = ms_sampler_new(4, &p);
    for (int i = 0; i < 24; i++)
        cr_assert_eq(draw(s, l, 4, x), want1[i], "seed 42, draw %d", i);
    p = plain(0.8f, 0.9f, 0, 7);
    ms_sampler_reset(s, &p);
    for (int i = 0; i < 24; i++)
        cr_assert_eq(draw(s, l, 4, x), want2[i], "seed 7, draw %d", i);
    ms_sampler_free(s);
}

Test(sampler, tiny_top_p_and_top_k_one_are_argmax)
{
    enum { V = 5000 };
    static float l[V], x[V];
    fill_logits(l, V, 3, 2.0f);
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (l[i] > l[best])
            best = i;
    ms_sampler_params p = plain(1.0f, 1e-6f, 0, 5);
    ms_sampler *s = ms_sampler_new(V, &p);
    for (int i = 0; i < 300; i++)
        cr_assert_eq(draw(s, l, V, x), best);
    p = plain(1.5f, 1.0f, 1, 5);
    ms_sampler_reset(s, &p);
    for (int i = 0; i < 300; i++)
        cr_assert_eq(draw(s, l, V, x), best);
    ms_sampler_free(s);
}

/* Fixed seed: these counts are deterministic, the tolerances (about 5
 * standard deviations) only absorb the choice of seed. */
Test(sampler, temperature_statistics)
{
    const float l[4] = { 0.0f, 1.0f, 2.0f, 3.0f };
    const float temps[3] = { 1.0f, 0.5f, 2.0f };
    const int draws = 20000;
    ms_sampler_params p = plain(1.0f, 1.0f, 0, 11);
    ms_sampler *s = ms_sampler_new(4, &p);
    for (int k = 0; k < 3; k++) {
        p = plain(temps[k], 1.0f, 0, 11 + (uint64_t)k);
        ms_sampler_reset(s, &p);
        int count[4];
        histogram(s, l, 4, draws, count);
        double z = 0, want[4];
        for (int i = 0; i < 4; i++)
            z += exp(l[i] / temps[k]);
        for (int i = 0; i < 4; i++) {
            want[i] = exp(l[i] / temps[k]) / z;
            double got = (double)count[i] / draws;
            cr_assert(fabs(got - want[i]) < 0.017, "T=%g token %d: %.4f, want %.4f",
                      temps[k], i, got, want[i]);
        }
    }
    ms_sampler_free(s);
}

Test(sampler, nucleus_and_top_k_statistics)
{
    /* probabilities 0.5 0.3 0.15 0.05 */
    const float l[4] = { logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f) };
    const int draws = 20000;
    int count[4];
    /* top_p 0.7: cumsum 0.5, 0.8 -> cutoff 0.3 -> {0, 1}. */
    ms_sampler_params p = plain(1.0f, 0.7f, 0, 99);
    ms_sampler *s = ms_sampler_new(4, &p);
    histogram(s, l, 4, draws, count);
    cr_assert_eq(count[2] + count[3], 0);
    cr_assert(fabs((double)count[0] / draws - 0.625) < 0.017, "%d", count[0]);
    /* Temperature applies after the cutoff: sqrt(.5) / (sqrt(.5) + sqrt(.3)). */
    p = plain(2.0f, 0.7f, 0, 98);
    ms_sampler_reset(s, &p);
    histogram(s, l, 4, draws, count);
    cr_assert_eq(count[2] + count[3], 0);
    double want = sqrt(0.5) / (sqrt(0.5) + sqrt(0.3));
    cr_assert(fabs((double)count[0] / draws - want) < 0.017, "%d", count[0]);
    /* top_k 3 without nucleus: 0.5/.95, 0.3/.95, 0.15/.95, never token 3. */
    p = plain(1.0f, 1.0f, 3, 97);
    ms_sampler_reset(s, &p);
    histogram(s, l, 4, draws, count);
    cr_assert_eq(count[3], 0);
    cr_assert(fabs((double)count[2] / draws - 0.15 / 0.95) < 0.017, "%d", count[2]);
    /* top_p reached at the first token: only token 0. (Not exactly at 0.5:
     * whether 0.5 / (0.5 + 0.3 + 0.15 + 0.05) reaches 0.5 depends on the
     * last bit of exp, which no two exp implementations agree on.) */
    p = plain(1.0f, 0.49f, 0, 96);
    ms_sampler_reset(s, &p);
    histogram(s, l, 4, 2000, count);
    cr_assert(count[0] >= 1990, "%d", count[0]);
    ms_sampler_free(s);
}

/* On the full World-size vocabulary, every drawn token lies in the nucleus
 * computed here by brute force (full sort), whichever candidate pass the
 * sampler needed. */
static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

Test(sampler, large_vocab_nucleus_matches_full_sort)
{
    enum { V = 65536 };
    float *l = malloc(V * sizeof *l), *x = malloc(V * sizeof *x);
    float *prob = malloc(V * sizeof *prob), *sorted = malloc(V * sizeof *sorted);
    /* peaked .. nearly flat; at 0.05 tens of thousands of tokens share one
     * histogram bucket, so the sampler narrows that bucket (refine_cut) */
    const float scales[4] = { 12.0f, 4.0f, 0.5f, 0.05f };
    const float tops[3] = { 0.3f, 0.6f, 0.95f };
    ms_sampler *s = ms_sampler_new(V, NULL);
    for (int a = 0; a < 4; a++) {
        fill_logits(l, V, 100 + (uint64_t)a, scales[a]);
        float m = -INFINITY;
        for (int i = 0; i < V; i++)
            m = fmaxf(m, l[i]);
        double z = 0;
        for (int i = 0; i < V; i++)
            z += exp((double)l[i] - m);
        for (int i = 0; i < V; i++)
            sorted[i] = prob[i] = (float)(exp((double)l[i] - m) / z);
        qsort(sorted, V, sizeof *sorted, cmp_desc);
        for (int b = 0; b < 3; b++) {
            double cum = 0;
            float cutoff = sorted[V - 1];
            int n_nucleus = V;
            for (int i = 0; i < V; i++) {
                cum += sorted[i];
                if (cum >= tops[b]) {
                    cutoff = sorted[i];
                    n_nucleus = i + 1;
                    break;
                }
            }
            const float median = sorted[n_nucleus / 2];
            int lower_half = 0;
            ms_sampler_params p = plain(1.0f, tops[b], 0, (uint64_t)(a * 3 + b));
            ms_sampler_reset(s, &p);
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            const int draws = 60;
            for (int i = 0; i < draws; i++) {
                int32_t t = draw(s, l, V, x);
                /* float rounding may differ by an ulp at the very cutoff */
                cr_assert(prob[t] >= cutoff * 0.9999f, "scale %g top_p %g: token %d p=%g < %g",
                          scales[a], tops[b], t, prob[t], cutoff);
                lower_half += prob[t] <= median;
            }
            /* Nearly flat: half the draws fall in the nucleus's lower half
             * (about 30 of 60), so a cut placed too high shows. */
            if (scales[a] < 0.1f)
                cr_assert_geq(lower_half, 12, "scale %g top_p %g: %d of %d draws in the lower half",
                              scales[a], tops[b], lower_half, draws);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            cr_log_info("V=65536 scale %g top_p %g: %.1f us/draw", scales[a], tops[b],
                        ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 /
                            draws);
        }
    }
    /* top_k alone and with a nucleus: never outside the k best (nor the
     * nucleus), and with a flat distribution every rank can come out. */
    fill_logits(l, V, 200, 0.5f);
    for (int i = 0; i < V; i++)
        sorted[i] = l[i];
    qsort(sorted, V, sizeof *sorted, cmp_desc);
    const int ks[3] = { 5, 1000, 30000 };
    for (int a = 0; a < 3; a++) {
        for (int b = 0; b < 2; b++) {
            float top_p = b ? 0.2f : 1.0f; /* 0.2 of a flat V: ~13000 tokens */
            ms_sampler_params p = plain(0.7f, top_p, ks[a], (uint64_t)(50 + a * 2 + b));
            ms_sampler_reset(s, &p);
            float kth = sorted[ks[a] - 1];
            int32_t deepest = 0;
            for (int i = 0; i < 150; i++) {
                int32_t t = draw(s, l, V, x);
                cr_assert(l[t] >= kth, "top_k %d top_p %g: token %d below the k-th",
                          ks[a], top_p, t);
                int32_t lo = 0, hi = V; /* rank = #{sorted > l[t]}, sorted descending */
                while (lo < hi) {
                    int32_t mid = (lo + hi) / 2;
                    if (sorted[mid] > l[t])
                        lo = mid + 1;
                    else
                        hi = mid;
                }
                int32_t rank = lo;
                deepest = rank > deepest ? rank : deepest;
            }
            int32_t limit = ks[a] < 13000 || !b ? ks[a] : 13300;
            cr_assert_lt(deepest, limit, "rank %d", deepest);
            cr_assert_gt(deepest, limit / 2, "top_k %d top_p %g: deepest rank drawn %d", ks[a],
                         top_p, deepest);
        }
    }

    /* All equal: the cutoff ties with every token, so all stay eligible. */
    for (int i = 0; i < V; i++)
        l[i] = 1.0f;
    ms_sampler_params p = plain(1.0f, 0.3f, 0, 1);
    ms_sampler_reset(s, &p);
    int hi = 0;
    for (int i = 0; i < 300; i++)
        hi += draw(s, l, V, x) >= V / 2;
    cr_assert(hi > 100 && hi < 200, "%d of 300 in the upper half", hi);
    ms_sampler_free(s);
    free(l);
    free(x);
    free(prob);
    free(sorted);
}

Test(sampler, penalties_and_decay_by_hand)
{
    const float l[3] = { 0.0f, 1.0f, 0.9f };
    float x[3];
    ms_sampler_params p = plain(0, 0, 0, 0); /* greedy */
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.5f;
    p.penalty_decay = 0.5f;
    ms_sampler *s = ms_sampler_new(3, &p);
    cr_assert_eq(draw(s, l, 3, x), 1); /* no penalties yet */
    cr_assert_float_eq(x[1], 1.0f, 1e-6);
    /* occ[1] = 1: logit 1 -> 1 - (0.5 + 1*0.5) = 0 */
    cr_assert_eq(draw(s, l, 3, x), 2);
    cr_assert_float_eq(x[1], 0.0f, 1e-6);
    cr_assert_float_eq(x[2], 0.9f, 1e-6);
    /* occ[1] = 0.5, occ[2] = 1: 1 - (0.5 + 0.25) = 0.25; 0.9 - 1 = -0.1 */
    cr_assert_eq(draw(s, l, 3, x), 1);
    cr_assert_float_eq(x[1], 0.25f, 1e-6);
    cr_assert_float_eq(x[2], -0.1f, 1e-6);
    cr_assert_float_eq(x[0], 0.0f, 1e-6);
    /* occ[1] = 0.25 + 1 = 1.25, occ[2] = 0.5: 1 - 1.125 = -0.125; 0.9 - 0.75 = 0.15 */
    cr_assert_eq(draw(s, l, 3, x), 2);
    cr_assert_float_eq(x[1], -0.125f, 1e-6);
    cr_assert_float_eq(x[2], 0.15f, 1e-6);

    /* Without decay the same history ends in a tie 0 = 0, lowest id wins. */
    p.penalty_decay = 1.0f;
    ms_sampler_reset(s, &p);
    draw(s, l, 3, x);
    draw(s, l, 3, x);
    cr_assert_eq(draw(s, l, 3, x), 0); /* l1: 1 - 1 = 0, l2: 0.9 - 1 = -0.1 */
    cr_assert_float_eq(x[1], 0.0f, 1e-6);

    /* reset forgets the penalties */
    ms_sampler_reset(s, &p);
    cr_assert_eq(draw(s, l, 3, x), 1);
    cr_assert_float_eq(x[1], 1.0f, 1e-6);
    ms_sampler_free(s);
}

Test(sampler, exempt_tokens_get_presence_only)
{
    const float l[3] = { 0.0f, 1.0f, 0.9f };
    float x[3];
    ms_sampler_params p = plain(0, 0, 0, 0);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.5f;
    p.penalty_decay = 1.0f;
    ms_sampler *s = ms_sampler_new(3, &p);
    ms_sampler_set_exempt(s, 1);
    ms_sampler_set_exempt(s, 99); /* out of range: ignored */
    cr_assert_eq(draw(s, l, 3, x), 1);
    /* occurrence stays 0, as in pip (the token enters the table with 0) */
    cr_assert_eq(draw(s, l, 3, x), 2);
    cr_assert_float_eq(x[1], 0.5f, 1e-6);
    /* still 0 after being drawn again, and 2 now carries 0.5 + 0.5 */
    float l2[3] = { 0.0f, 2.0f, 0.9f };
    cr_assert_eq(draw(s, l2, 3, x), 1);
    cr_assert_float_eq(x[1], 1.5f, 1e-6);
    cr_assert_float_eq(x[2], -0.1f, 1e-6);
    cr_assert_eq(draw(s, l2, 3, x), 1);
    cr_assert_float_eq(x[1], 1.5f, 1e-6, "exempt count never grows");
    ms_sampler_free(s);
}

Test(sampler, bias_and_banned_tokens)
{
    const float l[8] = { 5.0f, 4.0f, 1.0f, 0.5f, 0.0f, -1.0f, 3.0f, 2.0f };
    float x[8];
    ms_sampler_params p = plain(0, 0, 0, 0);
    ms_sampler *s = ms_sampler_new(8, &p);
    ms_sampler_set_bias(s, 0, -INFINITY);
    ms_sampler_set_bias(s, 99, 1.0f); /* out of range: ignored */
    ms_sampler_set_bias(s, -1, 1.0f);
    cr_assert_eq(draw(s, l, 8, x), 1);
    ms_sampler_set_bias(s, 5, 10.0f);
    cr_assert_eq(draw(s, l, 8, x), 5);
    ms_sampler_set_bias(s, 5, 0.0f); /* replaces, does not add */
    cr_assert_eq(draw(s, l, 8, x), 1);

    /* Banned in every sampling mode, including a huge temperature that
     * makes every other token nearly equally likely. */
    const float temps[3] = { 1.0f, 3.0f, 1e9f };
    const float tops[3] = { 1.0f, 0.99f, 0.5f };
    for (int a = 0; a < 3; a++) {
        for (int b = 0; b < 3; b++) {
            p = plain(temps[a], tops[b], b == 2 ? 4 : 0, (uint64_t)(a * 3 + b));
            ms_sampler_reset(s, &p); /* bias survives reset */
            for (int i = 0; i < 2000; i++)
                cr_assert_neq(draw(s, l, 8, x), 0, "T=%g top_p=%g", temps[a], tops[b]);
        }
    }
    ms_sampler_free(s);
}

/* A vocabulary of 65,536 whose ids from 257 up are banned (the byte-level
 * tokenizer's case: set as biases, or as -inf logits) draws what a sampler
 * over the 257 open ids alone draws, in every mode: the banned tokens' bias
 * pass, their zero numerators and the histogram's zero blocks change no
 * number of the draw. */
Test(sampler, banned_majority_draws_as_the_open_vocabulary)
{
    enum { OPEN = 257, N = 65536, DRAWS = 400 };
    float *l = malloc(N * sizeof *l), *x = malloc(N * sizeof *x), *dead = malloc(N * sizeof *dead),
          *lo = malloc(OPEN * sizeof *lo);
    cr_assert(l && x && dead && lo);
    fill_logits(l, N, 11, 3.0f);
    memcpy(dead, l, N * sizeof *l);
    for (int32_t i = OPEN; i < N; i++)
        dead[i] = -INFINITY;
    const struct { float t, p; int k, penalties; } modes[] = {
        {1.0f, 0.3f, 0, 1}, {1.0f, 1.0f, 0, 0}, {0.7f, 0.9f, 0, 1}, {1.0f, 1.0f, 40, 0}, {1.5f, 0.5f, 5, 1},
        {1.0f, 1.0f, 300, 0}};
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        ms_sampler_params p = plain(modes[m].t, modes[m].p, modes[m].k, 1000 + m);
        if (modes[m].penalties) {
            const ms_sampler_params d = ms_sampler_defaults();
            p.presence_penalty = d.presence_penalty;
            p.frequency_penalty = d.frequency_penalty;
            p.penalty_decay = d.penalty_decay;
        }
        ms_sampler *open = ms_sampler_new(OPEN, &p), *biased = ms_sampler_new(N, &p),
                   *inf = ms_sampler_new(N, &p);
        for (int32_t i = OPEN; i < N; i++)
            ms_sampler_set_bias(biased, i, -INFINITY);
        for (int d = 0; d < DRAWS; d++) {
            const float *src = l + (size_t)(d % 64) * 512; /* a different slice each draw */
            memcpy(lo, src, OPEN * sizeof *lo);
            const int32_t want = ms_sampler_sample(open, lo);
            memcpy(x, src, OPEN * sizeof *x);
            memcpy(x + OPEN, l + OPEN, (N - OPEN) * sizeof *x); /* finite: only the biases ban them */
            cr_assert_eq(ms_sampler_sample(biased, x), want, "mode %zu draw %d (biases)", m, d);
            memcpy(x, src, OPEN * sizeof *x);
            memcpy(x + OPEN, dead + OPEN, (N - OPEN) * sizeof *x);
            cr_assert_eq(ms_sampler_sample(inf, x), want, "mode %zu draw %d (-inf logits)", m, d);
        }
        ms_sampler_free(open);
        ms_sampler_free(biased);
        ms_sampler_free(inf);
    }
    free(l);
    free(x);
    free(dead);
    free(lo);
}
