/*
 * test_tensorfile.c - safetensors / .pth reading and writing (suite
 * "tensorfile").
 *
 * Three kinds of checks: the golden .pth and .safetensors of the same model
 * must agree bit for bit; everything our writers produce must read back
 * unchanged; and every malformed file must fail with the right code and a
 * message naming the file, never crash (the suite also runs under ASan).
 * Fixtures are built at test time in a mkdtemp directory: some through our
 * writers, some through a tiny zip writer below so that hand-made pickles can
 * be fed to the reader.
 */
#include <criterion/criterion.h>

#include "shared_ref.h"
#include "file_bytes.h"
#include "engine.h"
#include "tensorfile_internal.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ======================================================================== */
/* Fixture helpers                                                           */
/* ======================================================================== */

static char g_dir[256]; /* per-test temp dir (each test runs in its own process) */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/ms_tensorfile_XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir), "mkdtemp failed");
}

static void teardown(void)
{
    if (g_dir[0])
        nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(tensorfile, .init = setup, .fini = teardown);

/* Path of `name` inside the test's temp dir. */
static void tmp_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_dir, name);
}

static void write_bytes(const char *path, const void *d, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot create %s", path);
    if (n)
        cr_assert_eq(fwrite(d, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

/* Opening `path` must fail with `code` and a message that names the file. */
static void expect_fail(const char *path, ms_status code)
{
    ms_tensorfile *tf = (ms_tensorfile *)1;
    ms_error e = {0};
    ms_status st = ms_tensorfile_open(path, &tf, &e);
    cr_expect_eq(st, code, "%s: expected %s, got %s (%s)", path, ms_status_str(code),
                 ms_status_str(st), e.msg);
    cr_expect_eq(e.code, st);
    cr_expect_null(tf);
    cr_expect_not_null(strstr(e.msg, path), "message does not name the file: %s", e.msg);
    if (st == MS_OK)
        ms_tensorfile_close(tf);
}

/* Opening must not crash; returns the status (for fuzzing). */
static ms_status try_open(const char *path)
{
    ms_tensorfile *tf = NULL;
    ms_error e = {0};
    ms_status st = ms_tensorfile_open(path, &tf, &e);
    if (st == MS_OK) {
        /* touch every byte of every view so ASan sees out-of-map reads */
        for (size_t i = 0; i < ms_tensorfile_count(tf); i++) {
            const ms_tensor *t = ms_tensorfile_at(tf, i);
            float *f = malloc((size_t)ms_tensor_numel(t) * 4 + 4);
            ms_tensor_to_f32(t, f);
            free(f);
        }
        ms_tensorfile_close(tf);
    } else {
        cr_expect_not_null(strstr(e.msg, path), "message does not name the file: %s", e.msg);
    }
    return st;
}

static uint64_t rng_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* ======================================================================== */
/* Sample tensors                                                            */
/* ======================================================================== */

typedef struct sample {
    ms_tensor t[6];
    float f32[6];
    uint16_t f16[4];
    uint16_t bf16[8];
    float scalar;
} sample;

/* Tensors of every dtype, a scalar and an empty one, with known values. */
static void make_sample(sample *s)
{
    memset(s, 0, sizeof *s);
    for (int i = 0; i < 6; i++)
        s->f32[i] = (float)i * 0.5f - 1.0f;
    const uint16_t h[4] = {0x3c00, 0xc000, 0x0001, 0x7c00};
    memcpy(s->f16, h, sizeof h);
    for (int i = 0; i < 8; i++)
        s->bf16[i] = (uint16_t)(0x3f80 + i);
    s->scalar = 3.25f;
    s->t[0] = (ms_tensor){.name = "blocks.0.att.w", .dtype = MS_F32, .ndim = 2, .shape = {2, 3},
                          .data = s->f32, .nbytes = sizeof s->f32};
    s->t[1] = (ms_tensor){.name = "half", .dtype = MS_F16, .ndim = 1, .shape = {4},
                          .data = s->f16, .nbytes = sizeof s->f16};
    s->t[2] = (ms_tensor){.name = "brain.float", .dtype = MS_BF16, .ndim = 3,
                          .shape = {2, 2, 2}, .data = s->bf16, .nbytes = sizeof s->bf16};
    s->t[3] = (ms_tensor){.name = "scalar", .dtype = MS_F32, .ndim = 0, .data = &s->scalar,
                          .nbytes = 4};
    s->t[4] = (ms_tensor){.name = "empty", .dtype = MS_F32, .ndim = 2, .shape = {0, 5},
                          .data = NULL, .nbytes = 0};
    s->t[5] = (ms_tensor){.name = "\xc3\xa9t\xc3\xa9 \"quoted\"", .dtype = MS_BF16, .ndim = 4,
                          .shape = {1, 2, 1, 4}, .data = s->bf16, .nbytes = sizeof s->bf16};
}

/* tf must hold exactly `n` tensors equal to ts (same order, bytes). */
static void expect_same(const ms_tensorfile *tf, const ms_tensor *ts, size_t n)
{
    cr_assert_eq(ms_tensorfile_count(tf), n);
    for (size_t i = 0; i < n; i++) {
        const ms_tensor *a = ms_tensorfile_at(tf, i), *b = &ts[i];
        cr_assert_str_eq(a->name, b->name);
        cr_assert_eq(ms_tensorfile_find(tf, b->name), a);
        cr_assert_eq(a->dtype, b->dtype, "%s", b->name);
        cr_assert_eq(a->ndim, b->ndim, "%s", b->name);
        for (int d = 0; d < b->ndim; d++)
            cr_assert_eq(a->shape[d], b->shape[d], "%s dim %d", b->name, d);
        cr_assert_eq(a->nbytes, b->nbytes, "%s", b->name);
        if (b->nbytes)
            cr_assert_eq(memcmp(a->data, b->data, b->nbytes), 0, "%s bytes differ", b->name);
    }
}

static void write_st(const char *path, const ms_tensor *ts, size_t n, const char *const *meta)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    ms_error e = {0};
    cr_assert_eq(ms_safetensors_write(f, ts, n, meta, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(fclose(f), 0);
}

/* ======================================================================== */
/* A minimal zip writer for hand-made checkpoints                            */
/* ======================================================================== */

typedef struct zfile {
    const char *name;
    const void *data;
    size_t n;
    uint16_t method;
} zfile;

static void le(FILE *f, uint64_t x, int n)
{
    for (int i = 0; i < n; i++)
        fputc((int)(x >> (8 * i)) & 0xff, f);
}

/* STORED entries, no padding, CRC left 0 (the reader does not check it). */
static void write_zip(const char *path, const zfile *fs, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    long *off = calloc(n, sizeof *off);
    for (size_t i = 0; i < n; i++) {
        off[i] = ftell(f);
        le(f, 0x04034b50, 4);
        le(f, 20, 2); le(f, 0, 2); le(f, fs[i].method, 2); le(f, 0, 4); le(f, 0, 4);
        le(f, fs[i].n, 4); le(f, fs[i].n, 4);
        le(f, strlen(fs[i].name), 2); le(f, 0, 2);
        fputs(fs[i].name, f);
        fwrite(fs[i].data, 1, fs[i].n, f);
    }
    long cd = ftell(f);
    for (size_t i = 0; i < n; i++) {
        le(f, 0x02014b50, 4);
        le(f, 20, 2); le(f, 20, 2); le(f, 0, 2); le(f, fs[i].method, 2); le(f, 0, 4);
        le(f, 0, 4); le(f, fs[i].n, 4); le(f, fs[i].n, 4);
        le(f, strlen(fs[i].name), 2); le(f, 0, 2); le(f, 0, 2); le(f, 0, 2); le(f, 0, 2);
        le(f, 0, 4); le(f, (uint64_t)off[i], 4);
        fputs(fs[i].name, f);
    }
    long end = ftell(f);
    le(f, 0x06054b50, 4);
    le(f, 0, 2); le(f, 0, 2); le(f, n, 2); le(f, n, 2);
    le(f, (uint64_t)(end - cd), 4); le(f, (uint64_t)cd, 4); le(f, 0, 2);
    free(off);
    cr_assert_eq(fclose(f), 0);
}

/* A checkpoint "archive/..." holding pickle `pkl` and one 16-byte storage "0"
 * with four F32 values 1, 2, 3, 4. */
static void write_pickle_pth(const char *path, const void *pkl, size_t n)
{
    static const float vals[4] = {1, 2, 3, 4};
    zfile fs[3] = {
        {"archive/data.pkl", pkl, n, 0},
        {"archive/data/0", vals, sizeof vals, 0},
        {"archive/version", "3\n", 2, 0},
    };
    write_zip(path, fs, 3);
}

/* Pickle pieces for a one-tensor dict {"w": tensor}; the %s slots let a test
 * change the storage type, sizes and strides. */
#define PK_HEAD "\x80\x02}q\x00X\x01\x00\x00\x00wq\x01" \
                "ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03"
#define PK_STYPE(t) "ctorch\n" t "\nq\x04X\x01\x00\x00\x00" "0q\x05X\x03\x00\x00\x00" "cpuq\x06K\x04tq\x07Q"
#define PK_TAIL "\x89" "ccollections\nOrderedDict\nq\x0a)Rq\x0btq\x0cRq\x0ds."

/* offset 0, size (2,2), stride (2,1): a valid 2x2 float tensor. */
static const char PK_GOOD[] = PK_HEAD PK_STYPE("FloatStorage")
    "K\x00K\x02K\x02\x86q\x08K\x02K\x01\x86q\x09" PK_TAIL;

/* ======================================================================== */
/* Golden files                                                              */
/* ======================================================================== */

/* Path of a golden file, or skips the test when the set is not installed. */
static void golden(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/golden/%s", shared_dir(), name);
    if (access(out, R_OK) != 0)
        teardown(); /* a skipped test does not reach .fini */
    require_reference_file(out);
}

static void compare_pth_st(const char *model)
{
    char a[1024], b[1024], n1[300], n2[300];
    snprintf(n1, sizeof n1, "%s.pth", model);
    snprintf(n2, sizeof n2, "%s.safetensors", model);
    golden(a, sizeof a, n1);
    golden(b, sizeof b, n2);
    ms_tensorfile *p, *s;
    ms_error e;
    cr_assert_eq(ms_tensorfile_open(a, &p, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(ms_tensorfile_open(b, &s, &e), MS_OK, "%s", e.msg);
    cr_assert_str_eq(ms_tensorfile_path(p), a);
    cr_assert_gt(ms_tensorfile_count(s), 60);
    cr_assert_eq(ms_tensorfile_count(p), ms_tensorfile_count(s));
    for (size_t i = 0; i < ms_tensorfile_count(s); i++) {
        const ms_tensor *ts = ms_tensorfile_at(s, i);
        const ms_tensor *tp = ms_tensorfile_find(p, ts->name);
        cr_assert_not_null(tp, "%s missing from the .pth", ts->name);
        cr_assert_str_eq(ms_tensorfile_at(p, i)->name, ts->name, "file order differs");
        cr_assert_eq(tp->dtype, ts->dtype, "%s", ts->name);
        cr_assert_eq(tp->ndim, ts->ndim, "%s", ts->name);
        for (int d = 0; d < ts->ndim; d++)
            cr_assert_eq(tp->shape[d], ts->shape[d], "%s", ts->name);
        cr_assert_eq(tp->nbytes, ts->nbytes, "%s", ts->name);
        cr_assert_eq(memcmp(tp->data, ts->data, ts->nbytes), 0, "%s: bytes differ", ts->name);
    }
    cr_assert_null(ms_tensorfile_meta(p, "format"));
    cr_assert_null(ms_tensorfile_at(p, ms_tensorfile_count(p)));
    ms_tensorfile_close(p);
    ms_tensorfile_close(s);
}

Test(tensorfile, golden_fp32_pth_equals_safetensors)
{
    compare_pth_st("tiny_l2_d128_fp32");
}

Test(tensorfile, golden_bf16_pth_equals_safetensors)
{
    compare_pth_st("tiny_l2_d128_bf16");
}

Test(tensorfile, golden_shapes_and_metadata)
{
    char path[1024];
    golden(path, sizeof path, "small_l3_d256_bf16.safetensors");
    ms_tensorfile *tf;
    ms_error e;
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    const ms_tensor *t = ms_tensorfile_find(tf, "emb.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, MS_BF16);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 1024);
    cr_assert_eq(t->shape[1], 256);
    cr_assert_eq(ms_tensor_numel(t), 1024 * 256);
    t = ms_tensorfile_find(tf, "blocks.1.att.r_k");
    cr_assert_not_null(t);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 4);
    cr_assert_eq(t->shape[1], 64);
    cr_assert_null(ms_tensorfile_find(tf, "blocks.0.att.v0"), "layer 0 has no v0");
    cr_assert_null(ms_tensorfile_find(tf, "nope"));
    cr_assert_str_eq(ms_tensorfile_meta(tf, "rwkv_arch"), "x070");
    cr_assert_null(ms_tensorfile_meta(tf, "no such key"));
    ms_tensorfile_close(tf);
}

/* The bf16 model is the fp32 one rounded to nearest even: widening it must
 * give exactly the rounded fp32 values. */
Test(tensorfile, golden_bf16_is_rounded_fp32)
{
    char a[1024], b[1024];
    golden(a, sizeof a, "tiny_l2_d128_fp32.safetensors");
    golden(b, sizeof b, "tiny_l2_d128_bf16.pth");
    ms_tensorfile *f32, *bf;
    ms_error e;
    cr_assert_eq(ms_tensorfile_open(a, &f32, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(ms_tensorfile_open(b, &bf, &e), MS_OK, "%s", e.msg);
    for (size_t i = 0; i < ms_tensorfile_count(f32); i++) {
        const ms_tensor *x = ms_tensorfile_at(f32, i);
        const ms_tensor *y = ms_tensorfile_find(bf, x->name);
        cr_assert_not_null(y);
        size_t n = (size_t)ms_tensor_numel(x);
        float *fx = malloc(n * 4), *fy = malloc(n * 4);
        ms_tensor_to_f32(x, fx);
        ms_tensor_to_f32(y, fy);
        for (size_t k = 0; k < n; k++) {
            uint32_t u;
            memcpy(&u, &fx[k], 4);
            u = (u + 0x7fffu + ((u >> 16) & 1)) & 0xffff0000u;
            float r;
            memcpy(&r, &u, 4);
            cr_assert_eq(r, fy[k], "%s[%zu]: %a rounds to %a, file has %a", x->name, k,
                         (double)fx[k], (double)r, (double)fy[k]);
        }
        free(fx);
        free(fy);
    }
    ms_tensorfile_close(f32);
    ms_tensorfile_close(bf);
}

/* ======================================================================== */
/* Conversions                                                               */
/* ======================================================================== */

static float conv1(ms_dtype d, uint16_t bits)
{
    ms_tensor t = {.name = "x", .dtype = d, .ndim = 1, .shape = {1}, .data = &bits, .nbytes = 2};
    float f = -12345.0f;
    ms_tensor_to_f32(&t, &f);
    return f;
}

Test(tensorfile, f16_values)
{
    cr_assert_eq(conv1(MS_F16, 0x0000), 0.0f);
    cr_assert(signbit(conv1(MS_F16, 0x8000)) && conv1(MS_F16, 0x8000) == 0.0f);
    cr_assert_eq(conv1(MS_F16, 0x3c00), 1.0f);
    cr_assert_eq(conv1(MS_F16, 0xc000), -2.0f);
    cr_assert_eq(conv1(MS_F16, 0x3555), 0.333251953125f);
    cr_assert_eq(conv1(MS_F16, 0x7bff), 65504.0f);
    cr_assert_eq(conv1(MS_F16, 0x0400), ldexpf(1.0f, -14));    /* smallest normal */
    cr_assert_eq(conv1(MS_F16, 0x0001), ldexpf(1.0f, -24));    /* smallest subnormal */
    cr_assert_eq(conv1(MS_F16, 0x03ff), ldexpf(1023.0f, -24)); /* largest subnormal */
    cr_assert_eq(conv1(MS_F16, 0x0200), ldexpf(1.0f, -15));
    cr_assert_eq(conv1(MS_F16, 0x8001), -ldexpf(1.0f, -24));
    cr_assert(isinf(conv1(MS_F16, 0x7c00)) && conv1(MS_F16, 0x7c00) > 0);
    cr_assert(isinf(conv1(MS_F16, 0xfc00)) && conv1(MS_F16, 0xfc00) < 0);
    cr_assert(isnan(conv1(MS_F16, 0x7e00)));
    cr_assert(isnan(conv1(MS_F16, 0xfc01)));
    /* every finite half round-trips through float exactly: check monotony */
    float prev = -INFINITY;
    for (uint32_t h = 0xfbff; h >= 0x8000; h--) { /* negatives, decreasing magnitude */
        float f = conv1(MS_F16, (uint16_t)h);
        cr_assert(f > prev || (f == 0 && prev == 0), "half %04x", h);
        prev = f;
    }
    for (uint32_t h = 0x0000; h <= 0x7bff; h++) {
        float f = conv1(MS_F16, (uint16_t)h);
        cr_assert(f > prev || (h == 0 && f == 0), "half %04x", h);
        prev = f;
    }
}

Test(tensorfile, bf16_values)
{
    cr_assert_eq(conv1(MS_BF16, 0x3f80), 1.0f);
    cr_assert_eq(conv1(MS_BF16, 0xc049), -3.140625f);
    cr_assert_eq(conv1(MS_BF16, 0x0001), ldexpf(1.0f, -133));
    cr_assert(signbit(conv1(MS_BF16, 0x8000)));
    cr_assert(isinf(conv1(MS_BF16, 0x7f80)));
    cr_assert(isnan(conv1(MS_BF16, 0x7fc0)));
    /* unaligned source */
    uint8_t raw[7] = {0xaa, 0x80, 0x3f, 0x00, 0x40, 0x80, 0xbf};
    ms_tensor t = {.name = "u", .dtype = MS_BF16, .ndim = 1, .shape = {3}, .data = raw + 1,
                   .nbytes = 6};
    float f[3];
    ms_tensor_to_f32(&t, f);
    cr_assert_eq(f[0], 1.0f);
    cr_assert_eq(f[1], 2.0f);
    cr_assert_eq(f[2], -1.0f);
}

Test(tensorfile, f32_unaligned_and_numel)
{
    uint8_t raw[9];
    float v[2] = {1.5f, -7.0f}, out[2];
    memcpy(raw + 1, v, 8);
    ms_tensor t = {.name = "u", .dtype = MS_F32, .ndim = 2, .shape = {1, 2}, .data = raw + 1,
                   .nbytes = 8};
    ms_tensor_to_f32(&t, out);
    cr_assert_eq(out[0], 1.5f);
    cr_assert_eq(out[1], -7.0f);
    cr_assert_eq(ms_tensor_numel(&t), 2);
    ms_tensor s = {.ndim = 0};
    cr_assert_eq(ms_tensor_numel(&s), 1);
    ms_tensor z = {.ndim = 3, .shape = {4, 0, 2}};
    cr_assert_eq(ms_tensor_numel(&z), 0);
    cr_assert_eq(ms_dtype_size(MS_F32), 4);
    cr_assert_eq(ms_dtype_size(MS_BF16), 2);
    cr_assert_str_eq(ms_dtype_name(MS_F16), "F16");
}

/* ======================================================================== */
/* Round trips                                                               */
/* ======================================================================== */

Test(tensorfile, safetensors_round_trip)
{
    sample s;
    make_sample(&s);
    char path[512];
    tmp_path(path, sizeof path, "rt.safetensors");
    const char *meta[] = {"format", "pt", "note", "a \"quoted\"\nvalue", NULL};
    write_st(path, s.t, 6, meta);

    size_t n;
    uint8_t *raw = read_file_bytes(path, &n);
    uint64_t hlen = 0;
    memcpy(&hlen, raw, 8);
    cr_assert_eq(hlen % 8, 0, "header not padded to 8");
    cr_assert_eq(raw[8], '{');
    free(raw);

    ms_tensorfile *tf;
    ms_error e;
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    expect_same(tf, s.t, 6);
    cr_assert_str_eq(ms_tensorfile_meta(tf, "format"), "pt");
    cr_assert_str_eq(ms_tensorfile_meta(tf, "note"), "a \"quoted\"\nvalue");
    float f[4];
    ms_tensor_to_f32(ms_tensorfile_find(tf, "half"), f);
    cr_assert_eq(f[0], 1.0f);
    cr_assert_eq(f[1], -2.0f);
    cr_assert_eq(f[2], ldexpf(1.0f, -24));
    cr_assert(isinf(f[3]));
    ms_tensorfile_close(tf);

    /* no tensors, no metadata: still a valid file */
    write_st(path, NULL, 0, NULL);
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(ms_tensorfile_count(tf), 0);
    cr_assert_null(ms_tensorfile_find(tf, "x"));
    ms_tensorfile_close(tf);
}

static void pth_round_trip(int zip64)
{
    sample s;
    make_sample(&s);
    char path[512];
    tmp_path(path, sizeof path, "rt.pth");
    ms_error e;
    if (zip64)
        cr_assert_eq(ms_pth_write_zip64(path, s.t, 6, &e), MS_OK, "%s", e.msg);
    else
        cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_OK, "%s", e.msg);
    ms_tensorfile *tf;
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    expect_same(tf, s.t, 6);
    cr_assert_null(ms_tensorfile_meta(tf, "format"));
    /* torch needs storages 64-byte aligned in the file; the map is page aligned */
    for (size_t i = 0; i < 6; i++)
        if (ms_tensorfile_at(tf, i)->nbytes)
            cr_assert_eq((uintptr_t)ms_tensorfile_at(tf, i)->data % 64, 0, "tensor %zu", i);
    ms_tensorfile_close(tf);

    /* the zip layout torch expects */
    size_t n;
    uint8_t *raw = read_file_bytes(path, &n);
    cr_assert(memmem(raw, n, "archive/data.pkl", 16));
    cr_assert(memmem(raw, n, "archive/byteorder", 17));
    cr_assert(memmem(raw, n, "archive/version", 15));
    cr_assert(memmem(raw, n, "archive/data/5", 14));
    cr_assert(memmem(raw, n, "ctorch._utils\n_rebuild_tensor_v2\n", 33));
    cr_assert(memmem(raw, n, "ccollections\nOrderedDict\n", 25));
    free(raw);
}

Test(tensorfile, pth_round_trip)
{
    pth_round_trip(0);
}

Test(tensorfile, pth_round_trip_zip64)
{
    pth_round_trip(1);
}

/* Enough tensors for LONG_BINPUT memo ids, several SETITEMS batches and
 * numbers of every pickle int width. */
Test(tensorfile, pth_many_tensors)
{
    enum { N = 2100 };
    ms_tensor *ts = calloc(N, sizeof *ts);
    char (*names)[32] = calloc(N, 32);
    float *vals = calloc(N * 3, 4);
    for (size_t i = 0; i < N; i++) {
        snprintf(names[i], 32, "blocks.%zu.w", i);
        for (int k = 0; k < 3; k++)
            vals[i * 3 + k] = (float)(i * 3 + (size_t)k);
        ts[i] = (ms_tensor){.name = names[i], .dtype = MS_F32, .ndim = 2,
                            .shape = {1, 3}, .data = &vals[i * 3], .nbytes = 12};
    }
    static uint16_t big[70000];
    ts[7] = (ms_tensor){.name = names[7], .dtype = MS_BF16, .ndim = 1, .shape = {70000},
                        .data = big, .nbytes = sizeof big};
    char path[512];
    tmp_path(path, sizeof path, "many.pth");
    ms_error e;
    cr_assert_eq(ms_pth_write(path, ts, N, &e), MS_OK, "%s", e.msg);
    ms_tensorfile *tf;
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    expect_same(tf, ts, N);
    ms_tensorfile_close(tf);
    /* single-item last batch (SETITEM rather than SETITEMS) */
    cr_assert_eq(ms_pth_write(path, ts, 1001, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    expect_same(tf, ts, 1001);
    ms_tensorfile_close(tf);
    free(ts);
    free(names);
    free(vals);
}

/* A pickle as newer pythons write it (protocol 4: FRAME, SHORT_BINUNICODE,
 * MEMOIZE, STACK_GLOBAL) with a plain dict and a Parameter wrapper. */
Test(tensorfile, pth_protocol4_pickle)
{
    /* Protocol 4; "w" is a Parameter (storage offset 1, 3 floats). */
#define PK4_W "\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94(" \
        "\x8c\x01w\x94" \
        "\x8c\x0ctorch._utils\x94\x8c\x12_rebuild_parameter\x94\x93\x94" \
        "\x8c\x0ctorch._utils\x94\x8c\x12_rebuild_tensor_v2\x94\x93\x94" \
        "((\x8c\x07storage\x94\x8c\x05torch\x94\x8c\x0c" "FloatStorage\x94\x93\x94" \
        "\x8c\x01" "0\x94\x8c\x03" "cpu\x94K\x04t\x94Q" \
        "K\x01K\x03\x85\x94K\x01\x85\x94\x89\x8c\x0b" "collections\x94\x8c\x0bOrderedDict\x94" \
        "\x93\x94)R\x94t\x94R\x94\x88h\x13)R\x94\x87\x94R\x94"
    static const char ok[] = PK4_W "u.";
    /* plus "n": ([1, 2, 0], (1.0, {5})), which is not a tensor */
    static const char pkl[] = PK4_W
        "\x8c\x01n\x94]\x94(K\x01K\x02\x8a\x00" "e"
        "G?\xf0\x00\x00\x00\x00\x00\x00\x8f\x94(K\x05\x90\x86\x94\x86\x94u.";
    char path[512];
    tmp_path(path, sizeof path, "p4.pth");
    write_pickle_pth(path, ok, sizeof ok - 1);
    ms_tensorfile *tf;
    ms_error e;
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(ms_tensorfile_count(tf), 1);
    const ms_tensor *t = ms_tensorfile_find(tf, "w");
    cr_assert_not_null(t);
    cr_assert_eq(t->ndim, 1);
    cr_assert_eq(t->shape[0], 3);
    float f[3];
    ms_tensor_to_f32(t, f);
    cr_assert_eq(f[0], 2.0f); /* storage offset 1 */
    cr_assert_eq(f[2], 4.0f);
    ms_tensorfile_close(tf);

    write_pickle_pth(path, pkl, sizeof pkl - 1);
    expect_fail(path, MS_ERR_FORMAT); /* "n" is not a tensor */
}

Test(tensorfile, pth_hand_made_golden_pickle)
{
    char path[512];
    tmp_path(path, sizeof path, "hand.pth");
    write_pickle_pth(path, PK_GOOD, sizeof PK_GOOD - 1);
    ms_tensorfile *tf;
    ms_error e;
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    const ms_tensor *t = ms_tensorfile_find(tf, "w");
    cr_assert_not_null(t);
    cr_assert_eq(t->shape[0], 2);
    cr_assert_eq(t->shape[1], 2);
    ms_tensorfile_close(tf);
}

/* ======================================================================== */
/* Bad files                                                                 */
/* ======================================================================== */

Test(tensorfile, missing_and_empty_and_random)
{
    char path[512];
    tmp_path(path, sizeof path, "does-not-exist.pth");
    expect_fail(path, MS_ERR_IO);
    tmp_path(path, sizeof path, "");
    expect_fail(path, MS_ERR_IO); /* a directory */

    tmp_path(path, sizeof path, "empty.safetensors");
    write_bytes(path, "", 0);
    expect_fail(path, MS_ERR_FORMAT);

    tmp_path(path, sizeof path, "short.bin");
    write_bytes(path, "\x10\x00\x00", 3);
    expect_fail(path, MS_ERR_FORMAT);

    uint8_t junk[4096];
    uint64_t seed = 42;
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)rng_next(&seed);
    junk[0] = 0x13;
    junk[8] = 0x00;
    tmp_path(path, sizeof path, "random.safetensors");
    write_bytes(path, junk, sizeof junk);
    expect_fail(path, MS_ERR_FORMAT);

    /* random bytes behind a zip signature */
    memcpy(junk, "PK\x03\x04", 4);
    write_bytes(path, junk, sizeof junk);
    expect_fail(path, MS_ERR_FORMAT);

    /* random bytes behind a plausible safetensors start */
    memcpy(junk, "\x40\x00\x00\x00\x00\x00\x00\x00{", 9);
    write_bytes(path, junk, sizeof junk);
    expect_fail(path, MS_ERR_FORMAT);
}

/* Builds "<8-byte len><json padded><data>" into path. */
static void write_raw_st(const char *path, const char *json, const void *data, size_t n)
{
    size_t jl = strlen(json), padded = (jl + 7) & ~(size_t)7;
    uint8_t *b = calloc(8 + padded + n + 1, 1);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(b + 8, json, jl);
    memset(b + 8 + jl, ' ', padded - jl);
    if (n)
        memcpy(b + 8 + padded, data, n);
    write_bytes(path, b, 8 + padded + n);
    free(b);
}

static void expect_st_fail(const char *json, size_t ndata, ms_status code, const char *needle)
{
    char path[512];
    tmp_path(path, sizeof path, "bad.safetensors");
    uint8_t data[64] = {0};
    write_raw_st(path, json, data, ndata);
    expect_fail(path, code);
    if (needle) {
        ms_tensorfile *tf;
        ms_error e;
        ms_tensorfile_open(path, &tf, &e);
        cr_expect_not_null(strstr(e.msg, needle), "'%s' not in: %s", needle, e.msg);
    }
}

Test(tensorfile, safetensors_bad_headers)
{
    /* control: the same helper makes a valid file */
    char path[512];
    tmp_path(path, sizeof path, "ok.safetensors");
    uint8_t data[16] = {0};
    write_raw_st(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
                 data, 16);
    cr_assert_eq(try_open(path), MS_OK);

    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]", 16,
                   MS_ERR_FORMAT, "JSON");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}} xx", 16,
                   MS_ERR_FORMAT, "JSON");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,1000]}}", 16,
                   MS_ERR_FORMAT, "'w'");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[-4,12]}}", 16,
                   MS_ERR_FORMAT, "'w'");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[12,4]}}", 16,
                   MS_ERR_FORMAT, "'w'");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16,
                   MS_ERR_FORMAT, "'w'"); /* wrong byte count */
    expect_st_fail("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
                   MS_ERR_FORMAT, "'w'");
    expect_st_fail("{\"w\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16,
                   MS_ERR_DTYPE, "I64");
    expect_st_fail("{\"w\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16,
                   MS_ERR_DTYPE, "'w'");
    expect_st_fail("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, MS_ERR_FORMAT, "dtype");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, MS_ERR_FORMAT, "shape");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, MS_ERR_FORMAT, "data_offsets");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                   MS_ERR_FORMAT, "shape");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
                   MS_ERR_FORMAT, "shape");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
                   MS_ERR_UNSUPPORTED, "'w'");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
                   "\"data_offsets\":[0,8]}}", 8, MS_ERR_FORMAT, "'w'");
    expect_st_fail("{\"w\":[1,2]}", 0, MS_ERR_FORMAT, "'w'");
    expect_st_fail("{\"__metadata__\":{\"a\":1}}", 0, MS_ERR_FORMAT, "__metadata__");
    expect_st_fail("{\"__metadata__\":[]}", 0, MS_ERR_FORMAT, "__metadata__");
    expect_st_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                   MS_ERR_FORMAT, NULL); /* duplicate key */
    expect_st_fail("{\"\\u00e9\xff\":1}", 0, MS_ERR_FORMAT, "JSON"); /* invalid UTF-8 */
}

