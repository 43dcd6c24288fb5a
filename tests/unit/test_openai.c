/*
 * test_openai.c - proto/openai.c: request validation (every field's type
 * errors with the param named, ranges, defaults, null-as-absent, hostile
 * bodies) and the response/chunk/error/models JSON, parsed back with jansson
 * and checked field by field, in order, against ../shared/docs/OPENAI.md.
 */
#include <criterion/criterion.h>
#include <jansson.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "openai.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static int parse(oa_kind kind, const char *body, oa_request *r, oa_error *e)
{
    memset(e, 0, sizeof *e);
    return oa_request_parse(kind, body, strlen(body), r, e);
}

/* A chat body: the minimal valid request with `extra` members appended. */
static char *chat_body(const char *extra)
{
    char *b = NULL;
    cr_assert(asprintf(&b, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]%s%s}",
                       extra && *extra ? "," : "", extra ? extra : "") > 0);
    return b;
}

static char *completion_body(const char *extra)
{
    char *b = NULL;
    cr_assert(asprintf(&b, "{\"model\":\"m\",\"prompt\":\"hello\"%s%s}", extra && *extra ? "," : "",
                       extra ? extra : "") > 0);
    return b;
}

static void expect_ok(oa_kind kind, const char *extra, oa_request *r)
{
    char *b = kind == OA_CHAT ? chat_body(extra) : completion_body(extra);
    oa_error e;
    int rc = parse(kind, b, r, &e);
    cr_assert_eq(rc, 0, "body %s: unexpected error %d %s (param %s)", b, e.status, e.message,
                 e.param);
    free(b);
}

/* Expects a 400 invalid_request_error naming `param`, whose message contains
 * `needle` (when not NULL). */
static void expect_400(oa_kind kind, const char *extra, const char *param, const char *needle)
{
    char *b = kind == OA_CHAT ? chat_body(extra) : completion_body(extra);
    oa_request r;
    oa_error e;
    int rc = parse(kind, b, &r, &e);
    cr_assert_eq(rc, -1, "body %s: accepted", b);
    cr_assert_eq(e.status, 400, "body %s: status %d", b, e.status);
    cr_assert_str_eq(e.type, "invalid_request_error");
    cr_assert_str_eq(e.param, param, "body %s: param '%s', expected '%s' (%s)", b, e.param, param,
                     e.message);
    if (needle)
        cr_assert(strstr(e.message, needle), "body %s: message '%s' lacks '%s'", b, e.message,
                  needle);
    /* A failed parse leaves nothing owned behind. */
    cr_assert_null(r.model);
    cr_assert_null(r.messages);
    cr_assert_null(r.prompts);
    oa_request_free(&r);
    free(b);
}

static json_t *load(const char *text)
{
    cr_assert_not_null(text);
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    cr_assert_not_null(j, "not JSON (%s): %s", err.text, text);
    return j;
}

/* Asserts obj's keys are exactly `keys` (NULL-terminated), in that order. */
static void expect_keys(json_t *obj, const char *const *keys)
{
    cr_assert(json_is_object(obj));
    size_t i = 0;
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        cr_assert_not_null(keys[i], "unexpected extra key '%s'", k);
        cr_assert_str_eq(k, keys[i], "key %zu is '%s', expected '%s'", i, k, keys[i]);
        i++;
    }
    cr_assert_null(keys[i], "missing key '%s'", keys[i]);
}

static void expect_str(json_t *obj, const char *key, const char *want)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(json_is_string(v), "'%s' is not a string", key);
    cr_assert_str_eq(json_string_value(v), want, "'%s'", key);
}

static void expect_int(json_t *obj, const char *key, json_int_t want)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(json_is_integer(v), "'%s' is not an integer", key);
    cr_assert_eq(json_integer_value(v), want, "'%s' = %lld, expected %lld", key,
                 (long long)json_integer_value(v), (long long)want);
}

static void expect_null(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(v && json_is_null(v), "'%s' is not null", key);
}

static void expect_usage(json_t *u, int prompt, int completion, int cached)
{
    static const char *const keys[] = {"prompt_tokens", "completion_tokens", "total_tokens",
                                       "prompt_tokens_details", NULL};
    expect_keys(u, keys);
    expect_int(u, "prompt_tokens", prompt);
    expect_int(u, "completion_tokens", completion);
    expect_int(u, "total_tokens", prompt + completion);
    json_t *d = json_object_get(u, "prompt_tokens_details");
    static const char *const dkeys[] = {"cached_tokens", NULL};
    expect_keys(d, dkeys);
    expect_int(d, "cached_tokens", cached);
}

#define FEQ(a, b) (fabsf((a) - (b)) < 1e-6f)

/* ------------------------------------------------------------------------ */
/* Defaults                                                                  */
/* ------------------------------------------------------------------------ */

Test(openai, chat_minimal_defaults)
{
    oa_request r;
    expect_ok(OA_CHAT, NULL, &r);
    ms_sampler_params d = ms_sampler_defaults();
    cr_assert_eq(r.kind, OA_CHAT);
    cr_assert_str_eq(r.model, "m");
    cr_assert_eq(r.n_messages, 1);
    cr_assert_str_eq(r.messages[0].role, "user");
    cr_assert_str_eq(r.messages[0].content, "hi");
    cr_assert_null(r.prompts);
    cr_assert_eq(r.max_tokens, -1);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(r.stream, 0);
    cr_assert_eq(r.include_usage, 0);
    cr_assert_eq(r.has_seed, 0);
    cr_assert_eq(r.n_stop, 0);
    cr_assert_eq(r.n_logit_bias, 0);
    cr_assert_null(r.user);
    cr_assert_null(r.session_id);
    cr_assert_null(r.state);
    cr_assert(memcmp(&r.sampling, &d, sizeof d) == 0, "chat sampling != ms_sampler_defaults()");
    oa_request_free(&r);
}

Test(openai, completion_minimal_defaults)
{
    oa_request r;
    expect_ok(OA_COMPLETION, NULL, &r);
    ms_sampler_params d = ms_sampler_defaults();
    cr_assert_eq(r.kind, OA_COMPLETION);
    cr_assert_eq(r.n_prompts, 1);
    cr_assert_str_eq(r.prompts[0], "hello");
    cr_assert_null(r.messages);
    cr_assert_eq(r.max_tokens, -1);
    cr_assert(FEQ(r.sampling.temperature, 1.0f));
    cr_assert(FEQ(r.sampling.top_p, 0.85f));
    cr_assert(FEQ(r.sampling.presence_penalty, 0.2f));
    cr_assert(FEQ(r.sampling.frequency_penalty, 0.2f));
    cr_assert(FEQ(r.sampling.penalty_decay, d.penalty_decay));
    cr_assert_eq(r.sampling.top_k, d.top_k);
    oa_request_free(&r);
}

