/*
 * serve.c - `metastate serve`: wires config, scheduler and HTTP together and
 * owns the process's signals.
 *
 * SIGINT/SIGTERM (and SIGUSR1, raised by the scheduler when the model cannot
 * be loaded) are blocked in every thread and taken synchronously here with
 * sigwait, so no code runs in signal context. Shutdown order: stop accepting,
 * let queued and running requests finish (bounded by --timeout), wait for
 * their responses to leave, close HTTP, then stop the scheduler, which
 * persists every session to --state-dir.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "http.h"
#include "metrics.h"
#include "scheduler.h"

typedef struct {
    pthread_t main_thread;
    char msg[700];
    int fatal;
} fatal_box;

/* Scheduler thread: the model could not be loaded; wake main's sigwait. */
static void on_fatal(void *ud, const char *msg)
{
    fatal_box *b = ud;
    snprintf(b->msg, sizeof b->msg, "%s", msg);
    b->fatal = 1;
    pthread_kill(b->main_thread, SIGUSR1);
}

int cmd_serve(int argc, char **argv)
{
    srv_config cfg;
    int rc = srv_config_parse(&cfg, argc, argv);
    if (rc == 1) return 0;
    if (rc < 0) return 2;

    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    /* A client vanishing mid-write must not kill the process. */
    struct sigaction ign = {.sa_handler = SIG_IGN}, old_pipe;
    sigaction(SIGPIPE, &ign, &old_pipe);

    metrics_init();
    metrics_set(MET_G_POOL_LIMIT, (double)cfg.pool_bytes);
    fatal_box box = {.main_thread = pthread_self()};
    sched *s = sched_start(&cfg, on_fatal, &box);
    http_srv *h = NULL;
    int status = 0;
    if (!s) {
        fprintf(stderr, "metastate serve: cannot start the scheduler\n");
        status = 1;
        goto out;
    }
    char err[512];
    h = http_start(&cfg, s, err, sizeof err);
    if (!h) {
        fprintf(stderr, "metastate serve: %s\n", err);
        status = 1;
        goto out;
    }
    const char *show = strchr(cfg.host, ':') ? "[%s]" : "%s";
    char host[300];
    snprintf(host, sizeof host, show, cfg.host);
    printf("metastate: listening on http://%s:%d (model '%s' loading; GET /health says when ready)\n",
           host, cfg.port, cfg.model_name);
    printf("  try: curl http://%s:%d/v1/chat/completions -H 'Content-Type: application/json'%s%s%s \\\n"
           "         -d '{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],"
           "\"max_tokens\":32}'\n",
           host, cfg.port, cfg.api_key ? " -H 'Authorization: Bearer " : "",
           cfg.api_key ? "$METASTATE_API_KEY" : "", cfg.api_key ? "'" : "", cfg.model_name);
    if (!cfg.no_ui) printf("  or open http://%s:%d/ in a browser to chat\n", host, cfg.port);
    fflush(stdout);

    int sig = 0;
    while (sigwait(&set, &sig) == 0) {
        if (sig == SIGUSR1 && !box.fatal) continue;
        break;
    }
    if (box.fatal) {
        fprintf(stderr, "metastate serve: %s\n", box.msg);
        status = 1;
    } else {
        fprintf(stderr, "metastate serve: %s received, draining requests\n",
                sig == SIGINT ? "SIGINT" : "SIGTERM");
    }
    http_quiesce(h);
    if (!box.fatal) {
        sched_drain(s, cfg.timeout_s);
        int left = http_wait_idle(h, 10.0);
        if (left) fprintf(stderr, "metastate serve: %d connection(s) still open, closing\n", left);
    }
out:
    http_stop(h);
    sched_stop(s);
    srv_config_free(&cfg);
    sigaction(SIGPIPE, &old_pipe, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!status) fprintf(stderr, "metastate serve: bye\n");
    return status;
}
