"""Array plumbing shared by every module: dtype checks and gradient un-broadcasting.

The bottom of the package; it imports nothing from it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Array", "as_float_array", "sum_to_shape", "compute_dtype", "broadcasts_to"]

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
