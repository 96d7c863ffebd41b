r"""Multi-head cross-attention and self-attention layers with hand-written backward.

The layer of the seed document's sections 3.1 and 4.1 (the Transformer's
encoder-decoder attention), built on :func:`~numpy_attention.attention.attention_forward`
and :func:`~numpy_attention.attention.attention_backward` for the attention
step itself. Equations are numbered as in ``docs/layers.md`` (chapter 3). The same layer
as a loop over heads with the seed's formula: ``per_head_loop_oracle`` in
``tests/test_layers.py``.

Shapes (letter legend; the attention letters are those of docs/README.md's Notation)::

    B    batch                  L    queries (length of x_q)    S    keys (length of x_kv)
    H    query heads            Hkv  key/value heads (H = G * Hkv with GQA)
    E    query/key head width   Ev   value head width
    Dq   width of x_q           Dkv  width of x_kv              Do   output width

    x_q  (B, L, Dq)     x_kv (B, S, Dkv)     out (B, L, Do)
    w_q  (Dq, H*E)      w_k  (Dkv, Hkv*E)    w_v (Dkv, Hkv*Ev)    w_o (H*Ev, Do)
    b_q  (H*E,)         b_k  (Hkv*E,)        b_v (Hkv*Ev,)        b_o (Do,)
    attention weights (B, H, L, S)

Convention: a projection is ``y = x @ w + b``. PyTorch's ``nn.Linear`` stores
its weight transposed (``y = x @ weight.T + bias``), so ``w_q = q_proj_weight.T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._arrays import Array, as_float_array, broadcasts_to, compute_dtype
from ._validate import check_bool, check_grad, check_instance, check_int
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

_WEIGHTS = ("w_q", "w_k", "w_v", "w_o")
_BIASES = ("b_q", "b_k", "b_v", "b_o")
_SINKS = ("sinks",)  # a learned logit per query head in every row's softmax (Eq. (8.9))


@dataclass(frozen=True)
class CrossAttentionParams:
    r"""Parameters of a multi-head cross-attention layer (or their gradients).

    Every weight and bias may be given as any array_like (a nested list, a
    tuple); it is stored as an ``ndarray``. Shapes and dtypes are checked by
    the forward.

    Attributes
    ----------
    w_q : ndarray, shape (Dq, H*E)
        Query projection, ``Q = x_q @ w_q + b_q``.
    w_k : ndarray, shape (Dkv, Hkv*E)
        Key projection, ``K = x_kv @ w_k + b_k``.
    w_v : ndarray, shape (Dkv, Hkv*Ev)
        Value projection, ``V = x_kv @ w_v + b_v``.
    w_o : ndarray, shape (H*Ev, Do)
        Output projection, ``out = concat_h(O^(h)) @ w_o + b_o``.
    b_q, b_k, b_v, b_o : ndarray or None
        Biases of the four projections; None means "no bias" (and a None
        gradient).
    num_heads : int
        ``H``, the number of query heads.
    num_kv_heads : int or None
        ``Hkv``, the number of key/value heads (grouped-query attention);
        None means ``H``. The forward's ``num_kv_heads`` argument overrides it.
    sinks : ndarray, shape (H,), or None
        Learned attention sinks (gpt-oss): one logit per query head that joins
        every row's softmax denominator, Eq. (8.9); it gets a gradient.

    Notes
    -----
    In a gradient container returned by a backward, each field holds
    :math:`\partial\mathcal{L}/\partial` of the same field, Eqs. (3.6)-(3.10).
    PyTorch's ``nn.MultiheadAttention`` stores ``q_proj_weight`` of shape
    ``(H*E, Dq)``; here ``w_q = q_proj_weight.T`` (see ``docs/layers.md``).

    Examples
    --------
    >>> p = CrossAttentionParams(w_q=[[1.0]], w_k=[[1.0]], w_v=[[1.0]], w_o=[[2.0]])
    >>> type(p.w_o).__name__, p.w_o.shape
    ('ndarray', (1, 1))
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
    sinks: Array | None = None

    def __post_init__(self) -> None:
        """Store every array_like weight and bias as an ndarray (None stays None)."""
        for name in _WEIGHTS + _BIASES + _SINKS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, np.ndarray):
                try:
                    array = np.asarray(value)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"params.{name} must be array_like: {err}") from None
                object.__setattr__(self, name, array)


