/*
 * http_responses.c - the Responses API (/v1/responses) over the chat
 * machinery: a request becomes a chat job (proto/responses.c), its output
 * becomes the Responses events and reply, and each response is stored
 * (store.h: memory, files or Redis) for previous_response_id and GET/DELETE
 * /v1/responses/{id}. A response is answered, or its stream closed, only
 * once its record is stored.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_req.h"
#include "responses.h"
#include "store.h"

static void resp_open_text(http_req *r)
{
    if (r->resp_text_open) return;
    r->resp_text_open = 1;
    json_t *item = json_pack("{s:s,s:s,s:s,s:s,s:[]}", "type", "message", "id", r->msg_id, "status",
                             "in_progress", "role", "assistant", "content");
    req_push_raw(r, resp_event("response.output_item.added",
                                 json_pack("{s:i,s:o}", "output_index", 0, "item", item), &r->resp_seq));
    req_push_raw(r, resp_event("response.content_part.added",
                                 json_pack("{s:s,s:i,s:i,s:{s:s,s:s,s:[],s:[]}}", "item_id", r->msg_id,
                                           "output_index", 0, "content_index", 0, "part", "type",
                                           "output_text", "text", "", "annotations", "logprobs"),
                                 &r->resp_seq));
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

/* 1 unless the request said store: false. */
static int resp_stored(const http_req *r)
{
    return !json_is_false(json_object_get(r->resp_req, "store"));
}

/* The record to store for the response object o (see store.h): o, the
 * conversation it ended and its session, for previous_response_id and GET
 * /v1/responses/{id}. NULL when out of memory (the reply is then an error:
 * a response nobody can find must not look stored). */
static json_t *resp_record(http_req *r, const resp_result *rr, json_t *o)
{
    json_t *m = json_deep_copy(r->resp_hist);
    if (m) json_array_append_new(m, resp_reply_message(rr));
    return m ? json_pack("{s:s,s:O,s:o,s:O}", "session", r->session_id, "response", o, "messages", m,
                         "input", r->resp_input)
             : NULL;
}

/* Worker thread: stores a streamed response's record (r is referenced). */
static void stream_save_work(void *arg)
{
    http_req *r = arg;
    r->op.rc = sstore_response_put(sched_store(r->srv->s), r->resp_id, r->op.rec, r->op.err,
                                   sizeof r->op.err);
}

/* A stream's closing event `last` (numbered, or NULL) is not sent: the
 * error takes its place and its number. A client told "completed" would
 * continue from a response no replica can find. */
static void end_unstored(http_req *r, char *last, srv_status why)
{
    if (last) r->resp_seq--;
    free(last);
    srv_error e;
    srv_fail(&e, why, "The response could not be stored (the server log says why); it cannot be "
                      "continued or retrieved.");
    req_push_error(r, &e);
}

/* Scheduler thread: the stream ends with its closing event once the record
 * is stored, else with an error instead. */
static void stream_save_done(void *arg)
{
    http_req *r = arg;
    pthread_mutex_lock(&r->mu);
    if (r->op.rc == SSTORE_OK) {
        req_push_raw(r, r->resp_final);
    } else {
        fprintf(stderr, "metastate serve: response %s not stored: %s\n", r->resp_id, r->op.err);
        end_unstored(r, r->resp_final,
                     r->op.rc == SSTORE_DOWN ? SRV_ERR_STORE_UNAVAILABLE : SRV_ERR_NOMEM);
    }
    r->resp_final = NULL;
    r->saving = 0;
    req_wake(r);
    pthread_mutex_unlock(&r->mu);
    req_unref(r); /* the work queue's reference */
}

