"""Run PyTorch's attention on the numpy-attention golden suite and write results for ``check``.

Usage (see docs/verify.md for the worked example)::

    numpy-attention vectors --out suite
    python examples/torch_adapter.py suite results-fp32 --dtype float32
    numpy-attention check results-fp32 --suite suite --dtype float32

Which PyTorch function produces which quantity:

- ``out``, ``dq``, ``dk``, ``dv``, ``d_attn_mask``:
  ``torch.nn.functional.scaled_dot_product_attention`` and autograd. The
  ``dropout`` case uses ``torch.ops.aten._scaled_dot_product_attention_math``,
  the one torch entry point that accepts a given dropout keep-mask.
- ``lse``: ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu``
  (the fused CPU kernel behind SDPA, which returns the log-sum-exp).
- ``weights``: ``torch.ops.aten._scaled_dot_product_attention_math`` (it
  returns the attention weights).
- cross-attention layer: ``torch.nn.MultiheadAttention`` with the suite's
  weights copied in (``need_weights=True, average_attn_weights=False``).
- weighted fusion: one ``nn.MultiheadAttention`` per branch, combined with
  the suite's branch weights (the fusion formula of docs/fusion.md).

Every convention difference is handled here, never by loosening tolerances:

- boolean masks: the suite's True = attend is SDPA's polarity; the internal
  ops need an additive float mask (0 / -inf) in the query's dtype, and
  ``nn.MultiheadAttention``'s ``key_padding_mask`` is True = *ignore*;
- causal alignment: ``is_causal=True`` is top-left; bottom-right uses
  ``torch.nn.attention.bias.causal_lower_right``;
- fully masked rows: the CPU flash kernel reports ``lse = 0`` there, the
  suite ``-inf``;
- GQA: ``enable_gqa=True`` (repeat_interleave order, as the suite);
  the flash op has no GQA, so key/value heads are repeated for it;
- layouts: the suite is (B, H, L, E) like SDPA; ``nn.MultiheadAttention``
  takes (B, L, E) with ``batch_first=True``, weights transposed
  (``nn.Linear`` computes ``x @ W.T``).

bfloat16 results are upcast to float32 before saving (NumPy has no
bfloat16; the upcast is exact). torch is imported here only; the package
never imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}  # fmt: skip


def tensor(a: np.ndarray, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
    """Make a leaf tensor of ``dtype`` from a suite array (exact: inputs are bf16-exact)."""
    t = torch.from_numpy(np.ascontiguousarray(a)).to(dtype)
    return t.requires_grad_(grad)


def to_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """float64/float32 stay; bfloat16 and float16 are upcast (exactly) to float32."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy().copy()


# ---------------------------------------------------------------------------
# Scaled dot-product attention cases
# ---------------------------------------------------------------------------


def allowed_keys(a: dict, L: int, S: int) -> np.ndarray:
    """Return the suite's boolean 'may attend' pattern (True = attend), broadcastable.

    The boolean ``attn_mask`` AND the positions: causal, and the variants' ``window``
    (-1 = unbounded side), ``chunk_size`` and ``sink_tokens`` (docs/variants.md).
    """
    d = S - L if bool(a.get("causal_bottom_right", False)) else 0
    i, j = np.arange(L)[:, None] + d, np.arange(S)[None, :]  # query i sits at key i + d
    local = np.ones((L, S), dtype=bool)
    if "window" in a:
        left, right = (int(w) for w in a["window"])
        local &= (j >= i - left) if left >= 0 else True
        local &= (j <= i + right) if right >= 0 else True
    if "chunk_size" in a:
        local &= i // int(a["chunk_size"]) == j // int(a["chunk_size"])
    if int(a.get("sink_tokens", 0)):
        local |= j < int(a["sink_tokens"])  # the first keys stay visible outside the window
    allowed = local
    mask = a.get("attn_mask")
    if mask is not None and mask.dtype == bool:
        allowed = allowed & mask
    if bool(a["is_causal"]):
        allowed = allowed & (j <= i)
    return allowed


def additive_mask(a: dict, L: int, S: int, dtype: torch.dtype) -> torch.Tensor:
    """Float mask for the internal ops: the bias (if any) plus -inf where keys are not allowed."""
    mask = a.get("attn_mask")
    bias = mask if mask is not None and mask.dtype != bool else 0.0
    allowed = allowed_keys(a, L, S)
    return tensor(np.where(allowed, bias, -np.inf), dtype)


