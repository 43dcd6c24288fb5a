"""MS-v0 progressive scaling (SPEC 3.4), in Python, for training.

Both steps are exact: the expanded model computes the same function, so the
loss right after expansion equals the loss before it.

S1, parameter-token expansion: append rows to every layer's ffn.key.weight and
the same number of zero columns to ffn.value.weight. The zero value columns
make the new tokens invisible whatever their keys are. For continued training
the new key rows are N(0, sigma^2) with sigma the RMS of the existing keys:
with relu^2 a zero key row would get zero gradient forever.

S2, SSE-portion expansion: add heads to a layer's SSE set with gamma = 0 and
mark them trainable. A layer without ms_gamma gets a zero one. Trainability
is a training-side notion (ChannelMix.ms_train_mask), not stored in files.
"""
from collections import OrderedDict

import torch


def add_param_tokens(sd, extra, seed=0, init="rms"):
    """Checkpoint dict with `extra` more FFN rows per layer (SPEC 3.4 S1).

    init: "rms" (random keys, for training) or "zeros" (inference only).
    """
    gen = torch.Generator().manual_seed(seed)
    out = OrderedDict(sd)
    layers = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    for l in layers:
        kname, vname = f"blocks.{l}.ffn.key.weight", f"blocks.{l}.ffn.value.weight"
        K, V = sd[kname], sd[vname]
        if init == "rms":
            sigma = K.float().pow(2).mean().sqrt()
            rows = torch.randn(extra, K.shape[1], generator=gen) * sigma
        else:
            rows = torch.zeros(extra, K.shape[1])
        out[kname] = torch.cat([K, rows.to(K.dtype)], dim=0)
        out[vname] = torch.cat([V, torch.zeros(V.shape[0], extra, dtype=V.dtype)], dim=1)
    return out


def add_sse_heads(sd, heads_by_layer):
    """Checkpoint dict where every layer in heads_by_layer has an ms_gamma
    (zeros if it had none); the values of existing gammas are kept."""
    out = OrderedDict()
    C = sd["emb.weight"].shape[1]
    for k, v in sd.items():
        out[k] = v
        parts = k.split(".")
        if parts[0] == "blocks" and k.endswith("ffn.x_k") and int(parts[1]) in heads_by_layer:
            g = f"blocks.{parts[1]}.ffn.ms_gamma"
            out[g] = sd.get(g, torch.zeros(C, dtype=v.dtype))
    for k, v in sd.items():  # keep any gamma of layers not listed
        out.setdefault(k, v)
    return out


def set_trainable_heads(model, heads_by_layer):
    """Marks the SSE heads whose gamma training may move (SPEC 3.4 S2)."""
    N = model.cfg.head_size
    for blk in model.blocks:
        mask = blk.ffn.ms_train_mask
        mask.zero_()
        for h in heads_by_layer.get(blk.layer, []):
            assert blk.ffn.ms_gamma is not None, f"layer {blk.layer} has no ms_gamma"
            mask[h * N:(h + 1) * N] = 1.0
