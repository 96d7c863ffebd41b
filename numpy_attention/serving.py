r"""Serving: packed (varlen) sequences, KV-cache decoding, split-KV merging, rotary embeddings.

The inference half of attention. Every function here is a loop over *sequences* (or over
chunks) around the dense core :func:`numpy_attention.attention.attention_forward`; nothing
loops over batch rows of one problem, heads or positions. Equations are numbered as in
``docs/serving.md`` (chapter 9).

Shapes (letter legend)::

    T    packed tokens (Tq queries, Tk keys)   B    sequences (batch rows)
    Hq   query heads                           Hkv  key/value heads (Hq = G * Hkv with GQA)
    L    queries of one sequence (L_b)         S    keys of one sequence (S_b), or a cache's length
    E    query/key width                       Ev   value width
    R    rotary width (rotary_dim, even, <= E) Nc   parts (chunks) of a split-KV merge

    packed, FlashAttention's varlen layout:  q (Tq, Hq, E)  k (Tk, Hkv, E)  v (Tk, Hkv, Ev)
                                             out (Tq, Hq, Ev)  lse (Hq, Tq)
    padded batch:                            x (B, L, Hq, E), lengths (B,)
    KV cache, flash_attn_with_kvcache's:     q (B, L, Hq, E)  k_cache (B_cache, S, Hkv, E)
                                             paged: k_cache (num_blocks, page_size, Hkv, E)
                                             out (B, L, Hq, Ev)  lse (B, Hq, L)

Logarithms are natural; a row with no key to attend to has output 0 and ``lse = -inf``
(FlashAttention writes ``+inf`` there; see ``docs/serving.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import Array, as_float_array, broadcasts_to, compute_dtype
from ._validate import check_bool, check_grad, check_instance, check_int, check_real
from .attention import AttentionCache, attention_backward, attention_forward
from .flash import FlashCache, flash_attention_backward, flash_attention_forward

__all__ = [
    "rotary_cos_sin",
    "rotary_embedding",
    "rotary_embedding_backward",
    "pack",
    "unpack",
    "document_mask",
    "VarlenCache",
    "VarlenGrads",
    "varlen_attention_forward",
    "varlen_attention_backward",
    "kvcache_attention",
    "MergeCache",
    "merge_attention_states_forward",
    "merge_attention_states",
    "merge_attention_states_backward",
]

IntArray = NDArray[np.int64]


def _int_array(value: ArrayLike, name: str, ndim: int) -> IntArray:
    """``value`` as an int64 array of ``ndim`` dimensions; booleans and floats are refused."""
    a = np.asarray(value)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    return a.astype(np.int64)


# ---------------------------------------------------------------------------
# Rotary embeddings (Eqs. (9.5)-(9.8))
# ---------------------------------------------------------------------------


def rotary_cos_sin(
    positions: ArrayLike, rotary_dim: int, base: float = 10000.0
) -> tuple[Array, Array]:
    r"""Cosines and sines of the rotary angles of each position, Eq. (9.5).

    Shapes: ``positions (...)`` -> ``cos, sin (..., R/2)`` with ``R = rotary_dim``.

    Parameters
    ----------
    positions : array_like of int or float
        Token positions, any shape: ``np.arange(L)`` for a prompt, ``offset + np.arange(L)``
        when decoding after ``offset`` cached tokens.
    rotary_dim : int
        ``R``, the number of rotated features; even, at least 2 (and at most ``E`` when applied).
    base : float, optional
        The frequency base ``theta`` (10000 in GPT-NeoX and Llama 2, 500000 in Llama 3).

    Returns
    -------
    cos, sin : ndarray, shape (..., R/2)
        ``cos(p * base**(-2i/R))`` and ``sin(...)`` for ``i = 0 .. R/2 - 1``, in float64: the
        ``rotary_cos`` / ``rotary_sin`` tables of FlashAttention (``(seqlen, R/2)``).

    Raises
    ------
    TypeError
        If ``rotary_dim`` is not an integer or ``positions`` is not real.
    ValueError
        If ``rotary_dim`` is odd or below 2, or ``base`` is not a finite number > 0.

    Notes
    -----
    Eq. (9.5): :math:`\theta_{p,k} = p\,\mathrm{base}^{-2k/R}`. The inverse frequencies are
    those of Hugging Face's ``LlamaRotaryEmbedding`` and FlashAttention's ``RotaryEmbedding``:
    ``1 / base ** (arange(0, R, 2) / R)``.

    Examples
    --------
    >>> cos, sin = rotary_cos_sin(np.arange(3), 4, base=100.0)
    >>> cos.shape, sin[1].round(4).tolist()
    ((3, 2), [0.8415, 0.1])
    """
    R = check_int(rotary_dim, "rotary_dim", minimum=2)
    if R % 2:
        raise ValueError(f"rotary_dim must be even (features rotate in pairs), got {R}")
    b = check_real(base, "base", low=0.0, low_open=True)
    p = as_float_array(positions, "positions").astype(np.float64)
    inv_freq = 1.0 / b ** (np.arange(0, R, 2, dtype=np.float64) / R)
    angle = p[..., None] * inv_freq  # Eq. (9.5)
    return np.cos(angle), np.sin(angle)


def _check_rotary(
    x: ArrayLike, cos: ArrayLike, sin: ArrayLike, x_name: str
) -> tuple[Array, Array, Array]:
    """``x``, ``cos``, ``sin`` as arrays of one dtype; ``cos (..., R/2)`` broadcasts to ``x``."""
    xa = as_float_array(x, x_name)
    c, s = as_float_array(cos, "cos"), as_float_array(sin, "sin")
    if c.shape != s.shape:
        raise ValueError(f"cos and sin must have the same shape, got {c.shape} and {s.shape}")
    if c.ndim == 0 or c.shape[-1] == 0:
        raise ValueError(f"cos must have shape (..., R/2) with R/2 >= 1, got {c.shape}")
    if xa.ndim == 0 or 2 * c.shape[-1] > xa.shape[-1]:
        raise ValueError(
            f"rotary_dim R = 2 * cos.shape[-1] = {2 * c.shape[-1]} is larger than the width "
            f"E of {x_name} (shape {xa.shape}); R must be <= E"
        )
    target = xa.shape[:-1] + (c.shape[-1],)
    if not broadcasts_to(c.shape, target):
        raise ValueError(
            f"cos has shape {c.shape}, expected a shape that broadcasts to {x_name}'s "
            f"(..., R/2) = {target} (in a (B, L, H, E) layout, give cos (L, 1, R/2))"
        )
    dtype = np.result_type(xa, c, s)
    return xa.astype(dtype, copy=False), c.astype(dtype, copy=False), s.astype(dtype, copy=False)


def _rotate(x: Array, cos: Array, sin: Array, interleaved: bool, sign: float) -> Array:
    """Rotate the pairs of the first ``R`` features by ``sign * theta`` (Eqs. (9.6)-(9.7))."""
    R = 2 * cos.shape[-1]
    first = slice(0, R, 2) if interleaved else slice(0, R // 2)
    second = slice(1, R, 2) if interleaved else slice(R // 2, R)
    x1, x2 = x[..., first], x[..., second]
    y = x.copy()  # the features beyond R pass through
    y[..., first] = x1 * cos - sign * x2 * sin
    y[..., second] = x2 * cos + sign * x1 * sin
    return y


def rotary_embedding(
    x: ArrayLike, cos: ArrayLike, sin: ArrayLike, *, interleaved: bool = False
) -> Array:
    r"""Rotary position embedding (RoPE) of queries or keys, Eqs. (9.6)-(9.7).

    Shapes: ``x (..., E)``, ``cos, sin`` broadcastable to ``(..., R/2)`` (``x``'s leading axes)
    -> ``y (..., E)``; the features ``R:`` pass through unchanged (partial rotary).

    Parameters
    ----------
    x : array_like
        Queries or keys, e.g. ``(Hq, L, E)`` with ``cos (L, R/2)``, or ``(B, L, Hq, E)`` with
        ``cos (L, 1, R/2)`` or ``(B, L, 1, R/2)`` (per-sequence offsets).
    cos, sin : array_like, shape (..., R/2)
        From :func:`rotary_cos_sin` (rows picked at the tokens' positions).
    interleaved : bool, optional
        False (default): rotate-half, GPT-NeoX / Llama / Hugging Face's ``rotate_half``, pairs
        ``(i, i + R/2)``. True: GPT-J, pairs ``(2i, 2i + 1)``.

    Returns
    -------
    y : ndarray, shape (..., E)
        A new array, in the common dtype of ``x``, ``cos`` and ``sin``.

    Raises
    ------
    TypeError
        Non-real arrays or a non-bool ``interleaved``.
    ValueError
        ``cos`` and ``sin`` of different shapes, ``R > E`` (rotary_dim larger than ``E``), or
        ``cos`` not broadcasting to ``x``.

    Notes
    -----
    Rotate-half, Eq. (9.6), with :math:`x_1 = x_{:R/2}`, :math:`x_2 = x_{R/2:R}`:
    :math:`y_1 = x_1\cos\theta - x_2\sin\theta`, :math:`y_2 = x_2\cos\theta + x_1\sin\theta`.
    Interleaved, Eq. (9.7): the same with :math:`x_1 = x_{0::2}`, :math:`x_2 = x_{1::2}`. Both
    equal FlashAttention's ``apply_rotary_emb`` (``flash_attn/layers/rotary.py``); rotate-half
    is Hugging Face's ``q * cos + rotate_half(q) * sin`` with ``cos = cat(cos, cos)``.

    Examples
    --------
    >>> cos, sin = rotary_cos_sin([1], 2, base=1.0)          # angle 1 rad
    >>> rotary_embedding([[1.0, 0.0, 5.0]], cos, sin).round(4)  # feature 2 passes through
    array([[0.5403, 0.8415, 5.    ]])
    """
    xa, c, s = _check_rotary(x, cos, sin, "x")
    return _rotate(xa, c, s, check_bool(interleaved, "interleaved"), 1.0)


def rotary_embedding_backward(
    d_y: ArrayLike, cos: ArrayLike, sin: ArrayLike, *, interleaved: bool = False
) -> Array:
    r"""Backward of :func:`rotary_embedding`: the rotation by ``-theta``, Eq. (9.8).

    Shapes: ``d_y (..., E)``, ``cos, sin (..., R/2)`` as in the forward -> ``dx (..., E)``.

    Parameters
    ----------
    d_y : array_like
        Gradient of the loss with respect to the rotated ``y``.
    cos, sin : array_like
        The forward's.
    interleaved : bool, optional
        The forward's layout.

    Returns
    -------
    dx : ndarray, shape (..., E)
        ``R(theta)^T d_y``; the pass-through features get ``d_y`` itself.

    Raises
    ------
    TypeError, ValueError
        As :func:`rotary_embedding`.

    Notes
    -----
    Each pair is multiplied by the orthogonal :math:`R(\theta)`, so Eq. (9.8):
    :math:`dx = R(\theta)^\top dy = R(-\theta)\,dy` (FlashAttention's ``conjugate=True``).

    Examples
    --------
    >>> cos, sin = rotary_cos_sin(3, 4)  # one position: cos (R/2,)
    >>> x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> np.allclose(rotary_embedding_backward(rotary_embedding(x, cos, sin), cos, sin), x)
    True
    """
    dy, c, s = _check_rotary(d_y, cos, sin, "d_y")
    # y = R(theta) x  (Eqs. (9.6)-(9.7))  ->  dx = R(theta)^T dy = R(-theta) dy  (Eq. (9.8))
    return _rotate(dy, c, s, check_bool(interleaved, "interleaved"), -1.0)


# ---------------------------------------------------------------------------
# Packing (Eqs. (9.1)-(9.2))
# ---------------------------------------------------------------------------


def _check_cu_seqlens(cu: ArrayLike, name: str, total: int, seen: str) -> IntArray:
    """``cu`` as int64 ``(B + 1,)``: starts at 0, non-decreasing, ends at ``total``."""
    c = _int_array(cu, name, 1)
    if c.size == 0 or c[0] != 0:
        raise ValueError(
            f"{name} must be the (B + 1,) cumulative lengths starting at 0, got {c.tolist()}"
        )
    drops = np.flatnonzero(np.diff(c) < 0)
    if drops.size:
        i = int(drops[0])
        raise ValueError(
            f"{name} must be non-decreasing, but {name}[{i + 1}] = {c[i + 1]} < "
            f"{name}[{i}] = {c[i]}"
        )
    if c[-1] != total:
        raise ValueError(f"{name} ends at {c[-1]}, expected the packed length {total} ({seen})")
    return c


def pack(x: ArrayLike, lengths: ArrayLike) -> tuple[Array, IntArray]:
    r"""Pack a padded batch into FlashAttention's varlen layout, Eq. (9.1).

    Shapes: ``x (B, L, ...)`` (typically ``(B, L, Hq, E)``), ``lengths (B,)`` ->
    ``packed (T, ...)`` with ``T = sum(lengths)``, ``cu_seqlens (B + 1,)``.

    Parameters
    ----------
    x : array_like, shape (B, L, ...)
        A padded batch; row ``b`` holds ``lengths[b]`` tokens, then padding.
    lengths : array_like of int, shape (B,)
        Tokens per sequence, each in ``[0, L]`` (zero-length sequences are allowed).

    Returns
    -------
    packed : ndarray, shape (T, ...)
        The sequences' tokens one after the other (a new array).
    cu_seqlens : ndarray of int64, shape (B + 1,)
        ``[0, L_0, L_0 + L_1, ...]``: sequence ``b`` is ``packed[cu_seqlens[b]:cu_seqlens[b+1]]``.

    Raises
    ------
    TypeError
        Non-integer ``lengths``.
    ValueError
        ``x`` with fewer than 2 dimensions, ``lengths`` not ``(B,)``, or a length outside
        ``[0, L]``.

    Notes
    -----
    Eq. (9.1): token ``i`` of sequence ``b`` is packed row
    :math:`t = \mathrm{cu}_b + i`, :math:`\mathrm{cu}_b = \sum_{b' < b} L_{b'}`.

    Examples
    --------
    >>> x = np.arange(6.0).reshape(2, 3)          # (B, L) = (2, 3)
    >>> packed, cu = pack(x, [2, 1])
    >>> packed.tolist(), cu.tolist()
    ([0.0, 1.0, 3.0], [0, 2, 3])
    """
    xa = np.asarray(x)
    if xa.ndim < 2:
        raise ValueError(f"x must have shape (B, L, ...), got {xa.shape}")
    n = _int_array(lengths, "lengths", 1)
    B, L = xa.shape[:2]
    if n.shape != (B,):
        raise ValueError(f"lengths has shape {n.shape}, expected (B,) = ({B},) for x {xa.shape}")
    bad = np.flatnonzero((n < 0) | (n > L))
    if bad.size:
        raise ValueError(
            f"lengths[{bad[0]}] = {n[bad[0]]} is outside [0, L] = [0, {L}] (x has shape {xa.shape})"
        )
    keep = np.arange(L) < n[:, None]  # (B, L): True for real tokens, Eq. (9.1)
    return xa[keep], np.concatenate([[0], np.cumsum(n)]).astype(np.int64)


def unpack(packed: ArrayLike, cu_seqlens: ArrayLike, max_len: int | None = None) -> Array:
    r"""Unpack FlashAttention's varlen layout into a zero-padded batch, Eq. (9.1).

    Shapes: ``packed (T, ...)``, ``cu_seqlens (B + 1,)`` -> ``padded (B, max_len, ...)``.

    Parameters
    ----------
    packed : array_like, shape (T, ...)
        Sequences one after the other.
    cu_seqlens : array_like of int, shape (B + 1,)
        Cumulative lengths: start at 0, non-decreasing, end at ``T``.
    max_len : int, optional
        Length of the padded axis; default the longest sequence (0 for no sequence).

    Returns
    -------
    padded : ndarray, shape (B, max_len, ...)
        Row ``b`` holds sequence ``b`` then zeros; ``unpack(*pack(x, n), L)`` is ``x`` with its
        padding zeroed.

    Raises
    ------
    TypeError
        Non-integer ``cu_seqlens`` or ``max_len``.
    ValueError
        Bad ``cu_seqlens`` (not starting at 0, decreasing, not ending at ``T``), or a
        ``max_len`` shorter than the longest sequence.

    Examples
    --------
    >>> unpack(np.array([0.0, 1.0, 3.0]), [0, 2, 3]).tolist()
    [[0.0, 1.0], [3.0, 0.0]]
    """
    p = np.asarray(packed)
    if p.ndim < 1:
        raise ValueError(f"packed must have shape (T, ...), got {p.shape}")
    cu = _check_cu_seqlens(cu_seqlens, "cu_seqlens", p.shape[0], f"packed has shape {p.shape}")
    n = np.diff(cu)
    longest = int(n.max(initial=0))
    M = longest if max_len is None else check_int(max_len, "max_len")
    if M < longest:
        raise ValueError(f"max_len = {M} is shorter than the longest sequence ({longest})")
    out = np.zeros((n.size, M) + p.shape[1:], dtype=p.dtype)
    out[np.arange(M) < n[:, None]] = p  # Eq. (9.1), the inverse scatter
    return out


def document_mask(segment_ids_q: ArrayLike, segment_ids_k: ArrayLike) -> NDArray[np.bool_]:
    r"""Cross-document mask for a padded batch of packed documents (Llama 3), Eq. (9.2).

    Shapes: ``segment_ids_q (..., L)``, ``segment_ids_k (..., S)`` -> ``mask (..., 1, L, S)``;
    the ``1`` is the head axis, so the mask broadcasts to the scores ``(..., Hq, L, S)``.

    Parameters
    ----------
    segment_ids_q, segment_ids_k : array_like of int
        The document each query / key token belongs to; a negative id marks padding. Leading
        axes broadcast.

    Returns
    -------
    mask : ndarray of bool, shape (..., 1, L, S)
        True (attend) where query and key belong to the same document and neither is padding;
        combine with ``is_causal=True`` for causal document masking. A padding query sees no
        key (its output is 0).

    Raises
    ------
    TypeError
        Non-integer ids.
    ValueError
        Ids without a sequence axis or with leading axes that do not broadcast.

    Notes
    -----
    Eq. (9.2): :math:`M_{ij} = [\mathrm{seg}^q_i = \mathrm{seg}^k_j \wedge \mathrm{seg}^q_i
    \ge 0]`. Self-attention over documents packed into one row with this mask and causal
    equals :func:`varlen_attention_forward` with ``is_causal=True`` on the documents.

    Examples
    --------
    >>> document_mask([0, 0, 1], [0, 0, 1])[0].astype(int)
    array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 1]])
    """
    sq = np.asarray(segment_ids_q)
    sk = np.asarray(segment_ids_k)
    for name, a in (("segment_ids_q", sq), ("segment_ids_k", sk)):
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
        if a.ndim < 1:
            raise ValueError(f"{name} must have shape (..., L) or (..., S), got {a.shape}")
    try:
        lead = np.broadcast_shapes(sq.shape[:-1], sk.shape[:-1])
    except ValueError:
        raise ValueError(
            f"the leading axes of segment_ids_q {sq.shape} and segment_ids_k {sk.shape} "
            "do not broadcast"
        ) from None
    same = sq[..., :, None] == sk[..., None, :]  # Eq. (9.2)
    mask = same & (sq[..., :, None] >= 0)
    return np.broadcast_to(mask, lead + mask.shape[-2:])[..., None, :, :].copy()


# ---------------------------------------------------------------------------
# Variants keywords: passed to the core only when given
# ---------------------------------------------------------------------------


def _variant_kwargs(given: dict[str, Any], b: int, B: int) -> dict[str, Any]:
    """Pick the Variants keywords that are not None, for sequence ``b`` of ``B``.

    ALiBi slopes ``(B, Hq)`` give sequence ``b`` its row; ``(Hq,)`` pass as they are.
    """
    kw = {n: v for n, v in given.items() if v is not None}
    if not kw:
        return kw
    if "alibi_slopes" in kw and np.ndim(kw["alibi_slopes"]) == 2:
        a = np.asarray(kw["alibi_slopes"])
        if a.shape[0] != B:
            raise ValueError(f"alibi_slopes has shape {a.shape}, expected (Hq,) or (B, Hq), B={B}")
        kw["alibi_slopes"] = a[b]
    return kw


# ---------------------------------------------------------------------------
# Packed (varlen) attention (Eqs. (9.3)-(9.4))
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VarlenCache:
    """What :func:`varlen_attention_backward` needs; one core cache per sequence.

    Attributes
    ----------
    caches : tuple of AttentionCache or FlashCache
        Sequence ``b``'s :class:`~numpy_attention.attention.AttentionCache`, in the core's
        ``(Hq, L_b, S_b)`` layout, or its :class:`~numpy_attention.flash.FlashCache` (``tiled``).
    lse : ndarray, shape (Hq, Tq)
        Natural-log log-sum-exp of every query row, FlashAttention's varlen ``softmax_lse``
        layout; ``-inf`` for a query with no key.
    """

    caches: tuple[AttentionCache | FlashCache, ...]
    cu_seqlens_q: IntArray
    cu_seqlens_k: IntArray
    lse: Array
    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    v_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the output, ``(Tq, Hq, Ev)``."""
        return self.q_shape[:2] + (self.v_shape[2],)


