r"""Boolean attention masks: ``True`` means "this key takes part in attention".

This is the polarity of ``torch.nn.functional.scaled_dot_product_attention``'s
boolean ``attn_mask`` and of ``jax.nn.dot_product_attention``'s ``mask``.
(``torch.nn.MultiheadAttention``'s ``key_padding_mask`` is the opposite:
True = ignore. See ``docs/conventions.md``.)

Shapes: ``L`` queries, ``S`` keys, ``B`` batch. Every mask broadcasts against
the attention scores of shape ``(..., H, L, S)``.

Equations are numbered as in ``docs/attention.md``.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["causal_mask", "padding_mask", "sliding_window_mask", "ALIGNMENTS"]

#: The two causal alignments. ``top_left``: query ``i`` sees keys ``j <= i``
#: (PyTorch ``is_causal``, JAX). ``bottom_right``: query ``i`` sees keys
#: ``j <= i + S - L`` (FlashAttention >= 2.1, ``causal_lower_right``).
ALIGNMENTS = ("top_left", "bottom_right")


def _check_length(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if int(value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _offset(L: int, S: int, align: str) -> int:
    """Diagonal offset ``d`` of Eq. (2.6): query ``i`` sits over key ``i + d``."""
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {ALIGNMENTS}, got {align!r}")
    return 0 if align == "top_left" else S - L


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
    L, S = _check_length(L, "L"), _check_length(S, "S")
    d = _offset(L, S, align)
    i = np.arange(L)[:, None]
    j = np.arange(S)[None, :]
    return j <= i + d


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
        True for real keys; broadcasts against scores ``(B, H, L, S)``.

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
    S = _check_length(S, "S")
    n = np.asarray(lengths)
    if n.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {n.dtype}")
    if n.ndim != 1:
        raise ValueError(f"lengths must have shape (B,), got shape {n.shape}")
    if n.size and (n.min() < 0 or n.max() > S):
        raise ValueError(f"lengths must lie in [0, S={S}], got min {n.min()} and max {n.max()}")
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

    .. math:: M_{ij} = [\, i + d - \ell \le j \le i + d + r \,].

    Examples
    --------
    >>> sliding_window_mask(4, 4, (1, 0)).astype(int)
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [0, 1, 1, 0],
           [0, 0, 1, 1]])
    """
    L, S = _check_length(L, "L"), _check_length(S, "S")
    if isinstance(window, tuple):
        if len(window) != 2:
            raise TypeError(f"window must be an int or a (left, right) pair, got {window!r}")
        left = _check_length(window[0], "window[0]")
        right = _check_length(window[1], "window[1]")
    else:
        left = right = _check_length(window, "window")
    d = _offset(L, S, align)
    diag = np.arange(L)[:, None] + d
    j = np.arange(S)[None, :]
    return (j >= diag - left) & (j <= diag + right)
