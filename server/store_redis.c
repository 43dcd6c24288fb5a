/*
 * store_redis.c - sessions in Redis/Valkey with hiredis (synchronous API).
 *
 * Every operation that touches both keys of a session is one Lua script, so
 * it is atomic on the server: taking the lease and reading the version,
 * saving only while the lease is ours (a replica whose lease expired while
 * it was stalled must not overwrite the turn another replica ran since),
 * releasing only our own lease, deleting only an idle session.
 */
#include "store_redis.h"

#include <hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>

#include "status.h"

#define N_CONN 4

typedef struct conn {
    pthread_mutex_t mu;
    redisContext *c; /* NULL until connected, and after an I/O error */
} conn;

struct redis_store {
    char host[256];
    int port, db;
    char user[128], pass[256];
    char *prefix;
    int timeout_ms;
    char where[300];
    conn conns[N_CONN];
    pthread_mutex_t rr_mu;
    unsigned rr;
};

/* ------------------------------------------------------------------ URL */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Copies n bytes of s into out (cap) decoding %XX; -1 when malformed or too long. */
static int pct_copy(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int a = hexval(s[i + 1]), b = hexval(s[i + 2]);
            if (a < 0 || b < 0) return -1;
            c = (char)(a * 16 + b);
            i += 2;
        }
        if (o + 1 >= cap || c == 0) return -1;
        out[o++] = c;
    }
    out[o] = 0;
    return 0;
}

static int parse_url(redis_store *rs, const char *url, char *err, size_t errcap)
{
    static const char scheme[] = "redis://";
    if (strncmp(url, scheme, sizeof scheme - 1))
        return srv_errf(err, errcap, "state store '%s': expected redis://[user:password@]host:port[/db]", url);
    const char *p = url + sizeof scheme - 1;
    const char *end = p + strcspn(p, "/?#");
    const char *at = memchr(p, '@', (size_t)(end - p));
    if (at) { /* the last '@' before the host separates the credentials */
        for (const char *q = at; q < end; q++)
            if (*q == '@') at = q;
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *ue = colon ? colon : at;
        if (pct_copy(rs->user, sizeof rs->user, p, (size_t)(ue - p)) ||
            (colon && pct_copy(rs->pass, sizeof rs->pass, colon + 1, (size_t)(at - colon - 1))))
            return srv_errf(err, errcap, "state store URL: malformed user or password");
        if (!colon) { /* redis://password@host, as redis-cli -u reads it */
            memcpy(rs->pass, rs->user, sizeof rs->pass < sizeof rs->user ? sizeof rs->pass : sizeof rs->user);
            rs->user[0] = 0;
        }
        p = at + 1;
    }
    const char *hs = p, *he;
    if (*p == '[') { /* [v6 address] */
        he = memchr(p, ']', (size_t)(end - p));
        if (!he) return srv_errf(err, errcap, "state store URL: unclosed '[' in host");
        hs = p + 1;
        p = he + 1;
    } else {
        he = memchr(p, ':', (size_t)(end - p));
        if (!he) he = end;
        p = he;
    }
    if (he == hs || (size_t)(he - hs) >= sizeof rs->host)
        return srv_errf(err, errcap, "state store URL '%s': missing or too long host", url);
    memcpy(rs->host, hs, (size_t)(he - hs));
    rs->host[he - hs] = 0;
    rs->port = 6379;
    if (p < end && *p == ':') {
        char *e;
        long port = strtol(p + 1, &e, 10);
        if (e != end || port < 1 || port > 65535)
            return srv_errf(err, errcap, "state store URL '%s': bad port", url);
        rs->port = (int)port;
    } else if (p != end) {
        return srv_errf(err, errcap, "state store URL '%s': unexpected text after the host", url);
    }
    rs->db = 0;
    if (*end == '/' && end[1]) {
        char *e;
        long db = strtol(end + 1, &e, 10);
        if (*e || db < 0 || db > 100000) return srv_errf(err, errcap, "state store URL '%s': bad database number", url);
        rs->db = (int)db;
    } else if (*end && strcmp(end, "/")) {
        return srv_errf(err, errcap, "state store URL '%s': unexpected '%s'", url, end);
    }
    snprintf(rs->where, sizeof rs->where, "%s:%d/%d", rs->host, rs->port, rs->db);
    return 0;
}