Test(tensorfile, safetensors_bad_header_length)
{
    char path[512];
    tmp_path(path, sizeof path, "len.safetensors");
    uint8_t b[64];
    memset(b, ' ', sizeof b);
    memcpy(b + 8, "{}", 2);
    const uint64_t lens[] = {0, 1, 57, 1000, 1ull << 40, ~0ull};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        for (int k = 0; k < 8; k++)
            b[k] = (uint8_t)(lens[i] >> (8 * k));
        write_bytes(path, b, sizeof b);
        expect_fail(path, MS_ERR_FORMAT);
    }
    /* control: 56 is exactly the rest of the file */
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)((uint64_t)56 >> (8 * k));
    write_bytes(path, b, sizeof b);
    cr_assert_eq(try_open(path), MS_OK);
}

/* Truncates a copy of `src` to each length in cuts and expects FORMAT. */
static void expect_truncations_fail(const char *src, const size_t *cuts, size_t ncuts)
{
    size_t n;
    uint8_t *raw = read_file_bytes(src, &n);
    char path[512];
    tmp_path(path, sizeof path, "truncated.bin");
    for (size_t i = 0; i < ncuts; i++) {
        cr_assert_lt(cuts[i], n);
        write_bytes(path, raw, cuts[i]);
        expect_fail(path, MS_ERR_FORMAT);
    }
    free(raw);
}

