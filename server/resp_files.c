/*
 * resp_files.c - stored responses as files (see resp_files.h).
 */
#include "resp_files.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "openai.h"
#include "state_store.h"
#include "status.h"

static const char SUFFIX[] = ".response";

/* <dir>/<id>.response into path; 0 when id cannot name a file. */
static int path_of(char *path, size_t cap, const char *dir, const char *id)
{
    if (!oa_session_id_valid(id, strlen(id))) return 0;
    snprintf(path, cap, "%s/%s%s", dir, id, SUFFIX);
    return 1;
}

typedef struct text_arg {
    const char *text;
    size_t len;
} text_arg;

static int write_text(FILE *f, void *ud)
{
    const text_arg *t = ud;
    return t->len && fwrite(t->text, 1, t->len, f) != t->len;
}

int resp_files_put(const char *dir, const char *id, const char *text, size_t len, char *err,
                   size_t errcap)
{
    char name[300];
    if (!oa_session_id_valid(id, strlen(id)))
        return srv_errf(err, errcap, "response id '%.80s' cannot name a file", id);
    snprintf(name, sizeof name, "%s%s", id, SUFFIX);
    text_arg t = {text, len};
    return store_write_atomic(dir, name, write_text, &t, err, errcap);
}

int resp_files_get(const char *dir, const char *id, char **buf, size_t *len, char *err,
                   size_t errcap)
{
    char path[4096];
    *buf = NULL;
    *len = 0;
    if (!path_of(path, sizeof path, dir, id)) return 0;
    FILE *f = store_open_regular(path);
    if (!f) return errno == ENOENT ? 0 : srv_errf(err, errcap, "%s: %s", path, strerror(errno));
    struct stat st;
    int rc = -1;
    if (fstat(fileno(f), &st) != 0) {
        srv_errf(err, errcap, "%s: %s", path, strerror(errno));
    } else if (!(*buf = malloc((size_t)st.st_size + 1))) {
        srv_errf(err, errcap, "out of memory reading %s", path);
    } else if (fread(*buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        srv_errf(err, errcap, "%s: short read", path);
    } else {
        (*buf)[st.st_size] = 0;
        *len = (size_t)st.st_size;
        rc = 1;
    }
    fclose(f);
    if (rc < 0) {
        free(*buf);
        *buf = NULL;
    }
    return rc;
}

int resp_files_delete(const char *dir, const char *id, char *err, size_t errcap)
{
    char path[4096];
    if (!path_of(path, sizeof path, dir, id)) return 0;
    if (unlink(path) == 0) return 1;
    return errno == ENOENT ? 0 : srv_errf(err, errcap, "%s: %s", path, strerror(errno));
}

int resp_files_expire(const char *dir, long max_age_s)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    time_t now = time(NULL);
    size_t sl = sizeof SUFFIX - 1;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n <= sl || e->d_name[0] == '.' || strcmp(e->d_name + n - sl, SUFFIX)) continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && now - st.st_mtime > max_age_s)
            removed += unlink(path) == 0;
    }
    closedir(d);
    return removed;
}
