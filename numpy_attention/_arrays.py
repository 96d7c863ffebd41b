"""Array plumbing shared by every module: dtype checks and gradient un-broadcasting.

The bottom of the package; it imports nothing from it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Array",
    "as_float_array",
    "sum_to_shape",
    "compute_dtype",
    "broadcasts_to",
    "pow2_exponent",
    "pow2_scaled",
    "block_view",
    "absmax",
    "broadcast_as",
]

#: The one alias for a floating array, used by every module.
Array = NDArray[np.floating]


def as_float_array(x: ArrayLike, name: str) -> NDArray[np.floating]:
    """Return ``x`` as a real floating array; integers and booleans become float64.

    Raises
    ------
    TypeError
        If ``x`` is complex, object, string or any other non-real dtype.
    """
    a = np.asarray(x)
    if a.dtype.kind in "biu":
        return a.astype(np.float64)
    if a.dtype.kind == "f":
        return a
    kind = "complex" if a.dtype.kind == "c" else "non-numeric"
    raise TypeError(f"{name} must be a real floating or integer array, got {kind} dtype {a.dtype}")


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """Return the dtype the arithmetic runs in: float16 is computed in float32, others as given."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def sum_to_shape(g: NDArray[np.floating], shape: tuple[int, ...]) -> NDArray[np.floating]:
    """Sum a broadcast gradient ``g`` back to ``shape`` (the adjoint of broadcasting, Eq. (2.15)).

    Examples
    --------
    >>> sum_to_shape(np.ones((2, 3, 4)), (3, 1)).ravel().tolist()
    [8.0, 8.0, 8.0]
    """
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Tell whether an array of ``shape`` broadcasts to exactly ``target`` (a mask to scores).

    Examples
    --------
    >>> broadcasts_to((1, 5), (2, 3, 4, 5)), broadcasts_to((2, 1, 1), (3, 1))
    (True, False)
    """
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


def pow2_exponent(factors: tuple[float, ...], dtype: np.dtype) -> int:
    """Smallest ``e >= 0`` with ``prod(factors) / 2^e`` below a quarter of ``dtype``'s range.

    The product is bounded in log2 space, so it may itself exceed the range.
    Dividing by ``2^e`` is exact (only the exponent changes), so a sum that
    could overflow is computed on scaled terms and scaled back once it is small.
    A zero or non-finite factor (inf or NaN inputs) gives 0: nothing to save.

    Examples
    --------
    >>> f64 = np.dtype(np.float64)
    >>> pow2_exponent((10.0, 3.0), f64), pow2_exponent((2.0, 1e308), f64)
    (0, 3)
    """
    if not all(np.isfinite(f) and f > 0 for f in factors):
        return 0
    excess = sum(float(np.log2(f)) for f in factors) - float(np.log2(np.finfo(dtype).max / 4))
    return 0 if excess < 0 else int(np.floor(excess)) + 1


def pow2_scaled(arrays: tuple[np.ndarray, ...], factors: tuple[float, ...]) -> tuple[list, int]:
    """Divide ``arrays`` by ``2^e``, ``e`` from :func:`pow2_exponent` of ``factors`` and their max.

    ``e = 0`` (nothing could overflow) returns the arrays themselves.

    Examples
    --------
    >>> (v,), e = pow2_scaled((np.array([1e308]),), (4.0,))
    >>> e, float(np.ldexp(v[0], e))
    (4, 1e+308)
    """
    big = max(absmax(a) for a in arrays)
    e = pow2_exponent(factors + (big,), arrays[0].dtype)
    return ([np.ldexp(a, -e) for a in arrays] if e else list(arrays)), e


def block_view(a: np.ndarray, i0: int, j0: int, n: int, m: int) -> np.ndarray:
    """Block ``[i0:i0+n, j0:j0+m]`` of a mask in its own shape: a view that broadcasts to the block.

    The same values as ``np.broadcast_to(a, scores_shape)[..., i0:i0+n, j0:j0+m]``,
    without reading the broadcast copies (size-1 axes stay size 1).

    Examples
    --------
    >>> block_view(np.arange(12).reshape(3, 4), 1, 2, 2, 2).tolist()
    [[6, 7], [10, 11]]
    >>> block_view(np.ones((1, 4)), 1, 2, 2, 2).shape
    (1, 2)
    """
    if a.ndim < 2:
        a = a.reshape((1,) * (2 - a.ndim) + a.shape)
    rows = slice(None) if a.shape[-2] == 1 else slice(i0, i0 + n)
    cols = slice(None) if a.shape[-1] == 1 else slice(j0, j0 + m)
    return a[..., rows, cols]


def absmax(a: np.ndarray) -> float:
    """``max |a|`` without an ``|a|`` temporary; NaN if ``a`` holds NaN, 0 if empty.

    Examples
    --------
    >>> absmax(np.array([1.0, -3.0])), absmax(np.zeros(0))
    (3.0, 0.0)
    """
    with np.errstate(invalid="ignore"):
        return max(float(np.max(a, initial=-np.inf)), -float(np.min(a, initial=np.inf)), 0.0)


def broadcast_as(a: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``np.broadcast_to(a, shape)`` (a view), or a ValueError naming ``what`` and both shapes.

    Examples
    --------
    >>> broadcast_as(np.ones(3), (2, 3), "mask").shape
    (2, 3)
    >>> broadcast_as(np.ones(2), (2, 3), "mask")
    Traceback (most recent call last):
    ...
    ValueError: mask has shape (2,), which does not broadcast to (2, 3)
    """
    try:
        return np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(
            f"{what} has shape {a.shape}, which does not broadcast to {shape}"
        ) from None
