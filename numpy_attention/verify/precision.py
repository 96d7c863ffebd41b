r"""The precision model: what a naive implementation in the candidate's dtype gets wrong.

A low-precision candidate is judged against the error of a *same-precision
reference*, as FlashAttention's and PyTorch's own test suites do:

.. math:: \max_\iota |\mathrm{cand}_\iota - \mathrm{ref}_\iota| \le
   \xi \, \mathrm{err}_\mathrm{naive} + \mathrm{u} \max_{\iota'} |\mathrm{ref}_{\iota'}|

where ``cand`` is the candidate's array, ``ref`` the float64 truth, ``iota``
an entry, ``err_naive`` the largest error of a naive attention computed in the
same dtype (:func:`emulate_sdpa`) against that truth, ``xi`` a factor per
quantity (:data:`BASELINE_FACTORS`) and ``u`` the dtype's unit roundoff
(Eq. (7.3) of ``docs/verify.md``; the letters are those of its glossary).

How the baseline is emulated in NumPy (:func:`emulate_sdpa`): the inputs are
rounded to the dtype first (the suite's inputs are exactly representable in
bfloat16 and float16, so the float64 truth of the suite *is* the truth of the
rounded inputs, attention-gym#242); then every operation of PyTorch's math
SDPA (matmul, scaling, mask, softmax, dropout, each backward step) reads
values of the dtype, computes in float32 (float64 for float64: products and
sums in float32, as bfloat16 and float16 kernels accumulate) and rounds its
result to the dtype. The variants are written as a naive same-dtype PyTorch
implementation writes them (FlashAttention's ``attention_ref`` without upcast,
gpt-oss's sink attention): softcap ``c tanh(S / c)`` a rounded step at a time,
ALiBi's bias rounded and added, windows, chunks and sink tokens as masks, the
sinks as an extra logit column of the softmax. bfloat16 is rounded by
:func:`round_to_bfloat16` (pure NumPy); the float8 formats come from
``ml_dtypes``, imported only when asked.

- :data:`BASELINE_FACTORS`, :data:`UNIT_ROUNDOFF`, :func:`rounding`.
- :func:`emulate_sdpa`: the naive same-dtype forward and backward of one case.
- :func:`baseline_errors`: ``err_naive`` per dtype and quantity for a case, as the
  suite's manifest stores them; the serving cases too (padded, varlen and the paged
  decoding step through :func:`emulate_sdpa`; the split-KV merge and rotary a rounded step
  at a time) and the layer cases (``nn.MultiheadAttention`` written naively, a rounded step
  at a time around :func:`emulate_sdpa`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..masks import Positions
from .tolerance import DTYPES, round_significand, round_to_bfloat16

__all__ = [
    "BASELINE_FACTORS",
    "UNIT_ROUNDOFF",
    "POLICIES",
    "LOW_PRECISION",
    "EMULATED_KINDS",
    "rounding",
    "emulate_sdpa",
    "baseline_errors",
    "baseline_factor",
]

#: The kinds of case :func:`emulate_sdpa` models, so that :func:`baseline_errors` gives them a
#: baseline: scaled dot-product attention, with or without the variants of docs/variants.md, a
#: padded batch (its NaN padding read as 0), packed sequences (one attention per sequence), a
#: decoding step over a paged rotary KV cache, a split-KV merge, rotary embedding alone, and
#: (since 2026-12-04) the cross-attention layer and the weighted fusion of self-attention layers.
EMULATED_KINDS = ("sdpa", "variant", "padded", "varlen", "kvcache", "merge", "rotary",
                  "cross_attention", "fusion")  # fmt: skip

#: The two ways ``check`` judges a quantity (``docs/verify.md``, "Tolerance policy").
POLICIES = ("baseline", "absolute")

#: The dtypes the baseline policy judges; float32 and float64 keep the absolute policy (their
#: naive baseline sums in the reference's own order and is about one ulp: see docs/verify.md).
LOW_PRECISION = ("float16", "bfloat16")

#: ``xi`` of Eq. (7.3): forward quantities 2 (FlashAttention-2's factor for ``out``),
#: gradients 3 (its factor for ``dq``, ``dk``, ``dv``); measured in ``docs/verify.md``.
BASELINE_FACTORS = {"forward": 2.0, "gradient": 3.0}

#: Unit roundoff ``u = 2^-p`` of each dtype (``p`` significant bits, the implicit one counted).
UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
    "float8_e4m3fn": 2.0**-4,
    "float8_e5m2": 2.0**-3,
}


def baseline_factor(quantity: str) -> float:
    """Return ``xi`` of Eq. (7.3): 2 for ``out``, ``weights``, ``lse``; 3 for gradients (``d...``).

    Examples
    --------
    >>> baseline_factor("out"), baseline_factor("dk")
    (2.0, 3.0)
    """
    return BASELINE_FACTORS["gradient" if quantity.startswith("d") else "forward"]


#: What :func:`rounding` returns: an array rounded to the dtype, held in its accumulator dtype.
Rounding = Callable[[Any], NDArray[np.floating]]


def rounding(dtype: str) -> Rounding:
    """Return the function rounding an array to ``dtype``, held in its accumulator dtype.

    float64 values stay float64; every other dtype's values are returned as
    float32 (exact: each of them is a float32 value).

    Parameters
    ----------
    dtype : str
        One of :data:`~numpy_attention.verify.DTYPES`, or ``"float8_e4m3fn"``,
        ``"float8_e5m2"`` (these need ``ml_dtypes``).

    Returns
    -------
    round : callable

    Raises
    ------
    ValueError
        If ``dtype`` is unknown.
    ImportError
        For a float8 format without ``ml_dtypes`` installed.

    Examples
    --------
    >>> rounding("bfloat16")(np.array([1 + 2.0**-9, 3.14159])).tolist()
    [1.0, 3.140625]
    """
    if dtype == "float64":
        return lambda x: np.asarray(x, dtype=np.float64)
    if dtype == "float32":
        return lambda x: np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        return _round_to_float16
    if dtype == "bfloat16":
        return round_to_bfloat16
    if dtype in ("float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes  # optional: only the float8 formats need it

        fmt = getattr(ml_dtypes, dtype)
        return lambda x: np.asarray(x, dtype=np.float32).astype(fmt).astype(np.float32)
    raise ValueError(f"dtype must be one of {DTYPES} or a float8 format, got {dtype!r}")


def _round_to_float16(x: Any) -> NDArray[np.float32]:
    """Round to the nearest float16 (ties to even), returned as float32: NumPy's ``astype``.

    On the bits (:func:`~numpy_attention.verify.tolerance.round_significand`, 11 bits), with
    float16's subnormals (``|x| < 2^-14``: multiples of ``2^-24``, the ulp of ``0.5`` in
    float32, so ``(|x| + 0.5) - 0.5`` rounds them) and overflow (above 65504: inf) on top:
    4 times faster than ``x.astype(np.float16).astype(np.float32)`` on attention weights,
    whose many subnormals take NumPy's slow path (11 against 45 ns per entry on an AMD Zen 3).
    """
    a = np.asarray(x, dtype=np.float32)
    y = round_significand(a, 11)
    s = np.abs(a)
    tiny = s < 2.0**-14
    if tiny.any():
        with np.errstate(invalid="ignore"):  # a signalling NaN, put back below
            s += 0.5
        s -= 0.5
        y = np.where(tiny, np.copysign(s, a, out=s), y)
    big = np.abs(y) > 65504
    if big.any():
        y = np.where(big, np.copysign(np.float32(np.inf), a), y)
    nan = np.isnan(a)
    return np.where(nan, a, y) if nan.any() else y


def _sum_to(g: NDArray[np.floating], shape: tuple[int, ...]) -> NDArray[np.floating]:
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _per_head(g: NDArray[np.floating]) -> NDArray[np.floating]:
    """Sum ``g (..., Hq, n)`` to ``(Hq,)``: over the rows and every batch dimension."""
    return g.sum(axis=tuple(range(g.ndim - 2)) + (g.ndim - 1,))


@dataclass(frozen=True)
class _Variants:
    """A case's variants as a naive implementation holds them (docs/variants.md)."""

    pos: Positions  # causal, window, chunk_size, sink_tokens, with the offset d of Eq. (2.6)
    softcap: float | None  # c of Eq. (8.2)
    alibi: NDArray[np.floating] | None  # slopes (..., Hq, 1, 1) in the dtype, Eq. (8.4)
    sinks: NDArray[np.floating] | None  # one logit per query head (Hq,) in the dtype, Eq. (8.9)


