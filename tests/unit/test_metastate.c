/*
 * test_metastate.c - MS-v0 in the engine, by the self-consistency checks of
 * SPEC 3.6 on generated models: zero gains are bit-identical to RWKV-7, the
 * two-pass prefill equals token by token, the output at t ignores tokens
 * after t, and `metastate expand` changes neither logits nor states.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tmpdir.h"
#include "engine.h"

TEST_TMPDIR("meta")

TestSuite(metastate, .init = make_dir, .fini = remove_dir, .timeout = 120);

/* gen-model tiny (V 512) with extra flags; path receives the file name. */
static void gen(char *path, size_t n, const char *name, const char *dtype, const char *heads)
{
    snprintf(path, n, "%s/%s", dir, name);
    char *argv[16] = {"gen-model", "--preset", "tiny", "--vocab-size", "512", "--dtype",
                      (char *)dtype, "--seed", "3", "--out", path};
    int argc = 11;
    if (heads) {
        argv[argc++] = "--meta-state";
        if (*heads) {
            argv[argc++] = "--sse-heads";
            argv[argc++] = (char *)heads;
        }
    }
    argv[argc] = NULL;
    cr_assert_eq(cmd_gen_model(argc, argv), 0);
}

static ms_model *load(const char *path)
{
    ms_error err;
    ms_model *m;
    cr_assert_eq(ms_model_load(path, NULL, &m, &err), MS_OK, "%s", err.msg);
    return m;
}

static void tokens(int32_t *t, size_t n, unsigned salt)
{
    for (size_t i = 0; i < n; i++)
        t[i] = (int32_t)((i * 2654435761u + salt) % 512u);
}

/* Logits after every token (seq or rnn) and the final state. */
static void run(ms_model *m, const int32_t *t, size_t n, int rnn, float *logits, ms_state *s,
                int chunk)
{
    ms_error err;
    ms_ctx *c = ms_ctx_new(m, chunk);
    if (rnn) {
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(ms_step(c, s, t[i], logits + i * 512, &err), MS_OK, "%s", err.msg);
    } else {
        cr_assert_eq(ms_forward(c, s, t, n, logits, 1, &err), MS_OK, "%s", err.msg);
    }
    ms_ctx_free(c);
}

static double diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

Test(metastate, detects_gains_and_runs_differently_from_rwkv7)
{
    char plain[300], meta[300];
    gen(plain, sizeof plain, "plain.safetensors", "f32", NULL);
    gen(meta, sizeof meta, "meta.safetensors", "f32", "1");
    ms_model *a = load(plain), *b = load(meta);
    cr_expect_eq(ms_model_config(a)->meta_state, 0);
    cr_expect_eq(ms_model_config(b)->meta_state, 1);
    int32_t t[20];
    tokens(t, 20, 5);
    float *la = malloc(20 * 512 * 4), *lb = malloc(20 * 512 * 4);
    ms_state *sa = ms_state_new(a), *sb = ms_state_new(b);
    run(a, t, 20, 0, la, sa, 0);
    run(b, t, 20, 0, lb, sb, 0);
    /* Same random draw except the gains: the SSE must change the output. */
    cr_expect_gt(diff(la, lb, 20 * 512), 1e-3);
    free(la);
    free(lb);
    ms_state_free(sa);
    ms_state_free(sb);
    ms_model_free(a);
    ms_model_free(b);
}

static int zero_gamma_rewrite(const char *src, const char *dst)
{
    ms_error err;
    ms_tensorfile *tf;
    cr_assert_eq(ms_tensorfile_open(src, &tf, &err), MS_OK, "%s", err.msg);
    size_t n = ms_tensorfile_count(tf);
    ms_tensor *t = calloc(n, sizeof *t);
    static float zeros[128];
    for (size_t i = 0; i < n; i++) {
        t[i] = *ms_tensorfile_at(tf, i);
        if (strstr(t[i].name, "ms_gamma")) {
            t[i].dtype = MS_F32;
            t[i].data = zeros;
            t[i].nbytes = sizeof zeros;
        }
    }
    FILE *f = fopen(dst, "wb");
    int rc = ms_safetensors_write(f, t, n, NULL, &err);
    fclose(f);
    free(t);
    ms_tensorfile_close(tf);
    return rc;
}

Test(metastate, zero_gains_are_bit_identical_to_rwkv7)
{
    char plain[300], meta[300], zero[300];
    gen(plain, sizeof plain, "plain.safetensors", "f32", NULL);
    gen(meta, sizeof meta, "meta.safetensors", "f32", "");
    snprintf(zero, sizeof zero, "%s/zero.safetensors", dir);
    cr_assert_eq(zero_gamma_rewrite(meta, zero), MS_OK);
    ms_model *a = load(plain), *b = load(zero);
    cr_expect_eq(ms_model_config(b)->meta_state, 1);
    int32_t t[50];
    tokens(t, 50, 9);
    for (int rnn = 0; rnn < 2; rnn++) {
        float *la = malloc(50 * 512 * 4), *lb = malloc(50 * 512 * 4);
        ms_state *sa = ms_state_new(a), *sb = ms_state_new(b);
        run(a, t, 50, rnn, la, sa, 16);
        run(b, t, 50, rnn, lb, sb, 16);
        cr_expect_eq(memcmp(la, lb, 50 * 512 * 4), 0, "logits differ (mode %d)", rnn);
        cr_expect_eq(memcmp(ms_state_cdata(sa), ms_state_cdata(sb), ms_state_nfloats(sa) * 4), 0);
        free(la);
        free(lb);
        ms_state_free(sa);
        ms_state_free(sb);
    }
    ms_model_free(a);
    ms_model_free(b);
}

