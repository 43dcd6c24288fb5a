#!/usr/bin/env bash
# `make run`: makes the default model if it is not there yet, then starts the
# server in the foreground. Usage: tools/run.sh BUILD MODEL HOST PORT
set -euo pipefail
build=$1 model=$2 host=$3 port=$4
if [[ ! -f $model ]]; then
    mkdir -p "$(dirname "$model")"
    echo "run: writing the default model $model (random weights, RWKV-7 0.1B shapes, bf16)"
    "$build/metastate" gen-model --preset 0.1b --dtype bf16 --seed 1 --out "$model.tmp"
    mv "$model.tmp" "$model"
fi
mkdir -p "$build/sessions"
exec "$build/metastate" serve --model "$model" --host "$host" --port "$port" \
    --state-dir "$build/sessions"
