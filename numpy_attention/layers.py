r"""Multi-head cross-attention and self-attention layers with hand-written backward.

The layer of the seed document's sections 3.1 and 4.1 (the Transformer's
encoder-decoder attention), built on :func:`~numpy_attention.attention.attention_forward`
and :func:`~numpy_attention.attention.attention_backward` for the attention
step itself. Equations are numbered as in ``docs/layers.md`` (chapter 3).

Shapes (letter legend)::

    B    batch                  L    queries (length of x_q)    S    keys (length of x_kv)
    Eq   query input width      Ekv  key/value input width      Eo   output width
    H    query heads            Hkv  key/value heads (H = G * Hkv with GQA)
    D    query/key head width   Dv   value head width

    x_q  (B, L, Eq)     x_kv (B, S, Ekv)     out (B, L, Eo)
    w_q  (Eq, H*D)      w_k  (Ekv, Hkv*D)    w_v (Ekv, Hkv*Dv)    w_o (H*Dv, Eo)
    b_q  (H*D,)         b_k  (Hkv*D,)        b_v (Hkv*Dv,)        b_o (Eo,)
    attention weights (B, H, L, S)

Convention: a projection is ``y = x @ W + b``. PyTorch's ``nn.Linear`` stores
its weight transposed (``y = x @ weight.T + bias``), so ``w_q = q_proj_weight.T``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import as_float_array, broadcasts_to, compute_dtype
from .attention import AttentionCache, attention_backward, attention_forward
from .masks import padding_mask

__all__ = [
    "CrossAttentionParams",
    "CrossAttentionCache",
    "init_cross_attention",
    "cross_attention_forward",
    "cross_attention_backward",
    "self_attention_forward",
    "self_attention_backward",
]

Array = NDArray[np.floating]

_WEIGHTS = ("w_q", "w_k", "w_v", "w_o")
_BIASES = ("b_q", "b_k", "b_v", "b_o")


@dataclass(frozen=True)
class CrossAttentionParams:
    r"""Parameters of a multi-head cross-attention layer (or their gradients).

    Attributes
    ----------
    w_q : ndarray, shape (Eq, H*D)
        Query projection, ``Q = x_q @ w_q + b_q``.
    w_k : ndarray, shape (Ekv, Hkv*D)
        Key projection, ``K = x_kv @ w_k + b_k``.
    w_v : ndarray, shape (Ekv, Hkv*Dv)
        Value projection, ``V = x_kv @ w_v + b_v``.
    w_o : ndarray, shape (H*Dv, Eo)
        Output projection, ``out = concat_h(O_h) @ w_o + b_o``.
    b_q, b_k, b_v, b_o : ndarray or None
        Biases of the four projections; None means "no bias" (and a None
        gradient).
    num_heads : int
        ``H``, the number of query heads.
    num_kv_heads : int or None
        ``Hkv``, the number of key/value heads (grouped-query attention);
        None means ``H``. The forward's ``num_kv_heads`` argument overrides it.

    Notes
    -----
    In a gradient container returned by a backward, each field holds
    :math:`\partial\mathcal{L}/\partial` of the same field, Eqs. (3.6)-(3.10).
    PyTorch's ``nn.MultiheadAttention`` stores ``q_proj_weight`` of shape
    ``(H*D, Eq)``; here ``w_q = q_proj_weight.T`` (see ``docs/layers.md``).
    """

    w_q: Array
    w_k: Array
    w_v: Array
    w_o: Array
    b_q: Array | None = None
    b_k: Array | None = None
    b_v: Array | None = None
    b_o: Array | None = None
    num_heads: int = 1
    num_kv_heads: int | None = None


@dataclass(frozen=True)
class CrossAttentionCache:
    """What :func:`cross_attention_backward` needs; also the forward's by-products.

    Attributes
    ----------
    params : CrossAttentionParams
        The parameters, converted to the compute dtype.
    x_q, x_kv : ndarray
        The inputs, in the compute dtype.
    context : ndarray, shape (B, L, H*Dv)
        Merged heads before the output projection, Eq. (3.4).
    attn : AttentionCache
        The core attention's cache (queries ``(B, H, L, D)``).
    num_kv_heads : int
        ``Hkv`` actually used.
    is_self : bool
        True when made by :func:`self_attention_forward`.
    """

    params: CrossAttentionParams
    x_q: Array
    x_kv: Array
    context: Array
    attn: AttentionCache
    num_kv_heads: int
    dtype: np.dtype
    is_self: bool = False

    @property
    def weights(self) -> Array:
        """Attention weights ``(B, H, L, S)`` that multiplied the values (after dropout)."""
        return self.attn.weights

    @property
    def P(self) -> Array:
        """Attention weights ``(B, H, L, S)`` before dropout, Eq. (2.3)."""
        return self.attn.P


# ---------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__}")
    if int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _uniform(rng: np.random.Generator, shape: tuple[int, int], bound: float, dtype) -> Array:
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _xavier(rng: np.random.Generator, fan_in: int, fan_out: int, dtype) -> Array:
    """Xavier/Glorot uniform ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``."""
    return _uniform(rng, (fan_in, fan_out), math.sqrt(6.0 / (fan_in + fan_out)), dtype)


def init_cross_attention(
    rng: np.random.Generator,
    e_q: int,
    e_kv: int,
    num_heads: int,
    *,
    embed_dim: int | None = None,
    e_out: int | None = None,
    num_kv_heads: int | None = None,
    bias: bool = True,
    dtype: type | np.dtype = np.float64,
) -> CrossAttentionParams:
    r"""Create cross-attention parameters as PyTorch's ``nn.MultiheadAttention`` does.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the random weights.
    e_q, e_kv : int
        Widths ``Eq`` of the queries' input and ``Ekv`` of the keys'/values'
        input (torch's ``embed_dim`` and ``kdim = vdim``).
    num_heads : int
        ``H``; must divide ``embed_dim``.
    embed_dim : int, optional
        Projection width ``H*D`` (and ``H*Dv``). Default ``e_q`` (as torch).
    e_out : int, optional
        Output width ``Eo``. Default ``e_q`` (as torch).
    num_kv_heads : int, optional
        ``Hkv`` for grouped-query attention; must divide ``num_heads``. Then
        ``w_k`` and ``w_v`` have ``Hkv*D`` columns. Default ``num_heads``.
    bias : bool, optional
        Create zero biases (default) or none at all.
    dtype : dtype, optional
        Default float64.

    Returns
    -------
    params : CrossAttentionParams

    Raises
    ------
    TypeError, ValueError
        If a size is not a positive integer, ``num_heads`` does not divide
        ``embed_dim`` or ``num_kv_heads`` does not divide ``num_heads``.

    Notes
    -----
    As torch: ``w_q``, ``w_k``, ``w_v`` are each Xavier/Glorot uniform,
    :math:`U(\pm\sqrt{6/(\text{fan\_in}+\text{fan\_out})})` (torch's
    separate-projection case ``kdim != embed_dim``; with ``kdim = embed_dim``
    torch draws the stacked ``(3E, E)`` matrix at once, bound
    :math:`\sqrt{6/(4E)}`); ``w_o`` keeps ``nn.Linear``'s default,
    :math:`U(\pm 1/\sqrt{\text{fan\_in}})`; every bias is zero.

    Examples
    --------
    >>> p = init_cross_attention(np.random.default_rng(0), 8, 6, num_heads=2, num_kv_heads=1)
    >>> p.w_q.shape, p.w_k.shape, p.w_v.shape, p.w_o.shape, p.b_o.tolist() == [0.0] * 8
    ((8, 8), (6, 4), (6, 4), (8, 8), True)
    """
    e_q = _check_positive_int(e_q, "e_q")
    e_kv = _check_positive_int(e_kv, "e_kv")
    H = _check_positive_int(num_heads, "num_heads")
    width = e_q if embed_dim is None else _check_positive_int(embed_dim, "embed_dim")
    e_o = e_q if e_out is None else _check_positive_int(e_out, "e_out")
    Hkv = H if num_kv_heads is None else _check_positive_int(num_kv_heads, "num_kv_heads")
    if width % H:
        raise ValueError(
            f"num_heads={H} must divide the projection width embed_dim={width} "
            f"(head width D = embed_dim / num_heads)"
        )
    if H % Hkv:
        raise ValueError(f"num_kv_heads={Hkv} must divide num_heads={H}")
    D = width // H
    params = CrossAttentionParams(
        w_q=_xavier(rng, e_q, H * D, dtype),
        w_k=_xavier(rng, e_kv, Hkv * D, dtype),
        w_v=_xavier(rng, e_kv, Hkv * D, dtype),
        w_o=_uniform(rng, (H * D, e_o), 1.0 / math.sqrt(H * D), dtype),
        num_heads=H,
        num_kv_heads=None if num_kv_heads is None else Hkv,
    )
    if not bias:
        return params
    return replace(
        params,
        b_q=np.zeros(H * D, dtype),
        b_k=np.zeros(Hkv * D, dtype),
        b_v=np.zeros(Hkv * D, dtype),
        b_o=np.zeros(e_o, dtype),
    )


# ---------------------------------------------------------------------------
# Input checking
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dims:
    H: int
    Hkv: int
    D: int
    Dv: int


def _check_params(p: CrossAttentionParams, e_q: int, e_kv: int, num_kv_heads: object) -> _Dims:
    """Validate every parameter's shape against the inputs' widths; return the head sizes."""
    if not isinstance(p, CrossAttentionParams):
        raise TypeError(f"params must be a CrossAttentionParams, got {type(p).__name__}")
    H = _check_positive_int(p.num_heads, "params.num_heads")
    if num_kv_heads is None:
        num_kv_heads = p.num_kv_heads
    elif p.num_kv_heads is not None and num_kv_heads != p.num_kv_heads:
        raise ValueError(
            f"num_kv_heads={num_kv_heads} disagrees with params.num_kv_heads={p.num_kv_heads}"
        )
    Hkv = H if num_kv_heads is None else _check_positive_int(num_kv_heads, "num_kv_heads")
    if H % Hkv:
        raise ValueError(f"num_kv_heads={Hkv} must divide params.num_heads={H}")
    for name in _WEIGHTS:
        w = getattr(p, name)
        if w is None or np.ndim(w) != 2:
            raise ValueError(
                f"params.{name} must be a 2-D array, got {None if w is None else np.shape(w)}"
            )
    hd = p.w_q.shape[1]
    if hd % H:
        raise ValueError(
            f"params.num_heads={H} must divide the projection width of params.w_q "
            f"(shape {p.w_q.shape}, width {hd})"
        )
    D = hd // H
    if p.w_q.shape[0] != e_q:
        raise ValueError(
            f"x_q has width Eq={e_q} but params.w_q has shape {p.w_q.shape}; expected ({e_q}, H*D)"
        )
    if p.w_k.shape != (e_kv, Hkv * D):
        raise ValueError(
            f"params.w_k has shape {p.w_k.shape}, expected (Ekv, Hkv*D) = ({e_kv}, {Hkv * D}) "
            f"for x_kv of width {e_kv}, Hkv={Hkv} key/value heads and head width D={D}"
            + ("" if Hkv != H or p.w_k.shape[1] % D else "; pass num_kv_heads for GQA")
        )
    if p.w_v.shape[0] != e_kv or p.w_v.shape[1] % Hkv:
        raise ValueError(
            f"params.w_v has shape {p.w_v.shape}, expected (Ekv, Hkv*Dv) with Ekv={e_kv} "
            f"(the width of x_kv) and a width divisible by Hkv={Hkv}"
        )
    Dv = p.w_v.shape[1] // Hkv
    if p.w_o.shape[0] != H * Dv:
        raise ValueError(
            f"params.w_o has shape {p.w_o.shape}, expected (H*Dv, Eo) with H*Dv = {H * Dv}"
        )
    for name, width in zip(_BIASES, (H * D, Hkv * D, Hkv * Dv, p.w_o.shape[1]), strict=True):
        b = getattr(p, name)
        if b is not None and np.shape(b) != (width,):
            raise ValueError(f"params.{name} has shape {np.shape(b)}, expected ({width},)")
    return _Dims(H=H, Hkv=Hkv, D=D, Dv=Dv)


def _check_x(x: ArrayLike, name: str) -> Array:
    a = as_float_array(x, name)
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (B, length, width), got shape {a.shape}")
    return a


def _key_mask(
    key_lengths: ArrayLike | None,
    attn_mask: ArrayLike | None,
    scores_shape: tuple[int, int, int, int],
    dtype: np.dtype,
) -> ArrayLike | None:
    """Combine ``key_lengths`` (Eq. (2.7)) with ``attn_mask`` into one core mask."""
    B, _, _, S = scores_shape
    m = None if attn_mask is None else np.asarray(attn_mask)
    if m is not None:
        if not broadcasts_to(m.shape, scores_shape):
            raise ValueError(
                f"attn_mask has shape {m.shape}, expected a shape that broadcasts to the "
                f"attention weights' shape (B, H, L, S) = {scores_shape}"
            )
    if key_lengths is None:
        return m
    n = np.asarray(key_lengths)
    if n.dtype.kind not in "iu":
        raise TypeError(f"key_lengths must be integers, got dtype {n.dtype}")
    if n.shape != (B,):
        raise ValueError(f"key_lengths must have shape (B,) = ({B},), got shape {n.shape}")
    if B and (n.min() < 0 or n.max() > S):
        raise ValueError(
            f"key_lengths must lie in [0, S={S}] (S = length of x_kv), "
            f"got min {n.min()} and max {n.max()}"
        )
    real = padding_mask(n, S)  # (B, 1, 1, S), True = real key
    if m is None:
        return real
    if m.dtype.kind == "b":
        return m & real
    if m.dtype.kind != "f":
        raise TypeError(f"attn_mask must be bool or floating, got dtype {m.dtype}")
    return np.where(real, m.astype(dtype), -np.inf)


# ---------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------


def _project(x: Array, w: Array, b: Array | None) -> Array:
    """Eq. (3.1): ``x @ W + b``."""
    y = x @ w
    return y if b is None else y + b


def _split_heads(y: Array, heads: int) -> Array:
    """Eq. (3.2): ``(B, T, heads*D) -> (B, heads, T, D)``; head ``h`` is columns ``hD:(h+1)D``."""
    B, T, width = y.shape
    return y.reshape(B, T, heads, width // heads).transpose(0, 2, 1, 3)


def _merge_heads(o: Array) -> Array:
    """Eq. (3.4): ``(B, heads, T, D) -> (B, T, heads*D)``, the inverse of :func:`_split_heads`."""
    B, heads, T, D = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, T, heads * D)


def _weight_grad(x: Array, dy: Array) -> Array:
    """``sum_b x_b^T dy_b``: the gradient of ``W`` in ``y = x @ W`` (Eqs. (3.6), (3.10))."""
    return x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])


# ---------------------------------------------------------------------------
# Forward and backward
# ---------------------------------------------------------------------------


def cross_attention_forward(
    params: CrossAttentionParams,
    x_q: ArrayLike,
    x_kv: ArrayLike,
    *,
    key_lengths: ArrayLike | None = None,
    attn_mask: ArrayLike | None = None,
    is_causal: bool = False,
    num_kv_heads: int | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    dropout_mask: ArrayLike | None = None,
    rng: np.random.Generator | None = None,
    causal_align: str = "top_left",
) -> tuple[Array, CrossAttentionCache]:
    r"""Multi-head cross-attention: queries from ``x_q``, keys and values from ``x_kv``.

    Shapes: ``x_q (B, L, Eq)``, ``x_kv (B, S, Ekv)`` -> ``out (B, L, Eo)``
    (see the module docstring for the legend and the parameters' shapes).

    Parameters
    ----------
    params : CrossAttentionParams
        Projections and ``num_heads``.
    x_q : array_like, shape (B, L, Eq)
        The sequence that asks (the seed's :math:`S_1`).
    x_kv : array_like, shape (B, S, Ekv)
        The sequence that is read (the seed's :math:`S_2`).
    key_lengths : array_like of int, shape (B,), optional
        ``key_lengths[b]`` real keys in sequence ``b``; positions ``>=`` it are
        padding and get weight 0 (Eq. (2.7)). Replaces torch's
        ``key_padding_mask`` (True = ignore) without its polarity trap.
    attn_mask : array_like of bool or float, optional
        Broadcastable to ``(B, H, L, S)``, with the core's meaning (bool:
        True = attend; float: added to the scores). Treated as a constant:
        the backward returns no gradient for it.
    is_causal : bool, optional
        Causal mask of Eq. (2.6), aligned by ``causal_align`` (default top-left).
    num_kv_heads : int, optional
        ``Hkv`` for grouped-query attention (query head ``h`` reads key/value
        head ``h // (H / Hkv)``). Default ``params.num_kv_heads``, else ``H``.
    scale : float, optional
        Score scale; default ``1 / sqrt(D)``.
    dropout_p, dropout_mask, rng : optional
        Dropout on the attention weights, passed to the core (Eq. (2.4)).
    causal_align : {"top_left", "bottom_right"}, optional
        Diagonal alignment of ``is_causal`` when ``L != S``.

    Returns
    -------
    out : ndarray, shape (B, L, Eo)
        In the inputs' and parameters' common dtype. A query whose every key
        is masked gets context 0, so its output is ``b_o`` (torch gives NaN).
    cache : CrossAttentionCache
        ``cache.weights`` are the attention weights ``(B, H, L, S)``.

    Raises
    ------
    TypeError
        Non-real inputs, a non-integer ``key_lengths`` or ``num_heads``.
    ValueError
        Inputs not 3-D; batch sizes of ``x_q`` and ``x_kv`` differ; widths of
        ``x_q``/``x_kv`` do not match ``w_q``/``w_k``/``w_v``; ``num_heads``
        does not divide the projection width; ``num_kv_heads`` does not divide
        ``num_heads``; ``key_lengths`` not of shape ``(B,)`` or outside
        ``[0, S]``; a mask that does not broadcast to ``(B, H, L, S)``.

    Notes
    -----
    Eqs. (3.1)-(3.5) of ``docs/layers.md``, with :math:`g(h) = \lfloor h/G \rfloor`:

    .. math::

        Q = X_q W_q + b_q,\ K = X_{kv} W_k + b_k,\ V = X_{kv} W_v + b_v \;(3.1), \qquad
        Q_h = Q_{:,\,hD:(h+1)D} \;(3.2),

        O_h = \mathrm{softmax}\!\Big(\frac{Q_h K_{g(h)}^\top}{\sqrt D} + M\Big) V_{g(h)} \;(3.3),
        \qquad C = [O_1, \dots, O_H] \;(3.4), \qquad Y = C W_o + b_o \;(3.5).

    Eq. (3.3) is the core :func:`~numpy_attention.attention.attention_forward`
    (Eqs. (2.1)-(2.5)); with one head and identity projections the layer is
    the seed's :math:`\mathrm{softmax}(Q_1K_2^\top/\sqrt{d_k})V_2`, Eq. (3.12).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_cross_attention(rng, e_q=8, e_kv=6, num_heads=2)
    >>> x_q, x_kv = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 5, 6))
    >>> out, cache = cross_attention_forward(p, x_q, x_kv, key_lengths=[5, 2])
    >>> out.shape, cache.weights.shape
    ((2, 3, 8), (2, 2, 3, 5))
    >>> float(cache.weights[1, :, :, 2:].max())  # padded keys get weight 0
    0.0
    """
    xq, xkv = _check_x(x_q, "x_q"), _check_x(x_kv, "x_kv")
    if xq.shape[0] != xkv.shape[0]:
        raise ValueError(
            f"x_q and x_kv must have the same batch size B: x_q has shape {xq.shape}, "
            f"x_kv has shape {xkv.shape}"
        )
    dims = _check_params(params, xq.shape[-1], xkv.shape[-1], num_kv_heads)
    arrays = {n: getattr(params, n) for n in _WEIGHTS + _BIASES}
    floats = {n: as_float_array(a, f"params.{n}") for n, a in arrays.items() if a is not None}
    dtype = np.result_type(xq, xkv, *floats.values())
    cdtype = compute_dtype(dtype)
    converted: dict[str, Any] = {n: a.astype(cdtype, copy=False) for n, a in floats.items()}
    p = replace(params, num_kv_heads=dims.Hkv, **converted)
    xq, xkv = xq.astype(cdtype, copy=False), xkv.astype(cdtype, copy=False)
    B, L, S = xq.shape[0], xq.shape[1], xkv.shape[1]
    mask = _key_mask(key_lengths, attn_mask, (B, dims.H, L, S), cdtype)
    q = _split_heads(_project(xq, p.w_q, p.b_q), dims.H)  # Eqs. (3.1)-(3.2)
    k = _split_heads(_project(xkv, p.w_k, p.b_k), dims.Hkv)
    v = _split_heads(_project(xkv, p.w_v, p.b_v), dims.Hkv)
    o, attn = attention_forward(  # Eq. (3.3), the core's Eqs. (2.1)-(2.5)
        q, k, v, mask, dropout_p, is_causal, scale, dims.Hkv != dims.H,
        dropout_mask=dropout_mask, rng=rng, causal_align=causal_align,
    )  # fmt: skip
    context = _merge_heads(o)  # Eq. (3.4)
    out = _project(context, p.w_o, p.b_o)  # Eq. (3.5)
    cache = CrossAttentionCache(
        params=p, x_q=xq, x_kv=xkv, context=context, attn=attn, num_kv_heads=dims.Hkv, dtype=dtype
    )
    return out.astype(dtype, copy=False), cache


def cross_attention_backward(
    d_out: ArrayLike, cache: CrossAttentionCache
) -> tuple[Array, Array, CrossAttentionParams]:
    r"""Hand-written backward of :func:`cross_attention_forward`.

    Parameters
    ----------
    d_out : array_like, shape (B, L, Eo)
        Gradient of the loss with respect to the layer's output.
    cache : CrossAttentionCache
        From :func:`cross_attention_forward`.

    Returns
    -------
    d_x_q : ndarray, shape (B, L, Eq)
    d_x_kv : ndarray, shape (B, S, Ekv)
        Gradient through both the key and the value path, Eq. (3.10).
    d_params : CrossAttentionParams
        Gradient of every weight and bias (None where the bias is None),
        same ``num_heads`` and ``num_kv_heads``.

    Raises
    ------
    ValueError
        If ``d_out`` does not have the output's shape.

    Notes
    -----
    Eqs. (3.6)-(3.10) of ``docs/layers.md``, each undoing one forward step
    (sums over the batch and positions are implied in the weight gradients):

    .. math::

        dW_o = C^\top dY,\ db_o = \textstyle\sum dY,\ dC = dY\,W_o^\top \;(3.6), \qquad
        dO_h = dC_{:,\,hD_v:(h+1)D_v} \;(3.7),

        (dQ_h, dK_g, dV_g) = \text{core backward, Eqs. (2.10)-(2.16)} \;(3.8), \qquad
        dQ = [dQ_1, \dots, dQ_H] \;(3.9),

        dW_q = X_q^\top dQ,\ db_q = \textstyle\sum dQ,\ dX_q = dQ\,W_q^\top,\
        dX_{kv} = dK\,W_k^\top + dV\,W_v^\top \;(3.10).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_cross_attention(rng, e_q=4, e_kv=3, num_heads=2)
    >>> x_q, x_kv = rng.normal(size=(1, 2, 4)), rng.normal(size=(1, 5, 3))
    >>> out, cache = cross_attention_forward(p, x_q, x_kv)
    >>> d_x_q, d_x_kv, d_p = cross_attention_backward(np.ones_like(out), cache)
    >>> d_x_q.shape, d_x_kv.shape, d_p.w_k.shape
    ((1, 2, 4), (1, 5, 3), (3, 4))
    """
    p, H = cache.params, cache.params.num_heads
    dY = as_float_array(d_out, "d_out")
    expected = cache.context.shape[:2] + (p.w_o.shape[1],)
    if dY.shape != expected:
        raise ValueError(f"d_out has shape {dY.shape}, expected the output's shape {expected}")
    dY = dY.astype(cache.context.dtype, copy=False)
    # Y = C W_o + b_o  (Eq. 3.5)  ->  dW_o = C^T dY, db_o = sum dY, dC = dY W_o^T  (Eq. (3.6))
    d_w_o = _weight_grad(cache.context, dY)
    d_b_o = None if p.b_o is None else dY.sum(axis=(0, 1))
    dC = dY @ p.w_o.T
    # C = merge_h(O_h)  (Eq. 3.4)  ->  dO_h = split_h(dC)  (Eq. (3.7))
    dO = _split_heads(dC, H)
    # O_h = Attention(Q_h, K_g(h), V_g(h))  (Eq. 3.3)  ->  core backward  (Eq. (3.8))
    g = attention_backward(dO, cache.attn)
    # Q_h = split_h(Q)  (Eq. 3.2)  ->  dQ = merge_h(dQ_h), same for K, V  (Eq. (3.9))
    dQ, dK, dV = _merge_heads(g.dq), _merge_heads(g.dk), _merge_heads(g.dv)
    # Q = X_q W_q + b_q, K = X_kv W_k + b_k, V = X_kv W_v + b_v  (Eq. 3.1)  ->  Eq. (3.10)
    d_x_q = dQ @ p.w_q.T
    d_x_kv = dK @ p.w_k.T + dV @ p.w_v.T  # x_kv feeds two paths: their gradients add
    grads: dict[str, Any] = {
        "w_q": _weight_grad(cache.x_q, dQ),
        "w_k": _weight_grad(cache.x_kv, dK),
        "w_v": _weight_grad(cache.x_kv, dV),
        "w_o": d_w_o,
        "b_q": None if p.b_q is None else dQ.sum(axis=(0, 1)),
        "b_k": None if p.b_k is None else dK.sum(axis=(0, 1)),
        "b_v": None if p.b_v is None else dV.sum(axis=(0, 1)),
        "b_o": d_b_o,
    }
    dt = cache.dtype
    cast: dict[str, Any] = {n: None if a is None else a.astype(dt) for n, a in grads.items()}
    d_params = replace(p, **cast)
    return d_x_q.astype(dt, copy=False), d_x_kv.astype(dt, copy=False), d_params


def self_attention_forward(
    params: CrossAttentionParams, x: ArrayLike, **kwargs: Any
) -> tuple[Array, CrossAttentionCache]:
    r"""Multi-head self-attention: cross-attention of ``x`` with itself.

    Parameters
    ----------
    params : CrossAttentionParams
        With ``Eq = Ekv``.
    x : array_like, shape (B, T, E)
        Queries, keys and values all come from it (``L = S = T``).
    **kwargs
        ``key_lengths``, ``attn_mask``, ``is_causal``, ``num_kv_heads`` and the
        other keyword arguments of :func:`cross_attention_forward`.

    Returns
    -------
    out : ndarray, shape (B, T, Eo)
    cache : CrossAttentionCache
        As for cross-attention, marked ``is_self``.

    Raises
    ------
    TypeError, ValueError
        As :func:`cross_attention_forward`.

    Notes
    -----
    Eq. (3.11) of ``docs/layers.md``: :math:`\mathrm{SelfAttn}(X) = \mathrm{CrossAttn}(X, X)`,
    computed by Eqs. (3.1)-(3.5).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_cross_attention(rng, 4, 4, num_heads=2)
    >>> out, cache = self_attention_forward(p, rng.normal(size=(1, 3, 4)), is_causal=True)
    >>> cache.weights[0, 0].round(2)[0].tolist()  # the first token sees only itself
    [1.0, 0.0, 0.0]
    """
    xa = _check_x(x, "x")
    out, cache = cross_attention_forward(params, xa, xa, **kwargs)
    return out, replace(cache, is_self=True)


def self_attention_backward(
    d_out: ArrayLike, cache: CrossAttentionCache
) -> tuple[Array, CrossAttentionParams]:
    r"""Hand-written backward of :func:`self_attention_forward`.

    Parameters
    ----------
    d_out : array_like, shape (B, T, Eo)
        Gradient of the loss with respect to the output.
    cache : CrossAttentionCache
        From :func:`self_attention_forward`.

    Returns
    -------
    d_x : ndarray, shape (B, T, E)
        The *sum* of the query path's and the key/value paths' gradients.
    d_params : CrossAttentionParams

    Raises
    ------
    ValueError
        If the cache does not come from :func:`self_attention_forward`, or
        ``d_out`` has the wrong shape.

    Notes
    -----
    Eq. (3.11) of ``docs/layers.md``: ``x`` is used as both :math:`X_q` and
    :math:`X_{kv}`, so by the multivariable chain rule
    :math:`dX = dX_q + dX_{kv}` with both terms from Eq. (3.10).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_cross_attention(rng, 4, 4, num_heads=1)
    >>> out, cache = self_attention_forward(p, rng.normal(size=(2, 3, 4)))
    >>> d_x, d_p = self_attention_backward(np.ones_like(out), cache)
    >>> d_x.shape
    (2, 3, 4)
    """
    if not getattr(cache, "is_self", False):
        raise ValueError(
            "cache must come from self_attention_forward; use cross_attention_backward "
            "for a cache of cross_attention_forward"
        )
    d_x_q, d_x_kv, d_params = cross_attention_backward(d_out, cache)
    return d_x_q + d_x_kv, d_params  # Eq. (3.11): both paths' gradients add
