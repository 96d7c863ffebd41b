"""Small argument validators shared by every module, written once.

Each raises a ``TypeError`` (wrong kind of value) or a ``ValueError`` (right
kind, wrong value) whose message names the argument, what was seen and what
was expected. The bottom of the package with :mod:`numpy_attention._arrays`;
it imports nothing else from it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from ._arrays import Array, as_float_array

__all__ = [
    "check_int",
    "check_bool",
    "check_real",
    "check_grad",
    "check_instance",
    "check_window",
]

T = TypeVar("T")


def check_int(value: object, name: str, minimum: int | None = 0) -> int:
    """Return ``value`` as an ``int``, refusing bools, floats and values below ``minimum``.

    Raises
    ------
    TypeError
        If ``value`` is not an integer (``True`` and ``2.0`` are refused).
    ValueError
        If ``value < minimum``.

    Examples
    --------
    >>> check_int(3, "L"), check_int(np.int64(1), "workers", minimum=1)
    (3, 1)
    >>> check_int(0, "block_q", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: block_q must be >= 1, got 0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        kind = "a positive integer" if minimum == 1 else "an integer"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if minimum is not None and int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` as a ``bool``; only ``True``, ``False`` and NumPy bool scalars pass.

    Truthiness is not enough: ``is_causal="False"`` is a mistake, not ``True``.

    Examples
    --------
    >>> check_bool(np.True_, "is_causal")
    True
    >>> check_bool("False", "is_causal")
    Traceback (most recent call last):
    ...
    TypeError: is_causal must be a bool, got str 'False'
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite ``float`` within the bounds given.

    ``low_open`` / ``high_open`` exclude the bound itself.

    Raises
    ------
    TypeError
        If ``value`` is not a real number (bools are refused).
    ValueError
        If ``value`` is NaN, infinite or out of bounds.

    Examples
    --------
    >>> check_real(0.5, "dropout_p", low=0.0, high=1.0, high_open=True)
    0.5
    >>> check_real(1.0, "dropout_p", low=0.0, high=1.0, high_open=True)
    Traceback (most recent call last):
    ...
    ValueError: dropout_p must lie in [0, 1), got 1.0
    >>> check_real(float("nan"), "softcap", low=0.0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: softcap must be a finite number > 0, got nan
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    x = float(value)
    below = low is not None and (x < low or (low_open and x == low))
    above = high is not None and (x > high or (high_open and x == high))
    if math.isfinite(x) and not below and not above:
        return x
    if low is not None and high is not None:
        want = f"lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        want = f"be a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        want = f"be a finite number {'<' if high_open else '<='} {high:g}"
    else:
        want = "be finite"
    raise ValueError(f"{name} must {want}, got {value}")


def check_grad(
    d: ArrayLike,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype | None = None,
    what: str = "the output's shape",
) -> Array:
    """Return the incoming gradient ``d`` as a float array of exactly ``shape`` (in ``dtype``).

    ``what`` names the shape in the message (default "the output's shape").

    Examples
    --------
    >>> check_grad([[1.0, 2.0]], "d_out", (1, 2)).shape
    (1, 2)
    >>> check_grad(np.ones(3), "d_out", (1, 3))
    Traceback (most recent call last):
    ...
    ValueError: d_out has shape (3,), expected the output's shape (1, 3)
    """
    a = as_float_array(d, name)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, expected {what} {tuple(shape)}")
    return a if dtype is None else a.astype(dtype, copy=False)


def check_instance(value: Any, cls: type[T], name: str, made_by: str) -> T:
    """Return ``value`` if it is a ``cls``; else a ``TypeError`` saying which function makes one.

    Examples
    --------
    >>> check_instance(None, int, "cache", "attention_forward")
    Traceback (most recent call last):
    ...
    TypeError: cache must be the int returned by attention_forward, got NoneType
    """
    if not isinstance(value, cls):
        raise TypeError(
            f"{name} must be the {cls.__name__} returned by {made_by}, got {type(value).__name__}"
        )
    return value


def check_window(window: object, name: str = "window") -> tuple[int | None, int | None] | None:
    """Return ``window`` as ``(left, right)``: each side an integer >= 0 or None (unbounded).

    Examples
    --------
    >>> check_window((128, 0)), check_window(None), check_window((None, 3))
    ((128, 0), None, (None, 3))
    >>> check_window((-1, 0))
    Traceback (most recent call last):
    ...
    ValueError: window[0] must be >= 0, got -1
    """
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(
            f"{name} must be None or a (left, right) pair of integers >= 0 or None, got {window!r}"
        )
    left, right = (
        None if w is None else check_int(w, f"{name}[{n}]") for n, w in enumerate(window)
    )
    return (left, right)
