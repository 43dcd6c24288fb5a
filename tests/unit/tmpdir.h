/*
 * tmpdir.h - one fresh temporary directory per test (Criterion runs each
 * test in its own process): TEST_TMPDIR("tag") defines `dir` and the
 * make_dir/remove_dir pair to pass as a suite's .init and .fini. A test
 * that skips itself (cr_skip_test) ends without its .fini: the directory
 * goes at the process's exit then.
 */
#ifndef METASTATE_TESTS_TMPDIR_H
#define METASTATE_TESTS_TMPDIR_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#define TEST_TMPDIR(tag)                                                                         \
    static char dir[256];                                                                        \
    static int rm_dir(void)                                                                      \
    {                                                                                            \
        char cmd[300];                                                                           \
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);                                           \
        return dir[0] ? system(cmd) : 0;                                                         \
    }                                                                                            \
    static void rm_dir_at_exit(void) { (void)rm_dir(); }                                         \
    static void make_dir(void)                                                                   \
    {                                                                                            \
        snprintf(dir, sizeof dir, "/tmp/ms-test-" tag "-XXXXXX");                               \
        cr_assert_not_null(mkdtemp(dir));                                                        \
        atexit(rm_dir_at_exit);                                                                  \
    }                                                                                            \
    static void remove_dir(void)                                                                 \
    {                                                                                            \
        cr_assert_eq(rm_dir(), 0);                                                               \
        dir[0] = 0;                                                                              \
    }

#endif
