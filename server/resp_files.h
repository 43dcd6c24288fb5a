/*
 * resp_files.h - stored /v1/responses records as files in --state-dir, so a
 * chain outlives a restart as its session does: "<id>.response" holds the
 * record's JSON text, written atomically (store_write_atomic). Records older
 * than a retention are removed by resp_files_expire.
 *
 * Reentrant (no globals); called from worker threads. Ids must pass
 * oa_session_id_valid (others are never found). Errors return -1 with a
 * message in err (errcap bytes) naming the file.
 */
#ifndef METASTATE_SERVER_RESP_FILES_H
#define METASTATE_SERVER_RESP_FILES_H

#include <stddef.h>

/* Writes <dir>/<id>.response (len bytes of text). 0 ok, -1 error. */
int resp_files_put(const char *dir, const char *id, const char *text, size_t len, char *err,
                   size_t errcap);
/* Reads <dir>/<id>.response into *buf (malloc'd, NUL-terminated, caller
 * frees). 1 found, 0 none (or an id that cannot be a file name), -1 error. */
int resp_files_get(const char *dir, const char *id, char **buf, size_t *len, char *err,
                   size_t errcap);
/* Removes <dir>/<id>.response: 1 removed, 0 none, -1 error. */
int resp_files_delete(const char *dir, const char *id, char *err, size_t errcap);
/* Removes the records last written more than max_age_s seconds ago; the
 * count removed, -1 when dir cannot be read. */
int resp_files_expire(const char *dir, long max_age_s);

#endif