Test(tensorfile, safetensors_truncated)
{
    sample s;
    make_sample(&s);
    char path[512];
    tmp_path(path, sizeof path, "full.safetensors");
    write_st(path, s.t, 6, NULL);
    size_t n;
    free(read_file_bytes(path, &n));
    uint8_t lenb[8];
    FILE *f = fopen(path, "rb");
    cr_assert_eq(fread(lenb, 1, 8, f), 8);
    fclose(f);
    size_t hl = 0;
    for (int k = 7; k >= 0; k--)
        hl = hl << 8 | lenb[k];
    const size_t cuts[] = {1, 7, 8, 9, 8 + hl / 2, 8 + hl - 1, 8 + hl, 8 + hl + 5, n - 1};
    expect_truncations_fail(path, cuts, sizeof cuts / sizeof cuts[0]);
}

Test(tensorfile, pth_truncated)
{
    sample s;
    make_sample(&s);
    char path[512];
    tmp_path(path, sizeof path, "full.pth");
    ms_error e;
    cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_OK, "%s", e.msg);
    size_t n;
    free(read_file_bytes(path, &n));
    const size_t cuts[] = {2, 4, 29, 40, 100, n / 2, n - 200, n - 23, n - 22, n - 1};
    expect_truncations_fail(path, cuts, sizeof cuts / sizeof cuts[0]);
    /* every single cut point of a small file */
    uint8_t *raw = read_file_bytes(path, &n);
    char cut[512];
    tmp_path(cut, sizeof cut, "cut.pth");
    for (size_t k = 0; k < n; k++) {
        write_bytes(cut, raw, k);
        cr_assert_neq(try_open(cut), MS_OK, "truncation at %zu of %zu accepted", k, n);
    }
    free(raw);
}

