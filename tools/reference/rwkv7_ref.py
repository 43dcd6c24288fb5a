#!/usr/bin/python3
"""A small, readable PyTorch reference of RWKV-7 ("x070") and Meta-State MS-v0.

Written from docs/SPEC.md (1.3 one-token forward, 1.5 sequence forward, 3.3
MS-v0), not from the C engine, so that the two can check each other. All
arithmetic is fp32; bf16 weights are widened to fp32 exactly at load.

Two ways to run a sequence:
  * `model.forward_seq(tokens, state)`: SPEC 1.5 prefill. Projections are
    batched over all tokens, only the WKV recurrence runs token by token. With
    MS-v0 it uses the two-pass scheme of SPEC 3.3 ("Prefill with MS-v0"): the
    channel-mix input kx is only known after the whole time-mix, so a second
    WKV recurrence, started from a copy of the state of the SSE heads, reads
    S_t . kx_t for every t.
  * `model.step(token, state)`: SPEC 1.3 RNN mode, one token; the MS-v0 read
    uses the state just updated for this token.
`forward_seq(..., wkv="chunked")` swaps the per-token recurrence for the
chunked formulation of wkv_chunked.py (same function, parallel, differentiable:
used for training).

Tensor names and shapes are the BlinkDL checkpoint ones (SPEC 1.1), so
`model.state_dict()` is a loadable checkpoint.
"""
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # imported as tools.reference.rwkv7_ref or run from this folder
    from . import tensorio, wkv_chunked
except ImportError:  # pragma: no cover
    import tensorio
    import wkv_chunked

DECAY_SCALE = 0.606531  # e^-0.5 as written in the reference (SPEC 1.6)
LN_EPS = 1e-5
GN_EPS = 64e-5  # GroupNorm eps of ln_x (SPEC 1.3): 64e-5, not 1e-5
L2_EPS = 1e-12


@dataclass
class Config:
    n_layer: int
    n_embd: int
    head_size: int
    vocab_size: int
    dim_ffn: List[int]  # per layer: parameter-token expansion may make them differ
    d_decay: int
    d_aaa: int
    d_mv: int
    d_gate: int
    ms_layers: List[bool] = field(default_factory=list)  # layers with an ms_gamma tensor

    @property
    def n_head(self):
        return self.n_embd // self.head_size

    @staticmethod
    def from_tensors(sd):
        """Derives every dimension from tensor shapes, as SPEC 1.1 says."""
        V, C = sd["emb.weight"].shape
        L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        H, N = sd["blocks.0.att.r_k"].shape
        assert H * N == C, "r_k shape does not match n_embd"
        d_mv = sd["blocks.1.att.v1"].shape[1] if L > 1 else 32
        return Config(
            n_layer=L, n_embd=C, head_size=N, vocab_size=V,
            dim_ffn=[sd[f"blocks.{i}.ffn.key.weight"].shape[0] for i in range(L)],
            d_decay=sd["blocks.0.att.w1"].shape[1], d_aaa=sd["blocks.0.att.a1"].shape[1],
            d_mv=d_mv, d_gate=sd["blocks.0.att.g1"].shape[1],
            ms_layers=[f"blocks.{i}.ffn.ms_gamma" in sd for i in range(L)])

    def as_json(self):
        return OrderedDict([
            ("n_layer", self.n_layer), ("n_embd", self.n_embd), ("head_size", self.head_size),
            ("n_head", self.n_head), ("vocab_size", self.vocab_size),
            ("dim_ffn", self.dim_ffn[0] if len(set(self.dim_ffn)) == 1 else self.dim_ffn),
            ("d_decay_lora", self.d_decay), ("d_aaa_lora", self.d_aaa),
            ("d_mv_lora", self.d_mv), ("d_gate_lora", self.d_gate),
            ("ms_gamma_layers", [i for i, m in enumerate(self.ms_layers) if m])])


