/*
 * store.c - the session store interface and its backends.
 *
 * Memory and directory share one implementation (the pool does the work:
 * spill, write-behind and files live in sessions.c / state_store.c); Redis
 * has its own. A shared store's operations are timed into the store latency
 * histogram and keep an "up" flag that /health and /metrics report.
 */
#include "store.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json_write.h"
#include "metrics.h"
#include "resp_files.h"
#include "resp_store.h"
#include "state_record.h"

typedef struct sstore_ops {
    const char *kind;
    int shared;
    char *(*list_json)(sstore *st, int *rc);
    char *(*info_json)(sstore *st, const char *id, int *rc);
    int (*del)(sstore *st, const char *id, char *err, size_t errcap);
    int (*export_state)(sstore *st, const char *id, FILE *f, char *err, size_t errcap);
    int (*import_state)(sstore *st, const char *id, const char *path, char *err, size_t errcap);
} sstore_ops;

struct sstore {
    const sstore_ops *ops;
    sess_pool *pool;
    const ms_model *model;
    const char *const *init_names;
    int n_init;
    redis_store *rs; /* redis only */
    const char *dir; /* directory only */
    long ttl_s, lease_ms;
    atomic_llong resp_expired_at; /* directory: when old response files were last removed */
    atomic_int up;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Records the outcome of one store operation that started at t0 (0: not
 * timed; rc < 0 = the store failed). Returns rc. */
static int seen(sstore *st, double t0, int rc)
{
    if (t0 > 0) metrics_observe(MET_H_STORE, now_s() - t0);
    int up = rc >= 0;
    if (!up) metrics_add(MET_C_STORE_ERRORS, 1);
    if (atomic_exchange(&st->up, up) != up) metrics_set(MET_G_STORE_UP, up);
    return rc;
}

/* ================================================= memory and directory */

static char *pool_list(sstore *st, int *rc)
{
    *rc = SSTORE_OK;
    return pool_list_json(st->pool);
}

static char *pool_info(sstore *st, const char *id, int *rc)
{
    char *t = pool_info_json(st->pool, id);
    *rc = t ? SSTORE_OK : SSTORE_UNKNOWN;
    return t;
}

/* The pool's status as this interface's codes: its own failures (memory,
 * a file) and its limit are the server's, not the caller's input. */
static int from_pool(srv_status s)
{
    switch (s) {
    case SRV_OK: return SSTORE_OK;
    case SRV_ERR_NOT_FOUND: return SSTORE_UNKNOWN;
    case SRV_ERR_BUSY: return SSTORE_BUSY;
    case SRV_ERR_SESSIONS_FULL: return SSTORE_FULL;
    case SRV_ERR_NOMEM:
    case SRV_ERR_IO: return SSTORE_FAILED;
    default: return SSTORE_INVALID;
    }
}

static int pool_del(sstore *st, const char *id, char *err, size_t errcap)
{
    return from_pool(pool_delete(st->pool, id, err, errcap));
}

static int pool_exp(sstore *st, const char *id, FILE *f, char *err, size_t errcap)
{
    return from_pool(pool_export(st->pool, id, f, err, errcap));
}

static int pool_imp(sstore *st, const char *id, const char *path, char *err, size_t errcap)
{
    return from_pool(pool_import(st->pool, id, path, err, errcap));
}

static const sstore_ops memory_ops = {"memory", 0, pool_list, pool_info, pool_del, pool_exp, pool_imp};
static const sstore_ops dir_ops = {"directory", 0, pool_list, pool_info, pool_del, pool_exp, pool_imp};

/* ================================================================ redis */

static int known_init(const sstore *st, const char *name)
{
    for (int i = 0; i < st->n_init; i++)
        if (!strcmp(st->init_names[i], name)) return 1;
    return 0;
}

/* Empties se: zero state, no history, no initial state (the next request's
 * match restarts it from whatever it names). */
static void make_empty(session *se)
{
    ms_state_reset(se->state);
    se->init_state[0] = 0;
    se->n_tokens = 0;
    se->has_ckpt = 0;
    se->n_ckpt = 0;
}

/* Reads the stored record of se into se (decode checks everything a file
 * load checks). 0 ok, 1 rejected (note filled, value set aside, se empty),
 * -1 store error, -2 out of memory. */
static int load_into(sstore *st, session *se, char *ver, char *note, size_t notecap, char *err,
                     size_t errcap)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    double t0 = now_s();
    int rc = seen(st, t0, redis_load(st->rs, se->id, &buf, &len, ver, err, errcap));
    if (rc < 0) return -1;
    if (rc == 0) { /* gone since the lease was taken (expired by TTL): a new session */
        make_empty(se);
        return 0;
    }
    char what[200];
    snprintf(what, sizeof what, "session %s in the state store", se->id);
    store_record r = {.state = se->state, .ckpt = se->ckpt};
    char why[512] = "";
    int bad = record_decode(buf, len, &r, st->model, what, why, sizeof why);
    free(buf);
    if (!bad && r.init_state[0] && !known_init(st, r.init_state)) {
        snprintf(why, sizeof why, "%s: started from initial state '%s', which this server does not "
                 "have (--init-state)", what, r.init_state);
        free(r.tokens);
        bad = 1;
    }
    if (bad) {
        if (strstr(why, "out of memory")) {
            snprintf(err, errcap, "%s", why);
            return -2;
        }
        snprintf(note, notecap, "%s", why);
        metrics_add(MET_C_STATE_ERRORS, 1);
        char e2[256];
        t0 = now_s();
        seen(st, t0, redis_set_aside(st->rs, se->id, e2, sizeof e2));
        make_empty(se);
        ver[0] = 0;
        return 1;
    }
    free(se->tokens);
    se->tokens = r.tokens;
    se->n_tokens = se->cap_tokens = r.n_tokens;
    se->has_ckpt = r.n_ckpt > 0 || (r.tokens_known && r.n_tokens == 0);
    se->n_ckpt = r.n_ckpt;
    memcpy(se->init_state, r.init_state, sizeof se->init_state);
    return 0;
}

