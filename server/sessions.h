/*
 * sessions.h - the session pool: id -> recurrent state + the token ids that
 * produced it, kept in memory up to a byte budget, least recently used ones
 * spilled to --state-dir and read back on demand.
 *
 * A session is used by at most one sequence at a time: the scheduler leases
 * it (pool_acquire), works on its state and tokens without any lock, and
 * gives it back (pool_release). Spilling and loading also hold the lease, so
 * nobody ever sees a torn state. All pool_* functions are thread-safe (one
 * mutex); the fields of a session are only touched by the lease holder.
 */
#ifndef METASTATE_SERVER_SESSIONS_H
#define METASTATE_SERVER_SESSIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine.h"
#include "state_store.h"
#include "status.h"

typedef struct sess_pool sess_pool;

/* What the lease holder may read and change. state is the session after
 * tokens[0..n_tokens); ckpt is the state after tokens[0..n_ckpt) (the prompt
 * of the last request minus its last token), valid when has_ckpt. Both grew
 * from the initial state named init_state ("" = the zero state), which is
 * saved with the session: a continuation must start from the same one. */
typedef struct session {
    char id[132];
    char init_state[STORE_NAME_MAX + 1];
    ms_state *state; /* NULL while the state lives only on disk */
    ms_state *ckpt;
    int has_ckpt;
    size_t n_ckpt;
    int32_t *tokens;
    size_t n_tokens, cap_tokens;
    /* pool bookkeeping below: owned by sessions.c */
    int leased;
    int io;           /* the lease is background I/O (write-behind, spill,
                         export from disk), not a request: HTTP-side
                         operations wait for it instead of answering busy */
    int on_disk;      /* a file for this id exists in state_dir */
    int dirty;        /* memory is newer than the file */
    uint64_t last_used;
    size_t acct;        /* bytes this session counts in the pool budget */
    size_t info_tokens; /* n_tokens at last release (what GET shows while leased) */
    int64_t file_stamp; /* mtime (ns) of the file when we last wrote or read it; 0 unknown */
    double created, updated;
    char store_ver[33];   /* --state-store: the stored version memory holds ("" none); store.c */
    struct session *next; /* hash chain */
    /* LRU lists (most recent first): [0] every session, [1] those in memory */
    struct session *lru_prev[2], *lru_next[2];
    int in_lru[2];
} session;

typedef enum {
    POOL_OK = 0,       /* leased; state in memory */
    POOL_BUSY,         /* leased by someone else: try again later */
    POOL_NEEDS_LOAD,   /* leased; state on disk: run pool_load_io, then pool_load_done */
    POOL_NOMEM,
    POOL_TOO_MANY      /* --max-sessions reached and nothing evictable */
} pool_rc;

/* model must outlive the pool; state_dir may be NULL (memory only).
 * max_spare: state pairs kept for reuse beside limit_bytes (one per slot;
 * capped at an eighth of limit_bytes).
 * init_names[0..n_init) are the initial states this server has (they must
 * outlive the pool): a session file naming another one is rejected. */
sess_pool *pool_new(const ms_model *model, size_t limit_bytes, const char *state_dir,
                    int max_sessions, int max_spare, const char *const *init_names, int n_init);
/* Allocates one spare pair if fewer than max_spare are kept (the first
 * touch of fresh memory, outside the mutex: a few ms on some VMs). Returns
 * 1 when another call would add one more. */
int pool_refill(sess_pool *p);
/* Frees every session (does not write them: call pool_persist_all first). */
void pool_free(sess_pool *p);
/* Registers the session files found in state_dir (after a restart). Returns
 * the count, or -1 with a message in err. */
int pool_scan(sess_pool *p, char *err, size_t errcap);

/* Finds or creates session id (id must be oa_session_id_valid) and leases it.
 * With a state_dir, a session this pool does not hold in memory, or holds
 * unchanged while its file was rewritten since (another replica sharing the
 * directory served it), comes back as POOL_NEEDS_LOAD: the file wins.
 * Called by one thread only (the scheduler's): an evicted session's file is
 * removed after the mutex is released, which relies on that. */
