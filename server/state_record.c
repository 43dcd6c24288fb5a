/*
 * state_record.c - the session record (SPEC 4.4, version 2 of this server's
 * variant; the layout is documented at the top of state_store.c) encoded to
 * and decoded from memory. Little-endian; this host is little-endian
 * (x86-64), so the float and token arrays are copied as they are.
 */
#include "state_record.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "status.h"

#define MAGIC "RWKVSES"
#define VERSION 2u
#define HDR_BYTES (8 + 4 * 6 + 32 + 8 + 8)
#define F_META 1u
#define F_TOKENS 16u
#define F_CKPT 32u

/* The record's CRC-32 is zlib's (the zip/PNG polynomial), as in the files. */
static uint32_t crc32_of(const unsigned char *b, size_t n)
{
    return (uint32_t)crc32_z(0, b, n);
}


static size_t nfloats(const ms_config *c)
{
    return (size_t)c->n_layer * (size_t)c->n_embd * (size_t)(c->head_size + 2);
}

size_t record_size(const store_record *r, const ms_config *cfg)
{
    size_t nf = nfloats(cfg);
    return HDR_BYTES + 4 + strnlen(r->init_state, STORE_NAME_MAX) +
           nf * sizeof(float) * (r->ckpt ? 2 : 1) +
           (r->tokens_known ? r->n_tokens * sizeof(int32_t) : 0) + 4;
}

size_t record_encode(const store_record *r, const ms_config *cfg, const uint8_t *fp,
                     unsigned char *out, size_t cap)
{
    size_t need = record_size(r, cfg);
    if (cap < need) return 0;
    unsigned char *p = out;
    memcpy(p, MAGIC, 8);
    rec_put_u32(p + 8, VERSION);
    rec_put_u32(p + 12, (uint32_t)cfg->n_layer);
    rec_put_u32(p + 16, (uint32_t)cfg->n_embd);
    rec_put_u32(p + 20, (uint32_t)cfg->n_head);
    rec_put_u32(p + 24, (uint32_t)cfg->head_size);
    rec_put_u32(p + 28, (cfg->meta_state ? F_META : 0) | (r->tokens_known ? F_TOKENS : 0) |
                        (r->ckpt ? F_CKPT : 0));
    memcpy(p + 32, fp, 32);
    rec_put_u64(p + 64, r->tokens_known ? r->n_tokens : 0);
    rec_put_u64(p + 72, r->ckpt ? r->n_ckpt : 0);
    p += HDR_BYTES;
    size_t name_len = strnlen(r->init_state, STORE_NAME_MAX);
    rec_put_u32(p, (uint32_t)name_len);
    memcpy(p + 4, r->init_state, name_len);
    p += 4 + name_len;
    size_t sb = nfloats(cfg) * sizeof(float);
    memcpy(p, ms_state_cdata(r->state), sb);
    p += sb;
    if (r->ckpt) {
        memcpy(p, ms_state_cdata(r->ckpt), sb);
        p += sb;
    }
    if (r->tokens_known && r->n_tokens) {
        memcpy(p, r->tokens, r->n_tokens * sizeof(int32_t));
        p += r->n_tokens * sizeof(int32_t);
    }
    rec_put_u32(p, crc32_of(out, (size_t)(p - out)));
    return need;
}

