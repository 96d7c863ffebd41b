r"""Scaled dot-product attention: forward, hand-written backward, and input checks.

The core of the package. Semantics follow
``torch.nn.functional.scaled_dot_product_attention`` (torch >= 2.5), so
results are directly comparable; see ``docs/conventions.md`` for the places
where frameworks disagree. Equations are numbered as in ``docs/attention.md``.

Shapes (letter legend)::

    B...  leading batch dimensions (any number, broadcast like torch)
    Hq    query heads            Hkv  key/value heads (Hq = G * Hkv with GQA)
    L     queries                S    keys
    E     query/key width        Ev   value width

    q    (..., Hq,  L, E)       k    (..., Hkv, S, E)      v (..., Hkv, S, Ev)
    mask broadcastable to (..., Hq, L, S)                  out (..., Hq, L, Ev)

Precision: float64 inputs are computed in float64 (the oracle); float32 in
float32; float16 is computed in float32 and rounded once at the end; integer
inputs are promoted to float64. Every result has the inputs' (promoted) dtype.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import as_float_array, broadcasts_to, compute_dtype, sum_to_shape
from .masks import ALIGNMENTS, causal_mask

__all__ = [
    "AttentionInputs",
    "AttentionCache",
    "AttentionGrads",
    "check_inputs",
    "scaled_dot_product_attention",
    "attention_forward",
    "attention_backward",
]

Array = NDArray[np.floating]


# ---------------------------------------------------------------------------
# Input checking: one place, shared with flash.py
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionInputs:
    """Validated inputs in the compute dtype (see :func:`check_inputs`)."""

    q: Array
    k: Array
    v: Array
    bias: Array | None  # float attn_mask, own shape, or None
    keep: NDArray[np.bool_] | None  # boolean attn_mask (True = attend), own shape, or None
    is_causal: bool
    causal_align: str
    scale: float
    groups: int  # G = Hq // Hkv with GQA, else 1
    dtype: np.dtype  # dtype of every result
    scores_shape: tuple[int, ...]  # (..., Hq, L, S)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the output, ``(..., Hq, L, Ev)``."""
        return self.scores_shape[:-1] + (self.v.shape[-1],)


def _broadcast(arrays: dict[str, Array], tail: int, what: str) -> tuple[int, ...]:
    """Broadcast the leading axes of ``arrays`` (all but the last ``tail``), or say which clash."""
    try:
        return np.broadcast_shapes(*(a.shape[:-tail] for a in arrays.values()))
    except ValueError:
        seen = ", ".join(f"{n} {a.shape[:-tail]} (shape {a.shape})" for n, a in arrays.items())
        raise ValueError(f"{what} do not broadcast: {seen}; each axis must be equal or 1") from None