class State:
    """The recurrent memory per layer (SPEC 4.1), batch-first, fp32.

    att_x_prev / ffn_x_prev are the LN1 / LN2 outputs of the last token (not
    the residual stream); att_kv[h][i][j] has i = value, j = key.
    """

    def __init__(self, cfg: Config, batch: int = 1):
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.att_x_prev = [torch.zeros(batch, C) for _ in range(cfg.n_layer)]
        self.att_kv = [torch.zeros(batch, H, N, N) for _ in range(cfg.n_layer)]
        self.ffn_x_prev = [torch.zeros(batch, C) for _ in range(cfg.n_layer)]

    def clone(self):
        s = State.__new__(State)
        s.att_x_prev = [t.clone() for t in self.att_x_prev]
        s.att_kv = [t.clone() for t in self.att_kv]
        s.ffn_x_prev = [t.clone() for t in self.ffn_x_prev]
        return s

    def to_tensors(self, prefix, b=0):
        """Named tensors of batch row b, the names of the golden files."""
        out = OrderedDict()
        for i in range(len(self.att_kv)):
            out[f"{prefix}{i}.att_x_prev"] = self.att_x_prev[i][b].detach().clone()
            out[f"{prefix}{i}.att_kv"] = self.att_kv[i][b].detach().clone()
            out[f"{prefix}{i}.ffn_x_prev"] = self.ffn_x_prev[i][b].detach().clone()
        return out

    @staticmethod
    def from_tensors(cfg, tensors, prefix):
        s = State(cfg, 1)
        for i in range(cfg.n_layer):
            s.att_x_prev[i] = tensors[f"{prefix}{i}.att_x_prev"].float().reshape(1, -1).clone()
            s.att_kv[i] = tensors[f"{prefix}{i}.att_kv"].float().unsqueeze(0).clone()
            s.ffn_x_prev[i] = tensors[f"{prefix}{i}.ffn_x_prev"].float().reshape(1, -1).clone()
        return s


def wkv_step(S, r, w, k, v, kk, a):
    """One WKV update and read for every head (SPEC 1.3), batched.

    S (B,H,N,N); the vectors are (B,H,N). Every term of the update uses the
    old S: S' = S diag(w) + (S (-kk)) (kk*a)^T + v k^T, then y = S' r.
    """
    sa = S @ (-kk).unsqueeze(-1)                        # (B,H,N,1)
    S = S * w.unsqueeze(-2) + sa * (kk * a).unsqueeze(-2) + v.unsqueeze(-1) * k.unsqueeze(-2)
    y = (S @ r.unsqueeze(-1)).squeeze(-1)
    return y, S


def heads(x, H):
    """(..., C) -> (..., H, N)."""
    return x.reshape(*x.shape[:-1], H, -1)


