/*
 * fuzz_session.c - the session-file reader (server/state_store.c) on a real
 * file in a scratch directory, for a real (tiny) model. An accepted file
 * must yield in-range token ids, a checkpoint no longer than the history,
 * and finite state values; a rejected one must leave the caller's state as
 * it was. Each input is tried as given and once more with its trailing
 * CRC-32 recomputed, so mutations also reach the checks behind the checksum.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "fuzz_util.h"
#include "state_store.h"

static ms_model *model;
static ms_state *st, *ck;
static char dir[128], path[200];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ms_error e = {0};
    if (ms_model_load(fuzz_env("METASTATE_FUZZ_MODEL"), NULL, &model, &e) != MS_OK) {
        fprintf(stderr, "fuzz_session: %s\n", e.msg);
        abort();
    }
    st = ms_state_new(model);
    ck = ms_state_new(model);
    snprintf(dir, sizeof dir, "/dev/shm/metastate-fuzz-XXXXXX");
    if (!st || !ck || !mkdtemp(dir)) abort();
    snprintf(path, sizeof path, "%s/f.state", dir);
    return 0;
}

static uint32_t crc32_ieee(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

static void try_load(const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) abort();
    ms_state_reset(st);
    store_record r = {.state = st, .ckpt = ck};
    char err[512];
    int rc = store_load(dir, "f", &r, model, err, sizeof err);
    if (rc == 0) {
        const int32_t V = ms_model_config(model)->vocab_size;
        for (size_t i = 0; i < r.n_tokens; i++)
            if (r.tokens[i] < 0 || r.tokens[i] >= V) abort();
        if (r.n_ckpt > r.n_tokens) abort();
        if (!store_values_ok(ms_state_cdata(st), ms_state_nfloats(st))) abort();
        if (strlen(r.init_state) > STORE_NAME_MAX) abort();
        free(r.tokens);
    } else {
        if (r.tokens || !err[0]) abort();
        const float *x = ms_state_cdata(st);
        for (size_t i = 0; i < ms_state_nfloats(st); i++)
            if (x[i] != 0.0f) abort(); /* a rejected file touched the state */
    }
    (void)store_peek_tokens(dir, "f");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    try_load(data, size);
    if (size >= 4) {
        uint8_t *copy = malloc(size);
        if (!copy) abort();
        memcpy(copy, data, size);
        uint32_t c = crc32_ieee(copy, size - 4);
        for (int i = 0; i < 4; i++) copy[size - 4 + (size_t)i] = (uint8_t)(c >> (8 * i));
        try_load(copy, size);
        free(copy);
    }
    return 0;
}
