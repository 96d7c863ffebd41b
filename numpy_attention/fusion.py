r"""Weighted fusion of attention branches (the seed's "Self-Attention Fusion"), with backward.

The seed document's formula :math:`\sum_i \alpha_i\,\mathrm{Attention}(X, X, X)`
sums :math:`N` identical terms unless each attention has its own parameters.
This module implements the meaningful version, :math:`N` self-attention
branches with their own projections, fused by weights :math:`\alpha` that are
either fixed by the caller or learned as :math:`\alpha = \mathrm{softmax}(\beta)`;
and the seed code's form (concatenate the branch outputs, then a linear layer).
Equations are numbered as in ``docs/fusion.md`` (chapter 4).

Shapes (letter legend)::

    N    branches      B    batch      T    sequence length
    E    input width   Eo   each branch's output width      Ey   concat form's output width

    x (B, T, E)     each branch output A_i (B, T, Eo)     fused y (B, T, Eo)
    alpha, beta (N,)     concat form: w (N*Eo, Ey), b (Ey,), y (B, T, Ey)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import as_float_array
from .layers import (
    CrossAttentionCache,
    CrossAttentionParams,
    init_cross_attention,
    self_attention_backward,
    self_attention_forward,
)
from .softmax import softmax, softmax_backward

__all__ = [
    "FusionParams",
    "FusionCache",
    "init_fusion",
    "fusion_forward",
    "fusion_backward",
    "ConcatFusionParams",
    "ConcatFusionCache",
    "init_concat_fusion",
    "concat_fusion_forward",
    "concat_fusion_backward",
    "weighted_fusion",
    "weighted_fusion_backward",
]

Array = NDArray[np.floating]

#: Largest ``|sum(alpha) - 1|`` accepted for convex weights.
ALPHA_SUM_TOL = 1e-6


# ---------------------------------------------------------------------------
# The weighted-sum primitive
# ---------------------------------------------------------------------------


def _check_alpha(alpha: ArrayLike, n: int, convex: bool, name: str = "alpha") -> Array:
    """Validate fusion weights: shape ``(n,)``, finite, and convex when required."""
    a = as_float_array(alpha, name)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},) for N={n} branches, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a.tolist()}")
    if convex:
        if np.any(a < 0):
            raise ValueError(
                f"{name} must be non-negative convex weights (convex=True), got {a.tolist()}"
            )
        total = float(np.sum(a, dtype=np.float64))
        if abs(total - 1.0) > ALPHA_SUM_TOL:
            raise ValueError(
                f"{name} must sum to 1 (convex=True), got sum {total!r}; "
                "pass convex=False for arbitrary weights"
            )
    return a


def _stack_outputs(outputs: Sequence[ArrayLike] | ArrayLike) -> Array:
    """``N`` equally shaped branch outputs as one array of shape ``(N, ...)``."""
    if isinstance(outputs, np.ndarray):
        arrays = [as_float_array(outputs, "outputs")]
        stacked = arrays[0]
        if stacked.ndim < 1 or stacked.shape[0] == 0:
            raise ValueError(f"outputs must hold at least one branch, got shape {stacked.shape}")
        return stacked
    if not isinstance(outputs, Sequence) or len(outputs) == 0:
        raise ValueError("outputs must be a non-empty sequence of arrays or an array (N, ...)")
    arrays = [as_float_array(o, f"outputs[{i}]") for i, o in enumerate(outputs)]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"outputs must all have the same shape, got {[a.shape for a in arrays]}")
    return np.stack(arrays)


def weighted_fusion(
    outputs: Sequence[ArrayLike] | ArrayLike, alpha: ArrayLike, *, convex: bool = True
) -> Array:
    r"""Fuse ``N`` equally shaped outputs as :math:`Y = \sum_i \alpha_i A_i`.

    Parameters
    ----------
    outputs : sequence of N array_like, or array_like of shape (N, ...)
        The branch outputs :math:`A_i`, all of one shape.
    alpha : array_like, shape (N,)
        Fusion weights.
    convex : bool, optional
        Require convex weights (non-negative, summing to 1 within
        ``ALPHA_SUM_TOL``). Default True; pass False for any real weights.

    Returns
    -------
    y : ndarray
        The shape of one output.

    Raises
    ------
    ValueError
        Empty or unequally shaped ``outputs``; ``alpha`` of the wrong length,
        non-finite, or (with ``convex``) negative or not summing to 1.

    Notes
    -----
    Eq. (4.1) of ``docs/fusion.md``: :math:`Y = \sum_{i=1}^N \alpha_i A_i`.
    With convex weights, every entry of :math:`Y` lies between the smallest
    and the largest of the branches' entries.

    Examples
    --------
    >>> weighted_fusion([np.zeros(2), np.ones(2)], [0.25, 0.75])
    array([0.75, 0.75])
    """
    A = _stack_outputs(outputs)
    a = _check_alpha(alpha, A.shape[0], convex)
    return np.tensordot(a.astype(A.dtype, copy=False), A, axes=1)  # Eq. (4.1)


def weighted_fusion_backward(
    d_y: ArrayLike, outputs: Sequence[ArrayLike] | ArrayLike, alpha: ArrayLike
) -> tuple[Array | list[Array], Array]:
    r"""Backward of :func:`weighted_fusion`: gradients for every output and for ``alpha``.

    Parameters
    ----------
    d_y : array_like
        Gradient of the loss with respect to the fused ``y``.
    outputs : sequence of N array_like, or array_like of shape (N, ...)
        The outputs given to the forward.
    alpha : array_like, shape (N,)
        The weights given to the forward (any real values are accepted here).

    Returns
    -------
    d_outputs : list of N ndarray, or ndarray of shape (N, ...)
        Same container kind as ``outputs``: :math:`dA_i = \alpha_i\,dY`.
    d_alpha : ndarray, shape (N,)
        :math:`d\alpha_i = \sum dY \odot A_i`.

    Raises
    ------
    ValueError
        Shapes that do not match the forward's.

    Notes
    -----
    Eq. (4.3) of ``docs/fusion.md``, undoing Eq. (4.1):
    :math:`dA_i = \alpha_i\, dY,\ d\alpha_i = \langle dY, A_i\rangle`.

    Examples
    --------
    >>> d_out, d_alpha = weighted_fusion_backward(np.ones(2), [np.zeros(2), np.ones(2)], [0.5, 0.5])
    >>> d_out[1].tolist(), d_alpha.tolist()
    ([0.5, 0.5], [0.0, 2.0])
    """
    A = _stack_outputs(outputs)
    a = _check_alpha(alpha, A.shape[0], convex=False).astype(A.dtype, copy=False)
    dY = as_float_array(d_y, "d_y")
    if dY.shape != A.shape[1:]:
        raise ValueError(f"d_y has shape {dY.shape}, expected one output's shape {A.shape[1:]}")
    # Y = sum_i alpha_i A_i  (Eq. 4.1)  ->  dA_i = alpha_i dY,  d_alpha_i = <dY, A_i>  (Eq. (4.3))
    d_alpha = A.reshape(A.shape[0], -1) @ dY.reshape(-1).astype(A.dtype, copy=False)
    d_A = a.reshape((-1,) + (1,) * dY.ndim) * dY
    if isinstance(outputs, np.ndarray):
        return d_A, d_alpha
    return list(d_A), d_alpha


# ---------------------------------------------------------------------------
# Weighted fusion of self-attention branches
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionParams:
    r"""Parameters of a weighted fusion of self-attention branches (or their gradients).

    Attributes
    ----------
    branches : tuple of CrossAttentionParams
        One set of projections per branch :math:`A_i` (all with the same
        input width ``E`` and output width ``Eo``).
    beta : ndarray of shape (N,), optional
        Learned logits: :math:`\alpha = \mathrm{softmax}(\beta)`, Eq. (4.2).
    alpha : ndarray of shape (N,), optional
        Fixed fusion weights (not learned).

    Notes
    -----
    In a parameter container at most one of ``beta`` and ``alpha`` is set
    (the forward may also get ``alpha`` as an argument). In the gradient
    container returned by :func:`fusion_backward`, ``alpha`` holds
    :math:`\partial\mathcal{L}/\partial\alpha` (always), ``beta`` holds
    :math:`\partial\mathcal{L}/\partial\beta` (learned weights only, else None),
    and ``branches`` the branches' gradients.
    """

    branches: tuple[CrossAttentionParams, ...]
    beta: Array | None = None
    alpha: Array | None = None


@dataclass(frozen=True)
class FusionCache:
    """What :func:`fusion_backward` needs; also the forward's by-products.

    Attributes
    ----------
    alpha : ndarray, shape (N,)
        The fusion weights used (``softmax(beta)`` when learned).
    learned : bool
        True when ``alpha = softmax(params.beta)``.
    outputs : ndarray, shape (N, B, T, Eo)
        Each branch's output :math:`A_i(X)`.
    branch_caches : tuple of CrossAttentionCache
        Each branch's cache.
    """

    alpha: Array
    learned: bool
    outputs: Array
    branch_caches: tuple[CrossAttentionCache, ...]

    @property
    def branch_weights(self) -> list[Array]:
        """Each branch's attention weights, ``(B, H_i, T, T)``."""
        return [c.weights for c in self.branch_caches]


