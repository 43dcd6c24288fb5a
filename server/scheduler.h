/*
 * scheduler.h - the one thread that runs the model. It owns a libuv loop,
 * the model, the tokenizer, the session pool and a fixed set of sequence
 * slots; every loop iteration steps each active slot once (a prompt chunk
 * or one generated token), so requests on different sessions progress
 * together. Requests beyond the slots wait in a bounded FIFO.
 *
 * The HTTP side submits a sched_job and receives results through the
 * sched_sink callbacks, which run on the scheduler thread and must not
 * block (append to a buffer, resume a connection). After sink->done the
 * scheduler never touches the job again.
 */
#ifndef METASTATE_SERVER_SCHEDULER_H
#define METASTATE_SERVER_SCHEDULER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "agent_out.h"
#include "config.h"
#include "engine.h"
#include "openai.h"
#include "sessions.h"
#include "status.h"
#include "store.h"

typedef struct sched sched;

/* How a job ended. err.code is SRV_OK on success, else the reason (the
 * caller maps it to a protocol status; the scheduler knows no HTTP). */
typedef struct sched_result {
    oa_usage usage;
    srv_error err;
    char session_note[640]; /* non-empty when a session file was rejected */
} sched_result;

typedef struct sched_sink {
    /* The job got a slot and its session (if any) is ready: output starts. */
    void (*started)(void *ud);
    /* Generated text of choice idx: whole UTF-8 characters, stop strings cut.
     * Nonzero when it could not be kept (out of memory): the job then fails. */
    int (*text)(void *ud, int idx, const char *text, size_t len);
    void (*choice_done)(void *ud, int idx, oa_finish finish);
    /* Last call: success or error; the job may be freed once it returns. */
    void (*done)(void *ud, const sched_result *r);
    /* 0 once the client is gone: the job is dropped within one step. */
    int (*alive)(void *ud);
    /* May be NULL. 1 while the client has not taken enough of the output
     * already produced: the job's generation pauses (checked every step and
     * every tick) instead of buffering without bound. */
    int (*backlogged)(void *ud);
    /* When the request asks for logprobs: one token of choice idx, in order,
     * before its text. With echo the prompt's tokens come first, the very
     * first with n_top -1 (no logprob: nothing precedes it). May be NULL. */
    void (*logprob)(void *ud, int idx, const agent_lp *lp);
} sched_sink;

typedef struct sched_job {
    /* Set by the submitter; read-only for the scheduler. */
    oa_request req;          /* parsed request (owned by the submitter) */
    char *prompt;            /* chat: rendered conversation (NULL for completions) */
    size_t prompt_len;
    const char *session_id;  /* NULL or oa_session_id_valid */
    int max_tokens;          /* resolved (default, cap) */
    double deadline;         /* monotonic seconds */
    double t_submit;
    const sched_sink *sink;
    void *ud;
    /* Scheduler-private. */
    struct sched_job *next;
    double retry_at;         /* its session's lease was taken elsewhere: try again then */
} sched_job;

/* Starts the scheduler thread, which loads the model and tokenizer (cfg must
 * outlive the scheduler). on_fatal(ud, message) is called from that thread
 * when loading fails. NULL on setup failure. */
sched *sched_start(const srv_config *cfg, void (*on_fatal)(void *ud, const char *msg), void *ud);
/* 1 once the model is loaded and requests are served. Any thread. */
int sched_ready(const sched *s);
/* Queues a job. Any thread. SRV_OK, or (the job was not taken, no
 * callbacks) SRV_ERR_QUEUE_FULL, SRV_ERR_LOADING or SRV_ERR_SHUTTING_DOWN. */
srv_status sched_submit(sched *s, sched_job *j);
/* Stops taking jobs, lets queued and running ones finish for up to
 * timeout_s seconds, then cancels the rest; returns when all are done. */
void sched_drain(sched *s, double timeout_s);
/* Runs work(arg) on the loop's work queue (a libuv worker thread), then
 * done(arg) on the scheduler thread: for file work of other threads (session
 * export, import, DELETE), so that neither they nor the model wait for disk.
 * Any thread, before sched_stop. SRV_OK, else (nothing will be called)
 * SRV_ERR_SHUTTING_DOWN or SRV_ERR_NOMEM. */
srv_status sched_run_io(sched *s, void (*work)(void *arg), void (*done)(void *arg), void *arg);
/* Stops the thread, writes every session to --state-dir, frees everything. */
void sched_stop(sched *s);

/* For the HTTP side once sched_ready: the pool (thread-safe), the model and
 * its tokenizer (immutable). */
sess_pool *sched_pool(sched *s);
const ms_model *sched_model(const sched *s);
const ms_tokenizer *sched_tokenizer(const sched *s);
/* The session store (memory, directory or redis), for the HTTP side. */
sstore *sched_store(sched *s);
/* Seconds since an arbitrary start (CLOCK_MONOTONIC). */
double sched_now(void);

#endif
