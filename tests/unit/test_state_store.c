/*
 * test_state_store.c - session files: the initial-state name round-trips
 * (version 2), version-1 files (no name) still load as "no initial state",
 * and a corrupt name field or an unknown version is refused; issue 9's
 * store bugs (temp names, stale temps, FIFOs, values, checkpoint message).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "file_bytes.h"
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
    unsigned char *b = read_file_bytes(path, &n);
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
    unsigned char *b = read_file_bytes(path, &n);
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

/* Offset of the first state float in a file saved by save() with init name. */
static size_t state_off(const char *init)
{
    return 80 + 4 + strlen(init);
}

/* issue 9 bug 12: an inconsistent checkpoint count is named as such, not as a
 * size mismatch between two equal numbers. */
Test(state_store, inconsistent_checkpoint_count_is_named)
{
    ms_state *st = ms_state_new(model), *back = ms_state_new(model);
    save("k", "", st);
    char path[400], err[512];
    snprintf(path, sizeof path, "%s/k.state", dir);
    size_t n;
    unsigned char *b = read_file_bytes(path, &n);
    store_record r = {.state = back};
    b[72] = 5; /* checkpoint after 5 of 3 tokens */
    reseal(b, n);
    write_all(path, b, n);
    cr_assert_eq(store_load(dir, "k", &r, model, err, sizeof err), -1);
    cr_assert(strstr(err, "checkpoint after 5 tokens of 3"), "%s", err);
    cr_assert_null(strstr(err, "expected"), "%s", err);
    b[72] = 2; /* a count without the checkpoint flag */
    reseal(b, n);
    write_all(path, b, n);
    cr_assert_eq(store_load(dir, "k", &r, model, err, sizeof err), -1);
    cr_assert(strstr(err, "without a checkpoint"), "%s", err);
    free(b);
    ms_state_free(st);
    ms_state_free(back);
}

/* issue 9 bug 9: NaN, Inf and absurd magnitudes in a (correctly sealed) file
 * are refused, and the caller's state is left as it was. */
Test(state_store, non_finite_or_huge_values_are_refused)
{
    ms_state *st = ms_state_new(model), *back = ms_state_new(model);
    save("v", "", st);
    char path[400], err[512];
    snprintf(path, sizeof path, "%s/v.state", dir);
    size_t n;
    unsigned char *b = read_file_bytes(path, &n);
    const float bad[] = {NAN, INFINITY, -INFINITY, 1e30f, -2e6f};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unsigned char *c = malloc(n);
        memcpy(c, b, n);
        memcpy(c + state_off("") + 4 * 7, &bad[i], 4);
        reseal(c, n);
        write_all(path, c, n);
        store_record r = {.state = back};
        ms_state_reset(back);
        cr_assert_eq(store_load(dir, "v", &r, model, err, sizeof err), -1, "value %g", bad[i]);
        cr_assert(strstr(err, "not finite"), "%s", err);
        cr_assert_eq(ms_state_cdata(back)[7], 0.0f);
        free(c);
    }
    float ok[] = {0, -3, 999999.f};
    cr_assert(store_values_ok(ok, 3));
    free(b);
    ms_state_free(st);
    ms_state_free(back);
}

static int scanned;
static void count_cb(const char *id, void *ud)
{
    (void)ud;
    cr_assert_str_neq(id, "fifo");
    scanned++;
}

/* issue 9 bug 6: a FIFO named "*.state" neither hangs the reader (the suite's
 * timeout fails the test if it does) nor reaches the session list: scan
 * moves it aside. */
Test(state_store, fifo_named_state_neither_blocks_nor_loads)
{
    ms_state *st = ms_state_new(model), *back = ms_state_new(model);
    save("good", "", st);
    char path[400], rej[420], err[512];
    snprintf(path, sizeof path, "%s/fifo.state", dir);
    cr_assert_eq(mkfifo(path, 0600), 0);
    store_record r = {.state = back};
    cr_assert_eq(store_load(dir, "fifo", &r, model, err, sizeof err), -1);
    cr_assert(strstr(err, "not a regular file"), "%s", err);
    cr_assert_eq(store_peek_tokens(dir, "fifo"), -1);
    int q = -1;
    scanned = 0;
    cr_assert_eq(store_scan(dir, count_cb, NULL, &q, err, sizeof err), 1, "%s", err);
    cr_assert_eq(scanned, 1);
    cr_assert_eq(q, 1);
    snprintf(rej, sizeof rej, "%s.rejected", path);
    cr_assert_eq(access(path, F_OK), -1);
    cr_assert_eq(access(rej, F_OK), 0);
    ms_state_free(st);
    ms_state_free(back);
}

/* issue 9 bug 7: a temp file nobody holds (a writer killed mid-write) is
 * removed; one a live writer holds (its flock) stays. */
Test(state_store, stale_temps_are_removed_live_ones_kept)
{
    char stale[400], live[400], fifo[400];
    snprintf(stale, sizeof stale, "%s/.s.state.tmp.123", dir);
    snprintf(live, sizeof live, "%s/.l.state.tmp.Ab12Cd", dir);
    snprintf(fifo, sizeof fifo, "%s/.f.state.tmp.9", dir);
    write_all(stale, (const unsigned char *)"torn", 4);
    write_all(live, (const unsigned char *)"busy", 4);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    int fd = open(live, O_RDWR);
    cr_assert(fd >= 0);
    cr_assert_eq(flock(fd, LOCK_EX), 0);
    cr_assert_eq(store_clean_temps(dir, 600), 2);
    cr_assert_eq(access(stale, F_OK), -1);
    cr_assert_eq(access(fifo, F_OK), -1);
    cr_assert_eq(access(live, F_OK), 0);
    close(fd);
    cr_assert_eq(store_clean_temps(dir, 600), 1);
    cr_assert_eq(access(live, F_OK), -1);
}

/* issue 9 bug 1: the temp name does not depend on the PID (replicas in
 * containers are all PID 1): a file squatting on the old PID-named temp does
 * not stop a save, and no temp is left behind. */
Test(state_store, temp_name_is_not_the_pid)
{
    char squat[400];
    snprintf(squat, sizeof squat, "%s/.p.state.tmp.%ld", dir, (long)getpid());
    cr_assert_eq(mkdir(squat, 0700), 0);
    ms_state *st = ms_state_new(model);
    save("p", "", st);
    cr_assert_eq(rmdir(squat), 0);
    DIR *d = opendir(dir);
    struct dirent *e;
    while ((e = readdir(d))) cr_assert_null(strstr(e->d_name, ".tmp."), "%s left", e->d_name);
    closedir(d);
    ms_state_free(st);
}
