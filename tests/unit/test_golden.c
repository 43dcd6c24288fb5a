/*
 * test_golden.c - the engine against the official reference's outputs in
 * ../shared/golden: every case, from every model file it ships (.safetensors
 * and .pth), in prefill (seq) and token-by-token (rnn) mode, and the
 * continuation case both from our own prefix and from the stored state.
 * Tolerances are the golden README's: logits and WKV state 1e-4, shift
 * states 5e-5 (absolute).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "golden_check.h"
#include "shared_ref.h"
#include "kernels.h"



static void skip_if_no_golden(void)
{
    char p[512];
    shared_file(p, sizeof p, "golden", "README.md");
}



typedef enum { FROM_ZERO, FROM_OWN_PREFIX, FROM_STORED_STATE } start;

/* The prompt chunk of tests that span several chunks, and the server's
 * default (--prefill-chunk), whose sgemm panels must agree as well. */
#define CHUNK_SMALL 16
#define CHUNK_SERVE 128

typedef struct run_opts {
    ms_weights weights;
    const char *isa; /* NULL = the one dispatch picks, else forced (skipped when absent) */
    int chunk;       /* 0 = CHUNK_SMALL */
} run_opts;

typedef struct golden_case {
    json_t *root;
    ms_tensorfile *ref;
    int32_t *tokens, *prefix;
    size_t n, np;
} golden_case;

static void case_open(golden_case *gc, const char *case_name, int own_prefix)
{
    char refpath[512], manifest[512];
    snprintf(refpath, sizeof refpath, "%s/golden/%s.ref.safetensors", shared_dir(), case_name);
    snprintf(manifest, sizeof manifest, "%s/golden/%s.ref.json", shared_dir(), case_name);
    require_reference_file(refpath);
    require_reference_file(manifest);
    json_error_t jerr;
    ms_error err = {0};
    gc->root = json_load_file(manifest, 0, &jerr);
    cr_assert_not_null(gc->root, "%s: %s", manifest, jerr.text);
    gc->tokens = json_tokens(gc->root, "tokens", &gc->n);
    gc->np = 0;
    gc->prefix = own_prefix ? json_tokens(gc->root, "prefix_tokens", &gc->np) : NULL;
    cr_assert_eq(ms_tensorfile_open(refpath, &gc->ref, &err), MS_OK, "%s", err.msg);
}

static void case_close(golden_case *gc)
{
    free(gc->tokens);
    free(gc->prefix);
    ms_tensorfile_close(gc->ref);
    json_decref(gc->root);
}

static ms_model *load_golden_model(const char *model_file, const run_opts *o)
{
    char path[512];
    shared_file(path, sizeof path, "golden", model_file);
    if (o->isa && k_force_isa(o->isa))
        cr_skip_test("CPU lacks %s; this machine cannot run that kernel variant", o->isa);
    ms_error err = {0};
    ms_model *m;
    ms_load_opts lo = {.weights = o->weights};
    cr_assert_eq(ms_model_load(path, &lo, &m, &err), MS_OK, "%s", err.msg);
    return m;
}

/* Runs the case's tokens (after its prefix or stored state) into s, writing
 * the logits of every token to logits (n * V). */
static void run_case(ms_model *m, const golden_case *gc, start from, int rnn, int chunk,
                     ms_state *s, float *logits, const char *model_file)
{
    ms_error err = {0};
    const size_t V = (size_t)ms_model_config(m)->vocab_size;
    ms_ctx *ctx = ms_ctx_new(m, chunk);
    cr_assert_not_null(ctx);
    if (from == FROM_STORED_STATE)
        cr_assert_eq(ms_state_load_tensors(s, gc->ref, "in.state.", &err), MS_OK, "%s", err.msg);
    if (from == FROM_OWN_PREFIX) {
        float *pl = malloc(gc->np * V * sizeof *pl);
        cr_assert_eq(ms_forward(ctx, s, gc->prefix, gc->np, pl, 1, &err), MS_OK, "%s", err.msg);
        double d = max_diff(pl, gc->ref, "prefix.logits", gc->np * V);
        cr_expect_leq(d, TOL_LOGITS, "%s prefix logits differ by %g", model_file, d);
        free(pl);
    }
    if (rnn) {
        for (size_t i = 0; i < gc->n; i++)
            cr_assert_eq(ms_step(ctx, s, gc->tokens[i], logits + i * V, &err), MS_OK, "%s", err.msg);
    } else {
        cr_assert_eq(ms_forward(ctx, s, gc->tokens, gc->n, logits, 1, &err), MS_OK, "%s", err.msg);
    }
    ms_ctx_free(ctx);
}