def _check_branches(branches: object) -> tuple[CrossAttentionParams, ...]:
    if not isinstance(branches, (tuple, list)) or len(branches) == 0:
        raise ValueError("params.branches must be a non-empty tuple of CrossAttentionParams")
    for i, b in enumerate(branches):
        if not isinstance(b, CrossAttentionParams):
            raise TypeError(
                f"params.branches[{i}] must be a CrossAttentionParams, got {type(b).__name__}"
            )
    return tuple(branches)


def init_fusion(
    rng: np.random.Generator,
    e: int,
    num_branches: int,
    num_heads: int = 1,
    *,
    alpha: ArrayLike | None = None,
    **kwargs: Any,
) -> FusionParams:
    r"""Create ``num_branches`` independent self-attention branches and their fusion weights.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the random weights.
    e : int
        Input width ``E`` (queries, keys and values all come from ``x``).
    num_branches : int
        ``N``.
    num_heads : int, optional
        Heads of every branch. Default 1.
    alpha : array_like of shape (N,), optional
        Fixed convex fusion weights. Default: learned, with ``beta = 0``
        (uniform :math:`\alpha_i = 1/N`).
    **kwargs
        ``embed_dim``, ``e_out``, ``num_kv_heads``, ``bias``, ``dtype`` of
        :func:`~numpy_attention.layers.init_cross_attention`.

    Returns
    -------
    params : FusionParams

    Raises
    ------
    TypeError, ValueError
        Bad sizes (as :func:`~numpy_attention.layers.init_cross_attention`),
        or an ``alpha`` that is not ``N`` convex weights.

    Examples
    --------
    >>> p = init_fusion(np.random.default_rng(0), e=4, num_branches=3, num_heads=2)
    >>> len(p.branches), p.beta.tolist(), p.alpha
    (3, [0.0, 0.0, 0.0], None)
    """
    if isinstance(num_branches, (bool, np.bool_)) or not isinstance(num_branches, numbers.Integral):
        raise TypeError(
            f"num_branches must be a positive integer, got {type(num_branches).__name__}"
        )
    if num_branches <= 0:
        raise ValueError(f"num_branches must be a positive integer, got {num_branches}")
    branches = tuple(
        init_cross_attention(rng, e, e, num_heads, **kwargs) for _ in range(num_branches)
    )
    dtype = branches[0].w_q.dtype
    if alpha is not None:
        return FusionParams(branches, alpha=_check_alpha(alpha, int(num_branches), convex=True))
    return FusionParams(branches, beta=np.zeros(int(num_branches), dtype))


