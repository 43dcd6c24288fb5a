/*
 * lsan_runner.c - which processes of the unit binary LeakSanitizer checks.
 * Criterion runs every test in a worker process (BoxFort execs it with
 * BXFI_MAP set); the runner that starts them runs none of our code, but
 * libcriterion 2.4.1 (Debian 12) leaves one 48-byte calloc of its own there.
 * A suppression cannot name that leak alone (its stack is libcriterion's
 * frame only, and every test's stack passes through libcriterion too, so
 * "leak:libcriterion.so" hid our leaks as well), so the runner is not
 * checked and every worker is.
 */
#include <stdlib.h>

int __lsan_is_turned_off(void);

int __lsan_is_turned_off(void)
{
    return getenv("BXFI_MAP") == NULL;
}
