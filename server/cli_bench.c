/*
 * cli_bench.c - `metastate bench`: speed of one model on this machine, as
 * ratios to limits measured in the same run (the machines are shared and
 * noisy, so absolute numbers alone say little).
 *
 *  - memory read bandwidth: every thread sums its share of a buffer far
 *    larger than the caches; best of several passes;
 *  - prompt processing: tokens/s for a prompt of --prompt tokens (prefill);
 *  - generation: tokens/s for --gen tokens, one at a time;
 *  - generation efficiency = weight bytes read per token * tokens/s / bandwidth
 *    (1.0 = every byte of weights streamed at the measured bandwidth);
 *  - peak resident memory against the weights as held.
 * Output: one line of `key=value` pairs (machine-readable) after a readable
 * summary, so tools/bench.sh can build the README table.
 */
#include "cli.h"
#include "engine.h"

#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} bw_job;

static void *bw_worker(void *arg)
{
    bw_job *j = arg;
    uint64_t s[8] = {0};
    for (size_t i = 0; i + 8 <= j->n; i += 8)
        for (int k = 0; k < 8; k++)
            s[k] += j->p[i + k];
    j->sum = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    return NULL;
}

/* Best-of-5 read bandwidth in bytes/s with n_threads threads. */
static double measure_bandwidth(int n_threads, uint64_t *sink)
{
    const size_t bytes = (size_t)1 << 30, n = bytes / 8;
    uint64_t *buf = malloc(bytes);
    if (!buf)
        return 0;
    for (size_t i = 0; i < n; i++)
        buf[i] = i;
    double best = 0;
    pthread_t th[64];
    bw_job jobs[64];
    if (n_threads > 64)
        n_threads = 64;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        for (int t = 0; t < n_threads; t++) {
            jobs[t] = (bw_job){buf + n / n_threads * t, n / n_threads, 0};
            pthread_create(&th[t], NULL, bw_worker, &jobs[t]);
        }
        for (int t = 0; t < n_threads; t++) {
            pthread_join(th[t], NULL);
            *sink += jobs[t].sum;
        }
        double bw = bytes / (now_s() - t0);
        if (bw > best)
            best = bw;
    }
    free(buf);
    return best;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: metastate bench --model PATH [--prompt N] [--gen N] [--label TEXT]\n"
               "Measures memory bandwidth, prefill and generation speed of one model.\n");
}

int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"gen", required_argument, 0, 'g'},   {"label", required_argument, 0, 'l'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *model_path = NULL, *label = "model";
    long n_prompt = 512, n_gen = 128;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:g:l:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'p': n_prompt = strtol(optarg, NULL, 10); break;
        case 'g': n_gen = strtol(optarg, NULL, 10); break;
        case 'l': label = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model_path || n_prompt < 1 || n_gen < 1 || optind != argc) {
        usage(stderr);
        return 2;
    }
    ms_error err = {0};
    ms_model *m = NULL;
    double t_load = now_s();
    if (ms_model_load(model_path, NULL, &m, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    t_load = now_s() - t_load;
    const ms_config *cfg = ms_model_config(m);
    ms_state *s = ms_state_new(m);
    ms_ctx *ctx = ms_ctx_new(m, 0);
    float *logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    int32_t *toks = malloc((size_t)n_prompt * sizeof *toks);
    int rc = 1;
    if (!s || !ctx || !logits || !toks) {
        fprintf(stderr, "bench: out of memory\n");
        goto done;
    }
    uint64_t seed = 12345;
    for (long i = 0; i < n_prompt; i++) { /* arbitrary ids; speed does not depend on them */
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((seed >> 33) % (uint64_t)cfg->vocab_size);
    }
    /* Warm up once so first-touch page faults are not measured. */
    if (ms_forward(ctx, s, toks, 8, logits, 0, &err))
        goto fail;
    ms_state_reset(s);
    double t0 = now_s();
    if (ms_forward(ctx, s, toks, (size_t)n_prompt, logits, 0, &err))
        goto fail;
    double t_prefill = now_s() - t0;
    int32_t tok = toks[n_prompt - 1];
    t0 = now_s();
    for (long i = 0; i < n_gen; i++) {
        if (ms_step(ctx, s, tok, logits, &err))
            goto fail;
        int32_t best = 0; /* greedy, cheap: the sampler is not what is measured */
        for (int32_t v = 1; v < cfg->vocab_size; v++)
            if (logits[v] > logits[best])
                best = v;
        tok = best;
    }
    double t_gen = now_s() - t0;

    struct rusage ru; /* before the bandwidth buffer inflates the high-water mark */
    getrusage(RUSAGE_SELF, &ru);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t sink = 0;
    double bw = measure_bandwidth(ncpu > 0 ? (int)ncpu : 1, &sink);
    const double weights_mb = ms_model_weight_bytes(m) / 1048576.0;
    const double rss_mb = ru.ru_maxrss / 1024.0;
    const double pp = n_prompt / t_prefill, tg = n_gen / t_gen;
    const double eff = ms_model_bytes_per_token(m) * tg / bw;
    printf("%s: L=%d C=%d V=%d, weights %.0f MB held (fp32), %.0f MB read per token, load %.2f s\n",
           label, cfg->n_layer, cfg->n_embd, cfg->vocab_size, weights_mb,
           ms_model_bytes_per_token(m) / 1048576.0, t_load);
    printf("  prefill %ld tokens: %.1f tok/s | generation %ld tokens: %.1f tok/s\n", n_prompt,
           pp, n_gen, tg);
    printf("  memory bandwidth %.1f GB/s | generation efficiency %.0f%% | peak RSS %.0f MB\n",
           bw / 1e9, 100 * eff, rss_mb);
    printf("RESULT label=%s prefill_tps=%.1f gen_tps=%.1f bw_gbs=%.1f gen_eff=%.3f "
           "weights_mb=%.0f rss_mb=%.0f sink=%llu\n",
           label, pp, tg, bw / 1e9, eff, weights_mb, rss_mb, (unsigned long long)(sink & 1));
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "bench: %s\n", err.msg);
done:
    free(toks);
    free(logits);
    ms_ctx_free(ctx);
    ms_state_free(s);
    ms_model_free(m);
    return rc;
}
