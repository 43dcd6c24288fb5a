/*
 * test_metastate_golden.c - the engine's Meta-State (MS-v0, SPEC 3.3) path
 * against tests/golden_ms: random MS-v0 models with blocks.{l}.ffn.ms_gamma
 * on chosen SSE heads, and what tools/reference/rwkv7_ref.py computes for them
 * (regenerate / check with tools/reference/{make,verify}_ms_golden.py).
 *
 * Every case in prefill (ms_forward with all logits, seq) and token-by-token
 * (ms_step, rnn) mode; the continuation case both from our own prefix and
 * from the stored in.state. Tolerances as for ../shared/golden: logits and
 * WKV state 1e-4, shift states 5e-5 (absolute). Paths are relative to the
 * repository root, the test's working directory.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "golden_check.h"

#define GOLDEN_MS_DIR "tests/golden_ms"



typedef enum { FROM_ZERO, FROM_OWN_PREFIX, FROM_STORED_STATE } start;

/* Runs one case in one mode and checks logits and state against
 * "<mode>.logits" / "<mode>.state.*" of the reference. The model file is the
 * first one the manifest lists. */
static void check_with(const char *case_name, int rnn, start from, int chunk, ms_weights w)
{
    char manifest[512], refpath[512], path[512];
    snprintf(manifest, sizeof manifest, "%s/%s.ref.json", GOLDEN_MS_DIR, case_name);
    snprintf(refpath, sizeof refpath, "%s/%s.ref.safetensors", GOLDEN_MS_DIR, case_name);

    json_error_t jerr;
    json_t *root = json_load_file(manifest, 0, &jerr);
    cr_assert_not_null(root, "%s: %s (run from the repository root)", manifest, jerr.text);
    json_t *files = json_object_get(json_object_get(root, "model"), "files");
    const char *model_file = json_string_value(json_array_get(files, 0));
    cr_assert_not_null(model_file, "%s: no model.files[0]", manifest);
    snprintf(path, sizeof path, "%s/%s", GOLDEN_MS_DIR, model_file);
    size_t n, np = 0;
    int32_t *tokens = json_tokens(root, "tokens", &n);
    int32_t *prefix = from == FROM_OWN_PREFIX ? json_tokens(root, "prefix_tokens", &np) : NULL;

    ms_error err = {0};
    ms_model *m;
    ms_load_opts lo = {.weights = w};
    cr_assert_eq(ms_model_load(path, &lo, &m, &err), MS_OK, "%s", err.msg);
    ms_tensorfile *ref;
    cr_assert_eq(ms_tensorfile_open(refpath, &ref, &err), MS_OK, "%s", err.msg);
    const ms_config *c = ms_model_config(m);
    cr_expect_eq(c->meta_state, 1, "%s: not detected as a Meta-State model", model_file);
    const size_t V = (size_t)c->vocab_size;
    ms_state *s = ms_state_new(m);
    ms_ctx *ctx = ms_ctx_new(m, chunk);
    float *logits = malloc(n * V * sizeof *logits);
    cr_assert(s && ctx && logits);

    double dp = 0;
    if (from == FROM_STORED_STATE)
        cr_assert_eq(ms_state_load_tensors(s, ref, "in.state.", &err), MS_OK, "%s", err.msg);
    if (prefix) {
        float *pl = malloc(np * V * sizeof *pl);
        cr_assert_not_null(pl);
        cr_assert_eq(ms_forward(ctx, s, prefix, np, pl, 1, &err), MS_OK, "%s", err.msg);
        dp = max_diff(pl, ref, "prefix.logits", np * V);
        free(pl);
    }
    if (rnn) {
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(ms_step(ctx, s, tokens[i], logits + i * V, &err), MS_OK, "%s", err.msg);
    } else {
        cr_assert_eq(ms_forward(ctx, s, tokens, n, logits, 1, &err), MS_OK, "%s", err.msg);
    }

    const char *mode = rnn ? "rnn" : "seq";
    char name[128];
    snprintf(name, sizeof name, "%s.logits", mode);
    double dl = max_diff(logits, ref, name, n * V), dw = 0, ds = 0;
    for (int l = 0; l < c->n_layer; l++) {
        const size_t C = (size_t)c->n_embd, HNN = C * (size_t)c->head_size;
        snprintf(name, sizeof name, "%s.state.%d.att_kv", mode, l);
        dw = fmax(dw, max_diff(ms_state_wkv(s, l), ref, name, HNN));
        snprintf(name, sizeof name, "%s.state.%d.att_x_prev", mode, l);
        ds = fmax(ds, max_diff(ms_state_att_shift(s, l), ref, name, C));
        snprintf(name, sizeof name, "%s.state.%d.ffn_x_prev", mode, l);
        ds = fmax(ds, max_diff(ms_state_ffn_shift(s, l), ref, name, C));
    }
    /* Printed so the measured agreement can be quoted, not only asserted. */
    fprintf(stderr, "golden_ms %-22s %s%s [chunk %d, weights %d]: logits %.2e  wkv %.2e  shift %.2e",
            case_name, mode,
            from == FROM_OWN_PREFIX ? " (own prefix)" : from == FROM_STORED_STATE ? " (in.state)" : "",
            chunk, (int)w, dl, dw, ds);
    if (prefix)
        fprintf(stderr, "  prefix logits %.2e", dp);
    fputc('\n', stderr);
    cr_expect_leq(dp, TOL_LOGITS, "%s: prefix logits differ by %g", case_name, dp);
    cr_expect_leq(dl, TOL_LOGITS, "%s %s: logits differ by %g", case_name, mode, dl);
    cr_expect_leq(dw, TOL_WKV, "%s %s: WKV state differs by %g", case_name, mode, dw);
    cr_expect_leq(ds, TOL_SHIFT, "%s %s: shift states differ by %g", case_name, mode, ds);

    free(logits);
    free(tokens);
    free(prefix);
    ms_ctx_free(ctx);
    ms_state_free(s);
    ms_tensorfile_close(ref);
    ms_model_free(m);
    json_decref(root);
}

