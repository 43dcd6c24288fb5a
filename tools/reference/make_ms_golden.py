#!/usr/bin/python3
"""Writes the MS-v0 golden vectors in tests/golden_ms/ (or OUT_DIR).

Small random Meta-State models (SPEC 3.3) and what rwkv7_ref.py computes for
them, in the layout of ../shared/golden (see its README): `<model>.safetensors`,
`<case>.ref.safetensors` (seq.logits, rnn.logits, seq.state.<i>.*, rnn.state.*,
and for continuation cases prefix.logits and in.state.*) and `<case>.ref.json`.
There is no official MS-v0 implementation, so these vectors pin down the
project's reading of the SPEC, to check the C engine against.

Weights imitate a real model's magnitudes like the shared golden models (layer
norms near 1, decays over the whole real range); `blocks.{l}.ffn.ms_gamma` is
non-zero only on the chosen SSE heads, with a few exact zeros inside them.
Everything is drawn from numpy's RandomState with fixed seeds (a stream numpy
keeps stable), and computed single-threaded, so a rerun gives the same bytes.

    /usr/bin/python3 tools/reference/make_ms_golden.py [OUT_DIR]
"""
import hashlib
import json
import os
import sys
from collections import OrderedDict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "tests", "golden_ms")

# model name -> how it is drawn. gamma: layer -> SSE heads; a layer missing
# from the dict has no ms_gamma tensor at all (gamma = 0, SPEC 3.3 C8).
MODELS = OrderedDict([
    ("ms_l2_d128_fp32", dict(seed=11, layers=2, embd=128, vocab=256, lora=(16, 16, 16, 32),
                             gamma={0: [0], 1: [0, 1]}, dtype="fp32")),
    ("ms_l2_d128_bf16", dict(same_draw_as="ms_l2_d128_fp32", dtype="bf16")),
    ("ms_l3_d128_bf16", dict(seed=12, layers=3, embd=128, vocab=256, lora=(16, 24, 8, 32),
                             gamma={0: [1], 2: [0, 1]}, dtype="bf16")),
])

# case -> model, token seed, number of prefix tokens (continuation) and tokens
CASES = OrderedDict([
    ("ms_l2_d128_fp32", dict(model="ms_l2_d128_fp32", seed=101, prefix=0, tokens=64)),
    ("ms_l2_d128_fp32_t1", dict(model="ms_l2_d128_fp32", seed=102, prefix=0, tokens=1)),
    ("ms_l2_d128_fp32_cont", dict(model="ms_l2_d128_fp32", seed=103, prefix=40, tokens=24)),
    ("ms_l2_d128_bf16", dict(model="ms_l2_d128_bf16", seed=104, prefix=0, tokens=300)),
    ("ms_l3_d128_bf16", dict(model="ms_l3_d128_bf16", seed=105, prefix=0, tokens=100)),
])


def draw_model(spec):
    """fp32 checkpoint dict (BlinkDL names, checkpoint order) for one spec."""
    import torch
    import rwkv7_ref
    L, C, V = spec["layers"], spec["embd"], spec["vocab"]
    Dw, Da, Dv, Dg = spec["lora"]
    cfg = rwkv7_ref.Config(n_layer=L, n_embd=C, head_size=64, vocab_size=V, dim_ffn=[4 * C] * L,
                           d_decay=Dw, d_aaa=Da, d_mv=Dv, d_gate=Dg,
                           ms_layers=[l in spec["gamma"] for l in range(L)])
    rng = np.random.RandomState(spec["seed"])
    normal = lambda mean, std, shape: mean + std * rng.standard_normal(shape)  # noqa: E731
    out = OrderedDict()
    for name, p in rwkv7_ref.RWKV7(cfg).state_dict().items():
        shape, parts = tuple(p.shape), name.split(".")
        layer = int(parts[1]) if parts[0] == "blocks" else 0
        depth = layer / max(L - 1, 1)  # 0 at the first layer, 1 at the last
        leaf = parts[-1] if parts[-1] not in ("weight", "bias") else ".".join(parts[-2:])
        if name == "emb.weight":
            a = normal(0, 1, shape)
        elif name == "head.weight":
            a = normal(0, 2 / np.sqrt(C), shape)
        elif leaf.startswith(("ln", "ln_out")) and leaf.endswith("weight"):
            a = normal(0.8 if "ln_x" in leaf else 1.0, 0.14, shape)
        elif leaf.endswith("bias"):
            a = normal(0, 0.05 if "ln_x" in leaf else 0.1, shape)
        elif leaf in ("x_r", "x_g"):
            a = normal(0.16 - 0.08 * depth, 0.2, shape)
        elif leaf in ("x_w", "x_k", "x_v", "x_a"):
            a = normal((0.45 if parts[2] == "att" else 0.5) - 0.2 * depth, 0.3, shape)
        elif leaf == "w0":
            # decays over the real range: from w ~ 0.9999 (slow) to w ~ 0.55
            # (fast), spread over every head by a random permutation
            ramp = -8.5 + 12.0 * np.linspace(0, 1, C) ** 1.3
            a = (rng.permutation(ramp) + normal(0, 0.3, C)).reshape(shape)
        elif leaf == "r_k":
            a = normal(-0.05, 0.15, shape)
        elif leaf in ("w1", "a1", "v1", "g1"):
            a = normal(0, 1 / np.sqrt(C), shape)
        elif leaf in ("w2", "a2", "v2", "g2"):
            a = normal(0, 1 / np.sqrt(shape[0]), shape)
        elif leaf == "a0":
            a = normal(-0.2, 0.4, shape)
        elif leaf == "v0":
            a = normal(0.66, 0.29, shape)
        elif leaf == "k_k":
            a = normal(0.71, 0.1, shape)
        elif leaf == "k_a":
            a = normal(1.0, 0.1, shape)
        elif leaf == "output.weight":
            a = normal(0, 0.7 / np.sqrt(C), shape)
        elif parts[2] == "ffn" and leaf == "value.weight":
            a = normal(0, 0.7 / np.sqrt(shape[1]), shape)
        elif leaf.endswith("weight"):  # receptance, key, value, ffn.key
            a = normal(0, 1 / np.sqrt(shape[1]), shape)
        elif leaf == "ms_gamma":
            a = np.zeros(C)
            for h in spec["gamma"][layer]:
                g = normal(0, 2.0, 64)
                g[rng.rand(64) < 0.1] = 0.0  # some exact zeros inside an SSE head
                a[h * 64:(h + 1) * 64] = g
        else:
            raise AssertionError(f"no rule for {name}")
        out[name] = torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(shape).copy())
    return cfg, out


