/*
 * zip_write.c - the zip writer of .pth files: STORED entries with their
 * data 64-byte aligned (padded through an "FB" extra field), CRC-32 from
 * zlib, zip64 records when an entry or offset needs them.
 */
#include "pth_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ======================================================================== */
/* Writing: zip                                                              */
/* ======================================================================== */



static void zwrite(zw *z, const void *d, size_t n)
{
    if (!z->ok || n == 0)
        return;
    if (fwrite(d, 1, n, z->f) != n) {
        z->ok = 0;
        z->err_no = errno ? errno : EIO;
    }
    z->off += n;
}

/* Writes one STORED entry whose data starts on a 64-byte boundary (torch
 * mmaps storages and wants them aligned) and records it for the directory. */
void zip_entry(zw *z, cdrec *r, const char *name, const void *data, size_t size)
{
    buf h = {0};
    size_t nl = strlen(name);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->crc = (uint32_t)crc32_z(0, data, size); /* zlib's CRC-32, as zip wants */
    r->size = size;
    r->lho = z->off;
    r->z64 = z->force64 || size >= U32_MAX_FIELD || z->off >= U32_MAX_FIELD;
    put_le(&h, SIG_LOCAL, 4);
    put_le(&h, r->z64 ? 45 : 20, 2);
    put_le(&h, 0, 2);                         /* flags */
    put_le(&h, 0, 2);                         /* method: stored */
    put_le(&h, 0, 2);                         /* time */
    put_le(&h, 0x21, 2);                      /* date: 1980-01-01 */
    put_le(&h, r->crc, 4);
    put_le(&h, r->z64 ? U32_MAX_FIELD : size, 4);
    put_le(&h, r->z64 ? U32_MAX_FIELD : size, 4);
    put_le(&h, nl, 2);
    size_t x64 = r->z64 ? 20 : 0;
    size_t pad = (size_t)((64 - (z->off + 30 + nl + x64 + 4) % 64) % 64);
    put_le(&h, x64 + 4 + pad, 2);
    put(&h, name, nl);
    if (r->z64) {
        put_le(&h, 1, 2);
        put_le(&h, 16, 2);
        put_le(&h, size, 8);
        put_le(&h, size, 8);
    }
    put(&h, "FB", 2);
    put_le(&h, pad, 2);
    for (size_t i = 0; i < pad; i++)
        put1(&h, 'Z');
    if (h.oom) {
        z->ok = 0;
        z->err_no = ENOMEM;
    }
    zwrite(z, h.p, h.n);
    zwrite(z, data, size);
    free(h.p);
}

/* Central directory, zip64 end records when needed, end record. */
void zip_finish(zw *z, const cdrec *r, size_t n)
{
    buf h = {0};
    uint64_t cd_off = z->off;
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(r[i].name);
        put_le(&h, SIG_CENTRAL, 4);
        put_le(&h, r[i].z64 ? 45 : 20, 2); /* made by */
        put_le(&h, r[i].z64 ? 45 : 20, 2); /* needed */
        put_le(&h, 0, 2);
        put_le(&h, 0, 2);
        put_le(&h, 0, 2);
        put_le(&h, 0x21, 2);
        put_le(&h, r[i].crc, 4);
        put_le(&h, r[i].z64 ? U32_MAX_FIELD : r[i].size, 4);
        put_le(&h, r[i].z64 ? U32_MAX_FIELD : r[i].size, 4);
        put_le(&h, nl, 2);
        put_le(&h, r[i].z64 ? 28 : 0, 2);
        put_le(&h, 0, 2);                  /* comment */
        put_le(&h, 0, 2);                  /* disk */
        put_le(&h, 0, 2);                  /* internal attributes */
        put_le(&h, 0, 4);                  /* external attributes */
        put_le(&h, r[i].z64 ? U32_MAX_FIELD : r[i].lho, 4);
        put(&h, r[i].name, nl);
        if (r[i].z64) {
            put_le(&h, 1, 2);
            put_le(&h, 24, 2);
            put_le(&h, r[i].size, 8);
            put_le(&h, r[i].size, 8);
            put_le(&h, r[i].lho, 8);
        }
    }
    uint64_t cd_size = h.n;
    uint64_t eocd64 = cd_off + cd_size;
    int need64 = z->force64 || n >= 0xffff || cd_off >= U32_MAX_FIELD || cd_size >= U32_MAX_FIELD;
    if (need64) {
        put_le(&h, SIG_EOCD64, 4);
        put_le(&h, 44, 8);
        put_le(&h, 45, 2);
        put_le(&h, 45, 2);
        put_le(&h, 0, 4);
        put_le(&h, 0, 4);
        put_le(&h, n, 8);
        put_le(&h, n, 8);
        put_le(&h, cd_size, 8);
        put_le(&h, cd_off, 8);
        put_le(&h, SIG_LOC64, 4);
        put_le(&h, 0, 4);
        put_le(&h, eocd64, 8);
        put_le(&h, 1, 4);
    }
    put_le(&h, SIG_EOCD, 4);
    put_le(&h, 0, 2);
    put_le(&h, 0, 2);
    put_le(&h, need64 ? 0xffff : n, 2);
    put_le(&h, need64 ? 0xffff : n, 2);
    put_le(&h, need64 ? U32_MAX_FIELD : cd_size, 4);
    put_le(&h, need64 ? U32_MAX_FIELD : cd_off, 4);
    put_le(&h, 0, 2);
    if (h.oom) {
        z->ok = 0;
        z->err_no = ENOMEM;
    }
    zwrite(z, h.p, h.n);
    free(h.p);
}
