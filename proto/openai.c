/*
 * openai.c - OpenAI request bodies in, response/chunk/error JSON out.
 *
 * Design. Requests are parsed with jansson (it validates UTF-8, rejects NUL
 * in strings, caps nesting at JSON_PARSER_MAX_DEPTH and refuses integers that
 * overflow, so hostile bodies end as a 400 with line/column), then copied
 * field by field into an oa_request that owns plain C strings: the server
 * never touches jansson. Validation follows OpenAI's observable behaviour:
 * null means absent, unknown fields are ignored (known ones the server does
 * not implement are refused: params_unsupported.c), and each error names the
 * field in `param` with OpenAI-like wording so SDK users see familiar text.
 *
 * Output goes through a small append-only writer instead of jansson: chunks
 * are produced once per generated token, field order must match OPENAI.md
 * exactly, and generated text must never make serialization fail, so invalid
 * UTF-8 (which jansson would refuse) is replaced by U+FFFD rather than
 * dropping the event. Nothing here keeps state between calls.
 */
#include "openai.h"
#include "agent_request.h"
#include "params_unsupported.h"

#include "json_write.h"

#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================ UTF-8 utils */

/* Largest length <= max that does not end inside a UTF-8 sequence, so a
 * truncated message stays valid text. */
static size_t utf8_clip(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t k = max;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    return k;
}

