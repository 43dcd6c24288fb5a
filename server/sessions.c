/*
 * sessions.c - the session pool.
 *
 * Index: a chained hash table of session records, each either in memory
 * (state + prompt checkpoint allocated), on disk only (state == NULL,
 * on_disk), or both (after a restore: the file stays valid until the state
 * changes). The memory budget counts both states and the token history of
 * in-memory sessions. Eviction is LRU: two intrusive lists in order of use
 * (every session; the in-memory ones) give the victim from their tail, so
 * nothing scans all sessions (up to 100,000) under the mutex.
 *
 * Spare states: the two states of a session that leaves memory are kept, up
 * to one pair per slot, for the next session that enters it, and
 * pool_refill makes pairs ahead while the scheduler is idle. Fresh memory
 * costs its first touch: on the VMs this was measured on, about 2 ms per MB
 * in page faults, so a new 0.1B session's two states took 13 ms of the
 * scheduler thread, a stall for every running stream; a spare costs a
 * memset. Spares are outside the budget (one pair per slot, at most an
 * eighth of the budget more), so that a full pool recycles its own pairs
 * (each eviction leaves the one the next new session takes) rather than
 * rely on the allocator keeping freed memory. They matter most while the
 * pool grows: a full pool measured the same with and without them.
 *
 * Locking: one mutex guards the index and the bookkeeping fields. The state,
 * checkpoint and tokens of a leased session belong to the lease holder, so
 * model work never runs under the mutex, and neither does disk I/O: file
 * work holds the session's lease instead (as background I/O, which the HTTP
 * side waits for), except the start-up scan, which runs before serving.
 */
#include "sessions.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json_write.h"
#include "metrics.h"
#include "state_store.h"

#define N_BUCKETS 4096

struct sess_pool {
    pthread_mutex_t mu;
    pthread_cond_t io_cv; /* signalled when a background I/O lease ends */
    const ms_model *model;
    char *state_dir;
    size_t limit, bytes;
    size_t spilling; /* bytes of sessions being written out (freed when done) */
    size_t state_bytes; /* one ms_state */
    ms_state **spare;   /* 2 * n_spare states: (state, checkpoint) pairs */
    int n_spare, max_spare;
    int max_sessions, n_sessions, n_mem, n_disk_only;
    const char *const *init_names;
    int n_init;
    uint64_t clock;
    session *buckets[N_BUCKETS];
    /* LRU order, so that finding a victim does not scan every session:
     * LRU_ALL holds every session (--max-sessions evicts from its tail),
     * LRU_MEM the ones whose state is in memory (spills come from its tail). */
    session *lru_head[2], *lru_tail[2];
};

static double now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static unsigned hash_id(const char *s)
{
    unsigned h = 2166136261u;
    while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h % N_BUCKETS;
}

/* Bytes an in-memory session holds (states + token history). */
static size_t mem_of(const sess_pool *p, const session *s)
{
    return s->state ? 2 * p->state_bytes + s->cap_tokens * sizeof(int32_t) : 0;
}

/* Re-counts s in the budget after its memory changed; caller holds mu. */
static void reacct(sess_pool *p, session *s)
{
    p->bytes -= s->acct;
    s->acct = mem_of(p, s);
    p->bytes += s->acct;
}

/* Keeps the pair as a spare if there is room, else frees it; caller holds
 * mu. Either way the caller no longer owns st and ck. */
static void put_pair(sess_pool *p, ms_state *st, ms_state *ck)
{
    if (st && ck && p->n_spare < p->max_spare) {
        p->spare[2 * p->n_spare] = st;
        p->spare[2 * p->n_spare + 1] = ck;
        p->n_spare++;
        return;
    }
    ms_state_free(st);
    ms_state_free(ck);
}

/* Takes a spare pair, as last used (caller holds mu). 0 when none. */
static int pop_spare(sess_pool *p, ms_state **st, ms_state **ck)
{
    if (!p->n_spare) return 0;
    p->n_spare--;
    *st = p->spare[2 * p->n_spare];
    *ck = p->spare[2 * p->n_spare + 1];
    return 1;
}

