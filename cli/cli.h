/*
 * cli.h - the subcommands of the `metastate` binary. Each takes the
 * arguments after its name (argv[0] is the subcommand name), writes its
 * output to stdout and its diagnostics to stderr, and returns the process
 * exit status (0 success, 1 failure, 2 usage error). Only main() exits.
 */
#ifndef METASTATE_CLI_H
#define METASTATE_CLI_H

int cmd_eval(int argc, char **argv);       /* eval.c */
int cmd_generate(int argc, char **argv);   /* generate.c */
int cmd_tokenize(int argc, char **argv);   /* tokenize.c */
int cmd_detokenize(int argc, char **argv); /* tokenize.c */
int cmd_gen_model(int argc, char **argv);  /* gen_model.c */
int cmd_serve(int argc, char **argv);      /* serve.c */
int cmd_bench(int argc, char **argv);      /* bench.c */
int cmd_perplexity(int argc, char **argv); /* perplexity.c */
int cmd_expand(int argc, char **argv);     /* expand.c */
int cmd_bench_constraint(int argc, char **argv); /* bench_constraint.c */

#endif
