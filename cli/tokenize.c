/*
 * tokenize.c - `metastate tokenize` and `metastate detokenize`: the
 * World tokenizer from the command line, for scripts and for checking our
 * ids against the Python tokenizer.
 *
 * Output is meant for machines: tokenize prints exactly one line, a JSON
 * array of ids; detokenize writes the raw token bytes and nothing else (no
 * newline, no UTF-8 repair), so `detokenize $(tokenize ...)` round-trips
 * bytes exactly. detokenize accepts the ids as separate arguments or as
 * tokenize printed them ("[1,2,3]"), so the two compose without jq.
 */
#include "cli.h"
#include "engine.h"

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void tokenize_usage(FILE *f)
{
    fprintf(f,
            "usage: metastate tokenize --vocab PATH [TEXT]\n"
            "\n"
            "Prints the token ids of TEXT (or of all of standard input when TEXT\n"
            "is absent) as one JSON array on one line, e.g. [33155,45,40213,34].\n"
            "\n"
            "  --vocab PATH   World vocabulary (rwkv_vocab_v20230424.txt format)\n"
            "  --help         show this help\n");
}

static void detokenize_usage(FILE *f)
{
    fprintf(f,
            "usage: metastate detokenize --vocab PATH ID...\n"
            "\n"
            "Writes the bytes of the token ids to standard output, unchanged.\n"
            "Ids may be separate arguments or a JSON array as printed by\n"
            "`metastate tokenize`. Id 0 (end of text) writes nothing.\n"
            "\n"
            "  --vocab PATH   World vocabulary (rwkv_vocab_v20230424.txt format)\n"
            "  --help         show this help\n");
}

/* Parses --vocab/--help. Returns -1 to go on, else the exit status. */
static int parse_common(int argc, char **argv, const char **vocab,
                        void (*usage)(FILE *))
{
    static const struct option opts[] = {
        { "vocab", required_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    *vocab = NULL;
    optind = 0; /* glibc: full re-initialisation, argv is not main's */
    int c;
    while ((c = getopt_long(argc, argv, "v:h", opts, NULL)) != -1) {
        switch (c) {
        case 'v':
            *vocab = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default: /* getopt printed the problem */
            usage(stderr);
            return 2;
        }
    }
    if (!*vocab) {
        fprintf(stderr, "%s: --vocab PATH is required\n", argv[0]);
        usage(stderr);
        return 2;
    }
    return -1;
}

static ms_tokenizer *load_vocab(const char *cmd, const char *path)
{
    ms_tokenizer *t = NULL;
    ms_error err = { 0 };
    if (ms_tokenizer_load(path, &t, &err) != MS_OK) {
        fprintf(stderr, "%s: %s\n", cmd, err.msg);
        return NULL;
    }
    return t;
}

/* Reads all of f into a malloc'd buffer. */
static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        n += fread(b + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *nb = realloc(b, cap *= 2);
        if (!nb)
            free(b);
        b = nb;
    }
    if (b && ferror(f)) {
        free(b);
        return NULL;
    }
    *len = n;
    return b;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *vocab;
    int rc = parse_common(argc, argv, &vocab, tokenize_usage);
    if (rc >= 0)
        return rc;
    if (argc - optind > 1) {
        fprintf(stderr, "%s: one TEXT argument at most (quote it)\n", argv[0]);
        tokenize_usage(stderr);
        return 2;
    }

    char *text = NULL;
    size_t len;
    if (optind < argc) {
        text = strdup(argv[optind]);
        len = text ? strlen(text) : 0;
    } else {
        text = read_all(stdin, &len);
    }
    if (!text) {
        fprintf(stderr, "%s: cannot read the text: %s\n", argv[0], strerror(errno));
        return 1;
    }
    ms_tokenizer *t = load_vocab(argv[0], vocab);
    if (!t) {
        free(text);
        return 1;
    }

    /* ids never outnumber the bytes */
    int32_t *ids = malloc((len + 1) * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "%s: out of memory\n", argv[0]);
        rc = 1;
    } else {
        size_t n = ms_tokenize(t, text, len, ids, len + 1);
        putchar('[');
        for (size_t i = 0; i < n; i++)
            printf(i ? ",%d" : "%d", (int)ids[i]);
        putchar(']');
        putchar('\n');
        rc = 0;
        if (fflush(stdout) != 0 || ferror(stdout)) {
            fprintf(stderr, "%s: write error: %s\n", argv[0], strerror(errno));
            rc = 1;
        }
    }
    free(ids);
    free(text);
    ms_tokenizer_free(t);
    return rc;
}

int cmd_detokenize(int argc, char **argv)
{
    const char *vocab;
    int rc = parse_common(argc, argv, &vocab, detokenize_usage);
    if (rc >= 0)
        return rc;
    if (optind >= argc) {
        fprintf(stderr, "%s: no token ids given\n", argv[0]);
        detokenize_usage(stderr);
        return 2;
    }

    /* Validate every id before writing anything, so a typo does not leave
     * half an output behind. */
    size_t cap = 0;
    for (int a = optind; a < argc; a++)
        cap += strlen(argv[a]) / 2 + 1;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "%s: out of memory\n", argv[0]);
        return 1;
    }
    size_t n = 0;
    for (int a = optind; a < argc; a++) {
        const char *p = argv[a];
        for (;;) {
            p += strspn(p, " \t\n\r,[]");
            if (!*p)
                break;
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < 0 || v > INT32_MAX ||
                (*end && !strchr(" \t\n\r,[]", *end))) {
                fprintf(stderr, "%s: '%s' is not a token id\n", argv[0], argv[a]);
                free(ids);
                return 2;
            }
            ids[n++] = (int32_t)v;
            p = end;
        }
    }

    ms_tokenizer *t = load_vocab(argv[0], vocab);
    if (!t) {
        free(ids);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] != 0 && !ms_token_bytes(t, ids[i], NULL)) {
            fprintf(stderr, "%s: id %d is not in the vocabulary (%s, %d ids)\n", argv[0],
                    (int)ids[i], vocab, (int)ms_tokenizer_n_ids(t));
            free(ids);
            ms_tokenizer_free(t);
            return 1;
        }
    }
    rc = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *b = ms_token_bytes(t, ids[i], &len);
        if (b && fwrite(b, 1, len, stdout) != len)
            break;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "%s: write error: %s\n", argv[0], strerror(errno));
        rc = 1;
    }
    free(ids);
    ms_tokenizer_free(t);
    return rc;
}
