r"""Weighted fusion of attention branches (the seed's "Self-Attention Fusion"), with backward.

The seed document's formula :math:`\sum_r \alpha_r\,\mathrm{Attention}(X, X, X)`
sums :math:`N` identical terms unless each attention has its own parameters.
This module implements the meaningful version, :math:`N` self-attention
branches with their own projections, fused by weights :math:`\alpha` that are
either fixed by the caller or learned as :math:`\alpha = \mathrm{softmax}(\beta)`;
and the seed code's form (concatenate the branch outputs, then a linear layer).
Equations are numbered as in ``docs/fusion.md`` (chapter 4).

Shapes (letter legend; the attention letters are those of docs/README.md's Notation)::

    N    branches      B    batch      T    sequence length (L = S = T in every branch)
    Dm   input width   Do   each branch's output width      Dy   concat form's output width

    x (B, T, Dm)     each branch output A_r (B, T, Do)     fused y (B, T, Do)
    alpha, beta (N,)     concat form: w (N*Do, Dy), b (Dy,), y (B, T, Dy)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._arrays import Array, as_float_array
from ._validate import check_grad, check_instance, check_int
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
    r"""Fuse ``N`` equally shaped outputs as :math:`Y = \sum_r \alpha_r A_r`.

    Parameters
    ----------
    outputs : sequence of N array_like, or array_like of shape (N, ...)
        The branch outputs :math:`A_r`, all of one shape.
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
    Eq. (4.1) of ``docs/fusion.md``: :math:`Y = \sum_{r=1}^N \alpha_r A_r`.
    With convex weights, every entry of :math:`Y` lies between the smallest
    and the largest of the branches' entries.

    Examples
    --------
    >>> weighted_fusion([np.zeros(2), np.ones(2)], [0.25, 0.75])
    array([0.75, 0.75])
    """
    A = _stack_outputs(outputs)
    a = _check_alpha(alpha, A.shape[0], convex)
    return np.tensordot(a.astype(A.dtype, copy=False), A, axes=1)  # Y = sum_r a_r A_r  (Eq. (4.1))


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
        Same container kind as ``outputs``: :math:`dA_r = \alpha_r\,dY`.
    d_alpha : ndarray, shape (N,)
        :math:`d\alpha_r = \sum dY \odot A_r`.

    Raises
    ------
    ValueError
        Shapes that do not match the forward's (``d_y`` not of one output's shape).

    Notes
    -----
    Eq. (4.3) of ``docs/fusion.md``, undoing Eq. (4.1):
    :math:`dA_r = \alpha_r\, dY,\ d\alpha_r = \langle dY, A_r\rangle`.

    Examples
    --------
    >>> d_out, d_alpha = weighted_fusion_backward(np.ones(2), [np.zeros(2), np.ones(2)], [0.5, 0.5])
    >>> d_out[1].tolist(), d_alpha.tolist()
    ([0.5, 0.5], [0.0, 2.0])
    """
    # Shapes: dY (...) one output's shape, A (N, ...), alpha (N,) -> dA (N, ...), d_alpha (N,)
    A = _stack_outputs(outputs)
    a = _check_alpha(alpha, A.shape[0], convex=False).astype(A.dtype, copy=False)
    dY = check_grad(d_y, "d_y", A.shape[1:], what="one output's shape")
    # Y = sum_r a_r A_r  (Eq. (4.1))  ->  dA_r = a_r dY, d_alpha_r = <dY, A_r>  (Eq. (4.3))
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
        One set of projections per branch :math:`A_r` (all with the same
        input width ``Dm`` and output width ``Do``).
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


class _BranchCaches:
    """A cache that holds one ``CrossAttentionCache`` per branch, and their weights."""

    branch_caches: tuple[CrossAttentionCache, ...]

    @property
    def branch_weights(self) -> list[Array]:
        """Each branch's attention weights, ``(B, H_r, T, T)``."""
        return [c.weights for c in self.branch_caches]


@dataclass(frozen=True)
class FusionCache(_BranchCaches):
    """What :func:`fusion_backward` needs; also the forward's by-products.

    Attributes
    ----------
    alpha : ndarray, shape (N,)
        The fusion weights used (``softmax(beta)`` when learned).
    learned : bool
        True when ``alpha = softmax(params.beta)``.
    outputs : ndarray, shape (N, B, T, Do)
        Each branch's output :math:`A_r(X)`.
    branch_caches : tuple of CrossAttentionCache
        Each branch's cache; ``branch_weights`` lists their attention weights.
    """

    alpha: Array
    learned: bool
    outputs: Array
    branch_caches: tuple[CrossAttentionCache, ...]


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
        Input width ``Dm`` (queries, keys and values all come from ``x``).
    num_branches : int
        ``N``.
    num_heads : int, optional
        Heads of every branch. Default 1.
    alpha : array_like of shape (N,), optional
        Fixed convex fusion weights. Default: learned, with ``beta = 0``
        (uniform :math:`\alpha_r = 1/N`).
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
    N = check_int(num_branches, "num_branches", minimum=1)
    branches = tuple(init_cross_attention(rng, e, e, num_heads, **kwargs) for _ in range(N))
    dtype = branches[0].w_q.dtype
    if alpha is not None:
        return FusionParams(branches, alpha=_check_alpha(alpha, N, convex=True))
    return FusionParams(branches, beta=np.zeros(N, dtype))


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


