/*
 * test_state_store.c - session files: the initial-state name round-trips
 * (version 2), version-1 files (no name) still load as "no initial state",
 * and a corrupt name field or an unknown version is refused.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "state_store.h"

static char dir[256];
static ms_model *model;

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/ms-test-store-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    char path[300];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    char *argv[] = {"gen-model", "--preset", "tiny", "--vocab-size", "512", "--seed", "5",
                    "--out", path, NULL};
    cr_assert_eq(cmd_gen_model(9, argv), 0);
    ms_error e = {0};
    cr_assert_eq(ms_model_load(path, NULL, &model, &e), MS_OK, "%s", e.msg);
}

static void teardown(void)
{
    ms_model_free(model);
    model = NULL;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(state_store, .init = setup, .fini = teardown, .timeout = 60);

static uint32_t crc32_ieee(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

static unsigned char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n);
    cr_assert(b && fread(b, 1, *n, f) == *n);
    fclose(f);
    return b;
}

static void write_all(const char *path, const unsigned char *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f && fwrite(b, 1, n, f) == n);
    fclose(f);
}

/* Re-closes a file body with its CRC (the last 4 bytes). */
static void reseal(unsigned char *b, size_t n)
{
    uint32_t c = crc32_ieee(b, n - 4);
    for (int i = 0; i < 4; i++) b[n - 4 + (size_t)i] = (unsigned char)(c >> (8 * i));
}

/* Saves session `id` with a recognizable state, 3 tokens and init name. */
static void save(const char *id, const char *init, ms_state *st)
{
    float *d = ms_state_data(st);
    for (size_t i = 0; i < ms_state_nfloats(st); i++) d[i] = (float)(i % 101) * 0.01f;
    int32_t toks[3] = {5, 6, 7};
    store_record r = {.state = st, .tokens = toks, .n_tokens = 3, .tokens_known = 1};
    snprintf(r.init_state, sizeof r.init_state, "%s", init);
    char err[512];
    cr_assert_eq(store_save(dir, id, &r, ms_model_config(model), ms_model_fingerprint(model), err,
                            sizeof err), 0, "%s", err);
}

Test(state_store, initial_state_name_round_trips)
{
    ms_state *st = ms_state_new(model), *back = ms_state_new(model);
    save("a", "tuned-v1", st);
    store_record r = {.state = back};
    char err[512];
    cr_assert_eq(store_load(dir, "a", &r, model, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(r.init_state, "tuned-v1");
    cr_assert_eq(r.n_tokens, 3);
    cr_assert_eq(memcmp(ms_state_cdata(st), ms_state_cdata(back), ms_state_nfloats(st) * 4), 0);
    free(r.tokens);
    save("b", "", st);
    cr_assert_eq(store_load(dir, "b", &r, model, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(r.init_state, "");
    free(r.tokens);
    cr_assert_eq(store_peek_tokens(dir, "a"), 3);
    ms_state_free(st);
    ms_state_free(back);
}

Test(state_store, version_1_files_load_without_initial_state)
{
    ms_state *st = ms_state_new(model), *back = ms_state_new(model);
    save("old", "tuned", st);
    char path[400];
    snprintf(path, sizeof path, "%s/old.state", dir);
    size_t n;
    unsigned char *b = read_all(path, &n);
    /* v1 = the same without the name field (u32 length + 5 bytes at 80) */
    const size_t hdr = 80, cut = 4 + 5;
    cr_assert_eq(b[8], 2);
    b[8] = 1;
    memmove(b + hdr, b + hdr + cut, n - hdr - cut);
    n -= cut;
    reseal(b, n);
    write_all(path, b, n);
    store_record r = {.state = back};
    snprintf(r.init_state, sizeof r.init_state, "junk");
    char err[512];
    cr_assert_eq(store_load(dir, "old", &r, model, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(r.init_state, "");
    cr_assert_eq(r.n_tokens, 3);
    cr_assert_eq(r.tokens[2], 7);
    cr_assert_eq(memcmp(ms_state_cdata(st), ms_state_cdata(back), ms_state_nfloats(st) * 4), 0);
    free(r.tokens);
    cr_assert_eq(store_peek_tokens(dir, "old"), 3);
    free(b);
    ms_state_free(st);
    ms_state_free(back);
}

Test(state_store, bad_name_field_or_version_is_refused)
{
    ms_state *st = ms_state_new(model), *back = ms_state_new(model);
    save("x", "tuned", st);
    char path[400];
    snprintf(path, sizeof path, "%s/x.state", dir);
    size_t n;
    unsigned char *b = read_all(path, &n);
    unsigned char *c = malloc(n);
    cr_assert_not_null(c);
    char err[512];
    store_record r = {.state = back};

    memcpy(c, b, n); /* a name longer than any server accepts */
    c[80] = 200;
    reseal(c, n);
    write_all(path, c, n);
    cr_assert_eq(store_load(dir, "x", &r, model, err, sizeof err), -1);
    cr_assert(strstr(err, path) && strstr(err, "initial-state name"), "%s", err);

    memcpy(c, b, n); /* a NUL inside the name */
    c[85] = 0;
    reseal(c, n);
    write_all(path, c, n);
    cr_assert_eq(store_load(dir, "x", &r, model, err, sizeof err), -1);
    cr_assert(strstr(err, "initial-state name"), "%s", err);

    memcpy(c, b, n); /* a future version */
    c[8] = 3;
    reseal(c, n);
    write_all(path, c, n);
    cr_assert_eq(store_load(dir, "x", &r, model, err, sizeof err), -1);
    cr_assert(strstr(err, "version 3"), "%s", err);

    memcpy(c, b, n); /* the name is covered by the checksum */
    c[84] ^= 1;
    write_all(path, c, n);
    cr_assert_eq(store_load(dir, "x", &r, model, err, sizeof err), -1);
    cr_assert(strstr(err, "checksum"), "%s", err);
    cr_assert_null(r.tokens);
    free(b);
    free(c);
    ms_state_free(st);
    ms_state_free(back);
}