def run_sdpa(a: dict, dtype: torch.dtype) -> dict:
    """One SDPA case: out and gradients via autograd, weights and lse via internal ops."""
    scale, gqa, p = float(a["scale"]), bool(a["enable_gqa"]), float(a["dropout_p"])
    q, k, v = (tensor(a[n], dtype, grad=True) for n in ("q", "k", "v"))
    L, S = q.shape[-2], k.shape[-2]
    mask = a.get("attn_mask")
    m = None
    if mask is not None:
        # bool: True = attend, SDPA's polarity, passed as is; float: an additive bias
        m = tensor(mask, torch.bool) if mask.dtype == bool else tensor(mask, dtype, grad=True)
    is_causal = bool(a["is_causal"])
    m_sdpa = m
    if is_causal and m is not None:  # SDPA refuses attn_mask with is_causal: fold it in
        causal = allowed_keys({"is_causal": True, "causal_bottom_right": a["causal_bottom_right"]},
                              L, S)  # fmt: skip
        m_sdpa = m & tensor(causal, torch.bool) if m.dtype == torch.bool else (
            m + tensor(np.where(causal, 0.0, -np.inf), dtype))  # fmt: skip
        is_causal = False
    elif is_causal and bool(a["causal_bottom_right"]):
        with warnings.catch_warnings():  # "will produce NaNs when L > S": not so on 2.13,
            warnings.simplefilter("ignore")  # fully masked rows give 0 (the suite checks it)
            m_sdpa, is_causal = causal_lower_right(L, S), False  # FlashAttention's alignment
    if p > 0:
        keep = tensor(a["dropout_mask"], torch.bool)
        masked = mask is not None or bool(a["is_causal"])  # causal folded into the float mask
        out, _ = torch.ops.aten._scaled_dot_product_attention_math(
            q, k, v, attn_mask=additive_mask(a, L, S, dtype) if masked else None,
            dropout_p=p, is_causal=False, dropout_mask=keep, scale=scale, enable_gqa=gqa,
        )  # fmt: skip
    else:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=m_sdpa, is_causal=is_causal, scale=scale, enable_gqa=gqa
        )
    out.backward(tensor(a["d_out"], dtype))
    with torch.no_grad():
        res = {"out": out, "dq": q.grad, "dk": k.grad, "dv": v.grad}
        if m is not None and mask is not None and mask.dtype != bool:
            res["d_attn_mask"] = m.grad
        res["weights"] = torch.ops.aten._scaled_dot_product_attention_math(
            q, k, v, attn_mask=additive_mask(a, L, S, dtype), scale=scale, enable_gqa=gqa
        )[1]
        res["lse"] = flash_lse(a, q, k, scale, dtype)
    return {n: to_numpy(t) for n, t in res.items()}


def flash_lse(a: dict, q: torch.Tensor, k: torch.Tensor, scale: float, dtype: torch.dtype
              ) -> torch.Tensor:  # fmt: skip
    """Return the CPU flash kernel's natural-log lse, fully masked rows mapped to -inf."""
    L, S = q.shape[-2], k.shape[-2]
    lead = q.shape[:-2]
    if k.shape[-3] != q.shape[-3]:  # the flash op has no GQA: repeat kv heads (interleave)
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    k = k.expand(lead + k.shape[-2:])
    v = k  # lse does not depend on v, and the op wants v's width to equal E
    mask = additive_mask(a, L, S, dtype).expand(lead + (L, S)).contiguous()
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask, scale=scale
    )
    dead = ~np.broadcast_to(allowed_keys(a, L, S), mask.shape).any(axis=-1)
    return lse.masked_fill(torch.from_numpy(np.ascontiguousarray(dead)), float("-inf"))


# ---------------------------------------------------------------------------
# The cross-attention layer and weighted fusion (nn.MultiheadAttention)
# ---------------------------------------------------------------------------


