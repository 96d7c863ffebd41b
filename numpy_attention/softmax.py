r"""Softmax, log-softmax, log-sum-exp and their vector-Jacobian products.

The bottom of the package: everything else is built on these five functions.
Equations are numbered as in ``docs/softmax.md``. The same formulas as literal loops
over one row with ``math.exp``: ``softmax_oracle``, ``logsumexp_oracle`` and
``log_softmax_oracle`` in ``tests/oracles.py``.

Shapes: any array ``x``; ``axis`` is the axis being normalised (the keys,
``S``, when used by attention).

Convention for ``-inf`` (a masked entry): it gets probability exactly 0, and
a row whose entries are *all* ``-inf`` (nothing left to attend to) gives a
softmax of zeros, a log-sum-exp of ``-inf`` and a log-softmax of ``-inf``,
never NaN.  Gradients through such entries are exactly 0.  An empty slice
(length 0) behaves like an all ``-inf`` one.

NaN propagates: a slice containing NaN gives NaN in that whole slice (and
only there), never a silent 0.  ``+inf`` is not a valid score (NaN results).

Precision: float64 and float32 are computed in their own dtype; float16 is
computed in float32 and rounded once at the end; integers become float64.
The result has the input's (promoted) dtype.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import as_float_array as _as_float
from ._arrays import compute_dtype
from ._validate import check_grad

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "softmax_backward",
    "log_softmax_backward",
    "row_shift",
    "softmax_lse_inplace",
]


def row_shift(m: NDArray[np.floating]) -> NDArray[np.floating]:
    """Return the shift ``m`` of Eq. (1.1) from a row maximum; a ``-inf`` row max shifts by 0.

    The one place that decides what a fully masked row becomes: with a shift
    of 0, ``exp(-inf - 0) = 0`` and no ``-inf - (-inf) = NaN`` can arise.
    Used by every softmax here and by the tiled online softmax.

    Examples
    --------
    >>> row_shift(np.array([2.0, -np.inf])).tolist()
    [2.0, 0.0]
    """
    return np.where(m == -np.inf, np.zeros_like(m), m)


def _upcast(*arrays: NDArray[np.floating]) -> tuple[np.dtype, list[NDArray[np.floating]]]:
    """Return the result dtype of ``arrays`` and the arrays in its compute dtype (f16 -> f32)."""
    dtype = np.result_type(*arrays)
    cdtype = compute_dtype(dtype)
    return dtype, [a.astype(cdtype, copy=False) for a in arrays]


def softmax_lse_inplace(
    x: NDArray[np.floating],
    axis: int = -1,
    sink: NDArray[np.floating] | None = None,
    bounded: bool = False,
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    r"""Eqs. (1.1)-(1.2) in place: turn ``x`` into its softmax; also return the log-sum-exp.

    The one softmax of the package: :func:`softmax`, :func:`logsumexp` and
    the attention core (the weights and ``lse`` of Eq. (2.3)) call it.
    ``sink`` (broadcastable to the log-sum-exp, keepdims) is one more logit
    per slice that joins the denominator and gets no entry of the result (a
    learned attention sink, Eq. (8.9)). ``bounded`` says the caller proved
    that ``exp`` of every entry (and of the sink) is finite and normal (the
    attention core's Cauchy-Schwarz bound): the shift is then 0, no max pass.

    Returns
    -------
    P : ndarray
        ``x`` itself, overwritten by ``exp(x - m) / sum``; all zeros for an all
        ``-inf`` slice (with no sink).
    lse : ndarray
        ``m + log(sum)`` with ``axis`` kept (length 1); ``-inf`` for an all
        ``-inf`` slice without a sink, the sink logit with one.

    Examples
    --------
    >>> x = np.array([[0.0, 0.0], [-np.inf, -np.inf]])
    >>> P, lse = softmax_lse_inplace(x)
    >>> P.tolist(), lse.ravel().tolist()
    ([[0.5, 0.5], [0.0, 0.0]], [0.6931471805599453, -inf])
    >>> P, lse = softmax_lse_inplace(np.zeros((1, 2)), sink=np.zeros((1, 1)))
    >>> P.round(4).tolist(), bool(lse[0, 0] == np.log(3.0))
    ([[0.3333, 0.3333]], True)
    """
    if bounded:  # e^x can neither overflow nor vanish: Eq. (1.1) holds for any shift, take 0
        m = np.zeros(x.shape[: axis % x.ndim] + (1,) + x.shape[axis % x.ndim + 1 :], x.dtype)
    else:
        m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)  # empty slice: -inf
        m = row_shift(m if sink is None else np.maximum(m, sink))
        x -= m
    np.exp(x, out=x)  # Eq. (1.1): e^{x - m}, <= 1 when m is the max
    total = np.sum(x, axis=axis, keepdims=True)
    if sink is not None:
        total = total + np.exp(sink - m)  # Eq. (8.9): the sink's term, no entry of its own
    # an all -inf slice has total = 0: divide by 1 to give zeros; NaN stays NaN
    x /= np.where(total == 0, np.ones_like(total), total)
    with np.errstate(divide="ignore"):  # log(0) = -inf for an all -inf slice
        return x, m + np.log(total)  # Eq. (1.2)


def softmax(x: ArrayLike, axis: int = -1) -> NDArray[np.floating]:
    r"""Softmax along ``axis``, max-shifted for stability.

    Parameters
    ----------
    x : array_like
        Scores (logits). ``-inf`` marks an entry that must get probability 0.
    axis : int, optional
        The axis that is normalised. Default ``-1``.

    Returns
    -------
    y : ndarray
        Same shape and floating dtype as ``x`` (integers become float64).
        Each slice along ``axis`` sums to 1, or is all zeros when every entry
        of ``x`` in that slice is ``-inf``.

    Raises
    ------
    TypeError
        If ``x`` is complex, object or string.

    Notes
    -----
    Eq. (1.1) of ``docs/softmax.md``:

    .. math:: \mathrm{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}},
              \qquad m = \max_j x_j .

    Subtracting the maximum changes nothing mathematically and keeps every
    exponent ``<= 0``, so ``exp`` cannot overflow [1]_.

    References
    ----------
    .. [1] P. Blanchard, D. J. Higham, N. J. Higham, "Accurately computing the
       log-sum-exp and softmax functions", IMA J. Numer. Anal. 41(4), 2021.

    Examples
    --------
    >>> softmax([1.0, 1.0, -np.inf])
    array([0.5, 0.5, 0. ])
    >>> softmax([-np.inf, -np.inf])
    array([0., 0.])
    """
    dtype, (x,) = _upcast(_as_float(x, "x"))
    P, _ = softmax_lse_inplace(np.array(x, copy=True), axis)
    return P.astype(dtype, copy=False)


def logsumexp(x: ArrayLike, axis: int = -1, keepdims: bool = False) -> NDArray[np.floating]:
    r"""Natural-log log-sum-exp along ``axis``, max-shifted for stability.

    Parameters
    ----------
    x : array_like
        Scores.
    axis : int, optional
        The reduced axis. Default ``-1``.
    keepdims : bool, optional
        Keep the reduced axis with length 1. Default ``False``.

    Returns
    -------
    lse : ndarray
        ``log(sum(exp(x)))`` along ``axis``; ``-inf`` for an all ``-inf`` slice.

    Raises
    ------
    TypeError
        For complex, object or string ``x`` (as :func:`softmax`).

    Notes
    -----
    Eq. (1.2) of ``docs/softmax.md``:

    .. math:: \mathrm{lse}(x) = m + \log \sum_j e^{x_j - m}, \qquad m = \max_j x_j .

    Examples
    --------
    >>> float(logsumexp([1000.0, 1000.0]))  # no overflow
    1000.6931471805599
    >>> float(logsumexp([-np.inf, -np.inf]))
    -inf
    """
    dtype, (x,) = _upcast(_as_float(x, "x"))
    _, lse = softmax_lse_inplace(np.array(x, copy=True), axis)
    lse = lse.astype(dtype, copy=False)
    return lse if keepdims else np.squeeze(lse, axis=axis)


def log_softmax(x: ArrayLike, axis: int = -1) -> NDArray[np.floating]:
    r"""Log of the softmax along ``axis``, computed without forming the softmax.

    Parameters
    ----------
    x : array_like
        Scores (logits); ``-inf`` entries stay ``-inf``.
    axis : int, optional
        The axis normalised (``-1``, the last, by default).

    Returns
    -------
    y : ndarray
        ``x - logsumexp(x)``; ``-inf`` where ``x`` is ``-inf`` (including
        every entry of an all ``-inf`` slice).

    Raises
    ------
    TypeError
        For a complex, object or string ``x``, as :func:`softmax`.

    Notes
    -----
    Eq. (1.3) of ``docs/softmax.md``:

    .. math:: \log\mathrm{softmax}(x)_i = x_i - \mathrm{lse}(x)
              = (x_i - m) - \log\textstyle\sum_j e^{x_j - m}.

    The shifted form keeps the digits of ``x_i - m``: in float32, ``[1e8, 1e8]``
    gives ``-0.693`` each (``x - (m + log 2)`` would round to 0).

    Examples
    --------
    >>> np.allclose(np.exp(log_softmax([0.0, np.log(3.0)])), [0.25, 0.75])
    True
    """
    dtype, (x,) = _upcast(_as_float(x, "x"))
    m = row_shift(np.max(x, axis=axis, keepdims=True, initial=-np.inf))
    z = x - m  # Eq. (1.3), shifted first: (x - m) - log(sum), never x - (m + log(sum))
    with np.errstate(divide="ignore"):  # an all -inf slice: log(0) = -inf, z - (-inf) below
        log_total = np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    y = z - np.where(log_total == -np.inf, np.zeros_like(log_total), log_total)
    return y.astype(dtype, copy=False)


def softmax_backward(d_y: ArrayLike, y: ArrayLike, axis: int = -1) -> NDArray[np.floating]:
    r"""Vector-Jacobian product of :func:`softmax`, from its output ``y``.

    Parameters
    ----------
    d_y : array_like
        Upstream gradient ``dL/dy``, same shape as ``y``.
    y : array_like
        The output of ``softmax(x, axis)``.
    axis : int, optional
        The axis that ``softmax`` normalised. Default ``-1``.

    Returns
    -------
    d_x : ndarray
        ``dL/dx``, same shape as ``y``. Each slice along ``axis`` sums to 0;
        entries with ``y == 0`` (masked) get exactly 0.

    Raises
    ------
    ValueError
        If ``d_y`` and ``y`` have different shapes.

    Notes
    -----
    Eq. (1.4) of ``docs/softmax.md``; the Jacobian
    :math:`\partial y_i/\partial x_j = y_i(\delta_{ij} - y_j)` is never formed:

    .. math:: dx = y \odot \Big(dy - \sum_j dy_j\, y_j\Big).

    Examples
    --------
    >>> y = softmax([0.0, 1.0, 2.0])
    >>> abs(float(softmax_backward([1.0, 0.0, 0.0], y).sum())) < 1e-15
    True
    """
    y = _as_float(y, "y")
    d_y = check_grad(d_y, "d_y", y.shape, what="the shape of y")
    dtype, (d_y, y) = _upcast(d_y, y)
    # Eq. (1.4): the vector-Jacobian product, linear in S per slice, no S x S Jacobian
    return (y * (d_y - np.sum(d_y * y, axis=axis, keepdims=True))).astype(dtype, copy=False)


def log_softmax_backward(d_y: ArrayLike, y: ArrayLike, axis: int = -1) -> NDArray[np.floating]:
    r"""Vector-Jacobian product of :func:`log_softmax`, from its output ``y``.

    Parameters
    ----------
    d_y, y : array_like
        The upstream gradient ``dL/dy`` and ``y = log_softmax(x, axis)``, of one shape.
    axis : int, optional
        The axis ``log_softmax`` normalised. Default ``-1``.

    Returns
    -------
    d_x : ndarray
        ``dL/dx``; exactly 0 where ``y == -inf`` (a masked entry is a
        constant, not a variable).

    Raises
    ------
    ValueError
        When the shape of ``d_y`` is not that of ``y``.

    Notes
    -----
    Eq. (1.5) of ``docs/softmax.md``, with :math:`p = e^{y}`:

    .. math:: dx = dy - p \sum_j dy_j .

    Examples
    --------
    >>> y = log_softmax([0.0, 1.0])
    >>> d_x = log_softmax_backward([1.0, 0.0], y)  # d(log p_0)/dx = e_0 - p
    >>> np.allclose(d_x, [1.0, 0.0] - np.exp(y))
    True
    """
    y = _as_float(y, "y")
    d_y = check_grad(d_y, "d_y", y.shape, what="the shape of y")
    dtype, (d_y, y) = _upcast(d_y, y)
    masked = y == -np.inf  # constants: they take no gradient and give none
    d_y = np.where(masked, np.zeros_like(d_y), d_y)
    d_x = d_y - np.exp(y) * np.sum(d_y, axis=axis, keepdims=True)  # Eq. (1.5)
    return np.where(masked, np.zeros_like(d_x), d_x).astype(dtype, copy=False)
