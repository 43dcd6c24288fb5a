/*
 * store_redis.h - session records in Redis (or Valkey) through hiredis, and
 * the per-session lease that keeps a session's turns one at a time across
 * replicas.
 *
 * Keys (prefix from --store-prefix; the braces put both keys of a session in
 * one Redis Cluster slot, which the scripts below need):
 *   <prefix>{<id>}:state  hash: r = the record (state_record.h), v = version
 *   <prefix>{<id>}:lease  string: the owner token of the turn running now
 *   <prefix>response:<id> string: a stored /v1/responses record (JSON text)
 * A version is an opaque random string written with every save, so a cached
 * copy is valid exactly when the stored version equals the one it has (also
 * across a delete and a new session of the same id).
 *
 * Thread-safe: a few connections, each used by one caller at a time; a
 * connection that failed is reopened by the next call. Every call is
 * blocking, bounded by the timeout given to redis_store_new; call them from
 * worker threads, not from the scheduler's loop. Errors return -1 (store
 * unreachable or answering errors) with a message in err (errcap bytes).
 */
#ifndef METASTATE_SERVER_STORE_REDIS_H
#define METASTATE_SERVER_STORE_REDIS_H

#include <stddef.h>

typedef struct redis_store redis_store;

#define REDIS_VERSION_MAX 33 /* a version string with its NUL */
#define REDIS_TOKEN_MAX 33   /* a lease owner token with its NUL */

/* Parses redis://[user:password@]host[:port][/db] (port 6379, db 0 by
 * default) without connecting. NULL with err filled on a malformed URL.
 * prefix is copied; timeout_ms bounds connects and each command. */
redis_store *redis_store_new(const char *url, const char *prefix, int timeout_ms, char *err,
                             size_t errcap);
void redis_store_free(redis_store *rs);
/* "host:port/db" for messages (no credentials). */
const char *redis_store_where(const redis_store *rs);

/* PING: 0 when the store answers. */
int redis_store_ping(redis_store *rs, char *err, size_t errcap);

/* A fresh random owner token (32 hex digits) into tok[REDIS_TOKEN_MAX]. */
void redis_new_token(char *tok);

/* Takes the lease of session id for ttl_ms with owner token tok (SET NX PX)
 * and, in the same round trip, reads the stored version into
 * ver[REDIS_VERSION_MAX] ("" when the session has no value) and refreshes the
 * value's expiry to ttl_s seconds (0 = none). Returns 1 taken, 0 held by
 * someone else, -1 error. */
int redis_lease_acquire(redis_store *rs, const char *id, const char *tok, long ttl_ms, long ttl_s,
                        char *ver, char *err, size_t errcap);
/* Extends the lease if tok still owns it: 1 extended, 0 not ours (expired or
 * taken), -1 error. */
int redis_lease_renew(redis_store *rs, const char *id, const char *tok, long ttl_ms, char *err,
                      size_t errcap);
/* Deletes the lease if tok owns it (compare-and-delete): 1 released, 0 not
 * ours, -1 error. */
int redis_lease_release(redis_store *rs, const char *id, const char *tok, char *err,
                        size_t errcap);

/* Reads session id's record (malloc'd into *buf, caller frees) and version.
 * Returns 1 found, 0 no value, -1 error. */
int redis_load(redis_store *rs, const char *id, unsigned char **buf, size_t *len, char *ver,
               char *err, size_t errcap);
/* Stores a record (n_tokens: its token count, for listings) under a new
 * version (written to ver) if tok still owns the lease; tok NULL (imports):
 * only while nobody holds the lease. Sets the expiry to ttl_s seconds (0 =
 * none). Returns 1 saved, 0 lease lost, 2 leased by someone (tok NULL),
 * -1 error; nothing is written unless 1. */
int redis_save(redis_store *rs, const char *id, const char *tok, const unsigned char *buf,
               size_t len, long long n_tokens, long ttl_s, char *ver, char *err, size_t errcap);
/* Token count, seconds to expiry (-1 none) and whether a turn holds the
 * lease, without reading the record. 1 found, 0 no value, -1 error. */
int redis_info(redis_store *rs, const char *id, long long *n_tokens, long *ttl_s, int *leased,
               char *err, size_t errcap);
/* Renames a rejected value to <prefix>{<id>}:rejected (kept for inspection;
 * the session restarts). 0 ok, -1 error. */
int redis_set_aside(redis_store *rs, const char *id, char *err, size_t errcap);
/* Deletes session id unless a turn holds its lease: 1 deleted, 0 no such
 * session, 2 leased (busy), -1 error. */
int redis_delete(redis_store *rs, const char *id, char *err, size_t errcap);
/* Calls fn(id, ud) for every session with a value (SCAN); returns the count
 * or -1. */
int redis_scan(redis_store *rs, void (*fn)(const char *id, void *ud), void *ud, char *err,
               size_t errcap);

/* Stored responses: sets response id's record (len bytes) to expire after
 * ttl_s seconds (> 0). 0 ok, -1 error. */
int redis_response_put(redis_store *rs, const char *id, const char *buf, size_t len, long ttl_s,
                       char *err, size_t errcap);
/* Reads response id's record into *buf (malloc'd, NUL-terminated, caller
 * frees). 1 found, 0 none, -1 error. */
int redis_response_get(redis_store *rs, const char *id, char **buf, size_t *len, char *err,
                       size_t errcap);
/* 1 deleted, 0 none, -1 error. */
int redis_response_delete(redis_store *rs, const char *id, char *err, size_t errcap);

#endif