def make_mha(a: dict, prefix: str, dtype: torch.dtype) -> torch.nn.MultiheadAttention:
    """nn.MultiheadAttention holding the suite's weights ``{prefix}w_q``... (transposed)."""
    w_q, w_k, w_v, w_o = (a[f"{prefix}{n}"] for n in ("w_q", "w_k", "w_v", "w_o"))
    H = int(a["num_heads"])
    E, kdim = w_q.shape[1], w_k.shape[0]
    mha = torch.nn.MultiheadAttention(E, H, bias=True, kdim=kdim, vdim=w_v.shape[0],
                                      batch_first=True, dtype=dtype)  # fmt: skip
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            mha.in_proj_weight.copy_(tensor(np.concatenate([w_q.T, w_k.T, w_v.T]), dtype))
        else:
            mha.q_proj_weight.copy_(tensor(w_q.T, dtype))
            mha.k_proj_weight.copy_(tensor(w_k.T, dtype))
            mha.v_proj_weight.copy_(tensor(w_v.T, dtype))
        b = np.concatenate([a[f"{prefix}b_q"], a[f"{prefix}b_k"], a[f"{prefix}b_v"]])
        mha.in_proj_bias.copy_(tensor(b, dtype))
        mha.out_proj.weight.copy_(tensor(w_o.T, dtype))
        mha.out_proj.bias.copy_(tensor(a[f"{prefix}b_o"], dtype))
    return mha


def _grad(t: torch.Tensor | None) -> torch.Tensor:
    """Return the gradient of a parameter that took part in the backward (None is a bug)."""
    assert t is not None and t.grad is not None, "a parameter received no gradient"
    return t.grad


def mha_grads(mha: torch.nn.MultiheadAttention, prefix: str) -> dict:
    """Parameter gradients under the suite's names and layout (``x @ W + b``)."""
    E = mha.embed_dim
    if mha._qkv_same_embed_dim:
        w = _grad(mha.in_proj_weight)
        wq, wk, wv = w[:E], w[E : 2 * E], w[2 * E :]
    else:
        wq, wk, wv = (_grad(mha.q_proj_weight), _grad(mha.k_proj_weight),
                      _grad(mha.v_proj_weight))  # fmt: skip
    b = _grad(mha.in_proj_bias)
    return {
        f"d_{prefix}w_q": wq.T, f"d_{prefix}w_k": wk.T, f"d_{prefix}w_v": wv.T,
        f"d_{prefix}w_o": _grad(mha.out_proj.weight).T,
        f"d_{prefix}b_q": b[:E], f"d_{prefix}b_k": b[E : 2 * E], f"d_{prefix}b_v": b[2 * E :],
        f"d_{prefix}b_o": _grad(mha.out_proj.bias),
    }  # fmt: skip


def key_padding(a: dict, S: int) -> torch.Tensor | None:
    """nn.MultiheadAttention's key_padding_mask: True = IGNORE (the opposite polarity)."""
    if "key_lengths" not in a:
        return None
    return torch.from_numpy(np.arange(S)[None, :] >= a["key_lengths"][:, None])


def run_cross_attention(a: dict, dtype: torch.dtype) -> dict:
    """Run the cross-attention layer case with nn.MultiheadAttention."""
    x_q, x_kv = tensor(a["x_q"], dtype, grad=True), tensor(a["x_kv"], dtype, grad=True)
    mha = make_mha(a, "", dtype)
    out, w = mha(x_q, x_kv, x_kv, key_padding_mask=key_padding(a, x_kv.shape[1]),
                 need_weights=True, average_attn_weights=False)  # fmt: skip
    out.backward(tensor(a["d_out"], dtype))
    res = {"out": out, "weights": w, "d_x_q": x_q.grad, "d_x_kv": x_kv.grad}
    res.update(mha_grads(mha, ""))
    return {n: to_numpy(t) for n, t in res.items()}


def run_fusion(a: dict, dtype: torch.dtype) -> dict:
    """Weighted fusion: sum_r alpha_r * MHA_r(x, x, x), one nn.MultiheadAttention per branch."""
    x = tensor(a["x"], dtype, grad=True)
    alpha = tensor(a["alpha"], dtype, grad=True)
    mhas = [make_mha(a, f"branch{i}_", dtype) for i in range(alpha.shape[0])]
    outs = [m(x, x, x, need_weights=False)[0] for m in mhas]  # self-attention branches
    out = sum(alpha[i] * o for i, o in enumerate(outs))  # Eq. (4.1) of docs/fusion.md
    out.backward(tensor(a["d_out"], dtype))
    res = {"out": out, "d_x": x.grad, "d_alpha": alpha.grad}
    for i, m in enumerate(mhas):
        res.update(mha_grads(m, f"branch{i}_"))
    return {n: to_numpy(t) for n, t in res.items()}


# ---------------------------------------------------------------------------
# The variants (docs/variants.md): SDPA with a mask where it can, an eager formula where not
# ---------------------------------------------------------------------------


