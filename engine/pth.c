/*
 * pth.c - PyTorch checkpoints in the torch.save zip format.
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
#include "tensorfile_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u
#define U32_MAX_FIELD 0xffffffffu

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* ======================================================================== */
/* Zip reading                                                               */
/* ======================================================================== */

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
static const zent *zip_find(const zip *z, const char *name, size_t len)
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
static ms_status zip_open(const ms_tensorfile *tf, zip *z, ms_error *err)
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
static ms_status zip_data(const ms_tensorfile *tf, const zent *e, const uint8_t **data,
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

/* ======================================================================== */
/* Pickle machine                                                            */
/* ======================================================================== */

/* Bounds on what a state dict needs, far above any real checkpoint. */
#define PK_MAX_STACK (1u << 20)
#define PK_MAX_MARKS (1u << 16)
#define PK_MAX_MEMO (1u << 22)

typedef enum {
    PV_NONE, PV_BOOL, PV_INT, PV_FLOAT, PV_STR, PV_BYTES, PV_TUPLE, PV_LIST, PV_DICT,
    PV_GLOBAL, PV_STORAGE, PV_TENSOR
} pv_kind;

typedef enum { G_ORDEREDDICT, G_REBUILD_V2, G_REBUILD_PARAM, G_STORAGE_TYPE } pv_global;

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

#define VFAIL(v, ...) ms_fail((v)->err, MS_ERR_FORMAT, __VA_ARGS__)

/* Grows *arr (elements of `size` bytes) to hold need elements; -1 on OOM. */
static int grow(void **arr, size_t *cap, size_t need, size_t size)
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

static ms_status oom(vm *v)
{
    return ms_fail(v->err, MS_ERR_NOMEM, "%s: out of memory reading data.pkl", v->tf->path);
}

/* A new value of kind k, owned by v->all; NULL on OOM. */
static pv *mk(vm *v, pv_kind k)
{
    if (grow((void **)&v->all, &v->acap, v->nall + 1, sizeof *v->all) != 0)
        return NULL;
    pv *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->kind = k;
    v->all[v->nall++] = x;
    return x;
}

static int add_item(pv *c, pv *x)
{
    if (grow((void **)&c->items, &c->cap, c->n + 1, sizeof *c->items) != 0)
        return -1;
    c->items[c->n++] = x;
    return 0;
}

static ms_status push(vm *v, pv *x)
{
    if (!x)
        return oom(v);
    if (v->sp >= PK_MAX_STACK)
        return VFAIL(v, "%s: data.pkl: pickle stack deeper than %u", v->tf->path, PK_MAX_STACK);
    if (grow((void **)&v->stack, &v->scap, v->sp + 1, sizeof *v->stack) != 0)
        return oom(v);
    v->stack[v->sp++] = x;
    return MS_OK;
}

/* Lowest stack slot usable without popping a mark. */
static size_t fence(const vm *v)
{
    return v->nmarks ? v->marks[v->nmarks - 1] : 0;
}

static pv *pop(vm *v)
{
    return v->sp > fence(v) ? v->stack[--v->sp] : NULL;
}

static pv *top(vm *v)
{
    return v->sp > fence(v) ? v->stack[v->sp - 1] : NULL;
}

/* Pops the top mark; *start is the first stack slot above it. -1 if none. */
static int pop_mark(vm *v, size_t *start)
{
    if (!v->nmarks)
        return -1;
    *start = v->marks[--v->nmarks];
    return 0;
}

/* Moves stack[start..sp) into container c and truncates the stack. */
static int take_items(vm *v, pv *c, size_t start)
{
    for (size_t i = start; i < v->sp; i++)
        if (add_item(c, v->stack[i]) != 0)
            return -1;
    v->sp = start;
    return 0;
}

/* Makes sure n more pickle bytes are there; returns a pointer to them. */
static const uint8_t *need(vm *v, size_t n)
{
    if (v->len - v->pos < n)
        return NULL;
    const uint8_t *r = v->p + v->pos;
    v->pos += n;
    return r;
}

static ms_status truncated(vm *v)
{
    return VFAIL(v, "%s: data.pkl: truncated pickle (at byte %zu of %zu)", v->tf->path, v->pos,
                 v->len);
}

static ms_status underflow(vm *v, uint8_t op)
{
    return VFAIL(v, "%s: data.pkl: pickle stack underflow at opcode 0x%02x (byte %zu)",
                 v->tf->path, op, v->pos - 1);
}

/* Resolves module.name to one of the few globals a state dict uses. */
static ms_status make_global(vm *v, const char *mod, size_t ml, const char *name, size_t nl)
{
    static const struct { const char *name; int dtype; } storages[] = {
        {"FloatStorage", MS_F32}, {"HalfStorage", MS_F16}, {"BFloat16Storage", MS_BF16},
    };
    pv *g = mk(v, PV_GLOBAL);
    if (!g)
        return oom(v);
#define IS(str, s, l) (strlen(str) == (l) && memcmp(str, s, l) == 0)
    if (IS("collections", mod, ml) && IS("OrderedDict", name, nl)) {
        g->i = G_ORDEREDDICT;
    } else if (IS("torch._utils", mod, ml) && IS("_rebuild_tensor_v2", name, nl)) {
        g->i = G_REBUILD_V2;
    } else if (IS("torch._utils", mod, ml) && IS("_rebuild_parameter", name, nl)) {
        g->i = G_REBUILD_PARAM;
    } else if (IS("torch", mod, ml) && nl > 7 && nl < 64 &&
               memcmp(name + nl - 7, "Storage", 7) == 0) {
        g->i = G_STORAGE_TYPE;
        g->dtype = -1;
        g->tname = name;
        g->tlen = nl;
        for (size_t k = 0; k < sizeof storages / sizeof storages[0]; k++)
            if (IS(storages[k].name, name, nl))
                g->dtype = storages[k].dtype;
    } else {
        return VFAIL(v, "%s: data.pkl: unsupported pickle global '%.*s.%.*s' (only a dict of "
                     "torch tensors can be read)", v->tf->path, (int)(ml > 100 ? 100 : ml), mod,
                     (int)(nl > 100 ? 100 : nl), name);
    }
#undef IS
    return push(v, g);
}

/* REDUCE: calls one of the known globals on an argument tuple. */
static ms_status reduce(vm *v, pv *fn, pv *args)
{
    const char *p = v->tf->path;
    if (fn->kind != PV_GLOBAL || args->kind != PV_TUPLE)
        return VFAIL(v, "%s: data.pkl: REDUCE on a value that is not a known callable", p);
    switch ((pv_global)fn->i) {
    case G_ORDEREDDICT:
        if (args->n != 0)
            return VFAIL(v, "%s: data.pkl: OrderedDict called with arguments", p);
        return push(v, mk(v, PV_DICT));
    case G_REBUILD_V2: {
        /* (storage, storage_offset, size, stride, requires_grad, hooks[, metadata]) */
        pv **a = args->items;
        if ((args->n != 6 && args->n != 7) || a[0]->kind != PV_STORAGE || a[1]->kind != PV_INT ||
            a[2]->kind != PV_TUPLE || a[3]->kind != PV_TUPLE)
            return VFAIL(v, "%s: data.pkl: _rebuild_tensor_v2 called with unexpected arguments",
                         p);
        pv *t = mk(v, PV_TENSOR);
        if (!t)
            return oom(v);
        for (int k = 0; k < 4; k++)
            if (add_item(t, a[k]) != 0)
                return oom(v);
        return push(v, t);
    }
    case G_REBUILD_PARAM:
        /* (data, requires_grad, backward_hooks): a Parameter is its tensor for us. */
        if (args->n != 3 || args->items[0]->kind != PV_TENSOR)
            return VFAIL(v, "%s: data.pkl: _rebuild_parameter called with unexpected arguments",
                         p);
        return push(v, args->items[0]);
    case G_STORAGE_TYPE:
        break;
    }
    return VFAIL(v, "%s: data.pkl: storage type '%.*s' called directly", p, (int)fn->tlen,
                 fn->tname);
}

/* BINPERSID: ('storage', torch.<T>Storage, key, location, numel). */
static ms_status persistent_id(vm *v, pv *pid)
{
    pv **a = pid->items;
    if (pid->kind != PV_TUPLE || pid->n != 5 || a[0]->kind != PV_STR || a[0]->len != 7 ||
        memcmp(a[0]->s, "storage", 7) != 0 || a[1]->kind != PV_GLOBAL ||
        a[1]->i != G_STORAGE_TYPE || a[2]->kind != PV_STR || a[4]->kind != PV_INT ||
        a[4]->i < 0)
        return VFAIL(v, "%s: data.pkl: unsupported persistent id (expected a torch storage)",
                     v->tf->path);
    pv *s = mk(v, PV_STORAGE);
    if (!s)
        return oom(v);
    s->dtype = a[1]->dtype;
    s->tname = a[1]->tname;
    s->tlen = a[1]->tlen;
    s->s = a[2]->s;
    s->len = a[2]->len;
    s->i = a[4]->i;
    return push(v, s);
}

static ms_status memo_put(vm *v, uint64_t idx)
{
    pv *x = top(v);
    if (!x)
        return VFAIL(v, "%s: data.pkl: memo store with an empty stack", v->tf->path);
    if (idx >= PK_MAX_MEMO)
        return VFAIL(v, "%s: data.pkl: memo index %llu too large", v->tf->path,
                     (unsigned long long)idx);
    if (idx >= v->memo_cap) {
        size_t old = v->memo_cap;
        if (grow((void **)&v->memo, &v->memo_cap, (size_t)idx + 1, sizeof *v->memo) != 0)
            return oom(v);
        memset(v->memo + old, 0, (v->memo_cap - old) * sizeof *v->memo);
    }
    if (!v->memo[idx])
        v->memo_used++;
    v->memo[idx] = x;
    return MS_OK;
}

static ms_status memo_get(vm *v, uint64_t idx)
{
    if (idx >= v->memo_cap || !v->memo[idx])
        return VFAIL(v, "%s: data.pkl: memo entry %llu read before it was stored", v->tf->path,
                     (unsigned long long)idx);
    return push(v, v->memo[idx]);
}

/* Signed little-endian integer of n bytes (n <= 8) as LONG1/LONG4 encode it. */
static int64_t read_long(const uint8_t *b, size_t n)
{
    uint64_t u = 0;
    for (size_t k = n; k-- > 0;)
        u = u << 8 | b[k];
    if (n && n < 8 && (b[n - 1] & 0x80))
        u |= ~(uint64_t)0 << (8 * n);
    int64_t r;
    memcpy(&r, &u, sizeof r);
    return r;
}

/* Reads one newline-terminated line of GLOBAL's argument. */
static int read_line(vm *v, const char **s, size_t *l)
{
    const uint8_t *start = v->p + v->pos;
    const uint8_t *nl = memchr(start, '\n', v->len - v->pos);
    if (!nl)
        return -1;
    *s = (const char *)start;
    *l = (size_t)(nl - start);
    v->pos += *l + 1;
    return 0;
}

/* Pushes a string/bytes value of `len` bytes following the opcode. */
static ms_status push_str(vm *v, pv_kind k, uint64_t len)
{
    if (len > v->len - v->pos)
        return truncated(v);
    pv *s = mk(v, k);
    if (!s)
        return oom(v);
    s->s = (const char *)v->p + v->pos;
    s->len = (size_t)len;
    v->pos += (size_t)len;
    return push(v, s);
}

static ms_status push_int(vm *v, int64_t i)
{
    pv *x = mk(v, PV_INT);
    if (!x)
        return oom(v);
    x->i = i;
    return push(v, x);
}

/* Runs the pickle to STOP; *result is the value left on the stack. */
static ms_status run(vm *v, pv **result)
{
    const char *path = v->tf->path;
    for (;;) {
        const uint8_t *b = need(v, 1);
        if (!b)
            return truncated(v);
        uint8_t op = *b;
        ms_status st = MS_OK;
        pv *x, *y, *c;
        size_t start;
        switch (op) {
        case 0x80: /* PROTO */
            if (!(b = need(v, 1)))
                return truncated(v);
            if (*b > 5)
                return VFAIL(v, "%s: data.pkl: pickle protocol %u unknown", path, *b);
            break;
        case 0x95: /* FRAME: framing is only a read-ahead hint */
            if (!need(v, 8))
                return truncated(v);
            break;
        case '.': /* STOP */
            if (!(x = pop(v)))
                return underflow(v, op);
            *result = x;
            return MS_OK;
        case '(': /* MARK */
            if (v->nmarks >= PK_MAX_MARKS)
                return VFAIL(v, "%s: data.pkl: more than %u nested marks", path, PK_MAX_MARKS);
            if (grow((void **)&v->marks, &v->mcap, v->nmarks + 1, sizeof *v->marks) != 0)
                return oom(v);
            v->marks[v->nmarks++] = v->sp;
            break;
        case '0': /* POP */
            if (!pop(v))
                return underflow(v, op);
            break;
        case '1': /* POP_MARK */
            if (pop_mark(v, &start) != 0)
                return underflow(v, op);
            v->sp = start;
            break;
        case '2': /* DUP */
            if (!(x = top(v)))
                return underflow(v, op);
            st = push(v, x);
            break;
        case 'N':
            st = push(v, mk(v, PV_NONE));
            break;
        case 0x88: case 0x89: /* NEWTRUE, NEWFALSE */
            if (!(x = mk(v, PV_BOOL)))
                return oom(v);
            x->i = op == 0x88;
            st = push(v, x);
            break;
        case 'J': /* BININT */
            if (!(b = need(v, 4)))
                return truncated(v);
            st = push_int(v, read_long(b, 4));
            break;
        case 'K': /* BININT1 */
            if (!(b = need(v, 1)))
                return truncated(v);
            st = push_int(v, b[0]);
            break;
        case 'M': /* BININT2 */
            if (!(b = need(v, 2)))
                return truncated(v);
            st = push_int(v, rd16(b));
            break;
        case 0x8a: case 0x8b: { /* LONG1, LONG4 */
            size_t w = op == 0x8a ? 1 : 4;
            if (!(b = need(v, w)))
                return truncated(v);
            uint64_t n = w == 1 ? b[0] : rd32(b);
            if (n > 8)
                return VFAIL(v, "%s: data.pkl: integer of %llu bytes too large", path,
                             (unsigned long long)n);
            if (!(b = need(v, (size_t)n)))
                return truncated(v);
            st = push_int(v, read_long(b, (size_t)n));
            break;
        }
        case 'G': { /* BINFLOAT, big-endian */
            if (!(b = need(v, 8)))
                return truncated(v);
            uint64_t u = 0;
            for (int k = 0; k < 8; k++)
                u = u << 8 | b[k];
            if (!(x = mk(v, PV_FLOAT)))
                return oom(v);
            memcpy(&x->f, &u, 8);
            st = push(v, x);
            break;
        }
        case 'X': case 'B': case 'T': /* BINUNICODE, BINBYTES, BINSTRING */
            if (!(b = need(v, 4)))
                return truncated(v);
            st = push_str(v, op == 'B' ? PV_BYTES : PV_STR, rd32(b));
            break;
        case 0x8c: case 'C': case 'U': /* SHORT_BINUNICODE, SHORT_BINBYTES, SHORT_BINSTRING */
            if (!(b = need(v, 1)))
                return truncated(v);
            st = push_str(v, op == 'C' ? PV_BYTES : PV_STR, b[0]);
            break;
        case 0x8d: case 0x8e: /* BINUNICODE8, BINBYTES8 */
            if (!(b = need(v, 8)))
                return truncated(v);
            st = push_str(v, op == 0x8e ? PV_BYTES : PV_STR, rd64(b));
            break;
        case ')':
            st = push(v, mk(v, PV_TUPLE));
            break;
        case ']': case 0x8f: /* EMPTY_LIST, EMPTY_SET (a set is a list here) */
            st = push(v, mk(v, PV_LIST));
            break;
        case '}':
            st = push(v, mk(v, PV_DICT));
            break;
        case 't': case 'l': case 0x91: /* TUPLE, LIST, FROZENSET */
            if (pop_mark(v, &start) != 0)
                return underflow(v, op);
            if (!(x = mk(v, op == 't' ? PV_TUPLE : PV_LIST)) || take_items(v, x, start) != 0)
                return oom(v);
            st = push(v, x);
            break;
        case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
            size_t n = (size_t)(op - 0x84);
            if (v->sp - fence(v) < n)
                return underflow(v, op);
            if (!(x = mk(v, PV_TUPLE)) || take_items(v, x, v->sp - n) != 0)
                return oom(v);
            st = push(v, x);
            break;
        }
        case 'd': /* DICT */
            if (pop_mark(v, &start) != 0)
                return underflow(v, op);
            if ((v->sp - start) % 2)
                return VFAIL(v, "%s: data.pkl: DICT with an odd number of items", path);
            if (!(x = mk(v, PV_DICT)) || take_items(v, x, start) != 0)
                return oom(v);
            st = push(v, x);
            break;
        case 'a': /* APPEND */
            if (!(y = pop(v)) || !(c = top(v)))
                return underflow(v, op);
            if (c->kind != PV_LIST)
                return VFAIL(v, "%s: data.pkl: APPEND to a non-list", path);
            if (add_item(c, y) != 0)
                return oom(v);
            break;
        case 's': /* SETITEM */
            if (!(y = pop(v)) || !(x = pop(v)) || !(c = top(v)))
                return underflow(v, op);
            if (c->kind != PV_DICT)
                return VFAIL(v, "%s: data.pkl: SETITEM on a non-dict", path);
            if (add_item(c, x) != 0 || add_item(c, y) != 0)
                return oom(v);
            break;
        case 'e': case 'u': case 0x90: /* APPENDS, SETITEMS, ADDITEMS */
            if (pop_mark(v, &start) != 0 || start == 0 || start <= fence(v))
                return underflow(v, op);
            c = v->stack[start - 1];
            if (c->kind != (op == 'u' ? PV_DICT : PV_LIST))
                return VFAIL(v, "%s: data.pkl: %s on the wrong container", path,
                             op == 'u' ? "SETITEMS" : "APPENDS");
            if (op == 'u' && (v->sp - start) % 2)
                return VFAIL(v, "%s: data.pkl: SETITEMS with an odd number of items", path);
            if (take_items(v, c, start) != 0)
                return oom(v);
            break;
        case 'c': { /* GLOBAL "module\nname\n" */
            const char *mod, *name;
            size_t ml, nl;
            if (read_line(v, &mod, &ml) != 0 || read_line(v, &name, &nl) != 0)
                return truncated(v);
            st = make_global(v, mod, ml, name, nl);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if (!(y = pop(v)) || !(x = pop(v)))
                return underflow(v, op);
            if (x->kind != PV_STR || y->kind != PV_STR)
                return VFAIL(v, "%s: data.pkl: STACK_GLOBAL on non-strings", path);
            st = make_global(v, x->s, x->len, y->s, y->len);
            break;
        case 'q': /* BINPUT */
            if (!(b = need(v, 1)))
                return truncated(v);
            st = memo_put(v, b[0]);
            break;
        case 'r': /* LONG_BINPUT */
            if (!(b = need(v, 4)))
                return truncated(v);
            st = memo_put(v, rd32(b));
            break;
        case 0x94: /* MEMOIZE */
            st = memo_put(v, v->memo_used);
            break;
        case 'h': /* BINGET */
            if (!(b = need(v, 1)))
                return truncated(v);
            st = memo_get(v, b[0]);
            break;
        case 'j': /* LONG_BINGET */
            if (!(b = need(v, 4)))
                return truncated(v);
            st = memo_get(v, rd32(b));
            break;
        case 'R': /* REDUCE */
            if (!(y = pop(v)) || !(x = pop(v)))
                return underflow(v, op);
            st = reduce(v, x, y);
            break;
        case 'b': /* BUILD: a state dict's own attributes (_metadata) are not needed */
            if (!(y = pop(v)) || !(x = top(v)))
                return underflow(v, op);
            if (x->kind != PV_DICT && x->kind != PV_TENSOR)
                return VFAIL(v, "%s: data.pkl: BUILD on an unsupported object", path);
            break;
        case 'Q': /* BINPERSID */
            if (!(x = pop(v)))
                return underflow(v, op);
            st = persistent_id(v, x);
            break;
        default:
            return VFAIL(v, "%s: data.pkl: unsupported pickle opcode 0x%02x at byte %zu", path,
                         op, v->pos - 1);
        }
        if (st != MS_OK)
            return st;
    }
}

static void vm_free(vm *v)
{
    for (size_t i = 0; i < v->nall; i++) {
        free(v->all[i]->items);
        free(v->all[i]);
    }
    free(v->all);
    free(v->stack);
    free(v->marks);
    free(v->memo);
}

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
        st = run(&v, &res);
        if (st == MS_OK && res->kind != PV_DICT)
            st = ms_fail(err, MS_ERR_FORMAT, "%s: data.pkl does not hold a dict of tensors", p);
        for (size_t i = 0; st == MS_OK && i + 1 < res->n; i += 2)
            st = add_tensor(tf, &z, pk->name, plen, res->items[i], res->items[i + 1], err);
        vm_free(&v);
    }
    free(z.e);
    return st;
}