Test(openai, every_field_set)
{
    oa_request r;
    expect_ok(OA_CHAT,
              "\"max_tokens\":100,\"temperature\":0.7,\"top_p\":0.9,\"presence_penalty\":-1.5,"
              "\"frequency_penalty\":1.25,\"stop\":[\"\\n\\nUser\",\"END\"],\"seed\":42,\"n\":3,"
              "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
              "\"logit_bias\":{\"0\":-100,\"11\":2.5,\"65535\":100},\"user\":\"u1\","
              "\"top_k\":40,\"penalty_decay\":0.99,\"session_id\":\"Ab9._:-z\",\"state\":\"st\"",
              &r);
    cr_assert_eq(r.max_tokens, 100);
    cr_assert(FEQ(r.sampling.temperature, 0.7f));
    cr_assert(FEQ(r.sampling.top_p, 0.9f));
    cr_assert(FEQ(r.sampling.presence_penalty, -1.5f));
    cr_assert(FEQ(r.sampling.frequency_penalty, 1.25f));
    cr_assert(FEQ(r.sampling.penalty_decay, 0.99f));
    cr_assert_eq(r.sampling.top_k, 40);
    cr_assert_eq(r.has_seed, 1);
    cr_assert_eq(r.sampling.seed, 42);
    cr_assert_eq(r.n, 3);
    cr_assert_eq(r.stream, 1);
    cr_assert_eq(r.include_usage, 1);
    cr_assert_eq(r.n_stop, 2);
    cr_assert_str_eq(r.stop[0], "\n\nUser");
    cr_assert_str_eq(r.stop[1], "END");
    cr_assert_eq(r.n_logit_bias, 3);
    cr_assert_eq(r.logit_bias[0].token, 0);
    cr_assert(FEQ(r.logit_bias[0].bias, -100.0f));
    cr_assert_eq(r.logit_bias[1].token, 11);
    cr_assert(FEQ(r.logit_bias[1].bias, 2.5f));
    cr_assert_eq(r.logit_bias[2].token, 65535);
    cr_assert_str_eq(r.user, "u1");
    cr_assert_str_eq(r.session_id, "Ab9._:-z");
    cr_assert_str_eq(r.state, "st");
    oa_request_free(&r);
}

Test(openai, temperature_top_p_override_defaults_only_where_given)
{
    oa_request r;
    expect_ok(OA_CHAT, "\"temperature\":0", &r);
    cr_assert(FEQ(r.sampling.temperature, 0.0f));
    cr_assert(FEQ(r.sampling.top_p, 0.3f));
    oa_request_free(&r);
    expect_ok(OA_COMPLETION, "\"top_p\":1", &r); /* a JSON integer is a number too */
    cr_assert(FEQ(r.sampling.top_p, 1.0f));
    cr_assert(FEQ(r.sampling.temperature, 1.0f));
    oa_request_free(&r);
}

Test(openai, max_completion_tokens)
{
    oa_request r;
    expect_ok(OA_CHAT, "\"max_completion_tokens\":7", &r);
    cr_assert_eq(r.max_tokens, 7);
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"max_tokens\":5,\"max_completion_tokens\":9", &r);
    cr_assert_eq(r.max_tokens, 9);
    oa_request_free(&r);
    expect_ok(OA_COMPLETION, "\"max_tokens\":2147483647", &r);
    cr_assert_eq(r.max_tokens, 2147483647);
    oa_request_free(&r);
}

Test(openai, seed_any_int64)
{
    oa_request r;
    expect_ok(OA_CHAT, "\"seed\":-1", &r);
    cr_assert_eq(r.has_seed, 1);
    cr_assert_eq(r.sampling.seed, UINT64_MAX);
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"seed\":9223372036854775807", &r);
    cr_assert_eq(r.sampling.seed, (uint64_t)INT64_MAX);
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"seed\":0", &r);
    cr_assert_eq(r.has_seed, 1);
    oa_request_free(&r);
}

Test(openai, null_means_absent)
{
    static const char *const fields[] = {
        "max_tokens", "max_completion_tokens", "temperature", "top_p", "presence_penalty",
        "frequency_penalty", "stop", "seed", "n", "stream", "stream_options", "logit_bias",
        "user", "top_k", "penalty_decay", "session_id", "state"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        char extra[128];
        snprintf(extra, sizeof extra, "\"%s\":null", fields[i]);
        for (int k = 0; k < 2; k++) {
            oa_kind kind = k ? OA_CHAT : OA_COMPLETION;
            oa_request r;
            expect_ok(kind, extra, &r);
            cr_assert_eq(r.max_tokens, -1, "%s", fields[i]);
            cr_assert_eq(r.has_seed, 0, "%s", fields[i]);
            cr_assert_eq(r.n, 1, "%s", fields[i]);
            cr_assert_eq(r.n_stop, 0, "%s", fields[i]);
            cr_assert_null(r.user);
            cr_assert_null(r.session_id);
            cr_assert_null(r.state);
            oa_request_free(&r);
        }
    }
}

/* Known OpenAI parameters the server does not implement: refused by name
 * (params_unsupported.c) unless in the form that asks for nothing. */
Test(openai, unimplemented_parameters_refused)
{
    expect_400(OA_COMPLETION, "\"suffix\":\"s\"", "suffix", "Unsupported parameter");
    expect_400(OA_COMPLETION, "\"suffix\":1", "suffix", "expected a string");
    expect_400(OA_COMPLETION, "\"best_of\":2", "best_of", "above n");
    expect_400(OA_COMPLETION, "\"best_of\":2,\"n\":3", "best_of", "at least n");
    expect_400(OA_COMPLETION, "\"best_of\":\"2\"", "best_of", "an integer");
    expect_400(OA_CHAT, "\"functions\":[]", "functions", "'tools'");
    expect_400(OA_CHAT, "\"modalities\":[\"audio\"]", "modalities", "text only");
    expect_400(OA_CHAT, "\"modalities\":\"text\"", "modalities", "an array");
    expect_400(OA_CHAT, "\"store\":true", "store", "/v1/responses");
    expect_400(OA_CHAT, "\"store\":\"no\"", "store", "a boolean");
    expect_400(OA_CHAT, "\"service_tier\":1", "service_tier", "a string");
    expect_400(OA_CHAT, "\"reasoning_effort\":\"low\"", "reasoning_effort", NULL);
    char *b = chat_body("\"audio\":{}");
    oa_request r;
    oa_error e;
    cr_assert_eq(parse(OA_CHAT, b, &r, &e), -1);
    cr_assert_str_eq(e.code, "unsupported_parameter");
    free(b);
    /* Their do-nothing forms, and the parameters that never change a reply. */
    expect_ok(OA_COMPLETION, "\"best_of\":2,\"n\":2,\"suffix\":null", &r);
    cr_assert_eq(r.n, 2);
    oa_request_free(&r);
    expect_ok(OA_CHAT,
              "\"modalities\":[\"text\"],\"store\":false,\"audio\":null,\"metadata\":{},"
              "\"prediction\":{\"type\":\"content\",\"content\":\"x\"},\"service_tier\":\"auto\"",
              &r);
    oa_request_free(&r);
}

