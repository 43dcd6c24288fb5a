/*
 * tokenizer.c - the RWKV World tokenizer: vocabulary parser, greedy
 * longest-match encoder and streaming UTF-8-safe decoder.
 *
 * Design. The vocabulary text file is parsed in C at load (no converted
 * table to keep in sync with the source of truth). All token bytes live in
 * one blob indexed by id. For encoding we build a byte trie once: the
 * entries are sorted by their bytes, and the trie is laid out breadth-first
 * from that sorted list, so the children of every node are contiguous and
 * already ordered by byte. Each node is a few parallel arrays (token id,
 * first child, child count, edge label): about 11 bytes per node and at most
 * one node per vocabulary byte (~373k for World), built without per-node
 * allocation. The root, which every lookup starts from and which has a child
 * for each of the 256 bytes in World, gets a direct 256-entry table.
 *
 * The streaming decoder follows the official rule (print the pending bytes
 * once they decode without U+FFFD, otherwise wait) but never waits forever:
 * bytes that can no longer become valid UTF-8 are emitted as U+FFFD, one per
 * maximal invalid subpart (the Unicode / Python errors="replace" rule).
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Longest token accepted. World's longest is 128 bytes; the bound also keeps
 * ms_detok's fixed buffers (256 pending, 512 out) sufficient, see below. */
#define TOK_MAX_LEN 128
/* Ids above this are refused so that a corrupt file cannot make us allocate
 * gigabytes for the id-indexed tables. */
#define TOK_MAX_ID (1 << 22)
/* The decoder holds back at most this many bytes of already-valid text while
 * waiting for an incomplete character (the official rule holds all of it).
 * With tokens <= 128 bytes this bounds pending to 64 + 128 < 256 and the
 * output of one push to 64 + 3 * (3 + 128) < 512. */
#define DETOK_HOLD 64

struct ms_tokenizer {
    int32_t n_ids;         /* 1 + largest id */
    uint32_t *off;         /* (n_ids + 1) offsets into blob; empty = unknown id */
    unsigned char *blob;   /* token bytes, id order */
    /* trie, breadth-first; node 0 is the root */
    uint32_t n_nodes;
    int32_t *node_tok;     /* (n_nodes) token ending here, or -1 */
    uint32_t *node_first;  /* (n_nodes) index of first child */
    uint16_t *node_nkids;  /* (n_nodes) number of children (<= 256) */
    unsigned char *label;  /* (n_nodes) byte on the edge into the node */
    int32_t root_kid[256]; /* child of the root for each byte, or -1 */
};

/* One vocabulary entry during construction. */
typedef struct entry {
    const unsigned char *bytes;
    uint32_t len;
    int32_t id;
    uint32_t line;
} entry;

/* ======================================================================== */
/* Construction                                                              */
/* ======================================================================== */

static int entry_cmp(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    uint32_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->bytes, y->bytes, n);
    if (c)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

void ms_tokenizer_free(ms_tokenizer *t)
{
    if (!t)
        return;
    free(t->off);
    free(t->blob);
    free(t->node_tok);
    free(t->node_first);
    free(t->node_nkids);
    free(t->label);
    free(t);
}

/* Builds the tokenizer from entries whose bytes point into `blob` (ownership
 * of blob moves to the tokenizer, also on failure). Entries are reordered.
 * `name` is only used in error messages. */
