/*
 * model.c - from a tensor file to an ms_model.
 *
 * Design: the configuration is derived from tensor shapes only (SPEC 1.1),
 * never from metadata or file names, so any released size and any expanded
 * Meta-State checkpoint loads. Loading is two passes over a table of
 * "tensor -> destination" bindings: the first checks every name and shape
 * and sums the sizes, the second widens each tensor to fp32 into a single
 * aligned arena. The file is unmapped by the caller afterwards, so resident
 * memory is the arena plus small change.
 */
#include "model.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LN_EPS 1e-5f

/* ------------------------------------------------------------------------ */
/* Binding table                                                             */

typedef struct binding {
    const ms_tensor *t;
    float **dst;
    size_t numel;
} binding;

typedef struct loader {
    const ms_tensorfile *tf;
    const char *path;
    binding *b;
    size_t n, cap;
    ms_error *err;
} loader;

static ms_status add_binding(loader *ld, const ms_tensor *t, float **dst)
{
    if (ld->n == ld->cap) {
        size_t cap = ld->cap ? ld->cap * 2 : 256;
        binding *nb = realloc(ld->b, cap * sizeof *nb);
        if (!nb)
            return ms_fail(ld->err, MS_ERR_NOMEM, "%s: out of memory", ld->path);
        ld->b = nb;
        ld->cap = cap;
    }
    ld->b[ld->n++] = (binding){t, dst, (size_t)ms_tensor_numel(t)};
    return MS_OK;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < n)
        snprintf(buf + used, n - used, ")");
}

/* Binds tensor `name` of exactly the given shape. A vector of C may also be
 * stored as (1,1,C), the BlinkDL layout; both are accepted. */
static ms_status bind(loader *ld, const char *name, float **dst, int ndim,
                      int64_t d0, int64_t d1)
{
    const ms_tensor *t = ms_tensorfile_find(ld->tf, name);
    if (!t)
        return ms_fail(ld->err, MS_ERR_MISSING, "%s: missing tensor '%s'", ld->path, name);
    int64_t want[2] = {d0, d1};
    int ok;
    if (ndim == 1) {
        ok = ms_tensor_numel(t) == d0 && t->shape[t->ndim - 1] == d0 &&
             (t->ndim == 1 || (t->ndim == 3 && t->shape[0] == 1 && t->shape[1] == 1));
    } else {
        ok = t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1;
    }
    if (!ok) {
        char exp[64], got[96];
        shape_str(exp, sizeof exp, ndim, want);
        shape_str(got, sizeof got, t->ndim, t->shape);
        return ms_fail(ld->err, MS_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s",
                       ld->path, name, got, exp);
    }
    return add_binding(ld, t, dst);
}

/* ------------------------------------------------------------------------ */
/* Shape inference                                                           */

