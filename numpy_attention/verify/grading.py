r"""Grading a candidate's results against the suite: :func:`check_path` and :func:`check_results`.

:func:`check_path` is everything ``numpy-attention check`` does before it
prints: read the suite (or build it in memory), read the results, refuse
unusable input (:class:`~numpy_attention.verify.UnusableInput`), and grade each
(case, quantity) pair by Eq. (7.1) of ``docs/verify.md``. The
:class:`CheckReport` prints itself as a table (:meth:`CheckReport.table`) or
JSON (:meth:`CheckReport.as_json`) and gives the exit code (0 pass, 1 fail).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._validate import check_bool
from ._files import UnusableInput
from .compare import Comparison, compare_attention
from .suite import load_results, load_suite
from .tolerance import Tolerance, dtype_name, group_of, tolerance_table

__all__ = ["Row", "CheckReport", "check_results", "check_path"]


@dataclass
class Row:
    """One line of the check table: a (case, quantity) pair."""

    case: str
    quantity: str
    status: str  # PASS, FAIL, MISSING
    comparison: Comparison | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (infinities as strings)."""
        c = self.comparison
        d: dict[str, Any] = {"case": self.case, "quantity": self.quantity, "status": self.status}
        if c is not None:
            d.update(
                max_abs_error=_json_float(c.max_abs), max_rel_error=_json_float(c.max_rel),
                atol=c.atol, rtol=c.rtol, bad_elements=c.n_bad, elements=c.size,
                needed_tolerance=_json_float(c.needed),
            )  # fmt: skip
            if not c.passed:
                d.update(worst_index=list(c.worst_index), worst_where=c.where(),
                         worst_actual=_json_float(c.worst_actual),
                         worst_expected=_json_float(c.worst_desired), hints=c.hints)  # fmt: skip
                if c.shape_error:
                    d["error"] = c.shape_error
        if self.note:
            d["note"] = self.note
        return d


def _json_float(x: float) -> float | str:
    return float(x) if math.isfinite(x) else str(x)


@dataclass
class CheckReport:
    """Outcome of :func:`check_results`."""

    dtype: str
    rows: list[Row]
    missing_cases: list[str]
    unknown: list[str]
    strict: bool = False

    @property
    def counts(self) -> dict[str, int]:
        """Rows per status."""
        out = {"PASS": 0, "FAIL": 0, "MISSING": 0}
        for r in self.rows:
            out[r.status] += 1
        return out

    @property
    def passed(self) -> bool:
        """No FAIL (and, with ``strict``, nothing missing)."""
        n = self.counts
        return n["FAIL"] == 0 and not (self.strict and (n["MISSING"] or self.missing_cases))

    def exit_code(self) -> int:
        """0 if passed, 1 otherwise."""
        return 0 if self.passed else 1

    def table(self) -> str:
        """Format the human-readable table, failures explained below it."""
        head = ("case", "quantity", "max abs err", "max rel err", "atol", "rtol", "result")
        lines = [head]
        for r in self.rows:
            c = r.comparison
            if c is None:
                lines.append((r.case, r.quantity, "-", "-", "-", "-", r.status))
            else:
                lines.append((r.case, r.quantity, f"{c.max_abs:.2e}", f"{c.max_rel:.2e}",
                              f"{c.atol:.1e}", f"{c.rtol:.1e}", r.status))  # fmt: skip
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        text = [
            "  ".join(s.ljust(w) for s, w in zip(row, widths, strict=True)).rstrip()
            for row in lines
        ]
        text.insert(1, "  ".join("-" * w for w in widths))
        fails = [r for r in self.rows if r.status == "FAIL"]
        if fails:
            text.append("")
            text.append("Failures:")
            for r in fails:
                text.append(f"- {r.case}: {r.comparison}".replace("\n", "\n  "))
        for name in self.missing_cases:
            text.append(f"missing case: {name} (no results for it)")
        for name in self.unknown:
            text.append(f"ignored: {name} is not a case of the suite")
        n = self.counts
        verdict = "PASS" if self.passed else "FAIL"
        text.append(
            f"{verdict} ({self.dtype} tolerances): {n['PASS']} passed, {n['FAIL']} failed, "
            f"{n['MISSING']} missing quantities, {len(self.missing_cases)} missing cases"
            + (" (missing counts as failure: --strict)" if self.strict else "")
        )
        return "\n".join(text)

    def as_json(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "dtype": self.dtype,
            "passed": self.passed,
            "strict": self.strict,
            "counts": self.counts,
            "missing_cases": self.missing_cases,
            "unknown": self.unknown,
            "rows": [r.as_dict() for r in self.rows],
        }


