#!/usr/bin/env bash
# `make bench`: random models of the real 0.1B and 0.4B shapes (bf16 files;
# f32 runs widen them, so all formats run the same model), then for every
# weight format and compute mode `metastate bench` (prefill, generation,
# batches of 1-16 sequences, bandwidth and sgemm peak measured in that same
# process, accuracy against f32 weights), the held-out bits per byte of the
# default model per format (`metastate perplexity`), and the serving
# benchmark through the real server (tools/bench_http.mjs). Prints Markdown
# tables for docs/PERFORMANCE.md.
# BENCH_SIZES="0.1b", BENCH_FORMATS="bf16 q4", BENCH_THREADS=1, BENCH_HTTP=0,
# BENCH_PPL=0 narrow the run. A format is WEIGHTS or WEIGHTS+COMPUTE
# (bf16+bf16: bf16 weights with bf16 dot products).
set -euo pipefail
build=${1:-build}
dir="$build/bench"
sizes=${BENCH_SIZES:-"0.1b 0.4b"}
formats=${BENCH_FORMATS:-"f32 bf16 bf16+bf16 int8 q4"}
threads=${BENCH_THREADS:-0}
mkdir -p "$dir"

# The sgemm peak is "the library at its best". Debian 12's OpenBLAS (0.3.21)
# does not know some newer CPUs and then runs its generic Prescott (SSE3)
# kernels: 31-70 GFLOP/s on an Emerald Rapids, where its AVX-512 kernels read
# ~300. It picks its kernels when it loads, so the runs below get the widest
# kernels the CPU runs in their environment (an OPENBLAS_CORETYPE already set
# is kept; a CPU it knows keeps its own choice).
if [[ -z ${OPENBLAS_CORETYPE:-} ]]; then
    core=$(OPENBLAS_VERBOSE=2 "$build/metastate" --help 2>&1 >/dev/null | sed -n 's/^Core: //p' | head -1 || true)
    want=""
    if [[ $core == Prescott ]]; then
        if grep -qw avx512vl /proc/cpuinfo; then want=SkylakeX
        elif grep -qw avx2 /proc/cpuinfo; then want=Haswell; fi
    fi
    if [[ -n $want ]]; then
        echo "OpenBLAS does not know this CPU (it chose its $core kernels): the sgemm peak below is measured with its $want kernels (OPENBLAS_CORETYPE=$want)"
        export OPENBLAS_CORETYPE=$want
    fi
fi

for size in $sizes; do
    m="$dir/rwkv7-$size-bf16.safetensors"
    [[ -f $m ]] || "$build/metastate" gen-model --preset "$size" --dtype bf16 --seed 1 --out "$m"
done

