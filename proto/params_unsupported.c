/*
 * params_unsupported.c - known OpenAI parameters the server does not
 * implement (see params_unsupported.h). One table, so adding a parameter
 * OpenAI introduces is one line, and docs/API.md's list can be checked
 * against it.
 */
#include "params_unsupported.h"

#include <string.h>

/* A parameter's value type, and which of its values ask for nothing. */
typedef struct {
    int (*type_ok)(const json_t *v);
    const char *type_name; /* for "expected ..." */
    int (*asks_nothing)(const json_t *v); /* NULL: every value (no effect on the output) */
} rule;

static int is_string(const json_t *v) { return json_is_string(v); }
static int is_object(const json_t *v) { return json_is_object(v); }
static int is_integer(const json_t *v) { return json_is_integer(v); }
static int is_boolean(const json_t *v) { return json_is_boolean(v); }
static int is_array(const json_t *v) { return json_is_array(v); }
static int is_any(const json_t *v) { return v != NULL; }
static int never(const json_t *v) { return v == NULL; }
static int is_empty(const json_t *v) { return json_string_length(v) == 0; }
static int is_false(const json_t *v) { return json_is_false(v); }
static int is_text_only(const json_t *v)
{
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *m = json_array_get(v, i);
        if (!json_is_string(m) || strcmp(json_string_value(m), "text"))
            return 0;
    }
    return 1;
}

static const rule ANY_STRING = {is_string, "a string", NULL};
static const rule ANY_OBJECT = {is_object, "an object", NULL};
static const rule ANY_INTEGER = {is_integer, "an integer", NULL};
static const rule ANY_BOOLEAN = {is_boolean, "a boolean", NULL}; /* read elsewhere */
static const rule NEVER = {is_any, "", never}; /* any value but null asks for what we lack */
static const rule EMPTY_STRING = {is_string, "a string", is_empty};
static const rule FALSE_ONLY = {is_boolean, "a boolean", is_false};
static const rule TEXT_ONLY = {is_array, "an array of strings", is_text_only}; /* ["text"] */

typedef struct {
    const char *name;
    unsigned endpoints; /* oa_endpoint bits */
    const rule *rule;
    const char *why; /* completes "... with this server: " */
} known_param;

#define C OA_EP_COMPLETIONS
#define H OA_EP_CHAT
#define R OA_EP_RESPONSES
static const known_param params[] = {
    {"suffix", C, &EMPTY_STRING,
     "RWKV models write left to right and cannot fill in text before a suffix"},
    {"functions", H, &NEVER, "send the same definitions in 'tools' as {\"type\": \"function\", "
                            "\"function\": ...}"},
    {"function_call", H, &NEVER, "use 'tool_choice'"},
    {"audio", H, &NEVER, "the model generates text only"},
    {"modalities", H, &TEXT_ONLY, "the model generates text only"},
    {"reasoning_effort", H, &NEVER, "the model has no reasoning effort setting"},
    {"verbosity", H, &NEVER, "the model has no verbosity setting"},
    {"web_search_options", H | R, &NEVER, "the server has no web search"},
    {"store", H, &FALSE_ONLY,
     "chat completions are not kept for retrieval (the Responses API, /v1/responses, keeps "
     "responses for previous_response_id)"},
    {"store", R, &ANY_BOOLEAN, NULL}, /* false: server/http.c keeps no copy */
    {"stream", R, &ANY_BOOLEAN, NULL},
    {"background", R, &FALSE_ONLY, "responses run while the request waits for them"},
    {"conversation", R, &NEVER, "the server has no Conversations API; use previous_response_id"},
    {"prompt", R, &NEVER, "the server has no stored prompt templates; send 'instructions'"},
    {"metadata", H | R, &ANY_OBJECT, NULL},
    {"service_tier", H | R, &ANY_STRING, NULL},
    {"prompt_cache_key", H | R, &ANY_STRING, NULL},
    {"prompt_cache_retention", H | R, &ANY_STRING, NULL}, /* a session's state is kept anyway */
    {"safety_identifier", H | R, &ANY_STRING, NULL},
    {"prediction", H, &ANY_OBJECT, NULL}, /* predicted outputs only make a reply faster */
    {"max_tool_calls", R, &ANY_INTEGER, NULL}, /* counts built-in tools, of which there are none */
};
#undef C
#undef H
#undef R

