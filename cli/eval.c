/*
 * eval.c - `metastate eval`: run token ids through a model and write the
 * logits after every token and the final state as one safetensors file, all
 * F32 (`logits` (T, V), `state.<i>.att_x_prev|att_kv|ffn_x_prev`). Other
 * tools compare these files with reference outputs, so the names and
 * shapes are a contract.
 */
#include "cli.h"
#include "engine.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: metastate eval --model PATH --tokens 1,2,3 [--state-in PATH]\n"
               "                      [--mode seq|rnn] [--weights auto|f32|bf16|int8|q4]\n"
               "                      [--compute f32|bf16] [--threads N] --out PATH\n"
               "Runs the tokens from the zero state (or from --state-in, a safetensors or\n"
               ".pth file with state.<i>.* tensors) and writes `logits` (T, V) and the\n"
               "final state as safetensors, all F32. seq = prefill (default), rnn = one\n"
               "token per step. --threads: threads for the products (default: one per\n"
               "core).\n");
}

/* Parses "1,2,3" into a malloc'd array; returns the count or -1. */
static long parse_tokens(const char *s, int32_t **out)
{
    size_t cap = 16, n = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v)
        return -1;
    while (*s) {
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || errno || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        if (n == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return -1;
            }
            v = nv;
        }
        v[n++] = (int32_t)x;
        s = *end ? end + 1 : end;
    }
    *out = v;
    return (long)n;
}

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"tokens", required_argument, 0, 't'},
        {"state-in", required_argument, 0, 's'}, {"mode", required_argument, 0, 'M'},
        {"out", required_argument, 0, 'o'}, {"weights", required_argument, 0, 'w'},
        {"compute", required_argument, 0, 'c'}, {"threads", required_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *model_path = NULL, *tokens_s = NULL, *state_in = NULL, *mode = "seq",
               *out = NULL;
    int c, weights = MS_WEIGHTS_AUTO, compute = MS_COMPUTE_F32, threads = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:s:M:o:w:c:T:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 't': tokens_s = optarg; break;
        case 's': state_in = optarg; break;
        case 'M': mode = optarg; break;
        case 'o': out = optarg; break;
        case 'w': weights = ms_weights_parse(optarg); break;
        case 'c': compute = ms_compute_parse(optarg); break;
        case 'T': threads = atoi(optarg) > 0 ? atoi(optarg) : -1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model_path || !tokens_s || !out || optind != argc || weights < 0 || compute < 0 ||
        threads < 0 || (strcmp(mode, "seq") && strcmp(mode, "rnn"))) {
        usage(stderr);
        return 2;
    }
    int32_t *tokens = NULL;
    long n = parse_tokens(tokens_s, &tokens);
    if (n <= 0) {
        fprintf(stderr, "eval: --tokens wants a comma-separated list of ids, got '%s'\n",
                tokens_s);
        free(tokens);
        return 2;
    }

    int rc = 1;
    ms_error err = {0};
    ms_model *m = NULL;
    ms_state *s = NULL;
    ms_ctx *ctx = NULL;
    float *logits = NULL;
    FILE *f = NULL;
    ms_load_opts lo = {.weights = (ms_weights)weights, .compute = (ms_compute)compute,
                       .n_threads = threads};
    if (ms_model_load(model_path, &lo, &m, &err))
        goto done;
    const ms_config *cfg = ms_model_config(m);
    s = ms_state_new(m);
    ctx = ms_ctx_new(m, 0);
    logits = malloc((size_t)n * (size_t)cfg->vocab_size * sizeof *logits);
    if (!s || !ctx || !logits) {
        snprintf(err.msg, sizeof err.msg, "out of memory");
        goto done;
    }
    if (state_in) {
        ms_tensorfile *tf;
        if (ms_tensorfile_open(state_in, &tf, &err))
            goto done;
        ms_status st = ms_state_load_tensors(s, tf, "state.", &err);
        ms_tensorfile_close(tf);
        if (st)
            goto done;
    }
    if (!strcmp(mode, "seq")) {
        if (ms_forward(ctx, s, tokens, (size_t)n, logits, 1, &err))
            goto done;
    } else {
        for (long i = 0; i < n; i++)
            if (ms_step(ctx, s, tokens[i], logits + (size_t)i * cfg->vocab_size, &err))
                goto done;
    }
    ms_tensor lt = {.name = "logits", .dtype = MS_F32, .ndim = 2,
                    .shape = {n, cfg->vocab_size}, .data = logits,
                    .nbytes = (size_t)n * (size_t)cfg->vocab_size * sizeof(float)};
    if (!(f = fopen(out, "wb"))) {
        snprintf(err.msg, sizeof err.msg, "%s: %s", out, strerror(errno));
        goto done;
    }
    if (ms_state_write_safetensors(f, s, &lt, 1, &err))
        goto done;
    if (fclose(f)) {
        f = NULL;
        snprintf(err.msg, sizeof err.msg, "%s: write failed: %s", out, strerror(errno));
        goto done;
    }
    f = NULL;
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "eval: %s\n", err.msg);
    if (f)
        fclose(f);
    free(logits);
    free(tokens);
    ms_ctx_free(ctx);
    ms_state_free(s);
    ms_model_free(m);
    return rc;
}
