/*
 * sse.c - SSE framing and the streaming stop-string matcher.
 *
 * Design of the matcher. Each stop string gets a Knuth-Morris-Pratt
 * automaton over bytes; its state is the length of the longest suffix of the
 * text so far that is a prefix of that stop string. So after each piece:
 *  - a state equal to the stop's length means it occurred, ending here;
 *  - otherwise the largest state over all stops is exactly how many trailing
 *    bytes might still become a stop string: those are held back, the rest
 *    is emitted.
 * Cost is linear in the text whatever the stop strings (clients choose them,
 * so a quadratic rescan of a long stop string would be a cheap attack).
 * Bytes are fed one at a time, so the cut point does not depend on how the
 * server split the text into pieces.
 *
 * The held-back suffix equals the start of a stop string; a valid UTF-8
 * string starts on a character boundary, so the emitted part ends on one
 * too. The boundary is still checked, so that text emitted is whole
 * characters even if a caller passes odd stop bytes.
 */
#include "sse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- framing */

char *sse_event(const char *payload, size_t len, size_t *out_len)
{
    /* A line break inside the payload would end the "data:" field early;
     * each line gets its own "data: " prefix, which SSE clients rejoin. */
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        if (payload[i] == '\n' || payload[i] == '\r')
            lines++; /* an upper bound: "\r\n" counts twice */
    size_t total = lines * 7 + len + 1; /* "data: " + "\n" per line, final "\n" */
    char *out = malloc(total + 1);
    if (!out)
        return NULL;
    char *p = out;
    memcpy(p, "data: ", 6);
    p += 6;
    for (size_t i = 0; i < len; i++) {
        char c = payload[i];
        if (c == '\r' && i + 1 < len && payload[i + 1] == '\n')
            continue; /* "\r\n" is one line break */
        if (c == '\r' || c == '\n') { /* SSE also ends lines at a lone "\r" */
            memcpy(p, "\ndata: ", 7);
            p += 7;
        } else {
            *p++ = c;
        }
    }
    *p++ = '\n';
    *p++ = '\n';
    *p = '\0';
    if (out_len)
        *out_len = (size_t)(p - out);
    return out;
}

char *sse_error_event(const oa_error *e, size_t *out_len)
{
    char *json = oa_error_json(e);
    if (!json)
        return NULL;
    char *ev = sse_event(json, strlen(json), out_len);
    free(json);
    return ev;
}

/* ---------------------------------------------------------------- matcher */

typedef struct stop_pat {
    unsigned char *s;
    size_t len;
    size_t *fail; /* fail[i]: longest proper border of s[0..i] */
    size_t q;     /* automaton state: matched prefix length */
} stop_pat;

struct sse_stop {
    stop_pat *pats;
    size_t n;
    char *buf;    /* text not yet handed out; its first `drop` bytes were */
    size_t len, cap, drop;
    int hit;
};

void sse_stop_free(sse_stop *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->pats[i].s);
        free(m->pats[i].fail);
    }
    free(m->pats);
    free(m->buf);
    free(m);
}

sse_stop *sse_stop_new(char *const *stops, size_t n)
{
    sse_stop *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    if (n && !(m->pats = calloc(n, sizeof *m->pats))) {
        free(m);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = stops && stops[i] ? strlen(stops[i]) : 0;
        if (!len)
            continue;
        stop_pat *p = &m->pats[m->n];
        p->s = malloc(len);
        p->fail = malloc(len * sizeof *p->fail);
        if (!p->s || !p->fail) {
            free(p->s);
            free(p->fail);
            sse_stop_free(m);
            return NULL;
        }
        memcpy(p->s, stops[i], len);
        p->len = len;
        p->fail[0] = 0;
        for (size_t k = 1, b = 0; k < len; k++) {
            while (b > 0 && p->s[k] != p->s[b])
                b = p->fail[b - 1];
            if (p->s[k] == p->s[b])
                b++;
            p->fail[k] = b;
        }
        m->n++;
    }
    return m;
}

int sse_stop_hit(const sse_stop *m) { return m->hit; }

/* Forgets the bytes handed out by the previous call. */
static void drop_emitted(sse_stop *m)
{
    if (m->drop) {
        memmove(m->buf, m->buf + m->drop, m->len - m->drop);
        m->len -= m->drop;
        m->drop = 0;
    }
}

int sse_stop_push(sse_stop *m, const char *piece, size_t len, const char **emit,
                  size_t *emit_len)
{
    drop_emitted(m);
    *emit = m->buf ? m->buf : "";
    *emit_len = 0;
    if (m->hit)
        return 1;
    if (m->n == 0) { /* nothing can match: pass the piece straight through */
        *emit = piece ? piece : "";
        *emit_len = piece ? len : 0;
        return 0;
    }
    if (len > SIZE_MAX / 4 || m->len > SIZE_MAX / 4)
        return -1;
    if (m->len + len + 1 > m->cap) {
        size_t cap = m->cap ? m->cap : 64;
        while (cap < m->len + len + 1)
            cap *= 2;
        char *nb = realloc(m->buf, cap);
        if (!nb)
            return -1;
        m->buf = nb;
        m->cap = cap;
    }
    *emit = m->buf;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)piece[i];
        m->buf[m->len++] = (char)c;
        size_t best = 0; /* longest stop completed by this byte */
        for (size_t k = 0; k < m->n; k++) {
            stop_pat *p = &m->pats[k];
            while (p->q > 0 && p->s[p->q] != c)
                p->q = p->fail[p->q - 1];
            if (p->s[p->q] == c)
                p->q++;
            if (p->q == p->len && p->len > best)
                best = p->len;
        }
        if (best) {
            m->hit = 1;
            m->len -= best; /* the stop string itself is never returned */
            *emit_len = m->len;
            m->drop = m->len;
            return 1;
        }
    }

    size_t hold = 0;
    for (size_t k = 0; k < m->n; k++)
        if (m->pats[k].q > hold)
            hold = m->pats[k].q;
    if (hold > m->len) /* cannot happen: a state never exceeds the text kept */
        hold = m->len;
    size_t cut = m->len - hold;
    while (cut > 0 && cut < m->len && ((unsigned char)m->buf[cut] & 0xC0) == 0x80)
        cut--;
    *emit_len = cut;
    m->drop = cut;
    return 0;
}

size_t sse_stop_flush(sse_stop *m, const char **emit)
{
    drop_emitted(m);
    *emit = m->buf ? m->buf : "";
    if (m->hit)
        return 0;
    for (size_t k = 0; k < m->n; k++)
        m->pats[k].q = 0;
    m->drop = m->len;
    return m->len;
}