/* The closing events of a streamed Responses API reply. */
void resp_stream_done(http_req *r, const sched_result *res)
{
    choice_buf *c = &r->choices[0];
    tools_call *calls = NULL;
    int n = reply_calls(r, 0, &calls);
    const char *status = c->finish == OA_FINISH_LENGTH && !n ? "incomplete" : "completed";
    resp_result rr;
    resp_fill(r, &rr, status, calls, n, res);
    if (n) {
        for (int k = 0; k < n; k++) {
            req_push_raw(r, resp_event("response.function_call_arguments.done",
                                         json_pack("{s:s,s:i,s:s}", "item_id", c->item_ids[k],
                                                   "output_index", k, "arguments", calls[k].arguments),
                                         &r->resp_seq));
            json_t *out = resp_object(r->resp_req, &rr);
            req_push_raw(r, resp_event("response.output_item.done",
                                         json_pack("{s:i,s:O}", "output_index", k, "item",
                                                   json_array_get(json_object_get(out, "output"), (size_t)k)),
                                         &r->resp_seq));
            json_decref(out);
        }
    } else {
        resp_open_text(r);
        json_t *t = json_stringn(rr.text, rr.text_len);
        if (!t) t = json_string("");
        req_push_raw(r, resp_event("response.output_text.done",
                                     json_pack("{s:s,s:i,s:i,s:O,s:o}", "item_id", r->msg_id,
                                               "output_index", 0, "content_index", 0, "text", t,
                                               "logprobs", resp_logprobs(&rr, 0, rr.n_lp)),
                                     &r->resp_seq));
        req_push_raw(r, resp_event("response.content_part.done",
                                     json_pack("{s:s,s:i,s:i,s:{s:s,s:O,s:[],s:o}}", "item_id",
                                               r->msg_id, "output_index", 0, "content_index", 0, "part",
                                               "type", "output_text", "text", t, "annotations",
                                               "logprobs", resp_logprobs(&rr, 0, rr.n_lp)),
                                     &r->resp_seq));
        json_t *out = resp_object(r->resp_req, &rr);
        req_push_raw(r, resp_event("response.output_item.done",
                                     json_pack("{s:i,s:O}", "output_index", 0, "item",
                                               json_array_get(json_object_get(out, "output"), 0)),
                                     &r->resp_seq));
        json_decref(out);
        json_decref(t);
    }
    json_t *fin = resp_object(r->resp_req, &rr);
    char *last = resp_event(!strcmp(status, "completed") ? "response.completed" : "response.incomplete",
                            json_pack("{s:O}", "response", fin), &r->resp_seq);
    const int store = resp_stored(r);
    r->op.rec = store ? resp_record(r, &rr, fin) : NULL;
    json_decref(fin);
    tools_calls_free(calls, n);
    if (!store) {
        req_push_raw(r, last);
        return;
    }
    if (!r->op.rec || !last) {
        fprintf(stderr, "metastate serve: response %s not stored: out of memory\n", r->resp_id);
        end_unstored(r, last, SRV_ERR_NOMEM);
        return;
    }
    r->resp_final = last;
    r->saving = 1;
    atomic_fetch_add(&r->refs, 1); /* the work queue's reference */
    if (sched_run_io(r->srv->s, stream_save_work, stream_save_done, r) == SRV_OK) return;
    atomic_fetch_sub(&r->refs, 1);
    r->resp_final = NULL;
    r->saving = 0;
    end_unstored(r, last, SRV_ERR_SHUTTING_DOWN);
}

static enum MHD_Result previous_404(http_req *r)
{
    return http_send_error(r, 404, "invalid_request_error", "previous_response_id",
                           "previous_response_not_found", "Previous response with id '%.80s' not found.",
                           json_string_value(json_object_get(r->resp_req, "previous_response_id")));
}

static enum MHD_Result submit_responses(http_req *r, json_t *prev);

/* POST /v1/responses: translated to a chat request (proto/responses.c); a
 * previous_response_id continues that response's conversation on its
 * session, so only the new input is fed. Its record is read from the store
 * first (OP_RESP_LOAD, then submit_responses). */
enum MHD_Result start_responses(http_req *r)
{
    json_error_t je;
    json_t *req = json_loadb(r->body ? r->body : "", r->body_len, 0, &je);
    if (!req || !json_is_object(req)) {
        json_decref(req);
        return http_send_error(r, 400, "invalid_request_error", NULL, NULL,
                               "We could not parse the JSON body of your request: %s.", je.text);
    }
    r->resp_req = req;
    json_t *pid = json_object_get(req, "previous_response_id");
    if (!json_is_string(pid)) return submit_responses(r, NULL);
    if (json_string_length(pid) >= sizeof r->path_id || !json_string_length(pid))
        return previous_404(r);
    snprintf(r->path_id, sizeof r->path_id, "%s", json_string_value(pid));
    enum MHD_Result out;
    if (!http_need_ready(r, &out)) return out;
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
    if (!chat) return http_send_error_obj(r, &e);
    char *body = json_dumps(chat, JSON_COMPACT);
    json_decref(chat);
    if (!body) return http_send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    int rc = oa_request_parse(OA_CHAT, body, strlen(body), &r->job.req, &e);
    free(body);
    if (rc) return http_send_error_obj(r, &e);
    json_t *st = json_object_get(r->resp_req, "stream");
    r->job.req.stream = json_is_true(st);
    r->responses = 1;
    http_rand_id(r->resp_id, sizeof r->resp_id, "resp_");
    http_rand_id(r->msg_id, sizeof r->msg_id, "msg_");
    r->resp_input = resp_input_items(json_object_get(r->resp_req, "input"), req_seed(r, 0));
    if (!r->resp_input) return http_send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    /* the conversation's session: the chain's, or this response's own */
    if (!r->job.req.session_id) {
        r->job.req.session_id = strdup(chain && chain[0] ? chain : r->resp_id);
        if (!r->job.req.session_id) return http_send_error(r, 500, "server_error", NULL, NULL, "out of memory");
    }
    return submit_completion(r, OA_CHAT);
}