def _branches_forward(
    branches: Sequence[CrossAttentionParams], x: ArrayLike, kwargs: dict[str, Any], fused_as: str
) -> tuple[list[Array], tuple[CrossAttentionCache, ...]]:
    """Run each branch, ``A_r = SelfAttn_r(X)`` (Eq. (3.11)); the outputs must share one shape."""
    results = [self_attention_forward(bp, x, **kwargs) for bp in branches]
    shapes = [out.shape for out, _ in results]
    if len(set(shapes)) != 1:
        raise ValueError(
            f"the branches' outputs must have one shape to be {fused_as}, got {shapes}"
        )
    return [out for out, _ in results], tuple(c for _, c in results)


def _branches_backward(
    d_A: Sequence[Array] | Array, caches: Sequence[CrossAttentionCache]
) -> tuple[Array, tuple[CrossAttentionParams, ...]]:
    """Undo ``A_r = SelfAttn_r(X)`` (Eq. (3.11)): ``dX = sum_r dX^(r)`` (Eq. (4.5)), and grads."""
    grads = [self_attention_backward(d, c) for d, c in zip(d_A, caches, strict=True)]
    d_x = functools.reduce(np.add, [d_xi for d_xi, _ in grads])  # x feeds every branch
    return d_x, tuple(d_pi for _, d_pi in grads)


def fusion_forward(
    params: FusionParams,
    x: ArrayLike,
    *,
    alpha: ArrayLike | None = None,
    convex: bool = True,
    **kwargs: Any,
) -> tuple[Array, FusionCache]:
    r"""Weighted fusion of self-attention branches, :math:`Y = \sum_r \alpha_r A_r(X)`.

    Parameters
    ----------
    params : FusionParams
        The branches and, for learned weights, ``beta``.
    x : array_like, shape (B, T, Dm)
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
    y : ndarray, shape (B, T, Do)
        A fresh array that the cache does not hold.
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

    .. math:: Y = \sum_{r=1}^N \alpha_r A_r(X) \;(4.1), \qquad
              \alpha = \mathrm{softmax}(\beta) \;(4.2),

    each :math:`A_r` a self-attention layer with its own parameters
    (Eq. (3.11)). If all branches shared one set of parameters this would be
    :math:`(\sum_r\alpha_r) A(X) = A(X)`, the seed's formula, Eq. (4.6).

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
    a, learned = _fusion_alpha(params, alpha, convex)  # a = softmax(beta)  (Eq. (4.2)), or fixed
    # A_r = SelfAttn_r(X) for every branch  (Eq. (3.11))
    A_list, caches = _branches_forward(params.branches, x, kwargs, "fused")
    A = np.stack(A_list)  # (N, B, T, Do)
    Y = np.tensordot(a.astype(A.dtype, copy=False), A, axes=1)  # Y = sum_r a_r A_r  (Eq. (4.1))
    return Y, FusionCache(alpha=a, learned=learned, outputs=A, branch_caches=caches)


def fusion_backward(d_y: ArrayLike, cache: FusionCache) -> tuple[Array, FusionParams]:
    r"""Hand-written backward of :func:`fusion_forward`.

    Parameters
    ----------
    d_y : array_like, shape (B, T, Do)
        Gradient of the loss with respect to the fused output.
    cache : FusionCache
        From :func:`fusion_forward`.

    Returns
    -------
    d_x : ndarray, shape (B, T, Dm)
        Summed over the branches, Eq. (4.5).
    d_params : FusionParams
        ``branches``: each branch's gradients; ``alpha``: :math:`d\alpha`;
        ``beta``: :math:`d\beta` when the weights were learned, else None.

    Raises
    ------
    TypeError
        If ``cache`` was not made by :func:`fusion_forward`.
    ValueError
        If ``d_y`` does not have the output's shape.

    Notes
    -----
    Eqs. (4.3)-(4.5) of ``docs/fusion.md``:

    .. math::

        dA_r = \alpha_r\,dY,\ d\alpha_r = \langle dY, A_r\rangle \;(4.3), \qquad
        d\beta = \alpha \odot \big(d\alpha - \textstyle\sum_j \alpha_j\,d\alpha_j\big) \;(4.4),

        dX = \textstyle\sum_r dX^{(r)} \;(4.5),

    where Eq. (4.4) is the softmax backward, Eq. (1.4), and :math:`dX^{(r)}`
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
    # Shapes: dY (B, T, Do), A (N, B, T, Do), a, beta (N,) -> dA (N, B, T, Do), d_x (B, T, Dm)
    c = check_instance(cache, FusionCache, "cache", "fusion_forward")
    # Y = sum_r a_r A_r  (Eq. (4.1))  ->  dA_r = a_r dY, d_alpha_r = <dY, A_r>  (Eq. (4.3))
    d_A, d_alpha = weighted_fusion_backward(d_y, c.outputs, c.alpha)
    # a = softmax(beta)  (Eq. (4.2))  ->  d_beta = a * (d_alpha - <a, d_alpha>)  (Eq. (4.4)),
    #   the softmax backward of Eq. (1.4)
    d_beta = softmax_backward(d_alpha, c.alpha) if c.learned else None
    # A_r = SelfAttn_r(X)  (Eq. (3.11))  ->  dX = sum_r dX^(r)  (Eq. (4.5))
    d_x, d_branches = _branches_backward(d_A, c.branch_caches)
    return d_x, FusionParams(d_branches, beta=d_beta, alpha=d_alpha)


