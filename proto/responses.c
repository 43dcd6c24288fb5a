/*
 * responses.c - Responses API <-> chat pipeline (see responses.h).
 */
#include "responses.h"
#include "params_unsupported.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *bad(oa_error *e, const char *param, const char *msg)
{
    oa_error_set(e, 400, "invalid_request_error", param, NULL, "%s", msg);
    return NULL;
}

/* Text of a message content: a string, or input_text/output_text parts. */
static json_t *content_text(json_t *c, size_t i, oa_error *e)
{
    if (json_is_string(c))
        return json_incref(c);
    if (!json_is_array(c)) {
        bad(e, "input", "Invalid 'input': a message content must be a string or an array of parts.");
        return NULL;
    }
    size_t total = 0;
    for (size_t k = 0; k < json_array_size(c); k++) {
        json_t *p = json_array_get(c, k);
        const char *t = json_string_value(json_object_get(p, "type"));
        if (!t || (strcmp(t, "input_text") && strcmp(t, "output_text") && strcmp(t, "text"))) {
            char m[160];
            snprintf(m, sizeof m, "Invalid 'input[%zu]': content parts of type '%.40s' are not "
                     "supported; only text is.", i, t ? t : "?");
            bad(e, "input", m);
            return NULL;
        }
        total += strlen(json_string_value(json_object_get(p, "text")) ?
                        json_string_value(json_object_get(p, "text")) : "") + 1;
    }
    char *s = malloc(total + 1), *q = s;
    if (!s) {
        oa_nomem(e);
        return NULL;
    }
    for (size_t k = 0; k < json_array_size(c); k++) {
        const char *t = json_string_value(json_object_get(json_array_get(c, k), "text"));
        if (k)
            *q++ = '\n';
        size_t l = t ? strlen(t) : 0;
        memcpy(q, t ? t : "", l);
        q += l;
    }
    *q = '\0';
    json_t *r = json_string(s);
    free(s);
    return r;
}

static int add_input(json_t *msgs, json_t *input, oa_error *e)
{
    if (json_is_string(input)) {
        json_t *m = json_pack("{s:s,s:O}", "role", "user", "content", input);
        return json_array_append_new(msgs, m);
    }
    if (!json_is_array(input)) {
        bad(e, "input", "Invalid 'input': expected a string or an array of input items.");
        return -1;
    }
    json_t *open_calls = NULL; /* assistant message collecting consecutive function_calls */
    for (size_t i = 0; i < json_array_size(input); i++) {
        json_t *it = json_array_get(input, i);
        const char *type = json_string_value(json_object_get(it, "type"));
        const char *role = json_string_value(json_object_get(it, "role"));
        if (!type || !strcmp(type, "message")) {
            if (!role) {
                bad(e, "input", "Invalid 'input': an item needs a 'type' or a 'role'.");
                return -1;
            }
            json_t *txt = content_text(json_object_get(it, "content"), i, e);
            if (!txt)
                return -1;
            json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", role, "content", txt));
            open_calls = NULL;
        } else if (!strcmp(type, "function_call")) {
            const char *name = json_string_value(json_object_get(it, "name"));
            const char *cid = json_string_value(json_object_get(it, "call_id"));
            const char *args = json_string_value(json_object_get(it, "arguments"));
            if (!name || !cid) {
                bad(e, "input", "Invalid 'input': a function_call item needs 'name' and 'call_id'.");
                return -1;
            }
            if (!open_calls) {
                open_calls = json_pack("{s:s,s:n,s:[]}", "role", "assistant", "content", "tool_calls");
                json_array_append_new(msgs, open_calls);
            }
            json_array_append_new(json_object_get(open_calls, "tool_calls"),
                                  json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", cid, "type", "function",
                                            "function", "name", name, "arguments", args ? args : "{}"));
        } else if (!strcmp(type, "function_call_output")) {
            const char *cid = json_string_value(json_object_get(it, "call_id"));
            json_t *out = json_object_get(it, "output");
            if (!cid) {
                bad(e, "input", "Invalid 'input': a function_call_output item needs 'call_id'.");
                return -1;
            }
            json_t *txt = content_text(out, i, e); /* a string or text parts, as a message's */
            if (!txt)
                return -1;
            json_array_append_new(msgs, json_pack("{s:s,s:s,s:o}", "role", "tool", "tool_call_id",
                                                  cid, "content", txt));
            open_calls = NULL;
        } else if (!strcmp(type, "reasoning")) {
            continue; /* nothing of ours to replay */
        } else {
            char m[160];
            snprintf(m, sizeof m, "Invalid 'input[%zu].type': items of type '%.40s' are not "
                     "supported.", i, type);
            bad(e, "input", m);
            return -1;
        }
    }
    return 0;
}

