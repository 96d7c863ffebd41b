r"""Tools for checking attention implementations, ours and other people's.

- :func:`gradcheck`: compares a hand-written backward with float64 central
  finite differences and a random-direction (vector-Jacobian) check.
- :func:`assert_attention_close` / :func:`compare_attention`: compare a
  candidate's attention result with the reference under the dtype-aware
  tolerance policy (:data:`TOLERANCES`, measured in ``docs/verify.md``) and
  explain a failure: where the worst element is, as (batch, head, query,
  key or feature), and which convention difference usually causes the pattern.
- :func:`round_to_bfloat16`: emulate bfloat16 rounding in NumPy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GradcheckReport",
    "gradcheck",
    "Tolerance",
    "TOLERANCES",
    "DTYPES",
    "tolerance",
    "Comparison",
    "compare_attention",
    "assert_attention_close",
    "round_to_bfloat16",
]


@dataclass
class GradcheckReport:
    """Outcome of :func:`gradcheck`.

    Attributes
    ----------
    passed : bool
        Every checked entry and direction agreed within tolerance.
    worst_input, worst_index : str, tuple
        Where the largest violation (error minus its tolerance) occurred.
    worst_numeric, worst_analytic : float
        The finite-difference and hand-written values there.
    max_abs_error : float
        Largest ``|numeric - analytic|`` over every checked entry.
    directional : list of (float, float)
        ``(numeric, analytic)`` directional derivatives for each random direction.
    """

    passed: bool
    worst_input: str = ""
    worst_index: tuple[int, ...] = ()
    worst_numeric: float = 0.0
    worst_analytic: float = 0.0
    max_abs_error: float = 0.0
    directional: list[tuple[float, float]] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        where = f"{self.worst_input}[{', '.join(map(str, self.worst_index))}]"
        return (
            f"gradcheck {verdict}: max |numeric - analytic| = {self.max_abs_error:.3e}; "
            f"worst at {where}: numeric {self.worst_numeric:.12g}, "
            f"analytic {self.worst_analytic:.12g}; checked {self.checked}"
        )


def _grad_of(grads: Any, name: str) -> NDArray[np.floating] | None:
    """Return the analytic gradient of input ``name``, or None.

    Looked up as ``grads[name]`` (a mapping), else ``grads.d<name>`` or ``grads.d_<name>``.
    """
    if isinstance(grads, Mapping):
        return grads.get(name)
    for attr in (f"d{name}", f"d_{name}"):
        if hasattr(grads, attr):
            return getattr(grads, attr)
    return None


def gradcheck(
    fn: Callable[..., tuple[Any, Any]],
    inputs: Mapping[str, Any],
    backward: Callable[[Any, Any], Any],
    *,
    wrt: tuple[str, ...] | None = None,
    d_out: NDArray[np.floating] | None = None,
    eps: float = 1e-6,
    atol: float = 1e-7,
    rtol: float = 1e-6,
    directions: int = 3,
    max_entries: int = 2000,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradcheckReport:
    r"""Check a hand-written backward against float64 finite differences.

    The scalar loss is :math:`\mathcal{L}(x) = \sum \mathrm{out}(x) \odot G`
    for a fixed random ``G = d_out``; its gradient is what ``backward(G, cache)``
    must return.

    Parameters
    ----------
    fn : callable
        ``fn(**inputs) -> (out, cache)``, the package's forward convention.
    inputs : mapping of str to array_like
        Keyword arguments of ``fn``. Floating arrays listed in ``wrt`` are
        perturbed; everything else (bool masks, ints, None) is passed as is.
    backward : callable
        ``backward(d_out, cache) -> grads``. The gradient of input ``x`` is
        looked up as ``grads["x"]`` (a mapping), else ``grads.dx`` or ``grads.d_x``.
    wrt : tuple of str, optional
        Inputs to check. Default: every floating array input whose gradient
        is not None.
    d_out : ndarray, optional
        The upstream gradient ``G``. Default: standard normal, from ``seed``.
    eps : float, optional
        Central-difference step. Default ``1e-6``.
    atol, rtol : float, optional
        An entry passes when ``|numeric - analytic| <= atol + rtol * |numeric|``.
    directions : int, optional
        Number of random directions for the vector-Jacobian check. Default 3.
    max_entries : int, optional
        At most this many entries per input are differenced (a random sample
        beyond that); the directional check always covers every entry.
    seed : int, optional
        Seed of the random ``d_out``, directions and samples.
    raise_on_failure : bool, optional
        Raise ``AssertionError`` with the report on failure (default), or
        return the failing report.

    Returns
    -------
    report : GradcheckReport

    Raises
    ------
    AssertionError
        If a check fails and ``raise_on_failure`` is True.
    ValueError
        If ``wrt`` names an input that is missing, not floating, or has no
        analytic gradient.

    Notes
    -----
    Central differences have truncation error :math:`O(\varepsilon^2)` and
    rounding error :math:`O(u/\varepsilon)`, about ``1e-10`` relative in
    float64 with ``eps = 1e-6``; the default tolerances leave room for that
    and nothing more. Every computation is done in float64.

    Examples
    --------
    >>> from numpy_attention import attention_forward, attention_backward
    >>> rng = np.random.default_rng(0)
    >>> x = {"q": rng.normal(size=(3, 4)), "k": rng.normal(size=(5, 4)),
    ...      "v": rng.normal(size=(5, 2))}
    >>> gradcheck(attention_forward, x, attention_backward).passed
    True
    """
    rng = np.random.default_rng(seed)
    base = {n: (np.array(a, dtype=np.float64) if _is_float(a) else a) for n, a in inputs.items()}
    out, cache = fn(**base)
    out = np.asarray(out, dtype=np.float64)
    G = rng.standard_normal(out.shape) if d_out is None else np.asarray(d_out, np.float64)
    grads = backward(G, cache)
    names = _choose_wrt(base, grads, wrt)
    analytic = {n: np.asarray(_grad_of(grads, n), dtype=np.float64) for n in names}

    def loss(values: dict[str, Any]) -> float:
        return float(np.sum(np.asarray(fn(**values)[0], dtype=np.float64) * G))

    report = GradcheckReport(passed=True)
    worst = -np.inf
    for n in names:
        x = base[n]
        if analytic[n].shape != x.shape:
            raise ValueError(f"gradient of {n} has shape {analytic[n].shape}, expected {x.shape}")
        idx = np.arange(x.size)
        if x.size > max_entries:
            idx = rng.choice(x.size, size=max_entries, replace=False)
        report.checked[n] = int(idx.size)
        for flat in idx:
            numeric = _central_difference(loss, base, n, int(flat), eps)
            a = float(analytic[n].flat[flat])
            err = abs(numeric - a)
            report.max_abs_error = max(report.max_abs_error, err)
            excess = err - (atol + rtol * abs(numeric))
            if excess > worst:
                worst = excess
                report.worst_input, report.worst_numeric, report.worst_analytic = n, numeric, a
                report.worst_index = tuple(int(i) for i in np.unravel_index(flat, x.shape))
    report.passed = bool(worst <= 0)
    for _ in range(directions):
        u = {n: rng.standard_normal(base[n].shape) for n in names}
        plus = dict(base, **{n: base[n] + eps * u[n] for n in names})
        minus = dict(base, **{n: base[n] - eps * u[n] for n in names})
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        a = float(sum(np.sum(analytic[n] * u[n]) for n in names))
        report.directional.append((numeric, a))
        if abs(numeric - a) > atol * 10 + rtol * 10 * abs(numeric):
            report.passed = False
    if not report.passed and raise_on_failure:
        raise AssertionError(
            str(report) + f"; directional (numeric, analytic): {report.directional}"
        )
    return report


def _is_float(a: Any) -> bool:
    return a is not None and not np.isscalar(a) and np.asarray(a).dtype.kind == "f"


def _choose_wrt(base: Mapping[str, Any], grads: Any, wrt: tuple[str, ...] | None) -> list[str]:
    if wrt is None:
        return [n for n, a in base.items() if _is_float(a) and _grad_of(grads, n) is not None]
    for n in wrt:
        if n not in base or not _is_float(base[n]):
            raise ValueError(f"wrt names {n!r}, which is not a floating array input of fn")
        if _grad_of(grads, n) is None:
            raise ValueError(f"backward returned no gradient for input {n!r}")
    return list(wrt)


def _central_difference(
    loss: Callable[[dict[str, Any]], float], base: dict[str, Any], name: str, flat: int, eps: float
) -> float:
    """``(L(x + eps e_i) - L(x - eps e_i)) / (2 eps)`` for entry ``flat`` of input ``name``."""
    x = base[name].copy()
    values = dict(base)
    values[name] = x
    x.flat[flat] += eps
    up = loss(values)
    x.flat[flat] -= 2 * eps
    down = loss(values)
    return (up - down) / (2 * eps)


# ---------------------------------------------------------------------------
# Comparing attention results: the tolerance policy (docs/verify.md)
# ---------------------------------------------------------------------------

#: The dtypes a candidate may compute in, as named on the command line.
DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Tolerance:
    """An element passes when ``|actual - desired| <= atol * max|desired| + rtol * |desired|``.

    ``atol`` is relative to the largest finite ``|desired|`` of the array
    (its *scale*; 1 if the array is all zeros), so one policy serves arrays
    of any magnitude; ``rtol`` is elementwise as in ``numpy.testing``.
    """

    atol: float
    rtol: float


#: Tolerances per dtype, for forward quantities (``out``, ``weights``,
#: ``lse``) and for gradients (every quantity whose name starts with ``d``);
#: ``atol = rtol = t`` in each. ``t`` is the largest error (Eq. (7.2)) measured
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


def _dtype_name(dtype: Any) -> str:
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
    ValueError
        If ``dtype`` is not one of the four.

    Examples
    --------
    >>> tolerance("bfloat16", "dq") == TOLERANCES["bfloat16"]["gradient"]
    True
    """
    group = "gradient" if quantity.startswith("d") else "forward"
    return TOLERANCES[_dtype_name(dtype)][group]


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
    u = a.view(np.uint32).astype(np.uint64)
    one, bias, high = np.uint64(1), np.uint64(0x7FFF), np.uint64(0xFFFF0000)
    u = (u + bias + ((u >> np.uint64(16)) & one)) & high  # round to nearest, ties to even
    y = u.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(a), a, y).reshape(a.shape)


