/*
 * json_schema.c - JSON Schema -> ms_grammar (see json_schema.h for the
 * supported subset). A recursive walk; $ref targets get one placeholder node
 * each (memoized by pointer), defined after their own walk, so recursive
 * schemas terminate and shared definitions are built once.
 */
#include "json_schema.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REFS 256
#define MAX_NEST 64

typedef struct jctx {
    ms_grammar *g;
    json_t *root;
    int strict;
    const char *param;
    oa_error *e;
    json_t *ref_schema[MAX_REFS];
    int32_t ref_node[MAX_REFS];
    int n_refs;
    int nest;
} jctx;

static int32_t fail(jctx *c, const char *path, const char *fmt, const char *what)
{
    char msg[300];
    snprintf(msg, sizeof msg, fmt, what);
    oa_error_set(c->e, 400, "invalid_request_error", c->param, NULL,
                 "Invalid schema for %s: %s (at '%s').", c->param, msg, path[0] ? path : "#");
    return -1;
}

static int32_t nomem(jctx *c)
{
    if (c->e->status == 0 || c->e->status == 200)
        oa_error_set(c->e, 500, "server_error", NULL, NULL, "out of memory building the grammar");
    return -1;
}

static int32_t node(ms_grammar *g, json_t *s, const char *path, jctx *c);

static const char *const known[] = {
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "nullable", "minLength", "maxLength", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "$ref", "$defs", "definitions",
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "strict",
    NULL
};

static int is_known(const char *k)
{
    for (int i = 0; known[i]; i++)
        if (!strcmp(known[i], k))
            return 1;
    return 0;
}

/* A value's compact JSON text as a literal. */
static int32_t literal_of(jctx *c, json_t *v)
{
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
    if (!t)
        return nomem(c);
    int32_t id = ms_grammar_literal(c->g, t, strlen(t));
    free(t);
    return id < 0 ? nomem(c) : id;
}

static int32_t enum_node(jctx *c, json_t *arr, const char *path)
{
    size_t n = json_array_size(arr);
    if (!json_is_array(arr) || n == 0)
        return fail(c, path, "%s must be a non-empty array", "enum");
    char **t = calloc(n, sizeof *t);
    size_t *l = calloc(n, sizeof *l);
    int32_t id = -1;
    if (!t || !l)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (!(t[i] = json_dumps(json_array_get(arr, i), JSON_COMPACT | JSON_ENCODE_ANY |
                                JSON_ENSURE_ASCII)))
            goto out;
        l[i] = strlen(t[i]);
    }
    /* enum members like 1 and 12 are prefixes of each other: a literal set
     * handles that (it ends at the first byte that continues neither) */
    id = ms_grammar_literals(c->g, (const char *const *)t, l, n);
out:
    if (t)
        for (size_t i = 0; i < n; i++)
            free(t[i]);
    free(t);
    free(l);
    return id < 0 ? nomem(c) : id;
}

static int get_count(json_t *s, const char *key, int32_t *out)
{
    json_t *v = json_object_get(s, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000000)
        return -1;
    *out = (int32_t)json_integer_value(v);
    return 1;
}

