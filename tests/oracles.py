r"""Independent oracles: the seed's formula as literal Python loops with ``math.exp``.

Section 3.1 of the seed document defines

.. math:: \mathrm{Attention}(Q, K, V)
          = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}}\right) V .

Here it is written out one batch index, head, query ``i`` and key ``j`` at a
time, with the conventions the package documents (docs/attention.md):
additive float bias, boolean mask (True = attend), causal mask with offset
``d`` (0 top-left, ``S - L`` bottom-right), GQA head mapping ``h // G``,
dropout keep-mask scaled by ``1 / (1 - p)``, a fully masked row gives output
0, weights 0 and ``lse = -inf``.

The variants of docs/variants.md (chapter 8) are written the same way, one
score at a time, in the documented pipeline order: ``x0 = scale q.k``, the
softcap ``x1 = c tanh(x0 / c)``, ``score_mod(x1, b, h, i, j)``, plus the float
mask, plus ALiBi ``-slope_h |i + d - j|``; then the visibility ``bool mask AND
causal AND ((window AND chunk) OR j < sink_tokens) AND mask_mod(b, h, i, j)``
(``-inf`` where hidden); the softmax with the per-head sink logit in the
denominator only; dropout; times V. ``b`` flattens the batch axes in C order.

This module deliberately imports nothing from ``numpy_attention``; numpy is
used only to hold inputs and results, never for the arithmetic (the user's
``score_mod`` / ``mask_mod`` are called on Python scalars, one entry at a time).

The backward oracle uses the softmax Jacobian entry by entry,
``dS_ij = sum_k dP_ik P_ik (delta_kj - P_ij)``, not the package's
``D = rowsum(dO * O)`` shortcut, and accumulates broadcast/GQA gradients by
adding into the source index, not by ``sum`` over axes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "softmax_oracle",
    "log_softmax_oracle",
    "logsumexp_oracle",
    "attention_oracle",
    "attention_backward_oracle",
    "Variants",
    "visible_oracle",
    "visibility_oracle",
]


# ---------------------------------------------------------------------------
# softmax of one row (a list of floats, -inf allowed)
# ---------------------------------------------------------------------------


def logsumexp_oracle(row: list[float]) -> float:
    """``log(sum_j exp(x_j))`` of one row; ``-inf`` for an all ``-inf`` (or empty) row."""
    finite = [x for x in row if x != -math.inf]
    if not finite:
        return -math.inf
    m = max(finite)
    return m + math.log(math.fsum(math.exp(x - m) for x in finite))


def softmax_oracle(row: list[float]) -> list[float]:
    """``exp(x_j) / sum_k exp(x_k)`` of one row; all zeros for an all ``-inf`` row."""
    lse = logsumexp_oracle(row)
    if lse == -math.inf:
        return [0.0 for _ in row]
    return [0.0 if x == -math.inf else math.exp(x - lse) for x in row]


def log_softmax_oracle(row: list[float]) -> list[float]:
    """``x_j - lse(x)``; ``-inf`` where ``x_j = -inf``."""
    lse = logsumexp_oracle(row)
    return [-math.inf if x == -math.inf else x - lse for x in row]


# ---------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------


def _src(index: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The entry of an array of ``shape`` that broadcasting maps to ``index`` (right-aligned)."""
    offset = len(index) - len(shape)
    return tuple(0 if n == 1 else index[offset + t] for t, n in enumerate(shape))


def _lead_shapes(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, enable_gqa: bool
) -> tuple[tuple[int, ...], int]:
    """The broadcast (batch..., heads) shape of the scores, and the GQA group size G."""
    if not enable_gqa:
        return np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]), 1
    Hq, Hkv = q.shape[-3], k.shape[-3]
    batch = np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    return tuple(batch) + (Hq,), Hq // Hkv


