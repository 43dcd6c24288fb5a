/*
 * file_bytes.h - a whole file's bytes for the unit tests, failing the test
 * when it cannot be opened or read. The caller frees the buffer.
 */
#ifndef METASTATE_TESTS_FILE_BYTES_H
#define METASTATE_TESTS_FILE_BYTES_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static inline uint8_t *read_file_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = malloc((size_t)len + 1);
    cr_assert_not_null(d);
    cr_assert_eq(fread(d, 1, (size_t)len, f), (size_t)len, "cannot read %s", path);
    fclose(f);
    *n = (size_t)len;
    return d;
}

#endif
