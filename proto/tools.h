/*
 * tools.h - function calling for RWKV: the prompt template that shows the
 * tools and the earlier calls/results to the model, the grammar that makes a
 * reply a well-formed call, and reading calls back out of the reply (whole
 * or streamed).
 *
 * Template (documented in docs/API.md):
 *   System: {system text}
 *   You can call these tools:
 *   {"name":"f","description":"..","parameters":{..}}
 *   To call tools, reply with "Call: " and a JSON array of {"name","arguments"}.
 *
 *   User: ...
 *
 *   Assistant: Call: [{"name":"f","arguments":{"x":1}}]
 *
 *   Tool: f -> {result text}
 *
 *   Assistant:
 * The reply to a call is " Call: [...]" (one space after "Assistant:", as
 * for text). tool_choice "required"/named: the reply is decoded under the
 * grammar of that call array (the parameters schema of each function);
 * "auto": the grammar lets the reply be free text unless it starts with
 * " Call: ", from which point it must be a call array, or, with a
 * response_format, either the call array or that document; "none": no tool
 * list in the prompt, no grammar.
 * Pure functions; reentrant.
 */
#ifndef METASTATE_PROTO_TOOLS_H
#define METASTATE_PROTO_TOOLS_H

#include <jansson.h>
#include <stddef.h>

#include "openai.h"

#define TOOLS_REPLY_PREFIX "Call: "
#define TOOLS_MAX_PARALLEL 4

/* Renders r's messages (and tools, unless tool_choice is NONE) to the prompt
 * text, as chat_render does for plain chat. malloc'd; NULL on OOM. */
char *tools_render(const oa_request *r, size_t *out_len);

/* The grammar for r's tools and tool_choice (AUTO/REQUIRED/NAMED), finished;
 * with AUTO and r->format set, a reply that is not a call is the document of
 * doc_schema (borrowed; NULL: any object). NULL with a 400 in *e when a
 * schema cannot be compiled. */
ms_grammar *tools_grammar(const oa_request *r, json_t *doc_schema, int doc_strict, oa_error *e);

/* One call read from a reply. */
typedef struct tools_call {
    char *name;
    char *arguments; /* compact JSON text */
} tools_call;

/* Reads the calls of a whole reply text (after the one leading space was
 * dropped): 0 when it is not a call ("Call: " + a JSON array of objects with
 * a string name), else the number of calls, stored in a malloc'd array
 * *out (free with tools_calls_free). -1 on OOM. */
int tools_parse_reply(const char *text, size_t len, tools_call **out);
void tools_calls_free(tools_call *c, int n);

/* A fresh call id "call_" + 24 letters/digits, from the given 64-bit seed
 * material (caller mixes time, counter...). out holds >= 32 bytes. */
void tools_call_id(char *out, uint64_t seed);

/* Streaming reader of a call array: feed the reply's bytes as they come;
 * it reports each call's start (name complete) and the bytes of its
 * arguments, which is how OpenAI streams tool_calls deltas. */
typedef struct tools_stream {
    int stage;       /* 0 prefix, 1 before '{' of a call, 2 in "name", 3 before args, 4 in args, 5 done, -1 not a call */
    size_t pos;      /* bytes of the prefix matched */
    int depth;       /* JSON depth inside the arguments */
    int in_str, esc;
    int index;       /* current call (0-based); -1 before the first */
    char name[128];
    size_t name_len;
    size_t skip;     /* bytes of `"name":"` / `,"arguments":` still to pass */
} tools_stream;

void tools_stream_init(tools_stream *s);
/* Feeds len bytes; for each event calls on_start(ud, index, name) or
 * on_args(ud, index, bytes, n). Returns -1 once the text is known not to be
 * a call (stage -1), else 0. */
int tools_stream_feed(tools_stream *s, const char *text, size_t len,
                      void (*on_start)(void *ud, int index, const char *name),
                      void (*on_args)(void *ud, int index, const char *bytes, size_t n), void *ud);

#endif
