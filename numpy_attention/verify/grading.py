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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._validate import check_bool
from ._files import UnusableInput
from .compare import Comparison, compare_attention
from .diagnosis import axis_names, case_context, case_hints, n_specific
from .gaps import Gap, parse_gaps, read_gaps
from .precision import LOW_PRECISION, POLICIES
from .suite import MAX_SUITE_BYTES, load_results, load_suite
from .tolerance import Tolerance, dtype_name, group_of, tolerance_table

__all__ = [
    "Row",
    "CheckReport",
    "check_results",
    "check_path",
    "manifest_baselines",
    "manifest_contexts",
]


@dataclass
class Row:
    """One line of the check table: a (case, quantity) pair."""

    case: str
    quantity: str
    status: str  # PASS, FAIL, MISSING, N/A (a declared gap)
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
                needed_tolerance=_json_float(c.needed), cosine=_json_float(c.cosine),
                mismatch=c.mismatch, policy=c.policy,
            )  # fmt: skip
            if c.baseline is not None:
                d["baseline_error"] = c.baseline
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
    policy: str = "absolute"
    gap_cases: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Rows per status (``N/A``: declared gaps)."""
        out = {"PASS": 0, "FAIL": 0, "MISSING": 0, "N/A": 0}
        for r in self.rows:
            out[r.status] += 1
        return out

    @property
    def passed(self) -> bool:
        """No FAIL (and, with ``strict``, nothing missing that is not a declared gap)."""
        n = self.counts
        return n["FAIL"] == 0 and not (self.strict and (n["MISSING"] or self.missing_cases))

    def exit_code(self) -> int:
        """0 if passed, 1 otherwise."""
        return 0 if self.passed else 1

    def table(self) -> str:
        """Format the human-readable table, failures explained below it."""
        head = ("case", "quantity", "max abs err", "max rel err", "atol", "rtol", "cosine",
                "mismatch", "result")  # fmt: skip
        lines = [head]
        for r in self.rows:
            c = r.comparison
            if c is None:
                lines.append((r.case, r.quantity, "-", "-", "-", "-", "-", "-", r.status))
            else:
                lines.append((r.case, r.quantity, f"{c.max_abs:.2e}", f"{c.max_rel:.2e}",
                              f"{c.atol:.1e}", f"{c.rtol:.1e}", f"{c.cosine:.6f}",
                              f"{c.mismatch:.1%}", r.status))  # fmt: skip
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
        for name in self.gap_cases:
            text.append(f"not applicable: {name} (a declared gap)")
        for name in self.unknown:
            text.append(f"ignored: {name} is not a case of the suite")
        n = self.counts
        verdict = "PASS" if self.passed else "FAIL"
        rule = f"{self.dtype} baseline" if self._baseline_used() else f"{self.dtype} tolerances"
        gaps = f", {n['N/A']} not applicable" if n["N/A"] or self.gap_cases else ""
        text.append(
            f"{verdict} ({rule}): {n['PASS']} passed, {n['FAIL']} failed, "
            f"{n['MISSING']} missing quantities, {len(self.missing_cases)} missing cases{gaps}"
            + (" (missing counts as failure: --strict)" if self.strict else "")
        )
        return "\n".join(text)

    def _baseline_used(self) -> bool:
        return any(r.comparison is not None and r.comparison.policy == "baseline"
                   for r in self.rows)  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "dtype": self.dtype,
            "policy": self.policy,
            "passed": self.passed,
            "strict": self.strict,
            "counts": self.counts,
            "missing_cases": self.missing_cases,
            "not_applicable_cases": self.gap_cases,
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
    policy: str = "baseline",
    baselines: dict[str, Any] | None = None,
    contexts: dict[str, dict[str, Any]] | None = None,
    gaps: Any = None,
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
        Count missing cases and quantities as failures (declared gaps excepted).
    policy : {"baseline", "absolute"}, optional
        ``"baseline"`` (default): float16 and bfloat16 quantities that have a
        baseline in ``baselines`` are judged by Eq. (7.3), everything else by
        the absolute policy, Eq. (7.1); ``"absolute"``: Eq. (7.1) throughout.
    baselines : dict, optional
        ``baselines[case][dtype][quantity]``: the errors of a naive
        implementation in ``dtype`` (a manifest's ``baseline_error``).
    contexts : dict, optional
        ``contexts[case]``: the case's constants for the hints
        (:func:`~numpy_attention.verify.diagnosis.case_context`).
    gaps : list, optional
        Declared gaps (:class:`~numpy_attention.verify.gaps.Gap` or their
        JSON form): reported ``N/A`` when absent from the results.

    Returns
    -------
    report : CheckReport

    Raises
    ------
    ValueError
        If ``dtype`` or ``policy`` is unknown, or ``tolerances`` lacks a group
        or holds a value that is not a finite number in [0, 1].

    Notes
    -----
    Each quantity is compared by Eq. (7.1) or Eq. (7.3) of ``docs/verify.md``.

    Examples
    --------
    >>> exp = {"c": {"out": np.ones((1, 1, 2, 2))}}
    >>> check_results({"c": {"out": np.ones((1, 1, 2, 2))}}, exp).passed
    True
    >>> check_results({"c": {"out": np.zeros((1, 1, 2, 2))}}, exp).counts["FAIL"]
    1
    """
    dtype = dtype_name(dtype)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    table = None if tolerances is None else tolerance_table(tolerances)
    declared = parse_gaps(list(gaps or []))
    rows: list[Row] = []
    missing_cases: list[str] = []
    gap_cases: list[str] = []
    unknown = list(unknown or [])
    for case, quantities in expected.items():
        got = results.get(case)
        if got is None:
            (gap_cases if any(g.covers(case) for g in declared) else missing_cases).append(case)
            continue
        b = ((baselines or {}).get(case) or {}).get(dtype) if policy == "baseline" else None
        ctx = (contexts or {}).get(case) or {}
        case_rows = [_row(case, q, got, d, dtype, table, b, ctx, declared)
                     for q, d in quantities.items()]  # fmt: skip
        _add_case_hints(case_rows, ctx)
        rows.extend(case_rows)
        unknown.extend(f"{case}/{q}" for q in got if q not in quantities)
    return CheckReport(dtype, rows, missing_cases, unknown, strict, policy, gap_cases)