int sstore_turn_begin(sstore *st, session *se, sstore_turn *t, char *note, size_t notecap,
                      char *err, size_t errcap)
{
    note[0] = 0;
    t->held = 0;
    if (!st->ops->shared) return SSTORE_OK;
    redis_new_token(t->tok);
    double t0 = now_s();
    int rc = seen(st, t0, redis_lease_acquire(st->rs, se->id, t->tok, st->lease_ms, st->ttl_s,
                                              t->ver, err, errcap));
    if (rc < 0) return SSTORE_DOWN;
    if (rc == 0) {
        metrics_add(MET_C_LEASE_WAITS, 1);
        return SSTORE_BUSY;
    }
    t->held = 1;
    if (!strcmp(t->ver, se->store_ver)) {
        if (t->ver[0]) metrics_add(MET_C_STORE_HITS, 1);
        return SSTORE_OK;
    }
    if (!t->ver[0]) { /* deleted (or expired) in the store: our copy is no longer the session */
        make_empty(se);
        se->store_ver[0] = 0;
        return SSTORE_OK;
    }
    metrics_add(MET_C_STORE_MISSES, 1);
    se->store_ver[0] = 0; /* untrusted until loaded */
    char ver[REDIS_VERSION_MAX];
    rc = load_into(st, se, ver, note, notecap, err, errcap);
    if (rc < 0) {
        char e2[256];
        t0 = now_s();
        seen(st, t0, redis_lease_release(st->rs, se->id, t->tok, e2, sizeof e2));
        t->held = 0;
        return rc == -1 ? SSTORE_DOWN : SSTORE_INVALID;
    }
    memcpy(se->store_ver, ver, sizeof se->store_ver);
    return SSTORE_OK;
}

int sstore_turn_end(sstore *st, session *se, sstore_turn *t, char *err, size_t errcap)
{
    if (!st->ops->shared || !t->held) return SSTORE_OK;
    const ms_config *cfg = ms_model_config(st->model);
    store_record r = {.state = se->state,
                      .ckpt = se->has_ckpt ? se->ckpt : NULL,
                      .n_ckpt = se->n_ckpt,
                      .tokens = se->tokens,
                      .n_tokens = se->n_tokens,
                      .tokens_known = 1};
    memcpy(r.init_state, se->init_state, sizeof r.init_state);
    size_t n = record_size(&r, cfg);
    unsigned char *buf = malloc(n);
    int out = SSTORE_OK;
    se->store_ver[0] = 0;
    if (!buf) {
        snprintf(err, errcap, "out of memory encoding session %s", se->id);
        out = SSTORE_INVALID;
    } else {
        record_encode(&r, cfg, ms_model_fingerprint(st->model), buf, n);
        char ver[REDIS_VERSION_MAX];
        double t0 = now_s();
        int rc = seen(st, t0, redis_save(st->rs, se->id, t->tok, buf, n, (long long)se->n_tokens,
                                         st->ttl_s, ver, err, errcap));
        free(buf);
        if (rc == 1) memcpy(se->store_ver, ver, sizeof se->store_ver);
        else if (rc == 0) {
            snprintf(err, errcap, "session %s: the turn's lease expired and another turn took the "
                     "session; this turn's state was not stored", se->id);
            out = SSTORE_BUSY;
        } else out = SSTORE_DOWN;
    }
    char e2[256];
    double t0 = now_s();
    seen(st, t0, redis_lease_release(st->rs, se->id, t->tok, e2, sizeof e2));
    t->held = 0;
    return out;
}

