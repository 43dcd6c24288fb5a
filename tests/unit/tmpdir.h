/*
 * tmpdir.h - one fresh temporary directory per test (Criterion runs each
 * test in its own process): TEST_TMPDIR("tag") defines `dir` and the
 * make_dir/remove_dir pair to pass as a suite's .init and .fini.
 */
#ifndef METASTATE_TESTS_TMPDIR_H
#define METASTATE_TESTS_TMPDIR_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#define TEST_TMPDIR(tag)                                                                         \
    static char dir[256];                                                                        \
    static void make_dir(void)                                                                   \
    {                                                                                            \
        snprintf(dir, sizeof dir, "/tmp/ms-test-" tag "-XXXXXX");                               \
        cr_assert_not_null(mkdtemp(dir));                                                        \
    }                                                                                            \
    static void remove_dir(void)                                                                 \
    {                                                                                            \
        char cmd[300];                                                                           \
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);                                           \
        cr_assert_eq(system(cmd), 0);                                                            \
    }

#endif