@dataclass(frozen=True)
class VarlenGrads:
    """Gradients of :func:`varlen_attention_forward`'s inputs, in the packed layout.

    ``d_sinks`` (shape ``(Hq,)``, summed over the sequences) is None without sinks.
    """

    dq: Array
    dk: Array
    dv: Array
    d_sinks: Array | None = None


def _check_packed(
    q: ArrayLike, k: ArrayLike, v: ArrayLike, enable_gqa: bool
) -> tuple[Array, Array, Array]:
    """``q (Tq, Hq, E)``, ``k (Tk, Hkv, E)``, ``v (Tk, Hkv, Ev)`` with heads that match."""
    arrays = [as_float_array(a, n) for a, n in ((q, "q"), (k, "k"), (v, "v"))]
    qa, ka, va = arrays
    wants = ("(Tq, Hq, E)", "(Tk, Hkv, E)", "(Tk, Hkv, Ev)")
    for a, n, want in zip(arrays, "qkv", wants, strict=True):
        if a.ndim != 3:
            raise ValueError(f"{n} must have the packed shape {want}, got {a.shape}")
    if ka.shape[:2] != va.shape[:2]:
        raise ValueError(f"k {ka.shape} and v {va.shape} must share (Tk, Hkv)")
    if qa.shape[2] != ka.shape[2]:
        raise ValueError(f"q {qa.shape} and k {ka.shape} must share the width E (axis 2)")
    hq, hkv = qa.shape[1], ka.shape[1]
    if enable_gqa and (hkv == 0 or hq % hkv):
        raise ValueError(f"with enable_gqa=True, Hq={hq} (q {qa.shape}) must be a multiple of "
                         f"Hkv={hkv} (k {ka.shape})")  # fmt: skip
    if not enable_gqa and hkv not in (hq, 1):
        raise ValueError(f"q has Hq={hq} heads and k Hkv={hkv}: pass enable_gqa=True for "
                         "grouped-query attention (FlashAttention always groups)")  # fmt: skip
    return qa, ka, va