/* Copies src into dst[cap], truncated on a character boundary. */
static void copy_clipped(char *dst, size_t cap, const char *src)
{
    if (!src) {
        dst[0] = '\0';
        return;
    }
    size_t n = utf8_clip(src, strlen(src), cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ================================================================= errors */

int oa_error_set(oa_error *e, int status, const char *type, const char *param,
                 const char *code, const char *fmt, ...)
{
    e->status = status;
    copy_clipped(e->type, sizeof e->type, type);
    copy_clipped(e->param, sizeof e->param, param);
    copy_clipped(e->code, sizeof e->code, code);
    /* Formatted a little past the limit so the clip can see whether the
     * cut would fall inside a character. */
    char tmp[sizeof e->message + 4];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1;
    len = utf8_clip(tmp, len, sizeof e->message - 1);
    memcpy(e->message, tmp, len);
    e->message[len] = '\0';
    return status;
}

char *oa_error_json(const oa_error *e)
{
    jbuf b = {0};
    jb_puts(&b, "{\"error\":{\"message\":");
    jb_cstr(&b, e->message);
    jb_puts(&b, ",\"type\":");
    jb_cstr(&b, e->type);
    jb_puts(&b, ",\"param\":");
    jb_cstr(&b, e->param[0] ? e->param : NULL);
    jb_puts(&b, ",\"code\":");
    jb_cstr(&b, e->code[0] ? e->code : NULL);
    jb_puts(&b, "}}");
    return jb_finish(&b);
}

/* =============================================================== requests */

int oa_bad(oa_error *e, const char *param, const char *fmt, ...)
{
    char msg[1024]; /* larger than e->message: oa_error_set clips on a char boundary */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    oa_error_set(e, 400, "invalid_request_error", param, NULL, "%s", msg);
    return -1;
}

int oa_nomem(oa_error *e)
{
    oa_error_set(e, 500, "server_error", NULL, NULL, "The server ran out of memory.");
    return -1;
}

/* How OpenAI names JSON types in "got ... instead". */
static const char *got_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a decimal number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

int oa_type_err(oa_error *e, const char *param, const char *expected, const json_t *v)
{
    return oa_bad(e, param, "Invalid type for '%s': expected %s, but got %s instead.", param,
               expected, got_name(v));
}

/* The value of key, or NULL when absent or JSON null (both mean "not given"). */
static json_t *opt(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static char *dup_json_str(const json_t *v)
{
    return dupn(json_string_value(v), json_string_length(v));
}

/* Integer field in [lo, hi]; returns 1 when present, 0 when absent, -1 on error. */
static int get_int(json_t *root, const char *key, json_int_t lo, json_int_t hi,
                   json_int_t *out, oa_error *e)
{
    json_t *v = opt(root, key);
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return oa_type_err(e, key, "an integer", v);
    json_int_t x = json_integer_value(v);
    if (x < lo)
        return oa_bad(e, key,
                   "Invalid '%s': integer below minimum value. Expected a value >= %lld, "
                   "but got %lld instead.", key, (long long)lo, (long long)x);
    if (x > hi)
        return oa_bad(e, key,
                   "Invalid '%s': integer above maximum value. Expected a value <= %lld, "
                   "but got %lld instead.", key, (long long)hi, (long long)x);
    *out = x;
    return 1;
}

/* Number field (integer or real) in [lo, hi]; same returns as get_int. */
static int get_num(json_t *root, const char *key, double lo, double hi, float *out,
                   oa_error *e)
{
    json_t *v = opt(root, key);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return oa_type_err(e, key, "a number", v);
    double x = json_number_value(v);
    if (x < lo)
        return oa_bad(e, key,
                   "Invalid '%s': decimal below minimum value. Expected a value >= %g, "
                   "but got %g instead.", key, lo, x);
    if (x > hi)
        return oa_bad(e, key,
                   "Invalid '%s': decimal above maximum value. Expected a value <= %g, "
                   "but got %g instead.", key, hi, x);
    *out = (float)x;
    return 1;
}

static int get_bool(json_t *root, const char *key, int *out, oa_error *e)
{
    json_t *v = opt(root, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return oa_type_err(e, key, "a boolean", v);
    *out = json_is_true(v);
    return 1;
}

/* Optional string field copied to *out (left NULL when absent). */
static int get_str(json_t *root, const char *key, char **out, oa_error *e)
{
    json_t *v = opt(root, key);
    if (!v)
        return 0;
    if (!json_is_string(v))
        return oa_type_err(e, key, "a string", v);
    if (!(*out = dup_json_str(v)))
        return oa_nomem(e);
    return 1;
}

static int parse_prompt(json_t *root, oa_request *r, oa_error *e)
{
    json_t *v = opt(root, "prompt");
    if (!v)
        return oa_bad(e, "prompt", "Missing required parameter: 'prompt'.");
    if (json_is_string(v)) {
        if (!(r->prompts = calloc(1, sizeof *r->prompts)))
            return oa_nomem(e);
        if (!(r->prompts[0] = dup_json_str(v)))
            return oa_nomem(e);
        r->n_prompts = 1;
        return 0;
    }
    if (!json_is_array(v))
        return oa_type_err(e, "prompt", "a string or an array of strings", v);
    size_t n = json_array_size(v);
    if (n == 0)
        return oa_bad(e, "prompt",
                   "Invalid 'prompt': empty array. Expected an array with minimum length 1, "
                   "but got an empty array instead.");
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(v, i);
        /* [1, 2, 3] and [[1, 2], [3]] are OpenAI's token-id prompt forms */
        if (json_is_integer(it) || json_is_array(it))
            return agent_parse_prompt_ids(v, r, e);
        if (!json_is_string(it))
            return oa_type_err(e, "prompt", "a string or an array of strings", it);
    }
    if (!(r->prompts = calloc(n, sizeof *r->prompts)))
        return oa_nomem(e);
    for (size_t i = 0; i < n; i++) {
        if (!(r->prompts[i] = dup_json_str(json_array_get(v, i))))
            return oa_nomem(e); /* n_prompts counts only filled slots... */
        r->n_prompts = i + 1; /* ...so oa_request_free frees exactly those */
    }
    return 0;
}

/* Joins the text parts of an array content with "\n" into *out. */
static int parse_parts(json_t *arr, size_t mi, char **out, oa_error *e)
{
    char param[96]; /* oa_error_set clips it to the 64 of oa_error.param */
    size_t total = 0, n = json_array_size(arr);
    for (size_t j = 0; j < n; j++) {
        json_t *part = json_array_get(arr, j);
        snprintf(param, sizeof param, "messages[%zu].content[%zu]", mi, j);
        if (!json_is_object(part))
            return oa_type_err(e, param, "an object", part);
        json_t *type = json_object_get(part, "type");
        if (!json_is_string(type))
            return oa_bad(e, param, "Missing required parameter: '%s.type'.", param);
        if (strcmp(json_string_value(type), "text") != 0) {
            char shown[48];
            copy_clipped(shown, sizeof shown, json_string_value(type));
            return oa_bad(e, param,
                       "Invalid value for '%s.type': content parts of type '%s' are not "
                       "supported; only 'text' is.", param, shown);
        }
        json_t *text = json_object_get(part, "text");
        if (!text)
            return oa_bad(e, param, "Missing required parameter: '%s.text'.", param);
        if (!json_is_string(text)) {
            snprintf(param, sizeof param, "messages[%zu].content[%zu].text", mi, j);
            return oa_type_err(e, param, "a string", text);
        }
        total += json_string_length(text) + (j > 0);
    }
    char *s = malloc(total + 1), *p = s;
    if (!s)
        return oa_nomem(e);
    for (size_t j = 0; j < n; j++) {
        json_t *text = json_object_get(json_array_get(arr, j), "text");
        if (j > 0)
            *p++ = '\n';
        memcpy(p, json_string_value(text), json_string_length(text));
        p += json_string_length(text);
    }
    *p = '\0';
    *out = s;
    return 0;
}

static int parse_messages(json_t *root, oa_request *r, oa_error *e)
{
    json_t *v = opt(root, "messages");
    if (!v)
        return oa_bad(e, "messages", "Missing required parameter: 'messages'.");
    if (!json_is_array(v))
        return oa_type_err(e, "messages", "an array", v);
    size_t n = json_array_size(v);
    if (n == 0)
        return oa_bad(e, "messages",
                   "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                   "but got an empty array instead.");
    if (!(r->messages = calloc(n, sizeof *r->messages)))
        return oa_nomem(e);
    for (size_t i = 0; i < n; i++) {
        char param[96];
        json_t *m = json_array_get(v, i);
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m))
            return oa_type_err(e, param, "an object", m);

        snprintf(param, sizeof param, "messages[%zu].role", i);
        json_t *role = json_object_get(m, "role");
        if (!role || json_is_null(role))
            return oa_bad(e, param, "Missing required parameter: '%s'.", param);
        if (!json_is_string(role))
            return oa_type_err(e, param, "a string", role);
        const char *rs = json_string_value(role);
        const char *norm = NULL;
        int assistant = 0;
        if (!strcmp(rs, "system") || !strcmp(rs, "developer"))
            norm = "system"; /* newer SDKs send "developer" for the same thing */
        else if (!strcmp(rs, "user"))
            norm = "user";
        else if (!strcmp(rs, "assistant"))
            norm = "assistant", assistant = 1;
        else if (!strcmp(rs, "tool"))
            norm = "tool"; /* a function's result (proto/tools.h) */
        if (!norm) {
            char shown[48];
            copy_clipped(shown, sizeof shown, rs);
            return oa_bad(e, param,
                       "Invalid value: '%s'. Supported values are: 'system', 'developer', "
                       "'user', 'assistant' and 'tool'.", shown);
        }

        snprintf(param, sizeof param, "messages[%zu].content", i);
        json_t *c = opt(m, "content");
        char *content = NULL;
        if (!c) {
            /* OpenAI allows a null content only on assistant turns (those
             * that carried tool calls); for us they are empty replies. */
            if (!assistant)
                return oa_bad(e, param, "Missing required parameter: '%s'.", param);
            content = dupn("", 0);
        } else if (json_is_string(c)) {
            content = dup_json_str(c);
        } else if (json_is_array(c)) {
            if (parse_parts(c, i, &content, e) < 0)
                return -1;
        } else {
            return oa_type_err(e, param, "a string or an array of content parts", c);
        }
        if (!content)
            return oa_nomem(e);
        /* Count the message before the role copy can fail, so that
         * oa_request_free releases its content either way. */
        r->messages[i].content = content;
        r->n_messages = i + 1;
        if (!(r->messages[i].role = dupn(norm, strlen(norm))))
            return oa_nomem(e);
        if (agent_parse_message(v, i, &r->messages[i], e) < 0)
            return -1;
    }
    return 0;
}

static int parse_stop(json_t *root, oa_request *r, oa_error *e)
{
    json_t *v = opt(root, "stop");
    if (!v)
        return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0)
            return 0;
        if (!(r->stop[0] = dup_json_str(v)))
            return oa_nomem(e);
        r->n_stop = 1;
        return 0;
    }
    if (!json_is_array(v))
        return oa_type_err(e, "stop", "a string or an array of strings", v);
    size_t n = json_array_size(v);
    if (n > OA_MAX_STOP)
        return oa_bad(e, "stop",
                   "Invalid 'stop': array too long. Expected an array with maximum length %d, "
                   "but got an array with length %zu instead.", OA_MAX_STOP, n);
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(v, i);
        if (!json_is_string(it))
            return oa_type_err(e, "stop", "a string or an array of strings", it);
        if (json_string_length(it) == 0)
            continue; /* an empty stop would match before any text */
        if (!(r->stop[r->n_stop] = dup_json_str(it)))
            return oa_nomem(e);
        r->n_stop++;
    }
    return 0;
}