#: Axis names of the attention quantities, for failure messages (last axes).
_AXES = {
    "out": ("batch", "head", "query", "feature"),
    "dq": ("batch", "head", "query", "feature"),
    "dk": ("batch", "head", "key", "feature"),
    "dv": ("batch", "head", "key", "feature"),
    "weights": ("batch", "head", "query", "key"),
    "d_attn_mask": ("batch", "head", "query", "key"),
    "lse": ("batch", "head", "query"),
}


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

    def where(self) -> str:
        """Name the worst element, as ``batch 0, head 2, query 3, feature 1``."""
        return ", ".join(f"{a} {i}" for a, i in zip(self.axes, self.worst_index, strict=True))

    def __str__(self) -> str:
        if self.shape_error:
            return f"{self.quantity}: {self.shape_error}" + "".join(
                f"\n  hint: {h}" for h in self.hints
            )
        verdict = "PASS" if self.passed else "FAIL"
        text = (
            f"{self.quantity} ({self.dtype} tolerance atol={self.atol:.3g}, "
            f"rtol={self.rtol:.3g}): {verdict}; max abs error {self.max_abs:.3g}, "
            f"max rel error {self.max_rel:.3g}"
        )
        if not self.passed:
            text += (
                f"; {self.n_bad} of {self.size} elements outside tolerance; worst at "
                f"({self.where()}) index {self.worst_index}: actual {self.worst_actual!r}, "
                f"desired {self.worst_desired!r}"
            )
            text += "".join(f"\n  hint: {h}" for h in self.hints)
        return text


