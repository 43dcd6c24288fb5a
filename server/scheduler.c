/*
 * scheduler.c - all model work, on one thread with a libuv loop.
 *
 * Design. A fixed array of slots holds everything a sequence needs (forward
 * scratch, logits, sampler, detokenizer, a private state for session-less
 * requests, a fork state for n > 1), allocated once at startup; a request
 * only borrows a slot. Each loop iteration (a uv_idle callback, active only
 * while some slot has work) generates one token for every generating slot
 * and runs prompt chunks of at most --prefill-chunk tokens in all, the
 * prompt with the fewest tokens left first. That keeps streams flowing while
 * long prompts, or many at once, are processed. All generating slots of an
 * iteration feed their tokens in one batched forward (ms_forward_mixed):
 * every weight matrix is read once for all of them, so eight streams cost
 * little more than one on a memory-bound CPU. The same
 * pass carries the iteration's prompt chunks (up to MS_MAX_CHUNKS; a burst
 * of short prompts, or of chat turns, costs one pass over the weights, not
 * one per prompt) and every prompt's last token (the one whose logits start
 * generation: with the prompt's last chunk, the session's checkpoint written
 * in the same pass, or alone); their draws run on the engine's threads
 * together.
 *
 * Sessions. A slot working for a session leases it from the pool and runs
 * directly on the session's state, appending every token it feeds to the
 * session's history right after feeding it, so a cancelled request leaves a
 * consistent session. Before the last prompt token the state is copied to
 * the session's checkpoint: the next request can resume from there even
 * when the reply it got back was re-tokenized or cleaned differently.
 * Spills, write-behind and loads run on libuv's worker pool (session_io.c)
 * so disk I/O never stalls the stepping; they hold the session's lease.
 *
 * Initial states. --init-state files are loaded once at startup; a request
 * naming one ("state") starts from a copy of it instead of zero. A session
 * records the one it grew from, so it is only continued by requests with
 * the same start, and restarts (a miss, or a request naming another state)
 * copy the right one back in.
 *
 * What is loaded (model, vocabulary, initial states, sampler tables) is the
 * runtime (runtime.c), shared with `generate`; what a chat request implies
 * (stops, end-of-text ban, leading space) is chat_policy (chat_format.c).
 *
 * Threads. Other threads only touch the inbox (mutex + uv_async_send) and
 * the counters used for 429 and draining. Sink callbacks run here.
 */
#include "scheduler.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "chat_format.h"
#include "metrics.h"
#include "runtime.h"
#include "session_io.h"
#include "sse.h"
#include "state_store.h"
#include "store.h"

/* A slot's life, one job at a time (every transition on the scheduler
 * thread):
 *
 *   FREE -> LOADING   admitted; its session's state is on disk and being read
 *   FREE -> PREFILL   admitted; session (if any) in memory
 *   LOADING -> PREFILL  the file was read (or rejected: the session restarts)
 *   PREFILL -> GENERATE  the last prompt token produced logits
 *   GENERATE -> GENERATE  a choice ended and the next one of the same prompt
 *                         starts from the forked state (n > 1)
 *   GENERATE -> PREFILL   a choice ended and the next prompt starts
 *   any -> FREE       the job ended (finish_job: done, error, cancelled)
 *
 * With a shared store (--state-store) a session's turn is bracketed by its
 * lease in the store, taken and released on the worker pool:
 *   FREE -> LEASING   admitted; taking the lease, loading a newer stored state
 *   LEASING -> PREFILL  lease held, memory holds the stored version
 *   LEASING -> FREE   the lease is held elsewhere: the job goes back to the
 *                     queue and tries again shortly (until its deadline)
 *   any -> SAVING -> FREE  the job ended: the session is stored under a new
 *                     version and the lease released before the client hears
 *                     back, so its next turn, on any replica, continues it
 *
 * Only PREFILL and GENERATE slots need the loop's idle callback. */
typedef enum slot_state {
    SLOT_FREE = 0,
    SLOT_LOADING,
    SLOT_PREFILL,
    SLOT_GENERATE,
    SLOT_LEASING,
    SLOT_SAVING
} slot_state;

/* How long a job whose session's lease is held elsewhere waits before it
 * tries again (the tick also bounds it). */
#define LEASE_RETRY_S 0.02

#define TICK_MS 50

/* A config name must fit a session's (and its file's) name field. */
_Static_assert(SRV_STATE_NAME_MAX <= STORE_NAME_MAX, "initial-state names must fit session files");

typedef struct slot {
    struct sched *owner;
    /* allocated once */
    ms_ctx *ctx;
    ms_sampler *sampler;
    float *logits;      /* (V) */
    ms_state *own;      /* state of session-less requests */
    ms_state *fork;     /* state after the prompt, for choices 2..n */
    float *fork_logits; /* (V) */
    int32_t *toks;      /* (cap_toks) the current prompt's ids */
    size_t cap_toks, n_toks;
    uint64_t *mask;     /* (V bits) allowed tokens under a grammar */
    float *raw;         /* (V) logits before bias, penalties and mask, for logprobs */
    /* per request, only when asked (allocated at admission, not per token) */
    ms_gmatch *gm;      /* the request's grammar matcher */
    float *echo_logits; /* (prefill_chunk * V) all-position logits for echoed prompt logprobs */
    int want_lp;        /* logprobs: top count + 1 (0 = none) */
    int echo_lp;        /* completions echo with logprobs: score the prompt */
    ms_detok detok;
    char piece[1024];
    /* per request */
    slot_state state;
    sched_job *job;
    session *sess;
    ms_state *st;       /* sess->state or own */
    sse_stop *stop;
    gen_policy pol;     /* stops, bans and text rules of the request's kind */
    int n_prompts, n_choices, prompt_i, choice_k;
    size_t pos;         /* next prompt token to feed */
    int n_gen;
    int skip_pending;   /* chat: drop the reply's one leading space */
    int first_token_seen;
    int paused;         /* GENERATE, but the client's unsent output is over the bound */
    int feed_last;      /* this iteration's token ends the choice (batched feed) */
    int feed_hit;       /* ... because a stop string was hit */
    double t_step;      /* when this iteration's token was sampled */
    uint64_t seed;
    double t_admit;
    sched_result res;
    /* shared store: this job's turn */
    sstore_turn turn;
    int started;        /* the job ran (its session may have changed): store it */
    int renewing;       /* a lease renewal is in flight */
    double t_renew;
} slot;

struct sched {
    const srv_config *cfg;
    void (*on_fatal)(void *, const char *);
    void *fatal_ud;
    srv_runtime rt;   /* model, tokenizer, initial states, sampler tables */
    int32_t V;        /* rt.V */
    sess_pool *pool;
    sess_io *io;      /* the pool's disk I/O on the worker pool */
    sstore *store;    /* where sessions live beyond the pool */
    int shared;       /* store is shared (redis): turns hold leases */
    int pinging;
    double t_ping;

    pthread_t thread;
    int thread_started;
    uv_loop_t loop;
    uv_async_t wake;
    uv_idle_t idle;
    uv_timer_t tick;
    int idle_on, closing;
    int refill;       /* the pool may want spare states: make them while idle */
    struct sched_io *io_inbox; /* sched_run_io requests not yet queued (under mu) */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    sched_job *inbox_head, *inbox_tail; /* under mu */
    int n_queued;                       /* submitted, not yet in a slot (under mu) */
    int n_running;                      /* in a slot (under mu) */
    atomic_int ready, draining, stopping, cancel_all;