static const char *item_arg(http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* GET /v1/responses/{id}: the stored response as it ended; DELETE forgets it
 * (and so previous_response_id to it). Replaying a stream is not offered.
 * GET /v1/responses/{id}/input_items: a page of its input items. POST
 * /v1/responses/{id}/cancel: a 400 for a response that exists (none runs in
 * the background), else a 404. */
enum MHD_Result do_response(http_req *r, const char *method)
{
    enum MHD_Result out;
    if (!http_need_ready(r, &out)) return out;
    if (r->route == R_RESPONSE_ITEMS) {
        /* no includable field applies to text input items */
        if (item_arg(r, "include") || item_arg(r, "include[]"))
            return http_send_error(r, 400, "invalid_request_error", "include", "unsupported_value",
                                   "Unsupported value: 'include' has nothing to add to text input "
                                   "items with this server.");
        oa_error e;
        json_t *probe = resp_items_page(NULL, item_arg(r, "limit"), item_arg(r, "order"), NULL, NULL, &e);
        if (!probe) return http_send_error_obj(r, &e); /* limit and order, before the store is asked */
        json_decref(probe);
        return start_sess_op(r, OP_RESP_GET);
    }
    if (r->route == R_RESPONSE_CANCEL) return start_sess_op(r, OP_RESP_GET); /* a 400 if it exists */
    if (!strcmp(method, "GET")) {
        const char *st = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "stream");
        if (st && strcmp(st, "false"))
            return http_send_error(r, 400, "invalid_request_error", "stream", "unsupported_parameter",
                                   "Unsupported parameter: 'stream' is not supported with this server "
                                   "when retrieving a response: retrieve it whole.");
        return start_sess_op(r, OP_RESP_GET);
    }
    return start_sess_op(r, OP_RESP_DELETE);
}

/* The page of rec's input items that the query asks for. */
static enum MHD_Result send_items(http_req *r, json_t *rec)
{
    json_t *items = json_object_get(rec, "input");
    if (!json_is_array(items)) /* stored before input items were kept */
        return http_send_error(r, 404, "invalid_request_error", NULL, "not_found",
                               "The input items of response '%.80s' were not kept (it was stored by "
                               "an earlier version of the server).", r->path_id);
    oa_error e;
    json_t *page = resp_items_page(items, item_arg(r, "limit"), item_arg(r, "order"),
                                   item_arg(r, "after"), item_arg(r, "before"), &e);
    if (!page) return http_send_error_obj(r, &e);
    char *t = json_dumps(page, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(page);
    return http_send_json(r, 200, t);
}

/* finish_sess_op for a stored response's operation. */
enum MHD_Result finish_resp_op(http_req *r)
{
    sess_op *op = &r->op;
    sess_op_kind kind = op->kind;
    op->kind = OP_NONE; /* a load goes on to submit the job: later wake-ups are the job's */
    if (kind == OP_RESP_SAVE && op->rc != SSTORE_OK) { /* logged as a stream's (stream_save_done) */
        fprintf(stderr, "metastate serve: response %s not stored: %s\n", r->resp_id, op->err);
        return op->rc == SSTORE_DOWN ? http_store_503(r)
             : http_send_error(r, 500, "server_error", NULL, NULL,
                               "The response could not be stored (the server log says why).");
    }
    if (op->rc == SSTORE_DOWN) return http_store_503(r);
    if (op->rc != SSTORE_OK && op->rc != SSTORE_UNKNOWN) {
        /* the details name server files or store keys: for the log only */
        fprintf(stderr, "metastate serve: response %s: %s\n", r->path_id, op->err);
        return http_send_error(r, 500, "server_error", NULL, NULL,
                               "The stored response '%.80s' could not be %s (the server log says why).",
                               r->path_id, kind == OP_RESP_DELETE ? "deleted" : "read");
    }
    if (kind == OP_RESP_SAVE) {
        char *t = op->buf;
        op->buf = NULL;
        return http_send_json(r, 200, t);
    }
    if (op->rc == SSTORE_UNKNOWN)
        return kind == OP_RESP_LOAD ? previous_404(r)
             : http_send_error(r, 404, "invalid_request_error", NULL, "not_found",
                               "Response with id '%.80s' not found.", r->path_id);
    if (kind == OP_RESP_DELETE) return http_send_json(r, 200, oa_deleted_json(r->path_id, "response.deleted"));
    json_t *rec = op->rec;
    op->rec = NULL;
    enum MHD_Result out;
    if (kind == OP_RESP_LOAD)
        out = submit_responses(r, rec);
    else if (r->route == R_RESPONSE_ITEMS)
        out = send_items(r, rec);
    else if (r->route == R_RESPONSE_CANCEL)
        out = http_send_error(r, 400, "invalid_request_error", NULL, NULL,
                              "Only background responses can be cancelled, and this server runs none "
                              "(background: true is a 400): response '%.80s' has already ended.",
                              r->path_id);
    else
        out = http_send_json(r, 200, json_dumps(json_object_get(rec, "response"),
                                                JSON_COMPACT | JSON_PRESERVE_ORDER));
    json_decref(rec);
    return out;
}

/* A streamed call's item is opened (its name is complete); caller holds mu. */
void resp_call_added(http_req *r, choice_buf *c, int index, const char *name)
{
    json_t *item = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "type", "function_call", "id",
                             c->item_ids[index], "call_id", c->call_ids[index], "name", name,
                             "arguments", "", "status", "in_progress");
    req_push_raw(r, resp_event("response.output_item.added",
                               json_pack("{s:i,s:o}", "output_index", index, "item", item), &r->resp_seq));
}

