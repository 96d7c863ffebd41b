r"""Boolean attention masks: ``True`` means "this key takes part in attention".

This is the polarity of ``torch.nn.functional.scaled_dot_product_attention``'s
boolean ``attn_mask`` and of ``jax.nn.dot_product_attention``'s ``mask``.
(``torch.nn.MultiheadAttention``'s ``key_padding_mask`` is the opposite:
True = ignore. See ``docs/conventions.md``.)

Shapes: ``L`` queries, ``S`` keys, ``B`` batch. Every mask broadcasts against
the attention scores of shape ``(..., Hq, L, S)``.

Every mask that depends only on positions (causal, sliding window, chunks,
sink tokens) is one predicate on query and key indices, :class:`Positions`:
the core applies it to all of ``(i, j)`` at once, the tiled functions to one
block at a time (and skip the blocks it hides entirely), and the builders
below turn it into an ``(L, S)`` array.

Equations are numbered as in ``docs/attention.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._validate import check_int

__all__ = [
    "causal_mask",
    "padding_mask",
    "sliding_window_mask",
    "chunk_mask",
    "causal_offset",
    "Positions",
    "ALIGNMENTS",
]

#: The two causal alignments. ``top_left``: query ``i`` sees keys ``j <= i``
#: (PyTorch ``is_causal``, JAX). ``bottom_right``: query ``i`` sees keys
#: ``j <= i + S - L`` (FlashAttention >= 2.1, ``causal_lower_right``).
ALIGNMENTS = ("top_left", "bottom_right")

#: The largest mask the builders make (2**40 booleans, 1 TiB): beyond it the
#: index arithmetic of NumPy could overflow, and no machine holds the result.
_MAX_MASK = 2**40


def causal_offset(L: int, S: int, align: str) -> int:
    """Diagonal offset ``d`` of Eq. (2.6): query ``i`` sits over key ``i + d``.

    Examples
    --------
    >>> causal_offset(2, 5, "top_left"), causal_offset(2, 5, "bottom_right")
    (0, 3)
    """
    if align not in ALIGNMENTS:
        raise ValueError(f"causal_align must be one of {ALIGNMENTS}, got {align!r}")
    return 0 if align == "top_left" else S - L


@dataclass(frozen=True)
class Positions:
    r"""Which key ``j`` query ``i`` may see by position alone: Eqs. (2.6), (2.8), (8.6)-(8.8).

    With ``p = i + offset`` (the query's place on the key axis):

    .. math::

        \text{visible}(i, j) = [\,j \le p\,]_\text{causal} \wedge
        \big(([\,p - w_\mathrm{l} \le j \le p + w_\mathrm{r}\,]
        \wedge [\,\lfloor p/\mathtt{C} \rfloor = \lfloor j/\mathtt{C} \rfloor\,])
        \vee [\,j < n_\mathrm{sink}\,]\big).

    A constraint that is not asked for is true; ``window`` sides of None are unbounded.

    Examples
    --------
    >>> pos = Positions(offset=0, is_causal=True, window=(1, None))
    >>> pos.mask(np.arange(3)[:, None], np.arange(3)).astype(int)
    array([[1, 0, 0],
           [1, 1, 0],
           [0, 1, 1]])
    >>> pos.block(0, 1, 2, 3), pos.block(2, 3, 1, 3), pos.block(1, 3, 0, 2)
    ('none', 'all', 'some')
    """

    offset: int = 0  # d of Eq. (2.6)
    is_causal: bool = False
    window: tuple[int | None, int | None] | None = None  # (left, right), Eq. (2.8)
    chunk_size: int | None = None  # C, Eq. (8.7)
    sink_tokens: int = 0  # n_sink, Eq. (8.8)

    @property
    def active(self) -> bool:
        """Whether any constraint is asked for (else every key is visible)."""
        return self.is_causal or self.local

    @property
    def local(self) -> bool:
        """Whether a window or chunk limits the keys (the part the sink tokens bypass)."""
        w = self.window
        return self.chunk_size is not None or (w is not None and w != (None, None))

    @property
    def key_span(self) -> int | None:
        """The most keys one query sees through its window or chunk (sink tokens aside), or None.

        A window ``(left, right)`` spans ``left + right + 1`` keys (``right`` is 0
        under the causal mask), a chunk ``C``; None when neither bounds the keys.

        Examples
        --------
        >>> Positions(is_causal=True, window=(256, None)).key_span, Positions().key_span
        (257, None)
        """
        spans = [] if self.chunk_size is None else [self.chunk_size]
        if self.window is not None:
            left, right = self.window
            right = 0 if self.is_causal else right
            if left is not None and right is not None:
                spans.append(left + right + 1)
        return min(spans) if spans else None

    def mask(self, i: NDArray[np.integer], j: NDArray[np.integer]) -> NDArray[np.bool_] | None:
        """Evaluate the predicate on index arrays ``i`` (queries), ``j`` (keys); None if unused."""
        if not self.active:
            return None
        p = i + self.offset
        ok = np.ones(np.broadcast_shapes(np.shape(i), np.shape(j)), dtype=bool)
        if self.window is not None:
            left, right = self.window
            if left is not None:
                ok &= j >= p - left  # Eq. (2.8)
            if right is not None:
                ok &= j <= p + right  # Eq. (2.8)
        if self.chunk_size is not None:
            ok &= p // self.chunk_size == j // self.chunk_size  # Eq. (8.7)
        if self.sink_tokens and self.local:
            ok |= j < self.sink_tokens  # Eq. (8.8): the first keys stay visible
        if self.is_causal:
            ok &= j <= p  # Eq. (2.6)
        return ok

    def block(self, i0: int, i1: int, j0: int, j1: int) -> str:
        """Whether queries ``i0:i1`` see ``"none"``, ``"all"`` or ``"some"`` of keys ``j0:j1``.

        Decided from the block's corners (every constraint is monotone in ``i``
        and ``j``), so the tiled functions skip hidden blocks, Eq. (5.2), and
        build no mask for fully visible ones.
        """
        if not self.active or i1 <= i0 or j1 <= j0:
            return "all" if i1 > i0 and j1 > j0 else "none"
        p0, p1 = i0 + self.offset, i1 - 1 + self.offset  # first and last query's place
        if self.is_causal and j0 > p1:
            return "none"
        lo, hi = self._local_range(p0, p1, j0, j1)
        sinks = self.local and j0 < self.sink_tokens
        if lo == "none" and not sinks:
            return "none"
        causal_all = not self.is_causal or j1 - 1 <= p0
        return (
            "all" if causal_all and (hi == "all" or (sinks and j1 <= self.sink_tokens)) else "some"
        )

    def _local_range(self, p0: int, p1: int, j0: int, j1: int) -> tuple[str, str]:
        """Decide the window-and-chunk part of :meth:`block`: ("none" or not, "all" or not)."""
        none = every = False
        if self.window is not None:
            left, right = self.window
            if left is not None:
                none |= j1 - 1 < p0 - left
                every |= j0 < p1 - left
            if right is not None:
                none |= j0 > p1 + right
                every |= j1 - 1 > p0 + right
        if self.chunk_size is not None:
            C = self.chunk_size
            none |= (j1 - 1) // C < p0 // C or j0 // C > p1 // C
            every |= not (p0 // C == p1 // C == j0 // C == (j1 - 1) // C)
        return ("none" if none else "some"), ("some" if every else "all")

    def full(self, L: int, S: int) -> NDArray[np.bool_]:
        """Build the ``(L, S)`` mask (all True when nothing is asked for)."""
        if L * S > _MAX_MASK:
            raise ValueError(
                f"a mask of L x S = {L} x {S} booleans is too large to build "
                f"(more than 2**40); the tiled functions take window= and chunk_size= instead"
            )
        m = self.mask(np.arange(L)[:, None], np.arange(S)[None, :])
        return np.ones((L, S), dtype=bool) if m is None else m


def causal_mask(L: int, S: int, align: str = "top_left") -> NDArray[np.bool_]:
    r"""Lower-triangular causal mask of shape ``(L, S)``.

    Parameters
    ----------
    L, S : int
        Number of queries and keys.
    align : {"top_left", "bottom_right"}, optional
        Where the diagonal sits when ``L != S``. ``"top_left"`` (default) is
        PyTorch's ``is_causal=True``; ``"bottom_right"`` is FlashAttention's
        causal (>= 2.1), where the last query sees every key.

    Returns
    -------
    mask : ndarray of bool, shape (L, S)
        ``mask[i, j]`` is True when query ``i`` may attend to key ``j``.

    Raises
    ------
    ValueError
        If ``L`` or ``S`` is negative or ``align`` is unknown.
    TypeError
        If ``L`` or ``S`` is not an integer.

    Notes
    -----
    Eq. (2.6) of ``docs/attention.md``: with :math:`d = 0` (top-left) or
    :math:`d = S - L` (bottom-right),

    .. math:: M_{ij} = [\, j \le i + d \,].

    With bottom-right alignment and ``L > S`` the first ``L - S`` queries see
    no key at all; attention gives them output 0.

    Examples
    --------
    >>> causal_mask(2, 3).astype(int)
    array([[1, 0, 0],
           [1, 1, 0]])
    >>> causal_mask(2, 3, align="bottom_right").astype(int)
    array([[1, 1, 0],
           [1, 1, 1]])
    """
    L, S = check_int(L, "L"), check_int(S, "S")
    return Positions(offset=causal_offset(L, S, align), is_causal=True).full(L, S)


def padding_mask(lengths: ArrayLike, S: int) -> NDArray[np.bool_]:
    r"""Key-padding mask from each sequence's number of real keys.

    Parameters
    ----------
    lengths : array_like of int, shape (B,)
        ``lengths[b]`` real keys in sequence ``b``; keys at positions
        ``>= lengths[b]`` are padding. Each must satisfy ``0 <= lengths[b] <= S``.
    S : int
        Number of key positions.

    Returns
    -------
    mask : ndarray of bool, shape (B, 1, 1, S)
        True for real keys; broadcasts against scores ``(B, Hq, L, S)``.

    Raises
    ------
    ValueError
        If ``lengths`` is not 1-D or has a value outside ``[0, S]``.
    TypeError
        If ``lengths`` is not an integer array.

    Notes
    -----
    Eq. (2.7) of ``docs/attention.md``: :math:`M_{b,j} = [\, j < n_b \,]`.
    This is the *opposite* polarity of ``nn.MultiheadAttention``'s
    ``key_padding_mask`` (True = ignore): pass ``~key_padding_mask`` there.

    Examples
    --------
    >>> padding_mask([1, 3], 3)[:, 0, 0].astype(int)
    array([[1, 0, 0],
           [1, 1, 1]])
    """
    S = check_int(S, "S")
    n = np.asarray(lengths)
    if n.dtype.kind not in "iu" and n.size:
        raise TypeError(f"lengths must be integers, got dtype {n.dtype}")
    n = n.astype(np.int64, copy=False)
    if n.ndim != 1:
        raise ValueError(f"lengths must have shape (B,), got shape {n.shape}")
    if n.size and (n.min() < 0 or n.max() > S):
        raise ValueError(f"lengths must lie in [0, S={S}], got min {n.min()} and max {n.max()}")
    if n.size * S > _MAX_MASK:
        raise ValueError(f"a padding mask of B x S = {n.size} x {S} booleans is too large to build")
    return (np.arange(S)[None, :] < n[:, None])[:, None, None, :]


def sliding_window_mask(
    L: int, S: int, window: int | tuple[int, int], align: str = "top_left"
) -> NDArray[np.bool_]:
    r"""Local (sliding-window) attention mask of shape ``(L, S)``.

    Parameters
    ----------
    L, S : int
        Number of queries and keys.
    window : int or (int, int)
        ``(left, right)``: query ``i`` sees keys from ``left`` positions
        before its diagonal to ``right`` positions after it, inclusive. An int
        ``w`` means ``(w, w)`` (as JAX's ``local_window_size``); use
        ``(w, 0)`` for causal local attention (Mistral, Longformer-style).
    align : {"top_left", "bottom_right"}, optional
        Where the diagonal sits when ``L != S`` (see :func:`causal_mask`).

    Returns
    -------
    mask : ndarray of bool, shape (L, S)

    Raises
    ------
    ValueError
        If a window side is negative or ``align`` is unknown.
    TypeError
        If ``window`` is neither an int nor a pair of ints.

    Notes
    -----
    Eq. (2.8) of ``docs/attention.md``, with the offset :math:`d` of Eq. (2.6):

    .. math:: M_{ij} = [\, i + d - w_\mathrm{l} \le j \le i + d + w_\mathrm{r} \,].

    Examples
    --------
    >>> sliding_window_mask(4, 4, (1, 0)).astype(int)
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [0, 1, 1, 0],
           [0, 0, 1, 1]])
    """
    L, S = check_int(L, "L"), check_int(S, "S")
    if isinstance(window, tuple):
        if len(window) != 2:
            raise TypeError(f"window must be an int or a (left, right) pair, got {window!r}")
        sides = (check_int(window[0], "window[0]"), check_int(window[1], "window[1]"))
    else:
        sides = (check_int(window, "window"),) * 2
    return Positions(offset=causal_offset(L, S, align), window=sides).full(L, S)


def chunk_mask(L: int, S: int, chunk_size: int, align: str = "top_left") -> NDArray[np.bool_]:
    r"""Chunked-attention mask of shape ``(L, S)`` (Llama 4): query and key share a chunk.

    Parameters
    ----------
    L, S : int
        Number of queries and keys.
    chunk_size : int
        ``C >= 1`` positions per chunk.
    align : {"top_left", "bottom_right"}, optional
        Where query ``i`` sits on the key axis (``i + d``, Eq. (2.6)).

    Returns
    -------
    mask : ndarray of bool, shape (L, S)
        True where query and key share a chunk.

    Raises
    ------
    ValueError
        If ``chunk_size < 1``, ``L`` or ``S`` negative, or ``align`` unknown.
    TypeError
        If an argument is not an integer.

    Notes
    -----
    Eq. (8.7) of ``docs/variants.md``:
    :math:`M_{ij} = [\, \lfloor (i + d)/C \rfloor = \lfloor j / C \rfloor \,]`.
    Combine with ``is_causal`` for Llama 4's chunked causal attention.

    Examples
    --------
    >>> chunk_mask(4, 4, 2).astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0],
           [0, 0, 1, 1],
           [0, 0, 1, 1]])
    """
    L, S = check_int(L, "L"), check_int(S, "S")
    C = check_int(chunk_size, "chunk_size", minimum=1)
    return Positions(offset=causal_offset(L, S, align), chunk_size=C).full(L, S)
