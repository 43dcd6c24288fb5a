/*
 * http_completion.c - completions over HTTP: parsing and submitting the job,
 * the scheduler's callbacks (the sink) that turn its output into the reply
 * or the SSE stream, and the stream's reader. See http_req.h for how a
 * request waits and who holds it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#include "agent_out.h"
#include "chat_format.h"
#include "http_req.h"
#include "json_write.h"
#include "responses.h"
#include "sse.h"

/* ----- the scheduler's callbacks (scheduler thread) ----- */

/* Resumes the connection if the MHD side is waiting; caller holds r->mu. */
void req_wake(http_req *r)
{
    if (r->suspended && r->conn) {
        r->suspended = 0;
        MHD_resume_connection(r->conn);
    }
}

/* Appends one SSE event carrying payload (which is freed); caller holds mu.
 * Out of memory anywhere marks the reply lost. */
static void req_push_event(http_req *r, char *payload)
{
    size_t n = 0;
    char *ev = payload ? sse_event(payload, strlen(payload), &n) : NULL;
    free(payload);
    if (!ev || buf_append(&r->out, &r->out_len, &r->out_cap, ev, n)) r->lost = 1;
    free(ev);
}

/* Appends an already framed event (which is freed); caller holds mu. */
void req_push_raw(http_req *r, char *ev)
{
    if (!ev) return;
    buf_append(&r->out, &r->out_len, &r->out_cap, ev, strlen(ev));
    free(ev);
}

static void role_chunk(http_req *r, int idx, const char *text, size_t len)
{
    const oa_request *q = &r->job.req;
    req_push_event(r, oa_chunk_json(OA_CHAT, r->id, r->created, q->model, idx, 1, text, len,
                                    OA_FINISH_NONE, q->include_usage));
    r->choices[idx].role_sent = 1;
}

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
    req_push_event(r, lj ? agent_patch_chunk(js, lj, NULL, 0) : js);
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

uint64_t req_seed(const http_req *r, int k)
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

/* A call's name is complete: its first delta (chat) or item (responses). */
static void tc_start(void *ud, int index, const char *name)
{
    tc_ctx *x = ud;
    http_req *r = x->r;
    const oa_request *q = &r->job.req;
    choice_buf *c = &r->choices[x->idx];
    if (index >= TOOLS_MAX_PARALLEL) return;
    tools_call_id(c->call_ids[index], req_seed(r, index));
    resp_new_id(c->item_ids[index], "fc_", req_seed(r, index + 7));
    c->n_calls = index + 1;
    c->ts_mode = 1;
    if (r->responses) {
        resp_call_added(r, c, index, name);
        return;
    }
    if (!c->role_sent) role_chunk(r, x->idx, "", 0);
    json_t *d = json_pack("[{s:i,s:s,s:s,s:{s:s,s:s}}]", "index", index, "id", c->call_ids[index],
                          "type", "function", "function", "name", name, "arguments", "");
    char *js = oa_chunk_json(OA_CHAT, r->id, r->created, q->model, x->idx, 0, "", 0,
                             OA_FINISH_NONE, q->include_usage);
    req_push_event(r, agent_patch_chunk(js, NULL, d, 0));
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
        resp_call_args(r, c, index, a);
        return;
    }
    json_t *d = json_pack("[{s:i,s:{s:o}}]", "index", index, "function", "arguments", a);
    char *js = oa_chunk_json(OA_CHAT, r->id, r->created, q->model, x->idx, 0, "", 0,
                             OA_FINISH_NONE, q->include_usage);
    req_push_event(r, agent_patch_chunk(js, NULL, d, 0));
}

/* Plain text of a streamed reply, after it is known not to be a call. */
static void plain_text(http_req *r, int idx, const char *text, size_t len)
{
    if (!len) return;
    if (r->responses) resp_text_delta(r, &r->choices[idx], text, len);
    else stream_text(r, idx, text, len);
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
    if (c->ts_mode == 0) buf_append(&c->held, &c->held_len, &c->held_cap, text, len);
    if (tools_stream_feed(&c->ts, text, len, tc_start, tc_args, &x) < 0 && c->ts_mode == 0) {
        c->ts_mode = 2;
        plain_text(r, idx, c->held, c->held_len);
        c->held_len = 0;
    }
}

/* The calls of a finished reply (tools grammar), with ids: from the stream
 * reader when streamed, else parsed now. Returns the count (0: text). */