pool_rc pool_acquire(sess_pool *p, const char *id, session **out);
/* Returns the lease; the session becomes the most recently used. */
void pool_release(sess_pool *p, session *s);

/* Blocking disk I/O for a leased session, safe on a worker thread. load:
 * reads the file into freshly allocated states; on a corrupt or foreign file,
 * or one started from an initial state this server does not have, it
 * quarantines the file and leaves the session empty (zero state, no initial
 * state); returns SRV_OK, SRV_ERR_REJECTED (err filled; the session is
 * empty and usable) or SRV_ERR_UNAVAILABLE (out of memory; no state). */
srv_status pool_load_io(sess_pool *p, session *s, char *err, size_t errcap);
/* Back on the scheduler thread after pool_load_io (accounts memory). */
void pool_load_done(sess_pool *p, session *s, srv_status rc);

/* Picks the least recently used unleased in-memory session while the pool
 * exceeds its budget. With a state_dir it is leased and returned for
 * pool_spill_io/pool_spill_done; without one it is dropped here (counted as
 * an eviction) and the loop goes on. NULL when nothing (more) to do. */
session *pool_next_spill(sess_pool *p);
int pool_spill_io(sess_pool *p, session *s, char *err, size_t errcap);
/* ok: frees the in-memory state (the file has it); else keeps it in memory. */
void pool_spill_done(sess_pool *p, session *s, int ok);

/* Write-behind: leases and returns an unleased in-memory session whose file
 * is older than its state, so the caller can write it with pool_spill_io on
 * a worker thread and call pool_persist_done; NULL when none (or no
 * state_dir). Keeps the files current for other replicas and crashes. */
session *pool_next_persist(sess_pool *p);
/* Unleases s after pool_spill_io; ok: the file now matches memory. */
void pool_persist_done(sess_pool *p, session *s, int ok);

/* Writes every dirty in-memory session to state_dir (at shutdown). Returns
 * the number that failed. No-op without state_dir. */
int pool_persist_all(sess_pool *p);

/* ----- HTTP-side operations (thread-safe, short) ----- */

/* JSON array text of all sessions / one session object (malloc'd); NULL from
 * pool_info_json when the id is unknown. */
char *pool_list_json(sess_pool *p);
char *pool_info_json(sess_pool *p, const char *id);
/* pool_delete, pool_export and pool_import first wait (up to 10 s) for a
 * background write of the session to finish; "busy" means a request holds it.
 * SRV_OK (deleted), SRV_ERR_NOT_FOUND, SRV_ERR_BUSY, or SRV_ERR_IO when its
 * file would not go (err, if not NULL, says why; the session stays). */
srv_status pool_delete(sess_pool *p, const char *id, char *err, size_t errcap);
/* Writes the session's state as safetensors ("state.<i>.*") to f. SRV_OK,
 * SRV_ERR_NOT_FOUND, SRV_ERR_BUSY, else (err filled) SRV_ERR_NOMEM or
 * SRV_ERR_IO. */
srv_status pool_export(sess_pool *p, const char *id, FILE *f, char *err, size_t errcap);
/* Replaces (or creates) session id with the state in the safetensors file at
 * path. Its token history becomes empty: the next request feeds its whole
 * prompt on top of the imported state (which stands in for an initial state:
 * init_state becomes ""). States with NaN/Inf or values beyond
 * STORE_VALUE_MAX are refused. SRV_OK, SRV_ERR_BUSY, else (err filled)
 * SRV_ERR_INVALID (not a state of this model), SRV_ERR_SESSIONS_FULL,
 * SRV_ERR_NOMEM or SRV_ERR_IO (the replaced state's file would not go); on
 * any error the session is as it was. */
srv_status pool_import(sess_pool *p, const char *id, const char *path, char *err, size_t errcap);

/* Appends one token to a leased session's history (amortized growth);
 * -1 on OOM. */
int session_push_token(session *s, int32_t t);
int session_push_tokens(session *s, const int32_t *t, size_t n);

#endif
