/*
 * gen_model.c - `metastate gen-model`: a random-weight RWKV-7 checkpoint
 * with the tensor names and shapes of a real one (SPEC 1.1 table).
 *
 * The values imitate a trained model's magnitudes (layer norms near 1,
 * decays spread over their real range, projections scaled by 1/sqrt(fan-in))
 * so every code path of the engine does real work; the text such a model
 * writes is noise. The RNG is our own (splitmix64 + Box-Muller) so the same
 * seed gives the same file on every machine.
 */
#include "cli.h"
#include "engine.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int n_layer, n_embd, d_decay, d_aaa, d_mv, d_gate, dim_ffn, vocab;
} preset;

static const preset presets[] = {
    {"tiny", 2, 128, 32, 32, 16, 64, 512, 65536},
    {"0.1b", 12, 768, 64, 64, 32, 128, 3072, 65536},
    {"0.4b", 24, 1024, 64, 64, 32, 128, 4096, 65536},
    {"1.5b", 24, 2048, 96, 96, 64, 256, 8192, 65536},
    {"2.9b", 32, 2560, 96, 96, 64, 320, 10240, 65536},
};

typedef struct {
    uint64_t s;
    int have_spare;
    double spare;
} rng;

static uint64_t next_u64(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform(rng *r) { return ((next_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static double normal(rng *r)
{
    if (r->have_spare) {
        r->have_spare = 0;
        return r->spare;
    }
    double u = uniform(r), v = uniform(r), m = sqrt(-2.0 * log(u));
    r->spare = m * sin(2 * M_PI * v);
    r->have_spare = 1;
    return m * cos(2 * M_PI * v);
}

typedef enum { DIST_NORMAL, DIST_UNIFORM } dist;

typedef struct {
    ms_tensor *t;
    size_t n, cap;
    char **names;
    ms_dtype dtype;
    rng r, gamma_r;
    int failed;
} builder;

/* Appends a tensor filled with center + scale * (N(0,1) or U(-1,1)). */
static void add(builder *b, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2,
                dist d, double center, double scale)
{
    if (b->failed)
        return;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 512;
        ms_tensor *t = realloc(b->t, cap * sizeof *t);
        char **nm = t ? realloc(b->names, cap * sizeof *nm) : NULL;
        if (!t || !nm) {
            if (t)
                b->t = t;
            b->failed = 1;
            return;
        }
        b->t = t;
        b->names = nm;
        b->cap = cap;
    }
    int64_t shape[3] = {d0, d1, d2};
    size_t numel = 1;
    for (int i = 0; i < ndim; i++)
        numel *= (size_t)shape[i];
    size_t esz = b->dtype == MS_F32 ? 4 : 2;
    void *data = malloc(numel * esz);
    char *nm = strdup(name);
    if (!data || !nm) {
        free(data);
        free(nm);
        b->failed = 1;
        return;
    }
    for (size_t i = 0; i < numel; i++) {
        double x = d == DIST_NORMAL ? normal(&b->r) : 2 * uniform(&b->r) - 1;
        float f = (float)(center + scale * x);
        if (b->dtype == MS_F32)
            ((float *)data)[i] = f;
        else
            ((uint16_t *)data)[i] = ms_bf16_from_f32(f);
    }
    ms_tensor *t = &b->t[b->n];
    memset(t, 0, sizeof *t);
    t->name = nm;
    t->dtype = b->dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof shape);
    t->data = data;
    t->nbytes = numel * esz;
    b->names[b->n++] = nm;
}

/* Meta-State gains: non-zero on the listed heads of every layer (all heads
 * when sse_heads is NULL), zero elsewhere. */
static void add_gamma(builder *b, const char *name, int64_t C, int64_t N, const int *heads,
                      int n_heads)
{
    /* Drawn from a stream of their own, so a model with and without
     * --meta-state has the same weights everywhere else. */
    rng main = b->r;
    b->r = b->gamma_r;
    size_t before = b->n;
    add(b, name, 1, C, 0, 0, DIST_UNIFORM, 0.0, 1.0);
    b->gamma_r = b->r;
    b->r = main;
    if (b->failed || b->n == before)
        return;
    ms_tensor *t = &b->t[b->n - 1];
    for (int64_t c = 0; c < C; c++) {
        int on = !heads;
        for (int i = 0; heads && i < n_heads; i++)
            on |= heads[i] == c / N;
        if (on)
            continue;
        if (b->dtype == MS_F32)
            ((float *)t->data)[c] = 0.0f;
        else
            ((uint16_t *)t->data)[c] = 0;
    }
}

static void build_model(builder *b, const preset *p, int meta_state, const int *sse_heads,
                        int n_sse)
{
    const int64_t C = p->n_embd, N = 64, H = C / N, V = p->vocab;
    const double inv_c = 1.0 / sqrt((double)C), inv_f = 1.0 / sqrt((double)p->dim_ffn);
    char n[96];
    add(b, "emb.weight", 2, V, C, 0, DIST_NORMAL, 0, 1.0);
    for (int l = 0; l < p->n_layer; l++) {
#define NAME(s) (snprintf(n, sizeof n, "blocks.%d.%s", l, s), n)
        if (l == 0) {
            add(b, NAME("ln0.weight"), 1, C, 0, 0, DIST_NORMAL, 1.0, 0.1);
            add(b, NAME("ln0.bias"), 1, C, 0, 0, DIST_NORMAL, 0.0, 0.05);
        }
        add(b, NAME("ln1.weight"), 1, C, 0, 0, DIST_NORMAL, 1.0, 0.1);
        add(b, NAME("ln1.bias"), 1, C, 0, 0, DIST_NORMAL, 0.0, 0.05);
        add(b, NAME("ln2.weight"), 1, C, 0, 0, DIST_NORMAL, 1.0, 0.1);
        add(b, NAME("ln2.bias"), 1, C, 0, 0, DIST_NORMAL, 0.0, 0.05);
        static const char *const mixes[] = {"att.x_r", "att.x_w", "att.x_k",
                                            "att.x_v", "att.x_a", "att.x_g"};
        for (int i = 0; i < 6; i++)
            add(b, NAME(mixes[i]), 3, 1, 1, C, DIST_UNIFORM, 0.5, 0.5);
        /* w0 over (-6, 1): decays from ~0.9985 to ~0.6, the trained range. */
        add(b, NAME("att.w0"), 3, 1, 1, C, DIST_UNIFORM, -2.5, 3.5);
        add(b, NAME("att.r_k"), 2, H, N, 0, DIST_NORMAL, 0, 0.1);
        add(b, NAME("att.w1"), 2, C, p->d_decay, 0, DIST_NORMAL, 0, 0.1);
        add(b, NAME("att.w2"), 2, p->d_decay, C, 0, DIST_NORMAL, 0, 0.1);
        add(b, NAME("att.a1"), 2, C, p->d_aaa, 0, DIST_NORMAL, 0, 0.1);
        add(b, NAME("att.a2"), 2, p->d_aaa, C, 0, DIST_NORMAL, 0, 0.1);
        add(b, NAME("att.a0"), 3, 1, 1, C, DIST_NORMAL, 0, 0.5);
        add(b, NAME("att.g1"), 2, C, p->d_gate, 0, DIST_NORMAL, 0, 0.1);
        add(b, NAME("att.g2"), 2, p->d_gate, C, 0, DIST_NORMAL, 0, 0.1);
        if (l > 0) {
            add(b, NAME("att.v2"), 2, p->d_mv, C, 0, DIST_NORMAL, 0, 0.1);
            add(b, NAME("att.v1"), 2, C, p->d_mv, 0, DIST_NORMAL, 0, 0.1);
            add(b, NAME("att.v0"), 3, 1, 1, C, DIST_NORMAL, 0, 0.5);
        }
        add(b, NAME("att.k_k"), 3, 1, 1, C, DIST_NORMAL, 0.85, 0.1);
        add(b, NAME("att.k_a"), 3, 1, 1, C, DIST_NORMAL, 1.0, 0.1);
        add(b, NAME("att.receptance.weight"), 2, C, C, 0, DIST_NORMAL, 0, inv_c);
        add(b, NAME("att.key.weight"), 2, C, C, 0, DIST_NORMAL, 0, inv_c);
        add(b, NAME("att.value.weight"), 2, C, C, 0, DIST_NORMAL, 0, inv_c);
        add(b, NAME("att.output.weight"), 2, C, C, 0, DIST_NORMAL, 0, 0.5 * inv_c);
        add(b, NAME("att.ln_x.weight"), 1, C, 0, 0, DIST_NORMAL, 1.0, 0.1);
        add(b, NAME("att.ln_x.bias"), 1, C, 0, 0, DIST_NORMAL, 0.0, 0.05);
        add(b, NAME("ffn.x_k"), 3, 1, 1, C, DIST_UNIFORM, 0.5, 0.5);
        add(b, NAME("ffn.key.weight"), 2, p->dim_ffn, C, 0, DIST_NORMAL, 0, inv_c);
        add(b, NAME("ffn.value.weight"), 2, C, p->dim_ffn, 0, DIST_NORMAL, 0, 0.5 * inv_f);
        if (meta_state)
            add_gamma(b, NAME("ffn.ms_gamma"), C, N, sse_heads, n_sse);
#undef NAME
    }
    add(b, "ln_out.weight", 1, C, 0, 0, DIST_NORMAL, 1.0, 0.1);
    add(b, "ln_out.bias", 1, C, 0, 0, DIST_NORMAL, 0.0, 0.05);
    add(b, "head.weight", 2, V, C, 0, DIST_NORMAL, 0, 2.0 * inv_c);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: metastate gen-model --preset tiny|0.1b|0.4b|1.5b|2.9b --out PATH\n"
            "                           [--dtype f32|bf16] [--seed S] [--vocab-size V]\n"
            "                           [--meta-state [--sse-heads H,H,...]]\n"
            "Writes a random-weight RWKV-7 model with the real tensor names and shapes.\n"
            "--meta-state adds MS-v0 gains (blocks.N.ffn.ms_gamma), non-zero on the\n"
            "listed heads of every layer (default: all heads).\n"
            "PATH ending in .pth writes a PyTorch zip, anything else safetensors.\n");
}

int cmd_gen_model(int argc, char **argv)
{
    static const struct option opts[] = {
        {"preset", required_argument, 0, 'p'}, {"out", required_argument, 0, 'o'},
        {"dtype", required_argument, 0, 'd'},  {"seed", required_argument, 0, 's'},
        {"vocab-size", required_argument, 0, 'V'}, {"help", no_argument, 0, 'h'},
        {"meta-state", no_argument, 0, 'M'},   {"sse-heads", required_argument, 0, 'H'},
        {0, 0, 0, 0}};
    const char *preset_name = NULL, *out = NULL, *dtype = "f32";
    unsigned long long seed = 1;
    long vocab = 0;
    int meta_state = 0, n_sse = 0, sse[64];
    const char *sse_list = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "p:o:d:s:V:h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': preset_name = optarg; break;
        case 'o': out = optarg; break;
        case 'd': dtype = optarg; break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'V': vocab = strtol(optarg, NULL, 10); break;
        case 'M': meta_state = 1; break;
        case 'H': sse_list = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    const preset *p = NULL;
    for (size_t i = 0; preset_name && i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(presets[i].name, preset_name))
            p = &presets[i];
    if (!p || !out || (strcmp(dtype, "f32") && strcmp(dtype, "bf16")) || vocab < 0 ||
        vocab > (1L << 24) || optind != argc) {
        usage(stderr);
        return 2;
    }
    for (const char *q = sse_list; q && *q;) {
        char *end;
        long h = strtol(q, &end, 10);
        if (end == q || h < 0 || h >= p->n_embd / 64 || n_sse == 64 || (*end && *end != ',')) {
            fprintf(stderr, "gen-model: --sse-heads wants head indices below %d, got '%s'\n",
                    p->n_embd / 64, sse_list);
            return 2;
        }
        sse[n_sse++] = (int)h;
        q = *end ? end + 1 : end;
    }
    if (sse_list && !meta_state) {
        fprintf(stderr, "gen-model: --sse-heads needs --meta-state\n");
        return 2;
    }
    preset chosen = *p;
    if (vocab)
        chosen.vocab = (int)vocab;
    builder b = {.dtype = strcmp(dtype, "bf16") ? MS_F32 : MS_BF16, .r = {.s = seed},
                 .gamma_r = {.s = seed ^ 0x6d732d7630ull}};
    build_model(&b, &chosen, meta_state, sse_list ? sse : NULL, n_sse);
    int rc = 0;
    if (b.failed) {
        fprintf(stderr, "gen-model: out of memory\n");
        rc = 1;
    } else {
        ms_error err = {0};
        ms_status st;
        size_t len = strlen(out);
        if (len > 4 && !strcmp(out + len - 4, ".pth")) {
            st = ms_pth_write(out, b.t, b.n, &err);
        } else {
            char seed_s[32];
            snprintf(seed_s, sizeof seed_s, "%llu", seed);
            const char *meta[] = {"format", "pt", "rwkv_arch", "x070", "generator",
                                  "metastate gen-model", "preset", p->name, "seed", seed_s,
                                  meta_state ? "meta_state" : NULL, "ms-v0", NULL};
            FILE *f = fopen(out, "wb");
            if (!f) {
                perror(out);
                st = MS_ERR_IO;
                snprintf(err.msg, sizeof err.msg, "%s: cannot create", out);
            } else {
                st = ms_safetensors_write(f, b.t, b.n, meta, &err);
                if (fclose(f) && !st) {
                    st = MS_ERR_IO;
                    snprintf(err.msg, sizeof err.msg, "%s: write failed", out);
                }
            }
        }
        if (st) {
            fprintf(stderr, "gen-model: %s\n", err.msg);
            rc = 1;
        }
    }
    for (size_t i = 0; i < b.n; i++) {
        free((void *)b.t[i].data);
        free(b.names[i]);
    }
    free(b.t);
    free(b.names);
    return rc;
}
