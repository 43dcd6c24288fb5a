/*
 * fuzz_vocab.c - the vocabulary reader (World format: "<id> <python str or
 * bytes literal> <byte length>" per line). An accepted vocabulary must
 * tokenize text (here: the input itself) into ids it knows, and decode them
 * back through the streaming decoder.
 */
#include <stdlib.h>
#include <unistd.h>

#include "engine.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    ms_tokenizer *t = NULL;
    ms_error e = {0};
    if (ms_tokenizer_load(path, &t, &e) == MS_OK) {
        int32_t ids[512];
        size_t n = ms_tokenize(t, (const char *)data, size, ids, 512);
        size_t m = n < 512 ? n : 512;
        ms_detok d;
        ms_detok_init(&d);
        char out[512];
        for (size_t i = 0; i < m; i++) {
            if (ids[i] < 0 || ids[i] >= ms_tokenizer_n_ids(t)) abort();
            if (ms_detok_push(&d, t, ids[i], out) > sizeof out) abort();
        }
        (void)ms_detok_flush(&d, out);
        ms_tokenizer_free(t);
    } else if (!e.msg[0]) {
        abort();
    }
    close(fd);
    return 0;
}
