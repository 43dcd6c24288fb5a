/*
 * web_ui.h - the built-in chat page: the files of web/, compiled into the
 * binary by tools/embed_web.sh, served at / (index.html) and /<file>.
 * Everything here is read-only after startup and safe from any thread.
 */
#ifndef METASTATE_SERVER_WEB_UI_H
#define METASTATE_SERVER_WEB_UI_H

#include <microhttpd.h>
#include <stddef.h>

/* One embedded file; the generated table owns the bytes (static storage). */
typedef struct web_asset {
    const char *path;          /* URL path, e.g. "/app.js" */
    const char *type;          /* Content-Type */
    const unsigned char *data; /* len bytes */
    size_t len;
    const char *etag;          /* quoted strong ETag, from the content */
} web_asset;

extern const web_asset web_assets[];
extern const size_t web_assets_count;

/* The asset served at url ("/" is /index.html; a query string is ignored),
 * or NULL. */
const web_asset *web_ui_find(const char *url);

/* Queues a's response on conn: 304 when the request's If-None-Match names
 * its ETag, else 200 with the bytes (MHD drops the body for HEAD). Sets
 * *status to the status sent. Call only from MHD's request handler. */
enum MHD_Result web_ui_respond(struct MHD_Connection *conn, const web_asset *a, int *status);

#endif