def _variants(inputs: Mapping[str, Any], r: Rounding, L: int, S: int) -> _Variants:
    """Read the variants of a case's inputs (``window`` (2,), -1 an unbounded side)."""
    window: tuple[int | None, int | None] | None = None
    w = inputs.get("window")
    if w is not None:
        # the suite's (left, right) with -1 unbounded, or attention_forward's with None
        left, right = (None if x is None or int(x) < 0 else int(x) for x in np.ravel(w))
        window = (left, right)
    chunk, cap = inputs.get("chunk_size"), inputs.get("softcap")
    slopes, sinks = inputs.get("alibi_slopes"), inputs.get("sinks")
    pos = Positions(
        offset=S - L if bool(inputs["causal_bottom_right"]) else 0,
        is_causal=bool(inputs["is_causal"]),
        window=window,
        chunk_size=None if chunk is None else int(chunk),
        sink_tokens=int(inputs.get("sink_tokens", 0)),
    )
    return _Variants(
        pos=pos,
        softcap=None if cap is None else float(cap),
        alibi=None if slopes is None else r(slopes)[..., None, None],
        sinks=None if sinks is None else r(sinks),
    )


def _scores(
    qi: NDArray[np.floating], kT: NDArray[np.floating], i0: int, scale: float, r: Rounding,
    var: _Variants, bias: Any = None, keys: Any = None, cols: NDArray[np.intp] | None = None,
) -> tuple[NDArray[np.floating], NDArray[np.floating] | None]:  # fmt: skip
    """Return the masked scores of queries ``i0:`` (``qi``) and the cap's ``tanh`` (or None).

    ``kT`` holds the keys ``cols`` (default all of them, ``0..S-1``), in that order.

    Each step rounded to the dtype, in the truth's order: ``S = q k^T``, ``* scale``, the cap
    ``c tanh(S / c)`` (``/ c``, ``tanh``, ``* c``, Eq. (8.2)), ``+ bias`` (the float mask),
    ``+ ALiBi`` (``-m_h |i + d - j|``, itself rounded, Eq. (8.4)), then ``-inf`` where the bool
    mask ``keys`` or the positions (causal, window, chunk, sink tokens, Eq. (8.8)) hide a key.
    """
    s = r(r(qi @ kT) * scale)
    y = None
    if var.softcap is not None:
        y = r(np.tanh(r(s / var.softcap)))
        s = r(y * var.softcap)
    if bias is not None:
        s = r(s + bias)
    i = np.arange(i0, i0 + qi.shape[-2])[:, None]
    j = (np.arange(kT.shape[-1]) if cols is None else cols)[None, :]
    if var.alibi is not None:
        s = r(s + r(-var.alibi * np.abs(i + var.pos.offset - j)))
    allowed = var.pos.mask(i, j)
    if keys is not None:
        allowed = keys if allowed is None else allowed & keys
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    return s, y