    sched_job *pend_head, *pend_tail; /* scheduler thread only */
    slot *slots;
    int n_slots;
    /* the batched decode step: one context and per-slot arrays, allocated once */
    ms_ctx *batch_ctx;
    /* this iteration's prompt chunks that ride with the batched step */
    slot *ride[MS_MAX_CHUNKS];
    ms_chunk ride_ck[MS_MAX_CHUNKS];
    int n_ride;
    slot **pre_slot;    /* this iteration's prefilling slots (n_slots), in prefill_turns' order */
    unsigned prefill_iter; /* iterations with prompt work, for the oldest's turn */
    size_t step_prompt; /* prompt tokens this iteration ran in forwards of their own */
    slot **draw_slot;   /* this iteration's draws (n_slots each) */
    ms_sampler **draw_sampler;
    float **draw_logits;
    int32_t *draw_tok;
    slot **feed_slot;
    ms_state **feed_state;
    int32_t *feed_tok;
    float **feed_logits;
    ms_vocab_index *vocab_index; /* byte tries of the vocabulary, for grammars */
};

double sched_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ======================================================================== */
/* Job completion                                                            */
/* ======================================================================== */

static void gauges(sched *s)
{
    pthread_mutex_lock(&s->mu);
    metrics_set(MET_G_QUEUE, s->n_queued);
    metrics_set(MET_G_ACTIVE, s->n_running);
    pthread_mutex_unlock(&s->mu);
}

/* Ends a job that never got a slot. */
static void fail_queued(sched *s, sched_job *j, srv_status why, const char *msg)
{
    sched_result r = {0};
    srv_fail(&r.err, why, "%s", msg);
    j->sink->done(j->ud, &r);
    pthread_mutex_lock(&s->mu);
    s->n_queued--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Undoes the request's sampler settings so the slot's sampler is as new. */
static void restore_bias(sched *s, slot *sl)
{
    const oa_request *r = &sl->job->req;
    for (size_t i = 0; i < r->n_logit_bias; i++)
        rt_sampler_unbias(&s->rt, sl->sampler, r->logit_bias[i].token);
    if (sl->pol.ban_end_of_text) rt_sampler_unbias(&s->rt, sl->sampler, 0);
}

static int store_op_queue(sched *s, slot *sl, int kind);
static void complete_job(sched *s, slot *sl);

/* Ends the slot's job (SRV_OK = success, else why it failed, msg saying
 * more) and frees the slot; with a shared store after storing the session
 * (SAVING), so the client hears back once its turn is stored. */
static void finish_job(sched *s, slot *sl, srv_status why, const char *msg)
{
    restore_bias(s, sl);
    sse_stop_free(sl->stop);
    sl->stop = NULL;
    ms_gmatch_free(sl->gm);
    sl->gm = NULL;
    free(sl->echo_logits);
    sl->echo_logits = NULL;
    if (why != SRV_OK) srv_fail(&sl->res.err, why, "%s", msg);
    else {
        sl->res.err.code = SRV_OK;
        metrics_add(MET_C_PROMPT_TOKENS, (uint64_t)sl->res.usage.prompt_tokens);
        metrics_add(MET_C_CACHED_TOKENS, (uint64_t)sl->res.usage.cached_tokens);
        metrics_add(MET_C_COMPLETION_TOKENS, (uint64_t)sl->res.usage.completion_tokens);
    }
    if (sl->sess && sl->turn.held) {
        sl->state = SLOT_SAVING;
        if (store_op_queue(s, sl, sl->started ? 1 : 2) == 0) return;
        /* Not queued: the lease runs out by itself; memory is not trusted. */
        sl->sess->store_ver[0] = 0;
        sl->turn.held = 0;
    }
    complete_job(s, sl);
}

/* The second half of finish_job: the session back to the pool, the slot
 * free, the client told. */
static void complete_job(sched *s, slot *sl)
{
    sched_job *j = sl->job;
    if (sl->sess) {
        pool_release(s->pool, sl->sess);
        sl->sess = NULL;
    }
    sl->state = SLOT_FREE;
    sl->paused = 0;
    sl->job = NULL;
    /* The gauge drops before the client hears back, so a client that reads
     * /metrics right after its response sees itself gone; n_running itself
     * drops after done, which draining relies on. */
    pthread_mutex_lock(&s->mu);
    metrics_set(MET_G_ACTIVE, s->n_running - 1);
    pthread_mutex_unlock(&s->mu);
    j->sink->done(j->ud, &sl->res);
    pthread_mutex_lock(&s->mu);
    s->n_running--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    sio_kick(s->io);
}

/* ======================================================================== */
/* Starting a choice: tokenize, match the session, reset the sampler         */
/* ======================================================================== */

/* Tokenizes prompt p of the slot's job into sl->toks; -1 on OOM. An empty
 * prompt becomes the end-of-text token, which RWKV uses as a document start. */
static int tokenize_prompt(sched *s, slot *sl, int p)
{
    const sched_job *j = sl->job;
    if (!j->prompt && j->req.prompt_ids && j->req.prompt_ids[p]) { /* token ids as given */
        size_t need = j->req.prompt_n_ids[p];
        if (need > sl->cap_toks) {
            int32_t *nt = realloc(sl->toks, need * sizeof *nt);
            if (!nt) return -1;
            sl->toks = nt;
            sl->cap_toks = need;
        }
        memcpy(sl->toks, j->req.prompt_ids[p], need * sizeof *sl->toks);
        sl->n_toks = need;
        return 0;
    }
    const char *text = j->prompt ? j->prompt : j->req.prompts[p];
    size_t len = j->prompt ? j->prompt_len : strlen(text);
    size_t need = ms_tokenize(s->rt.tok, text, len, sl->toks, sl->cap_toks);
    if (need > sl->cap_toks) {
        size_t nc = sl->cap_toks * 2;
        while (nc < need) nc *= 2;
        int32_t *nt = realloc(sl->toks, nc * sizeof *nt);
        if (!nt) return -1;
        sl->toks = nt;
        sl->cap_toks = nc;
        ms_tokenize(s->rt.tok, text, len, sl->toks, sl->cap_toks);
    }
    sl->n_toks = need;
    if (!need) {
        sl->toks[0] = 0;
        sl->n_toks = 1;
    }
    return 0;
}

/* memcmp for token prefixes; a session's history may be NULL when empty. */
static int same_prefix(const int32_t *a, const int32_t *b, size_t n)
{
    return n == 0 || !memcmp(a, b, n * sizeof *a);
}

/* Empties session se and puts initial state `name` ("" = zero) in it. */
static void restart_session(sched *s, session *se, const char *name)
{
    const ms_state *init = rt_init_state(&s->rt, name);
    if (!init) {
        ms_state_reset(se->state);
        se->init_state[0] = 0;
    } else {
        ms_state_copy(se->state, init);
        if (name != se->init_state) /* a miss passes the session's own name */
            snprintf(se->init_state, sizeof se->init_state, "%s", name);
    }
    se->n_tokens = 0;
    se->has_ckpt = 0;
    se->n_ckpt = 0;
}

/* Chooses where the session's prompt starts: after everything it already
 * holds when that is a prefix of the prompt, else from its checkpoint when
 * that is, else from its initial state. A request naming another initial
 * state than the session's restarts it from that one; a request naming none
 * keeps the session's. Returns the number of reused tokens. */
static size_t match_session(sched *s, slot *sl)
{
    session *se = sl->sess;
    const int32_t *t = sl->toks;
    size_t n = sl->n_toks;
    const char *want = sl->job->req.state ? sl->job->req.state : se->init_state;
    if (strcmp(want, se->init_state)) {
        metrics_add(MET_C_SESSION_MISSES, se->n_tokens || se->has_ckpt ? 1 : 0);
        restart_session(s, se, want);
        return 0;
    }
    if (se->n_tokens < n && same_prefix(se->tokens, t, se->n_tokens)) {
        metrics_add(MET_C_SESSION_HITS, se->n_tokens ? 1 : 0);
        return se->n_tokens;
    }
    if (se->has_ckpt && se->n_ckpt < n && se->n_ckpt <= se->n_tokens &&
        same_prefix(se->tokens, t, se->n_ckpt)) {
        ms_state_copy(se->state, se->ckpt);
        se->n_tokens = se->n_ckpt;
        metrics_add(MET_C_SESSION_HITS, se->n_ckpt ? 1 : 0);
        return se->n_ckpt;
    }
    metrics_add(MET_C_SESSION_MISSES, 1);
    restart_session(s, se, want);
    return 0;
}

/* Prepares choice k of prompt p. Returns 0, or -1 (job already failed). */
static int begin_choice(sched *s, slot *sl, int p, int k)
{
    sched_job *j = sl->job;
    sl->prompt_i = p;
    sl->choice_k = k;
    if (k == 0) {
        if (tokenize_prompt(s, sl, p)) {
            finish_job(s, sl, SRV_ERR_NOMEM, "out of memory tokenizing the prompt");
            return -1;
        }
        sl->res.usage.prompt_tokens += (int)sl->n_toks;
        if (sl->sess) {
            sl->pos = match_session(s, sl);
            sl->res.usage.cached_tokens = (int)sl->pos;
        } else {
            const ms_state *init = rt_init_state(&s->rt, j->req.state);
            if (init) ms_state_copy(sl->st, init);
            else ms_state_reset(sl->st);
            sl->pos = 0;
        }
        sl->state = SLOT_PREFILL;
    } else {
        ms_state_copy(sl->st, sl->fork);
        memcpy(sl->logits, sl->fork_logits, (size_t)s->V * sizeof(float));
        sl->state = SLOT_GENERATE;
    }
    ms_sampler_params sp = j->req.sampling;
    sp.seed = sl->seed + (uint64_t)(p * sl->n_choices + k);
    ms_sampler_reset(sl->sampler, &sp);
    ms_detok_init(&sl->detok);
    sse_stop_free(sl->stop);
    sl->stop = sse_stop_new(sl->pol.stops, sl->pol.n_stops);
    if (!sl->stop) {
        finish_job(s, sl, SRV_ERR_NOMEM, "out of memory");
        return -1;
    }
    sl->n_gen = 0;
    sl->skip_pending = sl->pol.skip_leading_space;
    if (sl->gm) ms_gmatch_reset(sl->gm);
    if (sl->echo_lp && k == 0) sl->pos = 0; /* every prompt position is scored */
    return 0;
}

/* A job got slot sl (its session, if any, is leased and in memory). */
static void start_job(sched *s, slot *sl, sched_job *j)
{
    const oa_request *r = &j->req;
    sl->job = j;
    sl->st = sl->sess ? sl->sess->state : sl->own;
    sl->n_prompts = r->kind == OA_CHAT ? 1 : (int)r->n_prompts;
    sl->n_choices = r->n;
    sl->first_token_seen = 0;
    sl->t_admit = sched_now();
    if (r->has_seed) sl->seed = r->sampling.seed;
    else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sl->seed = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                   ((uint64_t)(uintptr_t)sl << 16);
    }
    for (size_t i = 0; i < r->n_logit_bias; i++) {
        int32_t t = r->logit_bias[i].token;
        if (t >= 0 && t < s->V && s->rt.base_bias[t] == 0)
            ms_sampler_set_bias(sl->sampler, t, r->logit_bias[i].bias);
    }
    chat_policy(r->kind, r->stop, r->n_stop, &sl->pol);
    if (sl->pol.ban_end_of_text) ms_sampler_set_bias(sl->sampler, 0, -INFINITY);
    sl->want_lp = r->logprobs && j->sink->logprob ? r->top_logprobs + 1 : 0;
    sl->echo_lp = sl->want_lp && r->kind == OA_COMPLETION && r->echo;
    if (r->grammar && !(sl->gm = ms_gmatch_new(r->grammar, s->vocab_index))) {
        finish_job(s, sl, SRV_ERR_NOMEM, "out of memory for the grammar matcher");
        return;
    }
    if (sl->echo_lp &&
        !(sl->echo_logits = malloc((size_t)s->cfg->prefill_chunk * (size_t)s->V * sizeof(float)))) {
        finish_job(s, sl, SRV_ERR_NOMEM, "out of memory for prompt logprobs");
        return;
    }
    metrics_observe(MET_H_QUEUE, sl->t_admit - j->t_submit);
    if (r->state && !rt_init_state(&s->rt, r->state)) { /* http.c checks first; never start from a wrong state */
        finish_job(s, sl, SRV_ERR_INVALID, "unknown initial state");
        return;
    }
    sl->started = 1;
    j->sink->started(j->ud);
    begin_choice(s, sl, 0, 0);
}

