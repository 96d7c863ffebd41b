"""The ``vectors`` and ``check`` subcommands' wiring, until the application wing owns it.

The golden suite and its grading live in :mod:`numpy_attention.verify`
(``write_suite``, ``check_path``, ...), re-exported here for code that still
imports this old path. :func:`register` is the command line's argparse for the
two subcommands; it moves to ``numpy_attention/app/cli.py`` with the rest of
the argparse, and this module goes with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .verify import (
    DTYPES,
    SUITE_FORMAT,
    SUITE_VERSION,
    Case,
    CheckReport,
    UnusableInput,
    build_suite,
    check_path,
    check_results,
    load_results,
    load_suite,
    write_suite,
)

__all__ = [
    "SUITE_FORMAT",
    "SUITE_VERSION",
    "Case",
    "build_suite",
    "write_suite",
    "load_suite",
    "load_results",
    "CheckReport",
    "check_results",
    "check_path",
    "register",
    "UnusableInput",
]


def _run_vectors(args: argparse.Namespace) -> int:
    try:
        paths = write_suite(args.out, force=args.force)
    except (UnusableInput, OSError) as e:
        why = getattr(e, "strerror", None) or e
        print(f"numpy-attention vectors: cannot write {args.out!r}: {why}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths) - 1} cases and manifest.json (suite version {SUITE_VERSION}) "
          f"to {args.out}")  # fmt: skip
    return 0


def _run_check(args: argparse.Namespace) -> int:
    try:
        report = check_path(args.results, args.suite, dtype=args.dtype, strict=args.strict)
    except (UnusableInput, OSError) as e:
        print(f"numpy-attention check: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table())
    return report.exit_code()


def register(subparsers: Any) -> None:
    r"""Add the ``vectors`` and ``check`` subcommands to the CLI's subparsers.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``; each subcommand sets ``func`` to a
        function of the parsed arguments returning the exit code.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> register(p.add_subparsers())
    >>> p.parse_args(["check", "res", "--dtype", "bfloat16"]).dtype
    'bfloat16'
    """
    vec = subparsers.add_parser(
        "vectors",
        help="write the golden vectors (one .npz per case and manifest.json)",
        description="Write the versioned golden suite: one <case>.npz per case with inputs "
        "and float64 expected results, and manifest.json (format: docs/verify.md). Files in "
        "DIR that are not those of a suite written there before are never replaced.",
    )
    vec.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    vec.add_argument(
        "--force", action="store_true", help="replace files in DIR even if they are not ours"
    )
    vec.set_defaults(func=_run_vectors)
    chk = subparsers.add_parser(
        "check",
        help="compare a candidate's results with the golden vectors",
        description="Compare RESULTS (a directory of <case>.npz, or one .npz with keys "
        "'<case>/<quantity>') with the suite. Exit 0: all pass; 1: a mismatch; 2: unusable "
        "input.",
    )
    chk.add_argument("results", metavar="RESULTS", help="results directory or .npz file")
    chk.add_argument(
        "--suite",
        metavar="DIR",
        default=None,
        help="suite written by 'vectors' (default: build it in memory)",
    )
    chk.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype the candidate computed in (default float32)",
    )
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.add_argument(
        "--strict", action="store_true", help="count missing cases and quantities as failures"
    )
    chk.set_defaults(func=_run_check)
