/*
 * pth.c - PyTorch checkpoints in the torch.save zip format: a dict of
 * tensor views from a mapped .pth, and .pth files from tensor views. The
 * zip and pickle work is in zip_read.c, pickle_read.c, pickle_write.c and
 * zip_write.c (pth_internal.h).
 *
 * A .pth is a zip of STORED entries: <prefix>/data.pkl (a pickled dict of
 * tensors) and one raw storage per tensor in <prefix>/data/<key>. We read the
 * zip from its central directory (the local headers torch writes carry no
 * sizes), then run data.pkl through a deliberately tiny pickle machine that
 * knows only what torch emits for a state dict: containers, scalars, the
 * OrderedDict / _rebuild_tensor_v2 / *Storage globals and storage persistent
 * ids. Every other global is refused, which also makes loading safe: nothing
 * in the file is ever executed. The machine never recurses, caps its stack,
 * mark stack and memo, and frees all its values from one list at the end, so
 * a hostile file costs at most memory linear in the pickle size.
 *
 * The writer produces what torch.save does at protocol 2 (same opcodes, same
 * memoisation pattern, 64-byte aligned entry data padded through an "FB"
 * extra field), so files it writes load in PyTorch and in this reader. It
 * switches to zip64 records when an entry or offset needs them.
 */
#include "pth_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ======================================================================== */
/* From the unpickled dict to tensor views                                   */
/* ======================================================================== */

/* Validates one name -> tensor pair and adds its view to tf. */
static ms_status add_tensor(ms_tensorfile *tf, const zip *z, const char *prefix, size_t plen,
                            const pv *key, const pv *t, ms_error *err)
{
    const char *p = tf->path;
    if (key->kind != PV_STR || memchr(key->s, '\0', key->len))
        return ms_fail(err, MS_ERR_FORMAT, "%s: data.pkl: a dict key is not a tensor name", p);
    int kl = (int)(key->len > 200 ? 200 : key->len);
    const char *k = key->s;
    if (t->kind != PV_TENSOR)
        return ms_fail(err, MS_ERR_FORMAT, "%s: '%.*s' is not a tensor", p, kl, k);
    const pv *stor = t->items[0], *off = t->items[1], *size = t->items[2], *stride = t->items[3];
    if (stor->dtype < 0)
        return ms_fail(err, MS_ERR_DTYPE,
                       "%s: tensor '%.*s' has dtype torch.%.*s (supported: FloatStorage, "
                       "HalfStorage, BFloat16Storage)", p, kl, k, (int)stor->tlen, stor->tname);
    ms_dtype dt = (ms_dtype)stor->dtype;
    if (size->n > MS_MAX_DIMS)
        return ms_fail(err, MS_ERR_UNSUPPORTED, "%s: tensor '%.*s' has %zu dimensions (at most %d)",
                       p, kl, k, size->n, MS_MAX_DIMS);
    if (stride->n != size->n)
        return ms_fail(err, MS_ERR_FORMAT, "%s: tensor '%.*s': size and stride differ in length",
                       p, kl, k);
    int nd = (int)size->n;
    int64_t shape[MS_MAX_DIMS];
    for (int d = 0; d < nd; d++) {
        if (size->items[d]->kind != PV_INT || size->items[d]->i < 0 ||
            stride->items[d]->kind != PV_INT)
            return ms_fail(err, MS_ERR_FORMAT, "%s: tensor '%.*s': bad size or stride", p, kl, k);
        shape[d] = size->items[d]->i;
    }
    uint64_t numel, nbytes;
    if (ms_tf_checked_bytes(nd, shape, ms_dtype_size(dt), &numel, &nbytes) != 0)
        return ms_fail(err, MS_ERR_FORMAT, "%s: tensor '%.*s': shape too large", p, kl, k);
    /* Row-major contiguity; a dimension of size 1 may carry any stride. */
    int64_t expect = 1;
    for (int d = nd - 1; d >= 0 && numel; d--) {
        if (shape[d] != 1 && stride->items[d]->i != expect)
            return ms_fail(err, MS_ERR_UNSUPPORTED,
                           "%s: tensor '%.*s' is not contiguous (stride %lld in dimension %d, "
                           "expected %lld)", p, kl, k, (long long)stride->items[d]->i, d,
                           (long long)expect);
        expect *= shape[d];
    }
    char ename[1024];
    int en = snprintf(ename, sizeof ename, "%.*s/data/%.*s", (int)plen, prefix,
                      (int)(stor->len > 512 ? 512 : stor->len), stor->s);
    const zent *e = stor->len <= 512 ? zip_find(z, ename, (size_t)en) : NULL;
    if (!e)
        return ms_fail(err, MS_ERR_FORMAT, "%s: tensor '%.*s': storage entry '%s' missing", p,
                       kl, k, ename);
    const uint8_t *data;
    ms_status st = zip_data(tf, e, &data, err);
    if (st != MS_OK)
        return st;
    uint64_t es = ms_dtype_size(dt);
    if (off->i < 0 || (uint64_t)off->i > e->size / es || nbytes > e->size - (uint64_t)off->i * es)
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: tensor '%.*s': offset %lld + %llu bytes beyond its storage '%s' "
                       "(%llu bytes)", p, kl, k, (long long)off->i, (unsigned long long)nbytes,
                       ename, (unsigned long long)e->size);
    return ms_tf_add(tf, k, key->len, dt, nd, shape, data + (uint64_t)off->i * es,
                     (size_t)nbytes, err);
}