def _check_cu_pair(
    cu_q: ArrayLike, cu_k: ArrayLike, qa: Array, ka: Array, max_q: int | None, max_k: int | None
) -> tuple[IntArray, IntArray]:
    """Both cumulative lengths valid, of one length ``B + 1``, within the optional maxima."""
    cq = _check_cu_seqlens(cu_q, "cu_seqlens_q", qa.shape[0], f"q has shape {qa.shape}")
    ck = _check_cu_seqlens(cu_k, "cu_seqlens_k", ka.shape[0], f"k has shape {ka.shape}")
    if cq.size != ck.size:
        raise ValueError(f"cu_seqlens_q has length {cq.size} and cu_seqlens_k {ck.size}; both "
                         "must be (B + 1,) for the same B")  # fmt: skip
    for name, m, c in (("max_seqlen_q", max_q, cq), ("max_seqlen_k", max_k, ck)):
        longest = int(np.diff(c).max(initial=0))
        if m is not None and check_int(m, name) < longest:
            raise ValueError(f"{name} = {m} is below the longest sequence, {longest}")
    return cq, ck


def _sequence_dropout(dropout_mask: Any, b: int, L: int, S: int) -> Any:
    """Sequence ``b``'s keep-mask: item ``b`` of a list, or ``[b, :, :L, :S]`` of a padded array."""
    if dropout_mask is None or isinstance(dropout_mask, Sequence):
        return None if dropout_mask is None else dropout_mask[b]
    z = np.asarray(dropout_mask)
    if z.ndim != 4:
        raise ValueError(f"dropout_mask must be a list of B per-sequence masks or a padded "
                         f"(B, Hq, max L, max S) array, got shape {z.shape}")  # fmt: skip
    if z.shape[0] <= b or z.shape[2] < L or z.shape[3] < S:
        raise ValueError(f"dropout_mask has shape {z.shape}, too small for sequence {b} "
                         f"(L={L}, S={S})")  # fmt: skip
    return z[b, :, :L, :S]


