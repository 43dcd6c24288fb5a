/*
 * bench.c - `metastate bench`: speed of one model in one weight format
 * on this machine, as ratios to limits measured in the same run (machines
 * are shared and noisy, so absolute numbers alone say little).
 *
 *  - the machine's limits (bench_limits.c): memory read bandwidth, sgemm
 *    peak and FMA peak, each measured before and after the timed parts, the
 *    better of the two;
 *  - prefill: tokens/s for --prompt tokens, and prefill efficiency =
 *    2 x (matrix parameters per token) x tokens/s / sgemm peak, and the
 *    same over the FMA peak;
 *  - generation: tokens/s for --gen tokens one at a time, and generation
 *    efficiency = bytes per token x tokens/s / bandwidth, where a token
 *    moves every matrix once and its state twice (read, then written); the
 *    weights-only ratio is printed too;
 *  - batch table: the step time of ms_step_batch for B = 1, 2, 4, 8, 16
 *    sequences (every weight read once per step whatever B is) and the
 *    aggregate tokens/s;
 *  - with --accuracy: logits of this format against fp32 weights over the
 *    prompt (max and mean |diff|, top-1 agreement);
 *  - resident memory after load against the weights as held.
 * The last line is `RESULT key=value ...` for tools/bench.sh.
 */
#include "cli.h"
#include "engine.h"

#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Multiply-adds per prompt token in the matrix products (the head is only
 * applied to the last token). */
static double matrix_params(const ms_config *c)
{
    double C = c->n_embd, p = 0;
    for (int l = 0; l < c->n_layer; l++)
        p += 4 * C * C + 2 * C * c->dim_ffn + 2 * C * (c->d_decay + c->d_aaa + c->d_gate) +
             (l ? 2 * C * c->d_mv : 0);
    return p;
}

/* Logits over the prompt in this format against fp32 weights. */
static int accuracy(const char *path, const ms_model *m, const int32_t *toks, long n,
                    double *max_d, double *mean_d, double *top1)
{
    ms_error err;
    ms_model *ref = NULL;
    ms_load_opts o = {.weights = MS_WEIGHTS_F32};
    const size_t V = (size_t)ms_model_config(m)->vocab_size;
    float *la = malloc((size_t)n * V * sizeof(float)), *lb = malloc((size_t)n * V * sizeof(float));
    ms_ctx *ca = ms_ctx_new(m, 0), *cb = NULL;
    ms_state *sa = ms_state_new(m), *sb = NULL;
    int rc = -1;
    if (!la || !lb || !ca || !sa || ms_model_load(path, &o, &ref, &err))
        goto out;
    cb = ms_ctx_new(ref, 0);
    sb = ms_state_new(ref);
    if (!cb || !sb || ms_forward(ca, sa, toks, (size_t)n, la, 1, &err) ||
        ms_forward(cb, sb, toks, (size_t)n, lb, 1, &err))
        goto out;
    double sum = 0, mx = 0;
    long agree = 0;
    for (long t = 0; t < n; t++) {
        const float *a = la + (size_t)t * V, *b = lb + (size_t)t * V;
        size_t ia = 0, ib = 0;
        for (size_t v = 0; v < V; v++) {
            double d = fabs((double)a[v] - b[v]);
            sum += d;
            mx = d > mx ? d : mx;
            ia = a[v] > a[ia] ? v : ia;
            ib = b[v] > b[ib] ? v : ib;
        }
        agree += ia == ib;
    }
    *max_d = mx;
    *mean_d = sum / ((double)n * V);
    *top1 = (double)agree / n;
    rc = 0;
out:
    free(la);
    free(lb);
    ms_ctx_free(ca);
    ms_ctx_free(cb);
    ms_state_free(sa);
    ms_state_free(sb);
    ms_model_free(ref);
    return rc;
}

enum { N_BATCHES = 5, BATCH_MAX = 16, BATCH_REPS = 5 };
static const int batches[N_BATCHES] = {1, 2, 4, 8, 16};

