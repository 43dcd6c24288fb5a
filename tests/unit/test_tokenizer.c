/*
 * test_tokenizer.c - the World tokenizer against the golden cases produced
 * by the official Python tokenizer (tokenizer_cases.json), plus the byte
 * tokenizer, malformed vocabulary files and streaming-decoder edge cases.
 *
 * The vocabulary and the cases are third-party data that stay outside the
 * repository: they are read from $METASTATE_SHARED/vocab (default
 * ../shared/vocab, relative to the repo root where the suite runs) and the
 * tests that need them are skipped when that directory is absent.
 */
#include <criterion/criterion.h>
#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared_ref.h"
#include "engine.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */


static ms_tokenizer *load_world(void)
{
    char path[1024];
    shared_file(path, sizeof path, "vocab", "rwkv_vocab_v20230424.txt");
    ms_tokenizer *t = NULL;
    ms_error err = { 0 };
    ms_status st = ms_tokenizer_load(path, &t, &err);
    cr_assert_eq(st, MS_OK, "load %s: %s", path, err.msg);
    cr_assert_not_null(t);
    return t;
}

/* jansson cannot hold U+0000 in an object key, and one "encode" text
 * contains it. So the file is loaded with every \u0000 escape rewritten to
 * \ue000 (a private-use character absent from the file, checked), and texts
 * are mapped back with unmark(). */
#define NUL_MARK "\xee\x80\x80"

static json_t *load_cases(void)
{
    char path[1024];
    shared_file(path, sizeof path, "vocab", "tokenizer_cases.json");
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    size_t cap = 1 << 16, n = 0;
    char *text = malloc(cap);
    for (size_t got; (got = fread(text + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap)
            text = realloc(text, cap *= 2);
        cr_assert_not_null(text);
    }
    fclose(f);
    cr_assert_null(memmem(text, n, "\\ue000", 6), "%s already uses U+E000", path);
    cr_assert_null(memmem(text, n, NUL_MARK, 3), "%s already uses U+E000", path);
    for (char *p = text; (p = memmem(p, n - (size_t)(p - text), "\\u0000", 6)); p += 6)
        memcpy(p, "\\ue000", 6);
    json_error_t jerr;
    json_t *root = json_loadb(text, n, 0, &jerr);
    free(text);
    cr_assert_not_null(root, "%s:%d: %s", path, jerr.line, jerr.text);
    return root;
}

/* Copies s (n bytes) into a malloc'd buffer, turning NUL_MARK back into
 * NUL bytes; *out_len gets the new length. */
static char *unmark(const char *s, size_t n, size_t *out_len)
{
    char *o = malloc(n + 1);
    size_t k = 0;
    cr_assert_not_null(o);
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && memcmp(s + i, NUL_MARK, 3) == 0) {
            o[k++] = 0;
            i += 3;
        } else {
            o[k++] = s[i++];
        }
    }
    o[k] = 0;
    *out_len = k;
    return o;
}

/* Decodes lowercase/uppercase hex into a malloc'd buffer. */
static unsigned char *unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    unsigned char *b = malloc(n + 1);
    cr_assert_not_null(b);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        cr_assert_eq(sscanf(hex + 2 * i, "%2x", &v), 1, "bad hex %s", hex);
        b[i] = (unsigned char)v;
    }
    *len = n;
    return b;
}

static void assert_ids(const ms_tokenizer *t, const char *text, size_t len,
                       json_t *want, const char *what)
{
    size_t n_want = json_array_size(want);
    int32_t *ids = malloc((n_want + len + 1) * sizeof *ids);
    cr_assert_not_null(ids);
    /* Two-phase use: count first, then fill. */
    size_t need = ms_tokenize(t, text, len, NULL, 0);
    cr_assert_eq(need, n_want, "%s: %zu ids, want %zu", what, need, n_want);
    size_t got = ms_tokenize(t, text, len, ids, n_want + len + 1);
    cr_assert_eq(got, n_want);
    for (size_t i = 0; i < n_want; i++)
        cr_assert_eq(ids[i], (int32_t)json_integer_value(json_array_get(want, i)),
                     "%s: id #%zu is %d, want %lld", what, i, ids[i],
                     json_integer_value(json_array_get(want, i)));
    free(ids);
}

