"""The validated inputs of every attention function: the checks, written once.

Shared by the core (:mod:`numpy_attention.attention`) and the tiled functions
(:mod:`numpy_attention.flash`).

:func:`check_inputs` turns the caller's arguments into an :class:`AttentionInputs`
in the compute dtype, with everything the computation needs decided once: the
scale, the GQA group size, the causal offset and window (as a
:class:`~numpy_attention.masks.Positions`), whether scores may overflow, and the
variants' arguments (docs/variants.md). Every error names the argument and the
shapes seen and expected.

Shapes: ``q (..., Hq, L, E)``, ``k (..., Hkv, S, E)``, ``v (..., Hkv, S, Ev)``;
scores ``(..., Hq, L, S)`` (the letter legend of docs/README.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import Array, absmax, as_float_array, broadcasts_to, compute_dtype
from ._validate import check_bool, check_int, check_real, check_window
from .masks import ALIGNMENTS, Positions, causal_offset

__all__ = ["AttentionInputs", "check_inputs", "check_dropout", "ScoreMods"]

#: ``mask_mod(b, h, q_idx, kv_idx) -> bool`` and ``score_mod(score, b, h, q_idx, kv_idx)``
#: (torch flex_attention's signatures), with ``score_mod_grad`` its derivative in ``score``.
Mod = Callable[..., Any]


@dataclass(frozen=True)
class ScoreMods:
    """The score transforms of Eqs. (8.2)-(8.8), each None when not asked for."""

    softcap: float | None = None  # c of Eq. (8.2)
    score_mod: Mod | None = None  # Eq. (8.3)
    score_mod_grad: Mod | None = None
    mask_mod: Mod | None = None  # Eq. (8.8)
    alibi: Array | None = None  # slopes as (..., Hq, 1, 1), Eq. (8.4)
    sinks: Array | None = None  # (Hq, 1, 1), Eq. (8.9)

    @property
    def keeps_scores(self) -> bool:
        """Whether the backward needs the capped scores (softcap or score_mod)."""
        return self.softcap is not None or self.score_mod is not None


@dataclass(frozen=True)
class AttentionInputs:
    """Validated inputs in the compute dtype (see :func:`check_inputs`)."""

    q: Array
    k: Array
    v: Array
    bias: Array | None  # float attn_mask, own shape, or None
    keep: NDArray[np.bool_] | None  # boolean attn_mask (True = attend), own shape, or None
    pos: Positions  # causal, window, chunks, sink tokens (with the causal offset d)
    mods: ScoreMods
    scale: float
    groups: int  # G = Hq // Hkv with GQA, else 1
    dtype: np.dtype  # dtype of every result
    scores_shape: tuple[int, ...]  # (..., Hq, L, S)
    may_overflow: bool  # a score may reach +-inf: scan for it (see _may_overflow)
    finite: bool  # q and k hold no inf or NaN
    exp_safe: bool = False  # exp(S) is finite and normal unshifted: no row max (see _exp_safe)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the output, ``(..., Hq, L, Ev)``."""
        return self.scores_shape[:-1] + (self.v.shape[-1],)

    @property
    def exp_max(self) -> float:
        """A bound on every ``exp`` of the softmax: ``sqrt(max)`` unshifted (``exp_safe``), else 1.

        Under the bound each ``exp(S_ij)`` and ``exp(sink)`` is at most ``sqrt(max)`` and at
        least ``1 / sqrt(max)``, so ``1 / l`` is at most ``sqrt(max)`` as well; a product with
        an unnormalised ``E`` or ``1 / l`` scales ``v`` by a power of 2 with this factor.
        """
        return math.exp(_exp_limit(self.q.dtype)) if self.exp_safe else 1.0

    @property
    def is_causal(self) -> bool:
        """Whether the causal mask of Eq. (2.6) applies."""
        return self.pos.is_causal