Test(openai, unknown_fields_ignored)
{
    oa_request r;
    expect_ok(OA_CHAT,
              "\"whatever\":[1,{\"a\":[null,true]}],\"logprobs\":true,\"x\":\"y\"",
              &r);
    cr_assert_eq(r.n_messages, 1);
    oa_request_free(&r);
    expect_ok(OA_COMPLETION, "\"echo\":true,\"whatever\":\"s\",\"suffix\":\"\",\"best_of\":1",
              &r);
    cr_assert_eq(r.n_prompts, 1);
    oa_request_free(&r);
    /* Unknown members of known objects too. */
    char *b = NULL;
    oa_error e;
    cr_assert(asprintf(&b, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\","
                           "\"name\":\"bob\",\"extra\":1}],\"stream\":true,"
                           "\"stream_options\":{\"include_usage\":false,\"other\":3}}") > 0);
    cr_assert_eq(parse(OA_CHAT, b, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.include_usage, 0);
    oa_request_free(&r);
    free(b);
}

/* ------------------------------------------------------------------------ */
/* Type errors: every field, with the param named                            */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *field;
    const char *bad; /* a JSON value of the wrong type */
    const char *message; /* exact expected message, or NULL for a prefix check */
} type_case;

Test(openai, type_errors_every_field)
{
    static const type_case cases[] = {
        {"temperature", "\"hot\"",
         "Invalid type for 'temperature': expected a number, but got a string instead."},
        {"top_p", "true", "Invalid type for 'top_p': expected a number, but got a boolean instead."},
        {"presence_penalty", "[]",
         "Invalid type for 'presence_penalty': expected a number, but got an array instead."},
        {"frequency_penalty", "{}",
         "Invalid type for 'frequency_penalty': expected a number, but got an object instead."},
        {"penalty_decay", "\"1\"", NULL},
        {"max_tokens", "5.5",
         "Invalid type for 'max_tokens': expected an integer, but got a decimal number instead."},
        {"max_tokens", "\"5\"", NULL},
        {"max_completion_tokens", "1.0", NULL},
        {"top_k", "\"4\"", NULL},
        {"seed", "1.5", NULL},
        {"seed", "\"1\"", NULL},
        {"n", "2.0", NULL},
        {"n", "true", NULL},
        {"stream", "1", "Invalid type for 'stream': expected a boolean, but got an integer instead."},
        {"stream", "\"true\"", NULL},
        {"stream_options", "true", NULL},
        {"stream_options", "[]", NULL},
        {"logit_bias", "[1]", NULL},
        {"logit_bias", "\"x\"", NULL},
        {"user", "5", NULL},
        {"session_id", "5", NULL},
        {"state", "{}", NULL},
        {"stop", "5", NULL},
        {"stop", "{}", NULL},
        {"model", "5", "Invalid type for 'model': expected a string, but got an integer instead."},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const type_case *c = &cases[i];
        char extra[256], prefix[128];
        snprintf(extra, sizeof extra, "\"%s\":%s", c->field, c->bad);
        snprintf(prefix, sizeof prefix, "Invalid type for '%s': expected ", c->field);
        for (int k = 0; k < 2; k++) {
            oa_kind kind = k ? OA_CHAT : OA_COMPLETION;
            /* "model" comes first in the minimal body; a later duplicate
             * key wins in jansson, so this replaces it. */
            expect_400(kind, extra, c->field, c->message ? c->message : prefix);
        }
    }
}

Test(openai, nested_type_errors_name_the_path)
{
    expect_400(OA_CHAT, "\"stream\":true,\"stream_options\":{\"include_usage\":\"yes\"}",
               "stream_options.include_usage",
               "Invalid type for 'stream_options.include_usage': expected a boolean");
    expect_400(OA_CHAT, "\"logit_bias\":{\"5\":\"high\"}", "logit_bias",
               "expected a number, but got a string");
    expect_400(OA_CHAT, "\"stop\":[\"a\",3]", "stop", "expected a string or an array of strings");
    expect_400(OA_COMPLETION, "\"prompt\":5", "prompt", "Invalid type for 'prompt'");
    expect_400(OA_COMPLETION, "\"prompt\":[\"a\",true]", "prompt", "got a boolean");
    expect_400(OA_COMPLETION, "\"prompt\":{}", "prompt", "got an object");
    expect_400(OA_CHAT, "\"messages\":{}", "messages",
               "Invalid type for 'messages': expected an array, but got an object instead.");
    expect_400(OA_CHAT, "\"messages\":[\"hi\"]", "messages[0]", "expected an object");
    expect_400(OA_CHAT, "\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":1,\"content\":\"b\"}]",
               "messages[1].role", "Invalid type for 'messages[1].role': expected a string");
    expect_400(OA_CHAT, "\"messages\":[{\"role\":\"user\",\"content\":5}]", "messages[0].content",
               "Invalid type for 'messages[0].content'");
    expect_400(OA_CHAT, "\"messages\":[{\"role\":\"user\",\"content\":{\"text\":\"a\"}}]",
               "messages[0].content", "got an object");
    expect_400(OA_CHAT, "\"messages\":[{\"role\":\"user\",\"content\":[\"a\"]}]",
               "messages[0].content[0]", "expected an object");
    expect_400(OA_CHAT,
               "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":5}]}]",
               "messages[0].content[0].text", "expected a string");
}

/* ------------------------------------------------------------------------ */
/* Ranges                                                                    */
/* ------------------------------------------------------------------------ */

Test(openai, number_ranges)
{
    expect_400(OA_CHAT, "\"temperature\":2.5", "temperature",
               "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 2.5 instead.");
    expect_400(OA_CHAT, "\"temperature\":-0.1", "temperature", "below minimum value");
    expect_400(OA_CHAT, "\"temperature\":1e308", "temperature", "above maximum value");
    expect_400(OA_CHAT, "\"top_p\":1.01", "top_p", "Expected a value <= 1");
    expect_400(OA_CHAT, "\"top_p\":-1", "top_p", "Expected a value >= 0");
    expect_400(OA_CHAT, "\"presence_penalty\":-2.01", "presence_penalty", "Expected a value >= -2");
    expect_400(OA_CHAT, "\"frequency_penalty\":3", "frequency_penalty", "Expected a value <= 2");
    expect_400(OA_CHAT, "\"penalty_decay\":1.5", "penalty_decay", "Expected a value <= 1");
    expect_400(OA_CHAT, "\"penalty_decay\":-0.5", "penalty_decay", "Expected a value >= 0");

    oa_request r;
    expect_ok(OA_CHAT,
              "\"temperature\":2,\"top_p\":0,\"presence_penalty\":-2,\"frequency_penalty\":2,"
              "\"penalty_decay\":1",
              &r);
    cr_assert(FEQ(r.sampling.temperature, 2.0f));
    cr_assert(FEQ(r.sampling.top_p, 0.0f));
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"temperature\":0,\"top_p\":1,\"presence_penalty\":2,"
                       "\"frequency_penalty\":-2,\"penalty_decay\":0", &r);
    oa_request_free(&r);
}

