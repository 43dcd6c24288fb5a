"""Chunked (parallel) form of the RWKV-7 WKV recurrence, for training speed.

Same function as running rwkv7_ref.wkv_step token by token; only the order of
floating-point operations differs (check_chunked.py measures the gap). Python
loops over T tokens are slow under autograd; here the loop runs over T/L
chunks and everything inside a chunk is batched matrix algebra.

Notation per head (state M = S, rows = value index, columns = key index):
    M_t = M_{t-1} diag(w_t) + (M_{t-1} alpha_t) beta_t^T + v_t k_t^T,   y_t = M_t r_t
with alpha = -kk and beta = kk * a (SPEC 1.3). Inside a chunk starting from M_0,
with c_t = sum_{tau<=t} log w_tau (per key channel) and D(t,s) = exp(c_t - c_s):
    u_t := M_{t-1} alpha_t
         = M_0 (e^{c_{t-1}} alpha_t) + sum_{s<t} u_s <beta_s, D(t-1,s) alpha_t>
                                      + v_s <k_s, D(t-1,s) alpha_t>
which is a unit lower-triangular linear system for the rows u_t. Then
    y_t   = M_0 (e^{c_t} r_t) + sum_{s<=t} u_s <beta_s, D(t,s) r_t> + v_s <k_s, D(t,s) r_t>
    M_end = M_0 diag(e^{c_L}) + sum_s (u_s beta_s^T + v_s k_s^T) diag(D(L,s)).
The pairwise sums <x_s, D(t,s) q_t> are matrix products: D(t,s) =
exp(c_t - m) * exp(m - c_s) with m the cumulative log-decay at the middle of
the chunk. |c_t - m| <= (L/2) * 0.6065, so with L = 16 no factor exceeds
e^4.9 ~ 130: each term keeps fp32 relative precision (no cancellation is
involved), and entries with s > t are masked after the product.

The same chunk data answers any other read S_t q_t (wkv_read): the MS-v0 SSE
needs S_t kx_t, where kx is only known after the time mix (SPEC 3.3).
"""
import torch

CHUNK = 16


def _pairwise(q, x, c_row, c_col, strict):
    """out[..., t, s] = sum_j q[t,j] x[s,j] exp(c_row[t,j] - c_col[s,j]) for s < t
    (strict) or s <= t, else 0; as one matrix product per chunk."""
    L = q.shape[-2]
    mid = c_col[..., L // 2:L // 2 + 1, :]
    out = (q * torch.exp(c_row - mid)) @ (x * torch.exp(mid - c_col)).transpose(-1, -2)
    mask = torch.ones(L, L, dtype=torch.bool).tril(-1 if strict else 0)
    return out * mask


def _to_chunks(z, L):
    """(B,T,H,N) -> (B,H,n,L,N), zero-padded at the end of T."""
    B, T, H, N = z.shape
    pad = (-T) % L
    if pad:
        z = torch.cat([z, z.new_zeros(B, pad, H, N)], dim=1)
    return z.reshape(B, -1, L, H, N).permute(0, 3, 1, 2, 4)


def _from_chunks(z, T):
    B, H, n, L, N = z.shape
    return z.permute(0, 2, 3, 1, 4).reshape(B, n * L, H, N)[:, :T]


def wkv_forward(S0, r, logw, k, v, kk, a, chunk=CHUNK):
    """y (B,T,H,N), final state (B,H,N,N) and a context for wkv_read.

    Padding steps have log w = 0 and zero vectors, so they leave the state as
    it is.
    """
    B, T, H, N = r.shape
    L = min(chunk, T)
    ch = lambda z: _to_chunks(z.reshape(B, T, H, N), L)  # noqa: E731
    r, logw, k, v, kk, a = map(ch, (r, logw, k, v, kk, a))
    alpha, beta = -kk, kk * a
    c = torch.cumsum(logw, dim=-2)             # inclusive, (B,H,n,L,N)
    c_prev = c - logw                          # exclusive
    c_end = c[..., -1:, :]                     # (B,H,n,1,N)
    # the triangular system for u, solved for both right-hand sides at once
    W_ab = _pairwise(alpha, beta, c_prev, c, strict=True)
    W_ak = _pairwise(alpha, k, c_prev, c, strict=True)
    eye = torch.eye(L, dtype=r.dtype)
    rhs = torch.cat([alpha * torch.exp(c_prev), W_ak @ v], dim=-1)
    PQ = torch.linalg.solve_triangular(eye - W_ab, rhs, upper=False, unitriangular=True)
    P, Q = PQ[..., :N], PQ[..., N:]
    # sequential over chunks: u rows and the state at every chunk start
    beta_end, k_end = beta * torch.exp(c_end - c), k * torch.exp(c_end - c)
    # (unbind once: slicing inside the loop would cost O(n^2) in backward)
    per_chunk = zip(*(z.unbind(2) for z in (P, Q, torch.exp(c_end), beta_end, v, k_end)))
    M, starts, us = S0, [], []
    for P_i, Q_i, decay_i, beta_i, v_i, k_i in per_chunk:
        starts.append(M)
        u = P_i @ M.transpose(-1, -2) + Q_i
        M = M * decay_i + u.transpose(-1, -2) @ beta_i + v_i.transpose(-1, -2) @ k_i
        us.append(u)
    ctx = dict(M0=torch.stack(starts, 2), U=torch.stack(us, 2), v=v, k=k, beta=beta, c=c, T=T, L=L)
    return wkv_read(ctx, r, chunked=True), M, ctx


def wkv_read(ctx, q, chunked=False):
    """S_t q_t for every t (S_t = state after token t), shape (B,T,H,N)."""
    if not chunked:
        q = _to_chunks(q, ctx["L"])
    c = ctx["c"]
    out = ((q * torch.exp(c)) @ ctx["M0"].transpose(-1, -2)
           + _pairwise(q, ctx["beta"], c, c, strict=False) @ ctx["U"]
           + _pairwise(q, ctx["k"], c, c, strict=False) @ ctx["v"])
    return _from_chunks(out, ctx["T"])