json_t *resp_to_chat(json_t *req, json_t *prev, json_t **history, oa_error *e)
{
    *history = NULL;
    if (!json_is_object(req))
        return bad(e, NULL, "Invalid request body: expected a JSON object.");
    if (oa_check_unsupported(OA_EP_RESPONSES, req, 1, e))
        return NULL;
    json_t *chat = json_object();
    json_t *hist = json_array();
    json_t *model = json_object_get(req, "model");
    if (model)
        json_object_set(chat, "model", model);
    if (prev)
        json_array_extend(hist, prev);
    json_t *input = json_object_get(req, "input");
    if (!input || json_is_null(input)) {
        json_decref(chat);
        json_decref(hist);
        return bad(e, "input", "Missing required parameter: 'input'.");
    }
    if (add_input(hist, input, e) < 0)
        goto fail;
    json_t *msgs = json_array();
    json_t *ins = json_object_get(req, "instructions");
    if (json_is_string(ins) && json_string_length(ins))
        json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "system", "content", ins));
    json_array_extend(msgs, hist);
    json_object_set_new(chat, "messages", msgs);

    static const char *copy[] = { "temperature", "top_p", "parallel_tool_calls", "user",
                                  "seed", "top_k", "session_id", "state" };
    for (size_t i = 0; i < sizeof copy / sizeof copy[0]; i++) {
        json_t *v = json_object_get(req, copy[i]);
        if (v && !json_is_null(v))
            json_object_set(chat, copy[i], v);
    }
    /* Log probabilities come with the text only when include asks for them
     * (top_logprobs alone returns none, as OpenAI's); chat's parser checks
     * top_logprobs' range under the same name. */
    json_t *tl = json_object_get(req, "top_logprobs"), *inc = json_object_get(req, "include"), *it;
    size_t k;
    json_array_foreach (inc, k, it)
        if (json_is_string(it) && !strcmp(json_string_value(it), "message.output_text.logprobs"))
            json_object_set_new(chat, "logprobs", json_true());
    if (tl && !json_is_null(tl)) {
        if (!json_is_integer(tl) || json_integer_value(tl) < 0 || json_integer_value(tl) > 20) {
            bad(e, "top_logprobs", "Invalid 'top_logprobs': expected an integer between 0 and 20.");
            goto fail;
        }
        if (json_object_get(chat, "logprobs"))
            json_object_set(chat, "top_logprobs", tl);
    }
    json_t *mot = json_object_get(req, "max_output_tokens");
    if (mot && !json_is_null(mot))
        json_object_set(chat, "max_tokens", mot);

    json_t *fmt = json_object_get(json_object_get(req, "text"), "format");
    if (json_is_object(fmt)) {
        const char *t = json_string_value(json_object_get(fmt, "type"));
        if (t && !strcmp(t, "json_schema")) {
            json_t *js = json_object();
            json_t *name = json_object_get(fmt, "name");
            json_object_set_new(js, "name", name ? json_incref(name) : json_string("output"));
            json_t *schema = json_object_get(fmt, "schema");
            if (schema)
                json_object_set(js, "schema", schema);
            json_t *strict = json_object_get(fmt, "strict");
            if (strict)
                json_object_set(js, "strict", strict);
            json_object_set_new(chat, "response_format",
                                json_pack("{s:s,s:o}", "type", "json_schema", "json_schema", js));
        } else if (t && !strcmp(t, "json_object")) {
            json_object_set_new(chat, "response_format", json_pack("{s:s}", "type", "json_object"));
        } else if (!t || strcmp(t, "text")) {
            bad(e, "text.format.type", "Invalid 'text.format.type': expected 'text', 'json_object' "
                                       "or 'json_schema'.");
            goto fail;
        }
    }

    json_t *tools = json_object_get(req, "tools");
    if (json_is_array(tools) && json_array_size(tools)) {
        json_t *ct = json_array();
        json_object_set_new(chat, "tools", ct);
        for (size_t i = 0; i < json_array_size(tools); i++) {
            json_t *t = json_array_get(tools, i);
            const char *type = json_string_value(json_object_get(t, "type"));
            if (!type || strcmp(type, "function")) {
                char m[200];
                snprintf(m, sizeof m, "Invalid 'tools[%zu].type': built-in tools ('%.40s') are not "
                         "supported by this server; only 'function' tools are.", i,
                         type ? type : "?");
                char param[48];
                snprintf(param, sizeof param, "tools[%zu].type", i);
                bad(e, param, m);
                goto fail;
            }
            json_t *f = json_object();
            json_t *v;
            if ((v = json_object_get(t, "name")))
                json_object_set(f, "name", v);
            if ((v = json_object_get(t, "description")) && !json_is_null(v))
                json_object_set(f, "description", v);
            if ((v = json_object_get(t, "parameters")) && !json_is_null(v))
                json_object_set(f, "parameters", v);
            json_array_append_new(ct, json_pack("{s:s,s:o}", "type", "function", "function", f));
        }
        json_t *tc = json_object_get(req, "tool_choice");
        if (json_is_string(tc)) {
            json_object_set(chat, "tool_choice", tc);
        } else if (json_is_object(tc)) {
            const char *type = json_string_value(json_object_get(tc, "type"));
            const char *name = json_string_value(json_object_get(tc, "name"));
            if (type && !strcmp(type, "allowed_tools")) { /* agent_request.c reads this form too */
                json_object_set(chat, "tool_choice", tc);
                goto tools_done;
            }
            if (!type || strcmp(type, "function") || !name) {
                bad(e, "tool_choice", "Invalid 'tool_choice': only 'none', 'auto', 'required', "
                                      "{\"type\":\"function\",\"name\":...} or "
                                      "{\"type\":\"allowed_tools\",...} are supported.");
                goto fail;
            }
            json_object_set_new(chat, "tool_choice",
                                json_pack("{s:s,s:{s:s}}", "type", "function", "function", "name", name));
        }
    }
