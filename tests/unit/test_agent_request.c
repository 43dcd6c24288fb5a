/*
 * test_agent_request.c - the agent/eval request fields (logprobs, echo,
 * response_format, tools, tool messages), the tool prompt template, reading
 * calls back from a reply, and the streaming call reader.
 */
#include <criterion/criterion.h>

#include <string.h>

#include "openai.h"
#include "tools.h"

static int parse(oa_kind k, const char *body, oa_request *r, oa_error *e)
{
    memset(e, 0, sizeof *e);
    return oa_request_parse(k, body, strlen(body), r, e);
}

static void expect_400(oa_kind k, const char *body, const char *param, const char *needle)
{
    oa_request r;
    oa_error e;
    cr_assert_eq(parse(k, body, &r, &e), -1, "accepted: %s", body);
    cr_assert_eq(e.status, 400);
    cr_assert_str_eq(e.param, param, "param %s for %s", e.param, body);
    cr_assert(strstr(e.message, needle), "'%s' not in '%s'", needle, e.message);
    oa_request_free(&r);
}

#define TOOL_W                                                                                 \
    "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather\","   \
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},"       \
    "\"required\":[\"city\"],\"additionalProperties\":false}}}"

Test(agent_request, logprobs_and_echo)
{
    oa_request r;
    oa_error e;
    cr_assert_eq(parse(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                                "\"logprobs\":true,\"top_logprobs\":3}", &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.logprobs, 1);
    cr_assert_eq(r.top_logprobs, 3);
    oa_request_free(&r);
    cr_assert_eq(parse(OA_COMPLETION, "{\"model\":\"m\",\"prompt\":[5,6],\"logprobs\":1,"
                                      "\"echo\":true,\"max_tokens\":0}", &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.logprobs, 1);
    cr_assert_eq(r.top_logprobs, 1);
    cr_assert_eq(r.echo, 1);
    cr_assert_eq(r.max_tokens, 0);
    oa_request_free(&r);
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"top_logprobs\":3}", "top_logprobs", "'logprobs' must be true");
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs", "between 0 and 20");
    expect_400(OA_COMPLETION, "{\"model\":\"m\",\"prompt\":\"a\",\"logprobs\":6}", "logprobs",
               "between 0 and 5");
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"max_tokens\":0}", "max_tokens", "minimum");
}

Test(agent_request, response_format)
{
    oa_request r;
    oa_error e;
    cr_assert_eq(parse(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                                "\"response_format\":{\"type\":\"json_object\"}}", &r, &e), 0);
    cr_assert_eq(r.format, OA_FORMAT_JSON_OBJECT);
    cr_assert_not_null(r.grammar);
    oa_request_free(&r);
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\","
                        "\"strict\":true,\"schema\":{\"type\":\"string\",\"format\":\"email\"}}}}",
               "response_format.json_schema.schema", "'format'");
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"response_format\":{\"type\":\"xml\"}}", "response_format.type", "xml");
}

Test(agent_request, tools_and_tool_messages)
{
    oa_request r;
    oa_error e;
    const char *body =
        "{\"model\":\"m\",\"tools\":[" TOOL_W "],\"tool_choice\":\"required\",\"messages\":["
        "{\"role\":\"user\",\"content\":\"Weather in Paris?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
        "\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"22 C\"}]}";
    cr_assert_eq(parse(OA_CHAT, body, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_tools, 1);
    cr_assert_eq(r.tool_choice, OA_TOOLS_REQUIRED);
    cr_assert(r.grammar_tools && r.grammar);
    size_t len;
    char *p = tools_render(&r, &len);
    cr_assert_not_null(p);
    const char *want =
        "System: You can call these tools:\n"
        "{\"name\":\"get_weather\",\"description\":\"Weather\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"],"
        "\"additionalProperties\":false}}\n"
        "To call tools, reply with \"Call: \" and a JSON array of {\"name\",\"arguments\"} objects.\n\n"
        "User: Weather in Paris?\n\n"
        "Assistant: Call: [{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}]\n\n"
        "Tool: get_weather -> 22 C\n\n"
        "Assistant:";
    cr_assert_str_eq(p, want);
    free(p);
    /* the grammar accepts exactly a call of get_weather with its schema */
    ms_tokenizer *tok = ms_tokenizer_new_bytes();
    ms_vocab_index *vi = ms_vocab_index_new(tok, 257);
    ms_gmatch *m = ms_gmatch_new(r.grammar, vi);
    const char *ok = " Call: [{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}]";
    cr_assert_eq(ms_gmatch_advance(m, ok, strlen(ok)), 0);
    cr_assert(ms_gmatch_done(m));
    ms_gmatch_reset(m);
    const char *bad = " Call: [{\"name\":\"get_time\"";
    cr_assert_eq(ms_gmatch_advance(m, bad, strlen(bad)), -1);
    ms_gmatch_free(m);
    ms_vocab_index_free(vi);
    ms_tokenizer_free(tok);
    oa_request_free(&r);

    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"tools\":[{\"type\":\"web_search\"}]}", "tools[0].type", "only 'function'");
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"tools\":[" TOOL_W "],\"tool_choice\":{\"type\":\"function\",\"function\":"
                        "{\"name\":\"nope\"}}}", "tool_choice", "no function named 'nope'");
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"tool_choice\":\"required\"}", "tool_choice", "needs 'tools'");
}

