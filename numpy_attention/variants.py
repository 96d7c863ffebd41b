r"""Attention variants: ALiBi slopes, and other libraries' windows in our convention.

The variant keywords themselves (``window``, ``softcap``, ``alibi_slopes``, ``sinks``,
``chunk_size``, ``sink_tokens``, ``mask_mod``, ``score_mod``) are arguments of
:func:`~numpy_attention.attention.attention_forward` and
:func:`~numpy_attention.flash.flash_attention_forward`; their pipeline and backward are
chapter 8 of the docs (``docs/variants.md``). This module holds the helpers around them:

- :func:`alibi_slopes`: the slopes of Press et al. (2022), any number of heads, Eq. (8.5).
- ``window_from_*``: a window written in FlashAttention's, Hugging Face's, JAX's or cuDNN's
  convention, as our ``(window, causal_align)``, Eqs. (8.16)-(8.19).

Our window: query ``i`` sees key ``j`` iff ``i + d - left <= j <= i + d + right`` (both
inclusive, Eq. (8.6)), ``d = 0`` for ``causal_align="top_left"`` and ``S - L`` for
``"bottom_right"``; ``None`` on a side means unbounded. Each converter returns the alignment its
source implies, so that ``window, align = window_from_flash((128, 0))`` is used as
``attention_forward(q, k, v, window=window, causal_align=align)``.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._arrays import Array
from ._validate import check_int

__all__ = [
    "Window",
    "alibi_slopes",
    "window_from_flash",
    "window_from_hf",
    "window_from_jax",
    "window_from_cudnn",
]

#: ``(left, right)``: how many keys before and after the query's diagonal it sees (inclusive);
#: ``None`` is unbounded.
Window = tuple[int | None, int | None]


def alibi_slopes(num_heads: int) -> Array:
    r"""Return ALiBi's per-head slopes (Press, Smith and Lewis, ICLR 2022) for any head count.

    Parameters
    ----------
    num_heads : int
        The number of query heads ``Hq``, at least 1.

    Returns
    -------
    slopes : ndarray of float64, shape (num_heads,)
        Positive, for ``alibi_slopes=`` of the attention functions (Eq. (8.4)).

    Raises
    ------
    TypeError
        If ``num_heads`` is not an integer.
    ValueError
        If ``num_heads < 1``.

    Notes
    -----
    Eq. (8.5) of ``docs/variants.md``, heads numbered from 1. With
    :math:`\mathtt{H_2} = 2^{\lfloor \log_2 \mathtt{Hq} \rfloor}` the largest power of two not
    above :math:`\mathtt{Hq}` (``n`` in the code), the first :math:`\mathtt{H_2}` heads get the
    geometric sequence :math:`\mu_h = 2^{-8h/\mathtt{H_2}}`, :math:`h = 1, \dots, \mathtt{H_2}`;
    the :math:`\mathtt{Hq} - \mathtt{H_2}` remaining heads get every other slope of the sequence
    for :math:`2\mathtt{H_2}` heads, :math:`\mu_{\mathtt{H_2} + h'} = 2^{-4(2h' - 1)/\mathtt{H_2}}`
    for :math:`h' = 1, \dots, \mathtt{Hq} - \mathtt{H_2}`:

    .. math:: \mu = \big(2^{-8/\mathtt{H_2}}, 2^{-16/\mathtt{H_2}}, \dots, 2^{-8}\big) \,\|\,
              \big(2^{-4/\mathtt{H_2}}, 2^{-12/\mathtt{H_2}}, \dots\big)_{\mathtt{Hq}
              - \mathtt{H_2}} .

    This is the rule of the ALiBi reference code (``get_slopes``), of BLOOM's
    ``build_alibi_tensor`` (huggingface/transformers) and of cuDNN's test reference
    (``test_mhas.py``); a power of two :math:`\mathtt{Hq}` gives the paper's
    :math:`2^{-8h/\mathtt{Hq}}`.

    Examples
    --------
    >>> alibi_slopes(4).tolist()
    [0.25, 0.0625, 0.015625, 0.00390625]
    >>> alibi_slopes(6).tolist()  # 4 heads' slopes, then 2^(-1), 2^(-3) from the 8-head sequence
    [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
    """
    H = check_int(num_heads, "num_heads", minimum=1)
    n = 1 << (H.bit_length() - 1)  # 2 ** floor(log2 H), exactly
    slopes = 2.0 ** (-8.0 * np.arange(1, n + 1) / n)
    if n < H:
        extra = 2.0 ** (-4.0 * np.arange(1, 2 * (H - n), 2) / n)
        slopes = np.concatenate([slopes, extra])
    return slopes


def _window_pair(value: object, name: str) -> tuple[object, object]:
    """``value`` as a pair, or a TypeError naming ``name``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (left, right), got {value!r}")
    return value[0], value[1]


def window_from_flash(window_size: tuple[int, int]) -> tuple[Window, str]:
    r"""Convert FlashAttention's ``window_size=(left, right)`` to our ``(window, causal_align)``.

    Parameters
    ----------
    window_size : (int, int)
        As in ``flash_attn_func(..., window_size=(left, right))``: key ``j`` is visible to
        query ``i`` iff ``i + S - L - left <= j <= i + S - L + right`` (inclusive); ``-1`` on a
        side means unbounded, ``(-1, -1)`` no window.

    Returns
    -------
    window : (int or None, int or None)
        The same sides, ``-1`` replaced by ``None``.
    causal_align : str
        ``"bottom_right"``: FlashAttention aligns windows (and ``causal``) to the bottom-right
        corner when ``L != S`` (since v2.1).

    Raises
    ------
    TypeError
        If ``window_size`` is not a pair of integers.
    ValueError
        If a side is below ``-1``.

    Notes
    -----
    Eq. (8.16) of ``docs/variants.md``. FlashAttention's ``causal=True`` is the window
    ``(left, 0)`` in the same alignment (its reference sets ``window_size = (window_size[0], 0)``);
    pass ``is_causal=True`` too or not, the result is the same. Its test reference
    ``construct_local_mask`` reads ``(w, -1)`` as "right = -1" (the diagonal masked) while the
    kernel reads it as unbounded; this converter follows the kernel.

    Examples
    --------
    >>> window_from_flash((128, 0))
    ((128, 0), 'bottom_right')
    >>> window_from_flash((-1, -1))
    ((None, None), 'bottom_right')
    """
    pair = _window_pair(window_size, "window_size")
    sides = [check_int(s, f"window_size[{t}]", minimum=-1) for t, s in enumerate(pair)]
    left, right = (None if s == -1 else s for s in sides)
    return (left, right), "bottom_right"


def window_from_hf(sliding_window: int | None) -> tuple[Window, str]:
    r"""Convert Hugging Face's causal ``sliding_window`` (Mistral, Gemma 2, gpt-oss) to our window.

    Parameters
    ----------
    sliding_window : int or None
        ``config.sliding_window``: the number of keys a query sees, **the query's own key
        included** (``masking_utils.sliding_window_overlay``: ``kv_idx > q_idx - W``, combined
        with ``kv_idx <= q_idx``). None: no sliding window (plain causal attention).

    Returns
    -------
    window : (int or None, int)
        ``(W - 1, 0)``; ``(None, 0)`` for None.
    causal_align : str
        ``"bottom_right"``: ``q_idx`` and ``kv_idx`` are absolute positions (``cache_position``),
        so with a KV cache the ``L`` queries are the last of the ``S`` positions.

    Raises
    ------
    TypeError
        If ``sliding_window`` is neither an integer nor None.
    ValueError
        If ``sliding_window < 1``.

    Notes
    -----
    Eq. (8.17) of ``docs/variants.md``. FlashAttention's ``window_size`` left side counts the
    keys *before* the query, so ``W`` tokens are ``window_size=(W - 1, 0)`` (or
    ``(W - 1, W - 1)`` with ``causal=True``); passing ``(W, W)``, ``W + 1`` keys, was the
    off-by-one of transformers#39408 (fixed by transformers#40163).

    Examples
    --------
    >>> window_from_hf(4096)
    ((4095, 0), 'bottom_right')
    """
    if sliding_window is None:
        return (None, 0), "bottom_right"
    W = check_int(sliding_window, "sliding_window", minimum=1)
    return (W - 1, 0), "bottom_right"


def window_from_jax(local_window_size: int | tuple[int, int] | None) -> tuple[Window, str]:
    r"""Convert JAX's ``local_window_size`` (``jax.nn.dot_product_attention``) to our window.

    Parameters
    ----------
    local_window_size : int or (int, int) or None
        ``(left, right)``: query ``i`` sees key ``j`` iff ``i <= j + left`` and
        ``i >= j - right`` (``_get_window_mask``), both inclusive; an int ``w`` is ``(w, w)``.
        None: no window.

    Returns
    -------
    window : (int or None, int or None)
        The same sides; ``(None, None)`` for None.
    causal_align : str
        ``"top_left"``: JAX's window and ``is_causal`` are aligned to the top-left corner.

    Raises
    ------
    TypeError
        If a side is not an integer.
    ValueError
        If a side is negative.

    Notes
    -----
    Eq. (8.18) of ``docs/variants.md``.

    Examples
    --------
    >>> window_from_jax(3)
    ((3, 3), 'top_left')
    >>> window_from_jax((2, 0))
    ((2, 0), 'top_left')
    """
    if local_window_size is None:
        return (None, None), "top_left"
    if isinstance(local_window_size, numbers.Integral) and not isinstance(local_window_size, bool):
        pair: tuple[object, object] = (local_window_size, local_window_size)
    else:
        pair = _window_pair(local_window_size, "local_window_size")
    left, right = (check_int(s, f"local_window_size[{t}]") for t, s in enumerate(pair))
    return (left, right), "top_left"


def window_from_cudnn(
    left_bound: int | None = None,
    right_bound: int | None = None,
    diagonal_alignment: str = "top_left",
) -> tuple[Window, str]:
    r"""Convert cuDNN's diagonal band (``left_bound``, ``right_bound``) to our window.

    Parameters
    ----------
    left_bound : int or None
        cuDNN's left bound, **exclusive**: key ``j`` is visible iff ``j > diag - left_bound``
        (``col + left_bound > diag`` in its kernels; ``swa_mask.tril_(diagonal=-left_bound)``
        masks in ``test_mhas.py``), so ``left_bound = 1`` keeps only the diagonal. At least 1;
        None: unbounded. ``sliding_window_length`` is the same number.
    right_bound : int or None
        cuDNN's right bound, inclusive: ``j <= diag + right_bound``
        (``triu_(diagonal=1 + right_bound)`` masks); 0 is causal. None: unbounded.
    diagonal_alignment : {"top_left", "bottom_right"}
        cuDNN's ``diagonal_alignment`` (``TOP_LEFT`` / ``BOTTOM_RIGHT``): ``diag = i`` or
        ``i + S - L``.

    Returns
    -------
    window : (int or None, int or None)
        ``(left_bound - 1, right_bound)``.
    causal_align : str
        ``diagonal_alignment``, unchanged.

    Raises
    ------
    TypeError
        If a bound is not an integer or None.
    ValueError
        If ``left_bound < 1``, ``right_bound < 0`` or the alignment is unknown.

    Notes
    -----
    Eq. (8.19) of ``docs/variants.md``. JAX's cuDNN path passes
    ``sliding_window_length = left + 1`` for its inclusive ``left``, the same rule read backwards.

    Examples
    --------
    >>> window_from_cudnn(left_bound=128, right_bound=0)
    ((127, 0), 'top_left')
    """
    if diagonal_alignment not in ("top_left", "bottom_right"):
        raise ValueError(
            "diagonal_alignment must be 'top_left' or 'bottom_right' (cuDNN's TOP_LEFT, "
            f"BOTTOM_RIGHT), got {diagonal_alignment!r}"
        )
    left = None if left_bound is None else check_int(left_bound, "left_bound", minimum=1) - 1
    right = None if right_bound is None else check_int(right_bound, "right_bound", minimum=0)
    return (left, right), diagonal_alignment