static const char *weights_name(ms_weights w)
{
    static const char *const names[] = {"auto", "f32", "bf16", "int8"};
    return (size_t)w < sizeof names / sizeof *names ? names[w] : "other";
}

/* Runs one case with one model file in one mode and checks logits and state
 * against "<mode>.logits" / "<mode>.state.*" of the reference. */
static void check_with(const char *case_name, const char *model_file, int rnn, start from,
                       run_opts o)
{
    const int chunk = o.chunk ? o.chunk : CHUNK_SMALL;
    golden_case gc;
    case_open(&gc, case_name, from == FROM_OWN_PREFIX);
    ms_model *m = load_golden_model(model_file, &o);
    const ms_config *c = ms_model_config(m);
    const size_t V = (size_t)c->vocab_size;
    ms_state *s = ms_state_new(m);
    float *logits = malloc(gc.n * V * sizeof *logits);
    cr_assert(s && logits);
    run_case(m, &gc, from, rnn, chunk, s, logits, model_file);

    const char *mode = rnn ? "rnn" : "seq";
    char name[128];
    snprintf(name, sizeof name, "%s.logits", mode);
    double dl = max_diff(logits, gc.ref, name, gc.n * V), dw = 0, ds = 0;
    for (int l = 0; l < c->n_layer; l++) {
        const size_t C = (size_t)c->n_embd, HNN = C * (size_t)c->head_size;
        snprintf(name, sizeof name, "%s.state.%d.att_kv", mode, l);
        dw = fmax(dw, max_diff(ms_state_wkv(s, l), gc.ref, name, HNN));
        snprintf(name, sizeof name, "%s.state.%d.att_x_prev", mode, l);
        ds = fmax(ds, max_diff(ms_state_att_shift(s, l), gc.ref, name, C));
        snprintf(name, sizeof name, "%s.state.%d.ffn_x_prev", mode, l);
        ds = fmax(ds, max_diff(ms_state_ffn_shift(s, l), gc.ref, name, C));
    }
    /* Printed so the measured agreement can be quoted, not only asserted. */
    fprintf(stderr, "golden %-24s %-30s %s%s [%s weights, %s, chunk %d]: logits %.2e  wkv %.2e  shift %.2e\n",
            case_name, model_file, mode,
            from == FROM_OWN_PREFIX ? " (own prefix)" : from == FROM_STORED_STATE ? " (in.state)" : "",
            weights_name(o.weights), k_isa(), chunk, dl, dw, ds);
    cr_expect_leq(dl, TOL_LOGITS, "%s %s: logits differ by %g", model_file, mode, dl);
    cr_expect_leq(dw, TOL_WKV, "%s %s: WKV state differs by %g", model_file, mode, dw);
    cr_expect_leq(ds, TOL_SHIFT, "%s %s: shift states differ by %g", model_file, mode, ds);

    free(logits);
    ms_state_free(s);
    ms_model_free(m);
    case_close(&gc);
}

static void check(const char *case_name, const char *model_file, int rnn, start from)
{
    check_with(case_name, model_file, rnn, from, (run_opts){0});
}

/* A lossy weight format cannot meet the reference's tolerances, but its
 * prefill at the server's chunk size must compute what prefill in small
 * chunks computes with the same weights: a wrong sgemm panel or chunk
 * boundary in that format shows up here. (Its one-token steps may round
 * activations differently, so they are not the yardstick.) */