Test(openai, integer_ranges)
{
    expect_400(OA_CHAT, "\"max_tokens\":0", "max_tokens",
               "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 instead.");
    expect_400(OA_CHAT, "\"max_tokens\":-5", "max_tokens", "below minimum value");
    expect_400(OA_CHAT, "\"max_tokens\":2147483648", "max_tokens", "above maximum value");
    expect_400(OA_CHAT, "\"max_completion_tokens\":0", "max_completion_tokens", "Expected a value >= 1");
    expect_400(OA_CHAT, "\"n\":0", "n", "Expected a value >= 1");
    expect_400(OA_CHAT, "\"n\":17", "n",
               "Invalid 'n': integer above maximum value. Expected a value <= 16, but got 17 instead.");
    expect_400(OA_CHAT, "\"top_k\":-1", "top_k", "Expected a value >= 0");
    expect_400(OA_CHAT, "\"top_k\":2147483648", "top_k", "above maximum value");

    oa_request r;
    expect_ok(OA_CHAT, "\"n\":16,\"top_k\":0,\"max_tokens\":1", &r);
    cr_assert_eq(r.n, OA_MAX_N);
    cr_assert_eq(r.sampling.top_k, 0);
    cr_assert_eq(r.max_tokens, 1);
    oa_request_free(&r);
}

Test(openai, logit_bias_keys_and_values)
{
    expect_400(OA_CHAT, "\"logit_bias\":{\"5\":100.5}", "logit_bias", "between -100 and 100");
    expect_400(OA_CHAT, "\"logit_bias\":{\"5\":-101}", "logit_bias", "between -100 and 100");
    expect_400(OA_CHAT, "\"logit_bias\":{\"abc\":1}", "logit_bias", "'abc' is not a token id");
    expect_400(OA_CHAT, "\"logit_bias\":{\"-1\":1}", "logit_bias", "is not a token id");
    expect_400(OA_CHAT, "\"logit_bias\":{\"\":1}", "logit_bias", "is not a token id");
    expect_400(OA_CHAT, "\"logit_bias\":{\"1.5\":1}", "logit_bias", "is not a token id");
    expect_400(OA_CHAT, "\"logit_bias\":{\"2147483648\":1}", "logit_bias", "is not a token id");
    expect_400(OA_CHAT, "\"logit_bias\":{\"99999999999999999999\":1}", "logit_bias", "is not a token id");
    oa_request r;
    expect_ok(OA_CHAT, "\"logit_bias\":{}", &r);
    cr_assert_eq(r.n_logit_bias, 0);
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"logit_bias\":{\"2147483647\":0}", &r);
    cr_assert_eq(r.n_logit_bias, 1);
    cr_assert_eq(r.logit_bias[0].token, 2147483647);
    oa_request_free(&r);
}

Test(openai, stop_forms)
{
    oa_request r;
    expect_ok(OA_CHAT, "\"stop\":\"\\n\\n\"", &r);
    cr_assert_eq(r.n_stop, 1);
    cr_assert_str_eq(r.stop[0], "\n\n");
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"stop\":\"\"", &r);
    cr_assert_eq(r.n_stop, 0);
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"stop\":[]", &r);
    cr_assert_eq(r.n_stop, 0);
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"stop\":[\"\",\"a\",\"\",\"\xc3\xa9\"]", &r);
    cr_assert_eq(r.n_stop, 2);
    cr_assert_str_eq(r.stop[0], "a");
    cr_assert_str_eq(r.stop[1], "\xc3\xa9");
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"stop\":[\"1\",\"2\",\"3\",\"4\"]", &r);
    cr_assert_eq(r.n_stop, 4);
    cr_assert_str_eq(r.stop[3], "4");
    oa_request_free(&r);
    expect_400(OA_CHAT, "\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\"]", "stop", "maximum length 4");
    expect_400(OA_CHAT, "\"stop\":[null]", "stop", "got null");
}

Test(openai, stream_options_needs_stream)
{
    expect_400(OA_CHAT, "\"stream_options\":{\"include_usage\":true}", "stream_options",
               "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
    expect_400(OA_COMPLETION, "\"stream\":false,\"stream_options\":{}", "stream_options",
               "only allowed when 'stream' is enabled");
    oa_request r;
    expect_ok(OA_CHAT, "\"stream\":true,\"stream_options\":{}", &r);
    cr_assert_eq(r.stream, 1);
    cr_assert_eq(r.include_usage, 0);
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"stream\":true,\"stream_options\":{\"include_usage\":null}", &r);
    cr_assert_eq(r.include_usage, 0);
    oa_request_free(&r);
    expect_ok(OA_COMPLETION, "\"stream\":true,\"stream_options\":{\"include_usage\":true}", &r);
    cr_assert_eq(r.include_usage, 1);
    oa_request_free(&r);
    expect_ok(OA_CHAT, "\"stream\":false,\"stream_options\":null", &r);
    cr_assert_eq(r.stream, 0);
    oa_request_free(&r);
}

Test(openai, session_id_charset_and_length)
{
    char extra[512], id[200];
    memset(id, 'a', 128);
    id[128] = '\0';
    snprintf(extra, sizeof extra, "\"session_id\":\"%s\"", id);
    oa_request r;
    expect_ok(OA_CHAT, extra, &r);
    cr_assert_eq(strlen(r.session_id), 128);
    oa_request_free(&r);
    id[128] = 'a';
    id[129] = '\0';
    snprintf(extra, sizeof extra, "\"session_id\":\"%s\"", id);
    expect_400(OA_CHAT, extra, "session_id", "1 to 128 characters");
    expect_400(OA_CHAT, "\"session_id\":\"\"", "session_id", NULL);
    expect_400(OA_CHAT, "\"session_id\":\"a b\"", "session_id", NULL);
    expect_400(OA_CHAT, "\"session_id\":\"a/b\"", "session_id", NULL);
    expect_400(OA_CHAT, "\"session_id\":\"caf\xc3\xa9\"", "session_id", NULL);
    expect_400(OA_CHAT, "\"session_id\":\"a\\nb\"", "session_id", NULL);
    expect_400(OA_CHAT, "\"session_id\":\".\"", "session_id", NULL);
    expect_400(OA_CHAT, "\"session_id\":\"..\"", "session_id", NULL);
}

