/*
 * test_tensorfile.c - safetensors / .pth reading and writing (suite
 * "tensorfile"). Fixtures are built at test time in a mkdtemp directory.
 */
#include <criterion/criterion.h>

#include "engine.h"

#include <stdlib.h>
#include <string.h>

static const char *golden_dir(char *buf, size_t cap)
{
    const char *s = getenv("METASTATE_SHARED");
    snprintf(buf, cap, "%s/golden", s && *s ? s : "../shared");
    return buf;
}

Test(tensorfile, golden_safetensors_opens)
{
    char dir[1024], path[1200];
    golden_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tiny_l2_d128_fp32.safetensors", dir);
    FILE *f = fopen(path, "rb");
    if (!f)
        cr_skip_test("golden files not found in %s (set METASTATE_SHARED)", dir);
    fclose(f);
    ms_tensorfile *tf;
    ms_error e;
    cr_assert_eq(ms_tensorfile_open(path, &tf, &e), MS_OK, "%s", e.msg);
    const ms_tensor *t = ms_tensorfile_find(tf, "emb.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 512);
    cr_assert_eq(t->shape[1], 128);
    ms_tensorfile_close(tf);
}