# ---------------------------------------------------------------------------
# The seed code's form: concatenate the branch outputs, then a linear layer
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConcatFusionParams:
    r"""Parameters of the concat + linear fusion (or their gradients).

    Attributes
    ----------
    branches : tuple of CrossAttentionParams
        One self-attention branch per :math:`A_r`, each of output width ``Do``.
    w : ndarray, shape (N*Do, Dy)
        The linear layer after the concatenation; row block ``i`` (rows
        ``i*Do:(i+1)*Do``) reads branch ``i``.
    b : ndarray of shape (Dy,), optional
        Its bias.
    """

    branches: tuple[CrossAttentionParams, ...]
    w: Array
    b: Array | None = None


@dataclass(frozen=True)
class ConcatFusionCache(_BranchCaches):
    """What :func:`concat_fusion_backward` needs.

    Attributes
    ----------
    params : ConcatFusionParams
        With the cache's own copies of ``w`` and ``b``.
    concat : ndarray, shape (B, T, N*Do)
        The concatenated branch outputs, Eq. (4.7).
    branch_caches : tuple of CrossAttentionCache
        Each branch's cache; ``branch_weights`` lists their attention weights.
    """

    params: ConcatFusionParams
    concat: Array
    branch_caches: tuple[CrossAttentionCache, ...]


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
        Input width ``Dm``.
    num_branches : int
        ``N``.
    num_heads : int, optional
        Heads of every branch. Default 1.
    e_y : int, optional
        Output width ``Dy``. Default ``e`` (as the seed's
        ``nn.Linear(d_model * n_head, d_model)``).
    bias : bool, optional
        Zero biases everywhere (default) or none.
    **kwargs
        ``embed_dim``, ``e_out``, ``num_kv_heads``, ``dtype`` of
        :func:`~numpy_attention.layers.init_cross_attention`.

    Returns
    -------
    params : ConcatFusionParams
        ``w`` is :math:`\mathcal{U}(\pm 1/\sqrt{\mathtt{N}\,\mathtt{Do}})`, ``nn.Linear``'s default.

    Raises
    ------
    TypeError, ValueError
        Bad sizes, ``rng`` or ``dtype`` (as
        :func:`~numpy_attention.layers.init_cross_attention`).

    Examples
    --------
    >>> p = init_concat_fusion(np.random.default_rng(0), e=4, num_branches=3)
    >>> p.w.shape, p.b.shape
    ((12, 4), (4,))
    """
    base = init_fusion(rng, e, num_branches, num_heads, bias=bias, **kwargs)
    n_in = len(base.branches) * base.branches[0].w_o.shape[1]  # N * Do
    d_y = int(e) if e_y is None else check_int(e_y, "e_y", minimum=1)
    dtype = base.branches[0].w_q.dtype
    bound = 1.0 / math.sqrt(n_in)
    w = rng.uniform(-bound, bound, size=(n_in, d_y)).astype(dtype)
    return ConcatFusionParams(base.branches, w=w, b=np.zeros(d_y, dtype) if bias else None)


def _check_linear(params: ConcatFusionParams, n: int, d_o: int) -> tuple[Array, Array | None]:
    """Return own copies of ``w (N*Do, Dy)`` and ``b (Dy,)``, checked against ``N`` and ``Do``."""
    w = np.array(as_float_array(params.w, "params.w"))
    if w.ndim != 2 or w.shape[0] != n * d_o:
        raise ValueError(
            f"params.w has shape {w.shape}, expected (N*Do, Dy) with N*Do = {n}*{d_o} = {n * d_o}"
        )
    b = None if params.b is None else np.array(as_float_array(params.b, "params.b"))
    if b is not None and b.shape != (w.shape[1],):
        raise ValueError(f"params.b has shape {b.shape}, expected (Dy,) = ({w.shape[1]},)")
    return w, b


def concat_fusion_forward(
    params: ConcatFusionParams, x: ArrayLike, **kwargs: Any
) -> tuple[Array, ConcatFusionCache]:
    r"""Fuse as the seed's code does: :math:`Y = [A_1(X), \dots, A_N(X)]\,W + b_y`.

    Parameters
    ----------
    params : ConcatFusionParams
    x : array_like, shape (B, T, Dm)
    **kwargs
        Keyword arguments of :func:`~numpy_attention.layers.cross_attention_forward`,
        applied to every branch.

    Returns
    -------
    y : ndarray, shape (B, T, Dy)
        A fresh array that the cache does not hold.
    cache : ConcatFusionCache
        ``cache.branch_weights``: each branch's attention weights.

    Raises
    ------
    TypeError, ValueError
        Branch outputs of different shapes; ``w`` not of shape
        ``(N*Do, Dy)``; ``b`` not of shape ``(Dy,)``; any error of the branches.

    Notes
    -----
    Eq. (4.7) of ``docs/fusion.md``: :math:`Y = [A_1, \dots, A_N]\,W + b_y`.
    With :math:`W = [\alpha_1 I; \dots; \alpha_N I]` and :math:`b_y = 0` it is
    the weighted sum Eq. (4.1), Eq. (4.9). This is also multi-head
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
    # A_r = SelfAttn_r(X) for every branch  (Eq. (3.11))
    A, caches = _branches_forward(branches, x, kwargs, "concatenated")
    C = np.concatenate(A, axis=-1)  # C = [A_1, ..., A_N], (B, T, N*Do)  (Eq. (4.7))
    w, b = _check_linear(params, len(branches), A[0].shape[-1])
    Y = C @ w if b is None else C @ w + b  # Y = C @ w + b  (Eq. (4.7))
    return Y, ConcatFusionCache(params=replace(params, w=w, b=b), concat=C, branch_caches=caches)


