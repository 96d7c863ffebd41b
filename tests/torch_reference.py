"""An eager torch float64 reference of attention and its variants, gradients by autograd.

Modelled on the kernels' own test references (read 2026-12-01):

- FlashAttention's ``attention_ref`` (Dao-AILab/flash-attention ``tests/test_flash_attn.py`` and
  ``hopper/test_util.py``, commit 0251105a): GQA by repeating each key/value head ``G`` times
  (``repeat(k, "b s h d -> b s (h g) d")``, i.e. ``repeat_interleave``), ``scores = q * scale @
  k^T``, ``softcap``: ``tanh(scores / softcap) * softcap`` right after the scale, then the masks
  by ``masked_fill(-inf)``, then ``+ attn_bias`` (ALiBi), the softmax, rows with every key
  masked set to 0, dropout as ``masked_fill(~dropout_mask, 0)`` times ``v / (1 - p)``.
- FlashAttention 4's ``attention_ref`` (``flash_attn/cute/testing.py``): ``learnable_sink`` per
  head, an lse that includes the sink.
- gpt-oss's ``eager_attention_forward`` (huggingface/transformers
  ``models/gpt_oss/modeling_gpt_oss.py``): the sink logit of each head is concatenated as one
  more key column (``torch.cat([attn_weights, sinks], dim=-1)``), the softmax is taken over the
  row with it, and the column is dropped (``probs[..., :-1]``).
- torch's flex_attention math reference (``torch/_higher_order_ops/flex_attention.py``,
  ``_math_attention_inner``): ``score_mod(score, b, h, q_idx, kv_idx)`` and
  ``mask_mod(b, h, q_idx, kv_idx)`` called on index tensors that broadcast to the scores.

Our layout ``(..., H, L, E)`` replaces FlashAttention's ``(B, L, H, E)``; the pipeline order is
the one of docs/variants.md (scale, softcap, score_mod, + float mask + ALiBi, the masks, softmax
with sinks, dropout, times V). The code is vectorized and shares nothing with the loop oracle
(tests/oracles.py) or with the package. Import it only after ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["attention_ref", "reference"]

NEG_INF = float("-inf")


def _index_grids(scores: torch.Tensor) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """``b, h, i, j`` index tensors broadcasting to ``scores (..., H, L, S)`` (flex's vmap axes).

    ``b`` numbers the batch axes flattened in C order; 2-D scores are batch 0, head 0.
    """
    L, S = scores.shape[-2:]
    i = torch.arange(L).reshape(L, 1)
    j = torch.arange(S).reshape(1, S)
    if scores.ndim == 2:
        return torch.tensor(0), torch.tensor(0), i, j
    batch, H = scores.shape[:-3], scores.shape[-3]
    b = torch.arange(math.prod(batch)).reshape(tuple(batch) + (1, 1, 1))
    h = torch.arange(H).reshape(H, 1, 1)
    return b, h, i, j


def _per_head(a: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """A per-head array ``(..., H)`` as ``(..., H, 1, 1)``; ``(1, 1)`` for 2-D scores."""
    return a.reshape(1, 1) if scores.ndim == 2 else a[..., None, None]


def _visible(
    scores: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    d: int,
    window: tuple[int | None, int | None] | None,
    chunk_size: int | None,
    sink_tokens: int,
    mask_mod: Callable[..., Any] | None,
) -> torch.Tensor:
    """bool mask AND causal AND ((window AND chunk) OR sink tokens) AND mask_mod."""
    b, h, i, j = _index_grids(scores)
    diag = i + d  # the key under query i
    local = torch.ones(scores.shape[-2:], dtype=torch.bool)
    if window is not None:
        left, right = window
        if left is not None:
            local = local & (j >= diag - left)
        if right is not None:
            local = local & (j <= diag + right)
    if chunk_size is not None:
        # FA3's construct_chunk_mask: col_limit_left = r - r % C, visible in [left, left + C)
        col_left = diag - torch.remainder(diag, chunk_size)
        local = local & (j >= col_left) & (j < col_left + chunk_size)
    seen = local | (j < sink_tokens)
    if is_causal:
        seen = seen & (j <= diag)
    seen = seen.expand(scores.shape)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        seen = seen & attn_mask
    if mask_mod is not None:
        seen = seen & torch.as_tensor(mask_mod(b, h, i, j), dtype=torch.bool)
    return seen


def _softmax_lse(
    scores: torch.Tensor, sinks: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, lse)`` of masked scores; with sinks, gpt-oss's extra column, dropped after."""
    if sinks is not None:
        sink_col = _per_head(sinks, scores).expand(scores.shape[:-1] + (1,))
        combined = torch.cat([scores, sink_col], dim=-1)
        return torch.softmax(combined, dim=-1)[..., :-1], torch.logsumexp(combined, dim=-1)
    dead = torch.all(scores == NEG_INF, dim=-1, keepdim=True)
    # FA's reference fills dead rows with 0 after the softmax; filling them before as well keeps
    # the softmax of an all -inf row (NaN) out of autograd's backward.
    safe = torch.where(dead, torch.zeros_like(scores), scores)
    P = torch.where(dead, torch.zeros_like(scores), torch.softmax(safe, dim=-1))
    return P, torch.logsumexp(scores, dim=-1)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    causal_align: str = "top_left",
    scale: float | None = None,
    enable_gqa: bool = False,
    dropout_p: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
    *,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    chunk_size: int | None = None,
    sink_tokens: int = 0,
    mask_mod: Callable[..., Any] | None = None,
    score_mod: Callable[..., Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, P, lse)`` in torch, differentiable in q, k, v, a float mask, slopes and sinks."""
    L, S = q.shape[-2], k.shape[-2]
    d = 0 if causal_align == "top_left" else S - L
    if enable_gqa:
        G = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(G, dim=-3), v.repeat_interleave(G, dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    scores = scores.expand(tuple(lead) + (L, S))
    b, h, i, j = _index_grids(scores)
    if score_mod is not None:
        scores = score_mod(scores, b, h, i, j)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores = scores + attn_mask
    if alibi_slopes is not None:
        # FA's attn_bias_from_alibi_slopes (non-causal form): -slope * |i + S - L - j|
        scores = scores - _per_head(alibi_slopes, scores) * torch.abs(i + d - j).to(scores.dtype)
    seen = _visible(scores, attn_mask, is_causal, d, window, chunk_size, sink_tokens, mask_mod)
    scores = scores.masked_fill(~seen, NEG_INF)
    P, lse = _softmax_lse(scores, sinks)
    P_d = P if dropout_mask is None else P.masked_fill(~dropout_mask, 0.0)
    out = torch.matmul(P_d, v * (1.0 / (1.0 - dropout_p)))
    return out, P, lse


def reference(d_out: Any, q: Any, k: Any, v: Any, **kwargs: Any) -> dict[str, Any]:
    """NumPy in, NumPy out: ``out, P, lse`` and the gradients of ``sum(out * d_out)``.

    Returns ``out``, ``P``, ``lse``, ``dq``, ``dk``, ``dv``, ``d_attn_mask`` (None unless the
    mask is a float bias), ``d_sinks`` (None without sinks), all float64 arrays.
    """
    t = {n: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
         for n, a in (("q", q), ("k", k), ("v", v))}  # fmt: skip
    kw = dict(kwargs)
    kw.pop("score_mod_grad", None)  # autograd differentiates score_mod itself
    leaves = dict(t)
    for name in ("attn_mask", "sinks", "alibi_slopes", "dropout_mask"):
        a = kw.get(name)
        if a is None:
            continue
        a = np.asarray(a)
        grad = a.dtype.kind == "f" and name != "alibi_slopes"
        kw[name] = torch.tensor(a, requires_grad=grad)
        if grad:
            leaves[name] = kw[name]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # int index tensor * python float -> float64
    try:
        out, P, lse = attention_ref(t["q"], t["k"], t["v"], **kw)
        out.backward(torch.tensor(np.asarray(d_out, np.float64)))
    finally:
        torch.set_default_dtype(default)

    def grad_of(name: str) -> np.ndarray | None:
        leaf = leaves.get(name)
        if leaf is None:
            return None
        return np.zeros(tuple(leaf.shape)) if leaf.grad is None else leaf.grad.numpy()

    return {
        "out": out.detach().numpy(), "P": P.detach().numpy(), "lse": lse.detach().numpy(),
        "dq": grad_of("q"), "dk": grad_of("k"), "dv": grad_of("v"),
        "d_attn_mask": grad_of("attn_mask"), "d_sinks": grad_of("sinks"),
    }  # fmt: skip
