/*
 * metrics.c - a fixed set of metrics in one struct behind one mutex.
 *
 * Request counts are labelled by route and status; the label space is small
 * and fixed (routes are static strings from http.c), so a flat table with a
 * linear search is enough. Histograms of latencies share one bucket ladder,
 * the step sizes have one in tokens.
 */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Latencies in seconds; the step sizes in tokens (powers of two up to the
 * largest --prefill-chunk and --parallel). */
static const double sec_ladder[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
static const double tok_ladder[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
#define N_BUCKETS 14 /* both ladders */
_Static_assert(sizeof sec_ladder == N_BUCKETS * sizeof(double) &&
               sizeof tok_ladder == N_BUCKETS * sizeof(double), "ladder length");
#define MAX_REQ_LABELS 128

typedef struct {
    uint64_t counts[N_BUCKETS + 1]; /* last = +Inf */
    double sum;
    uint64_t n;
} histogram;

typedef struct {
    const char *route;
    int status;
    uint64_t n;
} req_label;

static struct {
    pthread_mutex_t mu;
    histogram h[MET_H_COUNT];
    uint64_t c[MET_C_COUNT];
    double g[MET_G_COUNT];
    req_label req[MAX_REQ_LABELS];
    int n_req;
} M = {.mu = PTHREAD_MUTEX_INITIALIZER};

static const struct {
    const char *name, *help;
    const double *ladder;
} hist_def[MET_H_COUNT] = {
    {"metastate_request_duration_seconds", "Time from request received to response complete.", sec_ladder},
    {"metastate_time_to_first_token_seconds", "Time from admission to the first generated token.", sec_ladder},
    {"metastate_queue_wait_seconds", "Time a request waited for a free sequence slot.", sec_ladder},
    {"metastate_step_seconds", "Duration of one scheduler step of a generating sequence (one token).", sec_ladder},
    {"metastate_store_operation_seconds", "Duration of one operation on the session store (--state-store).", sec_ladder},
    {"metastate_step_tokens", "Tokens one scheduler step ran through the model: prompt chunks (at most --prefill-chunk in all) and one token per generating sequence.", tok_ladder},
};
static const char *counter_name[MET_C_COUNT][2] = {
    {"metastate_prompt_tokens_total", "Prompt tokens of finished requests (cached ones included)."},
    {"metastate_cached_tokens_total", "Prompt tokens reused from a session state (not recomputed)."},
    {"metastate_completion_tokens_total", "Generated tokens."},
    {"metastate_session_evictions_total", "Session states evicted from memory (spilled or dropped)."},
    {"metastate_session_spills_total", "Session states written to --state-dir."},
    {"metastate_session_restores_total", "Session states read back from --state-dir."},
    {"metastate_state_file_errors_total", "State files rejected (corrupt, foreign model, wrong version)."},
    {"metastate_rejected_total", "Requests refused with 429 because the queue was full."},
    {"metastate_cancelled_total", "Requests whose client disconnected before the end."},
    {"metastate_session_hits_total", "Session requests whose prompt continued the session."},
    {"metastate_session_misses_total", "Session requests that restarted the session from the zero state."},
    {"metastate_store_hits_total", "Session turns served from the in-memory copy (the store held the same version)."},
    {"metastate_store_misses_total", "Session turns that loaded the state from the store (no or an older copy in memory)."},
    {"metastate_store_lease_waits_total", "Times a session turn found the session's lease held (by this or another replica) and waited."},
    {"metastate_store_errors_total", "Session store operations that failed (store unreachable or answering errors)."},
    {"metastate_stream_pauses_total", "Times a stream's generation paused because its client was not reading (--stream-backlog-kb)."},
    {"metastate_model_passes_total", "Passes over the model's weights: one per scheduler step (its generating sequences and prompt chunks together), plus each prompt chunk run on its own (echoed logprobs, more than 16 prompts in one step)."},
};
static const char *gauge_name[MET_G_COUNT][2] = {
    {"metastate_sessions_in_memory", "Sessions whose state is in the memory pool."},
    {"metastate_sessions_on_disk", "Sessions whose state is only in --state-dir."},
    {"metastate_pool_bytes", "Bytes of session states in memory."},
    {"metastate_pool_limit_bytes", "The --pool-mb limit in bytes."},
    {"metastate_pool_spare_bytes", "Bytes of spare session states kept for new sessions, beside --pool-mb."},
    {"metastate_queue_length", "Requests waiting for a sequence slot."},
    {"metastate_active_sequences", "Requests being processed (prompt or generation)."},
    {"metastate_slots", "Sequence slots (--parallel)."},
    {"metastate_model_loaded", "1 once the model is loaded and the server answers requests."},
    {"metastate_store_up", "1 when the session store (--state-store) answered its last operation, 0 when not; 1 without one."},
    {"metastate_streams_paused", "Streams whose generation waits for their client to read."},
};

void metrics_init(void)
{
    pthread_mutex_lock(&M.mu);
    memset(M.h, 0, sizeof M.h);
    memset(M.c, 0, sizeof M.c);
    memset(M.g, 0, sizeof M.g);
    M.n_req = 0;
    pthread_mutex_unlock(&M.mu);
}

void metrics_request(const char *route, int status)
{
    pthread_mutex_lock(&M.mu);
    int i;
    for (i = 0; i < M.n_req; i++)
        if (M.req[i].status == status && !strcmp(M.req[i].route, route)) break;
    if (i == M.n_req && M.n_req < MAX_REQ_LABELS) M.req[M.n_req++] = (req_label){route, status, 0};
    if (i < M.n_req) M.req[i].n++;
    pthread_mutex_unlock(&M.mu);
}

void metrics_observe(met_hist h, double v)
{
    pthread_mutex_lock(&M.mu);
    histogram *x = &M.h[h];
    size_t b = 0;
    while (b < N_BUCKETS && v > hist_def[h].ladder[b]) b++;
    x->counts[b]++;
    x->sum += v;
    x->n++;
    pthread_mutex_unlock(&M.mu);
}

void metrics_add(met_counter c, uint64_t n)
{
    pthread_mutex_lock(&M.mu);
    M.c[c] += n;
    pthread_mutex_unlock(&M.mu);
}

void metrics_set(met_gauge g, double v)
{
    pthread_mutex_lock(&M.mu);
    M.g[g] = v;
    pthread_mutex_unlock(&M.mu);
}

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t nc = b->cap ? b->cap * 2 : 8192;
        while (nc < b->n + (size_t)k + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) return;
        b->p = np;
        b->cap = nc;
    }
}