/* ======================================================================== */
/* Stepping                                                                  */
/* ======================================================================== */

/* Sends text of the current choice through the stop matcher. Returns 1 when
 * a stop string was hit, 0 when not, -1 when the text could not be kept
 * (out of memory here or in the sink): the reply is incomplete, so the
 * caller fails the job rather than let it end as if whole. */
static int emit(slot *sl, const char *text, size_t len, int flush)
{
    const char *e = NULL;
    size_t elen = 0;
    int hit = 0;
    if (flush) elen = sse_stop_flush(sl->stop, &e);
    else if (len && (hit = sse_stop_push(sl->stop, text, len, &e, &elen)) < 0) return -1;
    if (elen && sl->skip_pending) {
        size_t k = chat_reply_skip(e, elen);
        e += k;
        elen -= k;
        sl->skip_pending = 0;
    }
    if (elen) {
        sched_job *j = sl->job;
        if (j->sink->text(j->ud, sl->prompt_i * sl->n_choices + sl->choice_k, e, elen)) return -1;
    }
    return hit == 1;
}

static void lost_text(sched *s, slot *sl)
{
    finish_job(s, sl, SRV_ERR_NOMEM, "out of memory: the reply could not be kept whole");
}

/* Ends the current choice and moves to the next one (or ends the job). */
static void finish_choice(sched *s, slot *sl, oa_finish f, int stop_hit)
{
    if (!stop_hit) {
        size_t n = ms_detok_flush(&sl->detok, sl->piece);
        int h = n ? emit(sl, sl->piece, n, 0) : 0;
        if (h == 0) h = emit(sl, NULL, 0, 1);
        if (h < 0) {
            lost_text(s, sl);
            return;
        }
        if (h == 1) f = OA_FINISH_STOP;
    }
    sched_job *j = sl->job;
    j->sink->choice_done(j->ud, sl->prompt_i * sl->n_choices + sl->choice_k, f);
    if (sl->choice_k + 1 < sl->n_choices) begin_choice(s, sl, sl->prompt_i, sl->choice_k + 1);
    else if (sl->prompt_i + 1 < sl->n_prompts) begin_choice(s, sl, sl->prompt_i + 1, 0);
    else finish_job(s, sl, SRV_OK, NULL);
}

static void engine_fail(sched *s, slot *sl, const ms_error *e)
{
    fprintf(stderr, "metastate serve: engine error: %s\n", e->msg);
    finish_job(s, sl, e->code == MS_ERR_INVALID ? SRV_ERR_INVALID : SRV_ERR_ENGINE, e->msg);
}

/* Logprobs of token t under logits row (the distribution before it). */
static void report_lp(sched *s, slot *sl, const float *row, int32_t t)
{
    agent_lp lp;
    lp.id = t;
    lp.n_top = sl->want_lp - 1;
    lp.lp = ms_logprobs(row, s->V, t, lp.n_top, lp.top_ids, lp.top_lps);
    sched_job *j = sl->job;
    j->sink->logprob(j->ud, sl->prompt_i * sl->n_choices + sl->choice_k, &lp);
}

/* Echo with logprobs: the whole prompt in chunks with logits at every
 * position (row r scores token r + 1; the last row starts generation). No
 * session reuse or checkpoint: every position must be computed. */
