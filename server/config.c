/*
 * config.c - flag and environment parsing for `metastate serve`.
 *
 * One table drives getopt_long, the environment fallbacks and --help, so the
 * three cannot drift apart. Precedence: command line > environment > default.
 * Repeated --cors-origin and --init-state flags accumulate; their
 * environment variables take comma-separated lists, which flags replace.
 */
#include "config.h"

#include "engine.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
    O_MODEL = 'm', O_HELP = 'h',
    O_VOCAB = 1000, O_NAME, O_HOST, O_PORT, O_STATE_DIR, O_POOL_MB, O_API_KEY, O_CORS,
    O_PARALLEL, O_QUEUE, O_MAX_BODY, O_MAX_TOKENS, O_DEF_TOKENS, O_DEF_CHAT_TOKENS,
    O_TIMEOUT, O_IDLE, O_CHUNK, O_THREADS, O_MAX_SESSIONS, O_INIT_STATE, O_WEIGHTS, O_COMPUTE,
    O_NO_UI,
    O_STATE_STORE, O_STORE_PREFIX, O_SESSION_TTL, O_LEASE_MS, O_METRICS_PORT, O_BACKLOG
};

typedef struct {
    const char *name; /* flag name; env name is METASTATE_ + upper(name) */
    int id;
    const char *arg;  /* metavariable, NULL for switches */
    const char *help;
} opt_spec;

static const opt_spec specs[] = {
    {"model", O_MODEL, "PATH", "model checkpoint (.safetensors or .pth), required"},
    {"vocab", O_VOCAB, "PATH", "RWKV World vocabulary (rwkv_vocab_v20230424.txt); default: byte-level tokenizer"},
    {"model-name", O_NAME, "NAME", "model id served by /v1/models (default: file name without extension)"},
    {"host", O_HOST, "ADDR", "address to listen on (default 127.0.0.1)"},
    {"port", O_PORT, "N", "TCP port (default 8080)"},
    {"state-dir", O_STATE_DIR, "DIR", "directory where session states spill and persist across restarts"},
    {"state-store", O_STATE_STORE, "URL", "keep sessions in Redis/Valkey, shared by replicas: redis://[user:password@]host:port[/db] (instead of --state-dir)"},
    {"store-prefix", O_STORE_PREFIX, "PREFIX", "key prefix in the --state-store (default metastate:)"},
    {"session-ttl", O_SESSION_TTL, "SECONDS", "sessions unused this long expire from the --state-store, 0 = never (default 0)"},
    {"lease-ms", O_LEASE_MS, "MS", "a turn's lease on its session in the --state-store, renewed while it runs; a crashed replica's sessions are free after it (default 10000)"},
    {"pool-mb", O_POOL_MB, "N", "memory for session states in MiB, beside spares (a pair per --parallel slot, at most an eighth more); least recently used spill to --state-dir (default 1024)"},
    {"api-key", O_API_KEY, "KEY", "require 'Authorization: Bearer KEY' on every route but /health"},
    {"metrics-port", O_METRICS_PORT, "N", "also serve /metrics (only) on port N without the API key, for scrapers (default: off)"},
    {"cors-origin", O_CORS, "ORIGIN", "allow browser requests from ORIGIN (repeatable; '*' allows any)"},
    {"parallel", O_PARALLEL, "N", "sequences generated together (default 8)"},
    {"queue", O_QUEUE, "N", "requests that may wait for a free sequence before 429 (default 64)"},
    {"max-body", O_MAX_BODY, "BYTES", "request body limit (default 4194304); state uploads may be the state's size"},
    {"max-tokens-cap", O_MAX_TOKENS, "N", "larger max_tokens values are clamped to N (default 4096)"},
    {"default-max-tokens", O_DEF_TOKENS, "N", "max_tokens of completions that give none (default 16, as OpenAI)"},
    {"default-chat-max-tokens", O_DEF_CHAT_TOKENS, "N", "max_tokens of chat completions that give none (default 1024)"},
    {"timeout", O_TIMEOUT, "SECONDS", "per-request deadline: queued requests fail with 503, generation ends with finish_reason length (default 600)"},
    {"idle-timeout", O_IDLE, "SECONDS", "close connections idle (or sending headers/body) this long (default 30)"},
    {"stream-backlog-kb", O_BACKLOG, "N", "a stream whose client has not taken this much output (KiB) pauses until it reads (default 1024)"},
    {"prefill-chunk", O_CHUNK, "N", "prompt tokens processed per scheduler step, all prompts together (fewest tokens left first), so running streams are not stalled (default 128)"},
    {"threads", O_THREADS, "N", "engine worker threads, 0 = one per core (default 0)"},
    {"weights", O_WEIGHTS, "FMT", "weights in memory: auto (bf16 files stay bf16, others f32), f32, bf16, int8, q4 (default auto)"},
    {"compute", O_COMPUTE, "MODE", "products of bf16 weights: f32 (exact) or bf16 (activations rounded to bf16, bf16 dot products; faster) (default f32)"},
    {"max-sessions", O_MAX_SESSIONS, "N", "sessions indexed in memory and on disk (default 100000)"},
    {"init-state", O_INIT_STATE, "NAME=PATH", "initial state requests select with \"state\": NAME; PATH is a state-tuning file "
     "(.pth or .safetensors with blocks.{i}.att.time_state, optionally merged into a model); repeatable"},
    {"no-ui", O_NO_UI, NULL, "do not serve the chat page at / (environment: METASTATE_NO_UI=1)"},
    {"help", O_HELP, NULL, "show this help"},
};
#define N_SPECS (sizeof specs / sizeof specs[0])

