/*
 * state.c - the recurrent state of one sequence: L * C * (N + 2) floats in
 * the canonical layout of SPEC 4.1/1.4, one allocation, whatever the length
 * of the sequence.
 */
#include "model.h"

#include <stdlib.h>
#include <string.h>

struct ms_state {
    int n_layer, n_embd, n_head, head_size;
    size_t per_layer; /* C * (N + 2) */
    float *data;
};

size_t ms_state_bytes(const ms_model *m)
{
    const ms_config *c = &m->cfg;
    return (size_t)c->n_layer * (size_t)c->n_embd * (size_t)(c->head_size + 2) * sizeof(float);
}

ms_state *ms_state_new(const ms_model *m)
{
    const ms_config *c = &m->cfg;
    ms_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->n_layer = c->n_layer;
    s->n_embd = c->n_embd;
    s->n_head = c->n_head;
    s->head_size = c->head_size;
    s->per_layer = (size_t)c->n_embd * (size_t)(c->head_size + 2);
    size_t bytes = ((s->per_layer * (size_t)c->n_layer * sizeof(float)) + 63) & ~(size_t)63;
    s->data = aligned_alloc(64, bytes);
    if (!s->data) {
        free(s);
        return NULL;
    }
    memset(s->data, 0, bytes);
    return s;
}

void ms_state_free(ms_state *s)
{
    if (!s)
        return;
    free(s->data);
    free(s);
}

size_t ms_state_nfloats(const ms_state *s) { return s->per_layer * (size_t)s->n_layer; }
void ms_state_reset(ms_state *s) { memset(s->data, 0, ms_state_nfloats(s) * sizeof(float)); }
float *ms_state_data(ms_state *s) { return s->data; }
const float *ms_state_cdata(const ms_state *s) { return s->data; }

void ms_state_copy(ms_state *dst, const ms_state *src)
{
    memcpy(dst->data, src->data, ms_state_nfloats(src) * sizeof(float));
}

float *ms_state_att_shift(ms_state *s, int l) { return s->data + (size_t)l * s->per_layer; }

float *ms_state_wkv(ms_state *s, int l)
{
    return s->data + (size_t)l * s->per_layer + (size_t)s->n_embd;
}

float *ms_state_ffn_shift(ms_state *s, int l)
{
    return s->data + (size_t)(l + 1) * s->per_layer - (size_t)s->n_embd;
}

/* The three parts of layer l, with their names and shapes. */
typedef struct {
    const char *suffix;
    int ndim;
    int64_t shape[3];
} part;

static void parts(const ms_state *s, part out[3])
{
    out[0] = (part){"att_x_prev", 1, {s->n_embd}};
    out[1] = (part){"att_kv", 3, {s->n_head, s->head_size, s->head_size}};
    out[2] = (part){"ffn_x_prev", 1, {s->n_embd}};
}

static float *part_ptr(ms_state *s, int l, int p)
{
    return p == 0 ? ms_state_att_shift(s, l) : p == 1 ? ms_state_wkv(s, l) : ms_state_ffn_shift(s, l);
}

ms_status ms_state_load_tensors(ms_state *s, const ms_tensorfile *tf, const char *prefix,
                                ms_error *err)
{
    part ps[3];
    parts(s, ps);
    char name[160];
    /* Validate everything first so a bad file leaves s untouched. */
    for (int pass = 0; pass < 2; pass++)
        for (int l = 0; l < s->n_layer; l++)
            for (int p = 0; p < 3; p++) {
                snprintf(name, sizeof name, "%s%d.%s", prefix, l, ps[p].suffix);
                const ms_tensor *t = ms_tensorfile_find(tf, name);
                if (pass == 1) {
                    ms_tensor_to_f32(t, part_ptr(s, l, p));
                    continue;
                }
                if (!t)
                    return ms_fail(err, MS_ERR_MISSING, "%s: missing state tensor '%s'",
                                   ms_tensorfile_path(tf), name);
                int ok = t->ndim == ps[p].ndim;
                for (int d = 0; ok && d < t->ndim; d++)
                    ok = t->shape[d] == ps[p].shape[d];
                if (!ok)
                    return ms_fail(err, MS_ERR_MISMATCH,
                                   "%s: state tensor '%s' does not fit this model "
                                   "(expected %d elements in %d dims)",
                                   ms_tensorfile_path(tf), name,
                                   (int)(ps[p].shape[0] * (ps[p].ndim == 3 ? ps[p].shape[1] * ps[p].shape[2] : 1)),
                                   ps[p].ndim);
            }
    return MS_OK;
}

