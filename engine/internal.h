/*
 * internal.h - declarations shared by the engine's own .c files. Nothing
 * outside engine/ includes this; the public contract is engine.h.
 */
#ifndef METASTATE_ENGINE_INTERNAL_H
#define METASTATE_ENGINE_INTERNAL_H

#include "engine.h"

#if defined(__GNUC__)
#define MS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MS_PRINTF(a, b)
#endif

/* Fills err (when not NULL) with code and a printf-style message; returns
 * code, so callers write `return ms_fail(err, MS_ERR_IO, "...", ...);`. */
ms_status ms_fail(ms_error *err, ms_status code, const char *fmt, ...) MS_PRINTF(3, 4);

/* Size in bytes of one element of dtype d (4 or 2). */
size_t ms_dtype_size(ms_dtype d);
/* "F32", "F16", "BF16". */
const char *ms_dtype_name(ms_dtype d);

#endif