def varlen_attention_forward(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    cu_seqlens_q: ArrayLike,
    cu_seqlens_k: ArrayLike,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    is_causal: bool = False,
    causal_align: str = "bottom_right",
    enable_gqa: bool = False,
    dropout_mask: Any = None,
    rng: np.random.Generator | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    window: Any = None,
    softcap: float | None = None,
    alibi_slopes: ArrayLike | None = None,
    sinks: ArrayLike | None = None,
    tiled: bool = False,
) -> tuple[Array, VarlenCache]:
    r"""Attention over packed variable-length sequences (``flash_attn_varlen_func``), Eq. (9.3).

    Shapes: ``q (Tq, Hq, E)``, ``k (Tk, Hkv, E)``, ``v (Tk, Hkv, Ev)``, ``cu_seqlens_q``,
    ``cu_seqlens_k (B + 1,)`` -> ``out (Tq, Hq, Ev)``, ``cache.lse (Hq, Tq)``.

    Parameters
    ----------
    q, k, v : array_like
        Packed queries, keys and values: sequence ``b`` owns rows
        ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` of ``q`` and ``cu_seqlens_k[b]:...`` of ``k``, ``v``.
    cu_seqlens_q, cu_seqlens_k : array_like of int, shape (B + 1,)
        Cumulative lengths: start at 0, non-decreasing, end at ``Tq`` / ``Tk``. Zero-length
        sequences are allowed (a query with no key gets output 0, ``lse = -inf``).
    dropout_p, scale, is_causal, enable_gqa, rng
        As :func:`~numpy_attention.attention.attention_forward`, per sequence.
    causal_align : {"bottom_right", "top_left"}, optional
        Alignment of the causal mask (and windows, ALiBi distances) *within each sequence*.
        Default ``"bottom_right"``, FlashAttention's (>= 2.1): query ``i`` of sequence ``b``
        sees keys ``j <= i + S_b - L_b``.
    dropout_mask : list of array_like or array_like of bool, optional
        Keep-masks: a list of ``B`` masks broadcastable to ``(Hq, L_b, S_b)``, or one padded
        ``(B, Hq, max L, max S)`` array (the layout of FlashAttention's ``S_dmask``).
    max_seqlen_q, max_seqlen_k : int, optional
        FlashAttention's arguments; only checked (each at least the longest sequence).
    window, softcap, alibi_slopes, sinks : optional
        The Variants keywords, per sequence, passed to ``attention_forward`` only when given;
        ``alibi_slopes`` may be ``(Hq,)`` or ``(B, Hq)`` (row ``b`` for sequence ``b``).
    tiled : bool, optional
        Compute each sequence by :func:`~numpy_attention.flash.flash_attention_forward`
        (tiles: no ``L_b x S_b`` array, extra memory independent of the lengths) instead of
        :func:`~numpy_attention.attention.attention_forward`. Default False. The tiled
        functions draw no dropout mask: give ``dropout_mask``, not ``rng``.

    Returns
    -------
    out : ndarray, shape (Tq, Hq, Ev)
    cache : VarlenCache
        ``cache.lse`` is ``(Hq, Tq)``, FlashAttention's varlen ``softmax_lse`` layout.

    Raises
    ------
    TypeError
        Non-integer ``cu_seqlens_*``; a Variants keyword the core does not take; as the core.
    ValueError
        Shapes other than the packed ones, head counts that do not group, ``cu_seqlens_*``
        not starting at 0, decreasing, of different lengths or not ending at ``Tq`` / ``Tk``,
        ``max_seqlen_*`` too small, ``rng`` with ``tiled``, and the core's errors.

    Notes
    -----
    Eq. (9.3): each sequence is its own attention problem,
    :math:`O_{\mathrm{cu}^q_b + i} = \mathrm{Attention}(Q^{(b)}, K^{(b)}, V^{(b)})_i` with the
    causal offset :math:`d_b = S_b - L_b`; memory is bounded by :math:`\sum_b L_b S_b`, never
    :math:`T_q \times T_k`. A global bottom-right mask with padding is a different function.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(5, 2, 4)), rng.normal(size=(7, 1, 4)), rng.normal(size=(7, 1, 3))
    >>> out, cache = varlen_attention_forward(q, k, v, [0, 2, 5], [0, 4, 7],
    ...                                       is_causal=True, enable_gqa=True)
    >>> out.shape, cache.lse.shape
    ((5, 2, 3), (2, 5))
    """
    qa, ka, va = _check_packed(q, k, v, check_bool(enable_gqa, "enable_gqa"))
    cq, ck = _check_cu_pair(cu_seqlens_q, cu_seqlens_k, qa, ka, max_seqlen_q, max_seqlen_k)
    B, dtype = cq.size - 1, np.result_type(qa, ka, va)
    variants = {"window": window, "softcap": softcap, "alibi_slopes": alibi_slopes, "sinks": sinks}
    if check_bool(tiled, "tiled") and rng is not None:
        raise ValueError("rng: the tiled functions draw no dropout mask; with tiled=True "
                         "give dropout_mask (B keep-masks or one padded array)")  # fmt: skip
    attend: Any = flash_attention_forward if tiled else attention_forward
    drawn: dict[str, Any] = {} if tiled else {"rng": rng}
    out = np.empty((qa.shape[0], qa.shape[1], va.shape[2]), dtype=dtype)
    lse = np.empty((qa.shape[1], qa.shape[0]), dtype=compute_dtype(dtype))
    caches = []
    for b in range(B):  # one attention problem per sequence, Eq. (9.3)
        rq, rk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        o, c = attend(
            np.swapaxes(qa[rq], 0, 1), np.swapaxes(ka[rk], 0, 1), np.swapaxes(va[rk], 0, 1),
            dropout_p=dropout_p, is_causal=check_bool(is_causal, "is_causal"), scale=scale,
            enable_gqa=enable_gqa,
            dropout_mask=_sequence_dropout(dropout_mask, b, rq.stop - rq.start, rk.stop - rk.start),
            causal_align=causal_align, **drawn, **_variant_kwargs(variants, b, B),
        )  # fmt: skip
        out[rq], lse[:, rq] = np.swapaxes(o, 0, 1), c.lse
        caches.append(c)
    return out, VarlenCache(tuple(caches), cq, ck, lse, qa.shape, ka.shape, va.shape, dtype)


