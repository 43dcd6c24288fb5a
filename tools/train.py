#!/usr/bin/python3
"""Trains tiny byte-level RWKV-7 / MS-v0 models on the CPU, in minutes.

Corpus: the English fortune cookies of the Debian package `fortunes`
(/usr/share/games/fortunes, ~2.5 MB, ~15k short texts; `apt-get install
fortunes`). Each fortune is a document; documents are joined with token 0
(end of text) in front of each one. A fixed 5% of the documents (seeded
shuffle) is held out for validation.

Vocabulary: bytes. Id b+1 is byte b, id 0 is end of text; the vocab file this
script writes (models/bytes_vocab.txt) uses the RWKV World format (SPEC 2.1),
so the C tokenizer reads it like the real one. The model's vocab size is 257.

The forward pass is tools/reference/rwkv7_ref.py's, with the chunked WKV of
wkv_chunked.py (same function as the per-token recurrence, checked by
tools/reference/selftest.py). Exports use the BlinkDL tensor names and shapes,
so the C engine loads the result like an official checkpoint.

Validation bits per byte: the held-out stream is run as one sequence (state
carried across windows, as the engine would), -log2 p(next byte) averaged over
byte targets (end-of-text targets are not bytes and are left out).

MS-v0 progressive scaling (SPEC 3.4): --init-from CKPT --expand-ffn N --ms HEADS
loads a checkpoint, appends N FFN rows per layer (S1: random key rows scaled to
the RMS of the existing ones, zero value columns), gives every layer the SSE
heads HEADS with gamma 0 for the new ones (S2), checks that the validation
loss did not move, and trains on.

Examples (see tools/train_table.sh and models/README.md):
    tools/train.py --ms all --time 300 --out /tmp/ms.safetensors
    tools/train.py --init-from /tmp/small.safetensors --expand-ffn 256 --ms all --time 150 ...
"""
import argparse
import json
import math
import os
import re
import sys
import time
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "reference"))
# Spinning OpenMP workers slow torch down ~10x when the 2 cores are shared
# with other jobs; must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ms_expand  # noqa: E402
import rwkv7_ref  # noqa: E402
import tensorio  # noqa: E402

CORPUS_DIR = "/usr/share/games/fortunes"
CORPUS_PACKAGE = "fortunes"
VOCAB = 257  # 256 bytes + end of text