class TimeMix(nn.Module):
    """RWKV-7 time mix. Parameters registered in checkpoint key order."""

    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.layer, self.H = layer, H
        vec = lambda: nn.Parameter(torch.zeros(1, 1, C))  # noqa: E731
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vec() for _ in range(6))
        self.w0 = vec()
        self.r_k = nn.Parameter(torch.zeros(H, N))
        self.w1 = nn.Parameter(torch.zeros(C, cfg.d_decay))
        self.w2 = nn.Parameter(torch.zeros(cfg.d_decay, C))
        self.a1 = nn.Parameter(torch.zeros(C, cfg.d_aaa))
        self.a2 = nn.Parameter(torch.zeros(cfg.d_aaa, C))
        self.a0 = vec()
        self.g1 = nn.Parameter(torch.zeros(C, cfg.d_gate))
        self.g2 = nn.Parameter(torch.zeros(cfg.d_gate, C))
        if layer > 0:  # layer 0 has no value residual (absent in released checkpoints)
            self.v2 = nn.Parameter(torch.zeros(cfg.d_mv, C))
            self.v1 = nn.Parameter(torch.zeros(C, cfg.d_mv))
            self.v0 = vec()
        self.k_k = vec()
        self.k_a = vec()
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GN_EPS)

    def project(self, xn, x_prev, v_first):
        """Everything before the recurrence, for all T rows at once (SPEC 1.5).

        xn (B,T,C) is the LN1 output, x_prev the same shifted by one token.
        Returns per-head vectors (B,T,H,N): r, log-decay, k, v, kk, a; the
        gate g (B,T,C); and v_first.
        """
        H = self.H
        dx = x_prev - xn
        xr, xw, xk = xn + dx * self.x_r, xn + dx * self.x_w, xn + dx * self.x_k
        xv, xa, xg = xn + dx * self.x_v, xn + dx * self.x_a, xn + dx * self.x_g
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        # log w = -0.606531 * sigmoid(d), so w = exp(log w) lies in (0.5452, 1)
        logw = -DECAY_SCALE * torch.sigmoid(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize(heads(k * self.k_k, H), dim=-1, eps=L2_EPS)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        return (heads(r, H), logw, heads(k, H), heads(v, H), kk, heads(a, H)), g, v_first

    def finish(self, y, r, k, v, g):
        """GroupNorm per head, bonus term, gate, output projection."""
        B, T, H, N = y.shape
        y = self.ln_x(y.reshape(B * T, H * N)).reshape(B, T, H, N)
        y = y + (r * k * self.r_k).sum(-1, keepdim=True) * v
        return self.output(y.reshape(B, T, H * N) * g)


class ChannelMix(nn.Module):
    """RWKV-7 channel mix, or the MS-v0 Meta-State layer when ms_gamma exists.

    MS-v0 (SPEC 3.3): e = kx + gamma * normalize_per_head(S_t kx) on the heads
    whose gamma is non-zero, then the usual relu^2 parameter-token FFN.
    `ms_train_mask` (not saved) marks the heads whose gamma may be trained; it
    lets a head join the SSE set with gamma 0 (SPEC 3.4 S2).
    """

    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        C, F_ = cfg.n_embd, cfg.dim_ffn[layer]
        self.H = cfg.n_head
        self.x_k = nn.Parameter(torch.zeros(1, 1, C))
        has_ms = bool(cfg.ms_layers) and cfg.ms_layers[layer]
        self.ms_gamma = nn.Parameter(torch.zeros(C)) if has_ms else None
        self.register_buffer("ms_train_mask", torch.zeros(C), persistent=False)
        self.key = nn.Linear(C, F_, bias=False)
        self.value = nn.Linear(F_, C, bias=False)

    def sse_heads(self):
        """Heads taking part in the SSE: any non-zero gamma, or trainable."""
        if self.ms_gamma is None:
            return []
        g = heads(self.ms_gamma.detach().abs() + self.ms_train_mask, self.H)
        return [h for h in range(self.H) if bool((g[h] != 0).any())]

    def gamma(self):
        """gamma with gradient only on the trainable heads (same values)."""
        return torch.where(self.ms_train_mask != 0, self.ms_gamma, self.ms_gamma.detach())

    def token_shift_input(self, xn, x_prev):
        return xn + (x_prev - xn) * self.x_k

    def ffn(self, kx, u=None):
        """u: S_t kx per head (B,T,H,N) for the SSE heads, or None."""
        e = kx
        if u is not None:
            u_hat = F.normalize(u, dim=-1, eps=L2_EPS)
            e = kx + self.gamma() * u_hat.reshape(kx.shape)
        return self.value(torch.relu(self.key(e)) ** 2)


class Block(nn.Module):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        C = cfg.n_embd
        if layer == 0:
            self.ln0 = nn.LayerNorm(C, eps=LN_EPS)
        self.ln1 = nn.LayerNorm(C, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(C, eps=LN_EPS)
        self.att = TimeMix(cfg, layer)
        self.ffn = ChannelMix(cfg, layer)
        self.layer = layer


class RWKV7(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.ln_out = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    # ------------------------------------------------------------------ I/O
    @staticmethod
    def from_tensors(sd):
        """Builds a model from a checkpoint dict (any float dtype, widened)."""
        cfg = Config.from_tensors(sd)
        model = RWKV7(cfg)
        own = model.state_dict()
        # layer 0 may carry dummy v0/v1/v2 (SPEC 1.2.4): they are never used
        sd = {k: v for k, v in sd.items() if k in own or not k.startswith("blocks.0.att.v")}
        missing = [k for k in own if k not in sd]
        extra = [k for k in sd if k not in own]
        if missing or extra:
            raise ValueError(f"checkpoint mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
        for k in own:
            if tuple(sd[k].shape) != tuple(own[k].shape):
                raise ValueError(f"{k}: shape {tuple(sd[k].shape)}, expected {tuple(own[k].shape)}")
        model.load_state_dict({k: sd[k].float() for k in own})
        return model.eval()

    @staticmethod
    def load(path):
        sd, _ = tensorio.load_tensors(path)
        return RWKV7.from_tensors(sd)

    def export_tensors(self, dtype=torch.float32):
        """Checkpoint dict with the BlinkDL names (plus ms_gamma where present)."""
        return OrderedDict((k, v.detach().to(dtype).contiguous()) for k, v in self.state_dict().items())

    def is_meta_state(self):
        return any(b.ffn.ms_gamma is not None for b in self.blocks)

    # -------------------------------------------------------------- forward
    def new_state(self, batch=1):
        return State(self.cfg, batch)

    def forward_seq(self, tokens, state=None, wkv="loop", chunk_len=0):
        """SPEC 1.5 prefill of tokens (B,T) from `state` (updated in place).

        Returns logits (B,T,V) for every position. chunk_len > 0 processes the
        tokens in chunks of that size (as an engine would); results are the
        same. wkv="loop" runs the recurrence token by token, "chunked" uses
        the parallel form of wkv_chunked.py (for training).
        """
        if state is None:
            state = self.new_state(tokens.shape[0])
        T = tokens.shape[1]
        step = chunk_len if chunk_len > 0 else T
        outs = [self._forward_chunk(tokens[:, i:i + step], state, wkv) for i in range(0, T, step)]
        return torch.cat(outs, dim=1), state

    def _forward_chunk(self, tokens, st, wkv):
        x = self.emb(tokens)
        v_first = None
        for blk in self.blocks:
            l, att, ffn = blk.layer, blk.att, blk.ffn
            if l == 0:
                x = blk.ln0(x)
            # ----- time mix
            xn = blk.ln1(x)
            x_prev = torch.cat([st.att_x_prev[l].unsqueeze(1), xn[:, :-1]], dim=1)
            st.att_x_prev[l] = xn[:, -1]
            rows, g, v_first = att.project(xn, x_prev, v_first)
            S_start = st.att_kv[l]
            if wkv == "chunked":
                y, st.att_kv[l], ctx = wkv_chunked.wkv_forward(S_start, *rows)
            else:
                y, st.att_kv[l] = self._wkv_loop(S_start, rows)
            r, _, k, v, _, _ = rows
            x = x + att.finish(y, r, k, v, g)
            # ----- channel mix / Meta-State layer
            xn = blk.ln2(x)
            x_prev = torch.cat([st.ffn_x_prev[l].unsqueeze(1), xn[:, :-1]], dim=1)
            st.ffn_x_prev[l] = xn[:, -1]
            kx = ffn.token_shift_input(xn, x_prev)
            u = None
            hs = ffn.sse_heads()
            if hs:
                if wkv == "chunked":
                    u = wkv_chunked.wkv_read(ctx, heads(kx, att.H))
                else:
                    u = self._sse_second_pass(S_start, rows, heads(kx, att.H), hs)
            x = x + ffn.ffn(kx, u)
        return self.head(self.ln_out(x))

    @staticmethod
    def _wkv_loop(S, rows):
        """Pass 1: the recurrence token by token; y (B,T,H,N), final S."""
        r, logw, k, v, kk, a = rows
        w = torch.exp(logw.reshape(r.shape))
        ys = []
        for t in range(r.shape[1]):
            y, S = wkv_step(S, r[:, t], w[:, t], k[:, t], v[:, t], kk[:, t], a[:, t])
            ys.append(y)
        return torch.stack(ys, dim=1), S

    @staticmethod
    def _sse_second_pass(S_start, rows, kx, hs):
        """Pass 2 of SPEC 3.3: rerun the recurrence of the SSE heads `hs` from
        the chunk-start state with the same rows, reading u_t = S_t kx_t.

        Same arithmetic as pass 1, so S_t is reproduced exactly. Heads not in
        hs get u = 0 (their gamma is 0, they contribute nothing).
        """
        r, logw, k, v, kk, a = rows
        w = torch.exp(logw.reshape(r.shape))
        idx = torch.tensor(hs)
        S = S_start[:, idx]
        u = torch.zeros_like(kx)
        for t in range(r.shape[1]):
            sel = lambda z: z[:, t][:, idx]  # noqa: E731
            _, S = wkv_step(S, sel(r), sel(w), sel(k), sel(v), sel(kk), sel(a))
            u[:, t, idx] = (S @ sel(kx).unsqueeze(-1)).squeeze(-1)
        return u

    def step(self, token, state):
        """SPEC 1.3 one-token forward (RNN mode); token (B,) -> logits (B,V).

        The MS-v0 read uses S after this token's update, per SPEC 3.3.
        """
        x = self.emb(token).unsqueeze(1)  # (B,1,C): the same modules, T = 1
        v_first = None
        for blk in self.blocks:
            l, att, ffn = blk.layer, blk.att, blk.ffn
            if l == 0:
                x = blk.ln0(x)
            xn = blk.ln1(x)
            x_prev = state.att_x_prev[l].unsqueeze(1)
            state.att_x_prev[l] = xn[:, 0]
            rows, g, v_first = att.project(xn, x_prev, v_first)
            r, logw, k, v, kk, a = (z[:, 0] for z in rows)
            y, state.att_kv[l] = wkv_step(state.att_kv[l], r, torch.exp(logw.reshape(r.shape)),
                                          k, v, kk, a)
            x = x + att.finish(y.unsqueeze(1), *(z.unsqueeze(1) for z in (r, k, v)), g)
            xn = blk.ln2(x)
            x_prev = state.ffn_x_prev[l].unsqueeze(1)
            state.ffn_x_prev[l] = xn[:, 0]
            kx = ffn.token_shift_input(xn, x_prev)
            u = None
            if ffn.sse_heads():
                u = (state.att_kv[l] @ heads(kx[:, 0], att.H).unsqueeze(-1)).squeeze(-1)
                u = u.unsqueeze(1)
            x = x + ffn.ffn(kx, u)
        return self.head(self.ln_out(x))[:, 0]

    def forward_rnn(self, tokens, state=None):
        """Runs tokens (B,T) one `step` at a time; logits (B,T,V)."""
        if state is None:
            state = self.new_state(tokens.shape[0])
        return torch.stack([self.step(tokens[:, t], state) for t in range(tokens.shape[1])], 1), state


def n_params(model):
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":  # manual use: rwkv7_ref.py MODEL 1,2,3 -> argmax per position
    import sys
    m = RWKV7.load(sys.argv[1])
    toks = torch.tensor([[int(t) for t in sys.argv[2].split(",")]])
    with torch.no_grad():
        lg, _ = m.forward_seq(toks)
    print(lg[0].argmax(-1).tolist(), f"(max |logit| {float(lg.abs().max()):.3f})")
