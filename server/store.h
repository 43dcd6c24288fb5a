/*
 * store.h - where sessions live beyond one request, behind one interface:
 *
 *   memory     (neither flag)   the pool only; lost on restart
 *   directory  (--state-dir)    the pool spills and writes behind to files
 *                               (sessions.c + state_store.c)
 *   redis      (--state-store)  the pool is a cache in front of Redis; every
 *                               turn holds the session's lease in Redis
 *
 * The HTTP side lists, shows, deletes, exports and imports sessions through
 * the sstore_* calls; the scheduler brackets every turn on a session with
 * sstore_turn_begin / sstore_turn_end (no-ops without a shared store) and
 * renews running turns' leases with sstore_turn_renew.
 *
 * Thread-safety: every function may be called from any thread; the turn
 * calls and the HTTP calls block on the network (redis) and belong on
 * worker threads, never on the scheduler's loop or the HTTP polling thread
 * (each serves every request: a slow store would stall all of them).
 */
#ifndef METASTATE_SERVER_STORE_H
#define METASTATE_SERVER_STORE_H

#include <jansson.h>
#include <stdio.h>

#include "config.h"
#include "engine.h"
#include "sessions.h"
#include "store_redis.h"

typedef struct sstore sstore;

/* Results of the calls below (beyond those documented per call). */
enum {
    SSTORE_OK = 0,
    SSTORE_UNKNOWN = 1,  /* no such session */
    SSTORE_BUSY = 2,     /* a turn (here or on another replica) holds it */
    SSTORE_DOWN = 3,     /* the shared store cannot be reached: 503 store_unavailable */
    SSTORE_FULL = 4,     /* --max-sessions reached: 503 sessions_full */
    SSTORE_INVALID = -1, /* bad input or a failed read/write: err says what */
    SSTORE_FAILED = -2,  /* the server's own failure (memory, a file): err says what */
};

/* One turn's hold on a session in a shared store. */
typedef struct sstore_turn {
    int held;                     /* the lease is ours (begin returned OK) */
    char tok[REDIS_TOKEN_MAX];    /* lease owner token */
    char ver[REDIS_VERSION_MAX];  /* version the store held when the turn began */
} sstore_turn;

/* Opens the backend cfg selects (state_store URL, else the pool's state_dir,
 * else memory). pool and model must outlive the store; init_names as for
 * pool_new. Does not contact the store (the first request does). NULL with
 * err filled on a bad URL or OOM. */
sstore *sstore_new(const srv_config *cfg, sess_pool *pool, const ms_model *model,
                   const char *const *init_names, int n_init, char *err, size_t errcap);
void sstore_free(sstore *st);

/* "memory", "directory" or "redis". */
const char *sstore_kind(const sstore *st);
/* 1 when turns need sstore_turn_begin/end (a shared store). */
int sstore_shared(const sstore *st);
/* 1 when the store answered its last operation (always 1 unless shared). */
int sstore_up(const sstore *st);
/* Lease length in ms (renew a running turn's lease well before it). */
long sstore_lease_ms(const sstore *st);
/* Pings a shared store (updates sstore_up); 0 up. */
int sstore_ping(sstore *st);

/* ----- turns (shared store; se is leased in the pool by the caller) ----- */

/* Takes the session's lease (random owner token) and makes se's memory hold
 * the stored version: kept when the store still holds the version se has
 * (a cache hit), else loaded; a session with no stored value starts empty.
 * A corrupt or foreign value (or one from an initial state this server does
 * not have) is set aside and the session restarts empty, with the reason in
 * note (notecap bytes, else ""). Returns SSTORE_OK, SSTORE_BUSY (lease held
 * elsewhere: nothing changed, retry later), SSTORE_DOWN or SSTORE_INVALID
 * (out of memory); on anything but OK no lease is held. */
int sstore_turn_begin(sstore *st, session *se, sstore_turn *t, char *note, size_t notecap,
                      char *err, size_t errcap);
/* Stores se under a new version (only while the lease is still ours) and
 * releases the lease. SSTORE_OK, SSTORE_BUSY (the lease had expired and was
 * taken: nothing written, the memory copy is no longer trusted) or
 * SSTORE_DOWN. Either way t no longer holds the lease. */
int sstore_turn_end(sstore *st, session *se, sstore_turn *t, char *err, size_t errcap);
/* Releases the lease without storing anything (the turn never started). */
void sstore_turn_abort(sstore *st, const char *id, sstore_turn *t);
/* Extends a running turn's lease: SSTORE_OK, SSTORE_BUSY (lost), SSTORE_DOWN. */
int sstore_turn_renew(sstore *st, const char *id, const sstore_turn *t, char *err, size_t errcap);

/* ----- HTTP side ----- */

/* JSON text (malloc'd) of the session list / one session; *rc SSTORE_OK,
 * SSTORE_UNKNOWN (info: NULL returned) or SSTORE_DOWN (NULL returned). */
char *sstore_list_json(sstore *st, int *rc);
char *sstore_info_json(sstore *st, const char *id, int *rc);
/* SSTORE_OK, _UNKNOWN, _BUSY, _DOWN, _FAILED or _INVALID (its file or
 * record would not go: err says why, the session stays). */
int sstore_delete(sstore *st, const char *id, char *err, size_t errcap);
/* Writes the state as safetensors to f: SSTORE_OK, _UNKNOWN, _BUSY, _DOWN,
 * _FAILED or _INVALID (err). */
int sstore_export(sstore *st, const char *id, FILE *f, char *err, size_t errcap);
/* Replaces or creates session id from the safetensors state at path:
 * SSTORE_OK, _BUSY, _DOWN, _FULL, _INVALID (not a state of this model: err)
 * or _FAILED (err); on any error the session is as it was. */
int sstore_import(sstore *st, const char *id, const char *path, char *err, size_t errcap);

/* ----- stored responses (/v1/responses; HTTP side) -----
 * A record is {"session": id, "response": {...}, "messages": [...], "input":
 * [...]}: what previous_response_id continues, GET /v1/responses/{id}
 * returns and its input_items lists ("input" is absent from records that
 * versions before it stored, and is not checked here). With
 * Redis it is there (any replica continues a chain; it expires with
 * --session-ttl, else after 30 days); with a directory, a file beside the
 * sessions (kept 30 days); in memory, the last 1024. */

/* Stores rec as response id (rec is not changed; memory keeps a reference).
 * SSTORE_OK, _DOWN or _INVALID (out of memory, a file not written), err
 * saying why. */
int sstore_response_put(sstore *st, const char *id, json_t *rec, char *err, size_t errcap);
/* *rec = response id's record, checked to have the shape above (caller
 * decrefs). SSTORE_OK, _UNKNOWN, _DOWN, or _INVALID (a stored value that is
 * not a record, a file not read: err says so). */
int sstore_response_get(sstore *st, const char *id, json_t **rec, char *err, size_t errcap);
/* SSTORE_OK (deleted), _UNKNOWN, _DOWN, or _INVALID (a file that would not
 * go: err says why). */
int sstore_response_delete(sstore *st, const char *id, char *err, size_t errcap);

#endif
