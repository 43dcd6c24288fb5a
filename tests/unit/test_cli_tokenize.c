/*
 * test_cli_tokenize.c - `metastate tokenize` / `detokenize` as a user runs
 * them: the real binary ($METASTATE_BIN, skipped when unset) through popen,
 * on golden cases of tokenizer_cases.json ($METASTATE_SHARED/vocab).
 */
#include <criterion/criterion.h>
#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shared_ref.h"
static const char *bin_or_skip(void)
{
    const char *bin = getenv("METASTATE_BIN");
    if (!bin || !*bin)
        cr_skip_test("METASTATE_BIN not set; run through make test");
    if (access(bin, X_OK) != 0)
        cr_skip_test("METASTATE_BIN not executable; %s", bin);
    return bin;
}

static void vocab_or_skip(char *path, size_t cap, const char *file)
{
    shared_file(path, cap, "vocab", file);
}

/* Appends s to the command line, single-quoted for /bin/sh. */
static void shell_quote(char *cmd, size_t cap, const char *s)
{
    size_t n = strlen(cmd);
    cr_assert_lt(n + 3, cap);
    cmd[n++] = '\'';
    for (; *s; s++) {
        if (*s == '\'') {
            cr_assert_lt(n + 5, cap);
            memcpy(cmd + n, "'\\''", 4);
            n += 4;
        } else {
            cr_assert_lt(n + 2, cap);
            cmd[n++] = *s;
        }
    }
    cmd[n++] = '\'';
    cmd[n] = 0;
}

/* Runs cmd through the shell; captures stdout (binary) and the exit status. */
static char *run(const char *cmd, size_t *len, int *status)
{
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "popen %s", cmd);
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap + 1);
    for (size_t got; (got = fread(out + n, 1, cap - n, p)) > 0;) {
        n += got;
        if (n == cap)
            out = realloc(out, (cap *= 2) + 1);
        cr_assert_not_null(out);
    }
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    out[n] = 0;
    *len = n;
    return out;
}

static unsigned char *unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    unsigned char *b = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        cr_assert_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
        b[i] = (unsigned char)v;
    }
    b[n] = 0; /* also usable as a C string when it holds no NUL */
    *len = n;
    return b;
}

/* The JSON line tokenize must print for ids. */
static void expected_line(json_t *ids, char *buf, size_t cap)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (size_t i = 0; i < json_array_size(ids); i++)
        n += (size_t)snprintf(buf + n, cap - n, i ? ",%lld" : "%lld",
                              json_integer_value(json_array_get(ids, i)));
    snprintf(buf + n, cap - n, "]\n");
}

/* Loads tokenizer_cases.json. jansson cannot hold U+0000 in an object key,
 * and one "encode" key has it, so \u0000 escapes are rewritten to \u0001
 * first; only encode_detail is used here, whose texts come from utf8_hex. */