static ms_status build(entry *e, size_t n, unsigned char *blob, size_t blob_len,
                       const char *name, ms_tokenizer **out, ms_error *err)
{
    ms_status st = MS_ERR_NOMEM;
    uint32_t *lo = NULL, *hi = NULL;
    unsigned char *depth = NULL;
    ms_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        free(blob);
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", name);
    }
    t->blob = blob;

    int32_t max_id = 0;
    for (size_t i = 0; i < n; i++)
        if (e[i].id > max_id)
            max_id = e[i].id;
    t->n_ids = max_id + 1;

    /* Id table: ids may come in any order and with gaps, so build the
     * offsets from lengths per id (blob is in file order; keep it and store
     * start/end pairs via a second pass). */
    t->off = calloc((size_t)t->n_ids + 1, sizeof *t->off);
    uint32_t *start = calloc((size_t)t->n_ids, sizeof *start);
    if (!t->off || !start) {
        free(start);
        goto fail_nomem;
    }
    for (size_t i = 0; i < n; i++) {
        start[e[i].id] = (uint32_t)(e[i].bytes - blob);
        t->off[e[i].id + 1] = e[i].len; /* length for now */
    }
    /* Re-pack the blob into id order so that off[] is a plain prefix sum. */
    unsigned char *packed = malloc(blob_len ? blob_len : 1);
    if (!packed) {
        free(start);
        goto fail_nomem;
    }
    uint32_t pos = 0;
    for (int32_t id = 0; id < t->n_ids; id++) {
        uint32_t len = t->off[id + 1];
        memcpy(packed + pos, blob + start[id], len);
        t->off[id] = pos;
        pos += len;
    }
    t->off[t->n_ids] = pos;
    free(start);
    for (size_t i = 0; i < n; i++)
        e[i].bytes = packed + t->off[e[i].id];
    free(blob);
    t->blob = packed;

    qsort(e, n, sizeof *e, entry_cmp);
    for (size_t i = 1; i < n; i++) {
        if (entry_cmp(&e[i - 1], &e[i]) == 0) {
            const entry *a = e[i - 1].line < e[i].line ? &e[i - 1] : &e[i];
            const entry *b = a == &e[i] ? &e[i - 1] : &e[i];
            st = ms_fail(err, MS_ERR_FORMAT,
                         "%s:%u: id %d has the same bytes as id %d (line %u)",
                         name, b->line, b->id, a->id, a->line);
            goto fail;
        }
    }

    /* Breadth-first layout. Node i covers the sorted range [lo, hi) of
     * entries that share its depth-long prefix; the node array itself is the
     * queue, since children are appended after every node already queued. */
    size_t cap = (size_t)pos + 1; /* at most one node per token byte, + root */
    t->node_tok = malloc(cap * sizeof *t->node_tok);
    t->node_first = malloc(cap * sizeof *t->node_first);
    t->node_nkids = malloc(cap * sizeof *t->node_nkids);
    t->label = malloc(cap);
    lo = malloc(cap * sizeof *lo);
    hi = malloc(cap * sizeof *hi);
    depth = malloc(cap);
    if (!t->node_tok || !t->node_first || !t->node_nkids || !t->label || !lo ||
        !hi || !depth)
        goto fail_nomem;
    uint32_t nn = 1;
    lo[0] = 0;
    hi[0] = (uint32_t)n;
    depth[0] = 0;
    t->label[0] = 0;
    for (uint32_t v = 0; v < nn; v++) {
        uint32_t a = lo[v], b = hi[v], d = depth[v];
        t->node_tok[v] = -1;
        if (a < b && e[a].len == d) /* the shortest sorts first */
            t->node_tok[v] = e[a++].id;
        t->node_first[v] = nn;
        uint32_t k = 0;
        while (a < b) {
            unsigned char c = e[a].bytes[d];
            uint32_t z = a + 1;
            while (z < b && e[z].bytes[d] == c)
                z++;
            t->label[nn] = c;
            lo[nn] = a;
            hi[nn] = z;
            depth[nn] = (unsigned char)(d + 1);
            nn++;
            k++;
            a = z;
        }
        t->node_nkids[v] = (uint16_t)k;
    }
    t->n_nodes = nn;
    for (int c = 0; c < 256; c++)
        t->root_kid[c] = -1;
    for (uint32_t k = 0; k < t->node_nkids[0]; k++)
        t->root_kid[t->label[t->node_first[0] + k]] = (int32_t)(t->node_first[0] + k);

    free(lo);
    free(hi);
    free(depth);
    *out = t;
    return MS_OK;