tools_done:
    *history = hist;
    return chat;
fail:
    json_decref(chat);
    json_decref(hist);
    return NULL;
}

void resp_new_id(char *out, const char *prefix, uint64_t x)
{
    static const char hex[] = "0123456789abcdef";
    size_t pl = strlen(prefix);
    memcpy(out, prefix, pl);
    for (int i = 0; i < 24; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out[pl + i] = hex[(x * 0x2545F4914F6CDD1Dull) >> 60];
    }
    out[pl + 24] = '\0';
}

/* Text content as parts: a string becomes one part (output_text for the
 * assistant's, with OpenAI's empty annotations); parts are kept. */
static json_t *content_parts(json_t *c, const char *role)
{
    if (!json_is_string(c))
        return json_deep_copy(c);
    if (role && !strcmp(role, "assistant"))
        return json_pack("[{s:s,s:O,s:[]}]", "type", "output_text", "text", c, "annotations");
    return json_pack("[{s:s,s:O}]", "type", "input_text", "text", c);
}

json_t *resp_input_items(json_t *input, uint64_t seed)
{
    json_t *items = json_array();
    char id[40];
    if (json_is_string(input)) {
        resp_new_id(id, "msg_", seed);
        json_t *m = json_pack("{s:s,s:s,s:s,s:s,s:o}", "id", id, "type", "message", "role", "user",
                              "status", "completed", "content", content_parts(input, "user"));
        if (!m || json_array_append_new(items, m)) {
            json_decref(items);
            return NULL;
        }
        return items;
    }
    for (size_t i = 0; i < json_array_size(input); i++) {
        json_t *src = json_array_get(input, i), *it;
        if (json_is_string(json_object_get(src, "type"))) {
            it = json_deep_copy(src);
        } else { /* a message given by its role alone (resp_to_chat's reading) */
            it = json_pack("{s:s,s:O,s:O}", "type", "message", "role", json_object_get(src, "role"),
                           "content", json_object_get(src, "content"));
            if (it && json_object_get(src, "id"))
                json_object_set(it, "id", json_object_get(src, "id"));
        }
        if (!it)
            goto fail;
        const char *type = json_string_value(json_object_get(it, "type"));
        if (!strcmp(type, "message")) {
            json_t *parts = content_parts(json_object_get(it, "content"),
                                          json_string_value(json_object_get(it, "role")));
            if (!parts || json_object_set_new(it, "content", parts))
                goto fail_item;
        }
        if (!json_is_string(json_object_get(it, "id"))) {
            resp_new_id(id, !strcmp(type, "message") ? "msg_" : !strcmp(type, "function_call") ? "fc_"
                            : !strcmp(type, "function_call_output") ? "fco_" : "item_",
                        seed + 0x9E3779B97F4A7C15ull * (i + 1));
            if (json_object_set_new(it, "id", json_string(id)))
                goto fail_item;
        }
        if (!json_object_get(it, "status") && strcmp(type, "reasoning"))
            json_object_set_new(it, "status", json_string("completed"));
        if (json_array_append_new(items, it))
            goto fail;
        continue;
    fail_item:
        json_decref(it);
    fail:
        json_decref(items);
        return NULL;
    }
    return items;
}

