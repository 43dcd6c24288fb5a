/*
 * safetensors.c - reading and writing the safetensors format.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON, then the data
 * section. The header is parsed with jansson and every number in it is
 * treated as hostile: offsets are checked against the data section and the
 * byte count against shape x dtype before a view is created, so a bad file
 * fails at open with a message and never faults later in the loader.
 * Tensors are listed in data order (the order of their bytes in the file),
 * which is also header order for files written by us and by the reference.
 */
#include "tensorfile_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* The reference implementation refuses headers above 100 MB; so do we, so a
 * corrupt length cannot make jansson chew through a multi-GB data section. */
#define ST_MAX_HEADER (100u * 1024 * 1024)

/* ======================================================================== */
/* Reading                                                                   */
/* ======================================================================== */

typedef struct st_entry {
    const char *name;   /* owned by the json tree */
    ms_dtype dtype;
    int ndim;
    int64_t shape[MS_MAX_DIMS];
    uint64_t begin, end;
    size_t order;       /* header position, tie-break for equal offsets */
} st_entry;

static int cmp_entry(const void *a, const void *b)
{
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Parses "dtype": F32/F16/BF16 -> 0; anything else -> -1. */
static int parse_dtype(const char *s, ms_dtype *d)
{
    if (strcmp(s, "F32") == 0)
        *d = MS_F32;
    else if (strcmp(s, "F16") == 0)
        *d = MS_F16;
    else if (strcmp(s, "BF16") == 0)
        *d = MS_BF16;
    else
        return -1;
    return 0;
}

/* Validates one header entry against a data section of data_len bytes and
 * fills e. Errors name the tensor. */
static ms_status parse_entry(const ms_tensorfile *tf, const char *name, json_t *v,
                             uint64_t data_len, st_entry *e, ms_error *err)
{
    const char *p = tf->path;
    if (!json_is_object(v))
        return ms_fail(err, MS_ERR_FORMAT, "%s: header entry for tensor '%s' is not an object",
                       p, name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return ms_fail(err, MS_ERR_FORMAT, "%s: tensor '%s' has no \"dtype\" string", p, name);
    if (parse_dtype(json_string_value(jd), &e->dtype) != 0)
        return ms_fail(err, MS_ERR_DTYPE,
                       "%s: tensor '%s' has dtype %.32s (supported: F32, F16, BF16)", p, name,
                       json_string_value(jd));
    if (!json_is_array(js))
        return ms_fail(err, MS_ERR_FORMAT, "%s: tensor '%s' has no \"shape\" array", p, name);
    size_t nd = json_array_size(js);
    if (nd > MS_MAX_DIMS)
        return ms_fail(err, MS_ERR_UNSUPPORTED, "%s: tensor '%s' has %zu dimensions (at most %d)",
                       p, name, nd, MS_MAX_DIMS);
    e->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *x = json_array_get(js, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return ms_fail(err, MS_ERR_FORMAT,
                           "%s: tensor '%s': shape[%zu] is not a non-negative integer", p, name, i);
        e->shape[i] = (int64_t)json_integer_value(x);
    }
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: tensor '%s' has no \"data_offsets\": [begin, end] integers", p, name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t en = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || en < b || (uint64_t)en > data_len)
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%lld, %lld] outside the data section "
                       "(%llu bytes; truncated file?)",
                       p, name, (long long)b, (long long)en, (unsigned long long)data_len);
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    uint64_t numel, nbytes;
    if (ms_tf_checked_bytes(e->ndim, e->shape, ms_dtype_size(e->dtype), &numel, &nbytes) != 0)
        return ms_fail(err, MS_ERR_FORMAT, "%s: tensor '%s': shape too large", p, name);
    if (nbytes != e->end - e->begin)
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets span %llu bytes, but %llu %s elements "
                       "need %llu",
                       p, name, (unsigned long long)(e->end - e->begin),
                       (unsigned long long)numel, ms_dtype_name(e->dtype),
                       (unsigned long long)nbytes);
    return MS_OK;
}

/* Copies the "__metadata__" string map into tf. */
static ms_status parse_meta(ms_tensorfile *tf, json_t *m, ms_error *err)
{
    if (!json_is_object(m))
        return ms_fail(err, MS_ERR_FORMAT, "%s: \"__metadata__\" is not an object", tf->path);
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        if (!json_is_string(v))
            return ms_fail(err, MS_ERR_FORMAT, "%s: \"__metadata__\" value of '%s' is not a string",
                           tf->path, k);
        ms_status st = ms_tf_add_meta(tf, k, json_string_value(v), err);
        if (st != MS_OK)
            return st;
    }
    return MS_OK;
}

