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
 * a torn one; the checksum catches what the file system does not. Temp
 * names come from mkstemp (".<id>.state.tmp.XXXXXX"): replicas sharing the
 * directory may all be PID 1 in their containers, so a PID in the name is
 * not unique. The writer holds an flock on its temp file while it writes,
 * so start-up can tell a stale temp (left by kill -9) from a live one.
 *
 * Files are opened without blocking and must be regular: a FIFO or a device
 * named "*.state" would otherwise hang the reader for good.
 */
#include "state_store.h"

#include "openai.h"
#include "state_record.h"
#include "status.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define MAGIC "RWKVSES"
#define VERSION 2u
#define HDR_BYTES (8 + 4 * 6 + 32 + 8 + 8) /* the fixed part, same in versions 1 and 2 */
#define F_META 1u
#define F_TOKENS 16u
#define F_CKPT 32u

/* The file's CRC-32 is zlib's (the zip/PNG polynomial), folded in as
 * bytes are written or read. */
static uint32_t crc_update(uint32_t crc, const void *p, size_t n)
{
    return (uint32_t)crc32_z(crc, p, n);
}

/* ------------------------------------------------------------ names, ids */

static void path_of(char *out, size_t cap, const char *dir, const char *id, const char *suffix)
{
    snprintf(out, cap, "%s/%s.state%s", dir, id, suffix);
}

/* ------------------------------------------------------------------ save */

/* Writes n bytes and folds them into *crc; -1 on a short write. */
static int wr(FILE *f, const void *p, size_t n, uint32_t *crc)
{
    if (n && fwrite(p, 1, n, f) != n) return -1;
    *crc = crc_update(*crc, p, n);
    return 0;
}

/* Creates and locks a fresh temp file for file name in dir; its name goes
 * to tmp. A start-up cleaner may remove a temp between its creation and our
 * lock (it only removes files it can lock): then the file is unlinked and a
 * new one is made. Returns the fd or -1 (errno set). */
static int make_temp(const char *dir, const char *name, char *tmp, size_t cap)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        snprintf(tmp, cap, "%s/.%s.tmp.XXXXXX", dir, name);
        int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) return -1;
        /* Not every file system has locks (ENOLCK, EOPNOTSUPP): write anyway;
         * the cleaner then only removes temps that are old. */
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR) {
        }
        struct stat st;
        if (fstat(fd, &st) == 0 && st.st_nlink > 0) return fd;
        close(fd);
    }
    errno = EAGAIN;
    return -1;
}

int store_write_atomic(const char *dir, const char *name, int (*body)(FILE *f, void *ud),
                       void *ud, char *err, size_t errcap)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = make_temp(dir, name, tmp, sizeof tmp);
    if (fd < 0) return srv_errf(err, errcap, "cannot create a temp file in %s: %s", dir, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        unlink(tmp);
        return srv_errf(err, errcap, "%s: %s", tmp, strerror(errno));
    }
    int bad = body(f, ud);
    bad = bad || fflush(f) != 0 || fsync(fileno(f)) != 0;
    int saved = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    if (bad) {
        unlink(tmp);
        return srv_errf(err, errcap, "%s: write failed: %s", tmp, strerror(saved));
    }
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        return srv_errf(err, errcap, "rename %s -> %s: %s", tmp, path, strerror(saved));
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* best effort: persist the rename itself */
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}

typedef struct save_args {
    const store_record *r;
    const ms_config *cfg;
    const uint8_t *fp;
} save_args;

/* store_write_atomic's body for a session file: nonzero on a short write. */
static int write_record(FILE *f, void *ud)
{
    const save_args *a = ud;
    const store_record *r = a->r;
    const ms_config *cfg = a->cfg;
    unsigned char h[HDR_BYTES];
    memcpy(h, MAGIC, 8);
    rec_put_u32(h + 8, VERSION);
    rec_put_u32(h + 12, (uint32_t)cfg->n_layer);
    rec_put_u32(h + 16, (uint32_t)cfg->n_embd);
    rec_put_u32(h + 20, (uint32_t)cfg->n_head);
    rec_put_u32(h + 24, (uint32_t)cfg->head_size);
    uint32_t flags = (cfg->meta_state ? F_META : 0) | (r->tokens_known ? F_TOKENS : 0) |
                     (r->ckpt ? F_CKPT : 0);
    rec_put_u32(h + 28, flags);
    memcpy(h + 32, a->fp, 32);
    rec_put_u64(h + 64, r->tokens_known ? r->n_tokens : 0);
    rec_put_u64(h + 72, r->ckpt ? r->n_ckpt : 0);
    size_t name_len = strnlen(r->init_state, STORE_NAME_MAX);
    unsigned char nl[4];
    rec_put_u32(nl, (uint32_t)name_len);
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
    rec_put_u32(tail, crc);
    return bad || fwrite(tail, 1, 4, f) != 4;
}