/* "123" -> 123; only plain decimal digits that fit an int32 are token ids. */
static int parse_token_key(const char *k, int32_t *out)
{
    if (!*k || strlen(k) > 10)
        return -1;
    int64_t v = 0;
    for (const char *p = k; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (v > INT32_MAX)
        return -1;
    *out = (int32_t)v;
    return 0;
}

static int parse_logit_bias(json_t *root, oa_request *r, oa_error *e)
{
    json_t *v = opt(root, "logit_bias");
    if (!v)
        return 0;
    if (!json_is_object(v))
        return oa_type_err(e, "logit_bias", "an object", v);
    size_t n = json_object_size(v);
    if (n == 0)
        return 0;
    if (!(r->logit_bias = calloc(n, sizeof *r->logit_bias)))
        return oa_nomem(e);
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        oa_logit_bias *lb = &r->logit_bias[r->n_logit_bias];
        if (parse_token_key(key, &lb->token) < 0) {
            char shown[48];
            copy_clipped(shown, sizeof shown, key);
            return oa_bad(e, "logit_bias",
                       "Invalid key in 'logit_bias': '%s' is not a token id (expected a "
                       "non-negative integer as a string).", shown);
        }
        if (!json_is_number(val))
            return oa_type_err(e, "logit_bias", "a number", val);
        double x = json_number_value(val);
        if (x < -100 || x > 100)
            return oa_bad(e, "logit_bias",
                       "Invalid 'logit_bias': the bias for token %" PRId32 " must be between "
                       "-100 and 100, but got %g instead.", lb->token, x);
        lb->bias = (float)x;
        r->n_logit_bias++;
    }
    return 0;
}

