/*
 * resp_store.h - stored /v1/responses records in this process's memory,
 * for stores that are not shared (memory, directory); store.c puts them in
 * Redis otherwise. Bounded: the oldest of RESP_STORE_MAX are forgotten
 * first. Thread-safe.
 */
#ifndef METASTATE_SERVER_RESP_STORE_H
#define METASTATE_SERVER_RESP_STORE_H

#include <jansson.h>

#define RESP_STORE_MAX 1024

/* Records response id's record (a reference is taken; not changed after). */
void resp_store_put(const char *id, json_t *rec);
/* A deep copy of id's record (caller decrefs); NULL when unknown or forgotten. */
json_t *resp_store_get(const char *id);
/* Forgets id: 1 when it was there, else 0. */
int resp_store_delete(const char *id);
/* Forgets everything (server shutdown). */
void resp_store_clear(void);

#endif