int store_save(const char *dir, const char *id, const store_record *r,
               const ms_config *cfg, const uint8_t *fp, char *err, size_t errcap)
{
    char name[300];
    snprintf(name, sizeof name, "%s.state", id);
    save_args a = {r, cfg, fp};
    return store_write_atomic(dir, name, write_record, &a, err, errcap);
}

/* ------------------------------------------------------------------ load */

/* O_NONBLOCK so that opening a FIFO planted under a session's name cannot
 * hang the worker; cleared again once the file is known to be regular. */
FILE *store_open_regular(const char *path)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP) errno = EINVAL; /* a symlink */
        return NULL;
    }
    struct stat st;
    int fl;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (fl = fcntl(fd, F_GETFL)) < 0 ||
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        errno = S_ISREG(st.st_mode) ? e : EINVAL;
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return f;
}

int store_values_ok(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(x[i]) <= STORE_VALUE_MAX)) return 0; /* also false for NaN */
    return 1;
}

int store_read_upload(const ms_model *m, const char *path, ms_state **out, char *err, size_t errcap)
{
    *out = NULL;
    ms_tensorfile *tf = NULL;
    ms_error e = {0};
    if (ms_tensorfile_open(path, &tf, &e) != MS_OK) {
        snprintf(err, errcap, "not a safetensors state: %s", e.msg);
        return 1;
    }
    ms_state *st = ms_state_new(m);
    if (!st) {
        ms_tensorfile_close(tf);
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    ms_status rc = ms_state_load_tensors(st, tf, "state.", &e);
    ms_tensorfile_close(tf);
    if (rc != MS_OK) {
        ms_state_free(st);
        snprintf(err, errcap, "%s", e.msg);
        return 1;
    }
    if (!store_values_ok(ms_state_cdata(st), ms_state_nfloats(st))) {
        ms_state_free(st);
        snprintf(err, errcap, "the state holds values that are not finite or beyond +-%g",
                 (double)STORE_VALUE_MAX);
        return 1;
    }
    *out = st;
    return 0;
}

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
    FILE *f = store_open_regular(path);
    if (!f) {
        if (errno == ENOENT) {
            srv_errf(err, errcap, "%s: no such file", path);
            return 1;
        }
        if (errno == EINVAL) return srv_errf(err, errcap, "%s: not a regular file", path);
        return srv_errf(err, errcap, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return srv_errf(err, errcap, "%s: %s", path, strerror(errno));
    }
    unsigned char h[HDR_BYTES];
    uint32_t crc = 0;
    int rc = -1;
    float *scratch = NULL;
    if (rd(f, h, sizeof h, &crc) || memcmp(h, MAGIC, 8)) {
        srv_errf(err, errcap, "%s: not a metastate session file (bad magic or truncated header)", path);
        goto out;
    }
    uint32_t ver = rec_get_u32(h + 8);
    if (ver != 1 && ver != VERSION) {
        srv_errf(err, errcap, "%s: session file version %u, this server reads versions 1 to %u", path,
             ver, VERSION);
        goto out;
    }
    uint32_t L = rec_get_u32(h + 12), C = rec_get_u32(h + 16), H = rec_get_u32(h + 20), N = rec_get_u32(h + 24);
    if ((int)L != cfg->n_layer || (int)C != cfg->n_embd || (int)H != cfg->n_head ||
        (int)N != cfg->head_size) {
        srv_errf(err, errcap, "%s: state of shape L=%u C=%u H=%u N=%u, the model has L=%d C=%d H=%d N=%d",
             path, L, C, H, N, cfg->n_layer, cfg->n_embd, cfg->n_head, cfg->head_size);
        goto out;
    }
    if (!ms_model_state_compatible(model, h + 32)) {
        srv_errf(err, errcap, "%s: state made with another model (fingerprint mismatch)", path);
        goto out;
    }
    uint32_t flags = rec_get_u32(h + 28);
    uint64_t nt = rec_get_u64(h + 64), nc = rec_get_u64(h + 72);
    char name[STORE_NAME_MAX + 1] = "";
    uint32_t name_len = 0;
    if (ver >= 2) {
        unsigned char nl[4];
        if (rd(f, nl, 4, &crc) || (name_len = rec_get_u32(nl)) > STORE_NAME_MAX ||
            rd(f, name, name_len, &crc) || memchr(name, 0, name_len)) {
            srv_errf(err, errcap, "%s: bad initial-state name (truncated or corrupt)", path);
            goto out;
        }
        name[name_len] = 0;
    }
    size_t nf = ms_state_nfloats(r->state);
    uint64_t expect = HDR_BYTES + (ver >= 2 ? 4 + (uint64_t)name_len : 0) +
                      (uint64_t)nf * 4 * ((flags & F_CKPT) ? 2 : 1) + nt * 4 + 4;
    if (nt > (1u << 30)) {
        srv_errf(err, errcap, "%s: token count %llu is implausible (corrupt header)", path,
             (unsigned long long)nt);
        goto out;
    }
    if (nc > nt) {
        srv_errf(err, errcap, "%s: checkpoint after %llu tokens of %llu (corrupt header)", path,
             (unsigned long long)nc, (unsigned long long)nt);
        goto out;
    }
    if (!(flags & F_CKPT) && nc) {
        srv_errf(err, errcap, "%s: checkpoint count %llu without a checkpoint (corrupt header)", path,
             (unsigned long long)nc);
        goto out;
    }
    if ((uint64_t)st.st_size != expect) {
        srv_errf(err, errcap, "%s: size %lld bytes, expected %llu (truncated or corrupt)", path,
             (long long)st.st_size, (unsigned long long)expect);
        goto out;
    }
    /* Read into scratch first: a checksum failure must leave r->state untouched. */
    scratch = malloc(nf * sizeof(float) * ((flags & F_CKPT) ? 2 : 1));
    r->tokens = nt ? malloc(nt * sizeof(int32_t)) : NULL;
    if (!scratch || (nt && !r->tokens)) {
        srv_errf(err, errcap, "%s: out of memory", path);
        goto out;
    }
    if (rd(f, scratch, nf * sizeof(float) * ((flags & F_CKPT) ? 2 : 1), &crc) ||
        rd(f, r->tokens, nt * 4, &crc)) {
        srv_errf(err, errcap, "%s: truncated", path);
        goto out;
    }
    unsigned char tail[4];
    if (fread(tail, 1, 4, f) != 4 || rec_get_u32(tail) != crc) {
        srv_errf(err, errcap, "%s: checksum mismatch (file corrupt)", path);
        goto out;
    }
    if (!store_values_ok(scratch, nf * ((flags & F_CKPT) ? 2 : 1))) {
        srv_errf(err, errcap, "%s: state values not finite or beyond +-%g (corrupt)", path,
             (double)STORE_VALUE_MAX);
        goto out;
    }
    for (uint64_t i = 0; i < nt; i++)
        if (r->tokens[i] < 0 || r->tokens[i] >= cfg->vocab_size) {
            srv_errf(err, errcap, "%s: token id %d out of range", path, r->tokens[i]);
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
    FILE *f = store_open_regular(path);
    if (!f) return -1;
    unsigned char h[HDR_BYTES];
    long long n = fread(h, 1, sizeof h, f) == sizeof h && !memcmp(h, MAGIC, 8) ? (long long)rec_get_u64(h + 64) : -1;
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

/* 1 for ".<id>.state.tmp.<anything>" (this and earlier versions' temps)
 * and ".<id>.response.tmp.<anything>" (stored responses, resp_files.c). */
static int is_temp_name(const char *name)
{
    return name[0] == '.' && (strstr(name, ".state.tmp.") || strstr(name, ".response.tmp."));
}

int store_clean_temps(const char *dir, int min_age_s)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_temp_name(e->d_name)) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0) continue;
        if (!S_ISREG(st.st_mode)) { /* no writer makes these */
            removed += unlink(path) == 0;
            continue;
        }
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) continue;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            /* No live writer holds it: stale. Unlinked while we hold the lock,
             * so a writer that just created it sees nlink 0 and starts over. */
            removed += unlink(path) == 0;
        } else if (errno != EWOULDBLOCK && errno != EINTR) {
            /* No locks on this file system: only temps untouched for long. */
            if (time(NULL) - st.st_mtime >= min_age_s) removed += unlink(path) == 0;
        }
        close(fd);
    }
    closedir(d);
    return removed;
}

int store_scan(const char *dir, void (*fn)(const char *id, void *ud), void *ud,
               int *quarantined, char *err, size_t errcap)
{
    if (quarantined) *quarantined = 0;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return srv_errf(err, errcap, "cannot create state dir %s: %s", dir, strerror(errno));
    DIR *d = opendir(dir);
    if (!d) return srv_errf(err, errcap, "cannot read state dir %s: %s", dir, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= 6 || strcmp(e->d_name + len - 6, ".state")) continue;
        char id[256];
        if (len - 6 >= sizeof id) continue;
        memcpy(id, e->d_name, len - 6);
        id[len - 6] = 0;
        if (!oa_session_id_valid(id, len - 6)) continue;
        char path[4096];
        struct stat st;
        path_of(path, sizeof path, dir, id, "");
        if (lstat(path, &st) != 0) continue;
        if (!S_ISREG(st.st_mode)) { /* FIFO, device, symlink, directory */
            store_quarantine(dir, id);
            if (quarantined) (*quarantined)++;
            continue;
        }
        fn(id, ud);
        n++;
    }
    closedir(d);
    return n;
}
