"""The ``numpy-attention`` command: ``demo`` (the default) and the other subcommands."""

from __future__ import annotations

import argparse
import sys

import numpy as np

__all__ = ["main", "build_parser"]


def _worked_example() -> str:
    """Three tokens of width 2, small enough to follow by hand (docs/tour.md)."""
    from .attention import attention_forward

    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out, cache = attention_forward(q, q, q, is_causal=True)
    with np.printoptions(precision=4, suppress=True):
        return (
            "Causal self-attention of X = [[1, 0], [0, 1], [1, 1]] (Q = K = V = X):\n"
            f"weights P =\n{cache.P}\n"
            f"log-sum-exp = {cache.lse}\n"
            f"output O = P V =\n{out}"
        )


def _run_demo(args: argparse.Namespace) -> int:
    print(_worked_example())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``numpy-attention`` command."""
    parser = argparse.ArgumentParser(
        prog="numpy-attention",
        description="A float64 NumPy reference for attention. With no subcommand: demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the worked examples")
    demo.set_defaults(func=_run_demo)
    parser.set_defaults(func=_run_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args))