def _kv_index(lead: tuple[int, ...], shape: tuple[int, ...], G: int) -> tuple[int, ...]:
    """Index into the leading axes of k or v for the scores' leading index ``lead``.

    With GQA (``G > 1`` or ``enable_gqa``) query head ``h`` reads key/value head ``h // G``.
    """
    if G == 0:  # no GQA: heads broadcast like batch axes
        return _src(lead, shape)
    batch, h = lead[:-1], lead[-1]
    return _src(batch, shape[:-1]) + (h // G,)


def _offset(L: int, S: int, align: str) -> int:
    """The diagonal offset ``d``: 0 top-left, ``S - L`` bottom-right (causal, window, chunk,
    ALiBi)."""
    return 0 if align == "top_left" else S - L


def _allowed(i: int, j: int, L: int, S: int, is_causal: bool, align: str) -> bool:
    """The causal condition ``j <= i + d``, ``d = 0`` (top-left) or ``S - L`` (bottom-right)."""
    if not is_causal:
        return True
    return j <= i + _offset(L, S, align)


# ---------------------------------------------------------------------------
# Variants (docs/variants.md): window, softcap, ALiBi, sinks, chunks, sink tokens, mods
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Variants:
    """The variant keywords, as the oracles read them (no validation: the oracle trusts them)."""

    window: tuple[int | None, int | None] | None = None
    softcap: float | None = None
    alibi_slopes: np.ndarray | None = None
    sinks: np.ndarray | None = None
    chunk_size: int | None = None
    sink_tokens: int = 0
    mask_mod: Callable[..., Any] | None = None
    score_mod: Callable[..., Any] | None = None
    score_mod_grad: Callable[..., Any] | None = None


def _batch_head(idx: tuple[int, ...], lead: tuple[int, ...]) -> tuple[int, int]:
    """``(b, h)`` of a scores index: ``b`` the batch axes flattened in C order, ``h`` the head.

    Scores without a head axis (2-D inputs) are batch 0, head 0.
    """
    if not lead:
        return 0, 0
    b = 0
    for n, t in zip(lead[:-1], idx[:-1], strict=True):
        b = b * n + t
    return b, idx[-1]


def _per_head(a: np.ndarray, idx: tuple[int, ...]) -> float:
    """The entry of a per-head array (slopes ``(..., Hq)``, sinks ``(Hq,)``) for scores ``idx``."""
    return float(a[_src(idx if idx else (0,), a.shape)])


def _window_ok(i: int, j: int, d: int, window: tuple[int | None, int | None] | None) -> bool:
    """``i + d - left <= j <= i + d + right``; a None side is unbounded."""
    if window is None:
        return True
    left, right = window
    return (left is None or j >= i + d - left) and (right is None or j <= i + d + right)


def _chunk_ok(i: int, j: int, d: int, chunk_size: int | None) -> bool:
    """``(i + d) // C == j // C`` (floor division: a negative ``i + d`` is in no key's chunk)."""
    return chunk_size is None or (i + d) // chunk_size == j // chunk_size


def visible_oracle(
    i: int,
    j: int,
    L: int,
    S: int,
    *,
    is_causal: bool = False,
    causal_align: str = "top_left",
    window: tuple[int | None, int | None] | None = None,
    chunk_size: int | None = None,
    sink_tokens: int = 0,
) -> bool:
    """Whether query ``i`` sees key ``j`` under the positional masks (no bool mask, no mask_mod).

    ``causal AND ((window AND chunk) OR j < sink_tokens)``, all with the same offset ``d``.
    """
    d = _offset(L, S, causal_align)
    local = _window_ok(i, j, d, window) and _chunk_ok(i, j, d, chunk_size)
    return _allowed(i, j, L, S, is_causal, causal_align) and (local or j < sink_tokens)


def visibility_oracle(L: int, S: int, **kwargs: Any) -> np.ndarray:
    """The ``(L, S)`` bool array of :func:`visible_oracle` (True = the key takes part)."""
    out = np.zeros((L, S), dtype=bool)
    for i in range(L):
        for j in range(S):
            out[i, j] = visible_oracle(i, j, L, S, **kwargs)
    return out


@dataclass(frozen=True)
class _Call:
    """Everything one oracle call needs, resolved once."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None
    keep: np.ndarray | None
    is_causal: bool
    align: str
    scale: float
    lead: tuple[int, ...]
    G: int  # 0 without GQA (heads broadcast), else Hq // Hkv
    var: Variants


def _resolve(
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any,
    is_causal: bool,
    causal_align: str,
    scale: float | None,
    enable_gqa: bool,
    dropout_mask: Any,
    var: Variants,
) -> _Call:
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    lead, G = _lead_shapes(q, k, v, enable_gqa)
    return _Call(
        q=q, k=k, v=v,
        mask=None if attn_mask is None else np.asarray(attn_mask),
        keep=None if dropout_mask is None else np.asarray(dropout_mask),
        is_causal=is_causal, align=causal_align,
        scale=1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale),
        lead=tuple(lead), G=G if enable_gqa else 0, var=var,
    )  # fmt: skip


def _entry(c: _Call, idx: tuple[int, ...], i: int, j: int) -> tuple[float, float, float]:
    """Scores of one (query, key) pair: ``(x0, x1, x)``.

    ``x0 = scale q.k``, ``x1 = softcap(x0)``, ``x`` the final logit: ``score_mod(x1)`` plus the
    float mask plus ALiBi, or ``-inf`` where a mask hides the key.
    """
    L, S, E = c.q.shape[-2], c.k.shape[-2], c.q.shape[-1]
    qi, ki = _src(idx, c.q.shape[:-2]), _kv_index(idx, c.k.shape[:-2], c.G)
    x0 = c.scale * math.fsum(float(c.q[qi + (i, e)]) * float(c.k[ki + (j, e)]) for e in range(E))
    cap = c.var.softcap
    x1 = x0 if cap is None else cap * math.tanh(x0 / cap)
    b, h = _batch_head(idx, c.lead)
    x = x1 if c.var.score_mod is None else float(c.var.score_mod(x1, b, h, i, j))
    seen = visible_oracle(
        i, j, L, S, is_causal=c.is_causal, causal_align=c.align, window=c.var.window,
        chunk_size=c.var.chunk_size, sink_tokens=c.var.sink_tokens,
    )  # fmt: skip
    if c.mask is not None:
        m = c.mask[_src(idx + (i, j), c.mask.shape)]
        if c.mask.dtype == np.bool_:
            seen = seen and bool(m)
        else:
            x = x + float(m)
    if c.var.alibi_slopes is not None:
        d = _offset(L, S, c.align)
        x = x - _per_head(c.var.alibi_slopes, idx) * abs(i + d - j)
    if c.var.mask_mod is not None:
        seen = seen and bool(c.var.mask_mod(b, h, i, j))
    return x0, x1, (x if seen else -math.inf)


def _row_softmax(row: list[float], sink: float | None) -> tuple[list[float], float, float]:
    """``(P, lse, P_sink)`` of one row; the sink logit joins the denominator only.

    Without a sink, an all ``-inf`` row gives ``P = 0``, ``lse = -inf``; with one, ``lse = sink``
    and ``P_sink = 1``.
    """
    if sink is None:
        return softmax_oracle(row), logsumexp_oracle(row), 0.0
    lse = logsumexp_oracle(row + [sink])
    p = [0.0 if x == -math.inf else math.exp(x - lse) for x in row]
    return p, lse, math.exp(sink - lse)


def _keep_factors(c: _Call, idx: tuple[int, ...], i: int, S: int, dropout_p: float) -> list[float]:
    """The dropout factor of each key of row ``i``: ``1/(1-p)`` kept, 0 dropped, 1 without."""
    if c.keep is None:
        return [1.0] * S
    return [
        (1.0 / (1.0 - dropout_p)) if c.keep[_src(idx + (i, j), c.keep.shape)] else 0.0
        for j in range(S)
    ]


def attention_oracle(
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any = None,
    is_causal: bool = False,
    causal_align: str = "top_left",
    scale: float | None = None,
    enable_gqa: bool = False,
    dropout_p: float = 0.0,
    dropout_mask: Any = None,
    **variants: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loop oracle of scaled dot-product attention and its variants: ``(out, P, lse)``.

    ``P`` is the softmax *before* dropout, shape ``(..., Hq, L, S)``; ``lse`` the
    natural-log log-sum-exp of each row of masked scores (the sink included), shape
    ``(..., Hq, L)``. ``variants`` are the keywords of :class:`Variants` (``window``,
    ``softcap``, ``alibi_slopes``, ``sinks``, ``chunk_size``, ``sink_tokens``, ``mask_mod``,
    ``score_mod``; ``score_mod_grad`` is accepted and unused).
    """
    c = _resolve(q, k, v, attn_mask, is_causal, causal_align, scale, enable_gqa, dropout_mask,
                 Variants(**variants))  # fmt: skip
    L, S, Ev = c.q.shape[-2], c.k.shape[-2], c.v.shape[-1]
    out = np.zeros(c.lead + (L, Ev))
    P = np.zeros(c.lead + (L, S))
    lse = np.zeros(c.lead + (L,))
    sinks = c.var.sinks
    for idx in itertools.product(*(range(n) for n in c.lead)):
        vi = _kv_index(idx, c.v.shape[:-2], c.G)
        sink = None if sinks is None else _per_head(np.asarray(sinks, np.float64), idx)
        for i in range(L):
            row = [_entry(c, idx, i, j)[2] for j in range(S)]
            p, lse[idx + (i,)], _ = _row_softmax(row, sink)
            z = _keep_factors(c, idx, i, S, dropout_p)
            for j in range(S):
                P[idx + (i, j)] = p[j]
            for e in range(Ev):
                out[idx + (i, e)] = math.fsum(p[j] * z[j] * float(c.v[vi + (j, e)])
                                              for j in range(S))  # fmt: skip
    return out, P, lse


def attention_backward_oracle(
    d_out: Any,
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any = None,
    is_causal: bool = False,
    causal_align: str = "top_left",
    scale: float | None = None,
    enable_gqa: bool = False,
    dropout_p: float = 0.0,
    dropout_mask: Any = None,
    **variants: Any,
) -> dict[str, np.ndarray | None]:
    """Loop oracle of the gradients ``dq, dk, dv, d_attn_mask, d_sinks``.

    ``d_attn_mask`` is None unless the mask is a float bias, ``d_sinks`` None without sinks.
    The softmax is differentiated with its explicit Jacobian over the row *and* the sink
    column, ``dP_t/dx_j = P_t (delta_tj - P_j)``, the sink's ``dP`` being 0 (it has no value
    row); then through ``score_mod`` (times ``score_mod_grad``) and the softcap (times
    ``1 - tanh(x0 / c)^2``) to ``dq = scale sum_j dx0_j k_j`` and ``dk``.
    """
    c = _resolve(q, k, v, attn_mask, is_causal, causal_align, scale, enable_gqa, dropout_mask,
                 Variants(**variants))  # fmt: skip
    d_out = np.asarray(d_out, dtype=np.float64)
    L, E, S, Ev = c.q.shape[-2], c.q.shape[-1], c.k.shape[-2], c.v.shape[-1]
    dq, dk, dv = np.zeros(c.q.shape), np.zeros(c.k.shape), np.zeros(c.v.shape)
    mask = c.mask
    mask_shape = () if mask is None else mask.shape
    d_mask: Any = None if mask is None or mask.dtype == np.bool_ else np.zeros(mask_shape)
    sinks = None if c.var.sinks is None else np.asarray(c.var.sinks, np.float64)
    sinks_shape = (1,) if sinks is None else sinks.shape
    d_sinks: Any = None if sinks is None else np.zeros(sinks_shape)
    for idx in itertools.product(*(range(n) for n in c.lead)):
        qi = _src(idx, c.q.shape[:-2])
        ki = _kv_index(idx, c.k.shape[:-2], c.G)
        vi = _kv_index(idx, c.v.shape[:-2], c.G)
        b, h = _batch_head(idx, c.lead)
        sink = None if sinks is None else _per_head(sinks, idx)
        for i in range(L):
            scores = [_entry(c, idx, i, j) for j in range(S)]
            p, _, p_sink = _row_softmax([x for _, _, x in scores], sink)
            z = _keep_factors(c, idx, i, S, dropout_p)
            g = [float(d_out[idx + (i, e)]) for e in range(Ev)]
            # out_ie = sum_j p_j z_j v_je
            for j in range(S):
                for e in range(Ev):
                    dv[vi + (j, e)] += p[j] * z[j] * g[e]
            dp = [z[j] * math.fsum(g[e] * float(c.v[vi + (j, e)]) for e in range(Ev))
                  for j in range(S)]  # fmt: skip
            # softmax Jacobian over the row and the sink column (whose dP is 0), entry by entry
            dx = [math.fsum(dp[t] * p[t] * ((t == j) - p[j]) for t in range(S)) for j in range(S)]
            if d_sinks is not None:
                d_sinks[_src(idx if idx else (0,), sinks_shape)] += math.fsum(
                    dp[t] * p[t] * (0.0 - p_sink) for t in range(S)
                )
            for j in range(S):
                x0, x1, x = scores[j]
                if x == -math.inf:
                    continue  # a hidden key: P_j = 0, no gradient
                if d_mask is not None:
                    d_mask[_src(idx + (i, j), mask_shape)] += dx[j]
                d1 = dx[j]
                if c.var.score_mod is not None:
                    grad = c.var.score_mod_grad
                    if grad is None:
                        raise ValueError("the oracle needs score_mod_grad for score_mod")
                    d1 = d1 * float(grad(x1, b, h, i, j))
                cap = c.var.softcap
                d0 = d1 if cap is None else d1 * (1.0 - math.tanh(x0 / cap) ** 2)
                for e in range(E):
                    dq[qi + (i, e)] += c.scale * d0 * float(c.k[ki + (j, e)])
                    dk[ki + (j, e)] += c.scale * d0 * float(c.q[qi + (i, e)])
    return {"dq": dq, "dk": dk, "dv": dv, "d_attn_mask": d_mask, "d_sinks": d_sinks}
