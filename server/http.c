/*
 * http.c - libmicrohttpd glue: routes, auth, CORS, bodies, responses.
 *
 * Request lifetime. Each HTTP request gets one http_req, reference counted:
 * one reference for MHD (dropped in the completion callback), one for the
 * scheduler while it holds the job (dropped after sink->done), one for a
 * streaming response (dropped when MHD frees the response). Fields shared
 * with the scheduler thread are guarded by the request's mutex.
 *
 * Waiting without threads. After submitting a job the handler suspends the
 * connection. The scheduler's callbacks append output and resume it: a
 * non-streaming request is answered once the job is done; a streaming one
 * as soon as the job is admitted (so errors that happen before admission
 * still get a real HTTP status), with a callback response whose reader
 * suspends the connection whenever it has no bytes yet. MHD must never be
 * called from the scheduler thread except MHD_resume_connection.
 *
 * Disconnects. A suspended connection is not polled by MHD, so the
 * scheduler asks alive() once per step: a zero-length MSG_PEEK read on the
 * socket tells whether the client closed it.
 */
#include "http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agent_out.h"
#include "chat_format.h"
#include "json_write.h"
#include "metrics.h"
#include "responses.h"
#include "sessions.h"
#include "sse.h"
#include "state_store.h"
#include "web_ui.h"

struct http_srv {
    const srv_config *cfg;
    sched *s;
    struct MHD_Daemon *d;
    struct MHD_Daemon *md; /* --metrics-port: /metrics only, no API key */
    atomic_int draining;
    atomic_int in_flight; /* live http_req objects */
    int64_t started_at;
};

typedef enum {
    R_NONE = 0, R_HEALTH, R_METRICS, R_MODELS, R_MODEL, R_COMPLETIONS, R_CHAT, R_SESSIONS,
    R_SESSION, R_SESSION_STATE, R_PREFLIGHT, R_UI, R_RESPONSES, R_RESPONSE
} route_id;

static const char *route_label[] = {
    "unknown", "/health", "/metrics", "/v1/models", "/v1/models/{id}", "/v1/completions",
    "/v1/chat/completions", "/v1/sessions", "/v1/sessions/{id}", "/v1/sessions/{id}/state",
    "OPTIONS", "ui", "/v1/responses", "/v1/responses/{id}"};

typedef struct choice_buf {
    char *text;
    size_t len, cap;
    oa_finish finish;
    int role_sent;
    /* logprobs (when asked): every token's entry; lp_sent of them streamed */
    agent_lp *lp;
    size_t n_lp, cap_lp, lp_sent;
    /* tool calls, streamed: the reader, and text held while it may be a call */
    tools_stream ts;
    int ts_mode;        /* 0 undecided, 1 calls, 2 plain text */
    char *held;
    size_t held_len, held_cap;
    char call_ids[TOOLS_MAX_PARALLEL][32];
    char item_ids[TOOLS_MAX_PARALLEL][32];
    int n_calls;
} choice_buf;

/* A request that touches files or the shared store (the session list; a
 * session's GET, DELETE, export, import; a stored response's load, save,
 * retrieve, delete): it
 * runs on the scheduler's work queue (sched_run_io), never on the polling
 * thread, which serves every connection; the connection waits suspended. */
typedef enum {
    OP_NONE = 0, OP_LIST, OP_INFO, OP_DELETE, OP_EXPORT, OP_IMPORT, OP_RESP_LOAD, OP_RESP_SAVE, OP_RESP_GET,
    OP_RESP_DELETE
} sess_op_kind;
#define OP_FAILED (-100) /* the operation could not run (temp file, memory): 500 */

typedef struct sess_op {
    sess_op_kind kind;
    int finished;  /* under the request's mu */
    int rc;        /* the sstore_* call's result (SSTORE_*), or OP_FAILED */
    char err[600];
    char *buf;     /* the reply (malloc'd): JSON, or export's safetensors bytes */
    int info_rc;   /* import: the sstore_info_json result for the reply */
    json_t *rec;   /* stored response: the record saved or read */
    size_t len;
} sess_op;

typedef struct http_req {
    atomic_int refs;
    http_srv *srv;
    pthread_mutex_t mu;
    struct MHD_Connection *conn; /* NULL once MHD completed the request (under mu) */
    int fd;
    route_id route;
    char path_id[160];
    const char *origin;  /* allowed CORS origin to echo, or NULL */
    const char *allow;   /* methods of the route, for 405's Allow header */
    char *body;
    size_t body_len, body_cap, body_limit;
    int too_large;
    double t_start;
    int status;          /* HTTP status sent, for metrics */
    /* completion job */
    sched_job job;
    int job_live;        /* submitted and not yet done */
    char id[64];
    int64_t created;
    char session_id[132];
    char request_id[136]; /* X-Request-ID: the client's, or generated */
    /* /v1/responses */
    int responses;
    json_t *resp_req;     /* the request as sent (settings are echoed back) */
    json_t *resp_hist;    /* the conversation without instructions, to store */
    char resp_id[64], msg_id[64];
    int resp_seq, resp_text_open;
    char *resp_final;     /* streamed: the closing event, sent once the record is stored */
    choice_buf *choices;
    int n_choices;
    /* shared with the scheduler (under mu) */
    int suspended, started, done, gone, queued_response;
    int saving;          /* a streamed response's record is being stored: the stream waits */
    int lost;            /* some output could not be kept (out of memory): the reply fails */
    int broken;          /* ... and not even the error event fit: the stream is cut */
    sched_result result;
    sess_op op;
    char *out;           /* streaming bytes not yet handed to MHD */
    size_t out_len, out_off, out_cap;
    int backlogged;      /* unsent output went over the bound; cleared below a quarter of it */
} http_req;

/* ======================================================================== */
/* Small helpers                                                             */
/* ======================================================================== */

static void req_unref(http_req *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1) return;
    atomic_fetch_sub(&r->srv->in_flight, 1);
    oa_request_free(&r->job.req);
    free(r->job.prompt);
    json_decref(r->resp_req);
    json_decref(r->resp_hist);
    for (int i = 0; i < r->n_choices; i++) {
        free(r->choices[i].text);
        free(r->choices[i].lp);
        free(r->choices[i].held);
    }
    free(r->choices);
    free(r->body);
    free(r->out);
    free(r->op.buf);
    json_decref(r->op.rec);
    free(r->resp_final);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static int append(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 4096;
        while (nc < *len + n + 1) nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb) return -1;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

static void rand_id(char *out, size_t cap, const char *prefix)
{
    unsigned char b[12];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        for (size_t i = 0; i < sizeof b; i++) b[i] = (unsigned char)(ts.tv_nsec >> (i % 4 * 8)) ^ (unsigned char)i;
    }
    size_t o = (size_t)snprintf(out, cap, "%s", prefix);
    for (size_t i = 0; i < sizeof b && o + 2 < cap; i++) o += (size_t)snprintf(out + o, cap - o, "%02x", b[i]);
}

static void add_common_headers(http_req *r, struct MHD_Response *resp)
{
    if (r->origin) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->origin);
        MHD_add_response_header(resp, "Vary", "Origin");
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "X-Session-ID, Retry-After, X-Request-ID");
    }
    if (r->session_id[0]) MHD_add_response_header(resp, "X-Session-ID", r->session_id);
    if (r->request_id[0]) MHD_add_response_header(resp, "X-Request-ID", r->request_id);
}

static enum MHD_Result send_buf(http_req *r, int status, const char *ctype, char *body, size_t len,
                                int must_free)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, body, must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (!resp) {
        if (must_free) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    add_common_headers(r, resp);
    if (status == 429) MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 503) MHD_add_response_header(resp, "Retry-After", "5");
    if (status == 405 && r->allow) MHD_add_response_header(resp, "Allow", r->allow);
    if (atomic_load(&r->srv->draining)) MHD_add_response_header(resp, "Connection", "close");
    r->status = status;
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result send_json(http_req *r, int status, char *json)
{
    if (!json) return send_buf(r, 500, "application/json", "{}", 2, 0);
    return send_buf(r, status, "application/json", json, strlen(json), 1);
}

static enum MHD_Result send_error_obj(http_req *r, const oa_error *e)
{
    return send_json(r, e->status, oa_error_json(e));
}

/* The one place where a server status becomes an HTTP status, an OpenAI
 * error type and code; the message is err's (or the status's own name). */
static void error_from_status(oa_error *e, const srv_error *err)
{
    int st = 500;
    const char *type = "server_error", *code = NULL;
    switch (err->code) {
    case SRV_OK: /* not an error; never sent as one */
    case SRV_ERR_NOMEM:
    case SRV_ERR_IO:
    case SRV_ERR_ENGINE:
    case SRV_ERR_REJECTED: break;
    case SRV_ERR_INVALID: st = 400, type = "invalid_request_error"; break;
    case SRV_ERR_NOT_FOUND: st = 404, type = "invalid_request_error", code = "session_not_found"; break;
    case SRV_ERR_BUSY: st = 409, type = "invalid_request_error", code = "session_busy"; break;
    case SRV_ERR_CANCELLED: st = 499, type = "invalid_request_error"; break;
    case SRV_ERR_TIMEOUT: st = 503, code = "timeout"; break;
    case SRV_ERR_SESSIONS_FULL: st = 503, code = "sessions_full"; break;
    case SRV_ERR_QUEUE_FULL: st = 429, type = "rate_limit_error", code = "queue_full"; break;
    case SRV_ERR_UNAVAILABLE: st = 503; break;
    case SRV_ERR_LOADING: st = 503, code = "model_loading"; break;
    case SRV_ERR_SHUTTING_DOWN: st = 503, code = "shutting_down"; break;
    case SRV_ERR_STORE_UNAVAILABLE: st = 503, code = "store_unavailable"; break;
    }
    oa_error_set(e, st, type, NULL, code, "%s", err->msg[0] ? err->msg : srv_status_str(err->code));
}

