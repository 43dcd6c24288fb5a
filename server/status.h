/*
 * status.h - the server's one status enum and error struct, mirroring the
 * engine's ms_status / ms_error: functions that can fail return srv_status
 * (SRV_OK == 0) and, given an srv_error, say why in words a client or an
 * operator can act on. Only http.c turns a status into an HTTP status and
 * an OpenAI error type (http_error_from_status); nothing below it knows HTTP.
 */
#ifndef METASTATE_SERVER_STATUS_H
#define METASTATE_SERVER_STATUS_H

#include <stddef.h>

typedef enum srv_status {
    SRV_OK = 0,
    SRV_ERR_INVALID,       /* the request is wrong (bad token id, unknown state...) */
    SRV_ERR_NOT_FOUND,     /* no such session / file */
    SRV_ERR_BUSY,          /* the session is in use by another request */
    SRV_ERR_REJECTED,      /* a session file is corrupt or not this model's: set aside */
    SRV_ERR_NOMEM,         /* out of memory serving the request */
    SRV_ERR_IO,            /* a file could not be read or written */
    SRV_ERR_ENGINE,        /* the engine failed on valid input */
    SRV_ERR_CANCELLED,     /* the client went away (or the drain timed out) */
    SRV_ERR_TIMEOUT,       /* waited longer than --timeout for a free slot */
    SRV_ERR_SESSIONS_FULL, /* --max-sessions reached, or no memory for a new session */
    SRV_ERR_QUEUE_FULL,    /* every slot and the queue are taken */
    SRV_ERR_UNAVAILABLE,   /* temporarily cannot serve (resources); retry later */
    SRV_ERR_LOADING,       /* the model is still loading */
    SRV_ERR_SHUTTING_DOWN, /* draining: no new requests */
    SRV_ERR_STORE_UNAVAILABLE /* the session store (--state-store) cannot be reached */
} srv_status;

typedef struct srv_error {
    srv_status code;
    char msg[512];
} srv_error;

/* A short name for s ("ok", "out of memory", ...). Never NULL. */
const char *srv_status_str(srv_status s);
/* Fills err (when not NULL) with code and the printf-formatted message;
 * returns code, so `return srv_fail(err, SRV_ERR_IO, "...")` reads well. */
srv_status srv_fail(srv_error *err, srv_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* For the modules that return -1 with a message in a caller's buffer: fills
 * err (cap bytes; err may be NULL) and returns -1. */
int srv_errf(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
