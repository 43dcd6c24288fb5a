/*
 * fuzz_tokenizer.c - the tokenizer on arbitrary bytes, with the project's
 * byte vocabulary plus multi-byte tokens (so greedy longest match has
 * choices to make). Properties: every byte is representable, so decoding
 * the ids gives back exactly the input; a too-small id buffer reports the
 * same count; and when the input is valid UTF-8 the streaming decoder's
 * pieces add up to the input.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "fuzz_util.h"

static ms_tokenizer *tok;

/* Extra tokens over the 256 single bytes (str literals, some multi-byte). */
static const char *const extra[] = {
    "'th' 2", "'the' 3", "'the ' 4", "' the' 4", "'ing' 3", "'\\n\\n' 2", "'ab' 2", "'abc' 3",
    "'\\u00e9' 2", "'\\u00e9t\\u00e9' 5", "'\\u4e2d\\u6587' 6", "b'\\xe4\\xb8' 2",
    "'\\U0001f600' 4", "b'\\xf0\\x9f' 2", "'aaaa' 4", "'aa' 2",
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = fuzz_env("METASTATE_FUZZ_VOCAB");
    FILE *in = fopen(base, "rb");
    if (!in) {
        perror(base);
        abort();
    }
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    char line[512];
    while (fgets(line, sizeof line, in)) fputs(line, out);
    fclose(in);
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
        fprintf(out, "%zu %s\n", 257 + i, extra[i]);
    fclose(out);
    char path[64];
    (void)fuzz_memfile((const uint8_t *)text, len, path, sizeof path); /* kept open */
    free(text);
    ms_error e = {0};
    if (ms_tokenizer_load(path, &tok, &e) != MS_OK) {
        fprintf(stderr, "fuzz_tokenizer: cannot load the vocabulary: %s\n", e.msg);
        abort();
    }
    return 0;
}

/* 1 when s[0..n) is valid UTF-8 (no surrogates, no overlongs). */
static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) k = 1, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF) k = 2, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4) k = 3, cp = c & 0x07;
        else return 0;
        if (i + k >= n) return 0; /* truncated sequence */
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    static int32_t ids[4096];
    size_t n = ms_tokenize(tok, (const char *)data, size, ids, 4096);
    if (n > size) abort(); /* every token covers at least one byte */
    if (size > 1) {
        int32_t few[1];
        if (ms_tokenize(tok, (const char *)data, size, few, 1) != n) abort();
    }
    /* Round trip through the token bytes. */
    static char back[4096];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = 0;
        const char *b = ms_token_bytes(tok, ids[i], &l);
        if (!b || o + l > size) abort();
        memcpy(back + o, b, l);
        o += l;
    }
    if (o != size || memcmp(back, data, size)) abort();
    /* Streaming decode. */
    ms_detok d;
    ms_detok_init(&d);
    static char piece[512];
    static char stream[4096 * 3 + 512];
    size_t so = 0;
    for (size_t i = 0; i < n; i++) {
        size_t w = ms_detok_push(&d, tok, ids[i], piece);
        memcpy(stream + so, piece, w);
        so += w;
    }
    so += ms_detok_flush(&d, stream + so);
    if (utf8_valid(data, size) && (so != size || memcmp(stream, data, size))) abort();
    return 0;
}