/* The one validator every door uses (body, X-Session-ID, paths, file names). */
Test(openai, session_id_validator)
{
    cr_assert(oa_session_id_valid("a", 1));
    cr_assert(oa_session_id_valid("...", 3));
    cr_assert(oa_session_id_valid(".a", 2));
    cr_assert(oa_session_id_valid("A-z_0.9:x", 9));
    cr_assert_not(oa_session_id_valid(".", 1));
    cr_assert_not(oa_session_id_valid("..", 2));
    cr_assert_not(oa_session_id_valid("", 0));
    cr_assert_not(oa_session_id_valid(NULL, 0));
    cr_assert_not(oa_session_id_valid("a\0b", 3), "an embedded NUL must not cut the id short");
    cr_assert_not(oa_session_id_valid("a\r\nX", 4));
    cr_assert_not(oa_session_id_valid("a%00b", 5));
    cr_assert_not(oa_session_id_valid("\xff", 1));
    char id[OA_SESSION_ID_MAX + 2];
    memset(id, 'k', sizeof id);
    cr_assert(oa_session_id_valid(id, OA_SESSION_ID_MAX));
    cr_assert_not(oa_session_id_valid(id, OA_SESSION_ID_MAX + 1));
}

/* ------------------------------------------------------------------------ */
/* Required fields, prompts, messages                                        */
/* ------------------------------------------------------------------------ */

static void expect_body_400(oa_kind kind, const char *body, const char *param, const char *needle)
{
    oa_request r;
    oa_error e;
    cr_assert_eq(parse(kind, body, &r, &e), -1, "accepted: %s", body);
    cr_assert_eq(e.status, 400);
    cr_assert_str_eq(e.type, "invalid_request_error");
    cr_assert_str_eq(e.param, param, "body %s: param '%s' (%s)", body, e.param, e.message);
    if (needle)
        cr_assert(strstr(e.message, needle), "body %s: message '%s' lacks '%s'", body, e.message,
                  needle);
    oa_request_free(&r);
}

Test(openai, model_required)
{
    expect_body_400(OA_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}", "model",
                    "You must provide a model parameter.");
    expect_body_400(OA_COMPLETION, "{\"model\":null,\"prompt\":\"a\"}", "model", "model parameter");
    expect_body_400(OA_COMPLETION, "{}", "model", NULL);
}

Test(openai, prompt_forms)
{
    oa_request r;
    oa_error e;
    cr_assert_eq(parse(OA_COMPLETION, "{\"model\":\"m\",\"prompt\":[\"a\",\"\",\"\xe4\xbd\xa0\"]}", &r, &e), 0);
    cr_assert_eq(r.n_prompts, 3);
    cr_assert_str_eq(r.prompts[0], "a");
    cr_assert_str_eq(r.prompts[1], "");
    cr_assert_str_eq(r.prompts[2], "\xe4\xbd\xa0");
    oa_request_free(&r);
    cr_assert_eq(parse(OA_COMPLETION, "{\"model\":\"m\",\"prompt\":\"\"}", &r, &e), 0);
    cr_assert_eq(r.n_prompts, 1);
    cr_assert_str_eq(r.prompts[0], "");
    oa_request_free(&r);

    expect_body_400(OA_COMPLETION, "{\"model\":\"m\"}", "prompt", "Missing required parameter: 'prompt'.");
    expect_body_400(OA_COMPLETION, "{\"model\":\"m\",\"prompt\":[]}", "prompt", "empty array");
    cr_assert_eq(parse(OA_COMPLETION, "{\"model\":\"m\",\"prompt\":[1,2,3]}", &r, &e), 0);
    cr_assert_eq(r.n_prompts, 1);
    cr_assert_eq(r.prompt_n_ids[0], 3);
    cr_assert_eq(r.prompt_ids[0][2], 3);
    oa_request_free(&r);
    cr_assert_eq(parse(OA_COMPLETION, "{\"model\":\"m\",\"prompt\":[[1,2],[3]]}", &r, &e), 0);
    cr_assert_eq(r.n_prompts, 2);
    cr_assert_eq(r.prompt_n_ids[1], 1);
    oa_request_free(&r);
    expect_body_400(OA_COMPLETION, "{\"model\":\"m\",\"prompt\":[\"a\",7]}", "prompt",
                    "token ids");
    expect_body_400(OA_COMPLETION, "{\"model\":\"m\",\"prompt\":[1,-2]}", "prompt",
                    "non-negative");
}

Test(openai, messages_roles_and_content)
{
    oa_request r;
    oa_error e;
    const char *body =
        "{\"model\":\"m\",\"messages\":["
        "{\"role\":\"developer\",\"content\":\"be brief\"},"
        "{\"role\":\"system\",\"content\":[]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"one\"},{\"type\":\"text\",\"text\":\"two\"}]},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},"
        "{\"role\":\"assistant\"},"
        "{\"role\":\"user\",\"content\":\"\\u00e9\\ud83d\\ude00 \\\"q\\\"\"}]}";
    cr_assert_eq(parse(OA_CHAT, body, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_messages, 6);
    cr_assert_str_eq(r.messages[0].role, "system");
    cr_assert_str_eq(r.messages[0].content, "be brief");
    cr_assert_str_eq(r.messages[1].role, "system");
    cr_assert_str_eq(r.messages[1].content, "");
    cr_assert_str_eq(r.messages[2].role, "user");
    cr_assert_str_eq(r.messages[2].content, "one\ntwo");
    cr_assert_str_eq(r.messages[3].role, "assistant");
    cr_assert_str_eq(r.messages[3].content, "");
    cr_assert_str_eq(r.messages[4].content, "");
    cr_assert_str_eq(r.messages[5].content, "\xc3\xa9\xf0\x9f\x98\x80 \"q\"");
    oa_request_free(&r);

    expect_body_400(OA_CHAT, "{\"model\":\"m\"}", "messages", "Missing required parameter: 'messages'.");
    expect_body_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[]}", "messages", "empty array");
    expect_body_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"content\":\"a\"}]}", "messages[0].role",
                    "Missing required parameter: 'messages[0].role'.");
    expect_body_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"content\":\"a\"}]}",
                    "messages[0].tool_call_id", "Missing required parameter");
    expect_body_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"User\",\"content\":\"a\"}]}",
                    "messages[0].role", "Invalid value");
    expect_body_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", "messages[0].content",
                    "Missing required parameter: 'messages[0].content'.");
    expect_body_400(OA_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":null}]}",
                    "messages[0].content", "Missing required parameter");
    expect_body_400(OA_CHAT,
                    "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                    "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}",
                    "messages[0].content[1]", "'image_url' are not supported");
    expect_body_400(OA_CHAT,
                    "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"a\"}]}]}",
                    "messages[0].content[0]", "Missing required parameter: 'messages[0].content[0].type'.");
    expect_body_400(OA_CHAT,
                    "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
                    "messages[0].content[0]", "Missing required parameter: 'messages[0].content[0].text'.");
}

Test(openai, long_role_value_is_clipped_in_the_message)
{
    char body[4096];
    char role[2001];
    /* 2-byte characters, so a naive cut could split one. */
    for (int i = 0; i < 1000; i++)
        memcpy(role + 2 * i, "\xc3\xa9", 2);
    role[2000] = '\0';
    snprintf(body, sizeof body, "{\"model\":\"m\",\"messages\":[{\"role\":\"%s\",\"content\":\"a\"}]}", role);
    oa_request r;
    oa_error e;
    cr_assert_eq(parse(OA_CHAT, body, &r, &e), -1);
    cr_assert_str_eq(e.param, "messages[0].role");
    cr_assert(strlen(e.message) < sizeof e.message);
    json_t *s = json_string(e.message); /* NULL when not valid UTF-8 */
    cr_assert_not_null(s, "message is not valid UTF-8");
    json_decref(s);
    oa_request_free(&r);
}