def check_results(
    results: dict[str, dict[str, Any]],
    expected: dict[str, dict[str, NDArray[np.float64]]],
    *,
    dtype: str = "float32",
    tolerances: dict[str, Any] | None = None,
    unknown: list[str] | None = None,
    strict: bool = False,
) -> CheckReport:
    r"""Grade a candidate's results against the expected ones.

    Parameters
    ----------
    results : dict
        ``results[case][quantity]`` arrays (see :func:`load_results`).
    expected : dict
        ``expected[case][quantity]`` float64 arrays (see :func:`load_suite`).
    dtype : {"float64", "float32", "float16", "bfloat16"}, optional
        The dtype the candidate computed in; selects the tolerances.
    tolerances : dict, optional
        ``{"forward": {"atol", "rtol"}, "gradient": {...}}`` from a manifest;
        default the package's :data:`~numpy_attention.verify.TOLERANCES`.
    unknown : list of str, optional
        Names found in the results that are not cases (reported).
    strict : bool, optional
        Count missing cases and quantities as failures.

    Returns
    -------
    report : CheckReport

    Raises
    ------
    ValueError
        If ``dtype`` is unknown, or ``tolerances`` lacks a group or holds a
        value that is not a finite number in [0, 1].

    Notes
    -----
    Each quantity is compared by Eq. (7.1) of ``docs/verify.md``.

    Examples
    --------
    >>> exp = {"c": {"out": np.ones((1, 1, 2, 2))}}
    >>> check_results({"c": {"out": np.ones((1, 1, 2, 2))}}, exp).passed
    True
    >>> check_results({"c": {"out": np.zeros((1, 1, 2, 2))}}, exp).counts["FAIL"]
    1
    """
    dtype = dtype_name(dtype)
    table = None if tolerances is None else tolerance_table(tolerances)
    rows: list[Row] = []
    missing_cases = []
    unknown = list(unknown or [])
    for case, quantities in expected.items():
        got = results.get(case)
        if got is None:
            missing_cases.append(case)
            continue
        for quantity, desired in quantities.items():
            if quantity not in got:
                rows.append(Row(case, quantity, "MISSING", note="not in the results"))
                continue
            rows.append(_compare_one(case, quantity, got[quantity], desired, dtype, table))
        unknown.extend(f"{case}/{q}" for q in got if q not in quantities)
    return CheckReport(dtype, rows, missing_cases, unknown, strict)


def _compare_one(
    case: str,
    quantity: str,
    actual: Any,
    desired: Any,
    dtype: str,
    tolerances: dict[str, Tolerance] | None,
) -> Row:
    a = np.asarray(actual)
    if a.dtype.kind not in "fiub":
        c = Comparison(False, quantity, dtype, math.inf, math.inf, 0.0, 0.0,
                       shape_error=f"has dtype {a.dtype}, expected real numbers")  # fmt: skip
        return Row(case, quantity, "FAIL", c)
    kw: dict[str, Any] = {}
    if tolerances is not None:
        t = tolerances[group_of(quantity)]
        kw = {"atol": t.atol, "rtol": t.rtol}
    c = compare_attention(a, desired, dtype=dtype, quantity=quantity, **kw)
    return Row(case, quantity, "PASS" if c.passed else "FAIL", c)


def check_path(
    results: str | os.PathLike[str],
    suite: str | os.PathLike[str] | None = None,
    *,
    dtype: Any = "float32",
    strict: bool = False,
) -> CheckReport:
    r"""Grade the results in ``results`` against the suite in ``suite``: ``numpy-attention check``.

    Parameters
    ----------
    results : str or os.PathLike
        A directory of ``<case>.npz`` files, or one ``.npz`` with keys
        ``<case>/<quantity>`` (``docs/verify.md``, "Your results").
    suite : str or os.PathLike, optional
        The directory written by :func:`~numpy_attention.verify.write_suite`;
        None builds the suite in memory.
    dtype : {"float32", "float64", "float16", "bfloat16"}, optional
        The dtype the candidate computed in; selects the tolerances (the
        manifest's own, if it has them). Default ``"float32"``.
    strict : bool, optional
        Count missing cases and quantities as failures.

    Returns
    -------
    report : CheckReport
        ``report.table()``, ``report.as_json()``, ``report.exit_code()``.

    Raises
    ------
    UnusableInput
        Everything that makes a verdict impossible: a suite or results path
        that is empty, missing, not a directory or not a regular file; a
        malformed manifest or case file; results that are not valid ``.npz``
        files, hold Python objects, declare arrays beyond the size limits, or
        contain no case or no quantity of the suite.
    ValueError
        If ``dtype`` is not one of the four.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> man, expected = load_suite()
    >>> with tempfile.TemporaryDirectory() as d:
    ...     np.savez(pathlib.Path(d) / "plain.npz", **expected["plain"])
    ...     report = check_path(d, dtype="float64")
    >>> report.exit_code(), report.counts["PASS"], len(report.missing_cases)
    (0, 6, 67)
    """
    dtype = dtype_name(dtype)
    strict = check_bool(strict, "strict")
    man, expected = load_suite(suite)
    found, unknown = load_results(results, expected)
    if not found:
        raise UnusableInput(
            f"no case of the suite found in {results} (expected files or keys named "
            f"after the cases, e.g. '{next(iter(expected), 'plain')}')"
        )
    tolerances = (man.get("tolerances") or {}).get(dtype)
    report = check_results(found, expected, dtype=dtype, tolerances=tolerances,
                           unknown=unknown, strict=strict)  # fmt: skip
    if not any(r.comparison is not None for r in report.rows):
        raise UnusableInput(
            f"no quantity of the suite found in {results} (name arrays out, weights, lse, dq, "
            "... without the 'expected_' prefix)"
        )
    return report
