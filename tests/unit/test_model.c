/*
 * test_model.c - loading (every bad-file error), shape inference, and the
 * forward pass's own consistency on generated models: prefill equals token
 * by token for every chunking, a saved and restored state continues
 * exactly, one model serves several threads, memory stays near the weights.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "file_bytes.h"
#include "tmpdir.h"
#include "engine.h"
#include "kernels.h"

TEST_TMPDIR("model")

TestSuite(model, .init = make_dir, .fini = remove_dir, .timeout = 120);

/* Writes a random tiny model (2 layers, C 128, V 512) with gen-model. */
static void gen(const char *name, const char *dtype, char *path, size_t n)
{
    snprintf(path, n, "%s/%s", dir, name);
    char *argv[] = {"gen-model", "--preset", "tiny", "--vocab-size", "512", "--dtype",
                    (char *)dtype, "--seed", "7", "--out", path, NULL};
    cr_assert_eq(cmd_gen_model(11, argv), 0);
}

/* Copies `src` to `dst` through the tensor API, letting `edit` drop (return
 * 0) or change tensors; the copy is what the bad-file tests load. */
typedef int (*edit_fn)(ms_tensor *t, void *scratch);

static void rewrite(const char *src, const char *dst, edit_fn edit)
{
    ms_error err;
    ms_tensorfile *tf;
    cr_assert_eq(ms_tensorfile_open(src, &tf, &err), MS_OK, "%s", err.msg);
    size_t n = ms_tensorfile_count(tf), k = 0;
    ms_tensor *out = calloc(n + 1, sizeof *out);
    static char scratch[1 << 16];
    for (size_t i = 0; i < n; i++) {
        out[k] = *ms_tensorfile_at(tf, i);
        if (edit(&out[k], scratch))
            k++;
    }
    FILE *f = fopen(dst, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(ms_safetensors_write(f, out, k, NULL, &err), MS_OK, "%s", err.msg);
    fclose(f);
    free(out);
    ms_tensorfile_close(tf);
}

static void expect_load_error(const char *path, ms_status code, const char *needle)
{
    ms_error err = {0};
    ms_model *m = NULL;
    ms_status st = ms_model_load(path, NULL, &m, &err);
    cr_assert_eq(st, code, "status %d (%s), expected %d", st, err.msg, code);
    cr_assert_null(m);
    cr_assert(strstr(err.msg, path), "message does not name the file: %s", err.msg);
    cr_assert(strstr(err.msg, needle), "message lacks '%s': %s", needle, err.msg);
}

static int drop_w1(ms_tensor *t, void *s) { return strcmp(t->name, "blocks.1.att.w1") != 0; }
static int drop_head(ms_tensor *t, void *s) { return strcmp(t->name, "head.weight") != 0; }

static int shrink_key(ms_tensor *t, void *s)
{
    if (!strcmp(t->name, "blocks.1.att.key.weight")) {
        t->shape[1] = 64; /* half of the columns: a plausible but wrong shape */
        t->nbytes /= 2;
    }
    return 1;
}

static int swap_lora(ms_tensor *t, void *s)
{
    if (!strcmp(t->name, "blocks.0.att.a1"))
        t->name = "blocks.0.att.g1";
    else if (!strcmp(t->name, "blocks.0.att.g1"))
        t->name = "blocks.0.att.a1";
    return 1;
}

static int add_v6_key(ms_tensor *t, void *s)
{
    if (!strcmp(t->name, "blocks.0.att.x_r"))
        t->name = "blocks.0.att.time_maa_x";
    return 1;
}

static int add_deepembed(ms_tensor *t, void *s)
{
    if (!strcmp(t->name, "blocks.1.ffn.x_k"))
        t->name = "blocks.1.ffn.s_emb.weight";
    return 1;
}

Test(model, missing_tensor_is_named)
{
    char src[300], bad[300];
    gen("m.safetensors", "f32", src, sizeof src);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    rewrite(src, bad, drop_w1);
    expect_load_error(bad, MS_ERR_MISSING, "'blocks.1.att.w1'");
    rewrite(src, bad, drop_head);
    expect_load_error(bad, MS_ERR_MISSING, "'head.weight'");
}

Test(model, wrong_shape_names_expected_and_found)
{
    char src[300], bad[300];
    gen("m.safetensors", "bf16", src, sizeof src);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    rewrite(src, bad, shrink_key);
    expect_load_error(bad, MS_ERR_SHAPE, "'blocks.1.att.key.weight' has shape (128, 64), expected (128, 128)");
}

Test(model, swapped_lora_is_a_shape_error)
{
    char src[300], bad[300];
    gen("m.safetensors", "f32", src, sizeof src);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    rewrite(src, bad, swap_lora);
    expect_load_error(bad, MS_ERR_SHAPE, "blocks.0.att.");
}

Test(model, older_and_experimental_variants_are_refused)
{
    char src[300], bad[300];
    gen("m.safetensors", "f32", src, sizeof src);
    snprintf(bad, sizeof bad, "%s/v6.safetensors", dir);
    rewrite(src, bad, add_v6_key);
    expect_load_error(bad, MS_ERR_UNSUPPORTED, "RWKV-6");
    snprintf(bad, sizeof bad, "%s/de.safetensors", dir);
    rewrite(src, bad, add_deepembed);
    expect_load_error(bad, MS_ERR_UNSUPPORTED, "DeepEmbed");
}

Test(model, truncated_and_garbage_files)
{
    char src[300], bad[300];
    gen("m.safetensors", "f32", src, sizeof src);
    snprintf(bad, sizeof bad, "%s/trunc.safetensors", dir);
    FILE *in = fopen(src, "rb"), *out = fopen(bad, "wb");
    cr_assert(in && out);
    static char buf[1 << 16];
    size_t total = 0, k;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0 && total < 300000) {
        fwrite(buf, 1, k, out);
        total += k;
    }
    fclose(in);
    fclose(out);
    expect_load_error(bad, MS_ERR_FORMAT, "");
    snprintf(bad, sizeof bad, "%s/garbage.bin", dir);
    out = fopen(bad, "wb");
    for (int i = 0; i < 4096; i++)
        fputc((i * 7919) & 0xff, out);
    fclose(out);
    expect_load_error(bad, MS_ERR_FORMAT, "");
    ms_error err = {0};
    ms_model *m;
    cr_assert_eq(ms_model_load("/nonexistent/model.pth", NULL, &m, &err), MS_ERR_IO);
    cr_assert(strstr(err.msg, "/nonexistent/model.pth"), "%s", err.msg);
}

