/*
 * metrics.h - process-wide counters, gauges and histograms, rendered
 * as Prometheus text for GET /metrics. Every function is thread-safe (one
 * mutex: updates are a few per request or per token, far from contention).
 */
#ifndef METASTATE_SERVER_METRICS_H
#define METASTATE_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    MET_H_REQUEST = 0, /* whole request, seconds */
    MET_H_TTFT,        /* admission to first generated token, seconds */
    MET_H_QUEUE,       /* time waiting for a slot, seconds */
    MET_H_TOKEN,       /* one scheduler iteration of a generating sequence, seconds */
    MET_H_STORE,       /* one operation on the shared session store (Redis), seconds */
    MET_H_STEP_TOKENS, /* tokens one scheduler step ran through the model */
    MET_H_COUNT
} met_hist;

typedef enum {
    MET_C_PROMPT_TOKENS = 0, MET_C_CACHED_TOKENS, MET_C_COMPLETION_TOKENS,
    MET_C_EVICTIONS, MET_C_SPILLS, MET_C_RESTORES, MET_C_STATE_ERRORS, MET_C_REJECTED_429,
    MET_C_CANCELLED, MET_C_SESSION_HITS, MET_C_SESSION_MISSES,
    MET_C_STORE_HITS, MET_C_STORE_MISSES, MET_C_LEASE_WAITS, MET_C_STORE_ERRORS,
    MET_C_STREAM_PAUSES, MET_C_MODEL_PASSES,
    MET_C_COUNT
} met_counter;

typedef enum {
    MET_G_SESSIONS_MEM = 0, MET_G_SESSIONS_DISK, MET_G_POOL_BYTES, MET_G_POOL_LIMIT,
    MET_G_POOL_SPARE_BYTES,
    MET_G_QUEUE, MET_G_ACTIVE, MET_G_SLOTS, MET_G_LOADED, MET_G_STORE_UP, MET_G_STREAMS_PAUSED,
    MET_G_COUNT
} met_gauge;

void metrics_init(void);
/* Counts one finished HTTP request: route label (static string), status. */
void metrics_request(const char *route, int status);
/* One observation of h, in its unit (seconds; tokens for MET_H_STEP_TOKENS). */
void metrics_observe(met_hist h, double v);
void metrics_add(met_counter c, uint64_t n);
void metrics_set(met_gauge g, double v);
/* Prometheus text exposition (malloc'd, caller frees). */
char *metrics_render(size_t *len);

#endif
