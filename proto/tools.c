/*
 * tools.c - function calling: prompt template, call grammar, reading calls
 * back (see tools.h for the template). The grammar produces exactly the
 * compact layout [{"name":"f","arguments":{...}},...], which is what lets
 * the streaming reader follow it with a few counters instead of a parser.
 */
#include "tools.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_format.h"
#include "json_schema.h"

/* ------------------------------------------------------------ template */

static char *tool_list_text(const oa_request *r)
{
    json_t *lines = json_array();
    size_t total = 0;
    char **t = calloc(r->n_tools ? r->n_tools : 1, sizeof *t);
    char *out = NULL;
    if (!lines || !t)
        goto done;
    for (size_t i = 0; i < r->n_tools; i++) {
        const oa_tool *tl = &r->tools[i];
        json_t *o = json_object();
        json_t *params = json_loads(tl->parameters, 0, NULL);
        if (!o)
            goto done;
        json_object_set_new(o, "name", json_string(tl->name));
        if (tl->description)
            json_object_set_new(o, "description", json_string(tl->description));
        json_object_set_new(o, "parameters", params ? params : json_object());
        t[i] = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!t[i])
            goto done;
        total += strlen(t[i]) + 1;
    }
    static const char head[] = "You can call these tools:\n";
    static const char tail[] = "To call tools, reply with \"Call: \" and a JSON array of "
                               "{\"name\",\"arguments\"} objects.";
    out = malloc(sizeof head + total + sizeof tail + 1);
    if (!out)
        goto done;
    char *p = out;
    memcpy(p, head, sizeof head - 1);
    p += sizeof head - 1;
    for (size_t i = 0; i < r->n_tools; i++) {
        size_t l = strlen(t[i]);
        memcpy(p, t[i], l);
        p += l;
        *p++ = '\n';
    }
    memcpy(p, tail, sizeof tail);
done:
    if (t)
        for (size_t i = 0; i < r->n_tools; i++)
            free(t[i]);
    free(t);
    json_decref(lines);
    return out;
}

char *tools_render(const oa_request *r, size_t *out_len)
{
    int show_tools = r->n_tools > 0 && r->tool_choice != OA_TOOLS_NONE;
    size_t n = r->n_messages + 1;
    oa_message *m = calloc(n, sizeof *m);
    char **owned = calloc(n, sizeof *owned);
    char *list = show_tools ? tool_list_text(r) : NULL;
    char *out = NULL;
    if (!m || !owned || (show_tools && !list))
        goto done;
    size_t k = 0;
    int list_done = !show_tools;
    for (size_t i = 0; i < r->n_messages; i++) {
        const oa_message *src = &r->messages[i];
        m[k] = *src;
        if (!list_done && !strcmp(src->role, "system")) {
            /* the tool list goes at the end of the first system message */
            size_t a = strlen(src->content), b = strlen(list);
            if (!(owned[k] = malloc(a + b + 2)))
                goto done;
            memcpy(owned[k], src->content, a);
            owned[k][a] = '\n';
            memcpy(owned[k] + a + 1, list, b + 1);
            m[k].content = owned[k];
            list_done = 1;
        } else if (src->tool_calls) {
            size_t a = strlen(src->content), b = strlen(src->tool_calls);
            size_t pl = strlen(TOOLS_REPLY_PREFIX);
            if (!(owned[k] = malloc(a + 1 + pl + b + 1)))
                goto done;
            char *p = owned[k];
            if (a) {
                memcpy(p, src->content, a);
                p += a;
                *p++ = '\n';
            }
            memcpy(p, TOOLS_REPLY_PREFIX, pl);
            memcpy(p + pl, src->tool_calls, b + 1);
            m[k].content = owned[k];
        }
        k++;
    }
    if (!list_done) { /* no system message: one with just the list, first */
        memmove(m + 1, m, k * sizeof *m);
        memmove(owned + 1, owned, k * sizeof *owned);
        memset(&m[0], 0, sizeof m[0]);
        m[0].role = (char *)"system";
        m[0].content = list;
        owned[0] = NULL;
        k++;
    }
    out = chat_render(m, k, out_len);
done:
    if (owned)
        for (size_t i = 0; i < n; i++)
            free(owned[i]);
    free(owned);
    free(m);
    free(list);
    return out;
}

/* ------------------------------------------------------------- grammar */

