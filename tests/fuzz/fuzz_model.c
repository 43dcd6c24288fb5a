/*
 * fuzz_model.c - the model loader's checks (which tensors there are, their
 * dtypes and shapes, and how the shapes must agree: layers, heads, LoRA
 * ranks, vocabulary), the conversion to every in-memory format, and a few
 * tokens through the forward pass of whatever it accepts.
 *
 * The input is not a file but a list of tensors, which the harness writes as
 * a well-formed safetensors file (offsets right, data filled with small
 * values): mutations then change names, dtypes and shapes, where raw bytes
 * would mostly break the container (fuzz_tensorfile covers that). Layout:
 *   byte 0           in-memory format (mod 4: auto, bf16, int8, q4)
 *   bytes 1-8        two substitutions (u16 from, u16 to): every dim equal
 *                    to `from` becomes `to`, so one change reshapes the
 *                    whole model consistently (width, vocabulary, a rank)
 *   then per tensor  name (index into the tiny model's names and a few
 *                    more), dtype, ndim (mod 4), ndim x u16 dims
 * With METASTATE_FUZZ_SEEDS set, the harness first writes seeds there: the
 * tiny model's own list in each format, and a few reshapings of it
 * (tests/fuzz/run.sh sets it).
 * A model the loader accepts must run; one it refuses must say why.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "fuzz_util.h"
#include "kernels_act.h"

#define MAX_TENSORS 256
#define MAX_NUMEL (1 << 18) /* per tensor; the tiny model's largest is 65,536 */
#define MAX_DATA (1 << 24) /* bytes, all tensors */
#define POOL (1 << 18)

static const char *extra_names[] = {"blocks.0.ffn.ms_gamma", "blocks.1.ffn.ms_gamma",
                                    "blocks.2.ln1.weight", "blocks.0.att.v0"};
static const char *dtypes[] = {"F32", "BF16", "F16"}; /* the ones tensor files may hold */
static const int dtype_size[] = {4, 2, 2};

static char *names[MAX_TENSORS];
static int n_names;
static float pool[POOL]; /* the values every tensor's data is cut from */
static char *header;     /* built per input */
static uint8_t *file;    /* 8-byte length, header, data */
static size_t header_cap, file_cap;

typedef struct {
    int name, dtype, ndim;
    int64_t dims[3], numel;
} spec;

static void put_u16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* The tiny model's own list (names in file order, its dtypes and shapes),
 * in each format, and reshaped: three heads, an odd vocabulary and FFN
 * width (both 512 in the tiny model), an unsupported head size. */
