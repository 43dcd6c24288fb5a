/*
 * test_init_state.c - ms_state_load_time_state: state-tuning files (SPEC 4.3)
 * as initial states. Values land as-is in the canonical layout, the shift
 * tensors are optional, a file with a whole model merged in is accepted,
 * files for another model are refused with messages naming the file and
 * the tensor (and leave the state untouched), and running from a loaded
 * state equals running from the same values copied in.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"

/* gen-model --preset tiny: */
#define L 2
#define C 128
#define H 2
#define N 64
#define HNN (H * N * N)

static char dir[256];
static char model_path[300];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/ms-test-initstate-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(model_path, sizeof model_path, "%s/m.safetensors", dir);
    char *argv[] = {"gen-model", "--preset", "tiny", "--vocab-size", "512", "--seed", "3",
                    "--out", model_path, NULL};
    cr_assert_eq(cmd_gen_model(9, argv), 0);
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(init_state, .init = setup, .fini = teardown, .timeout = 120);

/* A state-tuning fixture: per layer time_state, and optionally the two
 * ts_state shifts, with values that tell every element apart. */
typedef struct {
    float wkv[L][HNN];
    float att[L][C], ffn[L][C];
    char names[3 * L][48];
    ms_tensor t[3 * L + 1];
    size_t n;
} fixture;

static float wkv_val(int l, int i) { return (float)(l + 1) * 0.25f + (float)(i % 977) / 1024.0f - 0.5f; }
static float att_val(int l, int i) { return (float)(l + 1) * -0.5f + (float)i / 256.0f; }
static float ffn_val(int l, int i) { return (float)(l + 1) * 0.75f - (float)i / 512.0f; }

static ms_tensor f32_tensor(const char *name, const float *data, int ndim, int64_t d0, int64_t d1,
                            int64_t d2)
{
    ms_tensor t = {.name = name, .dtype = MS_F32, .ndim = ndim, .shape = {d0, d1, d2}, .data = data};
    t.nbytes = (size_t)ms_tensor_numel(&t) * sizeof(float);
    return t;
}

/* Fills f for n_layers layers (time_state only unless with_ts). */
static void fixture_init(fixture *f, int n_layers, int with_ts)
{
    memset(f, 0, sizeof *f);
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < HNN; i++) f->wkv[l][i] = wkv_val(l, i);
        for (int i = 0; i < C; i++) {
            f->att[l][i] = att_val(l, i);
            f->ffn[l][i] = ffn_val(l, i);
        }
    }
    for (int l = 0; l < n_layers; l++) {
        char *nm = f->names[f->n];
        snprintf(nm, 48, "blocks.%d.att.time_state", l);
        f->t[f->n++] = f32_tensor(nm, f->wkv[l % L], 3, H, N, N);
        if (!with_ts) continue;
        nm = f->names[f->n];
        snprintf(nm, 48, "blocks.%d.att.ts_state", l);
        f->t[f->n++] = f32_tensor(nm, f->att[l % L], 1, C, 0, 0);
        nm = f->names[f->n];
        snprintf(nm, 48, "blocks.%d.ffn.ts_state", l);
        f->t[f->n++] = f32_tensor(nm, f->ffn[l % L], 1, C, 0, 0);
    }
}

