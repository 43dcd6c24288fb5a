/*
 * expand.c - Meta-State progressive scaling (SPEC 3.4) as a checkpoint
 * transform, exact by construction:
 *
 *  S1 parameter tokens: every layer's channel-mix gets N more rows in
 *     ffn.key.weight (zero, or random scaled to the RMS of the existing rows
 *     so training can move them) and N zero columns in ffn.value.weight;
 *     a zero value column means the new rows contribute nothing.
 *  S2 SSE heads: the named heads join the layer's Self-State Encoder with
 *     gain 0 (ms_gamma is created, zero, when the layer has none), so the
 *     function is unchanged until training moves the gains.
 *
 * Neither changes the state's shape, so session states stay valid: the
 * output lists its ancestors' fingerprints in the "ms_ancestors" metadata,
 * which model.c reads back (ms_model_state_compatible).
 */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>

#include "internal.h"

static size_t esize(ms_dtype d) { return d == MS_F32 ? 4 : 2; }

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Writes f as one element of dtype d at dst. */
static void put(void *dst, ms_dtype d, float f)
{
    if (d == MS_F32) {
        memcpy(dst, &f, 4);
        return;
    }
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t h;
    if (d == MS_BF16) {
        h = ms_bf16_from_f32(f);
    } else { /* F16, for finite values of modest size: what a key row holds */
        uint32_t sign = (u >> 16) & 0x8000;
        int e = (int)((u >> 23) & 0xff) - 127 + 15;
        uint32_t mant = u & 0x7fffff;
        if (e <= 0)
            h = (uint16_t)sign;
        else if (e >= 31)
            h = (uint16_t)(sign | 0x7bff);
        else {
            uint32_t r = (uint32_t)e << 10 | mant >> 13;
            r += ((mant >> 12) & 1) && ((mant & 0x2fff) != 0); /* round to nearest even */
            h = (uint16_t)(sign | r);
        }
    }
    memcpy(dst, &h, 2);
}

