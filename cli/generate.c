/*
 * generate.c - `metastate generate`: prompt in, text streamed to stdout
 * as it is sampled (whole UTF-8 characters only), statistics to stderr.
 *
 * It loads through the server's runtime and feeds the prompt as the
 * scheduler does (chunks of RT_PREFILL_CHUNK, the last token on its own),
 * so with the same seed and sampling parameters it writes the same text as
 * a /v1/completions request with that prompt.
 */
#include "chat_format.h"
#include "cli.h"
#include "engine.h"
#include "runtime.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: metastate generate --model PATH [--vocab PATH] --prompt TEXT [-n N]\n"
            "         [--temperature T] [--top-p P] [--top-k K] [--presence-penalty X]\n"
            "         [--frequency-penalty X] [--penalty-decay D] [--seed S]\n"
            "         [--weights auto|f32|bf16|int8|q4] [--compute f32|bf16]\n"
            "Streams up to N (default 200) generated tokens to stdout; stops early at\n"
            "end-of-text. Without --vocab, a byte-level vocabulary is used (ids 1..256).\n"
            "Sampling defaults: temperature 1.0, top-p 0.3, top-k 0, penalties 0.5/0.5,\n"
            "decay 0.996; --temperature 0 is greedy. --weights picks the in-memory\n"
            "format (auto: bf16 files stay bf16, others fp32); --compute bf16 multiplies\n"
            "bf16 weights with bf16 dot products (faster, not exact).\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cmd_generate(int argc, char **argv)
{
    enum { O_T = 256, O_P, O_K, O_PRES, O_FREQ, O_DECAY, O_SEED, O_W, O_C };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"vocab", required_argument, 0, 'v'},
        {"prompt", required_argument, 0, 'p'}, {"tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, O_T}, {"top-p", required_argument, 0, O_P},
        {"top-k", required_argument, 0, O_K}, {"presence-penalty", required_argument, 0, O_PRES},
        {"frequency-penalty", required_argument, 0, O_FREQ},
        {"penalty-decay", required_argument, 0, O_DECAY}, {"seed", required_argument, 0, O_SEED},
        {"weights", required_argument, 0, O_W}, {"compute", required_argument, 0, O_C},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *model_path = NULL, *vocab = NULL, *prompt = NULL;
    long n_gen = 200;
    int weights = MS_WEIGHTS_AUTO, compute = MS_COMPUTE_F32;
    ms_sampler_params sp = ms_sampler_defaults();
    sp.seed = (uint64_t)time(NULL);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:v:p:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'v': vocab = optarg; break;
        case 'p': prompt = optarg; break;
        case 'n': n_gen = strtol(optarg, NULL, 10); break;
        case O_T: sp.temperature = strtof(optarg, NULL); break;
        case O_P: sp.top_p = strtof(optarg, NULL); break;
        case O_K: sp.top_k = (int)strtol(optarg, NULL, 10); break;
        case O_PRES: sp.presence_penalty = strtof(optarg, NULL); break;
        case O_FREQ: sp.frequency_penalty = strtof(optarg, NULL); break;
        case O_DECAY: sp.penalty_decay = strtof(optarg, NULL); break;
        case O_SEED: sp.seed = strtoull(optarg, NULL, 10); break;
        case O_W: weights = ms_weights_parse(optarg); break;
        case O_C: compute = ms_compute_parse(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model_path || !prompt || n_gen < 0 || weights < 0 || compute < 0 || optind != argc) {
        usage(stderr);
        return 2;
    }

    int rc = 1;
    ms_error err = {0};
    srv_runtime rt = {0};
    ms_state *s = NULL;
    ms_ctx *ctx = NULL;
    ms_sampler *smp = NULL;
    float *logits = NULL;
    int32_t *ids = NULL;
    rt_opts ro = {.model_path = model_path, .vocab_path = vocab, .weights = weights,
                  .compute = compute};
    srv_error se;
    if (rt_load(&rt, &ro, &se) != SRV_OK) {
        snprintf(err.msg, sizeof err.msg, "%s", se.msg);
        goto done;
    }
    const ms_tokenizer *tok = rt.tok;
    int32_t V = rt.V;
    size_t plen = strlen(prompt);
    size_t n_ids = ms_tokenize(tok, prompt, plen, NULL, 0);
    s = ms_state_new(rt.model);
    ctx = ms_ctx_new(rt.model, RT_PREFILL_CHUNK);
    smp = rt_sampler_new(&rt, &sp);
    logits = malloc((size_t)V * sizeof *logits);
    ids = malloc((n_ids ? n_ids : 1) * sizeof *ids);
    if (!s || !ctx || !smp || !logits || !ids) {
        snprintf(err.msg, sizeof err.msg, "out of memory");
        goto done;
    }
    ms_tokenize(tok, prompt, plen, ids, n_ids);
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] >= V) {
            snprintf(err.msg, sizeof err.msg,
                     "the vocabulary has ids up to %d but the model only %d rows",
                     ms_tokenizer_n_ids(tok) - 1, V);
            goto done;
        }
    /* A completion: the same rules as /v1/completions (no stops given). */
    gen_policy pol;
    chat_policy(OA_COMPLETION, NULL, 0, &pol);
    if (pol.ban_end_of_text)
        ms_sampler_set_bias(smp, 0, -INFINITY);
    if (n_ids == 0) { /* an empty prompt starts after end-of-text, as documents do */
        ids[0] = 0;
        n_ids = 1;
    }
    double t0 = now_s();
    /* As the scheduler: all but the last token in chunks, then the last one
     * alone (the chunk and matrix-vector kernels round differently). */
    if ((n_ids > 1 && ms_forward(ctx, s, ids, n_ids - 1, NULL, 0, &err)) ||
        ms_forward(ctx, s, ids + n_ids - 1, 1, logits, 0, &err))
        goto done;
    double t1 = now_s();
    ms_detok dt;
    ms_detok_init(&dt);
    char out[512];
    long made = 0;
    for (; made < n_gen; made++) {
        int32_t t = ms_sampler_sample(smp, logits);
        if (t == 0)
            break;
        size_t k = ms_detok_push(&dt, tok, t, out);
        fwrite(out, 1, k, stdout);
        fflush(stdout);
        if (ms_step(ctx, s, t, logits, &err))
            goto done;
    }
    size_t k = ms_detok_flush(&dt, out);
    fwrite(out, 1, k, stdout);
    fputc('\n', stdout);
    double t2 = now_s();
    fprintf(stderr, "[prompt %zu tokens in %.3f s (%.1f tok/s); generated %ld tokens in %.3f s "
                    "(%.1f tok/s)]\n",
            n_ids, t1 - t0, n_ids / (t1 - t0 + 1e-12), made, t2 - t1, made / (t2 - t1 + 1e-12));
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "generate: %s\n", err.msg);
    free(ids);
    free(logits);
    ms_sampler_free(smp);
    ms_ctx_free(ctx);
    ms_state_free(s);
    rt_free(&rt);
    return rc;
}