/* Small chunks, so the longer cases span several; the server's chunk size
 * (--prefill-chunk 128) is checked too, below. */
static void check(const char *case_name, int rnn, start from)
{
    check_with(case_name, rnn, from, 16, MS_WEIGHTS_AUTO);
}

#define GOLDEN_MS(id, case_name, rnn, from) \
    Test(golden_ms, id, .timeout = 120) { check(case_name, rnn, from); }
#define GOLDEN_MS_SERVE(id, case_name, from, w) \
    Test(golden_ms, id, .timeout = 120) { check_with(case_name, 0, from, 128, w); }

/* 2 layers, fp32; SSE heads {0} in layer 0, {0,1} in layer 1; 64 tokens */
GOLDEN_MS(l2_fp32_seq, "ms_l2_d128_fp32", 0, FROM_ZERO)
GOLDEN_MS(l2_fp32_rnn, "ms_l2_d128_fp32", 1, FROM_ZERO)
/* a single token */
GOLDEN_MS(l2_fp32_t1_seq, "ms_l2_d128_fp32_t1", 0, FROM_ZERO)
GOLDEN_MS(l2_fp32_t1_rnn, "ms_l2_d128_fp32_t1", 1, FROM_ZERO)
/* continuation: 40 prefix tokens, then 24 */
GOLDEN_MS(l2_fp32_cont_seq_prefix, "ms_l2_d128_fp32_cont", 0, FROM_OWN_PREFIX)
GOLDEN_MS(l2_fp32_cont_rnn_prefix, "ms_l2_d128_fp32_cont", 1, FROM_OWN_PREFIX)
GOLDEN_MS(l2_fp32_cont_seq_state, "ms_l2_d128_fp32_cont", 0, FROM_STORED_STATE)
GOLDEN_MS(l2_fp32_cont_rnn_state, "ms_l2_d128_fp32_cont", 1, FROM_STORED_STATE)
/* the same draw in bf16, 300 tokens (many chunks) */
GOLDEN_MS(l2_bf16_seq, "ms_l2_d128_bf16", 0, FROM_ZERO)
GOLDEN_MS(l2_bf16_rnn, "ms_l2_d128_bf16", 1, FROM_ZERO)
/* 3 layers, bf16, LoRA ranks all different; SSE heads {1} in layer 0, layer 1
 * has no ms_gamma tensor, {0,1} in layer 2; 100 tokens */
GOLDEN_MS(l3_bf16_seq, "ms_l3_d128_bf16", 0, FROM_ZERO)
GOLDEN_MS(l3_bf16_rnn, "ms_l3_d128_bf16", 1, FROM_ZERO)

/* The server's prefill chunk (128) for every exact weight format: 300 tokens
 * are three chunks, the last one partial. */
GOLDEN_MS_SERVE(serve_chunk_l2_fp32, "ms_l2_d128_fp32", FROM_ZERO, MS_WEIGHTS_AUTO)
GOLDEN_MS_SERVE(serve_chunk_l2_fp32_cont_prefix, "ms_l2_d128_fp32_cont", FROM_OWN_PREFIX, MS_WEIGHTS_AUTO)
GOLDEN_MS_SERVE(serve_chunk_l2_fp32_cont_state, "ms_l2_d128_fp32_cont", FROM_STORED_STATE, MS_WEIGHTS_AUTO)
GOLDEN_MS_SERVE(serve_chunk_l2_bf16, "ms_l2_d128_bf16", FROM_ZERO, MS_WEIGHTS_AUTO)
GOLDEN_MS_SERVE(serve_chunk_l2_bf16_f32_weights, "ms_l2_d128_bf16", FROM_ZERO, MS_WEIGHTS_F32)
GOLDEN_MS_SERVE(serve_chunk_l3_bf16, "ms_l3_d128_bf16", FROM_ZERO, MS_WEIGHTS_AUTO)
GOLDEN_MS_SERVE(serve_chunk_l3_bf16_f32_weights, "ms_l3_d128_bf16", FROM_ZERO, MS_WEIGHTS_F32)