static int starts_with(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

/* Variants that share names with RWKV-7 but compute something else. */
static ms_status reject_variants(const ms_tensorfile *tf, const char *path, ms_error *err)
{
    static const char *const older[] = {"time_maa", "time_faaaa", "time_decay", "time_first",
                                        "time_mix_k"};
    static const char *const x070_exp[] = {"ffn.s_emb", "ffn.s0", "ffn.s1", "ffn.s2"};
    for (size_t i = 0; i < ms_tensorfile_count(tf); i++) {
        const char *n = ms_tensorfile_at(tf, i)->name;
        for (size_t j = 0; j < sizeof older / sizeof older[0]; j++)
            if (strstr(n, older[j]))
                return ms_fail(err, MS_ERR_UNSUPPORTED,
                               "%s: tensor '%s' belongs to RWKV-6 or an earlier version; "
                               "only RWKV-7 (x070) checkpoints are supported",
                               path, n);
        for (size_t j = 0; j < sizeof x070_exp / sizeof x070_exp[0]; j++)
            if (strstr(n, x070_exp[j]))
                return ms_fail(err, MS_ERR_UNSUPPORTED,
                               "%s: tensor '%s' belongs to an experimental RWKV-7 variant "
                               "(DeepEmbed/DEA), which is not supported",
                               path, n);
    }
    return MS_OK;
}

static ms_status derive_config(const ms_tensorfile *tf, const char *path, ms_config *cfg,
                               ms_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    const ms_tensor *emb = ms_tensorfile_find(tf, "emb.weight");
    if (!emb) {
        if (ms_tensorfile_find(tf, "model.embeddings.weight"))
            return ms_fail(err, MS_ERR_UNSUPPORTED,
                           "%s: Hugging Face (fla) tensor names; convert to the BlinkDL names "
                           "(emb.weight, blocks.N.att.*) first",
                           path);
        return ms_fail(err, MS_ERR_MISSING, "%s: missing tensor 'emb.weight' (not an RWKV model?)",
                       path);
    }
    if (emb->ndim != 2 || emb->shape[0] < 1 || emb->shape[1] < 1)
        return ms_fail(err, MS_ERR_SHAPE, "%s: tensor 'emb.weight' must be 2-D (V, C)", path);
    cfg->vocab_size = (int)emb->shape[0];
    cfg->n_embd = (int)emb->shape[1];
    cfg->file_dtype = emb->dtype;

    int max_layer = -1;
    for (size_t i = 0; i < ms_tensorfile_count(tf); i++) {
        const char *n = ms_tensorfile_at(tf, i)->name;
        if (!starts_with(n, "blocks."))
            continue;
        char *end;
        long l = strtol(n + 7, &end, 10);
        if (end == n + 7 || *end != '.' || l < 0 || l > 4096)
            return ms_fail(err, MS_ERR_FORMAT, "%s: bad block tensor name '%s'", path, n);
        if (l > max_layer)
            max_layer = (int)l;
        if (strstr(n, ".ffn.ms_gamma"))
            cfg->meta_state = 1;
    }
    if (max_layer < 0)
        return ms_fail(err, MS_ERR_MISSING, "%s: missing tensor 'blocks.0.att.r_k' (no blocks)",
                       path);
    cfg->n_layer = max_layer + 1;

    const ms_tensor *rk = ms_tensorfile_find(tf, "blocks.0.att.r_k");
    if (!rk)
        return ms_fail(err, MS_ERR_MISSING, "%s: missing tensor 'blocks.0.att.r_k'", path);
    if (rk->ndim != 2 || rk->shape[0] * rk->shape[1] != cfg->n_embd)
        return ms_fail(err, MS_ERR_SHAPE,
                       "%s: tensor 'blocks.0.att.r_k' must be (H, N) with H*N = n_embd %d",
                       path, cfg->n_embd);
    cfg->n_head = (int)rk->shape[0];
    cfg->head_size = (int)rk->shape[1];
    if (cfg->head_size > 256) /* the WKV kernel keeps one head's vectors on the stack */
        return ms_fail(err, MS_ERR_UNSUPPORTED, "%s: head size %d (from 'blocks.0.att.r_k'); "
                       "at most 256 is supported", path, cfg->head_size);

    static const struct { const char *name; size_t off; } ranks[] = {
        {"blocks.0.att.w1", offsetof(ms_config, d_decay)},
        {"blocks.0.att.a1", offsetof(ms_config, d_aaa)},
        {"blocks.0.att.g1", offsetof(ms_config, d_gate)},
        {"blocks.1.att.v1", offsetof(ms_config, d_mv)},
    };
    for (size_t i = 0; i < sizeof ranks / sizeof ranks[0]; i++) {
        if (i == 3 && cfg->n_layer < 2)
            break; /* a one-layer model has no value-residual LoRA */
        const ms_tensor *t = ms_tensorfile_find(tf, ranks[i].name);
        if (!t)
            return ms_fail(err, MS_ERR_MISSING, "%s: missing tensor '%s'", path, ranks[i].name);
        if (t->ndim != 2 || t->shape[0] != cfg->n_embd || t->shape[1] < 1)
            return ms_fail(err, MS_ERR_SHAPE, "%s: tensor '%s' must be (%d, rank)", path,
                           ranks[i].name, cfg->n_embd);
        *(int *)((char *)cfg + ranks[i].off) = (int)t->shape[1];
    }
    return MS_OK;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                   */

static ms_status bind_all(loader *ld, ms_model *m)
{
    const ms_config *c = &m->cfg;
    const int64_t C = c->n_embd, V = c->vocab_size;
    ms_status st;
#define TRY(x)                                                                                   \
    do {                                                                                         \
        if ((st = (x)) != MS_OK)                                                                 \
            return st;                                                                           \
    } while (0)
    char name[128];
#define VEC(field, suffix) (snprintf(name, sizeof name, "blocks.%d." suffix, l), bind(ld, name, &L->field, 1, C, 0))
#define MAT(field, suffix, r, k) (snprintf(name, sizeof name, "blocks.%d." suffix, l), bind(ld, name, &L->field, 2, r, k))

    TRY(bind(ld, "emb.weight", &m->emb, 2, V, C));
    TRY(bind(ld, "ln_out.weight", &m->ln_out_w, 1, C, 0));
    TRY(bind(ld, "ln_out.bias", &m->ln_out_b, 1, C, 0));
    TRY(bind(ld, "head.weight", &m->head, 2, V, C));
    TRY(bind(ld, "blocks.0.ln0.weight", &m->ln0_w, 1, C, 0));
    TRY(bind(ld, "blocks.0.ln0.bias", &m->ln0_b, 1, C, 0));
    for (int l = 0; l < c->n_layer; l++) {
        ms_layer *L = &m->layers[l];
        TRY(VEC(ln1_w, "ln1.weight"));
        TRY(VEC(ln1_b, "ln1.bias"));
        TRY(VEC(ln2_w, "ln2.weight"));
        TRY(VEC(ln2_b, "ln2.bias"));
        TRY(VEC(x_r, "att.x_r"));
        TRY(VEC(x_w, "att.x_w"));
        TRY(VEC(x_k, "att.x_k"));
        TRY(VEC(x_v, "att.x_v"));
        TRY(VEC(x_a, "att.x_a"));
        TRY(VEC(x_g, "att.x_g"));
        TRY(VEC(w0, "att.w0"));
        TRY(MAT(w1, "att.w1", C, c->d_decay));
        TRY(MAT(w2, "att.w2", c->d_decay, C));
        TRY(VEC(a0, "att.a0"));
        TRY(MAT(a1, "att.a1", C, c->d_aaa));
        TRY(MAT(a2, "att.a2", c->d_aaa, C));
        if (l > 0) {
            TRY(VEC(v0, "att.v0"));
            TRY(MAT(v1, "att.v1", C, c->d_mv));
            TRY(MAT(v2, "att.v2", c->d_mv, C));
        }
        TRY(MAT(g1, "att.g1", C, c->d_gate));
        TRY(MAT(g2, "att.g2", c->d_gate, C));
        TRY(VEC(k_k, "att.k_k"));
        TRY(VEC(k_a, "att.k_a"));
        TRY(MAT(r_k, "att.r_k", c->n_head, c->head_size));
        TRY(MAT(wr, "att.receptance.weight", C, C));
        TRY(MAT(wk, "att.key.weight", C, C));
        TRY(MAT(wv, "att.value.weight", C, C));
        TRY(MAT(wo, "att.output.weight", C, C));
        TRY(VEC(lnx_w, "att.ln_x.weight"));
        TRY(VEC(lnx_b, "att.ln_x.bias"));
        TRY(VEC(ffn_x_k, "ffn.x_k"));
        snprintf(name, sizeof name, "blocks.%d.ffn.key.weight", l);
        const ms_tensor *fk = ms_tensorfile_find(ld->tf, name);
        if (!fk)
            return ms_fail(ld->err, MS_ERR_MISSING, "%s: missing tensor '%s'", ld->path, name);
        if (fk->ndim != 2 || fk->shape[1] != C || fk->shape[0] < 1)
            return ms_fail(ld->err, MS_ERR_SHAPE, "%s: tensor '%s' must be (F, %lld)", ld->path,
                           name, (long long)C);
        L->dim_ffn = (int)fk->shape[0];
        if (L->dim_ffn > m->cfg.dim_ffn)
            m->cfg.dim_ffn = L->dim_ffn;
        TRY(MAT(ffn_key, "ffn.key.weight", L->dim_ffn, C));
        TRY(MAT(ffn_value, "ffn.value.weight", C, L->dim_ffn));
        snprintf(name, sizeof name, "blocks.%d.ffn.ms_gamma", l);
        if (ms_tensorfile_find(ld->tf, name))
            TRY(VEC(ms_gamma, "ffn.ms_gamma"));
    }
    return MS_OK;
#undef VEC
#undef MAT
#undef TRY
}

static void layer_norm_row(float *dst, const float *x, const float *w, const float *b, int n)
{
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    float inv = (float)(1.0 / sqrt(var + LN_EPS));
    for (int i = 0; i < n; i++)
        dst[i] = ((float)(x[i] - mean)) * inv * w[i] + b[i];
}

static ms_status fingerprint(const ms_tensorfile *tf, uint8_t out[32], const char *path,
                             ms_error *err)
{
    /* Sorted by name so the container's order (pth vs safetensors) does not
     * matter; the raw bytes and dtype make a bf16 copy a different model. */
    size_t n = ms_tensorfile_count(tf);
    const ms_tensor **v = malloc((n ? n : 1) * sizeof *v);
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    if (!v || !h) {
        free(v);
        EVP_MD_CTX_free(h);
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < n; i++)
        v[i] = ms_tensorfile_at(tf, i);
    for (size_t i = 1; i < n; i++) /* insertion sort: n is a few hundred */
        for (size_t j = i; j > 0 && strcmp(v[j - 1]->name, v[j]->name) > 0; j--) {
            const ms_tensor *t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    EVP_DigestInit_ex(h, EVP_sha256(), NULL);
    for (size_t i = 0; i < n; i++) {
        const ms_tensor *t = v[i];
        int64_t hdr[2 + MS_MAX_DIMS] = {t->dtype, t->ndim};
        for (int d = 0; d < t->ndim; d++)
            hdr[2 + d] = t->shape[d];
        EVP_DigestUpdate(h, t->name, strlen(t->name) + 1);
        EVP_DigestUpdate(h, hdr, sizeof hdr);
        EVP_DigestUpdate(h, t->data, t->nbytes);
    }
    unsigned len = 32;
    EVP_DigestFinal_ex(h, out, &len);
    EVP_MD_CTX_free(h);
    free(v);
    return MS_OK;
}

/* MS-v0 (SPEC 3.3 C2): the heads a layer's Self-State Encoder reads are
 * those with any non-zero gain. Listing them once makes heads with zero gain
 * cost nothing per token. */
static ms_status find_sse_heads(ms_model *m, const char *path, ms_error *err)
{
    const int H = m->cfg.n_head, N = m->cfg.head_size;
    m->sse_heads = malloc((size_t)m->cfg.n_layer * (size_t)H * sizeof *m->sse_heads);
    if (!m->sse_heads)
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        ms_layer *L = &m->layers[l];
        L->sse_head = m->sse_heads + (size_t)l * H;
        L->n_sse = 0;
        for (int h = 0; L->ms_gamma && h < H; h++)
            for (int j = 0; j < N; j++)
                if (L->ms_gamma[h * N + j] != 0.0f) {
                    L->sse_head[L->n_sse++] = h;
                    break;
                }
    }
    return MS_OK;
}

/* "ms_ancestors": comma-separated hex fingerprints written by expand. */
static ms_status read_ancestors(ms_model *m, const ms_tensorfile *tf, const char *path,
                                ms_error *err)
{
    const char *list = ms_tensorfile_meta(tf, "ms_ancestors");
    if (!list || !*list)
        return MS_OK;
    size_t n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    m->ancestors = calloc(n, sizeof *m->ancestors);
    if (!m->ancestors)
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
    for (const char *p = list; *p;) {
        if (strspn(p, "0123456789abcdefABCDEF") < 64)
            return ms_fail(err, MS_ERR_FORMAT, "%s: bad ms_ancestors metadata", path);
        for (int i = 0; i < 32; i++) {
            unsigned byte;
            if (sscanf(p + 2 * i, "%2x", &byte) != 1)
                return ms_fail(err, MS_ERR_FORMAT, "%s: bad ms_ancestors metadata", path);
            m->ancestors[m->n_ancestors][i] = (uint8_t)byte;
        }
        m->n_ancestors++;
        p += 64;
        if (*p == ',')
            p++;
        else if (*p)
            return ms_fail(err, MS_ERR_FORMAT, "%s: bad ms_ancestors metadata", path);
    }
    return MS_OK;
}

int ms_model_state_compatible(const ms_model *m, const uint8_t fp[32])
{
    if (!memcmp(m->fingerprint, fp, 32))
        return 1;
    for (size_t i = 0; i < m->n_ancestors; i++)
        if (!memcmp(m->ancestors[i], fp, 32))
            return 1;
    return 0;
}

ms_status ms_model_from_tensors(const ms_tensorfile *tf, const ms_load_opts *opts,
                                ms_model **out, ms_error *err)
{
    const char *path = ms_tensorfile_path(tf);
    *out = NULL;
    ms_status st = reject_variants(tf, path, err);
    if (st)
        return st;
    ms_model *m = calloc(1, sizeof *m);
    if (!m)
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
    if ((st = derive_config(tf, path, &m->cfg, err)))
        goto fail;
    m->layers = calloc((size_t)m->cfg.n_layer, sizeof *m->layers);
    if (!m->layers) {
        st = ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    loader ld = {.tf = tf, .path = path, .err = err};
    if ((st = bind_all(&ld, m)))
        goto fail_ld;
    size_t total = 0;
    for (size_t i = 0; i < ld.n; i++)
        total += (ld.b[i].numel + 15) & ~(size_t)15; /* keep every tensor 64-byte aligned */
    const size_t C = (size_t)m->cfg.n_embd;
    m->arena = aligned_alloc(64, total * sizeof(float) + 64);
    if (!m->arena) {
        st = ms_fail(err, MS_ERR_NOMEM, "%s: cannot allocate %zu MB for the weights", path,
                     total * sizeof(float) >> 20);
        goto fail_ld;
    }
    m->arena_floats = total;
    for (size_t i = 0, off = 0; i < ld.n; i++) {
        ms_tensor_to_f32(ld.b[i].t, m->arena + off);
        *ld.b[i].dst = m->arena + off;
        off += (ld.b[i].numel + 15) & ~(size_t)15;
    }
    free(ld.b);
    /* Fold ln0 into the embedding, as the official loaders do (exact: it is
     * the same LayerNorm applied per row, done once instead of per token). */
    for (size_t r = 0; r < (size_t)m->cfg.vocab_size; r++) {
        float *row = m->emb + r * C;
        layer_norm_row(row, row, m->ln0_w, m->ln0_b, (int)C);
    }

    if ((st = find_sse_heads(m, path, err)) || (st = read_ancestors(m, tf, path, err)))
        goto fail;
    if ((st = fingerprint(tf, m->fingerprint, path, err)))
        goto fail;
    size_t per_token = (size_t)m->cfg.vocab_size * C + C; /* head + one embedding row */
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const ms_config *c = &m->cfg;
        per_token += 4 * C * C + 2 * C * (size_t)(c->d_decay + c->d_aaa + c->d_gate) +
                     (l ? 2 * C * (size_t)c->d_mv : 0) + 2 * C * (size_t)m->layers[l].dim_ffn;
    }
    m->bytes_per_token = per_token * sizeof(float);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    m->n_threads = opts && opts->n_threads > 0 ? opts->n_threads : (ncpu > 0 ? (int)ncpu : 1);
    *out = m;
    return MS_OK;
fail_ld:
    free(ld.b);
fail:
    ms_model_free(m);
    return st;
}

ms_status ms_model_load(const char *path, const ms_load_opts *opts, ms_model **out,
                        ms_error *err)
{
    ms_tensorfile *tf;
    *out = NULL;
    ms_status st = ms_tensorfile_open(path, &tf, err);
    if (st)
        return st;
    st = ms_model_from_tensors(tf, opts, out, err);
    ms_tensorfile_close(tf);
    return st;
}

void ms_model_free(ms_model *m)
{
    if (!m)
        return;
    free(m->arena);
    free(m->sse_heads);
    free(m->ancestors);
    free(m->layers);
    free(m);
}

const ms_config *ms_model_config(const ms_model *m) { return &m->cfg; }
const uint8_t *ms_model_fingerprint(const ms_model *m) { return m->fingerprint; }
size_t ms_model_weight_bytes(const ms_model *m) { return m->arena_floats * sizeof(float); }
size_t ms_model_bytes_per_token(const ms_model *m) { return m->bytes_per_token; }
