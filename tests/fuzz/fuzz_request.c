/*
 * fuzz_request.c - the request parser: HTTP body bytes -> oa_request
 * (proto/openai.c), then the chat template over the parsed messages. The
 * first input byte picks chat or completion. Checks beyond "no crash, no
 * leak": an accepted request has a model and at least one prompt or message;
 * a rejected one carries a 4xx/5xx status and a message.
 */
#include <stdlib.h>
#include <string.h>

#include "chat_format.h"
#include "openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    oa_kind kind = data[0] & 1 ? OA_CHAT : OA_COMPLETION;
    oa_request r;
    oa_error e;
    if (oa_request_parse(kind, (const char *)data + 1, size - 1, &r, &e) == 0) {
        if (!r.model) abort();
        if (kind == OA_CHAT) {
            if (r.n_messages < 1) abort();
            size_t len = 0;
            char *p = chat_render(r.messages, r.n_messages, &len);
            if (p && strlen(p) != len) abort(); /* the template output is NUL-free text */
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
    return 0;
}
