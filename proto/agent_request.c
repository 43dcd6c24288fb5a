/*
 * agent_request.c - the agent/eval request fields (see agent_request.h).
 */
#include "agent_request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema.h"
#include "tools.h"

#define AGENT_MAX_TOOLS 128

static json_t *opt(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return v && !json_is_null(v) ? v : NULL;
}

int agent_parse_prompt_ids(json_t *v, oa_request *r, oa_error *e)
{
    size_t n = json_array_size(v);
    int nested = json_is_array(json_array_get(v, 0));
    size_t np = nested ? n : 1;
    r->prompts = calloc(np, sizeof *r->prompts);
    r->prompt_ids = calloc(np, sizeof *r->prompt_ids);
    r->prompt_n_ids = calloc(np, sizeof *r->prompt_n_ids);
    if (!r->prompts || !r->prompt_ids || !r->prompt_n_ids)
        return oa_nomem(e);
    for (size_t p = 0; p < np; p++) {
        json_t *arr = nested ? json_array_get(v, p) : v;
        if (!json_is_array(arr))
            return oa_bad(e, "prompt", "Invalid 'prompt': mixing token-id arrays and other values.");
        size_t k = json_array_size(arr);
        if (k == 0)
            return oa_bad(e, "prompt", "Invalid 'prompt': an empty token-id array.");
        if (!(r->prompts[p] = strdup("")))
            return oa_nomem(e);
        r->n_prompts = p + 1;
        if (!(r->prompt_ids[p] = malloc(k * sizeof(int32_t))))
            return oa_nomem(e);
        for (size_t i = 0; i < k; i++) {
            json_t *t = json_array_get(arr, i);
            if (!json_is_integer(t) || json_integer_value(t) < 0 ||
                json_integer_value(t) > INT32_MAX)
                return oa_bad(e, "prompt",
                           "Invalid 'prompt': token ids must be non-negative integers.");
            r->prompt_ids[p][i] = (int32_t)json_integer_value(t);
        }
        r->prompt_n_ids[p] = k;
    }
    return 0;
}

/* The called function's name for id, from the assistant messages before i. */
static const char *call_name(json_t *msgs, size_t i, const char *id)
{
    while (i-- > 0) {
        json_t *calls = json_object_get(json_array_get(msgs, i), "tool_calls");
        for (size_t k = 0; k < json_array_size(calls); k++) {
            json_t *c = json_array_get(calls, k);
            const char *cid = json_string_value(json_object_get(c, "id"));
            if (cid && !strcmp(cid, id))
                return json_string_value(json_object_get(json_object_get(c, "function"), "name"));
        }
    }
    return NULL;
}