/* Streams ids through a fresh decoder, then flushes; returns malloc'd text. */
static char *stream_all(const ms_tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    char *res = malloc(512 * (n + 1));
    char out[512];
    size_t o = 0;
    ms_detok d;
    cr_assert_not_null(res);
    ms_detok_init(&d);
    for (size_t i = 0; i < n; i++) {
        size_t k = ms_detok_push(&d, t, ids[i], out);
        cr_assert_leq(k, sizeof out);
        cr_assert_leq(d.n_pending, sizeof d.pending);
        memcpy(res + o, out, k);
        o += k;
    }
    size_t k = ms_detok_flush(&d, out);
    memcpy(res + o, out, k);
    o += k;
    cr_assert_eq(d.n_pending, 0);
    res[o] = 0;
    *len = o;
    return res;
}

/* Writes `content` as <tmpdir>/vocab.txt; returns the path (static buffer
 * owned by the caller's frame). */
static void write_vocab(char *dir, size_t dircap, char *path, size_t cap,
                        const char *content)
{
    snprintf(dir, dircap, "/tmp/ms_tok_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, cap, "%s/vocab.txt", dir);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fputs(content, f);
    fclose(f);
}

static void remove_vocab(const char *dir, const char *path)
{
    unlink(path);
    rmdir(dir);
}

/* Loads `content` as a vocab file; returns the status and the message. */
static ms_status try_vocab(const char *content, ms_tokenizer **out, char *msg, size_t cap)
{
    char dir[64], path[128];
    ms_error err = { 0 };
    ms_tokenizer *t = NULL;
    write_vocab(dir, sizeof dir, path, sizeof path, content);
    ms_status st = ms_tokenizer_load(path, &t, &err);
    remove_vocab(dir, path);
    snprintf(msg, cap, "%s", st == MS_OK ? "" : err.msg);
    if (out)
        *out = t;
    else
        ms_tokenizer_free(t);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Golden cases                                                              */
/* ------------------------------------------------------------------------ */

Test(tokenizer, world_vocab_shape)
{
    ms_tokenizer *t = load_world();
    cr_assert_eq(ms_tokenizer_n_ids(t), 65530);
    size_t len = 99;
    cr_assert_null(ms_token_bytes(t, 0, &len));
    cr_assert_eq(len, 0);
    cr_assert_null(ms_token_bytes(t, 65530, &len));
    cr_assert_null(ms_token_bytes(t, 65535, &len));
    cr_assert_null(ms_token_bytes(t, -1, &len));
    cr_assert_null(ms_token_bytes(t, INT32_MAX, &len));
    for (int b = 0; b < 256; b++) {
        const char *p = ms_token_bytes(t, b + 1, &len);
        cr_assert(p && len == 1 && (unsigned char)p[0] == b, "id %d", b + 1);
    }
    /* str literal '\x80' is U+0080 (2 bytes), bytes literal b'\x80' is 1. */
    const char *p = ms_token_bytes(t, 2423, &len);
    cr_assert(p && len == 2 && memcmp(p, "\xc2\x80", 2) == 0);
    p = ms_token_bytes(t, 65529, &len);
    cr_assert(p && len == 128 && p[0] == ' ' && p[127] == ' ');
    ms_tokenizer_free(t);
}

Test(tokenizer, encode_cases)
{
    json_t *root = load_cases();
    ms_tokenizer *t = load_world();
    json_t *enc = json_object_get(root, "encode");
    cr_assert(json_is_object(enc));
    cr_assert_geq(json_object_size(enc), 32);
    const char *text;
    size_t text_len;
    json_t *ids;
    json_object_keylen_foreach(enc, text, text_len, ids) {
        size_t len;
        char *real = unmark(text, text_len, &len);
        assert_ids(t, real, len, ids, text);
        free(real);
    }
    ms_tokenizer_free(t);
    json_decref(root);
}

Test(tokenizer, encode_detail_cases)
{
    json_t *root = load_cases();
    ms_tokenizer *t = load_world();
    json_t *arr = json_object_get(root, "encode_detail");
    cr_assert_geq(json_array_size(arr), 32);
    size_t i;
    json_t *c;
    json_array_foreach(arr, i, c) {
        size_t len, tlen;
        unsigned char *bytes = unhex(json_string_value(json_object_get(c, "utf8_hex")), &len);
        json_t *jtext = json_object_get(c, "text");
        char *real = unmark(json_string_value(jtext), json_string_length(jtext), &tlen);
        cr_assert_eq(tlen, len, "case %zu", i);
        cr_assert(memcmp(real, bytes, len) == 0, "case %zu", i);
        free(real);
        json_t *ids = json_object_get(c, "ids");
        json_t *toks = json_object_get(c, "token_bytes_hex");
        char what[48];
        snprintf(what, sizeof what, "encode_detail[%zu]", i);
        assert_ids(t, (const char *)bytes, len, ids, what);
        cr_assert_eq(json_array_size(toks), json_array_size(ids));
        for (size_t k = 0; k < json_array_size(ids); k++) {
            int32_t id = (int32_t)json_integer_value(json_array_get(ids, k));
            unsigned char *want = unhex(json_string_value(json_array_get(toks, k)), &tlen);
            size_t got_len;
            const char *got = ms_token_bytes(t, id, &got_len);
            cr_assert_not_null(got, "%s: id %d has no bytes", what, id);
            cr_assert_eq(got_len, tlen, "%s: id %d", what, id);
            cr_assert(memcmp(got, want, tlen) == 0, "%s: id %d bytes", what, id);
            free(want);
        }
        /* Decoding the ids gives back the text exactly. */
        size_t n = json_array_size(ids), out_len;
        int32_t *v = malloc((n + 1) * sizeof *v);
        for (size_t k = 0; k < n; k++)
            v[k] = (int32_t)json_integer_value(json_array_get(ids, k));
        char *out = stream_all(t, v, n, &out_len);
        cr_assert_eq(out_len, len, "%s: round trip", what);
        cr_assert(memcmp(out, bytes, len) == 0, "%s: round trip", what);
        free(out);
        free(v);
        free(bytes);
    }
    ms_tokenizer_free(t);
    json_decref(root);
}

Test(tokenizer, encode_bytes_cases)
{
    json_t *root = load_cases();
    ms_tokenizer *t = load_world();
    json_t *arr = json_object_get(root, "encode_bytes");
    cr_assert_geq(json_array_size(arr), 5);
    size_t i;
    json_t *c;
    json_array_foreach(arr, i, c) {
        size_t len;
        const char *hex = json_string_value(json_object_get(c, "bytes_hex"));
        unsigned char *bytes = unhex(hex, &len);
        assert_ids(t, (const char *)bytes, len, json_object_get(c, "ids"), hex);
        free(bytes);
    }
    ms_tokenizer_free(t);
    json_decref(root);
}

Test(tokenizer, decode_cases)
{
    json_t *root = load_cases();
    ms_tokenizer *t = load_world();
    json_t *arr = json_object_get(root, "decode_cases");
    cr_assert_geq(json_array_size(arr), 7);
    size_t i;
    json_t *c;
    json_array_foreach(arr, i, c) {
        json_t *ids = json_object_get(c, "ids");
        json_t *hex = json_object_get(c, "bytes_hex");
        size_t n = json_array_size(ids);
        int32_t *v = malloc(n * sizeof *v);
        unsigned char cat[4096];
        size_t cat_len = 0;
        int missing = 0;
        for (size_t k = 0; k < n; k++) {
            size_t len;
            v[k] = (int32_t)json_integer_value(json_array_get(ids, k));
            const char *b = ms_token_bytes(t, v[k], &len);
            if (!b) {
                missing = 1;
                continue;
            }
            cr_assert_leq(cat_len + len, sizeof cat);
            memcpy(cat + cat_len, b, len);
            cat_len += len;
        }
        if (json_is_null(hex)) {
            /* id 0 and ids beyond the vocabulary have no bytes; the stream
             * decoder prints nothing for them. */
            cr_assert(missing, "decode_cases[%zu]: expected an id without bytes", i);
            size_t out_len;
            char *out = stream_all(t, v, n, &out_len);
            cr_assert_eq(out_len, 0, "decode_cases[%zu]", i);
            free(out);
        } else {
            size_t want_len;
            unsigned char *want = unhex(json_string_value(hex), &want_len);
            cr_assert(!missing);
            cr_assert_eq(cat_len, want_len, "decode_cases[%zu]", i);
            cr_assert(memcmp(cat, want, want_len) == 0, "decode_cases[%zu]", i);
            free(want);
            /* Invalid bytes come out as Python's errors="replace" does. */
            json_t *rep = json_object_get(c, "python_bytes_decode_errors_replace");
            if (rep) {
                size_t out_len;
                char *out = stream_all(t, v, n, &out_len);
                cr_assert_eq(out_len, json_string_length(rep), "decode_cases[%zu]: '%s'",
                             i, out);
                cr_assert(memcmp(out, json_string_value(rep), out_len) == 0,
                          "decode_cases[%zu]: '%s'", i, out);
                free(out);
            }
        }
        free(v);
    }
    ms_tokenizer_free(t);
    json_decref(root);
}

Test(tokenizer, streaming_detokenization_case)
{
    json_t *root = load_cases();
    ms_tokenizer *t = load_world();
    json_t *sd = json_object_get(root, "streaming_detokenization");
    json_t *steps = json_object_get(sd, "steps");
    cr_assert_eq(json_array_size(steps), json_array_size(json_object_get(sd, "ids")));
    ms_detok d;
    ms_detok_init(&d);
    char out[512];
    size_t i;
    json_t *s;
    json_array_foreach(steps, i, s) {
        int32_t id = (int32_t)json_integer_value(json_object_get(s, "token"));
        json_t *em = json_object_get(s, "emitted");
        size_t k = ms_detok_push(&d, t, id, out);
        if (json_is_null(em)) {
            cr_assert_eq(k, 0, "step %zu: printed %zu bytes, want none", i, k);
        } else {
            cr_assert_eq(k, json_string_length(em), "step %zu", i);
            cr_assert(memcmp(out, json_string_value(em), k) == 0, "step %zu", i);
        }
    }
    cr_assert_eq(ms_detok_flush(&d, out), 0);
    ms_tokenizer_free(t);
    json_decref(root);
}

/* ------------------------------------------------------------------------ */
/* Byte tokenizer                                                            */
/* ------------------------------------------------------------------------ */

Test(tokenizer, bytes_tokenizer)
{
    ms_tokenizer *t = ms_tokenizer_new_bytes();
    cr_assert_not_null(t);
    cr_assert_eq(ms_tokenizer_n_ids(t), 257);
    size_t len;
    cr_assert_null(ms_token_bytes(t, 0, &len));
    cr_assert_null(ms_token_bytes(t, 257, &len));
    char all[256];
    for (int b = 0; b < 256; b++) {
        all[b] = (char)b;
        const char *p = ms_token_bytes(t, b + 1, &len);
        cr_assert(p && len == 1 && (unsigned char)*p == b);
    }
    int32_t ids[256];
    cr_assert_eq(ms_tokenize(t, all, 256, ids, 256), 256);
    for (int b = 0; b < 256; b++)
        cr_assert_eq(ids[b], b + 1);
    /* Too small a buffer: fills what fits, reports the full count. */
    int32_t few[3] = { -7, -7, -7 };
    cr_assert_eq(ms_tokenize(t, "hello", 5, few, 2), 5);
    cr_assert_eq(few[0], 'h' + 1);
    cr_assert_eq(few[1], 'e' + 1);
    cr_assert_eq(few[2], -7);
    cr_assert_eq(ms_tokenize(t, "", 0, few, 3), 0);
    ms_tokenizer_free(t);
    ms_tokenizer_free(NULL);
}

/* ------------------------------------------------------------------------ */
/* Vocabulary files                                                          */
/* ------------------------------------------------------------------------ */

Test(tokenizer, small_vocab_literals)
{
    char msg[512];
    ms_tokenizer *t;
    /* Every literal form, CRLF lines, a blank line and an id gap. */
    const char *v = "1 'a' 1\n"
                    "2 'b' 1\n"
                    "3 'ab' 2\r\n"
                    "4 b'\\x80' 1\n"
                    "5 '\\x80' 2\n"
                    "6 \"it's\" 4\n"
                    "7 'it\\'s \\\\ x' 8\n"
                    "8 '\\u4f60' 3\n"
                    "9 '\xe4\xbd\xa0\xe5\xa5\xbd' 6\n"
                    "\n"
                    "10 '\\n\\t\\r' 3\n"
                    "12 ' a b ' 5\n";
    cr_assert_eq(try_vocab(v, &t, msg, sizeof msg), MS_OK, "%s", msg);
    cr_assert_eq(ms_tokenizer_n_ids(t), 13);
    struct { int32_t id; const char *bytes; size_t len; } want[] = {
        { 3, "ab", 2 }, { 4, "\x80", 1 }, { 5, "\xc2\x80", 2 }, { 6, "it's", 4 },
        { 7, "it's \\ x", 8 }, { 8, "\xe4\xbd\xa0", 3 },
        { 9, "\xe4\xbd\xa0\xe5\xa5\xbd", 6 }, { 10, "\n\t\r", 3 }, { 12, " a b ", 5 },
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        size_t len;
        const char *p = ms_token_bytes(t, want[i].id, &len);
        cr_assert_not_null(p, "id %d", want[i].id);
        cr_assert_eq(len, want[i].len, "id %d", want[i].id);
        cr_assert(memcmp(p, want[i].bytes, len) == 0, "id %d", want[i].id);
    }
    cr_assert_null(ms_token_bytes(t, 11, NULL)); /* gap */
    /* Greedy longest match; a byte no token starts with is skipped. */
    int32_t ids[16];
    size_t n = ms_tokenize(t, "abab\xe4\xbd\xa0\xe5\xa5\xbd" "baz", 13, ids, 16);
    cr_assert_eq(n, 5);
    int32_t expect[] = { 3, 3, 9, 2, 1 };
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(ids[i], expect[i], "#%zu: %d", i, ids[i]);
    ms_tokenizer_free(t);
}

Test(tokenizer, malformed_vocab_files)
{
    struct { const char *content; const char *msg; } bad[] = {
        { "1 'a' 1\n2 'ab' 3\n", "vocab.txt:2: length 3 does not match literal (2 bytes)" },
        { "1 'a' 1\n1 'b' 1\n", "vocab.txt:2: duplicate id 1 (first on line 1)" },
        { "1 'a' 1\n2 'a' 1\n", "vocab.txt:2: id 2 has the same bytes as id 1 (line 1)" },
        { "1 'a\\q' 2\n", "vocab.txt:1: unknown escape \\q" },
        { "1 'a\\xZZ' 2\n", "vocab.txt:1: bad \\x escape" },
        { "1 'a\\u12' 2\n", "vocab.txt:1: bad \\u escape" },
        { "1 '\\ud800' 3\n", "vocab.txt:1:" },
        { "1 'abc 3\n", "vocab.txt:1: not a quoted str literal" },
        { "1 b'\\x80 1\n", "vocab.txt:1: not a quoted bytes literal" },
        { "1 'a'b' 3\n", "vocab.txt:1: unescaped ' inside the literal" },
        { "1 b'\xc3\xa9' 2\n", "vocab.txt:1: non-ASCII byte in a bytes literal" },
        { "1 '\xc3' 1\n", "vocab.txt:1: invalid UTF-8 in the literal" },
        { "1 'a' 1\nx 'b' 1\n", "vocab.txt:2: bad id 'x'" },
        { "0 'a' 1\n", "vocab.txt:1: id 0 is reserved for end-of-text" },
        { "-1 'a' 1\n", "vocab.txt:1: bad id '-1'" },
        { "99999999 'a' 1\n", "vocab.txt:1: bad id" },
        { "1 'a' one\n", "vocab.txt:1: bad byte length 'one'" },
        { "1 'a'\n", "vocab.txt:1: expected '<id> <literal> <length>'" },
        { "1\n", "vocab.txt:1: expected" },
        { "1 '' 0\n", "vocab.txt:1: token of 0 bytes" },
        { "1 'a\\' 2\n", "vocab.txt:1: literal ends with a lone backslash" },
        { "\n\n", "vocab.txt: no tokens" },
        { "", "vocab.txt: no tokens" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[512];
        ms_tokenizer *t = (ms_tokenizer *)&msg; /* must be reset to NULL */
        ms_status st = try_vocab(bad[i].content, &t, msg, sizeof msg);
        cr_assert_eq(st, MS_ERR_FORMAT, "case %zu (%s): status %d", i, bad[i].content, st);
        cr_assert_null(t, "case %zu", i);
        cr_assert_not_null(strstr(msg, bad[i].msg), "case %zu: got \"%s\", want \"%s\"", i,
                           msg, bad[i].msg);
    }
    /* A token longer than 128 bytes. */
    char longv[300];
    memset(longv, 'z', sizeof longv);
    memcpy(longv, "1 '", 3);
    memcpy(longv + 3 + 129, "' 129\n", 7);
    char msg[512];
    cr_assert_eq(try_vocab(longv, NULL, msg, sizeof msg), MS_ERR_FORMAT);
    cr_assert_not_null(strstr(msg, "token of 129 bytes"), "%s", msg);
    /* A missing file is an I/O error naming the file. */
    ms_tokenizer *t = NULL;
    ms_error err = { 0 };
    cr_assert_eq(ms_tokenizer_load("/nonexistent/vocab.txt", &t, &err), MS_ERR_IO);
    cr_assert_null(t);
    cr_assert_not_null(strstr(err.msg, "/nonexistent/vocab.txt"));
}

/* ------------------------------------------------------------------------ */
/* Streaming decoder                                                         */
/* ------------------------------------------------------------------------ */

/* Pushes bytes one by one through the byte tokenizer (id = byte + 1). */
static size_t push_bytes(ms_detok *d, const ms_tokenizer *t, const char *s, size_t n,
                         char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += ms_detok_push(d, t, (unsigned char)s[i] + 1, out + o);
    return o;
}

#define FFFD "\xef\xbf\xbd"

Test(tokenizer, detok_edge_cases)
{
    ms_tokenizer *t = ms_tokenizer_new_bytes();
    ms_detok d;
    char out[4096];
    size_t k;

    /* A lone continuation byte can never become valid: replaced at once. */
    ms_detok_init(&d);
    k = push_bytes(&d, t, "a\x80", 2, out);
    cr_assert_eq(k, 4);
    cr_assert(memcmp(out, "a" FFFD, 4) == 0);
    cr_assert_eq(d.n_pending, 0);

    /* A truncated 4-byte character is held, then flushed as one U+FFFD. */
    ms_detok_init(&d);
    k = push_bytes(&d, t, "\xf0\x9f\x98", 3, out);
    cr_assert_eq(k, 0);
    cr_assert_eq(d.n_pending, 3);
    k = ms_detok_flush(&d, out);
    cr_assert_eq(k, 3);
    cr_assert(memcmp(out, FFFD, 3) == 0);
    cr_assert_eq(ms_detok_flush(&d, out), 0);

    /* Id 0 prints nothing and keeps what is pending. */
    ms_detok_init(&d);
    push_bytes(&d, t, "\xf0\x9f", 2, out);
    cr_assert_eq(ms_detok_push(&d, t, 0, out), 0);
    cr_assert_eq(ms_detok_push(&d, t, 9999, out), 0);
    k = push_bytes(&d, t, "\x98\x80", 2, out);
    cr_assert_eq(k, 4);
    cr_assert(memcmp(out, "\xf0\x9f\x98\x80", 4) == 0);

    /* An interrupted sequence: U+FFFD for it, the next character kept. */
    ms_detok_init(&d);
    k = push_bytes(&d, t, "\xe4\xbd" "B", 3, out);
    cr_assert_eq(k, 4);
    cr_assert(memcmp(out, FFFD "B", 4) == 0);
    ms_detok_init(&d);
    k = push_bytes(&d, t, "\xe4\xf0\x9f", 3, out); /* invalid, then a new lead */
    cr_assert_eq(k, 3);
    cr_assert_eq(d.n_pending, 2);
    k = push_bytes(&d, t, "\x98\x80", 2, out);
    cr_assert_eq(k, 4);

    /* Overlong, surrogate and out-of-range forms: one U+FFFD per byte, as
     * Python's errors="replace" gives. */
    const char *forms[] = { "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xff" };
    size_t nfffd[] = { 2, 3, 4, 1 };
    for (size_t i = 0; i < 4; i++) {
        ms_detok_init(&d);
        k = push_bytes(&d, t, forms[i], strlen(forms[i]), out);
        k += ms_detok_flush(&d, out + k);
        cr_assert_eq(k, 3 * nfffd[i], "form %zu: %zu bytes", i, k);
        for (size_t j = 0; j < nfffd[i]; j++)
            cr_assert(memcmp(out + 3 * j, FFFD, 3) == 0);
    }
    ms_tokenizer_free(t);
}

/* The official rule holds valid text that precedes an incomplete character
 * in the same token; we do too, but only up to a bound. */
Test(tokenizer, detok_holds_valid_prefix_within_bound)
{
    char msg[512];
    ms_tokenizer *t;
    const char *v = "1 b'A\\xf0\\x9f' 3\n"
                    "2 b'\\x98\\x80' 2\n"
                    "3 b'\\x98\\x80xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\xf0\\x9f' 34\n";
    cr_assert_eq(try_vocab(v, &t, msg, sizeof msg), MS_OK, "%s", msg);
    ms_detok d;
    char out[512];
    ms_detok_init(&d);
    cr_assert_eq(ms_detok_push(&d, t, 1, out), 0);
    size_t k = ms_detok_push(&d, t, 2, out);
    cr_assert_eq(k, 5);
    cr_assert(memcmp(out, "A\xf0\x9f\x98\x80", 5) == 0);

    /* Each token 3 completes the previous character and opens a new one, so
     * the pending bytes are never valid: text must still come out. */
    ms_detok_init(&d);
    cr_assert_eq(ms_detok_push(&d, t, 1, out), 0);
    size_t total = 0;
    for (int i = 0; i < 100; i++) {
        k = ms_detok_push(&d, t, 3, out);
        total += k;
        cr_assert_leq(d.n_pending, 64 + 3);
    }
    k = ms_detok_push(&d, t, 2, out);
    total += k;
    cr_assert_eq(d.n_pending, 0);
    cr_assert_eq(total, 3 + 100 * 34 + 2);
    ms_tokenizer_free(t);
}

/* Random World ids: the stream decoder's output is always valid UTF-8 (a
 * character is never split), and equals the plain concatenation whenever
 * that is valid. jansson's UTF-8 check serves as an independent oracle. */
Test(tokenizer, detok_random_streams)
{
    ms_tokenizer *t = load_world();
    uint64_t x = 0x9E3779B97F4A7C15u;
    enum { N = 40 };
    int32_t ids[N];
    char cat[N * 128];
    for (int round = 0; round < 2000; round++) {
        size_t cat_len = 0;
        for (int i = 0; i < N; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            /* Mostly multi-byte-heavy low ids, sometimes 0 or unknown ids. */
            uint32_t r = (uint32_t)(x >> 11);
            ids[i] = (r & 3) == 0 ? (int32_t)(r % 65536) : (int32_t)(128 + r % 3400);
            size_t len;
            const char *b = ms_token_bytes(t, ids[i], &len);
            if (b) {
                memcpy(cat + cat_len, b, len);
                cat_len += len;
            }
        }
        size_t out_len;
        char *out = stream_all(t, ids, N, &out_len);
        json_t *ok = json_stringn(out, out_len);
        cr_assert_not_null(ok, "round %d: invalid UTF-8 out of the decoder", round);
        json_decref(ok);
        json_t *valid = json_stringn(cat, cat_len);
        if (valid) {
            cr_assert_eq(out_len, cat_len, "round %d", round);
            cr_assert(memcmp(out, cat, cat_len) == 0, "round %d", round);
            json_decref(valid);
        }
        free(out);
    }
    ms_tokenizer_free(t);
}