def draw_tokens(seed, n, V):
    """Random ids with id 0, id V-1 and some repeats, like the shared golden."""
    rng = np.random.RandomState(seed)
    t = rng.randint(0, V, size=n)
    if n >= 8:
        t[rng.randint(1, n)] = 0
        t[rng.randint(1, n)] = V - 1
        i = rng.randint(1, n - 3)
        t[i + 1] = t[i]
        t[i + 2] = t[i]
    return [int(x) for x in t]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def max_abs(d):
    return float(max(float(t.abs().max()) for t in d)) if d else 0.0


def run_case(model, tokens, prefix):
    """Computes every output tensor of one case, in the golden file's order."""
    import torch
    import rwkv7_ref
    out = OrderedDict()
    start = model.new_state(1)
    if prefix:
        pl, start = model.forward_seq(torch.tensor([prefix]), start)
        out["prefix.logits"] = pl[0]
        out.update(start.to_tensors("in.state."))
    toks = torch.tensor([tokens])
    seq_logits, seq_state = model.forward_seq(toks, start.clone())
    rnn_logits, rnn_state = model.forward_rnn(toks, start.clone())
    out["seq.logits"] = seq_logits[0]
    out["rnn.logits"] = rnn_logits[0]
    out.update(seq_state.to_tensors("seq.state."))
    out.update(rnn_state.to_tensors("rnn.state."))
    # how much the SSE matters here: the same model with every gamma set to 0
    plain = rwkv7_ref.RWKV7.from_tensors({k: (v * 0 if k.endswith("ms_gamma") else v)
                                          for k, v in model.state_dict().items()})
    s0 = plain.new_state(1)
    if prefix:
        _, s0 = plain.forward_seq(torch.tensor([prefix]), s0)
    plain_logits, _ = plain.forward_seq(toks, s0)
    observed = OrderedDict([
        ("seq_vs_rnn_logits_max_abs", float((seq_logits - rnn_logits).abs().max())),
        ("seq_vs_rnn_state_max_abs", OrderedDict(
            (part, max_abs([a - b for a, b in zip(getattr(seq_state, part), getattr(rnn_state, part))]))
            for part in ("att_x_prev", "att_kv", "ffn_x_prev"))),
        ("logits_abs_max", float(seq_logits.abs().max())),
        ("logits_std", float(seq_logits.std())),
        ("state_abs_max", OrderedDict((part, max_abs(getattr(seq_state, part)))
                                      for part in ("att_x_prev", "att_kv", "ffn_x_prev"))),
        ("gamma_zero_vs_model_logits_max_abs", float((plain_logits - seq_logits).abs().max())),
    ])
    return out, observed


