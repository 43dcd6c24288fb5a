/*
 * model.c - from a tensor file to an ms_model.
 *
 * Design: the configuration is derived from tensor shapes only (SPEC 1.1),
 * never from metadata or file names, so any released size and any expanded
 * Meta-State checkpoint loads. Loading is two passes over a table of
 * "tensor -> destination" bindings: the first checks every name and shape
 * (so a bad file fails before any large allocation), the second converts
 * each tensor into place: vectors into one fp32 arena, matrices into their
 * k_wmat format. The file is unmapped by the caller afterwards, so resident
 * memory is the weights as held plus small change.
 */
#include "model.h"

#include <cblas.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* ------------------------------------------------------------------------ */
/* Binding table                                                             */

typedef enum { B_VEC, B_MAT, B_LORA } bkind;

/* B_VEC: fp32 into the arena (dst_vec); B_MAT: a Linear (out, in) matrix in
 * the model's weight format; B_LORA: a raw (in, out) matrix, transposed to
 * (out, in) and kept fp32. */
typedef struct binding {
    const ms_tensor *t;
    bkind kind;
    float **dst_vec;
    k_wmat *dst_mat;
    size_t numel;
    int r0, c0, rows, cols; /* B_MAT: the block of the tensor this matrix holds */
} binding;

typedef struct loader {
    const ms_tensorfile *tf;
    const char *path;
    binding *b;
    size_t n, cap;
    ms_error *err;
} loader;

static ms_status add_binding(loader *ld, const ms_tensor *t, bkind kind, float **vec,
                             k_wmat *mat)
{
    if (ld->n == ld->cap) {
        size_t cap = ld->cap ? ld->cap * 2 : 256;
        binding *nb = realloc(ld->b, cap * sizeof *nb);
        if (!nb)
            return ms_fail(ld->err, MS_ERR_NOMEM, "%s: out of memory", ld->path);
        ld->b = nb;
        ld->cap = cap;
    }
    const int whole = t->ndim == 2;
    ld->b[ld->n++] = (binding){t, kind, vec, mat, (size_t)ms_tensor_numel(t), 0, 0,
                               whole ? (int)t->shape[0] : 0, whole ? (int)t->shape[1] : 0};
    return MS_OK;
}

/* Binds rows [r0, r0 + rows) x columns [c0, c0 + cols) of a matrix that
 * find_shaped checked, as a matrix of its own. */
