/*
 * tensorfile.c - the format-independent half of tensor files.
 *
 * A tensor file is mapped read-only once and never copied: each ms_tensor is
 * a view into the mapping, so opening a 6 GB checkpoint costs page-table
 * entries, not RAM, and the loader widens each tensor straight from the page
 * cache. The format is recognised from the first bytes (a zip local header,
 * or a safetensors length followed by '{'), never from the file name, since
 * checkpoints are routinely renamed. Names are indexed in an open-addressing
 * hash table because the loader looks up every one of ~300-1000 tensors by
 * name. The host is assumed little-endian, like both file formats.
 */
#include "tensorfile_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ======================================================================== */
/* Dtypes                                                                    */
/* ======================================================================== */

size_t ms_dtype_size(ms_dtype d)
{
    return d == MS_F32 ? 4 : 2;
}

const char *ms_dtype_name(ms_dtype d)
{
    switch (d) {
    case MS_F32: return "F32";
    case MS_F16: return "F16";
    case MS_BF16: return "BF16";
    }
    return "?";
}

int ms_tf_checked_bytes(int ndim, const int64_t *shape, size_t elem_size,
                        uint64_t *numel, uint64_t *nbytes)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return -1;
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && n > (uint64_t)INT64_MAX / d)
            return -1;
        n *= d;
    }
    if (elem_size != 0 && n > (uint64_t)INT64_MAX / elem_size)
        return -1;
    *numel = n;
    *nbytes = n * elem_size;
    return 0;
}

/* ======================================================================== */
/* Building the object (called by the format parsers)                        */
/* ======================================================================== */

ms_status ms_tf_add(ms_tensorfile *tf, const char *name, size_t name_len,
                    ms_dtype dtype, int ndim, const int64_t *shape,
                    const void *data, size_t nbytes, ms_error *err)
{
    if (tf->n == tf->cap) {
        size_t cap = tf->cap ? tf->cap * 2 : 64;
        ms_tensor *t = realloc(tf->tensors, cap * sizeof *t);
        if (!t)
            return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory indexing tensors", tf->path);
        tf->tensors = t;
        tf->cap = cap;
    }
    char *copy = malloc(name_len + 1);
    if (!copy)
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory indexing tensors", tf->path);
    memcpy(copy, name, name_len);
    copy[name_len] = '\0';

    ms_tensor *t = &tf->tensors[tf->n++];
    memset(t, 0, sizeof *t);
    t->name = copy;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = nbytes;
    return MS_OK;
}

ms_status ms_tf_add_meta(ms_tensorfile *tf, const char *key, const char *value,
                         ms_error *err)
{
    char **m = realloc(tf->meta, (tf->n_meta + 1) * 2 * sizeof *m);
    if (!m)
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory reading metadata", tf->path);
    tf->meta = m;
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory reading metadata", tf->path);
    }
    m[tf->n_meta * 2] = k;
    m[tf->n_meta * 2 + 1] = v;
    tf->n_meta++;
    return MS_OK;
}

/* FNV-1a: short names, few of them; quality matters less than simplicity. */
static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* Builds tf->slots from tf->tensors; a repeated name is a format error since
 * lookups would silently pick one of the two. */
static ms_status build_index(ms_tensorfile *tf, ms_error *err)
{
    size_t ns = 16;
    while (ns < tf->n * 2)
        ns *= 2;
    tf->slots = calloc(ns, sizeof *tf->slots);
    if (!tf->slots)
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory indexing tensors", tf->path);
    tf->nslots = ns;
    for (size_t i = 0; i < tf->n; i++) {
        size_t j = (size_t)name_hash(tf->tensors[i].name) & (ns - 1);
        while (tf->slots[j]) {
            if (strcmp(tf->tensors[tf->slots[j] - 1].name, tf->tensors[i].name) == 0)
                return ms_fail(err, MS_ERR_FORMAT, "%s: tensor '%s' appears twice",
                               tf->path, tf->tensors[i].name);
            j = (j + 1) & (ns - 1);
        }
        tf->slots[j] = i + 1;
    }
    return MS_OK;
}

/* ======================================================================== */
/* Public API                                                                */
/* ======================================================================== */