int oa_session_id_valid(const char *s, size_t n)
{
    if (!s || n < 1 || n > OA_SESSION_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok)
            return 0;
    }
    /* "." and ".." name directories, not files. */
    return !(s[0] == '.' && (n == 1 || (n == 2 && s[1] == '.')));
}

/* Everything after the JSON is parsed; -1 with *e filled on any failure. */
static int parse_fields(oa_kind kind, json_t *root, oa_request *r, oa_error *e)
{
    json_t *model = opt(root, "model");
    if (!model)
        return oa_bad(e, "model", "You must provide a model parameter.");
    if (!json_is_string(model))
        return oa_type_err(e, "model", "a string", model);
    if (!(r->model = dup_json_str(model)))
        return oa_nomem(e);

    if ((kind == OA_CHAT ? parse_messages(root, r, e) : parse_prompt(root, r, e)) < 0)
        return -1;

    /* max_completion_tokens is the newer name for the same limit: when both
     * are sent it wins, as with OpenAI's reasoning models. */
    json_int_t x;
    int rc;
    /* 0 is allowed for completions: with echo it scores the prompt only */
    json_int_t min_tokens = kind == OA_COMPLETION ? 0 : 1;
    if ((rc = get_int(root, "max_tokens", min_tokens, INT_MAX, &x, e)) < 0)
        return -1;
    if (rc)
        r->max_tokens = (int)x;
    if ((rc = get_int(root, "max_completion_tokens", min_tokens, INT_MAX, &x, e)) < 0)
        return -1;
    if (rc)
        r->max_tokens = (int)x;

    ms_sampler_params *sp = &r->sampling;
    if (get_num(root, "temperature", 0, 2, &sp->temperature, e) < 0 ||
        get_num(root, "top_p", 0, 1, &sp->top_p, e) < 0 ||
        get_num(root, "presence_penalty", -2, 2, &sp->presence_penalty, e) < 0 ||
        get_num(root, "frequency_penalty", -2, 2, &sp->frequency_penalty, e) < 0 ||
        get_num(root, "penalty_decay", 0, 1, &sp->penalty_decay, e) < 0)
        return -1;
    if ((rc = get_int(root, "top_k", 0, INT_MAX, &x, e)) < 0)
        return -1;
    if (rc)
        sp->top_k = (int)x;
    /* Any int64 is a valid seed (OpenAI accepts negatives); the engine only
     * needs the 64 bits. */
    if ((rc = get_int(root, "seed", LLONG_MIN, LLONG_MAX, &x, e)) < 0)
        return -1;
    if (rc) {
        sp->seed = (uint64_t)x;
        r->has_seed = 1;
    }
    if ((rc = get_int(root, "n", 1, OA_MAX_N, &x, e)) < 0)
        return -1;
    if (rc)
        r->n = (int)x;

    if (get_bool(root, "stream", &r->stream, e) < 0)
        return -1;
    json_t *so = opt(root, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return oa_type_err(e, "stream_options", "an object", so);
        if (!r->stream)
            return oa_bad(e, "stream_options",
                       "The 'stream_options' parameter is only allowed when 'stream' is "
                       "enabled.");
        json_t *iu = opt(so, "include_usage");
        if (iu) {
            if (!json_is_boolean(iu))
                return oa_type_err(e, "stream_options.include_usage", "a boolean", iu);
            r->include_usage = json_is_true(iu);
        }
    }

    if (parse_stop(root, r, e) < 0 || parse_logit_bias(root, r, e) < 0)
        return -1;
    if (get_str(root, "user", &r->user, e) < 0 || get_str(root, "state", &r->state, e) < 0 ||
        get_str(root, "session_id", &r->session_id, e) < 0)
        return -1;
    if (r->session_id && !oa_session_id_valid(r->session_id, strlen(r->session_id)))
        return oa_bad(e, "session_id",
                   "Invalid 'session_id': expected 1 to 128 characters from [A-Za-z0-9._:-], "
                   "not '.' or '..'.");
    if (oa_check_unsupported(kind == OA_CHAT ? OA_EP_CHAT : OA_EP_COMPLETIONS, root, r->n, e))
        return -1;
    return agent_parse_fields(kind, root, r, e);
}