int record_decode(const unsigned char *buf, size_t len, store_record *r, const ms_model *model,
                  const char *what, char *err, size_t errcap)
{
    const ms_config *cfg = ms_model_config(model);
    r->tokens = NULL;
    r->n_tokens = 0;
    r->n_ckpt = 0;
    r->tokens_known = 0;
    r->init_state[0] = 0;
    if (len < HDR_BYTES || memcmp(buf, MAGIC, 8))
        return srv_errf(err, errcap, "%s: not a metastate session record (bad magic or truncated header)", what);
    uint32_t ver = rec_get_u32(buf + 8);
    if (ver != 1 && ver != VERSION)
        return srv_errf(err, errcap, "%s: session record version %u, this server reads versions 1 to %u",
                    what, ver, VERSION);
    uint32_t L = rec_get_u32(buf + 12), C = rec_get_u32(buf + 16), H = rec_get_u32(buf + 20), N = rec_get_u32(buf + 24);
    if ((int)L != cfg->n_layer || (int)C != cfg->n_embd || (int)H != cfg->n_head ||
        (int)N != cfg->head_size)
        return srv_errf(err, errcap, "%s: state of shape L=%u C=%u H=%u N=%u, the model has L=%d C=%d H=%d N=%d",
                    what, L, C, H, N, cfg->n_layer, cfg->n_embd, cfg->n_head, cfg->head_size);
    if (!ms_model_state_compatible(model, buf + 32))
        return srv_errf(err, errcap, "%s: state made with another model (fingerprint mismatch)", what);
    uint32_t flags = rec_get_u32(buf + 28);
    uint64_t nt = rec_get_u64(buf + 64), nc = rec_get_u64(buf + 72);
    size_t off = HDR_BYTES;
    uint32_t name_len = 0;
    if (ver >= 2) {
        if (len < off + 4 || (name_len = rec_get_u32(buf + off)) > STORE_NAME_MAX ||
            len < off + 4 + name_len || memchr(buf + off + 4, 0, name_len))
            return srv_errf(err, errcap, "%s: bad initial-state name (truncated or corrupt)", what);
        off += 4 + name_len;
    }
    size_t nf = nfloats(cfg);
    int has_ckpt = (flags & F_CKPT) != 0;
    if (nt > (1u << 30) || nc > nt)
        return srv_errf(err, errcap, "%s: token count %llu / checkpoint at %llu: corrupt", what,
                    (unsigned long long)nt, (unsigned long long)nc);
    uint64_t expect = off + (uint64_t)nf * 4 * (has_ckpt ? 2 : 1) + nt * 4 + 4;
    if ((uint64_t)len != expect)
        return srv_errf(err, errcap, "%s: %zu bytes, a record with this header has %llu (truncated or corrupt)",
                    what, len, (unsigned long long)expect);
    if (rec_get_u32(buf + len - 4) != crc32_of(buf, len - 4))
        return srv_errf(err, errcap, "%s: checksum mismatch (value corrupt)", what);
    {
        /* The floats may sit at any alignment in buf: check a copy's worth at a time. */
        float chunk[1024];
        size_t total = nf * (has_ckpt ? 2 : 1);
        for (size_t i = 0; i < total; i += 1024) {
            size_t k = total - i < 1024 ? total - i : 1024;
            memcpy(chunk, buf + off + i * 4, k * 4);
            if (!store_values_ok(chunk, k))
                return srv_errf(err, errcap, "%s: state values not finite or beyond +-%g (corrupt)", what,
                            (double)STORE_VALUE_MAX);
        }
    }
    const unsigned char *toks = buf + off + nf * 4 * (has_ckpt ? 2 : 1);
    for (uint64_t i = 0; i < nt; i++) {
        int32_t t = (int32_t)rec_get_u32(toks + 4 * i);
        if (t < 0 || t >= cfg->vocab_size)
            return srv_errf(err, errcap, "%s: token id %d out of range", what, t);
    }
    if (nt) {
        r->tokens = malloc(nt * sizeof(int32_t));
        if (!r->tokens) return srv_errf(err, errcap, "%s: out of memory", what);
        memcpy(r->tokens, toks, nt * sizeof(int32_t));
    }
    memcpy(ms_state_data(r->state), buf + off, nf * sizeof(float));
    if (has_ckpt && r->ckpt) {
        memcpy(ms_state_data(r->ckpt), buf + off + nf * 4, nf * sizeof(float));
        r->n_ckpt = (size_t)nc;
    }
    r->n_tokens = (size_t)nt;
    r->tokens_known = (flags & F_TOKENS) != 0;
    memcpy(r->init_state, buf + HDR_BYTES + 4, ver >= 2 ? name_len : 0);
    r->init_state[ver >= 2 ? name_len : 0] = 0;
    return 0;
}

long long record_peek_tokens(const unsigned char *buf, size_t len)
{
    return len >= HDR_BYTES && !memcmp(buf, MAGIC, 8) ? (long long)rec_get_u64(buf + 64) : -1;
}
