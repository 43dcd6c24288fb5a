/*
 * runtime.h - everything generation needs loaded, for `serve` and
 * `generate` alike: the model, the tokenizer, the named initial states and
 * the sampler tables derived from the vocabulary (banned and penalty-exempt
 * ids). Both commands build their samplers with rt_sampler_new, so the same
 * seed and parameters draw the same tokens in both.
 *
 * Loaded once by one thread; read-only afterwards, so any thread may read
 * it. Freed by rt_free (after every ctx, state and sampler made from it).
 */
#ifndef METASTATE_SERVER_RUNTIME_H
#define METASTATE_SERVER_RUNTIME_H

#include <stdint.h>

#include "config.h"
#include "engine.h"
#include "status.h"

/* Prompt tokens per forward chunk when the caller does not choose: the
 * serve default (--prefill-chunk), which generate uses too. */
#define RT_PREFILL_CHUNK 128

typedef struct rt_opts {
    const char *model_path;           /* required */
    const char *vocab_path;           /* NULL = byte-level vocabulary */
    int threads;                      /* engine threads, 0 = one per core */
    int weights;                      /* ms_weights */
    int compute;                      /* ms_compute */
    const srv_init_state *init_states; /* n_init_states named state files (may be NULL) */
    int n_init_states;
    const char *log_prefix;           /* progress lines to stderr ("metastate serve"); NULL = quiet */
} rt_opts;

typedef struct srv_runtime {
    ms_model *model;
    ms_tokenizer *tok;
    const ms_config *mc;
    int32_t V;          /* the model's vocabulary rows */
    float *base_bias;   /* (V) -INFINITY for ids never drawn (beyond the vocabulary, or
                           without bytes; end-of-text, id 0, stays drawable), else 0 */
    uint8_t *exempt;    /* (V) 1: drawing it does not grow its penalty (spaces, tabs,
                           digits, as pip's PIPELINE) */
    ms_state *init[SRV_MAX_INIT_STATES]; /* in opts order; names point into opts */
    const char *init_names[SRV_MAX_INIT_STATES];
    int n_init;
} srv_runtime;

/* Loads everything into rt (zeroed first). On failure returns the status
 * with a message in err; rt may hold a part: rt_free it either way. */
srv_status rt_load(srv_runtime *rt, const rt_opts *o, srv_error *err);
/* Frees what rt holds and zeroes it. Accepts a zeroed or partly loaded rt. */
void rt_free(srv_runtime *rt);

/* The initial state called name, or NULL for NULL, "" and unknown names
 * (the zero state). Owned by rt. */
const ms_state *rt_init_state(const srv_runtime *rt, const char *name);

/* A sampler with rt's tables applied (caller frees with ms_sampler_free);
 * NULL on OOM. */
ms_sampler *rt_sampler_new(const srv_runtime *rt, const ms_sampler_params *p);
/* Puts id's bias back to the table's value (after a request's logit_bias
 * or a banned end-of-text). */
void rt_sampler_unbias(const srv_runtime *rt, ms_sampler *s, int32_t id);

#endif
