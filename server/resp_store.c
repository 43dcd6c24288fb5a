/*
 * resp_store.c - previous_response_id lookup (see resp_store.h): a ring of
 * the last RESP_STORE_MAX responses under one mutex; lookups scan it (a
 * thousand string compares, once per request that names a previous one).
 */
#include "resp_store.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct entry {
    char id[64];
    char session[136];
    json_t *messages;
} entry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static entry ring[RESP_STORE_MAX];
static size_t next_slot;

void resp_store_put(const char *id, const char *session_id, json_t *messages)
{
    pthread_mutex_lock(&mu);
    entry *e = &ring[next_slot];
    next_slot = (next_slot + 1) % RESP_STORE_MAX;
    json_decref(e->messages);
    snprintf(e->id, sizeof e->id, "%s", id);
    snprintf(e->session, sizeof e->session, "%s", session_id ? session_id : "");
    e->messages = json_incref(messages);
    pthread_mutex_unlock(&mu);
}

json_t *resp_store_get(const char *id, char *session)
{
    json_t *out = NULL;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < RESP_STORE_MAX && !out; i++) {
        if (ring[i].messages && !strcmp(ring[i].id, id)) {
            out = json_deep_copy(ring[i].messages);
            snprintf(session, 136, "%s", ring[i].session);
        }
    }
    pthread_mutex_unlock(&mu);
    return out;
}

void resp_store_clear(void)
{
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < RESP_STORE_MAX; i++) {
        json_decref(ring[i].messages);
        ring[i].messages = NULL;
        ring[i].id[0] = 0;
    }
    next_slot = 0;
    pthread_mutex_unlock(&mu);
}