redis_store *redis_store_new(const char *url, const char *prefix, int timeout_ms, char *err,
                             size_t errcap)
{
    redis_store *rs = calloc(1, sizeof *rs);
    if (!rs) {
        srv_errf(err, errcap, "out of memory");
        return NULL;
    }
    if (parse_url(rs, url, err, errcap) || !(rs->prefix = strdup(prefix ? prefix : ""))) {
        if (!rs->prefix && !err[0]) srv_errf(err, errcap, "out of memory");
        free(rs);
        return NULL;
    }
    rs->timeout_ms = timeout_ms > 0 ? timeout_ms : 2000;
    for (int i = 0; i < N_CONN; i++) pthread_mutex_init(&rs->conns[i].mu, NULL);
    pthread_mutex_init(&rs->rr_mu, NULL);
    return rs;
}

void redis_store_free(redis_store *rs)
{
    if (!rs) return;
    for (int i = 0; i < N_CONN; i++) {
        if (rs->conns[i].c) redisFree(rs->conns[i].c);
        pthread_mutex_destroy(&rs->conns[i].mu);
    }
    pthread_mutex_destroy(&rs->rr_mu);
    explicit_bzero(rs->pass, sizeof rs->pass);
    free(rs->prefix);
    free(rs);
}

const char *redis_store_where(const redis_store *rs) { return rs->where; }

void redis_new_token(char *tok)
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n > 0) got += (size_t)n;
    }
    for (int i = 0; i < 16; i++) snprintf(tok + 2 * i, 3, "%02x", b[i]);
}

/* ---------------------------------------------------------- connections */

static void drop_conn(conn *k)
{
    if (k->c) redisFree(k->c);
    k->c = NULL;
}