static int32_t object_node(jctx *c, json_t *s, const char *path)
{
    json_t *props = json_object_get(s, "properties");
    json_t *addl = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props))
        return fail(c, path, "%s must be an object", "properties");
    json_t *req = json_object_get(s, "required");
    if (req && !json_is_array(req))
        return fail(c, path, "%s must be an array", "required");
    size_t np = props ? json_object_size(props) : 0;
    /* every required name must be a listed property */
    for (size_t i = 0; req && i < json_array_size(req); i++) {
        json_t *r = json_array_get(req, i);
        if (!json_is_string(r) || !json_object_get(props ? props : s, json_string_value(r)) ||
            !props)
            return fail(c, path, "a name in %s is not among the properties", "required");
    }
    if (np == 0) {
        if (addl && json_is_object(addl)) { /* a map: values of that schema */
            char sub[512];
            snprintf(sub, sizeof sub, "%s/additionalProperties", path);
            int32_t v = node(c->g, addl, sub, c);
            return v < 0 ? -1 : ms_grammar_object(c->g, v);
        }
        /* properties: {} lists no property, so none is generated (a tool
         * without arguments); an object left open (no properties, or
         * additionalProperties: true) takes any keys. */
        if ((addl && json_is_false(addl)) || (props && !addl)) {
            int32_t id = ms_grammar_literal(c->g, "{}", 2);
            return id < 0 ? nomem(c) : id;
        }
        int32_t any = ms_grammar_any(c->g);
        return any < 0 ? nomem(c) : ms_grammar_object(c->g, any);
    }
    if (addl && !json_is_boolean(addl) && !json_is_object(addl))
        return fail(c, path, "%s must be a boolean or a schema", "additionalProperties");
    int32_t *items = malloc((2 * np + 1) * sizeof *items);
    if (!items)
        return nomem(c);
    size_t k = 0, i = 0;
    const char *key;
    json_t *ps;
    int32_t id = -1;
    json_object_foreach(props, key, ps) {
        /* ,"key": as one literal (the first with the brace) */
        json_t *ks = json_string(key);
        char *kt = ks ? json_dumps(ks, JSON_COMPACT | JSON_ENCODE_ANY | JSON_ENSURE_ASCII) : NULL;
        json_decref(ks);
        if (!kt)
            goto out;
        size_t kl = strlen(kt);
        char *lit = malloc(kl + 3);
        if (!lit) {
            free(kt);
            goto out;
        }
        lit[0] = i == 0 ? '{' : ',';
        memcpy(lit + 1, kt, kl);
        lit[kl + 1] = ':';
        free(kt);
        items[k] = ms_grammar_literal(c->g, lit, kl + 2);
        free(lit);
        if (items[k++] < 0)
            goto out;
        char sub[512];
        snprintf(sub, sizeof sub, "%s/properties/%s", path, key);
        if ((items[k++] = node(c->g, ps, sub, c)) < 0) {
            free(items);
            return -1;
        }
        i++;
    }
    if ((items[k++] = ms_grammar_literal(c->g, "}", 1)) < 0)
        goto out;
    id = ms_grammar_seq(c->g, items, k);
out:
    free(items);
    return id < 0 ? nomem(c) : id;
}

static int32_t number_node(jctx *c, json_t *s, int integer, const char *path)
{
    int has_min = 0, has_max = 0;
    double mn = 0, mx = 0;
    json_t *v;
    if ((v = json_object_get(s, "minimum"))) {
        if (!json_is_number(v))
            return fail(c, path, "%s must be a number", "minimum");
        has_min = 1;
        mn = json_number_value(v);
    }
    if ((v = json_object_get(s, "maximum"))) {
        if (!json_is_number(v))
            return fail(c, path, "%s must be a number", "maximum");
        has_max = 1;
        mx = json_number_value(v);
    }
    if ((v = json_object_get(s, "exclusiveMinimum")) && json_is_number(v)) {
        double x = json_number_value(v);
        /* integers: the next one up; numbers: the next six-decimal step */
        x = integer ? floor(x) + 1 : x + 1e-6;
        if (!has_min || x > mn)
            mn = x, has_min = 1;
    }
    if ((v = json_object_get(s, "exclusiveMaximum")) && json_is_number(v)) {
        double x = json_number_value(v);
        x = integer ? ceil(x) - 1 : x - 1e-6;
        if (!has_max || x < mx)
            mx = x, has_max = 1;
    }
    int32_t id = ms_grammar_number(c->g, integer, has_min, mn, has_max, mx);
    if (id < 0)
        return fail(c, path, "%s: no value of at most 15 digits fits the bounds",
                    "minimum/maximum");
    return id;
}