@dataclass(frozen=True)
class CrossAttentionCache:
    """What :func:`cross_attention_backward` needs; also the forward's by-products.

    The cache holds its own copies of the inputs and parameters: editing
    them in place after the forward (a residual ``x += out``, an optimizer
    step) leaves the backward unchanged.

    Attributes
    ----------
    params : CrossAttentionParams
        The parameters, converted to the compute dtype.
    x_q, x_kv : ndarray
        The inputs, in the compute dtype.
    context : ndarray, shape (B, L, H*Ev)
        Merged heads before the output projection, Eq. (3.4).
    attn : AttentionCache
        The core attention's cache (queries ``(B, H, L, E)``).
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


def _float_dtype(dtype: object) -> np.dtype:
    """Return ``dtype`` as a real floating NumPy dtype; anything else is a ``TypeError``."""
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]  # anything may come in
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.kind != "f":
        raise TypeError(
            f"dtype must be a real floating dtype (np.float64, np.float32, np.float16), "
            f"got {dtype!r}"
        )
    return dt


def _uniform(rng: np.random.Generator, shape: tuple[int, int], bound: float, dtype) -> Array:
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _xavier(rng: np.random.Generator, fan_in: int, fan_out: int, dtype) -> Array:
    """Xavier/Glorot uniform ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``."""
    return _uniform(rng, (fan_in, fan_out), math.sqrt(6.0 / (fan_in + fan_out)), dtype)


def _init_sizes(
    e_q: object, e_kv: object, num_heads: object, embed_dim: object, e_out: object, kv: object
) -> tuple[int, int, int, int, int, int]:
    """Check the sizes given to :func:`init_cross_attention`; return ``Dq, Dkv, Do, H, Hkv, E``."""
    d_q, d_kv = check_int(e_q, "e_q", minimum=1), check_int(e_kv, "e_kv", minimum=1)
    H = check_int(num_heads, "num_heads", minimum=1)
    width = d_q if embed_dim is None else check_int(embed_dim, "embed_dim", minimum=1)
    d_o = d_q if e_out is None else check_int(e_out, "e_out", minimum=1)
    Hkv = H if kv is None else check_int(kv, "num_kv_heads", minimum=1)
    if width % H:
        raise ValueError(
            f"num_heads={H} must divide the projection width embed_dim={width} "
            f"(head width E = embed_dim / num_heads)"
        )
    if H % Hkv:
        raise ValueError(f"num_kv_heads={Hkv} must divide num_heads={H}")
    return d_q, d_kv, d_o, H, Hkv, width // H


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
        Source of the random weights (``numpy.random.default_rng(seed)``; a
        bare seed or None is refused, so that no draw is hidden).
    e_q, e_kv : int
        Widths ``Dq`` of the queries' input and ``Dkv`` of the keys'/values'
        input (torch's ``embed_dim`` and ``kdim = vdim``).
    num_heads : int
        ``H``; must divide ``embed_dim``.
    embed_dim : int, optional
        Projection width ``H*E`` (and ``H*Ev``). Default ``e_q`` (as torch).
    e_out : int, optional
        Output width ``Do``. Default ``e_q`` (as torch).
    num_kv_heads : int, optional
        ``Hkv`` for grouped-query attention; must divide ``num_heads``. Then
        ``w_k`` and ``w_v`` have ``Hkv*E`` columns. Default ``num_heads``.
    bias : bool, optional
        Create zero biases (default) or none at all.
    dtype : dtype, optional
        A real floating dtype. Default float64.

    Returns
    -------
    params : CrossAttentionParams

    Raises
    ------
    TypeError
        If ``rng`` is not a ``numpy.random.Generator``, a size is not an
        integer, ``bias`` is not a bool or ``dtype`` is not a real floating
        dtype.
    ValueError
        If a size is not positive, ``num_heads`` does not divide
        ``embed_dim`` or ``num_kv_heads`` does not divide ``num_heads``.

    Notes
    -----
    As torch: ``w_q``, ``w_k``, ``w_v`` are each Xavier/Glorot uniform,
    :math:`U(\pm\sqrt{6/(\text{fan\_in}+\text{fan\_out})})` (torch's
    separate-projection case ``kdim != embed_dim``; with ``kdim = embed_dim``
    torch draws the stacked ``(3 Dq, Dq)`` matrix at once, bound
    :math:`\sqrt{6/(4 D_q)}`); ``w_o`` keeps ``nn.Linear``'s default,
    :math:`U(\pm 1/\sqrt{\text{fan\_in}})`; every bias is zero.

    Examples
    --------
    >>> p = init_cross_attention(np.random.default_rng(0), 8, 6, num_heads=2, num_kv_heads=1)
    >>> p.w_q.shape, p.w_k.shape, p.w_v.shape, p.w_o.shape, p.b_o.tolist() == [0.0] * 8
    ((8, 8), (6, 4), (6, 4), (8, 8), True)
    """
    rng = check_instance(rng, np.random.Generator, "rng", "numpy.random.default_rng")
    d_q, d_kv, d_o, H, Hkv, E = _init_sizes(e_q, e_kv, num_heads, embed_dim, e_out, num_kv_heads)
    bias, dt = check_bool(bias, "bias"), _float_dtype(dtype)
    params = CrossAttentionParams(
        w_q=_xavier(rng, d_q, H * E, dt),
        w_k=_xavier(rng, d_kv, Hkv * E, dt),
        w_v=_xavier(rng, d_kv, Hkv * E, dt),
        w_o=_uniform(rng, (H * E, d_o), 1.0 / math.sqrt(H * E), dt),
        num_heads=H,
        num_kv_heads=None if num_kv_heads is None else Hkv,
    )
    if not bias:
        return params
    return replace(
        params,
        b_q=np.zeros(H * E, dt),
        b_k=np.zeros(Hkv * E, dt),
        b_v=np.zeros(Hkv * E, dt),
        b_o=np.zeros(d_o, dt),
    )