Test(model, config_from_shapes)
{
    char p[300];
    gen("m.pth", "bf16", p, sizeof p); /* the .pth writer path, bf16 */
    ms_error err;
    ms_model *m;
    cr_assert_eq(ms_model_load(p, NULL, &m, &err), MS_OK, "%s", err.msg);
    const ms_config *c = ms_model_config(m);
    cr_expect_eq(c->n_layer, 2);
    cr_expect_eq(c->n_embd, 128);
    cr_expect_eq(c->n_head, 2);
    cr_expect_eq(c->head_size, 64);
    cr_expect_eq(c->vocab_size, 512);
    cr_expect_eq(c->dim_ffn, 512);
    cr_expect_eq(c->d_decay, 32);
    cr_expect_eq(c->d_aaa, 32);
    cr_expect_eq(c->d_mv, 16);
    cr_expect_eq(c->d_gate, 64);
    cr_expect_eq(c->file_dtype, MS_BF16);
    cr_expect_eq(c->meta_state, 0);
    ms_model_free(m);
}

Test(model, same_weights_same_fingerprint_across_formats)
{
    char a[300], b[300], c[300];
    gen("a.safetensors", "f32", a, sizeof a);
    gen("a.pth", "f32", b, sizeof b);
    gen("c.safetensors", "bf16", c, sizeof c);
    ms_error err;
    ms_model *ma, *mb, *mc;
    cr_assert_eq(ms_model_load(a, NULL, &ma, &err), MS_OK, "%s", err.msg);
    cr_assert_eq(ms_model_load(b, NULL, &mb, &err), MS_OK, "%s", err.msg);
    cr_assert_eq(ms_model_load(c, NULL, &mc, &err), MS_OK, "%s", err.msg);
    cr_expect_eq(memcmp(ms_model_fingerprint(ma), ms_model_fingerprint(mb), 32), 0);
    cr_expect_neq(memcmp(ms_model_fingerprint(ma), ms_model_fingerprint(mc), 32), 0);
    ms_model_free(ma);
    ms_model_free(mb);
    ms_model_free(mc);
}

/* ---------------------------------------------------------------------- */

static ms_model *load_tiny(void)
{
    char p[300];
    gen("m.safetensors", "f32", p, sizeof p);
    ms_error err;
    ms_model *m;
    cr_assert_eq(ms_model_load(p, NULL, &m, &err), MS_OK, "%s", err.msg);
    return m;
}