fail_nomem:
    st = ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", name);
fail:
    free(lo);
    free(hi);
    free(depth);
    ms_tokenizer_free(t);
    return st;
}

ms_tokenizer *ms_tokenizer_new_bytes(void)
{
    unsigned char *blob = malloc(256);
    entry *e = malloc(256 * sizeof *e);
    ms_tokenizer *t = NULL;
    if (!blob || !e) {
        free(blob);
        free(e);
        return NULL;
    }
    for (int b = 0; b < 256; b++) {
        blob[b] = (unsigned char)b;
        e[b] = (entry){ blob + b, 1, b + 1, 0 };
    }
    if (build(e, 256, blob, 256, "bytes", &t, NULL) != MS_OK)
        t = NULL;
    free(e);
    return t;
}

/* ======================================================================== */
/* Vocabulary file parser                                                    */
/* ======================================================================== */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Reads n hex digits at s; -1 when one is not a hex digit. */
static long hexn(const char *s, size_t n)
{
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        int h = hexval((unsigned char)s[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static size_t utf8_put(unsigned char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

typedef enum { U8_VALID, U8_INCOMPLETE, U8_INVALID } u8_kind;

/* Classifies the UTF-8 sequence starting at s[0] (n > 0 bytes available)
 * following Unicode Table 3-7. *len gets the length of the valid sequence,
 * of the incomplete prefix (which reaches the end of s), or of the maximal
 * invalid subpart (>= 1), i.e. the bytes one U+FFFD replaces. */
static u8_kind utf8_scan(const unsigned char *s, size_t n, size_t *len)
{
    unsigned c = s[0];
    size_t need;
    unsigned lo2 = 0x80, hi2 = 0xBF; /* range allowed for the second byte */
    if (c < 0x80) {
        *len = 1;
        return U8_VALID;
    } else if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo2 = 0xA0;
        else if (c == 0xED)
            hi2 = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo2 = 0x90;
        else if (c == 0xF4)
            hi2 = 0x8F;
    } else {
        *len = 1;
        return U8_INVALID;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n) {
            *len = i;
            return U8_INCOMPLETE;
        }
        unsigned b = s[i];
        unsigned l = i == 1 ? lo2 : 0x80, h = i == 1 ? hi2 : 0xBF;
        if (b < l || b > h) {
            *len = i;
            return U8_INVALID;
        }
    }
    *len = need;
    return U8_VALID;
}

/* Decodes the Python literal s[0..n) into o (which has room for n bytes:
 * no escape expands). Returns the decoded length, or -1 with `why` set. */
static long parse_literal(const char *s, size_t n, unsigned char *o, char *why,
                          size_t whylen)
{
    int is_bytes = 0;
    if (n >= 1 && s[0] == 'b') {
        is_bytes = 1;
        s++;
        n--;
    }
    if (n < 2 || (s[0] != '\'' && s[0] != '"') || s[n - 1] != s[0]) {
        snprintf(why, whylen, "not a quoted %s literal", is_bytes ? "bytes" : "str");
        return -1;
    }
    char q = s[0];
    size_t i = 1, end = n - 1, k = 0;
    while (i < end) {
        unsigned char c = (unsigned char)s[i];
        if (c == (unsigned char)q) {
            snprintf(why, whylen, "unescaped %c inside the literal", q);
            return -1;
        }
        if (c != '\\') {
            if (c >= 0x80) {
                size_t len;
                if (is_bytes) {
                    snprintf(why, whylen, "non-ASCII byte in a bytes literal");
                    return -1;
                }
                if (utf8_scan((const unsigned char *)s + i, end - i, &len) != U8_VALID) {
                    snprintf(why, whylen, "invalid UTF-8 in the literal");
                    return -1;
                }
                memcpy(o + k, s + i, len);
                k += len;
                i += len;
            } else {
                o[k++] = c;
                i++;
            }
            continue;
        }
        if (i + 1 >= end) {
            snprintf(why, whylen, "literal ends with a lone backslash");
            return -1;
        }
        char x = s[i + 1];
        long cp;
        size_t digits = 0;
        switch (x) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case '0': o[k++] = '\0'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'v': o[k++] = '\v'; break;
        case '\\': case '\'': case '"': o[k++] = (unsigned char)x; break;
        case 'x': digits = 2; break;
        case 'u': digits = is_bytes ? 0 : 4; break;
        case 'U': digits = is_bytes ? 0 : 8; break;
        default: break;
        }
        if (x == 'x' || ((x == 'u' || x == 'U') && !is_bytes)) {
            if (i + 2 + digits > end || (cp = hexn(s + i + 2, digits)) < 0) {
                snprintf(why, whylen, "bad \\%c escape", x);
                return -1;
            }
            if (is_bytes) {
                o[k++] = (unsigned char)cp;
            } else {
                /* In a str literal \xNN is the code point U+00NN. */
                if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
                    snprintf(why, whylen, "\\%c escape is not a UTF-8 encodable code point", x);
                    return -1;
                }
                k += utf8_put(o + k, (uint32_t)cp);
            }
            i += 2 + digits;
            continue;
        }
        if (!strchr("ntr0abfv\\'\"", x)) {
            snprintf(why, whylen, "unknown escape \\%c", x);
            return -1;
        }
        i += 2;
    }
    return (long)k;
}

