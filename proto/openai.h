/*
 * openai.h - the OpenAI wire format <-> plain C structs. No sockets, no
 * engine calls: requests come in as bytes, leave as an oa_request; results
 * come in as plain values and leave as JSON text (whole responses or SSE
 * events). See ../shared/docs/OPENAI.md for the shapes clients parse.
 *
 * Ownership: an oa_request owns every string and array it points to and is
 * released with oa_request_free. Every char * returned by an oa_*_json
 * function is malloc'd, NUL-terminated, and owned by the caller (free()).
 * Thread-safety: every function is reentrant; nothing is global.
 */
#ifndef METASTATE_PROTO_OPENAI_H
#define METASTATE_PROTO_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

/* ---------------------------------------------------------------- errors */

/* An error as the OpenAI API sends it: HTTP status + {"error": {...}}. */
typedef struct oa_error {
    int status;        /* 400, 401, 404, 405, 409, 413, 429, 500, 503 */
    char type[48];     /* "invalid_request_error", "authentication_error", ... */
    char code[48];     /* "" for null, else e.g. "model_not_found" */
    char param[64];    /* "" for null, else the offending field, e.g. "temperature" */
    char message[400];
} oa_error;

/* Fills e; param and code may be NULL (sent as null). Returns e->status. */
int oa_error_set(oa_error *e, int status, const char *type, const char *param,
                 const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* A 400 invalid_request_error about param (may be NULL); returns -1, so a
 * parser can `return oa_bad(...)`. */
int oa_bad(oa_error *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* oa_bad's "Invalid type for 'param': expected ..., but got ... instead."
 * (v is the value sent); returns -1. */
struct json_t; /* jansson's; only the proto parsers pass one */
int oa_type_err(oa_error *e, const char *param, const char *expected, const struct json_t *v);
/* A 500 server_error saying the server ran out of memory; returns -1. */
int oa_nomem(oa_error *e);
/* {"error":{"message","type","param","code"}} */
char *oa_error_json(const oa_error *e);

/* ------------------------------------------------------------ session ids */

/* Longest session id (bytes). */
#define OA_SESSION_ID_MAX 128

/* THE session-id check, for every place an id enters (body session_id,
 * X-Session-ID, /v1/sessions/{id} paths, names found in --state-dir): 1 when
 * id[0..len) is 1 to OA_SESSION_ID_MAX bytes of [A-Za-z0-9._:-] and is not
 * "." or "..", so it is safe as a file name, a URL path segment and a header
 * value. len is explicit so that an embedded NUL (which would otherwise cut
 * the id short) makes the id invalid. Reentrant. */
int oa_session_id_valid(const char *id, size_t len);

/* --------------------------------------------------------------- requests */

typedef enum { OA_COMPLETION, OA_CHAT } oa_kind;

typedef struct oa_message {
    char *role;    /* "system" | "user" | "assistant" | "tool" ("developer" is
                      stored as "system"; others rejected) */
    char *content; /* never NULL; array-of-parts content is joined with "\n"
                      (type "text" only); null assistant content is "" */
    char *tool_call_id; /* role "tool": the call answered (required); else NULL */
    char *tool_calls;   /* role "assistant": its calls as the compact JSON array
                           [{"name":..,"arguments":{..}},..] the tool template
                           renders (proto/tools.h), or NULL */
} oa_message;

/* A function tool (tools[i].function). */
typedef struct oa_tool {
    char *name;        /* [A-Za-z0-9_-]{1,64} */
    char *description; /* may be NULL */
    char *parameters;  /* compact JSON Schema text ("{}" when absent) */
    int not_allowed;   /* tool_choice allowed_tools left it out: shown, never called */
} oa_tool;

typedef enum { OA_TOOLS_NONE = 0, OA_TOOLS_AUTO, OA_TOOLS_REQUIRED, OA_TOOLS_NAMED } oa_tool_choice;
typedef enum { OA_FORMAT_TEXT = 0, OA_FORMAT_JSON_OBJECT, OA_FORMAT_JSON_SCHEMA } oa_format;

struct ms_grammar;

typedef struct oa_logit_bias {
    int32_t token;
    float bias; /* in [-100, 100]; values outside are rejected with a 400 */
} oa_logit_bias;

#define OA_MAX_STOP 4
#define OA_MAX_N 16 /* largest accepted `n` (choices per prompt) */

typedef struct oa_request {
    oa_kind kind;
    char *model;          /* required */
    char **prompts;       /* OA_COMPLETION: n_prompts strings (string or array of strings) */
    size_t n_prompts;
    oa_message *messages; /* OA_CHAT */
    size_t n_messages;
    int max_tokens;       /* -1 = not given (server applies its default and cap) */
    ms_sampler_params sampling; /* chat: ms_sampler_defaults(); completions: the same with
                                   top_p 0.85, presence/frequency 0.2 (pip PIPELINE_ARGS);
                                   then overridden by the request. seed: see has_seed */
    int has_seed;
    int n;                /* choices per prompt, 1..OA_MAX_N, default 1 */
    int stream;
    int include_usage;    /* stream_options.include_usage */
    char *stop[OA_MAX_STOP]; /* non-empty strings only ("" entries are dropped) */
    size_t n_stop;
    oa_logit_bias *logit_bias;
    size_t n_logit_bias;
    char *user;           /* may be NULL */
    char *session_id;     /* extension; may be NULL (the server also reads X-Session-ID) */
    char *state;          /* extension: named initial state; may be NULL */
    /* Agent features (proto/agent_request.c, proto/tools.c). */
    int logprobs;         /* chat: "logprobs": true; completions: "logprobs" given */
    int top_logprobs;     /* chat: top_logprobs 0..20; completions: the logprobs value 0..5 */
    int echo;             /* completions: return the prompt (with its logprobs when asked) */
    int32_t **prompt_ids; /* completions: NULL, or n_prompts entries, non-NULL where the prompt
                             was given as token ids (prompts[i] is then "") */
    size_t *prompt_n_ids;
    oa_format format;     /* response_format.type */
    oa_tool *tools;
    size_t n_tools;
    oa_tool_choice tool_choice; /* default: AUTO with tools, NONE without */
    int tool_named;       /* NAMED: index in tools */
    int parallel_tool_calls; /* default 1 */
    struct ms_grammar *grammar; /* constrains the whole reply (tools or response_format);
                                   NULL = free text; owned */
    int grammar_tools;    /* 1 when grammar is the tool-call grammar */
} oa_request;

/* Parses and validates a request body of `len` bytes. On success fills *out
 * and returns 0; on failure returns -1 with a 400 error in *e naming the
 * field (malformed JSON, wrong type, value out of range, missing field), or
 * a 500 when memory runs out. Unknown fields are ignored; JSON null counts as
 * absent. *out is zeroed first and is safe to oa_request_free either way. */
int oa_request_parse(oa_kind kind, const char *body, size_t len, oa_request *out,
                     oa_error *e);
/* Frees what r owns and zeroes it; accepts NULL and a zeroed request. */
void oa_request_free(oa_request *r);

/* -------------------------------------------------------------- responses */

typedef struct oa_usage {
    int prompt_tokens;
    int completion_tokens;
    int cached_tokens; /* prompt_tokens_details.cached_tokens */
} oa_usage;

typedef enum { OA_FINISH_NONE = 0, OA_FINISH_STOP, OA_FINISH_LENGTH } oa_finish;

typedef struct oa_choice {
    const char *text;   /* the generated text (UTF-8, may contain NULs? no: NUL-free) */
    size_t text_len;
    oa_finish finish;
} oa_choice;

/* A whole (non-streaming) response: "text_completion" or "chat.completion".
 * id e.g. "cmpl-..." / "chatcmpl-..."; extra is NULL or a JSON object text
 * whose members are added at top level (e.g. {"session_id":"..."}); usage NULL
 * omits "usage". Choice i gets "index": i. OA_FINISH_NONE is sent as null.
 * Returns NULL on allocation failure or when extra is not a JSON object. */
char *oa_response_json(oa_kind kind, const char *id, int64_t created, const char *model,
                       const oa_choice *choices, size_t n_choices, const oa_usage *usage,
                       const char *extra);

/* One streaming chunk for choice `index`: for chat, role_first sends
 * {"role":"assistant","content":""}; otherwise delta {"content": text} (or {}
 * when text_len == 0 and finish != NONE); completions carry "text". When
 * include_usage, the chunk carries "usage": null. role_first with text_len > 0
 * sends that text as the content. NULL on allocation failure. */
char *oa_chunk_json(oa_kind kind, const char *id, int64_t created, const char *model,
                    int index, int role_first, const char *text, size_t text_len,
                    oa_finish finish, int include_usage);
/* The same chunk (role_first 0) framed as one SSE event ("data: ...\n\n"),
 * appended to the caller's growable buffer *buf (*len bytes used, *cap
 * allocated; realloc'd only when too small): the per-token path of a stream
 * allocates nothing once the buffer has grown. Returns 0, or -1 when out of
 * memory (*len unchanged). */
int oa_chunk_event_append(char **buf, size_t *len, size_t *cap, oa_kind kind, const char *id,
                          int64_t created, const char *model, int index, const char *text,
                          size_t text_len, oa_finish finish, int include_usage);
/* The final usage chunk: "choices": [] and the usage object (NULL = zeros). */
char *oa_usage_chunk_json(oa_kind kind, const char *id, int64_t created, const char *model,
                          const oa_usage *usage);

/* GET /v1/models: names[i] are model ids; created is a Unix time. When
 * n_states > 0 every entry also lists states[0..n_states) as
 * "initial_states" (an extension; clients ignore unknown fields). Invalid
 * UTF-8 in any text given to an oa_*_json function is sent as U+FFFD. */
char *oa_models_json(const char *const *names, size_t n, int64_t created, const char *owned_by,
                     const char *const *states, size_t n_states);
/* GET /v1/models/{name}: the one object oa_models_json lists for name. */
char *oa_model_json(const char *name, int64_t created, const char *owned_by,
                    const char *const *states, size_t n_states);
/* A deletion result, {"id","object","deleted":true} (object e.g.
 * "session.deleted", as OpenAI's "file.deleted"). */
char *oa_deleted_json(const char *id, const char *object);

#endif
