#!/usr/bin/env bash
# Reproduces the RWKV-7 vs MS-v0 training table of models/README.md and prints
# it as Markdown. Needs python3-torch, python3-numpy and fortunes (Debian).
#
#   tools/train_table.sh [OUT_DIR]        (default /tmp/metastate-train-table)
#   TABLE_SECONDS=300                     training seconds of a full run
#
# Four runs, one after the other (never in parallel: 2 shared cores), about
# 3 x TABLE_SECONDS of training plus evaluation (~17 min with the default):
#   1. RWKV-7, FFN 4C, TABLE_SECONDS
#   2. MS-v0, FFN 4C, every head in the SSE set, TABLE_SECONDS (same seed,
#      data order and parameter count up to the L*C gammas)
#   3. MS-v0 small: FFN 2C, SSE head 0 only, TABLE_SECONDS/2
#   4. 3 expanded (SPEC 3.4: S1 FFN 2C -> 4C, S2 SSE heads {0} -> {0,1}),
#      validated right after expansion (must equal 3), trained TABLE_SECONDS/2
#      more: the same total training time as 1 and 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
T=${TABLE_SECONDS:-300}
OUT=${1:-/tmp/metastate-train-table}
mkdir -p "$OUT"
rm -f "$OUT/results.jsonl"
common=(--layers 3 --embd 128 --batch 8 --ctx 256 --lr 4e-3 --seed 0 --log-every 100
        --vocab-out "$OUT/bytes_vocab.txt" --json "$OUT/results.jsonl")

$PY tools/train.py "${common[@]}" --name "RWKV-7" --ms none --time "$T" --out "$OUT/rwkv7.safetensors"
$PY tools/train.py "${common[@]}" --name "MS-v0" --ms all --time "$T" --out "$OUT/ms.safetensors"
$PY tools/train.py "${common[@]}" --name "MS-v0 small" --ms 0 --ffn 256 --time $((T / 2)) \
    --out "$OUT/ms_small.safetensors"
$PY tools/train.py "${common[@]}" --name "MS-v0 expanded" --init-from "$OUT/ms_small.safetensors" \
    --expand-ffn 256 --ms all --time $((T / 2)) --out "$OUT/ms_expanded.safetensors"

$PY - "$OUT/results.jsonl" <<'EOF'
import json, sys
runs = {r["name"]: r for r in map(json.loads, open(sys.argv[1]))}
print("\n| model | FFN | SSE heads | parameters | training | val bits/byte |")
print("|---|---|---|---|---|---|")
def row(label, r, training, bpb):
    heads = ",".join(map(str, r["sse_heads"])) or "-"
    print(f"| {label} | {r['ffn']} | {heads} | {r['params']:,} | {training} | {bpb:.4f} |")
a, b, s, e = (runs[k] for k in ("RWKV-7", "MS-v0", "MS-v0 small", "MS-v0 expanded"))
row("RWKV-7", a, f"{a['train_seconds']:.0f} s, {a['steps']} steps", a["val_bpb"])
row("MS-v0", b, f"{b['train_seconds']:.0f} s, {b['steps']} steps", b["val_bpb"])
row("MS-v0 small, before expansion", s, f"{s['train_seconds']:.0f} s, {s['steps']} steps", s["val_bpb"])
row("MS-v0, right after expansion (S1+S2)", e, "+0", e["val_bpb_after_expansion"])
row("MS-v0 expanded, trained on", e,
    f"+{e['train_seconds']:.0f} s, {e['steps']} steps (total {s['train_seconds'] + e['train_seconds']:.0f} s)",
    e["val_bpb"])
print(f"\nexpansion check: val bits/byte before {e['val_bpb_before_expansion']:.6f}, "
      f"after {e['val_bpb_after_expansion']:.6f} (fp32)")
EOF