engine_rows=(); http_rows=(); ppl_rows=()
for size in $sizes; do
    m="$dir/rwkv7-$size-bf16.safetensors"
    for f in $formats; do
        w=${f%%+*}; c=f32; [[ $f == *+* ]] && c=${f#*+}
        acc=(); [[ $f != f32 ]] && acc=(--accuracy)
        out=$("$build/metastate" bench --model "$m" --weights "$w" --compute "$c" --threads "$threads" \
            --label "$size" --prompt 512 --gen 128 "${acc[@]}")
        echo "$out" | grep -v '^RESULT'
        engine_rows+=("$(echo "$out" | grep '^RESULT')")
        if [[ ${BENCH_HTTP:-1} != 0 && $c == f32 ]] && command -v node >/dev/null; then
            h=$(node tools/bench_http.mjs "$build/metastate" "$m" "$w" "$size-$w")
            echo "  $h"
            http_rows+=("$h")
        fi
    done
done
heldout="$dir/fortunes-heldout.txt"
if [[ ${BENCH_PPL:-1} != 0 ]] && { [[ -f $heldout ]] || /usr/bin/python3 tools/fortunes_heldout.py "$heldout"; }; then
    for f in $formats; do
        w=${f%%+*}; c=f32; [[ $f == *+* ]] && c=${f#*+}
        p=$("$build/metastate" perplexity --model models/default.safetensors --file "$heldout" --docs \
            --weights "$w" --compute "$c" --threads "$threads")
        echo "default model, $f: $p"
        ppl_rows+=("$f $p")
    done
fi

# Constrained decoding (structured output): per-token cost of the allowed-token
# mask over the World vocabulary, against plain decoding in the same run.
constraint_rows=() # declared alone, an empty array is unbound under set -u
vocab=${METASTATE_SHARED:-../shared}/vocab/rwkv_vocab_v20230424.txt
if [[ ! -f $vocab ]]; then
    echo "constrained decoding: skipped (no World vocabulary at $vocab)"
else
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
fmt() { local r=$1; [[ $(kv "$r" compute) == bf16 ]] && echo "$(kv "$r" weights), bf16 compute" || kv "$r" weights; }
ref() { # ref LABEL KEY: KEY of the f32 row of LABEL
    for r in "${engine_rows[@]}"; do
        [[ $(kv "$r" label) == "$1" && $(kv "$r" weights) == f32 ]] && { kv "$r" "$2"; return; }
    done; echo "-"
}

echo
echo "| model | weights | prefill tok/s | prefill / sgemm peak (/ FMA peak) | prefill vs f32 | generation tok/s | generation / bandwidth: weights + state (weights alone) | bandwidth GB/s | sgemm (FMA) GFLOP/s | vs f32: max, mean abs logit diff, top-1 |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for r in "${engine_rows[@]}"; do
    accs="-"
    [[ $(kv "$r" acc) == 1 ]] && accs="$(kv "$r" acc_max), $(kv "$r" acc_mean), $(awk -v t="$(kv "$r" acc_top1)" 'BEGIN{printf "%.1f%%", t*100}')"
    vs=$(awk -v a="$(kv "$r" prefill_tps)" -v b="$(ref "$(kv "$r" label)" prefill_tps)" 'BEGIN{ if (b == "-") print "-"; else printf "%.2fx", a/b }')
    echo "| $(kv "$r" label) | $(fmt "$r") | $(kv "$r" prefill_tps) | $(pct "$(kv "$r" prefill_eff)") ($(pct "$(kv "$r" prefill_eff_fma)")) | $vs | $(kv "$r" gen_tps) | $(pct "$(kv "$r" gen_eff)") ($(pct "$(kv "$r" gen_eff_weights)")) | $(kv "$r" bw_gbs) | $(kv "$r" sgemm_gflops) ($(kv "$r" fma_gflops)) | $accs |"
done
echo
echo "Batched decoding (ms_step_batch, every weight read once per step): step time in ms, aggregate tokens/s in parentheses."
echo
echo "| model | weights | B=1 | B=2 | B=4 | B=8 | B=16 | B=8 step / B=1 step |"
echo "|---|---|---|---|---|---|---|---|"
for r in "${engine_rows[@]}"; do
    row="| $(kv "$r" label) | $(fmt "$r") |"
    for b in 1 2 4 8 16; do
        row+=" $(awk -v s="$(kv "$r" step${b}_ms)" -v b=$b 'BEGIN{printf "%.2f (%.0f)", s, b*1000/s}') |"
    done
    row+=" $(awk -v a="$(kv "$r" step8_ms)" -v b="$(kv "$r" step1_ms)" 'BEGIN{printf "%.2fx", a/b}') |"
    echo "$row"
done
if ((${#ppl_rows[@]})); then
    echo
    echo "Default model (models/default.safetensors), held-out fortunes (tools/fortunes_heldout.py):"
    echo
    echo "| weights | bits/byte | vs f32 |"
    echo "|---|---|---|"
    base=""
    for p in "${ppl_rows[@]}"; do
        f=${p%% *}; b=$(kv "$p" bits_per_byte)
        [[ -z $base ]] && base=$b
        echo "| ${f/+bf16/, bf16 compute} | $b | $(awk -v a="$b" -v z="$base" 'BEGIN{printf "%+.4f", a-z}') |"
    done
fi
if ((${#http_rows[@]})); then
    echo
    echo "Through the HTTP server (streaming, 128 tokens per request, one session each; tok/s the best of 3 rounds):"
    echo
    echo "| model-weights | 1 session tok/s | 4 sessions | 8 sessions | 16 sessions | 8 vs 1 | TTFT at 8 (s) | a stream's longest gap while 8 prompts of 512 tokens arrive: ms (in one stream's token times); their mean TTFT (s) | 10th turn TTFT with session / without (s) |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for h in "${http_rows[@]}"; do
        ratio=$(awk -v a="$(kv "$h" agg8)" -v b="$(kv "$h" agg1)" 'BEGIN{printf "%.1fx", a/b}')
        echo "| $(kv "$h" label) | $(kv "$h" agg1) | $(kv "$h" agg4) | $(kv "$h" agg8) | $(kv "$h" agg16) | $ratio | $(kv "$h" ttft8) | $(kv "$h" burst_gap_ms) ($(kv "$h" burst_gap_ratio)x); $(kv "$h" burst_ttft) | $(kv "$h" turn10_session) / $(kv "$h" turn10_full) |"
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
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB; threads: ${threads/#0/all}; each row's bandwidth, sgemm and FMA peaks measured in its own process"