static void sequence(int32_t *t, size_t n, int V)
{
    for (size_t i = 0; i < n; i++)
        t[i] = (int32_t)((i * 2654435761u + 17) % (unsigned)V);
}

static double diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

Test(model, prefill_equals_token_by_token_for_every_chunking)
{
    ms_model *m = load_tiny();
    const int V = ms_model_config(m)->vocab_size;
    enum { T = 70 };
    int32_t toks[T];
    sequence(toks, T, V);
    ms_error err;
    ms_state *ref = ms_state_new(m);
    ms_ctx *c1 = ms_ctx_new(m, 1);
    float *lr = malloc(sizeof(float) * T * V), *lx = malloc(sizeof(float) * T * V);
    for (int i = 0; i < T; i++)
        cr_assert_eq(ms_step(c1, ref, toks[i], lr + (size_t)i * V, &err), MS_OK);
    const int chunks[] = {2, 7, 64, 128};
    for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
        ms_state *s = ms_state_new(m);
        ms_ctx *c = ms_ctx_new(m, chunks[k]);
        cr_assert_eq(ms_forward(c, s, toks, T, lx, 1, &err), MS_OK, "%s", err.msg);
        double dl = diff(lr, lx, (size_t)T * V);
        double ds = diff(ms_state_cdata(ref), ms_state_cdata(s), ms_state_nfloats(s));
        cr_expect_leq(dl, 2e-5, "chunk %d: logits differ by %g", chunks[k], dl);
        cr_expect_leq(ds, 2e-5, "chunk %d: state differs by %g", chunks[k], ds);
        ms_ctx_free(c);
        ms_state_free(s);
    }
    free(lr);
    free(lx);
    ms_ctx_free(c1);
    ms_state_free(ref);
    ms_model_free(m);
}

Test(model, state_save_restore_continues_exactly)
{
    ms_model *m = load_tiny();
    const int V = ms_model_config(m)->vocab_size;
    int32_t toks[40];
    sequence(toks, 40, V);
    ms_error err;
    ms_ctx *c = ms_ctx_new(m, 0);
    ms_state *a = ms_state_new(m), *b = ms_state_new(m);
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    /* Reference: the same two calls without the trip through a file (one
     * call of 40 may sum in another order: other kernels for other sizes). */
    cr_assert_eq(ms_forward(c, a, toks, 25, NULL, 0, &err), MS_OK);
    cr_assert_eq(ms_forward(c, a, toks + 25, 15, la, 0, &err), MS_OK);

    /* Same prefix, saved to a file, read back into a fresh state, continued. */
    cr_assert_eq(ms_forward(c, b, toks, 25, NULL, 0, &err), MS_OK);
    char path[300];
    snprintf(path, sizeof path, "%s/state.safetensors", dir);
    FILE *f = fopen(path, "wb");
    cr_assert_eq(ms_state_write_safetensors(f, b, NULL, 0, &err), MS_OK, "%s", err.msg);
    fclose(f);
    ms_state_reset(b);
    ms_tensorfile *tf;
    cr_assert_eq(ms_tensorfile_open(path, &tf, &err), MS_OK, "%s", err.msg);
    cr_assert_eq(ms_state_load_tensors(b, tf, "state.", &err), MS_OK, "%s", err.msg);
    ms_tensorfile_close(tf);
    cr_assert_eq(ms_forward(c, b, toks + 25, 15, lb, 0, &err), MS_OK);
    cr_expect_eq(memcmp(ms_state_cdata(a), ms_state_cdata(b), ms_state_nfloats(a) * 4), 0,
                 "restored state diverged");
    cr_expect_eq(memcmp(la, lb, sizeof(float) * V), 0);

    /* A state file of another shape is refused and leaves the state alone. */
    ms_state_copy(b, a);
    ms_tensor t = {.name = "state.0.att_x_prev", .dtype = MS_F32, .ndim = 1, .shape = {64},
                   .data = la, .nbytes = 64 * 4};
    f = fopen(path, "wb");
    cr_assert_eq(ms_safetensors_write(f, &t, 1, NULL, &err), MS_OK);
    fclose(f);
    cr_assert_eq(ms_tensorfile_open(path, &tf, &err), MS_OK);
    cr_expect_eq(ms_state_load_tensors(b, tf, "state.", &err), MS_ERR_MISMATCH, "%s", err.msg);
    ms_tensorfile_close(tf);
    cr_expect_eq(memcmp(ms_state_cdata(a), ms_state_cdata(b), ms_state_nfloats(a) * 4), 0);

    free(la);
    free(lb);
    ms_state_free(a);
    ms_state_free(b);
    ms_ctx_free(c);
    ms_model_free(m);
}

