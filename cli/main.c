/* main.c - the `metastate` binary: one executable, one subcommand per job. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"serve", cmd_serve, "run the OpenAI-compatible HTTP server"},
    {"generate", cmd_generate, "generate text from a prompt, streamed to stdout"},
    {"eval", cmd_eval, "run token ids and write logits and state as safetensors"},
    {"tokenize", cmd_tokenize, "print the token ids of a text as a JSON array"},
    {"detokenize", cmd_detokenize, "write the bytes of token ids"},
    {"gen-model", cmd_gen_model, "write a random-weight RWKV-7 model of real shapes"},
    {"expand", cmd_expand, "grow a model (parameter tokens, SSE heads) keeping its function"},
    {"bench", cmd_bench, "measure prefill/generation speed against memory bandwidth"},
    {"bench-constraint", cmd_bench_constraint, "per-token cost of constrained (JSON) decoding"},
    {"perplexity", cmd_perplexity, "bits per byte / per token of a text under a model"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: metastate <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "  %-12s %s\n", "help", "show this list");
    fprintf(f, "\n`metastate <command> --help` describes each command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (!strcmp(name, "help") || !strcmp(name, "--help") || !strcmp(name, "-h")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(name, commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "metastate: unknown command '%s'\n\n", name);
    usage(stderr);
    return 2;
}