# ----------------------------------------------------------------- data
def write_vocab(path):
    """The byte vocabulary in the World format: `<id> <literal> <length>`.

    Literals as the official file spells single bytes: a str literal below
    0x80 (repr(chr(b)), e.g. 'a', '\\n', "'"), a bytes literal from 0x80 on
    (b'\\x80'): a str '\\x80' would be the 2-byte UTF-8 of U+0080.
    """
    lines = []
    for b in range(256):
        lit = repr(chr(b)) if b < 0x80 else repr(bytes([b]))
        lines.append(f"{b + 1} {lit} 1\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def load_corpus(corpus_dir, val_frac=0.05, seed=0):
    """(train ids, val ids, description): documents -> 0 + bytes + 1 ..."""
    files = sorted(f for f in os.listdir(corpus_dir)
                   if not f.endswith((".dat", ".u8")) and not os.path.islink(os.path.join(corpus_dir, f))
                   and os.path.isfile(os.path.join(corpus_dir, f)))
    docs = []
    for name in files:
        with open(os.path.join(corpus_dir, name), "rb") as f:
            docs += [d for d in re.split(rb"(?m)^%\n", f.read()) if d.strip()]
    order = np.random.RandomState(seed).permutation(len(docs))
    n_val = max(1, int(len(docs) * val_frac))
    val_docs, train_docs = order[:n_val], order[n_val:]

    def stream(idx):
        parts = []
        for i in idx:
            parts.append(np.zeros(1, dtype=np.int64))
            parts.append(np.frombuffer(docs[i], dtype=np.uint8).astype(np.int64) + 1)
        return np.concatenate(parts)

    train, val = stream(train_docs), stream(val_docs)
    desc = (f"{CORPUS_PACKAGE} (Debian package, {corpus_dir}): {len(files)} files, {len(docs)} documents; "
            f"train {len(train_docs)} docs / {len(train) - len(train_docs)} bytes, "
            f"val {len(val_docs)} docs / {len(val) - len(val_docs)} bytes")
    return train, val, desc


# ---------------------------------------------------------------- model
def make_config(layers, embd, ffn, ms_layers, lora=(16, 16, 8, 32)):
    Dw, Da, Dv, Dg = lora
    return rwkv7_ref.Config(n_layer=layers, n_embd=embd, head_size=64, vocab_size=VOCAB,
                            dim_ffn=[ffn] * layers, d_decay=Dw, d_aaa=Da, d_mv=Dv, d_gate=Dg,
                            ms_layers=[ms_layers] * layers)


def init_model(cfg, seed):
    """A fresh model. Every block starts as the identity (zero output and
    FFN value projections); decays spread from slow to fast across channels;
    token-shift mixes fade with depth. Own choices in the spirit of the
    RWKV-7 training code, not a copy of it."""
    torch.manual_seed(seed)
    m = rwkv7_ref.RWKV7(cfg)
    C, L = cfg.n_embd, cfg.n_layer
    ddd = torch.arange(C, dtype=torch.float32) / C
    with torch.no_grad():
        m.emb.weight.uniform_(-1e-4, 1e-4)
        m.head.weight.normal_(0, 0.5 / math.sqrt(C))
        for blk in m.blocks:
            l, att, ffn = blk.layer, blk.att, blk.ffn
            r0 = l / max(L - 1, 1)             # 0 .. 1 with depth
            r1 = 1 - l / L                     # 1 .. ~0 with depth
            for p, e in ((att.x_r, 0.2), (att.x_w, 0.9), (att.x_k, 0.7), (att.x_v, 0.7),
                         (att.x_a, 0.9), (att.x_g, 0.2)):
                p.copy_((1 - ddd ** (e * r1)).view(1, 1, C))
            speed = -7 + 5 * (torch.arange(C) / (C - 1)) ** (0.85 + r0 ** 0.5)
            att.w0.copy_((speed + 0.5).view(1, 1, C))
            for z in (att.w1, att.a1, att.g1, att.a0, att.r_k):
                z.zero_()
            for z in (att.w2, att.a2, att.g2):
                z.normal_(0, 0.1 / math.sqrt(z.shape[0]))
            if l > 0:
                att.v0.fill_(1.0)
                att.v1.zero_()
                att.v2.normal_(0, 0.1 / math.sqrt(att.v2.shape[0]))
            att.k_k.fill_(0.85)
            att.k_a.fill_(1.0)
            s = 0.5 / math.sqrt(C)
            for lin in (att.receptance, att.key, att.value):
                lin.weight.uniform_(-s, s)
            att.output.weight.zero_()
            att.ln_x.weight.fill_(((1 + l) / L) ** 0.7)
            ffn.x_k.copy_((1 - ddd ** (r1 ** 4)).view(1, 1, C))
            ffn.key.weight.uniform_(-s, s)
            ffn.value.weight.zero_()
            if ffn.ms_gamma is not None:
                ffn.ms_gamma.zero_()
    return m


def parse_heads(spec, n_head, n_layer):
    """--ms value -> {layer: [heads]}: none, all, or a comma list of heads."""
    if spec == "none":
        return {}
    heads = list(range(n_head)) if spec == "all" else [int(h) for h in spec.split(",")]
    return {l: heads for l in range(n_layer)}


# ------------------------------------------------------- train and eval
@torch.no_grad()
def evaluate(model, ids, window=1024, max_tokens=None):
    """Validation bits per byte, the stream run as one sequence."""
    model.eval()
    ids = torch.from_numpy(ids[:max_tokens] if max_tokens else ids)
    state = model.new_state(1)
    bits, count = 0.0, 0
    for i in range(0, len(ids) - 1, window):
        x = ids[i:i + window + 1]
        logits, state = model.forward_seq(x[:-1].unsqueeze(0), state, wkv="chunked")
        nll = F.cross_entropy(logits[0], x[1:], reduction="none")
        is_byte = x[1:] != 0
        bits += float(nll[is_byte].sum()) / math.log(2)
        count += int(is_byte.sum())
    return bits / count


def make_optimizer(model, lr, wd):
    """AdamW; weight decay only on matrices (not on vectors, norms, gammas)."""
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "r_k" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "r_k" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": other, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99), eps=1e-8)


def train(model, data, args, log):
    """Random windows of the train stream; stops after --steps or --time."""
    model.train()
    opt = make_optimizer(model, args.lr, args.wd)
    rng = np.random.RandomState(args.seed + 1)
    tokens = torch.from_numpy(data)
    t0, step, seen, hist = time.time(), 0, 0, []
    while True:
        elapsed = time.time() - t0
        progress = step / args.steps if args.steps else elapsed / args.time
        if progress >= 1:
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.randint(0, len(tokens) - args.ctx - 1, size=args.batch)
        batch = torch.stack([tokens[s:s + args.ctx + 1] for s in starts])
        logits, _ = model.forward_seq(batch[:, :-1], wkv="chunked")
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += batch[:, 1:].numel()
        hist.append(float(loss))
        if step % args.log_every == 0:
            log(f"step {step:5d}  loss {np.mean(hist[-args.log_every:]) / math.log(2):.3f} bits/token  "
                f"lr {lr:.2e}  {time.time() - t0:6.1f}s  {seen / (time.time() - t0):6.0f} tok/s")
    model.eval()
    return dict(steps=step, tokens=seen, train_seconds=round(time.time() - t0, 1),
                final_train_bits_per_token=round(float(np.mean(hist[-20:])) / math.log(2), 4) if hist else None)


@torch.no_grad()
def sample(model, prompt, n, temperature=0.8, top_p=0.9, seed=0):
    """Short text from the model (RNN mode), to see what it learned."""
    g = torch.Generator().manual_seed(seed)
    state = model.new_state(1)
    ids = [0] + [b + 1 for b in prompt.encode()]
    logits, state = model.forward_seq(torch.tensor([ids]), state)
    logits, out = logits[0, -1], bytearray()
    for _ in range(n):
        p = torch.softmax(logits / temperature, -1)
        sp, si = p.sort(descending=True)
        keep = (sp.cumsum(0) - sp) < top_p
        tok = int(si[keep][torch.multinomial(sp[keep], 1, generator=g)])
        if tok == 0:
            break
        out.append(tok - 1)
        logits = model.step(torch.tensor([tok]), state)[0]
    return prompt + out.decode("utf-8", "replace")


# ----------------------------------------------------------------- main
def export(model, path, dtype, meta):
    sd = model.export_tensors(torch.bfloat16 if dtype == "bf16" else torch.float32)
    md = OrderedDict([("format", "pt"), ("rwkv_arch", "x070")])
    if model.is_meta_state():
        md["meta_state"] = "ms-v0"
    md.update(meta)
    tensorio.write_safetensors(path, sd, md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the trained model here (.safetensors)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="export dtype")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--ffn", type=int, default=0, help="FFN width (default 4*embd)")
    ap.add_argument("--ms", default="none",
                    help="MS-v0 SSE heads trained in every layer: none (plain RWKV-7), all, or e.g. 0,1")
    ap.add_argument("--init-from", help="start from this checkpoint instead of a fresh model")
    ap.add_argument("--expand-ffn", type=int, default=0, help="with --init-from: add N FFN rows per layer")
    ap.add_argument("--steps", type=int, default=0, help="train this many steps ...")
    ap.add_argument("--time", type=float, default=0, help="... or this many seconds (wall clock)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--corpus", default=CORPUS_DIR)
    ap.add_argument("--val-tokens", type=int, default=0, help="evaluate on this many val tokens (0 = all)")
    ap.add_argument("--vocab-out", default=os.path.join(os.path.dirname(HERE), "models", "bytes_vocab.txt"))
    ap.add_argument("--json", help="append a JSON summary line to this file")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--name", default="", help="label for the summary")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731

    if args.vocab_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.vocab_out)), exist_ok=True)
        write_vocab(args.vocab_out)
    train_ids, val_ids, desc = load_corpus(args.corpus)
    log(f"corpus: {desc}")
    val_ids = val_ids[:args.val_tokens] if args.val_tokens else val_ids
    summary = OrderedDict(name=args.name, command="tools/train.py " + " ".join(sys.argv[1:]))

    if args.init_from:
        model = rwkv7_ref.RWKV7.load(args.init_from)
        heads = parse_heads(args.ms, model.cfg.n_head, model.cfg.n_layer)
        before = evaluate(model, val_ids)
        sd = model.export_tensors()
        if args.expand_ffn:
            sd = ms_expand.add_param_tokens(sd, args.expand_ffn, seed=args.seed)
        sd = ms_expand.add_sse_heads(sd, heads)
        model = rwkv7_ref.RWKV7.from_tensors(sd)
        after = evaluate(model, val_ids)
        log(f"expansion: ffn {rwkv7_ref.Config.from_tensors(sd).dim_ffn[0] - args.expand_ffn} -> "
            f"{model.cfg.dim_ffn[0]}, SSE heads {heads}; val bpb before {before:.6f}, after {after:.6f}")
        if abs(after - before) > 1e-4:
            raise SystemExit("expansion changed the model's function")
        summary.update(val_bpb_before_expansion=round(before, 6), val_bpb_after_expansion=round(after, 6))
    else:
        ffn = args.ffn or 4 * args.embd
        heads = parse_heads(args.ms, args.embd // 64, args.layers)
        model = init_model(make_config(args.layers, args.embd, ffn, bool(heads)), args.seed)
    ms_expand.set_trainable_heads(model, heads)
    n_params = rwkv7_ref.n_params(model)
    log(f"model: {model.cfg.n_layer} layers, n_embd {model.cfg.n_embd}, ffn {model.cfg.dim_ffn}, "
        f"vocab {VOCAB}, {'MS-v0 SSE heads ' + str(heads) if heads else 'plain RWKV-7'}, {n_params} parameters")

    stats = train(model, train_ids, args, log) if (args.steps or args.time) else dict(steps=0)
    bpb = evaluate(model, val_ids)
    log(f"validation: {bpb:.4f} bits per byte ({stats.get('steps')} steps, {stats.get('train_seconds', 0)} s)")
    gammas = [float(b.ffn.ms_gamma.abs().max()) for b in model.blocks if b.ffn.ms_gamma is not None]
    if gammas:
        log(f"max |gamma| per layer: {[round(g, 3) for g in gammas]}")
    summary.update(params=n_params, layers=model.cfg.n_layer, embd=model.cfg.n_embd,
                   ffn=model.cfg.dim_ffn[0], sse_heads=heads.get(0, []), **stats, val_bpb=round(bpb, 4))
    if args.out:
        meta = OrderedDict([("vocab", "bytes: id = byte + 1, 0 = end of text (models/bytes_vocab.txt)"),
                            ("corpus", f"Debian package {CORPUS_PACKAGE} ({args.corpus})"),
                            ("train_command", summary["command"]), ("val_bpb_fp32", f"{bpb:.4f}"),
                            ("steps", str(stats.get("steps")))])
        export(model, args.out, args.dtype, meta)
        if args.dtype == "bf16":
            q = evaluate(rwkv7_ref.RWKV7.load(args.out), val_ids)
            summary["val_bpb_exported_bf16"] = round(q, 4)
            log(f"exported bf16 model: {q:.4f} bits per byte")
        log(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    log("sample: " + repr(sample(model, "The ", 160)))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
