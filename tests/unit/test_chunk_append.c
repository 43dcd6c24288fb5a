/*
 * test_chunk_append.c - the allocation-free streaming path writes exactly
 * the event that oa_chunk_json + sse_event would, and keeps what the buffer
 * already held.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "openai.h"
#include "sse.h"

Test(chunk_append, same_bytes_as_the_allocating_path)
{
    const char *texts[] = {"Hello", "", "quote \" backslash \\ newline \n tab \t", "\xe4\xbd\xa0\xe5\xa5\xbd",
                           "\x01\x1f control", "\xf0\x9f\x98\x80 emoji"};
    char *buf = NULL;
    size_t len = 0, cap = 0, expect_len = 0;
    char *expect = NULL;
    for (int kind = 0; kind < 2; kind++)
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
            for (int usage = 0; usage < 2; usage++) {
                const oa_kind k = kind ? OA_CHAT : OA_COMPLETION;
                char *json = oa_chunk_json(k, "id-1", 1764480000, "m", (int)i, 0, texts[i],
                                           strlen(texts[i]), OA_FINISH_NONE, usage);
                size_t n;
                char *ev = sse_event(json, strlen(json), &n);
                cr_assert(json && ev);
                expect = realloc(expect, expect_len + n + 1);
                memcpy(expect + expect_len, ev, n);
                expect_len += n;
                cr_assert_eq(oa_chunk_event_append(&buf, &len, &cap, k, "id-1", 1764480000, "m",
                                                   (int)i, texts[i], strlen(texts[i]),
                                                   OA_FINISH_NONE, usage),
                             0);
                cr_assert_eq(len, expect_len);
                cr_assert_eq(memcmp(buf, expect, len), 0, "kind %d text %zu usage %d", kind, i,
                             usage);
                free(json);
                free(ev);
            }
    /* Once the buffer is large enough, appending does not move it. */
    len = 0;
    char *before = buf;
    for (int i = 0; i < 100; i++)
        cr_assert_eq(oa_chunk_event_append(&buf, &len, &cap, OA_CHAT, "id", 1, "m", 0, "x", 1,
                                           OA_FINISH_NONE, 0), 0);
    size_t used = len;
    len = 0;
    before = buf;
    for (int i = 0; i < 100; i++)
        oa_chunk_event_append(&buf, &len, &cap, OA_CHAT, "id", 1, "m", 0, "x", 1, OA_FINISH_NONE, 0);
    cr_expect_eq(buf, before);
    cr_expect_eq(len, used);
    free(buf);
    free(expect);
}