static void step_prefill_scored(sched *s, slot *sl)
{
    ms_error e = {0};
    size_t m = sl->n_toks - sl->pos;
    if (m > (size_t)s->cfg->prefill_chunk) m = (size_t)s->cfg->prefill_chunk;
    sched_job *j = sl->job;
    int idx = sl->prompt_i * sl->n_choices + sl->choice_k;
    if (sl->pos == 0) {
        agent_lp first = {.id = sl->toks[0], .n_top = -1};
        j->sink->logprob(j->ud, idx, &first);
    }
    s->step_prompt += m;
    metrics_add(MET_C_MODEL_PASSES, 1);
    if (ms_forward(sl->ctx, sl->st, sl->toks + sl->pos, m, sl->echo_logits, 1, &e) != MS_OK) {
        engine_fail(s, sl, &e);
        return;
    }
    if (sl->sess && session_push_tokens(sl->sess, sl->toks + sl->pos, m)) {
        finish_job(s, sl, SRV_ERR_NOMEM, "out of memory");
        return;
    }
    for (size_t r = 0; r < m; r++) {
        const float *row = sl->echo_logits + r * (size_t)s->V;
        if (sl->pos + r + 1 < sl->n_toks) report_lp(s, sl, row, sl->toks[sl->pos + r + 1]);
        else memcpy(sl->logits, row, (size_t)s->V * sizeof(float));
    }
    sl->pos += m;
    if (sl->pos < sl->n_toks) return;
    if (sl->n_choices > 1) {
        ms_state_copy(sl->fork, sl->st);
        memcpy(sl->fork_logits, sl->logits, (size_t)s->V * sizeof(float));
    }
    sl->state = SLOT_GENERATE;
}

/* Queues token t of sl (its state, logits into `logits` unless NULL) for
 * this iteration's batched step. */
static void feed_queue(sched *s, slot *sl, int32_t t, float *logits)
{
    int k = 0;
    while (s->feed_slot[k]) k++;
    s->feed_slot[k] = sl;
    s->feed_state[k] = sl->st;
    s->feed_tok[k] = t;
    s->feed_logits[k] = logits;
}

/* One unit of prompt work: a chunk (with the last token when it reaches
 * it), or queueing the last token for the batched step. Returns 1 when a
 * token was queued. */
static int step_prefill(sched *s, slot *sl)
{
    ms_error e = {0};
    if (sl->echo_lp) {
        step_prefill_scored(s, sl);
        return 0;
    }
    size_t last = sl->n_toks - 1;
    if (sl->pos < last) {
        size_t m = last - sl->pos;
        if (m > (size_t)s->cfg->prefill_chunk) m = (size_t)s->cfg->prefill_chunk;
        if (s->n_ride < MS_MAX_CHUNKS) {
            /* The chunks share the batched step's weight pass. One that
             * reaches the prompt's end takes the last token along, and the
             * session's checkpoint comes out of the same pass: a short turn
             * costs one step, not two. */
            const int whole = sl->pos + m == last;
            if (whole && sl->sess) sl->sess->has_ckpt = 0; /* until the pass wrote it */
            s->ride[s->n_ride] = sl;
            s->ride_ck[s->n_ride++] = (ms_chunk){sl->st, sl->toks + sl->pos, m + (size_t)whole,
                                                 whole ? sl->logits : NULL,
                                                 whole && sl->sess ? sl->sess->ckpt : NULL};
            return 0;
        }
        s->step_prompt += m;
        metrics_add(MET_C_MODEL_PASSES, 1);
        if (ms_forward(sl->ctx, sl->st, sl->toks + sl->pos, m, NULL, 0, &e) != MS_OK) {
            engine_fail(s, sl, &e);
            return 0;
        }
        if (sl->sess && session_push_tokens(sl->sess, sl->toks + sl->pos, m)) {
            finish_job(s, sl, SRV_ERR_NOMEM, "out of memory");
            return 0;
        }
        sl->pos += m;
        if (sl->pos < last) return 0;
    }
    if (sl->sess) {
        ms_state_copy(sl->sess->ckpt, sl->st);
        sl->sess->n_ckpt = sl->pos;
        sl->sess->has_ckpt = 1;
    }
    /* The last prompt token is one token with logits, like a generated one:
     * it rides in this iteration's batched step rather than taking a weight
     * pass of its own; prompt_done() follows the feed. */
    feed_queue(s, sl, sl->toks[last], sl->logits);
    return 1;
}

/* Prompt tokens left to run before sl's last one (all of them when the
 * prompt is scored for echoed logprobs). */
static size_t prefill_left(const slot *sl)
{
    return sl->echo_lp ? sl->n_toks - sl->pos : sl->n_toks - 1 - sl->pos;
}

/* Prompt tokens step_prefill would run for sl now: a chunk, or 0 when only
 * the last token is left (a row of the batched step, like a generated one). */
static size_t prefill_need(const sched *s, const slot *sl)
{
    const size_t m = prefill_left(sl);
    return m < (size_t)s->cfg->prefill_chunk ? m : (size_t)s->cfg->prefill_chunk;
}

/* Every PREFILL_OLDEST_EVERY-th iteration with prompt work, the oldest
 * request's prompt goes first instead of the shortest: a long prompt beside
 * a stream of shorter ones keeps at least that share of the chunks. */
#define PREFILL_OLDEST_EVERY 4

/* Whether a's prompt work goes before b's: fewest tokens left (or, on the
 * oldest's turn, submitted first), then submitted first, then slot order. */
static int prefill_before(const slot *a, const slot *b, int oldest)
{
    const size_t la = prefill_left(a), lb = prefill_left(b);
    const double ta = a->job->t_submit, tb = b->job->t_submit;
    if (oldest && ta != tb) return ta < tb;
    if (la != lb) return la < lb;
    if (ta != tb) return ta < tb;
    return a < b;
}

/* This iteration's prompt work for the prefilling slots pre[0..n). Chunks
 * run in prefill_before's order while their tokens fit in one
 * --prefill-chunk: a burst of prompts delays the running streams by one
 * chunk per token, not by one chunk per prompt (eight 600-token prompts
 * stalled a stream for 0.3-0.8 s per token), and a burst of equal prompts
 * finishes one after another rather than all at the end (taking turns, eight
 * 512-token prompts on the 0.1B model all had their first token after
 * 3.7-4.8 s). A short prompt, or a chat's next turn, is not held behind a
 * document. The first in order always runs, and prompts down to their last
 * token always queue it. Returns the tokens queued for the batched step. */
static int prefill_turns(sched *s, slot **pre, int n)
{
    if (n == 0) return 0;
    const int oldest = ++s->prefill_iter % PREFILL_OLDEST_EVERY == 0;
    for (int i = 1; i < n; i++) /* n <= --parallel: insertion sort */
        for (int k = i; k > 0 && prefill_before(pre[k], pre[k - 1], oldest); k--) {
            slot *t = pre[k];
            pre[k] = pre[k - 1];
            pre[k - 1] = t;
        }
    int n_feed = 0;
    size_t left = (size_t)s->cfg->prefill_chunk;
    for (int i = 0; i < n; i++) {
        const size_t need = prefill_need(s, pre[i]);
        if (need > left) continue;
        left -= need;
        n_feed += step_prefill(s, pre[i]);
    }
    return n_feed;
}

/* After the batched step that fed the prompt's last token. */
static void prompt_done(sched *s, slot *sl)
{
    sl->pos = sl->n_toks;
    if (sl->n_choices > 1) {
        ms_state_copy(sl->fork, sl->st);
        memcpy(sl->fork_logits, sl->logits, (size_t)s->V * sizeof(float));
    }
    sl->state = SLOT_GENERATE;
}

/* One generated token, first part: the checks before a draw (deadline,
 * length, the grammar's mask on the logits). Returns 1 when the slot draws
 * this iteration; the draws of all slots then run together. */
