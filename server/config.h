/*
 * config.h - `metastate serve` settings: command-line flags with environment
 * fallbacks (METASTATE_<FLAG>, dashes as underscores), validated once at
 * startup. Every other server module reads this struct and never parses
 * anything itself, so a setting has exactly one name, one default and one
 * line of --help.
 */
#ifndef METASTATE_SERVER_CONFIG_H
#define METASTATE_SERVER_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define SRV_MAX_CORS 16
#define SRV_MAX_INIT_STATES 64
#define SRV_STATE_NAME_MAX 64 /* longest --init-state NAME */

/* A named initial state: a state-tuning file requests select with "state". */
typedef struct srv_init_state {
    char *name; /* [A-Za-z0-9._:-]{1,64}, unique */
    char *path;
} srv_init_state;

typedef struct srv_config {
    char *model_path;  /* required */
    char *vocab_path;  /* NULL = byte-level tokenizer */
    char *model_name;  /* id in /v1/models; default: model file name without extension */
    char *host;        /* default 127.0.0.1 */
    int port;          /* default 8080 */
    char *state_dir;   /* NULL = sessions live in memory only (or in state_store) */
    char *state_store; /* redis://... : sessions shared by replicas; NULL = none */
    char *store_prefix;/* key prefix in state_store (default "metastate:") */
    long session_ttl_s;/* expiry of unused sessions in state_store, 0 = none */
    long lease_ms;     /* a turn's lease in state_store (default 10000) */
    int metrics_port;  /* 0 = off; else /metrics without the API key on this port */
    size_t pool_bytes; /* --pool-mb, default 1024 MiB */
    char *api_key;     /* NULL = no auth */
    char *cors[SRV_MAX_CORS];
    int n_cors;
    int parallel;      /* sequence slots stepped together (default 8) */
    int queue;         /* requests waiting for a slot before 429 (default 64) */
    size_t max_body;   /* request body limit in bytes (default 4 MiB) */
    size_t stream_backlog; /* unsent stream bytes that pause generation (default 1 MiB) */
    int max_tokens_cap;     /* larger max_tokens are clamped to this (default 4096) */
    int default_max_tokens; /* when the request gives none (default 16 completions, 1024 chat) */
    int default_chat_max_tokens;
    double timeout_s;  /* per-request deadline in seconds (default 600) */
    int idle_timeout_s;/* idle connection timeout (default 30) */
    int prefill_chunk; /* prompt tokens per scheduler iteration per sequence (default 128) */
    int threads;       /* engine threads, 0 = one per core */
    int weights;       /* ms_weights: in-memory weight format (default auto) */
    int compute;       /* ms_compute: bf16 weights' product arithmetic (default f32) */
    int max_sessions;  /* sessions kept in the index (memory + disk), default 100000 */
    srv_init_state init_states[SRV_MAX_INIT_STATES]; /* --init-state NAME=PATH, in order */
    int n_init_states;
    int no_ui;         /* --no-ui: GET / and the page's files answer 404 */
} srv_config;

/* Parses argv (argv[0] = "serve") with env fallbacks into c (allocated
 * strings owned by c). Returns 0 ok, 1 when --help was printed to stdout,
 * -1 on a usage error (message already printed to stderr). */
int srv_config_parse(srv_config *c, int argc, char **argv);
void srv_config_free(srv_config *c);
/* The --help text to f. */
void srv_config_usage(FILE *f);
/* Index of the --init-state called name, or -1. */
int srv_config_init_state(const srv_config *c, const char *name);

#endif