def varlen_attention_backward(d_out: ArrayLike, cache: VarlenCache) -> VarlenGrads:
    r"""Hand-written backward of :func:`varlen_attention_forward`, Eq. (9.4).

    Shapes: ``d_out (Tq, Hq, Ev)`` -> ``dq (Tq, Hq, E)``, ``dk (Tk, Hkv, E)``,
    ``dv (Tk, Hkv, Ev)``.

    Parameters
    ----------
    d_out : array_like, shape (Tq, Hq, Ev)
        The loss's gradient with respect to the packed ``out``.
    cache : VarlenCache
        What :func:`varlen_attention_forward` returned with ``out``.

    Returns
    -------
    grads : VarlenGrads
        ``dq``, ``dk``, ``dv`` in the packed layout, and ``d_sinks`` (None without sinks).

    Raises
    ------
    TypeError
        If ``cache`` is not a :class:`VarlenCache`.
    ValueError
        If ``d_out`` does not have the output's shape.

    Notes
    -----
    Eq. (9.4): the sequences share no query and no key, so each sequence's rows of
    :math:`dQ, dK, dV` are the core backward (Eqs. (2.10)-(2.16)) of its own problem; a
    parameter shared by all sequences (the sinks) sums their gradients.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 1, 2)), rng.normal(size=(4, 1, 2)), rng.normal(size=(4, 1, 2))
    >>> out, cache = varlen_attention_forward(q, k, v, [0, 1, 3], [0, 2, 4])
    >>> g = varlen_attention_backward(np.ones_like(out), cache)
    >>> g.dq.shape, g.dk.shape, g.d_sinks is None
    ((3, 1, 2), (4, 1, 2), True)
    """
    c = check_instance(cache, VarlenCache, "cache", "varlen_attention_forward")
    dO = check_grad(d_out, "d_out", c.out_shape)
    dq, dk, dv = (np.zeros(s, dtype=c.dtype) for s in (c.q_shape, c.k_shape, c.v_shape))
    d_sinks = None
    cq, ck = c.cu_seqlens_q, c.cu_seqlens_k
    for b, cb in enumerate(c.caches):  # Eq. (9.4): each sequence's own backward
        rq, rk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        dOb = np.swapaxes(dO[rq], 0, 1)
        if isinstance(cb, FlashCache):  # tiled=True: the tiled backward, Eqs. (5.7)-(5.12)
            g = flash_attention_backward(dOb, cb)
        else:
            g = attention_backward(dOb, cb)
        dq[rq], dk[rk], dv[rk] = (np.swapaxes(a, 0, 1) for a in (g.dq, g.dk, g.dv))
        ds = getattr(g, "d_sinks", None)
        if ds is not None:
            d_sinks = ds if d_sinks is None else d_sinks + ds
    return VarlenGrads(dq=dq, dk=dk, dv=dv, d_sinks=d_sinks)


# ---------------------------------------------------------------------------
# KV-cache decoding (Eqs. (9.9)-(9.11))
# ---------------------------------------------------------------------------


def _check_cache_arrays(
    q: ArrayLike, k_cache: ArrayLike, v_cache: ArrayLike
) -> tuple[Array, Array, Array]:
    """``q (B, L, Hq, E)``, caches ``(rows, S, Hkv, E)`` / ``(rows, S, Hkv, Ev)``, G = Hq/Hkv."""
    qa, kc, vc = (as_float_array(a, n) for a, n in ((q, "q"), (k_cache, "k_cache"),
                                                    (v_cache, "v_cache")))  # fmt: skip
    for a, n in ((qa, "q"), (kc, "k_cache"), (vc, "v_cache")):
        if a.ndim != 4:
            raise ValueError(f"{n} must have 4 dimensions (FlashAttention's (B, S, H, E) "
                             f"layout), got shape {a.shape}")  # fmt: skip
    if kc.shape[:3] != vc.shape[:3]:
        raise ValueError(f"k_cache {kc.shape} and v_cache {vc.shape} must share their first 3 axes")
    if qa.shape[3] != kc.shape[3]:
        raise ValueError(f"q {qa.shape} and k_cache {kc.shape} must share the width E (axis 3)")
    if kc.shape[2] == 0 or qa.shape[2] % kc.shape[2]:
        raise ValueError(f"the query heads Hq={qa.shape[2]} (q {qa.shape}) must be a "
                         f"multiple of the cache's Hkv={kc.shape[2]} (k_cache "
                         f"{kc.shape})")  # fmt: skip
    return qa, kc, vc


def _check_new_kv(
    k_new: ArrayLike | None, v_new: ArrayLike | None, qa: Array, kc: Array, vc: Array
) -> tuple[Array | None, Array | None]:
    """``k_new (B, L_new, Hkv, E)`` and ``v_new (B, L_new, Hkv, Ev)``, both or neither."""
    if (k_new is None) != (v_new is None):
        raise ValueError("k_new and v_new must be given together (or neither)")
    if k_new is None or v_new is None:
        return None, None
    kn, vn = as_float_array(k_new, "k_new"), as_float_array(v_new, "v_new")
    if kn.ndim != 4 or kn.shape[0] != qa.shape[0] or kn.shape[2:] != kc.shape[2:]:
        raise ValueError(f"k_new has shape {kn.shape}, expected (B, L_new, Hkv, E) = "
                         f"({qa.shape[0]}, L_new, {kc.shape[2]}, {kc.shape[3]})")  # fmt: skip
    if vn.shape != kn.shape[:3] + vc.shape[3:]:
        raise ValueError(f"v_new has shape {vn.shape}, expected (B, L_new, Hkv, Ev) = "
                         f"{kn.shape[:3] + vc.shape[3:]}")  # fmt: skip
    return kn, vn


def _check_cache_map(
    cache_batch_idx: ArrayLike | None, block_table: ArrayLike | None, B: int, kc: Array
) -> tuple[IntArray | None, IntArray | None]:
    """Dense rows ``(B,)`` of the cache, or the paged ``block_table (B, max_blocks)``."""
    if cache_batch_idx is not None and block_table is not None:
        raise ValueError("cache_batch_idx and block_table cannot be combined: a paged cache "
                         "is addressed by block_table (FlashAttention refuses it too)")  # fmt: skip
    if block_table is not None:
        table = _int_array(block_table, "block_table", 2)
        if table.shape[0] != B:
            raise ValueError(f"block_table has shape {table.shape}, expected (B, max_blocks) "
                             f"with B = {B}")  # fmt: skip
        return None, table
    if cache_batch_idx is None:
        if kc.shape[0] < B:
            raise ValueError(f"k_cache has {kc.shape[0]} rows (shape {kc.shape}), fewer than "
                             f"the batch B = {B}; pass cache_batch_idx")  # fmt: skip
        return np.arange(B, dtype=np.int64), None
    rows = _int_array(cache_batch_idx, "cache_batch_idx", 1)
    bad = np.flatnonzero((rows < 0) | (rows >= kc.shape[0]))
    if rows.shape != (B,) or bad.size:
        raise ValueError(f"cache_batch_idx must be (B,) = ({B},) rows in [0, {kc.shape[0]}) of "
                         f"k_cache {kc.shape}, got {rows.tolist()}")  # fmt: skip
    return rows, None