def _broadcast(arrays: dict[str, Array], tail: int, what: str) -> tuple[int, ...]:
    """Broadcast the leading axes of ``arrays`` (all but the last ``tail``), or say which clash."""
    try:
        return np.broadcast_shapes(*(a.shape[:-tail] for a in arrays.values()))
    except ValueError:
        seen = ", ".join(f"{n} {a.shape[:-tail]} (shape {a.shape})" for n, a in arrays.items())
        raise ValueError(f"{what} do not broadcast: {seen}; each axis must be equal or 1") from None


def _check_scale(scale: object, E: int, cdtype: np.dtype) -> float:
    if scale is None:
        return 1.0 / math.sqrt(E) if E > 0 else 1.0
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    s = check_real(scale, "scale")
    if abs(s) > float(np.finfo(cdtype).max):
        raise ValueError(f"scale {scale} is beyond the range of {cdtype}; compute in float64")
    return s


def _check_mask(
    attn_mask: ArrayLike | None, scores_shape: tuple[int, ...], cdtype: np.dtype
) -> tuple[Array | None, NDArray[np.bool_] | None]:
    """Split ``attn_mask`` into (float bias, boolean keep-mask), one of them None."""
    if attn_mask is None:
        return None, None
    m = np.asarray(attn_mask)
    if m.dtype.kind not in "bf":
        raise TypeError(
            f"attn_mask must be bool (True = attend) or floating (an additive bias), "
            f"got dtype {m.dtype}; integer masks are ambiguous"
        )
    if not broadcasts_to(m.shape, scores_shape):
        raise ValueError(
            f"attn_mask has shape {m.shape}, expected a shape that broadcasts to the "
            f"scores' shape (..., Hq, L, S) = {scores_shape}"
        )
    if m.dtype.kind == "b":
        return None, m
    if np.any(m == np.inf):
        raise ValueError("attn_mask (a float bias) must not contain +inf; use -inf to mask")
    if np.isnan(m).any():
        raise ValueError("attn_mask (a float bias) contains NaN; use -inf to mask a key")
    return m.astype(cdtype, copy=False), None


#: The last axes of q, k and v (the letter legend); with GQA the head axis is required too.
_AXES = {"q": ("Hq", "L", "E"), "k": ("Hkv", "S", "E"), "v": ("Hkv", "S", "Ev")}


def _check_arrays(q: ArrayLike, k: ArrayLike, v: ArrayLike, min_ndim: int) -> dict[str, Array]:
    """``q``, ``k``, ``v`` as float arrays with matching ``E`` and ``S``."""
    arrays = {n: as_float_array(a, n) for n, a in (("q", q), ("k", k), ("v", v))}
    for n, a in arrays.items():
        if a.ndim < min_ndim:
            extra = " with enable_gqa=True" if min_ndim == 3 else ""
            raise ValueError(
                f"{n} must have at least {min_ndim} dimensions{extra} "
                f"(..., {', '.join(_AXES[n][3 - min_ndim :])}), got shape {a.shape}"
            )
    qa, ka, va = arrays["q"], arrays["k"], arrays["v"]
    if qa.shape[-1] != ka.shape[-1]:
        raise ValueError(
            f"q and k must share the last dimension E: q has shape {qa.shape} "
            f"(E={qa.shape[-1]}), k has shape {ka.shape} (E={ka.shape[-1]})"
        )
    if ka.shape[-2] != va.shape[-2]:
        raise ValueError(
            f"k and v must share the key dimension S (axis -2): k has shape {ka.shape} "
            f"(S={ka.shape[-2]}), v has shape {va.shape} (S={va.shape[-2]})"
        )
    return arrays


