/*
 * http.c - libmicrohttpd glue: the daemon, routing, API-key auth, CORS,
 * bodies and their limits, the plain routes (health, metrics, models), and
 * the helpers that answer a request. Completions, the Responses API and the
 * session routes are in http_completion.c, http_responses.c and
 * http_sessions.c; http_req.h says how a request lives and waits.
 */
#include "http.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http_req.h"
#include "metrics.h"
#include "store.h"
#include "web_ui.h"

static const char *route_label[] = {
    "unknown", "/health", "/metrics", "/v1/models", "/v1/models/{id}", "/v1/completions",
    "/v1/chat/completions", "/v1/sessions", "/v1/sessions/{id}", "/v1/sessions/{id}/state",
    "OPTIONS", "ui", "/v1/responses", "/v1/responses/{id}",
    "/v1/responses/{id}/input_items", "/v1/responses/{id}/cancel"};


void req_unref(http_req *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1) return;
    atomic_fetch_sub(&r->srv->in_flight, 1);
    oa_request_free(&r->job.req);
    free(r->job.prompt);
    json_decref(r->resp_req);
    json_decref(r->resp_hist);
    json_decref(r->resp_input);
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

int buf_append(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
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

void http_rand_id(char *out, size_t cap, const char *prefix)
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

void http_common_headers(http_req *r, struct MHD_Response *resp)
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
    http_common_headers(r, resp);
    if (status == 429) MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 503) MHD_add_response_header(resp, "Retry-After", "5");
    if (status == 405 && r->allow) MHD_add_response_header(resp, "Allow", r->allow);
    if (atomic_load(&r->srv->draining)) MHD_add_response_header(resp, "Connection", "close");
    r->status = status;
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

enum MHD_Result http_send_json(http_req *r, int status, char *json)
{
    /* A body that could not be made (out of memory): still an error clients parse. */
    static char oom[] = "{\"error\":{\"message\":\"Out of memory.\",\"type\":\"server_error\","
                        "\"param\":null,\"code\":null}}";
    if (!json) return send_buf(r, 500, "application/json", oom, sizeof oom - 1, 0);
    return send_buf(r, status, "application/json", json, strlen(json), 1);
}

enum MHD_Result http_send_error_obj(http_req *r, const oa_error *e)
{
    return http_send_json(r, e->status, oa_error_json(e));
}

/* The one place where a server status becomes an HTTP status, an OpenAI
 * error type and code; the message is err's (or the status's own name). */
void http_error_from_status(oa_error *e, const srv_error *err)
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

enum MHD_Result http_send_status(http_req *r, const srv_error *err)
{
    oa_error e;
    http_error_from_status(&e, err);
    return http_send_error_obj(r, &e);
}

enum MHD_Result http_send_error(http_req *r, int status, const char *type, const char *param,
                                       const char *code, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    oa_error e;
    oa_error_set(&e, status, type, param, code, "%s", msg);
    return http_send_error_obj(r, &e);
}

/* Every way an id enters ends here when oa_session_id_valid says no. */
enum MHD_Result http_bad_session_id(http_req *r)
{
    return http_send_error(r, 400, "invalid_request_error", "session_id", "invalid_session_id",
                           "Invalid session id: expected 1 to %d characters from [A-Za-z0-9._:-], "
                           "not '.' or '..'.", OA_SESSION_ID_MAX);
}

/* ----- plain routes ----- */

static enum MHD_Result do_health(http_req *r)
{
    if (atomic_load(&r->srv->draining))
        return http_send_json(r, 503, strdup("{\"status\":\"shutting_down\"}"));
    if (!sched_ready(r->srv->s)) return http_send_json(r, 503, strdup("{\"status\":\"loading\"}"));
    /* A store that is down does not make the replica unhealthy: requests
     * without a session are still served; the body says so. */
    sstore *st = sched_store(r->srv->s);
    char body[128];
    snprintf(body, sizeof body, "{\"status\":\"ok\",\"store\":\"%s\",\"store_kind\":\"%s\"}",
             sstore_up(st) ? "ok" : "unavailable", sstore_kind(st));
    return http_send_json(r, 200, strdup(body));
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
    return http_send_json(r, 200, oa_models_json(names, 1, r->srv->started_at, "metastate", states, ns));
}

static enum MHD_Result do_model(http_req *r)
{
    if (strcmp(r->path_id, r->srv->cfg->model_name))
        return http_send_error(r, 404, "invalid_request_error", "model", "model_not_found",
                               "The model '%s' does not exist.", r->path_id);
    const char *states[SRV_MAX_INIT_STATES];
    size_t ns = state_names(r->srv->cfg, states);
    return http_send_json(r, 200, oa_model_json(r->srv->cfg->model_name, r->srv->started_at, "metastate",
                                                states, ns));
}

int http_need_ready(http_req *r, enum MHD_Result *out)
{
    if (sched_ready(r->srv->s)) return 1;
    *out = http_send_error(r, 503, "server_error", NULL, "model_loading", "The model is still loading.");
    return 0;
}

/* ----- routing, auth, CORS ----- */

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
    if (!strncmp(url, "/v1/responses/", 14) && url[14]) {
        const char *p = url + 14, *slash = strchr(p, '/');
        if (!slash) {
            snprintf(id, idcap, "%s", p);
            return *allow = "GET, DELETE", R_RESPONSE;
        }
        const int items = !strcmp(slash, "/input_items"), cancel = !strcmp(slash, "/cancel");
        if ((items || cancel) && (size_t)(slash - p) < idcap) {
            memcpy(id, p, (size_t)(slash - p));
            id[slash - p] = 0;
            return items ? (*allow = "GET", R_RESPONSE_ITEMS) : (*allow = "POST", R_RESPONSE_CANCEL);
        }
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
        http_common_headers(r, resp);
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

/* ----- the request handler ----- */

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
        else http_rand_id(r->request_id, sizeof r->request_id, "req_");
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
            return http_send_error(r, 401, "authentication_error", NULL, "invalid_api_key",
                                   "Missing or invalid API key: send 'Authorization: Bearer <key>'.");
        if (r->route == R_NONE)
            return http_send_error(r, 404, "invalid_request_error", NULL, "not_found",
                                   "Unknown route %s %s.", method, url);
        if (!method_allowed(allow, method)) {
            enum MHD_Result ok = http_send_error(r, 405, "invalid_request_error", NULL, "method_not_allowed",
                                                 "Method %s is not allowed on %s (allowed: %s).", method, url, allow);
            return ok;
        }
        if ((r->route == R_SESSION || r->route == R_SESSION_STATE) &&
            !oa_session_id_valid(r->path_id, strlen(r->path_id)))
            return http_bad_session_id(r);
        if (atomic_load(&h->draining) && r->route != R_HEALTH && r->route != R_METRICS)
            return http_send_error(r, 503, "server_error", NULL, "shutting_down", "The server is shutting down.");
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > r->body_limit)
            return http_send_error(r, 413, "invalid_request_error", NULL, "request_too_large",
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
            } else if (buf_append(&r->body, &r->body_len, &r->body_cap, upload_data, *upload_data_size)) {
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
        return http_send_error(r, 413, "invalid_request_error", NULL, "request_too_large",
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
    case R_RESPONSE:
    case R_RESPONSE_ITEMS:
    case R_RESPONSE_CANCEL: return do_response(r, method);
    case R_SESSIONS:
    case R_SESSION:
    case R_SESSION_STATE: return do_sessions(r, method);
    default: return http_send_error(r, 404, "invalid_request_error", NULL, "not_found", "Unknown route.");
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

/* ----- server lifetime ----- */

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