int agent_parse_message(json_t *msgs, size_t i, oa_message *msg, oa_error *e)
{
    json_t *m = json_array_get(msgs, i);
    char param[96];
    if (!strcmp(msg->role, "tool")) {
        snprintf(param, sizeof param, "messages[%zu].tool_call_id", i);
        json_t *id = opt(m, "tool_call_id");
        if (!id)
            return oa_bad(e, param, "Missing required parameter: '%s'.", param);
        if (!json_is_string(id))
            return oa_bad(e, param, "Invalid type for '%s': expected a string.", param);
        if (!(msg->tool_call_id = strdup(json_string_value(id))))
            return oa_nomem(e);
        const char *name = call_name(msgs, i, msg->tool_call_id);
        if (name) { /* "f -> result" tells the model which call this answers */
            size_t a = strlen(name), b = strlen(msg->content);
            char *c = malloc(a + 4 + b + 1);
            if (!c)
                return oa_nomem(e);
            memcpy(c, name, a);
            memcpy(c + a, " -> ", 4);
            memcpy(c + a + 4, msg->content, b + 1);
            free(msg->content);
            msg->content = c;
        }
        return 0;
    }
    if (strcmp(msg->role, "assistant"))
        return 0;
    json_t *calls = opt(m, "tool_calls");
    if (!calls)
        return 0;
    snprintf(param, sizeof param, "messages[%zu].tool_calls", i);
    if (!json_is_array(calls))
        return oa_bad(e, param, "Invalid type for '%s': expected an array.", param);
    if (json_array_size(calls) == 0)
        return 0;
    json_t *out = json_array();
    if (!out)
        return oa_nomem(e);
    for (size_t k = 0; k < json_array_size(calls); k++) {
        json_t *c = json_array_get(calls, k);
        json_t *f = json_object_get(c, "function");
        json_t *name = json_object_get(f, "name");
        json_t *args = json_object_get(f, "arguments");
        if (!json_is_string(name)) {
            json_decref(out);
            return oa_bad(e, param, "Missing required parameter: '%s[%zu].function.name'.", param, k);
        }
        json_t *o = json_object();
        json_object_set(o, "name", name);
        /* arguments arrive as JSON text: render the value, as the model writes it */
        json_t *av = json_is_string(args) ? json_loads(json_string_value(args), JSON_DECODE_ANY, NULL)
                                          : NULL;
        json_object_set_new(o, "arguments", av ? av : json_object());
        json_array_append_new(out, o);
    }
    msg->tool_calls = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(out);
    return msg->tool_calls ? 0 : oa_nomem(e);
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* tool_choice {"type": "allowed_tools"}: chat's form nests mode and tools in
 * "allowed_tools" (tools as {"type": "function", "function": {"name"}}), the
 * Responses API's has them at the top (tools as {"type": "function", "name"}).
 * Every tool stays in the prompt (so a session's text does not change with
 * the subset); the grammar calls only the listed ones. */
static int parse_allowed_tools(json_t *tc, oa_request *r, oa_error *e)
{
    json_t *at = json_object_get(tc, "allowed_tools");
    if (!at)
        at = tc;
    const char *mode = json_string_value(json_object_get(at, "mode"));
    json_t *list = json_object_get(at, "tools");
    if (!mode || (strcmp(mode, "auto") && strcmp(mode, "required")))
        return oa_bad(e, "tool_choice", "Invalid 'tool_choice.allowed_tools.mode': expected 'auto' "
                                        "or 'required'.");
    if (!json_is_array(list) || !json_array_size(list))
        return oa_bad(e, "tool_choice", "Invalid 'tool_choice.allowed_tools.tools': expected a "
                                        "non-empty array of tools.");
    for (size_t k = 0; k < r->n_tools; k++)
        r->tools[k].not_allowed = 1;
    size_t i;
    json_t *t;
    json_array_foreach (list, i, t) {
        const char *name = json_string_value(json_object_get(json_object_get(t, "function"), "name"));
        if (!name)
            name = json_string_value(json_object_get(t, "name"));
        size_t k = 0;
        while (name && k < r->n_tools && strcmp(r->tools[k].name, name))
            k++;
        if (!name || k == r->n_tools)
            return oa_bad(e, "tool_choice", "Invalid 'tool_choice.allowed_tools.tools[%zu]': %s%.64s%s.", i,
                       name ? "no function named '" : "expected a function tool with a name",
                       name ? name : "", name ? "' in 'tools'" : "");
        r->tools[k].not_allowed = 0;
    }
    r->tool_choice = strcmp(mode, "auto") ? OA_TOOLS_REQUIRED : OA_TOOLS_AUTO;
    return 0;
}

static int parse_tools(json_t *root, oa_request *r, oa_error *e)
{
    json_t *tools = opt(root, "tools");
    if (tools) {
        if (!json_is_array(tools))
            return oa_bad(e, "tools", "Invalid type for 'tools': expected an array.");
        size_t n = json_array_size(tools);
        if (n > AGENT_MAX_TOOLS)
            return oa_bad(e, "tools", "Invalid 'tools': at most %d tools.", AGENT_MAX_TOOLS);
        if (n && !(r->tools = calloc(n, sizeof *r->tools)))
            return oa_nomem(e);
        for (size_t i = 0; i < n; i++) {
            char param[64];
            json_t *t = json_array_get(tools, i);
            const char *type = json_string_value(json_object_get(t, "type"));
            snprintf(param, sizeof param, "tools[%zu].type", i);
            if (!type || strcmp(type, "function"))
                return oa_bad(e, param, "Invalid value for '%s': only 'function' tools are supported.",
                           param);
            json_t *f = json_object_get(t, "function");
            const char *name = json_string_value(json_object_get(f, "name"));
            snprintf(param, sizeof param, "tools[%zu].function.name", i);
            if (!name || !valid_name(name))
                return oa_bad(e, param, "Invalid '%s': expected 1 to 64 characters from [A-Za-z0-9_-].",
                           param);
            for (size_t k = 0; k < r->n_tools; k++)
                if (!strcmp(r->tools[k].name, name))
                    return oa_bad(e, param, "Invalid 'tools': the name '%s' is used twice.", name);
            oa_tool *ot = &r->tools[r->n_tools++];
            json_t *params = opt(f, "parameters");
            json_t *desc = opt(f, "description");
            ot->name = strdup(name);
            ot->description = json_is_string(desc) ? strdup(json_string_value(desc)) : NULL;
            if (params && !json_is_object(params)) {
                snprintf(param, sizeof param, "tools[%zu].function.parameters", i);
                return oa_bad(e, param, "Invalid type for '%s': expected an object.", param);
            }
            ot->parameters = params ? json_dumps(params, JSON_COMPACT | JSON_PRESERVE_ORDER)
                                    : strdup("{\"type\":\"object\",\"properties\":{}}");
            if (!ot->name || !ot->parameters || (json_is_string(desc) && !ot->description))
                return oa_nomem(e);
        }
    }
    r->tool_choice = r->n_tools ? OA_TOOLS_AUTO : OA_TOOLS_NONE;
    json_t *tc = opt(root, "tool_choice");
    if (tc) {
        const char *s = json_string_value(tc);
        if (s) {
            if (!strcmp(s, "none"))
                r->tool_choice = OA_TOOLS_NONE;
            else if (!strcmp(s, "auto"))
                r->tool_choice = r->n_tools ? OA_TOOLS_AUTO : OA_TOOLS_NONE;
            else if (!strcmp(s, "required"))
                r->tool_choice = OA_TOOLS_REQUIRED;
            else
                return oa_bad(e, "tool_choice",
                           "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' "
                           "or an object naming a function.");
        } else if (json_is_object(tc) && json_is_string(json_object_get(tc, "type")) &&
                   !strcmp(json_string_value(json_object_get(tc, "type")), "allowed_tools")) {
            if (parse_allowed_tools(tc, r, e) < 0)
                return -1;
        } else if (json_is_object(tc)) {
            const char *name = json_string_value(
                json_object_get(json_object_get(tc, "function"), "name"));
            if (!name) /* Responses API form: {"type":"function","name":"f"} */
                name = json_string_value(json_object_get(tc, "name"));
            if (!name)
                return oa_bad(e, "tool_choice", "Missing required parameter: 'tool_choice.function.name'.");
            r->tool_choice = OA_TOOLS_NAMED;
            r->tool_named = -1;
            for (size_t k = 0; k < r->n_tools; k++)
                if (!strcmp(r->tools[k].name, name))
                    r->tool_named = (int)k;
            if (r->tool_named < 0)
                return oa_bad(e, "tool_choice",
                           "Invalid 'tool_choice': no function named '%.64s' in 'tools'.", name);
        } else {
            return oa_bad(e, "tool_choice", "Invalid type for 'tool_choice': expected a string or an object.");
        }
        if (r->tool_choice == OA_TOOLS_REQUIRED && !r->n_tools)
            return oa_bad(e, "tool_choice", "Invalid 'tool_choice': 'required' needs 'tools'.");
    }
    r->parallel_tool_calls = 1;
    json_t *pc = opt(root, "parallel_tool_calls");
    if (pc) {
        if (!json_is_boolean(pc))
            return oa_bad(e, "parallel_tool_calls", "Invalid type for 'parallel_tool_calls': expected a boolean.");
        r->parallel_tool_calls = json_is_true(pc);
    }
    return 0;
}

/* response_format -> a grammar for the chat reply: one space (the template's,
 * dropped from the reply like any first space), then the document. The
 * schema (borrowed from root; NULL for json_object) and strict flag are also
 * reported, for the tools' grammar. */
static int parse_format(json_t *root, oa_request *r, json_t **schema_out, int *strict_out,
                        oa_error *e)
{
    json_t *rf = opt(root, "response_format");
    if (!rf)
        return 0;
    if (!json_is_object(rf))
        return oa_bad(e, "response_format", "Invalid type for 'response_format': expected an object.");
    const char *type = json_string_value(json_object_get(rf, "type"));
    if (!type)
        return oa_bad(e, "response_format.type", "Missing required parameter: 'response_format.type'.");
    json_t *schema = NULL;
    int strict = 0;
    if (!strcmp(type, "text")) {
        return 0;
    } else if (!strcmp(type, "json_object")) {
        r->format = OA_FORMAT_JSON_OBJECT;
    } else if (!strcmp(type, "json_schema")) {
        r->format = OA_FORMAT_JSON_SCHEMA;
        json_t *js = json_object_get(rf, "json_schema");
        if (!json_is_object(js))
            return oa_bad(e, "response_format.json_schema",
                       "Missing required parameter: 'response_format.json_schema'.");
        if (!json_is_string(json_object_get(js, "name")))
            return oa_bad(e, "response_format.json_schema.name",
                       "Missing required parameter: 'response_format.json_schema.name'.");
        schema = opt(js, "schema");
        strict = json_is_true(json_object_get(js, "strict"));
        if (schema && !json_is_object(schema))
            return oa_bad(e, "response_format.json_schema.schema",
                       "Invalid type for 'response_format.json_schema.schema': expected an object.");
    } else {
        return oa_bad(e, "response_format.type",
                   "Invalid value: '%.40s'. Supported values are: 'text', 'json_object' and "
                   "'json_schema'.", type);
    }
    *schema_out = schema;
    *strict_out = strict;
    return agent_format_grammar(r, schema, strict, "response_format.json_schema.schema", e);
}

int agent_format_grammar(oa_request *r, json_t *schema, int strict, const char *param, oa_error *e)
{
    ms_grammar *g = ms_grammar_new();
    if (!g)
        return oa_nomem(e);
    int32_t doc = js_document_node(g, schema, strict, param, e);
    if (doc < 0) {
        ms_grammar_free(g);
        return -1;
    }
    int32_t seq[2] = { ms_grammar_literal(g, " ", 1), doc };
    int32_t root = ms_grammar_seq(g, seq, 2);
    ms_error err = { 0 };
    if (ms_grammar_finish(g, root, &err) != MS_OK) {
        ms_grammar_free(g);
        return oa_bad(e, param, "Invalid schema for '%s': %s.", param, err.msg);
    }
    r->grammar = g;
    return 0;
}

int agent_parse_fields(oa_kind kind, json_t *root, oa_request *r, oa_error *e)
{
    json_t *lp = opt(root, "logprobs");
    if (kind == OA_CHAT) {
        if (lp) {
            if (!json_is_boolean(lp))
                return oa_bad(e, "logprobs", "Invalid type for 'logprobs': expected a boolean.");
            r->logprobs = json_is_true(lp);
        }
        json_t *tl = opt(root, "top_logprobs");
        if (tl) {
            if (!json_is_integer(tl) || json_integer_value(tl) < 0 || json_integer_value(tl) > 20)
                return oa_bad(e, "top_logprobs",
                           "Invalid 'top_logprobs': expected an integer between 0 and 20.");
            if (!r->logprobs)
                return oa_bad(e, "top_logprobs",
                           "Invalid 'top_logprobs': 'logprobs' must be true to use it.");
            r->top_logprobs = (int)json_integer_value(tl);
        }
    } else {
        if (lp) {
            if (!json_is_integer(lp) || json_integer_value(lp) < 0 || json_integer_value(lp) > 5)
                return oa_bad(e, "logprobs", "Invalid 'logprobs': expected an integer between 0 and 5.");
            r->logprobs = 1;
            r->top_logprobs = (int)json_integer_value(lp);
        }
        json_t *echo = opt(root, "echo");
        if (echo) {
            if (!json_is_boolean(echo))
                return oa_bad(e, "echo", "Invalid type for 'echo': expected a boolean.");
            r->echo = json_is_true(echo);
        }
        return 0;
    }
    json_t *schema = NULL;
    int strict = 0;
    if (parse_tools(root, r, e) < 0 || parse_format(root, r, &schema, &strict, e) < 0)
        return -1;
    if (r->tool_choice != OA_TOOLS_NONE) {
        /* A call, or (auto) text: the response_format document when there
         * is one (checked alone above, so its errors name it). */
        ms_grammar *g = tools_grammar(r, schema, strict, e);
        if (!g)
            return -1;
        ms_grammar_free(r->grammar);
        r->grammar = g;
        r->grammar_tools = 1;
    }
    return 0;
}

void agent_request_free(oa_request *r)
{
    for (size_t i = 0; r->prompt_ids && i < r->n_prompts; i++)
        free(r->prompt_ids[i]);
    free(r->prompt_ids);
    free(r->prompt_n_ids);
    for (size_t i = 0; i < r->n_tools; i++) {
        free(r->tools[i].name);
        free(r->tools[i].description);
        free(r->tools[i].parameters);
    }
    free(r->tools);
    ms_grammar_free(r->grammar);
}