def _check_heads(arrays: dict[str, Array], enable_gqa: bool) -> tuple[tuple[int, ...], int]:
    """Return the scores' leading axes ``(..., Hq)`` and the GQA group size ``G``."""
    qa, ka, va = arrays["q"], arrays["k"], arrays["v"]
    if not enable_gqa:
        lead = _broadcast(
            arrays, 2, "the batch and head dimensions of q, k, v (without enable_gqa=True, "
            "heads broadcast like batch axes)"
        )  # fmt: skip
        return lead, 1
    hq, hk, hv = qa.shape[-3], ka.shape[-3], va.shape[-3]
    if hk != hv:
        raise ValueError(
            f"with enable_gqa=True, k and v must have the same number of heads: "
            f"k has shape {ka.shape} (Hkv={hk}), v has shape {va.shape} (Hkv={hv})"
        )
    if hk == 0 or hq == 0 or hq % hk:
        raise ValueError(
            f"with enable_gqa=True, the query heads Hq={hq} (q shape {qa.shape}) must be "
            f"a positive multiple of the key/value heads Hkv={hk} (k shape {ka.shape})"
        )
    return _broadcast(arrays, 3, "the batch dimensions of q, k, v") + (hq,), hq // hk


def _may_overflow(
    q: Array, k: Array, scale: float, b_max: float, mods: ScoreMods
) -> tuple[bool, bool]:
    """Whether a score may reach +-inf, from ``|scale q_i . k_j| <= |scale| E max|q| max|k|``.

    The bound holds for every partial sum of the dot product too; the bias and
    ALiBi (at most ``max|slope| * extent``) add theirs, and a ``score_mod`` may
    return anything. When the bound is below the dtype's range no score needs
    a scan. Also returns whether ``q`` and ``k`` are finite (NaN inputs
    propagate instead of raising).
    """
    q_max, k_max = absmax(q), absmax(k)
    finite = math.isfinite(q_max) and math.isfinite(k_max)
    with np.errstate(over="ignore", invalid="ignore"):
        bound = abs(scale) * q.shape[-1] * q_max * k_max + b_max
    if q.size == 0 or k.size == 0:
        bound = b_max
    may = mods.score_mod is not None or not bound < float(np.finfo(q.dtype).max) / 4
    return may, finite


def _bias_bound(bias: Array | None, mods: ScoreMods, extent: int) -> float:
    """``max |B| + max|slope| * extent``: what the bias and ALiBi add to a score, ``-inf`` aside."""
    b_max = 0.0
    if bias is not None:
        b_max = absmax(np.where(np.isinf(bias), 0.0, bias)) if bias.size else 0.0
    if mods.alibi is not None:
        b_max += absmax(mods.alibi) * extent
    return b_max


def _exp_limit(dtype: np.dtype) -> float:
    """Half the dtype's log range, ``log(max) / 2``: 44 in float32, 354 in float64."""
    return float(np.log(np.finfo(dtype).max)) / 2


