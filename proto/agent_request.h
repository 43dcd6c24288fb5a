/*
 * agent_request.h - parsing of the request fields agent frameworks and eval
 * harnesses send, on top of openai.c's: logprobs/top_logprobs, echo,
 * token-id prompts, response_format, tools/tool_choice/parallel_tool_calls,
 * role "tool" messages and assistant tool_calls. Called by
 * oa_request_parse; fills the fields of oa_request documented there.
 * Errors: 400 naming the field, as the rest of the parser. Reentrant.
 */
#ifndef METASTATE_PROTO_AGENT_REQUEST_H
#define METASTATE_PROTO_AGENT_REQUEST_H

#include <jansson.h>

#include "openai.h"

/* prompt = [1,2,3] or [[1,2],[3]]: fills r->prompts (""), prompt_ids. */
int agent_parse_prompt_ids(json_t *prompt, oa_request *r, oa_error *e);
/* Extra parts of message i (msgs is the whole "messages" array): tool_call_id
 * for role "tool" (whose content is prefixed with the called function's name
 * when an earlier assistant message names it), tool_calls for "assistant". */
int agent_parse_message(json_t *msgs, size_t i, oa_message *msg, oa_error *e);
/* Every other new field; builds r->grammar. */
int agent_parse_fields(oa_kind kind, json_t *root, oa_request *r, oa_error *e);
/* r->grammar = " " + a document of schema (NULL: any object), for chat
 * replies and the Responses API's text.format. 400 naming param. */
int agent_format_grammar(oa_request *r, json_t *schema, int strict, const char *param, oa_error *e);
void agent_request_free(oa_request *r);

#endif
