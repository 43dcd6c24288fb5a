/*
 * tensorfile_internal.h - what tensorfile.c, safetensors.c and pth.c share.
 *
 * tensorfile.c owns the object (mapping, tensor list, name index, metadata);
 * the two format parsers only walk the mapped bytes and call ms_tf_add /
 * ms_tf_add_meta. Everything the parsers add points into the mapping, so a
 * tensor view costs no copy.
 */
#ifndef METASTATE_TENSORFILE_INTERNAL_H
#define METASTATE_TENSORFILE_INTERNAL_H

#include "internal.h"

struct ms_tensorfile {
    char *path;            /* as given to open, for messages */
    const uint8_t *map;    /* whole file, read-only; NULL when size is 0 */
    size_t size;
    ms_tensor *tensors;    /* file order; names are separately malloc'd */
    size_t n, cap;
    size_t *slots;         /* open-addressing name index: tensor index + 1, 0 = empty */
    size_t nslots;         /* power of two, >= 2n */
    char **meta;           /* key, value, key, value... (malloc'd strings) */
    size_t n_meta;         /* number of pairs */
};

/* Appends a tensor view (name copied, data points into tf->map). Fails only
 * with MS_ERR_NOMEM. */
ms_status ms_tf_add(ms_tensorfile *tf, const char *name, size_t name_len,
                    ms_dtype dtype, int ndim, const int64_t *shape,
                    const void *data, size_t nbytes, ms_error *err);
/* Appends one __metadata__ pair (both copied). MS_ERR_NOMEM on failure. */
ms_status ms_tf_add_meta(ms_tensorfile *tf, const char *key, const char *value,
                         ms_error *err);

/* Overflow-checked element count: 0 on success, -1 when a dimension is
 * negative or the product (times elem_size) does not fit in int64. */
int ms_tf_checked_bytes(int ndim, const int64_t *shape, size_t elem_size,
                        uint64_t *numel, uint64_t *nbytes);

/* Format parsers: fill tf from tf->map[0..size). Messages start with tf->path. */
ms_status ms_safetensors_parse(ms_tensorfile *tf, ms_error *err);
ms_status ms_pth_parse(ms_tensorfile *tf, ms_error *err);

/* Test hook: ms_pth_write, but every entry carries zip64 records even when
 * small, so the zip64 reader path can be exercised without 4 GB fixtures. */
ms_status ms_pth_write_zip64(const char *path, const ms_tensor *tensors, size_t n,
                             ms_error *err);

#endif
