/*
 * http.h - the HTTP front: libmicrohttpd with its own polling thread,
 * routing, API-key auth, CORS, body limits, and the glue that turns
 * scheduler callbacks into JSON responses and SSE streams.
 *
 * Connections waiting for the model are suspended (no thread blocks) and
 * resumed by the scheduler thread when output is ready. Every function here
 * is called from the main thread only.
 */
#ifndef METASTATE_SERVER_HTTP_H
#define METASTATE_SERVER_HTTP_H

#include "config.h"
#include "scheduler.h"

typedef struct http_srv http_srv;

/* Listens on cfg->host:cfg->port. cfg and s must outlive the server.
 * NULL with a message in err on failure (port in use, bad host...). */
http_srv *http_start(const srv_config *cfg, sched *s, char *err, size_t errcap);
/* Stops accepting connections; requests still arriving on open connections
 * get 503. In-flight requests continue. */
void http_quiesce(http_srv *h);
/* Waits until no request is in flight (responses fully sent or aborted), at
 * most timeout_s seconds. Returns the number still in flight. */
int http_wait_idle(http_srv *h, double timeout_s);
/* Closes every connection and frees the server. Accepts NULL. */
void http_stop(http_srv *h);

#endif