int oa_request_parse(oa_kind kind, const char *body, size_t len, oa_request *out,
                     oa_error *e)
{
    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->max_tokens = -1;
    out->n = 1;
    /*
     * Sampling defaults (a choice; OpenAI's own are temperature 1, top_p 1, no
     * penalties). RWKV models sampled with top_p 1 and no repetition penalty
     * ramble and loop, so OpenAI's values would make "no parameters" the worst
     * case. Chat uses the SPEC 2.4 ChatRWKV API_DEMO_CHAT values from
     * ms_sampler_defaults() (T 1.0, top_p 0.3, 0.5/0.5, decay 0.996): tuned
     * for short, focused replies. Raw completions use the pip PIPELINE_ARGS
     * values (T 1.0, top_p 0.85, 0.2/0.2, decay 0.996): free text wants a
     * wider nucleus and lighter penalties. Every one is overridable.
     */
    out->sampling = ms_sampler_defaults();
    if (kind == OA_COMPLETION) {
        out->sampling.top_p = 0.85f;
        out->sampling.presence_penalty = 0.2f;
        out->sampling.frequency_penalty = 0.2f;
    }

    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", body ? len : 0, 0, &jerr);
    if (!root) {
        oa_bad(e, NULL,
            "We could not parse the JSON body of your request: %s (line %d, column %d).",
            jerr.text, jerr.line, jerr.column);
        oa_request_free(out);
        return -1;
    }
    int rc = 0;
    if (!json_is_object(root))
        rc = oa_bad(e, NULL, "Invalid request body: expected a JSON object, but got %s instead.",
                 got_name(root));
    else
        rc = parse_fields(kind, root, out, e);
    json_decref(root);
    if (rc < 0) {
        oa_request_free(out);
        out->kind = kind;
        return -1;
    }
    return 0;
}

void oa_request_free(oa_request *r)
{
    if (!r)
        return;
    free(r->model);
    for (size_t i = 0; i < r->n_prompts; i++)
        free(r->prompts[i]);
    free(r->prompts);
    for (size_t i = 0; i < r->n_messages; i++) {
        free(r->messages[i].role);
        free(r->messages[i].content);
        free(r->messages[i].tool_call_id);
        free(r->messages[i].tool_calls);
    }
    agent_request_free(r);
    free(r->messages);
    for (size_t i = 0; i < r->n_stop && i < OA_MAX_STOP; i++)
        free(r->stop[i]);
    free(r->logit_bias);
    free(r->user);
    free(r->session_id);
    free(r->state);
    memset(r, 0, sizeof *r);
}