Test(model, token_out_of_range_is_refused_without_touching_state)
{
    ms_model *m = load_tiny();
    ms_error err = {0};
    ms_ctx *c = ms_ctx_new(m, 0);
    ms_state *s = ms_state_new(m);
    int32_t toks[3] = {1, 512, 2};
    cr_expect_eq(ms_forward(c, s, toks, 3, NULL, 0, &err), MS_ERR_INVALID);
    cr_expect(strstr(err.msg, "512"), "%s", err.msg);
    for (size_t i = 0; i < ms_state_nfloats(s); i++)
        cr_assert_eq(ms_state_cdata(s)[i], 0.0f);
    ms_state_free(s);
    ms_ctx_free(c);
    ms_model_free(m);
}

typedef struct {
    const ms_model *m;
    int seed;
    float out[512];
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    int32_t toks[30];
    for (int i = 0; i < 30; i++)
        toks[i] = (int32_t)((i * 31 + j->seed * 97) % 512);
    ms_ctx *c = ms_ctx_new(j->m, 8);
    ms_state *s = ms_state_new(j->m);
    ms_forward(c, s, toks, 30, j->out, 0, NULL);
    ms_state_free(s);
    ms_ctx_free(c);
    return NULL;
}

Test(model, one_model_many_threads)
{
    ms_model *m = load_tiny();
    enum { NT = 4 };
    job seq[NT], par[NT];
    pthread_t th[NT];
    for (int i = 0; i < NT; i++) {
        seq[i] = (job){.m = m, .seed = i};
        run_job(&seq[i]);
    }
    for (int i = 0; i < NT; i++) {
        par[i] = (job){.m = m, .seed = i};
        pthread_create(&th[i], NULL, run_job, &par[i]);
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(memcmp(seq[i].out, par[i].out, sizeof seq[i].out), 0,
                     "thread %d computed something else than alone", i);
    }
    cr_expect_neq(memcmp(seq[0].out, seq[1].out, sizeof seq[0].out), 0);
    ms_model_free(m);
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

Test(model, resident_memory_after_load_is_near_the_weights)
{
#if defined(__SANITIZE_ADDRESS__)
    /* ASan keeps freed blocks in quarantine and adds shadow memory, both
     * resident: on Zen 5 that alone read 1.35x. The normal build checks. */
    cr_skip_test("ASan build: the sanitizer's quarantine and shadow are resident too");
#endif
    char p[300];
    snprintf(p, sizeof p, "%s/big.safetensors", dir);
    /* Full 65536-row vocabulary: 64 MB of weights, large enough to measure. */
    char *argv[] = {"gen-model", "--preset", "tiny", "--dtype", "bf16", "--out", p, NULL};
    cr_assert_eq(cmd_gen_model(7, argv), 0);
    long before = rss_kb();
    ms_error err;
    ms_model *m;
    cr_assert_eq(ms_model_load(p, NULL, &m, &err), MS_OK, "%s", err.msg);
    double grown = (double)(rss_kb() - before) * 1024;
    double held = (double)ms_model_weight_bytes(m);
    cr_expect_leq(grown, 1.3 * held, "RSS grew %.1f MB for %.1f MB of weights", grown / 1e6,
                  held / 1e6);
    ms_model_free(m);
}

/* A batch of sequences in one call gives, bit for bit, what each gets alone:
 * the kernels keep every sequence's sums apart, so a session's output does
 * not depend on who else is being served. */
static void batch_case(const char *heads)
{
    char p[300];
    snprintf(p, sizeof p, "%s/b.safetensors", dir);
    char *argv[] = {"gen-model", "--preset", "tiny", "--vocab-size", "512", "--dtype", "bf16",
                    "--out", p, heads ? "--meta-state" : NULL, NULL};
    cr_assert_eq(cmd_gen_model(heads ? 10 : 9, argv), 0);
    ms_error err;
    ms_model *m;
    cr_assert_eq(ms_model_load(p, NULL, &m, &err), MS_OK, "%s", err.msg);
    enum { NS = 7 };
    const int V = 512;
    ms_state *solo[NS], *bat[NS];
    float *ls = malloc(sizeof(float) * NS * V), *lb = malloc(sizeof(float) * NS * V);
    float *lptr[NS];
    int32_t hist[40], next[NS];
    ms_ctx *c = ms_ctx_new(m, 0);
    for (int i = 0; i < NS; i++) {
        solo[i] = ms_state_new(m);
        bat[i] = ms_state_new(m);
        sequence(hist, (size_t)(5 + 5 * i), V);
        cr_assert_eq(ms_forward(c, solo[i], hist, (size_t)(5 + 5 * i), NULL, 0, &err), MS_OK);
        ms_state_copy(bat[i], solo[i]);
        next[i] = (int32_t)((i * 77 + 3) % V);
        lptr[i] = i == 3 ? NULL : lb + (size_t)i * V; /* one caller wants no logits */
    }
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < NS; i++)
            cr_assert_eq(ms_step(c, solo[i], next[i], ls + (size_t)i * V, &err), MS_OK);
        cr_assert_eq(ms_step_batch(c, bat, next, NS, lptr, &err), MS_OK, "%s", err.msg);
        for (int i = 0; i < NS; i++) {
            cr_expect_eq(memcmp(ms_state_cdata(solo[i]), ms_state_cdata(bat[i]),
                                ms_state_nfloats(bat[i]) * 4), 0, "state %d differs", i);
            if (lptr[i])
                cr_expect_eq(memcmp(ls + (size_t)i * V, lb + (size_t)i * V, V * 4), 0,
                             "logits %d differ", i);
            next[i] = (next[i] + 11) % V;
        }
    }
    int32_t bad[2] = {1, 9999};
    cr_expect_eq(ms_step_batch(c, bat, bad, 2, lptr, &err), MS_ERR_INVALID);
    for (int i = 0; i < NS; i++) {
        ms_state_free(solo[i]);
        ms_state_free(bat[i]);
    }
    free(ls);
    free(lb);
    ms_ctx_free(c);
    ms_model_free(m);
}