static int32_t type_node(jctx *c, json_t *s, const char *t, const char *path)
{
    if (!strcmp(t, "object"))
        return object_node(c, s, path);
    if (!strcmp(t, "array")) {
        int32_t mn = 0, mx = -1;
        if (get_count(s, "minItems", &mn) < 0 || get_count(s, "maxItems", &mx) < 0)
            return fail(c, path, "%s must be a non-negative integer", "minItems/maxItems");
        if (mx >= 0 && mx < mn)
            return fail(c, path, "%s", "maxItems < minItems");
        json_t *items = json_object_get(s, "items");
        int32_t it;
        char sub[512];
        snprintf(sub, sizeof sub, "%s/items", path);
        if (items && json_is_object(items))
            it = node(c->g, items, sub, c);
        else if (!items || json_is_true(items))
            it = ms_grammar_any(c->g);
        else
            return fail(c, path, "%s must be a schema", "items");
        if (it < 0)
            return c->e->status ? -1 : nomem(c);
        int32_t id = ms_grammar_array(c->g, it, mn, mx);
        return id < 0 ? nomem(c) : id;
    }
    if (!strcmp(t, "string")) {
        int32_t mn = 0, mx = -1;
        if (get_count(s, "minLength", &mn) < 0 || get_count(s, "maxLength", &mx) < 0)
            return fail(c, path, "%s must be a non-negative integer", "minLength/maxLength");
        if (mx >= 0 && mx < mn)
            return fail(c, path, "%s", "maxLength < minLength");
        int32_t id = ms_grammar_string(c->g, mn, mx);
        return id < 0 ? nomem(c) : id;
    }
    if (!strcmp(t, "number") || !strcmp(t, "integer"))
        return number_node(c, s, !strcmp(t, "integer"), path);
    if (!strcmp(t, "boolean")) {
        const char *b[] = { "true", "false" };
        size_t bl[] = { 4, 5 };
        int32_t id = ms_grammar_literals(c->g, b, bl, 2);
        return id < 0 ? nomem(c) : id;
    }
    if (!strcmp(t, "null")) {
        int32_t id = ms_grammar_literal(c->g, "null", 4);
        return id < 0 ? nomem(c) : id;
    }
    return fail(c, path, "unknown type '%s'", t);
}

static int32_t ref_node(jctx *c, const char *ref, const char *path)
{
    json_t *target = NULL;
    if (!strcmp(ref, "#")) {
        target = c->root;
    } else if (!strncmp(ref, "#/$defs/", 8)) {
        target = json_object_get(json_object_get(c->root, "$defs"), ref + 8);
    } else if (!strncmp(ref, "#/definitions/", 14)) {
        target = json_object_get(json_object_get(c->root, "definitions"), ref + 14);
    } else {
        /* zod-to-json-schema also emits paths like #/properties/a/items */
        if (!strncmp(ref, "#/", 2)) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", ref + 2);
            target = c->root;
            for (char *tok = strtok(buf, "/"); tok && target; tok = strtok(NULL, "/"))
                target = json_is_array(target) ? json_array_get(target, (size_t)atoi(tok))
                                               : json_object_get(target, tok);
        }
    }
    if (!target || !json_is_object(target))
        return fail(c, path, "$ref '%s' cannot be resolved (only local references are)", ref);
    for (int i = 0; i < c->n_refs; i++)
        if (c->ref_schema[i] == target)
            return c->ref_node[i];
    if (c->n_refs == MAX_REFS)
        return fail(c, path, "%s", "too many $ref targets");
    int32_t ph = ms_grammar_ref(c->g);
    if (ph < 0)
        return nomem(c);
    int k = c->n_refs++;
    c->ref_schema[k] = target;
    c->ref_node[k] = ph;
    int32_t body = node(c->g, target, ref, c);
    if (body < 0)
        return -1;
    if (ms_grammar_define(c->g, ph, body) < 0)
        return nomem(c);
    return ph;
}

