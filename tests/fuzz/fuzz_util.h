/*
 * fuzz_util.h - small helpers shared by the libFuzzer targets: the engine
 * reads tensor files and vocabularies by path, so an input is handed over as
 * an anonymous in-memory file (memfd) named by /proc/self/fd/N, which the
 * real open/mmap code paths read like any file.
 */
#ifndef METASTATE_FUZZ_UTIL_H
#define METASTATE_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Writes data to a fresh memfd and puts its path in path (cap bytes).
 * Returns the fd (the caller closes it) or aborts: a harness that cannot
 * make its input file must not report a false pass. */
int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t cap);

/* The value of environment variable name, or aborts with a message telling
 * how the targets are run (make fuzz sets these). */
const char *fuzz_env(const char *name);

#endif
