/*
 * fuzz_session.c - the session-file reader (server/state_store.c) on a real
 * file in a scratch directory, for a real (tiny) model. An accepted file
 * must yield in-range token ids, a checkpoint no longer than the history,
 * and finite state values; a rejected one must leave the caller's state as
 * it was.
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
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
    return 0;
}
