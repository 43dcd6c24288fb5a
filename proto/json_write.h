/*
 * json_write.h - the one JSON writer of the project: everything the server
 * sends (responses, chunks, errors, session listings) is written through it,
 * in a fixed field order, without a DOM. Parsing is jansson's, in openai.c.
 *
 * A jbuf starts zeroed ({0}) or over an existing malloc'd buffer; appends
 * grow it. After an allocation failure every append is a no-op and
 * jb_finish returns NULL, so callers check once at the end. Reentrant: no
 * state outside the jbuf.
 */
#ifndef METASTATE_PROTO_JSON_WRITE_H
#define METASTATE_PROTO_JSON_WRITE_H

#include <stddef.h>
#include <stdint.h>

typedef struct jbuf {
    char *p;        /* NUL-terminated text so far (malloc'd), NULL while empty */
    size_t len, cap;
    int oom;        /* sticky */
} jbuf;

/* n bytes of ready JSON (punctuation, literals, a nested document). */
void jb_put(jbuf *b, const char *s, size_t n);
void jb_puts(jbuf *b, const char *s);
void jb_i64(jbuf *b, int64_t v);
void jb_bool(jbuf *b, int v);
/* A string literal of s[0..n), escaped; invalid UTF-8 bytes become U+FFFD.
 * s == NULL writes null. */
void jb_str(jbuf *b, const char *s, size_t n);
/* jb_str of a NUL-terminated string (NULL writes null). */
void jb_cstr(jbuf *b, const char *s);
/* The text (caller frees), or NULL after an allocation failure (the buffer
 * is then freed). */
char *jb_finish(jbuf *b);

#endif