#define TOOL_T                                                                                 \
    "{\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"parameters\":{\"type\":"          \
    "\"object\",\"properties\":{}}}}"

/* Whether the request's grammar takes the whole reply text (a document
 * complete, or free text that may end there). */
static int grammar_takes(const oa_request *r, const char *reply)
{
    ms_tokenizer *tok = ms_tokenizer_new_bytes();
    ms_vocab_index *vi = ms_vocab_index_new(tok, 257);
    ms_gmatch *m = ms_gmatch_new(r->grammar, vi);
    cr_assert(tok && vi && m);
    const int ok = ms_gmatch_advance(m, reply, strlen(reply)) == 0 && ms_gmatch_can_end(m);
    ms_gmatch_free(m);
    ms_vocab_index_free(vi);
    ms_tokenizer_free(tok);
    return ok;
}

/* Tools and an output format together (what an agent with tools and a typed
 * final answer sends every turn): with "auto" the reply is a call or the
 * document, never free text; with "required" it is a call. */
Test(agent_request, tools_auto_with_response_format)
{
    static const char *const fmts[] = {
        "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"out\",\"strict\":true,\"schema\":"
        "{\"type\":\"object\",\"properties\":{\"answer\":{\"type\":\"string\"}},"
        "\"required\":[\"answer\"],\"additionalProperties\":false}}}",
        "{\"type\":\"json_object\"}"};
    const char *call = " Call: [{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}]";
    for (size_t i = 0; i < 2; i++)
        for (int required = 0; required < 2; required++) {
            char body[1024];
            snprintf(body, sizeof body,
                     "{\"model\":\"m\",\"tools\":[" TOOL_W "],%s\"response_format\":%s,"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}",
                     required ? "\"tool_choice\":\"required\"," : "", fmts[i]);
            oa_request r;
            oa_error e;
            cr_assert_eq(parse(OA_CHAT, body, &r, &e), 0, "%s", e.message);
            cr_assert(r.grammar_tools && r.grammar);
            cr_expect(grammar_takes(&r, call), "format %zu, required %d: a call", i, required);
            cr_expect_eq(grammar_takes(&r, " {\"answer\":\"sunny\"}"), !required,
                         "format %zu, required %d: the document", i, required);
            cr_expect(!grammar_takes(&r, " It is sunny."), "format %zu, required %d: free text", i,
                      required);
            if (i == 0)
                cr_expect(!grammar_takes(&r, " {\"other\":1}"), "required %d: off the schema", required);
            oa_request_free(&r);
        }
    /* The format's own errors still name it. */
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"tools\":[" TOOL_W "],\"response_format\":{\"type\":\"json_schema\","
                        "\"json_schema\":{\"name\":\"x\",\"strict\":true,\"schema\":{\"type\":\"string\","
                        "\"format\":\"email\"}}}}",
               "response_format.json_schema.schema", "'format'");
}

/* tool_choice allowed_tools, in chat's form and the Responses API's: every
 * tool stays in the prompt, only the listed ones can be called, and the mode
 * says whether text may come instead. */