def _fusion_alpha(
    params: FusionParams, alpha: ArrayLike | None, convex: bool
) -> tuple[Array, bool]:
    """Return the weights to use and whether they are learned (one source must be set)."""
    n = len(params.branches)
    given = [
        name
        for name, v in (
            ("alpha", alpha),
            ("params.alpha", params.alpha),
            ("params.beta", params.beta),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "the fusion weights need exactly one source: the alpha argument (fixed), "
            "params.alpha (fixed) or params.beta (learned, alpha = softmax(beta)); "
            f"got {given or 'none'}"
        )
    if given[0] == "params.beta":
        beta = as_float_array(np.asarray(params.beta), "params.beta")
        if beta.shape != (n,):
            raise ValueError(f"params.beta must have shape (N,) = ({n},), got {beta.shape}")
        if not np.all(np.isfinite(beta)):
            raise ValueError(f"params.beta must be finite, got {beta.tolist()}")
        return softmax(beta), True  # Eq. (4.2)
    source = np.asarray(alpha if alpha is not None else params.alpha)
    return _check_alpha(source, n, convex, given[0]), False


def fusion_forward(
    params: FusionParams,
    x: ArrayLike,
    *,
    alpha: ArrayLike | None = None,
    convex: bool = True,
    **kwargs: Any,
) -> tuple[Array, FusionCache]:
    r"""Weighted fusion of self-attention branches, :math:`Y = \sum_i \alpha_i A_i(X)`.

    Parameters
    ----------
    params : FusionParams
        The branches and, for learned weights, ``beta``.
    x : array_like, shape (B, T, E)
        The input sequence; every branch attends over it.
    alpha : array_like of shape (N,), optional
        Fixed fusion weights. Give either this, ``params.alpha`` or
        ``params.beta``, exactly one.
    convex : bool, optional
        Require fixed weights to be convex (non-negative, summing to 1).
        Default True. Learned weights ``softmax(beta)`` always are.
    **kwargs
        ``key_lengths``, ``attn_mask``, ``is_causal``, ... of
        :func:`~numpy_attention.layers.cross_attention_forward`, applied to
        every branch.

    Returns
    -------
    y : ndarray, shape (B, T, Eo)
    cache : FusionCache
        ``cache.alpha`` (the weights used) and ``cache.branch_weights`` (each
        branch's attention weights).

    Raises
    ------
    TypeError, ValueError
        No or several sources of weights; ``alpha``/``beta`` of the wrong
        length or not finite; fixed ``alpha`` not convex with ``convex``;
        branches whose output shapes differ; any error of the branches.

    Notes
    -----
    Eqs. (4.1)-(4.2) of ``docs/fusion.md``:

    .. math:: Y = \sum_{i=1}^N \alpha_i A_i(X) \;(4.1), \qquad
              \alpha = \mathrm{softmax}(\beta) \;(4.2),

    each :math:`A_i` a self-attention layer with its own parameters
    (Eq. (3.11)). If all branches shared one set of parameters this would be
    :math:`(\sum_i\alpha_i) A(X) = A(X)`, the seed's formula, Eq. (4.9).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_fusion(rng, e=4, num_branches=3, num_heads=2)
    >>> y, cache = fusion_forward(p, rng.normal(size=(2, 5, 4)), is_causal=True)
    >>> y.shape, cache.alpha.round(3).tolist(), cache.branch_weights[0].shape
    ((2, 5, 4), [0.333, 0.333, 0.333], (2, 2, 5, 5))
    """
    if not isinstance(params, FusionParams):
        raise TypeError(f"params must be a FusionParams, got {type(params).__name__}")
    _check_branches(params.branches)
    a, learned = _fusion_alpha(params, alpha, convex)
    results = [self_attention_forward(bp, x, **kwargs) for bp in params.branches]
    shapes = [out.shape for out, _ in results]
    if len(set(shapes)) != 1:
        raise ValueError(f"the branches' outputs must have one shape to be fused, got {shapes}")
    outputs = np.stack([out for out, _ in results])
    y = np.tensordot(a.astype(outputs.dtype, copy=False), outputs, axes=1)  # Eq. (4.1)
    cache = FusionCache(
        alpha=a, learned=learned, outputs=outputs, branch_caches=tuple(c for _, c in results)
    )
    return y, cache


def fusion_backward(d_y: ArrayLike, cache: FusionCache) -> tuple[Array, FusionParams]:
    r"""Hand-written backward of :func:`fusion_forward`.

    Parameters
    ----------
    d_y : array_like, shape (B, T, Eo)
        Gradient of the loss with respect to the fused output.
    cache : FusionCache
        From :func:`fusion_forward`.

    Returns
    -------
    d_x : ndarray, shape (B, T, E)
        Summed over the branches, Eq. (4.5).
    d_params : FusionParams
        ``branches``: each branch's gradients; ``alpha``: :math:`d\alpha`;
        ``beta``: :math:`d\beta` when the weights were learned, else None.

    Raises
    ------
    ValueError
        If ``d_y`` does not have the output's shape.

    Notes
    -----
    Eqs. (4.3)-(4.5) of ``docs/fusion.md``:

    .. math::

        dA_i = \alpha_i\,dY,\ d\alpha_i = \langle dY, A_i\rangle \;(4.3), \qquad
        d\beta = \alpha \odot \big(d\alpha - \textstyle\sum_j \alpha_j\,d\alpha_j\big) \;(4.4),

        dX = \textstyle\sum_i dX^{(i)} \;(4.5),

    where Eq. (4.4) is the softmax backward, Eq. (1.4), and :math:`dX^{(i)}`
    is branch :math:`i`'s self-attention backward, Eq. (3.11).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_fusion(rng, e=4, num_branches=2)
    >>> y, cache = fusion_forward(p, rng.normal(size=(1, 3, 4)))
    >>> d_x, d_p = fusion_backward(np.ones_like(y), cache)
    >>> d_x.shape, d_p.beta.shape, abs(float(d_p.beta.sum())) < 1e-12
    ((1, 3, 4), (2,), True)
    """
    # Y = sum_i alpha_i A_i  (Eq. 4.1)  ->  dA_i, d_alpha  (Eq. (4.3))
    d_A, d_alpha = weighted_fusion_backward(d_y, cache.outputs, cache.alpha)
    # alpha = softmax(beta)  (Eq. 4.2)  ->  d_beta = alpha * (d_alpha - <alpha, d_alpha>)
    # (Eq. (4.4), the softmax backward Eq. (1.4))
    d_beta = softmax_backward(d_alpha, cache.alpha) if cache.learned else None
    # A_i = SelfAttn_i(X)  (Eq. 3.11)  ->  dX = sum_i dX^(i)  (Eq. (4.5))
    d_x: Array | None = None
    d_branches = []
    for d_Ai, bc in zip(d_A, cache.branch_caches, strict=True):
        d_xi, d_pi = self_attention_backward(d_Ai, bc)
        d_x = d_xi if d_x is None else d_x + d_xi
        d_branches.append(d_pi)
    assert d_x is not None  # at least one branch, checked by the forward
    return d_x, FusionParams(tuple(d_branches), beta=d_beta, alpha=d_alpha)


# ---------------------------------------------------------------------------
# The seed code's form: concatenate the branch outputs, then a linear layer
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConcatFusionParams:
    r"""Parameters of the concat + linear fusion (or their gradients).

    Attributes
    ----------
    branches : tuple of CrossAttentionParams
        One self-attention branch per :math:`A_i`, each of output width ``Eo``.
    w : ndarray, shape (N*Eo, Ey)
        The linear layer after the concatenation; row block ``i`` (rows
        ``i*Eo:(i+1)*Eo``) reads branch ``i``.
    b : ndarray of shape (Ey,), optional
        Its bias.
    """

    branches: tuple[CrossAttentionParams, ...]
    w: Array
    b: Array | None = None


@dataclass(frozen=True)
class ConcatFusionCache:
    """What :func:`concat_fusion_backward` needs.

    Attributes
    ----------
    params : ConcatFusionParams
    concat : ndarray, shape (B, T, N*Eo)
        The concatenated branch outputs, Eq. (4.6).
    branch_caches : tuple of CrossAttentionCache
    """

    params: ConcatFusionParams
    concat: Array
    branch_caches: tuple[CrossAttentionCache, ...]

    @property
    def branch_weights(self) -> list[Array]:
        """Each branch's attention weights, ``(B, H_i, T, T)``."""
        return [c.weights for c in self.branch_caches]


def init_concat_fusion(
    rng: np.random.Generator,
    e: int,
    num_branches: int,
    num_heads: int = 1,
    *,
    e_y: int | None = None,
    bias: bool = True,
    **kwargs: Any,
) -> ConcatFusionParams:
    r"""Create the seed code's fusion: ``N`` branches, concatenation, a linear layer.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the random weights.
    e : int
        Input width ``E``.
    num_branches : int
        ``N``.
    num_heads : int, optional
        Heads of every branch. Default 1.
    e_y : int, optional
        Output width ``Ey``. Default ``e`` (as the seed's
        ``nn.Linear(d_model * n_head, d_model)``).
    bias : bool, optional
        Zero biases everywhere (default) or none.
    **kwargs
        ``embed_dim``, ``e_out``, ``num_kv_heads``, ``dtype`` of
        :func:`~numpy_attention.layers.init_cross_attention`.

    Returns
    -------
    params : ConcatFusionParams
        ``w`` is :math:`U(\pm 1/\sqrt{N E_o})`, ``nn.Linear``'s default.

    Raises
    ------
    TypeError, ValueError
        Bad sizes.

    Examples
    --------
    >>> p = init_concat_fusion(np.random.default_rng(0), e=4, num_branches=3)
    >>> p.w.shape, p.b.shape
    ((12, 4), (4,))
    """
    base = init_fusion(rng, e, num_branches, num_heads, bias=bias, **kwargs)
    e_o = base.branches[0].w_o.shape[1]
    n_in = int(num_branches) * e_o
    if e_y is None:
        e_y = int(e)
    if isinstance(e_y, (bool, np.bool_)) or not isinstance(e_y, numbers.Integral) or e_y <= 0:
        raise ValueError(f"e_y must be a positive integer, got {e_y!r}")
    dtype = base.branches[0].w_q.dtype
    bound = 1.0 / math.sqrt(n_in)
    w = rng.uniform(-bound, bound, size=(n_in, int(e_y))).astype(dtype)
    return ConcatFusionParams(base.branches, w=w, b=np.zeros(int(e_y), dtype) if bias else None)


def concat_fusion_forward(
    params: ConcatFusionParams, x: ArrayLike, **kwargs: Any
) -> tuple[Array, ConcatFusionCache]:
    r"""Fuse as the seed's code does: :math:`Y = [A_1(X), \dots, A_N(X)]\,W + b`.

    Parameters
    ----------
    params : ConcatFusionParams
    x : array_like, shape (B, T, E)
    **kwargs
        Keyword arguments of :func:`~numpy_attention.layers.cross_attention_forward`,
        applied to every branch.

    Returns
    -------
    y : ndarray, shape (B, T, Ey)
    cache : ConcatFusionCache
        ``cache.branch_weights``: each branch's attention weights.

    Raises
    ------
    TypeError, ValueError
        Branch outputs of different shapes; ``w`` not of shape
        ``(N*Eo, Ey)``; ``b`` not of shape ``(Ey,)``; any error of the branches.

    Notes
    -----
    Eq. (4.6) of ``docs/fusion.md``: :math:`Y = [A_1, \dots, A_N]\,W + b`.
    With :math:`W = [\alpha_1 I; \dots; \alpha_N I]` and :math:`b = 0` it is
    the weighted sum Eq. (4.1), Eq. (4.8). This is also multi-head
    attention's output projection, with whole branches in the heads' place.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_concat_fusion(rng, e=4, num_branches=2, e_y=3)
    >>> y, cache = concat_fusion_forward(p, rng.normal(size=(2, 5, 4)))
    >>> y.shape, cache.concat.shape
    ((2, 5, 3), (2, 5, 8))
    """
    if not isinstance(params, ConcatFusionParams):
        raise TypeError(f"params must be a ConcatFusionParams, got {type(params).__name__}")
    branches = _check_branches(params.branches)
    results = [self_attention_forward(bp, x, **kwargs) for bp in branches]
    shapes = [out.shape for out, _ in results]
    if len(set(shapes)) != 1:
        raise ValueError(
            f"the branches' outputs must have one shape to be concatenated, got {shapes}"
        )
    concat = np.concatenate([out for out, _ in results], axis=-1)  # Eq. (4.6)
    w = as_float_array(params.w, "params.w")
    if w.ndim != 2 or w.shape[0] != concat.shape[-1]:
        raise ValueError(
            f"params.w has shape {w.shape}, expected (N*Eo, Ey) with N*Eo = "
            f"{len(branches)}*{shapes[0][-1]} = {concat.shape[-1]}"
        )
    b = None if params.b is None else as_float_array(params.b, "params.b")
    if b is not None and b.shape != (w.shape[1],):
        raise ValueError(f"params.b has shape {b.shape}, expected (Ey,) = ({w.shape[1]},)")
    y = concat @ w if b is None else concat @ w + b  # Eq. (4.6)
    cache = ConcatFusionCache(
        params=replace(params, w=w, b=b),
        concat=concat,
        branch_caches=tuple(c for _, c in results),
    )
    return y, cache


def concat_fusion_backward(
    d_y: ArrayLike, cache: ConcatFusionCache
) -> tuple[Array, ConcatFusionParams]:
    r"""Hand-written backward of :func:`concat_fusion_forward`.

    Parameters
    ----------
    d_y : array_like, shape (B, T, Ey)
    cache : ConcatFusionCache

    Returns
    -------
    d_x : ndarray, shape (B, T, E)
        Summed over the branches, Eq. (4.5).
    d_params : ConcatFusionParams
        Gradients of ``w``, ``b`` (None without bias) and every branch.

    Raises
    ------
    ValueError
        If ``d_y`` does not have the output's shape.

    Notes
    -----
    Eq. (4.7) of ``docs/fusion.md``, undoing Eq. (4.6), with :math:`W_i` the
    row block of :math:`W` that reads branch :math:`i`:

    .. math:: dW = C^\top dY,\quad db = \textstyle\sum dY,\quad dA_i = dY\,W_i^\top,

    then each branch's backward, Eq. (3.11), and :math:`dX` as Eq. (4.5).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_concat_fusion(rng, e=4, num_branches=2)
    >>> y, cache = concat_fusion_forward(p, rng.normal(size=(1, 3, 4)))
    >>> d_x, d_p = concat_fusion_backward(np.ones_like(y), cache)
    >>> d_x.shape, d_p.w.shape
    ((1, 3, 4), (8, 4))
    """
    p, C = cache.params, cache.concat
    dY = as_float_array(d_y, "d_y")
    expected = C.shape[:-1] + (p.w.shape[1],)
    if dY.shape != expected:
        raise ValueError(f"d_y has shape {dY.shape}, expected the output's shape {expected}")
    # Y = C W + b  (Eq. 4.6)  ->  dW = C^T dY, db = sum dY, dC = dY W^T  (Eq. (4.7))
    d_w = C.reshape(-1, C.shape[-1]).T @ dY.reshape(-1, dY.shape[-1])
    d_b = None if p.b is None else dY.sum(axis=tuple(range(dY.ndim - 1)))
    dC = dY @ p.w.T
    # C = [A_1, ..., A_N]  (Eq. 4.6)  ->  dA_i = column block i of dC  (Eq. (4.7))
    widths = [c.params.w_o.shape[1] for c in cache.branch_caches]
    d_A = np.split(dC, np.cumsum(widths)[:-1], axis=-1)
    # A_i = SelfAttn_i(X)  (Eq. 3.11)  ->  dX = sum_i dX^(i)  (Eq. (4.5))
    d_x: Array | None = None
    d_branches = []
    for d_Ai, bc in zip(d_A, cache.branch_caches, strict=True):
        d_xi, d_pi = self_attention_backward(d_Ai, bc)
        d_x = d_xi if d_x is None else d_x + d_xi
        d_branches.append(d_pi)
    assert d_x is not None
    return d_x, ConcatFusionParams(tuple(d_branches), w=d_w, b=d_b)
