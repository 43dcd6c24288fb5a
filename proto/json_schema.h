/*
 * json_schema.h - JSON Schema (the subset structured-output clients send)
 * -> an ms_grammar for constrained decoding.
 *
 * Supported: type (one or a list), properties, required, additionalProperties
 * (false, or absent/true: only the listed properties are generated, so
 * "properties": {} alone is {}; an object with neither, or with true and no
 * properties, takes any keys; a schema: a map of such values), items,
 * minItems/maxItems, enum, const, anyOf/oneOf (alternatives must start
 * differently, e.g. a string or null), nullable, string minLength/maxLength,
 * number/integer minimum/maximum/exclusiveMinimum/exclusiveMaximum, $ref to
 * "#", "#/$defs/X" or "#/definitions/X" (recursion included), and the
 * annotations title, description, default, examples, $schema, $id, $comment.
 * Every property is generated, in the order given (required or not), so the
 * document conforms either way. Anything else is an unsupported keyword:
 * with strict it is a 400 naming it; without strict it is ignored.
 * Reentrant; no global state.
 */
#ifndef METASTATE_PROTO_JSON_SCHEMA_H
#define METASTATE_PROTO_JSON_SCHEMA_H

#include <jansson.h>

#include "engine.h"
#include "openai.h"

/* Adds the nodes for `schema` to g and returns the node id of a conforming
 * value, or -1 with a 400 in *e whose param is `param` and whose message
 * names the offending keyword and its path. */
int32_t js_schema_node(ms_grammar *g, json_t *schema, int strict, const char *param, oa_error *e);

/* The nodes of a document conforming to schema, or of any object when schema
 * is NULL (response_format json_object); -1 with *e filled on failure. */
int32_t js_document_node(ms_grammar *g, json_t *schema, int strict, const char *param, oa_error *e);

/* A finished grammar whose documents conform to schema (the root must be an
 * object or array, or anything for json_object when schema is NULL). NULL
 * with *e filled on failure. Caller frees with ms_grammar_free. */
ms_grammar *js_schema_grammar(json_t *schema, int strict, const char *param, oa_error *e);

#endif
