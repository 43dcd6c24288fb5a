/*
 * test_constraint.c - constrained decoding: JSON Schema -> grammar, the
 * allowed-token mask (against a brute-force check of every token), random
 * walks through the mask that must always end in a document jansson parses
 * and that conforms, forced termination within a token budget, and the
 * World vocabulary's trie walk (when ../shared is there).
 */
#include <criterion/criterion.h>

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "json_schema.h"
#include "shared_ref.h"

static ms_grammar *compile(const char *schema_text, int strict, oa_error *e)
{
    json_error_t je;
    json_t *s = schema_text ? json_loads(schema_text, 0, &je) : NULL;
    if (schema_text)
        cr_assert_not_null(s, "bad test schema: %s", je.text);
    ms_grammar *g = js_schema_grammar(s, strict, "response_format", e);
    json_decref(s);
    return g;
}

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Generates a document by drawing uniformly among allowed tokens (a "model"
 * that prefers nothing); returns the malloc'd text, or NULL when the mask
 * became empty before the document was complete. */
static char *random_doc(const ms_grammar *g, const ms_vocab_index *vi, const ms_tokenizer *tok,
                        uint64_t seed, int max_tokens, int *n_tokens)
{
    int32_t V = ms_vocab_index_size(vi);
    uint64_t *mask = calloc(((size_t)V + 63) / 64, 8);
    int32_t *ids = malloc((size_t)V * sizeof *ids);
    ms_gmatch *m = ms_gmatch_new(g, vi);
    cr_assert(mask && ids && m);
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    int steps = 0;
    while (!ms_gmatch_done(m) && steps < max_tokens) {
        int32_t n = ms_gmatch_mask(m, max_tokens - steps, mask);
        if (n <= 0)
            break;
        int32_t k = 0;
        for (int32_t i = 0; i < V; i++)
            if (mask[i >> 6] >> (i & 63) & 1)
                ids[k++] = i;
        cr_assert_eq(k, n, "mask count %d vs bits %d", n, k);
        int32_t t = ids[rng_next(&x) % (uint64_t)k];
        steps++;
        if (t == 0)
            break; /* end-of-text */
        size_t bl;
        const char *b = ms_token_bytes(tok, t, &bl);
        cr_assert_eq(ms_gmatch_advance(m, b, bl), 0);
        if (len + bl + 1 > cap)
            out = realloc(out, cap *= 2);
        memcpy(out + len, b, bl);
        len += bl;
    }
    out[len] = '\0';
    *n_tokens = steps;
    ms_gmatch_free(m);
    free(mask);
    free(ids);
    return out;
}

static void check_walks(const char *schema, int max_tokens, int walks,
                        void (*check)(json_t *doc))
{
    oa_error e = { 0 };
    ms_grammar *g = compile(schema, 1, &e);
    cr_assert_not_null(g, "compile failed: %s", e.message);
    ms_tokenizer *tok = ms_tokenizer_new_bytes();
    ms_vocab_index *vi = ms_vocab_index_new(tok, 257);
    for (int w = 0; w < walks; w++) {
        int n = 0;
        char *doc = random_doc(g, vi, tok, (uint64_t)w + 1, max_tokens, &n);
        json_error_t je;
        json_t *j = json_loads(doc, JSON_DECODE_ANY, &je);
        cr_assert_not_null(j, "walk %d: does not parse: %s (%s)", w, doc, je.text);
        cr_assert_leq(n, max_tokens);
        if (check)
            check(j);
        json_decref(j);
        free(doc);
    }
    ms_vocab_index_free(vi);
    ms_tokenizer_free(tok);
    ms_grammar_free(g);
}