/* Finds "<prefix>/data.pkl" with a one-component prefix. */
static const zent *find_pickle(const zip *z)
{
    for (size_t i = 0; i < z->n; i++) {
        const zent *e = &z->e[i];
        size_t l = e->name_len;
        if (l > 9 && memcmp(e->name + l - 9, "/data.pkl", 9) == 0 &&
            !memchr(e->name, '/', l - 9))
            return e;
    }
    return NULL;
}

ms_status ms_pth_parse(ms_tensorfile *tf, ms_error *err)
{
    const char *p = tf->path;
    zip z;
    ms_status st = zip_open(tf, &z, err);
    const zent *pk = NULL;
    const uint8_t *pdata = NULL;
    if (st == MS_OK && !(pk = find_pickle(&z)))
        st = ms_fail(err, MS_ERR_FORMAT, "%s: zip file without <name>/data.pkl "
                     "(not a PyTorch checkpoint)", p);
    if (st == MS_OK)
        st = zip_data(tf, pk, &pdata, err);
    size_t plen = pk ? pk->name_len - 9 : 0;
    if (st == MS_OK) {
        char bo[300];
        snprintf(bo, sizeof bo, "%.*s/byteorder", (int)(plen > 256 ? 256 : plen), pk->name);
        const zent *e = zip_find(&z, bo, strlen(bo));
        const uint8_t *d;
        if (e && (st = zip_data(tf, e, &d, err)) == MS_OK &&
            !(e->size == 6 && memcmp(d, "little", 6) == 0))
            st = ms_fail(err, MS_ERR_UNSUPPORTED, "%s: checkpoint byte order is not little-endian",
                         p);
    }
    if (st == MS_OK) {
        vm v = {.tf = tf, .p = pdata, .len = (size_t)pk->size, .err = err};
        pv *res = NULL;
        st = pk_run(&v, &res);
        if (st == MS_OK && res->kind != PV_DICT)
            st = ms_fail(err, MS_ERR_FORMAT, "%s: data.pkl does not hold a dict of tensors", p);
        for (size_t i = 0; st == MS_OK && i + 1 < res->n; i += 2)
            st = add_tensor(tf, &z, pk->name, plen, res->items[i], res->items[i + 1], err);
        pk_free(&v);
    }
    free(z.e);
    return st;
}

static ms_status pth_write(const char *path, const ms_tensor *ts, size_t n, int force64,
                           ms_error *err)
{
    if (!path || (n && !ts))
        return ms_fail(err, MS_ERR_INVALID, "pth write: NULL argument");
    for (size_t i = 0; i < n; i++) {
        const ms_tensor *t = &ts[i];
        uint64_t numel, nbytes;
        if (!t->name || (t->dtype != MS_F32 && t->dtype != MS_F16 && t->dtype != MS_BF16) ||
            t->ndim < 0 || t->ndim > MS_MAX_DIMS ||
            ms_tf_checked_bytes(t->ndim, t->shape, ms_dtype_size(t->dtype), &numel, &nbytes) ||
            nbytes != t->nbytes || (nbytes && !t->data))
            return ms_fail(err, MS_ERR_INVALID, "%s: tensor %zu ('%s') is not a valid view", path,
                           i, t->name ? t->name : "(null)");
        for (size_t j = 0; j < i; j++)
            if (strcmp(ts[j].name, t->name) == 0)
                return ms_fail(err, MS_ERR_INVALID, "%s: tensor name '%s' used twice", path,
                               t->name);
    }
    pkw w = {.m_odict = -1, .m_rebuild = -1, .m_storage_str = -1, .m_cpu = -1,
             .m_stype = {-1, -1, -1}};
    pk_state_dict(&w, ts, n);
    cdrec *recs = calloc(n + 3, sizeof *recs);
    if (w.b.oom || !recs) {
        free(w.b.p);
        free(recs);
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory", path);
    }
    zw z = {.ok = 1, .force64 = force64};
    if (!(z.f = fopen(path, "wb"))) {
        free(w.b.p);
        free(recs);
        return ms_fail(err, MS_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    size_t k = 0;
    zip_entry(&z, &recs[k++], "archive/data.pkl", w.b.p, w.b.n);
    zip_entry(&z, &recs[k++], "archive/byteorder", "little", 6);
    for (size_t i = 0; i < n; i++) {
        char name[48];
        snprintf(name, sizeof name, "archive/data/%zu", i);
        zip_entry(&z, &recs[k++], name, ts[i].data, ts[i].nbytes);
    }
    zip_entry(&z, &recs[k++], "archive/version", "3\n", 2);
    zip_finish(&z, recs, k);
    free(w.b.p);
    free(recs);
    if (fclose(z.f) != 0 && z.ok) {
        z.ok = 0;
        z.err_no = errno;
    }
    if (!z.ok) {
        unlink(path); /* best effort: a partial zip is worse than none */
        return ms_fail(err, MS_ERR_IO, "%s: write failed: %s", path, strerror(z.err_no));
    }
    return MS_OK;
}

ms_status ms_pth_write(const char *path, const ms_tensor *tensors, size_t n, ms_error *err)
{
    return pth_write(path, tensors, n, 0, err);
}

ms_status ms_pth_write_zip64(const char *path, const ms_tensor *tensors, size_t n,
                             ms_error *err)
{
    return pth_write(path, tensors, n, 1, err);
}
