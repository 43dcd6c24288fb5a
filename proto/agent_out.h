/*
 * agent_out.h - the response parts of the agent features: logprobs objects
 * (chat and completions shapes), tool_calls, and patching them into the
 * responses and stream chunks openai.c writes. Built with jansson: these
 * paths allocate per chunk, which only requests that ask for logprobs or
 * tools pay. Every char * returned is malloc'd (caller frees); json_t *
 * returned are new references. Reentrant.
 */
#ifndef METASTATE_PROTO_AGENT_OUT_H
#define METASTATE_PROTO_AGENT_OUT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "openai.h"
#include "tools.h"

#define AGENT_MAX_TOP 20

/* One token's log-probabilities (ms_logprobs's output). */
typedef struct agent_lp {
    int32_t id;
    float lp;
    int n_top;
    int32_t top_ids[AGENT_MAX_TOP];
    float top_lps[AGENT_MAX_TOP];
} agent_lp;

/* Chat: {"content":[{"token","logprob","bytes","top_logprobs":[...]}],"refusal":null}. */
json_t *agent_chat_logprobs(const ms_tokenizer *tok, const agent_lp *e, size_t n);
/* Completions: {"tokens","token_logprobs","top_logprobs","text_offset"}. Entry 0
 * gets null logprobs when first_null (the first prompt token under echo);
 * text offsets start at offset0. */
json_t *agent_completion_logprobs(const ms_tokenizer *tok, const agent_lp *e, size_t n,
                                  int first_null, size_t offset0);
/* Appends a completions logprobs object b to a (same shape), for echo +
 * generated tokens. */
void agent_completion_logprobs_cat(json_t *a, json_t *b);
/* [{"id","type":"function","function":{"name","arguments"}}]; ids[i] are
 * the call ids. With index_field each entry also carries "index": i (chunks). */
json_t *agent_tool_calls(const tools_call *c, int n, char (*ids)[32], int index_field);

/* Sets choices[idx].logprobs (when logprobs) and, when tool_calls, makes the
 * choice's message {"role":"assistant","content":null,"tool_calls":..} with
 * finish_reason "tool_calls"; for completions under echo, prefix is put before
 * choices[idx].text. Steals the references. Returns the new JSON text (the
 * old one is freed), or NULL on failure (old one freed too). */
char *agent_patch_response(char *json, size_t idx, json_t *logprobs, json_t *tool_calls,
                           const char *prefix, size_t prefix_len);
/* The same for one chunk text (no "data: " framing); tool_calls go into
 * delta.tool_calls; finish_tool 1 sets finish_reason "tool_calls". */
char *agent_patch_chunk(char *json, json_t *logprobs, json_t *tool_calls, int finish_tool);

/* A JSON string value for token bytes that may not be valid UTF-8 on their
 * own (invalid bytes become U+FFFD; "bytes" keeps the exact ones). */
json_t *agent_token_string(const char *b, size_t n);

#endif
