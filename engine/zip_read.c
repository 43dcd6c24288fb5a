/*
 * zip_read.c - the zip reader of .pth files: the central directory (the
 * local headers torch writes carry no sizes), STORED entries, zip64 fields;
 * every offset and size checked against the mapped file.
 */
#include "pth_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* Zip reading                                                               */
/* ======================================================================== */



static int cmp_name(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

static int cmp_zent(const void *a, const void *b)
{
    const zent *x = a, *y = b;
    return cmp_name(x->name, x->name_len, y->name, y->name_len);
}

/* Entry with exactly this name, or NULL. */
const zent *zip_find(const zip *z, const char *name, size_t len)
{
    size_t lo = 0, hi = z->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_name(z->e[mid].name, z->e[mid].name_len, name, len);
        if (c == 0)
            return &z->e[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Reads the zip64 extra field (id 1) of a central directory entry: it holds,
 * in this order, only the fields whose 32-bit slot is 0xffffffff. */
static int read_zip64_extra(const uint8_t *x, size_t xlen, zent *e, int need_u, int need_c,
                            int need_o)
{
    size_t i = 0;
    while (i + 4 <= xlen) {
        uint16_t id = rd16(x + i), sz = rd16(x + i + 2);
        if (i + 4 + sz > xlen)
            return -1;
        if (id == 1) {
            const uint8_t *f = x + i + 4;
            size_t k = 0;
            if (need_u) {
                if (k + 8 > sz) return -1;
                e->usize = rd64(f + k);
                k += 8;
            }
            if (need_c) {
                if (k + 8 > sz) return -1;
                e->size = rd64(f + k);
                k += 8;
            }
            if (need_o) {
                if (k + 8 > sz) return -1;
                e->lho = rd64(f + k);
            }
            return 0;
        }
        i += 4 + (size_t)sz;
    }
    return need_u || need_c || need_o ? -1 : 0;
}

/* Locates the central directory (through the zip64 end record when present)
 * and fills z with every entry, sorted by name. */
ms_status zip_open(const ms_tensorfile *tf, zip *z, ms_error *err)
{
    const uint8_t *m = tf->map;
    size_t size = tf->size;
    const char *p = tf->path;
    memset(z, 0, sizeof *z);
    if (size < 22)
        return ms_fail(err, MS_ERR_FORMAT, "%s: truncated file (%zu bytes, too short for a zip)",
                       p, size);
    /* The end record is 22 bytes plus a comment of up to 64 KiB. */
    size_t eocd = SIZE_MAX;
    size_t lowest = size - 22 > 0xffff ? size - 22 - 0xffff : 0;
    for (size_t i = size - 22 + 1; i-- > lowest;) {
        if (rd32(m + i) == SIG_EOCD && i + 22 + rd16(m + i + 20) <= size) {
            eocd = i;
            break;
        }
    }
    if (eocd == SIZE_MAX)
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: truncated file (zip end of central directory record not found in "
                       "%zu bytes)", p, size);
    uint64_t count = rd16(m + eocd + 10);
    uint64_t cd_size = rd32(m + eocd + 12);
    uint64_t cd_off = rd32(m + eocd + 16);
    if (eocd >= 20 && rd32(m + eocd - 20) == SIG_LOC64) {
        uint64_t r = rd64(m + eocd - 20 + 8);
        if (r > eocd - 20 || eocd - 20 - r < 56 || rd32(m + r) != SIG_EOCD64)
            return ms_fail(err, MS_ERR_FORMAT, "%s: bad zip64 end of central directory record "
                           "(at %llu)", p, (unsigned long long)r);
        count = rd64(m + r + 32);
        cd_size = rd64(m + r + 40);
        cd_off = rd64(m + r + 48);
        eocd = (size_t)r; /* the directory ends before the zip64 record */
    } else if (count == 0xffff || cd_size == U32_MAX_FIELD || cd_off == U32_MAX_FIELD) {
        return ms_fail(err, MS_ERR_FORMAT, "%s: zip64 archive without its zip64 end record", p);
    }
    if (cd_off > eocd || cd_size > eocd - cd_off)
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: truncated file (zip central directory at %llu, %llu bytes, beyond "
                       "end %zu)", p, (unsigned long long)cd_off, (unsigned long long)cd_size, eocd);
    if (count > cd_size / 46)
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: zip central directory claims %llu entries in %llu bytes", p,
                       (unsigned long long)count, (unsigned long long)cd_size);
    z->e = calloc(count ? (size_t)count : 1, sizeof *z->e);
    if (!z->e)
        return ms_fail(err, MS_ERR_NOMEM, "%s: out of memory reading the zip directory", p);
    size_t pos = (size_t)cd_off, end = (size_t)(cd_off + cd_size);
    for (uint64_t i = 0; i < count; i++) {
        const uint8_t *c = m + pos;
        if (end - pos < 46 || rd32(c) != SIG_CENTRAL)
            return ms_fail(err, MS_ERR_FORMAT, "%s: bad zip central directory entry %llu at %zu",
                           p, (unsigned long long)i, pos);
        size_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
        if (end - pos - 46 < nlen + xlen + clen)
            return ms_fail(err, MS_ERR_FORMAT, "%s: zip central directory entry %llu overruns "
                           "the directory", p, (unsigned long long)i);
        zent *e = &z->e[z->n++];
        e->method = rd16(c + 10);
        e->size = rd32(c + 20);
        e->usize = rd32(c + 24);
        e->lho = rd32(c + 42);
        e->name = (const char *)c + 46;
        e->name_len = nlen;
        if (read_zip64_extra(c + 46 + nlen, xlen, e, e->usize == U32_MAX_FIELD,
                             e->size == U32_MAX_FIELD, e->lho == U32_MAX_FIELD) != 0)
            return ms_fail(err, MS_ERR_FORMAT, "%s: zip entry '%.*s': bad zip64 extra field", p,
                           (int)(nlen > 200 ? 200 : nlen), e->name);
        pos += 46 + nlen + xlen + clen;
    }
    qsort(z->e, z->n, sizeof *z->e, cmp_zent);
    return MS_OK;
}

/* Resolves an entry to its bytes: checks the local header, the method, and
 * that the data lies inside the file. */
ms_status zip_data(const ms_tensorfile *tf, const zent *e, const uint8_t **data,
                          ms_error *err)
{
    const char *p = tf->path;
    int nl = (int)(e->name_len > 200 ? 200 : e->name_len);
    if (e->method != 0)
        return ms_fail(err, MS_ERR_UNSUPPORTED,
                       "%s: zip entry '%.*s' is compressed (method %u); torch.save writes "
                       "stored entries", p, nl, e->name, e->method);
    if (e->size != e->usize)
        return ms_fail(err, MS_ERR_FORMAT, "%s: zip entry '%.*s': stored sizes disagree", p, nl,
                       e->name);
    if (e->lho > tf->size || tf->size - e->lho < 30 || rd32(tf->map + e->lho) != SIG_LOCAL)
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: truncated file (zip local header of '%.*s' at %llu, end %zu)", p, nl,
                       e->name, (unsigned long long)e->lho, tf->size);
    uint64_t start = e->lho + 30 + rd16(tf->map + e->lho + 26) + rd16(tf->map + e->lho + 28);
    if (start > tf->size || e->size > tf->size - start)
        return ms_fail(err, MS_ERR_FORMAT,
                       "%s: truncated file (zip entry '%.*s' data %llu..%llu beyond end %zu)", p,
                       nl, e->name, (unsigned long long)start,
                       (unsigned long long)(start + e->size), tf->size);
    *data = tf->map + start;
    return MS_OK;
}