Test(tensorfile, golden_pth_truncated)
{
    char src[1024];
    golden(src, sizeof src, "tiny_l2_d128_fp32.pth");
    size_t n;
    free(read_file_bytes(src, &n));
    const size_t cuts[] = {100, 6000, n / 2, n - 4000, n - 100, n - 1};
    expect_truncations_fail(src, cuts, sizeof cuts / sizeof cuts[0]);
}

/* Replaces every occurrence of `from` by `to` (same length) in a file. */
static void patch_file(const char *path, const char *from, const char *to)
{
    size_t n, l = strlen(from);
    uint8_t *raw = read_file_bytes(path, &n);
    int hits = 0;
    for (uint8_t *p = raw; (p = memmem(p, n - (size_t)(p - raw), from, l)); p += l, hits++)
        memcpy(p, to, l);
    cr_assert_gt(hits, 0, "'%s' not found", from);
    write_bytes(path, raw, n);
    free(raw);
}

Test(tensorfile, pth_zip_without_data_pkl)
{
    sample s;
    make_sample(&s);
    char path[512];
    tmp_path(path, sizeof path, "nopkl.pth");
    ms_error e;
    cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_OK, "%s", e.msg);
    patch_file(path, "archive/data.pkl", "archive/data.pkx");
    expect_fail(path, MS_ERR_FORMAT);
    ms_tensorfile *tf;
    ms_tensorfile_open(path, &tf, &e);
    cr_expect_not_null(strstr(e.msg, "data.pkl"), "%s", e.msg);

    /* a zip with unrelated content */
    zfile fs[1] = {{"readme.txt", "hello", 5, 0}};
    write_zip(path, fs, 1);
    expect_fail(path, MS_ERR_FORMAT);
    /* an empty zip (just the end record) */
    write_zip(path, fs, 0);
    expect_fail(path, MS_ERR_FORMAT);
}