/* Parses a non-empty run of decimal digits; -1 on anything else or > max. */
static long parse_uint(const char *s, size_t n, long max)
{
    long v = 0;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
        if (v > max)
            return -1;
    }
    return v;
}

/* Reads a whole file into a malloc'd buffer. */
static ms_status slurp(const char *path, char **buf, size_t *len, ms_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ms_fail(err, MS_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 20, n = 0;
    char *b = malloc(cap);
    for (;;) {
        if (!b) {
            fclose(f);
            return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
        }
        n += fread(b + n, 1, cap - n, f);
        if (n < cap)
            break;
        cap *= 2;
        char *nb = realloc(b, cap);
        if (!nb)
            free(b);
        b = nb;
    }
    if (ferror(f)) {
        int e = errno;
        fclose(f);
        free(b);
        return ms_fail(err, MS_ERR_IO, "%s: read failed: %s", path, strerror(e));
    }
    fclose(f);
    *buf = b;
    *len = n;
    return MS_OK;
}

ms_status ms_tokenizer_load(const char *path, ms_tokenizer **out, ms_error *err)
{
    char *text = NULL;
    size_t len = 0;
    ms_status st;
    if (out)
        *out = NULL;
    if (!path || !out)
        return ms_fail(err, MS_ERR_INVALID, "ms_tokenizer_load: NULL argument");
    if ((st = slurp(path, &text, &len, err)) != MS_OK)
        return st;

    /* Decoded tokens are never longer than their literals, so the file size
     * bounds the blob; a line of >= 5 bytes bounds the entry count. */
    unsigned char *blob = malloc(len + 1);
    size_t ecap = len / 5 + 1;
    entry *e = malloc(ecap * sizeof *e);
    uint32_t *line_of = NULL; /* first line of each id, to report duplicates */
    size_t n = 0, used = 0;
    uint32_t lineno = 0;
    if (!blob || !e) {
        st = ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t p = 0; p < len;) {
        const char *line = text + p;
        const char *nl = memchr(line, '\n', len - p);
        size_t ll = nl ? (size_t)(nl - line) : len - p;
        p += ll + (nl ? 1 : 0);
        lineno++;
        if (ll && line[ll - 1] == '\r')
            ll--;
        size_t ws = 0;
        while (ws < ll && (line[ws] == ' ' || line[ws] == '\t'))
            ws++;
        if (ws == ll)
            continue; /* blank line */

        const char *sp1 = memchr(line, ' ', ll);
        const char *sp2 = sp1 ? memrchr(line, ' ', ll) : NULL;
        if (!sp1 || sp2 == sp1) {
            st = ms_fail(err, MS_ERR_FORMAT,
                         "%s:%u: expected '<id> <literal> <length>'", path, lineno);
            goto done;
        }
        long id = parse_uint(line, (size_t)(sp1 - line), TOK_MAX_ID);
        if (id < 0) {
            st = ms_fail(err, MS_ERR_FORMAT, "%s:%u: bad id '%.*s' (want 1..%d)",
                         path, lineno, (int)(sp1 - line), line, TOK_MAX_ID);
            goto done;
        }
        if (id == 0) {
            st = ms_fail(err, MS_ERR_FORMAT,
                         "%s:%u: id 0 is reserved for end-of-text", path, lineno);
            goto done;
        }
        const char *ls = sp2 + 1;
        long want = parse_uint(ls, (size_t)(line + ll - ls), 1L << 30);
        if (want < 0) {
            st = ms_fail(err, MS_ERR_FORMAT, "%s:%u: bad byte length '%.*s'", path,
                         lineno, (int)(line + ll - ls), ls);
            goto done;
        }
        char why[96];
        long got = parse_literal(sp1 + 1, (size_t)(sp2 - sp1 - 1), blob + used, why,
                                 sizeof why);
        if (got < 0) {
            st = ms_fail(err, MS_ERR_FORMAT, "%s:%u: %s", path, lineno, why);
            goto done;
        }
        if (got != want) {
            st = ms_fail(err, MS_ERR_FORMAT,
                         "%s:%u: length %ld does not match literal (%ld bytes)", path,
                         lineno, want, got);
            goto done;
        }
        if (got == 0 || got > TOK_MAX_LEN) {
            st = ms_fail(err, MS_ERR_FORMAT, "%s:%u: token of %ld bytes (want 1..%d)",
                         path, lineno, got, TOK_MAX_LEN);
            goto done;
        }
        e[n++] = (entry){ blob + used, (uint32_t)got, (int32_t)id, lineno };
        used += (size_t)got;
    }
    if (n == 0) {
        st = ms_fail(err, MS_ERR_FORMAT, "%s: no tokens", path);
        goto done;
    }

    /* Duplicate ids: the file is normally in id order, but do not rely on it. */
    int32_t max_id = 0;
    for (size_t i = 0; i < n; i++)
        if (e[i].id > max_id)
            max_id = e[i].id;
    line_of = calloc((size_t)max_id + 1, sizeof *line_of);
    if (!line_of) {
        st = ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (line_of[e[i].id]) {
            st = ms_fail(err, MS_ERR_FORMAT, "%s:%u: duplicate id %d (first on line %u)",
                         path, e[i].line, e[i].id, line_of[e[i].id]);
            goto done;
        }
        line_of[e[i].id] = e[i].line;
    }

    st = build(e, n, blob, used, path, out, err);
    blob = NULL; /* owned by build now */
done:
    free(line_of);
    free(e);
    free(blob);
    free(text);
    return st;
}

/* ======================================================================== */
/* Encoding and lookup                                                       */
/* ======================================================================== */

int32_t ms_tokenizer_n_ids(const ms_tokenizer *t)
{
    return t ? t->n_ids : 0;
}

const char *ms_token_bytes(const ms_tokenizer *t, int32_t id, size_t *len)
{
    if (len)
        *len = 0;
    if (!t || id <= 0 || id >= t->n_ids || t->off[id] == t->off[id + 1])
        return NULL;
    if (len)
        *len = t->off[id + 1] - t->off[id];
    return (const char *)t->blob + t->off[id];
}

/* The child of node v along byte c, or -1. Most nodes have a handful of
 * children (scan them); a few near the root have many (binary search). */
static int32_t child(const ms_tokenizer *t, uint32_t v, unsigned char c)
{
    uint32_t a = t->node_first[v], b = a + t->node_nkids[v];
    const unsigned char *lab = t->label;
    if (b - a <= 8) {
        for (; a < b; a++)
            if (lab[a] == c)
                return (int32_t)a;
        return -1;
    }
    while (a < b) {
        uint32_t m = a + (b - a) / 2;
        if (lab[m] < c)
            a = m + 1;
        else
            b = m;
    }
    return a < t->node_first[v] + t->node_nkids[v] && lab[a] == c ? (int32_t)a : -1;
}

/* Hot path of prompt processing: one trie walk per emitted token. A byte
 * that no token starts with (impossible with World, whose ids 1..256 cover
 * every byte) is skipped, since the contract has no error return here. */
size_t ms_tokenize(const ms_tokenizer *t, const char *text, size_t len,
                   int32_t *ids, size_t cap)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t count = 0, p = 0;
    while (p < len) {
        int32_t v = t->root_kid[s[p]];
        int32_t best = -1;
        size_t best_len = 1, q = p + 1;
        while (v >= 0) {
            if (t->node_tok[v] >= 0) {
                best = t->node_tok[v];
                best_len = q - p;
            }
            if (q >= len || t->node_nkids[v] == 0)
                break;
            v = child(t, (uint32_t)v, s[q++]);
        }
        if (best >= 0) {
            if (count < cap)
                ids[count] = best;
            count++;
        }
        p += best_len;
    }
    return count;
}