def concat_fusion_backward(
    d_y: ArrayLike, cache: ConcatFusionCache
) -> tuple[Array, ConcatFusionParams]:
    r"""Hand-written backward of :func:`concat_fusion_forward`.

    Parameters
    ----------
    d_y : array_like, shape (B, T, Dy)
    cache : ConcatFusionCache

    Returns
    -------
    d_x : ndarray, shape (B, T, Dm)
        Summed over the branches, Eq. (4.5).
    d_params : ConcatFusionParams
        Gradients of ``w``, ``b`` (None without bias) and every branch.

    Raises
    ------
    TypeError
        If ``cache`` is not the cache that :func:`concat_fusion_forward` returns.
    ValueError
        If ``d_y`` does not have the output's shape.

    Notes
    -----
    Eq. (4.8) of ``docs/fusion.md``, undoing Eq. (4.7), with :math:`W_r` the
    row block of :math:`W` that reads branch :math:`r`:

    .. math:: dW = C^\top dY,\quad db_y = \textstyle\sum dY,\quad dA_r = dY\,W_r^\top,

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
    # Shapes: dY (B, T, Dy), C (B, T, N*Do), w (N*Do, Dy), dA_r (B, T, Do) -> d_x (B, T, Dm)
    c = check_instance(cache, ConcatFusionCache, "cache", "concat_fusion_forward")
    p, C = c.params, c.concat
    dY = check_grad(d_y, "d_y", C.shape[:-1] + (p.w.shape[1],))
    # Y = C @ w + b  (Eq. (4.7))  ->  dw = C^T dY, db = sum dY, dC = dY w^T  (Eq. (4.8))
    d_w = C.reshape(-1, C.shape[-1]).T @ dY.reshape(-1, dY.shape[-1])
    d_b = None if p.b is None else dY.sum(axis=tuple(range(dY.ndim - 1)))
    dC = dY @ p.w.T
    # C = [A_1, ..., A_N]  (Eq. (4.7))  ->  dA_r = dC[..., r*Do:(r+1)*Do]  (Eq. (4.8))
    widths = [bc.params.w_o.shape[1] for bc in c.branch_caches]
    d_A = np.split(dC, np.cumsum(widths)[:-1], axis=-1)
    # A_r = SelfAttn_r(X)  (Eq. (3.11))  ->  dX = sum_r dX^(r)  (Eq. (4.5))
    d_x, d_branches = _branches_backward(d_A, c.branch_caches)
    return d_x, ConcatFusionParams(tuple(d_branches), w=d_w, b=d_b)