Test(agent_request, allowed_tools)
{
    static const char *const choices[] = {
        "{\"type\":\"allowed_tools\",\"allowed_tools\":{\"mode\":\"%s\",\"tools\":"
        "[{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}]}}",
        "{\"type\":\"allowed_tools\",\"mode\":\"%s\",\"tools\":[{\"type\":\"function\","
        "\"name\":\"get_time\"}]}"};
    const char *weather = " Call: [{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}]";
    const char *time = " Call: [{\"name\":\"get_time\",\"arguments\":{}}]";
    for (size_t i = 0; i < 2; i++)
        for (int required = 0; required < 2; required++) {
            char tc[512], body[1024];
            snprintf(tc, sizeof tc, choices[i], required ? "required" : "auto");
            snprintf(body, sizeof body,
                     "{\"model\":\"m\",\"tools\":[" TOOL_W "," TOOL_T "],\"tool_choice\":%s,"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}", tc);
            oa_request r;
            oa_error e;
            cr_assert_eq(parse(OA_CHAT, body, &r, &e), 0, "%s: %s", tc, e.message);
            cr_expect_eq(r.tool_choice, required ? OA_TOOLS_REQUIRED : OA_TOOLS_AUTO);
            cr_expect(grammar_takes(&r, time), "%s: the allowed tool", tc);
            cr_expect(!grammar_takes(&r, weather), "%s: a tool left out", tc);
            cr_expect_eq(grammar_takes(&r, " It is noon."), !required, "%s: text", tc);
            size_t len;
            char *p = tools_render(&r, &len);
            cr_assert_not_null(p);
            cr_expect(strstr(p, "\"name\":\"get_weather\""), "the prompt lists every tool:\n%s", p);
            free(p);
            oa_request_free(&r);
        }
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"tools\":[" TOOL_W "],\"tool_choice\":{\"type\":\"allowed_tools\",\"mode\":"
                        "\"required\",\"tools\":[{\"type\":\"function\",\"name\":\"nope\"}]}}",
               "tool_choice", "no function named 'nope'");
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"tools\":[" TOOL_W "],\"tool_choice\":{\"type\":\"allowed_tools\","
                        "\"allowed_tools\":{\"mode\":\"sometimes\",\"tools\":[{\"type\":\"function\","
                        "\"function\":{\"name\":\"get_weather\"}}]}}}",
               "tool_choice", "'auto' or 'required'");
    expect_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"tools\":[" TOOL_W "],\"tool_choice\":{\"type\":\"allowed_tools\","
                        "\"allowed_tools\":{\"mode\":\"auto\",\"tools\":[]}}}",
               "tool_choice", "non-empty array");
}

Test(agent_request, parse_reply)
{
    tools_call *c;
    const char *t = "Call: [{\"name\":\"f\",\"arguments\":{\"a\":1}},{\"name\":\"g\",\"arguments\":{}}]";
    int n = tools_parse_reply(t, strlen(t), &c);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(c[0].name, "f");
    cr_assert_str_eq(c[0].arguments, "{\"a\":1}");
    cr_assert_str_eq(c[1].arguments, "{}");
    tools_calls_free(c, n);
    cr_assert_eq(tools_parse_reply("Hello", 5, &c), 0);
    char id[32];
    tools_call_id(id, 42);
    cr_assert_eq(strlen(id), 29);
    cr_assert(!strncmp(id, "call_", 5));
}

typedef struct events {
    char log[512];
} events;

static void on_start(void *ud, int index, const char *name)
{
    events *ev = ud;
    size_t l = strlen(ev->log);
    snprintf(ev->log + l, sizeof ev->log - l, "<%d:%s>", index, name);
}

static void on_args(void *ud, int index, const char *b, size_t n)
{
    events *ev = ud;
    size_t l = strlen(ev->log);
    snprintf(ev->log + l, sizeof ev->log - l, "[%d:%.*s]", index, (int)n, b);
}

Test(agent_request, stream_reader_byte_by_byte)
{
    const char *t = "Call: [{\"name\":\"f\",\"arguments\":{\"s\":\"}\\\"\"}},{\"name\":\"g\",\"arguments\":{}}]";
    tools_stream s;
    tools_stream_init(&s);
    events ev = { { 0 } };
    for (size_t i = 0; t[i]; i++)
        cr_assert_eq(tools_stream_feed(&s, t + i, 1, on_start, on_args, &ev), 0);
    /* concatenated argument pieces must equal the arguments */
    events whole = { { 0 } };
    tools_stream_init(&s);
    cr_assert_eq(tools_stream_feed(&s, t, strlen(t), on_start, on_args, &whole), 0);
    cr_assert_str_eq(whole.log, "<0:f>[0:{\"s\":\"}\\\"\"}]<1:g>[1:{}]");
    cr_assert_eq(s.stage, 5);
    tools_stream_init(&s);
    cr_assert_eq(tools_stream_feed(&s, "Hello", 5, on_start, on_args, &ev), -1);
}