static int gen_prepare(sched *s, slot *sl)
{
    double t0 = sched_now();
    sl->t_step = t0;
    if (t0 > sl->job->deadline || sl->n_gen >= sl->job->max_tokens) { /* max_tokens 0: echo only */
        finish_choice(s, sl, OA_FINISH_LENGTH, 0);
        return 0;
    }
    if (sl->want_lp) memcpy(sl->raw, sl->logits, (size_t)s->V * sizeof(float));
    if (sl->gm) {
        /* Only tokens that keep the text a valid prefix, and that leave room
         * to close the document within max_tokens. */
        if (ms_gmatch_done(sl->gm) || ms_gmatch_mask(sl->gm, sl->job->max_tokens - sl->n_gen, sl->mask) == 0) {
            finish_choice(s, sl, ms_gmatch_done(sl->gm) ? OA_FINISH_STOP : OA_FINISH_LENGTH, 0);
            return 0;
        }
        ms_mask_apply(sl->logits, sl->mask, s->V);
    }
    return 1;
}

/* Second part, with the drawn token t: emit it, then either finish the
 * choice (end of text, or the last token of a session-less request, which
 * is never needed again) or queue the token for this iteration's batched
 * feed. Returns 1 when queued. */
static int gen_take(sched *s, slot *sl, int32_t t)
{
    const double t0 = sl->t_step;
    if (sl->gm && t != 0) {
        size_t bl = 0;
        const char *b = ms_token_bytes(s->rt.tok, t, &bl);
        if (!b || ms_gmatch_advance(sl->gm, b, bl)) t = 0; /* cannot happen: the mask allowed it */
    }
    if (sl->want_lp && t != 0) report_lp(s, sl, sl->raw, t);
    if (!sl->first_token_seen) {
        sl->first_token_seen = 1;
        metrics_observe(MET_H_TTFT, t0 - sl->t_admit);
    }
    if (t == 0) {
        finish_choice(s, sl, OA_FINISH_STOP, 0);
        return 0;
    }
    sl->n_gen++;
    sl->res.usage.completion_tokens++;
    size_t n = ms_detok_push(&sl->detok, s->rt.tok, t, sl->piece);
    int hit = n ? emit(sl, sl->piece, n, 0) : 0;
    if (hit < 0) {
        lost_text(s, sl);
        return 0;
    }
    int done_doc = sl->gm && ms_gmatch_done(sl->gm);
    hit = hit || done_doc;
    int last = hit || sl->n_gen >= sl->job->max_tokens;
    if (last && !sl->sess) {
        metrics_observe(MET_H_TOKEN, sched_now() - t0);
        finish_choice(s, sl, hit ? OA_FINISH_STOP : OA_FINISH_LENGTH, hit);
        return 0;
    }
    /* Fed even when last, into a session: its history must hold the reply. */
    sl->feed_last = last;
    sl->feed_hit = hit;
    feed_queue(s, sl, t, last ? NULL : sl->logits);
    return 1;
}

/* Second half: one forward for every queued token, then per slot the
 * session history, metrics and the end of the choice. */
static void gen_feed(sched *s, int n)
{
    const int n_ride = s->n_ride;
    if (!n && !n_ride) return;
    metrics_add(MET_C_MODEL_PASSES, n > 16 ? ((uint64_t)n + 15) / 16 : 1); /* engine.h: groups of 16 */
    ms_error e = {0};
    ms_status st = ms_forward_mixed(s->batch_ctx, s->feed_state, s->feed_tok, (size_t)n,
                                    s->feed_logits, s->ride_ck, (size_t)n_ride, &e);
    s->n_ride = 0;
    for (int i = 0; i < n_ride; i++) {
        slot *r = s->ride[i];
        const size_t m = s->ride_ck[i].n;
        if (st != MS_OK) engine_fail(s, r, &e);
        else if (r->sess && session_push_tokens(r->sess, r->toks + r->pos, m))
            finish_job(s, r, SRV_ERR_NOMEM, "out of memory");
        else if ((r->pos += m) == r->n_toks) { /* the whole prompt: generation starts */
            if (r->sess) {
                r->sess->n_ckpt = r->n_toks - 1;
                r->sess->has_ckpt = 1;
            }
            prompt_done(s, r);
        }
    }
    for (int k = 0; k < n; k++) {
        slot *sl = s->feed_slot[k];
        const int prompt = sl->state == SLOT_PREFILL; /* its last token: generation starts */
        s->feed_slot[k] = NULL;
        if (st != MS_OK) {
            engine_fail(s, sl, &e);
            continue;
        }
        if (sl->sess && session_push_token(sl->sess, s->feed_tok[k])) {
            finish_job(s, sl, SRV_ERR_NOMEM, "out of memory");
            continue;
        }
        if (prompt) {
            prompt_done(s, sl);
            continue;
        }
        metrics_observe(MET_H_TOKEN, sched_now() - sl->t_step);
        if (sl->feed_last)
            finish_choice(s, sl, sl->feed_hit ? OA_FINISH_STOP : OA_FINISH_LENGTH, sl->feed_hit);
    }
}

/* ======================================================================== */
/* Admission and background I/O                                              */
/* ======================================================================== */

static void admit(sched *s);
static void update_idle(sched *s);
static void maybe_close(sched *s);

/* After any background I/O: a job may have waited for that session. */
static void io_wake(void *ud)
{
    sched *s = ud;
    admit(s);
    update_idle(s);
    maybe_close(s);
}

/* The session of LOADING slot sl was read (or not). */
static void session_loaded(void *arg, session *se, const srv_error *err)
{
    slot *sl = arg;
    sched *s = sl->owner;
    sched_job *j = sl->job;
    if (err->code == SRV_ERR_REJECTED)
        snprintf(sl->res.session_note, sizeof sl->res.session_note,
                 "state file rejected, session restarted: %s", err->msg);
    if (err->code != SRV_OK && err->code != SRV_ERR_REJECTED)
        finish_job(s, sl, err->code, err->msg);
    else if (atomic_load(&s->cancel_all) || !j->sink->alive(j->ud))
        finish_job(s, sl, SRV_ERR_CANCELLED, "client disconnected");
    else
        start_job(s, sl, j);
}

/* ----- the shared store: lease, load, save, renew on the worker pool ----- */

enum { OP_BEGIN = 0, OP_END = 1, OP_ABORT = 2, OP_RENEW = 3, OP_PING = 4 };

typedef struct store_op {
    sched *s;
    slot *sl;
    session *se;
    int kind, rc;
    char id[132];
    sstore_turn turn; /* renew: a copy (the slot may move on meanwhile) */
    char note[512], err[512];
} store_op;

static void store_op_work(void *arg)
{
    store_op *o = arg;
    sstore *st = o->s->store;
    switch (o->kind) {
    case OP_BEGIN:
        o->rc = sstore_turn_begin(st, o->se, &o->sl->turn, o->note, sizeof o->note, o->err, sizeof o->err);
        break;
    case OP_END: o->rc = sstore_turn_end(st, o->se, &o->sl->turn, o->err, sizeof o->err); break;
    case OP_ABORT: sstore_turn_abort(st, o->se->id, &o->sl->turn); break;
    case OP_RENEW: o->rc = sstore_turn_renew(st, o->id, &o->turn, o->err, sizeof o->err); break;
    case OP_PING: o->rc = sstore_ping(st); break;
    }
}

/* The lease is held elsewhere: the job goes back to the front of the queue
 * (it keeps its place) and tries again after LEASE_RETRY_S. */
static void requeue(sched *s, slot *sl)
{
    sched_job *j = sl->job;
    pool_release(s->pool, sl->sess);
    sl->sess = NULL;
    sl->job = NULL;
    sl->state = SLOT_FREE;
    j->retry_at = sched_now() + LEASE_RETRY_S;
    j->next = s->pend_head;
    s->pend_head = j;
    if (!s->pend_tail) s->pend_tail = j;
    pthread_mutex_lock(&s->mu);
    s->n_running--;
    s->n_queued++;
    pthread_mutex_unlock(&s->mu);
}

