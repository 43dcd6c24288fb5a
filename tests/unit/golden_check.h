/*
 * golden_check.h - helpers shared by the golden-output tests
 * (test_golden.c: ../shared/golden; test_metastate_golden.c:
 * tests/golden_ms): tolerances of the golden README, token lists from a
 * manifest, and the largest difference to a reference tensor.
 */
#ifndef METASTATE_TESTS_GOLDEN_CHECK_H
#define METASTATE_TESTS_GOLDEN_CHECK_H

#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

#include "engine.h"

#define TOL_LOGITS 1e-4
#define TOL_WKV 1e-4
#define TOL_SHIFT 5e-5

/* The int array `key` of a manifest (malloc'd, *n entries). */
static inline int32_t *json_tokens(json_t *root, const char *key, size_t *n)
{
    json_t *a = json_object_get(root, key);
    cr_assert(json_is_array(a), "manifest has no '%s'", key);
    *n = json_array_size(a);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    cr_assert_not_null(v);
    for (size_t i = 0; i < *n; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return v;
}

/* Max |a - ref| over n floats where ref is tensor `name` of the reference
 * file; NaN counts as infinitely far. */
static inline double max_diff(const float *a, const ms_tensorfile *ref, const char *name,
                              size_t n)
{
    const ms_tensor *t = ms_tensorfile_find(ref, name);
    cr_assert_not_null(t, "reference tensor %s missing", name);
    cr_assert_eq((size_t)ms_tensor_numel(t), n, "%s: %lld elements, engine has %zu", name,
                 (long long)ms_tensor_numel(t), n);
    float *r = malloc(n * sizeof *r);
    cr_assert_not_null(r);
    ms_tensor_to_f32(t, r);
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - r[i]);
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    free(r);
    return m;
}

#endif