# ---------------------------------------------------------------------------
# Input checking
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dims:
    """The head counts ``H``, ``Hkv`` and head widths ``E``, ``Ev`` read from the parameters."""

    H: int
    Hkv: int
    E: int
    Ev: int


def _check_heads(p: CrossAttentionParams, num_kv_heads: object) -> tuple[int, int]:
    """Return ``(H, Hkv)``; ``Hkv`` is the argument's, else ``params.num_kv_heads``, else ``H``."""
    if not isinstance(p, CrossAttentionParams):
        raise TypeError(f"params must be a CrossAttentionParams, got {type(p).__name__}")
    H = check_int(p.num_heads, "params.num_heads", minimum=1)
    arg = None if num_kv_heads is None else check_int(num_kv_heads, "num_kv_heads", minimum=1)
    own = p.num_kv_heads
    if own is not None:
        own = check_int(own, "params.num_kv_heads", minimum=1)
    if arg is not None and own is not None and arg != own:
        raise ValueError(f"num_kv_heads={arg} disagrees with params.num_kv_heads={own}")
    Hkv = arg if arg is not None else own if own is not None else H
    if H % Hkv:
        raise ValueError(f"num_kv_heads={Hkv} must divide params.num_heads={H}")
    return H, Hkv


def _check_weights(p: CrossAttentionParams, d_q: int, d_kv: int, H: int, Hkv: int) -> _Dims:
    """Validate the four weights' shapes against the inputs' widths; return the head sizes."""
    for name in _WEIGHTS:
        w = getattr(p, name)
        if w is None or w.ndim != 2:
            raise ValueError(
                f"params.{name} must be a 2-D array, got {None if w is None else w.shape}"
            )
    if p.w_q.shape[1] % H:
        raise ValueError(
            f"params.num_heads={H} must divide the projection width of params.w_q "
            f"(shape {p.w_q.shape}, width {p.w_q.shape[1]})"
        )
    E = p.w_q.shape[1] // H
    if p.w_q.shape[0] != d_q:
        raise ValueError(
            f"x_q has width Dq={d_q} but params.w_q has shape {p.w_q.shape}; expected ({d_q}, H*E)"
        )
    if p.w_k.shape != (d_kv, Hkv * E):
        raise ValueError(
            f"params.w_k has shape {p.w_k.shape}, expected (Dkv, Hkv*E) = ({d_kv}, {Hkv * E}) "
            f"for x_kv of width {d_kv}, Hkv={Hkv} key/value heads and head width E={E}"
            + ("" if Hkv != H or p.w_k.shape[1] % E else "; pass num_kv_heads for GQA")
        )
    if p.w_v.shape[0] != d_kv or p.w_v.shape[1] % Hkv:
        raise ValueError(
            f"params.w_v has shape {p.w_v.shape}, expected (Dkv, Hkv*Ev) with Dkv={d_kv} "
            f"(the width of x_kv) and a width divisible by Hkv={Hkv}"
        )
    Ev = p.w_v.shape[1] // Hkv
    if p.w_o.shape[0] != H * Ev:
        raise ValueError(
            f"params.w_o has shape {p.w_o.shape}, expected (H*Ev, Do) with H*Ev = {H * Ev}"
        )
    return _Dims(H=H, Hkv=Hkv, E=E, Ev=Ev)