/* Index of the item with id in items, or -1. */
static long item_index(json_t *items, const char *id)
{
    for (size_t i = 0; i < json_array_size(items); i++) {
        const char *v = json_string_value(json_object_get(json_array_get(items, i), "id"));
        if (v && !strcmp(v, id))
            return (long)i;
    }
    return -1;
}

json_t *resp_items_page(json_t *items, const char *limit, const char *order, const char *after,
                        const char *before, oa_error *e)
{
    long lim = 20;
    if (limit) {
        char *end;
        lim = strtol(limit, &end, 10);
        if (!*limit || *end || lim < 1 || lim > 100)
            return bad(e, "limit", "Invalid 'limit': expected an integer between 1 and 100.");
    }
    int desc = 1;
    if (order && !strcmp(order, "asc"))
        desc = 0;
    else if (order && strcmp(order, "desc"))
        return bad(e, "order", "Invalid 'order': expected 'asc' or 'desc'.");
    const long n = (long)json_array_size(items);
    /* [lo, hi) in the list's own order, the page taken from the end that
     * the order starts at */
    long lo = 0, hi = n;
    const char *cur[2] = {after, before};
    for (int k = 0; k < 2; k++) {
        if (!cur[k])
            continue;
        long at = item_index(items, cur[k]);
        if (at < 0) {
            char m[200];
            snprintf(m, sizeof m, "Invalid '%s': no input item with id '%.80s' in this response.",
                     k ? "before" : "after", cur[k]);
            return bad(e, k ? "before" : "after", m);
        }
        if ((k == 0) == desc) { /* after in descending order, before in ascending: older ones */
            if (at < hi) hi = at;
        } else if (at + 1 > lo) {
            lo = at + 1;
        }
    }
    json_t *data = json_array();
    long count = hi > lo ? hi - lo : 0, take = count < lim ? count : lim;
    for (long j = 0; j < take; j++)
        json_array_append(data, json_array_get(items, (size_t)(desc ? hi - 1 - j : lo + j)));
    json_t *first = json_object_get(json_array_get(data, 0), "id");
    json_t *last = json_object_get(json_array_get(data, json_array_size(data) - 1), "id");
    return json_pack("{s:s,s:o,s:O?,s:O?,s:b}", "object", "list", "data", data, "first_id", first,
                     "last_id", last, "has_more", count > take);
}

json_t *resp_logprobs(const resp_result *r, size_t from, size_t to)
{
    if (!r->lp || to <= from || to > r->n_lp)
        return json_array();
    json_t *o = agent_chat_logprobs(r->tok, r->lp + from, to - from);
    json_t *a = json_incref(json_object_get(o, "content"));
    json_decref(o);
    return a ? a : json_array();
}

static json_t *output_items(const resp_result *r)
{
    json_t *out = json_array();
    if (r->n_calls > 0) {
        for (int i = 0; i < r->n_calls; i++)
            json_array_append_new(out, json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "type", "function_call",
                                                 "id", r->item_ids[i], "call_id", r->call_ids[i],
                                                 "name", r->calls[i].name, "arguments",
                                                 r->calls[i].arguments, "status", "completed"));
        return out;
    }
    if (r->text) {
        /* The message shares the response's state: cut at max_output_tokens
         * it is "incomplete" too (as OpenAI marks it). */
        const char *st = !strcmp(r->status, "in_progress") || !strcmp(r->status, "incomplete")
                             ? r->status
                             : "completed";
        json_t *txt = json_stringn(r->text, r->text_len);
        json_t *part = json_pack("{s:s,s:o,s:[],s:o}", "type", "output_text", "text",
                                 txt ? txt : json_string(""), "annotations", "logprobs",
                                 resp_logprobs(r, 0, r->n_lp));
        json_array_append_new(out, json_pack("{s:s,s:s,s:s,s:s,s:[o]}", "type", "message", "id",
                                             r->msg_id, "status", st, "role", "assistant",
                                             "content", part));
    }
    return out;
}