def _exp_safe(q: Array, k: Array, scale: float, b_max: float, mods: ScoreMods) -> bool:
    """Whether ``exp(S)`` is finite and normal without the max shift (Cauchy-Schwarz bound).

    ``|S_ij| <= |scale| max_i ||q_i|| max_j ||k_j|| + max|B|`` (at most ``c`` with a softcap);
    when that and every sink logit stay below half the dtype's log range, each ``exp`` lies in
    ``[1/sqrt(max), sqrt(max)]`` and a row sum of ``S`` of them cannot overflow: the softmax
    may shift by 0 and the tiled forward needs no running maximum (docs/flash.md). NaN or inf
    inputs, an empty axis or a ``score_mod`` (it may return anything) say no.
    """
    if mods.score_mod is not None or q.size == 0 or k.size == 0:
        return False
    limit = _exp_limit(q.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = math.sqrt(float(np.einsum("...e,...e->...", q, q).max())
                          * float(np.einsum("...e,...e->...", k, k).max()))  # fmt: skip
    bound = abs(scale) * norms if mods.softcap is None else min(abs(scale) * norms, mods.softcap)
    sink = 0.0 if mods.sinks is None else absmax(mods.sinks)
    return bound + b_max < limit and sink < limit


def _check_mod(f: object, name: str) -> Mod | None:
    if f is not None and not callable(f):
        raise TypeError(f"{name} must be callable or None, got {type(f).__name__}")
    return f  # type: ignore[return-value]


def _check_per_head(
    a: ArrayLike | None, name: str, lead: tuple[int, ...], cdtype: np.dtype, batch: bool
) -> Array | None:
    """Return slopes ``(Hq,)``/``(..., Hq)`` (``batch``) or sinks ``(Hq,)`` as ``(..., 1, 1)``."""
    if a is None:
        return None
    x = as_float_array(a, name)
    hq = lead[-1] if lead else 1
    ok = x.shape == (hq,) or (batch and x.ndim >= 1 and broadcasts_to(x.shape, lead))
    if not ok or x.shape[-1:] != (hq,):
        want = f"(Hq,) = ({hq},)" + (f" or broadcastable to (..., Hq) = {lead}" if batch else "")
        raise ValueError(f"{name} has shape {x.shape}, expected {want}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got {x[~np.isfinite(x)][:3]}")
    return x.astype(cdtype, copy=False)[..., None, None]


def _check_mods(kw: dict[str, Any], lead: tuple[int, ...], cdtype: np.dtype) -> ScoreMods:
    """Validate the variants' score arguments of Eqs. (8.1)-(8.9)."""
    cap = kw.get("softcap")
    mod, grad = _check_mod(kw.get("score_mod"), "score_mod"), kw.get("score_mod_grad")
    if grad is not None and mod is None:
        raise ValueError("score_mod_grad was given without score_mod")
    return ScoreMods(
        softcap=None if cap is None else check_real(cap, "softcap", low=0.0, low_open=True),
        score_mod=mod,
        score_mod_grad=_check_mod(grad, "score_mod_grad"),
        mask_mod=_check_mod(kw.get("mask_mod"), "mask_mod"),
        alibi=_check_per_head(kw.get("alibi_slopes"), "alibi_slopes", lead, cdtype, True),
        sinks=_check_per_head(kw.get("sinks"), "sinks", lead, cdtype, False),
    )


def check_inputs(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    /,
    *,
    causal_align: str = "top_left",
    attn_mask: ArrayLike | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    enable_gqa: bool = False,
    **variants: Any,
) -> AttentionInputs:
    """Validate and convert the arguments shared by every attention function.

    Parameters
    ----------
    q, k, v, attn_mask, is_causal, scale, enable_gqa, causal_align
        As in :func:`~numpy_attention.attention.attention_forward`.
    **variants
        ``window``, ``chunk_size``, ``sink_tokens``, ``softcap``, ``score_mod``,
        ``score_mod_grad``, ``mask_mod``, ``alibi_slopes``, ``sinks``, as in
        :func:`~numpy_attention.attention.attention_forward`.

    Returns
    -------
    inputs : AttentionInputs
        ``q``, ``k``, ``v`` in the compute dtype (float16 -> float32, integers
        -> float64); the mask split into a float ``bias`` or a boolean
        ``keep`` (each in its own shape); the position constraints ``pos``;
        the score transforms ``mods``; the resolved ``scale``; the GQA group
        size ``groups``; the result ``dtype``; and ``scores_shape``
        ``(..., Hq, L, S)``, the broadcast shape of the scores.

    Raises
    ------
    TypeError
        Complex, object or string arrays; an integer ``attn_mask``; a
        non-number ``scale``; a non-bool ``is_causal`` or ``enable_gqa``; a
        non-callable mod.
    ValueError
        Fewer than 2 dimensions (3 with ``enable_gqa``); ``E`` of ``q`` and
        ``k`` differ; ``S`` of ``k`` and ``v`` differ; batch dimensions or the
        mask do not broadcast; ``Hq`` is not a positive multiple of ``Hkv``
        with ``enable_gqa``; ``+inf`` in a float mask; a non-finite ``scale``
        or one beyond the dtype's range; unknown ``causal_align``; a negative
        window side, ``chunk_size < 1``, ``softcap <= 0``, slopes or sinks of
        the wrong shape. Each message names the argument and the shapes.

    Examples
    --------
    >>> x = check_inputs(np.ones((2, 4, 3, 8)), np.ones((2, 2, 5, 8)),
    ...                  np.ones((2, 2, 5, 6)), enable_gqa=True)
    >>> x.scores_shape, x.groups, x.scale, x.out_shape
    ((2, 4, 3, 5), 2, 0.3535533905932738, (2, 4, 3, 6))
    >>> check_inputs(np.ones((3, 8)), np.ones((5, 7)), np.ones((5, 6)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: q and k must share the last dimension E: q has shape (3, 8) (E=8), ...
    """
    unknown = set(variants) - _VARIANTS
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}")
    gqa = check_bool(enable_gqa, "enable_gqa")
    arrays = _check_arrays(q, k, v, 3 if gqa else 2)
    if causal_align not in ALIGNMENTS:
        raise ValueError(f"causal_align must be one of {ALIGNMENTS}, got {causal_align!r}")
    lead, groups = _check_heads(arrays, gqa)
    L, S = arrays["q"].shape[-2], arrays["k"].shape[-2]
    dtype = np.result_type(*arrays.values())
    cdtype = compute_dtype(dtype)
    bias, keep = _check_mask(attn_mask, lead + (L, S), cdtype)
    qa, ka, va = (a.astype(cdtype, copy=False) for a in arrays.values())
    s = _check_scale(scale, qa.shape[-1], cdtype)
    d = causal_offset(L, S, causal_align)
    mods = _check_mods(variants, lead, cdtype)
    b_max = _bias_bound(bias, mods, L + S + abs(d))  # what the bias and ALiBi add to a score
    may, finite = _may_overflow(qa, ka, s, b_max, mods)
    safe = _exp_safe(qa, ka, s, b_max, mods)
    return AttentionInputs(
        q=qa, k=ka, v=va, bias=bias, keep=keep,
        pos=_check_positions(variants, check_bool(is_causal, "is_causal"), d),
        mods=mods, scale=s, groups=groups, dtype=dtype, scores_shape=lead + (L, S),
        may_overflow=may, finite=finite, exp_safe=safe,
    )  # fmt: skip