static ms_status bind_block(loader *ld, const ms_tensor *t, k_wmat *mat, int r0, int rows,
                            int c0, int cols)
{
    ms_status st = add_binding(ld, t, B_MAT, NULL, mat);
    if (!st) {
        binding *b = &ld->b[ld->n - 1];
        b->r0 = r0, b->rows = rows, b->c0 = c0, b->cols = cols;
        b->numel = (size_t)rows * (size_t)cols;
    }
    return st;
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

/* Finds tensor `name` of exactly the given shape (*out), or fails naming
 * it. A vector of C may also be stored as (1,1,C), the BlinkDL layout; both
 * are accepted. */
static ms_status find_shaped(loader *ld, const char *name, int ndim, int64_t d0, int64_t d1,
                             const ms_tensor **out)
{
    const ms_tensor *t = *out = ms_tensorfile_find(ld->tf, name);
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
    return MS_OK;
}

/* Binds tensor `name` of exactly the given shape (find_shaped). */
static ms_status bind(loader *ld, const char *name, bkind kind, float **vec, k_wmat *mat,
                      int ndim, int64_t d0, int64_t d1)
{
    const ms_tensor *t;
    ms_status st = find_shaped(ld, name, ndim, d0, d1, &t);
    return st ? st : add_binding(ld, t, kind, vec, mat);
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
#define LNAME(suffix) (snprintf(name, sizeof name, "blocks.%d." suffix, l), name)
#define VEC(field, suffix) bind(ld, LNAME(suffix), B_VEC, &L->field, NULL, 1, C, 0)
#define MAT(field, suffix, r, k) bind(ld, LNAME(suffix), B_MAT, NULL, &L->field, 2, r, k)
#define LORA(field, suffix, r, k) bind(ld, LNAME(suffix), B_LORA, NULL, &L->field, 2, r, k)

    TRY(bind(ld, "emb.weight", B_MAT, NULL, &m->emb, 2, V, C));
    TRY(bind(ld, "ln_out.weight", B_VEC, &m->ln_out_w, NULL, 1, C, 0));
    TRY(bind(ld, "ln_out.bias", B_VEC, &m->ln_out_b, NULL, 1, C, 0));
    TRY(bind(ld, "head.weight", B_MAT, NULL, &m->head, 2, V, C));
    TRY(bind(ld, "blocks.0.ln0.weight", B_VEC, &m->ln0_w, NULL, 1, C, 0));
    TRY(bind(ld, "blocks.0.ln0.bias", B_VEC, &m->ln0_b, NULL, 1, C, 0));
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
        TRY(LORA(w1, "att.w1", C, c->d_decay));
        TRY(LORA(w2, "att.w2", c->d_decay, C));
        TRY(VEC(a0, "att.a0"));
        TRY(LORA(a1, "att.a1", C, c->d_aaa));
        TRY(LORA(a2, "att.a2", c->d_aaa, C));
        if (l > 0) {
            TRY(VEC(v0, "att.v0"));
            TRY(LORA(v1, "att.v1", C, c->d_mv));
            TRY(LORA(v2, "att.v2", c->d_mv, C));
        }
        TRY(LORA(g1, "att.g1", C, c->d_gate));
        TRY(LORA(g2, "att.g2", c->d_gate, C));
        TRY(VEC(k_k, "att.k_k"));
        TRY(VEC(k_a, "att.k_a"));
        TRY(bind(ld, LNAME("att.r_k"), B_VEC, &L->r_k, NULL, 2, c->n_head, c->head_size));
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
        const int F = L->dim_ffn = (int)fk->shape[0];
        if (F > m->cfg.dim_ffn)
            m->cfg.dim_ffn = F;
        const ms_tensor *fv;
        TRY(find_shaped(ld, LNAME("ffn.value.weight"), 2, C, F, &fv));
        /* Parts of whole int8 / q4 groups, so that a part quantizes its
         * inputs exactly as the whole row would. */
        L->ffn_unit = ((F + FFN_PARTS - 1) / FFN_PARTS + 63) & ~63;
        L->ffn_parts = (F + L->ffn_unit - 1) / L->ffn_unit;
        for (int p = 0; p < L->ffn_parts; p++) {
            const int u0 = p * L->ffn_unit, n = F - u0 < L->ffn_unit ? F - u0 : L->ffn_unit;
            TRY(bind_block(ld, fk, &L->ffn_key[p], u0, n, 0, (int)C));
            TRY(bind_block(ld, fv, &L->ffn_value[p], 0, (int)C, u0, n));
        }
        snprintf(name, sizeof name, "blocks.%d.ffn.ms_gamma", l);
        if (ms_tensorfile_find(ld->tf, name))
            TRY(VEC(ms_gamma, "ffn.ms_gamma"));
    }
    return MS_OK;
#undef LNAME
#undef VEC
#undef MAT
#undef LORA
#undef TRY
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

int ms_weights_parse(const char *s)
{
    static const char *const names[] = {"auto", "f32", "bf16", "int8", "q4"};
    for (int i = 0; s && i < 5; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

int ms_compute_parse(const char *s)
{
    return !s ? -1 : !strcmp(s, "f32") ? MS_COMPUTE_F32 : !strcmp(s, "bf16") ? MS_COMPUTE_BF16 : -1;
}

const char *ms_kernel_isa(void) { return k_isa(); }

#define CHUNK_ROWS 512

/* A piece of the second pass: one vector, one LoRA, or CHUNK_ROWS rows of
 * a matrix, each converted into memory no other piece writes. */
typedef struct {
    const binding *b;
    int r0, r1;
} piece;

typedef struct {
    const ms_tensorfile *tf;
    const char *path;
    const piece *pieces;
    size_t n_pieces, scratch;
    atomic_size_t next;
    float *tmp; /* scratch floats per share */
    uint8_t *fp;
    ms_status fp_st;
    ms_error fp_err;
} convert_job;

static void convert_piece(const piece *p, float *tmp)
{
    const binding *b = p->b;
    if (b->kind == B_VEC) {
        ms_tensor_to_f32(b->t, *b->dst_vec);
        return;
    }
    const int rows = b->rows, cols = b->cols, width = (int)b->t->shape[1];
    if (b->kind == B_LORA) { /* (in, out) -> (out, in) */
        float *tr = tmp + b->numel;
        ms_tensor_to_f32(b->t, tmp);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                tr[(size_t)c * rows + r] = tmp[(size_t)r * cols + c];
        k_wmat_set_rows(b->dst_mat, 0, cols, tr);
        return;
    }
    const size_t row_bytes = b->t->nbytes / (size_t)b->t->shape[0];
    if (b->t->dtype == MS_BF16 && b->dst_mat->fmt == K_W_BF16) { /* no fp32 on the way */
        const char *rows0 = (const char *)b->t->data + (size_t)(b->r0 + p->r0) * row_bytes;
        k_wmat_set_rows_bf16(b->dst_mat, p->r0, p->r1, rows0 + (size_t)b->c0 * 2, (size_t)width);
        return;
    }
    ms_tensor part = *b->t;
    part.shape[0] = p->r1 - p->r0;
    part.data = (const char *)b->t->data + (size_t)(b->r0 + p->r0) * row_bytes;
    part.nbytes = (size_t)(p->r1 - p->r0) * row_bytes;
    ms_tensor_to_f32(&part, tmp);
    if (cols < width) /* a block of columns: each row's slice to the front */
        for (int r = 0; r < p->r1 - p->r0; r++)
            memmove(tmp + (size_t)r * cols, tmp + (size_t)r * width + b->c0,
                    (size_t)cols * sizeof(float));
    k_wmat_set_rows(b->dst_mat, p->r0, p->r1, tmp);
}

/* Item 0 hashes the file (one SHA-256 stream, so one thread) while the
 * others convert; each share takes pieces until none is left, so the thread
 * that finishes the hash joins the conversion. */
static void convert_share(void *arg, int i)
{
    convert_job *j = arg;
    if (i == 0) {
        j->fp_st = fingerprint(j->tf, j->fp, j->path, &j->fp_err);
        return;
    }
    float *tmp = j->tmp + (size_t)(i - 1) * j->scratch;
    for (size_t k; (k = atomic_fetch_add(&j->next, 1)) < j->n_pieces;)
        convert_piece(&j->pieces[k], tmp);
}

/* Second pass: every binding converted into place, on the pool, while the
 * fingerprint is taken (a 0.4B bf16 file held as q4 took 4.5 s on one
 * thread: packing 44%, the hash 25%, the kernel zeroing new pages 17%). The
 * memory is allocated first, in binding order (the arena is not
 * thread-safe). Matrices then go through an fp32 scratch buffer of
 * CHUNK_ROWS rows per thread, so loading needs little memory beyond the
 * weights as held; bf16 tensors held as bf16 go from the file's bytes. */
static ms_status convert_all(ms_model *m, loader *ld, const ms_load_opts *opts,
                             const ms_tensorfile *tf, const char *path, ms_error *err)
{
    ms_weights w = opts ? opts->weights : MS_WEIGHTS_AUTO;
    if (w == MS_WEIGHTS_AUTO)
        w = m->cfg.file_dtype == MS_BF16 ? MS_WEIGHTS_BF16 : MS_WEIGHTS_F32;
    m->wfmt = w == MS_WEIGHTS_BF16 ? K_W_BF16
              : w == MS_WEIGHTS_I8 ? K_W_I8
              : w == MS_WEIGHTS_Q4 ? K_W_Q4
                                   : K_W_F32;
    const int dot_bf16 = opts && opts->compute == MS_COMPUTE_BF16;
    /* The embedding is only looked up (one row per token), so its format
     * costs memory, not speed: row-major, int8 when the rest is 4-bit. */
    const k_wfmt emb_fmt = m->wfmt == K_W_Q4 ? K_W_I8 : m->wfmt;
    /* fp32 with fp32 weights. int8 with int8 and q4, whose large products
     * round their inputs to int8 anyway: the held-out bits/byte did not move
     * (2.3406 int8, 2.3541 q4), and a 0.1B q4 token reads 74.8 MB instead of
     * 79.2 with bf16. Not q4: the decay goes through exp(-e^x), and 4-bit
     * LoRAs cost 0.0008 bits/byte in both formats for 3 MB less. bf16
     * otherwise, as the released checkpoints hold them: exact widening in
     * the fp32 kernel's order, or bf16 dot products with --compute bf16. */
    const k_wfmt lora_fmt = m->wfmt == K_W_F32                           ? K_W_F32
                            : m->wfmt == K_W_I8 || m->wfmt == K_W_Q4 ? K_W_I8
                                                                     : K_W_BF16;
    size_t vec_floats = 0, scratch = 1, n_pieces = 0;
    for (size_t i = 0; i < ld->n; i++) {
        const binding *b = &ld->b[i];
        size_t need = b->kind == B_VEC  ? 0
                      : b->kind == B_LORA ? 2 * b->numel
                                          : (size_t)CHUNK_ROWS * (size_t)b->t->shape[1];
        if (b->kind == B_VEC)
            vec_floats += (b->numel + 15) & ~(size_t)15; /* 64-byte aligned each */
        if (need > scratch)
            scratch = need;
        n_pieces += b->kind == B_MAT ? (size_t)(b->rows + CHUNK_ROWS - 1) / CHUNK_ROWS : 1;
    }
    const int shares = k_threads();
    m->arena = aligned_alloc(64, vec_floats * sizeof(float) + 64);
    m->mats = k_arena_new();
    convert_job j = {.tf = tf, .path = path, .scratch = scratch, .fp = m->fingerprint};
    atomic_init(&j.next, 0);
    piece *pieces = malloc((n_pieces ? n_pieces : 1) * sizeof *pieces);
    j.tmp = malloc((size_t)shares * scratch * sizeof(float));
    if (!m->arena || !m->mats || !pieces || !j.tmp)
        goto nomem;
    m->weight_bytes = vec_floats * sizeof(float);
    for (size_t i = 0, off = 0; i < ld->n; i++) {
        const binding *b = &ld->b[i];
        if (b->kind == B_VEC) {
            *b->dst_vec = m->arena + off;
            off += (b->numel + 15) & ~(size_t)15;
            pieces[j.n_pieces++] = (piece){b, 0, 0};
            continue;
        }
        k_wmat *W = b->dst_mat;
        if (b->kind == B_LORA) {
            if (k_wmat_alloc_in(W, m->mats, lora_fmt, b->cols, b->rows))
                goto nomem;
            W->dot_bf16 = W->packed && lora_fmt == K_W_BF16 && dot_bf16;
            pieces[j.n_pieces++] = (piece){b, 0, 0};
        } else {
            if (W == &m->emb ? k_wmat_alloc_plain(W, emb_fmt, b->rows, b->cols)
                             : k_wmat_alloc_in(W, m->mats, m->wfmt, b->rows, b->cols))
                goto nomem;
            W->dot_bf16 = W->packed && m->wfmt == K_W_BF16 && dot_bf16;
            for (int r0 = 0; r0 < b->rows; r0 += CHUNK_ROWS)
                pieces[j.n_pieces++] =
                    (piece){b, r0, r0 + CHUNK_ROWS < b->rows ? r0 + CHUNK_ROWS : b->rows};
        }
        m->weight_bytes += k_wmat_bytes(W);
    }
    j.pieces = pieces;
    k_parallel(1 + shares, convert_share, &j);
    free(pieces);
    free(j.tmp);
    if (j.fp_st)
        *err = j.fp_err;
    return j.fp_st;
nomem:
    free(pieces);
    free(j.tmp);
    return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory for the weights", path);
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
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    m->n_threads = opts && opts->n_threads > 0 ? opts->n_threads : (ncpu > 0 ? (int)ncpu : 1);
    k_set_threads(m->n_threads); /* before the conversion, which runs on the pool */
    /* Our pool splits prefill GEMMs itself; OpenBLAS's own threads would spin
     * beside it after every call and slow the next decode step. */
    openblas_set_num_threads(1);
    if ((st = convert_all(m, &ld, opts, tf, path, err)))
        goto fail_ld;
    free(ld.b);

    if ((st = find_sse_heads(m, path, err)) || (st = read_ancestors(m, tf, path, err)))
        goto fail;
    /* Every matrix is read once per token, except the embedding (one row). */
    m->bytes_per_token = m->weight_bytes - k_wmat_bytes(&m->emb) +
                         k_wmat_bytes(&m->emb) / (size_t)m->cfg.vocab_size;
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
    k_wmat_free(&m->emb);
    k_wmat_free(&m->head);
    for (int l = 0; m->layers && l < m->cfg.n_layer; l++) {
        ms_layer *L = &m->layers[l];
        k_wmat *mats[] = {&L->w1, &L->w2, &L->a1, &L->a2, &L->v1, &L->v2, &L->g1, &L->g2,
                          &L->wr, &L->wk, &L->wv, &L->wo};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            k_wmat_free(mats[i]);
        for (int p = 0; p < FFN_PARTS; p++) {
            k_wmat_free(&L->ffn_key[p]);
            k_wmat_free(&L->ffn_value[p]);
        }
    }
    k_arena_free(m->mats);
    free(m->layers);
    free(m);
}

const ms_config *ms_model_config(const ms_model *m) { return &m->cfg; }
const uint8_t *ms_model_fingerprint(const ms_model *m) { return m->fingerprint; }
size_t ms_model_weight_bytes(const ms_model *m) { return m->weight_bytes; }
size_t ms_model_bytes_per_token(const ms_model *m) { return m->bytes_per_token; }