def _row(
    case: str, quantity: str, got: dict[str, Any], desired: Any, dtype: str,
    table: dict[str, Tolerance] | None, baselines: dict[str, Any] | None,
    ctx: dict[str, Any], declared: list[Gap],
) -> Row:  # fmt: skip
    """One (case, quantity) row: compared, missing, or a declared gap."""
    if quantity not in got:
        gap = next((g for g in declared if g.covers(case, quantity)), None)
        if gap is not None:
            return Row(case, quantity, "N/A", note=f"declared gap: {gap.reason}")
        return Row(case, quantity, "MISSING", note="not in the results")
    b = (baselines or {}).get(quantity)
    return _compare_one(case, quantity, got[quantity], desired, dtype, table, b, ctx)


def _add_case_hints(rows: list[Row], ctx: dict[str, Any]) -> None:
    """Put the case's hints on its first failing row, after that row's own specific hints.

    The case's hints are those from which quantities fail (:func:`case_hints`),
    then the specific hints of its other failing rows, the weights' first
    (they show most convention differences).
    """
    failing = [r for r in rows if r.status == "FAIL" and r.comparison is not None]
    if not failing or failing[0].comparison is None or failing[0].comparison.shape_error:
        return
    hints = case_hints({r.quantity: r.status for r in rows}, ctx)
    for r in sorted(failing[1:], key=lambda r: r.quantity != "weights"):
        if r.comparison is not None:
            hints += r.comparison.hints[: n_specific(r.comparison.hints)]
    c = failing[0].comparison
    at = n_specific(c.hints)
    new = [h for h in dict.fromkeys(hints) if h not in c.hints]
    c.hints[at:at] = new


def _compare_one(
    case: str, quantity: str, actual: Any, desired: Any, dtype: str,
    tolerances: dict[str, Tolerance] | None, baseline: Any = None,
    ctx: dict[str, Any] | None = None,
) -> Row:  # fmt: skip
    a = np.asarray(actual)
    if a.dtype.kind not in "fiub":
        c = Comparison(False, quantity, dtype, math.inf, math.inf, 0.0, 0.0,
                       shape_error=f"has dtype {a.dtype}, expected real numbers")  # fmt: skip
        return Row(case, quantity, "FAIL", c)
    kw: dict[str, Any] = {}
    if tolerances is not None:
        t = tolerances[group_of(quantity)]
        kw = {"atol": t.atol, "rtol": t.rtol}
    if baseline is not None and dtype in LOW_PRECISION:
        kw["baseline"] = baseline
    kind = (ctx or {}).get("kind", "sdpa")
    axes = axis_names(np.ndim(desired), None, quantity, kind)
    c = compare_attention(a, desired, dtype=dtype, quantity=quantity, axes=axes,
                          context=ctx, **kw)  # fmt: skip
    return Row(case, quantity, "PASS" if c.passed else "FAIL", c)