def _axis_names(ndim: int, axes: tuple[str, ...] | None, quantity: str) -> tuple[str, ...]:
    if axes is not None:
        if len(axes) != ndim:
            raise ValueError(f"axes names {len(axes)} axes, the arrays have {ndim}")
        return tuple(axes)
    names = _AXES.get(quantity)
    if names is None:  # a layer's quantity: (B, L, E) activations, (in, out) weights, biases
        names = {3: ("batch", "position", "feature"), 2: ("row", "column")}.get(ndim, ("index",))
    if ndim <= len(names):
        return names[len(names) - ndim :]
    return tuple(f"batch{i}" for i in range(ndim - len(names) + 1)) + names[1:]


def compare_attention(
    actual: Any,
    desired: Any,
    *,
    dtype: Any = "float64",
    quantity: str = "out",
    atol: float | None = None,
    rtol: float | None = None,
    axes: tuple[str, ...] | None = None,
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
        Override the policy (``atol`` is still relative to ``max|desired|``).
    axes : tuple of str, optional
        Names of the axes for the report. Default by quantity, e.g.
        ``(batch, head, query, feature)`` for ``out``, ``(batch, head,
        query, key)`` for ``weights``, ``(batch, head, key, feature)`` for
        ``dk``.

    Returns
    -------
    result : Comparison
        ``passed``, ``max_abs`` (``max |a - d|``), ``max_rel``
        (``max |a - d| / max |d|``), the effective ``atol`` and ``rtol``,
        ``needed`` (the smallest ``t`` with which ``atol = rtol = t`` would
        pass: the measured error of Eq. (7.2)), the worst element and
        ``hints`` naming likely causes.

    Raises
    ------
    ValueError
        If ``dtype`` is unknown or ``axes`` has the wrong length.

    Notes
    -----
    An element passes when

    .. math:: |a_i - d_i| \le \mathrm{atol}\cdot\max_j |d_j| + \mathrm{rtol}\cdot|d_i|

    (Eq. (7.1) of ``docs/verify.md``); infinities must match exactly (a fully
    masked row's ``lse`` is ``-inf``) and NaN matches only NaN.

    Examples
    --------
    >>> d = np.array([[0.5, 0.5], [0.25, 0.75]])
    >>> compare_attention(d + 1e-9, d, dtype="float32").passed
    True
    >>> c = compare_attention(0.5 * d, d, dtype="float32")
    >>> c.passed, c.worst_index
    (False, (1, 1))
    """
    name = _dtype_name(dtype)
    tol = tolerance(name, quantity)
    atol = tol.atol if atol is None else float(atol)
    rtol = tol.rtol if rtol is None else float(rtol)
    a = np.asarray(actual, dtype=np.float64)
    d = np.asarray(desired, dtype=np.float64)
    if a.shape != d.shape:
        return Comparison(
            passed=False, quantity=quantity, dtype=name, max_abs=np.inf, max_rel=np.inf,
            atol=atol, rtol=rtol, size=d.size, axes=_axis_names(d.ndim, axes, quantity),
            shape_error=f"shape {a.shape} does not match the expected {d.shape}",
            hints=_shape_hints(a.shape, d.shape),
        )  # fmt: skip
    finite = np.isfinite(d)
    scale = float(np.max(np.abs(d[finite]))) if finite.any() else 0.0
    scale = scale if scale > 0 else 1.0
    with np.errstate(invalid="ignore"):
        err = np.where(
            finite, np.abs(a - d), np.where((a == d) | (np.isnan(a) & np.isnan(d)), 0, np.inf)
        )
    err = np.where(np.isnan(err), np.inf, err)
    bound = atol * scale + rtol * np.where(finite, np.abs(d), 0.0)
    bad = err > bound
    result = Comparison(
        passed=not bool(bad.any()), quantity=quantity, dtype=name,
        max_abs=float(err.max()) if err.size else 0.0, max_rel=0.0,
        atol=atol * scale, rtol=rtol, n_bad=int(bad.sum()), size=int(d.size),
        axes=_axis_names(d.ndim, axes, quantity),
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
        result.hints = diagnose(a, d, bad, quantity)
    return result


def assert_attention_close(
    actual: Any,
    desired: Any,
    *,
    dtype: Any = "float64",
    quantity: str = "out",
    atol: float | None = None,
    rtol: float | None = None,
    axes: tuple[str, ...] | None = None,
    err_msg: str = "",
) -> None:
    r"""Assert that a candidate's attention result matches the reference.

    Like ``numpy.testing.assert_allclose``, with the tolerance chosen by the
    dtype the candidate computed in and a message that locates the worst
    element as (batch, head, query, key or feature) and names the convention
    difference that commonly causes the error pattern.

    Parameters
    ----------
    actual, desired : array_like
        Candidate and float64 reference, same shape.
    dtype : {"float64", "float32", "float16", "bfloat16"}, optional
        The dtype the candidate computed in. Default ``"float64"``.
    quantity : str, optional
        ``"out"``, ``"weights"``, ``"lse"``, or a gradient (``"dq"``, ...).
    atol, rtol : float, optional
        Override the policy's tolerances (see :func:`compare_attention`).
    axes : tuple of str, optional
        Axis names for the message.
    err_msg : str, optional
        Prepended to the failure message.

    Raises
    ------
    AssertionError
        If the shapes differ or any element is outside the tolerance.
    ValueError
        If ``dtype`` is unknown.

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
    c = compare_attention(
        actual, desired, dtype=dtype, quantity=quantity, atol=atol, rtol=rtol, axes=axes
    )
    if not c.passed:
        raise AssertionError((err_msg + "\n" if err_msg else "") + str(c))


# ---------------------------------------------------------------------------
# Diagnosis: which convention difference commonly produces this error pattern
# ---------------------------------------------------------------------------


def _shape_hints(shape_a: tuple[int, ...], shape_d: tuple[int, ...]) -> list[str]:
    hints = []
    if len(shape_a) == len(shape_d) >= 3:
        swapped = list(shape_a)
        swapped[-2], swapped[-3] = swapped[-3], swapped[-2]
        if tuple(swapped) == tuple(shape_d):
            hints.append(
                "the result looks like the (B, L, H, E) layout (JAX, FlashAttention); "
                "the suite uses (B, H, L, E): swap axes -3 and -2"
            )
    if len(shape_a) == len(shape_d) - 1 and shape_a == shape_d[:-3] + shape_d[-2:]:
        hints.append(
            "the head axis is missing: weights averaged over heads? (nn.MultiheadAttention "
            "average_attn_weights=True); pass average_attn_weights=False"
        )
    return hints


def diagnose(
    a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_], quantity: str
) -> list[str]:
    r"""Name the likely causes of a mismatch from the pattern of its errors.

    Parameters
    ----------
    a, d : ndarray
        Actual and desired values, same shape, float64.
    bad : ndarray of bool
        Elements outside the tolerance.
    quantity : str
        ``"out"``, ``"weights"``, ``"lse"``, ``"dq"``, ...

    Returns
    -------
    hints : list of str
        Human-readable diagnoses, most specific first; empty if none applies.

    Examples
    --------
    >>> d = np.full((2, 3), 0.5)
    >>> diagnose(0.75 * d, d, np.ones((2, 3), bool), "out")[0][:34]
    'actual = 0.75 x desired everywhere'
    """
    hints: list[str] = []
    finite = np.isfinite(d)
    nonfinite = ~np.isfinite(a) & finite
    if nonfinite.any():
        hints.append(
            f"{int(nonfinite.sum())} NaN/inf values where the reference is finite: an unshifted "
            "softmax (exp overflows; subtract the row max), or 0/0 in a fully masked row "
            "(the reference gives weights 0, output 0, lse -inf there)"
        )
    fully_masked = _fully_masked_rows(d, quantity)
    if fully_masked is not None and (bad & fully_masked).any() and not (bad & ~fully_masked).any():
        hints.append(
            "only rows whose every key is masked are wrong: the reference (PyTorch >= 2.5) gives "
            "output 0, weights 0 and lse -inf there; JAX and a -1e9 fill give mean(V) "
            "(softmax of equal scores)"
        )
    ok = finite & np.isfinite(a)
    dd, aa = d[ok], a[ok]
    with np.errstate(invalid="ignore"):
        return hints + _pattern_hints(a, d, aa, dd, ok, bad, quantity)


def _pattern_hints(
    a: NDArray[np.floating], d: NDArray[np.floating], aa: NDArray[np.floating],
    dd: NDArray[np.floating], ok: NDArray[np.bool_], bad: NDArray[np.bool_], quantity: str,
) -> list[str]:  # fmt: skip
    hints: list[str] = []
    if dd.size and np.dot(dd, dd) > 0:
        c = float(np.dot(aa, dd) / np.dot(dd, dd))
        resid = np.max(np.abs(aa - c * dd)) if aa.size else 0.0
        if abs(c - 1) > 1e-3 and resid <= 1e-3 * np.max(np.abs(dd)):
            hints.append(
                f"actual = {c:.4g} x desired everywhere: a uniform scale factor " + _scale_story(c)
            )
    if quantity == "weights" and a.ndim >= 2:
        hints.extend(_weight_hints(a, d, bad))
    if a.ndim >= 3:
        hints.extend(_head_hints(a, d, bad))
    if a.ndim >= 2 and quantity != "lse":
        hints.extend(_row_hints(bad, quantity))
    elif quantity == "lse" and a.ndim >= 1:
        diff = (a - d)[ok]
        if (
            diff.size
            and np.ptp(diff) < 1e-3 * max(1.0, np.max(np.abs(dd)))
            and abs(diff.mean()) > 0
        ):
            t = float(diff.mean())
            hints.append(
                f"lse is off by a constant {t:.4g}"
                + (
                    ": log base 2 instead of natural log?"
                    if np.allclose(a[ok], d[ok] / np.log(2), rtol=1e-3)
                    else ": a missing or extra constant shift (max not added back?)"
                )
            )
        elif np.allclose(a[ok], d[ok] / np.log(2), rtol=1e-3):
            hints.append("lse = desired / ln 2: base-2 log-sum-exp (Triton tutorial); report ln")
    return hints


def _scale_story(c: float) -> str:
    if abs(c * np.log(2) - 1) < 1e-3:
        return (
            "(1/ln 2: a base-2 log-sum-exp, as the Triton tutorial stores; report the natural log)"
        )
    stories = []
    if 0 < c < 1:
        stories.append(f"dropout without the 1/(1-p) rescaling (1-p = {c:.3g})")
    if c == c and c != 0 and abs(c + 1) < 1e-3:
        return "(a sign error in the backward)"
    stories.append(
        "a gradient summed or averaged one time too many (e.g. over GQA groups or heads)"
    )
    return "(" + "; or ".join(stories) + ")"


def _fully_masked_rows(d: NDArray[np.floating], quantity: str) -> NDArray[np.bool_] | None:
    if quantity == "lse":
        return np.isneginf(d)
    if quantity in ("weights", "out") and d.ndim >= 2:
        return np.broadcast_to(np.all(d == 0, axis=-1, keepdims=True), d.shape)
    return None


def _weight_hints(
    a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_]
) -> list[str]:
    hints = []
    rows = a.sum(axis=-1)
    live = d.sum(axis=-1) > 0.5
    if live.any() and not np.allclose(rows[live], 1.0, atol=1e-2):
        cols = a.sum(axis=-2)
        if np.allclose(cols[np.isfinite(cols)], 1.0, atol=1e-2):
            hints.append(
                "columns of the weights sum to 1, rows do not: softmax over the query "
                "axis instead of the key axis"
            )
        else:
            hints.append("rows of the weights do not sum to 1")
    extra = bad & (d == 0) & (a != 0)
    missing = bad & (d != 0) & (a == 0)
    L, S = a.shape[-2:]
    for what, where in (
        ("attends to keys the reference masks", extra),
        ("masks keys the reference attends to", missing),
    ):
        pos = np.argwhere(where.reshape(-1, L, S).any(axis=0))
        if pos.size:
            offsets = sorted(set((pos[:, 1] - pos[:, 0]).tolist()))
            if len(offsets) <= 2:
                diag = ", ".join(f"j = i {'+-'[o < 0]} {abs(o)}" for o in offsets)
                hints.append(
                    f"{what}, on the diagonal {diag}: a causal mask off by one (j < i vs j <= i) "
                    "or the other causal alignment (top-left offset 0, bottom-right "
                    f"S - L = {S - L})"
                )
            else:
                hints.append(
                    f"{what}: inverted mask polarity (True = attend here), "
                    "a wrong causal alignment or a missing mask"
                )
    return hints


