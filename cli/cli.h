/*
 * cli.h - the subcommands of the `metastate` binary. Each takes the
 * arguments after its name (argv[0] is the subcommand name), writes its
 * output to stdout and its diagnostics to stderr, and returns the process
 * exit status (0 success, 1 failure, 2 usage error). Only main() exits.
 */
#ifndef METASTATE_CLI_H
#define METASTATE_CLI_H

#include <stdint.h>

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

/* The machine's limits for `bench` (bench_limits.c), each the best of a few
 * passes on n_threads threads; 0 when it cannot be measured (no memory, no
 * AVX2/AVX-512 FMA). Each takes a second or two; not thread-safe (the sgemm
 * probe sets OpenBLAS's thread count, and leaves it at 1). */
double bench_bandwidth(int n_threads, uint64_t *sink); /* bytes/s; sink defeats dead-code removal */
double bench_sgemm_peak(int n_threads);                /* FLOP/s */
double bench_fma_peak(int n_threads);                  /* FLOP/s */
/* The kernels OpenBLAS chose for this CPU ("Prescott" where its table does
 * not know the CPU: the sgemm peak is then far below the FMA peak). */
const char *bench_blas_core(void);

#endif