/* Seconds per ms_step_batch of 1, 2, 4, 8 and 16 sequences into step[]:
 * the best of BATCH_REPS runs of n steps each. The sizes take turns within
 * every round, so a neighbour's burst on this shared machine slows one
 * round of all of them rather than every run of one size, and the ratios
 * between sizes stay comparable. Each sequence first gets a short prompt
 * of its own; -1 on failure (err says why). */
static int time_batches(const ms_model *m, int n, double step[N_BATCHES], ms_error *err)
{
    const int V = ms_model_config(m)->vocab_size;
    ms_ctx *ctx = ms_ctx_new(m, BATCH_MAX);
    ms_state *st[BATCH_MAX] = {0};
    float *lg = malloc((size_t)BATCH_MAX * (size_t)V * sizeof *lg);
    float *lp[BATCH_MAX];
    int32_t tok[BATCH_MAX];
    int rc = -1;
    if (!ctx || !lg) {
        snprintf(err->msg, sizeof err->msg, "out of memory for the batch runs");
        goto out;
    }
    for (int b = 0; b < BATCH_MAX; b++) {
        int32_t p[4] = {(int32_t)(b * 7 + 1) % V, (int32_t)(b * 13 + 2) % V, 3 % V, 4 % V};
        if (!(st[b] = ms_state_new(m))) {
            snprintf(err->msg, sizeof err->msg, "out of memory for the batch runs' states");
            goto out;
        }
        if (ms_forward(ctx, st[b], p, 4, lg, 0, err))
            goto out;
        tok[b] = p[3];
        lp[b] = lg + (size_t)b * V;
    }
    for (int i = 0; i < N_BATCHES; i++)
        step[i] = 1e30;
    for (int rep = 0; rep < BATCH_REPS; rep++)
        for (int i = 0; i < N_BATCHES; i++) {
            const int B = batches[i];
            double t0 = now_s();
            for (int s = 0; s < n; s++) {
                if (ms_step_batch(ctx, st, tok, (size_t)B, lp, err))
                    goto out;
                for (int b = 0; b < B; b++) /* an arbitrary id: speed does not depend on it */
                    tok[b] = (tok[b] + 17 * b + 1) % V;
            }
            const double t = (now_s() - t0) / n;
            step[i] = t < step[i] ? t : step[i];
        }
    rc = 0;
out:
    for (int b = 0; b < BATCH_MAX; b++)
        ms_state_free(st[b]);
    ms_ctx_free(ctx);
    free(lg);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: metastate bench --model PATH [--weights auto|f32|bf16|int8|q4]\n"
               "                       [--compute f32|bf16] [--threads N] [--prompt N] [--gen N]\n"
               "                       [--batch-steps N] [--accuracy] [--label TEXT]\n"
               "Measures memory bandwidth, sgemm and FMA peaks, prefill and generation speed\n"
               "of one model, and the step time of batches of 1, 2, 4, 8 and 16 sequences\n"
               "(--batch-steps 0 skips them); --accuracy also compares its logits with\n"
               "fp32 weights.\n");
}