static void store_op_after(void *arg)
{
    store_op *o = arg;
    sched *s = o->s;
    slot *sl = o->sl;
    switch (o->kind) {
    case OP_BEGIN: {
        sched_job *j = sl->job;
        if (o->rc == SSTORE_BUSY) {
            requeue(s, sl);
            break;
        }
        if (o->rc != SSTORE_OK) {
            if (o->rc == SSTORE_DOWN)
                fprintf(stderr, "metastate serve: session %s: %s\n", o->se->id, o->err);
            finish_job(s, sl, o->rc == SSTORE_DOWN ? SRV_ERR_STORE_UNAVAILABLE : SRV_ERR_NOMEM,
                       o->rc == SSTORE_DOWN ? "The session store is unavailable; retry shortly."
                                            : o->err);
            break;
        }
        if (o->note[0]) {
            fprintf(stderr, "metastate serve: session %s: stored state rejected, the session "
                            "restarts: %s\n", o->se->id, o->note);
            snprintf(sl->res.session_note, sizeof sl->res.session_note,
                     "stored state rejected, session restarted: %s", o->note);
        }
        sl->t_renew = sched_now();
        sl->renewing = 0;
        if (atomic_load(&s->cancel_all) || !j->sink->alive(j->ud))
            finish_job(s, sl, SRV_ERR_CANCELLED, "client disconnected");
        else
            start_job(s, sl, j);
        break;
    }
    case OP_END:
        if (o->rc != SSTORE_OK)
            fprintf(stderr, "metastate serve: session %s: the turn was not stored: %s\n", o->se->id, o->err);
        /* fall through */
    case OP_ABORT:
        complete_job(s, sl);
        break;
    case OP_RENEW:
        if (sl->turn.held && !strcmp(sl->turn.tok, o->turn.tok)) {
            sl->renewing = 0;
            if (o->rc != SSTORE_OK)
                fprintf(stderr, "metastate serve: session %s: renewing the lease failed (%s)\n",
                        o->id, o->rc == SSTORE_BUSY ? "lost to another turn" : o->err);
        }
        break;
    case OP_PING:
        s->pinging = 0;
        break;
    }
    free(o);
}

/* Queues store work of kind for slot sl (OP_BEGIN/END/ABORT: its session;
 * OP_RENEW: a copy of its lease; OP_PING: sl NULL). 0 queued, -1 not. */
static int store_op_queue(sched *s, slot *sl, int kind)
{
    store_op *o = calloc(1, sizeof *o);
    if (!o) return -1;
    o->s = s;
    o->sl = sl;
    o->kind = kind;
    if (sl) {
        o->se = sl->sess;
        snprintf(o->id, sizeof o->id, "%s", sl->sess ? sl->sess->id : "");
        o->turn = sl->turn;
    }
    srv_error e;
    if (sio_call(s->io, store_op_work, store_op_after, o, &e) != SRV_OK) {
        free(o);
        return -1;
    }
    return 0;
}

/* Keeps running turns' leases alive (every third of the lease) and the
 * store's health fresh (a ping a second while idle). */
static void store_tick(sched *s)
{
    if (!s->shared) return;
    double now = sched_now(), every = (double)sstore_lease_ms(s->store) / 3000.0;
    for (int i = 0; i < s->n_slots; i++) {
        slot *sl = &s->slots[i];
        if (!sl->turn.held || sl->renewing || now - sl->t_renew < every) continue;
        if (sl->state != SLOT_PREFILL && sl->state != SLOT_GENERATE) continue;
        sl->t_renew = now;
        if (store_op_queue(s, sl, OP_RENEW) == 0) sl->renewing = 1;
    }
    if (!s->pinging && now - s->t_ping >= 1.0 && !atomic_load(&s->stopping)) {
        s->t_ping = now;
        if (store_op_queue(s, NULL, OP_PING) == 0) s->pinging = 1;
    }
}

static slot *free_slot(sched *s)
{
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i].state == SLOT_FREE) return &s->slots[i];
    return NULL;
}

/* Takes jobs from the inbox into the FIFO, then gives free slots to the
 * oldest jobs whose session is not in use (a job whose session is busy keeps
 * its place and waits: two requests on one session never interleave). */
static void admit(sched *s)
{
    pthread_mutex_lock(&s->mu);
    if (s->inbox_head) {
        if (s->pend_tail) s->pend_tail->next = s->inbox_head;
        else s->pend_head = s->inbox_head;
        s->pend_tail = s->inbox_tail;
        s->inbox_head = s->inbox_tail = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    double now = sched_now();
    sched_job *prev = NULL, *j = s->pend_head;
    while (j) {
        sched_job *next = j->next;
        int gone = atomic_load(&s->cancel_all) || !j->sink->alive(j->ud);
        int late = now > j->deadline;
        if (!gone && !late && j->retry_at > now) { /* its lease was held elsewhere a moment ago */
            prev = j;
            j = next;
            continue;
        }
        slot *sl = gone || late ? NULL : free_slot(s);
        if (!gone && !late && !sl) { /* keep waiting; later jobs are still checked */
            prev = j;
            j = next;
            continue;
        }
        session *se = NULL;
        pool_rc rc = POOL_OK;
        if (sl && j->session_id) {
            rc = pool_acquire(s->pool, j->session_id, &se);
            if (rc == POOL_BUSY) {
                prev = j;
                j = next;
                continue;
            }
        }
        /* unlink j */
        if (prev) prev->next = next;
        else s->pend_head = next;
        if (s->pend_tail == j) s->pend_tail = prev;
        j->next = NULL;
        if (gone) {
            metrics_add(MET_C_CANCELLED, 1);
            fail_queued(s, j, SRV_ERR_CANCELLED, "client disconnected");
        } else if (late) {
            fail_queued(s, j, SRV_ERR_TIMEOUT,
                        "the request waited longer than the server's --timeout for a free slot");
        } else if (rc == POOL_NOMEM || rc == POOL_TOO_MANY) {
            fail_queued(s, j, SRV_ERR_SESSIONS_FULL,
                        rc == POOL_NOMEM ? "out of memory for a new session"
                                         : "too many sessions (--max-sessions), all in use");
        } else {
            pthread_mutex_lock(&s->mu);
            s->n_queued--;
            s->n_running++;
            pthread_mutex_unlock(&s->mu);
            memset(&sl->res, 0, sizeof sl->res);
            sl->sess = se;
            sl->job = j;
            sl->started = 0;
            sl->turn.held = 0;
            if (se && s->shared) {
                sl->state = SLOT_LEASING;
                if (store_op_queue(s, sl, OP_BEGIN))
                    finish_job(s, sl, SRV_ERR_NOMEM, "out of memory queueing the session's lease");
            } else if (rc == POOL_NEEDS_LOAD) {
                srv_error e;
                sl->state = SLOT_LOADING;
                if (sio_load(s->io, se, session_loaded, sl, &e) != SRV_OK)
                    finish_job(s, sl, e.code, e.msg);
            } else {
                start_job(s, sl, j);
            }
            sio_kick(s->io);
        }
        j = next;
    }
    gauges(s);
}

/* ======================================================================== */
/* Loop callbacks                                                            */
/* ======================================================================== */

static void idle_cb(uv_idle_t *h);

static int stepping(const slot *sl)
{
    return sl->state == SLOT_PREFILL || (sl->state == SLOT_GENERATE && !sl->paused);
}

/* Backpressure: a generating slot whose client is not reading pauses (it
 * keeps its slot and state; the deadline still applies) and resumes once the
 * client has taken its output. Returns the slot's new paused flag. */
static int refresh_paused(sched *s, slot *sl)
{
    sched_job *j = sl->job;
    int p = sl->state == SLOT_GENERATE && j->sink->backlogged && sched_now() <= j->deadline &&
            j->sink->backlogged(j->ud);
    if (p && !sl->paused) metrics_add(MET_C_STREAM_PAUSES, 1);
    sl->paused = p;
    return p;
}

static void paused_gauge(sched *s)
{
    int n = 0;
    for (int i = 0; i < s->n_slots; i++) n += s->slots[i].state == SLOT_GENERATE && s->slots[i].paused;
    metrics_set(MET_G_STREAMS_PAUSED, n);
}

/* The paused slots, which the idle callback no longer visits: drop those
 * whose client left, resume those whose client has read. */
static void check_paused(sched *s)
{
    for (int i = 0; i < s->n_slots; i++) {
        slot *sl = &s->slots[i];
        if (sl->state != SLOT_GENERATE || !sl->paused) continue;
        sched_job *j = sl->job;
        if (atomic_load(&s->cancel_all) || !j->sink->alive(j->ud)) {
            sl->paused = 0;
            metrics_add(MET_C_CANCELLED, 1);
            finish_job(s, sl, SRV_ERR_CANCELLED, "client disconnected");
            continue;
        }
        refresh_paused(s, sl);
    }
    paused_gauge(s);
}

static int any_stepping(const sched *s)
{
    for (int i = 0; i < s->n_slots; i++)
        if (stepping(&s->slots[i])) return 1;
    return 0;
}

static void update_idle(sched *s)
{
    const int busy = any_stepping(s);
    if (busy) s->refill = 1; /* sessions come and go: check the spares afterwards */
    const int on = busy || (s->refill && !atomic_load(&s->stopping));
    if (on && !s->idle_on && !s->closing) {
        uv_idle_start(&s->idle, idle_cb);
        s->idle_on = 1;
    } else if (!on && s->idle_on) {
        uv_idle_stop(&s->idle);
        s->idle_on = 0;
    }
}

/* One scheduler iteration: every busy slot does one unit of work; the
 * generating ones share one batched forward. With none busy, one spare
 * state pair for the session pool, so that a new session does not wait
 * for fresh memory (a new request waits for at most one pair). */
static void idle_cb(uv_idle_t *h)
{
    sched *s = h->data;
    int n_feed = 0, n_draw = 0, n_pre = 0;
    if (!any_stepping(s)) {
        s->refill = pool_refill(s->pool);
        update_idle(s);
        return;
    }
    s->step_prompt = 0;
    for (int i = 0; i < s->n_slots; i++) {
        slot *sl = &s->slots[i];
        if (!stepping(sl)) continue;
        sched_job *j = sl->job;
        if (atomic_load(&s->cancel_all) || !j->sink->alive(j->ud)) {
            metrics_add(MET_C_CANCELLED, 1);
            finish_job(s, sl, SRV_ERR_CANCELLED, "client disconnected");
            continue;
        }
        if (sl->state == SLOT_PREFILL) s->pre_slot[n_pre++] = sl;
        else if (!refresh_paused(s, sl) && gen_prepare(s, sl)) {
            s->draw_slot[n_draw] = sl;
            s->draw_sampler[n_draw] = sl->sampler;
            s->draw_logits[n_draw++] = sl->logits;
        }
    }
    n_feed += prefill_turns(s, s->pre_slot, n_pre);
    ms_sampler_sample_batch(s->draw_sampler, s->draw_logits, (size_t)n_draw, s->draw_tok);
    for (int k = 0; k < n_draw; k++)
        n_feed += gen_take(s, s->draw_slot[k], s->draw_tok[k]);
    size_t ran = s->step_prompt + (size_t)n_feed;
    for (int i = 0; i < s->n_ride; i++) ran += s->ride_ck[i].n;
    if (ran) metrics_observe(MET_H_STEP_TOKENS, (double)ran);
    gen_feed(s, n_feed);
    paused_gauge(s);
    admit(s);
    update_idle(s);
}

static void close_cb(uv_handle_t *h) { (void)h; }

/* Closes the loop's handles once stopping and nothing is left to do. */
static void maybe_close(sched *s)
{
    if (!atomic_load(&s->stopping) || s->closing || sio_pending(s->io)) return;
    pthread_mutex_lock(&s->mu);
    int io_waiting = s->io_inbox != NULL;
    pthread_mutex_unlock(&s->mu);
    if (io_waiting) return;
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i].state != SLOT_FREE) return;
    if (s->pend_head) return;
    s->closing = 1;
    if (s->idle_on) uv_idle_stop(&s->idle);
    uv_close((uv_handle_t *)&s->idle, close_cb);
    uv_close((uv_handle_t *)&s->tick, close_cb);
    uv_close((uv_handle_t *)&s->wake, close_cb);
}