Test(tensorfile, pth_storage_problems)
{
    char path[512];
    tmp_path(path, sizeof path, "storage.pth");
    ms_error e;
    ms_tensorfile *tf;

    /* missing data/0 */
    zfile only_pkl[1] = {{"archive/data.pkl", PK_GOOD, sizeof PK_GOOD - 1, 0}};
    write_zip(path, only_pkl, 1);
    expect_fail(path, MS_ERR_FORMAT);

    /* storage too small for the view: 2x2 from offset 1 in 4 floats */
    static const char off1[] = PK_HEAD PK_STYPE("FloatStorage")
        "K\x01K\x02K\x02\x86q\x08K\x02K\x01\x86q\x09" PK_TAIL;
    write_pickle_pth(path, off1, sizeof off1 - 1);
    expect_fail(path, MS_ERR_FORMAT);

    /* huge negative offset */
    static const char offneg[] = PK_HEAD PK_STYPE("FloatStorage")
        "J\x00\x00\x00\x80K\x02K\x02\x86q\x08K\x02K\x01\x86q\x09" PK_TAIL;
    write_pickle_pth(path, offneg, sizeof offneg - 1);
    expect_fail(path, MS_ERR_FORMAT);

    /* transposed view: stride (1, 2) */
    static const char transposed[] = PK_HEAD PK_STYPE("FloatStorage")
        "K\x00K\x02K\x02\x86q\x08K\x01K\x02\x86q\x09" PK_TAIL;
    write_pickle_pth(path, transposed, sizeof transposed - 1);
    expect_fail(path, MS_ERR_UNSUPPORTED);
    ms_tensorfile_open(path, &tf, &e);
    cr_expect_not_null(strstr(e.msg, "'w'"), "%s", e.msg);

    /* unsupported element type */
    static const char longs[] = PK_HEAD PK_STYPE("LongStorage")
        "K\x00K\x02\x85q\x08K\x01\x85q\x09" PK_TAIL;
    write_pickle_pth(path, longs, sizeof longs - 1);
    expect_fail(path, MS_ERR_DTYPE);
    ms_tensorfile_open(path, &tf, &e);
    cr_expect_not_null(strstr(e.msg, "'w'"), "%s", e.msg);
    cr_expect_not_null(strstr(e.msg, "LongStorage"), "%s", e.msg);

    /* size-1 dimensions may carry any stride (torch does that) */
    static const char ones[] = PK_HEAD PK_STYPE("HalfStorage")
        "K\x00K\x01K\x04K\x01\x87q\x08K\x07K\x01K\x09\x87q\x09" PK_TAIL;
    write_pickle_pth(path, ones, sizeof ones - 1);
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    cr_assert_eq(ms_tensorfile_at(tf, 0)->dtype, MS_F16);
    cr_assert_eq(ms_tensorfile_at(tf, 0)->shape[1], 4);
    ms_tensorfile_close(tf);

    /* byteorder must be little */
    zfile big[3] = {{"archive/data.pkl", PK_GOOD, sizeof PK_GOOD - 1, 0},
                    {"archive/data/0", "0123456789abcdef", 16, 0},
                    {"archive/byteorder", "big", 3, 0}};
    write_zip(path, big, 3);
    expect_fail(path, MS_ERR_UNSUPPORTED);
    big[2].data = "little";
    big[2].n = 6;
    write_zip(path, big, 3);
    cr_assert_eq(try_open(path), MS_OK);

    /* compressed entry */
    big[1].method = 8;
    write_zip(path, big, 3);
    expect_fail(path, MS_ERR_UNSUPPORTED);
}

