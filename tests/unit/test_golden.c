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
#include "kernels.h"


static const char *shared_dir(void)
{
    const char *s = getenv("METASTATE_SHARED");
    return s && *s ? s : "../shared";
}

static int golden_path(char *buf, size_t n, const char *file)
{
    snprintf(buf, n, "%s/golden/%s", shared_dir(), file);
    FILE *f = fopen(buf, "rb");
    if (!f)
        return 0;
    fclose(f);
    return 1;
}

static void skip_if_no_golden(void)
{
    char p[512];
    if (!golden_path(p, sizeof p, "README.md"))
        cr_skip_test("golden outputs not found at %s/golden (set METASTATE_SHARED)", shared_dir());
}



typedef enum { FROM_ZERO, FROM_OWN_PREFIX, FROM_STORED_STATE } start;

/* Runs one case with one model file in one mode and checks logits and state
 * against "<mode>.logits" / "<mode>.state.*" of the reference. */
static void check_with(const char *case_name, const char *model_file, int rnn, start from,
                       ms_weights weights, const char *isa);

static void check(const char *case_name, const char *model_file, int rnn, start from)
{
    check_with(case_name, model_file, rnn, from, MS_WEIGHTS_AUTO, NULL);
}

/* isa: NULL = the one dispatch picks, else forced (skipped when absent). */
static void check_with(const char *case_name, const char *model_file, int rnn, start from,
                       ms_weights weights, const char *isa)
{
    skip_if_no_golden();
    char path[512], refpath[512], manifest[512];
    if (!golden_path(path, sizeof path, model_file))
        cr_skip_test("%s not found", model_file);
    snprintf(refpath, sizeof refpath, "%s/golden/%s.ref.safetensors", shared_dir(), case_name);
    snprintf(manifest, sizeof manifest, "%s/golden/%s.ref.json", shared_dir(), case_name);

    json_error_t jerr;
    json_t *root = json_load_file(manifest, 0, &jerr);
    cr_assert_not_null(root, "%s: %s", manifest, jerr.text);
    size_t n, np = 0;
    int32_t *tokens = json_tokens(root, "tokens", &n);
    int32_t *prefix = from == FROM_OWN_PREFIX ? json_tokens(root, "prefix_tokens", &np) : NULL;

    if (isa && k_force_isa(isa))
        cr_skip_test("this CPU has no %s", isa);
    ms_error err = {0};
    ms_model *m;
    ms_load_opts lo = {.weights = weights};
    cr_assert_eq(ms_model_load(path, &lo, &m, &err), MS_OK, "%s", err.msg);
    ms_tensorfile *ref;
    cr_assert_eq(ms_tensorfile_open(refpath, &ref, &err), MS_OK, "%s", err.msg);
    const ms_config *c = ms_model_config(m);
    const size_t V = (size_t)c->vocab_size;
    ms_state *s = ms_state_new(m);
    ms_ctx *ctx = ms_ctx_new(m, 16); /* small chunks: the cases span several */
    float *logits = malloc(n * V * sizeof *logits);
    cr_assert(s && ctx && logits);

    if (from == FROM_STORED_STATE)
        cr_assert_eq(ms_state_load_tensors(s, ref, "in.state.", &err), MS_OK, "%s", err.msg);
    if (prefix) {
        float *pl = malloc(np * V * sizeof *pl);
        cr_assert_eq(ms_forward(ctx, s, prefix, np, pl, 1, &err), MS_OK, "%s", err.msg);
        double d = max_diff(pl, ref, "prefix.logits", np * V);
        cr_expect_leq(d, TOL_LOGITS, "%s prefix logits differ by %g", model_file, d);
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
    static const char *const wname[] = {"auto", "f32", "bf16", "int8"};
    fprintf(stderr, "golden %-24s %-30s %s%s [%s weights, %s]: logits %.2e  wkv %.2e  shift %.2e\n",
            case_name, model_file, mode,
            from == FROM_OWN_PREFIX ? " (own prefix)" : from == FROM_STORED_STATE ? " (in.state)" : "",
            wname[weights], k_isa(), dl, dw, ds);
    cr_expect_leq(dl, TOL_LOGITS, "%s %s: logits differ by %g", model_file, mode, dl);
    cr_expect_leq(dw, TOL_WKV, "%s %s: WKV state differs by %g", model_file, mode, dw);
    cr_expect_leq(ds, TOL_SHIFT, "%s %s: shift states differ by %g", model_file, mode, ds);

    free(logits);
    free(tokens);
    free(prefix);
    ms_ctx_free(ctx);
    ms_state_free(s);
    ms_tensorfile_close(ref);
    ms_model_free(m);
    json_decref(root);
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
Test(golden, bf16_file_f32_weights_rnn, .timeout = 120) { check_with("small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, MS_WEIGHTS_F32, NULL); }
Test(golden, bf16_file_bf16_weights_rnn, .timeout = 120) { check_with("small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, MS_WEIGHTS_BF16, NULL); }
Test(golden, bf16_file_bf16_weights_seq, .timeout = 120) { check_with("small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 0, FROM_ZERO, MS_WEIGHTS_BF16, NULL); }
Test(golden, avx2_rnn, .timeout = 120) { check_with("small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, MS_WEIGHTS_AUTO, "avx2"); }
Test(golden, avx2_fp32_rnn, .timeout = 120) { check_with("tiny_l2_d128_fp32", "tiny_l2_d128_fp32.safetensors", 1, FROM_ZERO, MS_WEIGHTS_AUTO, "avx2"); }
Test(golden, scalar_rnn, .timeout = 120) { check_with("small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, MS_WEIGHTS_AUTO, "scalar"); }
Test(golden, scalar_fp32_rnn, .timeout = 120) { check_with("tiny_l2_d128_fp32", "tiny_l2_d128_fp32.safetensors", 1, FROM_ZERO, MS_WEIGHTS_AUTO, "scalar"); }
Test(golden, avx512_rnn, .timeout = 120) { check_with("small_l3_d256_bf16", "small_l3_d256_bf16.safetensors", 1, FROM_ZERO, MS_WEIGHTS_AUTO, "avx512"); }

/* `metastate eval`: the file it writes (names, shapes, values) is a contract
 * other tools read, so check it end to end on the continuation case, with the
 * reference's in.state handed over through --state-in. */
#include "cli.h"

static void eval_case(const char *mode)
{
    skip_if_no_golden();
    char model[512], refpath[512], manifest[512];
    cr_assert(golden_path(model, sizeof model, "tiny_l2_d128_fp32.pth"));
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