static enum MHD_Result send_status(http_req *r, const srv_error *err)
{
    oa_error e;
    error_from_status(&e, err);
    return send_error_obj(r, &e);
}

static enum MHD_Result send_error(http_req *r, int status, const char *type, const char *param,
                                  const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static enum MHD_Result send_error(http_req *r, int status, const char *type, const char *param,
                                  const char *code, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    oa_error e;
    oa_error_set(&e, status, type, param, code, "%s", msg);
    return send_error_obj(r, &e);
}

/* Every way an id enters ends here when oa_session_id_valid says no. */
static enum MHD_Result bad_session_id(http_req *r)
{
    return send_error(r, 400, "invalid_request_error", "session_id", "invalid_session_id",
                      "Invalid session id: expected 1 to %d characters from [A-Za-z0-9._:-], "
                      "not '.' or '..'.", OA_SESSION_ID_MAX);
}

/* ======================================================================== */
/* Scheduler sink (runs on the scheduler thread)                             */
/* ======================================================================== */

/* Resumes the connection if the MHD side is waiting; caller holds r->mu. */
static void wake(http_req *r)
{
    if (r->suspended && r->conn) {
        r->suspended = 0;
        MHD_resume_connection(r->conn);
    }
}

/* Appends one SSE event carrying payload (which is freed); caller holds mu.
 * Out of memory anywhere marks the reply lost. */
static void push_event(http_req *r, char *payload)
{
    size_t n = 0;
    char *ev = payload ? sse_event(payload, strlen(payload), &n) : NULL;
    free(payload);
    if (!ev || append(&r->out, &r->out_len, &r->out_cap, ev, n)) r->lost = 1;
    free(ev);
}

/* Appends an already framed event (which is freed); caller holds mu. */
static void push_raw(http_req *r, char *ev)
{
    if (!ev) return;
    append(&r->out, &r->out_len, &r->out_cap, ev, strlen(ev));
    free(ev);
}

static void role_chunk(http_req *r, int idx, const char *text, size_t len)
{
    const oa_request *q = &r->job.req;
    push_event(r, oa_chunk_json(OA_CHAT, r->id, r->created, q->model, idx, 1, text, len,
                                OA_FINISH_NONE, q->include_usage));
    r->choices[idx].role_sent = 1;
}

/* ---- agent features: logprobs, tool calls, the Responses API's events ---- */

/* The logprobs object of entries [from, to) of choice idx, in the request's
 * shape; NULL when none were asked for. */
static json_t *lp_json(http_req *r, int idx, size_t from, size_t to, int first_null, size_t off0)
{
    const oa_request *q = &r->job.req;
    choice_buf *c = &r->choices[idx];
    if (!q->logprobs) return NULL;
    const ms_tokenizer *tok = sched_tokenizer(r->srv->s);
    if (q->kind == OA_CHAT) return agent_chat_logprobs(tok, c->lp + from, to - from);
    return agent_completion_logprobs(tok, c->lp + from, to - from, first_null, off0);
}

static void sink_logprob(void *ud, int idx, const agent_lp *lp)
{
    http_req *r = ud;
    pthread_mutex_lock(&r->mu);
    if (idx >= 0 && idx < r->n_choices) {
        choice_buf *c = &r->choices[idx];
        if (c->n_lp == c->cap_lp) {
            size_t nc = c->cap_lp ? c->cap_lp * 2 : 64;
            agent_lp *n = realloc(c->lp, nc * sizeof *n);
            if (n) {
                c->lp = n;
                c->cap_lp = nc;
            }
        }
        if (c->n_lp < c->cap_lp) c->lp[c->n_lp++] = *lp;
    }
    pthread_mutex_unlock(&r->mu);
}

/* One chat/completions chunk with text and the logprobs not yet sent. */
static void text_chunk_lp(http_req *r, int idx, const char *text, size_t len, oa_finish f)
{
    const oa_request *q = &r->job.req;
    choice_buf *c = &r->choices[idx];
    char *js = oa_chunk_json(q->kind, r->id, r->created, q->model, idx, 0, text, len, f,
                             q->include_usage);
    json_t *lj = c->n_lp > c->lp_sent ? lp_json(r, idx, c->lp_sent, c->n_lp, 0, 0) : NULL;
    c->lp_sent = c->n_lp;
    push_event(r, lj ? agent_patch_chunk(js, lj, NULL, 0) : js);
}

static void stream_text(http_req *r, int idx, const char *text, size_t len)
{
    const oa_request *q = &r->job.req;
    choice_buf *c = &r->choices[idx];
    if (q->kind == OA_CHAT && !c->role_sent) {
        if (!q->logprobs) {
            role_chunk(r, idx, text, len);
            return;
        }
        role_chunk(r, idx, "", 0);
    }
    if (q->logprobs && c->n_lp > c->lp_sent) text_chunk_lp(r, idx, text, len, OA_FINISH_NONE);
    else if (oa_chunk_event_append(&r->out, &r->out_len, &r->out_cap, q->kind, r->id, r->created,
                                   q->model, idx, text, len, OA_FINISH_NONE, q->include_usage))
        r->lost = 1; /* the per-token path: appended in place, no allocation once grown */
}

static uint64_t seed_of(http_req *r, int k)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_nsec * 6364136223846793005ull ^ (uint64_t)(uintptr_t)r ^
           ((uint64_t)k << 40) ^ (uint64_t)ts.tv_sec;
}

typedef struct tc_ctx {
    http_req *r;
    int idx;
} tc_ctx;

static void resp_open_text(http_req *r);

/* A call's name is complete: its first delta (chat) or item (responses). */
static void tc_start(void *ud, int index, const char *name)
{
    tc_ctx *x = ud;
    http_req *r = x->r;
    const oa_request *q = &r->job.req;
    choice_buf *c = &r->choices[x->idx];
    if (index >= TOOLS_MAX_PARALLEL) return;
    tools_call_id(c->call_ids[index], seed_of(r, index));
    resp_new_id(c->item_ids[index], "fc_", seed_of(r, index + 7));
    c->n_calls = index + 1;
    c->ts_mode = 1;
    if (r->responses) {
        json_t *item = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "type", "function_call", "id",
                                 c->item_ids[index], "call_id", c->call_ids[index], "name", name,
                                 "arguments", "", "status", "in_progress");
        push_raw(r, resp_event("response.output_item.added",
                                 json_pack("{s:i,s:o}", "output_index", index, "item", item),
                                 &r->resp_seq));
        return;
    }
    if (!c->role_sent) role_chunk(r, x->idx, "", 0);
    json_t *d = json_pack("[{s:i,s:s,s:s,s:{s:s,s:s}}]", "index", index, "id", c->call_ids[index],
                          "type", "function", "function", "name", name, "arguments", "");
    char *js = oa_chunk_json(OA_CHAT, r->id, r->created, q->model, x->idx, 0, "", 0,
                             OA_FINISH_NONE, q->include_usage);
    push_event(r, agent_patch_chunk(js, NULL, d, 0));
}

static void tc_args(void *ud, int index, const char *b, size_t n)
{
    tc_ctx *x = ud;
    http_req *r = x->r;
    const oa_request *q = &r->job.req;
    choice_buf *c = &r->choices[x->idx];
    if (index >= TOOLS_MAX_PARALLEL) return;
    json_t *a = json_stringn(b, n);
    if (!a) return;
    if (r->responses) {
        push_raw(r, resp_event("response.function_call_arguments.delta",
                                 json_pack("{s:s,s:i,s:o}", "item_id", c->item_ids[index],
                                           "output_index", index, "delta", a),
                                 &r->resp_seq));
        return;
    }
    json_t *d = json_pack("[{s:i,s:{s:o}}]", "index", index, "function", "arguments", a);
    char *js = oa_chunk_json(OA_CHAT, r->id, r->created, q->model, x->idx, 0, "", 0,
                             OA_FINISH_NONE, q->include_usage);
    push_event(r, agent_patch_chunk(js, NULL, d, 0));
}

/* Plain text of a streamed reply, after it is known not to be a call. */
static void plain_text(http_req *r, int idx, const char *text, size_t len)
{
    if (!len) return;
    if (!r->responses) {
        stream_text(r, idx, text, len);
        return;
    }
    resp_open_text(r);
    json_t *d = json_stringn(text, len);
    choice_buf *c = &r->choices[idx];
    const resp_result lr = {.lp = r->job.req.logprobs ? c->lp : NULL, .n_lp = c->n_lp,
                            .tok = sched_tokenizer(r->srv->s)};
    push_raw(r, resp_event("response.output_text.delta",
                             json_pack("{s:s,s:i,s:i,s:o,s:o}", "item_id", r->msg_id, "output_index",
                                       0, "content_index", 0, "delta", d ? d : json_string(""),
                                       "logprobs", resp_logprobs(&lr, c->lp_sent, c->n_lp)),
                             &r->resp_seq));
    c->lp_sent = c->n_lp;
}

