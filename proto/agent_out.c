/*
 * agent_out.c - logprobs and tool_calls in responses (see agent_out.h).
 */
#include "agent_out.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

json_t *agent_token_string(const char *b, size_t n)
{
    json_t *s = json_stringn(b ? b : "", b ? n : 0);
    if (s)
        return s;
    /* not valid UTF-8 alone (a piece of a character): ASCII kept, the rest U+FFFD */
    char *t = malloc(3 * n + 1), *p = t;
    if (!t)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)b[i];
        if (c < 0x80) {
            *p++ = (char)c;
        } else {
            memcpy(p, "\xef\xbf\xbd", 3);
            p += 3;
        }
    }
    s = json_stringn(t, (size_t)(p - t));
    free(t);
    return s;
}

static json_t *bytes_of(const char *b, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_integer((unsigned char)b[i]));
    return a;
}

/* -inf (a banned or impossible token) has no JSON number: OpenAI's floor. */
static json_t *lp_value(float x)
{
    return json_real(isfinite(x) ? (double)x : -9999.0);
}

static const char *tok_bytes(const ms_tokenizer *tok, int32_t id, size_t *n)
{
    const char *b = ms_token_bytes(tok, id, n);
    if (!b)
        *n = 0;
    return b ? b : "";
}

json_t *agent_chat_logprobs(const ms_tokenizer *tok, const agent_lp *e, size_t n)
{
    json_t *content = json_array();
    for (size_t i = 0; content && i < n; i++) {
        size_t bl;
        const char *b = tok_bytes(tok, e[i].id, &bl);
        json_t *o = json_object(), *tops = json_array();
        json_object_set_new(o, "token", agent_token_string(b, bl));
        json_object_set_new(o, "logprob", lp_value(e[i].lp));
        json_object_set_new(o, "bytes", bytes_of(b, bl));
        for (int k = 0; k < e[i].n_top; k++) {
            size_t tl;
            const char *tb = tok_bytes(tok, e[i].top_ids[k], &tl);
            json_t *t = json_object();
            json_object_set_new(t, "token", agent_token_string(tb, tl));
            json_object_set_new(t, "logprob", lp_value(e[i].top_lps[k]));
            json_object_set_new(t, "bytes", bytes_of(tb, tl));
            json_array_append_new(tops, t);
        }
        json_object_set_new(o, "top_logprobs", tops);
        json_array_append_new(content, o);
    }
    json_t *r = json_object();
    json_object_set_new(r, "content", content);
    json_object_set_new(r, "refusal", json_null());
    return r;
}

json_t *agent_completion_logprobs(const ms_tokenizer *tok, const agent_lp *e, size_t n,
                                  int first_null, size_t offset0)
{
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(),
           *offs = json_array();
    size_t off = offset0;
    for (size_t i = 0; i < n; i++) {
        size_t bl;
        const char *b = tok_bytes(tok, e[i].id, &bl);
        json_array_append_new(tokens, agent_token_string(b, bl));
        json_array_append_new(offs, json_integer((json_int_t)off));
        off += bl;
        if (i == 0 && first_null) {
            json_array_append_new(lps, json_null());
            json_array_append_new(tops, json_null());
            continue;
        }
        json_array_append_new(lps, lp_value(e[i].lp));
        json_t *d = json_object();
        for (int k = 0; k < e[i].n_top; k++) {
            size_t tl;
            const char *tb = tok_bytes(tok, e[i].top_ids[k], &tl);
            json_t *key = agent_token_string(tb, tl);
            const char *ks = json_string_value(key);
            if (ks && !json_object_get(d, ks))
                json_object_set_new(d, ks, lp_value(e[i].top_lps[k]));
            json_decref(key);
        }
        json_array_append_new(tops, d);
    }
    json_t *r = json_object();
    json_object_set_new(r, "tokens", tokens);
    json_object_set_new(r, "token_logprobs", lps);
    json_object_set_new(r, "top_logprobs", tops);
    json_object_set_new(r, "text_offset", offs);
    return r;
}

void agent_completion_logprobs_cat(json_t *a, json_t *b)
{
    static const char *keys[] = { "tokens", "token_logprobs", "top_logprobs", "text_offset" };
    for (int i = 0; i < 4; i++)
        json_array_extend(json_object_get(a, keys[i]), json_object_get(b, keys[i]));
}

json_t *agent_tool_calls(const tools_call *c, int n, char (*ids)[32], int index_field)
{
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++) {
        json_t *o = json_object(), *f = json_object();
        if (index_field)
            json_object_set_new(o, "index", json_integer(i));
        json_object_set_new(o, "id", json_string(ids[i]));
        json_object_set_new(o, "type", json_string("function"));
        json_object_set_new(f, "name", json_string(c[i].name));
        json_object_set_new(f, "arguments", json_string(c[i].arguments));
        json_object_set_new(o, "function", f);
        json_array_append_new(a, o);
    }
    return a;
}

char *agent_patch_response(char *json, size_t idx, json_t *logprobs, json_t *tool_calls,
                           const char *prefix, size_t prefix_len)
{
    json_t *root = json ? json_loads(json, 0, NULL) : NULL;
    free(json);
    json_t *ch = json_array_get(json_object_get(root, "choices"), idx);
    char *out = NULL;
    if (!ch)
        goto done;
    if (logprobs)
        json_object_set(ch, "logprobs", logprobs);
    if (tool_calls) {
        json_t *msg = json_object_get(ch, "message");
        if (msg) {
            json_object_set_new(msg, "content", json_null());
            json_object_set(msg, "tool_calls", tool_calls);
        }
        json_object_set_new(ch, "finish_reason", json_string("tool_calls"));
    }
    if (prefix && prefix_len) {
        const char *t = json_string_value(json_object_get(ch, "text"));
        size_t tl = t ? strlen(t) : 0;
        char *s = malloc(prefix_len + tl + 1);
        if (!s)
            goto done;
        memcpy(s, prefix, prefix_len);
        memcpy(s + prefix_len, t ? t : "", tl + 1);
        json_t *js = agent_token_string(s, prefix_len + tl);
        free(s);
        json_object_set_new(ch, "text", js);
    }
    out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
done:
    json_decref(logprobs);
    json_decref(tool_calls);
    json_decref(root);
    return out;
}

char *agent_patch_chunk(char *json, json_t *logprobs, json_t *tool_calls, int finish_tool)
{
    json_t *root = json ? json_loads(json, 0, NULL) : NULL;
    free(json);
    json_t *ch = json_array_get(json_object_get(root, "choices"), 0);
    char *out = NULL;
    if (!ch)
        goto done;
    if (logprobs)
        json_object_set(ch, "logprobs", logprobs);
    json_t *delta = json_object_get(ch, "delta");
    if (tool_calls && delta) {
        json_object_del(delta, "content");
        json_object_set(delta, "tool_calls", tool_calls);
    }
    if (finish_tool)
        json_object_set_new(ch, "finish_reason", json_string("tool_calls"));
    out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
done:
    json_decref(logprobs);
    json_decref(tool_calls);
    json_decref(root);
    return out;
}