/* ============================================================== responses */

static const char *finish_str(oa_finish f)
{
    switch (f) {
    case OA_FINISH_STOP: return "stop";
    case OA_FINISH_LENGTH: return "length";
    case OA_FINISH_NONE: break;
    }
    return NULL;
}

/* "id", "object", "created", "model" - the head every response shares. */
static void put_head(jbuf *b, const char *id, const char *object, int64_t created,
                     const char *model)
{
    jb_puts(b, "{\"id\":");
    jb_cstr(b, id);
    jb_puts(b, ",\"object\":");
    jb_cstr(b, object);
    jb_puts(b, ",\"created\":");
    jb_i64(b, created);
    jb_puts(b, ",\"model\":");
    jb_cstr(b, model);
}

static void put_usage(jbuf *b, const oa_usage *u)
{
    oa_usage zero = {0, 0, 0};
    if (!u)
        u = &zero;
    jb_puts(b, "{\"prompt_tokens\":");
    jb_i64(b, u->prompt_tokens);
    jb_puts(b, ",\"completion_tokens\":");
    jb_i64(b, u->completion_tokens);
    jb_puts(b, ",\"total_tokens\":");
    jb_i64(b, (int64_t)u->prompt_tokens + u->completion_tokens);
    jb_puts(b, ",\"prompt_tokens_details\":{\"cached_tokens\":");
    jb_i64(b, u->cached_tokens);
    jb_puts(b, "}}");
}

/* Appends the members of the JSON object text `extra` (",k":v...). Goes
 * through jansson so a malformed extra cannot corrupt the response. */
static int put_extra(jbuf *b, const char *extra)
{
    json_t *x = json_loads(extra, 0, NULL);
    if (!x || !json_is_object(x)) {
        json_decref(x);
        return -1;
    }
    const char *k;
    json_t *v;
    int rc = 0;
    json_object_foreach(x, k, v) {
        char *vs = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!vs) {
            rc = -1;
            break;
        }
        jb_put(b, ",", 1);
        jb_cstr(b, k);
        jb_put(b, ":", 1);
        jb_puts(b, vs);
        free(vs);
    }
    json_decref(x);
    return rc;
}

char *oa_response_json(oa_kind kind, const char *id, int64_t created, const char *model,
                       const oa_choice *choices, size_t n_choices, const oa_usage *usage,
                       const char *extra)
{
    jbuf b = {0};
    int chat = kind == OA_CHAT;
    put_head(&b, id, chat ? "chat.completion" : "text_completion", created, model);
    jb_puts(&b, ",\"choices\":[");
    for (size_t i = 0; i < n_choices; i++) {
        const oa_choice *c = &choices[i];
        const char *text = c->text ? c->text : "";
        size_t tlen = c->text ? c->text_len : 0;
        if (i)
            jb_put(&b, ",", 1);
        if (chat) {
            jb_puts(&b, "{\"index\":");
            jb_i64(&b, (int64_t)i);
            jb_puts(&b, ",\"message\":{\"role\":\"assistant\",\"content\":");
            jb_str(&b, text, tlen);
            jb_puts(&b, "},\"logprobs\":null,\"finish_reason\":");
        } else {
            jb_puts(&b, "{\"text\":");
            jb_str(&b, text, tlen);
            jb_puts(&b, ",\"index\":");
            jb_i64(&b, (int64_t)i);
            jb_puts(&b, ",\"logprobs\":null,\"finish_reason\":");
        }
        jb_cstr(&b, finish_str(c->finish));
        jb_put(&b, "}", 1);
    }
    jb_put(&b, "]", 1);
    if (usage) {
        jb_puts(&b, ",\"usage\":");
        put_usage(&b, usage);
    }
    if (extra && put_extra(&b, extra) < 0) {
        free(b.p);
        return NULL;
    }
    jb_put(&b, "}", 1);
    return jb_finish(&b);
}

