/*
 * fuzz_tensorfile.c - the tensor-file readers (safetensors and the .pth zip
 * with its pickle VM, picked by content as for any model or state file):
 * open, index, and convert every tensor that is small enough to F32. A
 * tensor the reader accepts must lie inside the file.
 */
#include <stdlib.h>
#include <unistd.h>

#include "engine.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    ms_tensorfile *tf = NULL;
    ms_error e = {0};
    if (ms_tensorfile_open(path, &tf, &e) == MS_OK) {
        size_t n = ms_tensorfile_count(tf);
        for (size_t i = 0; i < n; i++) {
            const ms_tensor *t = ms_tensorfile_at(tf, i);
            if (!t || !t->name || ms_tensorfile_find(tf, t->name) == NULL) abort();
            if (t->nbytes > size) abort(); /* a view past the end of the input */
            int64_t ne = ms_tensor_numel(t);
            if (ne < 0) abort();
            if (ne > 0 && ne <= (1 << 16)) {
                float *f = malloc((size_t)ne * sizeof *f);
                if (f) ms_tensor_to_f32(t, f);
                free(f);
            }
        }
        (void)ms_tensorfile_meta(tf, "format");
        ms_tensorfile_close(tf);
    } else if (!e.msg[0]) {
        abort(); /* every failure says why */
    }
    close(fd);
    return 0;
}
