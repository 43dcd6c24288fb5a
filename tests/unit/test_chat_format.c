/*
 * test_chat_format.c - proto/chat_format.c: the RWKV chat template of SPEC
 * 2.3 (single turn, multi-turn, system prompt, prefill), the message
 * cleaning rules, and the reply round trip that chat_reply_skip enables.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_format.h"

static void expect_render(const oa_message *m, size_t n, const char *want)
{
    size_t len = 0;
    char *s = chat_render(m, n, &len);
    cr_assert_not_null(s);
    cr_assert_eq(len, strlen(s), "length out of step with the text");
    cr_assert_str_eq(s, want);
    free(s);
}

static void expect_clean(const char *in, const char *want)
{
    size_t len = 0;
    char *s = chat_clean(in, strlen(in), &len);
    cr_assert_not_null(s);
    cr_assert_eq(len, strlen(s));
    cr_assert_str_eq(s, want, "clean(\"%s\")", in);
    free(s);
}

#define MSG(r, c) {.role = (char *)(r), .content = (char *)(c)}

Test(chat_format, single_turn_no_space_after_assistant)
{
    oa_message m[] = {MSG("user", "hi")};
    expect_render(m, 1, "User: hi\n\nAssistant:");
}

Test(chat_format, system_prompt)
{
    oa_message m[] = {MSG("system", "You are helpful."), MSG("user", "hi")};
    expect_render(m, 2, "System: You are helpful.\n\nUser: hi\n\nAssistant:");
}

Test(chat_format, multi_turn)
{
    oa_message m[] = {MSG("system", "S"), MSG("user", "m1"), MSG("assistant", "r1"),
                      MSG("user", "m2"), MSG("assistant", "r2"), MSG("user", "m3")};
    expect_render(m, 6,
                  "System: S\n\nUser: m1\n\nAssistant: r1\n\nUser: m2\n\nAssistant: r2\n\n"
                  "User: m3\n\nAssistant:");
}

Test(chat_format, prefill_last_assistant)
{
    oa_message m[] = {MSG("user", "Write a poem"), MSG("assistant", "Roses are\n\n")};
    expect_render(m, 2, "User: Write a poem\n\nAssistant: Roses are");
    oa_message t[] = {MSG("user", "q"), MSG("assistant", "<think")};
    expect_render(t, 2, "User: q\n\nAssistant: <think");
}

Test(chat_format, empty_last_assistant_is_not_a_prefill)
{
    oa_message m[] = {MSG("user", "hi"), MSG("assistant", "")};
    expect_render(m, 2, "User: hi\n\nAssistant:");
    oa_message w[] = {MSG("user", "hi"), MSG("assistant", " \n\r\n ")};
    expect_render(w, 2, "User: hi\n\nAssistant:");
}

Test(chat_format, empty_messages_have_no_space)
{
    oa_message m[] = {MSG("user", "a"), MSG("assistant", ""), MSG("user", "  ")};
    expect_render(m, 3, "User: a\n\nAssistant:\n\nUser:\n\nAssistant:");
}

Test(chat_format, no_messages)
{
    expect_render(NULL, 0, "Assistant:");
}

Test(chat_format, messages_are_cleaned_in_the_prompt)
{
    oa_message m[] = {MSG("system", "  line1\r\n\r\nline2\n\n\n"), MSG("user", "\tq\n\n\n\nmore  ")};
    expect_render(m, 2, "System: line1\nline2\n\nUser: q\nmore\n\nAssistant:");
}

Test(chat_format, utf8_passes_through)
{
    oa_message m[] = {MSG("user", "\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80")};
    expect_render(m, 1, "User: \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80\n\nAssistant:");
}

Test(chat_format, unknown_role_fails)
{
    oa_message m[] = {MSG("user", "a"), MSG("function", "b")};
    cr_assert_null(chat_render(m, 2, NULL));
    oa_message n[] = {MSG(NULL, "a")};
    cr_assert_null(chat_render(n, 1, NULL));
}

Test(chat_format, null_content_is_empty)
{
    oa_message m[] = {MSG("user", NULL)};
    expect_render(m, 1, "User:\n\nAssistant:");
}

Test(chat_format, cleaning_rules)
{
    expect_clean("", "");
    expect_clean("   \t\n ", "");
    expect_clean("a", "a");
    expect_clean("a\r\nb", "a\nb");
    expect_clean("a\n\nb", "a\nb");
    expect_clean("a\n\n\n\n\nb", "a\nb");
    expect_clean("a\r\n\r\nb", "a\nb");
    expect_clean("a\n\r\n\nb", "a\nb");
    expect_clean("a\n b\n  c", "a\n b\n  c"); /* single newlines and inner spaces stay */
    expect_clean("a \n \n b", "a \n \n b");  /* not a run: spaces between */
    expect_clean("  \n\nhello world\n\n  ", "hello world");
    expect_clean("x\ry", "x\ry"); /* only the "\r\n" pair is rewritten */
    expect_clean("\xc2\xa0" "a", "\xc2\xa0" "a"); /* ASCII whitespace only */
}