ms_status ms_expand(const char *in, const char *out, const ms_expand_opts *o, ms_error *err)
{
    ms_status st = MS_OK;
    ms_model *m = NULL;
    ms_tensorfile *tf = NULL;
    ms_tensor *t = NULL;
    void **owned = NULL;
    char **names = NULL;
    const ms_sse_head *adds = o->sse_heads;
    const size_t n_adds = o->n_sse_heads;
    const int64_t add_tokens = o->add_param_tokens;
    uint64_t seed = o->seed;
    size_t n = 0, n_out = 0;
    FILE *f = NULL;
    char *ancestors = NULL;

    if (add_tokens < 0 || add_tokens > (1 << 20))
        return ms_fail(err, MS_ERR_INVALID, "parameter tokens: %lld is outside 0..%d",
                       (long long)add_tokens, 1 << 20);
    if ((st = ms_model_load(in, NULL, &m, err)) || (st = ms_tensorfile_open(in, &tf, err)))
        goto done;
    const ms_config *cfg = ms_model_config(m);
    for (size_t a = 0; a < n_adds; a++)
        if (adds[a].layer < 0 || adds[a].layer >= cfg->n_layer || adds[a].head < 0 ||
            adds[a].head >= cfg->n_head) {
            st = ms_fail(err, MS_ERR_INVALID,
                         "SSE head %d of layer %d: the model has layers below %d and heads "
                         "below %d", adds[a].head, adds[a].layer, cfg->n_layer, cfg->n_head);
            goto done;
        }
    n = ms_tensorfile_count(tf);
    t = calloc(n + (size_t)cfg->n_layer, sizeof *t);
    owned = calloc(n + (size_t)cfg->n_layer, sizeof *owned);
    names = calloc((size_t)cfg->n_layer, sizeof *names);
    if (!t || !owned || !names)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        const ms_tensor *src = ms_tensorfile_at(tf, i);
        ms_tensor *d = &t[n_out++];
        *d = *src;
        int layer = -1;
        char kind[64] = "";
        if (sscanf(src->name, "blocks.%d.ffn.%63s", &layer, kind) != 2 || !add_tokens)
            continue;
        const size_t es = esize(src->dtype);
        if (!strcmp(kind, "key.weight")) { /* (F, C) -> (F + n, C): append rows */
            const int64_t F = src->shape[0], C = src->shape[1];
            uint8_t *buf = malloc((size_t)(F + add_tokens) * (size_t)C * es);
            if (!buf)
                goto oom;
            owned[i] = buf;
            memcpy(buf, src->data, src->nbytes);
            double rms = 0;
            if (o->key_init_random) {
                float *all = malloc((size_t)(F * C) * sizeof *all);
                if (!all)
                    goto oom;
                ms_tensor_to_f32(src, all);
                for (int64_t q = 0; q < F * C; q++)
                    rms += (double)all[q] * all[q];
                rms = sqrt(rms / (double)(F * C));
                free(all);
            }
            for (int64_t q = 0; q < add_tokens * C; q++) {
                float v = 0.0f;
                if (rms > 0) { /* Box-Muller, one of the pair */
                    double u1 = ((rng_next(&seed) >> 11) + 0.5) / 9007199254740992.0;
                    double u2 = ((rng_next(&seed) >> 11) + 0.5) / 9007199254740992.0;
                    v = (float)(rms * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
                }
                put(buf + (size_t)(F * C + q) * es, src->dtype, v);
            }
            d->shape[0] = F + add_tokens;
            d->data = buf;
            d->nbytes = (size_t)(F + add_tokens) * (size_t)C * es;
        } else if (!strcmp(kind, "value.weight")) { /* (C, F) -> (C, F + n): zero columns */
            const int64_t C = src->shape[0], F = src->shape[1], F2 = F + add_tokens;
            uint8_t *buf = calloc((size_t)(C * F2), es);
            if (!buf)
                goto oom;
            owned[i] = buf;
            for (int64_t r = 0; r < C; r++)
                memcpy(buf + (size_t)(r * F2) * es, (const uint8_t *)src->data + (size_t)(r * F) * es,
                       (size_t)F * es);
            d->shape[1] = F2;
            d->data = buf;
            d->nbytes = (size_t)(C * F2) * es;
        }
    }
    /* S2: a zero ms_gamma for layers that get SSE heads but have none. */
    for (size_t a = 0; a < n_adds; a++) {
        const int l = adds[a].layer;
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.ffn.ms_gamma", l);
        int present = ms_tensorfile_find(tf, name) != NULL;
        for (size_t i = n; i < n_out && !present; i++)
            present = !strcmp(t[i].name, name);
        if (present)
            continue;
        names[l] = strdup(name);
        void *zeros = calloc((size_t)cfg->n_embd, sizeof(float));
        if (!names[l] || !zeros) {
            free(zeros);
            goto oom;
        }
        owned[n_out] = zeros;
        t[n_out++] = (ms_tensor){.name = names[l], .dtype = MS_F32, .ndim = 1,
                                 .shape = {cfg->n_embd}, .data = zeros,
                                 .nbytes = (size_t)cfg->n_embd * sizeof(float)};
    }

    /* Metadata: the parent's own metadata is not carried over, except its
     * ancestry, to which the parent itself is appended. */
    const char *prev = ms_tensorfile_meta(tf, "ms_ancestors");
    size_t prev_len = prev ? strlen(prev) : 0;
    ancestors = malloc(prev_len + 66);
    if (!ancestors)
        goto oom;
    char *w = ancestors;
    if (prev_len) {
        memcpy(w, prev, prev_len);
        w += prev_len;
        *w++ = ',';
    }
    for (int i = 0; i < 32; i++)
        w += sprintf(w, "%02x", ms_model_fingerprint(m)[i]);
    char sse_meta[512] = "", tok_meta[32];
    snprintf(tok_meta, sizeof tok_meta, "%lld", (long long)add_tokens);
    for (size_t a = 0; a < n_adds; a++)
        snprintf(sse_meta + strlen(sse_meta), sizeof sse_meta - strlen(sse_meta), "%s%d:%d",
                 a ? "," : "", adds[a].layer, adds[a].head);
    const int is_ms = cfg->meta_state || n_adds;
    const char *meta[] = {"format", "pt",
                          "generator", "metastate expand",
                          "ms_ancestors", ancestors,
                          "ms_added_param_tokens", tok_meta,
                          "ms_trainable_sse_heads", sse_meta,
                          is_ms ? "meta_state" : NULL, "ms-v0",
                          NULL};
    if (!(f = fopen(out, "wb"))) {
        st = ms_fail(err, MS_ERR_IO, "%s: cannot create: %s", out, strerror(errno));
        goto done;
    }
    if ((st = ms_safetensors_write(f, t, n_out, meta, err)))
        goto done;
    if (fclose(f)) {
        f = NULL;
        st = ms_fail(err, MS_ERR_IO, "%s: write failed", out);
        goto done;
    }
    f = NULL;
    goto done;
oom:
    st = ms_fail(err, MS_ERR_NOMEM, "out of memory");
done:
    if (f)
        fclose(f);
    for (size_t i = 0; owned && i < n + (size_t)(m ? ms_model_config(m)->n_layer : 0); i++)
        free(owned[i]);
    for (int l = 0; names && m && l < ms_model_config(m)->n_layer; l++)
        free(names[l]);
    free(owned);
    free(names);
    free(t);
    free(ancestors);
    ms_tensorfile_close(tf);
    ms_model_free(m);
    return st;
}