void sstore_turn_abort(sstore *st, const char *id, sstore_turn *t)
{
    if (!st->ops->shared || !t->held) return;
    char err[256];
    double t0 = now_s();
    seen(st, t0, redis_lease_release(st->rs, id, t->tok, err, sizeof err));
    t->held = 0;
}

int sstore_turn_renew(sstore *st, const char *id, const sstore_turn *t, char *err, size_t errcap)
{
    if (!st->ops->shared || !t->held) return SSTORE_OK;
    double t0 = now_s();
    int rc = seen(st, t0, redis_lease_renew(st->rs, id, t->tok, st->lease_ms, err, errcap));
    return rc < 0 ? SSTORE_DOWN : rc == 0 ? SSTORE_BUSY : SSTORE_OK;
}

/* Appends session id's object as the store describes it to b. SSTORE_OK,
 * _UNKNOWN or _DOWN (nothing appended then). */
static int redis_info_obj(sstore *st, const char *id, jbuf *b)
{
    long long nt = 0;
    long ttl = -1;
    int leased = 0;
    char err[256];
    double t0 = now_s();
    int r = seen(st, t0, redis_info(st->rs, id, &nt, &ttl, &leased, err, sizeof err));
    if (r <= 0) return r < 0 ? SSTORE_DOWN : SSTORE_UNKNOWN;
    jb_puts(b, "{\"id\":");
    jb_cstr(b, id);
    jb_puts(b, ",\"object\":\"session\",\"tokens\":");
    jb_i64(b, nt);
    jb_puts(b, ",\"in_memory\":false,\"in_store\":true,\"busy\":");
    jb_bool(b, leased);
    jb_puts(b, ",\"state_bytes\":");
    jb_i64(b, (int64_t)ms_state_bytes(st->model));
    jb_puts(b, ",\"expires_in\":");
    jb_i64(b, ttl);
    jb_puts(b, "}");
    return SSTORE_OK;
}

typedef struct {
    sstore *st;
    jbuf b;
    int n, rc;
} list_acc;

static void list_cb(const char *id, void *ud)
{
    list_acc *a = ud;
    if (a->rc != SSTORE_OK) return;
    size_t mark = a->b.len;
    if (a->n) jb_puts(&a->b, ",");
    int rc = redis_info_obj(a->st, id, &a->b);
    if (rc == SSTORE_OK) a->n++;
    else {
        a->b.len = mark; /* gone since the scan saw it: left out */
        if (a->b.p) a->b.p[mark] = 0;
        if (rc == SSTORE_DOWN) a->rc = SSTORE_DOWN;
    }
}

static char *redis_list(sstore *st, int *rc)
{
    list_acc a = {.st = st, .rc = SSTORE_OK};
    jb_puts(&a.b, "{\"object\":\"list\",\"data\":[");
    char err[256];
    double t0 = now_s();
    if (seen(st, t0, redis_scan(st->rs, list_cb, &a, err, sizeof err)) < 0) a.rc = SSTORE_DOWN;
    jb_puts(&a.b, "]}");
    char *t = jb_finish(&a.b);
    *rc = a.rc;
    if (a.rc != SSTORE_OK) {
        free(t);
        return NULL;
    }
    if (!t) *rc = SSTORE_INVALID;
    return t;
}

static char *redis_info1(sstore *st, const char *id, int *rc)
{
    jbuf b = {0};
    *rc = redis_info_obj(st, id, &b);
    char *t = jb_finish(&b);
    if (*rc != SSTORE_OK) {
        free(t);
        return NULL;
    }
    return t;
}

static int redis_del(sstore *st, const char *id, char *err, size_t errcap)
{
    double t0 = now_s();
    int rc = seen(st, t0, redis_delete(st->rs, id, err, errcap));
    if (rc < 0) return SSTORE_DOWN;
    if (rc == 2) return SSTORE_BUSY;
    srv_status local = pool_delete(st->pool, id, NULL, 0); /* the cached copy, if any */
    return rc == 1 || local == SRV_OK ? SSTORE_OK : SSTORE_UNKNOWN;
}