static void check_person(json_t *d)
{
    cr_assert(json_is_object(d));
    cr_assert(json_is_string(json_object_get(d, "name")));
    json_t *age = json_object_get(d, "age");
    cr_assert(json_is_integer(age));
    cr_assert(json_integer_value(age) >= 0 && json_integer_value(age) <= 150,
              "age %lld", (long long)json_integer_value(age));
    json_t *tags = json_object_get(d, "tags");
    cr_assert(json_is_array(tags) && json_array_size(tags) >= 1 && json_array_size(tags) <= 3);
    const char *c = json_string_value(json_object_get(d, "color"));
    cr_assert(c && (!strcmp(c, "red") || !strcmp(c, "green")));
    json_t *nick = json_object_get(d, "nick");
    cr_assert(json_is_null(nick) || json_is_string(nick));
    cr_assert(json_is_boolean(json_object_get(d, "ok")));
    json_t *score = json_object_get(d, "score");
    cr_assert(json_is_number(score));
    cr_assert(json_number_value(score) >= -1.5 && json_number_value(score) <= 2.5,
              "score %g", json_number_value(score));
    cr_assert_eq(json_object_size(d), 7);
}

#define PERSON                                                                                 \
    "{\"type\":\"object\",\"properties\":{"                                                  \
    "\"name\":{\"type\":\"string\",\"maxLength\":12},"                                       \
    "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150},"                          \
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"minItems\":1,\"maxItems\":3}," \
    "\"color\":{\"enum\":[\"red\",\"green\"]},"                                              \
    "\"nick\":{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]},"                      \
    "\"ok\":{\"type\":\"boolean\"},"                                                         \
    "\"score\":{\"type\":\"number\",\"minimum\":-1.5,\"maximum\":2.5}},"                     \
    "\"required\":[\"name\",\"age\",\"tags\",\"color\",\"nick\",\"ok\",\"score\"],"          \
    "\"additionalProperties\":false}"

Test(constraint, random_walks_conform)
{
    check_walks(PERSON, 400, 60, check_person);
}

/* A budget far below what a uniform walk would use: the mask must steer to
 * a complete document anyway. */
Test(constraint, forced_termination_within_budget)
{
    check_walks(PERSON, 120, 60, check_person);
}

Test(constraint, json_object_any)
{
    check_walks(NULL, 60, 80, NULL);
}

static void check_recursive(json_t *d)
{
    cr_assert(json_is_object(d));
    cr_assert(json_is_string(json_object_get(d, "v")));
    json_t *kids = json_object_get(d, "kids");
    cr_assert(json_is_array(kids));
    for (size_t i = 0; i < json_array_size(kids); i++)
        check_recursive(json_array_get(kids, i));
}

Test(constraint, recursive_ref)
{
    check_walks("{\"$defs\":{\"n\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"string\"},"
                "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/n\"}}},"
                "\"required\":[\"v\",\"kids\"],\"additionalProperties\":false}},"
                "\"$ref\":\"#/$defs/n\"}",
                80, 40, check_recursive);
}

/* The mask is exactly the set of tokens whose bytes the matcher accepts
 * (no budget), at every step of a walk. */
Test(constraint, mask_equals_brute_force)
{
    oa_error e = { 0 };
    ms_grammar *g = compile(PERSON, 1, &e);
    cr_assert_not_null(g);
    ms_tokenizer *tok = ms_tokenizer_new_bytes();
    ms_vocab_index *vi = ms_vocab_index_new(tok, 257);
    ms_gmatch *m = ms_gmatch_new(g, vi), *probe = ms_gmatch_new(g, vi);
    uint64_t mask[5];
    const char *doc = "{\"name\":\"a\\u00e9\xc3\xa9\",\"age\":42,\"tags\":[\"x\"],\"color\":\"red\","
                      "\"nick\":null,\"ok\":true,\"score\":1.25}";
    for (size_t i = 0; doc[i]; i++) {
        ms_gmatch_mask(m, -1, mask);
        for (int32_t t = 1; t < 257; t++) {
            size_t bl;
            const char *b = ms_token_bytes(tok, t, &bl);
            /* probe = m's history + b */
            ms_gmatch_reset(probe);
            cr_assert_eq(ms_gmatch_advance(probe, doc, i), 0);
            int ok = ms_gmatch_advance(probe, b, bl) == 0;
            cr_assert_eq(ok, (int)(mask[t >> 6] >> (t & 63) & 1), "pos %zu byte %d", i, t - 1);
        }
        int own = (unsigned char)doc[i] + 1;
        cr_assert(mask[own >> 6] >> (own & 63) & 1,
                  "pos %zu: the document's own byte is not allowed", i);
        cr_assert_eq(ms_gmatch_advance(m, doc + i, 1), 0);
    }
    cr_assert(ms_gmatch_done(m));
    ms_gmatch_free(m);
    ms_gmatch_free(probe);
    ms_vocab_index_free(vi);
    ms_tokenizer_free(tok);
    ms_grammar_free(g);
}