void srv_config_usage(FILE *f)
{
    fprintf(f, "usage: metastate serve --model PATH [options]\n\n"
               "OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models,\n"
               "/v1/sessions, /health, /metrics) with per-session recurrent states kept in a pool.\n\n"
               "options (each also as an environment variable, e.g. --pool-mb -> METASTATE_POOL_MB):\n");
    for (size_t i = 0; i < N_SPECS; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", specs[i].name, specs[i].arg ? " " : "",
                 specs[i].arg ? specs[i].arg : "");
        fprintf(f, "  %-30s %s\n", left, specs[i].help);
    }
    fprintf(f, "\nexample:\n  metastate serve --model m.safetensors --port 8080 --state-dir ./sessions\n"
               "  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
               "    -d '{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"session_id\":\"s1\"}'\n"
               "\ninitial states (state tuning): requests with \"state\": NAME start from that state\n"
               "instead of zero; a session keeps the state it started from (GET /v1/models lists them):\n"
               "  metastate serve --model m.safetensors --init-state chat=chat-state.pth\n"
               "  curl http://127.0.0.1:8080/v1/completions -H 'Content-Type: application/json' \\\n"
               "    -d '{\"model\":\"m\",\"prompt\":\"Hi\",\"state\":\"chat\"}'\n");
}

static void env_name(const char *flag, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "METASTATE_");
    for (const char *p = flag; *p && o + 1 < cap; p++)
        out[o++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[o] = 0;
}

static int parse_long(const char *flag, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "metastate serve: --%s: expected an integer in [%ld, %ld], got '%s'\n",
                flag, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = strdup(v);
}

static int add_cors(srv_config *c, const char *v)
{
    /* A comma-separated list is accepted everywhere (handy in env vars). */
    const char *p = v;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && isspace((unsigned char)*p)) p++, n--;
        while (n && isspace((unsigned char)p[n - 1])) n--;
        if (n) {
            if (c->n_cors >= SRV_MAX_CORS) {
                fprintf(stderr, "metastate serve: at most %d --cors-origin values\n", SRV_MAX_CORS);
                return -1;
            }
            c->cors[c->n_cors++] = strndup(p, n);
        }
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

/* 1 when name is [A-Za-z0-9._:-]{1,SRV_STATE_NAME_MAX}: it is stored in
 * session files and echoed in JSON, so it stays short and plain. */
static int state_name_ok(const char *p, size_t n)
{
    if (n < 1 || n > SRV_STATE_NAME_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '-'))
            return 0;
    }
    return 1;
}

int srv_config_init_state(const srv_config *c, const char *name)
{
    for (int i = 0; i < c->n_init_states; i++)
        if (!strcmp(c->init_states[i].name, name)) return i;
    return -1;
}

/* Adds NAME=PATH entries (a comma-separated list, as in the environment). */
static int add_init_states(srv_config *c, const char *v)
{
    const char *p = v;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && isspace((unsigned char)*p)) p++, n--;
        while (n && isspace((unsigned char)p[n - 1])) n--;
        if (n) {
            const char *eq = memchr(p, '=', n);
            size_t nl = eq ? (size_t)(eq - p) : 0;
            if (!eq || !state_name_ok(p, nl) || nl + 1 == n) {
                fprintf(stderr, "metastate serve: --init-state: expected NAME=PATH with NAME of 1 to %d "
                                "characters from [A-Za-z0-9._:-], got '%.*s'\n",
                        SRV_STATE_NAME_MAX, (int)n, p);
                return -1;
            }
            if (c->n_init_states >= SRV_MAX_INIT_STATES) {
                fprintf(stderr, "metastate serve: at most %d --init-state values\n", SRV_MAX_INIT_STATES);
                return -1;
            }
            char *name = strndup(p, nl), *path = strndup(eq + 1, n - nl - 1);
            if (!name || !path) {
                free(name);
                free(path);
                fprintf(stderr, "metastate serve: out of memory\n");
                return -1;
            }
            if (srv_config_init_state(c, name) >= 0) {
                fprintf(stderr, "metastate serve: --init-state: name '%s' given twice\n", name);
                free(name);
                free(path);
                return -1;
            }
            c->init_states[c->n_init_states++] = (srv_init_state){name, path};
        }
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