/* ======================================================================== */
/* Other threads' file work on the loop's work queue                         */
/* ======================================================================== */

/* A request of another thread, waiting in the inbox for the loop thread to
 * hand it to the work queue (sio_call; libuv's queue is not thread-safe). */
typedef struct sched_io {
    void (*work)(void *arg);
    void (*done)(void *arg);
    void *arg;
    struct sched_io *next;
} sched_io;

/* Moves sched_run_io requests from the inbox onto the work queue. */
static void queue_io(sched *s)
{
    pthread_mutex_lock(&s->mu);
    sched_io *x = NULL, *in = s->io_inbox;
    s->io_inbox = NULL;
    pthread_mutex_unlock(&s->mu);
    while (in) { /* the inbox is newest first: reverse, to run in arrival order */
        sched_io *n = in->next;
        in->next = x;
        x = in;
        in = n;
    }
    while (x) {
        sched_io *next = x->next;
        srv_error e;
        if (!s->io || sio_call(s->io, x->work, x->done, x->arg, &e) != SRV_OK) {
            x->work(x->arg); /* never lose the request: run it here instead */
            x->done(x->arg);
        }
        free(x);
        x = next;
    }
}

srv_status sched_run_io(sched *s, void (*work)(void *arg), void (*done)(void *arg), void *arg)
{
    if (atomic_load(&s->stopping)) return SRV_ERR_SHUTTING_DOWN;
    sched_io *x = calloc(1, sizeof *x);
    if (!x) return SRV_ERR_NOMEM;
    x->work = work;
    x->done = done;
    x->arg = arg;
    pthread_mutex_lock(&s->mu);
    x->next = s->io_inbox;
    s->io_inbox = x;
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
    return SRV_OK;
}

static void wake_cb(uv_async_t *h)
{
    sched *s = h->data;
    queue_io(s);
    admit(s);
    update_idle(s);
    maybe_close(s);
}

/* Periodic: deadlines and disconnects of queued jobs, paused streams whose
 * client read (or left), sessions freed by the HTTP side (export), and the
 * stop request when nothing else wakes us. */
static void tick_cb(uv_timer_t *h)
{
    sched *s = h->data;
    check_paused(s);
    store_tick(s);
    admit(s);
    update_idle(s);
    maybe_close(s);
}

/* ======================================================================== */
/* Setup and teardown                                                        */
/* ======================================================================== */

static int init_slot(sched *s, slot *sl)
{
    size_t V = (size_t)s->V;
    sl->owner = s;
    sl->ctx = ms_ctx_new(s->rt.model, s->cfg->prefill_chunk);
    ms_sampler_params dp = ms_sampler_defaults();
    sl->sampler = rt_sampler_new(&s->rt, &dp);
    sl->logits = malloc(V * sizeof(float));
    sl->fork_logits = malloc(V * sizeof(float));
    sl->own = ms_state_new(s->rt.model);
    sl->fork = ms_state_new(s->rt.model);
    sl->cap_toks = 4096;
    sl->toks = malloc(sl->cap_toks * sizeof(int32_t));
    sl->mask = malloc((V + 63) / 64 * sizeof(uint64_t));
    sl->raw = malloc(V * sizeof(float));
    if (!sl->ctx || !sl->sampler || !sl->logits || !sl->fork_logits || !sl->own || !sl->fork ||
        !sl->toks || !sl->mask || !sl->raw)
        return -1;
    return 0;
}

static void free_slot_mem(slot *sl)
{
    ms_ctx_free(sl->ctx);
    ms_sampler_free(sl->sampler);
    free(sl->logits);
    free(sl->fork_logits);
    ms_state_free(sl->own);
    ms_state_free(sl->fork);
    free(sl->toks);
    free(sl->mask);
    free(sl->raw);
    ms_gmatch_free(sl->gm);
    free(sl->echo_logits);
    sse_stop_free(sl->stop);
}

