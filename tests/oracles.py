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

This module deliberately imports nothing from ``numpy_attention``; numpy is
used only to hold inputs and results, never for the arithmetic.

The backward oracle uses the softmax Jacobian entry by entry,
``dS_ij = sum_k dP_ik P_ik (delta_kj - P_ij)``, not the package's
``D = rowsum(dO * O)`` shortcut, and accumulates broadcast/GQA gradients by
adding into the source index, not by ``sum`` over axes.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

__all__ = [
    "softmax_oracle",
    "log_softmax_oracle",
    "logsumexp_oracle",
    "attention_oracle",
    "attention_backward_oracle",
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


def _allowed(i: int, j: int, L: int, S: int, is_causal: bool, align: str) -> bool:
    """The causal condition ``j <= i + d``, ``d = 0`` (top-left) or ``S - L`` (bottom-right)."""
    if not is_causal:
        return True
    d = 0 if align == "top_left" else S - L
    return j <= i + d


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loop oracle of scaled dot-product attention: ``(out, P, lse)``.

    ``P`` is the softmax *before* dropout, shape ``(..., Hq, L, S)``; ``lse`` the
    natural-log log-sum-exp of each row of masked scores, shape ``(..., Hq, L)``.
    """
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    lead, G = _lead_shapes(q, k, v, enable_gqa)
    G = G if enable_gqa else 0
    s = 1.0 / math.sqrt(E) if scale is None else float(scale)
    mask = None if attn_mask is None else np.asarray(attn_mask)
    keep = None if dropout_mask is None else np.asarray(dropout_mask)
    out = np.zeros(tuple(lead) + (L, Ev))
    P = np.zeros(tuple(lead) + (L, S))
    lse = np.zeros(tuple(lead) + (L,))
    for idx in itertools.product(*(range(n) for n in lead)):
        qi = _src(idx, q.shape[:-2])
        ki = _kv_index(idx, k.shape[:-2], G)
        vi = _kv_index(idx, v.shape[:-2], G)
        for i in range(L):
            row = []
            for j in range(S):
                x = s * math.fsum(float(q[qi + (i, e)]) * float(k[ki + (j, e)]) for e in range(E))
                if not _allowed(i, j, L, S, is_causal, causal_align):
                    x = -math.inf
                elif mask is not None:
                    m = mask[_src(idx + (i, j), mask.shape)]
                    if mask.dtype == np.bool_:
                        x = x if m else -math.inf
                    else:
                        x = x + float(m)
                row.append(x)
            p = softmax_oracle(row)
            lse[idx + (i,)] = logsumexp_oracle(row)
            for j in range(S):
                P[idx + (i, j)] = p[j]
                if keep is not None:
                    z = bool(keep[_src(idx + (i, j), keep.shape)])
                    p[j] = p[j] / (1.0 - dropout_p) if z else 0.0
            for c in range(Ev):
                out[idx + (i, c)] = math.fsum(p[j] * float(v[vi + (j, c)]) for j in range(S))
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
) -> dict[str, np.ndarray | None]:
    """Loop oracle of the gradients ``dq, dk, dv, d_attn_mask`` (the last None unless float mask).

    Uses the explicit softmax Jacobian ``dP_i/dS_j = P_i (delta_ij - P_j)``.
    """
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    d_out = np.asarray(d_out, dtype=np.float64)
    _, P, _ = attention_oracle(
        q, k, v, attn_mask, is_causal, causal_align, scale, enable_gqa, dropout_p, dropout_mask
    )
    L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    lead, G = _lead_shapes(q, k, v, enable_gqa)
    G = G if enable_gqa else 0
    s = 1.0 / math.sqrt(E) if scale is None else float(scale)
    mask = None if attn_mask is None else np.asarray(attn_mask)
    keep = None if dropout_mask is None else np.asarray(dropout_mask)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    d_mask = None if mask is None or mask.dtype == np.bool_ else np.zeros(mask.shape)
    for idx in itertools.product(*(range(n) for n in lead)):
        qi = _src(idx, q.shape[:-2])
        ki = _kv_index(idx, k.shape[:-2], G)
        vi = _kv_index(idx, v.shape[:-2], G)
        for i in range(L):
            p = [float(P[idx + (i, j)]) for j in range(S)]
            z = [1.0] * S
            if keep is not None:
                z = [
                    (1.0 / (1.0 - dropout_p)) if keep[_src(idx + (i, j), keep.shape)] else 0.0
                    for j in range(S)
                ]
            g = [float(d_out[idx + (i, c)]) for c in range(Ev)]
            # out_ic = sum_j p_j z_j v_jc
            for j in range(S):
                for c in range(Ev):
                    dv[vi + (j, c)] += p[j] * z[j] * g[c]
            dp = [
                z[j] * math.fsum(g[c] * float(v[vi + (j, c)]) for c in range(Ev)) for j in range(S)
            ]
            # softmax Jacobian, entry by entry
            ds = [math.fsum(dp[t] * p[t] * ((t == j) - p[j]) for t in range(S)) for j in range(S)]
            for j in range(S):
                if d_mask is not None:
                    d_mask[_src(idx + (i, j), mask.shape)] += ds[j]
                for e in range(E):
                    dq[qi + (i, e)] += s * ds[j] * float(k[ki + (j, e)])
                    dk[ki + (j, e)] += s * ds[j] * float(q[qi + (i, e)])
    return {"dq": dq, "dk": dk, "dv": dv, "d_attn_mask": d_mask}