/* ======================================================================== */
/* Writing: pickle                                                           */
/* ======================================================================== */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} buf;

static void put(buf *b, const void *d, size_t n)
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

static void put1(buf *b, uint8_t x) { put(b, &x, 1); }

static void put_le(buf *b, uint64_t x, int n)
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

/* BINPUT the value just written; returns its memo id. */
static int64_t memoize(pkw *w)
{
    uint32_t id = w->next_memo++;
    if (id < 256) {
        put1(&w->b, 'q');
        put1(&w->b, (uint8_t)id);
    } else {
        put1(&w->b, 'r');
        put_le(&w->b, id, 4);
    }
    return id;
}

static void binget(pkw *w, int64_t id)
{
    if (id < 256) {
        put1(&w->b, 'h');
        put1(&w->b, (uint8_t)id);
    } else {
        put1(&w->b, 'j');
        put_le(&w->b, (uint64_t)id, 4);
    }
}

static void p_str(pkw *w, const char *s, size_t n)
{
    put1(&w->b, 'X');
    put_le(&w->b, n, 4);
    put(&w->b, s, n);
}

/* A string memoised once and fetched afterwards (*id < 0: not yet). */
static void p_shared_str(pkw *w, const char *s, int64_t *id)
{
    if (*id >= 0) {
        binget(w, *id);
        return;
    }
    p_str(w, s, strlen(s));
    *id = memoize(w);
}