def _check_biases(p: CrossAttentionParams, dims: _Dims) -> None:
    """Each bias is None or a vector as long as its projection's output."""
    H, Hkv, E, Ev = dims.H, dims.Hkv, dims.E, dims.Ev
    for name, width in zip(_BIASES, (H * E, Hkv * E, Hkv * Ev, p.w_o.shape[1]), strict=True):
        b = getattr(p, name)
        if b is not None and b.shape != (width,):
            raise ValueError(f"params.{name} has shape {b.shape}, expected ({width},)")


def _check_x(x: ArrayLike, name: str) -> Array:
    a = as_float_array(x, name)
    if a.ndim != 3:
        want = {"x_q": "(B, L, Dq)", "x_kv": "(B, S, Dkv)"}.get(name, "(B, T, Dm)")
        raise ValueError(f"{name} must have shape {want}, got shape {a.shape}")
    return a


def _prepare(
    params: CrossAttentionParams, xq: Array, xkv: Array, num_kv_heads: object
) -> tuple[CrossAttentionParams, Array, Array, _Dims, np.dtype]:
    """Validate the parameters and return own copies of them and of the inputs, in one dtype.

    Returns the parameters, ``x_q`` and ``x_kv`` in the compute dtype (fresh
    arrays, so that nothing the caller holds is also held by the cache), the
    head sizes and the result dtype.
    """
    if xq.shape[0] != xkv.shape[0]:
        raise ValueError(
            f"x_q and x_kv must have the same batch size B: x_q has shape {xq.shape}, "
            f"x_kv has shape {xkv.shape}"
        )
    H, Hkv = _check_heads(params, num_kv_heads)
    dims = _check_weights(params, xq.shape[-1], xkv.shape[-1], H, Hkv)
    _check_biases(params, dims)
    arrays = {n: getattr(params, n) for n in _WEIGHTS + _BIASES + _SINKS}
    floats = {n: as_float_array(a, f"params.{n}") for n, a in arrays.items() if a is not None}
    dtype = np.result_type(xq, xkv, *floats.values())
    cdtype = compute_dtype(dtype)
    own: dict[str, Any] = {n: np.array(a, dtype=cdtype) for n, a in floats.items()}
    p = replace(params, num_kv_heads=dims.Hkv, **own)
    return p, np.array(xq, dtype=cdtype), np.array(xkv, dtype=cdtype), dims, dtype


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
# Heads and projections
# ---------------------------------------------------------------------------


def _project(x: Array, w: Array, b: Array | None) -> Array:
    """Eq. (3.1): ``y = x @ w + b`` (no bias when ``b`` is None)."""
    y = x @ w
    return y if b is None else y + b


def _project_backward(
    dy: Array, x: Array, w: Array, b: Array | None
) -> tuple[Array, Array | None, Array]:
    """Undo ``y = x @ w + b``: ``dw = x^T dy, db = sum dy, dx = dy w^T`` (Eqs. (3.6), (3.10)).

    The weight and the bias serve every position of every sequence, so their
    gradients sum over the batch and position axes (flattened together).
    """
    dw = x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
    db = None if b is None else dy.sum(axis=tuple(range(dy.ndim - 1)))
    return dw, db, dy @ w.T


