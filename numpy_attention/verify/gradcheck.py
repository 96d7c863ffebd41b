r"""Finite-difference checking of hand-written backward passes: :func:`gradcheck`.

The scalar loss is :math:`\mathcal{L}(x) = \sum \mathrm{out}(x) \odot G` for a
fixed random ``G``; :func:`gradcheck` compares each entry of the analytic
gradient ``backward(G, cache)`` with float64 central differences of
:math:`\mathcal{L}`, and the gradient's projection on random directions with
directional differences. A NaN anywhere (in the loss, the differences or the
analytic gradient) is a failure, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._validate import check_bool, check_grad, check_int, check_real

__all__ = ["GradcheckReport", "gradcheck"]


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
        Central-difference step, finite and > 0. Default ``1e-6``.
    atol, rtol : float, optional
        An entry passes when ``|numeric - analytic| <= atol + rtol * |numeric|``
        (both finite and >= 0); a NaN on either side fails.
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
    TypeError
        If ``eps``, ``atol``, ``rtol`` are not real numbers, ``directions`` or
        ``max_entries`` not integers, ``raise_on_failure`` not a bool.
    ValueError
        If ``eps`` is not finite and > 0, ``atol`` or ``rtol`` not finite and
        >= 0, ``max_entries < 1``, ``d_out`` not of the output's shape; if
        ``wrt`` names an input that is missing, not floating, or has no
        analytic gradient, or there is no input to check at all.

    Notes
    -----
    Central differences have a truncation error of the order of ``eps**2`` and
    a rounding error of the order of ``u / eps`` (``u`` the unit roundoff),
    about ``1e-10`` relative in float64 with ``eps = 1e-6``; the default
    tolerances leave room for that and nothing more. Every computation is done in float64.

    Examples
    --------
    >>> from numpy_attention import attention_forward, attention_backward
    >>> rng = np.random.default_rng(0)
    >>> x = {"q": rng.normal(size=(3, 4)), "k": rng.normal(size=(5, 4)),
    ...      "v": rng.normal(size=(5, 2))}
    >>> gradcheck(attention_forward, x, attention_backward).passed
    True
    """
    eps = check_real(eps, "eps", low=0.0, low_open=True)
    atol, rtol = check_real(atol, "atol", low=0.0), check_real(rtol, "rtol", low=0.0)
    directions = check_int(directions, "directions")
    max_entries = check_int(max_entries, "max_entries", minimum=1)
    raise_on_failure = check_bool(raise_on_failure, "raise_on_failure")
    rng = np.random.default_rng(seed)
    base = {n: (np.array(a, dtype=np.float64) if _is_float(a) else a) for n, a in inputs.items()}
    out, cache = fn(**base)
    out = np.asarray(out, dtype=np.float64)
    G = (
        rng.standard_normal(out.shape)
        if d_out is None
        else check_grad(d_out, "d_out", out.shape, np.dtype(np.float64))
    )
    grads = backward(G, cache)
    names = _choose_wrt(base, grads, wrt)
    analytic = {n: np.asarray(_grad_of(grads, n), dtype=np.float64) for n in names}

    def loss(values: dict[str, Any]) -> float:
        return float(np.sum(np.asarray(fn(**values)[0], dtype=np.float64) * G))

    report = GradcheckReport(passed=True)
    _check_entries(report, loss, base, analytic, eps, atol, rtol, max_entries, rng)
    _check_directions(report, loss, base, analytic, eps, atol, rtol, directions, rng)
    if not report.passed and raise_on_failure:
        raise AssertionError(
            str(report) + f"; directional (numeric, analytic): {report.directional}"
        )
    return report


def _check_entries(
    report: GradcheckReport, loss: Callable[[dict[str, Any]], float], base: dict[str, Any],
    analytic: dict[str, NDArray[np.float64]], eps: float, atol: float, rtol: float,
    max_entries: int, rng: np.random.Generator,
) -> None:  # fmt: skip
    """Central differences on each entry (a sample beyond ``max_entries``); NaN or inf fails."""
    worst = -math.inf
    for n, g in analytic.items():
        x = base[n]
        if g.shape != x.shape:
            raise ValueError(f"gradient of {n} has shape {g.shape}, expected {x.shape}")
        idx = np.arange(x.size)
        if x.size > max_entries:
            idx = rng.choice(x.size, size=max_entries, replace=False)
        report.checked[n] = int(idx.size)
        for flat in idx:
            numeric = _central_difference(loss, base, n, int(flat), eps)
            a = float(g.flat[flat])
            finite = math.isfinite(numeric) and math.isfinite(a)  # NaN or inf never agrees
            err = abs(numeric - a) if finite else math.inf
            report.max_abs_error = max(report.max_abs_error, err)
            excess = err - (atol + rtol * abs(numeric)) if finite else math.inf
            if excess > worst:
                worst = excess
                report.worst_input, report.worst_numeric, report.worst_analytic = n, numeric, a
                report.worst_index = tuple(int(i) for i in np.unravel_index(flat, x.shape))
    report.passed = bool(worst <= 0)


def _check_directions(
    report: GradcheckReport, loss: Callable[[dict[str, Any]], float], base: dict[str, Any],
    analytic: dict[str, NDArray[np.float64]], eps: float, atol: float, rtol: float,
    directions: int, rng: np.random.Generator,
) -> None:  # fmt: skip
    """Directional derivatives along random directions, 10 times looser; NaN or inf fails."""
    names = list(analytic)
    for _ in range(directions):
        u = {n: rng.standard_normal(base[n].shape) for n in names}
        plus = dict(base, **{n: base[n] + eps * u[n] for n in names})
        minus = dict(base, **{n: base[n] - eps * u[n] for n in names})
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        a = float(sum(np.sum(analytic[n] * u[n]) for n in names))
        report.directional.append((numeric, a))
        finite = math.isfinite(numeric) and math.isfinite(a)
        if not (finite and abs(numeric - a) <= atol * 10 + rtol * 10 * abs(numeric)):
            report.passed = False


def _is_float(a: Any) -> bool:
    return a is not None and not np.isscalar(a) and np.asarray(a).dtype.kind == "f"


def _choose_wrt(base: Mapping[str, Any], grads: Any, wrt: tuple[str, ...] | None) -> list[str]:
    if wrt is None:
        names = [n for n, a in base.items() if _is_float(a) and _grad_of(grads, n) is not None]
        if not names:
            raise ValueError("no floating array input of fn has a gradient: nothing to check")
        return names
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
