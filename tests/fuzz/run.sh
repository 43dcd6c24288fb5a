#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD/fuzz over its committed seed corpus
# (tests/fuzz/corpus/<target>; fuzz_model writes its seeds from the tiny
# model below) for SECONDS each.
#   tests/fuzz/run.sh BUILD SECONDS smoke   make test: new inputs go to a
#                                           throw-away directory
#   tests/fuzz/run.sh BUILD SECONDS long    make fuzz: new inputs kept in
#                                           BUILD/fuzz/corpus/<target>
# A crash, leak, sanitizer report or failed check stops that target, keeps
# the input in BUILD/fuzz/artifacts and fails the run. With FUZZ_TAP set,
# one TAP line per target goes to that file (tests/run.sh counts them).
set -uo pipefail
build=${1:?BUILD}; seconds=${2:?SECONDS}; mode=${3:-smoke}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fz=$(cd "$build" && pwd)/fuzz
mkdir -p "$fz/artifacts"
# The session-file and state-import targets read states of this model; the
# committed seeds were made for it (gen-model is deterministic).
model=$fz/tiny512.safetensors
[ -s "$model" ] || "$build/metastate" gen-model --preset tiny --vocab-size 512 --seed 3 \
    --out "$model" >/dev/null || exit 1
export METASTATE_FUZZ_MODEL=$model
export METASTATE_FUZZ_VOCAB=$root/models/bytes_vocab.txt
export ASAN_OPTIONS=${ASAN_OPTIONS_FUZZ:-detect_leaks=1}
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

status=0
n=0
tap=${FUZZ_TAP:-/dev/null}
echo "TAP version 13" >"$tap"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for bin in "$fz"/fuzz_*; do
    [ -x "$bin" ] || continue
    name=${bin##*/fuzz_}
    seeds=$here/corpus/$name
    if [ "$name" = model ]; then
        # Its inputs are tensor lists; it writes the tiny model's own as seeds.
        seeds=$fz/seeds_model
        mkdir -p "$seeds"
    fi
    if [ "$mode" = long ]; then out=$fz/corpus/$name; else out=$scratch/$name; fi
    mkdir -p "$out"
    log=$scratch/$name.log
    start=$SECONDS
    METASTATE_FUZZ_SEEDS=$seeds "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$fz/artifacts/$name-" "$out" "$seeds" >"$log" 2>&1
    rc=$?
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    n=$((n + 1))
    if [ $rc -eq 0 ]; then
        echo "fuzz $name: ok, $((SECONDS - start)) s, ${runs:-?} runs, ${cov:-cov ?}"
        echo "ok $n - fuzz_$name ($((SECONDS - start)) s, ${runs:-?} runs)" >>"$tap"
    else
        echo "not ok $n - fuzz_$name" >>"$tap"
        echo "fuzz $name: FAILED (exit $rc) after $((SECONDS - start)) s; input kept in $fz/artifacts:"
        grep -E 'ERROR|SUMMARY|runtime error|==[0-9]+==|Test unit written' "$log" | head -20 || tail -5 "$log"
        status=1
    fi
done
if [ $n -eq 0 ]; then
    echo "fuzz: no targets in $fz (make fuzz-bin)"
    echo "not ok 1 - no fuzz targets built" >>"$tap"
    status=1
fi
exit $status
