/*
 * test_sse.c - proto/sse.c: event framing and the streaming stop-string
 * matcher (stops split across pieces, several stops, stop at the start, no
 * stop, multibyte UTF-8 next to stops), including a check that the result
 * and the UTF-8 validity of every emitted piece do not depend on how the
 * text is split.
 */
#include <criterion/criterion.h>
#include <jansson.h>

#include <stdlib.h>
#include <string.h>

#include "sse.h"

/* ------------------------------------------------------------------------ */
/* Framing                                                                   */
/* ------------------------------------------------------------------------ */

Test(sse, data_event)
{
    size_t len = 0;
    char *s = sse_event("{\"a\":1}", 7, &len);
    cr_assert_str_eq(s, "data: {\"a\":1}\n\n");
    cr_assert_eq(len, strlen(s));
    free(s);
    s = sse_event("", 0, &len);
    cr_assert_str_eq(s, "data: \n\n");
    free(s);
}

Test(sse, multi_line_payload_gets_one_data_field_per_line)
{
    size_t len = 0;
    char *s = sse_event("a\nb\r\nc\rd", 8, &len);
    cr_assert_str_eq(s, "data: a\ndata: b\ndata: c\ndata: d\n\n");
    cr_assert_eq(len, strlen(s));
    free(s);
}

Test(sse, done_event)
{
    cr_assert_str_eq(SSE_DONE, "data: [DONE]\n\n");
    cr_assert_eq(SSE_DONE_LEN, 14);
}

Test(sse, error_event)
{
    oa_error e;
    oa_error_set(&e, 500, "server_error", NULL, NULL, "engine failed: %s", "oops\n");
    size_t len = 0;
    char *s = sse_error_event(&e, &len);
    cr_assert_not_null(s);
    cr_assert_eq(len, strlen(s));
    cr_assert_eq(strncmp(s, "data: ", 6), 0);
    cr_assert_eq(strcmp(s + len - 2, "\n\n"), 0);
    cr_assert_null(memchr(s, '\n', len - 2), "one data line only");
    s[len - 2] = '\0';
    json_t *j = json_loads(s + 6, 0, NULL);
    cr_assert_not_null(j);
    json_t *err = json_object_get(j, "error");
    cr_assert_str_eq(json_string_value(json_object_get(err, "message")), "engine failed: oops\n");
    cr_assert_str_eq(json_string_value(json_object_get(err, "type")), "server_error");
    cr_assert(json_is_null(json_object_get(err, "param")));
    cr_assert(json_is_null(json_object_get(err, "code")));
    json_decref(j);
    free(s);
}

/* ------------------------------------------------------------------------ */
/* Stop matcher                                                              */
/* ------------------------------------------------------------------------ */

typedef struct {
    char out[4096];
    size_t len;
    int hit;
    int pushes_after_hit_emitted;
} run_result;

static int valid_utf8(const char *s, size_t n)
{
    json_t *v = json_stringn(s, n); /* jansson validates UTF-8 */
    if (!v)
        return n == 0;
    json_decref(v);
    return 1;
}

/* Feeds pieces (NULL-terminated list) and collects every emitted byte; each
 * emitted piece must be valid UTF-8 on its own. */
static run_result run(char *const *stops, size_t n_stops, const char *const *pieces)
{
    run_result r;
    memset(&r, 0, sizeof r);
    sse_stop *m = sse_stop_new(stops, n_stops);
    cr_assert_not_null(m);
    for (size_t i = 0; pieces[i]; i++) {
        const char *emit;
        size_t elen;
        int rc = sse_stop_push(m, pieces[i], strlen(pieces[i]), &emit, &elen);
        cr_assert(rc == 0 || rc == 1);
        cr_assert(valid_utf8(emit, elen), "piece %zu emitted broken UTF-8", i);
        if (r.hit && elen)
            r.pushes_after_hit_emitted = 1;
        cr_assert(r.len + elen < sizeof r.out);
        memcpy(r.out + r.len, emit, elen);
        r.len += elen;
        if (rc == 1)
            r.hit = 1;
        cr_assert_eq(sse_stop_hit(m), r.hit);
    }
    const char *emit;
    size_t elen = sse_stop_flush(m, &emit);
    if (r.hit)
        cr_assert_eq(elen, 0, "flush after a hit emits nothing");
    cr_assert(valid_utf8(emit, elen));
    memcpy(r.out + r.len, emit, elen);
    r.len += elen;
    r.out[r.len] = '\0';
    sse_stop_free(m);
    return r;
}

#define PIECES(...) ((const char *const[]){__VA_ARGS__, NULL})