def generate(out_dir):
    """Writes every model and case into out_dir; returns the file names."""
    import torch
    import rwkv7_ref
    import tensorio
    torch.set_num_threads(1)  # fixed summation order: reruns give the same bytes
    os.makedirs(out_dir, exist_ok=True)
    written, models = [], {}
    for name, spec in MODELS.items():
        base = MODELS[spec["same_draw_as"]] if "same_draw_as" in spec else spec
        cfg, sd = draw_model(base)
        if spec["dtype"] == "bf16":
            sd = OrderedDict((k, tensorio.bf16_round(v)) for k, v in sd.items())
        meta = OrderedDict([
            ("format", "pt"), ("rwkv_arch", "x070"), ("meta_state", "ms-v0"),
            ("dtype", spec["dtype"]), ("n_layer", cfg.n_layer), ("n_embd", cfg.n_embd),
            ("head_size", cfg.head_size), ("n_head", cfg.n_head), ("vocab_size", cfg.vocab_size),
            ("dim_ffn", cfg.dim_ffn[0]), ("d_decay_lora", cfg.d_decay), ("d_aaa_lora", cfg.d_aaa),
            ("d_mv_lora", cfg.d_mv), ("d_gate_lora", cfg.d_gate), ("seed", base["seed"]),
            ("ms_gamma_heads", json.dumps({str(l): h for l, h in base["gamma"].items()})),
            ("generator", "tools/reference/make_ms_golden.py")])
        path = os.path.join(out_dir, name + ".safetensors")
        tensorio.write_safetensors(path, sd, meta)
        written.append(name + ".safetensors")
        models[name] = (rwkv7_ref.RWKV7.load(path), spec, base)

    for case, cs in CASES.items():
        model, spec, base = models[cs["model"]]
        V = model.cfg.vocab_size
        toks = draw_tokens(cs["seed"], cs["prefix"] + cs["tokens"], V)
        prefix, tokens = toks[:cs["prefix"]], toks[cs["prefix"]:]
        with torch.no_grad():
            outputs, observed = run_case(model, tokens, prefix)
        ref_name = case + ".ref.safetensors"
        tensorio.write_safetensors(os.path.join(out_dir, ref_name),
                                   OrderedDict((k, v.float().contiguous()) for k, v in outputs.items()))
        mfile = cs["model"] + ".safetensors"
        manifest = OrderedDict([
            ("name", case),
            ("model", OrderedDict([
                ("files", [mfile]), ("weight_dtype", spec["dtype"]),
                ("config", model.cfg.as_json()),
                ("ms_gamma_heads", OrderedDict((str(l), h) for l, h in base["gamma"].items())),
                ("sha256", {mfile: sha256(os.path.join(out_dir, mfile))})])),
            ("prefix_tokens", prefix),
            ("tokens", tokens),
            ("outputs_file", ref_name),
            ("outputs", OrderedDict((k, list(v.shape)) for k, v in outputs.items())),
            ("compute_dtype", "float32 (weights widened to fp32 at load; WKV state fp32)"),
            ("reference", OrderedDict([
                ("implementation", "tools/reference/rwkv7_ref.py (this repository), written from "
                                   "docs SPEC 1.3, 1.5 and 3.3 (MS-v0)"),
                ("checked_against", "../shared/golden with tools/reference/check_shared_golden.py "
                                    "(plain RWKV-7 part)"),
                ("modes", OrderedDict([
                    ("seq", "RWKV7.forward_seq(tokens, state): whole sequence in one chunk, WKV token "
                            "by token; MS-v0 read S_t kx_t by the two-pass scheme of SPEC 3.3"),
                    ("rnn", "RWKV7.step(token, state) per token; MS-v0 read of S_t right after "
                            "the token's update")])),
                ("continuation", "prefix_tokens run with forward_seq from the zero state; that state "
                                 "is in.state.*; seq and rnn both start from it"
                                 if prefix else None),
                ("torch_version", torch.__version__),
                ("threads", 1)])),
            ("state_layout", OrderedDict([
                ("per_layer", ["att_x_prev (C)", "att_kv (H, N, N) float32", "ffn_x_prev (C)"]),
                ("att_kv_index", "att_kv[h][i][j]: i = value channel (row), j = key channel (column)"),
                ("shift_states", "att_x_prev = LN1 output, ffn_x_prev = LN2 output of the last token")])),
            ("meta_state", OrderedDict([
                ("variant", "ms-v0"),
                ("msl", "kx = xn + (ffn_x_prev - xn)*x_k; per SSE head h: u = S_t[h] @ kx_h, "
                        "e_h = kx_h + gamma_h * u / max(||u||, 1e-12); out = ffn.value(relu(ffn.key(e))^2)"),
                ("sse_heads", "heads with any non-zero gamma; layers without ms_gamma have none")])),
            ("observed", observed),
            ("generator", OrderedDict([
                ("script", "tools/reference/make_ms_golden.py"),
                ("model", OrderedDict((k, v) for k, v in base.items() if k != "gamma")),
                ("case", OrderedDict(cs))])),
        ])
        if not prefix:
            manifest["reference"].pop("continuation")
        with open(os.path.join(out_dir, case + ".ref.json"), "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        written += [ref_name, case + ".ref.json"]
    return written


def main():
    sys.dont_write_bytecode = True
    sys.path.insert(0, HERE)
    out_dir = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    files = generate(out_dir)
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in files)
    for f in files:
        print(f"{os.path.getsize(os.path.join(out_dir, f)):9d}  {f}")
    print(f"{total:9d}  total bytes in {out_dir}")


if __name__ == "__main__":
    main()