ms_status ms_state_write_safetensors(FILE *f, const ms_state *s, const ms_tensor *extra,
                                     size_t n_extra, ms_error *err)
{
    size_t n = n_extra + 3 * (size_t)s->n_layer;
    ms_tensor *t = calloc(n, sizeof *t);
    char *names = calloc(3 * (size_t)s->n_layer, 48);
    if (!t || !names) {
        free(t);
        free(names);
        return ms_fail(err, MS_ERR_NOMEM, "out of memory writing a state");
    }
    if (n_extra)
        memcpy(t, extra, n_extra * sizeof *t);
    part ps[3];
    parts(s, ps);
    for (int l = 0; l < s->n_layer; l++)
        for (int p = 0; p < 3; p++) {
            size_t i = (size_t)l * 3 + (size_t)p;
            char *nm = names + i * 48;
            snprintf(nm, 48, "state.%d.%s", l, ps[p].suffix);
            ms_tensor *o = &t[n_extra + i];
            o->name = nm;
            o->dtype = MS_F32;
            o->ndim = ps[p].ndim;
            memcpy(o->shape, ps[p].shape, sizeof ps[p].shape);
            o->data = part_ptr((ms_state *)s, l, p);
            o->nbytes = (size_t)ms_tensor_numel(o) * sizeof(float);
        }
    ms_status st = ms_safetensors_write(f, t, n, NULL, err);
    free(t);
    free(names);
    return st;
}

/* 1 when name is "blocks.<digits>.att.time_state" (any layer number). */
static int is_time_state(const char *name)
{
    static const char pre[] = "blocks.", suf[] = ".att.time_state";
    if (strncmp(name, pre, sizeof pre - 1)) return 0;
    const char *p = name + sizeof pre - 1;
    if (*p < '0' || *p > '9') return 0;
    while (*p >= '0' && *p <= '9') p++;
    return !strcmp(p, suf);
}

/* "(a, b, c)" for messages. */
static void shape_str(const ms_tensor *t, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "(");
    for (int d = 0; d < t->ndim && o < cap; d++)
        o += (size_t)snprintf(out + o, cap - o, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (o < cap) snprintf(out + o, cap - o, ")");
}

ms_status ms_state_load_time_state(ms_state *s, const ms_tensorfile *tf, ms_error *err)
{
    const char *path = ms_tensorfile_path(tf);
    const int64_t C = s->n_embd, N = s->head_size;
    /* Count first: a state tuned for a deeper or shallower model is the
     * common mistake, and "made for N layers" says so better than the
     * first missing or surplus tensor would. */
    size_t n_ts = 0;
    for (size_t i = 0; i < ms_tensorfile_count(tf); i++)
        n_ts += (size_t)is_time_state(ms_tensorfile_at(tf, i)->name);
    if (n_ts == 0)
        return ms_fail(err, MS_ERR_MISSING,
                       "%s: no 'blocks.<i>.att.time_state' tensor: not a state-tuning file", path);
    if (n_ts != (size_t)s->n_layer)
        return ms_fail(err, MS_ERR_MISMATCH,
                       "%s: state has time_state for %zu layers, the model has %d layers", path,
                       n_ts, s->n_layer);
    /* Validate every tensor before writing anything, so a bad file leaves s
     * untouched. The shifts accept any shape of C elements: trainers keep
     * them as (C) or (1, 1, C). */
    char name[96], shp[96];
    for (int l = 0; l < s->n_layer; l++) {
        snprintf(name, sizeof name, "blocks.%d.att.time_state", l);
        const ms_tensor *t = ms_tensorfile_find(tf, name);
        if (!t)
            return ms_fail(err, MS_ERR_MISSING, "%s: missing state tensor '%s'", path, name);
        if (t->ndim != 3 || t->shape[0] * t->shape[1] != C || t->shape[1] != N || t->shape[2] != N) {
            shape_str(t, shp, sizeof shp);
            return ms_fail(err, MS_ERR_SHAPE,
                           "%s: state tensor '%s' has shape %s, the model needs (%d, %lld, %lld)",
                           path, name, shp, s->n_head, (long long)N, (long long)N);
        }
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof name, "blocks.%d.%s.ts_state", l, k ? "ffn" : "att");
            t = ms_tensorfile_find(tf, name);
            if (t && ms_tensor_numel(t) != C) {
                shape_str(t, shp, sizeof shp);
                return ms_fail(err, MS_ERR_SHAPE,
                               "%s: state tensor '%s' has shape %s, the model needs (%lld)", path,
                               name, shp, (long long)C);
            }
        }
    }
    ms_state_reset(s);
    for (int l = 0; l < s->n_layer; l++) {
        snprintf(name, sizeof name, "blocks.%d.att.time_state", l);
        ms_tensor_to_f32(ms_tensorfile_find(tf, name), ms_state_wkv(s, l));
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof name, "blocks.%d.%s.ts_state", l, k ? "ffn" : "att");
            const ms_tensor *t = ms_tensorfile_find(tf, name);
            if (t) ms_tensor_to_f32(t, k ? ms_state_ffn_shift(s, l) : ms_state_att_shift(s, l));
        }
    }
    return MS_OK;
}
