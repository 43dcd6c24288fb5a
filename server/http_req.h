/*
 * http_req.h - what the HTTP front's files share (internal to server/http*.c;
 * the rest of the server sees http.h only): one request's state, and the
 * helpers that answer it.
 *
 *   http.c            libmicrohttpd glue: routes, auth, CORS, bodies, plain
 *                     routes, server lifetime; the request lifetime below
 *   http_completion.c completions: the job, the scheduler's callbacks (the
 *                     sink) and the SSE stream they feed
 *   http_responses.c  the Responses API over the chat machinery: its events,
 *                     replies and stored records
 *   http_sessions.c   requests that touch the session store or files, on the
 *                     scheduler's work queue
 *
 * Request lifetime. Each HTTP request gets one http_req, reference counted:
 * one reference for MHD (dropped in the completion callback), one for the
 * scheduler while it holds the job (dropped after sink->done), one for a
 * streaming response (dropped when MHD frees the response), one for a work
 * queue operation while it runs. Fields shared with the scheduler thread are
 * guarded by the request's mutex.
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
#ifndef METASTATE_SERVER_HTTP_REQ_H
#define METASTATE_SERVER_HTTP_REQ_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "agent_out.h"
#include "http.h"
#include "openai.h"
#include "scheduler.h"
#include "tools.h"

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
    R_SESSION, R_SESSION_STATE, R_PREFLIGHT, R_UI, R_RESPONSES, R_RESPONSE,
    R_RESPONSE_ITEMS, R_RESPONSE_CANCEL
} route_id;

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

/* A request's operation on the store or on files (http_sessions.c): the
 * session list; a session's GET, DELETE, export, import; a stored
 * response's load, save, retrieve, delete. */
typedef enum {
    OP_NONE = 0, OP_LIST, OP_INFO, OP_DELETE, OP_EXPORT, OP_IMPORT,
    OP_RESP_LOAD, OP_RESP_SAVE, OP_RESP_GET, OP_RESP_DELETE
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
    json_t *resp_input;   /* this request's input items, to store for input_items */
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

/* ----- http.c: answering (MHD thread) ----- */

/* Drops one reference; the last frees r. Any thread. */
void req_unref(http_req *r);
/* Appends n bytes to a growing NUL-terminated buffer: 0, or -1 out of memory. */
int buf_append(char **buf, size_t *len, size_t *cap, const char *p, size_t n);
/* prefix + 24 random hex digits into out (cap bytes). */
void http_rand_id(char *out, size_t cap, const char *prefix);
/* The headers every response carries (CORS, X-Request-ID). */
void http_common_headers(http_req *r, struct MHD_Response *resp);
/* Queues status with json (malloc'd, taken; NULL: a 500). */
enum MHD_Result http_send_json(http_req *r, int status, char *json);
enum MHD_Result http_send_error_obj(http_req *r, const oa_error *e);
/* The one place where a server status becomes an HTTP status, an OpenAI
 * error type and code. */
void http_error_from_status(oa_error *e, const srv_error *err);
enum MHD_Result http_send_status(http_req *r, const srv_error *err);
/* An OpenAI error object; param and code may be NULL. */
enum MHD_Result http_send_error(http_req *r, int status, const char *type, const char *param,
                                const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The 400 for a session id that oa_session_id_valid rejects. */
enum MHD_Result http_bad_session_id(http_req *r);
/* 1 when the model is loaded; else queues a 503 into *out and returns 0. */
int http_need_ready(http_req *r, enum MHD_Result *out);

/* ----- http_completion.c ----- */

/* Resumes the connection if the MHD side is waiting; caller holds r->mu. */
void req_wake(http_req *r);
/* Appends an already framed SSE event (malloc'd, taken; NULL ignored);
 * caller holds mu. */
void req_push_raw(http_req *r, char *ev);
/* A seed for the ids the server makes for r's items (k tells them apart):
 * the clock, r's address and k mixed. Any thread. */
uint64_t req_seed(const http_req *r, int k);
/* Ends a started stream with an error event; caller holds mu. */
void req_push_error(http_req *r, const srv_error *err);
/* The calls of choice idx's finished reply (tools grammar), with ids, into
 * *calls (caller frees with tools_calls_free). Returns the count (0: text). */
int reply_calls(http_req *r, int idx, tools_call **calls);
/* POST /v1/completions and /v1/chat/completions: parse, then submit. */
enum MHD_Result start_completion(http_req *r, oa_kind kind);
/* Submits r->job (its request parsed) to the scheduler and suspends. */
enum MHD_Result submit_completion(http_req *r, oa_kind kind);
/* Called on every resume of a submitted job: the stream, or the reply. */
enum MHD_Result continue_completion(http_req *r);

/* ----- http_responses.c ----- */

/* POST /v1/responses (MHD thread). */
enum MHD_Result start_responses(http_req *r);
/* GET and DELETE /v1/responses/{id}, GET .../input_items, POST .../cancel (MHD thread). */
enum MHD_Result do_response(http_req *r, const char *method);
/* The answer of a finished stored-response operation (MHD thread). */
enum MHD_Result finish_resp_op(http_req *r);
/* A finished job's whole reply (MHD thread). */
enum MHD_Result resp_reply(http_req *r, const sched_result *res);
/* Stream events (scheduler thread, caller holds mu): the opening ones, a
 * call's item opened, its arguments grown by a (taken), reply text, and the
 * closing ones (sent once the record is stored). */
void resp_stream_start(http_req *r);
void resp_call_added(http_req *r, choice_buf *c, int index, const char *name);
void resp_call_args(http_req *r, choice_buf *c, int index, json_t *a);
void resp_text_delta(http_req *r, choice_buf *c, const char *text, size_t len);
void resp_stream_done(http_req *r, const sched_result *res);

/* ----- http_sessions.c ----- */

/* /v1/sessions, /v1/sessions/{id} and its /state (MHD thread). */
enum MHD_Result do_sessions(http_req *r, const char *method);
/* Runs r->op of kind on the work queue and suspends the connection; the
 * resume lands in finish_sess_op. */
enum MHD_Result start_sess_op(http_req *r, sess_op_kind kind);
enum MHD_Result finish_sess_op(http_req *r);
/* 503 store_unavailable. */
enum MHD_Result http_store_503(http_req *r);

#endif