def eager_attention(a: dict, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    sinks: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Attention written out in torch ops: ``out, weights, lse`` (softcap, ALiBi, sinks).

    ``a`` holds the case's scalars and variant arrays; ``q (Hq.., L, E)``, ``k``, ``v``
    with the key/value heads of GQA repeated (``repeat_interleave``) here. In bfloat16 and
    float16 the scores and the softmax are float32 and ``P`` is rounded to the inputs' dtype
    for ``P V``, as FlashAttention and PyTorch's fused kernels compute.
    """
    L, S = q.shape[-2], k.shape[-2]
    if bool(a["enable_gqa"]) and k.shape[-3] != q.shape[-3]:
        G = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(G, dim=-3), v.repeat_interleave(G, dim=-3)
    low = q.dtype in (torch.bfloat16, torch.float16)  # softmax in float32, as fused kernels do
    s = (q @ k.transpose(-1, -2)).to(torch.float32 if low else q.dtype) * float(a["scale"])
    if "softcap" in a:
        c = float(a["softcap"])
        s = c * torch.tanh(s / c)  # Eq. (8.2), before masking
    if "alibi_slopes" in a:
        d = S - L if bool(a["causal_bottom_right"]) else 0
        dist = np.abs(np.arange(L)[:, None] + d - np.arange(S)[None, :]).astype(np.float64)
        slopes = tensor(a["alibi_slopes"], s.dtype)[:, None, None]
        s = s - slopes * tensor(dist, s.dtype)  # Eq. (8.4)
    s = s.masked_fill(~torch.from_numpy(np.ascontiguousarray(allowed_keys(a, L, S))), -torch.inf)
    m = s.amax(dim=-1, keepdim=True)
    if sinks is not None:
        sink = sinks.to(s.dtype)[:, None, None].expand(m.shape)
        m = torch.maximum(m, sink)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(s - m)
    total = e.sum(dim=-1, keepdim=True)
    if sinks is not None:
        total = total + torch.exp(sink - m)  # Eq. (8.9): the sink joins the denominator
    P = e / torch.where(total > 0, total, torch.ones_like(total))
    lse = (m + torch.log(total)).squeeze(-1)
    return P.to(v.dtype) @ v, P, lse


def run_variant(a: dict, dtype: torch.dtype) -> dict:
    """Run a variant case: SDPA with a bool or float (ALiBi) mask, or eager (softcap, sinks)."""
    q, k, v = (tensor(a[n], dtype, grad=True) for n in ("q", "k", "v"))
    sinks = tensor(a["sinks"], dtype, grad=True) if "sinks" in a else None
    L, S = q.shape[-2], k.shape[-2]
    if "softcap" in a or sinks is not None:
        out = eager_attention(a, q, k, v, sinks)[0]
    else:
        allowed = allowed_keys(a, L, S)
        m = tensor(allowed, torch.bool)
        if "alibi_slopes" in a:  # ALiBi as SDPA's float mask: -slope |i + d - j|, -inf outside
            with torch.no_grad():
                bias = eager_alibi(a, L, S, dtype)
            m = bias.masked_fill(~m, -torch.inf)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=float(a["scale"]),
                                             enable_gqa=bool(a["enable_gqa"]))  # fmt: skip
    out.backward(tensor(a["d_out"], dtype))
    res = {"out": out, "dq": q.grad, "dk": k.grad, "dv": v.grad}
    if sinks is not None:
        res["d_sinks"] = sinks.grad
    with torch.no_grad():
        _, res["weights"], res["lse"] = eager_attention(a, q, k, v, sinks)
    return {n: to_numpy(t) for n, t in res.items()}


def eager_alibi(a: dict, L: int, S: int, dtype: torch.dtype) -> torch.Tensor:
    """ALiBi's bias ``-slope_h |i + d - j|`` as a ``(Hq, L, S)`` float mask."""
    d = S - L if bool(a["causal_bottom_right"]) else 0
    dist = np.abs(np.arange(L)[:, None] + d - np.arange(S)[None, :])
    return tensor(-a["alibi_slopes"][:, None, None] * dist, dtype)


# ---------------------------------------------------------------------------
# Padded batches with NaN padding, packed (varlen) sequences: loops over sequences
# ---------------------------------------------------------------------------


def run_padded(a: dict, dtype: torch.dtype) -> dict:
    """NaN past each key length: attend over each batch row's real keys only.

    Dense SDPA with the padding mask leaks the NaN (its fused CPU kernel adds -inf to
    NaN scores, and P V multiplies NaN values by 0), so the keys are sliced per row, as
    FlashAttention's varlen kernel reads them.
    """
    q, k, v = (tensor(a[n], dtype, grad=True) for n in ("q", "k", "v"))
    S = k.shape[-2]
    outs, weights, lses = [], [], []
    for b, n in enumerate(a["key_lengths"].tolist()):
        sub = dict(a, attn_mask=None)
        o = F.scaled_dot_product_attention(q[b], k[b, :, :n], v[b, :, :n],
                                           is_causal=bool(a["is_causal"]),
                                           scale=float(a["scale"]))  # fmt: skip
        with torch.no_grad():
            _, P, lse = eager_attention(sub, q[b], k[b, :, :n], v[b, :, :n])
        outs.append(o)
        weights.append(F.pad(P, (0, S - n)))
        lses.append(lse)
    out = torch.stack(outs)
    out.backward(tensor(a["d_out"], dtype))
    res = {"out": out, "weights": torch.stack(weights), "lse": torch.stack(lses),
           "dq": q.grad, "dk": k.grad, "dv": v.grad}  # fmt: skip
    return {n: to_numpy(t) for n, t in res.items()}


def run_varlen(a: dict, dtype: torch.dtype) -> dict:
    """Packed sequences ``(T, H, E)``: one attention per sequence, ``lse`` as ``(Hq, Tq)``.

    With FlashAttention's varlen variants (window, softcap, ALiBi, sinks), per sequence.
    """
    q, k, v = (tensor(a[n], dtype, grad=True) for n in ("q", "k", "v"))
    sinks = tensor(a["sinks"], dtype, grad=True) if "sinks" in a else None
    cu_q, cu_k = a["cu_seqlens_q"].tolist(), a["cu_seqlens_k"].tolist()
    Hq, Ev = q.shape[1], v.shape[2]
    outs, lses = [], []
    for b in range(len(cu_q) - 1):
        qb = q[cu_q[b] : cu_q[b + 1]].transpose(0, 1)  # (Hq, L_b, E)
        kb, vb = (x[cu_k[b] : cu_k[b + 1]].transpose(0, 1) for x in (k, v))
        L, S = qb.shape[1], kb.shape[1]
        if L and not S:  # no key at all: output 0, lse -inf (or the sink alone)
            outs.append(torch.zeros(L, Hq, Ev, dtype=dtype))
            none = torch.full((Hq, L), -torch.inf, dtype=dtype)
            lses.append(none if sinks is None else sinks.detach()[:, None].expand(Hq, L))
        elif L:
            sub = {n: a[n] for n in ("scale", "is_causal", "causal_bottom_right", "enable_gqa",
                                     "window", "softcap", "alibi_slopes") if n in a}  # fmt: skip
            o, _, lse = eager_attention(sub, qb, kb, vb, sinks)
            outs.append(o.transpose(0, 1))
            lses.append(lse.detach())
    out = torch.cat(outs)
    out.backward(tensor(a["d_out"], dtype))
    res = {"out": out, "lse": torch.cat(lses, dim=1), "dq": q.grad, "dk": k.grad, "dv": v.grad}
    if sinks is not None:
        res["d_sinks"] = sinks.grad
    return {n: to_numpy(t) for n, t in res.items()}


# ---------------------------------------------------------------------------
# KV cache, split-KV merge, rotary (docs/serving.md)
# ---------------------------------------------------------------------------


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
           ) -> torch.Tensor:  # fmt: skip
    """Rotary embedding of the first ``R = 2 cos.shape[-1]`` features of ``x`` (rest kept)."""
    R = 2 * cos.shape[-1]
    xr, rest = x[..., :R], x[..., R:]
    if interleaved:  # GPT-J: pairs (2i, 2i + 1)
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        y = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    else:  # rotate-half (GPT-NeoX, Llama): pairs (i, i + R/2)
        x1, x2 = xr[..., : R // 2], xr[..., R // 2 :]
        y = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return torch.cat([y, rest], dim=-1)


def run_kvcache(a: dict, dtype: torch.dtype) -> dict:
    """Run a decoding step over a paged cache (flash_attn_with_kvcache), row by row.

    Rotary when the case has tables; window, softcap, ALiBi and sinks per row.
    """
    kc, vc = tensor(a["k_cache"], dtype).clone(), tensor(a["v_cache"], dtype).clone()
    q, k_new, v_new = (tensor(a[n], dtype) for n in ("q", "k_new", "v_new"))
    rotary = "rotary_cos" in a
    if rotary:
        cos, sin = tensor(a["rotary_cos"], dtype), tensor(a["rotary_sin"], dtype)
    sinks = tensor(a["sinks"], dtype) if "sinks" in a else None
    table, page, inter = a["block_table"], kc.shape[1], bool(a["rotary_interleaved"])
    B, L = q.shape[:2]
    outs, lses = [], []
    for b, n in enumerate(a["cache_seqlens"].tolist()):
        new = np.arange(n, n + L)  # the new tokens' positions
        blk, off = table[b, new // page], new % page
        kc[blk, off] = (
            rotate(k_new[b], cos[new][:, None], sin[new][:, None], inter) if rotary else k_new[b]
        )
        vc[blk, off] = v_new[b]
        at = new if bool(a["is_causal"]) else np.full(L, n)  # FlashAttention's query positions
        qb = rotate(q[b], cos[at][:, None], sin[at][:, None], inter) if rotary else q[b]
        qb = qb.transpose(0, 1)
        pos = np.arange(n + L)
        kb, vb = (c[table[b, pos // page], pos % page].transpose(0, 1) for c in (kc, vc))
        sub = {"scale": a["scale"], "is_causal": a["is_causal"], "causal_bottom_right": True,
               "enable_gqa": True, **{m: a[m] for m in ("window", "softcap", "alibi_slopes")
                                      if m in a}}  # fmt: skip
        o, _, lse = eager_attention(sub, qb, kb, vb, sinks)
        outs.append(o.transpose(0, 1))
        lses.append(lse)
    res = {"out": torch.stack(outs), "lse": torch.stack(lses), "k_cache_out": kc,
           "v_cache_out": vc}  # fmt: skip
    return {n: to_numpy(t) for n, t in res.items()}


def run_merge(a: dict, dtype: torch.dtype) -> dict:
    """Merge split-KV states: ``lse = logsumexp_c lse_c``, ``out = sum_c e^(lse_c - lse) O_c``."""
    outs, lses = tensor(a["outs"], dtype, grad=True), tensor(a["lses"], dtype, grad=True)
    empty = torch.isinf(lses)  # an empty chunk (lse_c = -inf) is not read, even if NaN
    m = lses.amax(dim=0).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(lses - m)
    total = e.sum(dim=0)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    lse = torch.where(total > 0, m + torch.log(safe), torch.full_like(m, -torch.inf))
    o = torch.where(empty[..., None], torch.zeros_like(outs), outs)
    out = ((e / safe)[..., None] * o).sum(dim=0)
    torch.autograd.backward([out, lse], [tensor(a["d_out"], dtype), tensor(a["d_lse"], dtype)])
    res = {"out": out, "lse": lse, "d_outs": outs.grad, "d_lses": lses.grad}
    return {n: to_numpy(t) for n, t in res.items()}


def run_rotary(a: dict, dtype: torch.dtype) -> dict:
    """Rotary embedding of ``x (B, L, H, E)`` with tables ``(L, R/2)``, and its gradient."""
    x = tensor(a["x"], dtype, grad=True)
    cos, sin = tensor(a["cos"], dtype)[:, None], tensor(a["sin"], dtype)[:, None]
    y = rotate(x, cos, sin, bool(a["interleaved"]))
    y.backward(tensor(a["d_out"], dtype))
    return {"out": to_numpy(y), "dx": to_numpy(x.grad)}


RUNNERS = {"sdpa": run_sdpa, "cross_attention": run_cross_attention, "fusion": run_fusion,
           "variant": run_variant, "padded": run_padded, "varlen": run_varlen,
           "kvcache": run_kvcache, "merge": run_merge, "rotary": run_rotary}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run every case of the suite in one dtype and write ``OUT/<case>.npz``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="directory written by 'numpy-attention vectors'")
    parser.add_argument("out", help="directory for the results (<case>.npz)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    manifest = json.loads((Path(args.suite) / "manifest.json").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for case in manifest["cases"]:
        runner = RUNNERS.get(case["kind"])
        if runner is None:
            print(f"skipping {case['name']}: no torch equivalent for kind {case['kind']!r}")
            continue
        with np.load(Path(args.suite) / case["file"], allow_pickle=False) as z:
            arrays = {n: z[n] for n in z.files if not n.startswith("expected_")}
        results = {
            n: r
            for n, r in runner(arrays, dtype).items()
            if r is not None and n in case["quantities"]
        }  # what the suite asks for

        np.savez(out / f"{case['name']}.npz", **results)
    print(f"wrote {args.dtype} results of {len(manifest['cases'])} cases to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