static void clear_init_states(srv_config *c)
{
    for (int i = 0; i < c->n_init_states; i++) {
        free(c->init_states[i].name);
        free(c->init_states[i].path);
    }
    c->n_init_states = 0;
}

/* Applies one option value; returns 0 or -1 (message printed). */
static int apply(srv_config *c, const opt_spec *s, const char *v)
{
    long x;
    switch (s->id) {
    case O_MODEL: set_str(&c->model_path, v); return 0;
    case O_VOCAB: set_str(&c->vocab_path, v); return 0;
    case O_NAME: set_str(&c->model_name, v); return 0;
    case O_HOST: set_str(&c->host, v); return 0;
    case O_STATE_DIR: set_str(&c->state_dir, v); return 0;
    case O_STATE_STORE: set_str(&c->state_store, v); return 0;
    case O_STORE_PREFIX: set_str(&c->store_prefix, v); return 0;
    case O_SESSION_TTL: if (parse_long(s->name, v, 0, 1L << 31, &x)) return -1; c->session_ttl_s = x; return 0;
    case O_LEASE_MS: if (parse_long(s->name, v, 100, 3600000, &x)) return -1; c->lease_ms = x; return 0;
    case O_METRICS_PORT: if (parse_long(s->name, v, 0, 65535, &x)) return -1; c->metrics_port = (int)x; return 0;
    case O_API_KEY: set_str(&c->api_key, v); return 0;
    case O_CORS: return add_cors(c, v);
    case O_INIT_STATE: return add_init_states(c, v);
    case O_PORT: if (parse_long(s->name, v, 1, 65535, &x)) return -1; c->port = (int)x; return 0;
    case O_POOL_MB: if (parse_long(s->name, v, 1, 1L << 30, &x)) return -1;
        c->pool_bytes = (size_t)x << 20; return 0;
    case O_PARALLEL: if (parse_long(s->name, v, 1, 256, &x)) return -1; c->parallel = (int)x; return 0;
    case O_QUEUE: if (parse_long(s->name, v, 0, 100000, &x)) return -1; c->queue = (int)x; return 0;
    case O_MAX_BODY: if (parse_long(s->name, v, 1024, 1L << 34, &x)) return -1;
        c->max_body = (size_t)x; return 0;
    case O_BACKLOG: if (parse_long(s->name, v, 16, 1L << 20, &x)) return -1;
        c->stream_backlog = (size_t)x << 10; return 0;
    case O_MAX_TOKENS: if (parse_long(s->name, v, 1, 1 << 24, &x)) return -1;
        c->max_tokens_cap = (int)x; return 0;
    case O_DEF_TOKENS: if (parse_long(s->name, v, 1, 1 << 24, &x)) return -1;
        c->default_max_tokens = (int)x; return 0;
    case O_DEF_CHAT_TOKENS: if (parse_long(s->name, v, 1, 1 << 24, &x)) return -1;
        c->default_chat_max_tokens = (int)x; return 0;
    case O_TIMEOUT: {
        char *end;
        double d = strtod(v, &end);
        if (end == v || *end || !(d > 0) || d > 1e7) {
            fprintf(stderr, "metastate serve: --timeout: expected seconds > 0, got '%s'\n", v);
            return -1;
        }
        c->timeout_s = d;
        return 0;
    }
    case O_IDLE: if (parse_long(s->name, v, 1, 86400, &x)) return -1; c->idle_timeout_s = (int)x; return 0;
    case O_CHUNK: if (parse_long(s->name, v, 1, 4096, &x)) return -1; c->prefill_chunk = (int)x; return 0;
    case O_THREADS: if (parse_long(s->name, v, 0, 1024, &x)) return -1; c->threads = (int)x; return 0;
    case O_MAX_SESSIONS: if (parse_long(s->name, v, 1, 100000000, &x)) return -1;
        c->max_sessions = (int)x; return 0;
    case O_NO_UI: /* a switch: no value from the command line; 1/0 (true/false) from the environment */
        if (!v || !strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes")) return c->no_ui = 1, 0;
        if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no")) return c->no_ui = 0, 0;
        fprintf(stderr, "metastate serve: --no-ui: expected 1 or 0, got '%s'\n", v);
        return -1;
    case O_WEIGHTS:
        if ((c->weights = ms_weights_parse(v)) < 0) {
            fprintf(stderr, "metastate serve: --weights: expected auto, f32, bf16, int8 or q4, got '%s'\n", v);
            return -1;
        }
        return 0;
    case O_COMPUTE:
        if ((c->compute = ms_compute_parse(v)) < 0) {
            fprintf(stderr, "metastate serve: --compute: expected f32 or bf16, got '%s'\n", v);
            return -1;
        }
        return 0;
    }
    return 0;
}

int srv_config_parse(srv_config *c, int argc, char **argv)
{
    memset(c, 0, sizeof *c);
    c->port = 8080;
    c->pool_bytes = (size_t)1024 << 20;
    c->parallel = 8;
    c->queue = 64;
    c->max_body = 4u << 20;
    c->stream_backlog = 1u << 20;
    c->max_tokens_cap = 4096;
    c->default_max_tokens = 16;
    c->default_chat_max_tokens = 1024;
    c->timeout_s = 600;
    c->idle_timeout_s = 30;
    /* 512-token prefill, Emerald Rapids: 64 rows took 1.04-1.05x the time of
     * 128 (f32, 0.1B and 0.4B), 256 rows 0.98-1.03x (every format) */
    c->prefill_chunk = 128;
    c->max_sessions = 100000;
    c->lease_ms = 10000;

    /* Environment first, so that flags override it. */
    for (size_t i = 0; i < N_SPECS; i++) {
        if (specs[i].id == O_HELP) continue;
        char name[64];
        env_name(specs[i].name, name, sizeof name);
        const char *v = getenv(name);
        if (v && *v && apply(c, &specs[i], v)) {
            fprintf(stderr, "metastate serve: (from environment variable %s)\n", name);
            srv_config_free(c);
            return -1;
        }
    }

    struct option longopts[N_SPECS + 1];
    for (size_t i = 0; i < N_SPECS; i++)
        longopts[i] = (struct option){specs[i].name, specs[i].arg ? required_argument : no_argument,
                                      NULL, specs[i].id};
    longopts[N_SPECS] = (struct option){0, 0, 0, 0};
    int cors_from_cli = 0, states_from_cli = 0;
    optind = 1;
    opterr = 1;
    for (;;) {
        int o = getopt_long(argc, argv, "m:h", longopts, NULL);
        if (o == -1) break;
        if (o == '?') {
            fprintf(stderr, "run 'metastate serve --help' for the options\n");
            srv_config_free(c);
            return -1;
        }
        if (o == O_HELP) {
            srv_config_usage(stdout);
            srv_config_free(c);
            return 1;
        }
        for (size_t i = 0; i < N_SPECS; i++) {
            if (specs[i].id != o) continue;
            if (o == O_CORS && !cors_from_cli) {
                /* flags replace the environment's list rather than add to it */
                for (int k = 0; k < c->n_cors; k++) free(c->cors[k]);
                c->n_cors = 0;
                cors_from_cli = 1;
            }
            if (o == O_INIT_STATE && !states_from_cli) {
                clear_init_states(c);
                states_from_cli = 1;
            }
            if (apply(c, &specs[i], optarg)) {
                srv_config_free(c);
                return -1;
            }
        }
    }
    if (optind < argc) {
        fprintf(stderr, "metastate serve: unexpected argument '%s'\n", argv[optind]);
        srv_config_free(c);
        return -1;
    }
    if (!c->model_path) {
        fprintf(stderr, "metastate serve: --model PATH is required (or METASTATE_MODEL)\n");
        srv_config_free(c);
        return -1;
    }
    if (c->state_dir && c->state_store) {
        fprintf(stderr, "metastate serve: --state-dir and --state-store both given: choose one "
                        "(an empty METASTATE_STATE_DIR= unsets the image's default directory)\n");
        srv_config_free(c);
        return -1;
    }
    if (c->metrics_port && c->metrics_port == c->port) {
        fprintf(stderr, "metastate serve: --metrics-port must differ from --port\n");
        srv_config_free(c);
        return -1;
    }
    if (!c->store_prefix) c->store_prefix = strdup("metastate:");
    if (!c->host) c->host = strdup("127.0.0.1");
    if (!c->model_name) {
        const char *b = strrchr(c->model_path, '/');
        b = b ? b + 1 : c->model_path;
        const char *dot = strrchr(b, '.');
        c->model_name = dot && dot != b ? strndup(b, (size_t)(dot - b)) : strdup(b);
    }
    if (c->api_key && !*c->api_key) {
        free(c->api_key);
        c->api_key = NULL;
    }
    return 0;
}

void srv_config_free(srv_config *c)
{
    free(c->model_path);
    free(c->vocab_path);
    free(c->model_name);
    free(c->host);
    free(c->state_dir);
    free(c->state_store);
    free(c->store_prefix);
    free(c->api_key);
    for (int i = 0; i < c->n_cors; i++) free(c->cors[i]);
    clear_init_states(c);
    memset(c, 0, sizeof *c);
}