/* A zeroed pair in fresh memory. Returns -1 (nothing allocated) when out
 * of memory. */
static int new_pair(sess_pool *p, ms_state **st, ms_state **ck)
{
    *st = ms_state_new(p->model);
    *ck = ms_state_new(p->model);
    if (*st && *ck) return 0;
    ms_state_free(*st);
    ms_state_free(*ck);
    *st = *ck = NULL;
    return -1;
}

/* A zeroed pair: a spare if any, else fresh memory; caller holds mu.
 * Returns -1 (nothing allocated) when out of memory. */
static int take_pair(sess_pool *p, ms_state **st, ms_state **ck)
{
    if (!pop_spare(p, st, ck)) return new_pair(p, st, ck);
    ms_state_reset(*st);
    ms_state_reset(*ck);
    return 0;
}

/* Refreshes the gauges; caller holds mu. */
static void gauges(sess_pool *p)
{
    metrics_set(MET_G_SESSIONS_MEM, p->n_mem);
    metrics_set(MET_G_SESSIONS_DISK, p->n_disk_only);
    metrics_set(MET_G_POOL_BYTES, (double)p->bytes);
    metrics_set(MET_G_POOL_LIMIT, (double)p->limit);
    metrics_set(MET_G_POOL_SPARE_BYTES, (double)p->n_spare * 2 * (double)p->state_bytes);
}

sess_pool *pool_new(const ms_model *model, size_t limit_bytes, const char *state_dir,
                    int max_sessions, int max_spare, const char *const *init_names, int n_init)
{
    sess_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->state_bytes = ms_state_bytes(model);
    /* At most an eighth of the budget: a large model's states are large. */
    const size_t pair = 2 * p->state_bytes, fit = limit_bytes / 8 / (pair ? pair : 1);
    p->max_spare = max_spare <= 0 ? 0 : (size_t)max_spare < fit ? max_spare : (int)fit;
    if (p->max_spare && !(p->spare = calloc(2 * (size_t)p->max_spare, sizeof *p->spare))) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->io_cv, NULL);
    p->model = model;
    p->limit = limit_bytes;
    p->max_sessions = max_sessions;
    p->init_names = init_names;
    p->n_init = n_init;
    p->state_dir = state_dir ? strdup(state_dir) : NULL;
    gauges(p);
    return p;
}

/* Releases s's memory, its states to the spares (caller holds mu, and
 * re-counts s in the budget afterwards). */
static void free_mem(sess_pool *p, session *s)
{
    put_pair(p, s->state, s->ckpt);
    free(s->tokens);
    s->state = s->ckpt = NULL;
    s->tokens = NULL;
    s->n_tokens = s->cap_tokens = 0;
    s->has_ckpt = 0;
    s->n_ckpt = 0;
    s->init_state[0] = 0; /* the file (if any) keeps it with the state */
}

