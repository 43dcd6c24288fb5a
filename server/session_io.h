/*
 * session_io.h - the session pool's disk I/O, run on libuv's worker pool so
 * the thread that steps the model never waits for a file: write-behind of
 * sessions changed since their file was written, spilling the sessions that
 * exceed the memory budget, and loading a leased session whose state is on
 * disk. Each piece of work holds the session's lease while it runs.
 *
 * Every function is called on the loop's thread, and every callback runs
 * there. After each completed piece of work `wake` is called: a job may have
 * waited for that session.
 */
#ifndef METASTATE_SERVER_SESSION_IO_H
#define METASTATE_SERVER_SESSION_IO_H

#include <uv.h>

#include "sessions.h"
#include "status.h"

typedef struct sess_io sess_io;

/* err->code: SRV_OK (state in memory); SRV_ERR_REJECTED (the file was set
 * aside and the session restarted empty: serve it, with a warning); another
 * code: the session cannot be served now (err->msg says why). */
typedef void (*sio_loaded_fn)(void *arg, session *se, const srv_error *err);

/* loop and pool must outlive the returned object. NULL on OOM. */
sess_io *sio_new(uv_loop_t *loop, sess_pool *pool, void (*wake)(void *ud), void *ud);
/* Only once sio_pending is 0. Accepts NULL. */
void sio_free(sess_io *io);
/* Queues write-behind for every changed session, then spills what exceeds
 * the budget. Cheap when there is nothing to do; call after any release. */
void sio_kick(sess_io *io);
/* Reads leased session se from its file; done(arg, se, err) follows on the
 * loop thread. SRV_OK when queued; else done is never called. */
srv_status sio_load(sess_io *io, session *se, sio_loaded_fn done, void *arg, srv_error *err);
/* Runs work(arg) on a worker thread, then after(arg) on the loop thread
 * (then wake). For other blocking calls whose completion must hold the
 * loop open (the shared session store's leases and saves). SRV_OK when
 * queued; else neither runs. */
srv_status sio_call(sess_io *io, void (*work)(void *arg), void (*after)(void *arg), void *arg,
                    srv_error *err);
/* Work queued and not yet completed (the loop must not close before 0). */
int sio_pending(const sess_io *io);

#endif