int reply_calls(http_req *r, int idx, tools_call **calls)
{
    choice_buf *c = &r->choices[idx];
    *calls = NULL;
    if (!r->job.req.grammar_tools) return 0;
    int n = tools_parse_reply(c->text ? c->text : "", c->len, calls);
    if (n <= 0) return 0;
    if (n > TOOLS_MAX_PARALLEL) n = TOOLS_MAX_PARALLEL;
    for (int k = c->n_calls; k < n; k++) {
        tools_call_id(c->call_ids[k], req_seed(r, k));
        resp_new_id(c->item_ids[k], "fc_", req_seed(r, k + 7));
    }
    c->n_calls = n;
    return n;
}

static void sink_started(void *ud)
{
    http_req *r = ud;
    pthread_mutex_lock(&r->mu);
    r->started = 1;
    if (r->job.req.stream && r->responses) {
        resp_stream_start(r);
    } else if (r->job.req.stream && r->job.req.kind == OA_CHAT && !r->job.req.grammar_tools) {
        role_chunk(r, 0, "", 0);
    }
    req_wake(r);
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
            buf_append(&c->text, &c->len, &c->cap, text, len))
            r->lost = 1;
        if (q->stream) {
            if (q->grammar_tools) tool_text(r, idx, text, len);
            else if (r->responses) plain_text(r, idx, text, len);
            else stream_text(r, idx, text, len);
        }
        req_wake(r);
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
            req_push_event(r, c->ts_mode == 1 ? agent_patch_chunk(js, NULL, NULL, 1) : js);
            req_wake(r);
        }
    }
    pthread_mutex_unlock(&r->mu);
}

/* Ends a started stream with an error event (the Responses API's has a
 * shape of its own); caller holds mu. */
void req_push_error(http_req *r, const srv_error *err)
{
    size_t n = 0;
    oa_error e;
    http_error_from_status(&e, err);
    char *ev = r->responses ? resp_error_event(&e, &r->resp_seq) : sse_error_event(&e, &n);
    if (ev && r->responses) n = strlen(ev);
    /* Not even the error event fits: cut the stream (no [DONE]). */
    if (!ev || buf_append(&r->out, &r->out_len, &r->out_cap, ev, n)) r->broken = 1;
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
                req_push_event(r, oa_usage_chunk_json(q->kind, r->id, r->created, q->model, &res->usage));
            if (buf_append(&r->out, &r->out_len, &r->out_cap, SSE_DONE, SSE_DONE_LEN)) r->broken = 1;
        }
    } else if (q->stream && r->started) {
        req_push_error(r, &r->result.err);
    }
    req_wake(r);
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

/* ----- the stream's reader (MHD thread) ----- */

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
            r->out[r->out_len] = 0; /* kept terminated, as buf_append() leaves it */
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

/* ----- the job (MHD thread) ----- */

enum MHD_Result start_completion(http_req *r, oa_kind kind)
{
    oa_error e;
    if (oa_request_parse(kind, r->body ? r->body : "", r->body_len, &r->job.req, &e))
        return http_send_error_obj(r, &e);
    return submit_completion(r, kind);
}

