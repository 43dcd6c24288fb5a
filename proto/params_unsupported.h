/*
 * params_unsupported.h - the OpenAI request parameters this server knows but
 * does not implement (audio, insertion with suffix, best_of above n, the
 * legacy functions, stored chat completions, reasoning effort, background
 * responses, ...). Each is accepted only in the form that asks for nothing
 * (absent, null, false, "", ["text"]); any other value is a 400 naming the
 * parameter, with code "unsupported_parameter" or "unsupported_value" as
 * OpenAI sends for parameters a model lacks, rather than a 200 that quietly
 * did something else. Parameters that never change the output (metadata,
 * service_tier, prompt_cache_key, safety_identifier, prediction,
 * max_tool_calls) are type-checked and accepted. Names this table does not
 * know stay ignored (docs: clients pass extensions through). Reentrant.
 */
#ifndef METASTATE_PROTO_PARAMS_UNSUPPORTED_H
#define METASTATE_PROTO_PARAMS_UNSUPPORTED_H

#include <jansson.h>

#include "openai.h"

typedef enum {
    OA_EP_COMPLETIONS = 1, /* /v1/completions */
    OA_EP_CHAT = 2,        /* /v1/chat/completions */
    OA_EP_RESPONSES = 4,   /* /v1/responses, checked before it becomes a chat request */
} oa_endpoint;

/* 0 when root (a request object) asks for nothing this server lacks; else
 * -1 with *e a 400. n is the request's validated number of choices (the
 * completions' best_of must equal it). */
int oa_check_unsupported(oa_endpoint ep, json_t *root, int n, oa_error *e);

#endif
