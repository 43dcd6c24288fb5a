/*
 * web_ui.c - serves the embedded chat page.
 *
 * Headers: the page runs under "default-src 'self'" (no inline script or
 * style, nothing from other origins), so text a model produces can never
 * run as code even if it were inserted as markup by mistake. Caching is
 * "no-cache" with a content ETag: the browser revalidates every load and
 * gets a 304 while the binary is the same, and a new build's page at once.
 */
#include "web_ui.h"

#include <string.h>

const web_asset *web_ui_find(const char *url)
{
    size_t n = strcspn(url, "?#");
    if (n == 1 && url[0] == '/') url = "/index.html", n = strlen(url);
    for (size_t i = 0; i < web_assets_count; i++)
        if (strlen(web_assets[i].path) == n && !memcmp(web_assets[i].path, url, n)) return &web_assets[i];
    return NULL;
}

/* 1 when the If-None-Match list (or "*") contains etag. */
static int etag_matches(const char *inm, const char *etag)
{
    if (!inm) return 0;
    size_t n = strlen(etag);
    for (const char *p = inm; *p;) {
        while (*p == ' ' || *p == ',') p++;
        if (!strncmp(p, "W/", 2)) p += 2;
        if (*p == '*') return 1;
        if (!strncmp(p, etag, n) && (p[n] == 0 || p[n] == ',' || p[n] == ' ')) return 1;
        p += strcspn(p, ",");
    }
    return 0;
}

enum MHD_Result web_ui_respond(struct MHD_Connection *conn, const web_asset *a, int *status)
{
    const char *inm = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "If-None-Match");
    int st = etag_matches(inm, a->etag) ? 304 : 200;
    struct MHD_Response *resp = MHD_create_response_from_buffer(st == 200 ? a->len : 0, (void *)a->data,
                                                                MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", a->type);
    MHD_add_response_header(resp, "ETag", a->etag);
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "Content-Security-Policy",
                            "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    *status = st;
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)st, resp);
    MHD_destroy_response(resp);
    return ok;
}