static int load_all(sched *s, char *msg, size_t cap)
{
    const srv_config *c = s->cfg;
    rt_opts o = {.model_path = c->model_path, .vocab_path = c->vocab_path, .threads = c->threads,
                 .weights = c->weights, .compute = c->compute, .init_states = c->init_states,
                 .n_init_states = c->n_init_states, .log_prefix = "metastate serve"};
    srv_error e;
    if (rt_load(&s->rt, &o, &e) != SRV_OK) {
        snprintf(msg, cap, "%s", e.msg);
        return -1;
    }
    s->V = s->rt.V;
    s->pool = pool_new(s->rt.model, c->pool_bytes, c->state_dir, c->max_sessions, c->parallel,
                       s->rt.init_names, s->rt.n_init);
    s->io = s->pool ? sio_new(&s->loop, s->pool, io_wake, s) : NULL;
    if (!s->io) {
        snprintf(msg, cap, "out of memory");
        return -1;
    }
    char err[512];
    s->store = sstore_new(c, s->pool, s->rt.model, s->rt.init_names, s->rt.n_init, err, sizeof err);
    if (!s->store) {
        snprintf(msg, cap, "%s", err);
        return -1;
    }
    s->shared = sstore_shared(s->store);
    if (s->shared)
        fprintf(stderr, "metastate serve: sessions in the state store %s (lease %ld ms)\n",
                c->state_store, sstore_lease_ms(s->store));
    int n = pool_scan(s->pool, err, sizeof err);
    if (n < 0) {
        snprintf(msg, cap, "%s", err);
        return -1;
    }
    if (c->state_dir)
        fprintf(stderr, "metastate serve: %d session file(s) in %s\n", n, c->state_dir);
    s->slots = calloc((size_t)c->parallel, sizeof *s->slots);
    if (!s->slots) {
        snprintf(msg, cap, "out of memory");
        return -1;
    }
    s->n_slots = c->parallel;
    for (int i = 0; i < s->n_slots; i++)
        if (init_slot(s, &s->slots[i])) {
            snprintf(msg, cap, "out of memory allocating %d sequence slots", s->n_slots);
            return -1;
        }
    /* One context for the batched step: every slot's token and a prompt chunk. */
    s->batch_ctx = ms_ctx_new(s->rt.model, s->n_slots + s->cfg->prefill_chunk);
    s->draw_slot = calloc((size_t)s->n_slots, sizeof *s->draw_slot);
    s->pre_slot = calloc((size_t)s->n_slots, sizeof *s->pre_slot);
    s->draw_sampler = calloc((size_t)s->n_slots, sizeof *s->draw_sampler);
    s->draw_logits = calloc((size_t)s->n_slots, sizeof *s->draw_logits);
    s->draw_tok = calloc((size_t)s->n_slots, sizeof *s->draw_tok);
    s->feed_slot = calloc((size_t)s->n_slots, sizeof *s->feed_slot);
    s->feed_state = calloc((size_t)s->n_slots, sizeof *s->feed_state);
    s->feed_tok = calloc((size_t)s->n_slots, sizeof *s->feed_tok);
    s->feed_logits = calloc((size_t)s->n_slots, sizeof *s->feed_logits);
    s->vocab_index = ms_vocab_index_new(s->rt.tok, s->V);
    if (!s->batch_ctx || !s->feed_slot || !s->feed_state || !s->feed_tok || !s->feed_logits ||
        !s->draw_slot || !s->pre_slot || !s->draw_sampler || !s->draw_logits || !s->draw_tok ||
        !s->vocab_index) {
        snprintf(msg, cap, "out of memory allocating the batch step");
        return -1;
    }
    metrics_set(MET_G_SLOTS, s->n_slots);
    return 0;
}

static void *thread_main(void *arg)
{
    sched *s = arg;
    char msg[700];
    if (load_all(s, msg, sizeof msg)) {
        /* Nothing to serve; the loop idles until sched_stop. */
        if (s->on_fatal) s->on_fatal(s->fatal_ud, msg);
    } else {
        atomic_store(&s->ready, 1);
        metrics_set(MET_G_LOADED, 1);
        s->refill = 1;
        update_idle(s);
    }
    uv_timer_start(&s->tick, tick_cb, TICK_MS, TICK_MS);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

sched *sched_start(const srv_config *cfg, void (*on_fatal)(void *, const char *), void *ud)
{
    sched *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->cfg = cfg;
    s->on_fatal = on_fatal;
    s->fatal_ud = ud;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (uv_loop_init(&s->loop)) {
        free(s);
        return NULL;
    }
    uv_async_init(&s->loop, &s->wake, wake_cb);
    uv_idle_init(&s->loop, &s->idle);
    uv_timer_init(&s->loop, &s->tick);
    s->wake.data = s->idle.data = s->tick.data = s;
    if (pthread_create(&s->thread, NULL, thread_main, s)) {
        uv_close((uv_handle_t *)&s->wake, NULL);
        uv_close((uv_handle_t *)&s->idle, NULL);
        uv_close((uv_handle_t *)&s->tick, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        free(s);
        return NULL;
    }
    s->thread_started = 1;
    return s;
}

int sched_ready(const sched *s) { return atomic_load(&s->ready); }
sess_pool *sched_pool(sched *s) { return s->pool; }
const ms_model *sched_model(const sched *s) { return s->rt.model; }
const ms_tokenizer *sched_tokenizer(const sched *s) { return s->rt.tok; }
sstore *sched_store(sched *s) { return s->store; }

srv_status sched_submit(sched *s, sched_job *j)
{
    if (!atomic_load(&s->ready)) return SRV_ERR_LOADING;
    if (atomic_load(&s->draining) || atomic_load(&s->stopping)) return SRV_ERR_SHUTTING_DOWN;
    pthread_mutex_lock(&s->mu);
    if (s->n_queued + s->n_running >= s->n_slots + s->cfg->queue) {
        pthread_mutex_unlock(&s->mu);
        metrics_add(MET_C_REJECTED_429, 1);
        return SRV_ERR_QUEUE_FULL;
    }
    j->next = NULL;
    j->retry_at = 0;
    if (s->inbox_tail) s->inbox_tail->next = j;
    else s->inbox_head = j;
    s->inbox_tail = j;
    s->n_queued++;
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
    return SRV_OK;
}

void sched_drain(sched *s, double timeout_s)
{
    atomic_store(&s->draining, 1);
    double end = sched_now() + timeout_s;
    pthread_mutex_lock(&s->mu);
    while (s->n_queued + s->n_running > 0) {
        if (sched_now() >= end && !atomic_load(&s->cancel_all)) {
            fprintf(stderr, "metastate serve: drain timeout: cancelling %d request(s)\n",
                    s->n_queued + s->n_running);
            atomic_store(&s->cancel_all, 1);
            uv_async_send(&s->wake);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
}

void sched_stop(sched *s)
{
    if (!s) return;
    atomic_store(&s->stopping, 1);
    if (s->thread_started) {
        uv_async_send(&s->wake);
        pthread_join(s->thread, NULL);
    }
    uv_loop_close(&s->loop);
    if (s->pool) {
        int failed = pool_persist_all(s->pool);
        if (s->cfg->state_dir)
            fprintf(stderr, "metastate serve: sessions persisted to %s%s\n", s->cfg->state_dir,
                    failed ? " (some failed, see above)" : "");
    }
    for (int i = 0; i < s->n_slots; i++) free_slot_mem(&s->slots[i]);
    free(s->slots);
    ms_ctx_free(s->batch_ctx);
    free(s->draw_slot);
    free(s->draw_sampler);
    free(s->pre_slot);
    free(s->draw_logits);
    free(s->draw_tok);
    free(s->feed_slot);
    free(s->feed_state);
    free(s->feed_tok);
    free(s->feed_logits);
    ms_vocab_index_free(s->vocab_index);
    sio_free(s->io);
    sstore_free(s->store);
    pool_free(s->pool);
    rt_free(&s->rt);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