static void p_global(pkw *w, const char *mod, const char *name, int64_t *id)
{
    if (*id >= 0) {
        binget(w, *id);
        return;
    }
    put1(&w->b, 'c');
    put(&w->b, mod, strlen(mod));
    put1(&w->b, '\n');
    put(&w->b, name, strlen(name));
    put1(&w->b, '\n');
    *id = memoize(w);
}

/* Python's save_long at protocol 2: the shortest of K, M, J, LONG1. */
static void p_int(pkw *w, int64_t x)
{
    if (x >= 0 && x <= 0xff) {
        put1(&w->b, 'K');
        put1(&w->b, (uint8_t)x);
    } else if (x >= 0 && x <= 0xffff) {
        put1(&w->b, 'M');
        put_le(&w->b, (uint64_t)x, 2);
    } else if (x >= INT32_MIN && x <= INT32_MAX) {
        put1(&w->b, 'J');
        put_le(&w->b, (uint64_t)x, 4);
    } else {
        uint64_t u = (uint64_t)x;
        int n = 8;
        /* drop top bytes that are pure sign extension of the byte below */
        while (n > 1) {
            uint8_t hi = (uint8_t)(u >> (8 * (n - 1))), next = (uint8_t)(u >> (8 * (n - 2)));
            if ((hi == 0 && !(next & 0x80)) || (hi == 0xff && (next & 0x80)))
                n--;
            else
                break;
        }
        put1(&w->b, 0x8a);
        put1(&w->b, (uint8_t)n);
        put_le(&w->b, u, n);
    }
}

