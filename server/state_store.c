/*
 * state_store.c - the native session file (SPEC 4.4, version 2 of this
 * server's variant), little-endian:
 *
 *   magic "RWKVSES\0" | u32 version = 2 | u32 L, C, H, N | u32 flags
 *   | u8 fingerprint[32] | u64 n_tokens | u64 n_ckpt
 *   | u32 name_len | name: the initial state's name (name_len bytes, 0 = zero state)
 *   | state: L*C*(N+2) f32 (engine layout: att_shift | S[H][N][N] | ffn_shift per layer)
 *   | checkpoint state, same size (flags bit 5)
 *   | tokens: n_tokens u32
 *   | u32 CRC-32 (IEEE) of every byte before it
 *
 * flags: bit0 meta-state model, bit4 token history known, bit5 checkpoint present.
 * Version 1 is the same without name_len and name; it is still read (as a
 * session started from the zero state, the only start it knew).
 * Writes go to a temp file in the same directory, are fsync'd and renamed
 * over the old file, so a crash leaves either the old or the new file, never
 * a torn one; the checksum catches what the file system does not.
 */
#include "state_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "RWKVSES"
#define VERSION 2u
#define HDR_BYTES (8 + 4 * 6 + 32 + 8 + 8) /* the fixed part, same in versions 1 and 2 */
#define F_META 1u
#define F_TOKENS 16u
#define F_CKPT 32u

static int fail(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t cap, const char *fmt, ...)
{
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---------------------------------------------------------------- CRC-32 */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const void *p, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc_init);
    const unsigned char *b = p;
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *b++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ------------------------------------------------------------ names, ids */