static void write_st(const char *path, const ms_tensor *t, size_t n)
{
    ms_error e = {0};
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    cr_assert_eq(ms_safetensors_write(fp, t, n, NULL, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(fclose(fp), 0);
}

static ms_model *load_model(void)
{
    ms_error e = {0};
    ms_model *m = NULL;
    cr_assert_eq(ms_model_load(model_path, NULL, &m, &e), MS_OK, "%s", e.msg);
    return m;
}

/* Loads path into s; returns the status, message in e. */
static ms_status load_into(ms_state *s, const char *path, ms_error *e)
{
    ms_tensorfile *tf = NULL;
    cr_assert_eq(ms_tensorfile_open(path, &tf, e), MS_OK, "%s", e->msg);
    ms_status st = ms_state_load_time_state(s, tf, e);
    ms_tensorfile_close(tf);
    return st;
}

static void expect_values(ms_state *s, int with_ts)
{
    for (int l = 0; l < L; l++) {
        const float *w = ms_state_wkv(s, l), *a = ms_state_att_shift(s, l),
                    *f = ms_state_ffn_shift(s, l);
        for (int i = 0; i < HNN; i++)
            cr_assert_eq(w[i], wkv_val(l, i), "layer %d wkv[%d] = %g", l, i, w[i]);
        for (int i = 0; i < C; i++) {
            cr_assert_eq(a[i], with_ts ? att_val(l, i) : 0.0f, "layer %d att_shift[%d]", l, i);
            cr_assert_eq(f[i], with_ts ? ffn_val(l, i) : 0.0f, "layer %d ffn_shift[%d]", l, i);
        }
    }
}

static void fill_junk(ms_state *s)
{
    float *d = ms_state_data(s);
    for (size_t i = 0; i < ms_state_nfloats(s); i++) d[i] = 42.0f + (float)(i % 7);
}

Test(init_state, values_land_as_is_with_shifts)
{
    static fixture f;
    fixture_init(&f, L, 1);
    char path[320];
    snprintf(path, sizeof path, "%s/s.safetensors", dir);
    write_st(path, f.t, f.n);
    ms_model *m = load_model();
    ms_state *s = ms_state_new(m);
    ms_error e = {0};
    cr_assert_eq(load_into(s, path, &e), MS_OK, "%s", e.msg);
    expect_values(s, 1);
    /* Canonical layout, no transpose: S[h][i][j] at h*N*N + i*N + j. */
    cr_assert_eq(ms_state_wkv(s, 1)[1 * N * N + 3 * N + 5], wkv_val(1, N * N + 3 * N + 5));
    ms_state_free(s);
    ms_model_free(m);
}

Test(init_state, pth_without_ts_state_zeroes_the_shifts)
{
    static fixture f;
    fixture_init(&f, L, 0);
    char path[320];
    snprintf(path, sizeof path, "%s/s.pth", dir);
    ms_error e = {0};
    cr_assert_eq(ms_pth_write(path, f.t, f.n, &e), MS_OK, "%s", e.msg);
    ms_model *m = load_model();
    ms_state *s = ms_state_new(m);
    fill_junk(s); /* whatever s held before must not leak through */
    cr_assert_eq(load_into(s, path, &e), MS_OK, "%s", e.msg);
    expect_values(s, 0);
    ms_state_free(s);
    ms_model_free(m);
}

Test(init_state, bf16_time_state_is_widened)
{
    /* Trainers often save bf16: values exactly representable survive. */
    static uint16_t bf[L][HNN];
    static fixture f;
    fixture_init(&f, L, 0);
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < HNN; i++) {
            float v = (float)((i % 64) - 32) / 8.0f;
            uint32_t u;
            memcpy(&u, &v, 4);
            bf[l][i] = (uint16_t)(u >> 16);
        }
        f.t[l].dtype = MS_BF16;
        f.t[l].data = bf[l];
        f.t[l].nbytes = HNN * 2;
    }
    char path[320];
    snprintf(path, sizeof path, "%s/bf.pth", dir);
    ms_error e = {0};
    cr_assert_eq(ms_pth_write(path, f.t, f.n, &e), MS_OK, "%s", e.msg);
    ms_model *m = load_model();
    ms_state *s = ms_state_new(m);
    cr_assert_eq(load_into(s, path, &e), MS_OK, "%s", e.msg);
    for (int l = 0; l < L; l++)
        for (int i = 0; i < HNN; i++)
            cr_assert_eq(ms_state_wkv(s, l)[i], (float)((i % 64) - 32) / 8.0f);
    ms_state_free(s);
    ms_model_free(m);
}