def manifest_baselines(man: dict[str, Any]) -> dict[str, Any]:
    """Return ``baselines[case][dtype][quantity]`` from a (checked) manifest.

    Examples
    --------
    >>> man, _ = load_suite()
    >>> manifest_baselines(man)["plain"]["bfloat16"]["out"] > 0
    True
    """
    return {e["name"]: e.get("baseline_error") or {} for e in man.get("cases", [])}


def manifest_contexts(man: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return each case's :func:`~numpy_attention.verify.diagnosis.case_context`.

    Examples
    --------
    >>> man, _ = load_suite()
    >>> manifest_contexts(man)["mqa"]["G"]
    4
    """
    return {e["name"]: case_context(e) for e in man.get("cases", [])}


def _refuse_undeclared_dtype(man: dict[str, Any], found: Mapping[str, Any], dtype: str) -> None:
    """Refuse to judge a user-sized case in a dtype its config did not name (no baseline)."""
    for e in man["cases"]:
        flags = e.get("flags")
        named = flags.get("dtypes") if isinstance(flags, dict) else None
        if e["name"] in found and isinstance(named, list) and dtype not in named:
            raise UnusableInput(
                f"case {e['name']!r} was written for the dtypes {named!r} (its config's "
                f"'dtypes'), so it has no {dtype} baseline; write it again with {dtype!r} in "
                "its dtypes, or check with --policy absolute"
            )


def check_path(
    results: str | os.PathLike[str],
    suite: str | os.PathLike[str] | None = None,
    *,
    dtype: Any = "float32",
    strict: bool = False,
    policy: str = "baseline",
    max_bytes: int = MAX_SUITE_BYTES,
) -> CheckReport:
    r"""Grade the results in ``results`` against the suite in ``suite``: ``numpy-attention check``.

    Parameters
    ----------
    results : str or os.PathLike
        A directory of ``<case>.npz`` files, or one ``.npz`` with keys
        ``<case>/<quantity>`` (``docs/verify.md``, "Your results"); its
        declared gaps are read from ``gaps.json`` in the directory, or the
        key ``gaps`` of the ``.npz``.
    suite : str or os.PathLike, optional
        The directory written by :func:`~numpy_attention.verify.write_suite`;
        None builds the suite in memory.
    dtype : {"float32", "float64", "float16", "bfloat16"}, optional
        The dtype the candidate computed in; selects the tolerances (the
        manifest's own, if it has them). Default ``"float32"``.
    strict : bool, optional
        Count missing cases and quantities as failures, except declared gaps.
    policy : {"baseline", "absolute"}, optional
        See :func:`check_results`. Default ``"baseline"``.
    max_bytes : int, optional
        The most bytes of expected arrays the suite may declare (default 256 MiB,
        ``MAX_SUITE_BYTES``; ``--max-mib``): see :func:`load_suite`. Results
        are read only at the expected shapes.

    Returns
    -------
    report : CheckReport
        ``report.table()``, ``report.as_json()``, ``report.exit_code()``.

    Raises
    ------
    UnusableInput
        Everything that makes a verdict impossible: a suite or results path
        that is empty, missing, not a directory or not a regular file; a
        malformed manifest, case file or gaps declaration; results that are
        not valid ``.npz`` files, hold Python objects, declare arrays beyond
        the size limits, or contain no case or no quantity of the suite; a
        user-sized case graded in float16 or bfloat16 under the baseline policy
        when its config's ``dtypes`` did not name that dtype (it has no baseline).
    ValueError
        If ``dtype`` or ``policy`` is not one of those listed.

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
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    man, expected = load_suite(suite, max_bytes=max_bytes)
    found, unknown = load_results(results, expected)
    if not found:
        raise UnusableInput(
            f"no case of the suite found in {results} (expected files or keys named "
            f"after the cases, e.g. '{next(iter(expected), 'plain')}')"
        )
    if policy == "baseline" and dtype in LOW_PRECISION:
        _refuse_undeclared_dtype(man, found, dtype)
    tolerances = (man.get("tolerances") or {}).get(dtype)
    report = check_results(found, expected, dtype=dtype, tolerances=tolerances,
                           unknown=unknown, strict=strict, policy=policy,
                           baselines=manifest_baselines(man), contexts=manifest_contexts(man),
                           gaps=read_gaps(Path(os.fspath(results))))  # fmt: skip
    if not any(r.comparison is not None for r in report.rows):
        raise UnusableInput(
            f"no quantity of the suite found in {results} (name arrays out, weights, lse, dq, "
            "... without the 'expected_' prefix)"
        )
    return report
