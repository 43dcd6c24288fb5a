#!/usr/bin/python3
"""Checks the C `metastate expand` against the Python expansion (ms_expand.py).

On the MS-v0 golden models (tests/golden_ms):
  * --key-init zero: every tensor equals ms_expand's (S1 with zero keys, S2)
    bit for bit, names and dtypes included (a gamma that S2 creates may come
    in another float dtype: it is zero either way);
  * --key-init random: everything but the new key rows is bit-identical to
    the zero case, the new rows' RMS is that of the old rows (within 10%), and
    rwkv7_ref.py computes the same logits and state as for the original model
    (SPEC 3.6.4).
The binary is $METASTATE_BIN or build/metastate; exits 0 with SKIP when it or
torch is missing, 1 on any difference.

    /usr/bin/python3 tools/reference/check_c_expand.py
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
from skip import NO_BINARY, NO_SHARED, NO_TORCH, skip  # noqa: E402

# model, FFN rows to add, SSE heads to add {layer: heads}
CASES = [
    ("ms_l2_d128_fp32", 64, {0: [1], 1: [0, 1]}),
    ("ms_l3_d128_bf16", 96, {1: [0], 2: [1]}),  # layer 1 has no ms_gamma yet
]


def heads_arg(heads):
    return ",".join(f"{l}:{'+'.join(map(str, h))}" for l, h in sorted(heads.items()))


def main():
    try:
        import torch
        import ms_expand
        import rwkv7_ref
        import tensorio
    except ImportError as e:
        return skip(NO_TORCH, f"{e} (apt-get install python3-torch python3-numpy; run /usr/bin/python3)")
    binary = os.environ.get("METASTATE_BIN", os.path.join(REPO, "build", "metastate"))
    if not os.access(binary, os.X_OK):
        return skip(NO_BINARY, f"no metastate binary at {binary} (make build, or set METASTATE_BIN)")
    torch.set_num_threads(1)
    errors = []
    with tempfile.TemporaryDirectory(prefix="expand.") as tmp:
        for name, extra, heads in CASES:
            src = os.path.join(REPO, "tests", "golden_ms", name + ".safetensors")
            sd, _ = tensorio.read_safetensors(src)
            want = ms_expand.add_sse_heads(ms_expand.add_param_tokens(sd, extra, init="zeros"), heads)
            got = {}
            for init in ("zero", "random"):
                out = os.path.join(tmp, f"{name}.{init}.safetensors")
                subprocess.run([binary, "expand", "--model", src, "--out", out, "--add-param-tokens",
                                str(extra), "--key-init", init, "--seed", "3",
                                "--sse-heads", heads_arg(heads)], check=True, capture_output=True)
                got[init], meta = tensorio.read_safetensors(out)
                if meta.get("meta_state") != "ms-v0":
                    errors.append(f"{name} {init}: metadata meta_state is {meta.get('meta_state')!r}")
            zero, rnd = got["zero"], got["random"]
            if sorted(zero) != sorted(want):
                errors.append(f"{name}: tensor names differ: {sorted(set(zero) ^ set(want))}")
            for k in want:
                # a gamma created by S2 may be stored in another float dtype
                # (value 0 either way); every other tensor keeps its dtype
                same_dtype = k not in sd or zero.get(k, want[k]).dtype == want[k].dtype
                if k in zero and (not same_dtype or not torch.equal(zero[k].float(), want[k].float())):
                    errors.append(f"{name} zero: {k} differs from the Python expansion")
            n_new = 0
            for k in want:
                if k not in rnd:
                    continue
                if k.endswith("ffn.key.weight"):
                    F = sd[k].shape[0]
                    old, new = sd[k].float(), rnd[k].float()
                    same = torch.equal(rnd[k][:F], sd[k])
                    ratio = float(new[F:].pow(2).mean().sqrt() / old.pow(2).mean().sqrt())
                    n_new += new.shape[0] - F
                    if not same or not 0.9 < ratio < 1.1:
                        errors.append(f"{name} random: {k}: old rows kept {same}, new/old RMS {ratio:.3f}")
                elif not torch.equal(rnd[k].float(), want[k].float()):
                    errors.append(f"{name} random: {k} differs from the zero-key expansion")
            base, big = rwkv7_ref.RWKV7.from_tensors(sd), rwkv7_ref.RWKV7.from_tensors(rnd)
            toks = torch.arange(0, 200, 3).remainder(base.cfg.vocab_size).unsqueeze(0)
            with torch.no_grad():
                a, sa = base.forward_seq(toks)
                b, sb = big.forward_seq(toks)
            dl = float((a - b).abs().max())
            dw = max(float((x - y).abs().max()) for x, y in zip(sa.att_kv, sb.att_kv))
            if dl > 1e-5 or dw > 1e-5:
                errors.append(f"{name} random: function changed (logits {dl:.3g}, wkv {dw:.3g})")
            print(f"{name}: +{extra} FFN rows/layer ({n_new} random rows), SSE heads {heads}: "
                  f"zero-init tensors bitwise = Python; random-init logits diff {dl:.2e}, wkv {dw:.2e}")
    for e in errors:
        print("FAIL", e)
    print("FAILED" if errors else "PASSED")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
