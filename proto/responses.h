/*
 * responses.h - the Responses API (POST /v1/responses) on top of the chat
 * pipeline: a request is translated into a Chat Completions request (input
 * items -> messages, instructions -> system message, text.format ->
 * response_format, flat function tools -> chat tools, max_output_tokens ->
 * max_tokens), and the results are written back as a response object or as
 * its typed stream events. previous_response_id is resolved by the caller,
 * which hands in the stored conversation of that response. Built with
 * jansson; every json_t returned is a new reference, every char * malloc'd.
 */
#ifndef METASTATE_PROTO_RESPONSES_H
#define METASTATE_PROTO_RESPONSES_H

#include <jansson.h>
#include <stdint.h>

#include "agent_out.h"
#include "openai.h"
#include "tools.h"

/* Translates a Responses request. prev: NULL or the stored messages of the
 * previous response (chat shape, its reply included). On success returns the
 * chat request and sets *history to the conversation without instructions
 * (prev + this input) for the caller to store with the reply. NULL with a
 * 400 in *e (unsupported built-in tool, bad input item, ...). */
json_t *resp_to_chat(json_t *req, json_t *prev, json_t **history, oa_error *e);

/* What a response reports. */
typedef struct resp_result {
    const char *id;          /* "resp_..." */
    int64_t created;
    int64_t completed_at;    /* for status "completed"; otherwise unset (null) */
    const char *model;
    const char *status;      /* "in_progress", "completed", "incomplete", "failed" */
    const char *msg_id;      /* output message item id */
    const char *text;        /* output text (NULL: none) */
    size_t text_len;
    const tools_call *calls; /* function calls instead of text */
    int n_calls;
    char (*call_ids)[32];
    char (*item_ids)[32];    /* "fc_..." per call */
    oa_usage usage;
    int has_usage;
    const agent_lp *lp;          /* the text's log probabilities (include asked), else NULL */
    size_t n_lp;
    const ms_tokenizer *tok;     /* for their token strings */
} resp_result;

/* The response object; req is the original request (its settings are
 * echoed back: instructions, temperature, tools, ...). */
json_t *resp_object(json_t *req, const resp_result *r);
/* Entries [from, to) of r's log probabilities as an output_text part's
 * "logprobs" array ({token, logprob, bytes, top_logprobs}); [] without any. */
json_t *resp_logprobs(const resp_result *r, size_t from, size_t to);
/* The assistant reply as a chat message (for the stored conversation). */
json_t *resp_reply_message(const resp_result *r);

/* One SSE event "event: TYPE\ndata: {..., "type", "sequence_number"}\n\n" for
 * payload (stolen); *seq counts up. NULL on OOM. */
char *resp_event(const char *type, json_t *payload, int *seq);

/* The "error" event that ends a stream already started: OpenAI's fields
 * (code, or e's type when it has none; message; param), plus the chat
 * shape's "error" object for clients that read that. Same ownership and
 * failure as resp_event. */
char *resp_error_event(const oa_error *e, int *seq);

/* The input items of a request whose input resp_to_chat accepted, as
 * GET /v1/responses/{id}/input_items lists them: each with an id (the
 * client's, else a fresh one from seed) and status "completed"; a string
 * input is one user message; text content is given as parts. NULL on OOM. */
json_t *resp_input_items(json_t *input, uint64_t seed);

/* One page of items (from resp_input_items) as OpenAI's list object
 * {object, data, first_id, last_id, has_more}. The query's values (each
 * NULL when absent): limit 1-100 (20), order "asc" or "desc" (the default:
 * newest first), after / before an item id of the list. NULL with a 400 in
 * *e for a bad value or an id not in the list. items NULL (an empty list)
 * checks limit and order alone. */
json_t *resp_items_page(json_t *items, const char *limit, const char *order, const char *after,
                        const char *before, oa_error *e);

/* A fresh id with the given prefix ("resp_", "msg_", "fc_"); out >= 32 bytes. */
void resp_new_id(char *out, const char *prefix, uint64_t seed);

#endif