Test(constraint, rejects_invalid_text)
{
    oa_error e = { 0 };
    ms_grammar *g = compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\","
                            "\"maximum\":20}},\"required\":[\"a\"],\"additionalProperties\":false}",
                            1, &e);
    ms_tokenizer *tok = ms_tokenizer_new_bytes();
    ms_vocab_index *vi = ms_vocab_index_new(tok, 257);
    ms_gmatch *m = ms_gmatch_new(g, vi);
    cr_assert_eq(ms_gmatch_advance(m, "{\"a\":21}", 8), -1);
    cr_assert_eq(ms_gmatch_advance(m, "{\"a\": 2}", 8), -1); /* no whitespace */
    cr_assert_eq(ms_gmatch_advance(m, "{\"a\":-0}", 8), -1);
    cr_assert_eq(ms_gmatch_advance(m, "{\"a\":20}", 8), 0);
    cr_assert(ms_gmatch_done(m));
    cr_assert_eq(ms_gmatch_advance(m, "x", 1), -1);
    ms_gmatch_free(m);
    ms_vocab_index_free(vi);
    ms_tokenizer_free(tok);
    ms_grammar_free(g);
}

/* Objects without listed properties: "properties": {} is a function with no
 * arguments ({} only); no properties key, or additionalProperties true, is
 * any object; a schema there is a map of its values. */
Test(constraint, objects_without_properties)
{
    static const struct {
        const char *schema, *text;
        int ok;
    } cases[] = {
        {"{\"type\":\"object\",\"properties\":{}}", "{}", 1},
        {"{\"type\":\"object\",\"properties\":{}}", "{\"a\":1}", 0},
        {"{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}", "{\"a\":1}", 0},
        {"{\"type\":\"object\"}", "{\"a\":1}", 1},
        {"{\"type\":\"object\",\"properties\":{},\"additionalProperties\":true}", "{\"a\":[true]}", 1},
        {"{\"type\":\"object\",\"properties\":{},\"additionalProperties\":{\"type\":\"integer\"}}",
         "{\"a\":1,\"b\":2}", 1},
        {"{\"type\":\"object\",\"properties\":{},\"additionalProperties\":{\"type\":\"integer\"}}",
         "{\"a\":\"x\"}", 0},
    };
    ms_tokenizer *tok = ms_tokenizer_new_bytes();
    ms_vocab_index *vi = ms_vocab_index_new(tok, 257);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        oa_error e = { 0 };
        ms_grammar *g = compile(cases[i].schema, 1, &e);
        cr_assert_not_null(g, "%s: %s", cases[i].schema, e.message);
        ms_gmatch *m = ms_gmatch_new(g, vi);
        const int took = ms_gmatch_advance(m, cases[i].text, strlen(cases[i].text)) == 0 &&
                         ms_gmatch_done(m);
        cr_expect_eq(took, cases[i].ok, "%s %s %s", cases[i].schema, cases[i].ok ? "refused" : "took",
                     cases[i].text);
        ms_gmatch_free(m);
        ms_grammar_free(g);
    }
    ms_vocab_index_free(vi);
    ms_tokenizer_free(tok);
}

