/*
 * state_store.h - session files in --state-dir: one "<id>.state" file per
 * session holding its recurrent state, its prompt checkpoint and the token ids
 * it has processed, stamped with the model's shape and fingerprint and
 * closed by a CRC-32 of everything before it.
 *
 * Every function is reentrant (no globals): the scheduler calls them from
 * libuv worker threads, http.c from the MHD thread. Errors return -1 with a
 * message in err (errcap bytes) that names the file and the problem.
 */
#ifndef METASTATE_SERVER_STATE_STORE_H
#define METASTATE_SERVER_STATE_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine.h"

/* Longest initial-state name a session file holds. */
#define STORE_NAME_MAX 64

/* What a session file holds besides the state. ckpt is the state after the
 * first n_ckpt tokens (NULL when absent); tokens are unknown after an import.
 * init_state names the initial state the session started from ("" = zero). */
typedef struct store_record {
    ms_state *state;      /* required */
    ms_state *ckpt;       /* may be NULL */
    size_t n_ckpt;
    int32_t *tokens;      /* n_tokens ids; NULL when n_tokens == 0 */
    size_t n_tokens;
    int tokens_known;
    char init_state[STORE_NAME_MAX + 1];
} store_record;

/* Session ids given to these functions must pass oa_session_id_valid
 * (proto/openai.h), the one validator.
 *
 * Writes <dir>/<id>.state atomically (temp file in dir, fsync, rename, fsync
 * dir). cfg and fp (32 bytes) describe the model the state belongs to. */
int store_save(const char *dir, const char *id, const store_record *r,
               const ms_config *cfg, const uint8_t *fp, char *err, size_t errcap);

/* Reads <dir>/<id>.state into r->state / r->ckpt (allocated by the caller
 * for the same model; ckpt may be NULL, then a stored checkpoint is dropped)
 * and sets r->tokens (malloc'd, caller frees), n_tokens, n_ckpt (0 when no
 * checkpoint was loaded), tokens_known and init_state ("" for version-1
 * files, which predate initial states). Rejects bad magic, version, shape,
 * size or checksum, and states of models other than `model` or one it was
 * expanded from (ms_model_state_compatible); returns 1 when the file does
 * not exist. */
int store_load(const char *dir, const char *id, store_record *r, const ms_model *model,
               char *err, size_t errcap);

/* Writes <dir>/<name> atomically: body(f, ud) writes the bytes (nonzero on
 * failure) into a locked temp file ".<name>.tmp.XXXXXX" in dir, which is
 * fsync'd and renamed over <dir>/<name>, then dir is fsync'd. */
int store_write_atomic(const char *dir, const char *name, int (*body)(FILE *f, void *ud),
                       void *ud, char *err, size_t errcap);

/* Opens path for reading only when it is a regular file (symlinks are not
 * followed, FIFOs and devices never block). NULL with errno set: ENOENT
 * when absent, EINVAL when not a regular file. */
FILE *store_open_regular(const char *path);

/* Reads only the header of <dir>/<id>.state: its token count (for listings;
 * nothing is validated beyond the magic). -1 when unreadable. */
long long store_peek_tokens(const char *dir, const char *id);

/* Removes <dir>/<id>.state; 0 also when it did not exist. */
int store_remove(const char *dir, const char *id);

/* Moves a rejected file aside to <dir>/<id>.state.rejected (best effort), so
 * the session restarts cleanly and the evidence stays for inspection. */
void store_quarantine(const char *dir, const char *id);

/* Calls fn(id, ud) for every valid "<id>.state" regular file in dir; other
 * kinds of file with such a name (FIFO, device, symlink, directory) are
 * quarantined and counted in *quarantined (may be NULL). Returns the count
 * or -1 when dir cannot be read. Creates dir when missing. Never blocks on
 * what it finds. */
int store_scan(const char *dir, void (*fn)(const char *id, void *ud), void *ud,
               int *quarantined, char *err, size_t errcap);

/* Removes temp files that no live writer holds (left by a kill -9 during a
 * write): writers flock their temp, so a temp we can lock is stale. Where the
 * file system has no locks, only temps older than min_age_s go. Returns the
 * number removed, -1 when dir cannot be read. */
int store_clean_temps(const char *dir, int min_age_s);

/* Largest |value| a stored or imported state may hold. Real states stay
 * many orders of magnitude below; beyond it (or NaN/Inf) the file is corrupt
 * or hostile and the model would only produce garbage or nothing. */
#define STORE_VALUE_MAX 1e6f

/* 1 when all n values are finite and within +-STORE_VALUE_MAX. */
int store_values_ok(const float *x, size_t n);

/* Reads an uploaded safetensors state ("state.<i>.*", as an export writes
 * it) for model m into a new state, *out (the caller frees it). 0; else
 * *out is NULL and err says why: 1 when it is not a state of this model or
 * holds values that store_values_ok refuses, -1 out of memory. */
int store_read_upload(const ms_model *m, const char *path, ms_state **out, char *err, size_t errcap);

#endif