/* Maps the whole file read-only into tf->map / tf->size. */
static ms_status map_file(ms_tensorfile *tf, ms_error *err)
{
    int fd = open(tf->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ms_fail(err, MS_ERR_IO, "%s: cannot open: %s", tf->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ms_fail(err, MS_ERR_IO, "%s: cannot stat: %s", tf->path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ms_fail(err, MS_ERR_IO, "%s: not a regular file", tf->path);
    }
    if (st.st_size == 0) {
        close(fd);
        return ms_fail(err, MS_ERR_FORMAT, "%s: empty file (0 bytes)", tf->path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return ms_fail(err, MS_ERR_IO, "%s: file too large to map", tf->path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (p == MAP_FAILED)
        return ms_fail(err, MS_ERR_IO, "%s: cannot mmap %lld bytes: %s", tf->path,
                       (long long)st.st_size, strerror(e));
    tf->map = p;
    tf->size = (size_t)st.st_size;
    return MS_OK;
}

ms_status ms_tensorfile_open(const char *path, ms_tensorfile **out, ms_error *err)
{
    if (out)
        *out = NULL;
    if (!path || !out)
        return ms_fail(err, MS_ERR_INVALID, "ms_tensorfile_open: NULL argument");
    ms_tensorfile *tf = calloc(1, sizeof *tf);
    if (!tf || !(tf->path = strdup(path))) {
        free(tf);
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
    }
    ms_status st = map_file(tf, err);
    if (st == MS_OK) {
        const uint8_t *b = tf->map;
        if (tf->size >= 4 && memcmp(b, "PK\x03\x04", 4) == 0)
            st = ms_pth_parse(tf, err);
        else if (tf->size >= 9 && b[8] == '{')
            st = ms_safetensors_parse(tf, err);
        else
            st = ms_fail(err, MS_ERR_FORMAT,
                         "%s: not a tensor file (neither safetensors nor a PyTorch zip; "
                         "%zu bytes, starts with %02x %02x %02x %02x)",
                         tf->path, tf->size, b[0], tf->size > 1 ? b[1] : 0,
                         tf->size > 2 ? b[2] : 0, tf->size > 3 ? b[3] : 0);
    }
    if (st == MS_OK)
        st = build_index(tf, err);
    if (st != MS_OK) {
        ms_tensorfile_close(tf);
        return st;
    }
    *out = tf;
    return MS_OK;
}

void ms_tensorfile_close(ms_tensorfile *tf)
{
    if (!tf)
        return;
    if (tf->map)
        munmap((void *)tf->map, tf->size);
    for (size_t i = 0; i < tf->n; i++)
        free((char *)tf->tensors[i].name);
    free(tf->tensors);
    free(tf->slots);
    for (size_t i = 0; i < tf->n_meta * 2; i++)
        free(tf->meta[i]);
    free(tf->meta);
    free(tf->path);
    free(tf);
}

const char *ms_tensorfile_path(const ms_tensorfile *tf)
{
    return tf->path;
}

size_t ms_tensorfile_count(const ms_tensorfile *tf)
{
    return tf->n;
}

const ms_tensor *ms_tensorfile_at(const ms_tensorfile *tf, size_t i)
{
    return i < tf->n ? &tf->tensors[i] : NULL;
}

const ms_tensor *ms_tensorfile_find(const ms_tensorfile *tf, const char *name)
{
    if (!tf->nslots || !name)
        return NULL;
    size_t j = (size_t)name_hash(name) & (tf->nslots - 1);
    while (tf->slots[j]) {
        const ms_tensor *t = &tf->tensors[tf->slots[j] - 1];
        if (strcmp(t->name, name) == 0)
            return t;
        j = (j + 1) & (tf->nslots - 1);
    }
    return NULL;
}

const char *ms_tensorfile_meta(const ms_tensorfile *tf, const char *key)
{
    for (size_t i = 0; key && i < tf->n_meta; i++)
        if (strcmp(tf->meta[i * 2], key) == 0)
            return tf->meta[i * 2 + 1];
    return NULL;
}

/* ======================================================================== */
/* Element conversion                                                        */
/* ======================================================================== */

int64_t ms_tensor_numel(const ms_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* IEEE binary16 -> binary32, exact for every input (subnormals are
 * renormalised, inf/nan keep their payload). */
static float half_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        uint32_t e = 113; /* biased exponent of 2^-14, the subnormal scale */
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void ms_tensor_to_f32(const ms_tensor *t, float *dst)
{
    size_t n = (size_t)ms_tensor_numel(t);
    const uint8_t *src = t->data;
    if (n == 0)
        return;
    switch (t->dtype) {
    case MS_F32:
        memcpy(dst, src, n * 4);
        break;
    case MS_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&dst[i], &bits, 4);
        }
        break;
    case MS_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = half_to_f32(h);
        }
        break;
    }
}
