/*
 * fuzz_state_import.c - PUT /v1/sessions/{id}/state's path below HTTP: the
 * uploaded bytes go through pool_import (tensor-file reader, the state's
 * tensor names and shapes, the value bounds) into a real session pool for a
 * real tiny model. An accepted import must leave a session whose exported
 * state is finite and bounded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine.h"
#include "fuzz_util.h"
#include "sessions.h"

static ms_model *model;
static sess_pool *pool;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ms_error e = {0};
    if (ms_model_load(fuzz_env("METASTATE_FUZZ_MODEL"), NULL, &model, &e) != MS_OK) {
        fprintf(stderr, "fuzz_state_import: %s\n", e.msg);
        abort();
    }
    pool = pool_new(model, (size_t)1 << 30, NULL, 4, 0, NULL, 0);
    if (!pool) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[600];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    err[0] = 0;
    srv_status rc = pool_import(pool, "imp", path, err, sizeof err);
    close(fd);
    if (rc == SRV_OK) {
        /* Read it back through the export path. */
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f || pool_export(pool, "imp", f, err, sizeof err) != SRV_OK) abort();
        fclose(f);
        free(buf);
        if (pool_delete(pool, "imp", NULL, 0) != SRV_OK) abort();
    } else if (rc != SRV_ERR_INVALID || !err[0]) {
        /* A rejected upload is SRV_ERR_INVALID with a reason; anything else
         * (busy, full, out of memory) cannot happen to this one session. */
        abort();
    }
    return 0;
}
