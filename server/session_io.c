/*
 * session_io.c - spill, write-behind and load of sessions on libuv's
 * worker pool. The blocking parts are pool_*_io; the pool's bookkeeping
 * (pool_*_done) runs back on the loop thread.
 */
#include "session_io.h"

#include <stdio.h>
#include <stdlib.h>

struct sess_io {
    uv_loop_t *loop;
    sess_pool *pool;
    void (*wake)(void *ud);
    void *ud;
    int pending;
};

typedef enum { IO_SPILL, IO_PERSIST, IO_LOAD, IO_CALL } io_kind;

typedef struct io_work {
    uv_work_t w;
    sess_io *io;
    io_kind kind;
    session *se;
    sio_loaded_fn done; /* load only */
    void (*work)(void *arg), (*after)(void *arg); /* call only */
    void *arg;
    int rc;             /* pool_spill_io result */
    srv_status load;    /* pool_load_io result */
    char err[512];
} io_work;

sess_io *sio_new(uv_loop_t *loop, sess_pool *pool, void (*wake)(void *ud), void *ud)
{
    sess_io *io = calloc(1, sizeof *io);
    if (!io) return NULL;
    io->loop = loop;
    io->pool = pool;
    io->wake = wake;
    io->ud = ud;
    return io;
}

void sio_free(sess_io *io) { free(io); }

int sio_pending(const sess_io *io) { return io ? io->pending : 0; }

static void work_cb(uv_work_t *w)
{
    io_work *x = w->data;
    if (x->kind == IO_CALL) x->work(x->arg);
    else if (x->kind == IO_LOAD) x->load = pool_load_io(x->io->pool, x->se, x->err, sizeof x->err);
    else x->rc = pool_spill_io(x->io->pool, x->se, x->err, sizeof x->err);
}

static void after_cb(uv_work_t *w, int status)
{
    io_work *x = w->data;
    sess_io *io = x->io;
    io->pending--;
    switch (x->kind) {
    case IO_CALL:
        x->after(x->arg);
        break;
    case IO_SPILL:
        if (x->rc)
            fprintf(stderr, "metastate serve: spilling session %s failed: %s\n", x->se->id, x->err);
        pool_spill_done(io->pool, x->se, x->rc == 0);
        break;
    case IO_PERSIST:
        if (x->rc)
            fprintf(stderr, "metastate serve: saving session %s failed: %s\n", x->se->id, x->err);
        pool_persist_done(io->pool, x->se, x->rc == 0);
        break;
    case IO_LOAD: {
        pool_load_done(io->pool, x->se, x->load);
        srv_error e = {SRV_OK, ""};
        if (x->load == SRV_ERR_REJECTED)
            fprintf(stderr, "metastate serve: session %s: state file rejected, the session "
                            "restarts from the zero state: %s\n", x->se->id, x->err);
        if (x->load != SRV_OK)
            srv_fail(&e, x->load, "%s", x->err);
        else if (!x->se->state)
            srv_fail(&e, SRV_ERR_NOMEM, "out of memory loading the session");
        x->done(x->arg, x->se, &e);
        break;
    }
    }
    free(x);
    io->wake(io->ud);
}

/* Queues one piece of work; -1 (nothing queued) when that fails. */
static int queue(sess_io *io, io_kind kind, session *se, sio_loaded_fn done, void *arg)
{
    io_work *x = calloc(1, sizeof *x);
    if (!x) return -1;
    x->io = io;
    x->kind = kind;
    x->se = se;
    x->done = done;
    x->arg = arg;
    x->w.data = x;
    if (uv_queue_work(io->loop, &x->w, work_cb, after_cb)) {
        free(x);
        return -1;
    }
    io->pending++;
    return 0;
}

void sio_kick(sess_io *io)
{
    session *se;
    while ((se = pool_next_persist(io->pool)))
        if (queue(io, IO_PERSIST, se, NULL, NULL)) {
            pool_persist_done(io->pool, se, 0);
            break;
        }
    while ((se = pool_next_spill(io->pool)))
        if (queue(io, IO_SPILL, se, NULL, NULL)) { /* keep it in memory; retried on the next kick */
            pool_spill_done(io->pool, se, 0);
            return;
        }
}

srv_status sio_call(sess_io *io, void (*work)(void *arg), void (*after)(void *arg), void *arg,
                    srv_error *err)
{
    io_work *x = calloc(1, sizeof *x);
    if (!x) return srv_fail(err, SRV_ERR_NOMEM, "out of memory queueing store work");
    x->io = io;
    x->kind = IO_CALL;
    x->work = work;
    x->after = after;
    x->arg = arg;
    x->w.data = x;
    if (uv_queue_work(io->loop, &x->w, work_cb, after_cb)) {
        free(x);
        return srv_fail(err, SRV_ERR_UNAVAILABLE, "cannot queue store work");
    }
    io->pending++;
    return SRV_OK;
}

srv_status sio_load(sess_io *io, session *se, sio_loaded_fn done, void *arg, srv_error *err)
{
    if (queue(io, IO_LOAD, se, done, arg))
        return srv_fail(err, SRV_ERR_UNAVAILABLE, "out of memory queueing the session load");
    return SRV_OK;
}