static json_t *load_cases(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    size_t cap = 1 << 16, n = 0;
    char *text = malloc(cap);
    for (size_t got; (got = fread(text + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap)
            text = realloc(text, cap *= 2);
        cr_assert_not_null(text);
    }
    fclose(f);
    for (char *p = text; (p = memmem(p, n - (size_t)(p - text), "\\u0000", 6)); p += 6)
        memcpy(p, "\\u0001", 6);
    json_error_t jerr;
    json_t *root = json_loadb(text, n, 0, &jerr);
    free(text);
    cr_assert_not_null(root, "%s:%d: %s", path, jerr.line, jerr.text);
    return root;
}

Test(cli_tokenize, golden_cases_round_trip)
{
    const char *bin = bin_or_skip();
    char vocab[1024], cases[1024];
    vocab_or_skip(vocab, sizeof vocab, "rwkv_vocab_v20230424.txt");
    vocab_or_skip(cases, sizeof cases, "tokenizer_cases.json");
    json_t *root = load_cases(cases);
    json_t *arr = json_object_get(root, "encode_detail");
    size_t n_cases = json_array_size(arr);
    cr_assert_geq(n_cases, 8);
    char tmp[] = "/tmp/ms_cli_tok_XXXXXX";
    int fd = mkstemp(tmp);
    cr_assert_geq(fd, 0);
    close(fd);

    /* A spread of cases: ASCII, empty, CJK, emoji, whitespace runs, and the
     * last one, which holds control bytes including NUL (stdin only). */
    size_t pick[] = { 0, 1, 4, 8, 11, 14, 20, 25, n_cases - 1 };
    for (size_t k = 0; k < sizeof pick / sizeof pick[0]; k++) {
        json_t *c = json_array_get(arr, pick[k]);
        size_t len;
        unsigned char *bytes = unhex(json_string_value(json_object_get(c, "utf8_hex")), &len);
        json_t *ids = json_object_get(c, "ids");
        char want[8192], cmd[16384];
        expected_line(ids, want, sizeof want);

        /* TEXT from standard input */
        FILE *f = fopen(tmp, "wb");
        cr_assert_not_null(f);
        cr_assert_eq(fwrite(bytes, 1, len, f), len);
        fclose(f);
        cmd[0] = 0;
        shell_quote(cmd, sizeof cmd, bin);
        strcat(cmd, " tokenize --vocab ");
        shell_quote(cmd, sizeof cmd, vocab);
        strcat(cmd, " < ");
        shell_quote(cmd, sizeof cmd, tmp);
        size_t out_len;
        int status;
        char *out = run(cmd, &out_len, &status);
        cr_assert_eq(status, 0, "case %zu: exit %d", pick[k], status);
        cr_assert_str_eq(out, want, "case %zu (stdin)", pick[k]);
        free(out);

        /* TEXT as an argument (a NUL cannot be passed that way) */
        if (len > 0 && !memchr(bytes, 0, len) && bytes[0] != '-') {
            cmd[0] = 0;
            shell_quote(cmd, sizeof cmd, bin);
            strcat(cmd, " tokenize --vocab ");
            shell_quote(cmd, sizeof cmd, vocab);
            strcat(cmd, " ");
            shell_quote(cmd, sizeof cmd, (const char *)bytes);
            out = run(cmd, &out_len, &status);
            cr_assert_eq(status, 0);
            cr_assert_str_eq(out, want, "case %zu (argument)", pick[k]);
            free(out);
        }

        /* detokenize, with the ids as arguments and as the JSON line */
        for (int form = 0; form < 2 && json_array_size(ids) > 0; form++) {
            cmd[0] = 0;
            shell_quote(cmd, sizeof cmd, bin);
            strcat(cmd, " detokenize --vocab ");
            shell_quote(cmd, sizeof cmd, vocab);
            if (form == 0) {
                for (size_t i = 0; i < json_array_size(ids); i++)
                    snprintf(cmd + strlen(cmd), sizeof cmd - strlen(cmd), " %lld",
                             json_integer_value(json_array_get(ids, i)));
            } else {
                want[strlen(want) - 1] = 0; /* the line without its newline */
                strcat(cmd, " ");
                shell_quote(cmd, sizeof cmd, want);
            }
            out = run(cmd, &out_len, &status);
            cr_assert_eq(status, 0, "case %zu: detokenize exit %d", pick[k], status);
            cr_assert_eq(out_len, len, "case %zu form %d: %zu bytes, want %zu", pick[k],
                         form, out_len, len);
            cr_assert(memcmp(out, bytes, len) == 0, "case %zu form %d", pick[k], form);
            free(out);
        }
        free(bytes);
    }
    unlink(tmp);
    json_decref(root);
}

Test(cli_tokenize, errors_and_help)
{
    const char *bin = bin_or_skip();
    char vocab[1024], cmd[4096];
    vocab_or_skip(vocab, sizeof vocab, "rwkv_vocab_v20230424.txt");
    struct { const char *args; int status; const char *out; } cases[] = {
        { " tokenize --help", 0, "usage: metastate tokenize" },
        { " detokenize --help", 0, "usage: metastate detokenize" },
        { " tokenize hello 2>/dev/null", 2, "" },          /* no --vocab */
        { " tokenize --bogus 2>/dev/null", 2, "" },
        { " tokenize --vocab /nonexistent/v.txt hi 2>/dev/null", 1, "" },
        { " detokenize --vocab VOCAB 2>/dev/null", 2, "" }, /* no ids */
        { " detokenize --vocab VOCAB 12x 2>/dev/null", 2, "" },
        { " detokenize --vocab VOCAB 33155 65530 2>/dev/null", 1, "" }, /* unknown id */
        { " detokenize --vocab VOCAB 0 33155 0", 0, "Hello" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cmd[0] = 0;
        shell_quote(cmd, sizeof cmd, bin);
        const char *v = strstr(cases[i].args, "VOCAB");
        if (v) {
            strncat(cmd, cases[i].args, (size_t)(v - cases[i].args));
            shell_quote(cmd, sizeof cmd, vocab);
            strcat(cmd, v + 5);
        } else {
            strcat(cmd, cases[i].args);
        }
        size_t len;
        int status;
        char *out = run(cmd, &len, &status);
        cr_assert_eq(status, cases[i].status, "%s: exit %d", cases[i].args, status);
        if (*cases[i].out)
            cr_assert(strncmp(out, cases[i].out, strlen(cases[i].out)) == 0, "%s: '%s'",
                      cases[i].args, out);
        else
            cr_assert_eq(len, 0, "%s: wrote '%s'", cases[i].args, out);
        free(out);
    }
}
