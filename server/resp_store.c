/*
 * resp_store.c - stored responses in memory (see resp_store.h): a ring of
 * the last RESP_STORE_MAX records under one mutex; lookups scan it (a
 * thousand string compares, once per request that names a stored one).
 */
#include "resp_store.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct entry {
    char id[64];
    json_t *rec; /* NULL: a free slot */
} entry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static entry ring[RESP_STORE_MAX];
static size_t next_slot;

static void forget(entry *e)
{
    json_decref(e->rec);
    e->rec = NULL;
    e->id[0] = 0;
}

/* The entry of id, or NULL; under mu. */
static entry *find(const char *id)
{
    for (size_t i = 0; i < RESP_STORE_MAX; i++)
        if (ring[i].rec && !strcmp(ring[i].id, id))
            return &ring[i];
    return NULL;
}

void resp_store_put(const char *id, json_t *rec)
{
    pthread_mutex_lock(&mu);
    entry *e = &ring[next_slot];
    next_slot = (next_slot + 1) % RESP_STORE_MAX;
    forget(e);
    snprintf(e->id, sizeof e->id, "%s", id);
    e->rec = json_incref(rec);
    pthread_mutex_unlock(&mu);
}

json_t *resp_store_get(const char *id)
{
    pthread_mutex_lock(&mu);
    entry *e = find(id);
    json_t *out = e ? json_deep_copy(e->rec) : NULL;
    pthread_mutex_unlock(&mu);
    return out;
}

int resp_store_delete(const char *id)
{
    pthread_mutex_lock(&mu);
    entry *e = find(id);
    if (e)
        forget(e);
    pthread_mutex_unlock(&mu);
    return e != NULL;
}

void resp_store_clear(void)
{
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < RESP_STORE_MAX; i++)
        forget(&ring[i]);
    next_slot = 0;
    pthread_mutex_unlock(&mu);
}