/* A streamed call's arguments grew by a (a reference is taken); caller holds mu. */
void resp_call_args(http_req *r, choice_buf *c, int index, json_t *a)
{
    req_push_raw(r, resp_event("response.function_call_arguments.delta",
                               json_pack("{s:s,s:i,s:o}", "item_id", c->item_ids[index], "output_index",
                                         index, "delta", a),
                               &r->resp_seq));
}

/* Streamed reply text (with the log probabilities not yet sent); caller holds mu. */
void resp_text_delta(http_req *r, choice_buf *c, const char *text, size_t len)
{
    resp_open_text(r);
    json_t *d = json_stringn(text, len);
    const resp_result lr = {.lp = r->job.req.logprobs ? c->lp : NULL, .n_lp = c->n_lp,
                            .tok = sched_tokenizer(r->srv->s)};
    req_push_raw(r, resp_event("response.output_text.delta",
                               json_pack("{s:s,s:i,s:i,s:o,s:o}", "item_id", r->msg_id, "output_index",
                                         0, "content_index", 0, "delta", d ? d : json_string(""),
                                         "logprobs", resp_logprobs(&lr, c->lp_sent, c->n_lp)),
                               &r->resp_seq));
    c->lp_sent = c->n_lp;
}

/* The opening events of a streamed reply; caller holds mu. */
void resp_stream_start(http_req *r)
{
    resp_result rr;
    resp_fill(r, &rr, "in_progress", NULL, 0, NULL);
    rr.text = NULL;
    req_push_raw(r, resp_event("response.created",
                               json_pack("{s:o}", "response", resp_object(r->resp_req, &rr)),
                               &r->resp_seq));
    req_push_raw(r, resp_event("response.in_progress",
                               json_pack("{s:o}", "response", resp_object(r->resp_req, &rr)),
                               &r->resp_seq));
}

/* The whole reply of a finished job (res): answered once its record is
 * stored, so the next turn finds it on any replica (MHD thread). */
enum MHD_Result resp_reply(http_req *r, const sched_result *res)
{
    tools_call *calls = NULL;
    int n = reply_calls(r, 0, &calls);
    resp_result rr;
    resp_fill(r, &rr, r->choices[0].finish == OA_FINISH_LENGTH && !n ? "incomplete" : "completed",
              calls, n, res);
    json_t *o = resp_object(r->resp_req, &rr);
    const int store = resp_stored(r);
    json_t *rec = store ? resp_record(r, &rr, o) : NULL;
    tools_calls_free(calls, n);
    char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!t || (store && !rec)) {
        const char *what = t ? "stored" : "sent";
        free(t);
        json_decref(rec);
        return http_send_error(r, 500, "server_error", NULL, NULL,
                               "Out of memory: the response could not be %s.", what);
    }
    if (!store) return http_send_json(r, 200, t);
    r->op.buf = t;
    r->op.rec = rec;
    return start_sess_op(r, OP_RESP_SAVE);
}