def _softmax(s: NDArray[np.floating]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Softmax over keys and its log-sum-exp in the accumulator dtype; dead rows give 0, -inf."""
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    total = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = (m + np.log(total))[..., 0]
    return e / np.where(total > 0, total, 1), lse


def _softmax_sinks(
    s: NDArray[np.floating], sinks: NDArray[np.floating] | None, r: Rounding
) -> tuple[NDArray[np.floating], NDArray[np.floating] | None, NDArray[np.floating]]:
    """``P`` (rounded), the sinks' weights (rounded; None without sinks) and ``lse``.

    With sinks, as gpt-oss's reference: the sink logit is an extra column of the scores, the
    softmax runs over ``S + 1`` columns and the last one is dropped from ``P`` (Eq. (8.9)).
    """
    if sinks is None:
        P, lse = _softmax(s)
        return r(P), None, lse
    col = np.broadcast_to(sinks[:, None], s.shape[:-1])[..., None].astype(s.dtype)
    P, lse = _softmax(np.concatenate([s, col], axis=-1))
    return r(P[..., :-1]), r(P[..., -1]), lse


def _scores_backward(
    dS: NDArray[np.floating], y: NDArray[np.floating] | None, var: _Variants, r: Rounding
) -> NDArray[np.floating]:
    """Undo the cap as autograd does, each step rounded: ``* c``, ``* (1 - tanh^2)``, ``/ c``."""
    if var.softcap is None:
        return dS
    assert y is not None
    c = var.softcap
    return r(r(r(dS * c) * (1 - y * y)) / c)


def _rounded_inputs(inputs: Mapping[str, Any], dtype: str) -> tuple:
    """Start both emulations: ``r``, rounded ``(q, k, v, dO)``, ``scale``, the variants, ``G``.

    Also ``k`` and ``v`` repeated to the query heads (GQA group size ``G``).
    """
    r = rounding(dtype)
    q, k, v, dO = (r(inputs[n]) for n in ("q", "k", "v", "d_out"))
    var = _variants(inputs, r, q.shape[-2], k.shape[-2])
    G = q.shape[-3] // k.shape[-3] if bool(inputs["enable_gqa"]) else 1
    kk, vv = (np.repeat(k, G, axis=-3), np.repeat(v, G, axis=-3)) if G > 1 else (k, v)
    return r, (q, k, v, dO), float(inputs["scale"]), var, G, (kk, vv)


def emulate_sdpa(inputs: Mapping[str, Any], dtype: str) -> dict[str, NDArray[np.floating]]:
    r"""Run a naive attention forward and backward in ``dtype``: the baseline of Eq. (7.3).

    Parameters
    ----------
    inputs : mapping
        One SDPA or variant case's inputs (``q``, ``k``, ``v``, ``d_out``, ``scale``,
        ``dropout_p``, ``is_causal``, ``causal_bottom_right``, ``enable_gqa``,
        optionally ``attn_mask`` and ``dropout_mask``, and the variants' ``window``,
        ``chunk_size``, ``sink_tokens``, ``softcap``, ``alibi_slopes``, ``sinks``),
        as in the suite's files.
    dtype : str
        The dtype emulated (see :func:`rounding`).

    Returns
    -------
    results : dict of str to ndarray
        ``out``, ``weights``, ``lse``, ``dq``, ``dk``, ``dv`` (and
        ``d_attn_mask`` for a float mask, ``d_sinks`` with sinks), as float64
        arrays holding values of ``dtype``.

    Notes
    -----
    The steps of PyTorch's math SDPA, each rounded to ``dtype``: ``S = q k^T``,
    ``S * scale``, ``+ bias``, softmax (computed in the accumulator, as
    PyTorch upcasts it), dropout, ``P_d v``; the backward ``dv = P_d^T dO``,
    ``dP = dO v^T``, dropout, ``dS = P (dP - rowsum(dP P))``, ``dq = scale dS k``,
    ``dk = scale dS^T q``, summed over GQA groups and broadcast batches.
    The variants as a naive same-dtype implementation writes them (FlashAttention's
    ``attention_ref`` without upcast, gpt-oss's sink attention): the cap
    ``c tanh(S / c)`` after the scale, a step at a time; ALiBi's bias ``-m_h |i + d - j|``
    rounded, then added; windows, chunks and sink tokens as a mask (``-inf``); the sinks
    an extra logit column in the softmax, so ``d_sinks`` is the sum of that column's
    ``dS = P_sink (0 - rowsum(dP P))``, Eq. (8.11).

    Examples
    --------
    >>> from numpy_attention.verify import build_suite
    >>> case = build_suite()[0]
    >>> got = emulate_sdpa(case.inputs, "bfloat16")
    >>> err = float(np.max(np.abs(got["out"] - case.expected["out"])))
    >>> 0 < err < 0.05
    True
    """
    r, (q, k, v, dO), scale, var, G, (kk, vv) = _rounded_inputs(inputs, dtype)
    mask = inputs.get("attn_mask")
    bias = r(mask) if mask is not None and mask.dtype != bool else None
    keys = mask if mask is not None and mask.dtype == bool else None
    s, y = _scores(q, np.swapaxes(kk, -1, -2), 0, scale, r, var, bias, keys)
    P, P_sink, lse = _softmax_sinks(s, var.sinks, r)
    p = float(inputs["dropout_p"])
    keep = inputs["dropout_mask"] if p > 0 else None
    Pd = r(P * keep / (1 - p)) if keep is not None else P
    out = r(Pd @ vv)
    dv = r(np.swapaxes(Pd, -1, -2) @ dO)
    dP = r(dO @ np.swapaxes(vv, -1, -2))
    if keep is not None:
        dP = r(dP * keep / (1 - p))
    D = np.sum(dP * P, axis=-1, keepdims=True)
    dS_masked = r(P * (dP - D))
    dS = _scores_backward(dS_masked, y, var, r)
    dq = r(r(dS @ kk) * scale)
    dk = r(np.swapaxes(dS, -1, -2) @ q) * scale
    if G > 1:
        dk = dk.reshape(*dk.shape[:-3], -1, G, *dk.shape[-2:]).sum(axis=-3)
        dv = dv.reshape(*dv.shape[:-3], -1, G, *dv.shape[-2:]).sum(axis=-3)
    res = {"out": out, "weights": P, "lse": r(lse), "dq": dq,
           "dk": r(_sum_to(dk, k.shape)), "dv": r(_sum_to(dv, v.shape))}  # fmt: skip
    if bias is not None:
        res["d_attn_mask"] = r(_sum_to(dS_masked, bias.shape))
    if P_sink is not None:
        res["d_sinks"] = r(_per_head(r(-P_sink * D[..., 0])))
    return {n: np.asarray(a, dtype=np.float64) for n, a in res.items()}


def _emulate_padded(inputs: Mapping[str, Any], dtype: str) -> dict[str, NDArray[np.floating]]:
    """Emulate a padded batch as SDPA with its padding mask, the NaN padding read as 0.

    A naive kernel that read the NaN would leak it; the mask hides those keys anyway.
    """
    real = {n: np.where(np.isnan(inputs[n]), 0.0, inputs[n]) for n in ("k", "v")}
    return emulate_sdpa({**inputs, **real}, dtype)


def _emulate_varlen(inputs: Mapping[str, Any], dtype: str) -> dict[str, NDArray[np.floating]]:
    """Emulate packed sequences ``q (Tq, Hq, E)``, ``k (Tk, Hkv, E)`` one sequence at a time.

    :func:`emulate_sdpa` on each sequence as ``(1, H, L_b, E)`` (its own causal offset
    ``S_b - L_b``), packed back; a sequence without queries or keys has nothing to emulate
    (out 0, lse ``-inf`` or, with sinks, the sink logit, gradients 0).
    """
    q, k, v, dO = (np.asarray(inputs[n], dtype=np.float64) for n in ("q", "k", "v", "d_out"))
    cu_q, cu_k = inputs["cu_seqlens_q"], inputs["cu_seqlens_k"]
    res = {"out": np.zeros_like(dO), "lse": np.full(q.shape[1::-1], -np.inf),
           "dq": np.zeros_like(q), "dk": np.zeros_like(k), "dv": np.zeros_like(v)}  # fmt: skip
    heads_first = {n: np.swapaxes(x, 0, 1)[None] for n, x in (("q", q), ("k", k), ("v", v),
                                                               ("d_out", dO))}  # fmt: skip
    for b in range(len(cu_q) - 1):
        rows, keys = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if rows.start == rows.stop or keys.start == keys.stop:
            if rows.start < rows.stop and inputs.get("sinks") is not None:  # the sink alone
                res["lse"][:, rows] = rounding(dtype)(np.asarray(inputs["sinks"]))[:, None]
            continue
        part = {n: x[..., keys if n in ("k", "v") else rows, :] for n, x in heads_first.items()}
        sub = {**inputs, **part, "dropout_p": 0.0}
        got = (_emulate_blocked if _blockable(sub) else emulate_sdpa)(sub, dtype)  # long rows
        res["out"][rows], res["lse"][:, rows] = np.swapaxes(got["out"][0], 0, 1), got["lse"][0]
        res["dq"][rows] = np.swapaxes(got["dq"][0], 0, 1)
        res["dk"][keys], res["dv"][keys] = (np.swapaxes(got[n][0], 0, 1) for n in ("dk", "dv"))
        if "d_sinks" in got:  # the sinks' gradient sums over the sequences, as the truth's
            res["d_sinks"] = res.get("d_sinks", 0.0) + got["d_sinks"]
    return res


def _rotate_rounded(
    x: NDArray[np.floating], cos: NDArray[np.floating], sin: NDArray[np.floating],
    interleaved: bool, sign: float, r: Rounding,
) -> NDArray[np.floating]:  # fmt: skip
    """Rotary embedding (``sign`` 1) or its backward (-1), Eqs. (9.6)-(9.8), each op rounded.

    ``y_1 = x_1 cos - x_2 sin``, ``y_2 = x_2 cos + x_1 sin`` as a naive same-dtype kernel
    writes it (the torch adapter's ``rotate``): two products and a sum, each rounded.
    """
    R = 2 * cos.shape[-1]
    first = slice(0, R, 2) if interleaved else slice(0, R // 2)
    second = slice(1, R, 2) if interleaved else slice(R // 2, R)
    x1, x2 = x[..., first], x[..., second]
    y = np.array(x, copy=True)  # the features beyond R pass through
    y[..., first] = r(r(x1 * cos) - sign * r(x2 * sin))
    y[..., second] = r(r(x2 * cos) + sign * r(x1 * sin))
    return y


def _emulate_rotary(inputs: Mapping[str, Any], dtype: str) -> dict[str, NDArray[np.floating]]:
    """Emulate rotary embedding ``x (B, L, H, E)`` at tables ``(L, R/2)``, and its gradient."""
    r = rounding(dtype)
    x, dO, c, s = (r(inputs[n]) for n in ("x", "d_out", "cos", "sin"))
    il = bool(inputs["interleaved"])
    c, s = c[:, None], s[:, None]  # one row per position, shared by the heads
    out, dx = _rotate_rounded(x, c, s, il, 1.0, r), _rotate_rounded(dO, c, s, il, -1.0, r)
    res = {"out": out, "dx": dx}
    return {n: np.asarray(a, dtype=np.float64) for n, a in res.items()}


def _emulate_merge(inputs: Mapping[str, Any], dtype: str) -> dict[str, NDArray[np.floating]]:
    """Emulate a split-KV merge (Eqs. (9.12)-(9.14)) and its backward, each step rounded.

    As the torch adapter writes it: ``m = max_r lse^(r)``, ``e = exp(lse^(r) - m)``,
    ``lse = m + log(sum_r e)``, ``pi = e / sum_r e``, ``out = sum_r pi O^(r)`` (an empty
    chunk's ``O^(r)``, NaN, read as 0); ``dO^(r) = pi dO``,
    ``dlse^(r) = pi (dO . O^(r) - dO . out + dlse)``.
    """
    r = rounding(dtype)
    lses, dO, g = (r(inputs[n]) for n in ("lses", "d_out", "d_lse"))
    outs = r(np.where(np.isinf(lses)[..., None], 0.0, inputs["outs"]))
    m = np.max(lses, axis=0)
    m = np.where(np.isfinite(m), m, 0)
    e = r(np.exp(r(lses - m)))
    total = r(np.sum(e, axis=0))
    safe = np.where(total > 0, total, 1)
    with np.errstate(divide="ignore"):
        lse = np.where(total > 0, r(m + r(np.log(safe))), -np.inf)
    pi = r(e / safe)
    out = r(np.sum(r(pi[..., None] * outs), axis=0))
    d_outs = r(pi[..., None] * dO)
    dots = r(np.sum(r(dO * outs), axis=-1)) - r(np.sum(r(dO * out), axis=-1))
    d_lses = r(pi * r(r(dots) + g))
    res = {"out": out, "lse": lse, "d_outs": d_outs, "d_lses": d_lses}
    return {n: np.asarray(a, dtype=np.float64) for n, a in res.items()}


def _emulate_kvcache(inputs: Mapping[str, Any], dtype: str) -> dict[str, NDArray[np.floating]]:
    """Emulate a decoding step over a paged (rotary) cache, one sequence at a time.

    As FlashAttention's ``flash_attn_with_kvcache`` (and the torch adapter): the new keys are
    rotated at positions ``n_b + i`` and written with the new values into the cache's pages
    (Eq. (9.9)), the queries rotated at theirs (``n_b + i`` causal, ``n_b`` otherwise,
    Eq. (9.11)), then :func:`emulate_sdpa` over the row's ``n_b + L_new`` keys, bottom-right,
    with the row's window, softcap, ALiBi and sinks.
    """
    r = rounding(dtype)
    q, kn, vn = (r(inputs[n]) for n in ("q", "k_new", "v_new"))
    rotary = "rotary_cos" in inputs  # else no rotary: the rotation is the identity
    c, s = (r(inputs[n]) if rotary else np.zeros((0, 0)) for n in ("rotary_cos", "rotary_sin"))
    kc, vc = (np.array(r(inputs[n]), copy=True) for n in ("k_cache", "v_cache"))
    variants = {n: inputs[n] for n in ("window", "softcap", "alibi_slopes", "sinks") if n in inputs}
    table, il = inputs["block_table"], bool(inputs["rotary_interleaved"])
    causal, page = bool(inputs["is_causal"]), kc.shape[1]
    L, Hq, L_new = q.shape[1], q.shape[2], kn.shape[1]

    def rot(x: NDArray[np.floating], at: NDArray[np.intp]) -> NDArray[np.floating]:
        """Rotate ``x (L, H, E)`` at positions ``at`` (Eq. (9.6)); without rotary, ``x``."""
        return _rotate_rounded(x, c[at][:, None], s[at][:, None], il, 1.0, r) if rotary else x

    outs, lses = [], []
    for b, n in enumerate(np.asarray(inputs["cache_seqlens"]).tolist()):
        new = n + np.arange(L_new)  # the new tokens' slots
        slot = table[b, new // page], new % page
        kc[slot] = rot(kn[b], new)
        vc[slot] = vn[b]
        qb = rot(q[b], n + np.arange(L) if causal else np.full(L, n))  # the queries' positions
        pos = np.arange(n + L_new)  # the row's keys after the write
        kb, vb = (x[table[b, pos // page], pos % page] for x in (kc, vc))
        heads = {m: np.swapaxes(x, 0, 1)[None] for m, x in (("q", qb), ("k", kb), ("v", vb))}
        sdpa = {"d_out": np.zeros((1, Hq, L, vb.shape[-1])), "scale": inputs["scale"],
                "dropout_p": 0.0, "is_causal": causal, "causal_bottom_right": True,
                "enable_gqa": Hq != kb.shape[1]}  # fmt: skip
        sub = {**heads, **sdpa, **variants}  # a long row: blocked, its forward only
        got = _emulate_blocked(sub, dtype, grads=False) if _blockable(sub) else emulate_sdpa(
            sub, dtype)  # fmt: skip
        outs.append(np.swapaxes(got["out"][0], 0, 1))
        lses.append(got["lse"][0])
    res = {"out": np.stack(outs), "lse": np.stack(lses), "k_cache_out": kc, "v_cache_out": vc}
    return {n: np.asarray(a, dtype=np.float64) for n, a in res.items()}


def _max_error(got: NDArray[np.floating], want: NDArray[np.floating]) -> float:
    """``max |got - want|`` over the entries finite in both (0 if none)."""
    ok = np.isfinite(want) & np.isfinite(got)
    return float(np.max(np.abs(got[ok] - want[ok]))) if ok.any() else 0.0


def _round_up(x: float) -> float:
    """Round up to two significant digits: stored values are short and conservative."""
    if x <= 0 or not math.isfinite(x):
        return 0.0
    e = math.floor(math.log10(x)) - 1
    return float(f"{math.ceil(x / 10.0**e - 1e-9) * 10.0**e:.2g}")


#: From this many scores (``B·Hq·L·S``) on, an unmasked case without dropout (the long rows of
#: a config) is emulated a block of query rows at a time (:func:`_emulate_blocked`), so that
#: its baseline, like its tiled truth, never holds an ``L x S`` array.
BLOCKED_FROM = 2**24
#: The scores of one block of query rows in :func:`_emulate_blocked`.
_BLOCK_SCORES = 2**21
#: The keys of one key block in :func:`_visible_keys`: blocks that a block of rows cannot see
#: (causal, window, chunk) are left out of its scores, as the tiled functions skip them.
_KEY_BLOCK = 256


def _blockable(inputs: Mapping[str, Any]) -> bool:
    """Tell whether :func:`_emulate_blocked` applies: large, no ``attn_mask``, no dropout."""
    q, k = inputs["q"], inputs["k"]
    scores = max(math.prod(q.shape[:-2]), math.prod(k.shape[:-2])) * q.shape[-2] * k.shape[-2]
    no_mask = inputs.get("attn_mask") is None
    return scores >= BLOCKED_FROM and no_mask and float(inputs["dropout_p"]) == 0


def _visible_keys(pos: Positions, i0: int, i1: int, S: int) -> NDArray[np.intp]:
    """Return the keys of the key blocks that queries ``i0:i1`` see any of (at least one block).

    A left-out key is hidden from every row of the block: its score would be ``-inf``, its
    weight and ``dS`` exactly 0, so the sums lose only zeros.
    """
    starts = [j0 for j0 in range(0, S, _KEY_BLOCK)
              if pos.block(i0, i1, j0, min(S, j0 + _KEY_BLOCK)) != "none"]  # fmt: skip
    if not starts:  # no key at all: keep one hidden block, the rows come out dead (0, -inf)
        starts = [0]
    return np.concatenate([np.arange(j0, min(S, j0 + _KEY_BLOCK)) for j0 in starts])


def _emulate_blocked(
    inputs: Mapping[str, Any], dtype: str, grads: bool = True
) -> dict[str, NDArray[np.floating]]:
    """:func:`emulate_sdpa` without ``weights``, a block of query heads and rows at a time.

    ``grads`` False: the forward only, ``out`` and ``lse`` (a decoding step has no backward).

    The same steps and roundings, variants included: every row's ``out``, ``lse`` and ``dq``
    are those of the dense emulation; ``dk``, ``dv`` and ``d_sinks`` sum the blocks' products
    in the accumulator before the one rounding the dense emulation applies (only the
    summation order differs). Each block of rows reads only the key blocks it sees any of
    (:func:`_visible_keys`): a window's long rows cost its span, not ``S``. A block takes
    fewer heads rather than fewer than :data:`_BLOCK_ROWS` rows, so that each key is read
    once per that many queries, not once per handful (2.2 times faster at 32 heads of 4096).
    """
    r, (q, k, v, dO), scale, var, G, (kk, vv) = _rounded_inputs(inputs, dtype)
    S = k.shape[-2]
    H = max(x.shape[-3] for x in (q, kk, dO)) if q.ndim >= 3 else 1
    batch = max(1, max(math.prod(q.shape[:-2]), math.prod(kk.shape[:-2])) // H)
    hb, rows = _block_shape(H, batch, S)
    blocks = [slice(h0, h0 + hb) for h0 in range(0, H, hb)]
    parts = [_emulate_rows(_heads(q, h), _heads(kk, h), _heads(vv, h), _heads(dO, h),
                           _heads_of(var, h), scale, r, rows, grads) for h in blocks]  # fmt: skip
    out, lse, dq, dk_sum, dv_sum, ds = (list(x) for x in zip(*parts, strict=True))
    heads = -3 if q.ndim >= 3 else -2  # lse has no feature axis
    forward = {"out": np.concatenate(out, axis=heads), "lse": np.concatenate(lse, axis=heads + 1)}
    if not grads:
        return {n: np.asarray(a, dtype=np.float64) for n, a in forward.items()}
    dk, dv = r(np.concatenate(dk_sum, axis=-3)) * scale, r(np.concatenate(dv_sum, axis=-3))
    if G > 1:
        dk = dk.reshape(*dk.shape[:-3], -1, G, *dk.shape[-2:]).sum(axis=-3)
        dv = dv.reshape(*dv.shape[:-3], -1, G, *dv.shape[-2:]).sum(axis=-3)
    res = {**forward, "dq": np.concatenate(dq, axis=heads), "dk": r(_sum_to(dk, k.shape)),
           "dv": r(_sum_to(dv, v.shape))}  # fmt: skip
    if var.sinks is not None:
        res["d_sinks"] = r(np.concatenate(ds))
    return {n: np.asarray(a, dtype=np.float64) for n, a in res.items()}


#: The fewest query rows :func:`_emulate_blocked` puts in a block while a head fits its budget.
_BLOCK_ROWS = 128


def _block_shape(H: int, batch: int, S: int) -> tuple[int, int]:
    """Return the query heads and rows of a block of :func:`_emulate_blocked`.

    At most :data:`_BLOCK_SCORES` scores (``batch`` times heads times rows times ``S``), or
    one row of one head when that alone is more; heads give way first, down to one, before
    rows go below :data:`_BLOCK_ROWS`.

    Examples
    --------
    >>> _block_shape(32, 1, 4096), _block_shape(8, 1, 2048), _block_shape(1, 1, 65536)
    ((4, 128), (8, 128), (1, 32))
    """
    heads = max(1, min(H, _BLOCK_SCORES // max(_BLOCK_ROWS * S * batch, 1)))
    return heads, max(1, _BLOCK_SCORES // max(S * batch * heads, 1))


def _heads(x: NDArray[np.floating], h: slice) -> NDArray[np.floating]:
    """Return query heads ``h`` of ``x (..., H, n, m)``; all of ``x`` if it has one head or none."""
    return x[..., h, :, :] if x.ndim >= 3 and x.shape[-3] > 1 else x


def _heads_of(var: _Variants, h: slice) -> _Variants:
    """Return the variants of query heads ``h``: ALiBi's slopes ``(..., Hq, 1, 1)``, sinks."""
    alibi = None if var.alibi is None else _heads(var.alibi, h)
    sinks = None if var.sinks is None or len(var.sinks) == 1 else var.sinks[h]
    return replace(var, alibi=alibi, sinks=var.sinks if sinks is None else sinks)


def _emulate_rows(
    q: NDArray[np.floating], kk: NDArray[np.floating], vv: NDArray[np.floating],
    dO: NDArray[np.floating], var: _Variants, scale: float, r: Rounding, rows: int,
    grads: bool,
) -> tuple:  # fmt: skip
    """Run the row blocks of :func:`_emulate_blocked` for some query heads.

    Returns ``out``, ``lse``, ``dq``, the unrounded sums of ``dk`` (before the scale) and
    ``dv`` per query head, and ``d_sinks``'s (None without sinks); the last four None
    without ``grads``.
    """
    L, S = q.shape[-2], kk.shape[-2]
    outs, lses, dqs = [], [], []
    dk_sum: Any = 0.0
    dv_sum: Any = 0.0
    ds_sum: Any = 0.0
    for i0 in range(0, L, rows):
        i1 = min(L, i0 + rows)
        qi, dOi = q[..., i0:i1, :], dO[..., i0:i1, :]
        cols = _visible_keys(var.pos, i0, i1, S)
        at = _as_slice(cols)
        kc, vc = kk[..., at, :], vv[..., at, :]  # the keys this block sees
        s, y = _scores(qi, np.swapaxes(kc, -1, -2), i0, scale, r, var, cols=cols)
        P, P_sink, lse = _softmax_sinks(s, var.sinks, r)
        outs.append(r(P @ vc))
        lses.append(r(lse))
        if not grads:
            continue
        dv_sum = _add_rows(dv_sum, np.swapaxes(P, -1, -2) @ dOi, at, S)
        dP = r(dOi @ np.swapaxes(vc, -1, -2))
        D = np.sum(dP * P, axis=-1, keepdims=True)
        dS = _scores_backward(r(P * (dP - D)), y, var, r)
        dqs.append(r(r(dS @ kc) * scale))
        dk_sum = _add_rows(dk_sum, np.swapaxes(dS, -1, -2) @ qi, at, S)
        if P_sink is not None:
            ds_sum = ds_sum + _per_head(r(-P_sink * D[..., 0]))
        del s, y, P, dP, dS
    out, lse = np.concatenate(outs, axis=-2), np.concatenate(lses, axis=-1)
    if not grads:
        return out, lse, None, None, None, None
    ds = ds_sum if var.sinks is not None else None
    return out, lse, np.concatenate(dqs, axis=-2), dk_sum, dv_sum, ds


def _as_slice(cols: NDArray[np.intp]) -> slice | NDArray[np.intp]:
    """Return ``cols`` as a slice when they are consecutive (a view, not a gathered copy)."""
    return slice(int(cols[0]), int(cols[-1]) + 1) if cols[-1] - cols[0] == len(cols) - 1 else cols


def _add_rows(total: Any, part: NDArray[np.floating], cols: Any, S: int) -> Any:
    """Add ``part`` (``(..., len(cols), E)``) into rows ``cols`` of a ``(..., S, E)`` sum."""
    if isinstance(total, float):  # the first block: an exact zero of the accumulator's dtype
        total = np.zeros((*part.shape[:-2], S, part.shape[-1]), dtype=part.dtype)
    total[..., cols, :] += part  # cols are distinct: no two terms land on one row
    return total


def _emulate_mha(
    x_q: NDArray[np.floating], x_kv: NDArray[np.floating], w: Mapping[str, NDArray[np.floating]],
    H: int, keys: NDArray[np.bool_] | None, dO: NDArray[np.floating], dtype: str,
) -> dict[str, NDArray[np.floating]]:  # fmt: skip
    """One multi-head attention layer (Eqs. (3.1)-(3.5)) and its backward, each step rounded.

    As ``nn.MultiheadAttention`` written naively in the dtype: the projections
    ``x W + b`` (the product, then the bias, each rounded), the heads split,
    :func:`emulate_sdpa` over them with ``d_out = dO W_o^T`` (known before the forward: it
    reads only inputs), the heads merged, ``C W_o + b_o``; the backward of each projection
    a rounded product (``dX = dY W^T``, ``dW = X^T dY`` and ``db = sum dY`` over batch and
    positions). ``w`` holds the rounded ``w_q`` ... ``b_o``; ``keys (B, S)``: True = a real key.
    """
    r = rounding(dtype)
    Dm = w["w_q"].shape[1]  # the model width, H heads of E = Dm / H

    def heads(y: NDArray[np.floating]) -> NDArray[np.floating]:  # (B, n, Dm) -> (B, H, n, E)
        return np.swapaxes(y.reshape(y.shape[0], y.shape[1], H, -1), 1, 2)

    def merged(y: NDArray[np.floating]) -> NDArray[np.floating]:  # (B, H, n, E) -> (B, n, Dm)
        return np.swapaxes(y, 1, 2).reshape(y.shape[0], y.shape[2], -1)

    q, k, v = (r(r(x @ w[f"w_{n}"]) + w[f"b_{n}"]) for x, n in ((x_q, "q"), (x_kv, "k"),
                                                              (x_kv, "v")))  # fmt: skip
    dC = r(dO @ w["w_o"].T)  # out = C W_o + b_o  ->  dC = dO W_o^T
    sdpa = {"q": heads(q), "k": heads(k), "v": heads(v), "d_out": heads(dC),
            "scale": 1.0 / math.sqrt(Dm // H), "dropout_p": 0.0, "is_causal": False,
            "causal_bottom_right": False, "enable_gqa": False}  # fmt: skip
    if keys is not None:
        sdpa["attn_mask"] = keys[:, None, None, :]
    got = emulate_sdpa(sdpa, dtype)
    C = merged(got["out"])

    def flat(y: NDArray[np.floating]) -> NDArray[np.floating]:  # (B n, width): sums over both
        return y.reshape(-1, y.shape[-1])

    res = {"out": r(r(C @ w["w_o"]) + w["b_o"]), "weights": got["weights"],
           "d_w_o": r(flat(C).T @ flat(dO)), "d_b_o": r(flat(dO).sum(axis=0))}  # fmt: skip
    d_x_kv: Any = 0.0
    for n, x, g in (("q", x_q, got["dq"]), ("k", x_kv, got["dk"]), ("v", x_kv, got["dv"])):
        dy = merged(g)  # y = x W + b  ->  dx = dy W^T,  dW = x^T dy,  db = sum dy
        res[f"d_w_{n}"], res[f"d_b_{n}"] = r(flat(x).T @ flat(dy)), r(flat(dy).sum(axis=0))
        dx = r(dy @ w[f"w_{n}"].T)
        if n == "q":
            res["d_x_q"] = dx
        else:
            d_x_kv = r(d_x_kv + dx)
    res["d_x_kv"] = d_x_kv
    return res


_LAYER_WEIGHTS = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")


def _emulate_cross_attention(inputs: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """Emulate the cross-attention layer case: :func:`_emulate_mha` with its padding mask."""
    r = rounding(dtype)
    x_q, x_kv, dO = (r(inputs[n]) for n in ("x_q", "x_kv", "d_out"))
    w = {n: r(inputs[n]) for n in _LAYER_WEIGHTS}
    keys = np.arange(x_kv.shape[1])[None, :] < np.asarray(inputs["key_lengths"])[:, None]
    res = _emulate_mha(x_q, x_kv, w, int(inputs["num_heads"]), keys, dO, dtype)
    return {n: np.asarray(a, dtype=np.float64) for n, a in res.items()}


def _emulate_fusion(inputs: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """Emulate the weighted fusion ``out = sum_r alpha_r A_r(x)`` (Eq. (4.1)), each step rounded.

    The branches are :func:`_emulate_mha` self-attention layers, each given ``dA_r = alpha_r
    dO``; the sum is accumulated in branch order (``alpha_r A_r`` rounded, then each partial
    sum); ``d_alpha_r = sum(dO * A_r)`` and ``dx`` the rounded sum of the branches' ``dx``.
    """
    r = rounding(dtype)
    x, dO, alpha = (r(inputs[n]) for n in ("x", "d_out", "alpha"))
    res: dict[str, Any] = {}
    out: Any = 0.0
    d_x: Any = 0.0
    d_alpha = []
    for i in range(len(alpha)):
        w = {n: r(inputs[f"branch{i}_{n}"]) for n in _LAYER_WEIGHTS}
        got = _emulate_mha(x, x, w, int(inputs["num_heads"]), None, r(alpha[i] * dO), dtype)
        out = r(out + r(alpha[i] * got["out"]))
        d_alpha.append(r(np.sum(dO * got["out"])))
        d_x = r(d_x + r(got["d_x_q"] + got["d_x_kv"]))
        res.update({f"d_branch{i}_{n}": got[f"d_{n}"] for n in _LAYER_WEIGHTS})
    res.update(out=out, d_x=d_x, d_alpha=np.array(d_alpha))
    return {n: np.asarray(a, dtype=np.float64) for n, a in res.items()}


#: The serving kinds' emulations (each reduces to :func:`emulate_sdpa` or rounds its own steps).
_SERVING_EMULATIONS: dict[str, Callable[[Mapping[str, Any], str], dict[str, Any]]] = {
    "padded": _emulate_padded, "varlen": _emulate_varlen, "kvcache": _emulate_kvcache,
    "merge": _emulate_merge, "rotary": _emulate_rotary,
}  # fmt: skip
#: The layer kinds' emulations (:func:`_emulate_mha` per layer).
_LAYER_EMULATIONS: dict[str, Callable[[Mapping[str, Any], str], dict[str, Any]]] = {
    "cross_attention": _emulate_cross_attention, "fusion": _emulate_fusion,
}  # fmt: skip


def baseline_errors(
    inputs: Mapping[str, Any], expected: Mapping[str, NDArray[np.floating]], kind: str = "sdpa",
    dtypes: Sequence[str] = DTYPES,
) -> dict[str, dict[str, float]]:  # fmt: skip
    r"""Return ``err_naive`` of Eq. (7.3) per dtype and quantity: what the manifest stores.

    Parameters
    ----------
    inputs, expected : mapping
        A case's inputs and float64 expected results.
    kind : str, optional
        The case's kind; the SDPA, variant, serving and layer kinds have an
        emulated baseline (:data:`EMULATED_KINDS`); any other returns ``{}`` (judged
        by the absolute policy).
    dtypes : sequence of str, optional
        The dtypes to emulate (default all four; only float16 and bfloat16
        are read by the baseline policy, and each costs as much as the others).

    Returns
    -------
    errors : dict of str to dict of str to float
        ``errors[dtype][quantity]``: the largest error of :func:`emulate_sdpa`
        in ``dtype`` against the float64 truth, rounded up to two significant
        digits (deterministic bytes, never an underestimate).

    Examples
    --------
    >>> from numpy_attention.verify import build_suite
    >>> case = build_suite()[0]
    >>> b = baseline_errors(case.inputs, case.expected)
    >>> b["bfloat16"]["out"] > b["float16"]["out"] > b["float32"]["out"] > 0
    True
    """
    if any(d not in DTYPES for d in dtypes):
        raise ValueError(f"dtypes must be a sequence of {list(DTYPES)}, got {dtypes!r}")
    if kind not in EMULATED_KINDS:
        return {}
    out = {}
    emulate = _SERVING_EMULATIONS.get(kind) or _LAYER_EMULATIONS.get(kind)
    emulate = emulate or (_emulate_blocked if _blockable(inputs) else emulate_sdpa)
    for dtype in dtypes:
        got = emulate(inputs, dtype)
        out[dtype] = {q: _round_up(_max_error(got[q], d)) for q, d in expected.items() if q in got}
    return out
