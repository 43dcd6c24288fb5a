/*
 * runtime.c - loading the model, vocabulary and initial states, and the
 * sampler tables both `serve` and `generate` draw with.
 */
#include "runtime.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Ids the sampler must never draw: beyond the vocabulary, or without bytes
 * (end-of-text, id 0, stays drawable: it ends a completion). Also marks the
 * penalty-exempt ids (runs of spaces, tabs, digits, as pip's PIPELINE). */
static int build_tables(srv_runtime *rt)
{
    rt->base_bias = calloc((size_t)rt->V, sizeof(float));
    rt->exempt = calloc((size_t)rt->V, 1);
    if (!rt->base_bias || !rt->exempt) return -1;
    int32_t n_ids = ms_tokenizer_n_ids(rt->tok);
    static const char exempt_chars[] = " \t0123456789";
    for (int32_t id = 0; id < rt->V; id++) {
        size_t len = 0;
        const char *b = id < n_ids ? ms_token_bytes(rt->tok, id, &len) : NULL;
        if (id > 0 && (!b || !len)) rt->base_bias[id] = -INFINITY;
        if (b && len && memmem(exempt_chars, sizeof exempt_chars - 1, b, len)) rt->exempt[id] = 1;
    }
    return 0;
}

srv_status rt_load(srv_runtime *rt, const rt_opts *o, srv_error *err)
{
    memset(rt, 0, sizeof *rt);
    ms_error e = {0};
    if (o->vocab_path) {
        if (ms_tokenizer_load(o->vocab_path, &rt->tok, &e) != MS_OK)
            return srv_fail(err, e.code == MS_ERR_NOMEM ? SRV_ERR_NOMEM : SRV_ERR_IO,
                            "cannot load vocabulary: %s", e.msg);
    } else if (!(rt->tok = ms_tokenizer_new_bytes())) {
        return srv_fail(err, SRV_ERR_NOMEM, "out of memory");
    }
    double t0 = now_s();
    ms_load_opts lo = {.n_threads = o->threads, .weights = (ms_weights)o->weights,
                       .compute = (ms_compute)o->compute};
    if (ms_model_load(o->model_path, &lo, &rt->model, &e) != MS_OK)
        return srv_fail(err, e.code == MS_ERR_NOMEM ? SRV_ERR_NOMEM : SRV_ERR_IO,
                        "cannot load model: %s", e.msg);
    rt->mc = ms_model_config(rt->model);
    rt->V = rt->mc->vocab_size;
    if (o->log_prefix)
        fprintf(stderr, "%s: loaded %s (L=%d C=%d V=%d%s, %.1f MiB of weights) in %.2f s\n",
                o->log_prefix, o->model_path, rt->mc->n_layer, rt->mc->n_embd, rt->mc->vocab_size,
                rt->mc->meta_state ? ", meta-state" : "",
                (double)ms_model_weight_bytes(rt->model) / (1024.0 * 1024.0), now_s() - t0);
    if (build_tables(rt)) return srv_fail(err, SRV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < o->n_init_states && i < SRV_MAX_INIT_STATES; i++) {
        const srv_init_state *is = &o->init_states[i];
        ms_tensorfile *tf = NULL;
        ms_state *st = ms_state_new(rt->model);
        if (!st) return srv_fail(err, SRV_ERR_NOMEM, "out of memory");
        rt->init[rt->n_init] = st; /* owned from here, freed by rt_free */
        rt->init_names[rt->n_init++] = is->name;
        if (ms_tensorfile_open(is->path, &tf, &e) != MS_OK ||
            ms_state_load_time_state(st, tf, &e) != MS_OK) {
            ms_tensorfile_close(tf);
            return srv_fail(err, SRV_ERR_IO, "cannot load initial state '%s': %s", is->name, e.msg);
        }
        ms_tensorfile_close(tf);
        if (o->log_prefix)
            fprintf(stderr, "%s: initial state '%s' from %s\n", o->log_prefix, is->name, is->path);
    }
    return SRV_OK;
}

void rt_free(srv_runtime *rt)
{
    for (int i = 0; i < rt->n_init; i++) ms_state_free(rt->init[i]);
    free(rt->base_bias);
    free(rt->exempt);
    ms_model_free(rt->model);
    ms_tokenizer_free(rt->tok);
    memset(rt, 0, sizeof *rt);
}

const ms_state *rt_init_state(const srv_runtime *rt, const char *name)
{
    if (!name || !*name) return NULL;
    for (int i = 0; i < rt->n_init; i++)
        if (!strcmp(rt->init_names[i], name)) return rt->init[i];
    return NULL;
}

ms_sampler *rt_sampler_new(const srv_runtime *rt, const ms_sampler_params *p)
{
    ms_sampler *s = ms_sampler_new(rt->V, p);
    if (!s) return NULL;
    for (int32_t id = 0; id < rt->V; id++) {
        if (rt->base_bias[id] != 0) ms_sampler_set_bias(s, id, rt->base_bias[id]);
        if (rt->exempt[id]) ms_sampler_set_exempt(s, id);
    }
    return s;
}

void rt_sampler_unbias(const srv_runtime *rt, ms_sampler *s, int32_t id)
{
    if (id >= 0 && id < rt->V) ms_sampler_set_bias(s, id, rt->base_bias[id]);
}