static void check_lossy_chunks(const char *case_name, const char *model_file, ms_weights w)
{
    golden_case gc;
    case_open(&gc, case_name, 0);
    run_opts o = {.weights = w};
    ms_model *m = load_golden_model(model_file, &o);
    const ms_config *c = ms_model_config(m);
    const size_t V = (size_t)c->vocab_size, C = (size_t)c->n_embd, HNN = C * (size_t)c->head_size;
    ms_state *s_seq = ms_state_new(m), *s_rnn = ms_state_new(m);
    float *l_seq = malloc(gc.n * V * sizeof *l_seq), *l_rnn = malloc(gc.n * V * sizeof *l_rnn);
    cr_assert(s_seq && s_rnn && l_seq && l_rnn);
    run_case(m, &gc, FROM_ZERO, 0, CHUNK_SERVE, s_seq, l_seq, model_file);
    run_case(m, &gc, FROM_ZERO, 0, CHUNK_SMALL, s_rnn, l_rnn, model_file);
    double dl = 0, dw = 0;
    for (size_t i = 0; i < gc.n * V; i++)
        dl = fmax(dl, fabs((double)l_seq[i] - l_rnn[i]));
    for (int l = 0; l < c->n_layer; l++)
        for (size_t i = 0; i < HNN; i++)
            dw = fmax(dw, fabs((double)ms_state_wkv(s_seq, l)[i] - ms_state_wkv(s_rnn, l)[i]));
    fprintf(stderr, "golden %-24s %-30s seq chunk %d vs chunk %d [%s weights, %s]: logits %.2e  wkv %.2e\n",
            case_name, model_file, CHUNK_SERVE, CHUNK_SMALL, weights_name(w), k_isa(), dl, dw);
    cr_expect_leq(dl, TOL_LOGITS, "%s: prefill in chunks of 128 and 16 differs by %g", model_file, dl);
    cr_expect_leq(dw, TOL_WKV, "%s: WKV state differs by %g", model_file, dw);
    free(l_seq);
    free(l_rnn);
    ms_state_free(s_seq);
    ms_state_free(s_rnn);
    ms_model_free(m);
    case_close(&gc);
}

#define GOLDEN(id, case_name, file, rnn, from) \
    Test(golden, id, .timeout = 120) { check(case_name, file, rnn, from); }

