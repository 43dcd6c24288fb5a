/*
 * params_unsupported.c - known OpenAI parameters the server does not
 * implement (see params_unsupported.h). One table, so adding a parameter
 * OpenAI introduces is one line, and the README's list can be checked
 * against it.
 */
#include "params_unsupported.h"

#include <string.h>

typedef enum {
    ANY_STRING,   /* no effect on the output: type-checked, accepted */
    ANY_OBJECT,   /* likewise */
    ANY_INTEGER,  /* likewise */
    ANY_BOOLEAN,  /* read elsewhere; type-checked here */
    NEVER,        /* any value other than null asks for what we lack */
    EMPTY_STRING, /* "" asks for nothing */
    FALSE_ONLY,   /* false asks for nothing */
    TEXT_ONLY,    /* ["text"]: the only output modality */
    ZERO_ONLY,    /* 0 asks for nothing */
} rule;

typedef struct {
    const char *name;
    unsigned endpoints; /* oa_endpoint bits */
    rule rule;
    const char *why; /* completes "... with this server: " */
} known_param;

#define C OA_EP_COMPLETIONS
#define H OA_EP_CHAT
#define R OA_EP_RESPONSES
static const known_param params[] = {
    {"suffix", C, EMPTY_STRING,
     "RWKV models write left to right and cannot fill in text before a suffix"},
    {"functions", H, NEVER, "send the same definitions in 'tools' as {\"type\": \"function\", "
                            "\"function\": ...}"},
    {"function_call", H, NEVER, "use 'tool_choice'"},
    {"audio", H, NEVER, "the model generates text only"},
    {"modalities", H, TEXT_ONLY, "the model generates text only"},
    {"reasoning_effort", H, NEVER, "the model has no reasoning effort setting"},
    {"verbosity", H, NEVER, "the model has no verbosity setting"},
    {"web_search_options", H | R, NEVER, "the server has no web search"},
    {"store", H, FALSE_ONLY,
     "chat completions are not kept for retrieval (the Responses API, /v1/responses, keeps "
     "responses for previous_response_id)"},
    {"store", R, ANY_BOOLEAN, NULL}, /* false: server/http.c keeps no copy */
    {"stream", R, ANY_BOOLEAN, NULL},
    {"background", R, FALSE_ONLY, "responses run while the request waits for them"},
    {"conversation", R, NEVER, "the server has no Conversations API; use previous_response_id"},
    {"prompt", R, NEVER, "the server has no stored prompt templates; send 'instructions'"},
    {"top_logprobs", R, ZERO_ONLY, "the Responses API here returns no log probabilities "
                                   "(chat completions do, with 'logprobs')"},
    {"metadata", H | R, ANY_OBJECT, NULL},
    {"service_tier", H | R, ANY_STRING, NULL},
    {"prompt_cache_key", H | R, ANY_STRING, NULL},
    {"safety_identifier", H | R, ANY_STRING, NULL},
    {"prediction", H, ANY_OBJECT, NULL}, /* predicted outputs only make a reply faster */
    {"max_tool_calls", R, ANY_INTEGER, NULL}, /* counts built-in tools, of which there are none */
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

static int bad_type(oa_error *e, const char *param, const char *expected)
{
    oa_error_set(e, 400, "invalid_request_error", param, NULL,
                 "Invalid type for '%s': expected %s.", param, expected);
    return -1;
}

static int text_only(json_t *v)
{
    size_t i;
    json_t *m;
    if (!json_is_array(v))
        return 0;
    json_array_foreach (v, i, m)
        if (!json_is_string(m) || strcmp(json_string_value(m), "text"))
            return 0;
    return 1;
}

static int check_param(const known_param *p, json_t *v, oa_error *e)
{
    switch (p->rule) {
    case ANY_STRING: return json_is_string(v) ? 0 : bad_type(e, p->name, "a string");
    case ANY_OBJECT: return json_is_object(v) ? 0 : bad_type(e, p->name, "an object");
    case ANY_INTEGER: return json_is_integer(v) ? 0 : bad_type(e, p->name, "an integer");
    case ANY_BOOLEAN: return json_is_boolean(v) ? 0 : bad_type(e, p->name, "a boolean");
    case NEVER: break;
    case EMPTY_STRING:
        if (!json_is_string(v))
            return bad_type(e, p->name, "a string");
        if (!json_string_length(v))
            return 0;
        break;
    case FALSE_ONLY:
        if (!json_is_boolean(v))
            return bad_type(e, p->name, "a boolean");
        if (json_is_false(v))
            return 0;
        break;
    case TEXT_ONLY:
        if (!json_is_array(v))
            return bad_type(e, p->name, "an array of strings");
        if (text_only(v))
            return 0;
        break;
    case ZERO_ONLY:
        if (!json_is_integer(v))
            return bad_type(e, p->name, "an integer");
        if (!json_integer_value(v))
            return 0;
        break;
    }
    return unsupported(e, p->name, p->why);
}

/* best_of candidates of which the n best are returned: equal to n is plain
 * sampling; more would need the candidates ranked, which the server does not
 * do (the parameter exists only on the legacy completions endpoint). */
static int check_best_of(json_t *v, int n, oa_error *e)
{
    if (!json_is_integer(v))
        return bad_type(e, "best_of", "an integer");
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

/* Responses' include: output the server does not make is absent anyway,
 * except log probabilities, which it does not return there. */
static int check_include(json_t *v, oa_error *e)
{
    size_t i;
    json_t *m;
    if (!json_is_array(v))
        return bad_type(e, "include", "an array of strings");
    json_array_foreach (v, i, m) {
        if (!json_is_string(m))
            return bad_type(e, "include", "an array of strings");
        if (!strcmp(json_string_value(m), "message.output_text.logprobs"))
            return unsupported(e, "include",
                               "the Responses API here returns no log probabilities (chat "
                               "completions do, with 'logprobs')");
    }
    return 0;
}

/* Responses' reasoning: {"effort": ..., "summary": ...}; only nulls ask for
 * nothing. */
static int check_reasoning(json_t *v, oa_error *e)
{
    if (!json_is_object(v))
        return bad_type(e, "reasoning", "an object");
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