static int redis_exp(sstore *st, const char *id, FILE *f, char *err, size_t errcap)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    char ver[REDIS_VERSION_MAX];
    double t0 = now_s();
    int rc = seen(st, t0, redis_load(st->rs, id, &buf, &len, ver, err, errcap));
    if (rc < 0) return SSTORE_DOWN;
    if (rc == 0) return SSTORE_UNKNOWN;
    ms_state *tmp = ms_state_new(st->model);
    if (!tmp) {
        free(buf);
        snprintf(err, errcap, "out of memory");
        return SSTORE_INVALID;
    }
    char what[200];
    snprintf(what, sizeof what, "session %s in the state store", id);
    store_record r = {.state = tmp};
    rc = record_decode(buf, len, &r, st->model, what, err, errcap);
    free(buf);
    free(r.tokens);
    if (rc == 0) {
        ms_error e = {0};
        if (ms_state_write_safetensors(f, tmp, NULL, 0, &e) != MS_OK) {
            snprintf(err, errcap, "%s", e.msg);
            rc = -1;
        }
    }
    ms_state_free(tmp);
    return rc ? SSTORE_INVALID : SSTORE_OK;
}

static int redis_imp(sstore *st, const char *id, const char *path, char *err, size_t errcap)
{
    ms_state *tmp;
    int rd = store_read_upload(st->model, path, &tmp, err, errcap);
    if (rd) return rd > 0 ? SSTORE_INVALID : SSTORE_FAILED;
    /* As pool_import: no history, the imported state is also the checkpoint
     * every miss restarts from, and it stands in for an initial state. */
    store_record r = {.state = tmp, .ckpt = tmp, .n_ckpt = 0, .tokens_known = 1};
    const ms_config *cfg = ms_model_config(st->model);
    size_t n = record_size(&r, cfg);
    unsigned char *buf = malloc(n);
    int out = SSTORE_OK;
    if (!buf) {
        snprintf(err, errcap, "out of memory");
        out = SSTORE_FAILED;
    } else {
        record_encode(&r, cfg, ms_model_fingerprint(st->model), buf, n);
        char ver[REDIS_VERSION_MAX];
        double t0 = now_s();
        int rc = seen(st, t0, redis_save(st->rs, id, NULL, buf, n, 0, st->ttl_s, ver, err, errcap));
        out = rc < 0 ? SSTORE_DOWN : rc == 2 ? SSTORE_BUSY : SSTORE_OK;
        free(buf);
        if (out == SSTORE_OK) pool_delete(st->pool, id, NULL, 0); /* drop a stale cached copy */
    }
    ms_state_free(tmp);
    return out;
}

static const sstore_ops redis_ops = {"redis", 1, redis_list, redis_info1, redis_del, redis_exp, redis_imp};

/* ============================================================ interface */

sstore *sstore_new(const srv_config *cfg, sess_pool *pool, const ms_model *model,
                   const char *const *init_names, int n_init, char *err, size_t errcap)
{
    sstore *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    st->pool = pool;
    st->model = model;
    st->init_names = init_names;
    st->n_init = n_init;
    st->ttl_s = cfg->session_ttl_s;
    st->lease_ms = cfg->lease_ms > 0 ? cfg->lease_ms : 10000;
    atomic_store(&st->up, 1);
    metrics_set(MET_G_STORE_UP, 1);
    if (cfg->state_store) {
        /* Long enough for a multi-megabyte value on a busy host; a store
         * that answers slower than this is treated as unavailable. A lease
         * that expires meanwhile is safe: saves are fenced by the lease. */
        st->rs = redis_store_new(cfg->state_store, cfg->store_prefix, 2000, err, errcap);
        if (!st->rs) {
            free(st);
            return NULL;
        }
        st->ops = &redis_ops;
    } else {
        st->ops = cfg->state_dir ? &dir_ops : &memory_ops;
        st->dir = cfg->state_dir;
    }
    return st;
}

void sstore_free(sstore *st)
{
    if (!st) return;
    resp_store_clear(); /* the memory backend's records go with it */
    redis_store_free(st->rs);
    free(st);
}

const char *sstore_kind(const sstore *st) { return st->ops->kind; }
int sstore_shared(const sstore *st) { return st->ops->shared; }
int sstore_up(const sstore *st) { return atomic_load(&st->up); }
long sstore_lease_ms(const sstore *st) { return st->lease_ms; }