/* Streamed text under the tool grammar: held while it may still become a
 * call, then either call deltas or plain text. */
static void tool_text(http_req *r, int idx, const char *text, size_t len)
{
    choice_buf *c = &r->choices[idx];
    if (c->ts_mode == 2) {
        plain_text(r, idx, text, len);
        return;
    }
    tc_ctx x = {r, idx};
    if (c->ts_mode == 0) append(&c->held, &c->held_len, &c->held_cap, text, len);
    if (tools_stream_feed(&c->ts, text, len, tc_start, tc_args, &x) < 0 && c->ts_mode == 0) {
        c->ts_mode = 2;
        plain_text(r, idx, c->held, c->held_len);
        c->held_len = 0;
    }
}

static void resp_open_text(http_req *r)
{
    if (r->resp_text_open) return;
    r->resp_text_open = 1;
    json_t *item = json_pack("{s:s,s:s,s:s,s:s,s:[]}", "type", "message", "id", r->msg_id, "status",
                             "in_progress", "role", "assistant", "content");
    push_raw(r, resp_event("response.output_item.added",
                             json_pack("{s:i,s:o}", "output_index", 0, "item", item), &r->resp_seq));
    push_raw(r, resp_event("response.content_part.added",
                             json_pack("{s:s,s:i,s:i,s:{s:s,s:s,s:[],s:[]}}", "item_id", r->msg_id,
                                       "output_index", 0, "content_index", 0, "part", "type",
                                       "output_text", "text", "", "annotations", "logprobs"),
                             &r->resp_seq));
}

/* The calls of a finished reply (tools grammar), with ids: from the stream
 * reader when streamed, else parsed now. Returns the count (0: text). */
static int reply_calls(http_req *r, int idx, tools_call **calls)
{
    choice_buf *c = &r->choices[idx];
    *calls = NULL;
    if (!r->job.req.grammar_tools) return 0;
    int n = tools_parse_reply(c->text ? c->text : "", c->len, calls);
    if (n <= 0) return 0;
    if (n > TOOLS_MAX_PARALLEL) n = TOOLS_MAX_PARALLEL;
    for (int k = c->n_calls; k < n; k++) {
        tools_call_id(c->call_ids[k], seed_of(r, k));
        resp_new_id(c->item_ids[k], "fc_", seed_of(r, k + 7));
    }
    c->n_calls = n;
    return n;
}

/* The Responses API result of choice 0 (text or calls). */
static void resp_fill(http_req *r, resp_result *rr, const char *status, tools_call *calls, int n,
                      const sched_result *res)
{
    choice_buf *c = &r->choices[0];
    memset(rr, 0, sizeof *rr);
    rr->id = r->resp_id;
    rr->created = r->created;
    rr->model = r->job.req.model;
    rr->status = status;
    rr->completed_at = (int64_t)time(NULL);
    rr->msg_id = r->msg_id;
    rr->text = n ? NULL : (c->text ? c->text : "");
    rr->text_len = n ? 0 : c->len;
    rr->calls = calls;
    rr->n_calls = n;
    rr->call_ids = c->call_ids;
    rr->item_ids = c->item_ids;
    if (res) {
        rr->usage = res->usage;
        rr->has_usage = 1;
    }
    if (r->job.req.logprobs && !n) {
        rr->lp = c->lp;
        rr->n_lp = c->n_lp;
        rr->tok = sched_tokenizer(r->srv->s);
    }
}

/* The record to store for the response object o (see store.h): o, the
 * conversation it ended and its session, for previous_response_id and GET
 * /v1/responses/{id}. NULL when the request said store: false (or out of
 * memory: the reply still goes out, unstored). */
static json_t *resp_record(http_req *r, const resp_result *rr, json_t *o)
{
    if (json_is_false(json_object_get(r->resp_req, "store")))
        return NULL;
    json_t *m = json_deep_copy(r->resp_hist);
    if (m) json_array_append_new(m, resp_reply_message(rr));
    return m ? json_pack("{s:s,s:O,s:o}", "session", r->session_id, "response", o, "messages", m) : NULL;
}

static void push_error_status(http_req *r, const srv_error *err);

/* Worker thread: stores a streamed response's record (r is referenced). */
static void stream_save_work(void *arg)
{
    http_req *r = arg;
    r->op.rc = sstore_response_put(sched_store(r->srv->s), r->resp_id, r->op.rec, r->op.err,
                                   sizeof r->op.err);
}

/* Scheduler thread: the stream ends with its closing event once the record
 * is stored; if it could not be, with an error instead: a client told
 * "completed" would continue from a response no replica can find. */
static void stream_save_done(void *arg)
{
    http_req *r = arg;
    pthread_mutex_lock(&r->mu);
    if (r->op.rc == SSTORE_OK) {
        push_raw(r, r->resp_final);
    } else {
        free(r->resp_final);
        fprintf(stderr, "metastate serve: response %s not stored: %s\n", r->resp_id, r->op.err);
        srv_error e;
        srv_fail(&e, r->op.rc == SSTORE_DOWN ? SRV_ERR_STORE_UNAVAILABLE : SRV_ERR_NOMEM,
                 "The response could not be stored (the server log says why); it cannot be "
                 "continued or retrieved.");
        push_error_status(r, &e);
    }
    r->resp_final = NULL;
    r->saving = 0;
    wake(r);
    pthread_mutex_unlock(&r->mu);
    req_unref(r); /* the work queue's reference */
}

static void sink_started(void *ud)
{
    http_req *r = ud;
    pthread_mutex_lock(&r->mu);
    r->started = 1;
    if (r->job.req.stream && r->responses) {
        resp_result rr;
        resp_fill(r, &rr, "in_progress", NULL, 0, NULL);
        rr.text = NULL;
        push_raw(r, resp_event("response.created",
                                 json_pack("{s:o}", "response", resp_object(r->resp_req, &rr)),
                                 &r->resp_seq));
        push_raw(r, resp_event("response.in_progress",
                                 json_pack("{s:o}", "response", resp_object(r->resp_req, &rr)),
                                 &r->resp_seq));
    } else if (r->job.req.stream && r->job.req.kind == OA_CHAT && !r->job.req.grammar_tools) {
        role_chunk(r, 0, "", 0);
    }
    wake(r);
    pthread_mutex_unlock(&r->mu);
}

static int sink_text(void *ud, int idx, const char *text, size_t len)
{
    http_req *r = ud;
    const oa_request *q = &r->job.req;
    pthread_mutex_lock(&r->mu);
    if (idx >= 0 && idx < r->n_choices) {
        choice_buf *c = &r->choices[idx];
        if ((!q->stream || q->grammar_tools || r->responses) && /* kept whole: calls are read from it */
            append(&c->text, &c->len, &c->cap, text, len))
            r->lost = 1;
        if (q->stream) {
            if (q->grammar_tools) tool_text(r, idx, text, len);
            else if (r->responses) plain_text(r, idx, text, len);
            else stream_text(r, idx, text, len);
        }
        wake(r);
    }
    int lost = r->lost;
    pthread_mutex_unlock(&r->mu);
    return lost ? -1 : 0;
}

static void sink_choice_done(void *ud, int idx, oa_finish f)
{
    http_req *r = ud;
    const oa_request *q = &r->job.req;
    pthread_mutex_lock(&r->mu);
    if (idx >= 0 && idx < r->n_choices) {
        choice_buf *c = &r->choices[idx];
        c->finish = f;
        if (q->stream && q->grammar_tools && c->ts_mode == 0 && c->held_len) {
            c->ts_mode = 2; /* ended while it could still have become a call: it is text */
            plain_text(r, idx, c->held, c->held_len);
            c->held_len = 0;
        }
        if (q->stream && !r->responses) {
            if (q->kind == OA_CHAT && !c->role_sent) role_chunk(r, idx, "", 0);
            if (q->logprobs && c->n_lp > c->lp_sent) text_chunk_lp(r, idx, "", 0, OA_FINISH_NONE);
            char *js = oa_chunk_json(q->kind, r->id, r->created, q->model, idx, 0, "", 0, f,
                                     q->include_usage);
            push_event(r, c->ts_mode == 1 ? agent_patch_chunk(js, NULL, NULL, 1) : js);
            wake(r);
        }
    }
    pthread_mutex_unlock(&r->mu);
}