Test(sse, no_stops_pass_through)
{
    run_result r = run(NULL, 0, PIECES("Hello", " ", "world\n\n"));
    cr_assert_str_eq(r.out, "Hello world\n\n");
    cr_assert_eq(r.hit, 0);
    char *empty[] = {"", NULL};
    r = run(empty, 2, PIECES("a\n\nb"));
    cr_assert_str_eq(r.out, "a\n\nb");
}

Test(sse, no_stop_in_text)
{
    char *stops[] = {"\n\nUser:"};
    run_result r = run(stops, 1, PIECES("Hello", " wor", "ld.", "\n", "Bye\n"));
    cr_assert_str_eq(r.out, "Hello world.\nBye\n");
    cr_assert_eq(r.hit, 0);
}

Test(sse, held_back_until_known)
{
    char *stops[] = {"\n\nUser:"};
    sse_stop *m = sse_stop_new(stops, 1);
    const char *e;
    size_t n;
    cr_assert_eq(sse_stop_push(m, "Hi\n", 3, &e, &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(memcmp(e, "Hi", 2), 0);
    cr_assert_eq(sse_stop_push(m, "\nUs", 3, &e, &n), 0);
    cr_assert_eq(n, 0, "\"\\n\\nUs\" could still become the stop");
    cr_assert_eq(sse_stop_push(m, "ually", 5, &e, &n), 0);
    cr_assert_eq(n, 9);
    cr_assert_eq(memcmp(e, "\n\nUsually", 9), 0, "held text released once it cannot match");
    cr_assert_eq(sse_stop_push(m, "\n", 1, &e, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(sse_stop_flush(m, &e), 1);
    cr_assert_eq(e[0], '\n');
    sse_stop_free(m);
}

Test(sse, stop_split_across_pieces)
{
    char *stops[] = {"\n\nUser:"};
    run_result r = run(stops, 1, PIECES("The answer", " is 4.", "\n", "\nUs", "er", ": more", "ignored"));
    cr_assert_str_eq(r.out, "The answer is 4.");
    cr_assert_eq(r.hit, 1);
    cr_assert_eq(r.pushes_after_hit_emitted, 0);
}

Test(sse, stop_inside_one_piece)
{
    char *stops[] = {"END"};
    run_result r = run(stops, 1, PIECES("abcENDdef"));
    cr_assert_str_eq(r.out, "abc");
    cr_assert_eq(r.hit, 1);
}

Test(sse, stop_at_start)
{
    char *stops[] = {"\n\n"};
    run_result r = run(stops, 1, PIECES("\n\n", "after"));
    cr_assert_str_eq(r.out, "");
    cr_assert_eq(r.hit, 1);
    r = run(stops, 1, PIECES("\n", "\nafter"));
    cr_assert_str_eq(r.out, "");
    cr_assert_eq(r.hit, 1);
}

Test(sse, stop_at_very_end)
{
    char *stops[] = {"STOP"};
    run_result r = run(stops, 1, PIECES("abc", "STOP"));
    cr_assert_str_eq(r.out, "abc");
    cr_assert_eq(r.hit, 1);
}

Test(sse, partial_stop_at_end_is_flushed)
{
    char *stops[] = {"STOP"};
    run_result r = run(stops, 1, PIECES("abc", "ST", "O"));
    cr_assert_str_eq(r.out, "abcSTO");
    cr_assert_eq(r.hit, 0);
}

Test(sse, multiple_stops_first_to_end_wins)
{
    char *stops[] = {"User:", "\n\n", "Question"};
    run_result r = run(stops, 3, PIECES("one", "\nQuest", "ion two\n\nUser:"));
    cr_assert_str_eq(r.out, "one\n");
    r = run(stops, 3, PIECES("one\n", "\nQuestion"));
    cr_assert_str_eq(r.out, "one");
    /* "bc" is complete before "abcd" is: generation would have halted there. */
    char *overlap[] = {"abcd", "bc"};
    r = run(overlap, 2, PIECES("xabcd"));
    cr_assert_str_eq(r.out, "xa");
    /* Same end byte: the longer stop cuts more. */
    char *suffix[] = {"User", "\n\nUser"};
    r = run(suffix, 2, PIECES("hi\n\nUser"));
    cr_assert_str_eq(r.out, "hi");
}

Test(sse, self_overlapping_stop)
{
    char *stops[] = {"aab"};
    run_result r = run(stops, 1, PIECES("a", "a", "a", "a", "b", "tail"));
    cr_assert_str_eq(r.out, "aa");
    char *s2[] = {"abab"};
    r = run(s2, 1, PIECES("xabaabab"));
    cr_assert_str_eq(r.out, "xaba");
    char *s3[] = {"\n\n\n"};
    r = run(s3, 1, PIECES("a\n\n", "b\n\n", "\n"));
    cr_assert_str_eq(r.out, "a\n\nb");
}

Test(sse, multibyte_next_to_stops)
{
    char *cjk[] = {"\xe3\x80\x82"}; /* "。" */
    run_result r = run(cjk, 1, PIECES("\xe4\xbd\xa0", "\xe5\xa5\xbd", "\xe3\x80\x82", "\xe5\x90\x97"));
    cr_assert_str_eq(r.out, "\xe4\xbd\xa0\xe5\xa5\xbd");
    cr_assert_eq(r.hit, 1);

    /* "中文" shares the first character of the stop "中国": held, then
     * released whole. */
    char *zh[] = {"\xe4\xb8\xad\xe5\x9b\xbd"};
    r = run(zh, 1, PIECES("\xe4\xb8\xad", "\xe6\x96\x87", "\xe4\xb8\xad", "\xe5\x9b\xbd"));
    cr_assert_str_eq(r.out, "\xe4\xb8\xad\xe6\x96\x87");
    cr_assert_eq(r.hit, 1);

    /* Stop "é" must not match the first byte of another character that
     * shares its lead byte ("è" = c3 a8). */
    char *e_acute[] = {"\xc3\xa9"};
    r = run(e_acute, 1, PIECES("\xc3\xa8", "\xc3\xa8x", "\xf0\x9f\x98\x80", "\xc3\xa9", "no"));
    cr_assert_str_eq(r.out, "\xc3\xa8\xc3\xa8x\xf0\x9f\x98\x80");

    /* ASCII stop right after an emoji, stop right before one. */
    char *nl[] = {"\n\n"};
    r = run(nl, 1, PIECES("\xf0\x9f\x98\x80\n", "\n\xf0\x9f\x98\x80"));
    cr_assert_str_eq(r.out, "\xf0\x9f\x98\x80");
}

/* The stop result must be the same however the text is cut into pieces of
 * whole characters. */
Test(sse, independent_of_piece_boundaries)
{
    static const char text[] =
        "R\xc3\xa9ponse: \xe4\xbd\xa0\xe5\xa5\xbd\n\xf0\x9f\x98\x80 ab\n\nUsex\n\nUser: tail";
    char *stops[] = {"\n\nUser:", "\xe5\xa5\xbd\n\xf0\x9f\x98\x81", "abc"};
    const char *want = "R\xc3\xa9ponse: \xe4\xbd\xa0\xe5\xa5\xbd\n\xf0\x9f\x98\x80 ab\n\nUsex";

    /* Character start offsets. */
    size_t starts[64], n = 0, len = strlen(text);
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)text[i] & 0xC0) != 0x80)
            starts[n++] = i;
    cr_assert(n < 64);

    for (unsigned seed = 1; seed <= 300; seed++) {
        sse_stop *m = sse_stop_new(stops, 3);
        cr_assert_not_null(m);
        char out[256];
        size_t olen = 0;
        size_t c = 0;
        unsigned x = seed;
        int hit = 0;
        while (c < n && !hit) {
            x = x * 1103515245u + 12345u;
            size_t take = 1 + (x >> 16) % 5; /* 1..5 characters per piece */
            size_t end = c + take < n ? starts[c + take] : len;
            const char *e;
            size_t elen;
            int rc = sse_stop_push(m, text + starts[c], end - starts[c], &e, &elen);
            cr_assert(valid_utf8(e, elen), "seed %u: broken UTF-8 emitted", seed);
            memcpy(out + olen, e, elen);
            olen += elen;
            hit = rc == 1;
            c += take;
        }
        cr_assert(hit, "seed %u: stop missed", seed);
        out[olen] = '\0';
        cr_assert_str_eq(out, want, "seed %u", seed);
        sse_stop_free(m);
    }
}

Test(sse, long_stop_string)
{
    /* A long client-chosen stop: linear time, held as long as it matches. */
    size_t n = 100000;
    char *stop = malloc(n + 2);
    cr_assert_not_null(stop);
    memset(stop, 'a', n);
    stop[n] = 'b';
    stop[n + 1] = '\0';
    char *stops[] = {stop};
    sse_stop *m = sse_stop_new(stops, 1);
    cr_assert_not_null(m);
    size_t emitted = 0;
    const char *e;
    size_t elen;
    for (size_t i = 0; i < 2 * n; i++) {
        cr_assert_eq(sse_stop_push(m, "a", 1, &e, &elen), 0);
        emitted += elen;
    }
    cr_assert_eq(emitted, n, "only the last n 'a's can still start the stop");
    cr_assert_eq(sse_stop_push(m, "b", 1, &e, &elen), 1);
    cr_assert_eq(elen, 0);
    sse_stop_free(m);
    free(stop);
}

Test(sse, free_null)
{
    sse_stop_free(NULL);
}