int sstore_ping(sstore *st)
{
    if (!st->rs) return 0;
    char err[256];
    /* Health pings keep "up" fresh but stay out of the latency histogram,
     * which is about the operations turns wait for. */
    return seen(st, 0, redis_store_ping(st->rs, err, sizeof err)) < 0 ? -1 : 0;
}

char *sstore_list_json(sstore *st, int *rc) { return st->ops->list_json(st, rc); }
char *sstore_info_json(sstore *st, const char *id, int *rc) { return st->ops->info_json(st, id, rc); }
int sstore_delete(sstore *st, const char *id, char *err, size_t errcap)
{
    return st->ops->del(st, id, err, errcap);
}

int sstore_export(sstore *st, const char *id, FILE *f, char *err, size_t errcap)
{
    return st->ops->export_state(st, id, f, err, errcap);
}

int sstore_import(sstore *st, const char *id, const char *path, char *err, size_t errcap)
{
    return st->ops->import_state(st, id, path, err, errcap);
}

/* ===================================================== stored responses */

/* OpenAI keeps stored responses 30 days; a store with a session TTL keeps
 * them as long as the sessions they continue. */
#define RESPONSE_TTL_DEFAULT_S (30L * 24 * 3600)

static long response_ttl(const sstore *st)
{
    return st->ttl_s > 0 ? st->ttl_s : RESPONSE_TTL_DEFAULT_S;
}

/* Directory: removes expired response files, at most once an hour (a scan
 * of the directory), from the worker that stores one. */
static void expire_files(sstore *st)
{
    long long now = (long long)time(NULL), last = atomic_load(&st->resp_expired_at);
    if (now - last < 3600 || !atomic_compare_exchange_strong(&st->resp_expired_at, &last, now))
        return;
    resp_files_expire(st->dir, response_ttl(st));
}

int sstore_response_put(sstore *st, const char *id, json_t *rec, char *err, size_t errcap)
{
    if (!st->rs && !st->dir) {
        resp_store_put(id, rec);
        return SSTORE_OK;
    }
    char *t = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!t) {
        snprintf(err, errcap, "out of memory");
        return SSTORE_INVALID;
    }
    int rc;
    if (st->rs) {
        double t0 = now_s();
        rc = seen(st, t0, redis_response_put(st->rs, id, t, strlen(t), response_ttl(st), err, errcap)) < 0
                 ? SSTORE_DOWN : SSTORE_OK;
    } else {
        rc = resp_files_put(st->dir, id, t, strlen(t), err, errcap) ? SSTORE_INVALID : SSTORE_OK;
        expire_files(st);
    }
    free(t);
    return rc;
}

int sstore_response_get(sstore *st, const char *id, json_t **rec, char *err, size_t errcap)
{
    *rec = NULL;
    if (!st->rs && !st->dir) {
        *rec = resp_store_get(id);
        return *rec ? SSTORE_OK : SSTORE_UNKNOWN;
    }
    char *buf = NULL;
    size_t len = 0;
    int rc;
    if (st->rs) {
        double t0 = now_s();
        rc = seen(st, t0, redis_response_get(st->rs, id, &buf, &len, err, errcap));
        if (rc < 0) return SSTORE_DOWN;
    } else {
        rc = resp_files_get(st->dir, id, &buf, &len, err, errcap);
        if (rc < 0) return SSTORE_INVALID;
    }
    if (rc == 0) return SSTORE_UNKNOWN;
    json_error_t je;
    json_t *j = json_loadb(buf, len, 0, &je);
    free(buf);
    if (!json_is_object(j) || !json_is_string(json_object_get(j, "session")) ||
        !json_is_object(json_object_get(j, "response")) ||
        !json_is_array(json_object_get(j, "messages"))) {
        json_decref(j);
        snprintf(err, errcap, "the stored value of response '%.80s' is not a response record", id);
        return SSTORE_INVALID;
    }
    *rec = j;
    return SSTORE_OK;
}

int sstore_response_delete(sstore *st, const char *id, char *err, size_t errcap)
{
    if (st->dir) {
        const int rc = resp_files_delete(st->dir, id, err, errcap);
        return rc < 0 ? SSTORE_INVALID : rc ? SSTORE_OK : SSTORE_UNKNOWN;
    }
    if (!st->rs) return resp_store_delete(id) ? SSTORE_OK : SSTORE_UNKNOWN;
    double t0 = now_s();
    int rc = seen(st, t0, redis_response_delete(st->rs, id, err, errcap));
    return rc < 0 ? SSTORE_DOWN : rc ? SSTORE_OK : SSTORE_UNKNOWN;
}