int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"gen", required_argument, 0, 'g'},     {"label", required_argument, 0, 'l'},
        {"weights", required_argument, 0, 'w'}, {"accuracy", no_argument, 0, 'a'},
        {"compute", required_argument, 0, 'c'}, {"threads", required_argument, 0, 't'},
        {"batch-steps", required_argument, 0, 'b'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    const char *model_path = NULL, *label = "model", *weights = "auto", *compute = "f32";
    long n_prompt = 512, n_gen = 128, batch_steps = 32;
    int want_acc = 0, threads = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:g:l:w:ac:t:b:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'p': n_prompt = strtol(optarg, NULL, 10); break;
        case 'g': n_gen = strtol(optarg, NULL, 10); break;
        case 'l': label = optarg; break;
        case 'w': weights = optarg; break;
        case 'a': want_acc = 1; break;
        case 'c': compute = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'b': batch_steps = strtol(optarg, NULL, 10); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int wf = ms_weights_parse(weights), cf = ms_compute_parse(compute);
    if (!model_path || n_prompt < 1 || n_gen < 1 || wf < 0 || cf < 0 || threads < 0 ||
        batch_steps < 0 || optind != argc) {
        usage(stderr);
        return 2;
    }
    ms_error err = {0};
    ms_model *m = NULL;
    ms_load_opts lo = {.n_threads = threads, .weights = (ms_weights)wf, .compute = (ms_compute)cf};
    long rss0 = rss_kb();
    double t_load = now_s();
    if (ms_model_load(model_path, &lo, &m, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    t_load = now_s() - t_load;
    const double rss_mb = (rss_kb() - rss0) / 1024.0;
    struct stat file;
    const double file_gb = stat(model_path, &file) ? 0 : (double)file.st_size / 1e9;
    const ms_config *cfg = ms_model_config(m);
    ms_state *s = ms_state_new(m);
    ms_ctx *ctx = ms_ctx_new(m, 256);
    float *logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    int32_t *toks = malloc((size_t)n_prompt * sizeof *toks);
    /* Greedy, through the engine's sampler as the server draws: the scalar
     * argmax this loop had took 44 us a token, 1-2.5% of a q4 step. */
    ms_sampler_params greedy = ms_sampler_defaults();
    greedy.temperature = greedy.top_p = greedy.presence_penalty = greedy.frequency_penalty = 0;
    ms_sampler *smp = ms_sampler_new(cfg->vocab_size, &greedy);
    int rc = 1;
    if (!s || !ctx || !logits || !toks || !smp) {
        fprintf(stderr, "bench: out of memory\n");
        goto done;
    }
    uint64_t seed = 12345;
    for (long i = 0; i < n_prompt; i++) { /* arbitrary ids; speed does not depend on them */
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((seed >> 33) % (uint64_t)cfg->vocab_size);
    }
    /* Bandwidth before and after the timed parts (the better one is the
     * bound): a neighbour's burst during one probe no longer halves it. */
    const long ncpu = threads > 0 ? threads : sysconf(_SC_NPROCESSORS_ONLN);
    const int n_cores = ncpu > 0 ? (int)ncpu : 1;
    uint64_t sink = 0;
    /* The limits before and after the timed parts, the better of each: on a
     * shared machine a busy minute after the timed parts read the peaks at
     * 50-70% of the same run's other rows, and the prefill over them at
     * 136-148% of the sgemm peak. */
    const double bw_before = bench_bandwidth(n_cores, &sink);
    const double peak_before = bench_sgemm_peak(n_cores), fma_before = bench_fma_peak(n_cores);
    /* Warm up once so first-touch page faults are not measured. */
    if (ms_forward(ctx, s, toks, 8, logits, 0, &err))
        goto fail;
    double t_prefill = 1e30, t_gen = 1e30;
    /* Best of five, as the batch table's steps and the bandwidth probe: the
     * machine is shared, and with two runs a neighbour's burst in both
     * left generation at 65% of the bandwidth where the same build's
     * single steps read 90%. */
    for (int rep = 0; rep < 5; rep++) {
        ms_state_reset(s);
        double t0 = now_s();
        if (ms_forward(ctx, s, toks, (size_t)n_prompt, logits, 0, &err))
            goto fail;
        double tp = now_s() - t0;
        t_prefill = tp < t_prefill ? tp : t_prefill;
        int32_t tok = toks[n_prompt - 1];
        t0 = now_s();
        for (long i = 0; i < n_gen; i++) {
            if (ms_step(ctx, s, tok, logits, &err))
                goto fail;
            tok = ms_sampler_sample(smp, logits);
        }
        double tg = now_s() - t0;
        t_gen = tg < t_gen ? tg : t_gen;
    }

    double step[N_BATCHES] = {0};
    if (batch_steps > 0 && time_batches(m, (int)batch_steps, step, &err))
        goto fail;

    const double bw = fmax(bench_bandwidth(n_cores, &sink), bw_before);
    const double peak = fmax(bench_sgemm_peak(n_cores), peak_before),
                 fma_peak = fmax(bench_fma_peak(n_cores), fma_before);
    const double weights_mb = ms_model_weight_bytes(m) / 1048576.0;
    const double pp = n_prompt / t_prefill, tg = n_gen / t_gen;
    /* A token reads every matrix once and reads and writes its sequence's
     * state (at 0.4B, 6 MB each way: 3-6% of a quantized token's bytes). */
    const double w_bytes = (double)ms_model_bytes_per_token(m), s_bytes = 2.0 * ms_state_bytes(m);
    const double gen_eff = (w_bytes + s_bytes) * tg / bw, gen_eff_w = w_bytes * tg / bw;
    const double pre_eff = 2 * matrix_params(cfg) * pp / peak;
    const double pre_eff_fma = fma_peak > 0 ? 2 * matrix_params(cfg) * pp / fma_peak : 0;
    double acc_max = 0, acc_mean = 0, acc_top1 = 1;
    if (want_acc && accuracy(model_path, m, toks, n_prompt, &acc_max, &acc_mean, &acc_top1)) {
        fprintf(stderr, "bench: accuracy run failed\n");
        goto done;
    }
    printf("%s: L=%d C=%d V=%d, %s weights, %s compute (kernels %s): %.0f MB held, %.0f MB read "
           "per token, load %.2f s (%.2f GB/s of file), RSS after load %.0f MB, %d threads\n",
           label, cfg->n_layer, cfg->n_embd, cfg->vocab_size, weights, compute, ms_kernel_isa(),
           weights_mb, w_bytes / 1048576.0, t_load, file_gb / t_load, rss_mb, n_cores);
    printf("  prefill %ld tokens: %.1f tok/s (%.0f%% of sgemm peak %.0f GFLOP/s with OpenBLAS's "
           "%s kernels, %.0f%% of FMA peak %.0f GFLOP/s)\n",
           n_prompt, pp, 100 * pre_eff, peak / 1e9, bench_blas_core(), 100 * pre_eff_fma,
           fma_peak / 1e9);
    printf("  generation %ld tokens: %.1f tok/s (%.0f%% of memory bandwidth %.1f GB/s, for "
           "%.1f MB of weights and %.1f MB of state read and written per token; weights alone "
           "%.0f%%)\n",
           n_gen, tg, 100 * gen_eff, bw / 1e9, w_bytes / 1048576.0, s_bytes / 1048576.0,
           100 * gen_eff_w);
    if (batch_steps > 0) {
        printf("  batch step time (ms) / aggregate tok/s:");
        for (int i = 0; i < N_BATCHES; i++)
            printf("  B=%d %.2f / %.0f", batches[i], step[i] * 1e3, batches[i] / step[i]);
        printf("  (B=8 step = %.2fx B=1)\n", step[3] / step[0]);
    }
    if (want_acc)
        printf("  vs fp32 weights over %ld tokens: max |dlogit| %.3g, mean %.3g, top-1 %.1f%%\n",
               n_prompt, acc_max, acc_mean, 100 * acc_top1);
    printf("RESULT label=%s weights=%s compute=%s threads=%d prefill_tps=%.1f prefill_eff=%.3f "
           "sgemm_gflops=%.0f prefill_eff_fma=%.3f fma_gflops=%.0f gen_tps=%.1f gen_eff=%.3f "
           "gen_eff_weights=%.3f bw_gbs=%.1f "
           "weights_mb=%.0f read_mb=%.1f state_rw_mb=%.1f rss_mb=%.0f acc=%d acc_max=%.3g "
           "acc_mean=%.3g acc_top1=%.4f "
           "step1_ms=%.3f step2_ms=%.3f step4_ms=%.3f step8_ms=%.3f step16_ms=%.3f sink=%llu\n",
           label, weights, compute, threads, pp, pre_eff, peak / 1e9, pre_eff_fma, fma_peak / 1e9,
           tg, gen_eff, gen_eff_w, bw / 1e9, weights_mb, w_bytes / 1048576.0,
           s_bytes / 1048576.0, rss_mb, want_acc,
           acc_max, acc_mean, acc_top1, step[0] * 1e3, step[1] * 1e3, step[2] * 1e3, step[3] * 1e3,
           step[4] * 1e3, (unsigned long long)(sink & 1));
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "bench: %s\n", err.msg);
done:
    ms_sampler_free(smp);
    free(toks);
    free(logits);
    ms_ctx_free(ctx);
    ms_state_free(s);
    ms_model_free(m);
    return rc;
}
