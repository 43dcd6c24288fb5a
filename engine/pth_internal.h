/*
 * pth_internal.h - the pieces of the .pth (torch.save zip) reader and
 * writer, shared by engine/pth.c (which ties them to tensor views) and the
 * files that do one job each: zip_read.c, pickle_read.c, pickle_write.c,
 * zip_write.c. Engine-private; nothing outside engine/ includes it.
 */
#ifndef METASTATE_ENGINE_PTH_INTERNAL_H
#define METASTATE_ENGINE_PTH_INTERNAL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorfile_internal.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u
#define U32_MAX_FIELD 0xffffffffu

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* Grows *arr (elements of `size` bytes) to hold need elements; -1 on OOM. */
static inline int grow(void **arr, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *a = realloc(*arr, c * size);
    if (!a)
        return -1;
    *arr = a;
    *cap = c;
    return 0;
}

/* ---- zip reading (zip_read.c): STORED entries, zip64, central directory */

typedef struct zent {
    const char *name; /* into the map, not NUL-terminated */
    size_t name_len;
    uint64_t lho;     /* local header offset */
    uint64_t size;    /* compressed size (== uncompressed for STORED) */
    uint64_t usize;
    uint16_t method;
} zent;

typedef struct zip {
    zent *e;          /* sorted by name for bsearch */
    size_t n;
} zip;

/* Reads tf's central directory into z (z->e malloc'd: free(z->e)). */
ms_status zip_open(const ms_tensorfile *tf, zip *z, ms_error *err);
/* The entry called name[0..len), or NULL. */
const zent *zip_find(const zip *z, const char *name, size_t len);
/* Points *data at entry e's bytes inside tf's map (checked to lie inside). */
ms_status zip_data(const ms_tensorfile *tf, const zent *e, const uint8_t **data, ms_error *err);

/* ---- the pickle machine (pickle_read.c): what torch emits for a state dict */

typedef enum {
    PV_NONE, PV_BOOL, PV_INT, PV_FLOAT, PV_STR, PV_BYTES, PV_TUPLE, PV_LIST, PV_DICT,
    PV_GLOBAL, PV_STORAGE, PV_TENSOR
} pv_kind;

typedef struct pv pv;
struct pv {
    pv_kind kind;
    int64_t i;          /* INT/BOOL value, GLOBAL id, STORAGE numel */
    double f;
    const char *s;      /* STR/BYTES bytes, STORAGE key (into the pickle) */
    size_t len;
    const char *tname;  /* storage type name ("FloatStorage") for messages */
    size_t tlen;
    int dtype;          /* GLOBAL storage type / STORAGE: ms_dtype or -1 */
    pv **items;         /* TUPLE/LIST; DICT as key,value,...; TENSOR: storage,offset,size,stride */
    size_t n, cap;
};

typedef struct vm {
    const ms_tensorfile *tf;
    const uint8_t *p;
    size_t len, pos;
    pv **stack;
    size_t sp, scap;
    size_t *marks;
    size_t nmarks, mcap;
    pv **memo;
    size_t memo_cap, memo_used;
    pv **all;           /* every value made, freed together */
    size_t nall, acap;
    ms_error *err;
} vm;

/* Runs the pickle v->p[0..len) (set tf, p, len, err; the rest zeroed);
 * *result is owned by v until pk_free. */
ms_status pk_run(vm *v, pv **result);
void pk_free(vm *v);

/* ---- writing: a growing byte buffer, the pickler, the zip writer */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} buf;

static inline void put(buf *b, const void *d, size_t n)
{
    if (b->oom)
        return;
    if (grow((void **)&b->p, &b->cap, b->n + n, 1) != 0) {
        b->oom = 1;
        return;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static inline void put1(buf *b, uint8_t x) { put(b, &x, 1); }

static inline void put_le(buf *b, uint64_t x, int n)
{
    uint8_t t[8];
    for (int i = 0; i < n; i++)
        t[i] = (uint8_t)(x >> (8 * i));
    put(b, t, (size_t)n);
}

/* Pickler state: the memo ids of objects torch shares between tensors. */
typedef struct pkw {
    buf b;
    uint32_t next_memo;
    int64_t m_odict, m_rebuild, m_storage_str, m_cpu, m_stype[3];
} pkw;

/* The whole data.pkl of n tensors into w->b (w->b.oom on allocation failure). */
void pk_state_dict(pkw *w, const ms_tensor *ts, size_t n);

typedef struct zw {
    FILE *f;
    uint64_t off;
    int ok;
    int err_no;
    int force64;
} zw;

typedef struct cdrec {
    char name[64];
    uint32_t crc;
    uint64_t size, lho;
    int z64;
} cdrec;

/* One STORED entry, data 64-byte aligned as torch wants; recorded in r. */
void zip_entry(zw *z, cdrec *r, const char *name, const void *data, size_t size);
/* Central directory, zip64 records when needed, end record. */
void zip_finish(zw *z, const cdrec *r, size_t n);

#endif
