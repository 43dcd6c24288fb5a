/*
 * shared_ref.h - where unit tests find the third-party reference data
 * (../shared/golden, ../shared/vocab; never copied into the project) and
 * how a test ends when its data is absent.
 *
 * A user's `make test` without ../shared skips such tests; every skip
 * reason starts with a short category ("../shared not present", "CPU
 * lacks avx512", ...) before a ';', which tests/run.sh counts in its
 * summary. With METASTATE_REQUIRE_REFERENCE=1 (set by .ci/run) a missing
 * reference is a failure, so CI cannot pass by skipping.
 */
#ifndef METASTATE_TESTS_SHARED_REF_H
#define METASTATE_TESTS_SHARED_REF_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define SKIP_NO_SHARED "../shared not present"

static inline const char *shared_dir(void)
{
    const char *s = getenv("METASTATE_SHARED");
    return s && *s ? s : "../shared";
}

static inline int reference_required(void)
{
    const char *r = getenv("METASTATE_REQUIRE_REFERENCE");
    return r && *r && *r != '0';
}

/* Ends the test when `path` is unreadable: a skip, or a failure when the
 * reference is required. Call before the test allocates anything that a
 * skipped test would leak. */
#define require_reference_file(path)                                                          \
    do {                                                                                      \
        if (access((path), R_OK) != 0) {                                                      \
            if (reference_required())                                                         \
                cr_assert_fail("%s missing and METASTATE_REQUIRE_REFERENCE=1", (path));       \
            cr_skip_test(SKIP_NO_SHARED "; %s missing (set METASTATE_SHARED)", (path));       \
        }                                                                                     \
    } while (0)

/* buf <- <shared>/<sub>/<file>; the test ends as above when it is absent. */
#define shared_file(buf, cap, sub, file)                                                      \
    do {                                                                                      \
        snprintf((buf), (cap), "%s/%s/%s", shared_dir(), (sub), (file));                     \
        require_reference_file(buf);                                                          \
    } while (0)

#endif