def _check_scale(scale: object, E: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(E) if E > 0 else 1.0
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


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
    return m.astype(cdtype, copy=False), None


def check_inputs(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    attn_mask: ArrayLike | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    causal_align: str = "top_left",
) -> AttentionInputs:
    """Validate and convert the arguments shared by every attention function.

    Parameters
    ----------
    q, k, v, attn_mask, is_causal, scale, enable_gqa, causal_align
        As in :func:`attention_forward`.

    Returns
    -------
    inputs : AttentionInputs
        ``q``, ``k``, ``v`` in the compute dtype (float16 -> float32, integers
        -> float64); the mask split into a float ``bias`` or a boolean
        ``keep`` (each in its own shape); the resolved ``scale``; the GQA
        group size ``groups``; the result ``dtype``; and ``scores_shape``
        ``(..., Hq, L, S)``, the broadcast shape of the scores.

    Raises
    ------
    TypeError
        Complex, object or string arrays; an integer ``attn_mask``; a
        non-number ``scale``.
    ValueError
        Fewer than 2 dimensions (3 with ``enable_gqa``); ``E`` of ``q`` and
        ``k`` differ; ``S`` of ``k`` and ``v`` differ; batch dimensions or the
        mask do not broadcast; ``Hq`` is not a positive multiple of ``Hkv``
        with ``enable_gqa``; ``+inf`` in a float mask; a non-finite ``scale``;
        unknown ``causal_align``. Each message names the argument and the
        shapes seen and expected.

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
    arrays = {n: as_float_array(a, n) for n, a in (("q", q), ("k", k), ("v", v))}
    min_ndim = 3 if enable_gqa else 2
    for n, a in arrays.items():
        if a.ndim < min_ndim:
            extra = " with enable_gqa=True" if enable_gqa else ""
            raise ValueError(
                f"{n} must have at least {min_ndim} dimensions{extra} "
                f"(..., {'H, ' if enable_gqa else ''}{'L' if n == 'q' else 'S'}, width), "
                f"got shape {a.shape}"
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
    if causal_align not in ALIGNMENTS:
        raise ValueError(f"causal_align must be one of {ALIGNMENTS}, got {causal_align!r}")
    groups = 1
    if enable_gqa:
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
        groups = hq // hk
        batch = _broadcast(arrays, 3, "the batch dimensions of q, k, v")
        head_axes = batch + (hq,)
    else:
        head_axes = _broadcast(
            arrays, 2, "the batch and head dimensions of q, k, v (without enable_gqa=True, "
            "heads broadcast like batch axes)"
        )  # fmt: skip
    scores_shape = head_axes + (qa.shape[-2], ka.shape[-2])
    dtype = np.result_type(qa, ka, va)
    cdtype = compute_dtype(dtype)
    bias, keep = _check_mask(attn_mask, scores_shape, cdtype)
    return AttentionInputs(
        q=qa.astype(cdtype, copy=False),
        k=ka.astype(cdtype, copy=False),
        v=va.astype(cdtype, copy=False),
        bias=bias,
        keep=keep,
        is_causal=bool(is_causal),
        causal_align=causal_align,
        scale=_check_scale(scale, qa.shape[-1]),
        groups=groups,
        dtype=dtype,
        scores_shape=scores_shape,
    )


def _check_dropout(
    dropout_p: float,
    dropout_mask: ArrayLike | None,
    rng: np.random.Generator | None,
    scores_shape: tuple[int, ...],
) -> NDArray[np.bool_] | None:
    """Return the dropout keep-mask (True = kept), or None without dropout."""
    if isinstance(dropout_p, (bool, np.bool_)) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a real number, got {type(dropout_p).__name__}")
    if not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError(f"dropout_p must lie in [0, 1), got {dropout_p}")
    if dropout_mask is None:
        if dropout_p == 0.0:
            return None
        gen = rng if rng is not None else np.random.default_rng()
        return gen.random(scores_shape) >= dropout_p
    z = np.asarray(dropout_mask)
    if z.dtype != np.bool_:
        raise TypeError(f"dropout_mask must be a bool keep-mask (True = kept), got dtype {z.dtype}")
    if dropout_p == 0.0:
        raise ValueError("dropout_mask was given but dropout_p is 0; pass the dropout rate")
    if not broadcasts_to(z.shape, scores_shape):
        raise ValueError(
            f"dropout_mask has shape {z.shape}, expected a shape that broadcasts to the "
            f"attention weights' shape (..., Hq, L, S) = {scores_shape}"
        )
    return z


# ---------------------------------------------------------------------------
# Grouped matmuls (GQA, Eq. (2.9)): query head h reads key/value head h // G
# ---------------------------------------------------------------------------


def _group(x: Array, groups: int) -> Array:
    """``(..., Hq, A, B) -> (..., Hkv, G, A, B)``: query head ``h = g_kv * G + g`` (Eq. (2.9))."""
    return x.reshape(x.shape[:-3] + (x.shape[-3] // groups, groups) + x.shape[-2:])


def _ungroup(x: Array) -> Array:
    """``(..., Hkv, G, A, B) -> (..., Hq, A, B)``, the inverse of :func:`_group`."""
    return x.reshape(x.shape[:-4] + (x.shape[-4] * x.shape[-3],) + x.shape[-2:])


def _per_query_head(a: Array, kv: Array, groups: int) -> Array:
    """Multiply ``a @ kv``, where ``a`` has query heads and ``kv`` key/value heads.

    Query head ``h`` is multiplied with key/value head ``h // G`` (Eq. (2.9)), without
    materialising the repeated ``kv``.
    """
    if groups == 1:
        return a @ kv
    return _ungroup(_group(a, groups) @ kv[..., None, :, :])


def _per_kv_head(a: Array, b: Array, groups: int) -> Array:
    """Multiply ``a @ b`` for two query-head arrays, summing over each GQA group (Eq. (2.16))."""
    if groups == 1:
        return a @ b
    return (_group(a, groups) @ _group(b, groups)).sum(axis=-3)


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionCache:
    """What :func:`attention_backward` needs; also the forward's by-products.

    Attributes
    ----------
    P : ndarray, shape (..., Hq, L, S)
        Attention weights, Eq. (2.3), *before* dropout. Rows sum to 1, or are
        all 0 for a query with no key to attend to.
    lse : ndarray, shape (..., Hq, L)
        Natural-log log-sum-exp of each row of masked scores, Eq. (2.3);
        ``-inf`` for a fully masked row.
    out : ndarray, shape (..., Hq, L, Ev)
        The output, in the compute dtype.
    keep : ndarray of bool or None
        The dropout keep-mask that was applied (True = kept), Eq. (2.4).
    """

    inputs: AttentionInputs
    P: Array
    lse: Array
    out: Array
    keep: NDArray[np.bool_] | None
    dropout_p: float

    @property
    def weights(self) -> Array:
        """The weights that multiplied ``V``: ``P`` after dropout, Eq. (2.4)."""
        return _apply_dropout(self.P, self.keep, self.dropout_p)


def _may_overflow(x: AttentionInputs) -> bool:
    """Tell whether a score may reach +-inf; ``|scale q_i . k_j| <= |scale| E max|q| max|k|``.

    Then the blocks need no check for overflow (the bound holds for every
    partial sum of the dot product too); inf or NaN inputs make it True.
    """
    if x.q.size == 0 or x.k.size == 0:
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        q_max = max(float(x.q.max()), -float(x.q.min()))
        k_max = max(float(x.k.max()), -float(x.k.min()))
        bound = abs(x.scale) * x.q.shape[-1] * q_max * k_max
    return not bound < float(np.finfo(x.q.dtype).max) / 4


def _masked_scores(x: AttentionInputs) -> Array:
    """Eqs. (2.1)-(2.2): ``scale * q k^T + bias``, with ``-inf`` where masked."""
    with np.errstate(over="ignore"):
        s = _per_query_head(x.q * x.scale, np.swapaxes(x.k, -1, -2), x.groups)  # Eq. (2.1)
    # -inf would pass for "masked", +inf gives NaN: refuse both (scanned only when possible)
    if _may_overflow(x) and np.isinf(s).any():
        raise ValueError(
            f"attention scores scale * q k^T overflow {s.dtype} (a score is +-inf; inf in q "
            "or k, or too large inputs); scale the inputs down or compute in float64"
        )
    if s.shape != x.scores_shape:  # v or the mask carry batch dims that q, k lack
        s = np.array(np.broadcast_to(s, x.scores_shape))
    if x.bias is not None:
        s += x.bias  # Eq. (2.2), additive bias
    allowed = x.keep
    if x.is_causal:
        causal = causal_mask(s.shape[-2], s.shape[-1], x.causal_align)  # Eq. (2.6)
        allowed = causal if allowed is None else allowed & causal
    if allowed is not None:
        np.copyto(s, -np.inf, where=~allowed)  # Eq. (2.2), boolean mask
    return s


def _softmax_lse_inplace(s: Array) -> tuple[Array, Array]:
    """Eq. (2.3): turn masked scores into weights ``P`` in place; also return ``lse``."""
    m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)  # S = 0: no key, a masked row
    if np.any(m == np.inf):
        raise ValueError(
            f"attention scores overflow {s.dtype} (a score is +inf); "
            "scale the inputs down or compute in float64"
        )
    m[m == -np.inf] = 0.0  # a fully masked row: exp(-inf - 0) = 0, no NaN
    s -= m
    np.exp(s, out=s)
    total = np.sum(s, axis=-1, keepdims=True)
    s /= np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore"):
        lse = (m + np.log(total))[..., 0]
    return s, lse


def _apply_dropout(P: Array, keep: NDArray[np.bool_] | None, p: float) -> Array:
    """Eq. (2.4): ``P * Z / (1 - p)``, or ``P`` itself without dropout.

    The backward multiplies ``dP`` by the same factor with the same ``Z`` (Eq. (2.11)).
    """
    if keep is None:
        return P
    return P * keep * P.dtype.type(1.0 / (1.0 - p))


def attention_forward(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    attn_mask: ArrayLike | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    dropout_mask: ArrayLike | None = None,
    rng: np.random.Generator | None = None,
    causal_align: str = "top_left",
) -> tuple[Array, AttentionCache]:
    r"""Scaled dot-product attention, returning the output and a cache for the backward.

    Shapes: ``q (..., Hq, L, E)``, ``k (..., Hkv, S, E)``, ``v (..., Hkv, S, Ev)``
    -> ``out (..., Hq, L, Ev)`` (see the module docstring for the legend).

    Parameters
    ----------
    q, k, v : array_like
        Queries, keys, values. Leading dimensions broadcast as in torch.
    attn_mask : array_like of bool or float, optional
        Broadcastable to ``(..., Hq, L, S)``. Bool: True = the key takes part
        in attention. Float: added to the scores (ALiBi, relative positions);
        it may hold ``-inf`` and it receives a gradient.
    dropout_p : float, optional
        Dropout rate on the attention weights, in ``[0, 1)``. Default 0.
    is_causal : bool, optional
        Apply the causal mask of Eq. (2.6), aligned by ``causal_align``;
        intersected with ``attn_mask``.
    scale : float, optional
        Multiplies ``q k^T``. Default ``1 / sqrt(E)``.
    enable_gqa : bool, optional
        Grouped-query attention: ``Hq = G * Hkv`` and query head ``h`` uses
        key/value head ``h // G`` (torch's ``repeat_interleave`` order).
        Without it, head counts broadcast like any batch dimension.
    dropout_mask : array_like of bool, optional
        Explicit keep-mask (True = kept) broadcastable to ``(..., Hq, L, S)``;
        kept weights are scaled by ``1 / (1 - dropout_p)``.
    rng : numpy.random.Generator, optional
        Draws the keep-mask when ``dropout_p > 0`` and no ``dropout_mask`` is
        given (a fresh unseeded generator if None).
    causal_align : {"top_left", "bottom_right"}, optional
        Diagonal alignment for ``is_causal`` when ``L != S``. Default
        ``"top_left"`` (torch); ``"bottom_right"`` is FlashAttention's.

    Returns
    -------
    out : ndarray, shape (..., Hq, L, Ev)
        In the inputs' dtype. Rows of a query with no key left are 0.
    cache : AttentionCache
        Holds ``P`` (weights), ``lse`` (natural log) and what the backward needs.

    Raises
    ------
    TypeError
        Complex, object or string inputs; an integer ``attn_mask``; a
        non-bool ``dropout_mask``.
    ValueError
        Mismatched ``E`` or ``S``; batch dimensions or masks that do not
        broadcast; ``Hq`` not a multiple of ``Hkv`` with ``enable_gqa``;
        ``dropout_p`` outside ``[0, 1)``; fewer than 2 dimensions; scores
        that overflow the dtype.

    Notes
    -----
    Eqs. (2.1)-(2.5) of ``docs/attention.md``:

    .. math::

        S = \mathrm{scale}\cdot QK^\top \;(2.1), \qquad
        \tilde S = S + B, \ \tilde S_{ij} = -\infty \text{ where masked } (2.2),

        P = \mathrm{softmax}(\tilde S), \ \mathrm{lse}_i = \log\textstyle\sum_j e^{\tilde S_{ij}}
        \;(2.3), \qquad
        \tilde P = P \odot Z / (1 - p) \;(2.4), \qquad O = \tilde P V \;(2.5).

    A row with every key masked gets ``P = 0``, ``O = 0``, ``lse = -inf``
    (torch's ``_safe_softmax``; JAX returns ``mean(V)`` there). NaN in
    ``q[..., i, :]`` reaches only output row ``i``; NaN in key row ``j`` reaches
    the rows not masked from key ``j`` by a boolean or causal mask; NaN in value
    row ``j`` reaches every query row of that head (``0 * NaN = NaN`` in ``P V``).

    Examples
    --------
    >>> q = np.array([[1.0, 0.0]]); k = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> v = np.array([[1.0], [0.0]])
    >>> out, cache = attention_forward(q, k, v, scale=1.0)
    >>> cache.P.round(4)
    array([[0.7311, 0.2689]])
    >>> out.round(4)
    array([[0.7311]])
    >>> float(cache.lse[0]) == float(np.log(np.e + 1.0))
    True
    """
    x = check_inputs(q, k, v, attn_mask, is_causal, scale, enable_gqa, causal_align)
    keep = _check_dropout(dropout_p, dropout_mask, rng, x.scores_shape)
    P, lse = _softmax_lse_inplace(_masked_scores(x))  # Eqs. (2.1)-(2.3)
    out = _per_query_head(_apply_dropout(P, keep, dropout_p), x.v, x.groups)  # (2.4)-(2.5)
    if out.shape != x.out_shape:
        out = np.array(np.broadcast_to(out, x.out_shape))
    cache = AttentionCache(inputs=x, P=P, lse=lse, out=out, keep=keep, dropout_p=float(dropout_p))
    return out.astype(x.dtype, copy=False), cache


def scaled_dot_product_attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    attn_mask: ArrayLike | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    dropout_mask: ArrayLike | None = None,
    rng: np.random.Generator | None = None,
    causal_align: str = "top_left",
) -> Array:
    r"""Scaled dot-product attention (output only), as torch's function of the same name.

    Parameters, shapes and errors are those of :func:`attention_forward`.

    Parameters
    ----------
    q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa : see attention_forward
    dropout_mask, rng, causal_align : see attention_forward

    Returns
    -------
    out : ndarray, shape (..., Hq, L, Ev)

    Notes
    -----
    Eqs. (2.1)-(2.5) of ``docs/attention.md``:
    :math:`O = \mathrm{softmax}(\mathrm{scale}\cdot QK^\top + B)\,V`.

    Examples
    --------
    >>> q = np.ones((2, 1, 3, 4)); k = v = np.ones((2, 1, 5, 4))
    >>> scaled_dot_product_attention(q, k, v, is_causal=True).shape
    (2, 1, 3, 4)
    """
    out, _ = attention_forward(
        q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa,
        dropout_mask=dropout_mask, rng=rng, causal_align=causal_align,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionGrads:
    """Gradients of a scalar loss with respect to each input of the forward.

    ``d_attn_mask`` has the float mask's own (broadcast) shape; it is None
    for a boolean mask or no mask.
    """

    dq: Array
    dk: Array
    dv: Array
    d_attn_mask: Array | None


def attention_backward(d_out: ArrayLike, cache: AttentionCache) -> AttentionGrads:
    r"""Hand-written backward of :func:`attention_forward`.

    Parameters
    ----------
    d_out : array_like, shape (..., Hq, L, Ev)
        Gradient of the loss with respect to ``out``.
    cache : AttentionCache
        From :func:`attention_forward`.

    Returns
    -------
    grads : AttentionGrads
        ``dq``, ``dk``, ``dv`` with the shapes of ``q``, ``k``, ``v`` (summed
        over broadcast dimensions and over each GQA group), and
        ``d_attn_mask`` (float mask only). Masked keys and fully masked rows
        get exactly zero gradient.

    Raises
    ------
    ValueError
        If ``d_out`` does not have the output's shape.

    Notes
    -----
    Eqs. (2.10)-(2.16) of ``docs/attention.md``, each undoing a forward line:

    .. math::

        dV = \tilde P^\top dO,\ d\tilde P = dO\,V^\top \;(2.10), \qquad
        dP = d\tilde P \odot Z/(1-p) \;(2.11),

        D_i = \textstyle\sum_j dP_{ij}P_{ij} = \sum_e dO_{ie} O_{ie} \;(2.12), \qquad
        dS = P \odot (dP - D) \;(2.13),

        dQ = \mathrm{scale}\cdot dS\,K,\ dK = \mathrm{scale}\cdot dS^\top Q \;(2.14), \qquad
        dB = dS \text{ summed to } B\text{'s shape} \;(2.15).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    >>> out, cache = attention_forward(q, k, v)
    >>> g = attention_backward(np.ones_like(out), cache)
    >>> g.dq.shape, g.dk.shape, g.dv.shape, g.d_attn_mask
    ((3, 4), (5, 4), (5, 2), None)
    """
    x, P, G = cache.inputs, cache.P, cache.inputs.groups
    dO = as_float_array(d_out, "d_out")
    if dO.shape != cache.out.shape:
        raise ValueError(
            f"d_out has shape {dO.shape}, expected the output's shape {cache.out.shape}"
        )
    dO = dO.astype(P.dtype, copy=False)
    P_d = _apply_dropout(P, cache.keep, cache.dropout_p)
    # out = P_d @ v  (Eq. 2.5)  ->  dv = P_d^T dO,  dP_d = dO v^T  (Eq. 2.10)
    dv = _per_kv_head(np.swapaxes(P_d, -1, -2), dO, G)
    dP = _per_query_head(dO, np.swapaxes(x.v, -1, -2), G)
    # P_d = P * Z / (1 - p)  (Eq. 2.4)  ->  dP = dP_d * Z / (1 - p)  (Eq. 2.11)
    if cache.keep is not None:
        dP = _apply_dropout(dP, cache.keep, cache.dropout_p)
    # P = softmax(S~)  (Eq. 2.3)  ->  dS = P * (dP - D),  D = rowsum(dO * O)  (Eqs. 2.12-2.13)
    D = np.sum(dO * cache.out, axis=-1, keepdims=True)
    dS = dP
    dS -= D
    dS *= P
    # S~ = S + B  (Eq. 2.2)  ->  dB = dS summed to B's shape  (Eq. 2.15)
    d_mask = None if x.bias is None else sum_to_shape(dS, x.bias.shape).astype(x.dtype)
    # S = scale * q k^T  (Eq. 2.1)  ->  dq = scale dS k,  dk = scale dS^T q  (Eqs. 2.14, 2.16)
    dq = _per_query_head(dS, x.k, G) * x.scale
    dk = _per_kv_head(np.swapaxes(dS, -1, -2), x.q, G) * x.scale
    return AttentionGrads(
        dq=sum_to_shape(dq, x.q.shape).astype(x.dtype, copy=False),
        dk=sum_to_shape(dk, x.k.shape).astype(x.dtype, copy=False),
        dv=sum_to_shape(dv, x.v.shape).astype(x.dtype, copy=False),
        d_attn_mask=d_mask,
    )