Test(chat_format, clean_respects_length)
{
    size_t len = 99;
    char *s = chat_clean("abc\n\ndef", 4, &len);
    cr_assert_str_eq(s, "abc");
    cr_assert_eq(len, 3);
    free(s);
    s = chat_clean(NULL, 0, NULL);
    cr_assert_str_eq(s, "");
    free(s);
}

Test(chat_format, reply_skip)
{
    cr_assert_eq(chat_reply_skip(" Hello", 6), 1);
    cr_assert_eq(chat_reply_skip("Hello", 5), 0);
    cr_assert_eq(chat_reply_skip("  code", 6), 1); /* exactly one */
    cr_assert_eq(chat_reply_skip("\nx", 2), 0);
    cr_assert_eq(chat_reply_skip("", 0), 0);
    cr_assert_eq(chat_reply_skip(" ", 0), 0);
}

/* The text the model saw in turn 1 (prompt + generated " Hello" + the "\n\n"
 * stop) followed by turn 2 is byte-identical to rendering the history the
 * client sends back with the stripped reply. */
Test(chat_format, reply_round_trip)
{
    oa_message t1[] = {MSG("user", "hi")};
    char *p1 = chat_render(t1, 1, NULL);
    cr_assert_not_null(p1);
    const char *generated = " Hello there.";
    size_t skip = chat_reply_skip(generated, strlen(generated));
    const char *reply = generated + skip;

    char *seen = NULL;
    cr_assert(asprintf(&seen, "%s%s\n\nUser: next\n\nAssistant:", p1, generated) > 0);
    oa_message t2[] = {MSG("user", "hi"), MSG("assistant", reply), MSG("user", "next")};
    expect_render(t2, 3, seen);
    free(seen);
    free(p1);
}

/* What each request kind adds (SPEC 2.3/2.4): chat always stops at the turn
 * separator (once, even when the client names it too), never draws
 * end-of-text and drops the reply's leading space; completions keep exactly
 * the client's stops and rules. */
Test(chat_format, policy_per_kind)
{
    char *user[] = {"END", "\n\n"};
    gen_policy p;

    chat_policy(OA_CHAT, NULL, 0, &p);
    cr_assert_eq(p.n_stops, 1);
    cr_assert_str_eq(p.stops[0], "\n\n");
    cr_assert_eq(p.ban_end_of_text, 1);
    cr_assert_eq(p.skip_leading_space, 1);

    chat_policy(OA_CHAT, user, 1, &p);
    cr_assert_eq(p.n_stops, 2);
    cr_assert_str_eq(p.stops[0], "END");
    cr_assert_str_eq(p.stops[1], "\n\n");

    chat_policy(OA_CHAT, user, 2, &p);
    cr_assert_eq(p.n_stops, 2); /* not twice */

    chat_policy(OA_COMPLETION, user, 1, &p);
    cr_assert_eq(p.n_stops, 1);
    cr_assert_str_eq(p.stops[0], "END");
    cr_assert_eq(p.ban_end_of_text, 0);
    cr_assert_eq(p.skip_leading_space, 0);

    chat_policy(OA_COMPLETION, NULL, 0, &p);
    cr_assert_eq(p.n_stops, 0);
}
