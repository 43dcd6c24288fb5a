/* errors.c - status codes and the one helper that formats error messages. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

const char *ms_status_str(ms_status s)
{
    switch (s) {
    case MS_OK: return "ok";
    case MS_ERR_IO: return "I/O error";
    case MS_ERR_FORMAT: return "format error";
    case MS_ERR_MISSING: return "missing tensor";
    case MS_ERR_SHAPE: return "shape mismatch";
    case MS_ERR_DTYPE: return "unsupported dtype";
    case MS_ERR_UNSUPPORTED: return "unsupported model";
    case MS_ERR_NOMEM: return "out of memory";
    case MS_ERR_INVALID: return "invalid argument";
    case MS_ERR_MISMATCH: return "mismatch";
    }
    return "unknown error";
}

ms_status ms_fail(ms_error *err, ms_status code, const char *fmt, ...)
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