int store_id_valid(const char *id)
{
    size_t n = 0;
    for (const char *p = id; *p; p++, n++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= 128 && strcmp(id, ".") && strcmp(id, "..");
}

static void path_of(char *out, size_t cap, const char *dir, const char *id, const char *suffix)
{
    snprintf(out, cap, "%s/%s.state%s", dir, id, suffix);
}

/* ------------------------------------------------------------------ save */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* Writes n bytes and folds them into *crc; -1 on a short write. */
static int wr(FILE *f, const void *p, size_t n, uint32_t *crc)
{
    if (n && fwrite(p, 1, n, f) != n) return -1;
    *crc = crc_update(*crc, p, n);
    return 0;
}

int store_save(const char *dir, const char *id, const store_record *r,
               const ms_config *cfg, const uint8_t *fp, char *err, size_t errcap)
{
    char path[4096], tmp[4200];
    path_of(path, sizeof path, dir, id, "");
    snprintf(tmp, sizeof tmp, "%s/.%s.state.tmp.%ld", dir, id, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return fail(err, errcap, "%s: %s", tmp, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        unlink(tmp);
        return fail(err, errcap, "%s: %s", tmp, strerror(errno));
    }
    unsigned char h[HDR_BYTES];
    memcpy(h, MAGIC, 8);
    put_u32(h + 8, VERSION);
    put_u32(h + 12, (uint32_t)cfg->n_layer);
    put_u32(h + 16, (uint32_t)cfg->n_embd);
    put_u32(h + 20, (uint32_t)cfg->n_head);
    put_u32(h + 24, (uint32_t)cfg->head_size);
    uint32_t flags = (cfg->meta_state ? F_META : 0) | (r->tokens_known ? F_TOKENS : 0) |
                     (r->ckpt ? F_CKPT : 0);
    put_u32(h + 28, flags);
    memcpy(h + 32, fp, 32);
    put_u64(h + 64, r->tokens_known ? r->n_tokens : 0);
    put_u64(h + 72, r->ckpt ? r->n_ckpt : 0);
    size_t name_len = strnlen(r->init_state, STORE_NAME_MAX);
    unsigned char nl[4];
    put_u32(nl, (uint32_t)name_len);
    uint32_t crc = 0;
    int bad = wr(f, h, sizeof h, &crc);
    bad = bad || wr(f, nl, 4, &crc) || wr(f, r->init_state, name_len, &crc);
    size_t nf = ms_state_nfloats(r->state);
    bad = bad || wr(f, ms_state_cdata(r->state), nf * sizeof(float), &crc);
    if (r->ckpt) bad = bad || wr(f, ms_state_cdata(r->ckpt), nf * sizeof(float), &crc);
    if (r->tokens_known) {
        /* ids are non-negative int32, stored as u32 LE; this host is LE (x86-64). */
        bad = bad || wr(f, r->tokens, r->n_tokens * sizeof(int32_t), &crc);
    }
    unsigned char tail[4];
    put_u32(tail, crc);
    bad = bad || fwrite(tail, 1, 4, f) != 4;
    bad = bad || fflush(f) != 0 || fsync(fileno(f)) != 0;
    int saved = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    if (bad) {
        unlink(tmp);
        return fail(err, errcap, "%s: write failed: %s", tmp, strerror(saved));
    }
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        return fail(err, errcap, "rename %s -> %s: %s", tmp, path, strerror(saved));
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* best effort: persist the rename itself */
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* ------------------------------------------------------------------ load */

static int rd(FILE *f, void *p, size_t n, uint32_t *crc)
{
    if (n && fread(p, 1, n, f) != n) return -1;
    *crc = crc_update(*crc, p, n);
    return 0;
}

int store_load(const char *dir, const char *id, store_record *r, const ms_model *model,
               char *err, size_t errcap)
{
    const ms_config *cfg = ms_model_config(model);
    char path[4096];
    path_of(path, sizeof path, dir, id, "");
    r->tokens = NULL;
    r->n_tokens = 0;
    r->n_ckpt = 0;
    r->tokens_known = 0;
    r->init_state[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) {
            fail(err, errcap, "%s: no such file", path);
            return 1;
        }
        return fail(err, errcap, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return fail(err, errcap, "%s: %s", path, strerror(errno));
    }
    unsigned char h[HDR_BYTES];
    uint32_t crc = 0;
    int rc = -1;
    float *scratch = NULL;
    if (rd(f, h, sizeof h, &crc) || memcmp(h, MAGIC, 8)) {
        fail(err, errcap, "%s: not a metastate session file (bad magic or truncated header)", path);
        goto out;
    }
    uint32_t ver = get_u32(h + 8);
    if (ver != 1 && ver != VERSION) {
        fail(err, errcap, "%s: session file version %u, this server reads versions 1 to %u", path,
             ver, VERSION);
        goto out;
    }
    uint32_t L = get_u32(h + 12), C = get_u32(h + 16), H = get_u32(h + 20), N = get_u32(h + 24);
    if ((int)L != cfg->n_layer || (int)C != cfg->n_embd || (int)H != cfg->n_head ||
        (int)N != cfg->head_size) {
        fail(err, errcap, "%s: state of shape L=%u C=%u H=%u N=%u, the model has L=%d C=%d H=%d N=%d",
             path, L, C, H, N, cfg->n_layer, cfg->n_embd, cfg->n_head, cfg->head_size);
        goto out;
    }
    if (!ms_model_state_compatible(model, h + 32)) {
        fail(err, errcap, "%s: state made with another model (fingerprint mismatch)", path);
        goto out;
    }
    uint32_t flags = get_u32(h + 28);
    uint64_t nt = get_u64(h + 64), nc = get_u64(h + 72);
    char name[STORE_NAME_MAX + 1] = "";
    uint32_t name_len = 0;
    if (ver >= 2) {
        unsigned char nl[4];
        if (rd(f, nl, 4, &crc) || (name_len = get_u32(nl)) > STORE_NAME_MAX ||
            rd(f, name, name_len, &crc) || memchr(name, 0, name_len)) {
            fail(err, errcap, "%s: bad initial-state name (truncated or corrupt)", path);
            goto out;
        }
        name[name_len] = 0;
    }
    size_t nf = ms_state_nfloats(r->state);
    uint64_t expect = HDR_BYTES + (ver >= 2 ? 4 + (uint64_t)name_len : 0) +
                      (uint64_t)nf * 4 * ((flags & F_CKPT) ? 2 : 1) + nt * 4 + 4;
    if (nt > (1u << 30) || (uint64_t)st.st_size != expect || nc > nt) {
        fail(err, errcap, "%s: size %lld bytes, expected %llu (truncated or corrupt)", path,
             (long long)st.st_size, (unsigned long long)expect);
        goto out;
    }
    /* Read into scratch first: a checksum failure must leave r->state untouched. */
    scratch = malloc(nf * sizeof(float) * ((flags & F_CKPT) ? 2 : 1));
    r->tokens = nt ? malloc(nt * sizeof(int32_t)) : NULL;
    if (!scratch || (nt && !r->tokens)) {
        fail(err, errcap, "%s: out of memory", path);
        goto out;
    }
    if (rd(f, scratch, nf * sizeof(float) * ((flags & F_CKPT) ? 2 : 1), &crc) ||
        rd(f, r->tokens, nt * 4, &crc)) {
        fail(err, errcap, "%s: truncated", path);
        goto out;
    }
    unsigned char tail[4];
    if (fread(tail, 1, 4, f) != 4 || get_u32(tail) != crc) {
        fail(err, errcap, "%s: checksum mismatch (file corrupt)", path);
        goto out;
    }
    for (uint64_t i = 0; i < nt; i++)
        if (r->tokens[i] < 0 || r->tokens[i] >= cfg->vocab_size) {
            fail(err, errcap, "%s: token id %d out of range", path, r->tokens[i]);
            goto out;
        }
    memcpy(ms_state_data(r->state), scratch, nf * sizeof(float));
    if ((flags & F_CKPT) && r->ckpt) {
        memcpy(ms_state_data(r->ckpt), scratch + nf, nf * sizeof(float));
        r->n_ckpt = (size_t)nc;
    }
    r->n_tokens = (size_t)nt;
    r->tokens_known = (flags & F_TOKENS) != 0;
    memcpy(r->init_state, name, sizeof name);
    rc = 0;
out:
    free(scratch);
    if (rc) {
        free(r->tokens);
        r->tokens = NULL;
        r->n_tokens = 0;
    }
    fclose(f);
    return rc;
}

long long store_peek_tokens(const char *dir, const char *id)
{
    char path[4096];
    path_of(path, sizeof path, dir, id, "");
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    unsigned char h[HDR_BYTES];
    long long n = fread(h, 1, sizeof h, f) == sizeof h && !memcmp(h, MAGIC, 8) ? (long long)get_u64(h + 64) : -1;
    fclose(f);
    return n;
}

int store_remove(const char *dir, const char *id)
{
    char path[4096];
    path_of(path, sizeof path, dir, id, "");
    return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
}

void store_quarantine(const char *dir, const char *id)
{
    char a[4096], b[4200];
    path_of(a, sizeof a, dir, id, "");
    path_of(b, sizeof b, dir, id, ".rejected");
    if (rename(a, b) != 0) (void)unlink(a);
}

int store_scan(const char *dir, void (*fn)(const char *id, void *ud), void *ud,
               char *err, size_t errcap)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return fail(err, errcap, "cannot create state dir %s: %s", dir, strerror(errno));
    DIR *d = opendir(dir);
    if (!d) return fail(err, errcap, "cannot read state dir %s: %s", dir, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= 6 || strcmp(e->d_name + len - 6, ".state")) continue;
        char id[256];
        if (len - 6 >= sizeof id) continue;
        memcpy(id, e->d_name, len - 6);
        id[len - 6] = 0;
        if (!store_id_valid(id)) continue;
        fn(id, ud);
        n++;
    }
    closedir(d);
    return n;
}
