/*
 * fuzz_request.c - the request parser: HTTP body bytes -> oa_request
 * (proto/openai.c), then the chat template over the parsed messages. The
 * first input byte picks completion, chat or (its low bits 2) a Responses
 * body, which goes through resp_to_chat first as the server does. Checks
 * beyond "no crash, no leak": an accepted request has a model and at least
 * one prompt or message; a rejected one carries a 4xx/5xx status and a
 * message.
 */
#include <stdlib.h>
#include <string.h>

#include "chat_format.h"
#include "openai.h"
#include "responses.h"

/* An accepted input as GET /v1/responses/{id}/input_items would list it:
 * one item per input item (a string is one), each with a type and a string
 * id, found again as the cursor of a page. */
static void check_input_items(json_t *input)
{
    json_t *items = resp_input_items(input, 1);
    if (!items) return; /* out of memory */
    const size_t n = json_is_string(input) ? 1 : json_array_size(input);
    if (json_array_size(items) != n) abort();
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        if (!json_is_string(json_object_get(it, "type")) || !json_is_string(json_object_get(it, "id")))
            abort();
    }
    oa_error e;
    json_t *page = n ? resp_items_page(items, "100", "asc",
                                       json_string_value(json_object_get(json_array_get(items, 0), "id")),
                                       NULL, &e)
                     : NULL;
    /* client ids may repeat: the cursor is the first item with that id, so at most n - 1 follow */
    if (n && (!page || json_array_size(json_object_get(page, "data")) > n - 1)) abort();
    json_decref(page);
    json_decref(items);
}

/* A Responses body as the chat body the server would parse (NULL when
 * refused, with *e set, or not JSON). */
static char *responses_as_chat(const char *body, size_t len, oa_error *e)
{
    json_t *req = json_loadb(body, len, 0, NULL), *hist = NULL;
    if (!req) {
        oa_error_set(e, 400, "invalid_request_error", NULL, NULL, "not JSON");
        return NULL;
    }
    json_t *chat = resp_to_chat(req, NULL, &hist, e);
    if (chat)
        check_input_items(json_object_get(req, "input"));
    char *out = chat ? json_dumps(chat, JSON_COMPACT) : NULL;
    if (chat && !out)
        oa_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    json_decref(chat);
    json_decref(hist);
    json_decref(req);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const int responses = (data[0] & 3) == 2;
    oa_kind kind = data[0] & 1 || responses ? OA_CHAT : OA_COMPLETION;
    oa_request r;
    oa_error e;
    char *translated = NULL;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    if (responses) {
        if (!(translated = responses_as_chat(body, len, &e))) {
            if (e.status < 400 || e.status > 599 || !e.message[0]) abort();
            return 0;
        }
        body = translated;
        len = strlen(translated);
    }
    if (oa_request_parse(kind, body, len, &r, &e) == 0) {
        if (!r.model) abort();
        if (kind == OA_CHAT) {
            if (r.n_messages < 1) abort();
            size_t out_len = 0;
            char *p = chat_render(r.messages, r.n_messages, &out_len);
            if (p && strlen(p) != out_len) abort(); /* the template output is NUL-free text */
            free(p);
        } else if (r.n_prompts < 1) {
            abort();
        }
        if (r.session_id && !oa_session_id_valid(r.session_id, strlen(r.session_id))) abort();
    } else {
        if (e.status < 400 || e.status > 599 || !e.message[0]) abort();
        char *j = oa_error_json(&e);
        free(j);
    }
    oa_request_free(&r);
    free(translated);
    return 0;
}