Test(init_state, merged_into_the_model_file)
{
    /* The merge tools copy the state keys into the model's dict: the file is
     * both a model and a state. */
    static fixture f;
    fixture_init(&f, L, 1);
    ms_error e = {0};
    ms_tensorfile *mt = NULL;
    cr_assert_eq(ms_tensorfile_open(model_path, &mt, &e), MS_OK, "%s", e.msg);
    size_t nm = ms_tensorfile_count(mt);
    ms_tensor *all = calloc(nm + f.n, sizeof *all);
    cr_assert_not_null(all);
    for (size_t i = 0; i < nm; i++) all[i] = *ms_tensorfile_at(mt, i);
    memcpy(all + nm, f.t, f.n * sizeof *all);
    char st_path[320], pth_path[320];
    snprintf(st_path, sizeof st_path, "%s/merged.safetensors", dir);
    snprintf(pth_path, sizeof pth_path, "%s/merged.pth", dir);
    write_st(st_path, all, nm + f.n);
    cr_assert_eq(ms_pth_write(pth_path, all, nm + f.n, &e), MS_OK, "%s", e.msg);
    free(all);
    ms_tensorfile_close(mt);

    ms_model *m = load_model();
    ms_state *s = ms_state_new(m);
    const char *paths[] = {st_path, pth_path};
    for (int k = 0; k < 2; k++) {
        ms_state_reset(s);
        cr_assert_eq(load_into(s, paths[k], &e), MS_OK, "%s", e.msg);
        expect_values(s, 1);
    }
    /* ... and the merged file still loads as the model itself. */
    ms_model *m2 = NULL;
    cr_assert_eq(ms_model_load(st_path, NULL, &m2, &e), MS_OK, "%s", e.msg);
    ms_model_free(m2);
    ms_state_free(s);
    ms_model_free(m);
}

/* Writes f (as edited by the caller) and expects load to fail with code,
 * a message naming the file and containing needle, and s unchanged. */
static void expect_refused(const fixture *f, const char *file, ms_status code, const char *needle)
{
    char path[320];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    write_st(path, f->t, f->n);
    ms_model *m = load_model();
    ms_state *s = ms_state_new(m), *before = ms_state_new(m);
    fill_junk(s);
    ms_state_copy(before, s);
    ms_error e = {0};
    ms_status st = load_into(s, path, &e);
    cr_assert_eq(st, code, "status %d (%s), expected %d", st, e.msg, code);
    cr_assert(strstr(e.msg, path), "message does not name the file: %s", e.msg);
    cr_assert(strstr(e.msg, needle), "message lacks '%s': %s", needle, e.msg);
    cr_assert_eq(memcmp(ms_state_cdata(s), ms_state_cdata(before), ms_state_nfloats(s) * 4), 0,
                 "a refused file changed the state");
    ms_state_free(s);
    ms_state_free(before);
    ms_model_free(m);
}

Test(init_state, wrong_layer_count_is_refused)
{
    static fixture f;
    fixture_init(&f, 3, 0);
    expect_refused(&f, "deep.safetensors", MS_ERR_MISMATCH, "time_state for 3 layers, the model has 2");
    fixture_init(&f, 1, 0);
    expect_refused(&f, "shallow.safetensors", MS_ERR_MISMATCH, "time_state for 1 layers, the model has 2");
}

Test(init_state, missing_layer_is_named)
{
    /* Two time_state tensors, but for layers 0 and 2: layer 1 is missing. */
    static fixture f;
    fixture_init(&f, 2, 0);
    f.t[1].name = "blocks.2.att.time_state";
    expect_refused(&f, "gap.safetensors", MS_ERR_MISSING, "'blocks.1.att.time_state'");
}

Test(init_state, model_file_is_not_a_state)
{
    ms_model *m = load_model();
    ms_state *s = ms_state_new(m);
    ms_error e = {0};
    cr_assert_eq(load_into(s, model_path, &e), MS_ERR_MISSING);
    cr_assert(strstr(e.msg, model_path) && strstr(e.msg, "not a state-tuning file"), "%s", e.msg);
    ms_state_free(s);
    ms_model_free(m);
}