static void put_chunk(jbuf *b, oa_kind kind, const char *id, int64_t created, const char *model,
                      int index, int role_first, const char *text, size_t text_len,
                      oa_finish finish, int include_usage)
{
    if (!text)
        text_len = 0;
    int chat = kind == OA_CHAT;
    put_head(b, id, chat ? "chat.completion.chunk" : "text_completion", created, model);
    jb_puts(b, ",\"choices\":[");
    if (chat) {
        jb_puts(b, "{\"index\":");
        jb_i64(b, index);
        jb_puts(b, ",\"delta\":");
        if (role_first) {
            jb_puts(b, "{\"role\":\"assistant\",\"content\":");
            jb_str(b, text ? text : "", text_len);
            jb_put(b, "}", 1);
        } else if (text_len == 0 && finish != OA_FINISH_NONE) {
            jb_puts(b, "{}");
        } else {
            jb_puts(b, "{\"content\":");
            jb_str(b, text ? text : "", text_len);
            jb_put(b, "}", 1);
        }
    } else {
        jb_puts(b, "{\"text\":");
        jb_str(b, text ? text : "", text_len);
        jb_puts(b, ",\"index\":");
        jb_i64(b, index);
    }
    jb_puts(b, ",\"logprobs\":null,\"finish_reason\":");
    jb_cstr(b, finish_str(finish));
    jb_puts(b, "}]");
    if (include_usage)
        jb_puts(b, ",\"usage\":null");
    jb_put(b, "}", 1);
}

char *oa_chunk_json(oa_kind kind, const char *id, int64_t created, const char *model,
                    int index, int role_first, const char *text, size_t text_len,
                    oa_finish finish, int include_usage)
{
    jbuf b = {0};
    put_chunk(&b, kind, id, created, model, index, role_first, text, text_len, finish,
              include_usage);
    return jb_finish(&b);
}

int oa_chunk_event_append(char **buf, size_t *len, size_t *cap, oa_kind kind, const char *id,
                          int64_t created, const char *model, int index, const char *text,
                          size_t text_len, oa_finish finish, int include_usage)
{
    /* The compact JSON holds no newline (strings escape it), so the SSE
     * framing is a prefix and a suffix around it. */
    jbuf b = {*buf, *len, *cap, 0};
    jb_puts(&b, "data: ");
    put_chunk(&b, kind, id, created, model, index, 0, text, text_len, finish, include_usage);
    jb_puts(&b, "\n\n");
    *buf = b.p;
    *cap = b.cap;
    if (b.oom)
        return -1;
    *len = b.len;
    return 0;
}

char *oa_usage_chunk_json(oa_kind kind, const char *id, int64_t created, const char *model,
                          const oa_usage *usage)
{
    jbuf b = {0};
    put_head(&b, id, kind == OA_CHAT ? "chat.completion.chunk" : "text_completion", created,
             model);
    jb_puts(&b, ",\"choices\":[],\"usage\":");
    put_usage(&b, usage);
    jb_put(&b, "}", 1);
    return jb_finish(&b);
}

/* One model object of /v1/models. */
static void put_model(jbuf *b, const char *name, int64_t created, const char *owned_by,
                      const char *const *states, size_t n_states)
{
    jb_puts(b, "{\"id\":");
    jb_cstr(b, name);
    jb_puts(b, ",\"object\":\"model\",\"created\":");
    jb_i64(b, created);
    jb_puts(b, ",\"owned_by\":");
    jb_cstr(b, owned_by ? owned_by : "");
    if (n_states) {
        jb_puts(b, ",\"initial_states\":[");
        for (size_t k = 0; k < n_states; k++) {
            if (k)
                jb_put(b, ",", 1);
            jb_cstr(b, states[k]);
        }
        jb_put(b, "]", 1);
    }
    jb_put(b, "}", 1);
}

char *oa_models_json(const char *const *names, size_t n, int64_t created, const char *owned_by,
                     const char *const *states, size_t n_states)
{
    jbuf b = {0};
    jb_puts(&b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            jb_put(&b, ",", 1);
        put_model(&b, names[i], created, owned_by, states, n_states);
    }
    jb_puts(&b, "]}");
    return jb_finish(&b);
}

char *oa_model_json(const char *name, int64_t created, const char *owned_by,
                    const char *const *states, size_t n_states)
{
    jbuf b = {0};
    put_model(&b, name, created, owned_by, states, n_states);
    return jb_finish(&b);
}

char *oa_deleted_json(const char *id, const char *object)
{
    jbuf b = {0};
    jb_puts(&b, "{\"id\":");
    jb_cstr(&b, id);
    jb_puts(&b, ",\"object\":");
    jb_cstr(&b, object);
    jb_puts(&b, ",\"deleted\":true}");
    return jb_finish(&b);
}
