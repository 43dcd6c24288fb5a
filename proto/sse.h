/*
 * sse.h - Server-Sent Events framing for streamed responses, and the
 * incremental stop-string matcher used while streaming.
 *
 * Framing: each event is "data: <payload>\n\n"; the stream ends with
 * SSE_DONE, or with one error event after which the server closes it.
 * No sockets here: functions return bytes for the server to write.
 */
#ifndef METASTATE_PROTO_SSE_H
#define METASTATE_PROTO_SSE_H

#include <stddef.h>

#include "openai.h"

/* The terminating event of an OpenAI stream. */
#define SSE_DONE "data: [DONE]\n\n"
#define SSE_DONE_LEN (sizeof SSE_DONE - 1)

/* Frames len bytes of payload as one event ("data: " per line, "\n\n" at the
 * end). Returns malloc'd NUL-terminated bytes (caller frees), their length in
 * *out_len when not NULL; NULL on allocation failure. */
char *sse_event(const char *payload, size_t len, size_t *out_len);

/* The error event `data: {"error":{...}}\n\n` for a stream that already
 * started. Same ownership and failure as sse_event. */
char *sse_error_event(const oa_error *e, size_t *out_len);

/* ------------------------------------------------------ stop-string matcher */

/* Matches stop strings across the pieces of a generated text. Output is cut
 * at the first stop string to *end* in the text (ties: the longest one), as
 * generation would halt there, so the result does not depend on how the
 * text was split into pieces. Text that could be the start of a stop string
 * is held back until it is known not to be. One matcher per reply; not
 * shared between threads. */
typedef struct sse_stop sse_stop;

/* Copies the n stop strings (empty and NULL ones are ignored; n may be 0).
 * NULL on allocation failure. Free with sse_stop_free (accepts NULL). */
sse_stop *sse_stop_new(char *const *stops, size_t n);
void sse_stop_free(sse_stop *m);

/* Feeds len bytes of generated text (whole UTF-8 characters). Sets *emit and
 * *emit_len to the text that is safe to send now: it never ends inside a
 * character nor includes a stop string. *emit points into m (or into piece)
 * and is valid until the next call on m. Returns 0 to continue, 1 when a stop
 * string was hit (*emit is then the rest of the text before it, and later
 * pushes emit nothing and return 1), -1 on allocation failure. */
int sse_stop_push(sse_stop *m, const char *piece, size_t len, const char **emit,
                  size_t *emit_len);

/* At the end of generation (no stop hit): returns the held-back text in
 * *emit (valid until the next call on m) and its length. After a stop hit
 * returns 0. */
size_t sse_stop_flush(sse_stop *m, const char **emit);

/* 1 once a stop string was hit. */
int sse_stop_hit(const sse_stop *m);

#endif
