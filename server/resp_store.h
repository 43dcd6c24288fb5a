/*
 * resp_store.h - what previous_response_id refers to: for each recent
 * response of /v1/responses, the conversation it ended (chat messages, its
 * reply included) and the session that holds its RWKV state. In memory,
 * bounded (the oldest entries are forgotten first). Thread-safe.
 */
#ifndef METASTATE_SERVER_RESP_STORE_H
#define METASTATE_SERVER_RESP_STORE_H

#include <jansson.h>

#define RESP_STORE_MAX 1024

/* Records response id: messages (a reference is taken) and its session. */
void resp_store_put(const char *id, const char *session_id, json_t *messages);
/* A deep copy of id's messages (caller decrefs) and its session id in
 * session (>= 136 bytes); NULL when unknown or forgotten. */
json_t *resp_store_get(const char *id, char *session);
/* Forgets everything (server shutdown). */
void resp_store_clear(void);

#endif
