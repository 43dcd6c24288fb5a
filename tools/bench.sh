#!/usr/bin/env bash
# `make bench`: random models of the real 0.1B shape in f32 and bf16, then
# `metastate bench` on each; prints a Markdown table of the results.
set -euo pipefail
build=${1:-build}
dir="$build/bench"
mkdir -p "$dir"
for dtype in f32 bf16; do
    m="$dir/rwkv7-0.1b-$dtype.safetensors"
    [[ -f $m ]] || "$build/metastate" gen-model --preset 0.1b --dtype "$dtype" --seed 1 --out "$m"
done
results=()
for dtype in f32 bf16; do
    out=$("$build/metastate" bench --model "$dir/rwkv7-0.1b-$dtype.safetensors" --label "0.1b-$dtype" \
          --prompt 512 --gen 128)
    echo "$out" | grep -v '^RESULT'
    results+=("$(echo "$out" | grep '^RESULT')")
done
echo
echo "| model (file dtype) | prefill 512 tok/s | generation tok/s | bandwidth GB/s | generation efficiency | weights MB (fp32) | peak RSS MB |"
echo "|---|---|---|---|---|---|---|"
for r in "${results[@]}"; do
    declare -A v=()
    for kv in ${r#RESULT }; do v[${kv%%=*}]=${kv#*=}; done
    printf '| %s | %s | %s | %s | %.0f%% | %s | %s |\n' "${v[label]}" "${v[prefill_tps]}" \
        "${v[gen_tps]}" "${v[bw_gbs]}" "$(awk -v e="${v[gen_eff]}" 'BEGIN{print e*100}')" "${v[weights_mb]}" "${v[rss_mb]}"
done
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
