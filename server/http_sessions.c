/*
 * http_sessions.c - requests that touch the session store or files (the
 * session list, a session's info, delete, export and import, and stored
 * responses' load, save, retrieve and delete): each runs on the scheduler's
 * work queue, never on the polling thread, which serves every connection;
 * the connection waits suspended and is answered on resume.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "http_req.h"
#include "store.h"

static enum MHD_Result session_404(http_req *r)
{
    return http_send_error(r, 404, "invalid_request_error", "session_id", "session_not_found",
                           "No session '%s'.", r->path_id);
}

static enum MHD_Result session_409(http_req *r)
{
    return http_send_error(r, 409, "invalid_request_error", "session_id", "session_busy",
                           "Session '%s' is in use by a running request; retry when it is done.", r->path_id);
}

enum MHD_Result http_store_503(http_req *r)
{
    return http_send_error(r, 503, "server_error", NULL, "store_unavailable",
                           "The session store is unavailable; retry shortly.");
}

/* Worker thread: the store or file work of r's operation. r is referenced
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
        op->rc = sstore_response_delete(p, r->path_id, op->err, sizeof op->err);
    } else if (op->kind == OP_LIST) {
        op->buf = sstore_list_json(p, &op->rc);
    } else if (op->kind == OP_INFO) {
        op->buf = sstore_info_json(p, r->path_id, &op->rc);
    } else if (op->kind == OP_DELETE) {
        op->rc = sstore_delete(p, r->path_id, op->err, sizeof op->err);
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
    req_wake(r);
    pthread_mutex_unlock(&r->mu);
    req_unref(r); /* the work queue's reference */
}

enum MHD_Result start_sess_op(http_req *r, sess_op_kind kind)
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
        return http_send_status(r, &why);
    }
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    return MHD_YES;
}

/* Called when the connection is resumed: answer with the operation's result. */
enum MHD_Result finish_sess_op(http_req *r)
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
    if (op->rc == SSTORE_DOWN) return http_store_503(r);
    if (op->rc == SSTORE_UNKNOWN) return session_404(r);
    if (op->rc == SSTORE_BUSY) return session_409(r);
    if (op->rc == OP_FAILED) return http_send_error(r, 500, "server_error", NULL, NULL, "%s", op->err);
    if (op->kind == OP_LIST || op->kind == OP_INFO) {
        char *t = op->buf;
        op->buf = NULL;
        return http_send_json(r, 200, t);
    }
    if (op->kind == OP_DELETE && op->rc != SSTORE_OK) {
        fprintf(stderr, "metastate serve: %s\n", op->err); /* names server files: the log's */
        return http_send_error(r, 500, "server_error", NULL, NULL,
                               "Session '%s' could not be deleted (the server log says why); it "
                               "is still there.", r->path_id);
    }
    if (op->kind == OP_DELETE)
        return http_send_json(r, 200, oa_deleted_json(r->path_id, "session.deleted"));
    if (op->kind == OP_EXPORT) {
        if (op->rc != SSTORE_OK)
            return http_send_error(r, 500, "server_error", NULL, NULL, "export failed: %s", op->err);
        char disp[256];
        snprintf(disp, sizeof disp, "attachment; filename=\"%s.safetensors\"", r->path_id);
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(op->len, op->buf, MHD_RESPMEM_MUST_FREE);
        if (!resp) return MHD_NO;
        op->buf = NULL; /* the response owns it now */
        MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
        MHD_add_response_header(resp, "Content-Disposition", disp);
        http_common_headers(r, resp);
        r->status = 200;
        enum MHD_Result ok = MHD_queue_response(r->conn, 200, resp);
        MHD_destroy_response(resp);
        return ok;
    }
    if (op->rc == SSTORE_FULL) {
        srv_error why = {SRV_ERR_SESSIONS_FULL, ""};
        snprintf(why.msg, sizeof why.msg, "%.*s", (int)sizeof why.msg - 1, op->err);
        return http_send_status(r, &why);
    }
    if (op->rc == SSTORE_FAILED)
        return http_send_error(r, 500, "server_error", NULL, NULL,
                               "Session '%s' could not be imported (%s); it is as it was.", r->path_id,
                               op->err);
    if (op->rc != SSTORE_OK)
        return http_send_error(r, 400, "invalid_request_error", "state", "invalid_state", "%s", op->err);
    char *t = op->buf;
    op->buf = NULL;
    return t ? http_send_json(r, 200, t) : op->info_rc == SSTORE_DOWN ? http_store_503(r) : session_404(r);
}

enum MHD_Result do_sessions(http_req *r, const char *method)
{
    enum MHD_Result out;
    if (!http_need_ready(r, &out)) return out;
    if (r->route == R_SESSIONS) return start_sess_op(r, OP_LIST);
    if (r->route == R_SESSION) return start_sess_op(r, !strcmp(method, "GET") ? OP_INFO : OP_DELETE);
    return start_sess_op(r, !strcmp(method, "GET") ? OP_EXPORT : OP_IMPORT);
}