Test(model, batch_step_equals_solo_steps_bit_for_bit) { batch_case(NULL); }
Test(model, batch_step_equals_solo_steps_with_meta_state) { batch_case("all"); }

/* Prompt chunks riding along with a decode batch (ms_forward_mixed), and
 * with each other, give every sequence, bit for bit, what ms_step_batch and
 * ms_forward give it separately: for each weight format, with and without
 * Meta-State heads, on every kernel variant the CPU has, for chunks as
 * short as a decode batch (1, 5 rows) and longer ones (20: sgemm for the
 * exact formats on the portable kernels), one or three at once, with
 * single rows or without; and a chunk's checkpoint (its state before the
 * last token) is what ms_forward leaves one token short. */
static void mixed_case(const char *heads, const char *isa)
{
    if (k_force_isa(isa))
        cr_skip_test("CPU lacks %s", isa);
    char p[300];
    snprintf(p, sizeof p, "%s/mx%s.safetensors", dir, heads ? "ms" : "");
    char *argv[] = {"gen-model", "--preset", "tiny", "--vocab-size", "512", "--dtype", "bf16",
                    "--out", p, heads ? "--meta-state" : NULL, NULL};
    cr_assert_eq(cmd_gen_model(heads ? 10 : 9, argv), 0);
    static const struct { ms_weights w; ms_compute c; } fmts[] = {
        {MS_WEIGHTS_F32, MS_COMPUTE_F32}, {MS_WEIGHTS_BF16, MS_COMPUTE_F32},
        {MS_WEIGHTS_BF16, MS_COMPUTE_BF16}, {MS_WEIGHTS_I8, MS_COMPUTE_F32},
        {MS_WEIGHTS_Q4, MS_COMPUTE_F32}};
    enum { NS = 5, NC = 3, V = 512 };
    /* Per round: the single rows (NS or none) and the chunks' lengths. */
    static const struct { int singles; size_t lens[NC]; } rounds[] = {
        {NS, {1}}, {NS, {5}}, {NS, {20}}, {NS, {3, 20, 1}}, {0, {7, 2, 20}}, {0, {6}}};
    for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
        ms_load_opts lo = {.weights = fmts[f].w, .compute = fmts[f].c};
        ms_error err;
        ms_model *m;
        cr_assert_eq(ms_model_load(p, &lo, &m, &err), MS_OK, "%s", err.msg);
        ms_ctx *c = ms_ctx_new(m, 64);
        ms_state *a[NS + NC], *b[NS + NC], *ka = ms_state_new(m), *kb = ms_state_new(m);
        float *la = malloc(sizeof(float) * (NS + NC) * V);
        float *lb = malloc(sizeof(float) * (NS + NC) * V);
        float *pa[NS], *pb[NS];
        int32_t hist[40], next[NS], chunk[NC][20];
        for (int i = 0; i < NS + NC; i++) {
            a[i] = ms_state_new(m);
            b[i] = ms_state_new(m);
            sequence(hist, (size_t)(3 + 4 * i), V);
            cr_assert_eq(ms_forward(c, a[i], hist, (size_t)(3 + 4 * i), NULL, 0, &err), MS_OK);
            ms_state_copy(b[i], a[i]);
        }
        for (int i = 0; i < NS; i++) {
            next[i] = (int32_t)((i * 77 + 3) % V);
            pa[i] = i == 2 ? NULL : la + (size_t)i * V;
            pb[i] = i == 2 ? NULL : lb + (size_t)i * V;
        }
        for (size_t r = 0; r < sizeof rounds / sizeof rounds[0]; r++) {
            const int ns = rounds[r].singles;
            ms_chunk ck[NC];
            size_t nc = 0;
            if (ns)
                cr_assert_eq(ms_step_batch(c, a, next, NS, pa, &err), MS_OK, "%s", err.msg);
            for (int i = 0; i < NC && rounds[r].lens[i]; i++, nc++) {
                for (size_t t = 0; t < rounds[r].lens[i]; t++)
                    chunk[i][t] = (int32_t)((t * 31 + r * 7 + (size_t)i * 5 + 1) % V);
                float *out = i == 1 ? NULL : la + (size_t)(NS + i) * V; /* chunk 1: no logits */
                if (i == 0) { /* chunk 0 keeps a checkpoint: its state before the last token */
                    ms_state_copy(ka, a[NS]);
                    cr_assert_eq(ms_forward(c, ka, chunk[0], rounds[r].lens[0] - 1, NULL, 0, &err),
                                 MS_OK);
                    ms_state_reset(kb);
                }
                cr_assert_eq(ms_forward(c, a[NS + i], chunk[i], rounds[r].lens[i], out, 0, &err),
                             MS_OK);
                ck[i] = (ms_chunk){b[NS + i], chunk[i], rounds[r].lens[i],
                                   out ? lb + (size_t)(NS + i) * V : NULL, i ? NULL : kb};
            }
            cr_assert_eq(ms_forward_mixed(c, b, next, (size_t)ns, pb, ck, nc, &err), MS_OK, "%s",
                         err.msg);
            /* sgemm's rows may depend on the chunk's length: there the
             * checkpoint is one row short of a longer product */
            const int gemm = !strcmp(isa, "scalar") && fmts[f].c == MS_COMPUTE_F32 &&
                             fmts[f].w != MS_WEIGHTS_I8 && fmts[f].w != MS_WEIGHTS_Q4 &&
                             rounds[r].lens[0] > K_MAX_BATCH;
            if (gemm)
                cr_expect_lt(diff(ms_state_cdata(ka), ms_state_cdata(kb), ms_state_nfloats(ka)),
                             1e-4, "%s fmt %zu round %zu: the checkpoint differs", isa, f, r);
            else
                cr_expect_eq(memcmp(ms_state_cdata(ka), ms_state_cdata(kb),
                                    ms_state_nfloats(ka) * 4),
                             0, "%s fmt %zu round %zu: the checkpoint differs", isa, f, r);
            for (int i = 0; i < NS + NC; i++) {
                cr_expect_eq(memcmp(ms_state_cdata(a[i]), ms_state_cdata(b[i]),
                                    ms_state_nfloats(a[i]) * 4), 0,
                             "%s fmt %zu round %zu: state %d differs", isa, f, r, i);
                if (i >= NS ? (size_t)(i - NS) < nc && i != NS + 1 : ns && pa[i])
                    cr_expect_eq(memcmp(la + (size_t)i * V, lb + (size_t)i * V, V * 4), 0,
                                 "%s fmt %zu round %zu: logits %d differ", isa, f, r, i);
            }
            for (int i = 0; i < NS; i++)
                next[i] = (next[i] + 11) % V;
        }
        int32_t big[64] = {0};
        ms_chunk bad = {b[NS], big, 64, NULL, NULL};
        cr_expect_eq(ms_forward_mixed(c, b, next, NS, pb, &bad, 1, &err), MS_ERR_INVALID,
                     "a chunk that does not fit the context is refused");
        ms_chunk two[2] = {{b[NS], big, 2, NULL, NULL}, {b[NS], big, 3, NULL, NULL}};
        cr_expect_eq(ms_forward_mixed(c, b, next, NS, pb, two, 2, &err), MS_ERR_INVALID,
                     "two chunks of one state are refused");
        two[1].state = b[1];
        cr_expect_eq(ms_forward_mixed(c, b, next, NS, pb, two, 2, &err), MS_ERR_INVALID,
                     "a chunk of a decoded sequence's state is refused");
        ms_chunk many[MS_MAX_CHUNKS + 1];
        for (int i = 0; i <= MS_MAX_CHUNKS; i++)
            many[i] = (ms_chunk){b[NS], big, 0, NULL, NULL};
        cr_expect_eq(ms_forward_mixed(c, b, next, NS, pb, many, MS_MAX_CHUNKS + 1, &err),
                     MS_ERR_INVALID, "more than MS_MAX_CHUNKS chunks are refused");
        for (int i = 0; i < NS + NC; i++) {
            cr_expect_eq(memcmp(ms_state_cdata(a[i]), ms_state_cdata(b[i]),
                                ms_state_nfloats(a[i]) * 4), 0,
                         "a refused call changed state %d", i);
            ms_state_free(a[i]);
            ms_state_free(b[i]);
        }
        ms_state_free(ka);
        ms_state_free(kb);
        free(la);
        free(lb);
        ms_ctx_free(c);
        ms_model_free(m);
    }
}