Test(metastate, two_pass_prefill_equals_token_by_token)
{
    const char *dtypes[] = {"f32", "bf16"};
    const char *heads[] = {"0", "1", ""};
    for (int d = 0; d < 2; d++)
        for (int h = 0; h < 3; h++) {
            char p[300], name[64];
            snprintf(name, sizeof name, "m%d%d.safetensors", d, h);
            gen(p, sizeof p, name, dtypes[d], heads[h]);
            ms_model *m = load(p);
            enum { T = 100 };
            int32_t t[T];
            tokens(t, T, 77);
            float *lr = malloc(T * 512 * 4), *ls = malloc(T * 512 * 4);
            ms_state *sr = ms_state_new(m), *ss = ms_state_new(m);
            run(m, t, T, 1, lr, sr, 0);
            run(m, t, T, 0, ls, ss, 32);
            double dl = diff(lr, ls, T * 512);
            double ds = diff(ms_state_cdata(sr), ms_state_cdata(ss), ms_state_nfloats(sr));
            fprintf(stderr, "ms-v0 %s heads '%s': seq vs rnn logits %.2e state %.2e\n",
                    dtypes[d], heads[h], dl, ds);
            cr_expect_leq(dl, 1e-4, "%s heads %s: logits %g", dtypes[d], heads[h], dl);
            cr_expect_leq(ds, 1e-4, "%s heads %s: state %g", dtypes[d], heads[h], ds);
            free(lr);
            free(ls);
            ms_state_free(sr);
            ms_state_free(ss);
            ms_model_free(m);
        }
}

Test(metastate, output_at_t_ignores_later_tokens)
{
    char p[300];
    gen(p, sizeof p, "m.safetensors", "f32", "");
    ms_model *m = load(p);
    int32_t a[40], b[40];
    tokens(a, 40, 1);
    memcpy(b, a, sizeof a);
    for (int i = 25; i < 40; i++)
        b[i] = (a[i] + 100) % 512;
    float *la = malloc(40 * 512 * 4), *lb = malloc(40 * 512 * 4);
    ms_state *sa = ms_state_new(m), *sb = ms_state_new(m);
    run(m, a, 40, 0, la, sa, 40); /* one chunk: the two-pass path sees the future rows */
    run(m, b, 40, 0, lb, sb, 40);
    cr_expect_eq(memcmp(la, lb, 25 * 512 * 4), 0, "logits before t=25 depend on later tokens");
    cr_expect_gt(diff(la + 25 * 512, lb + 25 * 512, 15 * 512), 0.0);
    free(la);
    free(lb);
    ms_state_free(sa);
    ms_state_free(sb);
    ms_model_free(m);
}

Test(metastate, expansion_keeps_logits_and_states)
{
    char p[300], q[300], r[300];
    gen(p, sizeof p, "m.safetensors", "bf16", "0");
    snprintf(q, sizeof q, "%s/grown.safetensors", dir);
    snprintf(r, sizeof r, "%s/grown2.safetensors", dir);
    char *argv[] = {"expand", "--model", p, "--out", q, "--add-param-tokens", "96",
                    "--key-init", "random", "--sse-heads", "0:1,1:0+1", NULL};
    cr_assert_eq(cmd_expand(11, argv), 0);
    char *argv2[] = {"expand", "--model", q, "--out", r, "--add-param-tokens", "32", NULL};
    cr_assert_eq(cmd_expand(7, argv2), 0);
    ms_model *a = load(p), *b = load(q), *c = load(r);
    cr_expect_eq(ms_model_config(b)->dim_ffn, ms_model_config(a)->dim_ffn + 96);
    cr_expect_eq(ms_model_config(c)->dim_ffn, ms_model_config(a)->dim_ffn + 128);
    /* The states of every ancestor stay valid, and only theirs. */
    cr_expect(ms_model_state_compatible(c, ms_model_fingerprint(a)));
    cr_expect(ms_model_state_compatible(c, ms_model_fingerprint(b)));
    cr_expect(ms_model_state_compatible(b, ms_model_fingerprint(a)));
    cr_expect(!ms_model_state_compatible(a, ms_model_fingerprint(b)));
    int32_t t[60];
    tokens(t, 60, 3);
    for (int rnn = 0; rnn < 2; rnn++) {
        float *la = malloc(60 * 512 * 4), *lc = malloc(60 * 512 * 4);
        ms_state *sa = ms_state_new(a), *sc = ms_state_new(c);
        run(a, t, 60, rnn, la, sa, 0);
        run(c, t, 60, rnn, lc, sc, 0);
        double dl = diff(la, lc, 60 * 512);
        double ds = diff(ms_state_cdata(sa), ms_state_cdata(sc), ms_state_nfloats(sa));
        /* A longer dot product sums extra exact zeros: equal up to rounding order. */
        cr_expect_leq(dl, 1e-5, "mode %d: logits changed by %g", rnn, dl);
        cr_expect_leq(ds, 1e-5, "mode %d: state changed by %g", rnn, ds);
        free(la);
        free(lc);
        ms_state_free(sa);
        ms_state_free(sc);
    }
    ms_model_free(a);
    ms_model_free(b);
    ms_model_free(c);
}