static void write_seeds(const char *dir, const ms_tensorfile *tf)
{
    uint8_t buf[MAX_TENSORS * 9 + 9] = {0}; /* substitutions 0 -> 0: none */
    size_t n = 9;
    for (size_t i = 0; i < ms_tensorfile_count(tf); i++) {
        const ms_tensor *t = ms_tensorfile_at(tf, i);
        buf[n++] = (uint8_t)i;
        buf[n++] = t->dtype == MS_BF16 ? 1 : t->dtype == MS_F16 ? 2 : 0;
        buf[n++] = (uint8_t)t->ndim;
        for (int d = 0; d < t->ndim; d++, n += 2) put_u16(buf + n, (unsigned)t->shape[d]);
    }
    static const unsigned seeds[][5] = {/* format, from, to, from, to */
                                        {0, 0, 0, 0, 0},       {1, 0, 0, 0, 0},
                                        {2, 0, 0, 0, 0},       {3, 0, 0, 0, 0},
                                        {3, 128, 192, 2, 3},   {2, 512, 97, 0, 0},
                                        {0, 64, 32, 0, 0}};
    for (size_t k = 0; k < sizeof seeds / sizeof *seeds; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tiny_%zu.bin", dir, k);
        buf[0] = (uint8_t)seeds[k][0];
        put_u16(buf + 1, seeds[k][1]);
        put_u16(buf + 3, seeds[k][2]);
        put_u16(buf + 5, seeds[k][3]);
        put_u16(buf + 7, seeds[k][4]);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0) {
            fprintf(stderr, "fuzz_model: cannot write %s\n", path);
            abort();
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *path = fuzz_env("METASTATE_FUZZ_MODEL");
    ms_tensorfile *tf = NULL;
    ms_error e = {0};
    if (ms_tensorfile_open(path, &tf, &e) != MS_OK) {
        fprintf(stderr, "fuzz_model: %s\n", e.msg);
        abort();
    }
    size_t n = ms_tensorfile_count(tf);
    if (n + sizeof extra_names / sizeof *extra_names > MAX_TENSORS) abort();
    for (size_t i = 0; i < n; i++) names[n_names++] = strdup(ms_tensorfile_at(tf, i)->name);
    for (size_t i = 0; i < sizeof extra_names / sizeof *extra_names; i++)
        names[n_names++] = strdup(extra_names[i]);
    const char *seeds = getenv("METASTATE_FUZZ_SEEDS");
    if (seeds && *seeds) write_seeds(seeds, tf);
    ms_tensorfile_close(tf);

    uint32_t x = 12345; /* small values, as trained weights are */
    for (int i = 0; i < POOL; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        pool[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.5f;
    }
    header_cap = (size_t)MAX_TENSORS * 200 + 256;
    file_cap = 8 + header_cap + MAX_DATA;
    header = malloc(header_cap);
    file = malloc(file_cap);
    if (!header || !file) abort();
    return 0;
}

static size_t parse(const uint8_t *d, size_t size, spec *s)
{
    if (size < 9) return 0;
    const unsigned sub[2][2] = {{d[1] | d[2] << 8u, d[3] | d[4] << 8u},
                                {d[5] | d[6] << 8u, d[7] | d[8] << 8u}};
    size_t n = 0, i = 9, bytes = 0;
    while (i + 3 <= size && n < MAX_TENSORS) {
        spec *t = &s[n];
        t->name = d[i] % n_names;
        t->dtype = d[i + 1] % 3;
        t->ndim = d[i + 2] % 4;
        i += 3;
        if (i + 2 * (size_t)t->ndim > size) break;
        t->numel = 1;
        for (int k = 0; k < t->ndim; k++, i += 2) {
            unsigned v = d[i] | d[i + 1] << 8u;
            for (int j = 0; j < 2; j++)
                if (v == sub[j][0]) {
                    v = sub[j][1];
                    break;
                }
            t->dims[k] = v;
            t->numel *= t->dims[k];
        }
        if (t->numel > MAX_NUMEL) return 0; /* keep runs fast */
        bytes += (size_t)t->numel * (size_t)dtype_size[t->dtype];
        if (bytes > MAX_DATA) return 0;
        n++;
    }
    return n;
}

/* Writes the specs as a safetensors file into `file`; returns where it
 * starts, its size in *len. */
static const uint8_t *build(const spec *s, size_t n, size_t *len)
{
    size_t h = (size_t)snprintf(header, header_cap,
                                "{\"__metadata__\":{\"format\":\"pt\",\"rwkv_arch\":\"x070\"}");
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const spec *t = &s[i];
        size_t bytes = (size_t)t->numel * (size_t)dtype_size[t->dtype];
        h += (size_t)snprintf(header + h, header_cap - h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                              names[t->name], dtypes[t->dtype]);
        for (int k = 0; k < t->ndim; k++)
            h += (size_t)snprintf(header + h, header_cap - h, "%s%lld", k ? "," : "",
                                  (long long)t->dims[k]);
        h += (size_t)snprintf(header + h, header_cap - h, "],\"data_offsets\":[%zu,%zu]}", off,
                              off + bytes);
        uint8_t *p = file + 8 + header_cap + off; /* data after the room for the header */
        for (int64_t j = 0; j < t->numel; j++) {
            const float v = pool[(size_t)(j + (int64_t)i * 7919) % POOL];
            switch (t->dtype) {
            case 0: memcpy(p + 4 * j, &v, 4); break;
            case 1: put_u16(p + 2 * j, ms_bf16_from_f32(v)); break;
            default: put_u16(p + 2 * j, k_f32_to_f16(v)); break;
            }
        }
        off += bytes;
    }
    h += (size_t)snprintf(header + h, header_cap - h, "}");
    /* The length and the header go directly before the data. */
    uint8_t *start = file + header_cap - h;
    for (int i = 0; i < 8; i++) start[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(start + 8, header, h);
    *len = 8 + h + off;
    return start;
}

static void run_tokens(const ms_model *m)
{
    int32_t V = ms_model_config(m)->vocab_size;
    ms_ctx *c = ms_ctx_new(m, 32);
    ms_state *s = ms_state_new(m), *s2 = ms_state_new(m);
    float *logits = malloc((size_t)V * 2 * sizeof *logits);
    if (!c || !s || !s2 || !logits) abort(); /* a small model's buffers */
    ms_error e = {0};
    int32_t toks[20];
    for (int i = 0; i < 20; i++) toks[i] = (int32_t)((i * 37) % V);
    if (ms_step(c, s, V - 1, logits, &e) != MS_OK) abort();
    /* 20 tokens take the chunked prefill path (more than 16 rows). */
    if (ms_forward(c, s, toks, 20, logits, 0, &e) != MS_OK) abort();
    ms_state *both[2] = {s, s2};
    int32_t two[2] = {0, V - 1};
    float *out[2] = {logits, logits + V};
    if (ms_step_batch(c, both, two, 2, out, &e) != MS_OK) abort();
    e.msg[0] = 0; /* a token past the vocabulary is refused, with a reason */
    if (ms_step(c, s, V, logits, &e) == MS_OK || !e.msg[0]) abort();
    free(logits);
    ms_state_free(s2);
    ms_state_free(s);
    ms_ctx_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static spec specs[MAX_TENSORS];
    size_t n = parse(data, size, specs);
    if (n == 0) return 0;
    size_t len;
    const uint8_t *f = build(specs, n, &len);
    char path[64];
    int fd = fuzz_memfile(f, len, path, sizeof path);
    /* One thread: the pool's serial order, and fast runs. */
    static const ms_weights formats[] = {MS_WEIGHTS_AUTO, MS_WEIGHTS_BF16, MS_WEIGHTS_I8,
                                         MS_WEIGHTS_Q4};
    ms_load_opts o = {.n_threads = 1, .weights = formats[data[0] % 4]};
    ms_model *m = NULL;
    ms_error e = {0};
    if (ms_model_load(path, &o, &m, &e) == MS_OK) {
        run_tokens(m);
        ms_model_free(m);
    } else if (!e.msg[0]) {
        abort(); /* every failure says why */
    }
    close(fd);
    return 0;
}