#include "responses.h"

/* Responses API input items become chat messages; built-in tools are refused. */
Test(agent_request, responses_to_chat)
{
    json_t *req = json_loads(
        "{\"model\":\"m\",\"instructions\":\"Be brief.\",\"max_output_tokens\":7,"
        "\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"Hi\"}]},"
        "{\"type\":\"function_call\",\"call_id\":\"call_1\",\"name\":\"f\",\"arguments\":\"{}\"},"
        "{\"type\":\"function_call_output\",\"call_id\":\"call_1\",\"output\":\"ok\"}],"
        "\"text\":{\"format\":{\"type\":\"json_schema\",\"name\":\"x\",\"schema\":{\"type\":\"object\"}}}}",
        0, NULL);
    json_t *prev = json_loads("[{\"role\":\"user\",\"content\":\"Before\"}]", 0, NULL);
    json_t *hist = NULL;
    oa_error e = { 0 };
    json_t *chat = resp_to_chat(req, prev, &hist, &e);
    cr_assert_not_null(chat, "%s", e.message);
    json_t *msgs = json_object_get(chat, "messages");
    cr_assert_eq(json_array_size(msgs), 5);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 0), "role")), "system");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 1), "content")), "Before");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 2), "content")), "Hi");
    json_t *calls = json_object_get(json_array_get(msgs, 3), "tool_calls");
    cr_assert_eq(json_array_size(calls), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 4), "role")), "tool");
    cr_assert_eq(json_integer_value(json_object_get(chat, "max_tokens")), 7);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(chat, "response_format"), "type")),
                     "json_schema");
    cr_assert_eq(json_array_size(hist), 4); /* no instructions in the stored conversation */
    json_decref(chat);
    json_decref(hist);
    json_decref(prev);
    json_decref(req);

    /* log probabilities only when include asks; top_logprobs then goes along */
    static const struct {
        const char *body;
        int logprobs, top;
    } lps[] = {{"{\"model\":\"m\",\"input\":\"x\",\"include\":[\"message.output_text.logprobs\"],"
                "\"top_logprobs\":3}", 1, 3},
               {"{\"model\":\"m\",\"input\":\"x\",\"top_logprobs\":3}", 0, -1},
               {"{\"model\":\"m\",\"input\":\"x\",\"include\":[\"message.output_text.logprobs\"]}", 1, -1}};
    for (size_t i = 0; i < sizeof lps / sizeof lps[0]; i++) {
        req = json_loads(lps[i].body, 0, NULL);
        chat = resp_to_chat(req, NULL, &hist, &e);
        cr_assert_not_null(chat, "%s", e.message);
        cr_expect_eq(json_is_true(json_object_get(chat, "logprobs")), lps[i].logprobs, "%s", lps[i].body);
        json_t *tl = json_object_get(chat, "top_logprobs");
        cr_expect_eq(tl ? (int)json_integer_value(tl) : -1, lps[i].top, "%s", lps[i].body);
        json_decref(chat);
        json_decref(hist);
        json_decref(req);
    }

    req = json_loads("{\"model\":\"m\",\"input\":\"x\",\"tools\":[{\"type\":\"web_search_preview\"}]}", 0, NULL);
    chat = resp_to_chat(req, NULL, &hist, &e);
    cr_assert_null(chat);
    cr_assert_eq(e.status, 400);
    cr_assert(strstr(e.message, "built-in"), "%s", e.message);
    json_decref(req);
}

/* The Responses API's error event: OpenAI's flat fields (an error without a
 * code names its type there), the chat error object beside them, and the
 * stream's next sequence number. */