Test(constraint, strict_unsupported_keyword_named)
{
    oa_error e = { 0 };
    ms_grammar *g = compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\","
                            "\"pattern\":\"^x\"}},\"required\":[\"a\"]}", 1, &e);
    cr_assert_null(g);
    cr_assert_eq(e.status, 400);
    cr_assert(strstr(e.message, "'pattern'"), "%s", e.message);
    cr_assert(strstr(e.message, "/properties/a"), "%s", e.message);
    /* not strict: ignored */
    memset(&e, 0, sizeof e);
    g = compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\","
                "\"pattern\":\"^x\"}},\"required\":[\"a\"]}", 0, &e);
    cr_assert_not_null(g);
    ms_grammar_free(g);
    /* two objects in anyOf cannot be told apart by the first byte */
    memset(&e, 0, sizeof e);
    g = compile("{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"}}},"
                "{\"type\":\"object\",\"properties\":{\"b\":{\"type\":\"string\"}}}]}", 1, &e);
    cr_assert_null(g);
    cr_assert_eq(e.status, 400);
    cr_assert(strstr(e.message, "anyOf"), "%s", e.message);
}

Test(constraint, switch_and_text_or)
{
    ms_grammar *g = ms_grammar_new();
    const char *names[] = { "\"f\"", "\"g\"" };
    size_t nl[] = { 3, 3 };
    int32_t tail_f[] = { ms_grammar_literal(g, ",\"a\":", 5), ms_grammar_number(g, 1, 0, 0, 0, 0),
                         ms_grammar_literal(g, "}", 1) };
    int32_t tail_g[] = { ms_grammar_literal(g, ",\"a\":", 5), ms_grammar_string(g, 0, 3),
                         ms_grammar_literal(g, "}", 1) };
    int32_t nexts[] = { ms_grammar_seq(g, tail_f, 3), ms_grammar_seq(g, tail_g, 3) };
    int32_t call[] = { ms_grammar_literal(g, "{\"name\":", 8), ms_grammar_switch(g, names, nl, nexts, 2) };
    int32_t root = ms_grammar_text_or(g, " Call: ", 7, ms_grammar_seq(g, call, 2));
    cr_assert_eq(ms_grammar_finish(g, root, NULL), MS_OK);
    ms_tokenizer *tok = ms_tokenizer_new_bytes();
    ms_vocab_index *vi = ms_vocab_index_new(tok, 257);
    ms_gmatch *m = ms_gmatch_new(g, vi);
    const char *ok1 = " Call: {\"name\":\"g\",\"a\":\"xyz\"}";
    cr_assert_eq(ms_gmatch_advance(m, ok1, strlen(ok1)), 0);
    cr_assert(ms_gmatch_done(m));
    ms_gmatch_reset(m);
    const char *bad = " Call: {\"name\":\"f\",\"a\":\"x\"}";
    cr_assert_eq(ms_gmatch_advance(m, bad, strlen(bad)), -1);
    ms_gmatch_reset(m);
    cr_assert_eq(ms_gmatch_advance(m, " Cat sat", 8), 0);
    cr_assert(ms_gmatch_free_text(m));
    cr_assert(ms_gmatch_can_end(m));
    ms_gmatch_free(m);
    ms_vocab_index_free(vi);
    ms_tokenizer_free(tok);
    ms_grammar_free(g);
}

Test(constraint, logprobs_are_log_softmax)
{
    float l[6] = { 1.0f, 3.0f, -2.0f, 3.0f, 0.5f, NAN };
    double z = 0;
    for (int i = 0; i < 5; i++)
        z += exp((double)l[i]);
    int32_t ids[3];
    float lp[3];
    float x = ms_logprobs(l, 6, 4, 3, ids, lp);
    cr_assert_float_eq(x, 0.5 - log(z), 1e-6);
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[1], 3); /* tie: lower id first */
    cr_assert_eq(ids[2], 0);
    cr_assert_float_eq(lp[0], 3.0 - log(z), 1e-6);
    cr_assert_float_eq(lp[2], 1.0 - log(z), 1e-6);
}

/* World vocabulary: the trie walk's mask equals the brute-force check on a
 * sample of tokens, at structural and in-string positions. */
