#!/usr/bin/env bash
# `make run`: starts the server in the foreground on MODEL (default: the
# trained demo model in models/, with its byte vocabulary). When that file is
# missing (a checkout without it), a random-weight model is generated instead
# so the server still starts. Usage: tools/run.sh BUILD MODEL HOST PORT [VOCAB]
set -euo pipefail
build=$1 model=$2 host=$3 port=$4 vocab=${5:-}
if [[ ! -f $model ]]; then
    if [[ $model != models/default.safetensors ]]; then
        echo "run: $model: no such file" >&2
        exit 1
    fi
    model="$build/models/default.safetensors"
    vocab=""
    if [[ ! -f $model ]]; then
        mkdir -p "$(dirname "$model")"
        echo "run: writing a random-weight model $model (RWKV-7 0.1B shapes, bf16)"
        "$build/metastate" gen-model --preset 0.1b --dtype bf16 --seed 1 --out "$model.tmp"
        mv "$model.tmp" "$model"
    fi
fi
args=(serve --model "$model" --host "$host" --port "$port" --state-dir "$build/sessions")
[[ -n $vocab ]] && args+=(--vocab "$vocab")
mkdir -p "$build/sessions"
exec "$build/metastate" "${args[@]}"