Test(agent_request, responses_error_event)
{
    oa_error e;
    oa_error_set(&e, 500, "server_error", NULL, NULL, "engine failed: \"%s\"", "x");
    int seq = 7;
    char *ev = resp_error_event(&e, &seq);
    cr_assert_not_null(ev);
    cr_assert_eq(seq, 8);
    cr_assert(!strncmp(ev, "event: error\ndata: ", 19), "%s", ev);
    cr_assert(strlen(ev) > 21 && !strcmp(ev + strlen(ev) - 2, "\n\n"), "%s", ev);
    json_t *o = json_loads(ev + 19, 0, NULL);
    cr_assert_not_null(o, "%s", ev);
    cr_expect_str_eq(json_string_value(json_object_get(o, "type")), "error");
    cr_expect_eq(json_integer_value(json_object_get(o, "sequence_number")), 7);
    cr_expect_str_eq(json_string_value(json_object_get(o, "code")), "server_error");
    cr_expect_str_eq(json_string_value(json_object_get(o, "message")), "engine failed: \"x\"");
    cr_expect(json_is_null(json_object_get(o, "param")));
    json_t *in = json_object_get(o, "error");
    cr_expect_str_eq(json_string_value(json_object_get(in, "type")), "server_error");
    cr_expect(json_is_null(json_object_get(in, "code")));
    cr_expect_str_eq(json_string_value(json_object_get(in, "message")), "engine failed: \"x\"");
    json_decref(o);
    free(ev);

    oa_error_set(&e, 503, "server_error", "input", "store_unavailable", "down");
    ev = resp_error_event(&e, &seq);
    o = json_loads(strchr(ev, '{'), 0, NULL);
    cr_expect_eq(json_integer_value(json_object_get(o, "sequence_number")), 8);
    cr_expect_str_eq(json_string_value(json_object_get(o, "code")), "store_unavailable");
    cr_expect_str_eq(json_string_value(json_object_get(o, "param")), "input");
    json_decref(o);
    free(ev);
}

/* Pages of input items: ids kept or made, both cursors at once, both
 * orders, and the empty page. */
Test(agent_request, responses_input_items_pages)
{
    json_t *in = json_loads("[{\"role\":\"user\",\"content\":\"a\"},{\"type\":\"function_call\",\"call_id\":"
                            "\"c\",\"name\":\"f\",\"arguments\":\"{}\"},{\"type\":\"message\",\"role\":"
                            "\"assistant\",\"id\":\"msg_x\",\"content\":\"b\"},{\"role\":\"user\","
                            "\"content\":\"c\"}]", 0, NULL);
    json_t *items = resp_input_items(in, 42);
    cr_assert_eq(json_array_size(items), 4);
    const char *ids[4];
    for (int i = 0; i < 4; i++)
        ids[i] = json_string_value(json_object_get(json_array_get(items, (size_t)i), "id"));
    cr_expect_str_eq(ids[2], "msg_x");
    cr_expect(!strncmp(ids[1], "fc_", 3) && !strncmp(ids[0], "msg_", 4) && strcmp(ids[0], ids[3]));
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(
                         json_array_get(items, 2), "content"), 0), "type")), "output_text");
    oa_error e;
    /* between after = ids[0] and before = ids[3], ascending: ids[1], ids[2] */
    json_t *p = resp_items_page(items, "5", "asc", ids[0], ids[3], &e);
    cr_assert_not_null(p, "%s", e.message);
    cr_expect_eq(json_array_size(json_object_get(p, "data")), 2);
    cr_expect_str_eq(json_string_value(json_object_get(p, "first_id")), ids[1]);
    cr_expect_str_eq(json_string_value(json_object_get(p, "last_id")), ids[2]);
    cr_expect(json_is_false(json_object_get(p, "has_more")));
    json_decref(p);
    /* descending, one at a time: after the newest comes ids[2], more follow */
    p = resp_items_page(items, "1", NULL, ids[3], NULL, &e);
    cr_expect_str_eq(json_string_value(json_object_get(p, "first_id")), ids[2]);
    cr_expect(json_is_true(json_object_get(p, "has_more")));
    json_decref(p);
    /* nothing after the oldest */
    p = resp_items_page(items, NULL, "desc", ids[0], NULL, &e);
    cr_expect_eq(json_array_size(json_object_get(p, "data")), 0);
    cr_expect(json_is_null(json_object_get(p, "first_id")) && json_is_null(json_object_get(p, "last_id")));
    json_decref(p);
    cr_expect_null(resp_items_page(items, "20", "sideways", NULL, NULL, &e));
    cr_expect_str_eq(e.param, "order");
    cr_expect_null(resp_items_page(items, "3x", NULL, NULL, NULL, &e));
    cr_expect_str_eq(e.param, "limit");
    json_decref(items);
    json_decref(in);

    in = json_string("just text");
    items = resp_input_items(in, 7);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(
                         json_array_get(items, 0), "content"), 0), "text")), "just text");
    json_decref(items);
    json_decref(in);
}
