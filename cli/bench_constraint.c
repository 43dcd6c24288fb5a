/*
 * bench_constraint.c - `metastate bench-constraint`: the per-token cost
 * of constrained decoding (allowed-token mask, masking, matcher advance)
 * against plain decoding, on the same model and the same steps, in one run.
 * Prints a RESULT line for tools/bench.sh.
 */
#include "cli.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "json_schema.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A typical structured-output schema: strings, numbers, an enum, an array. */
static const char SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150},"
    "\"city\":{\"type\":\"string\"},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
    "\"mood\":{\"enum\":[\"happy\",\"sad\",\"neutral\"]},\"score\":{\"type\":\"number\"}},"
    "\"required\":[\"name\",\"age\",\"city\",\"tags\",\"mood\",\"score\"],"
    "\"additionalProperties\":false}";

int cmd_bench_constraint(int argc, char **argv)
{
    const char *model_path = NULL, *vocab_path = NULL, *label = "model";
    int gen = 128;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model_path = argv[++i];
        else if (!strcmp(argv[i], "--vocab") && i + 1 < argc)
            vocab_path = argv[++i];
        else if (!strcmp(argv[i], "--gen") && i + 1 < argc)
            gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--label") && i + 1 < argc)
            label = argv[++i];
        else {
            fprintf(stderr, "usage: metastate bench-constraint --model FILE --vocab FILE "
                            "[--gen N] [--label L]\n");
            return !strcmp(argv[i], "--help") ? 0 : 2;
        }
    }
    if (!model_path || !vocab_path || gen < 8) {
        fprintf(stderr, "bench-constraint: --model and --vocab are required (--gen >= 8)\n");
        return 2;
    }
    ms_error err = { 0 };
    ms_model *m = NULL;
    ms_tokenizer *tok = NULL;
    if (ms_model_load(model_path, NULL, &m, &err) != MS_OK ||
        ms_tokenizer_load(vocab_path, &tok, &err) != MS_OK) {
        fprintf(stderr, "bench-constraint: %s\n", err.msg);
        ms_model_free(m);
        return 1;
    }
    int32_t V = ms_model_config(m)->vocab_size;
    json_t *schema = json_loads(SCHEMA, 0, NULL);
    oa_error oe = { 0 };
    ms_grammar *g = js_schema_grammar(schema, 1, "schema", &oe);
    json_decref(schema);
    double t0 = now_s();
    ms_vocab_index *vi = ms_vocab_index_new(tok, V);
    double t_index = now_s() - t0;
    ms_gmatch *gm = g && vi ? ms_gmatch_new(g, vi) : NULL;
    ms_ctx *ctx = ms_ctx_new(m, 0);
    ms_state *st = ms_state_new(m);
    ms_sampler_params sp = ms_sampler_defaults();
    ms_sampler *smp = ms_sampler_new(V, &sp);
    float *logits = malloc((size_t)V * sizeof *logits);
    uint64_t *mask = malloc(((size_t)V + 63) / 64 * sizeof *mask);
    int rc = 1;
    if (!gm || !ctx || !st || !smp || !logits || !mask) {
        fprintf(stderr, "bench-constraint: setup failed (%s)\n", oe.message);
        goto out;
    }
    const char *prompt = "User: Describe a person as JSON.\n\nAssistant:";
    int32_t ids[64];
    size_t np = ms_tokenize(tok, prompt, strlen(prompt), ids, 64);
    /* Plain and constrained passes alternate, best of each kept: the
     * machine's noise hits both alike. */
    double plain = 1e30, constrained = 1e30, mask_time = 0, pass_mask = 0;
    int docs = 0;
    for (int run = 0; run < 4; run++) {
        int pass = run & 1;
        pass_mask = 0;
        ms_state_reset(st);
        ms_sampler_reset(smp, &sp);
        ms_gmatch_reset(gm);
        if (ms_forward(ctx, st, ids, np, logits, 0, &err) != MS_OK)
            goto out;
        double start = now_s();
        int left = gen;
        for (int k = 0; k < gen; k++) {
            if (pass == 1) {
                double a = now_s();
                if (ms_gmatch_done(gm)) { /* next document */
                    ms_gmatch_reset(gm);
                    docs++;
                    left = gen - k;
                }
                ms_gmatch_mask(gm, left--, mask);
                ms_mask_apply(logits, mask, V);
                pass_mask += now_s() - a;
            }
            int32_t t = ms_sampler_sample(smp, logits);
            if (pass == 1) {
                double a = now_s();
                size_t bl = 0;
                const char *b = ms_token_bytes(tok, t, &bl);
                if (t != 0 && b)
                    ms_gmatch_advance(gm, b, bl);
                pass_mask += now_s() - a;
            }
            if (ms_step(ctx, st, t, logits, &err) != MS_OK)
                goto out;
        }
        double el = (now_s() - start) / gen;
        if (pass == 0 && el < plain)
            plain = el;
        if (pass == 1 && el < constrained) {
            constrained = el;
            mask_time = pass_mask;
        }
    }
    printf("constrained decoding (%s, V=%d): plain %.2f ms/token, constrained %.2f ms/token "
           "(mask+advance %.3f ms/token), overhead %.1f%%, vocabulary index built in %.0f ms\n",
           label, V, plain * 1e3, constrained * 1e3, mask_time / gen * 1e3,
           (constrained / plain - 1) * 100, t_index * 1e3);
    printf("RESULT label=%s plain_ms=%.3f constrained_ms=%.3f mask_ms=%.3f overhead=%.4f "
           "mask_share=%.4f index_ms=%.0f docs=%d\n",
           label, plain * 1e3, constrained * 1e3, mask_time / gen * 1e3, constrained / plain - 1,
           mask_time / gen / plain, t_index * 1e3, docs);
    rc = 0;
out:
    free(mask);
    free(logits);
    ms_sampler_free(smp);
    ms_state_free(st);
    ms_ctx_free(ctx);
    ms_gmatch_free(gm);
    ms_vocab_index_free(vi);
    ms_grammar_free(g);
    ms_tokenizer_free(tok);
    ms_model_free(m);
    return rc;
}