/* ------------------------------------------------------------------------ */
/* Hostile and malformed bodies                                              */
/* ------------------------------------------------------------------------ */

Test(openai, malformed_json_reports_line_and_column)
{
    oa_request r;
    oa_error e;
    const char *body = "{\"model\":\"m\",\n  \"messages\": [}";
    cr_assert_eq(parse(OA_CHAT, body, &r, &e), -1);
    cr_assert_eq(e.status, 400);
    cr_assert_str_eq(e.type, "invalid_request_error");
    cr_assert_str_eq(e.param, "");
    cr_assert(strstr(e.message, "We could not parse the JSON body of your request"), "%s", e.message);
    cr_assert(strstr(e.message, "line 2"), "%s", e.message);
    cr_assert(strstr(e.message, "column"), "%s", e.message);
    oa_request_free(&r);

    static const char *const bad[] = {"", "   ", "{", "{\"model\":", "{\"model\":\"m\",}",
                                      "{'model':'m'}", "{\"model\":\"m\"} trailing", "nul",
                                      "{\"model\":\"\xff\"}", /* invalid UTF-8 */
                                      "{\"model\":\"a\\u0000b\"}", /* NUL in a string */
                                      "{\"model\":\"\\ud800\"}", /* lone surrogate */
                                      "{\"temperature\":NaN}", "{\"max_tokens\":1e400}",
                                      "{\"max_tokens\":99999999999999999999999}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(parse(OA_CHAT, bad[i], &r, &e), -1, "accepted: %s", bad[i]);
        cr_assert_eq(e.status, 400, "%s", bad[i]);
        cr_assert(strstr(e.message, "line"), "%s -> %s", bad[i], e.message);
        oa_request_free(&r);
    }
}

Test(openai, body_length_is_respected)
{
    const char *body = "{\"model\":\"m\",\"prompt\":\"a\"}GARBAGE";
    oa_request r;
    oa_error e;
    cr_assert_eq(oa_request_parse(OA_COMPLETION, body, strlen(body) - 7, &r, &e), 0, "%s", e.message);
    oa_request_free(&r);
    cr_assert_eq(oa_request_parse(OA_COMPLETION, body, 10, &r, &e), -1);
    cr_assert_eq(oa_request_parse(OA_COMPLETION, NULL, 0, &r, &e), -1);
    cr_assert_eq(e.status, 400);
}

Test(openai, top_level_not_an_object)
{
    expect_body_400(OA_CHAT, "[1,2]", "", "expected a JSON object, but got an array instead");
    expect_body_400(OA_CHAT, "[]", "", "expected a JSON object");
}

static char *nested(size_t depth)
{
    const char *head = "{\"model\":\"m\",\"prompt\":\"a\",\"deep\":";
    size_t hl = strlen(head);
    char *b = malloc(hl + 2 * depth + 2);
    cr_assert_not_null(b);
    memcpy(b, head, hl);
    memset(b + hl, '[', depth);
    memset(b + hl + depth, ']', depth);
    b[hl + 2 * depth] = '}';
    b[hl + 2 * depth + 1] = '\0';
    return b;
}

Test(openai, deep_nesting)
{
    oa_request r;
    oa_error e;
    char *ok = nested(1000); /* an ignored field, within the parser's depth cap */
    cr_assert_eq(parse(OA_COMPLETION, ok, &r, &e), 0, "%s", e.message);
    oa_request_free(&r);
    free(ok);
    char *deep = nested(200000);
    cr_assert_eq(parse(OA_COMPLETION, deep, &r, &e), -1);
    cr_assert_eq(e.status, 400);
    cr_assert(strstr(e.message, "line 1"), "%s", e.message);
    oa_request_free(&r);
    free(deep);
}

Test(openai, large_body)
{
    /* 4 MB of text in one message survives intact. */
    size_t n = 4u << 20;
    const char *head = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"";
    const char *tail = "\"}]}";
    size_t hl = strlen(head), tl = strlen(tail);
    char *b = malloc(hl + n + tl + 1);
    cr_assert_not_null(b);
    memcpy(b, head, hl);
    memset(b + hl, 'x', n);
    memcpy(b + hl + n, tail, tl + 1);
    oa_request r;
    oa_error e;
    cr_assert_eq(parse(OA_CHAT, b, &r, &e), 0);
    cr_assert_eq(strlen(r.messages[0].content), n);
    oa_request_free(&r);
    free(b);
}

Test(openai, free_is_idempotent)
{
    oa_request r;
    memset(&r, 0, sizeof r);
    oa_request_free(&r);
    oa_request_free(NULL);
    expect_ok(OA_CHAT, "\"user\":\"u\",\"stop\":\"x\"", &r);
    oa_request_free(&r);
    oa_request_free(&r);
    cr_assert_null(r.model);
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

Test(openai, error_json_shape)
{
    oa_error e;
    cr_assert_eq(oa_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                              "The model '%s' does not exist", "x\"y"), 404);
    char *s = oa_error_json(&e);
    json_t *j = load(s);
    static const char *const top[] = {"error", NULL};
    static const char *const keys[] = {"message", "type", "param", "code", NULL};
    expect_keys(j, top);
    json_t *err = json_object_get(j, "error");
    expect_keys(err, keys);
    expect_str(err, "message", "The model 'x\"y' does not exist");
    expect_str(err, "type", "invalid_request_error");
    expect_str(err, "param", "model");
    expect_str(err, "code", "model_not_found");
    json_decref(j);
    free(s);

    oa_error_set(&e, 500, "server_error", NULL, NULL, "boom");
    s = oa_error_json(&e);
    j = load(s);
    err = json_object_get(j, "error");
    expect_null(err, "param");
    expect_null(err, "code");
    expect_str(err, "message", "boom");
    cr_assert_eq(e.status, 500);
    json_decref(j);
    free(s);
}

