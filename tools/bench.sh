#!/usr/bin/env bash
# `make bench`: random models of the real 0.1B and 0.4B shapes (bf16 files;
# f32 runs widen them, so all formats run the same model), then for every
# weight format `metastate bench` (prefill, generation, bandwidth, sgemm
# peak, int8 accuracy) and the serving benchmark through the real server
# (tools/bench_http.mjs). Prints Markdown tables for the README.
# BENCH_SIZES="0.1b" or BENCH_FORMATS="bf16" narrow the run.
set -euo pipefail
build=${1:-build}
dir="$build/bench"
sizes=${BENCH_SIZES:-"0.1b 0.4b"}
formats=${BENCH_FORMATS:-"f32 bf16 int8"}
mkdir -p "$dir"
for size in $sizes; do
    m="$dir/rwkv7-$size-bf16.safetensors"
    [[ -f $m ]] || "$build/metastate" gen-model --preset "$size" --dtype bf16 --seed 1 --out "$m"
done

declare -a engine_rows http_rows
for size in $sizes; do
    m="$dir/rwkv7-$size-bf16.safetensors"
    for w in $formats; do
        acc=(); [[ $w == int8 ]] && acc=(--accuracy)
        out=$("$build/metastate" bench --model "$m" --weights "$w" --label "$size" --prompt 512 --gen 128 "${acc[@]}")
        echo "$out" | grep -v '^RESULT'
        engine_rows+=("$(echo "$out" | grep '^RESULT')")
        if command -v node >/dev/null; then
            h=$(node tools/bench_http.mjs "$build/metastate" "$m" "$w" "$size-$w")
            echo "  $h"
            http_rows+=("$h")
        fi
    done
done

# Constrained decoding (structured output): per-token cost of the allowed-token
# mask over the World vocabulary, against plain decoding in the same run.
declare -a constraint_rows
vocab=${METASTATE_SHARED:-../shared}/vocab/rwkv_vocab_v20230424.txt
if [[ -f $vocab ]]; then
    for size in $sizes; do
        c=$("$build/metastate" bench-constraint --model "$dir/rwkv7-$size-bf16.safetensors" --vocab "$vocab" --label "$size" --gen 128)
        echo "$c" | grep -v '^RESULT'
        constraint_rows+=("$(echo "$c" | grep '^RESULT')")
    done
fi

kv() { # kv LINE KEY
    local k=$2; for p in ${1#* }; do [[ ${p%%=*} == "$k" ]] && { echo "${p#*=}"; return; }; done; echo "-"
}
pct() { awk -v e="$1" 'BEGIN{ if (e == "-") print "-"; else printf "%.0f%%", e * 100 }'; }

echo
echo "| model | weights | prefill tok/s | prefill / sgemm peak | generation tok/s | generation / bandwidth | int8 vs f32: max, mean abs logit diff, top-1 |"
echo "|---|---|---|---|---|---|---|"
for r in "${engine_rows[@]}"; do
    accs="-"
    [[ $(kv "$r" weights) == int8 ]] && accs="$(kv "$r" acc_max), $(kv "$r" acc_mean), $(awk -v t="$(kv "$r" acc_top1)" 'BEGIN{printf "%.1f%%", t*100}')"
    echo "| $(kv "$r" label) | $(kv "$r" weights) | $(kv "$r" prefill_tps) | $(pct "$(kv "$r" prefill_eff)") | $(kv "$r" gen_tps) | $(pct "$(kv "$r" gen_eff)") | $accs |"
done
r=${engine_rows[0]}
echo
echo "Measured in the same run: memory read bandwidth $(kv "$r" bw_gbs) GB/s, OpenBLAS sgemm peak $(kv "$r" sgemm_gflops) GFLOP/s."
if ((${#http_rows[@]})); then
    echo
    echo "Through the HTTP server (streaming, 64 tokens per request, one session each):"
    echo
    echo "| model-weights | 1 session tok/s | 4 sessions | 8 sessions | 16 sessions | 8 vs 1 | TTFT at 8 (s) | 10th turn TTFT with session / without (s) |"
    echo "|---|---|---|---|---|---|---|---|"
    for h in "${http_rows[@]}"; do
        ratio=$(awk -v a="$(kv "$h" agg8)" -v b="$(kv "$h" agg1)" 'BEGIN{printf "%.1fx", a/b}')
        echo "| $(kv "$h" label) | $(kv "$h" agg1) | $(kv "$h" agg4) | $(kv "$h" agg8) | $(kv "$h" agg16) | $ratio | $(kv "$h" ttft8) | $(kv "$h" turn10_session) / $(kv "$h" turn10_full) |"
    done
fi
if ((${#constraint_rows[@]})); then
    echo
    echo "Constrained decoding (JSON schema, World vocabulary, bf16):"
    echo
    echo "| model | plain ms/token | constrained ms/token | mask + advance ms/token | mask / plain step | whole-step overhead |"
    echo "|---|---|---|---|---|---|"
    for c in "${constraint_rows[@]}"; do
        echo "| $(kv "$c" label) | $(kv "$c" plain_ms) | $(kv "$c" constrained_ms) | $(kv "$c" mask_ms) | $(pct "$(kv "$c" mask_share)") | $(pct "$(kv "$c" overhead)") |"
    done
fi
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB"
