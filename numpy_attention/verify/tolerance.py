r"""The tolerance policy: one tolerance per dtype and group, measured in ``docs/verify.md``.

- :data:`DTYPES`: the dtypes a candidate may compute in.
- :data:`TOLERANCES` / :func:`tolerance`: the tolerance for a quantity
  (``out``, ``weights``, ``lse``: forward; ``d...``: gradient) in a dtype.
- :func:`tolerance_table`: read a ``{"forward": ..., "gradient": ...}``
  table (a suite's manifest holds one per dtype), refusing tolerances that
  would let garbage pass (NaN, infinite, negative or above :data:`MAX_TOLERANCE`).
- :func:`round_to_bfloat16`: emulate bfloat16 rounding in NumPy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._validate import check_real

__all__ = [
    "DTYPES",
    "Tolerance",
    "TOLERANCES",
    "MAX_TOLERANCE",
    "dtype_name",
    "tolerance",
    "group_of",
    "tolerance_table",
    "round_to_bfloat16",
]

#: The dtypes a candidate may compute in, as named on the command line.
DTYPES = ("float64", "float32", "float16", "bfloat16")

#: The largest tolerance a table may give: ``tau = 1`` already accepts an error
#: as large as the quantity itself; anything above passes garbage.
MAX_TOLERANCE = 1.0


@dataclass(frozen=True)
class Tolerance:
    """An element passes when ``|actual - desired| <= atol * max|desired| + rtol * |desired|``.

    ``atol`` is relative to the largest finite ``|desired|`` of the array
    (its *scale*; 1 if the array is all zeros), so one policy serves arrays
    of any magnitude; ``rtol`` is elementwise as in ``numpy.testing``. Both
    must be finite and >= 0 (``ValueError`` otherwise).
    """

    atol: float
    rtol: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "atol", check_real(self.atol, "atol", low=0.0))
        object.__setattr__(self, "rtol", check_real(self.rtol, "rtol", low=0.0))


#: Tolerances per dtype, for forward quantities (``out``, ``weights``,
#: ``lse``) and for gradients (every quantity whose name starts with ``d``);
#: ``atol = rtol = tau`` in each. ``tau`` is the largest error (Eq. (7.2)) measured
#: over the golden suite for PyTorch 2.13 (CPU) and for this package's dense
#: and tiled (flash) NumPy attention computing in that dtype, times a safety
#: factor of 4, rounded up to 1, 2 or 5 times a power of ten. The measurement
#: is in ``docs/verify.md``.
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "float64": {"forward": Tolerance(1e-14, 1e-14), "gradient": Tolerance(5e-14, 5e-14)},
    "float32": {"forward": Tolerance(2e-5, 2e-5), "gradient": Tolerance(5e-5, 5e-5)},
    "float16": {"forward": Tolerance(2e-3, 2e-3), "gradient": Tolerance(1e-2, 1e-2)},
    "bfloat16": {"forward": Tolerance(2e-2, 2e-2), "gradient": Tolerance(5e-2, 5e-2)},
}


def dtype_name(dtype: Any) -> str:
    """Return the name in :data:`DTYPES` of ``dtype`` (a name, a NumPy or torch dtype).

    Examples
    --------
    >>> dtype_name(np.float32), dtype_name("bfloat16")
    ('float32', 'bfloat16')
    """
    name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        with contextlib.suppress(TypeError):
            name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def tolerance(dtype: Any = "float64", quantity: str = "out") -> Tolerance:
    r"""Return the tolerance for ``quantity`` computed in ``dtype``.

    Parameters
    ----------
    dtype : str or numpy dtype
        One of ``"float64"``, ``"float32"``, ``"float16"``, ``"bfloat16"``
        (or the NumPy dtype of the first three).
    quantity : str, optional
        ``"out"``, ``"weights"``, ``"lse"`` (forward) or a gradient name
        starting with ``d`` (``"dq"``, ``"dk"``, ``"d_attn_mask"``, ...).

    Returns
    -------
    tol : Tolerance

    Raises
    ------
    TypeError
        If ``quantity`` is not a string.
    ValueError
        If ``dtype`` is not one of the four, or ``quantity`` is empty.

    Examples
    --------
    >>> tolerance("bfloat16", "dq") == TOLERANCES["bfloat16"]["gradient"]
    True
    """
    return TOLERANCES[dtype_name(dtype)][group_of(quantity)]


def group_of(quantity: str) -> str:
    """Return ``"gradient"`` for a quantity named ``d...``, else ``"forward"``.

    Examples
    --------
    >>> group_of("d_attn_mask"), group_of("lse")
    ('gradient', 'forward')
    """
    if not isinstance(quantity, str):
        raise TypeError(f"quantity must be a str such as 'out' or 'dq', got {quantity!r}")
    if not quantity:
        raise ValueError("quantity must be a non-empty name such as 'out' or 'dq'")
    return "gradient" if quantity.startswith("d") else "forward"


def tolerance_table(table: Any, where: str = "tolerances") -> dict[str, Tolerance]:
    r"""Read ``{"forward": {"atol", "rtol"}, "gradient": {...}}`` into :class:`Tolerance`\ s.

    Parameters
    ----------
    table : mapping
        One dtype's entry of a manifest's ``tolerances`` (or of
        :func:`~numpy_attention.verify.check_results`'s ``tolerances``).
    where : str, optional
        Names the table in error messages.

    Returns
    -------
    tolerances : dict of str to Tolerance
        Keys ``"forward"`` and ``"gradient"``.

    Raises
    ------
    ValueError
        If a group or a value is missing, not a real number, NaN, infinite,
        negative or above :data:`MAX_TOLERANCE`: such a table makes garbage pass.

    Examples
    --------
    >>> tolerance_table({"forward": {"atol": 1e-5, "rtol": 0}, "gradient": {"atol": 1e-4,
    ...                  "rtol": 1e-4}})["forward"]
    Tolerance(atol=1e-05, rtol=0.0)
    >>> tolerance_table({"forward": {"atol": float("nan"), "rtol": 0},
    ...                  "gradient": {"atol": 0, "rtol": 0}})
    Traceback (most recent call last):
    ...
    ValueError: tolerances.forward.atol must lie in [0, 1], got nan
    """
    if not isinstance(table, Mapping):
        raise ValueError(f"{where} must be an object with 'forward' and 'gradient', got {table!r}")
    out = {}
    for group in ("forward", "gradient"):
        entry = table.get(group)
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}.{group} must be an object with 'atol' and 'rtol'")
        values = []
        for key in ("atol", "rtol"):
            name = f"{where}.{group}.{key}"
            try:
                values.append(check_real(entry.get(key), name, low=0.0, high=MAX_TOLERANCE))
            except TypeError as e:
                raise ValueError(str(e)) from None
        out[group] = Tolerance(*values)
    return out


def round_to_bfloat16(x: Any) -> NDArray[np.float32]:
    r"""Round to the nearest bfloat16 (ties to even), returned as float32.

    NumPy has no bfloat16; this emulates a bfloat16 value exactly: a float32
    whose low 16 bits are zero (8 significant bits).

    Parameters
    ----------
    x : array_like
        Real numbers; NaN and infinities pass through.

    Returns
    -------
    y : ndarray of float32

    Examples
    --------
    >>> round_to_bfloat16([1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.14159]).tolist()
    [1.0, 1.0, 1.015625, 3.140625]
    """
    a = np.asarray(x, dtype=np.float32)
    y = round_significand(a, 8)
    nan = np.isnan(a)  # a NaN's carry could clear its mantissa (inf) or flip its sign
    return np.where(nan, a, y) if nan.any() else y


def round_significand(a: NDArray[np.float32], bits: int) -> NDArray[np.float32]:
    """Round finite float32 ``a`` to ``bits`` significant bits, to nearest, ties to even.

    On the bit pattern: add ``0x7FFF`` (``bits = 8``), plus 1 when the last bit kept is odd,
    then clear the dropped bits; a carry into the exponent is exact, and one past the
    largest binade gives inf. Five passes over a fresh uint32 array (the input is never
    written); NaN inputs give garbage, so callers put them back.

    Examples
    --------
    >>> round_significand(np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8], np.float32), 8).tolist()
    [1.0, 1.015625]
    """
    drop = 24 - bits
    t = a.view(np.uint32) >> drop  # the last bit kept, at the bottom
    t &= 1
    t += (1 << (drop - 1)) - 1
    t += a.view(np.uint32)
    t &= (0xFFFFFFFF >> drop) << drop
    return t.view(np.float32).reshape(a.shape)