/* ======================================================================== */
/* Streaming decoder                                                         */
/* ======================================================================== */

void ms_detok_init(ms_detok *d)
{
    d->n_pending = 0;
}

static size_t put_fffd(char *o)
{
    o[0] = (char)0xEF;
    o[1] = (char)0xBF;
    o[2] = (char)0xBD;
    return 3;
}

/* Moves pending[0..upto) to out, invalid subparts as U+FFFD, and shifts the
 * rest of pending to the front. Returns the bytes written. */
static size_t emit(ms_detok *d, size_t upto, char *out)
{
    const unsigned char *s = (const unsigned char *)d->pending;
    size_t i = 0, o = 0;
    while (i < upto) {
        size_t len;
        u8_kind k = utf8_scan(s + i, upto - i, &len);
        if (k == U8_VALID) {
            memcpy(out + o, s + i, len);
            o += len;
        } else {
            o += put_fffd(out + o);
        }
        i += len;
    }
    memmove(d->pending, d->pending + upto, d->n_pending - upto);
    d->n_pending -= upto;
    return o;
}

size_t ms_detok_push(ms_detok *d, const ms_tokenizer *t, int32_t id, char *out)
{
    size_t len;
    const char *b = ms_token_bytes(t, id, &len);
    if (!b)
        return 0; /* end-of-text and unknown ids carry no text */
    size_t o = 0;
    /* Cannot trigger with TOK_MAX_LEN and DETOK_HOLD (pending <= 67 + 128
     * bytes); kept so that the buffer stays safe whatever the tokens. */
    if (d->n_pending + len > sizeof d->pending)
        o += emit(d, d->n_pending, out);
    if (len > sizeof d->pending - d->n_pending)
        len = sizeof d->pending - d->n_pending;
    memcpy(d->pending + d->n_pending, b, len);
    d->n_pending += len;

    /* Find where the trailing incomplete character (if any) starts, and
     * whether anything before it is invalid. */
    const unsigned char *s = (const unsigned char *)d->pending;
    size_t i = 0, n = d->n_pending, tail = n;
    int bad = 0;
    while (i < n) {
        size_t l;
        u8_kind k = utf8_scan(s + i, n - i, &l);
        if (k == U8_INCOMPLETE) {
            tail = i;
            break;
        }
        if (k == U8_INVALID)
            bad = 1;
        i += l;
    }
    if (tail == n)                    /* complete: print everything */
        return o + emit(d, n, out + o);
    if (bad || tail > DETOK_HOLD)     /* cannot become valid (or too long) */
        return o + emit(d, tail, out + o);
    return o;                         /* official rule: wait for more */
}

size_t ms_detok_flush(ms_detok *d, char *out)
{
    return emit(d, d->n_pending, out);
}