void pool_free(sess_pool *p)
{
    if (!p) return;
    for (int b = 0; b < N_BUCKETS; b++) {
        session *s = p->buckets[b];
        while (s) {
            session *n = s->next;
            free_mem(p, s);
            free(s);
            s = n;
        }
    }
    for (int i = 0; i < 2 * p->n_spare; i++) ms_state_free(p->spare[i]);
    free(p->spare);
    free(p->state_dir);
    pthread_cond_destroy(&p->io_cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

enum { LRU_ALL = 0, LRU_MEM = 1 };

/* Takes s out of list k (caller holds mu). */
static void lru_remove(sess_pool *p, session *s, int k)
{
    if (!s->in_lru[k]) return;
    if (s->lru_prev[k]) s->lru_prev[k]->lru_next[k] = s->lru_next[k];
    else p->lru_head[k] = s->lru_next[k];
    if (s->lru_next[k]) s->lru_next[k]->lru_prev[k] = s->lru_prev[k];
    else p->lru_tail[k] = s->lru_prev[k];
    s->lru_prev[k] = s->lru_next[k] = NULL;
    s->in_lru[k] = 0;
}

/* Puts s first (most recently used) in list k (caller holds mu). */
static void lru_front(sess_pool *p, session *s, int k)
{
    lru_remove(p, s, k);
    s->lru_next[k] = p->lru_head[k];
    if (p->lru_head[k]) p->lru_head[k]->lru_prev[k] = s;
    else p->lru_tail[k] = s;
    p->lru_head[k] = s;
    s->in_lru[k] = 1;
}

/* s was just used: most recent in both lists it belongs to. */
static void touch(sess_pool *p, session *s)
{
    s->last_used = ++p->clock;
    lru_front(p, s, LRU_ALL);
    if (s->state) lru_front(p, s, LRU_MEM);
}

/* The least recently used unleased session of list k, or NULL. */
static session *lru_victim(sess_pool *p, int k)
{
    for (session *x = p->lru_tail[k]; x; x = x->lru_prev[k])
        if (!x->leased) return x;
    return NULL;
}

static session *find(sess_pool *p, const char *id)
{
    for (session *s = p->buckets[hash_id(id)]; s; s = s->next)
        if (!strcmp(s->id, id)) return s;
    return NULL;
}

/* Ends a background I/O lease (caller holds mu) and wakes HTTP-side callers
 * waiting for it. */
static void end_io(sess_pool *p, session *s)
{
    s->leased = 0;
    s->io = 0;
    pthread_cond_broadcast(&p->io_cv);
}

/* Longest an HTTP-side operation waits for a background write (seconds). */
#define IO_WAIT_S 10

/* find(), but first waits (bounded) while id is leased only for background
 * I/O: a session written behind the request that just ended is not "in use"
 * for its client. Caller holds mu; the session may change while we wait, so
 * it is looked up again each time. */
static session *find_settled(sess_pool *p, const char *id)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += IO_WAIT_S;
    session *s;
    while ((s = find(p, id)) && s->leased && s->io)
        if (pthread_cond_timedwait(&p->io_cv, &p->mu, &until) != 0) break;
    return s;
}

static session *insert(sess_pool *p, const char *id)
{
    session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    snprintf(s->id, sizeof s->id, "%s", id);
    unsigned h = hash_id(id);
    s->next = p->buckets[h];
    p->buckets[h] = s;
    s->created = s->updated = now_wall();
    p->n_sessions++;
    lru_front(p, s, LRU_ALL);
    return s;
}

/* Unlinks and frees s (caller holds mu, s not leased). */
static void drop(sess_pool *p, session *s)
{
    session **pp = &p->buckets[hash_id(s->id)];
    while (*pp != s) pp = &(*pp)->next;
    *pp = s->next;
    p->bytes -= s->acct;
    s->acct = 0;
    if (s->state) {
        p->n_mem--;
    } else if (s->on_disk) {
        p->n_disk_only--;
    }
    p->n_sessions--;
    lru_remove(p, s, LRU_ALL);
    lru_remove(p, s, LRU_MEM);
    free_mem(p, s);
    free(s);
}

static void scan_cb(const char *id, void *ud)
{
    sess_pool *p = ud;
    if (find(p, id) || p->n_sessions >= p->max_sessions) return;
    session *s = insert(p, id);
    if (!s) return;
    s->on_disk = 1;
    long long n = store_peek_tokens(p->state_dir, id);
    s->info_tokens = n > 0 ? (size_t)n : 0;
    p->n_disk_only++;
}

int pool_scan(sess_pool *p, char *err, size_t errcap)
{
    if (!p->state_dir) return 0;
    pthread_mutex_lock(&p->mu);
    int quarantined = 0;
    int n = store_scan(p->state_dir, scan_cb, p, &quarantined, err, errcap);
    gauges(p);
    pthread_mutex_unlock(&p->mu);
    if (n < 0) return n;
    /* Temps of writers killed mid-write; those of live writers (another
     * replica) are locked and stay. */
    int cleaned = store_clean_temps(p->state_dir, 600);
    if (cleaned > 0)
        fprintf(stderr, "metastate serve: removed %d stale temp file(s) from %s\n", cleaned,
                p->state_dir);
    if (quarantined)
        fprintf(stderr, "metastate serve: %d '*.state' entr%s in %s not a regular file: moved "
                        "aside as *.state.rejected\n", quarantined, quarantined == 1 ? "y" : "ies",
                p->state_dir);
    return n;
}

/* Allocates the zero state + checkpoint of s (caller holds mu). */
static int alloc_mem(sess_pool *p, session *s)
{
    if (take_pair(p, &s->state, &s->ckpt)) return -1;
    s->has_ckpt = 0;
    s->n_tokens = 0;
    reacct(p, s);
    p->n_mem++;
    lru_front(p, s, LRU_MEM);
    return 0;
}

/* s's states go (to the spares) and it counts as on disk only; caller
 * holds mu and has its file in place. */
static void leave_memory(sess_pool *p, session *s)
{
    p->n_mem--;
    p->n_disk_only++;
    lru_remove(p, s, LRU_MEM);
    free_mem(p, s);
    reacct(p, s);
}

int pool_refill(sess_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int want = p->n_spare < p->max_spare;
    pthread_mutex_unlock(&p->mu);
    if (!want) return 0;
    /* First touch (the memset in ms_state_new) outside the mutex. */
    ms_state *st, *ck;
    if (new_pair(p, &st, &ck)) return 0;
    pthread_mutex_lock(&p->mu);
    const int before = p->n_spare;
    put_pair(p, st, ck);
    int more = p->n_spare > before && p->n_spare < p->max_spare;
    gauges(p);
    pthread_mutex_unlock(&p->mu);
    return more;
}

/* mtime of <dir>/<id>.state in ns, 0 when absent. */
static int64_t file_stamp(const sess_pool *p, const char *id)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s.state", p->state_dir, id);
    if (stat(path, &st))
        return 0;
    return (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
}

pool_rc pool_acquire(sess_pool *p, const char *id, session **out)
{
    /* The file's stamp is read before locking: no disk access under the
     * mutex. A file rewritten between this stat and the lock is seen on
     * the next acquire, as one rewritten just after the lock would be. */
    const int64_t stamp = p->state_dir ? file_stamp(p, id) : 0;
    char gone[sizeof ((session *)0)->id] = "";
    pthread_mutex_lock(&p->mu);
    pool_rc rc = POOL_OK;
    session *s = find(p, id);
    if (s && s->leased) {
        rc = POOL_BUSY;
        goto out;
    }
    if (s && s->state && p->state_dir && !s->dirty && s->file_stamp &&
        stamp != s->file_stamp) {
        /* Someone else (another replica) rewrote the file: ours is stale. */
        p->n_mem--;
        p->n_disk_only++;
        lru_remove(p, s, LRU_MEM);
        free_mem(p, s);
        reacct(p, s);
        s->on_disk = 1;
    }
    if (!s && p->state_dir && stamp) {
        /* Written by another replica sharing the directory since our scan. */
        if (p->n_sessions < p->max_sessions && (s = insert(p, id))) {
            s->on_disk = 1;
            p->n_disk_only++;
        }
    }
    if (!s) {
        if (p->n_sessions >= p->max_sessions) {
            /* Make room by forgetting the least recently used idle session. */
            session *victim = lru_victim(p, LRU_ALL);
            if (!victim) {
                rc = POOL_TOO_MANY;
                goto out;
            }
            /* Its file goes after unlocking: only this (the scheduler) thread
             * acquires, so nothing can bring the id back in between. */
            if (victim->on_disk && p->state_dir) snprintf(gone, sizeof gone, "%s", victim->id);
            metrics_add(MET_C_EVICTIONS, 1);
            drop(p, victim);
        }
        s = insert(p, id);
        if (!s || alloc_mem(p, s)) {
            if (s) drop(p, s);
            rc = POOL_NOMEM;
            goto out;
        }
    } else if (!s->state) {
        s->leased = 1;
        touch(p, s);
        rc = POOL_NEEDS_LOAD;
        *out = s;
        goto out;
    }
    s->leased = 1;
    touch(p, s);
    *out = s;
out:
    gauges(p);
    pthread_mutex_unlock(&p->mu);
    if (gone[0] && store_remove(p->state_dir, gone))
        fprintf(stderr, "metastate serve: evicted session %s: its file will not go (%s); the "
                        "next start will find it\n", gone, strerror(errno));
    return rc;
}

void pool_release(sess_pool *p, session *s)
{
    pthread_mutex_lock(&p->mu);
    s->leased = 0;
    touch(p, s);
    s->info_tokens = s->n_tokens;
    s->updated = now_wall();
    s->dirty = 1;
    reacct(p, s); /* the token history may have grown */
    gauges(p);
    pthread_mutex_unlock(&p->mu);
}

static int known_init(const sess_pool *p, const char *name)
{
    for (int i = 0; i < p->n_init; i++)
        if (!strcmp(p->init_names[i], name)) return 1;
    return 0;
}

srv_status pool_load_io(sess_pool *p, session *s, char *err, size_t errcap)
{
    /* Fresh memory, if needed, outside the mutex: its first touch is slow. */
    ms_state *st, *ck;
    pthread_mutex_lock(&p->mu);
    const int spare = pop_spare(p, &st, &ck);
    pthread_mutex_unlock(&p->mu);
    if (spare) {
        ms_state_reset(st);
        ms_state_reset(ck);
    }
    if (!spare && new_pair(p, &st, &ck)) {
        snprintf(err, errcap, "out of memory loading session %s", s->id);
        return SRV_ERR_UNAVAILABLE;
    }
    store_record r = {.state = st, .ckpt = ck};
    int rc = store_load(p->state_dir, s->id, &r, p->model, err, errcap);
    if (rc == 0 && r.init_state[0] && !known_init(p, r.init_state)) {
        /* Continuing would need the initial state it grew from: without it
         * the session cannot be matched or restarted as its owner expects. */
        snprintf(err, errcap,
                 "session %s started from initial state '%s', which this server does not have "
                 "(--init-state)", s->id, r.init_state);
        free(r.tokens);
        r.tokens = NULL;
        rc = -1;
    }
    s->state = st;
    s->ckpt = ck;
    s->file_stamp = rc == 0 ? file_stamp(p, s->id) : 0;
    if (rc == 0) {
        memcpy(s->init_state, r.init_state, sizeof s->init_state);
        s->tokens = r.tokens;
        s->n_tokens = s->cap_tokens = r.n_tokens;
        s->has_ckpt = r.n_ckpt > 0 || (r.tokens_known && r.n_tokens == 0);
        s->n_ckpt = r.n_ckpt;
        return SRV_OK;
    }
    /* Rejected (or vanished): the session restarts from the zero state. */
    ms_state_reset(st);
    s->init_state[0] = 0;
    s->tokens = NULL;
    s->n_tokens = s->cap_tokens = 0;
    s->has_ckpt = 0;
    s->n_ckpt = 0;
    if (rc < 0) store_quarantine(p->state_dir, s->id);
    return rc < 0 ? SRV_ERR_REJECTED : SRV_OK; /* a vanished file restarts the session too */
}

void pool_load_done(sess_pool *p, session *s, srv_status rc)
{
    pthread_mutex_lock(&p->mu);
    if (s->state) {
        p->n_disk_only--;
        p->n_mem++;
        lru_front(p, s, LRU_MEM);
        reacct(p, s);
        if (rc != SRV_OK) s->on_disk = 0;
        s->dirty = rc != SRV_OK;
    }
    if (rc == SRV_OK) metrics_add(MET_C_RESTORES, 1);
    else metrics_add(MET_C_STATE_ERRORS, 1);
    gauges(p);
    pthread_mutex_unlock(&p->mu);
}

session *pool_next_spill(sess_pool *p)
{
    pthread_mutex_lock(&p->mu);
    session *victim = NULL;
    while (p->bytes - p->spilling > p->limit) {
        victim = lru_victim(p, LRU_MEM);
        if (!victim) break;
        metrics_add(MET_C_EVICTIONS, 1);
        if (p->state_dir) {
            victim->leased = 1;
            victim->io = 1;
            p->spilling += victim->acct;
            break;
        }
        drop(p, victim); /* no state dir: the session is forgotten */
        victim = NULL;
    }
    gauges(p);
    pthread_mutex_unlock(&p->mu);
    return victim;
}

static int save_session(sess_pool *p, session *s, char *err, size_t errcap)
{
    store_record r = {.state = s->state,
                      .ckpt = s->has_ckpt ? s->ckpt : NULL,
                      .n_ckpt = s->n_ckpt,
                      .tokens = s->tokens,
                      .n_tokens = s->n_tokens,
                      .tokens_known = 1};
    memcpy(r.init_state, s->init_state, sizeof r.init_state);
    int rc = store_save(p->state_dir, s->id, &r, ms_model_config(p->model),
                        ms_model_fingerprint(p->model), err, errcap);
    s->file_stamp = rc == 0 ? file_stamp(p, s->id) : 0;
    return rc;
}

int pool_spill_io(sess_pool *p, session *s, char *err, size_t errcap)
{
    /* A clean session already matches its file: nothing to write. */
    if (!s->dirty && s->on_disk) return 0;
    return save_session(p, s, err, errcap);
}

session *pool_next_persist(sess_pool *p)
{
    if (!p->state_dir)
        return NULL;
    pthread_mutex_lock(&p->mu);
    session *found = NULL;
    for (session *x = p->lru_tail[LRU_MEM]; x && !found; x = x->lru_prev[LRU_MEM])
        if (x->dirty && !x->leased) {
            x->leased = 1;
            x->io = 1;
            found = x;
        }
    pthread_mutex_unlock(&p->mu);
    return found;
}

void pool_persist_done(sess_pool *p, session *s, int ok)
{
    pthread_mutex_lock(&p->mu);
    end_io(p, s);
    if (ok) {
        s->on_disk = 1;
        s->dirty = 0;
    }
    gauges(p);
    pthread_mutex_unlock(&p->mu);
}

void pool_spill_done(sess_pool *p, session *s, int ok)
{
    pthread_mutex_lock(&p->mu);
    end_io(p, s);
    p->spilling -= s->acct;
    if (ok) {
        leave_memory(p, s);
        s->on_disk = 1;
        s->dirty = 0;
        metrics_add(MET_C_SPILLS, 1);
    }
    gauges(p);
    pthread_mutex_unlock(&p->mu);
}

int pool_persist_all(sess_pool *p)
{
    if (!p->state_dir) return 0;
    int failed = 0;
    pthread_mutex_lock(&p->mu);
    for (int b = 0; b < N_BUCKETS; b++)
        for (session *s = p->buckets[b]; s; s = s->next) {
            if (!s->state || s->leased || (!s->dirty && s->on_disk)) continue;
            /* Leased while written, so the file I/O runs without the mutex
             * and nobody drops s meanwhile; s->next is read after relocking. */
            s->leased = 1;
            s->io = 1;
            pthread_mutex_unlock(&p->mu);
            char err[512];
            int rc = save_session(p, s, err, sizeof err);
            if (rc) fprintf(stderr, "metastate serve: could not persist session %s: %s\n", s->id, err);
            pthread_mutex_lock(&p->mu);
            end_io(p, s);
            if (rc) {
                failed++;
            } else {
                s->on_disk = 1;
                s->dirty = 0;
            }
        }
    pthread_mutex_unlock(&p->mu);
    return failed;
}

/* ------------------------------------------------------------ HTTP side */

/* What a listing shows of one session, copied under the mutex so that the
 * JSON is written after it is released. */
typedef struct sess_info {
    char id[sizeof ((session *)0)->id];
    size_t tokens;
    int in_memory, on_disk, busy;
    double created, updated;
} sess_info;

static void info_of(const session *s, sess_info *out)
{
    memcpy(out->id, s->id, sizeof out->id);
    out->tokens = s->info_tokens;
    out->in_memory = s->state != NULL;
    out->on_disk = s->on_disk;
    out->busy = s->leased && !s->io;
    out->created = s->created;
    out->updated = s->updated;
}

static void info_json(jbuf *b, const sess_info *s, size_t state_bytes)
{
    jb_puts(b, "{\"id\":");
    jb_cstr(b, s->id);
    jb_puts(b, ",\"object\":\"session\",\"tokens\":");
    jb_i64(b, (int64_t)s->tokens);
    jb_puts(b, ",\"in_memory\":");
    jb_bool(b, s->in_memory);
    jb_puts(b, ",\"on_disk\":");
    jb_bool(b, s->on_disk);
    jb_puts(b, ",\"busy\":");
    jb_bool(b, s->busy);
    jb_puts(b, ",\"state_bytes\":");
    jb_i64(b, (int64_t)state_bytes);
    jb_puts(b, ",\"created\":");
    jb_i64(b, (int64_t)s->created);
    jb_puts(b, ",\"last_used\":");
    jb_i64(b, (int64_t)s->updated);
    jb_puts(b, "}");
}

char *pool_list_json(sess_pool *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = 0, cap = (size_t)p->n_sessions;
    sess_info *all = malloc((cap + 1) * sizeof *all);
    if (all)
        for (int b = 0; b < N_BUCKETS; b++)
            for (session *s = p->buckets[b]; s && n < cap; s = s->next) info_of(s, &all[n++]);
    pthread_mutex_unlock(&p->mu);
    if (!all) return NULL;
    jbuf b = {0};
    jb_puts(&b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < n; i++) {
        if (i) jb_puts(&b, ",");
        info_json(&b, &all[i], p->state_bytes);
    }
    jb_puts(&b, "]}");
    free(all);
    return jb_finish(&b);
}

char *pool_info_json(sess_pool *p, const char *id)
{
    sess_info one;
    pthread_mutex_lock(&p->mu);
    session *s = find(p, id);
    if (s) info_of(s, &one);
    pthread_mutex_unlock(&p->mu);
    if (!s) return NULL;
    jbuf b = {0};
    info_json(&b, &one, p->state_bytes);
    return jb_finish(&b);
}

srv_status pool_delete(sess_pool *p, const char *id, char *err, size_t errcap)
{
    pthread_mutex_lock(&p->mu);
    session *s = find_settled(p, id);
    srv_status rc = SRV_OK;
    if (!s) rc = SRV_ERR_NOT_FOUND;
    else if (s->leased) rc = SRV_ERR_BUSY;
    else {
        if (s->on_disk && p->state_dir) {
            /* Held (as background I/O, which others wait for) while the
             * file goes, so the unlink runs without the mutex. */
            s->leased = 1;
            s->io = 1;
            pthread_mutex_unlock(&p->mu);
            if (store_remove(p->state_dir, id)) {
                /* Kept: deleted here but read back from its file by the next
                 * start or another replica, it would come back. */
                if (err)
                    snprintf(err, errcap, "session '%s': its file will not go: %s", id,
                             strerror(errno));
                rc = SRV_ERR_IO;
            }
            pthread_mutex_lock(&p->mu);
            end_io(p, s);
        }
        if (!rc) drop(p, s);
    }
    gauges(p);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

srv_status pool_export(sess_pool *p, const char *id, FILE *f, char *err, size_t errcap)
{
    ms_state *tmp = ms_state_new(p->model);
    if (!tmp) {
        snprintf(err, errcap, "out of memory");
        return SRV_ERR_NOMEM;
    }
    pthread_mutex_lock(&p->mu);
    session *s = find_settled(p, id);
    srv_status rc = SRV_OK;
    int from_disk = 0;
    if (!s) rc = SRV_ERR_NOT_FOUND;
    else if (s->leased) rc = SRV_ERR_BUSY;
    else if (s->state) ms_state_copy(tmp, s->state);
    else {
        s->leased = 1; /* keep the scheduler off while the file is read */
        s->io = 1;
        from_disk = 1;
    }
    pthread_mutex_unlock(&p->mu);
    if (rc) {
        ms_state_free(tmp);
        return rc;
    }
    if (from_disk) {
        store_record r = {.state = tmp};
        int lr = store_load(p->state_dir, id, &r, p->model, err, errcap);
        free(r.tokens);
        pthread_mutex_lock(&p->mu);
        end_io(p, s);
        pthread_mutex_unlock(&p->mu);
        if (lr) {
            ms_state_free(tmp);
            return SRV_ERR_IO;
        }
    }
    ms_error e = {0};
    ms_status st = ms_state_write_safetensors(f, tmp, NULL, 0, &e);
    ms_state_free(tmp);
    if (st != MS_OK) {
        snprintf(err, errcap, "%s", e.msg);
        return SRV_ERR_IO;
    }
    return SRV_OK;
}

srv_status pool_import(sess_pool *p, const char *id, const char *path, char *err, size_t errcap)
{
    ms_state *tmp;
    int rd = store_read_upload(p->model, path, &tmp, err, errcap);
    if (rd) return rd > 0 ? SRV_ERR_INVALID : SRV_ERR_NOMEM;
    pthread_mutex_lock(&p->mu);
    srv_status rc = SRV_OK;
    session *s = find_settled(p, id), *added = NULL;
    int was_disk_only = 0;
    if (s && s->leased) rc = SRV_ERR_BUSY;
    else if (!s && p->n_sessions >= p->max_sessions) {
        rc = SRV_ERR_SESSIONS_FULL;
        snprintf(err, errcap, "too many sessions (--max-sessions)");
    } else if (!s && !(s = added = insert(p, id))) {
        rc = SRV_ERR_NOMEM;
    } else if (!s->state) {
        /* Memory before the file goes, so that a failure loses nothing. */
        if (alloc_mem(p, s)) {
            if (added) drop(p, s);
            rc = SRV_ERR_NOMEM;
        } else if (s->on_disk) {
            was_disk_only = 1;
            p->n_disk_only--;
        }
    }
    if (rc == SRV_ERR_NOMEM) snprintf(err, errcap, "out of memory");
    if (!rc && s->on_disk && p->state_dir) {
        /* The replaced state's file goes before the state is replaced (held
         * as background I/O, the unlink outside the mutex): left behind,
         * the next start or another replica would read the old state back.
         * If it will not go, the import fails and the session stays as it
         * was. */
        s->leased = 1;
        s->io = 1;
        pthread_mutex_unlock(&p->mu);
        int gone = store_remove(p->state_dir, id) == 0, why = errno;
        pthread_mutex_lock(&p->mu);
        end_io(p, s);
        if (gone) {
            s->on_disk = 0;
        } else {
            rc = SRV_ERR_IO;
            snprintf(err, errcap, "its old file will not go: %s", strerror(why));
            if (was_disk_only) leave_memory(p, s);
        }
    }
    if (!rc) {
        ms_state_copy(s->state, tmp);
        ms_state_copy(s->ckpt, tmp);
        s->has_ckpt = 1; /* the imported state is the start of every miss */
        s->init_state[0] = 0;
        s->n_ckpt = 0;
        s->n_tokens = 0;
        s->info_tokens = 0;
        s->dirty = 1;
        s->updated = now_wall();
        touch(p, s);
    }
    gauges(p);
    pthread_mutex_unlock(&p->mu);
    ms_state_free(tmp);
    return rc;
}

int session_push_tokens(session *s, const int32_t *t, size_t n)
{
    if (s->n_tokens + n > s->cap_tokens) {
        size_t nc = s->cap_tokens ? s->cap_tokens : 256;
        while (nc < s->n_tokens + n) nc *= 2;
        int32_t *nt = realloc(s->tokens, nc * sizeof *nt);
        if (!nt) return -1;
        s->tokens = nt;
        s->cap_tokens = nc;
    }
    memcpy(s->tokens + s->n_tokens, t, n * sizeof *t);
    s->n_tokens += n;
    return 0;
}

int session_push_token(session *s, int32_t t)
{
    return session_push_tokens(s, &t, 1);
}