/* The closing events of a streamed Responses API reply. */
static void resp_stream_done(http_req *r, const sched_result *res)
{
    choice_buf *c = &r->choices[0];
    tools_call *calls = NULL;
    int n = reply_calls(r, 0, &calls);
    const char *status = c->finish == OA_FINISH_LENGTH && !n ? "incomplete" : "completed";
    resp_result rr;
    resp_fill(r, &rr, status, calls, n, res);
    if (n) {
        for (int k = 0; k < n; k++) {
            push_raw(r, resp_event("response.function_call_arguments.done",
                                     json_pack("{s:s,s:i,s:s}", "item_id", c->item_ids[k],
                                               "output_index", k, "arguments", calls[k].arguments),
                                     &r->resp_seq));
            json_t *out = resp_object(r->resp_req, &rr);
            push_raw(r, resp_event("response.output_item.done",
                                     json_pack("{s:i,s:O}", "output_index", k, "item",
                                               json_array_get(json_object_get(out, "output"), (size_t)k)),
                                     &r->resp_seq));
            json_decref(out);
        }
    } else {
        resp_open_text(r);
        json_t *t = json_stringn(rr.text, rr.text_len);
        if (!t) t = json_string("");
        push_raw(r, resp_event("response.output_text.done",
                                 json_pack("{s:s,s:i,s:i,s:O,s:o}", "item_id", r->msg_id,
                                           "output_index", 0, "content_index", 0, "text", t,
                                           "logprobs", resp_logprobs(&rr, 0, rr.n_lp)),
                                 &r->resp_seq));
        push_raw(r, resp_event("response.content_part.done",
                                 json_pack("{s:s,s:i,s:i,s:{s:s,s:O,s:[],s:o}}", "item_id",
                                           r->msg_id, "output_index", 0, "content_index", 0, "part",
                                           "type", "output_text", "text", t, "annotations",
                                           "logprobs", resp_logprobs(&rr, 0, rr.n_lp)),
                                 &r->resp_seq));
        json_t *out = resp_object(r->resp_req, &rr);
        push_raw(r, resp_event("response.output_item.done",
                                 json_pack("{s:i,s:O}", "output_index", 0, "item",
                                           json_array_get(json_object_get(out, "output"), 0)),
                                 &r->resp_seq));
        json_decref(out);
        json_decref(t);
    }
    json_t *fin = resp_object(r->resp_req, &rr);
    char *last = resp_event(!strcmp(status, "completed") ? "response.completed" : "response.incomplete",
                            json_pack("{s:O}", "response", fin), &r->resp_seq);
    r->op.rec = resp_record(r, &rr, fin);
    json_decref(fin);
    tools_calls_free(calls, n);
    if (r->op.rec && last) {
        r->resp_final = last;
        r->saving = 1;
        atomic_fetch_add(&r->refs, 1); /* the work queue's reference */
        if (sched_run_io(r->srv->s, stream_save_work, stream_save_done, r) == SRV_OK) return;
        atomic_fetch_sub(&r->refs, 1);
        r->resp_final = NULL;
        r->saving = 0;
        free(last);
        srv_error e;
        srv_fail(&e, SRV_ERR_SHUTTING_DOWN, "the response could not be stored");
        push_error_status(r, &e);
        return;
    }
    push_raw(r, last);
}

/* Ends a started stream with an error event; caller holds mu. */
static void push_error_status(http_req *r, const srv_error *err)
{
    size_t n = 0;
    oa_error e;
    error_from_status(&e, err);
    char *ev = sse_error_event(&e, &n);
    /* Not even the error event fits: cut the stream (no [DONE]). */
    if (!ev || append(&r->out, &r->out_len, &r->out_cap, ev, n)) r->broken = 1;
    free(ev);
}

static void sink_done(void *ud, const sched_result *res)
{
    http_req *r = ud;
    const oa_request *q = &r->job.req;
    pthread_mutex_lock(&r->mu);
    r->result = *res;
    r->done = 1;
    r->job_live = 0;
    /* Output that could not be kept fails the request: a reply that lost
     * text must never end as if it were whole. */
    if (r->lost && r->result.err.code == SRV_OK)
        srv_fail(&r->result.err, SRV_ERR_NOMEM, "out of memory: the reply could not be kept whole");
    if (q->stream && r->started && r->result.err.code == SRV_OK) {
        if (r->responses) {
            resp_stream_done(r, res);
        } else {
            if (q->include_usage)
                push_event(r, oa_usage_chunk_json(q->kind, r->id, r->created, q->model, &res->usage));
            if (append(&r->out, &r->out_len, &r->out_cap, SSE_DONE, SSE_DONE_LEN)) r->broken = 1;
        }
    } else if (q->stream && r->started) {
        push_error_status(r, &r->result.err);
    }
    wake(r);
    pthread_mutex_unlock(&r->mu);
    req_unref(r); /* the scheduler's reference */
}

