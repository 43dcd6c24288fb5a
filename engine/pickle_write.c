/*
 * pickle_write.c - data.pkl as torch.save writes it at protocol 2 (same
 * opcodes, same memoisation pattern), so PyTorch loads what we write.
 */
#include "pth_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* Writing: pickle                                                           */
/* ======================================================================== */




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
void pk_state_dict(pkw *w, const ms_tensor *ts, size_t n)
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