ms_grammar *tools_grammar(const oa_request *r, json_t *doc_schema, int doc_strict, oa_error *e)
{
    if (r->n_tools == 0 || r->tool_choice == OA_TOOLS_NONE)
        return NULL;
    ms_grammar *g = ms_grammar_new();
    /* The callable tools: the named one, or those allowed_tools kept. */
    size_t nt = 0, *idx = calloc(r->n_tools, sizeof *idx);
    for (size_t i = 0; idx && i < r->n_tools; i++)
        if (r->tool_choice == OA_TOOLS_NAMED ? i == (size_t)r->tool_named : !r->tools[i].not_allowed)
            idx[nt++] = i;
    char **names = calloc(r->n_tools, sizeof *names);
    size_t *nl = calloc(r->n_tools, sizeof *nl);
    int32_t *next = calloc(r->n_tools, sizeof *next);
    int ok = 0;
    if (!g || !idx || !names || !nl || !next)
        goto done;
    for (size_t i = 0; i < nt; i++) {
        const oa_tool *t = &r->tools[idx[i]];
        json_t *js = json_string(t->name);
        names[i] = js ? json_dumps(js, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        json_decref(js);
        if (!names[i])
            goto done;
        nl[i] = strlen(names[i]);
        json_t *schema = json_loads(t->parameters, 0, NULL);
        char param[96];
        snprintf(param, sizeof param, "tools[%zu].function.parameters", idx[i]);
        int32_t args = js_schema_node(g, schema, 0, param, e);
        json_decref(schema);
        if (args < 0)
            goto done_err;
        int32_t seq[3] = { ms_grammar_literal(g, ",\"arguments\":", 13), args,
                           ms_grammar_literal(g, "}", 1) };
        next[i] = ms_grammar_seq(g, seq, 3);
    }
    int32_t call[2] = { ms_grammar_literal(g, "{\"name\":", 8),
                        ms_grammar_switch(g, (const char *const *)names, nl, next, nt) };
    int32_t one = ms_grammar_seq(g, call, 2);
    int32_t arr = ms_grammar_array(g, one, 1, r->parallel_tool_calls ? TOOLS_MAX_PARALLEL : 1);
    const char *pre = " " TOOLS_REPLY_PREFIX;
    int32_t root;
    if (r->tool_choice == OA_TOOLS_AUTO && r->format != OA_FORMAT_TEXT) {
        /* " " then the call array or the document; they start differently
         * ('C' against a JSON value's first byte). */
        int32_t doc = js_document_node(g, doc_schema, doc_strict, "response_format.json_schema.schema", e);
        if (doc < 0)
            goto done_err;
        int32_t call_seq[2] = { ms_grammar_literal(g, pre + 1, strlen(pre + 1)), arr };
        int32_t alts[2] = { ms_grammar_seq(g, call_seq, 2), doc };
        int32_t seq[2] = { ms_grammar_literal(g, " ", 1), ms_grammar_alt(g, alts, 2) };
        root = ms_grammar_seq(g, seq, 2);
    } else if (r->tool_choice == OA_TOOLS_AUTO) {
        root = ms_grammar_text_or(g, pre, strlen(pre), arr);
    } else {
        int32_t seq[2] = { ms_grammar_literal(g, pre, strlen(pre)), arr };
        root = ms_grammar_seq(g, seq, 2);
    }
    ms_error err = { 0 };
    if (ms_grammar_finish(g, root, &err) != MS_OK) {
        oa_error_set(e, 400, "invalid_request_error", "tools", NULL,
                     "The tools' parameters cannot be used for constrained decoding: %s.",
                     err.msg);
        goto done_err;
    }
    ok = 1;
done:
    if (!ok)
        oa_error_set(e, 500, "server_error", NULL, NULL, "out of memory building the tool grammar");
done_err:
    for (size_t i = 0; names && i < nt; i++)
        free(names[i]);
    free(names);
    free(nl);
    free(next);
    free(idx);
    if (!ok) {
        ms_grammar_free(g);
        return NULL;
    }
    return g;
}

/* ------------------------------------------------------- reading calls */

void tools_calls_free(tools_call *c, int n)
{
    if (!c)
        return;
    for (int i = 0; i < n; i++) {
        free(c[i].name);
        free(c[i].arguments);
    }
    free(c);
}

int tools_parse_reply(const char *text, size_t len, tools_call **out)
{
    *out = NULL;
    size_t pl = strlen(TOOLS_REPLY_PREFIX);
    if (len < pl || memcmp(text, TOOLS_REPLY_PREFIX, pl))
        return 0;
    json_t *arr = json_loadb(text + pl, len - pl, 0, NULL);
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        json_decref(arr);
        return 0;
    }
    size_t n = json_array_size(arr);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(arr, i);
        if (!json_is_object(c) || !json_is_string(json_object_get(c, "name"))) {
            json_decref(arr);
            return 0;
        }
    }
    tools_call *c = calloc(n, sizeof *c);
    if (!c) {
        json_decref(arr);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        json_t *a = json_object_get(o, "arguments");
        c[i].name = strdup(json_string_value(json_object_get(o, "name")));
        c[i].arguments = a ? json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER)
                           : strdup("{}");
        if (!c[i].name || !c[i].arguments) {
            tools_calls_free(c, (int)n);
            json_decref(arr);
            return -1;
        }
    }
    json_decref(arr);
    *out = c;
    return (int)n;
}

