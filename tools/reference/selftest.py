#!/usr/bin/python3
"""Self-consistency of the reference (SPEC 3.6) and of the training pieces.

On a random MS-v0 model from make_ms_golden.py:
  1. prefill == token-by-token (logits and states), relative 1e-5;
  2. the prefill chunk length does not matter (two-pass scheme per chunk);
  3. autoregression: logits at t do not change when tokens after t change;
  4. gamma == 0 everywhere gives exactly the plain RWKV-7 model;
  5. expansion invariance (SPEC 3.4 S1 with random keys + S2): same logits;
  6. the chunked WKV of training equals the per-token loop (values and
     gradients), also with the MS-v0 read;
  7. bf16 rounding is round-to-nearest-even.
Prints one line per check; exits 1 if any fails, 0 with SKIP without torch.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
from skip import NO_BINARY, NO_SHARED, NO_TORCH, skip  # noqa: E402
try:
    import numpy as np
    import torch
    import make_ms_golden
    import ms_expand
    import rwkv7_ref
    import tensorio
except ImportError as e:
    sys.exit(skip(NO_TORCH, f"{e} (apt-get install python3-torch python3-numpy; run /usr/bin/python3)"))

failures = []


def report(name, value, limit):
    ok = value <= limit
    if not ok:
        failures.append(name)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.3g} (limit {limit:g})")


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def state_rel(s1, s2):
    return max(rel(a, b) for p in ("att_x_prev", "att_kv", "ffn_x_prev")
               for a, b in zip(getattr(s1, p), getattr(s2, p)))


def main():
    torch.set_num_threads(1)
    _, sd = make_ms_golden.draw_model(make_ms_golden.MODELS["ms_l3_d128_bf16"])
    model = rwkv7_ref.RWKV7.from_tensors(sd)
    toks = torch.tensor([make_ms_golden.draw_tokens(7, 90, model.cfg.vocab_size)])
    with torch.no_grad():
        seq, s_seq = model.forward_seq(toks)
        rnn, s_rnn = model.forward_rnn(toks)
        report("1 seq vs rnn logits (rel)", rel(rnn, seq), 1e-5)
        report("1 seq vs rnn state (rel)", state_rel(s_rnn, s_seq), 1e-5)
        for cl in (1, 7, 64):
            lg, st = model.forward_seq(toks, chunk_len=cl)
            report(f"2 chunk_len {cl} vs whole (rel)", max(rel(lg, seq), state_rel(st, s_seq)), 1e-5)
        t = 40
        alt = toks.clone()
        alt[0, t + 1:] = (alt[0, t + 1:] * 7 + 3) % model.cfg.vocab_size
        lg, _ = model.forward_seq(alt)
        report("3 autoregressive: logits <= t after changing tokens > t",
               float((lg[0, :t + 1] - seq[0, :t + 1]).abs().max()), 1e-6)
        zero = {k: (v * 0 if k.endswith("ms_gamma") else v) for k, v in sd.items()}
        plain = {k: v for k, v in sd.items() if not k.endswith("ms_gamma")}
        a, _ = rwkv7_ref.RWKV7.from_tensors(zero).forward_seq(toks)
        b, _ = rwkv7_ref.RWKV7.from_tensors(plain).forward_seq(toks)
        report("4 gamma == 0 vs no ms_gamma (bitwise)", float((a - b).abs().max()), 0.0)
        big = ms_expand.add_sse_heads(ms_expand.add_param_tokens(sd, 96, seed=5), {0: [0, 1], 1: [1]})
        expanded = rwkv7_ref.RWKV7.from_tensors(big)
        ms_expand.set_trainable_heads(expanded, {0: [0, 1], 1: [1]})
        lg, st = expanded.forward_seq(toks)
        report("5 expansion S1+S2: logits and state (rel)", max(rel(lg, seq), state_rel(st, s_seq)), 1e-6)
        lg, st = model.forward_seq(toks, wkv="chunked")
        report("6 chunked WKV vs loop: logits and state (rel)", max(rel(lg, seq), state_rel(st, s_seq)), 2e-5)

    # gradients: chunked vs loop, batch of 2, every gamma head trainable
    ms_expand.set_trainable_heads(expanded, {0: [0, 1], 1: [1], 2: [0, 1]})
    expanded.train()
    x = torch.tensor([make_ms_golden.draw_tokens(s, 37, model.cfg.vocab_size) for s in (8, 9)])
    grads = {}
    for mode in ("loop", "chunked"):
        expanded.zero_grad()
        lg, _ = expanded.forward_seq(x, wkv=mode)
        torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1)).backward()
        grads[mode] = {k: p.grad.clone() for k, p in expanded.named_parameters() if p.grad is not None}
    worst = max(rel(grads["chunked"][k], grads["loop"][k]) for k in grads["loop"])
    report("6 chunked WKV vs loop: gradients (rel, worst tensor)", worst, 1e-3)
    report("6 gamma of SSE heads gets a gradient",
           0.0 if float(grads["loop"]["blocks.1.ffn.ms_gamma"][64:].abs().sum()) > 0 else 1.0, 0.0)

    # bf16: round to nearest even, ties included
    vals = np.array([1.0, 1.00390625, 1.01171875, 1.0 + 2 ** -8 + 2 ** -20, -3.3, 1e-30], dtype=np.float32)
    bits = vals.view(np.uint32).astype(np.uint64)
    rne = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) << 16
    mine = tensorio.bf16_round(torch.from_numpy(vals)).float().numpy().view(np.uint32)
    report("7 bf16 round-to-nearest-even (mismatches)", float((mine != rne).sum()), 0.0)

    print("FAILED: " + ", ".join(failures) if failures else "PASSED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
