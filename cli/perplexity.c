/*
 * perplexity.c - `metastate perplexity`: how well a model predicts a
 * text, in bits per byte and bits per token (the mean of -log2 p(next
 * token)), like llama.cpp's perplexity tool. The text runs as one sequence
 * with the state carried along, as the engine runs it, in chunks whose
 * logits are all kept.
 *
 * The stream starts with end-of-text (id 0), as documents do in training.
 * With --docs the file is a fortune(6) file: a line holding only "%" ends
 * a document, and every document is preceded by id 0; predictions of id 0
 * are then not text and are not counted (the held-out measure of
 * tools/train.py and models/README.md).
 */
#include "cli.h"
#include "engine.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 128

static void usage(FILE *f)
{
    fprintf(f, "usage: metastate perplexity --model PATH [--vocab PATH] --file TEXT [--docs]\n"
               "                            [--weights auto|f32|bf16|int8|q4] [--compute f32|bf16]\n"
               "                            [--threads N]\n"
               "Bits per byte and per token of TEXT under the model (one sequence, state\n"
               "carried along). Without --vocab a byte-level vocabulary is used. --docs: a\n"
               "line holding only %% ends a document (fortune format); each document starts\n"
               "after end-of-text and predicting end-of-text is not counted.\n"
               "Prints: bits_per_byte=X bits_per_token=Y tokens=N bytes=M\n");
}

static char *read_file(const char *path, size_t *len, ms_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err->msg, sizeof err->msg, "%s: cannot open", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *nb = realloc(buf, cap *= 2);
        if (!nb) {
            free(buf);
            buf = NULL;
        }
        buf = nb;
    }
    if (!buf || ferror(f)) {
        snprintf(err->msg, sizeof err->msg, "%s: cannot read", path);
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

/* Appends id 0 and the tokens of text[0, len) to *ids (grown as needed). */
static int append_doc(const ms_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                      size_t *n, size_t *cap)
{
    const size_t need = ms_tokenize(tok, text, len, NULL, 0) + 1;
    if (*n + need > *cap) {
        size_t c = (*n + need) * 2;
        int32_t *p = realloc(*ids, c * sizeof *p);
        if (!p)
            return -1;
        *ids = p;
        *cap = c;
    }
    (*ids)[(*n)++] = 0;
    *n += ms_tokenize(tok, text, len, *ids + *n, need - 1);
    return 0;
}

/* A fortune file split at lines "%": documents that are not blank. */
static int split_docs(const ms_tokenizer *tok, const char *s, size_t len, int32_t **ids,
                      size_t *n, size_t *cap)
{
    size_t start = 0, i = 0; /* i: start of the current line */
    for (;;) {
        size_t e = i;
        while (e < len && s[e] != '\n')
            e++;
        const int sep = i < len && e - i == 1 && s[i] == '%';
        if (sep || i >= len) {
            int blank = 1;
            for (size_t k = start; k < i && blank; k++)
                blank = s[k] == ' ' || s[k] == '\n' || s[k] == '\t' || s[k] == '\r';
            if (!blank && append_doc(tok, s + start, i - start, ids, n, cap))
                return -1;
            if (i >= len)
                return 0;
            start = e < len ? e + 1 : len;
        }
        i = e < len ? e + 1 : len;
    }
}

int cmd_perplexity(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"vocab", required_argument, 0, 'v'},
        {"file", required_argument, 0, 'f'},    {"docs", no_argument, 0, 'd'},
        {"weights", required_argument, 0, 'w'}, {"compute", required_argument, 0, 'c'},
        {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model_path = NULL, *vocab = NULL, *file = NULL;
    int docs = 0, weights = MS_WEIGHTS_AUTO, compute = MS_COMPUTE_F32, threads = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:v:f:dw:c:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'v': vocab = optarg; break;
        case 'f': file = optarg; break;
        case 'd': docs = 1; break;
        case 'w': weights = ms_weights_parse(optarg); break;
        case 'c': compute = ms_compute_parse(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model_path || !file || weights < 0 || compute < 0 || threads < 0 || optind != argc) {
        usage(stderr);
        return 2;
    }
    int rc = 1;
    ms_error err = {0};
    ms_tokenizer *tok = NULL;
    ms_model *m = NULL;
    ms_ctx *ctx = NULL;
    ms_state *s = NULL;
    float *logits = NULL;
    int32_t *ids = NULL;
    size_t n = 0, cap = 0, len = 0;
    char *text = read_file(file, &len, &err);
    if (!text)
        goto done;
    if (vocab ? ms_tokenizer_load(vocab, &tok, &err) != MS_OK
              : !(tok = ms_tokenizer_new_bytes())) {
        if (!vocab)
            snprintf(err.msg, sizeof err.msg, "out of memory");
        goto done;
    }
    if (docs ? split_docs(tok, text, len, &ids, &n, &cap) : append_doc(tok, text, len, &ids, &n, &cap)) {
        snprintf(err.msg, sizeof err.msg, "out of memory");
        goto done;
    }
    if (n < 2) {
        snprintf(err.msg, sizeof err.msg, "%s: no text to predict", file);
        goto done;
    }
    ms_load_opts lo = {.n_threads = threads, .weights = (ms_weights)weights,
                       .compute = (ms_compute)compute};
    if (ms_model_load(model_path, &lo, &m, &err))
        goto done;
    const int32_t V = ms_model_config(m)->vocab_size;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= V) {
            snprintf(err.msg, sizeof err.msg,
                     "the vocabulary has ids up to %d but the model only %d rows",
                     ms_tokenizer_n_ids(tok) - 1, V);
            goto done;
        }
    ctx = ms_ctx_new(m, CHUNK);
    s = ms_state_new(m);
    logits = malloc((size_t)CHUNK * (size_t)V * sizeof *logits);
    if (!ctx || !s || !logits) {
        snprintf(err.msg, sizeof err.msg, "out of memory");
        goto done;
    }
    double bits = 0;
    size_t counted = 0, bytes = 0;
    for (size_t i = 0; i + 1 < n; i += CHUNK) {
        const size_t T = n - 1 - i < CHUNK ? n - 1 - i : CHUNK;
        if (ms_forward(ctx, s, ids + i, T, logits, 1, &err))
            goto done;
        for (size_t t = 0; t < T; t++) {
            const int32_t target = ids[i + t + 1];
            if (docs && target == 0)
                continue;
            const float *l = logits + t * (size_t)V;
            float mx = l[0];
            for (int32_t v = 1; v < V; v++)
                mx = l[v] > mx ? l[v] : mx;
            double z = 0;
            for (int32_t v = 0; v < V; v++)
                z += exp((double)l[v] - mx);
            bits += (log(z) + mx - l[target]) / log(2.0);
            size_t nb = 0;
            if (ms_token_bytes(tok, target, &nb))
                bytes += nb;
            counted++;
        }
    }
    printf("bits_per_byte=%.4f bits_per_token=%.4f tokens=%zu bytes=%zu\n",
           bytes ? bits / (double)bytes : 0.0, counted ? bits / (double)counted : 0.0, counted,
           bytes);
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "perplexity: %s\n", err.msg);
    free(text);
    free(ids);
    free(logits);
    ms_ctx_free(ctx);
    ms_state_free(s);
    ms_model_free(m);
    ms_tokenizer_free(tok);
    return rc;
}
