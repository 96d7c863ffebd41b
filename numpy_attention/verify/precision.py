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
result to the dtype. bfloat16 is rounded by :func:`round_to_bfloat16` (pure
NumPy); the float8 formats come from ``ml_dtypes``, imported only when asked.

- :data:`BASELINE_FACTORS`, :data:`UNIT_ROUNDOFF`, :func:`rounding`.
- :func:`emulate_sdpa`: the naive same-dtype forward and backward of one case.
- :func:`baseline_errors`: ``err_naive`` per dtype and quantity for a case, as the
  suite's manifest stores them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .tolerance import DTYPES, round_to_bfloat16

__all__ = [
    "BASELINE_FACTORS",
    "UNIT_ROUNDOFF",
    "POLICIES",
    "LOW_PRECISION",
    "rounding",
    "emulate_sdpa",
    "baseline_errors",
    "baseline_factor",
]

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


def rounding(dtype: str) -> Callable[[Any], NDArray[np.floating]]:
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
        return lambda x: np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return round_to_bfloat16
    if dtype in ("float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes  # optional: only the float8 formats need it

        fmt = getattr(ml_dtypes, dtype)
        return lambda x: np.asarray(x, dtype=np.float32).astype(fmt).astype(np.float32)
    raise ValueError(f"dtype must be one of {DTYPES} or a float8 format, got {dtype!r}")


def _sum_to(g: NDArray[np.floating], shape: tuple[int, ...]) -> NDArray[np.floating]:
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _allowed(a: Mapping[str, Any], L: int, S: int) -> NDArray[np.bool_]:
    """Return the keys each query may see (bool mask and causal), broadcastable to the scores."""
    allowed = np.ones((L, S), dtype=bool)
    mask = a.get("attn_mask")
    if mask is not None and mask.dtype == bool:
        allowed = allowed & mask
    if bool(a["is_causal"]):
        d = S - L if bool(a["causal_bottom_right"]) else 0
        allowed = allowed & (np.arange(S)[None, :] <= np.arange(L)[:, None] + d)
    return allowed


def _softmax(s: NDArray[np.floating]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Softmax over keys and its log-sum-exp in the accumulator dtype; dead rows give 0, -inf."""
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    total = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = (m + np.log(total))[..., 0]
    return e / np.where(total > 0, total, 1), lse


def emulate_sdpa(inputs: Mapping[str, Any], dtype: str) -> dict[str, NDArray[np.floating]]:
    r"""Run a naive attention forward and backward in ``dtype``: the baseline of Eq. (7.3).

    Parameters
    ----------
    inputs : mapping
        One SDPA case's inputs (``q``, ``k``, ``v``, ``d_out``, ``scale``,
        ``dropout_p``, ``is_causal``, ``causal_bottom_right``, ``enable_gqa``,
        optionally ``attn_mask`` and ``dropout_mask``), as in the suite's files.
    dtype : str
        The dtype emulated (see :func:`rounding`).

    Returns
    -------
    results : dict of str to ndarray
        ``out``, ``weights``, ``lse``, ``dq``, ``dk``, ``dv`` (and
        ``d_attn_mask`` for a float mask), as float64 arrays holding values
        of ``dtype``.

    Notes
    -----
    The steps of PyTorch's math SDPA, each rounded to ``dtype``: ``S = q k^T``,
    ``S * scale``, ``+ bias``, softmax (computed in the accumulator, as
    PyTorch upcasts it), dropout, ``P_d v``; the backward ``dv = P_d^T dO``,
    ``dP = dO v^T``, dropout, ``dS = P (dP - rowsum(dP P))``, ``dq = scale dS k``,
    ``dk = scale dS^T q``, summed over GQA groups and broadcast batches.

    Examples
    --------
    >>> from numpy_attention.verify import build_suite
    >>> case = build_suite()[0]
    >>> got = emulate_sdpa(case.inputs, "bfloat16")
    >>> err = float(np.max(np.abs(got["out"] - case.expected["out"])))
    >>> 0 < err < 0.05
    True
    """
    r = rounding(dtype)
    q, k, v, dO = (r(inputs[n]) for n in ("q", "k", "v", "d_out"))
    L, S = q.shape[-2], k.shape[-2]
    scale = float(inputs["scale"])
    G = q.shape[-3] // k.shape[-3] if bool(inputs["enable_gqa"]) else 1
    kk, vv = (np.repeat(k, G, axis=-3), np.repeat(v, G, axis=-3)) if G > 1 else (k, v)
    s = r(r(q @ np.swapaxes(kk, -1, -2)) * scale)
    mask = inputs.get("attn_mask")
    bias = r(mask) if mask is not None and mask.dtype != bool else None
    if bias is not None:
        s = r(s + bias)
    s = np.where(_allowed(inputs, L, S), s, -np.inf)
    P, lse = _softmax(s)
    P = r(P)
    p = float(inputs["dropout_p"])
    keep = inputs["dropout_mask"] if p > 0 else None
    Pd = r(P * keep / (1 - p)) if keep is not None else P
    out = r(Pd @ vv)
    dv = r(np.swapaxes(Pd, -1, -2) @ dO)
    dP = r(dO @ np.swapaxes(vv, -1, -2))
    if keep is not None:
        dP = r(dP * keep / (1 - p))
    dS = r(P * (dP - np.sum(dP * P, axis=-1, keepdims=True)))
    dq = r(r(dS @ kk) * scale)
    dk = r(np.swapaxes(dS, -1, -2) @ q) * scale
    if G > 1:
        dk = dk.reshape(*dk.shape[:-3], -1, G, *dk.shape[-2:]).sum(axis=-3)
        dv = dv.reshape(*dv.shape[:-3], -1, G, *dv.shape[-2:]).sum(axis=-3)
    res = {"out": out, "weights": P, "lse": r(lse), "dq": dq,
           "dk": r(_sum_to(dk, k.shape)), "dv": r(_sum_to(dv, v.shape))}  # fmt: skip
    if bias is not None:
        res["d_attn_mask"] = r(_sum_to(dS, bias.shape))
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


def _blockable(inputs: Mapping[str, Any]) -> bool:
    """Tell whether :func:`_emulate_blocked` applies: large, no ``attn_mask``, no dropout."""
    q, k = inputs["q"], inputs["k"]
    scores = max(math.prod(q.shape[:-2]), math.prod(k.shape[:-2])) * q.shape[-2] * k.shape[-2]
    no_mask = inputs.get("attn_mask") is None
    return scores >= BLOCKED_FROM and no_mask and float(inputs["dropout_p"]) == 0


def _emulate_blocked(inputs: Mapping[str, Any], dtype: str) -> dict[str, NDArray[np.floating]]:
    """:func:`emulate_sdpa` without ``weights``, a block of query rows at a time.

    The same steps and roundings: every row's ``out``, ``lse`` and ``dq`` are those of the
    dense emulation; ``dk`` and ``dv`` sum the blocks' products in the accumulator before the
    one rounding the dense emulation applies (only the summation order differs).
    """
    r = rounding(dtype)
    q, k, v, dO = (r(inputs[n]) for n in ("q", "k", "v", "d_out"))
    L, S = q.shape[-2], k.shape[-2]
    scale = float(inputs["scale"])
    G = q.shape[-3] // k.shape[-3] if bool(inputs["enable_gqa"]) else 1
    kk, vv = (np.repeat(k, G, axis=-3), np.repeat(v, G, axis=-3)) if G > 1 else (k, v)
    kT, vT = np.swapaxes(kk, -1, -2), np.swapaxes(vv, -1, -2)
    d = S - L if bool(inputs["causal_bottom_right"]) else 0
    heads = max(math.prod(q.shape[:-2]), math.prod(k.shape[:-2]))
    rows = max(1, _BLOCK_SCORES // max(S * heads, 1))
    outs, lses, dqs = [], [], []
    dk_sum: Any = 0.0
    dv_sum: Any = 0.0
    for i0 in range(0, L, rows):
        i1 = min(L, i0 + rows)
        qi, dOi = q[..., i0:i1, :], dO[..., i0:i1, :]
        s = r(r(qi @ kT) * scale)
        if bool(inputs["is_causal"]):
            s = np.where(np.arange(S)[None, :] <= np.arange(i0, i1)[:, None] + d, s, -np.inf)
        P, lse = _softmax(s)
        P = r(P)
        outs.append(r(P @ vv))
        lses.append(r(lse))
        dv_sum = dv_sum + np.swapaxes(P, -1, -2) @ dOi
        dP = r(dOi @ vT)
        dS = r(P * (dP - np.sum(dP * P, axis=-1, keepdims=True)))
        dqs.append(r(r(dS @ kk) * scale))
        dk_sum = dk_sum + np.swapaxes(dS, -1, -2) @ qi
        del s, P, dP, dS
    dk, dv = r(dk_sum) * scale, r(dv_sum)
    if G > 1:
        dk = dk.reshape(*dk.shape[:-3], -1, G, *dk.shape[-2:]).sum(axis=-3)
        dv = dv.reshape(*dv.shape[:-3], -1, G, *dv.shape[-2:]).sum(axis=-3)
    res = {"out": np.concatenate(outs, axis=-2), "lse": np.concatenate(lses, axis=-1),
           "dq": np.concatenate(dqs, axis=-2), "dk": r(_sum_to(dk, k.shape)),
           "dv": r(_sum_to(dv, v.shape))}  # fmt: skip
    return {n: np.asarray(a, dtype=np.float64) for n, a in res.items()}


def baseline_errors(
    inputs: Mapping[str, Any], expected: Mapping[str, NDArray[np.floating]], kind: str = "sdpa"
) -> dict[str, dict[str, float]]:
    r"""Return ``err_naive`` of Eq. (7.3) per dtype and quantity: what the manifest stores.

    Parameters
    ----------
    inputs, expected : mapping
        A case's inputs and float64 expected results.
    kind : str, optional
        The case's kind; only ``"sdpa"`` cases have an emulated baseline
        (the layer cases return ``{}``, judged by the absolute policy).

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
    if kind != "sdpa":
        return {}
    out = {}
    emulate = _emulate_blocked if _blockable(inputs) else emulate_sdpa
    for dtype in DTYPES:
        got = emulate(inputs, dtype)
        out[dtype] = {q: _round_up(_max_error(got[q], d)) for q, d in expected.items() if q in got}
    return out