enum MHD_Result submit_completion(http_req *r, oa_kind kind)
{
    http_srv *h = r->srv;
    const srv_config *cfg = h->cfg;
    oa_request *q = &r->job.req;
    if (strcmp(q->model, cfg->model_name))
        return http_send_error(r, 404, "invalid_request_error", "model", "model_not_found",
                               "The model '%s' does not exist; this server serves '%s' (see GET /v1/models).",
                               q->model, cfg->model_name);
    if (q->state && srv_config_init_state(cfg, q->state) < 0) {
        char have[1024] = "";
        size_t o = 0;
        for (int i = 0; i < cfg->n_init_states && o < sizeof have; i++)
            o += (size_t)snprintf(have + o, sizeof have - o, "%s'%s'", i ? ", " : "",
                                  cfg->init_states[i].name);
        return http_send_error(r, 400, "invalid_request_error", "state", "state_not_found",
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
            return http_bad_session_id(r);
        size_t n_out = (kind == OA_CHAT ? 1 : q->n_prompts) * (size_t)q->n;
        if (n_out > 1)
            return http_send_error(r, 400, "invalid_request_error", q->n > 1 ? "n" : "prompt", NULL,
                                   "A request with a session_id continues one conversation: it takes a "
                                   "single prompt and n = 1.");
        snprintf(r->session_id, sizeof r->session_id, "%s", sid);
        r->job.session_id = r->session_id;
    }
    if (!sched_ready(h->s))
        return http_send_error(r, 503, "server_error", NULL, "model_loading", "The model is still loading.");
    const ms_config *mc = ms_model_config(sched_model(h->s));
    for (size_t i = 0; i < q->n_logit_bias; i++)
        if (q->logit_bias[i].token < 0 || q->logit_bias[i].token >= mc->vocab_size)
            return http_send_error(r, 400, "invalid_request_error", "logit_bias", NULL,
                                   "logit_bias: token id %d is outside the vocabulary (0..%d).",
                                   q->logit_bias[i].token, mc->vocab_size - 1);
    for (size_t p = 0; q->prompt_ids && p < q->n_prompts; p++)
        for (size_t i = 0; q->prompt_ids[p] && i < q->prompt_n_ids[p]; i++)
            if (q->prompt_ids[p][i] >= mc->vocab_size)
                return http_send_error(r, 400, "invalid_request_error", "prompt", NULL,
                                       "Invalid 'prompt': token id %d is outside the vocabulary (0..%d).",
                                       q->prompt_ids[p][i], mc->vocab_size - 1);
    if (q->echo && q->stream)
        return http_send_error(r, 400, "invalid_request_error", "echo", NULL,
                               "'echo' is not supported with 'stream' on this server.");
    if (q->echo && q->logprobs && r->job.session_id)
        return http_send_error(r, 400, "invalid_request_error", "echo", NULL,
                               "'echo' with 'logprobs' scores the whole prompt and cannot be used with a "
                               "session.");
    int agentic = q->n_tools > 0;
    for (size_t i = 0; i < q->n_messages; i++)
        agentic |= q->messages[i].tool_calls != NULL || !strcmp(q->messages[i].role, "tool");
    if (kind == OA_CHAT && agentic) {
        r->job.prompt = tools_render(q, &r->job.prompt_len);
        if (!r->job.prompt)
            return http_send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    } else if (kind == OA_CHAT) {
        r->job.prompt = chat_render(q->messages, q->n_messages, &r->job.prompt_len);
        if (!r->job.prompt)
            return http_send_error(r, 400, "invalid_request_error", "messages", NULL,
                                   "The messages could not be rendered (unknown role?).");
    }
    int mt = q->max_tokens;
    if (mt < 0) mt = kind == OA_CHAT ? cfg->default_chat_max_tokens : cfg->default_max_tokens;
    if (mt > cfg->max_tokens_cap) mt = cfg->max_tokens_cap;
    r->job.max_tokens = mt;
    r->n_choices = (int)((kind == OA_CHAT ? 1 : q->n_prompts) * (size_t)q->n);
    r->choices = calloc((size_t)r->n_choices, sizeof *r->choices);
    if (!r->choices) return http_send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    http_rand_id(r->id, sizeof r->id, kind == OA_CHAT ? "chatcmpl-" : "cmpl-");
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
        return http_send_status(r, &why);
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
                    if (b) buf_append(&pre, &pre_len, &pre_cap, b, bl);
                }
            } else {
                buf_append(&pre, &pre_len, &pre_cap, q->prompts[p], strlen(q->prompts[p]));
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
enum MHD_Result continue_completion(http_req *r)
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
        http_common_headers(r, resp);
        r->status = 200;
        enum MHD_Result ok = MHD_queue_response(r->conn, 200, resp);
        MHD_destroy_response(resp);
        return ok;
    }
    if (res.err.code != SRV_OK) return http_send_status(r, &res.err);
    if (r->responses) return resp_reply(r, &res);
    oa_choice *ch = calloc((size_t)r->n_choices, sizeof *ch);
    if (!ch) return http_send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    for (int i = 0; i < r->n_choices; i++)
        ch[i] = (oa_choice){r->choices[i].text ? r->choices[i].text : "", r->choices[i].len,
                            r->choices[i].finish};
    char *extra = session_extra(r);
    char *json = oa_response_json(q->kind, r->id, r->created, q->model, ch, (size_t)r->n_choices,
                                  &res.usage, extra);
    free(extra);
    free(ch);
    if (q->logprobs || q->grammar_tools || q->echo) json = patch_agent(r, json);
    return http_send_json(r, 200, json);
}