Test(init_state, wrong_shapes_are_refused)
{
    static fixture f;
    /* (H, N, N/2): same layer count, wrong head size */
    fixture_init(&f, L, 1);
    f.t[3].shape[2] = N / 2;
    f.t[3].nbytes /= 2;
    expect_refused(&f, "half.safetensors", MS_ERR_SHAPE,
                   "'blocks.1.att.time_state' has shape (2, 64, 32), the model needs (2, 64, 64)");
    /* (2H, N/2, N): H*N == C still, but not square heads */
    fixture_init(&f, L, 1);
    f.t[0].shape[0] = 2 * H;
    f.t[0].shape[1] = N / 2;
    expect_refused(&f, "heads.safetensors", MS_ERR_SHAPE, "'blocks.0.att.time_state' has shape (4, 32, 64)");
    /* flattened (H*N*N) */
    fixture_init(&f, L, 0);
    f.t[0].ndim = 1;
    f.t[0].shape[0] = HNN;
    expect_refused(&f, "flat.safetensors", MS_ERR_SHAPE, "'blocks.0.att.time_state' has shape (8192)");
    /* a shift of the wrong size */
    fixture_init(&f, L, 1);
    f.t[5].shape[0] = C / 2;
    f.t[5].nbytes /= 2;
    expect_refused(&f, "shift.safetensors", MS_ERR_SHAPE,
                   "'blocks.1.ffn.ts_state' has shape (64), the model needs (128)");
}

Test(init_state, running_from_a_loaded_state_equals_copying_it_in)
{
    static fixture f;
    fixture_init(&f, L, 1);
    char path[320];
    snprintf(path, sizeof path, "%s/s.safetensors", dir);
    write_st(path, f.t, f.n);
    ms_model *m = load_model();
    const ms_config *cfg = ms_model_config(m);
    ms_state *a = ms_state_new(m), *src = ms_state_new(m), *b = ms_state_new(m), *z = ms_state_new(m);
    ms_error e = {0};
    cr_assert_eq(load_into(a, path, &e), MS_OK, "%s", e.msg);
    for (int l = 0; l < L; l++) {
        memcpy(ms_state_wkv(src, l), f.wkv[l], sizeof f.wkv[l]);
        memcpy(ms_state_att_shift(src, l), f.att[l], sizeof f.att[l]);
        memcpy(ms_state_ffn_shift(src, l), f.ffn[l], sizeof f.ffn[l]);
    }
    ms_state_copy(b, src);
    ms_ctx *c = ms_ctx_new(m, 8);
    size_t V = (size_t)cfg->vocab_size;
    float *la = malloc(V * 8 * sizeof(float)), *lb = malloc(V * 8 * sizeof(float)),
          *lz = malloc(V * sizeof(float));
    cr_assert(c && la && lb && lz);
    const int32_t toks[] = {11, 200, 7, 300, 45, 1, 99, 12, 13, 14, 511};
    /* prefill with every row's logits, then a few single steps */
    cr_assert_eq(ms_forward(c, a, toks, 8, la, 1, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(ms_forward(c, b, toks, 8, lb, 1, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(memcmp(la, lb, V * 8 * sizeof(float)), 0);
    for (int k = 8; k < 11; k++) {
        cr_assert_eq(ms_step(c, a, toks[k], la, &e), MS_OK, "%s", e.msg);
        cr_assert_eq(ms_step(c, b, toks[k], lb, &e), MS_OK, "%s", e.msg);
        cr_assert_eq(memcmp(la, lb, V * sizeof(float)), 0, "step %d", k);
    }
    cr_assert_eq(memcmp(ms_state_cdata(a), ms_state_cdata(b), ms_state_nfloats(a) * 4), 0);
    /* and the initial state matters: from zero the logits differ */
    cr_assert_eq(ms_forward(c, z, toks, 11, lz, 0, &e), MS_OK, "%s", e.msg);
    cr_assert_neq(memcmp(la, lz, V * sizeof(float)), 0);
    free(la);
    free(lb);
    free(lz);
    ms_ctx_free(c);
    ms_state_free(a);
    ms_state_free(b);
    ms_state_free(src);
    ms_state_free(z);
    ms_model_free(m);
}
