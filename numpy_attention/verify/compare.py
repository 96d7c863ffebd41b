r"""Comparing a candidate's attention result with the reference under the tolerance policy.

:func:`compare_attention` measures (Eqs. (7.1) and (7.2) of ``docs/verify.md``)
and explains: where the worst element is, as (batch, head, query, key or
feature), and, through :mod:`numpy_attention.verify.diagnosis`, which
convention difference usually causes the pattern. :func:`assert_attention_close`
raises on a failure, like ``numpy.testing.assert_allclose``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._validate import check_real
from .diagnosis import axis_names, diagnose, shape_hints
from .precision import LOW_PRECISION, UNIT_ROUNDOFF, baseline_factor
from .tolerance import dtype_name, tolerance

__all__ = ["Comparison", "compare_attention", "assert_attention_close"]


@dataclass
class Comparison:
    """Outcome of :func:`compare_attention` (see its docstring)."""

    passed: bool
    quantity: str
    dtype: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    n_bad: int = 0
    size: int = 0
    needed: float = 0.0
    worst_index: tuple[int, ...] = ()
    worst_actual: float = 0.0
    worst_desired: float = 0.0
    axes: tuple[str, ...] = ()
    hints: list[str] = field(default_factory=list)
    shape_error: str = ""
    cosine: float = float("nan")
    policy: str = "absolute"
    baseline: float | None = None

    @property
    def mismatch(self) -> float:
        """Fraction of the elements outside the tolerance (``n_bad / size``)."""
        return self.n_bad / self.size if self.size else 0.0

    def where(self) -> str:
        """Name the worst element, as ``batch 0, head 2, query 3, feature 1``."""
        if len(self.worst_index) != len(self.axes):  # a shape mismatch has no worst element
            return ""
        return ", ".join(f"{a} {i}" for a, i in zip(self.axes, self.worst_index, strict=True))

    def __str__(self) -> str:
        if self.shape_error:
            return f"{self.quantity}: {self.shape_error}" + "".join(
                f"\n  hint: {h}" for h in self.hints
            )
        verdict = "PASS" if self.passed else "FAIL"
        if self.baseline is None:
            rule = f"{self.dtype} tolerance atol={self.atol:.3g}, rtol={self.rtol:.3g}"
        else:
            k = baseline_factor(self.quantity)
            rule = (f"{self.dtype} baseline: error <= {self.atol:.3g} = {k:g} x "
                    f"{self.baseline:.3g} + u max|desired|")  # fmt: skip
        text = (
            f"{self.quantity} ({rule}): {verdict}; max abs error {self.max_abs:.3g}, "
            f"max rel error {self.max_rel:.3g}, cosine {self.cosine:.6f}"
        )
        if not self.passed:
            text += (
                f"; {self.n_bad} of {self.size} elements outside tolerance; worst at "
                f"({self.where()}) index {self.worst_index}: actual {self.worst_actual!r}, "
                f"desired {self.worst_desired!r}"
            )
            text += "".join(f"\n  hint: {h}" for h in self.hints)
        return text


def compare_attention(
    actual: Any,
    desired: Any,
    *,
    dtype: Any = "float64",
    quantity: str = "out",
    atol: float | None = None,
    rtol: float | None = None,
    axes: tuple[str, ...] | None = None,
    baseline: float | None = None,
    context: dict[str, Any] | None = None,
    magnitude: float | None = None,
) -> Comparison:
    r"""Compare an attention result with the reference; never raises on a mismatch.

    Parameters
    ----------
    actual : array_like
        The candidate's result (any real dtype; compared in float64).
    desired : array_like
        The float64 reference.
    dtype : str, optional
        The dtype the candidate computed in; selects the tolerance.
    quantity : str, optional
        ``"out"``, ``"weights"``, ``"lse"``, ``"dq"``, ... (selects forward
        or gradient tolerances, and some diagnoses).
    atol, rtol : float, optional
        Override the policy (``atol`` is still relative to ``max|desired|``);
        finite and >= 0.
    axes : tuple of str, optional
        Names of the axes for the report. Default by quantity, e.g.
        ``(batch, head, query, feature)`` for ``out``, ``(batch, head,
        query, key)`` for ``weights``, ``(batch, head, key, feature)`` for
        ``dk``.
    baseline : float, optional
        The largest error of a naive implementation in ``dtype`` against the
        float64 truth (the suite stores it per case, see
        :func:`~numpy_attention.verify.precision.baseline_errors`). Given, and
        ``dtype`` is float16 or bfloat16, the baseline policy replaces the
        tolerance: an element passes when
        ``|cand - ref| <= xi err_naive + u max|ref|`` (Eq. (7.3): ``cand``
        is ``actual``, ``ref`` is ``desired``, ``err_naive`` this baseline,
        ``xi`` from :data:`~numpy_attention.verify.precision.BASELINE_FACTORS`,
        ``u`` the unit roundoff, the bound capped at ``max|ref|``). Ignored for
        float32 and float64, which the absolute policy judges.
    context : dict, optional
        The case's constants for the hints (scale, ``E``, ``dropout_p``,
        ``G``: :func:`~numpy_attention.verify.diagnosis.case_context`).
    magnitude : float, optional
        A size the absolute term (and the baseline's cap) is relative to at
        least: ``max(max |desired|, magnitude)`` replaces ``max |desired|`` in
        Eqs. (7.1) and (7.3). The oracle passes a fraction of the gradient's
        terms (Eq. (7.4), :func:`~numpy_attention.verify.callables.gradient_terms`)
        where the gradient cancels to far less than them.

    Returns
    -------
    result : Comparison
        ``passed``, ``max_abs`` (``max |a - d|``), ``max_rel``
        (``max |a - d| / max |d|``), the effective ``atol`` and ``rtol``,
        ``needed`` (the smallest ``t`` with which ``atol = rtol = t`` would
        pass: the measured error of Eq. (7.2)), the worst element,
        ``hints`` naming likely causes, ``cosine`` (cosine similarity of
        the finite entries) and ``mismatch`` (fraction of elements outside
        the tolerance).

    Raises
    ------
    TypeError
        If ``actual`` or ``desired`` is not real (complex, strings, objects),
        ``quantity`` is not a string, or ``atol``/``rtol`` not a real number.
    ValueError
        If ``dtype`` is unknown, ``axes`` has the wrong length, or ``atol``
        or ``rtol`` is NaN, infinite or negative.

    Notes
    -----
    An element passes when

    .. math:: |\mathrm{cand}_\iota - \mathrm{ref}_\iota| \le
       \mathrm{atol}\cdot\max_{\iota'} |\mathrm{ref}_{\iota'}|
       + \mathrm{rtol}\cdot|\mathrm{ref}_\iota|

    (Eq. (7.1) of ``docs/verify.md``: ``cand`` is ``actual``, ``ref`` is
    ``desired``, ``iota`` an entry); infinities must match exactly (a fully
    masked row's ``lse`` is ``-inf``) and NaN matches only NaN. For ``lse``
    the maximum is at least 1: ``lse = m + log l``, and the relative round-off
    of ``l`` is an absolute error of ``lse``.

    Examples
    --------
    >>> d = np.array([[0.5, 0.5], [0.25, 0.75]])
    >>> compare_attention(d + 1e-9, d, dtype="float32").passed
    True
    >>> c = compare_attention(0.5 * d, d, dtype="float32")
    >>> c.passed, c.worst_index
    (False, (1, 1))
    """
    name = dtype_name(dtype)
    tol = tolerance(name, quantity)
    atol = tol.atol if atol is None else check_real(atol, "atol", low=0.0)
    rtol = tol.rtol if rtol is None else check_real(rtol, "rtol", low=0.0)
    a, d = _real(actual, "actual"), _real(desired, "desired")
    names = axis_names(d.ndim, axes, quantity)
    if a.shape != d.shape:  # decided from the shapes alone: nothing is converted or read
        return Comparison(
            passed=False, quantity=quantity, dtype=name, max_abs=np.inf, max_rel=np.inf,
            atol=atol, rtol=rtol, size=d.size, axes=names,
            shape_error=f"shape {a.shape} does not match the expected {d.shape}",
            hints=shape_hints(a.shape, d.shape),
        )  # fmt: skip
    a, d = a.astype(np.float64, copy=False), d.astype(np.float64, copy=False)
    if baseline is not None and name in LOW_PRECISION:
        b = check_real(baseline, "baseline", low=0.0)
        return _measure(a, d, name, quantity, 0.0, 0.0, names, b, context, magnitude)
    return _measure(a, d, name, quantity, atol, rtol, names, None, context, magnitude)


def _real(x: Any, name: str) -> NDArray[Any]:
    """``x`` as an array of real numbers (bool, int or float), not yet converted."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        why = ": compare the real and imaginary parts separately" if a.dtype.kind == "c" else ""
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}{why}")
    return a


def _measure(
    a: NDArray[np.float64], d: NDArray[np.float64], dtype: str, quantity: str, atol: float,
    rtol: float, axes: tuple[str, ...], baseline: float | None = None,
    context: dict[str, Any] | None = None, magnitude: float | None = None,
) -> Comparison:  # fmt: skip
    """Eq. (7.1) (or (7.3)) elementwise, Eq. (7.2) for ``needed``, the worst element, hints."""
    finite = np.isfinite(d)
    scale = float(np.max(np.abs(d[finite]))) if finite.any() else 0.0
    if magnitude is not None:  # at least a fraction of the terms the quantity sums (Eq. (7.4))
        scale = max(scale, check_real(magnitude, "magnitude", low=0.0))
    if quantity == "lse":  # log(l): l's relative round-off u is an absolute u in lse (Eq. (7.1))
        scale = max(scale, 1.0)
    scale = scale if scale > 0 else 1.0
    if baseline is not None:  # Eq. (7.3): one absolute bound, at most the quantity's scale
        bound_b = baseline_factor(quantity) * baseline + UNIT_ROUNDOFF[dtype] * scale
        atol = min(bound_b, scale) / scale
    with np.errstate(invalid="ignore"):
        err = np.where(
            finite, np.abs(a - d), np.where((a == d) | (np.isnan(a) & np.isnan(d)), 0, np.inf)
        )
    err = np.where(np.isnan(err), np.inf, err)
    bound = atol * scale + rtol * np.where(finite, np.abs(d), 0.0)
    bad = err > bound
    result = Comparison(
        passed=not bool(bad.any()), quantity=quantity, dtype=dtype,
        max_abs=float(err.max()) if err.size else 0.0, max_rel=0.0,
        atol=atol * scale, rtol=rtol, n_bad=int(bad.sum()), size=int(d.size), axes=axes,
        cosine=_cosine(a, d), policy="absolute" if baseline is None else "baseline",
        baseline=baseline,
    )  # fmt: skip
    result.max_rel = result.max_abs / scale
    with np.errstate(invalid="ignore"):
        need = err / (scale + np.where(finite, np.abs(d), 0.0))
    result.needed = float(np.max(need)) if need.size else 0.0
    if err.size:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(bound > 0, err / bound, np.where(err > 0, np.inf, 0.0))
        flat = int(np.argmax(ratio))
        result.worst_index = tuple(int(i) for i in np.unravel_index(flat, d.shape))
        result.worst_actual = float(a.flat[flat])
        result.worst_desired = float(d.flat[flat])
    if not result.passed:
        result.hints = diagnose(a, d, bad, quantity, axes, context)
    return result


def _cosine(a: NDArray[np.float64], d: NDArray[np.float64]) -> float:
    """Cosine similarity of the entries finite in both (1 if both are all zero)."""
    ok = np.isfinite(a) & np.isfinite(d)
    x, y = a[ok], d[ok]
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0 or ny == 0:
        return 1.0 if nx == ny else 0.0
    return float(np.clip(np.dot(x / nx, y / ny), -1.0, 1.0))


def assert_attention_close(actual: Any, desired: Any, *, err_msg: str = "", **kwargs: Any) -> None:
    r"""Assert that a candidate's attention result matches the reference.

    Like ``numpy.testing.assert_allclose``, with the tolerance chosen by the
    dtype the candidate computed in and a message that locates the worst
    element as (batch, head, query, key or feature) and names the convention
    difference that commonly causes the error pattern.

    Parameters
    ----------
    actual, desired : array_like
        Candidate and float64 reference, same shape.
    err_msg : str, optional
        Prepended to the failure message.
    **kwargs
        ``dtype``, ``quantity``, ``atol``, ``rtol``, ``axes``: as
        :func:`compare_attention`, which judges the pair.

    Raises
    ------
    AssertionError
        If the shapes differ or any element is outside the tolerance.
    TypeError, ValueError
        For the arguments :func:`compare_attention` refuses (an unknown
        ``dtype``, complex arrays, NaN or infinite ``atol``/``rtol``, ...).

    Notes
    -----
    The criterion is Eq. (7.1) of ``docs/verify.md``; the default tolerances
    come from :data:`TOLERANCES`.

    Examples
    --------
    >>> from numpy_attention.attention import attention_forward
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.normal(size=(1, 2, 4, 8)) for _ in range(3))
    >>> out, cache = attention_forward(q, k, v)
    >>> out32, _ = attention_forward(q.astype(np.float32), k.astype(np.float32),
    ...                              v.astype(np.float32))
    >>> assert_attention_close(out32, out, dtype="float32")
    >>> assert_attention_close(out32[:, ::-1], out, dtype="float32")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: out (float32 tolerance ...
    """
    c = compare_attention(actual, desired, **kwargs)
    if not c.passed:
        raise AssertionError((err_msg + "\n" if err_msg else "") + str(c))