/* Takes a connection (locked) and connects it if needed; NULL with err. */
static conn *get_conn(redis_store *rs, char *err, size_t errcap)
{
    conn *k = NULL;
    for (int i = 0; i < N_CONN && !k; i++)
        if (!pthread_mutex_trylock(&rs->conns[i].mu)) k = &rs->conns[i];
    if (!k) {
        pthread_mutex_lock(&rs->rr_mu);
        k = &rs->conns[rs->rr++ % N_CONN];
        pthread_mutex_unlock(&rs->rr_mu);
        pthread_mutex_lock(&k->mu);
    }
    if (k->c) return k;
    struct timeval tv = {rs->timeout_ms / 1000, (rs->timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(rs->host, rs->port, tv);
    if (!c || c->err) {
        srv_errf(err, errcap, "state store %s unreachable: %s", rs->where, c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        pthread_mutex_unlock(&k->mu);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisEnableKeepAlive(c);
    k->c = c;
    redisReply *r = NULL;
    if (rs->pass[0]) {
        r = rs->user[0] ? redisCommand(c, "AUTH %s %s", rs->user, rs->pass)
                        : redisCommand(c, "AUTH %s", rs->pass);
        if (!r || r->type == REDIS_REPLY_ERROR) goto bad;
        freeReplyObject(r);
    }
    if (rs->db) {
        r = redisCommand(c, "SELECT %d", rs->db);
        if (!r || r->type == REDIS_REPLY_ERROR) goto bad;
        freeReplyObject(r);
    }
    return k;
bad:
    srv_errf(err, errcap, "state store %s: %s", rs->where,
         r ? r->str : c->errstr[0] ? c->errstr : "connection lost");
    if (r) freeReplyObject(r);
    drop_conn(k);
    pthread_mutex_unlock(&k->mu);
    return NULL;
}

/* Runs one command; returns the reply (caller frees) or NULL with err, in
 * which case an I/O failure also drops the connection. Error replies are
 * turned into NULL as well. */
static redisReply *run(redis_store *rs, int argc, const char **argv, const size_t *lens, char *err,
                       size_t errcap)
{
    conn *k = get_conn(rs, err, errcap);
    if (!k) return NULL;
    redisReply *r = redisCommandArgv(k->c, argc, argv, lens);
    if (!r) {
        srv_errf(err, errcap, "state store %s: %s", rs->where,
             k->c->errstr[0] ? k->c->errstr : "connection lost");
        drop_conn(k);
    } else if (r->type == REDIS_REPLY_ERROR) {
        srv_errf(err, errcap, "state store %s: %s", rs->where, r->str);
        freeReplyObject(r);
        r = NULL;
    }
    pthread_mutex_unlock(&k->mu);
    return r;
}

static void keys_of(const redis_store *rs, const char *id, char *state, char *lease, size_t cap)
{
    snprintf(state, cap, "%s{%s}:state", rs->prefix, id);
    snprintf(lease, cap, "%s{%s}:lease", rs->prefix, id);
}

/* EVAL script with the session's two keys and the given arguments. */
static redisReply *eval2(redis_store *rs, const char *script, const char *id, int nargs,
                         const char **args, const size_t *arglens, char *err, size_t errcap)
{
    char ks[512], kl[512];
    keys_of(rs, id, ks, kl, sizeof ks);
    const char *argv[12];
    size_t lens[12];
    argv[0] = "EVAL", argv[1] = script, argv[2] = "2", argv[3] = ks, argv[4] = kl;
    for (int i = 0; i < 5; i++) lens[i] = strlen(argv[i]);
    for (int i = 0; i < nargs; i++) {
        argv[5 + i] = args[i];
        lens[5 + i] = arglens ? arglens[i] : strlen(args[i]);
    }
    return run(rs, 5 + nargs, argv, lens, err, errcap);
}

int redis_store_ping(redis_store *rs, char *err, size_t errcap)
{
    const char *argv[] = {"PING"};
    redisReply *r = run(rs, 1, argv, NULL, err, errcap);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

/* ---------------------------------------------------------------- lease */

static const char ACQUIRE[] =
    "if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end\n"
    "local v = redis.call('HGET', KEYS[1], 'v')\n"
    "if v and tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end\n"
    "return v or ''\n";

static const char RENEW[] =
    "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[2])\n"
    "return 1\n";

static const char RELEASE[] =
    "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end\n"
    "redis.call('DEL', KEYS[2])\n"
    "return 1\n";

static const char SAVE[] =
    "if ARGV[1] == '' then\n"
    "  if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end\n"
    "elseif redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'r', ARGV[2], 'v', ARGV[3], 'n', ARGV[5])\n"
    "if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4])\n"
    "else redis.call('PERSIST', KEYS[1]) end\n"
    "return 1\n";

static const char DELETE[] =
    "if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end\n"
    "return redis.call('DEL', KEYS[1])\n";

static int int_reply(redisReply *r, char *err, size_t errcap)
{
    if (!r) return -1;
    int v = r->type == REDIS_REPLY_INTEGER ? (int)r->integer : -1;
    if (v < 0) srv_errf(err, errcap, "state store: unexpected reply type %d", r->type);
    freeReplyObject(r);
    return v;
}

int redis_lease_acquire(redis_store *rs, const char *id, const char *tok, long ttl_ms, long ttl_s,
                        char *ver, char *err, size_t errcap)
{
    char ms[24], s[24];
    snprintf(ms, sizeof ms, "%ld", ttl_ms);
    snprintf(s, sizeof s, "%ld", ttl_s);
    const char *args[] = {tok, ms, s};
    redisReply *r = eval2(rs, ACQUIRE, id, 3, args, NULL, err, errcap);
    if (!r) return -1;
    int rc;
    if (r->type == REDIS_REPLY_NIL) rc = 0;
    else if (r->type == REDIS_REPLY_STRING && r->len < REDIS_VERSION_MAX) {
        memcpy(ver, r->str, r->len);
        ver[r->len] = 0;
        rc = 1;
    } else {
        rc = srv_errf(err, errcap, "state store: unexpected reply to the lease script");
    }
    freeReplyObject(r);
    return rc;
}

int redis_lease_renew(redis_store *rs, const char *id, const char *tok, long ttl_ms, char *err,
                      size_t errcap)
{
    char ms[24];
    snprintf(ms, sizeof ms, "%ld", ttl_ms);
    const char *args[] = {tok, ms};
    return int_reply(eval2(rs, RENEW, id, 2, args, NULL, err, errcap), err, errcap);
}

int redis_lease_release(redis_store *rs, const char *id, const char *tok, char *err, size_t errcap)
{
    const char *args[] = {tok};
    return int_reply(eval2(rs, RELEASE, id, 1, args, NULL, err, errcap), err, errcap);
}

/* --------------------------------------------------------------- values */

int redis_load(redis_store *rs, const char *id, unsigned char **buf, size_t *len, char *ver,
               char *err, size_t errcap)
{
    char ks[512], kl[512];
    keys_of(rs, id, ks, kl, sizeof ks);
    const char *argv[] = {"HMGET", ks, "v", "r"};
    *buf = NULL;
    *len = 0;
    ver[0] = 0;
    redisReply *r = run(rs, 4, argv, NULL, err, errcap);
    if (!r) return -1;
    int rc = -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        srv_errf(err, errcap, "state store: unexpected reply to HMGET");
    } else if (r->element[1]->type == REDIS_REPLY_NIL) {
        rc = 0;
    } else if (r->element[1]->type != REDIS_REPLY_STRING ||
               r->element[0]->type != REDIS_REPLY_STRING ||
               r->element[0]->len >= REDIS_VERSION_MAX) {
        srv_errf(err, errcap, "state store: key %s is not a session value", ks);
    } else if (!(*buf = malloc(r->element[1]->len ? r->element[1]->len : 1))) {
        srv_errf(err, errcap, "out of memory reading session %s", id);
    } else {
        memcpy(*buf, r->element[1]->str, r->element[1]->len);
        *len = r->element[1]->len;
        memcpy(ver, r->element[0]->str, r->element[0]->len);
        ver[r->element[0]->len] = 0;
        rc = 1;
    }
    freeReplyObject(r);
    return rc;
}

int redis_save(redis_store *rs, const char *id, const char *tok, const unsigned char *buf,
               size_t len, long long n_tokens, long ttl_s, char *ver, char *err, size_t errcap)
{
    char nv[REDIS_TOKEN_MAX], s[24], nt[24];
    redis_new_token(nv);
    snprintf(s, sizeof s, "%ld", ttl_s);
    snprintf(nt, sizeof nt, "%lld", n_tokens);
    const char *args[] = {tok ? tok : "", (const char *)buf, nv, s, nt};
    size_t lens[] = {tok ? strlen(tok) : 0, len, strlen(nv), strlen(s), strlen(nt)};
    int rc = int_reply(eval2(rs, SAVE, id, 5, args, lens, err, errcap), err, errcap);
    if (rc == 1) memcpy(ver, nv, sizeof nv);
    return rc;
}

int redis_info(redis_store *rs, const char *id, long long *n_tokens, long *ttl_s, int *leased,
               char *err, size_t errcap)
{
    char ks[512], kl[512];
    keys_of(rs, id, ks, kl, sizeof ks);
    static const char INFO[] =
        "local n = redis.call('HGET', KEYS[1], 'n')\n"
        "if not n then return false end\n"
        "return {n, redis.call('TTL', KEYS[1]), redis.call('EXISTS', KEYS[2])}\n";
    redisReply *r = eval2(rs, INFO, id, 0, NULL, NULL, err, errcap);
    if (!r) return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[0]->type == REDIS_REPLY_STRING) {
        *n_tokens = strtoll(r->element[0]->str, NULL, 10);
        *ttl_s = r->element[1]->type == REDIS_REPLY_INTEGER ? (long)r->element[1]->integer : -1;
        *leased = r->element[2]->type == REDIS_REPLY_INTEGER && r->element[2]->integer == 1;
        rc = 1;
    } else if (r->type != REDIS_REPLY_NIL) {
        rc = srv_errf(err, errcap, "state store: unexpected reply to the info script");
    }
    freeReplyObject(r);
    return rc;
}

int redis_set_aside(redis_store *rs, const char *id, char *err, size_t errcap)
{
    char ks[512], kl[512], kr[520];
    keys_of(rs, id, ks, kl, sizeof ks);
    snprintf(kr, sizeof kr, "%s{%s}:rejected", rs->prefix, id);
    const char *argv[] = {"RENAME", ks, kr};
    redisReply *r = run(rs, 3, argv, NULL, err, errcap);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

int redis_delete(redis_store *rs, const char *id, char *err, size_t errcap)
{
    return int_reply(eval2(rs, DELETE, id, 0, NULL, NULL, err, errcap), err, errcap);
}

int redis_scan(redis_store *rs, void (*fn)(const char *id, void *ud), void *ud, char *err,
               size_t errcap)
{
    /* MATCH pattern: the prefix with glob characters escaped. */
    char pat[600];
    size_t o = 0;
    for (const char *p = rs->prefix; *p && o + 3 < 500; p++) {
        if (strchr("*?[]\\", *p)) pat[o++] = '\\';
        pat[o++] = *p;
    }
    snprintf(pat + o, sizeof pat - o, "{*}:state");
    size_t plen = strlen(rs->prefix);
    char cursor[32] = "0";
    int n = 0;
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", pat, "COUNT", "1000"};
        redisReply *r = run(rs, 6, argv, NULL, err, errcap);
        if (!r) return -1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= sizeof cursor ||
            r->element[1]->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            return srv_errf(err, errcap, "state store: unexpected reply to SCAN");
        }
        memcpy(cursor, r->element[0]->str, r->element[0]->len);
        cursor[r->element[0]->len] = 0;
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            const redisReply *k = r->element[1]->element[i];
            static const char tail[] = "}:state";
            size_t tl = sizeof tail - 1;
            if (k->type != REDIS_REPLY_STRING || k->len < plen + 2 + tl) continue;
            size_t idlen = k->len - plen - 1 - tl;
            char id[160];
            if (idlen == 0 || idlen >= sizeof id || k->str[plen] != '{') continue;
            memcpy(id, k->str + plen + 1, idlen);
            id[idlen] = 0;
            fn(id, ud);
            n++;
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0"));
    return n;
}

/* ------------------------------------------------------------ responses */

static void response_key(const redis_store *rs, const char *id, char *key, size_t cap)
{
    snprintf(key, cap, "%sresponse:%s", rs->prefix, id);
}

int redis_response_put(redis_store *rs, const char *id, const char *buf, size_t len, long ttl_s,
                       char *err, size_t errcap)
{
    char key[512], s[24];
    response_key(rs, id, key, sizeof key);
    snprintf(s, sizeof s, "%ld", ttl_s);
    const char *argv[] = {"SET", key, buf, "EX", s};
    size_t lens[] = {3, strlen(key), len, 2, strlen(s)};
    redisReply *r = run(rs, 5, argv, lens, err, errcap);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

int redis_response_get(redis_store *rs, const char *id, char **buf, size_t *len, char *err,
                       size_t errcap)
{
    char key[512];
    response_key(rs, id, key, sizeof key);
    const char *argv[] = {"GET", key};
    *buf = NULL;
    *len = 0;
    redisReply *r = run(rs, 2, argv, NULL, err, errcap);
    if (!r) return -1;
    int rc = -1;
    if (r->type == REDIS_REPLY_NIL) {
        rc = 0;
    } else if (r->type != REDIS_REPLY_STRING) {
        srv_errf(err, errcap, "state store: key %s is not a stored response", key);
    } else if (!(*buf = malloc(r->len + 1))) {
        srv_errf(err, errcap, "out of memory reading response %s", id);
    } else {
        memcpy(*buf, r->str, r->len);
        (*buf)[r->len] = 0;
        *len = r->len;
        rc = 1;
    }
    freeReplyObject(r);
    return rc;
}

int redis_response_delete(redis_store *rs, const char *id, char *err, size_t errcap)
{
    char key[512];
    response_key(rs, id, key, sizeof key);
    const char *argv[] = {"DEL", key};
    return int_reply(run(rs, 2, argv, NULL, err, errcap), err, errcap);
}
