/*
 * state_record.h - a session record as bytes in memory: the same
 * self-checking format as a --state-dir file (server/state_store.c:
 * magic, format version, shape, model fingerprint, initial-state name,
 * state, checkpoint, token history, CRC-32), for stores that keep values
 * rather than files (Redis). A value written here reads back as a file and
 * the other way round.
 *
 * Reentrant, no globals beyond a lazily built CRC table. Errors return -1 with
 * a message in err (errcap bytes) that starts with `what` (the key or name
 * the caller shows).
 */
#ifndef METASTATE_SERVER_STATE_RECORD_H
#define METASTATE_SERVER_STATE_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "state_store.h"

/* The record's little-endian fields, for both stores (files and values). */
static inline void rec_put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void rec_put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint32_t rec_get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t rec_get_u64(const unsigned char *p)
{
    return (uint64_t)rec_get_u32(p) | (uint64_t)rec_get_u32(p + 4) << 32;
}

/* Bytes record_encode writes for r (a model with config cfg). */
size_t record_size(const store_record *r, const ms_config *cfg);

/* Writes r as a version-2 record into out (cap >= record_size(r, cfg));
 * fp is the model's 32-byte fingerprint. Returns the bytes written, 0 when
 * cap is too small. */
size_t record_encode(const store_record *r, const ms_config *cfg, const uint8_t *fp,
                     unsigned char *out, size_t cap);

/* Reads a record (version 1 or 2) into r exactly as store_load reads a file:
 * r->state (and r->ckpt, may be NULL) allocated by the caller for `model`,
 * r->tokens malloc'd (caller frees). Rejects bad magic, version, shape,
 * size, checksum, token ids, and states of models other than `model` or one
 * it was expanded from; on error r->state and r->ckpt are untouched. */
int record_decode(const unsigned char *buf, size_t len, store_record *r, const ms_model *model,
                  const char *what, char *err, size_t errcap);

/* The token count a record claims (for listings; only the magic is
 * checked). -1 when buf is not a record. */
long long record_peek_tokens(const unsigned char *buf, size_t len);

#endif
