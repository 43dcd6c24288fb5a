/* status.c - names of the server's status codes and the message helper. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>

const char *srv_status_str(srv_status s)
{
    switch (s) {
    case SRV_OK: return "ok";
    case SRV_ERR_INVALID: return "invalid request";
    case SRV_ERR_NOT_FOUND: return "not found";
    case SRV_ERR_BUSY: return "session in use";
    case SRV_ERR_REJECTED: return "session file rejected";
    case SRV_ERR_NOMEM: return "out of memory";
    case SRV_ERR_IO: return "I/O error";
    case SRV_ERR_ENGINE: return "engine error";
    case SRV_ERR_CANCELLED: return "client disconnected";
    case SRV_ERR_TIMEOUT: return "timed out waiting for a slot";
    case SRV_ERR_SESSIONS_FULL: return "too many sessions";
    case SRV_ERR_QUEUE_FULL: return "queue full";
    case SRV_ERR_UNAVAILABLE: return "temporarily unavailable";
    case SRV_ERR_LOADING: return "model loading";
    case SRV_ERR_SHUTTING_DOWN: return "shutting down";
    case SRV_ERR_STORE_UNAVAILABLE: return "session store unavailable";
    }
    return "unknown status";
}

srv_status srv_fail(srv_error *err, srv_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int srv_errf(char *err, size_t cap, const char *fmt, ...)
{
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return -1;
}