static void expect_pickle_fail(const char *pkl, size_t n, ms_status code, const char *needle)
{
    char path[512];
    tmp_path(path, sizeof path, "pickle.pth");
    write_pickle_pth(path, pkl, n);
    expect_fail(path, code);
    if (needle) {
        ms_tensorfile *tf;
        ms_error e;
        ms_tensorfile_open(path, &tf, &e);
        cr_expect_not_null(strstr(e.msg, needle), "'%s' not in: %s", needle, e.msg);
    }
}

#define PF(lit, code, needle) expect_pickle_fail(lit, sizeof(lit) - 1, code, needle)

Test(tensorfile, pth_bad_pickles)
{
    PF("\x80\x02}q\x00X\x01\x00\x00\x00wcposix\nsystem\n(X\x02\x00\x00\x00idtRs.",
       MS_ERR_FORMAT, "posix.system");
    PF("\x80\x02\x8c\x08" "builtins\x8c\x04" "eval\x93.", MS_ERR_FORMAT, "builtins.eval");
    PF("\x80\x02" "ctorch\nFloatStorage\n)R.", MS_ERR_FORMAT, "FloatStorage");
    PF("", MS_ERR_FORMAT, "truncated");
    PF("\x80\x02", MS_ERR_FORMAT, "truncated");
    PF("\x80\x02.", MS_ERR_FORMAT, "underflow");
    PF("\x80\x02K\x01.", MS_ERR_FORMAT, "dict");
    PF("\x80\x02}h\x05.", MS_ERR_FORMAT, "memo");
    PF("\x80\x02}r\xff\xff\xff\x7f.", MS_ERR_FORMAT, "memo");
    PF("\x80\x02}X\xff\xff\xff\xff.", MS_ERR_FORMAT, "truncated");
    PF("\x80\x02}\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.", MS_ERR_FORMAT, "integer");
    PF("\x80\x02}K\x01K\x02u.", MS_ERR_FORMAT, "underflow");
    PF("\x80\x02}(K\x01u.", MS_ERR_FORMAT, "odd");
    PF("\x80\x02](K\x01u.", MS_ERR_FORMAT, "SETITEMS");
    PF("\x80\x02}(K\x01K\x02u.", MS_ERR_FORMAT, "tensor name");
    PF("\x80\x02}(X\x01\x00\x00\x00wK\x02u.", MS_ERR_FORMAT, "'w'");
    PF("\x80\x02}X\x01\x00\x00\x00wK\x01K\x02\x86Qs.", MS_ERR_FORMAT, "persistent");
    PF("\x80\x02}X\x01\x00\x00\x00w(Nt\x93s.", MS_ERR_FORMAT, NULL);
    PF("\x80\x02\x63torch._utils\n_rebuild_tensor_v2\n(K\x01tR.", MS_ERR_FORMAT,
       "_rebuild_tensor_v2");
    PF("\x80\x02}(((((t0", MS_ERR_FORMAT, "truncated");
    PF("\x80\x09}.", MS_ERR_FORMAT, "protocol");
    PF("\x80\x02}I1\n.", MS_ERR_FORMAT, "opcode");
    PF("\x80\x02}b.", MS_ERR_FORMAT, "underflow");

    /* BUILD on a dict (a state dict's _metadata) is ignored: an empty dict loads */
    char path[512];
    tmp_path(path, sizeof path, "build.pth");
    static const char build[] = "\x80\x02}K\x01" "b.";
    write_pickle_pth(path, build, sizeof build - 1);
    cr_assert_eq(try_open(path), MS_OK);
}

