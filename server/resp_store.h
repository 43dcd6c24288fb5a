/*
 * resp_store.h - what previous_response_id and GET/DELETE
 * /v1/responses/{id} refer to: for each recent response of /v1/responses,
 * the response object, the conversation it ended (chat messages, its reply
 * included) and the session that holds its RWKV state. In memory, bounded
 * (the oldest entries are forgotten first). Thread-safe.
 */
#ifndef METASTATE_SERVER_RESP_STORE_H
#define METASTATE_SERVER_RESP_STORE_H

#include <jansson.h>

#define RESP_STORE_MAX 1024

/* Records response id: its object and messages (references are taken) and
 * its session. */
void resp_store_put(const char *id, const char *session_id, json_t *response, json_t *messages);
/* A deep copy of id's messages (caller decrefs) and its session id in
 * session (>= 136 bytes); NULL when unknown or forgotten. */
json_t *resp_store_get(const char *id, char *session);
/* A deep copy of id's response object (caller decrefs); NULL when unknown. */
json_t *resp_store_response(const char *id);
/* Forgets id: 1 when it was there, else 0. */
int resp_store_delete(const char *id);
/* Forgets everything (server shutdown). */
void resp_store_clear(void);

#endif