Test(openai, error_message_truncated_on_a_character_boundary)
{
    char big[1200];
    for (int i = 0; i < 399; i++) /* 3-byte characters: 1197 bytes */
        memcpy(big + 3 * i, "\xe4\xbd\xa0", 3);
    big[1197] = '\0';
    for (int shift = 0; shift < 3; shift++) {
        oa_error e;
        oa_error_set(&e, 400, "invalid_request_error", NULL, NULL, "%.*s%s", shift, "ab", big);
        size_t len = strlen(e.message);
        cr_assert(len < sizeof e.message);
        cr_assert_eq((len - (size_t)shift) % 3, 0, "cut inside a character (shift %d, len %zu)",
                     shift, len);
        json_t *v = json_string(e.message);
        cr_assert_not_null(v);
        json_decref(v);
    }
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                 */
/* ------------------------------------------------------------------------ */

Test(openai, chat_response_fields_in_order)
{
    oa_choice ch[2] = {{"Hello \"world\"\n\xe4\xbd\xa0\xf0\x9f\x98\x80", 21, OA_FINISH_STOP},
                       {"cut", 3, OA_FINISH_LENGTH}};
    oa_usage u = {12, 5, 8};
    char *s = oa_response_json(OA_CHAT, "chatcmpl-abc", 1764480000, "rwkv", ch, 2, &u, NULL);
    json_t *j = load(s);
    static const char *const top[] = {"id", "object", "created", "model", "choices", "usage", NULL};
    expect_keys(j, top);
    expect_str(j, "id", "chatcmpl-abc");
    expect_str(j, "object", "chat.completion");
    expect_int(j, "created", 1764480000);
    expect_str(j, "model", "rwkv");
    json_t *choices = json_object_get(j, "choices");
    cr_assert_eq(json_array_size(choices), 2);
    static const char *const ck[] = {"index", "message", "logprobs", "finish_reason", NULL};
    static const char *const mk[] = {"role", "content", NULL};
    for (size_t i = 0; i < 2; i++) {
        json_t *c = json_array_get(choices, i);
        expect_keys(c, ck);
        expect_int(c, "index", (json_int_t)i);
        expect_null(c, "logprobs");
        json_t *m = json_object_get(c, "message");
        expect_keys(m, mk);
        expect_str(m, "role", "assistant");
    }
    expect_str(json_object_get(json_array_get(choices, 0), "message"), "content",
               "Hello \"world\"\n\xe4\xbd\xa0\xf0\x9f\x98\x80");
    expect_str(json_array_get(choices, 0), "finish_reason", "stop");
    expect_str(json_object_get(json_array_get(choices, 1), "message"), "content", "cut");
    expect_str(json_array_get(choices, 1), "finish_reason", "length");
    expect_usage(json_object_get(j, "usage"), 12, 5, 8);
    json_decref(j);
    free(s);
}

Test(openai, completion_response_fields_in_order)
{
    oa_choice ch[3] = {{"a", 1, OA_FINISH_LENGTH}, {"", 0, OA_FINISH_STOP}, {NULL, 0, OA_FINISH_STOP}};
    oa_usage u = {3, 4, 0};
    char *s = oa_response_json(OA_COMPLETION, "cmpl-1", 5, "m", ch, 3, &u, NULL);
    json_t *j = load(s);
    static const char *const top[] = {"id", "object", "created", "model", "choices", "usage", NULL};
    expect_keys(j, top);
    expect_str(j, "object", "text_completion");
    expect_str(j, "id", "cmpl-1");
    json_t *choices = json_object_get(j, "choices");
    cr_assert_eq(json_array_size(choices), 3);
    static const char *const ck[] = {"text", "index", "logprobs", "finish_reason", NULL};
    for (size_t i = 0; i < 3; i++) {
        json_t *c = json_array_get(choices, i);
        expect_keys(c, ck);
        expect_int(c, "index", (json_int_t)i);
        expect_null(c, "logprobs");
    }
    expect_str(json_array_get(choices, 0), "text", "a");
    expect_str(json_array_get(choices, 0), "finish_reason", "length");
    expect_str(json_array_get(choices, 1), "text", "");
    expect_str(json_array_get(choices, 2), "text", "");
    expect_str(json_array_get(choices, 2), "finish_reason", "stop");
    expect_usage(json_object_get(j, "usage"), 3, 4, 0);
    json_decref(j);
    free(s);
}

Test(openai, response_text_escaping_and_length)
{
    /* Every control character, quotes, backslash, DEL, and text_len shorter
     * than the string: only text_len bytes are sent. */
    char text[64];
    size_t n = 0;
    for (int c = 1; c < 0x20; c++)
        text[n++] = (char)c;
    text[n++] = '"';
    text[n++] = '\\';
    text[n++] = '/';
    text[n++] = 0x7f;
    memcpy(text + n, "TAIL", 5);
    oa_choice ch = {text, n, OA_FINISH_STOP};
    char *s = oa_response_json(OA_COMPLETION, "cmpl-1", 1, "m", &ch, 1, NULL, NULL);
    cr_assert_null(strchr(s, '\n'), "raw newline in JSON (breaks SSE framing)");
    json_t *j = load(s);
    json_t *t = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text");
    cr_assert_eq(json_string_length(t), n);
    cr_assert(memcmp(json_string_value(t), text, n) == 0);
    cr_assert_null(json_object_get(j, "usage"), "usage NULL must be omitted");
    json_decref(j);
    free(s);
}

Test(openai, invalid_utf8_becomes_replacement_character)
{
    const char bad[] = "a\xff" "b\xe4\xbd" "c\xc0\xaf" "d\xed\xa0\x80" "e\xf4\x90\x80\x80" "f\xe4";
    oa_choice ch = {bad, sizeof bad - 1, OA_FINISH_STOP};
    char *s = oa_response_json(OA_CHAT, "x", 1, "m\xfe", &ch, 1, NULL, NULL);
    json_t *j = load(s); /* jansson rejects invalid UTF-8: loading proves it is valid */
    expect_str(j, "model", "m\xef\xbf\xbd");
    const char *content = json_string_value(
        json_object_get(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"),
                        "content"));
    cr_assert_not_null(content);
    cr_assert_eq(content[0], 'a');
    cr_assert(strstr(content, "\xef\xbf\xbd" "b"));
    cr_assert(content[strlen(content) - 1] != 'f', "the truncated last character was dropped");
    json_decref(j);
    free(s);
}

Test(openai, response_extra_members)
{
    oa_choice ch = {"x", 1, OA_FINISH_STOP};
    oa_usage u = {1, 1, 0};
    char *s = oa_response_json(OA_CHAT, "chatcmpl-1", 1, "m", &ch, 1, &u,
                               " {\"session_id\":\"s1\",\"n\":[1,{\"a\":null}]} ");
    json_t *j = load(s);
    static const char *const top[] = {"id", "object", "created", "model", "choices", "usage",
                                      "session_id", "n", NULL};
    expect_keys(j, top);
    expect_str(j, "session_id", "s1");
    cr_assert_eq(json_array_size(json_object_get(j, "n")), 2);
    json_decref(j);
    free(s);
    cr_assert_null(oa_response_json(OA_CHAT, "c", 1, "m", &ch, 1, &u, "[1]"));
    cr_assert_null(oa_response_json(OA_CHAT, "c", 1, "m", &ch, 1, &u, "{bad"));
    s = oa_response_json(OA_CHAT, "c", 1, "m", &ch, 1, &u, "{}");
    j = load(s);
    cr_assert_eq(json_object_size(j), 6);
    json_decref(j);
    free(s);
}

/* ------------------------------------------------------------------------ */
/* Streaming chunks                                                          */
/* ------------------------------------------------------------------------ */

static json_t *chunk_choice(json_t *j)
{
    json_t *choices = json_object_get(j, "choices");
    cr_assert_eq(json_array_size(choices), 1);
    return json_array_get(choices, 0);
}

Test(openai, chat_chunks)
{
    static const char *const top[] = {"id", "object", "created", "model", "choices", NULL};
    static const char *const top_u[] = {"id", "object", "created", "model", "choices", "usage", NULL};
    static const char *const ck[] = {"index", "delta", "logprobs", "finish_reason", NULL};
    static const char *const role_keys[] = {"role", "content", NULL};
    static const char *const content_keys[] = {"content", NULL};
    static const char *const no_keys[] = {NULL};

    /* First chunk: role and empty content. */
    char *s = oa_chunk_json(OA_CHAT, "chatcmpl-9", 77, "m", 0, 1, "", 0, OA_FINISH_NONE, 0);
    json_t *j = load(s);
    expect_keys(j, top);
    expect_str(j, "id", "chatcmpl-9");
    expect_str(j, "object", "chat.completion.chunk");
    expect_int(j, "created", 77);
    expect_str(j, "model", "m");
    json_t *c = chunk_choice(j);
    expect_keys(c, ck);
    expect_int(c, "index", 0);
    expect_null(c, "logprobs");
    expect_null(c, "finish_reason");
    json_t *d = json_object_get(c, "delta");
    expect_keys(d, role_keys);
    expect_str(d, "role", "assistant");
    expect_str(d, "content", "");
    json_decref(j);
    free(s);

    /* A content chunk for choice 2, with include_usage: "usage": null. */
    s = oa_chunk_json(OA_CHAT, "chatcmpl-9", 77, "m", 2, 0, "Hel\"lo", 6, OA_FINISH_NONE, 1);
    j = load(s);
    expect_keys(j, top_u);
    expect_null(j, "usage");
    c = chunk_choice(j);
    expect_int(c, "index", 2);
    d = json_object_get(c, "delta");
    expect_keys(d, content_keys);
    expect_str(d, "content", "Hel\"lo");
    expect_null(c, "finish_reason");
    json_decref(j);
    free(s);

    /* The finishing chunk: empty delta. */
    s = oa_chunk_json(OA_CHAT, "chatcmpl-9", 77, "m", 0, 0, NULL, 0, OA_FINISH_STOP, 0);
    j = load(s);
    c = chunk_choice(j);
    expect_keys(json_object_get(c, "delta"), no_keys);
    expect_str(c, "finish_reason", "stop");
    json_decref(j);
    free(s);

    /* Text and finish together keep the text. */
    s = oa_chunk_json(OA_CHAT, "chatcmpl-9", 77, "m", 0, 0, "end", 3, OA_FINISH_LENGTH, 0);
    j = load(s);
    c = chunk_choice(j);
    expect_str(json_object_get(c, "delta"), "content", "end");
    expect_str(c, "finish_reason", "length");
    json_decref(j);
    free(s);
}

Test(openai, completion_chunks)
{
    static const char *const ck[] = {"text", "index", "logprobs", "finish_reason", NULL};
    char *s = oa_chunk_json(OA_COMPLETION, "cmpl-3", 9, "m", 1, 0, "\xe4\xbd\xa0!", 4,
                            OA_FINISH_NONE, 0);
    json_t *j = load(s);
    expect_str(j, "object", "text_completion");
    expect_str(j, "id", "cmpl-3");
    cr_assert_null(json_object_get(j, "usage"));
    json_t *c = chunk_choice(j);
    expect_keys(c, ck);
    expect_str(c, "text", "\xe4\xbd\xa0!");
    expect_int(c, "index", 1);
    expect_null(c, "finish_reason");
    cr_assert_null(json_object_get(c, "delta"));
    json_decref(j);
    free(s);

    s = oa_chunk_json(OA_COMPLETION, "cmpl-3", 9, "m", 0, 1, "", 0, OA_FINISH_LENGTH, 1);
    j = load(s);
    expect_null(j, "usage");
    c = chunk_choice(j);
    expect_str(c, "text", "");
    expect_str(c, "finish_reason", "length");
    json_decref(j);
    free(s);
}

Test(openai, usage_chunk)
{
    static const char *const top[] = {"id", "object", "created", "model", "choices", "usage", NULL};
    oa_usage u = {10, 20, 4};
    for (int k = 0; k < 2; k++) {
        oa_kind kind = k ? OA_CHAT : OA_COMPLETION;
        char *s = oa_usage_chunk_json(kind, "id-1", 123, "m", &u);
        json_t *j = load(s);
        expect_keys(j, top);
        expect_str(j, "object", k ? "chat.completion.chunk" : "text_completion");
        expect_str(j, "id", "id-1");
        expect_int(j, "created", 123);
        cr_assert(json_is_array(json_object_get(j, "choices")));
        cr_assert_eq(json_array_size(json_object_get(j, "choices")), 0);
        expect_usage(json_object_get(j, "usage"), 10, 20, 4);
        json_decref(j);
        free(s);
    }
    char *s = oa_usage_chunk_json(OA_CHAT, "id-1", 123, "m", NULL);
    json_t *j = load(s);
    expect_usage(json_object_get(j, "usage"), 0, 0, 0);
    json_decref(j);
    free(s);
}

/* ------------------------------------------------------------------------ */
/* Models                                                                    */
/* ------------------------------------------------------------------------ */

Test(openai, models_list)
{
    const char *names[] = {"rwkv7-g1", "other \"q\""};
    char *s = oa_models_json(names, 2, 1700000000, "metastate", NULL, 0);
    json_t *j = load(s);
    static const char *const top[] = {"object", "data", NULL};
    static const char *const mk[] = {"id", "object", "created", "owned_by", NULL};
    expect_keys(j, top);
    expect_str(j, "object", "list");
    json_t *data = json_object_get(j, "data");
    cr_assert_eq(json_array_size(data), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *m = json_array_get(data, i);
        expect_keys(m, mk);
        expect_str(m, "id", names[i]);
        expect_str(m, "object", "model");
        expect_int(m, "created", 1700000000);
        expect_str(m, "owned_by", "metastate");
    }
    json_decref(j);
    free(s);

    s = oa_models_json(NULL, 0, 0, "x", NULL, 0);
    j = load(s);
    cr_assert_eq(json_array_size(json_object_get(j, "data")), 0);
    json_decref(j);
    free(s);

    /* initial states: listed in every entry */
    const char *states[] = {"chat", "role-\"x\""};
    s = oa_models_json(names, 1, 1, "metastate", states, 2);
    j = load(s);
    json_t *st = json_object_get(json_array_get(json_object_get(j, "data"), 0), "initial_states");
    cr_assert(json_is_array(st) && json_array_size(st) == 2, "%s", s);
    cr_assert_str_eq(json_string_value(json_array_get(st, 0)), "chat");
    cr_assert_str_eq(json_string_value(json_array_get(st, 1)), states[1]);
    json_decref(j);
    free(s);
}