Test(model, mixed_chunk_and_batch_equal_separate_calls_amx) { mixed_case(NULL, "amx"); }
Test(model, mixed_chunk_and_batch_equal_separate_calls_avx512) { mixed_case(NULL, "avx512"); }
Test(model, mixed_chunk_and_batch_equal_separate_calls_avx2) { mixed_case(NULL, "avx2"); }
Test(model, mixed_chunk_and_batch_equal_separate_calls_scalar) { mixed_case(NULL, "scalar"); }
Test(model, mixed_chunk_and_batch_equal_separate_calls_meta_state) { mixed_case("all", "avx512"); }
Test(model, mixed_chunk_and_batch_equal_separate_calls_meta_state_amx) { mixed_case("all", "amx"); }
Test(model, mixed_chunk_and_batch_equal_separate_calls_meta_state_avx2) { mixed_case("all", "avx2"); }

/* Token-by-token steps with f32 weights on one kernel variant: the final
 * state and every step's logits. */
static void steps_on(const char *isa, const char *path, float *state, size_t nstate,
                     float *logits, int n, int V)
{
    cr_assert_eq(k_force_isa(isa), 0);
    ms_load_opts lo = {.weights = MS_WEIGHTS_F32};
    ms_error err;
    ms_model *m;
    cr_assert_eq(ms_model_load(path, &lo, &m, &err), MS_OK, "%s", err.msg);
    ms_ctx *c = ms_ctx_new(m, 16);
    ms_state *s = ms_state_new(m);
    int32_t toks[64];
    sequence(toks, (size_t)n, V);
    for (int t = 0; t < n; t++)
        cr_assert_eq(ms_step(c, s, toks[t], logits + (size_t)t * V, &err), MS_OK, "%s", err.msg);
    cr_assert_eq(ms_state_nfloats(s), nstate);
    memcpy(state, ms_state_cdata(s), nstate * sizeof(float));
    ms_state_free(s);
    ms_ctx_free(c);
    ms_model_free(m);
}

