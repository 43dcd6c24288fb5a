/*
 * test_store_redis.c - session records in memory (the same bytes as a state
 * file, both ways) and the Redis store against a real redis-server started
 * on a free loopback port in a temporary directory: leases (exclusive,
 * compare-and-delete, expiry, renewal), saves fenced by the lease, versions,
 * delete of busy sessions, listing, authentication, an unreachable store.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "file_bytes.h"
#include "state_record.h"
#include "state_store.h"
#include "store_redis.h"
#include "tmpdir.h"

TEST_TMPDIR("redis")

static pid_t redis_pid;
static int redis_port;
static ms_model *model, *other;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    cr_assert(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Starts Debian's redis-server (extra: NULL or "--requirepass" "pw"). */
static void start_redis(const char *extra1, const char *extra2)
{
    redis_port = free_port();
    char port[16];
    snprintf(port, sizeof port, "%d", redis_port);
    redis_pid = fork();
    cr_assert(redis_pid >= 0);
    if (redis_pid == 0) {
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", dir,
               "--save", "", "--appendonly", "no", extra1, extra2, (char *)NULL);
        _exit(127);
    }
    char url[64], err[256];
    snprintf(url, sizeof url, "redis://%s127.0.0.1:%d", extra1 ? ":pw@" : "", redis_port);
    redis_store *rs = redis_store_new(url, "t:", 1000, err, sizeof err);
    cr_assert_not_null(rs, "%s", err);
    for (int i = 0; i < 200; i++) {
        if (redis_store_ping(rs, err, sizeof err) == 0) break;
        int st;
        cr_assert_eq(waitpid(redis_pid, &st, WNOHANG), 0, "redis-server exited (is it installed?)");
        sleep_ms(25);
    }
    cr_assert_eq(redis_store_ping(rs, err, sizeof err), 0, "redis-server did not start: %s", err);
    redis_store_free(rs);
}

static void stop_redis(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
}

static ms_model *gen(int seed)
{
    char path[300], sd[16];
    snprintf(path, sizeof path, "%s/m%d.safetensors", dir, seed);
    snprintf(sd, sizeof sd, "%d", seed);
    char *argv[] = {"gen-model", "--preset", "tiny", "--vocab-size", "512", "--seed", sd,
                    "--out", path, NULL};
    cr_assert_eq(cmd_gen_model(9, argv), 0);
    ms_model *m = NULL;
    ms_error e = {0};
    cr_assert_eq(ms_model_load(path, NULL, &m, &e), MS_OK, "%s", e.msg);
    return m;
}

static void setup(void)
{
    make_dir();
    model = gen(5);
    other = gen(6);
}

static void setup_redis(void)
{
    setup();
    start_redis(NULL, NULL);
}

static void teardown(void)
{
    stop_redis();
    ms_model_free(model);
    ms_model_free(other);
    model = other = NULL;
    remove_dir();
}

static redis_store *open_store(void)
{
    char url[64], err[256];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", redis_port);
    redis_store *rs = redis_store_new(url, "t:", 1000, err, sizeof err);
    cr_assert_not_null(rs, "%s", err);
    return rs;
}

/* A record with a recognizable state, a checkpoint, 3 tokens and a name. */
static void fill(ms_state *st, ms_state *ck, store_record *r, int32_t *toks)
{
    float *d = ms_state_data(st), *c = ms_state_data(ck);
    for (size_t i = 0; i < ms_state_nfloats(st); i++) {
        d[i] = (float)(i % 101) * 0.01f;
        c[i] = -(float)(i % 7);
    }
    toks[0] = 5, toks[1] = 6, toks[2] = 7;
    *r = (store_record){.state = st, .ckpt = ck, .n_ckpt = 2, .tokens = toks, .n_tokens = 3,
                        .tokens_known = 1};
    snprintf(r->init_state, sizeof r->init_state, "tuned");
}

static unsigned char *encode(const store_record *r, size_t *n)
{
    *n = record_size(r, ms_model_config(model));
    unsigned char *b = malloc(*n);
    cr_assert_eq(record_encode(r, ms_model_config(model), ms_model_fingerprint(model), b, *n), *n);
    return b;
}

/* ------------------------------------------------------------- records */