/* Every prefix of a valid pickle must be refused cleanly. */
Test(tensorfile, pth_truncated_pickle_every_length)
{
    char path[512];
    tmp_path(path, sizeof path, "cutpickle.pth");
    size_t n = sizeof PK_GOOD - 1;
    for (size_t k = 0; k < n; k++) {
        write_pickle_pth(path, PK_GOOD, k);
        ms_tensorfile *tf;
        ms_error e;
        cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_ERR_FORMAT,
                     "pickle cut at %zu of %zu: %s", k, n, e.msg);
        cr_assert_not_null(strstr(e.msg, path));
    }
    write_pickle_pth(path, PK_GOOD, n);
    cr_assert_eq(try_open(path), MS_OK);
}

Test(tensorfile, pth_deep_nesting_is_bounded)
{
    size_t n = 1300000;
    char *p = malloc(n + 4);
    memcpy(p, "\x80\x02", 2);
    memset(p + 2, '(', n - 2); /* too many marks */
    expect_pickle_fail(p, n, MS_ERR_FORMAT, "marks");
    p[2] = ']';
    memset(p + 3, '2', n - 3); /* a stack too deep (DUP allocates nothing) */
    p[n] = '.';
    expect_pickle_fail(p, n + 1, MS_ERR_FORMAT, "stack");
    free(p);
}