void tools_call_id(char *out, uint64_t x)
{
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    memcpy(out, "call_", 5);
    for (int i = 0; i < 24; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out[5 + i] = al[(x * 0x2545F4914F6CDD1Dull >> 33) % 62];
    }
    out[29] = '\0';
}

/* ----------------------------------------------------------- streaming */

static const char CALL_OPEN[] = "{\"name\":\"";
static const char ARGS_KEY[] = ",\"arguments\":";

void tools_stream_init(tools_stream *s)
{
    memset(s, 0, sizeof *s);
    s->index = -1;
}

int tools_stream_feed(tools_stream *s, const char *text, size_t len,
                      void (*on_start)(void *ud, int index, const char *name),
                      void (*on_args)(void *ud, int index, const char *bytes, size_t n), void *ud)
{
    static const char pre[] = TOOLS_REPLY_PREFIX "[";
    size_t run = 0; /* start of the current run of argument bytes */
    int in_run = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (s->stage == -1)
            return -1;
        switch (s->stage) {
        case 0:
            if (c != pre[s->pos]) {
                s->stage = -1;
                return -1;
            }
            if (++s->pos == sizeof pre - 1) {
                s->stage = 1;
                s->skip = 0;
            }
            break;
        case 1: /* {"name":" */
            if (c != CALL_OPEN[s->skip]) {
                s->stage = -1;
                return -1;
            }
            if (++s->skip == sizeof CALL_OPEN - 1) {
                s->stage = 2;
                s->name_len = 0;
            }
            break;
        case 2:
            if (c == '"') {
                s->name[s->name_len] = '\0';
                s->index++;
                if (on_start)
                    on_start(ud, s->index, s->name);
                s->stage = 3;
                s->skip = 0;
            } else if (s->name_len + 1 < sizeof s->name) {
                s->name[s->name_len++] = c;
            }
            break;
        case 3: /* ,"arguments": */
            if (c != ARGS_KEY[s->skip]) {
                s->stage = -1;
                return -1;
            }
            if (++s->skip == sizeof ARGS_KEY - 1) {
                s->stage = 4;
                s->depth = 0;
                s->in_str = s->esc = 0;
            }
            break;
        case 4:
            if (!s->in_str && s->depth == 0 && c == '}') {
                if (in_run && on_args && i > run)
                    on_args(ud, s->index, text + run, i - run);
                in_run = 0;
                s->stage = 6;
                break;
            }
            if (!in_run) {
                in_run = 1;
                run = i;
            }
            if (s->in_str) {
                if (s->esc)
                    s->esc = 0;
                else if (c == '\\')
                    s->esc = 1;
                else if (c == '"')
                    s->in_str = 0;
            } else if (c == '"') {
                s->in_str = 1;
            } else if (c == '{' || c == '[') {
                s->depth++;
            } else if (c == '}' || c == ']') {
                s->depth--;
            }
            break;
        case 6:
            if (c == ',') {
                s->stage = 1;
                s->skip = 0;
            } else if (c == ']') {
                s->stage = 5;
            } else {
                s->stage = -1;
                return -1;
            }
            break;
        default:
            break;
        }
    }
    if (in_run && on_args && len > run)
        on_args(ud, s->index, text + run, len - run);
    return s->stage == -1 ? -1 : 0;
}
