r"""Scaled dot-product attention: the forward, and right below it the hand-written backward.

The core of the package. Semantics follow
``torch.nn.functional.scaled_dot_product_attention`` (torch >= 2.5), so
results are directly comparable; see ``docs/conventions.md`` for the places
where frameworks disagree. Equations are numbered as in ``docs/attention.md``
(chapter 2) and ``docs/variants.md`` (chapter 8, the variants of today's
models: softcap, score_mod, ALiBi, windows, chunks, sinks). The same formulas as
literal loops over batch, head, query and key with ``math.exp`` (slow, obviously
right, what the tests compare with): ``attention_oracle`` and
``attention_backward_oracle`` in ``tests/oracles.py``.

Shapes (letter legend)::

    B...  leading batch dimensions (any number, broadcast like torch)
    Hq    query heads            Hkv  key/value heads (Hq = G * Hkv with GQA)
    L     queries                S    keys
    E     query/key width        Ev   value width

    q    (..., Hq,  L, E)       k    (..., Hkv, S, E)      v (..., Hkv, S, Ev)
    mask broadcastable to (..., Hq, L, S)                  out (..., Hq, L, Ev)

The forward, one line per equation::

    S        = scale * q @ k^T                         (2.1)
    S_c      = softcap, then score_mod, of S           (8.2)-(8.3)
    S_masked = S_c + B + ALiBi, -inf where masked      (2.2), (8.4), (8.8)
    P, lse   = softmax(S_masked), with the sinks       (2.3), (8.9)
    P_d      = P * Z / (1 - dropout_p)                 (2.4)
    out      = P_d @ v                                 (2.5)

Precision: float64 inputs are computed in float64 (the oracle); float32 in
float32; float16 is computed in float32 and rounded once at the end; integer
inputs are promoted to float64. Every result has the inputs' (promoted) dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import Array, absmax, block_view, broadcast_as, pow2_scaled, sum_to_shape
from ._inputs import AttentionInputs, check_dropout, check_inputs
from ._validate import check_grad, check_instance
from .softmax import softmax_lse_inplace

__all__ = [
    "AttentionCache",
    "AttentionGrads",
    "attention_forward",
    "attention_backward",
    "scaled_dot_product_attention",
    "check_scores",
    "score_pipeline",
    "score_pipeline_backward",
    "sink_weights",
    "sink_grad",
]


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
# The score pipeline, Eqs. (2.2), (8.2)-(8.8): shared with the tiled functions,
# which call it on one block (queries i0:, keys j0:) at a time
# ---------------------------------------------------------------------------


def check_scores(S: Array, x: AttentionInputs, after: str) -> None:
    """Refuse scores that overflowed: +-inf (or NaN) from finite inputs, Eq. (2.1).

    Scanned only when :func:`~numpy_attention._inputs.check_inputs` found that
    the bound ``|scale| E max|q| max|k|`` (plus the biases) may exceed the
    dtype's range. ``-inf`` would pass for "masked" and ``+inf`` gives NaN.

    Examples
    --------
    >>> from numpy_attention._inputs import check_inputs
    >>> x = check_inputs([[1e308, -1e308]], [[2.0, 2.0]], [[1.0]], scale=1.0)
    >>> check_scores(np.array([[np.nan]]), x, "scale * q k^T")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: attention scores scale * q k^T overflow float64 ...
    """
    if not x.may_overflow:
        return
    bad = np.isposinf(S).any() if after != "scale * q k^T" else np.isinf(S).any()
    if bad or (x.finite and np.isnan(S).any()):
        raise ValueError(
            f"attention scores {after} overflow {S.dtype} (a score is +-inf or NaN: inf in q "
            "or k, or too large inputs or bias); scale the inputs down or compute in float64"
        )


def _indices(x: AttentionInputs, S: Array, i0: int, j0: int) -> tuple[Any, ...]:
    """``b, h, q_idx, kv_idx`` of the scores ``S (..., Hq, n, m)`` at queries ``i0:``, keys ``j0:``.

    They broadcast to ``S``; ``b`` numbers the batch dimensions flattened in C order.
    """
    lead, (n, m) = S.shape[:-2], S.shape[-2:]
    batch = lead[:-1]
    b = np.arange(int(np.prod(batch)), dtype=np.intp).reshape(batch + (1, 1, 1)) if batch else 0
    h = np.arange(lead[-1], dtype=np.intp)[:, None, None] if lead else 0
    return b, h, np.arange(i0, i0 + n)[:, None], np.arange(j0, j0 + m)


def _mod_result(r: Any, name: str, shape: tuple[int, ...], kind: str) -> NDArray[Any]:
    """Check what a ``mask_mod`` (``kind="b"``) or ``score_mod`` (``"f"``) returned."""
    a = np.asarray(r)
    if a.dtype.kind != kind and not (kind == "f" and a.dtype.kind in "iu"):
        want = "a bool array (True = attend)" if kind == "b" else "a floating array of scores"
        raise TypeError(f"{name} must return {want}, got dtype {a.dtype}")
    return broadcast_as(a, shape, f"the result of {name}")


def _visible(x: AttentionInputs, S: Array, i0: int, j0: int, idx: tuple) -> Any:
    """Eq. (8.8): bool attn_mask AND positions (causal, window, chunk, sinks) AND mask_mod."""
    n, m = S.shape[-2:]
    allowed = None if x.keep is None else block_view(x.keep, i0, j0, n, m)
    if x.pos.active and x.pos.block(i0, i0 + n, j0, j0 + m) != "all":
        pos = x.pos.mask(idx[2], idx[3])
        allowed = pos if allowed is None else allowed & pos
    if x.mods.mask_mod is not None:
        mm = _mod_result(x.mods.mask_mod(*idx), "mask_mod", S.shape, "b")
        allowed = mm if allowed is None else allowed & mm
    return allowed


def score_pipeline(x: AttentionInputs, S: Array, i0: int = 0, j0: int = 0) -> Array | None:
    r"""Eqs. (8.2)-(8.8) and (2.2) in place: ``S`` becomes ``S_masked``; returns ``S_c`` or None.

    ``S (..., Hq, n, m)`` holds the scores of queries ``i0:i0+n`` and keys
    ``j0:j0+m`` (Eq. (2.1)); the positions (causal Eq. (2.6), window Eq. (2.8))
    come from :class:`~numpy_attention.masks.Positions`. Returns a copy of the capped scores
    ``S_c`` when the backward needs them (softcap or score_mod), else None.

    .. math::

        S_c = g\big(c \tanh(S / c)\big) \;(8.2)\text{-}(8.3), \qquad
        \tilde S = S_c + B - m_h |i + d - j| \;(2.2), (8.4), \qquad
        \tilde S_{ij} = -\infty \text{ where not visible } (8.8).

    Examples
    --------
    >>> from numpy_attention._inputs import check_inputs
    >>> x = check_inputs(np.zeros((2, 1)), np.zeros((3, 1)), np.zeros((3, 1)),
    ...                  is_causal=True, softcap=1.0)
    >>> S = np.full((2, 3), 5.0)
    >>> S_c = score_pipeline(x, S)
    >>> S.round(4).tolist(), S_c.round(4).tolist()[0]
    ([[1.0, -inf, -inf], [1.0, 1.0, -inf]], [0.9999, 0.9999, 0.9999])
    """
    mods, idx = x.mods, _indices(x, S, i0, j0)
    if mods.softcap is not None:
        S /= mods.softcap
        np.tanh(S, out=S)
        S *= mods.softcap  # Eq. (8.2): S <- c tanh(S / c)
    S_c = S.copy() if mods.keeps_scores else None
    if mods.score_mod is not None:
        S[...] = _mod_result(mods.score_mod(S_c, *idx), "score_mod", S.shape, "f")  # Eq. (8.3)
    with np.errstate(over="ignore"):  # an overflow here is refused by check_scores
        if x.bias is not None:
            S += block_view(x.bias, i0, j0, *S.shape[-2:])  # Eq. (2.2): + B
        if mods.alibi is not None:
            S -= mods.alibi * np.abs(idx[2] + x.pos.offset - idx[3])  # (8.4): - m_h |i + d - j|
    allowed = _visible(x, S, i0, j0, idx)
    if allowed is not None:
        np.copyto(S, -np.inf, where=~allowed)  # Eqs. (2.2), (8.8): -inf where masked
    return S_c


def score_pipeline_backward(
    x: AttentionInputs, dS: Array, S_c: Array | None, i0: int = 0, j0: int = 0
) -> Array:
    r"""Undo :func:`score_pipeline`, in place: ``dS_masked`` becomes ``dS``.

    Masked entries already hold 0 (their ``P`` is 0); the bias and ALiBi add
    nothing to the derivative; ``score_mod`` and the cap contribute their
    derivatives, Eqs. (8.13)-(8.14):

    .. math:: dS_c = dS_\text{masked} \odot g'(S_c) \;(8.13), \qquad
              dS = dS_c \odot \big(1 - (\mathrm{capped}/c)^2\big) \;(8.14).

    Examples
    --------
    >>> from numpy_attention._inputs import check_inputs
    >>> x = check_inputs(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), softcap=2.0)
    >>> S = np.array([[1.0]]); S_c = score_pipeline(x, S)  # 2 tanh(1/2)
    >>> g = score_pipeline_backward(x, np.ones((1, 1)), S_c)
    >>> bool(np.isclose(g[0, 0], 1 - np.tanh(0.5) ** 2))
    True
    """
    mods = x.mods
    if mods.score_mod is not None:
        if mods.score_mod_grad is None:
            raise ValueError(
                "score_mod was given without score_mod_grad; the backward needs "
                "score_mod_grad(score, b, h, q_idx, kv_idx) = d score_mod / d score"
            )
        # S = score_mod(S_c, ...)  (Eq. (8.3))  ->  dS_c = dS * score_mod_grad(S_c, ...)  (8.13)
        dS *= _mod_result(mods.score_mod_grad(S_c, *_indices(x, dS, i0, j0)),
                          "score_mod_grad", dS.shape, "f")  # fmt: skip
    if mods.softcap is not None and S_c is not None:
        # S_c = c tanh(S / c)  (Eq. (8.2))  ->  dS = dS_c * (1 - tanh^2) = dS_c * (1 - (S_c/c)^2)
        t = S_c / mods.softcap  # S_c is kept before score_mod: the capped scores themselves
        t *= t
        np.subtract(1.0, t, out=t)
        dS *= t  # Eq. (8.14)
    return dS


def sink_weights(x: AttentionInputs, lse: Array) -> Array:
    """Eq. (8.9): each row's weight on its sink, ``exp(sink_h - lse_i)``, shape ``(..., Hq, L)``.

    Examples
    --------
    >>> out, cache = attention_forward(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)),
    ...                                np.ones((1, 1, 1)), sinks=[0.0])
    >>> sink_weights(cache.inputs, cache.lse).tolist(), out.tolist()  # sink and key share 1/2
    ([[0.5]], [[[0.5]]])
    """
    assert x.mods.sinks is not None
    with np.errstate(over="ignore"):
        return np.exp(x.mods.sinks[..., 0] - lse)


# ---------------------------------------------------------------------------
# Forward, and its backward right below
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionCache:
    """What :func:`attention_backward` needs; also the forward's by-products.

    Attributes
    ----------
    P : ndarray, shape (..., Hq, L, S)
        Attention weights, Eq. (2.3), *before* dropout. Rows sum to 1 (less
        the sink's share, Eq. (8.9)), or are all 0 for a query with no key.
    lse : ndarray, shape (..., Hq, L)
        Natural-log log-sum-exp of each row of masked scores, Eq. (2.3)
        (with the sink's term, Eq. (8.9)); ``-inf`` for a fully masked row
        (the sink logit with sinks).
    out : ndarray, shape (..., Hq, L, Ev)
        The output, in the compute dtype (the caller gets a copy).
    keep : ndarray of bool or None
        The dropout keep-mask that was applied (True = kept), Eq. (2.4).
    S_c : ndarray or None
        The capped (and modded) scores, Eqs. (8.2)-(8.3), kept only for
        softcap and score_mod, whose derivatives need them.
    """

    inputs: AttentionInputs
    P: Array
    lse: Array
    out: Array
    keep: NDArray[np.bool_] | None
    dropout_p: float
    S_c: Array | None = None

    @property
    def weights(self) -> Array:
        """The weights that multiplied ``V``: ``P`` after dropout, Eq. (2.4)."""
        return _dropout(self.P, self.keep, self.dropout_p)


def _dropout(P: Array, keep: NDArray[np.bool_] | None, p: float) -> Array:
    """Eq. (2.4): ``P * Z / (1 - dropout_p)``, or ``P``; the backward's ``dP`` too, Eq. (2.11)."""
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
    **variants: Any,
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
        Where query ``i`` sits on the key axis, ``i + d`` with ``d = 0``
        (``"top_left"``, torch) or ``d = S - L`` (``"bottom_right"``,
        FlashAttention's); used by ``is_causal``, ``window``, ``chunk_size``
        and ``alibi_slopes``.
    **variants
        The variants of docs/variants.md, each off by default:
        ``window=(left, right)`` (query ``i`` sees keys ``i + d - left`` to
        ``i + d + right``; None = unbounded side, Eq. (2.8));
        ``chunk_size=C`` (query and key in the same chunk, Eq. (8.7));
        ``sink_tokens=n`` (the first ``n`` keys stay visible outside the
        window or chunk, Eq. (8.8)); ``softcap=kappa > 0`` (Eq. (8.2));
        ``score_mod(score, b, h, q_idx, kv_idx)`` with its derivative
        ``score_mod_grad`` (Eq. (8.3)); ``mask_mod(b, h, q_idx, kv_idx) -> bool``
        (Eq. (8.8)); ``alibi_slopes`` ``(Hq,)`` or ``(..., Hq)`` (Eq. (8.4));
        ``sinks`` ``(Hq,)``, a logit per query head in every row's denominator
        (Eq. (8.9)).

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
        non-bool ``dropout_mask``, ``is_causal`` or ``enable_gqa``; an ``rng``
        that is not a ``numpy.random.Generator``; a non-callable mod or one
        returning the wrong dtype.
    ValueError
        Mismatched ``E`` or ``S``; batch dimensions or masks that do not
        broadcast; ``Hq`` not a multiple of ``Hkv`` with ``enable_gqa``;
        ``dropout_p`` outside ``[0, 1)``; fewer than 2 dimensions; scores
        that overflow the dtype; a bad variant argument (each named).

    Notes
    -----
    Eqs. (2.1)-(2.5) of ``docs/attention.md`` and Eqs. (8.1)-(8.9) of ``docs/variants.md``:

    .. math::

        S = \mathrm{scale}\cdot QK^\top \;(2.1), \qquad
        \tilde S = S + B, \ \tilde S_{ij} = -\infty \text{ where masked } (2.2),

        P = \mathrm{softmax}(\tilde S), \ \mathrm{lse}_i = \log\textstyle\sum_j e^{\tilde S_{ij}}
        \;(2.3), \qquad
        \tilde P = P \odot Z / (1 - p_\mathrm{drop}) \;(2.4), \qquad O = \tilde P V \;(2.5).

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
    x = check_inputs(
        q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
        causal_align=causal_align, **variants,
    )  # fmt: skip
    keep = check_dropout(dropout_p, dropout_mask, rng, x.scores_shape)
    G = x.groups
    with np.errstate(over="ignore", invalid="ignore"):  # refused just below if it happens
        S = _per_query_head(x.q * x.q.dtype.type(x.scale), np.swapaxes(x.k, -1, -2), G)  # (2.1)
    check_scores(S, x, "scale * q k^T")
    if S.shape != x.scores_shape:  # v or the mask carry batch dims that q, k lack
        S = np.array(np.broadcast_to(S, x.scores_shape))
    S_masked, S_c = S, score_pipeline(x, S)  # Eqs. (8.2)-(8.8), (2.2), in place
    check_scores(S_masked, x, "after the bias")
    P, lse = softmax_lse_inplace(S_masked, sink=x.mods.sinks, bounded=x.exp_safe)  # (2.3), (8.9)
    P_d = _dropout(P, keep, float(dropout_p))  # Eq. (2.4)
    out = _per_query_head(P_d, x.v, G)  # Eq. (2.5)
    if out.shape != x.out_shape:
        out = np.array(np.broadcast_to(out, x.out_shape))
    cache = AttentionCache(x, P, lse[..., 0], out, keep, float(dropout_p), S_c)
    return out.astype(x.dtype), cache  # a copy: editing it must not change the cache


@dataclass(frozen=True)
class AttentionGrads:
    """Gradients of a scalar loss with respect to each input of the forward.

    ``d_attn_mask`` has the float mask's own (broadcast) shape; it is None
    for a boolean mask or no mask. ``d_sinks`` has the sinks' shape ``(Hq,)``;
    None without sinks.
    """

    dq: Array
    dk: Array
    dv: Array
    d_attn_mask: Array | None
    d_sinks: Array | None = None


def attention_backward(d_out: ArrayLike, cache: AttentionCache) -> AttentionGrads:
    r"""Hand-written backward of :func:`attention_forward`, undoing its lines in reverse.

    Shapes: ``d_out (..., Hq, L, Ev)`` -> ``dq (..., Hq, L, E)``,
    ``dk (..., Hkv, S, E)``, ``dv (..., Hkv, S, Ev)``, ``d_attn_mask`` (the
    float mask's shape), ``d_sinks (Hq,)``.

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
        over broadcast dimensions and over each GQA group), ``d_attn_mask``
        (float mask only) and ``d_sinks`` (sinks only). Masked keys and fully
        masked rows get exactly zero gradient.

    Raises
    ------
    TypeError
        If ``cache`` is not an :class:`AttentionCache`.
    ValueError
        If ``d_out`` does not have the output's shape; a ``score_mod``
        without ``score_mod_grad``.

    Notes
    -----
    Eqs. (2.10)-(2.16) of ``docs/attention.md`` and Eqs. (8.10)-(8.15) of
    ``docs/variants.md``, each undoing a forward line:

    .. math::

        dV = \tilde P^\top dO,\ d\tilde P = dO\,V^\top \;(2.10), \qquad
        dP = d\tilde P \odot Z/(1-p_\mathrm{drop}) \;(2.11),

        D_i = \textstyle\sum_j dP_{ij}P_{ij} = \sum_c dO_{ic} O_{ic} \;(2.12), \qquad
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
    check_instance(cache, AttentionCache, "cache", "attention_forward")
    x, P, G = cache.inputs, cache.P, cache.inputs.groups
    dO = check_grad(d_out, "d_out", cache.out.shape, P.dtype)
    # |dP| <= Ev max|dO| max|v| could overflow: v and out / 2^e (exact), dS * 2^e once small
    (v, out), e = pow2_scaled((x.v, cache.out), (x.v.shape[-1], absmax(dO)))
    # out = P_d @ v  (Eq. (2.5))  ->  dv = P_d^T dO,  dP_d = dO v^T  (Eq. (2.10))
    dv = _per_kv_head(np.swapaxes(cache.weights, -1, -2), dO, G)
    dP = _per_query_head(dO, np.swapaxes(v, -1, -2), G)
    # P_d = P * Z / (1 - dropout_p)  (Eq. (2.4))  ->  dP = dP_d * Z / (1 - dropout_p)  (Eq. (2.11))
    dP = _dropout(dP, cache.keep, cache.dropout_p)
    # P, lse = softmax(S_masked)  (Eqs. (2.3), (8.9))
    #   ->  D = rowsum(dO * out),  dS_masked = P * (dP - D)  (Eqs. (2.12)-(2.13))
    D = np.sum(dO * out, axis=-1, keepdims=True)
    dS_masked = dP
    dS_masked -= D
    dS_masked *= P
    if e:
        np.ldexp(dS_masked, e, out=dS_masked)  # undo the scaling of v
    #   ->  d_sinks = -sum P_sink * D  (Eq. (8.11): the sink's column has dP = 0)
    d_sinks = sink_grad(x, cache.lse, D[..., 0], e)
    # S_masked = S_c + B ...  (Eq. (2.2))  ->  dB = dS_masked summed to B's shape  (Eq. (2.15))
    d_mask = None if x.bias is None else sum_to_shape(dS_masked, x.bias.shape).astype(x.dtype)
    # S_c = softcap, score_mod of S  (Eqs. (8.2)-(8.3))  ->  dS  (Eqs. (8.13)-(8.14))
    dS = score_pipeline_backward(x, dS_masked, cache.S_c)
    # S = scale * q k^T  (Eq. (2.1))  ->  dq = scale dS k,  dk = scale dS^T q  (Eqs. (2.14), (2.16))
    dq = _per_query_head(dS, x.k, G) * x.scale
    dk = _per_kv_head(np.swapaxes(dS, -1, -2), x.q, G) * x.scale
    return AttentionGrads(
        dq=sum_to_shape(dq, x.q.shape).astype(x.dtype, copy=False),
        dk=sum_to_shape(dk, x.k.shape).astype(x.dtype, copy=False),
        dv=sum_to_shape(dv, x.v.shape).astype(x.dtype, copy=False),
        d_attn_mask=d_mask,
        d_sinks=d_sinks,
    )


def sink_grad(x: AttentionInputs, lse: Array, D: Array, e: int = 0) -> Array | None:
    """Eq. (8.11): ``d sink_h = -sum_{batch, i} P_sink_i D_i`` (``D (..., Hq, L)`` given / ``2^e``).

    Shared by the core and the tiled backward; None without sinks.

    Examples
    --------
    >>> out, cache = attention_forward(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)),
    ...                                np.ones((1, 1, 1)), sinks=[0.0])
    >>> sink_grad(cache.inputs, cache.lse, np.ones((1, 1))).tolist()  # -P_sink * D
    [-0.5]
    """
    if x.mods.sinks is None:
        return None
    g = -(sink_weights(x, lse) * D).sum(axis=-1)  # (..., Hq)
    g = g.sum(axis=tuple(range(g.ndim - 1)))
    return np.ldexp(g, e).astype(x.dtype, copy=False) if e else g.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------
# The output alone, as torch's function
# ---------------------------------------------------------------------------


def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> Array:
    r"""Scaled dot-product attention (output only), as torch's function of the same name.

    ``scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0,
    is_causal=False, scale=None, enable_gqa=False, *, dropout_mask=None,
    rng=None, causal_align="top_left", **variants)``: the arguments, shapes and
    errors of :func:`attention_forward`, whose output it returns.

    Parameters
    ----------
    *args, **kwargs
        Those of :func:`attention_forward`, in its order.

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
    out, _ = attention_forward(*args, **kwargs)
    return out