char *metrics_render(size_t *len)
{
    sbuf b = {0};
    put(&b, "# HELP metastate_requests_total HTTP requests answered, by route and status.\n"
            "# TYPE metastate_requests_total counter\n");
    pthread_mutex_lock(&M.mu);
    for (int i = 0; i < M.n_req; i++)
        put(&b, "metastate_requests_total{route=\"%s\",status=\"%d\"} %llu\n", M.req[i].route,
            M.req[i].status, (unsigned long long)M.req[i].n);
    for (int c = 0; c < MET_C_COUNT; c++)
        put(&b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", counter_name[c][0], counter_name[c][1],
            counter_name[c][0], counter_name[c][0], (unsigned long long)M.c[c]);
    for (int g = 0; g < MET_G_COUNT; g++)
        put(&b, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", gauge_name[g][0], gauge_name[g][1],
            gauge_name[g][0], gauge_name[g][0], M.g[g]);
    for (int h = 0; h < MET_H_COUNT; h++) {
        const char *n = hist_def[h].name;
        put(&b, "# HELP %s %s\n# TYPE %s histogram\n", n, hist_def[h].help, n);
        uint64_t cum = 0;
        for (size_t k = 0; k < N_BUCKETS; k++) {
            cum += M.h[h].counts[k];
            put(&b, "%s_bucket{le=\"%g\"} %llu\n", n, hist_def[h].ladder[k],
                (unsigned long long)cum);
        }
        cum += M.h[h].counts[N_BUCKETS];
        put(&b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", n,
            (unsigned long long)cum, n, M.h[h].sum, n, (unsigned long long)M.h[h].n);
    }
    pthread_mutex_unlock(&M.mu);
    if (!b.p) b.p = strdup("");
    *len = b.n;
    return b.p;
}
