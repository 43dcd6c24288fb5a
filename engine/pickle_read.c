/*
 * pickle_read.c - a deliberately tiny pickle machine: containers, scalars,
 * the OrderedDict / _rebuild_tensor_v2 / *Storage globals and storage
 * persistent ids, nothing else. Every other global is refused, so nothing in
 * a file is ever executed; the machine never recurses, caps its stack, mark
 * stack and memo, and frees all its values from one list at the end.
 */
#include "pth_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* Pickle machine                                                            */
/* ======================================================================== */

/* Bounds on what a state dict needs, far above any real checkpoint. */
#define PK_MAX_STACK (1u << 20)
#define PK_MAX_MARKS (1u << 16)
#define PK_MAX_MEMO (1u << 22)


typedef enum { G_ORDEREDDICT, G_REBUILD_V2, G_REBUILD_PARAM, G_STORAGE_TYPE } pv_global;



#define VFAIL(v, ...) ms_fail((v)->err, MS_ERR_FORMAT, __VA_ARGS__)

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
ms_status pk_run(vm *v, pv **result)
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

void pk_free(vm *v)
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