_VARIANTS = {"window", "chunk_size", "sink_tokens", "softcap", "score_mod", "score_mod_grad",
             "mask_mod", "alibi_slopes", "sinks"}  # fmt: skip


def _check_positions(kw: dict[str, Any], is_causal: bool, offset: int) -> Positions:
    """Validate the position constraints of Eqs. (2.6), (2.8), (8.7), (8.8)."""
    chunk = kw.get("chunk_size")
    return Positions(
        offset=offset,
        is_causal=is_causal,
        window=check_window(kw.get("window")),
        chunk_size=None if chunk is None else check_int(chunk, "chunk_size", minimum=1),
        sink_tokens=check_int(kw.get("sink_tokens", 0), "sink_tokens"),
    )


def check_dropout(
    dropout_p: float,
    dropout_mask: ArrayLike | None,
    rng: np.random.Generator | None,
    scores_shape: tuple[int, ...],
) -> NDArray[np.bool_] | None:
    """Return the dropout keep-mask (True = kept), or None without dropout.

    Examples
    --------
    >>> check_dropout(0.0, None, None, (2, 3)) is None
    True
    >>> check_dropout(0.5, None, 42, (2, 3))
    Traceback (most recent call last):
    ...
    TypeError: rng must be a numpy.random.Generator (np.random.default_rng(seed)), got int
    """
    p = check_real(dropout_p, "dropout_p", low=0.0, high=1.0, high_open=True)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    if dropout_mask is None:
        if p == 0.0:
            return None
        gen = rng if rng is not None else np.random.default_rng()
        return gen.random(scores_shape) >= p
    z = np.asarray(dropout_mask)
    if z.dtype != np.bool_:
        raise TypeError(f"dropout_mask must be a bool keep-mask (True = kept), got dtype {z.dtype}")
    if p == 0.0:
        raise ValueError("dropout_mask was given but dropout_p is 0; pass the dropout rate")
    if not broadcasts_to(z.shape, scores_shape):
        raise ValueError(
            f"dropout_mask has shape {z.shape}, expected a shape that broadcasts to the "
            f"attention weights' shape (..., Hq, L, S) = {scores_shape}"
        )
    return z
