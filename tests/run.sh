#!/usr/bin/env bash
# Runs the whole test suite twice: with the normal build, then with the
# ASan+UBSan build. Usage: tests/run.sh BUILD_DIR SHARED_DIR
set -uo pipefail
build=${1:-build}; shared=${2:-../shared}
here=$(cd "$(dirname "$0")" && pwd)
export METASTATE_SHARED=$(cd "$shared" 2>/dev/null && pwd || echo "$shared")
# Sanitizer reports go to files, one per process, so a report from any
# process (a forked Criterion worker, a server started by a node test) fails
# the run even when that process's exit status is not looked at.
san_logs=$(mktemp -d)
trap 'rm -rf "$san_logs"' EXIT
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:log_path=$san_logs/asan
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$san_logs/ubsan
# OpenBLAS spins up its own threads per call: keep it to one per test run
# so parallel test workers do not oversubscribe the cores.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
status=0

run_suite() { # $1 = label, $2 = dir with metastate and unit-tests
    local label=$1 dir=$2
    echo "== unit tests ($label)"
    METASTATE_BIN="$dir/metastate" "$dir/unit-tests" --jobs 2 || status=1
    if compgen -G "$here/server/*.test.mjs" >/dev/null; then
        echo "== server tests ($label)"
        (cd "$here/server" && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } ) || status=1
        METASTATE_BIN="$(cd "$dir" && pwd)/metastate" node --test --test-concurrency=1 "$here"/server/*.test.mjs || status=1
    fi
    # The chat page in Debian's chromium (puppeteer-core; its server helpers come from server/lib).
    if compgen -G "$here/web/*.test.mjs" >/dev/null; then
        echo "== browser tests ($label)"
        (cd "$here/web" && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } ) || status=1
        METASTATE_BIN="$(cd "$dir" && pwd)/metastate" node --test --test-concurrency=1 "$here"/web/*.test.mjs || status=1
    fi
}

# The Meta-State golden vectors in tests/golden_ms come from the PyTorch
# reference in tools/reference: regenerate and compare them when Debian's
# python3-torch is installed (the script says so and passes when it is not).
# Each script prints SKIP and passes when torch, ../shared or the binary is
# missing: the reference against ../shared/golden, the stored MS-v0 vectors,
# the reference's own checks (SPEC 3.6), and `metastate expand` against the
# reference's expansion.
if [ -x /usr/bin/python3 ]; then
    echo "== reference (tools/reference, PyTorch)"
    for s in check_shared_golden verify_ms_golden selftest check_c_expand; do
        (cd "$here/.." && METASTATE_BIN="$build/metastate" /usr/bin/python3 "tools/reference/$s.py") || status=1
    done
fi

run_suite normal "$build"
run_suite "asan+ubsan" "$build/asan"
if compgen -G "$san_logs/*" >/dev/null; then
    echo "== sanitizer reports (the run fails):"
    cat "$san_logs"/*
    status=1
fi
exit $status