Test(constraint, world_vocab_mask)
{
    char path[1024];
    shared_file(path, sizeof path, "vocab", "rwkv_vocab_v20230424.txt");
    ms_tokenizer *tok = NULL;
    cr_assert_eq(ms_tokenizer_load(path, &tok, NULL), MS_OK, "%s", path);
    int32_t V = ms_tokenizer_n_ids(tok);
    oa_error e = { 0 };
    ms_grammar *g = compile(PERSON, 1, &e);
    ms_vocab_index *vi = ms_vocab_index_new(tok, V);
    ms_gmatch *m = ms_gmatch_new(g, vi), *probe = ms_gmatch_new(g, vi);
    uint64_t *mask = calloc(((size_t)V + 63) / 64, 8);
    const char *prefixes[] = { "", "{\"name\":\"ab", "{\"name\":\"ab\",\"age\":1",
                               "{\"name\":\"ab\",\"age\":1,\"tags\":[" };
    for (int p = 0; p < 4; p++) {
        ms_gmatch_reset(m);
        cr_assert_eq(ms_gmatch_advance(m, prefixes[p], strlen(prefixes[p])), 0);
        int32_t n = ms_gmatch_mask(m, -1, mask);
        cr_assert_gt(n, 0);
        for (int32_t t = 1; t < V; t += 7) {
            size_t bl;
            const char *b = ms_token_bytes(tok, t, &bl);
            if (!b)
                continue;
            ms_gmatch_reset(probe);
            ms_gmatch_advance(probe, prefixes[p], strlen(prefixes[p]));
            int ok = ms_gmatch_advance(probe, b, bl) == 0;
            cr_assert_eq(ok, (int)(mask[t >> 6] >> (t & 63) & 1), "prefix %d token %d", p, t);
        }
    }
    free(mask);
    ms_gmatch_free(m);
    ms_gmatch_free(probe);
    ms_vocab_index_free(vi);
    ms_grammar_free(g);
    ms_tokenizer_free(tok);
}

/* Text-or-prefix (tools "auto"): the shortcut mask (everything, minus what
 * runs past the prefix, walked) equals the brute-force check. */
Test(constraint, text_or_mask_equals_brute_force)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/vocab/rwkv_vocab_v20230424.txt", shared_dir());
    ms_tokenizer *tok = NULL;
    if (ms_tokenizer_load(path, &tok, NULL) != MS_OK)
        tok = ms_tokenizer_new_bytes();
    int32_t V = ms_tokenizer_n_ids(tok);
    ms_grammar *g = ms_grammar_new();
    int32_t arr = ms_grammar_array(g, ms_grammar_number(g, 1, 0, 0, 0, 0), 1, 2);
    int32_t root = ms_grammar_text_or(g, " Call: ", 7, arr);
    cr_assert_eq(ms_grammar_finish(g, root, NULL), MS_OK);
    ms_vocab_index *vi = ms_vocab_index_new(tok, V);
    ms_gmatch *m = ms_gmatch_new(g, vi), *probe = ms_gmatch_new(g, vi);
    uint64_t *mask = calloc(((size_t)V + 63) / 64, 8);
    const char *prefixes[] = { "", " C", " Call:" };
    for (int p = 0; p < 3; p++) {
        ms_gmatch_reset(m);
        cr_assert_eq(ms_gmatch_advance(m, prefixes[p], strlen(prefixes[p])), 0);
        ms_gmatch_mask(m, -1, mask);
        for (int32_t t = 1; t < V; t++) {
            size_t bl;
            const char *b = ms_token_bytes(tok, t, &bl);
            if (!b)
                continue;
            ms_gmatch_reset(probe);
            ms_gmatch_advance(probe, prefixes[p], strlen(prefixes[p]));
            int ok = ms_gmatch_advance(probe, b, bl) == 0;
            cr_assert_eq(ok, (int)(mask[t >> 6] >> (t & 63) & 1), "prefix %d token %d (%.*s)", p, t,
                         (int)bl, b);
        }
    }
    free(mask);
    ms_gmatch_free(m);
    ms_gmatch_free(probe);
    ms_vocab_index_free(vi);
    ms_grammar_free(g);
    ms_tokenizer_free(tok);
}