json_t *resp_object(json_t *req, const resp_result *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(r->id));
    json_object_set_new(o, "object", json_string("response"));
    json_object_set_new(o, "created_at", json_integer(r->created));
    json_object_set_new(o, "completed_at", !strcmp(r->status, "completed")
                                               ? json_integer(r->completed_at)
                                               : json_null());
    json_object_set_new(o, "status", json_string(r->status));
    json_object_set_new(o, "error", json_null());
    json_object_set_new(o, "incomplete_details",
                        !strcmp(r->status, "incomplete")
                            ? json_pack("{s:s}", "reason", "max_output_tokens")
                            : json_null());
    json_t *v;
#define ECHO(k, dflt)                                                                          \
    json_object_set_new(o, k, (v = json_object_get(req, k)) && !json_is_null(v) ? json_incref(v) \
                                                                                : (dflt))
    ECHO("instructions", json_null());
    ECHO("max_output_tokens", json_null());
    json_object_set_new(o, "model", json_string(r->model));
    json_object_set_new(o, "output", output_items(r));
    ECHO("parallel_tool_calls", json_true());
    ECHO("previous_response_id", json_null());
    json_object_set_new(o, "reasoning", json_pack("{s:n,s:n}", "effort", "summary"));
    ECHO("store", json_true());
    ECHO("temperature", json_real(1.0));
    ECHO("text", json_pack("{s:{s:s}}", "format", "type", "text"));
    ECHO("tool_choice", json_string("auto"));
    ECHO("tools", json_array());
    ECHO("top_p", json_real(1.0));
    ECHO("truncation", json_string("disabled"));
    ECHO("user", json_null());
    ECHO("metadata", json_object());
#undef ECHO
    if (r->has_usage)
        json_object_set_new(
            o, "usage",
            json_pack("{s:i,s:{s:i},s:i,s:{s:i},s:i}", "input_tokens", r->usage.prompt_tokens,
                      "input_tokens_details", "cached_tokens", r->usage.cached_tokens,
                      "output_tokens", r->usage.completion_tokens, "output_tokens_details",
                      "reasoning_tokens", 0, "total_tokens",
                      r->usage.prompt_tokens + r->usage.completion_tokens));
    else
        json_object_set_new(o, "usage", json_null());
    return o;
}

json_t *resp_reply_message(const resp_result *r)
{
    if (r->n_calls > 0) {
        json_t *calls = json_array();
        for (int i = 0; i < r->n_calls; i++)
            json_array_append_new(calls, json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", r->call_ids[i],
                                                   "type", "function", "function", "name",
                                                   r->calls[i].name, "arguments",
                                                   r->calls[i].arguments));
        return json_pack("{s:s,s:n,s:o}", "role", "assistant", "content", "tool_calls", calls);
    }
    json_t *txt = r->text ? json_stringn(r->text, r->text_len) : NULL;
    return json_pack("{s:s,s:o}", "role", "assistant", "content", txt ? txt : json_string(""));
}

char *resp_event(const char *type, json_t *payload, int *seq)
{
    if (!payload)
        return NULL;
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "sequence_number", json_integer((*seq)++));
    json_object_update(o, payload);
    json_decref(payload);
    char *d = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!d)
        return NULL;
    size_t tl = strlen(type), dl = strlen(d);
    char *s = malloc(tl + dl + 20);
    if (s)
        snprintf(s, tl + dl + 20, "event: %s\ndata: %s\n\n", type, d);
    free(d);
    return s;
}

char *resp_error_event(const oa_error *e, int *seq)
{
    char *chat = oa_error_json(e);
    json_t *o = chat ? json_loads(chat, 0, NULL) : NULL;
    free(chat);
    if (!o)
        return NULL;
    char *ev = resp_event("error",
                          json_pack("{s:s,s:s,s:s?,s:O}", "code", e->code[0] ? e->code : e->type,
                                    "message", e->message, "param", e->param[0] ? e->param : NULL,
                                    "error", json_object_get(o, "error")),
                          seq);
    json_decref(o);
    return ev;
}