def _split_heads(y: Array, heads: int) -> Array:
    """Eq. (3.2): ``(B, L, heads*E) -> (B, heads, L, E)``; head ``h`` is columns ``hE:(h+1)E``."""
    B, T, width = y.shape
    return y.reshape(B, T, heads, width // heads).transpose(0, 2, 1, 3)


def _merge_heads(o: Array) -> Array:
    """Eq. (3.4): ``(B, heads, L, Ev) -> (B, L, heads*Ev)``, the inverse of :func:`_split_heads`."""
    B, heads, T, Ev = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, T, heads * Ev)


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
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    alibi_slopes: ArrayLike | None = None,
) -> tuple[Array, CrossAttentionCache]:
    r"""Multi-head cross-attention: queries from ``x_q``, keys and values from ``x_kv``.

    Shapes: ``x_q (B, L, Dq)``, ``x_kv (B, S, Dkv)`` -> ``out (B, L, Do)``
    (see the module docstring for the legend and the parameters' shapes).

    Parameters
    ----------
    params : CrossAttentionParams
        Projections and ``num_heads``.
    x_q : array_like, shape (B, L, Dq)
        The sequence that asks (the seed's :math:`S_1`).
    x_kv : array_like, shape (B, S, Dkv)
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
        Score scale; default ``1 / sqrt(E)``.
    dropout_p, dropout_mask, rng : optional
        Dropout on the attention weights, passed to the core (Eq. (2.4)).
    causal_align : {"top_left", "bottom_right"}, optional
        Diagonal alignment of ``is_causal`` (and of ``window``, ALiBi) when ``L != S``.
    window, softcap, alibi_slopes : optional
        Passed to the core (docs/variants.md): a sliding ``window=(left, right)``,
        logit soft-capping ``softcap=kappa``, ALiBi slopes ``(H,)``. The layer's own
        ``params.sinks`` (if any) are passed too, and get a gradient.

    Returns
    -------
    out : ndarray, shape (B, L, Do)
        In the inputs' and parameters' common dtype; a fresh array that the
        cache does not hold (editing it in place does not change the
        backward). A query whose every key is masked gets context 0, so its
        output is ``b_o`` (torch gives NaN).
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
    Eqs. (3.1)-(3.5) of ``docs/layers.md``, with :math:`g(h) = \lfloor h/\mathtt{G} \rfloor`
    and :math:`\tilde S^{(h)}` the scores :math:`Q^{(h)} (K^{(g(h))})^\top/\sqrt{\mathtt{E}}`
    masked by Eq. (2.2) (:math:`M` is the 0/1 indicator of the allowed keys):

    .. math::

        Q = X_q W_q + b_q,\ K = X_{kv} W_k + b_k,\ V = X_{kv} W_v + b_v \;(3.1), \qquad
        Q^{(h)} = Q_{:,\,h\mathtt{E}:(h+1)\mathtt{E}} \;(3.2),

        O^{(h)} = \mathrm{softmax}\big(\tilde S^{(h)}\big) V^{(g(h))} \;(3.3),
        \qquad C = [O^{(0)}, \dots, O^{(\mathtt{H}-1)}] \;(3.4), \qquad Y = C W_o + b_o \;(3.5).

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
    p, xq, xkv, dims, dtype = _prepare(params, xq, xkv, num_kv_heads)
    B, L, S = xq.shape[0], xq.shape[1], xkv.shape[1]
    mask = _key_mask(key_lengths, attn_mask, (B, dims.H, L, S), xq.dtype)
    Q = _project(xq, p.w_q, p.b_q)  # Q = x_q @ w_q + b_q  (Eq. (3.1))
    K = _project(xkv, p.w_k, p.b_k)  # K = x_kv @ w_k + b_k  (Eq. (3.1))
    V = _project(xkv, p.w_v, p.b_v)  # V = x_kv @ w_v + b_v  (Eq. (3.1))
    q = _split_heads(Q, dims.H)  # q_h = Q[..., h*E:(h+1)*E], (B, H, L, E)  (Eq. (3.2))
    k = _split_heads(K, dims.Hkv)  # k_g = K[..., g*E:(g+1)*E]  (Eq. (3.2))
    v = _split_heads(V, dims.Hkv)  # v_g = V[..., g*Ev:(g+1)*Ev]  (Eq. (3.2))
    # o_h = softmax(q_h k_g(h)^T * scale + M) v_g(h), the core's Eqs. (2.1)-(2.5)  (Eq. (3.3))
    variants = dict(window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=p.sinks)
    o, attn = attention_forward(
        q, k, v, mask, dropout_p, is_causal, scale, dims.Hkv != dims.H,
        dropout_mask=dropout_mask, rng=rng, causal_align=causal_align,
        **{n: a for n, a in variants.items() if a is not None},
    )  # fmt: skip
    C = _merge_heads(o)  # C = merge_heads(o) = [o_1, ..., o_H]  (Eq. (3.4))
    Y = _project(C, p.w_o, p.b_o)  # Y = C @ w_o + b_o  (Eq. (3.5))
    cache = CrossAttentionCache(
        params=p, x_q=xq, x_kv=xkv, context=C, attn=attn, num_kv_heads=dims.Hkv, dtype=dtype
    )
    return Y.astype(dtype, copy=False), cache


def cross_attention_backward(
    d_out: ArrayLike, cache: CrossAttentionCache
) -> tuple[Array, Array, CrossAttentionParams]:
    r"""Hand-written backward of :func:`cross_attention_forward`.

    Parameters
    ----------
    d_out : array_like, shape (B, L, Do)
        Gradient of the loss with respect to the layer's output.
    cache : CrossAttentionCache
        From :func:`cross_attention_forward`.

    Returns
    -------
    d_x_q : ndarray, shape (B, L, Dq)
    d_x_kv : ndarray, shape (B, S, Dkv)
        Gradient through both the key and the value path, Eq. (3.10).
    d_params : CrossAttentionParams
        Gradient of every weight and bias (None where the bias is None),
        same ``num_heads`` and ``num_kv_heads``.

    Raises
    ------
    TypeError
        If ``cache`` is not a ``CrossAttentionCache`` (from the forward).
    ValueError
        If ``d_out`` does not have the output's shape.

    Notes
    -----
    Eqs. (3.6)-(3.10) of ``docs/layers.md``, each undoing one forward step
    (sums over the batch and positions are implied in the weight gradients):

    .. math::

        dW_o = C^\top dY,\ db_o = \textstyle\sum dY,\ dC = dY\,W_o^\top \;(3.6), \qquad
        dO^{(h)} = dC_{:,\,h\mathtt{Ev}:(h+1)\mathtt{Ev}} \;(3.7),

        (dQ^{(h)}, dK^{(g)}, dV^{(g)}) = \text{core backward, Eqs. (2.10)-(2.16)} \;(3.8), \qquad
        dQ = [dQ^{(0)}, \dots, dQ^{(\mathtt{H}-1)}] \;(3.9),

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
    # Shapes: dY (B, L, Do), dC (B, L, H*Ev), do (B, H, L, Ev), dQ (B, L, H*E),
    #         dK (B, S, Hkv*E), dV (B, S, Hkv*Ev), d_x_q (B, L, Dq), d_x_kv (B, S, Dkv)
    c = check_instance(cache, CrossAttentionCache, "cache", "cross_attention_forward")
    p, C = c.params, c.context
    dY = check_grad(d_out, "d_out", C.shape[:2] + (p.w_o.shape[1],), C.dtype)
    # Y = C @ w_o + b_o  (Eq. (3.5))  ->  dw_o = C^T dY, db_o = sum dY, dC = dY w_o^T  (Eq. (3.6))
    d_w_o, d_b_o, dC = _project_backward(dY, C, p.w_o, p.b_o)
    # C = merge_heads(o)  (Eq. (3.4))  ->  do = split_heads(dC)  (Eq. (3.7))
    do = _split_heads(dC, p.num_heads)
    # o_h = softmax(q_h k_g(h)^T * scale + M) v_g(h)  (Eq. (3.3))  ->  core backward  (Eq. (3.8))
    g = attention_backward(do, c.attn)
    # q_h = Q[..., h*E:(h+1)*E], k_g, v_g likewise  (Eq. (3.2))
    #   ->  dQ = merge_heads(dq), dK = merge_heads(dk), dV = merge_heads(dv)  (Eq. (3.9))
    dQ, dK, dV = _merge_heads(g.dq), _merge_heads(g.dk), _merge_heads(g.dv)
    # Q = x_q @ w_q + b_q  (Eq. (3.1))
    #   ->  dw_q = x_q^T dQ, db_q = sum dQ, dx_q = dQ w_q^T  (Eq. (3.10))
    d_w_q, d_b_q, d_x_q = _project_backward(dQ, c.x_q, p.w_q, p.b_q)
    # K = x_kv @ w_k + b_k  (Eq. (3.1))
    #   ->  dw_k = x_kv^T dK, db_k = sum dK, dx_kv = dK w_k^T  (Eq. (3.10))
    d_w_k, d_b_k, d_x_kv_k = _project_backward(dK, c.x_kv, p.w_k, p.b_k)
    # V = x_kv @ w_v + b_v  (Eq. (3.1))
    #   ->  dw_v = x_kv^T dV, db_v = sum dV, dx_kv += dV w_v^T  (Eq. (3.10))
    d_w_v, d_b_v, d_x_kv_v = _project_backward(dV, c.x_kv, p.w_v, p.b_v)
    d_x_kv = d_x_kv_k + d_x_kv_v  # x_kv feeds two projections: their gradients add (Eq. (3.10))
    grads: dict[str, Array | None] = {"w_q": d_w_q, "w_k": d_w_k, "w_v": d_w_v, "w_o": d_w_o}
    grads.update(b_q=d_b_q, b_k=d_b_k, b_v=d_b_v, b_o=d_b_o, sinks=g.d_sinks)
    dt = c.dtype
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
        With ``Dq = Dkv = Dm``.
    x : array_like, shape (B, T, Dm)
        Queries, keys and values all come from it (``L = S = T``).
    **kwargs
        ``key_lengths``, ``attn_mask``, ``is_causal``, ``num_kv_heads`` and the
        other keyword arguments of :func:`cross_attention_forward`.

    Returns
    -------
    out : ndarray, shape (B, T, Do)
        A fresh array that the cache does not hold.
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
    # Y = CrossAttn(x, x)  (Eq. (3.11))
    Y, cache = cross_attention_forward(params, xa, xa, **kwargs)
    return Y, replace(cache, is_self=True)


