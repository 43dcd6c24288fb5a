/*
 * chat_format.h - OpenAI chat messages -> RWKV World/G1 prompt text
 * (SPEC 2.3), and the reverse step for the reply text.
 *
 * The prompt is "System: ..\n\nUser: ..\n\nAssistant: ..\n\n...Assistant:".
 * "\n\n" separates turns, so every message is cleaned first so that it
 * cannot contain one. Pure functions; no state; reentrant.
 */
#ifndef METASTATE_PROTO_CHAT_FORMAT_H
#define METASTATE_PROTO_CHAT_FORMAT_H

#include <stddef.h>

#include "openai.h"

/* Cleans len bytes of text (SPEC 2.3): "\r\n" -> "\n", runs of >= 2 "\n"
 * -> one "\n", leading/trailing ASCII whitespace stripped. Returns a malloc'd
 * NUL-terminated copy (caller frees), its length in *out_len when not NULL;
 * NULL on allocation failure. */
char *chat_clean(const char *text, size_t len, size_t *out_len);

/* Renders n messages (roles "system", "user", "assistant", as oa_request_parse
 * leaves them) to the prompt text. Ends with "Assistant:" (no space), unless
 * the last message is a non-empty assistant message: then it ends with
 * "Assistant: {text}" and the model continues that reply (an empty last
 * assistant message is left out). Returns malloc'd
 * NUL-terminated text (caller frees), its length in *out_len when not NULL;
 * NULL on allocation failure or an unknown role. */
char *chat_render(const oa_message *msgs, size_t n, size_t *out_len);

/* Number of bytes (0 or 1) to drop from the start of a generated reply: its
 * one leading space, which chat_render puts back after "Assistant:". Apply
 * it to the reply's first non-empty piece only. */
size_t chat_reply_skip(const char *text, size_t len);

/* What a request kind adds to the request's own parameters when generating
 * (SPEC 2.3/2.4), in one place for every caller. Chat, as ChatRWKV: the
 * turn separator "\n\n" always ends the reply, end-of-text (id 0) is never
 * drawn (a reply ends at the separator, not at a document end), and the
 * reply's one leading space is dropped (chat_reply_skip). Completions:
 * only the request's own stops; end-of-text ends the text. */
typedef struct gen_policy {
    char *stops[OA_MAX_STOP + 1]; /* the request's, then the kind's; borrowed, not written */
    size_t n_stops;
    int ban_end_of_text;
    int skip_leading_space;
} gen_policy;

/* Fills p for a request of `kind` whose own stops are stops[0..n_stops)
 * (n_stops <= OA_MAX_STOP; strings borrowed, must outlive p). */
void chat_policy(oa_kind kind, char *const *stops, size_t n_stops, gen_policy *p);

#endif