/* A tuple of ints, as pickle writes it at protocol 2. */
static void p_int_tuple(pkw *w, const int64_t *v, int n)
{
    if (n == 0) {
        put1(&w->b, ')');
        return;
    }
    if (n > 3)
        put1(&w->b, '(');
    for (int i = 0; i < n; i++)
        p_int(w, v[i]);
    put1(&w->b, n > 3 ? 't' : (uint8_t)(0x84 + n));
    memoize(w);
}

/* name: _rebuild_tensor_v2(storage i, 0, shape, contiguous strides, False, OrderedDict()) */
static void p_tensor(pkw *w, const ms_tensor *t, size_t i)
{
    static const char *const stypes[3] = {"FloatStorage", "HalfStorage", "BFloat16Storage"};
    p_str(w, t->name, strlen(t->name));
    memoize(w);
    p_global(w, "torch._utils", "_rebuild_tensor_v2", &w->m_rebuild);
    put1(&w->b, '(');
    put1(&w->b, '(');
    p_shared_str(w, "storage", &w->m_storage_str);
    p_global(w, "torch", stypes[t->dtype], &w->m_stype[t->dtype]);
    char key[32];
    int kl = snprintf(key, sizeof key, "%zu", i);
    p_str(w, key, (size_t)kl);
    memoize(w);
    p_shared_str(w, "cpu", &w->m_cpu);
    p_int(w, ms_tensor_numel(t));
    put1(&w->b, 't');
    memoize(w);
    put1(&w->b, 'Q');
    p_int(w, 0);
    int64_t stride[MS_MAX_DIMS], s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        stride[d] = s;
        s *= t->shape[d];
    }
    p_int_tuple(w, t->shape, t->ndim);
    p_int_tuple(w, stride, t->ndim);
    put1(&w->b, 0x89);
    p_global(w, "collections", "OrderedDict", &w->m_odict);
    put1(&w->b, ')');
    put1(&w->b, 'R');
    memoize(w);
    put1(&w->b, 't');
    memoize(w);
    put1(&w->b, 'R');
    memoize(w);
}

/* The whole data.pkl: an OrderedDict filled in batches of 1000 like pickle. */
static void p_state_dict(pkw *w, const ms_tensor *ts, size_t n)
{
    put1(&w->b, 0x80);
    put1(&w->b, 2);
    p_global(w, "collections", "OrderedDict", &w->m_odict);
    put1(&w->b, ')');
    put1(&w->b, 'R');
    memoize(w);
    for (size_t i = 0; i < n; i += 1000) {
        size_t k = n - i < 1000 ? n - i : 1000;
        if (k > 1)
            put1(&w->b, '(');
        for (size_t j = i; j < i + k; j++)
            p_tensor(w, &ts[j], j);
        put1(&w->b, k > 1 ? 'u' : 's');
    }
    put1(&w->b, '.');
}

/* ======================================================================== */
/* Writing: zip                                                              */
/* ======================================================================== */

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
static void zip_entry(zw *z, cdrec *r, const char *name, const void *data, size_t size)
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
static void zip_finish(zw *z, const cdrec *r, size_t n)
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
    p_state_dict(&w, ts, n);
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