def self_attention_backward(
    d_out: ArrayLike, cache: CrossAttentionCache
) -> tuple[Array, CrossAttentionParams]:
    r"""Hand-written backward of :func:`self_attention_forward`.

    The two input gradients of cross-attention add, Eq. (3.11).

    Parameters
    ----------
    d_out : array_like, shape (B, T, Do)
        Gradient of the loss with respect to the output.
    cache : CrossAttentionCache
        From :func:`self_attention_forward`.

    Returns
    -------
    d_x : ndarray, shape (B, T, Dm)
        The *sum* of the query path's and the key/value paths' gradients.
    d_params : CrossAttentionParams

    Raises
    ------
    TypeError
        If ``cache`` is not a ``CrossAttentionCache``.
    ValueError
        If the cache comes from :func:`cross_attention_forward` rather than
        :func:`self_attention_forward`, or ``d_out`` has the wrong shape.

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
    # Shapes: dY (B, T, Do) -> d_x_q, d_x_kv, d_x (B, T, Dm)
    check_instance(cache, CrossAttentionCache, "cache", "self_attention_forward")
    if not cache.is_self:
        raise ValueError(
            "cache must come from self_attention_forward; use cross_attention_backward "
            "for a cache of cross_attention_forward"
        )
    # Y = CrossAttn(x, x)  (Eq. (3.11))  ->  dx = dx_q + dx_kv  (Eq. (3.11))
    d_x_q, d_x_kv, d_params = cross_attention_backward(d_out, cache)
    return d_x_q + d_x_kv, d_params  # Eq. (3.11): both paths' gradients add