TestSuite(state_record, .init = setup, .fini = teardown, .timeout = 60);

Test(state_record, same_bytes_as_the_state_file_both_ways)
{
    ms_state *st = ms_state_new(model), *ck = ms_state_new(model);
    int32_t toks[3];
    store_record r;
    fill(st, ck, &r, toks);
    char err[512], path[400];
    cr_assert_eq(store_save(dir, "f", &r, ms_model_config(model), ms_model_fingerprint(model), err,
                            sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/f.state", dir);
    size_t fn;
    uint8_t *file = read_file_bytes(path, &fn);
    size_t n;
    unsigned char *b = encode(&r, &n);
    cr_assert_eq(n, fn);
    cr_assert_eq(memcmp(b, file, n), 0, "the encoded record differs from the file");

    ms_state *st2 = ms_state_new(model), *ck2 = ms_state_new(model);
    store_record back = {.state = st2, .ckpt = ck2};
    cr_assert_eq(record_decode(file, fn, &back, model, "key k", err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(back.init_state, "tuned");
    cr_assert_eq(back.n_tokens, 3);
    cr_assert_eq(back.n_ckpt, 2);
    cr_assert(back.tokens_known);
    cr_assert_eq(back.tokens[2], 7);
    cr_assert_eq(memcmp(ms_state_cdata(st), ms_state_cdata(st2), ms_state_nfloats(st) * 4), 0);
    cr_assert_eq(memcmp(ms_state_cdata(ck), ms_state_cdata(ck2), ms_state_nfloats(st) * 4), 0);
    cr_assert_eq(record_peek_tokens(b, n), 3);
    free(back.tokens);
    free(b);
    free(file);
    ms_state_free(st), ms_state_free(ck), ms_state_free(st2), ms_state_free(ck2);
}

Test(state_record, corrupt_truncated_and_foreign_records_are_refused)
{
    ms_state *st = ms_state_new(model), *ck = ms_state_new(model);
    int32_t toks[3];
    store_record r;
    fill(st, ck, &r, toks);
    size_t n;
    unsigned char *b = encode(&r, &n);
    ms_state *dst = ms_state_new(model);
    float keep = ms_state_data(dst)[0] = 42.0f;
    store_record back = {.state = dst};
    char err[512];

    b[n / 2] ^= 0x10; /* one flipped bit in the state */
    cr_assert_eq(record_decode(b, n, &back, model, "key k", err, sizeof err), -1);
    cr_assert(strstr(err, "key k") && strstr(err, "checksum"), "%s", err);
    b[n / 2] ^= 0x10;
    cr_assert_eq(record_decode(b, n - 1, &back, model, "key k", err, sizeof err), -1);
    cr_assert(strstr(err, "truncated"), "%s", err);
    cr_assert_eq(record_decode(b, 10, &back, model, "key k", err, sizeof err), -1);
    cr_assert(strstr(err, "bad magic"), "%s", err);
    cr_assert_eq(record_decode((const unsigned char *)"hello", 5, &back, model, "k", err, sizeof err), -1);
    cr_assert_eq(record_decode(b, n, &back, other, "key k", err, sizeof err), -1);
    cr_assert(strstr(err, "another model"), "%s", err);
    cr_assert_eq(ms_state_data(dst)[0], keep, "a refused record must not touch the state");
    cr_assert_null(back.tokens);
    cr_assert_eq(record_encode(&r, ms_model_config(model), ms_model_fingerprint(model), b, n - 1), 0);
    free(b);
    ms_state_free(st), ms_state_free(ck), ms_state_free(dst);
}

/* --------------------------------------------------------------- redis */

TestSuite(store_redis, .init = setup_redis, .fini = teardown, .timeout = 60);

Test(store_redis, lease_is_exclusive_and_only_its_owner_releases_it)
{
    redis_store *rs = open_store();
    char a[REDIS_TOKEN_MAX], b[REDIS_TOKEN_MAX], ver[REDIS_VERSION_MAX], err[256];
    redis_new_token(a);
    redis_new_token(b);
    cr_assert_str_neq(a, b);
    cr_assert_eq(redis_lease_acquire(rs, "s1", a, 10000, 0, ver, err, sizeof err), 1, "%s", err);
    cr_assert_str_eq(ver, "");
    cr_assert_eq(redis_lease_acquire(rs, "s1", b, 10000, 0, ver, err, sizeof err), 0);
    cr_assert_eq(redis_lease_acquire(rs, "s2", b, 10000, 0, ver, err, sizeof err), 1, "other sessions are free");
    cr_assert_eq(redis_lease_release(rs, "s1", b, err, sizeof err), 0, "not b's lease");
    cr_assert_eq(redis_lease_renew(rs, "s1", b, 10000, err, sizeof err), 0);
    cr_assert_eq(redis_lease_acquire(rs, "s1", b, 10000, 0, ver, err, sizeof err), 0, "still a's");
    cr_assert_eq(redis_lease_release(rs, "s1", a, err, sizeof err), 1);
    cr_assert_eq(redis_lease_release(rs, "s1", a, err, sizeof err), 0, "released once");
    cr_assert_eq(redis_lease_acquire(rs, "s1", b, 10000, 0, ver, err, sizeof err), 1);
    redis_store_free(rs);
}

Test(store_redis, lease_expires_unless_renewed)
{
    redis_store *rs = open_store();
    char a[REDIS_TOKEN_MAX], b[REDIS_TOKEN_MAX], ver[REDIS_VERSION_MAX], err[256];
    redis_new_token(a);
    redis_new_token(b);
    cr_assert_eq(redis_lease_acquire(rs, "x", a, 300, 0, ver, err, sizeof err), 1, "%s", err);
    for (int i = 0; i < 5; i++) { /* renewed: held well past its first expiry */
        sleep_ms(150);
        cr_assert_eq(redis_lease_renew(rs, "x", a, 300, err, sizeof err), 1, "%s", err);
        cr_assert_eq(redis_lease_acquire(rs, "x", b, 300, 0, ver, err, sizeof err), 0);
    }
    sleep_ms(450); /* not renewed: gone, as after a kill -9 */
    cr_assert_eq(redis_lease_acquire(rs, "x", b, 300, 0, ver, err, sizeof err), 1, "%s", err);
    cr_assert_eq(redis_lease_renew(rs, "x", a, 300, err, sizeof err), 0, "a lost it");
    redis_store_free(rs);
}

Test(store_redis, saves_are_fenced_by_the_lease_and_get_new_versions)
{
    redis_store *rs = open_store();
    ms_state *st = ms_state_new(model), *ck = ms_state_new(model);
    int32_t toks[3];
    store_record r;
    fill(st, ck, &r, toks);
    size_t n;
    unsigned char *b = encode(&r, &n);
    char a[REDIS_TOKEN_MAX], t2[REDIS_TOKEN_MAX], v0[REDIS_VERSION_MAX], v1[REDIS_VERSION_MAX],
        v2[REDIS_VERSION_MAX], vl[REDIS_VERSION_MAX], err[256];
    redis_new_token(a);
    redis_new_token(t2);
    cr_assert_eq(redis_save(rs, "s", a, b, n, 3, 0, v1, err, sizeof err), 0, "no lease: not saved");
    unsigned char *got = NULL;
    size_t gl = 0;
    cr_assert_eq(redis_load(rs, "s", &got, &gl, vl, err, sizeof err), 0, "nothing stored");
    cr_assert_eq(redis_lease_acquire(rs, "s", a, 10000, 0, v0, err, sizeof err), 1);
    cr_assert_eq(redis_save(rs, "s", a, b, n, 3, 0, v1, err, sizeof err), 1, "%s", err);
    cr_assert_eq(redis_load(rs, "s", &got, &gl, vl, err, sizeof err), 1, "%s", err);
    cr_assert_eq(gl, n);
    cr_assert_eq(memcmp(got, b, n), 0, "binary value round trip");
    cr_assert_str_eq(vl, v1);
    free(got);
    cr_assert_eq(redis_save(rs, "s", a, b, n, 3, 0, v2, err, sizeof err), 1, "%s", err);
    cr_assert_str_neq(v1, v2, "every save is a new version");
    cr_assert_eq(redis_lease_release(rs, "s", a, err, sizeof err), 1);
    /* the next turn sees the version of the last save */
    cr_assert_eq(redis_lease_acquire(rs, "s", t2, 10000, 0, v0, err, sizeof err), 1);
    cr_assert_str_eq(v0, v2);
    /* the old owner, late, cannot overwrite */
    b[100] ^= 1;
    cr_assert_eq(redis_save(rs, "s", a, b, n, 3, 0, v1, err, sizeof err), 0);
    cr_assert_eq(redis_load(rs, "s", &got, &gl, vl, err, sizeof err), 1);
    cr_assert_str_eq(vl, v2);
    cr_assert_neq(memcmp(got, b, n), 0);
    free(got);
    free(b);
    ms_state_free(st), ms_state_free(ck);
    redis_store_free(rs);
}

Test(store_redis, delete_waits_for_the_lease_and_versions_differ_after_it)
{
    redis_store *rs = open_store();
    char a[REDIS_TOKEN_MAX], v1[REDIS_VERSION_MAX], v2[REDIS_VERSION_MAX], err[256];
    redis_new_token(a);
    const unsigned char val[] = "x";
    cr_assert_eq(redis_delete(rs, "d", err, sizeof err), 0, "unknown");
    cr_assert_eq(redis_lease_acquire(rs, "d", a, 10000, 0, v1, err, sizeof err), 1);
    cr_assert_eq(redis_save(rs, "d", a, val, 1, 3, 0, v1, err, sizeof err), 1);
    cr_assert_eq(redis_delete(rs, "d", err, sizeof err), 2, "busy while leased");
    cr_assert_eq(redis_lease_release(rs, "d", a, err, sizeof err), 1);
    cr_assert_eq(redis_delete(rs, "d", err, sizeof err), 1);
    cr_assert_eq(redis_lease_acquire(rs, "d", a, 10000, 0, v2, err, sizeof err), 1);
    cr_assert_eq(redis_save(rs, "d", NULL, val, 1, 3, 0, v2, err, sizeof err), 2, "import: busy while leased");
    cr_assert_eq(redis_lease_release(rs, "d", a, err, sizeof err), 1);
    cr_assert_eq(redis_save(rs, "d", NULL, val, 1, 3, 0, v2, err, sizeof err), 1, "import: no lease needed");
    long long nt = 0;
    long ttl = 0;
    int leased = 1;
    cr_assert_eq(redis_info(rs, "d", &nt, &ttl, &leased, err, sizeof err), 1, "%s", err);
    cr_assert(nt == 3 && ttl == -1 && !leased);
    cr_assert_eq(redis_info(rs, "nope", &nt, &ttl, &leased, err, sizeof err), 0);
    cr_assert_str_neq(v1, v2, "a cache holding the deleted session's version must not match");
    redis_store_free(rs);
}

static void collect(const char *id, void *ud)
{
    char *acc = ud;
    strcat(acc, id);
    strcat(acc, ",");
}

Test(store_redis, scan_lists_sessions_of_this_prefix_only_and_ttl_is_set)
{
    redis_store *rs = open_store();
    char url[64], err[256], ver[REDIS_VERSION_MAX];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", redis_port);
    redis_store *other_prefix = redis_store_new(url, "u*:", 1000, err, sizeof err);
    const unsigned char val[] = "x";
    cr_assert_eq(redis_save(rs, "a.b:c-1", NULL, val, 1, 3, 0, ver, err, sizeof err), 1, "%s", err);
    cr_assert_eq(redis_save(rs, "z", NULL, val, 1, 3, 100, ver, err, sizeof err), 1, "%s", err);
    cr_assert_eq(redis_save(other_prefix, "nope", NULL, val, 1, 3, 0, ver, err, sizeof err), 1, "%s", err);
    char acc[256] = "";
    cr_assert_eq(redis_scan(rs, collect, acc, err, sizeof err), 2, "%s", err);
    cr_assert(strstr(acc, "a.b:c-1,") && strstr(acc, "z,") && !strstr(acc, "nope"), "%s", acc);
    acc[0] = 0;
    cr_assert_eq(redis_scan(other_prefix, collect, acc, err, sizeof err), 1, "%s", err);
    cr_assert_str_eq(acc, "nope,");
    /* TTL as seen by redis-cli */
    char cmd[200];
    snprintf(cmd, sizeof cmd, "redis-cli -p %d TTL 't:{z}:state'", redis_port);
    FILE *p = popen(cmd, "r");
    int ttl = -9;
    cr_assert_eq(fscanf(p, "%d", &ttl), 1);
    pclose(p);
    cr_assert(ttl > 90 && ttl <= 100, "ttl %d", ttl);
    redis_store_free(other_prefix);
    redis_store_free(rs);
}

Test(store_redis, unreachable_store_is_an_error_and_recovers)
{
    redis_store *rs = open_store();
    char err[256], tok[REDIS_TOKEN_MAX], ver[REDIS_VERSION_MAX];
    redis_new_token(tok);
    cr_assert_eq(redis_store_ping(rs, err, sizeof err), 0);
    int port = redis_port;
    stop_redis();
    err[0] = 0;
    cr_assert_eq(redis_lease_acquire(rs, "s", tok, 1000, 0, ver, err, sizeof err), -1);
    cr_assert(strstr(err, "127.0.0.1"), "the message names the store: %s", err);
    cr_assert_null(strstr(err, "pw"));
    /* the same store comes back on the same port: the next call reconnects */
    redis_port = port;
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    redis_pid = fork();
    if (redis_pid == 0) {
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--dir", dir,
               "--save", "", (char *)NULL);
        _exit(127);
    }
    int ok = 0;
    for (int i = 0; i < 200 && !ok; i++) {
        ok = redis_store_ping(rs, err, sizeof err) == 0;
        if (!ok) sleep_ms(25);
    }
    cr_assert(ok, "%s", err);
    cr_assert_eq(redis_lease_acquire(rs, "s", tok, 1000, 0, ver, err, sizeof err), 1, "%s", err);
    redis_store_free(rs);
}

/* ---------------------------------------------------------- auth, URLs */

TestSuite(store_redis_auth, .init = setup, .fini = teardown, .timeout = 60);

Test(store_redis_auth, password_and_database_from_the_url)
{
    start_redis("--requirepass", "pw");
    char url[96], err[256], ver[REDIS_VERSION_MAX];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", redis_port);
    redis_store *no = redis_store_new(url, "t:", 1000, err, sizeof err);
    cr_assert_eq(redis_store_ping(no, err, sizeof err), -1, "no password: refused");
    cr_assert(strstr(err, "NOAUTH") || strstr(err, "auth"), "%s", err);
    redis_store_free(no);
    snprintf(url, sizeof url, "redis://default:pw@127.0.0.1:%d/3", redis_port);
    redis_store *rs = redis_store_new(url, "t:", 1000, err, sizeof err);
    cr_assert_not_null(rs, "%s", err);
    cr_assert(strstr(redis_store_where(rs), "/3"), "%s", redis_store_where(rs));
    cr_assert_null(strstr(redis_store_where(rs), "pw"));
    const unsigned char val[] = "x";
    cr_assert_eq(redis_save(rs, "k", NULL, val, 1, 3, 0, ver, err, sizeof err), 1, "%s", err);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "redis-cli -p %d -a pw --no-auth-warning -n 3 EXISTS 't:{k}:state'", redis_port);
    FILE *p = popen(cmd, "r");
    int ex = -1;
    cr_assert_eq(fscanf(p, "%d", &ex), 1);
    pclose(p);
    cr_assert_eq(ex, 1, "stored in database 3");
    redis_store_free(rs);
}

Test(store_redis_auth, malformed_urls_are_refused_with_a_message)
{
    const char *bad[] = {"http://h:1", "redis://", "redis://h:0", "redis://h:99999", "redis://h:12x",
                         "redis://h/abc", "redis://[::1", "redis://u:p%zz@h"};
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        cr_assert_null(redis_store_new(bad[i], "p:", 100, err, sizeof err), "%s accepted", bad[i]);
        cr_assert(err[0], "no message for %s", bad[i]);
    }
    redis_store *rs = redis_store_new("redis://u:p%40ss@[::1]:7000/2", "p:", 100, err, sizeof err);
    cr_assert_not_null(rs, "%s", err);
    cr_assert_str_eq(redis_store_where(rs), "::1:7000/2");
    redis_store_free(rs);
    rs = redis_store_new("redis://localhost", "p:", 100, err, sizeof err);
    cr_assert_str_eq(redis_store_where(rs), "localhost:6379/0");
    redis_store_free(rs);
}