GOLDEN(fp32_st_seq, "tiny_l2_d128_fp32", "tiny_l2_d128_fp32.safetensors", 0, FROM_ZERO)
GOLDEN(fp32_st_rnn, "tiny_l2_d128_fp32", "tiny_l2_d128_fp32.safetensors", 1, FROM_ZERO)
GOLDEN(fp32_pth_seq, "tiny_l2_d128_fp32", "tiny_l2_d128_fp32.pth", 0, FROM_ZERO)
GOLDEN(fp32_pth_rnn, "tiny_l2_d128_fp32", "tiny_l2_d128_fp32.pth", 1, FROM_ZERO)
GOLDEN(bf16_st_seq, "tiny_l2_d128_bf16", "tiny_l2_d128_bf16.safetensors", 0, FROM_ZERO)
GOLDEN(bf16_st_rnn, "tiny_l2_d128_bf16", "tiny_l2_d128_bf16.safetensors", 1, FROM_ZERO)
GOLDEN(bf16_pth_seq, "tiny_l2_d128_bf16", "tiny_l2_d128_bf16.pth", 0, FROM_ZERO)
GOLDEN(bf16_pth_rnn, "tiny_l2_d128_bf16", "tiny_l2_d128_bf16.pth", 1, FROM_ZERO)
GOLDEN(small_seq, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 0, FROM_ZERO)
GOLDEN(small_rnn, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO)
GOLDEN(cont_st_seq_prefix, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.safetensors", 0, FROM_OWN_PREFIX)
GOLDEN(cont_st_rnn_prefix, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.safetensors", 1, FROM_OWN_PREFIX)
GOLDEN(cont_st_seq_state, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.safetensors", 0, FROM_STORED_STATE)
GOLDEN(cont_st_rnn_state, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.safetensors", 1, FROM_STORED_STATE)
GOLDEN(cont_pth_seq_prefix, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.pth", 0, FROM_OWN_PREFIX)
GOLDEN(cont_pth_rnn_prefix, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.pth", 1, FROM_OWN_PREFIX)
GOLDEN(cont_pth_seq_state, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.pth", 0, FROM_STORED_STATE)
GOLDEN(cont_pth_rnn_state, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.pth", 1, FROM_STORED_STATE)

/* bf16 files held as bf16 or widened to fp32 are the same numbers, and
 * every kernel variant must meet the same tolerances. */
#define GOLDEN_WITH(id, case_name, file, rnn, from, ...) \
    Test(golden, id, .timeout = 120) { check_with(case_name, file, rnn, from, (run_opts){__VA_ARGS__}); }

GOLDEN_WITH(bf16_file_f32_weights_rnn, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, .weights = MS_WEIGHTS_F32)
GOLDEN_WITH(bf16_file_bf16_weights_rnn, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, .weights = MS_WEIGHTS_BF16)
GOLDEN_WITH(bf16_file_bf16_weights_seq, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 0, FROM_ZERO, .weights = MS_WEIGHTS_BF16)
GOLDEN_WITH(avx2_rnn, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, .isa = "avx2")
GOLDEN_WITH(avx2_fp32_rnn, "tiny_l2_d128_fp32", "tiny_l2_d128_fp32.safetensors", 1, FROM_ZERO, .isa = "avx2")
GOLDEN_WITH(scalar_rnn, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, .isa = "scalar")
GOLDEN_WITH(scalar_fp32_rnn, "tiny_l2_d128_fp32", "tiny_l2_d128_fp32.safetensors", 1, FROM_ZERO, .isa = "scalar")
GOLDEN_WITH(avx512_rnn, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, .isa = "avx512")
GOLDEN_WITH(amx_rnn, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, .isa = "amx")

/* The server prefills in chunks of --prefill-chunk (128): the same cases
 * through that path, for every exact weight format (the file's own, f32,
 * bf16) and continuation from a prefix and from a stored state. */
GOLDEN_WITH(serve_chunk_fp32_seq, "tiny_l2_d128_fp32", "tiny_l2_d128_fp32.safetensors", 0, FROM_ZERO, .chunk = CHUNK_SERVE)
GOLDEN_WITH(serve_chunk_fp32_pth_seq, "tiny_l2_d128_fp32", "tiny_l2_d128_fp32.pth", 0, FROM_ZERO, .chunk = CHUNK_SERVE)
GOLDEN_WITH(serve_chunk_bf16_seq, "tiny_l2_d128_bf16", "tiny_l2_d128_bf16.safetensors", 0, FROM_ZERO, .chunk = CHUNK_SERVE)
GOLDEN_WITH(serve_chunk_small_seq, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 0, FROM_ZERO, .chunk = CHUNK_SERVE)
GOLDEN_WITH(serve_chunk_small_f32_seq, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 0, FROM_ZERO, .chunk = CHUNK_SERVE, .weights = MS_WEIGHTS_F32)
GOLDEN_WITH(serve_chunk_small_bf16_seq, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 0, FROM_ZERO, .chunk = CHUNK_SERVE, .weights = MS_WEIGHTS_BF16)
GOLDEN_WITH(serve_chunk_fp32_f32_seq, "tiny_l2_d128_fp32", "tiny_l2_d128_fp32.safetensors", 0, FROM_ZERO, .chunk = CHUNK_SERVE, .weights = MS_WEIGHTS_F32)
GOLDEN_WITH(serve_chunk_cont_prefix_seq, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.safetensors", 0, FROM_OWN_PREFIX, .chunk = CHUNK_SERVE)
GOLDEN_WITH(serve_chunk_cont_state_seq, "tiny_l2_d128_fp32_cont", "tiny_l2_d128_fp32.safetensors", 0, FROM_STORED_STATE, .chunk = CHUNK_SERVE)
GOLDEN_WITH(serve_chunk_avx2_seq, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 0, FROM_ZERO, .chunk = CHUNK_SERVE, .isa = "avx2")
GOLDEN_WITH(serve_chunk_scalar_seq, "small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 0, FROM_ZERO, .chunk = CHUNK_SERVE, .isa = "scalar")

/* Lossy formats: prefill at the server's chunk size == prefill in small chunks. */
Test(golden, serve_chunk_int8_consistent, .timeout = 120) { check_lossy_chunks("small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", MS_WEIGHTS_I8); }
Test(golden, serve_chunk_int8_fp32_consistent, .timeout = 120) { check_lossy_chunks("tiny_l2_d128_fp32", "tiny_l2_d128_fp32.safetensors", MS_WEIGHTS_I8); }

/* `metastate eval`: the file it writes (names, shapes, values) is a contract
 * other tools read, so check it end to end on the continuation case, with the
 * reference's in.state handed over through --state-in. */
#include "cli.h"

static void eval_case(const char *mode)
{
    skip_if_no_golden();
    char model[512], refpath[512], manifest[512];
    shared_file(model, sizeof model, "golden", "tiny_l2_d128_fp32.pth");
    snprintf(refpath, sizeof refpath, "%s/golden/tiny_l2_d128_fp32_cont.ref.safetensors", shared_dir());
    snprintf(manifest, sizeof manifest, "%s/golden/tiny_l2_d128_fp32_cont.ref.json", shared_dir());
    char dir[] = "/tmp/ms-test-eval-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char state_in[600], out[600];
    snprintf(state_in, sizeof state_in, "%s/in.safetensors", dir);
    snprintf(out, sizeof out, "%s/out.safetensors", dir);

    ms_error err;
    ms_model *m;
    ms_tensorfile *ref;
    cr_assert_eq(ms_model_load(model, NULL, &m, &err), MS_OK, "%s", err.msg);
    cr_assert_eq(ms_tensorfile_open(refpath, &ref, &err), MS_OK, "%s", err.msg);
    ms_state *s = ms_state_new(m);
    cr_assert_eq(ms_state_load_tensors(s, ref, "in.state.", &err), MS_OK, "%s", err.msg);
    FILE *f = fopen(state_in, "wb");
    cr_assert_eq(ms_state_write_safetensors(f, s, NULL, 0, &err), MS_OK, "%s", err.msg);
    fclose(f);

    json_error_t jerr;
    json_t *root = json_load_file(manifest, 0, &jerr);
    size_t n;
    int32_t *tokens = json_tokens(root, "tokens", &n);
    char list[1024] = "";
    for (size_t i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? "," : "", tokens[i]);
    char *argv[] = {"eval", "--model", model, "--tokens", list, "--state-in", state_in,
                    "--mode", (char *)mode, "--out", out, NULL};
    cr_assert_eq(cmd_eval(11, argv), 0);

    ms_tensorfile *got;
    cr_assert_eq(ms_tensorfile_open(out, &got, &err), MS_OK, "%s", err.msg);
    const ms_tensor *lt = ms_tensorfile_find(got, "logits");
    cr_assert_not_null(lt);
    cr_assert_eq(lt->dtype, MS_F32);
    cr_assert_eq(lt->ndim, 2);
    cr_assert_eq(lt->shape[0], (int64_t)n);
    cr_assert_eq(lt->shape[1], 512);
    float *l = malloc(lt->nbytes);
    ms_tensor_to_f32(lt, l);
    char name[64];
    snprintf(name, sizeof name, "%s.logits", mode);
    cr_expect_leq(max_diff(l, ref, name, n * 512), TOL_LOGITS);
    ms_state *s2 = ms_state_new(m);
    cr_assert_eq(ms_state_load_tensors(s2, got, "state.", &err), MS_OK, "%s", err.msg);
    for (int layer = 0; layer < 2; layer++) {
        snprintf(name, sizeof name, "%s.state.%d.att_kv", mode, layer);
        cr_expect_leq(max_diff(ms_state_wkv(s2, layer), ref, name, 2 * 64 * 64), TOL_WKV);
        snprintf(name, sizeof name, "%s.state.%d.ffn_x_prev", mode, layer);
        cr_expect_leq(max_diff(ms_state_ffn_shift(s2, layer), ref, name, 128), TOL_SHIFT);
    }
    free(l);
    free(tokens);
    json_decref(root);
    ms_state_free(s);
    ms_state_free(s2);
    ms_tensorfile_close(got);
    ms_tensorfile_close(ref);
    ms_model_free(m);
    unlink(state_in);
    unlink(out);
    rmdir(dir);
}

Test(golden, eval_command_seq, .timeout = 120) { eval_case("seq"); }
Test(golden, eval_command_rnn, .timeout = 120) { eval_case("rnn"); }