static int unsupported(oa_error *e, const char *param, const char *why)
{
    oa_error_set(e, 400, "invalid_request_error", param, "unsupported_parameter",
                 "Unsupported parameter: '%s' is not supported with this server: %s.", param,
                 why);
    return -1;
}

static int check_param(const known_param *p, json_t *v, oa_error *e)
{
    if (!p->rule->type_ok(v))
        return oa_type_err(e, p->name, p->rule->type_name, v);
    if (!p->rule->asks_nothing || p->rule->asks_nothing(v))
        return 0;
    return unsupported(e, p->name, p->why);
}

/* best_of candidates of which the n best are returned: equal to n is plain
 * sampling; more would need the candidates ranked, which the server does not
 * do (the parameter exists only on the legacy completions endpoint). */
static int check_best_of(json_t *v, int n, oa_error *e)
{
    if (!json_is_integer(v))
        return oa_type_err(e, "best_of", "an integer", v);
    const json_int_t b = json_integer_value(v);
    if (b < n || b < 1) {
        oa_error_set(e, 400, "invalid_request_error", "best_of", NULL,
                     "Invalid 'best_of': it must be at least n (%d), but got %lld.", n,
                     (long long)b);
        return -1;
    }
    if (b > n) {
        oa_error_set(e, 400, "invalid_request_error", "best_of", "unsupported_value",
                     "Unsupported value: 'best_of' above n is not supported with this server: "
                     "set it to n (%d) or leave it out, and rank choices yourself with "
                     "'logprobs'.",
                     n);
        return -1;
    }
    return 0;
}

/* Responses' include: output the server does not make is absent anyway;
 * message.output_text.logprobs is read by resp_to_chat. */
static int check_include(json_t *v, oa_error *e)
{
    size_t i;
    json_t *m;
    if (!json_is_array(v))
        return oa_type_err(e, "include", "an array of strings", v);
    json_array_foreach (v, i, m) {
        if (!json_is_string(m))
            return oa_type_err(e, "include", "an array of strings", m);
    }
    return 0;
}

/* Responses' reasoning: {"effort": ..., "summary": ...}; only nulls ask for
 * nothing. */
static int check_reasoning(json_t *v, oa_error *e)
{
    if (!json_is_object(v))
        return oa_type_err(e, "reasoning", "an object", v);
    const char *k;
    json_t *m;
    json_object_foreach (v, k, m)
        if (!json_is_null(m))
            return unsupported(e, "reasoning", "the model has no reasoning settings");
    return 0;
}

int oa_check_unsupported(oa_endpoint ep, json_t *root, int n, oa_error *e)
{
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        json_t *v = json_object_get(root, params[i].name);
        if ((params[i].endpoints & ep) && v && !json_is_null(v) && check_param(&params[i], v, e))
            return -1;
    }
    json_t *v;
    if (ep == OA_EP_COMPLETIONS && (v = json_object_get(root, "best_of")) && !json_is_null(v))
        return check_best_of(v, n, e);
    if (ep == OA_EP_RESPONSES) {
        if ((v = json_object_get(root, "include")) && !json_is_null(v) && check_include(v, e))
            return -1;
        if ((v = json_object_get(root, "reasoning")) && !json_is_null(v) && check_reasoning(v, e))
            return -1;
        v = json_object_get(root, "truncation");
        if (v && !json_is_null(v) &&
            (!json_is_string(v) ||
             (strcmp(json_string_value(v), "auto") && strcmp(json_string_value(v), "disabled")))) {
            /* Either is honoured: a recurrent state never outgrows a context window. */
            oa_error_set(e, 400, "invalid_request_error", "truncation", NULL,
                         "Invalid 'truncation': expected 'auto' or 'disabled'.");
            return -1;
        }
        v = json_object_get(root, "text");
        if (json_is_object(v) && (v = json_object_get(v, "verbosity")) && !json_is_null(v))
            return unsupported(e, "text.verbosity", "the model has no verbosity setting");
    }
    return 0;
}
