#!/usr/bin/python3
"""Checks rwkv7_ref.py against the official reference outputs in ../shared/golden.

Every case, every model file it ships (.safetensors and .pth), both modes
(prefill and RNN); the continuation case both from our own prefix run and from
the stored in.state. Tolerances are the golden README's: logits and WKV state
1e-4, shift states 5e-5 (absolute). Prints the max differences; exits 1 on any
failure, 0 with a message when the golden folder is absent.

    /usr/bin/python3 tools/reference/check_shared_golden.py [SHARED_DIR]
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, HERE)
from skip import NO_BINARY, NO_SHARED, NO_TORCH, skip  # noqa: E402
try:
    import torch
    import rwkv7_ref
    import tensorio
except ImportError as e:  # e.g. the pyenv python3 instead of /usr/bin/python3
    sys.exit(skip(NO_TORCH, f"{e} (apt-get install python3-torch python3-numpy; run /usr/bin/python3)"))

TOL_LOGITS, TOL_WKV, TOL_SHIFT = 1e-4, 1e-4, 5e-5


def state_diffs(state, ref, prefix):
    """(max WKV diff, max shift diff) against ref tensors named prefix<i>.*"""
    dw = ds = 0.0
    for i in range(len(state.att_kv)):
        dw = max(dw, float((state.att_kv[i][0] - ref[f"{prefix}{i}.att_kv"]).abs().max()))
        for part, t in (("att_x_prev", state.att_x_prev[i]), ("ffn_x_prev", state.ffn_x_prev[i])):
            ds = max(ds, float((t[0] - ref[f"{prefix}{i}.{part}"]).abs().max()))
    return dw, ds


def run_case(model, ref, tokens, prefix_tokens, mode, start):
    """Returns the measured (logits, wkv, shift, prefix-logits) diffs of one run."""
    cfg = model.cfg
    state = model.new_state(1)
    dp = 0.0
    if start == "in.state":
        state = rwkv7_ref.State.from_tensors(cfg, ref, "in.state.")
    elif prefix_tokens:
        pl, state = model.forward_seq(torch.tensor([prefix_tokens]), state)
        dp = float((pl[0] - ref["prefix.logits"]).abs().max())
    toks = torch.tensor([tokens])
    if mode == "seq":
        logits, state = model.forward_seq(toks, state)
    else:
        logits, state = model.forward_rnn(toks, state)
    dl = float((logits[0] - ref[f"{mode}.logits"]).abs().max())
    dw, ds = state_diffs(state, ref, f"{mode}.state.")
    return dl, dw, ds, dp


def main():
    repo = os.path.dirname(os.path.dirname(HERE))
    shared = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "METASTATE_SHARED", os.path.join(repo, "..", "shared"))
    gdir = os.path.join(shared, "golden")
    if not os.path.isdir(gdir):
        return skip(NO_SHARED, f"no golden folder at {gdir} (pass SHARED_DIR or set METASTATE_SHARED)")
    torch.set_num_threads(1)
    cases = sorted(f[:-len(".ref.json")] for f in os.listdir(gdir) if f.endswith(".ref.json"))
    failed = 0
    worst = [0.0, 0.0, 0.0]
    with torch.no_grad():
        for case in cases:
            with open(os.path.join(gdir, case + ".ref.json")) as f:
                man = json.load(f)
            ref, _ = tensorio.read_safetensors(os.path.join(gdir, man["outputs_file"]))
            ref = {k: v.float() for k, v in ref.items()}
            prefix = man.get("prefix_tokens") or []
            starts = ["own prefix", "in.state"] if prefix else ["zero"]
            for mfile in man["model"]["files"]:
                model = rwkv7_ref.RWKV7.load(os.path.join(gdir, mfile))
                for start in starts:
                    for mode in ("seq", "rnn"):
                        dl, dw, ds, dp = run_case(model, ref, man["tokens"], prefix, mode, start)
                        ok = max(dl, dp) <= TOL_LOGITS and dw <= TOL_WKV and ds <= TOL_SHIFT
                        failed += not ok
                        worst = [max(worst[0], dl, dp), max(worst[1], dw), max(worst[2], ds)]
                        extra = f" prefix {dp:.2e}" if start == "own prefix" else ""
                        print(f"{'ok  ' if ok else 'FAIL'} {case:24s} {mfile:31s} {mode} "
                              f"({start}): logits {dl:.2e} wkv {dw:.2e} shift {ds:.2e}{extra}")
    print(f"max over all: logits {worst[0]:.2e} (tol {TOL_LOGITS:g}), wkv {worst[1]:.2e} "
          f"(tol {TOL_WKV:g}), shift {worst[2]:.2e} (tol {TOL_SHIFT:g})")
    print(f"{'FAILED' if failed else 'PASSED'}: {failed} failing runs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