static int32_t node(ms_grammar *g, json_t *s, const char *path, jctx *c)
{
    (void)g;
    if (json_is_true(s) || (json_is_object(s) && json_object_size(s) == 0)) {
        int32_t a = ms_grammar_any(c->g);
        return a < 0 ? nomem(c) : a;
    }
    if (!json_is_object(s))
        return fail(c, path, "%s", "a schema must be an object");
    if (++c->nest > MAX_NEST) {
        c->nest--;
        return fail(c, path, "%s", "schema nested too deeply");
    }
    int32_t id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(s, key, v) {
        if (!is_known(key) && c->strict) {
            char what[80];
            snprintf(what, sizeof what, "%.60s", key);
            id = fail(c, path, "unsupported keyword '%s'", what);
            goto out;
        }
    }
    json_t *ref = json_object_get(s, "$ref");
    json_t *en = json_object_get(s, "enum");
    json_t *cn = json_object_get(s, "const");
    json_t *any = json_object_get(s, "anyOf");
    if (!any)
        any = json_object_get(s, "oneOf");
    json_t *type = json_object_get(s, "type");
    int nullable = json_is_true(json_object_get(s, "nullable"));
    if (ref) {
        if (!json_is_string(ref)) {
            id = fail(c, path, "%s must be a string", "$ref");
            goto out;
        }
        id = ref_node(c, json_string_value(ref), path);
    } else if (cn) {
        id = literal_of(c, cn);
    } else if (en) {
        id = enum_node(c, en, path);
    } else if (any) {
        size_t n = json_array_size(any);
        if (!json_is_array(any) || n == 0) {
            id = fail(c, path, "%s must be a non-empty array", "anyOf");
            goto out;
        }
        int32_t *alts = malloc(n * sizeof *alts);
        if (!alts) {
            id = nomem(c);
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            char sub[512];
            snprintf(sub, sizeof sub, "%s/anyOf/%zu", path, i);
            if ((alts[i] = node(c->g, json_array_get(any, i), sub, c)) < 0) {
                free(alts);
                goto out;
            }
        }
        id = ms_grammar_alt(c->g, alts, n);
        free(alts);
        if (id < 0)
            id = nomem(c);
    } else if (json_is_array(type)) {
        size_t n = json_array_size(type);
        int32_t alts[8];
        if (n == 0 || n > 7) {
            id = fail(c, path, "%s must list 1 to 7 types", "type");
            goto out;
        }
        int has_num = 0, has_int = 0;
        for (size_t i = 0; i < n; i++) {
            const char *t = json_string_value(json_array_get(type, i));
            has_num |= t && !strcmp(t, "number");
            has_int |= t && !strcmp(t, "integer");
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            const char *t = json_string_value(json_array_get(type, i));
            if (!t) {
                id = fail(c, path, "%s entries must be strings", "type");
                goto out;
            }
            if (has_num && has_int && !strcmp(t, "integer"))
                continue; /* number covers integer */
            if ((alts[k++] = type_node(c, s, t, path)) < 0)
                goto out;
        }
        id = ms_grammar_alt(c->g, alts, k);
    } else if (json_is_string(type)) {
        id = type_node(c, s, json_string_value(type), path);
    } else if (type) {
        id = fail(c, path, "%s must be a string or an array of strings", "type");
    } else if (json_object_get(s, "properties")) {
        id = object_node(c, s, path);
    } else if (json_object_get(s, "items")) {
        id = type_node(c, s, "array", path);
    } else {
        id = ms_grammar_any(c->g);
        if (id < 0)
            id = nomem(c);
    }
    if (id >= 0 && nullable) {
        int32_t alts[2] = { id, ms_grammar_literal(c->g, "null", 4) };
        id = alts[1] < 0 ? nomem(c) : ms_grammar_alt(c->g, alts, 2);
    }
out:
    c->nest--;
    return id;
}

int32_t js_schema_node(ms_grammar *g, json_t *schema, int strict, const char *param, oa_error *e)
{
    jctx *c = calloc(1, sizeof *c);
    if (!c) {
        oa_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return -1;
    }
    c->g = g;
    c->root = schema;
    c->strict = strict;
    c->param = param;
    c->e = e;
    e->status = 0;
    int32_t id = node(g, schema, "", c);
    free(c);
    return id;
}

int32_t js_document_node(ms_grammar *g, json_t *schema, int strict, const char *param, oa_error *e)
{
    if (schema)
        return js_schema_node(g, schema, strict, param, e);
    int32_t any = ms_grammar_any(g);
    int32_t root = any < 0 ? -1 : ms_grammar_object(g, any);
    if (root < 0)
        oa_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    return root;
}

ms_grammar *js_schema_grammar(json_t *schema, int strict, const char *param, oa_error *e)
{
    ms_grammar *g = ms_grammar_new();
    if (!g) {
        oa_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return NULL;
    }
    int32_t root = js_document_node(g, schema, strict, param, e);
    ms_error err = { 0 };
    if (root < 0 || ms_grammar_finish(g, root, &err) != MS_OK) {
        if (root >= 0)
            oa_error_set(e, 400, "invalid_request_error", param, NULL,
                         "Invalid schema for %s: %s.", param, err.msg);
        ms_grammar_free(g);
        return NULL;
    }
    return g;
}