/* The AVX2 and AVX-512 variants compute the same numbers in the same order
 * (the products, and the WKV step's fused multiply-adds and sums, which
 * AVX-512 does sixteen rows at a time): a session may move between
 * machines of either kind without its numbers changing. */
Test(model, avx2_and_avx512_steps_equal_bit_for_bit)
{
    if (k_force_isa("avx2") || k_force_isa("avx512"))
        cr_skip_test("this CPU lacks AVX2 or AVX-512");
    char p[300];
    gen("isa.safetensors", "f32", p, sizeof p);
    enum { N = 24, V = 512 };
    ms_load_opts lo = {.weights = MS_WEIGHTS_F32};
    ms_error err;
    ms_model *m;
    cr_assert_eq(ms_model_load(p, &lo, &m, &err), MS_OK, "%s", err.msg);
    ms_state *probe = ms_state_new(m);
    const size_t ns = ms_state_nfloats(probe);
    ms_state_free(probe);
    ms_model_free(m);
    float *s2 = malloc(ns * 4), *s5 = malloc(ns * 4), *l2 = malloc(N * V * 4), *l5 = malloc(N * V * 4);
    steps_on("avx2", p, s2, ns, l2, N, V);
    steps_on("avx512", p, s5, ns, l5, N, V);
    cr_expect_eq(memcmp(s2, s5, ns * 4), 0, "states differ");
    cr_expect_eq(memcmp(l2, l5, (size_t)N * V * 4), 0, "logits differ");
    free(s2);
    free(s5);
    free(l2);
    free(l5);
}