def _head_hints(
    a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_]
) -> list[str]:
    H = a.shape[-3]
    if H < 2:
        return []
    ah = np.moveaxis(a, -3, 0).reshape(H, -1)
    dh = np.moveaxis(d, -3, 0).reshape(H, -1)
    ok = np.all(np.isfinite(ah), axis=0) & np.all(np.isfinite(dh), axis=0)
    ah, dh = ah[:, ok], dh[:, ok]
    if ah.shape[1] == 0:
        return []
    tol = 1e-2 * max(float(np.max(np.abs(dh))) if dh.size else 1.0, 1e-300)
    match = np.array([[np.max(np.abs(ah[i] - dh[j])) <= tol for j in range(H)] for i in range(H)])
    if not match.diagonal().all() and match.any(axis=1).all():
        perm = [int(np.argmax(match[i])) for i in range(H)]
        return [
            f"heads are permuted: actual head h equals desired head {perm} for h = 0..{H - 1}: "
            "GQA/MQA key-value heads repeated in tile order (0,1,0,1) instead of "
            "repeat_interleave (0,0,1,1), or a (B, L, H, E) layout read as (B, H, L, E)"
        ]
    bad_heads = np.flatnonzero(np.moveaxis(bad, -3, 0).reshape(H, -1).any(axis=1))
    if 0 < bad_heads.size < H:
        return [
            f"only heads {bad_heads.tolist()} of {H} are wrong (with GQA, key/value heads "
            "repeated in tile order instead of repeat_interleave leave exactly the heads "
            "where both orders agree right)"
        ]
    return []


def _row_hints(bad: NDArray[np.bool_], quantity: str) -> list[str]:
    axis = -2
    n = bad.shape[axis]
    rows = np.flatnonzero(np.moveaxis(bad, axis, 0).reshape(n, -1).any(axis=1))
    if 0 < rows.size < n:
        name = (
            "query"
            if quantity in ("out", "weights", "dq")
            else "key"
            if quantity in ("dk", "dv")
            else "row"
        )
        return [
            f"only {name} positions {rows.tolist()[:12]} of {n} are wrong (in every batch and "
            "head that fails): typical of causal alignment (top-left vs bottom-right), a "
            "padding mask on the wrong side, or an edge case in the first/last rows"
        ]
    return []