/* Random mutations must never crash or read out of bounds (ASan run). */
Test(tensorfile, fuzz_mutations)
{
    sample s;
    make_sample(&s);
    char src[512], path[512];
    tmp_path(src, sizeof src, "src.pth");
    tmp_path(path, sizeof path, "mut.bin");
    ms_error e;
    cr_assert_eq(ms_pth_write(src, s.t, 6, &e), MS_OK, "%s", e.msg);
    size_t n;
    uint8_t *raw = read_file_bytes(src, &n);
    uint8_t *m = malloc(n);
    uint64_t seed = 7;
    for (int it = 0; it < 400; it++) {
        memcpy(m, raw, n);
        int flips = 1 + (int)(rng_next(&seed) % 8);
        for (int k = 0; k < flips; k++) {
            /* bias towards the pickle and the directory, where structure lives */
            size_t pos = rng_next(&seed) % 3 == 0 ? rng_next(&seed) % 600
                                                  : n - 1 - rng_next(&seed) % 900;
            m[pos % n] = (uint8_t)rng_next(&seed);
        }
        write_bytes(path, m, n);
        try_open(path);
    }
    free(raw);

    char st[512];
    tmp_path(st, sizeof st, "src.safetensors");
    write_st(st, s.t, 6, NULL);
    raw = read_file_bytes(st, &n);
    m = realloc(m, n);
    for (int it = 0; it < 400; it++) {
        memcpy(m, raw, n);
        size_t pos = 8 + rng_next(&seed) % 400;
        m[pos % n] = "0123456789[]{},:\"-e. "[rng_next(&seed) % 21];
        write_bytes(path, m, n);
        try_open(path);
    }
    free(raw);
    free(m);

    /* random pickles */
    uint8_t pk[256];
    for (int it = 0; it < 400; it++) {
        pk[0] = 0x80;
        pk[1] = 2;
        for (size_t k = 2; k < sizeof pk; k++)
            pk[k] = (uint8_t)"()}]tsuqhRQKXc.012ab\x85\x86\x87\x88\x89\x8a\x93\x94"[rng_next(&seed) % 28];
        write_pickle_pth(path, pk, sizeof pk);
        try_open(path);
    }
}

/* ======================================================================== */
/* Zip directory problems                                                    */
/* ======================================================================== */

/* Overwrites 4 bytes at `at` (from the end when negative) with v. */
static void poke32(const char *path, long at, uint32_t v)
{
    size_t n;
    uint8_t *raw = read_file_bytes(path, &n);
    size_t pos = at < 0 ? n - (size_t)(-at) : (size_t)at;
    for (int k = 0; k < 4; k++)
        raw[pos + (size_t)k] = (uint8_t)(v >> (8 * k));
    write_bytes(path, raw, n);
    free(raw);
}

Test(tensorfile, pth_bad_directory)
{
    sample s;
    make_sample(&s);
    char path[512];
    tmp_path(path, sizeof path, "dir.pth");
    ms_error e;
    ms_tensorfile *tf;

    /* central directory offset beyond the end (EOCD is the last 22 bytes) */
    cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_OK, "%s", e.msg);
    poke32(path, -22 + 16, 0x7fffffff);
    expect_fail(path, MS_ERR_FORMAT);
    ms_tensorfile_open(path, &tf, &e);
    cr_expect_not_null(strstr(e.msg, "central directory"), "%s", e.msg);

    /* absurd entry count */
    cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_OK, "%s", e.msg);
    poke32(path, -22 + 8, 0xfff0fff0);
    expect_fail(path, MS_ERR_FORMAT);

    /* zip64 records pointing nowhere */
    cr_assert_eq(ms_pth_write_zip64(path, s.t, 6, &e), MS_OK, "%s", e.msg);
    poke32(path, -22 - 20 + 8, 0x7ffffff0);
    expect_fail(path, MS_ERR_FORMAT);
    /* zip64 marker values without the zip64 records */
    cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_OK, "%s", e.msg);
    poke32(path, -22 + 16, 0xffffffff);
    expect_fail(path, MS_ERR_FORMAT);

    /* local header offset pointing outside: patch the first directory entry */
    cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_OK, "%s", e.msg);
    size_t n;
    uint8_t *raw = read_file_bytes(path, &n);
    uint32_t cd = 0;
    for (int k = 3; k >= 0; k--)
        cd = cd << 8 | raw[n - 22 + 16 + (size_t)k];
    free(raw);
    poke32(path, (long)cd + 42, 0x7fffff00);
    expect_fail(path, MS_ERR_FORMAT);
}

/* ======================================================================== */
/* Writer argument checks                                                    */
/* ======================================================================== */

Test(tensorfile, writers_reject_bad_input)
{
    sample s;
    make_sample(&s);
    ms_error e;
    char path[512];
    tmp_path(path, sizeof path, "no/such/dir/x.pth");
    cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_ERR_IO);
    cr_assert_not_null(strstr(e.msg, path), "%s", e.msg);

    tmp_path(path, sizeof path, "w.bin");
    FILE *f = fopen(path, "wb");
    s.t[0].nbytes = 20; /* shape says 24 */
    cr_assert_eq(ms_safetensors_write(f, s.t, 6, NULL, &e), MS_ERR_INVALID);
    cr_assert_not_null(strstr(e.msg, s.t[0].name), "%s", e.msg);
    cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_ERR_INVALID);
    s.t[0].nbytes = 24;
    s.t[1].name = s.t[2].name;
    cr_assert_eq(ms_safetensors_write(f, s.t, 6, NULL, &e), MS_ERR_INVALID);
    cr_assert_eq(ms_pth_write(path, s.t, 6, &e), MS_ERR_INVALID);
    fclose(f);
}
