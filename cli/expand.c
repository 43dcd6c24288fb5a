/*
 * expand.c - `metastate expand`: parses the flags and runs ms_expand (the
 * transform lives in engine/expand.c).
 */
#include "cli.h"
#include "engine.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: metastate expand --model IN --out OUT [--add-param-tokens N]\n"
            "                        [--key-init zero|random] [--seed S]\n"
            "                        [--sse-heads LAYER:H+H,...]\n"
            "Grows a model without changing its function (SPEC 3.4): N more FFN\n"
            "parameter tokens per layer (zero value columns; key rows zero, or random\n"
            "at the existing rows' RMS), and SSE heads with zero gain, e.g.\n"
            "--sse-heads 0:0+1,1:1 adds heads 0 and 1 of layer 0 and head 1 of layer 1.\n"
            "OUT is safetensors, same dtypes as IN.\n");
}

/* Parses LAYER:H+H,LAYER:H into *out (malloc'd); -1 on bad syntax or OOM. */
static int parse_heads(const char *p, ms_sse_head **out, size_t *n_out)
{
    ms_sse_head *adds = NULL;
    size_t n = 0;
    while (p && *p) {
        char *end;
        long l = strtol(p, &end, 10);
        if (end == p || *end != ':' || l < 0 || l > 1 << 20)
            goto bad;
        p = end + 1;
        for (;;) {
            long h = strtol(p, &end, 10);
            if (end == p || h < 0 || h > 1 << 20)
                goto bad;
            ms_sse_head *na = realloc(adds, (n + 1) * sizeof *na);
            if (!na)
                goto bad;
            adds = na;
            adds[n++] = (ms_sse_head){(int)l, (int)h};
            p = end;
            if (*p != '+')
                break;
            p++;
        }
        if (*p == ',')
            p++;
        else if (*p)
            goto bad;
    }
    *out = adds;
    *n_out = n;
    return 0;
bad:
    free(adds);
    return -1;
}

int cmd_expand(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"out", required_argument, 0, 'o'},
        {"add-param-tokens", required_argument, 0, 'n'}, {"key-init", required_argument, 0, 'k'},
        {"seed", required_argument, 0, 's'},   {"sse-heads", required_argument, 0, 'H'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *in = NULL, *out = NULL, *key_init = "zero", *heads = NULL;
    long add_tokens = 0;
    uint64_t seed = 1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:o:n:k:s:H:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': in = optarg; break;
        case 'o': out = optarg; break;
        case 'n': add_tokens = strtol(optarg, NULL, 10); break;
        case 'k': key_init = optarg; break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'H': heads = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!in || !out || add_tokens < 0 || add_tokens > (1 << 20) || optind != argc ||
        (strcmp(key_init, "zero") && strcmp(key_init, "random"))) {
        usage(stderr);
        return 2;
    }
    ms_expand_opts o = {.add_param_tokens = (int)add_tokens,
                        .key_init_random = !strcmp(key_init, "random"), .seed = seed};
    ms_sse_head *adds = NULL;
    if (parse_heads(heads, &adds, &o.n_sse_heads)) {
        fprintf(stderr, "expand: --sse-heads wants LAYER:HEAD[+HEAD...],..., got '%s'\n", heads);
        return 2;
    }
    o.sse_heads = adds;
    ms_error err = {0};
    ms_status st = ms_expand(in, out, &o, &err);
    free(adds);
    if (st == MS_ERR_INVALID) {
        fprintf(stderr, "expand: --sse-heads: %s\n", err.msg);
        return 2;
    }
    if (st != MS_OK) {
        fprintf(stderr, "expand: %s\n", err.msg);
        return 1;
    }
    return 0;
}