/* 0 once the client closed its connection (peeked EOF or a socket error). */
static int sink_alive(void *ud)
{
    http_req *r = ud;
    pthread_mutex_lock(&r->mu);
    int alive = !r->gone && r->conn;
    if (alive && r->fd >= 0) {
        char c;
        ssize_t n = recv(r->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            r->gone = 1;
            alive = 0;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return alive;
}

/* 1 while the client is not taking its stream fast enough: its output not
 * yet taken went over --stream-backlog-kb and has not yet drained below a
 * quarter of it. The scheduler pauses the sequence meanwhile, so a client
 * that stops reading costs a bounded buffer, not all it would generate.
 * "Not taken" counts our buffer and the socket's send queue (SIOCOUTQ): the
 * kernel grows a send buffer to megabytes before our own one fills. */
static int sink_backlogged(void *ud)
{
    http_req *r = ud;
    size_t bound = r->srv->cfg->stream_backlog;
    pthread_mutex_lock(&r->mu);
    size_t unsent = r->out_len - r->out_off;
    int queued = 0;
    if (r->conn && r->fd >= 0 && ioctl(r->fd, SIOCOUTQ, &queued) == 0 && queued > 0)
        unsent += (size_t)queued;
    if (unsent > bound) r->backlogged = 1;
    else if (unsent < bound / 4) r->backlogged = 0;
    int b = r->backlogged && r->job.req.stream;
    pthread_mutex_unlock(&r->mu);
    return b;
}

static const sched_sink sink = {sink_started, sink_text, sink_choice_done, sink_done, sink_alive,
                                sink_backlogged, sink_logprob};

/* ======================================================================== */
/* Streaming response reader (MHD thread)                                    */
/* ======================================================================== */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    http_req *r = cls;
    pthread_mutex_lock(&r->mu);
    if (r->out_off < r->out_len) {
        size_t n = r->out_len - r->out_off;
        if (n > max) n = max;
        memcpy(buf, r->out + r->out_off, n);
        r->out_off += n;
        if (r->out_off == r->out_len) {
            r->out_off = r->out_len = 0;
        } else if (r->out_off >= (64u << 10) && r->out_off * 2 >= r->out_len) {
            /* A reader that never quite catches up would otherwise keep the
             * buffer growing: move the unsent tail to the front. */
            memmove(r->out, r->out + r->out_off, r->out_len - r->out_off);
            r->out_len -= r->out_off;
            r->out_off = 0;
            r->out[r->out_len] = 0; /* kept terminated, as append() leaves it */
        }
        pthread_mutex_unlock(&r->mu);
        return (ssize_t)n;
    }
    if ((r->done && !r->saving) || !r->conn) {
        int broken = r->broken;
        pthread_mutex_unlock(&r->mu);
        return broken ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing yet: park the connection until the scheduler has output. */
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void stream_free(void *cls)
{
    req_unref(cls);
}

/* ======================================================================== */
/* Completions                                                               */
/* ======================================================================== */

static enum MHD_Result submit_completion(http_req *r, oa_kind kind);

static enum MHD_Result start_completion(http_req *r, oa_kind kind)
{
    oa_error e;
    if (oa_request_parse(kind, r->body ? r->body : "", r->body_len, &r->job.req, &e))
        return send_error_obj(r, &e);
    return submit_completion(r, kind);
}

static enum MHD_Result start_sess_op(http_req *r, sess_op_kind kind);
static enum MHD_Result submit_responses(http_req *r, json_t *prev);
static int need_ready(http_req *r, enum MHD_Result *out);

static enum MHD_Result previous_404(http_req *r)
{
    return send_error(r, 404, "invalid_request_error", "previous_response_id",
                      "previous_response_not_found", "Previous response with id '%.80s' not found.",
                      json_string_value(json_object_get(r->resp_req, "previous_response_id")));
}

/* POST /v1/responses: translated to a chat request (proto/responses.c); a
 * previous_response_id continues that response's conversation on its
 * session, so only the new input is fed. Its record is read from the store
 * first (OP_RESP_LOAD, then submit_responses). */
static enum MHD_Result start_responses(http_req *r)
{
    json_error_t je;
    json_t *req = json_loadb(r->body ? r->body : "", r->body_len, 0, &je);
    if (!req || !json_is_object(req)) {
        json_decref(req);
        return send_error(r, 400, "invalid_request_error", NULL, NULL,
                          "We could not parse the JSON body of your request: %s.", je.text);
    }
    r->resp_req = req;
    json_t *pid = json_object_get(req, "previous_response_id");
    if (!json_is_string(pid)) return submit_responses(r, NULL);
    if (json_string_length(pid) >= sizeof r->path_id || !json_string_length(pid))
        return previous_404(r);
    snprintf(r->path_id, sizeof r->path_id, "%s", json_string_value(pid));
    enum MHD_Result out;
    if (!need_ready(r, &out)) return out;
    return start_sess_op(r, OP_RESP_LOAD);
}

/* The second half of start_responses; prev: the previous response's record
 * or NULL. */
static enum MHD_Result submit_responses(http_req *r, json_t *prev)
{
    const char *chain = prev ? json_string_value(json_object_get(prev, "session")) : NULL;
    oa_error e;
    json_t *chat = resp_to_chat(r->resp_req, prev ? json_object_get(prev, "messages") : NULL,
                                &r->resp_hist, &e);
    if (!chat) return send_error_obj(r, &e);
    char *body = json_dumps(chat, JSON_COMPACT);
    json_decref(chat);
    if (!body) return send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    int rc = oa_request_parse(OA_CHAT, body, strlen(body), &r->job.req, &e);
    free(body);
    if (rc) return send_error_obj(r, &e);
    json_t *st = json_object_get(r->resp_req, "stream");
    r->job.req.stream = json_is_true(st);
    r->responses = 1;
    rand_id(r->resp_id, sizeof r->resp_id, "resp_");
    rand_id(r->msg_id, sizeof r->msg_id, "msg_");
    /* the conversation's session: the chain's, or this response's own */
    if (!r->job.req.session_id) {
        r->job.req.session_id = strdup(chain && chain[0] ? chain : r->resp_id);
        if (!r->job.req.session_id) return send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    }
    return submit_completion(r, OA_CHAT);
}

static enum MHD_Result submit_completion(http_req *r, oa_kind kind)
{
    http_srv *h = r->srv;
    const srv_config *cfg = h->cfg;
    oa_request *q = &r->job.req;
    if (strcmp(q->model, cfg->model_name))
        return send_error(r, 404, "invalid_request_error", "model", "model_not_found",
                          "The model '%s' does not exist; this server serves '%s' (see GET /v1/models).",
                          q->model, cfg->model_name);
    if (q->state && srv_config_init_state(cfg, q->state) < 0) {
        char have[1024] = "";
        size_t o = 0;
        for (int i = 0; i < cfg->n_init_states && o < sizeof have; i++)
            o += (size_t)snprintf(have + o, sizeof have - o, "%s'%s'", i ? ", " : "",
                                  cfg->init_states[i].name);
        return send_error(r, 400, "invalid_request_error", "state", "state_not_found",
                          "The initial state '%.100s' does not exist; %s%s (see GET /v1/models).",
                          q->state, cfg->n_init_states ? "this server has " : "this server has none",
                          have);
    }
    /* The header's length too: a NUL inside it must not cut the id short. */
    const char *hdr = NULL;
    size_t hdr_len = 0;
    if (MHD_lookup_connection_value_n(r->conn, MHD_HEADER_KIND, "X-Session-ID", 12, &hdr,
                                      &hdr_len) != MHD_YES || !hdr_len)
        hdr = NULL;
    const char *sid = q->session_id ? q->session_id : hdr;
    if (sid) {
        if (!oa_session_id_valid(sid, sid == hdr ? hdr_len : strlen(sid)))
            return bad_session_id(r);
        size_t n_out = (kind == OA_CHAT ? 1 : q->n_prompts) * (size_t)q->n;
        if (n_out > 1)
            return send_error(r, 400, "invalid_request_error", q->n > 1 ? "n" : "prompt", NULL,
                              "A request with a session_id continues one conversation: it takes a "
                              "single prompt and n = 1.");
        snprintf(r->session_id, sizeof r->session_id, "%s", sid);
        r->job.session_id = r->session_id;
    }
    if (!sched_ready(h->s))
        return send_error(r, 503, "server_error", NULL, "model_loading", "The model is still loading.");
    const ms_config *mc = ms_model_config(sched_model(h->s));
    for (size_t i = 0; i < q->n_logit_bias; i++)
        if (q->logit_bias[i].token < 0 || q->logit_bias[i].token >= mc->vocab_size)
            return send_error(r, 400, "invalid_request_error", "logit_bias", NULL,
                              "logit_bias: token id %d is outside the vocabulary (0..%d).",
                              q->logit_bias[i].token, mc->vocab_size - 1);
    for (size_t p = 0; q->prompt_ids && p < q->n_prompts; p++)
        for (size_t i = 0; q->prompt_ids[p] && i < q->prompt_n_ids[p]; i++)
            if (q->prompt_ids[p][i] >= mc->vocab_size)
                return send_error(r, 400, "invalid_request_error", "prompt", NULL,
                                  "Invalid 'prompt': token id %d is outside the vocabulary (0..%d).",
                                  q->prompt_ids[p][i], mc->vocab_size - 1);
    if (q->echo && q->stream)
        return send_error(r, 400, "invalid_request_error", "echo", NULL,
                          "'echo' is not supported with 'stream' on this server.");
    if (q->echo && q->logprobs && r->job.session_id)
        return send_error(r, 400, "invalid_request_error", "echo", NULL,
                          "'echo' with 'logprobs' scores the whole prompt and cannot be used with a "
                          "session.");
    int agentic = q->n_tools > 0;
    for (size_t i = 0; i < q->n_messages; i++)
        agentic |= q->messages[i].tool_calls != NULL || !strcmp(q->messages[i].role, "tool");
    if (kind == OA_CHAT && agentic) {
        r->job.prompt = tools_render(q, &r->job.prompt_len);
        if (!r->job.prompt)
            return send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    } else if (kind == OA_CHAT) {
        r->job.prompt = chat_render(q->messages, q->n_messages, &r->job.prompt_len);
        if (!r->job.prompt)
            return send_error(r, 400, "invalid_request_error", "messages", NULL,
                              "The messages could not be rendered (unknown role?).");
    }
    int mt = q->max_tokens;
    if (mt < 0) mt = kind == OA_CHAT ? cfg->default_chat_max_tokens : cfg->default_max_tokens;
    if (mt > cfg->max_tokens_cap) mt = cfg->max_tokens_cap;
    r->job.max_tokens = mt;
    r->n_choices = (int)((kind == OA_CHAT ? 1 : q->n_prompts) * (size_t)q->n);
    r->choices = calloc((size_t)r->n_choices, sizeof *r->choices);
    if (!r->choices) return send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    rand_id(r->id, sizeof r->id, kind == OA_CHAT ? "chatcmpl-" : "cmpl-");
    for (int i = 0; i < r->n_choices; i++) tools_stream_init(&r->choices[i].ts);
    r->created = (int64_t)time(NULL);
    r->job.t_submit = sched_now();
    r->job.deadline = r->job.t_submit + cfg->timeout_s;
    r->job.sink = &sink;
    r->job.ud = r;

    atomic_fetch_add(&r->refs, 1); /* the scheduler's reference */
    pthread_mutex_lock(&r->mu);
    r->job_live = 1;
    srv_status rc = sched_submit(h->s, &r->job);
    if (rc != SRV_OK) {
        r->job_live = 0;
        pthread_mutex_unlock(&r->mu);
        atomic_fetch_sub(&r->refs, 1);
        srv_error why = {rc, ""};
        if (rc == SRV_ERR_QUEUE_FULL)
            srv_fail(&why, rc, "The server is busy (all sequence slots and the queue are full); retry shortly.");
        else if (rc == SRV_ERR_LOADING)
            srv_fail(&why, rc, "The model is still loading.");
        else
            srv_fail(&why, rc, "The server is shutting down.");
        return send_status(r, &why);
    }
    /* Wait for the scheduler; callbacks resume us. */
    if (!r->done && !(q->stream && r->started)) {
        r->suspended = 1;
        MHD_suspend_connection(r->conn);
    }
    pthread_mutex_unlock(&r->mu);
    return MHD_YES;
}

static char *session_extra(http_req *r)
{
    if (!r->session_id[0]) return NULL;
    jbuf b = {0};
    jb_puts(&b, "{\"session_id\":");
    jb_cstr(&b, r->session_id);
    if (r->result.session_note[0]) {
        jb_puts(&b, ",\"session_warning\":");
        jb_cstr(&b, r->result.session_note);
    }
    jb_puts(&b, "}");
    return jb_finish(&b);
}

/* Adds logprobs, tool calls and echoed prompts to a finished response. */
static char *patch_agent(http_req *r, char *json)
{
    const oa_request *q = &r->job.req;
    const ms_tokenizer *tok = sched_tokenizer(r->srv->s);
    for (int i = 0; json && i < r->n_choices; i++) {
        choice_buf *c = &r->choices[i];
        size_t p = q->kind == OA_CHAT ? 0 : (size_t)i / (size_t)q->n;
        /* the echoed prompt: its text, or the bytes of its token ids */
        char *pre = NULL;
        size_t pre_len = 0, pre_cap = 0;
        if (q->kind == OA_COMPLETION && (q->echo || q->logprobs)) {
            if (q->prompt_ids && q->prompt_ids[p]) {
                for (size_t k = 0; k < q->prompt_n_ids[p]; k++) {
                    size_t bl = 0;
                    const char *b = ms_token_bytes(tok, q->prompt_ids[p][k], &bl);
                    if (b) append(&pre, &pre_len, &pre_cap, b, bl);
                }
            } else {
                append(&pre, &pre_len, &pre_cap, q->prompts[p], strlen(q->prompts[p]));
            }
        }
        json_t *lp = q->logprobs ? lp_json(r, i, 0, c->n_lp, q->echo, q->echo ? 0 : pre_len) : NULL;
        tools_call *calls = NULL;
        int n = reply_calls(r, i, &calls);
        json_t *tc = n ? agent_tool_calls(calls, n, c->call_ids, 0) : NULL;
        tools_calls_free(calls, n);
        json = agent_patch_response(json, (size_t)i, lp, tc, q->echo ? pre : NULL, q->echo ? pre_len : 0);
        free(pre);
    }
    return json;
}

/* Called when the connection is resumed (or immediately) for a completion. */
static enum MHD_Result continue_completion(http_req *r)
{
    const oa_request *q = &r->job.req;
    pthread_mutex_lock(&r->mu);
    int done = r->done, started = r->started;
    sched_result res = r->result;
    if (!done && !(q->stream && started)) { /* spurious wake-up: wait again */
        r->suspended = 1;
        MHD_suspend_connection(r->conn);
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&r->mu);
    if (q->stream && started) {
        atomic_fetch_add(&r->refs, 1); /* the response's reference */
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, r, stream_free);
        if (!resp) {
            atomic_fetch_sub(&r->refs, 1);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        add_common_headers(r, resp);
        r->status = 200;
        enum MHD_Result ok = MHD_queue_response(r->conn, 200, resp);
        MHD_destroy_response(resp);
        return ok;
    }
    if (res.err.code != SRV_OK) return send_status(r, &res.err);
    if (r->responses) {
        tools_call *calls = NULL;
        int n = reply_calls(r, 0, &calls);
        resp_result rr;
        resp_fill(r, &rr, r->choices[0].finish == OA_FINISH_LENGTH && !n ? "incomplete" : "completed",
                  calls, n, &res);
        json_t *o = resp_object(r->resp_req, &rr);
        json_t *rec = resp_record(r, &rr, o);
        tools_calls_free(calls, n);
        char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!rec || !t) {
            json_decref(rec);
            return send_json(r, 200, t);
        }
        /* answered once stored, so the next turn finds it on any replica */
        r->op.buf = t;
        r->op.rec = rec;
        return start_sess_op(r, OP_RESP_SAVE);
    }
    oa_choice *ch = calloc((size_t)r->n_choices, sizeof *ch);
    if (!ch) return send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    for (int i = 0; i < r->n_choices; i++)
        ch[i] = (oa_choice){r->choices[i].text ? r->choices[i].text : "", r->choices[i].len,
                            r->choices[i].finish};
    char *extra = session_extra(r);
    char *json = oa_response_json(q->kind, r->id, r->created, q->model, ch, (size_t)r->n_choices,
                                  &res.usage, extra);
    free(extra);
    free(ch);
    if (q->logprobs || q->grammar_tools || q->echo) json = patch_agent(r, json);
    return send_json(r, 200, json);
}

/* ======================================================================== */
/* Other routes                                                              */
/* ======================================================================== */

static enum MHD_Result do_health(http_req *r)
{
    if (atomic_load(&r->srv->draining))
        return send_json(r, 503, strdup("{\"status\":\"shutting_down\"}"));
    if (!sched_ready(r->srv->s)) return send_json(r, 503, strdup("{\"status\":\"loading\"}"));
    /* A store that is down does not make the replica unhealthy: requests
     * without a session are still served; the body says so. */
    sstore *st = sched_store(r->srv->s);
    char body[128];
    snprintf(body, sizeof body, "{\"status\":\"ok\",\"store\":\"%s\",\"store_kind\":\"%s\"}",
             sstore_up(st) ? "ok" : "unavailable", sstore_kind(st));
    return send_json(r, 200, strdup(body));
}

static enum MHD_Result do_metrics(http_req *r)
{
    size_t n = 0;
    char *t = metrics_render(&n);
    return send_buf(r, 200, "text/plain; version=0.0.4; charset=utf-8", t, n, 1);
}

/* The --init-state names, for the model entry. */
static size_t state_names(const srv_config *cfg, const char **out)
{
    for (int i = 0; i < cfg->n_init_states; i++) out[i] = cfg->init_states[i].name;
    return (size_t)cfg->n_init_states;
}

static enum MHD_Result do_models(http_req *r)
{
    const char *names[1] = {r->srv->cfg->model_name};
    const char *states[SRV_MAX_INIT_STATES];
    size_t ns = state_names(r->srv->cfg, states);
    return send_json(r, 200, oa_models_json(names, 1, r->srv->started_at, "metastate", states, ns));
}

static enum MHD_Result do_model(http_req *r)
{
    if (strcmp(r->path_id, r->srv->cfg->model_name))
        return send_error(r, 404, "invalid_request_error", "model", "model_not_found",
                          "The model '%s' does not exist.", r->path_id);
    const char *states[SRV_MAX_INIT_STATES];
    size_t ns = state_names(r->srv->cfg, states);
    return send_json(r, 200, oa_model_json(r->srv->cfg->model_name, r->srv->started_at, "metastate",
                                           states, ns));
}

/* GET /v1/responses/{id}: the stored response as it ended; DELETE forgets it
 * (and so previous_response_id to it). Replaying a stream is not offered. */
static enum MHD_Result do_response(http_req *r, const char *method)
{
    enum MHD_Result out;
    if (!need_ready(r, &out)) return out;
    if (!strcmp(method, "GET")) {
        const char *st = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "stream");
        if (st && strcmp(st, "false"))
            return send_error(r, 400, "invalid_request_error", "stream", "unsupported_parameter",
                              "Unsupported parameter: 'stream' is not supported with this server "
                              "when retrieving a response: retrieve it whole.");
        return start_sess_op(r, OP_RESP_GET);
    }
    return start_sess_op(r, OP_RESP_DELETE);
}

static int need_ready(http_req *r, enum MHD_Result *out)
{
    if (sched_ready(r->srv->s)) return 1;
    *out = send_error(r, 503, "server_error", NULL, "model_loading", "The model is still loading.");
    return 0;
}

static enum MHD_Result session_404(http_req *r)
{
    return send_error(r, 404, "invalid_request_error", "session_id", "session_not_found",
                      "No session '%s'.", r->path_id);
}

static enum MHD_Result session_409(http_req *r)
{
    return send_error(r, 409, "invalid_request_error", "session_id", "session_busy",
                      "Session '%s' is in use by a running request; retry when it is done.", r->path_id);
}

static enum MHD_Result store_503(http_req *r)
{
    return send_error(r, 503, "server_error", NULL, "store_unavailable",
                      "The session store is unavailable; retry shortly.");
}

/* Worker thread: the file work of r's session operation. r is referenced
 * and its connection suspended, so nothing else touches its fields. */
static void sess_op_work(void *arg)
{
    http_req *r = arg;
    sstore *p = sched_store(r->srv->s);
    sess_op *op = &r->op;
    if (op->kind == OP_RESP_LOAD || op->kind == OP_RESP_GET) {
        op->rc = sstore_response_get(p, r->path_id, &op->rec, op->err, sizeof op->err);
    } else if (op->kind == OP_RESP_SAVE) {
        op->rc = sstore_response_put(p, r->resp_id, op->rec, op->err, sizeof op->err);
    } else if (op->kind == OP_RESP_DELETE) {
        op->rc = sstore_response_delete(p, r->path_id);
    } else if (op->kind == OP_LIST) {
        op->buf = sstore_list_json(p, &op->rc);
    } else if (op->kind == OP_INFO) {
        op->buf = sstore_info_json(p, r->path_id, &op->rc);
    } else if (op->kind == OP_DELETE) {
        op->rc = sstore_delete(p, r->path_id);
    } else if (op->kind == OP_EXPORT) {
        FILE *f = open_memstream(&op->buf, &op->len);
        if (!f) {
            op->rc = OP_FAILED;
            snprintf(op->err, sizeof op->err, "out of memory");
            return;
        }
        op->rc = sstore_export(p, r->path_id, f, op->err, sizeof op->err);
        fclose(f);
        if (op->rc) {
            free(op->buf);
            op->buf = NULL;
        }
    } else {
        /* The engine reads tensor files by path, so the body is staged in
         * an anonymous in-memory file: nothing on disk to leak or leave
         * behind, and no server path in any message. */
        int fd = memfd_create("metastate-import", MFD_CLOEXEC);
        if (fd < 0) {
            op->rc = OP_FAILED;
            snprintf(op->err, sizeof op->err, "cannot stage the upload: %s", strerror(errno));
            return;
        }
        size_t off = 0;
        while (off < r->body_len) {
            ssize_t w = write(fd, r->body + off, r->body_len - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
        char staged[64];
        snprintf(staged, sizeof staged, "/proc/self/fd/%d", fd);
        if (off == r->body_len) {
            op->rc = sstore_import(p, r->path_id, staged, op->err, sizeof op->err);
            if (op->rc == SSTORE_OK) op->buf = sstore_info_json(p, r->path_id, &op->info_rc);
        } else {
            op->rc = OP_FAILED;
            snprintf(op->err, sizeof op->err, "cannot stage the upload");
        }
        close(fd);
        /* The engine names the file it read; the staging path means nothing
         * to the client and shows server internals. */
        for (char *at; (at = strstr(op->err, staged));) {
            size_t n = strlen(staged) + (at[strlen(staged)] == ':' ? 1 : 0);
            while (at[n] == ' ') n++;
            memmove(at, at + n, strlen(at + n) + 1);
        }
    }
}

/* Scheduler thread: the work is done; resume the connection. */
static void sess_op_done(void *arg)
{
    http_req *r = arg;
    pthread_mutex_lock(&r->mu);
    r->op.finished = 1;
    wake(r);
    pthread_mutex_unlock(&r->mu);
    req_unref(r); /* the work queue's reference */
}

static enum MHD_Result start_sess_op(http_req *r, sess_op_kind kind)
{
    r->op.kind = kind;
    atomic_fetch_add(&r->refs, 1); /* the work queue's reference */
    pthread_mutex_lock(&r->mu);
    r->op.finished = 0; /* a request may run two (a response's load, then its save) */
    srv_status st = sched_run_io(r->srv->s, sess_op_work, sess_op_done, r);
    if (st != SRV_OK) {
        r->op.kind = OP_NONE;
        pthread_mutex_unlock(&r->mu);
        atomic_fetch_sub(&r->refs, 1);
        srv_error why = {st, ""};
        return send_status(r, &why);
    }
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    return MHD_YES;
}

/* finish_sess_op for a stored response's operation. */
static enum MHD_Result finish_resp_op(http_req *r)
{
    sess_op *op = &r->op;
    sess_op_kind kind = op->kind;
    op->kind = OP_NONE; /* a load goes on to submit the job: later wake-ups are the job's */
    if (op->rc == SSTORE_DOWN) return store_503(r);
    if (op->rc != SSTORE_OK && op->rc != SSTORE_UNKNOWN) {
        /* the details name server files or store keys: for the log only */
        const char *id = kind == OP_RESP_SAVE ? r->resp_id : r->path_id;
        fprintf(stderr, "metastate serve: response %s: %s\n", id, op->err);
        if (kind == OP_RESP_SAVE)
            return send_error(r, 500, "server_error", NULL, NULL,
                              "The response could not be stored (the server log says why).");
        return send_error(r, 500, "server_error", NULL, NULL,
                          "The stored response '%.80s' could not be read (the server log says why).", id);
    }
    if (kind == OP_RESP_SAVE) {
        char *t = op->buf;
        op->buf = NULL;
        return send_json(r, 200, t);
    }
    if (op->rc == SSTORE_UNKNOWN)
        return kind == OP_RESP_LOAD ? previous_404(r)
             : send_error(r, 404, "invalid_request_error", NULL, "not_found",
                          "Response with id '%.80s' not found.", r->path_id);
    if (kind == OP_RESP_DELETE) return send_json(r, 200, oa_deleted_json(r->path_id, "response.deleted"));
    json_t *rec = op->rec;
    op->rec = NULL;
    enum MHD_Result out;
    if (kind == OP_RESP_LOAD)
        out = submit_responses(r, rec);
    else
        out = send_json(r, 200, json_dumps(json_object_get(rec, "response"),
                                           JSON_COMPACT | JSON_PRESERVE_ORDER));
    json_decref(rec);
    return out;
}

/* Called when the connection is resumed: answer with the operation's result. */
static enum MHD_Result finish_sess_op(http_req *r)
{
    pthread_mutex_lock(&r->mu);
    if (!r->op.finished) { /* spurious wake-up: wait again */
        r->suspended = 1;
        MHD_suspend_connection(r->conn);
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&r->mu);
    sess_op *op = &r->op;
    if (op->kind >= OP_RESP_LOAD) return finish_resp_op(r);
    if (op->rc == SSTORE_DOWN) return store_503(r);
    if (op->rc == SSTORE_UNKNOWN) return session_404(r);
    if (op->rc == SSTORE_BUSY) return session_409(r);
    if (op->rc == OP_FAILED) return send_error(r, 500, "server_error", NULL, NULL, "%s", op->err);
    if (op->kind == OP_LIST || op->kind == OP_INFO) {
        char *t = op->buf;
        op->buf = NULL;
        return send_json(r, 200, t);
    }
    if (op->kind == OP_DELETE)
        return send_json(r, 200, oa_deleted_json(r->path_id, "session.deleted"));
    if (op->kind == OP_EXPORT) {
        if (op->rc != SSTORE_OK)
            return send_error(r, 500, "server_error", NULL, NULL, "export failed: %s", op->err);
        char disp[256];
        snprintf(disp, sizeof disp, "attachment; filename=\"%s.safetensors\"", r->path_id);
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(op->len, op->buf, MHD_RESPMEM_MUST_FREE);
        if (!resp) return MHD_NO;
        op->buf = NULL; /* the response owns it now */
        MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
        MHD_add_response_header(resp, "Content-Disposition", disp);
        add_common_headers(r, resp);
        r->status = 200;
        enum MHD_Result ok = MHD_queue_response(r->conn, 200, resp);
        MHD_destroy_response(resp);
        return ok;
    }
    if (op->rc != SSTORE_OK)
        return send_error(r, 400, "invalid_request_error", "state", "invalid_state", "%s", op->err);
    char *t = op->buf;
    op->buf = NULL;
    return t ? send_json(r, 200, t) : op->info_rc == SSTORE_DOWN ? store_503(r) : session_404(r);
}

static enum MHD_Result do_sessions(http_req *r, const char *method)
{
    enum MHD_Result out;
    if (!need_ready(r, &out)) return out;
    if (r->route == R_SESSIONS) return start_sess_op(r, OP_LIST);
    if (r->route == R_SESSION) return start_sess_op(r, !strcmp(method, "GET") ? OP_INFO : OP_DELETE);
    return start_sess_op(r, !strcmp(method, "GET") ? OP_EXPORT : OP_IMPORT);
}

/* ======================================================================== */
/* Routing, auth, CORS                                                       */
/* ======================================================================== */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* URL unescaping as libmicrohttpd's own (%HH), except that %00 stays as
 * written: a decoded NUL would end the C string MHD hands the handler and
 * silently change the target ("/v1/sessions/a%00b/state" would name "a"). */
static size_t unescape_url(void *cls, struct MHD_Connection *c, char *s)
{
    char *w = s;
    for (const char *p = s; *p;) {
        int hi, lo;
        if (p[0] == '%' && (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0 && (hi | lo)) {
            *w++ = (char)(hi << 4 | lo);
            p += 3;
        } else {
            *w++ = *p++;
        }
    }
    *w = 0;
    return (size_t)(w - s);
}

/* Maps url to a route and the methods it allows ("GET, POST"...). */
static route_id route_of(const char *url, char *id, size_t idcap, const char **allow)
{
    id[0] = 0;
    if (!strcmp(url, "/health")) return *allow = "GET", R_HEALTH;
    if (!strcmp(url, "/metrics")) return *allow = "GET", R_METRICS;
    if (!strcmp(url, "/v1/models")) return *allow = "GET", R_MODELS;
    if (!strcmp(url, "/v1/completions")) return *allow = "POST", R_COMPLETIONS;
    if (!strcmp(url, "/v1/chat/completions")) return *allow = "POST", R_CHAT;
    if (!strcmp(url, "/v1/responses")) return *allow = "POST", R_RESPONSES;
    if (!strcmp(url, "/v1/sessions")) return *allow = "GET", R_SESSIONS;
    if (!strncmp(url, "/v1/models/", 11) && url[11] && !strchr(url + 11, '/')) {
        snprintf(id, idcap, "%s", url + 11);
        return *allow = "GET", R_MODEL;
    }
    if (!strncmp(url, "/v1/responses/", 14) && url[14] && !strchr(url + 14, '/')) {
        snprintf(id, idcap, "%s", url + 14);
        return *allow = "GET, DELETE", R_RESPONSE;
    }
    if (!strncmp(url, "/v1/sessions/", 13)) {
        const char *p = url + 13, *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        /* Empty or too long: left empty, so the id check answers 400. */
        if (n < idcap) {
            memcpy(id, p, n);
            id[n] = 0;
        }
        if (!slash) return *allow = "GET, DELETE", R_SESSION;
        if (!strcmp(slash, "/state")) return *allow = "GET, PUT", R_SESSION_STATE;
    }
    return R_NONE;
}

static int method_allowed(const char *allow, const char *method)
{
    size_t n = strlen(method);
    for (const char *p = allow; (p = strstr(p, method)); p += n)
        if ((p == allow || p[-1] == ' ') && (p[n] == 0 || p[n] == ','))
            return 1;
    return 0;
}

static const char *cors_origin(const srv_config *cfg, struct MHD_Connection *c)
{
    const char *o = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    if (!o) return NULL;
    for (int i = 0; i < cfg->n_cors; i++) {
        if (!strcmp(cfg->cors[i], "*")) return "*";
        if (!strcmp(cfg->cors[i], o)) return cfg->cors[i];
    }
    return NULL;
}

/* Constant-time check of "Authorization: Bearer KEY". */
static int authorized(const srv_config *cfg, struct MHD_Connection *c)
{
    if (!cfg->api_key) return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7)) return 0;
    a += 7;
    while (*a == ' ') a++;
    size_t n = strlen(a), k = strlen(cfg->api_key);
    unsigned diff = (unsigned)(n ^ k);
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)a[i] ^ (unsigned char)cfg->api_key[i % (k ? k : 1)];
    return diff == 0;
}

static enum MHD_Result preflight(http_req *r, const char *allow)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    int status = 204;
    if (r->origin) {
        add_common_headers(r, resp);
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", allow ? allow : "GET, POST, PUT, DELETE");
        const char *req_h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                        "Access-Control-Request-Headers");
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                req_h ? req_h : "Authorization, Content-Type, X-Session-ID");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    } else {
        status = 403; /* origin not listed in --cors-origin */
    }
    if (allow) MHD_add_response_header(resp, "Allow", allow);
    r->status = status;
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    http_srv *h = cls;
    http_req *r = *con_cls;
    if (!r) {
        /* First call: headers only. Decide everything that does not need the body. */
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        atomic_init(&r->refs, 1);
        r->srv = h;
        atomic_fetch_add(&h->in_flight, 1);
        pthread_mutex_init(&r->mu, NULL);
        r->conn = conn;
        r->fd = -1;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) r->fd = ci->connect_fd;
        r->t_start = sched_now();
        *con_cls = r;
        /* X-Request-ID: the client's when it is printable and short, else ours */
        const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-ID");
        size_t rl = rid ? strlen(rid) : 0;
        for (size_t i = 0; i < rl; i++)
            if (rid[i] < 0x21 || rid[i] > 0x7e) rl = 0;
        if (rl && rl < sizeof r->request_id) snprintf(r->request_id, sizeof r->request_id, "%s", rid);
        else rand_id(r->request_id, sizeof r->request_id, "req_");
        const char *allow = NULL;
        r->route = route_of(url, r->path_id, sizeof r->path_id, &allow);
        if (r->route == R_NONE && !h->cfg->no_ui && web_ui_find(url)) r->route = R_UI, allow = "GET, HEAD";
        r->allow = allow;
        r->origin = cors_origin(h->cfg, conn);
        r->body_limit = h->cfg->max_body;
        if (r->route == R_SESSION_STATE && sched_ready(h->s)) {
            /* an upload is one state plus its safetensors header */
            size_t sb = ms_state_bytes(sched_model(h->s)) + (1u << 20);
            if (sb > r->body_limit) r->body_limit = sb;
        }
        if (!strcmp(method, "OPTIONS") && r->route != R_NONE) {
            r->route = R_PREFLIGHT;
            return preflight(r, allow);
        }
        /* The key is checked before the route is judged: without it, 404
         * and 405 would tell which routes exist. */
        if (r->route != R_HEALTH && r->route != R_UI && !authorized(h->cfg, conn))
            return send_error(r, 401, "authentication_error", NULL, "invalid_api_key",
                              "Missing or invalid API key: send 'Authorization: Bearer <key>'.");
        if (r->route == R_NONE)
            return send_error(r, 404, "invalid_request_error", NULL, "not_found",
                              "Unknown route %s %s.", method, url);
        if (!method_allowed(allow, method)) {
            enum MHD_Result ok = send_error(r, 405, "invalid_request_error", NULL, "method_not_allowed",
                                            "Method %s is not allowed on %s (allowed: %s).", method, url, allow);
            return ok;
        }
        if ((r->route == R_SESSION || r->route == R_SESSION_STATE) &&
            !oa_session_id_valid(r->path_id, strlen(r->path_id)))
            return bad_session_id(r);
        if (atomic_load(&h->draining) && r->route != R_HEALTH && r->route != R_METRICS)
            return send_error(r, 503, "server_error", NULL, "shutting_down", "The server is shutting down.");
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > r->body_limit)
            return send_error(r, 413, "invalid_request_error", NULL, "request_too_large",
                              "Request body of %s bytes exceeds the limit of %zu bytes.", cl, r->body_limit);
        return MHD_YES;
    }
    if (*upload_data_size) {
        /* Body bytes: keep them while under the limit, then only count. */
        if (!r->too_large) {
            if (r->body_len + *upload_data_size > r->body_limit) {
                r->too_large = 1;
                free(r->body);
                r->body = NULL;
                r->body_len = r->body_cap = 0;
            } else if (append(&r->body, &r->body_len, &r->body_cap, upload_data, *upload_data_size)) {
                return MHD_NO;
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    /* Whole request received (or resumed after a suspend). */
    if (r->op.kind != OP_NONE) return finish_sess_op(r);
    if (r->job.sink) return continue_completion(r);
    if (r->too_large)
        return send_error(r, 413, "invalid_request_error", NULL, "request_too_large",
                          "Request body exceeds the limit of %zu bytes.", r->body_limit);
    switch (r->route) {
    case R_HEALTH: return do_health(r);
    case R_UI: return web_ui_respond(conn, web_ui_find(url), &r->status);
    case R_METRICS: return do_metrics(r);
    case R_MODELS: return do_models(r);
    case R_MODEL: return do_model(r);
    case R_COMPLETIONS: return start_completion(r, OA_COMPLETION);
    case R_CHAT: return start_completion(r, OA_CHAT);
    case R_RESPONSES: return start_responses(r);
    case R_RESPONSE: return do_response(r, method);
    case R_SESSIONS:
    case R_SESSION:
    case R_SESSION_STATE: return do_sessions(r, method);
    default: return send_error(r, 404, "invalid_request_error", NULL, "not_found", "Unknown route.");
    }
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    http_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    pthread_mutex_lock(&r->mu);
    r->conn = NULL;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) r->gone = 1;
    int status = r->status ? r->status : 499;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->job.sink && !r->done) status = 499;
    pthread_mutex_unlock(&r->mu);
    metrics_request(route_label[r->route], status);
    if (r->route == R_COMPLETIONS || r->route == R_CHAT || r->route == R_RESPONSES)
        metrics_observe(MET_H_REQUEST, sched_now() - r->t_start);
    fprintf(stderr, "metastate serve: %s %d %.3fs request_id=%s\n", route_label[r->route], status,
            sched_now() - r->t_start, r->request_id);
    req_unref(r);
}