ms_status ms_safetensors_parse(ms_tensorfile *tf, ms_error *err)
{
    const char *p = tf->path;
    if (tf->size < 8)
        return ms_fail(err, MS_ERR_FORMAT, "%s: truncated file (%zu bytes, no header length)",
                       p, tf->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | tf->map[i];
    if (hlen < 2 || hlen > ST_MAX_HEADER)
        return ms_fail(err, MS_ERR_FORMAT, "%s: bad safetensors header length %llu",
                       p, (unsigned long long)hlen);
    if (hlen > tf->size - 8)
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: truncated file (header of %llu bytes ends at %llu, beyond end %zu)",
                       p, (unsigned long long)hlen, (unsigned long long)hlen + 8, tf->size);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)tf->map + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return ms_fail(err, MS_ERR_FORMAT, "%s: invalid JSON header (byte %d: %s)",
                       p, jerr.position + 8, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return ms_fail(err, MS_ERR_FORMAT, "%s: JSON header is not an object", p);
    }

    const uint8_t *data = tf->map + 8 + hlen;
    uint64_t data_len = tf->size - 8 - hlen;
    size_t cap = json_object_size(root);
    st_entry *ents = calloc(cap ? cap : 1, sizeof *ents);
    if (!ents) {
        json_decref(root);
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", p);
    }
    size_t n = 0;
    ms_status st = MS_OK;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (strcmp(k, "__metadata__") == 0)
            st = parse_meta(tf, v, err);
        else {
            ents[n].name = k;
            ents[n].order = n;
            st = parse_entry(tf, k, v, data_len, &ents[n], err);
            n++;
        }
        if (st != MS_OK)
            break;
    }
    if (st == MS_OK) {
        qsort(ents, n, sizeof *ents, cmp_entry);
        for (size_t i = 0; i < n && st == MS_OK; i++)
            st = ms_tf_add(tf, ents[i].name, strlen(ents[i].name), ents[i].dtype, ents[i].ndim,
                           ents[i].shape, data + ents[i].begin,
                           (size_t)(ents[i].end - ents[i].begin), err);
    }
    free(ents);
    json_decref(root);
    return st;
}

/* ======================================================================== */
/* Writing                                                                   */
/* ======================================================================== */

/* Checks that t is a self-consistent view (the writer trusts nothing else). */
static ms_status check_tensor(const ms_tensor *t, size_t i, ms_error *err)
{
    if (!t->name)
        return ms_fail(err, MS_ERR_INVALID, "safetensors write: tensor %zu has no name", i);
    if (t->dtype != MS_F32 && t->dtype != MS_F16 && t->dtype != MS_BF16)
        return ms_fail(err, MS_ERR_DTYPE, "safetensors write: tensor '%s' has an invalid dtype",
                       t->name);
    if (t->ndim < 0 || t->ndim > MS_MAX_DIMS)
        return ms_fail(err, MS_ERR_INVALID, "safetensors write: tensor '%s' has %d dimensions",
                       t->name, t->ndim);
    uint64_t numel, nbytes;
    if (ms_tf_checked_bytes(t->ndim, t->shape, ms_dtype_size(t->dtype), &numel, &nbytes) != 0 ||
        nbytes != t->nbytes || (nbytes && !t->data))
        return ms_fail(err, MS_ERR_INVALID,
                       "safetensors write: tensor '%s' has %zu bytes, shape x dtype says otherwise",
                       t->name, t->nbytes);
    return MS_OK;
}

/* Builds the header object; *out owns it on success. */
static ms_status build_header(const ms_tensor *ts, size_t n, const char *const *meta,
                              json_t **out, ms_error *err)
{
    json_t *root = json_object();
    int bad = !root;
    if (!bad && meta && meta[0]) {
        json_t *m = json_object();
        bad = json_object_set_new(root, "__metadata__", m) != 0;
        for (size_t i = 0; !bad && meta[i]; i += 2) {
            if (!meta[i + 1]) {
                json_decref(root);
                return ms_fail(err, MS_ERR_INVALID,
                               "safetensors write: metadata key '%s' has no value", meta[i]);
            }
            bad = json_object_set_new(m, meta[i], json_string(meta[i + 1])) != 0;
        }
    }
    uint64_t off = 0;
    for (size_t i = 0; !bad && i < n; i++) {
        const ms_tensor *t = &ts[i];
        ms_status st = check_tensor(t, i, err);
        if (st == MS_OK && (strcmp(t->name, "__metadata__") == 0 || json_object_get(root, t->name)))
            st = ms_fail(err, MS_ERR_INVALID, "safetensors write: tensor name '%s' used twice",
                         t->name);
        if (st != MS_OK) {
            json_decref(root);
            return st;
        }
        json_t *shape = json_array();
        for (int d = 0; shape && d < t->ndim; d++)
            if (json_array_append_new(shape, json_integer(t->shape[d])) != 0)
                bad = 1;
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", ms_dtype_name(t->dtype),
                              "shape", shape, "data_offsets", (json_int_t)off,
                              (json_int_t)(off + t->nbytes));
        if (!e || json_object_set_new(root, t->name, e) != 0)
            bad = 1;
        off += t->nbytes;
    }
    if (bad) {
        json_decref(root);
        return ms_fail(err, MS_ERR_NOMEM, "safetensors write: out of memory building the header "
                                          "(or a name is not valid UTF-8)");
    }
    *out = root;
    return MS_OK;
}

ms_status ms_safetensors_write(FILE *f, const ms_tensor *tensors, size_t n,
                               const char *const *meta, ms_error *err)
{
    if (!f || (n && !tensors))
        return ms_fail(err, MS_ERR_INVALID, "safetensors write: NULL argument");
    json_t *root = NULL;
    ms_status st = build_header(tensors, n, meta, &root, err);
    if (st != MS_OK)
        return st;
    char *js = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!js)
        return ms_fail(err, MS_ERR_NOMEM, "safetensors write: out of memory dumping the header");
    size_t len = strlen(js);
    size_t padded = (len + 7) & ~(size_t)7; /* keeps the data section 8-byte aligned */
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(lenbuf, 1, 8, f) == 8 && fwrite(js, 1, len, f) == len;
    for (size_t i = len; ok && i < padded; i++)
        ok = fputc(' ', f) != EOF;
    free(js);
    for (size_t i = 0; ok && i < n; i++)
        if (tensors[i].nbytes)
            ok = fwrite(tensors[i].data, 1, tensors[i].nbytes, f) == tensors[i].nbytes;
    if (ok)
        ok = fflush(f) == 0;
    if (!ok)
        return ms_fail(err, MS_ERR_IO, "safetensors write: %s", strerror(errno));
    return MS_OK;
}