def _check_cache_seqlens(cache_seqlens: Any, B: int, L_new: int, capacity: int) -> IntArray:
    """``cache_seqlens`` as ``(B,)``, each ``n_b >= 0`` with ``n_b + L_new <= capacity``."""
    if np.ndim(cache_seqlens) == 0:
        n = np.full(B, check_int(cache_seqlens, "cache_seqlens"), dtype=np.int64)
    else:
        n = _int_array(cache_seqlens, "cache_seqlens", 1)
    if n.shape != (B,):
        raise ValueError(f"cache_seqlens has shape {n.shape}, expected an int or (B,) = ({B},)")
    bad = np.flatnonzero((n < 0) | (n + L_new > capacity))
    if bad.size:
        b = int(bad[0])
        raise ValueError(
            f"cache_seqlens[{b}] = {n[b]}: with L_new = {L_new} new keys the sequence needs "
            f"positions [0, {n[b] + L_new}), outside the cache's capacity [0, {capacity})"
        )
    return n


def _check_block_table(table: IntArray, used_len: IntArray, kc: Array) -> None:
    """Every block a sequence uses (its first ``ceil(N_b / page_size)``) exists in ``kc``."""
    page, num_blocks = kc.shape[1], kc.shape[0]
    needed = -(-used_len // max(page, 1))
    used = np.arange(table.shape[1]) < needed[:, None]
    bad = np.argwhere(used & ((table < 0) | (table >= num_blocks)))
    if bad.size:
        b, j = (int(i) for i in bad[0])
        raise ValueError(
            f"block_table[{b}, {j}] = {table[b, j]} points past the {num_blocks} blocks of "
            f"k_cache {kc.shape} (num_blocks, page_size, Hkv, E); sequence {b} uses its first "
            f"{needed[b]} entries"
        )


def _slots(
    b: IntArray, pos: IntArray, rows: IntArray | None, table: IntArray | None, page: int
) -> tuple[IntArray, IntArray]:
    """Where position ``pos`` of sequence ``b`` lives in the cache (Eq. (9.10)).

    Dense: ``(rows[b], pos)``; paged: ``(block_table[b, pos // page_size], pos % page_size)``.
    """
    if table is None:
        assert rows is not None
        return np.broadcast_to(rows[b], pos.shape), pos
    return table[b, pos // page], pos % page  # Eq. (9.10)


def _rotate_new(
    qa: Array, kn: Array | None, n: IntArray, cos: Any, sin: Any, interleaved: bool, each: bool
) -> tuple[Array, Array | None]:
    """Rotate the queries and the new keys at their absolute positions (Eqs. (9.9), (9.11))."""
    if cos is None and sin is None:
        return qa, kn
    if cos is None or sin is None:
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if kn is None:
        raise ValueError("rotary_cos/rotary_sin rotate the new keys: pass k_new and v_new too "
                         "(FlashAttention's rule)")  # fmt: skip
    c, s = as_float_array(cos, "rotary_cos"), as_float_array(sin, "rotary_sin")
    if c.ndim != 2 or c.shape != s.shape or 2 * c.shape[1] > qa.shape[3] or c.shape[1] == 0:
        raise ValueError(f"rotary_cos {c.shape} and rotary_sin {s.shape} must both be "
                         f"(seqlen_ro, R/2) with 2 <= R <= E = {qa.shape[3]}")  # fmt: skip
    L, L_new = qa.shape[1], kn.shape[1]
    pos_q = n[:, None] + (np.arange(L) if each else np.zeros(L, dtype=np.int64))  # (B, L)
    pos_k = n[:, None] + np.arange(L_new)  # (B, L_new), the slots of Eq. (9.9)
    last = int(max(pos_q.max(initial=-1), pos_k.max(initial=-1)))
    if last >= c.shape[0]:
        raise ValueError(f"rotary_cos has {c.shape[0]} rows, but position {last} is rotated "
                         "(cache_seqlens + the new tokens)")  # fmt: skip
    il = check_bool(interleaved, "rotary_interleaved")
    q_rot = rotary_embedding(qa, c[pos_q][:, :, None], s[pos_q][:, :, None], interleaved=il)
    k_rot = rotary_embedding(kn, c[pos_k][:, :, None], s[pos_k][:, :, None], interleaved=il)
    return q_rot, k_rot


def _write_new(
    kc: Array, vc: Array, kn: Array | None, vn: Array | None, n: IntArray,
    rows: IntArray | None, table: IntArray | None,
) -> tuple[Array, Array]:  # fmt: skip
    """Copy the caches and write ``k_new``, ``v_new`` at positions ``n_b + j``, Eq. (9.9)."""
    k_out, v_out = kc.copy(), vc.copy()
    if kn is None or vn is None or kn.shape[1] == 0:
        return k_out, v_out
    B, L_new = kn.shape[:2]
    pos = n[:, None] + np.arange(L_new)  # Eq. (9.9)
    first, second = _slots(np.arange(B)[:, None], pos, rows, table, kc.shape[1])
    flat = first.ravel() * kc.shape[1] + second.ravel()
    if np.unique(flat).size < flat.size:
        name = "block_table" if table is not None else "cache_batch_idx"
        raise ValueError(f"{name} sends two new keys to the same cache slot; with k_new every "
                         "written position must be distinct")  # fmt: skip
    k_out[first, second] = kn
    v_out[first, second] = vn
    return k_out, v_out


def _is_local(window: Any) -> bool:
    """Tell whether a window bounds a side (FlashAttention's ``window_size != (-1, -1)``)."""
    if window is None:
        return False
    return not (isinstance(window, (tuple, list)) and all(w is None for w in window))


def kvcache_attention(
    q: ArrayLike,
    k_cache: ArrayLike,
    v_cache: ArrayLike,
    cache_seqlens: Any,
    *,
    k_new: ArrayLike | None = None,
    v_new: ArrayLike | None = None,
    cache_batch_idx: ArrayLike | None = None,
    block_table: ArrayLike | None = None,
    rotary_cos: ArrayLike | None = None,
    rotary_sin: ArrayLike | None = None,
    rotary_interleaved: bool = False,
    scale: float | None = None,
    is_causal: bool = False,
    window: Any = None,
    softcap: float | None = None,
    alibi_slopes: ArrayLike | None = None,
    sinks: ArrayLike | None = None,
    tiled: bool = False,
) -> tuple[Array, Array, Array, Array]:
    r"""Attention of new queries over a KV cache (``flash_attn_with_kvcache``), Eqs. (9.9)-(9.11).

    Shapes: ``q (B, L, Hq, E)``; ``k_cache (B_cache, S, Hkv, E)``, ``v_cache (B_cache, S, Hkv,
    Ev)``, or paged ``(num_blocks, page_size, Hkv, E)`` / ``(..., Ev)`` with ``block_table (B,
    max_blocks)``; ``k_new (B, L_new, Hkv, E)``, ``v_new (B, L_new, Hkv, Ev)`` ->
    ``out (B, L, Hq, Ev)``, ``lse (B, Hq, L)``, and the caches' shapes.

    Parameters
    ----------
    q : array_like
        The new queries.
    k_cache, v_cache : array_like
        The caches; never modified (updated copies are returned).
    cache_seqlens : int or array_like of int, shape (B,)
        ``n_b``, the tokens already cached for batch row ``b``.
    k_new, v_new : array_like, optional
        New keys and values, written at positions ``n_b, ..., n_b + L_new - 1`` (rotated first
        when rotary tables are given). Query row ``b`` attends over the first ``N_b = n_b +
        L_new`` positions.
    cache_batch_idx : array_like of int, shape (B,), optional
        The cache row of each batch row (default ``0 .. B-1``); dense caches only.
    block_table : array_like of int, shape (B, max_blocks), optional
        Paged cache: position ``p`` of row ``b`` lives in block ``block_table[b, p //
        page_size]`` at offset ``p % page_size``. Only the entries a sequence uses are read.
    rotary_cos, rotary_sin : array_like, shape (seqlen_ro, R/2), optional
        Rotary tables (:func:`rotary_cos_sin`), indexed by absolute position; need ``k_new``.
        New keys rotate at ``n_b + j``; queries at ``n_b + i`` when causal or windowed, else
        all at ``n_b`` (FlashAttention's rule).
    rotary_interleaved : bool, optional
        Default False (rotate-half, GPT-NeoX / Llama). FlashAttention defaults to True (GPT-J);
        we default to the layout of Hugging Face's Llama-family checkpoints and of
        :func:`rotary_embedding`, so pass True to mirror an FA call that relied on its default.
    scale : float, optional
        Default ``1 / sqrt(E)``.
    is_causal : bool, optional
        Causal mask aligned bottom-right in each row: query ``i`` sees ``j <= i + N_b - L``.
    window, softcap, alibi_slopes, sinks : optional
        The Variants keywords, aligned bottom-right per row, passed to the core only when given;
        ``alibi_slopes`` may be ``(Hq,)`` or ``(B, Hq)``.
    tiled : bool, optional
        Attend each row by :func:`~numpy_attention.flash.flash_attention_forward` (no
        ``L x N_b`` array: a long prefill chunk over a long cache) instead of
        :func:`~numpy_attention.attention.attention_forward`. Default False.

    Returns
    -------
    out : ndarray, shape (B, L, Hq, Ev)
    lse : ndarray, shape (B, Hq, L)
        Natural log; ``-inf`` for a query with no visible key (FlashAttention writes ``+inf``).
    k_cache_out, v_cache_out : ndarray
        New arrays: the caches with the new keys and values written in.

    Raises
    ------
    TypeError
        Non-integer indices or lengths; non-real arrays.
    ValueError
        Bad shapes; ``cache_seqlens + L_new`` beyond the cache; a ``block_table`` entry past
        the blocks; ``cache_batch_idx`` out of range, combined with ``block_table``, or
        writing one slot twice; rotary without ``k_new``, too short, or ``R > E``.

    Notes
    -----
    A forward only: decoding has no backward. Each batch row is its own attention problem,
    Eq. (9.11), over the keys gathered from the updated cache.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> k_cache, v_cache = rng.normal(size=(2, 8, 1, 4)), rng.normal(size=(2, 8, 1, 4))
    >>> q, k1, v1 = (rng.normal(size=(2, 1, 2, 4)), rng.normal(size=(2, 1, 1, 4)),
    ...              rng.normal(size=(2, 1, 1, 4)))
    >>> out, lse, kc, vc = kvcache_attention(q, k_cache, v_cache, [3, 5], k_new=k1, v_new=v1)
    >>> out.shape, lse.shape, bool(np.all(kc[0, 3] == k1[0, 0]))
    ((2, 1, 2, 4), (2, 2, 1), True)
    >>> bool(np.all(k_cache[0, 3] != kc[0, 3]))  # the caller's cache is untouched
    True
    """
    qa, kc, vc = _check_cache_arrays(q, k_cache, v_cache)
    kn, vn = _check_new_kv(k_new, v_new, qa, kc, vc)
    L_new = 0 if kn is None else kn.shape[1]
    rows, table = _check_cache_map(cache_batch_idx, block_table, qa.shape[0], kc)
    capacity = kc.shape[1] if table is None else table.shape[1] * kc.shape[1]
    n = _check_cache_seqlens(cache_seqlens, qa.shape[0], L_new, capacity)
    if table is not None:
        _check_block_table(table, n + L_new, kc)
    each = check_bool(is_causal, "is_causal") or _is_local(window)
    qr, kr = _rotate_new(qa, kn, n, rotary_cos, rotary_sin, rotary_interleaved, each)
    k_out, v_out = _write_new(kc, vc, kr, vn, n, rows, table)  # Eq. (9.9)
    variants = {"window": window, "softcap": softcap, "alibi_slopes": alibi_slopes, "sinks": sinks}
    attend: Any = flash_attention_forward if check_bool(tiled, "tiled") else attention_forward
    out, lse = _attend_cache(qr, k_out, v_out, n + L_new, rows, table, scale, is_causal,
                             variants, attend)  # fmt: skip
    return out, lse, k_out, v_out


def _attend_cache(
    q: Array, k_out: Array, v_out: Array, total: IntArray, rows: IntArray | None,
    table: IntArray | None, scale: float | None, is_causal: bool, variants: dict[str, Any],
    attend: Any,
) -> tuple[Array, Array]:  # fmt: skip
    """Row ``b``'s queries over the first ``N_b`` cached positions, bottom-right, Eq. (9.11).

    ``attend``: the core's forward or the tiled one (the same arguments and ``cache.lse``).
    """
    B, L, Hq = q.shape[:3]
    dtype = np.result_type(q, k_out, v_out)
    out = np.empty((B, L, Hq, v_out.shape[3]), dtype=dtype)
    lse = np.empty((B, Hq, L), dtype=compute_dtype(dtype))
    for b in range(B):  # one attention problem per sequence, Eq. (9.11)
        pos = np.arange(total[b])
        where = _slots(np.full(pos.shape, b), pos, rows, table, k_out.shape[1])  # Eq. (9.10)
        o, c = attend(
            np.swapaxes(q[b], 0, 1), np.swapaxes(k_out[where], 0, 1),
            np.swapaxes(v_out[where], 0, 1), is_causal=is_causal, scale=scale, enable_gqa=True,
            causal_align="bottom_right", **_variant_kwargs(variants, b, B),
        )  # fmt: skip
        out[b], lse[b] = np.swapaxes(o, 0, 1), c.lse
    return out, lse


# ---------------------------------------------------------------------------
# Split-KV merge, FlashDecoding (Eqs. (9.12)-(9.14))
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeCache:
    """What :func:`merge_attention_states_backward` needs.

    Attributes
    ----------
    w : ndarray, shape (Nc, ...)
        Each chunk's weight ``exp(lse^(r) - lse)``, 0 for an empty chunk (Eq. (9.13)).
    outs : ndarray, shape (Nc, ..., Ev)
        The chunks' outputs, with those of empty chunks (``lse^(r) = -inf``) set to 0.
    out : ndarray, shape (..., Ev)
        The merged output (the cache's own copy).
    """

    w: Array
    outs: Array
    out: Array


def _check_states(outs: ArrayLike, lses: ArrayLike) -> tuple[Array, Array]:
    """``outs (Nc, ..., Ev)`` and ``lses (Nc, ...)`` of matching shapes, no NaN or +inf lse."""
    o, s = as_float_array(outs, "outs"), as_float_array(lses, "lses")
    if o.ndim < 2:
        raise ValueError(f"outs must have shape (Nc, ..., Ev), got {o.shape}")
    if s.shape != o.shape[:-1]:
        raise ValueError(f"lses has shape {s.shape}, expected outs.shape[:-1] = {o.shape[:-1]} "
                         f"(outs (Nc, ..., Ev) has shape {o.shape}, lses is (Nc, ...))"
                         )  # fmt: skip
    if np.isnan(s).any() or (s == np.inf).any():
        raise ValueError("lses must not hold NaN or +inf; an empty chunk has lse = -inf "
                         "(FlashAttention writes +inf for empty rows: map it to -inf)")  # fmt: skip
    dtype = np.result_type(o, s)
    return o.astype(dtype, copy=False), s.astype(dtype, copy=False)


def merge_attention_states_forward(
    outs: ArrayLike, lses: ArrayLike
) -> tuple[Array, Array, MergeCache]:
    r"""Merge attention over disjoint key chunks by their log-sum-exp, Eqs. (9.12)-(9.13).

    Shapes: ``outs (Nc, ..., Ev)``, ``lses (Nc, ...)`` -> ``out (..., Ev)``, ``lse (...)``.
    Any layout: ``(Nc, ..., Hq, L, Ev)`` with ``(Nc, ..., Hq, L)``, or FlashAttention's
    ``(Nc, B, L, Hq, Ev)`` with ``(Nc, B, L, Hq)`` (transpose its ``(B, Hq, L)`` lse first).

    Parameters
    ----------
    outs : array_like, shape (Nc, ..., Ev)
        Each chunk's attention output (normalized within the chunk).
    lses : array_like, shape (Nc, ...)
        Each chunk's natural-log lse; ``-inf`` for a row with no key in the chunk.

    Returns
    -------
    out : ndarray, shape (..., Ev)
        Attention over all chunks' keys; 0 for a row empty in every chunk.
    lse : ndarray, shape (...)
        ``logsumexp`` over the chunks; ``-inf`` for a row empty in every chunk.
    cache : MergeCache
        For :func:`merge_attention_states_backward`.

    Raises
    ------
    ValueError
        ``lses.shape != outs.shape[:-1]``, ``outs`` with fewer than 2 dimensions, or NaN /
        ``+inf`` in ``lses``.

    Notes
    -----
    Eq. (9.12): :math:`\mathrm{lse} = \log\sum_r e^{\mathrm{lse}^{(r)}}`; Eq. (9.13):
    :math:`O = \sum_r \pi_r O^{(r)}`, :math:`\pi_r = e^{\mathrm{lse}^{(r)} - \mathrm{lse}}`.
    A chunk with :math:`\mathrm{lse}^{(r)} = -\infty` has :math:`\pi_r = 0` and its output is
    not read (it may be anything, NaN included). xFormers' ``merge_attentions`` and
    FlashInfer's ``merge_state`` compute the same (FlashInfer with base-2 lse).

    Examples
    --------
    >>> out, lse, _ = merge_attention_states_forward([[[1.0]], [[3.0]]], [[0.0], [0.0]])
    >>> out.tolist(), bool(np.isclose(lse[0], np.log(2.0)))
    ([[2.0]], True)
    """
    o, s = _check_states(outs, lses)
    m = np.max(s, axis=0, initial=-np.inf)
    m = np.where(m == -np.inf, 0.0, m)  # every chunk empty: exp(-inf - 0) = 0, no NaN
    e = np.exp(s - m)
    total = np.sum(e, axis=0)
    with np.errstate(divide="ignore"):
        lse = m + np.log(total)  # Eq. (9.12)
    w = e / np.where(total > 0, total, 1.0)  # pi_r = exp(lse^(r) - lse)
    o = np.where((s == -np.inf)[..., None], 0.0, o)  # empty chunks are not read
    out = np.sum(w[..., None] * o, axis=0)  # Eq. (9.13)
    return out, lse, MergeCache(w=w, outs=o, out=out.copy())


def merge_attention_states(outs: ArrayLike, lses: ArrayLike) -> tuple[Array, Array]:
    r"""Merge split-KV attention states (FlashDecoding), Eqs. (9.12)-(9.13).

    Shapes: ``outs (Nc, ..., Ev)``, ``lses (Nc, ...)`` -> ``out (..., Ev)``, ``lse (...)``.

    Parameters
    ----------
    outs, lses : array_like
        As :func:`merge_attention_states_forward`.

    Returns
    -------
    out : ndarray, shape (..., Ev)
    lse : ndarray, shape (...)

    Raises
    ------
    ValueError
        As :func:`merge_attention_states_forward`.

    Examples
    --------
    >>> out, lse = merge_attention_states([[[5.0]], [[np.nan]]], [[1.0], [-np.inf]])
    >>> out.tolist(), lse.tolist()
    ([[5.0]], [1.0])
    """
    out, lse, _ = merge_attention_states_forward(outs, lses)
    return out, lse


def merge_attention_states_backward(
    d_out: ArrayLike, d_lse: ArrayLike | None, cache: MergeCache
) -> tuple[Array, Array]:
    r"""Backward of :func:`merge_attention_states_forward`, Eq. (9.14).

    Shapes: ``d_out (..., Ev)``, ``d_lse (...)`` -> ``d_outs (Nc, ..., Ev)``, ``d_lses (Nc, ...)``.

    Parameters
    ----------
    d_out : array_like, shape (..., Ev)
        Gradient of the loss with respect to the merged ``out``.
    d_lse : array_like, shape (...), or None
        Gradient with respect to the merged ``lse``; None means 0.
    cache : MergeCache
        From :func:`merge_attention_states_forward`.

    Returns
    -------
    d_outs : ndarray, shape (Nc, ..., Ev)
    d_lses : ndarray, shape (Nc, ...)
        Both exactly 0 for an empty chunk.

    Raises
    ------
    TypeError
        If ``cache`` is not a :class:`MergeCache`.
    ValueError
        If ``d_out`` or ``d_lse`` has the wrong shape.

    Notes
    -----
    Eq. (9.14): :math:`dO^{(r)} = \pi_r\,dO` and
    :math:`d\mathrm{lse}^{(r)} = \pi_r\,(dO \cdot (O^{(r)} - O) + d\mathrm{lse})`, from
    :math:`\partial \pi_{r'}/\partial \mathrm{lse}^{(r)} = \pi_{r'}(\delta_{rr'} - \pi_r)` and
    :math:`\partial \mathrm{lse}/\partial \mathrm{lse}^{(r)} = \pi_r`.

    Examples
    --------
    >>> out, lse, cache = merge_attention_states_forward([[[1.0]], [[3.0]]], [[0.0], [0.0]])
    >>> d_outs, d_lses = merge_attention_states_backward([[1.0]], None, cache)
    >>> d_outs.ravel().tolist(), d_lses.ravel().tolist()
    ([0.5, 0.5], [-0.5, 0.5])
    """
    c = check_instance(cache, MergeCache, "cache", "merge_attention_states_forward")
    dO = check_grad(d_out, "d_out", c.out.shape, c.out.dtype)
    g = np.zeros(c.w.shape[1:]) if d_lse is None else check_grad(d_lse, "d_lse", c.w.shape[1:])
    # out = sum_r pi_r O^(r)  (Eq. (9.13))  ->  dO^(r) = pi_r dO
    d_outs = c.w[..., None] * dO
    # pi_r = exp(lse^(r) - lse), lse = logsumexp(lse^(r))  (Eq. (9.12))
    #   ->  dlse^(r) = pi_r (dO . (O^(r) - O) + dlse)  (Eq. (9.14))
    d_lses = c.w * (np.sum(dO * (c.outs - c.out), axis=-1) + g)
    return d_outs, d_lses