/* Prefill chunks longer than a decode batch take the same kernels as
 * token-by-token steps wherever the CPU has AVX2 (not OpenBLAS sgemm, which
 * sums in its own order): a prompt gives the same bits whether it came in
 * one request or token by token, for f32 and exact bf16 weights. */
static void prefill_equals_steps_on(const char *isa)
{
    if (k_force_isa(isa))
        cr_skip_test("CPU lacks %s", isa);
    char p[300];
    gen("pf.safetensors", "bf16", p, sizeof p);
    enum { T = 40, V = 512 };
    int32_t toks[T];
    sequence(toks, T, V);
    static const ms_weights fmts[] = {MS_WEIGHTS_F32, MS_WEIGHTS_BF16};
    for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
        ms_load_opts lo = {.weights = fmts[f]};
        ms_error err;
        ms_model *m;
        cr_assert_eq(ms_model_load(p, &lo, &m, &err), MS_OK, "%s", err.msg);
        ms_ctx *c1 = ms_ctx_new(m, 1), *c = ms_ctx_new(m, 64);
        ms_state *a = ms_state_new(m), *b = ms_state_new(m);
        float *la = malloc(sizeof(float) * T * V), *lb = malloc(sizeof(float) * T * V);
        for (int t = 0; t < T; t++)
            cr_assert_eq(ms_step(c1, a, toks[t], la + (size_t)t * V, &err), MS_OK, "%s", err.msg);
        cr_assert_eq(ms_forward(c, b, toks, T, lb, 1, &err), MS_OK, "%s", err.msg);
        cr_expect_eq(memcmp(ms_state_cdata(a), ms_state_cdata(b), ms_state_nfloats(a) * 4), 0,
                     "%s weights %zu: states differ", isa, f);
        cr_expect_eq(memcmp(la, lb, sizeof(float) * T * V), 0, "%s weights %zu: logits differ",
                     isa, f);
        free(la);
        free(lb);
        ms_state_free(a);
        ms_state_free(b);
        ms_ctx_free(c);
        ms_ctx_free(c1);
        ms_model_free(m);
    }
}

Test(model, prefill_equals_steps_bit_for_bit_avx2) { prefill_equals_steps_on("avx2"); }
Test(model, prefill_equals_steps_bit_for_bit_avx512) { prefill_equals_steps_on("avx512"); }

/* The FFN runs in parts whose sums are added in a fixed order (model.h
 * FFN_PARTS): on no more threads than parts a thread takes a whole part,
 * on more every product is shared out. Either way a step, and a chunk short
 * enough for the decode kernels, must give the same bits for any thread
 * count, so a session's numbers do not depend on the server's --threads.
 * Through the real binary, since the pool's size is set once per process. */
Test(model, steps_equal_bit_for_bit_on_any_thread_count, .timeout = 300)
{
    const char *bin = getenv("METASTATE_BIN");
    if (!bin || !*bin || access(bin, X_OK))
        cr_skip_test("METASTATE_BIN not set; run through make test");
    char p[300];
    gen("threads.safetensors", "bf16", p, sizeof p);
    static const char *const formats[][2] = {
        {"f32", "f32"}, {"bf16", "f32"}, {"bf16", "bf16"}, {"int8", "f32"}, {"q4", "f32"}};
    static const char *const modes[] = {"rnn", "seq"};
    const char *tokens = "5,77,301,12,499,3,260,41,8,150,33,402";
    for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++)
        for (size_t mo = 0; mo < 2; mo++) {
            uint8_t *first = NULL;
            size_t n_first = 0;
            for (int threads = 1; threads <= 3; threads++) {
                char out[300], cmd[1200];
                snprintf(out, sizeof out, "%s/threads-%d.safetensors", dir, threads);
                snprintf(cmd, sizeof cmd,
                         "'%s' eval --model '%s' --tokens %s --mode %s --weights %s "
                         "--compute %s --threads %d --out '%s'",
                         bin, p, tokens, modes[mo], formats[f][0], formats[f][1], threads, out);
                cr_assert_eq(system(cmd), 0, "%s", cmd);
                size_t n;
                uint8_t *got = read_file_bytes(out, &n);
                if (!first) {
                    first = got;
                    n_first = n;
                    continue;
                }
                cr_expect(n == n_first && !memcmp(first, got, n),
                          "%s/%s %s: %d threads differ from 1", formats[f][0], formats[f][1],
                          modes[mo], threads);
                free(got);
            }
            free(first);
        }
}