/* ======================================================================== */
/* Server lifetime                                                           */
/* ======================================================================== */

/* The --metrics-port listener: GET /metrics without the API key, for
 * scrapers that cannot send one (Prometheus annotation scraping); nothing
 * else is served there, so that port can stay inside the cluster. */
static enum MHD_Result metrics_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_data_size,
                                       void **con_cls)
{
    static int headers_seen;
    if (!*con_cls) {
        *con_cls = &headers_seen;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    int ok = !strcmp(url, "/metrics") && (!strcmp(method, "GET") || !strcmp(method, "HEAD"));
    size_t n = 0;
    char *t = ok ? metrics_render(&n) : strdup("only GET /metrics is served on this port\n");
    if (!t) return MHD_NO;
    if (!ok) n = strlen(t);
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, t, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(t);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type",
                            ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8");
    enum MHD_Result rc = MHD_queue_response(conn, ok ? 200 : 404, resp);
    MHD_destroy_response(resp);
    return rc;
}

http_srv *http_start(const srv_config *cfg, sched *s, char *err, size_t errcap)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    int g = getaddrinfo(cfg->host, port, &hints, &ai);
    if (g) {
        snprintf(err, errcap, "cannot resolve host '%s': %s", cfg->host, gai_strerror(g));
        return NULL;
    }
    http_srv *h = calloc(1, sizeof *h);
    if (!h) {
        freeaddrinfo(ai);
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    h->cfg = cfg;
    h->s = s;
    h->started_at = (int64_t)time(NULL);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, handler, h,
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, h,
                            MHD_OPTION_UNESCAPE_CALLBACK, unescape_url, NULL,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout_s,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
                            MHD_OPTION_END);
    if (h->d && cfg->metrics_port) {
        ((struct sockaddr_in *)ai->ai_addr)->sin_port = htons((uint16_t)cfg->metrics_port); /* same offset in sockaddr_in6 */
        h->md = MHD_start_daemon(flags & ~(unsigned)MHD_ALLOW_SUSPEND_RESUME, (uint16_t)cfg->metrics_port,
                                 NULL, NULL, metrics_handler, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout_s,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                                 MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
        if (!h->md) {
            MHD_stop_daemon(h->d);
            h->d = NULL;
            freeaddrinfo(ai);
            snprintf(err, errcap, "cannot listen on %s:%d for --metrics-port (address in use or "
                     "not available)", cfg->host, cfg->metrics_port);
            free(h);
            return NULL;
        }
    }
    freeaddrinfo(ai);
    if (!h->d) {
        snprintf(err, errcap, "cannot listen on %s:%d (address in use or not available)", cfg->host,
                 cfg->port);
        free(h);
        return NULL;
    }
    return h;
}

void http_quiesce(http_srv *h)
{
    atomic_store(&h->draining, 1);
    MHD_socket fd = MHD_quiesce_daemon(h->d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

int http_wait_idle(http_srv *h, double timeout_s)
{
    double end = sched_now() + timeout_s;
    while (atomic_load(&h->in_flight) > 0 && sched_now() < end) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return atomic_load(&h->in_flight);
}

void http_stop(http_srv *h)
{
    if (!h) return;
    if (h->md) MHD_stop_daemon(h->md);
    MHD_stop_daemon(h->d);
    free(h);
}
