"""Exercises on attention's backward: fill in this file, then grade it (docs/exercises.md).

Each exercise is a function or a constant below, marked ``@unsolved`` (or set to ``None``).
Solve one, delete its ``@unsolved`` line (or set the constant), and grade it::

    python -m pytest tests/test_exercises.py -k ex4

An unsolved exercise is skipped, a solved one passes or fails with a message saying what is
wrong. The answers are one link away, in docs/exercise_answers.md; try first.

Exercises 1-3 are puzzles: each ``mystery_*`` function is a complete attention forward and
backward (one head, no batch, float64, plain NumPy) with ONE planted bug. Find which numbered
equation of docs/attention.md it breaks, and write the number as a string, e.g. ``"2.5"``.
Tools that help: compare with ``numpy_attention.attention_backward``, run
``numpy_attention.testing.gradcheck`` on it, read the code against the chapter.

Shapes: ``q (L, E)``, ``k (S, E)``, ``v (S, Ev)``, ``d_out (L, Ev)``, ``keep (L, S)`` a boolean
mask (True = the key takes part), ``P`` and ``dP`` ``(L, S)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
F = TypeVar("F", bound=Callable[..., Any])


def unsolved(fn: F) -> F:
    """Mark an exercise as not attempted yet: the grader skips it. Delete the line to grade it."""
    fn.unsolved = True  # type: ignore[attr-defined]
    return fn


# ---------------------------------------------------------------------------
# The puzzles: one planted bug each
# ---------------------------------------------------------------------------


def _softmax_rows(s: Array) -> Array:
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    total = e.sum(axis=-1, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def mystery_a(
    q: Array, k: Array, v: Array, d_out: Array, keep: NDArray[np.bool_]
) -> dict[str, Array]:
    """Attention forward and backward with one planted bug: ``out``, ``dq``, ``dk``, ``dv``."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    S = scale * q @ k.T
    P = _softmax_rows(np.where(keep, S, -np.inf))
    out = P @ v
    dv = P.T @ d_out
    dP = d_out @ v.T
    dS = P * dP
    return {"out": out, "dq": scale * dS @ k, "dk": scale * dS.T @ q, "dv": dv}


def mystery_b(
    q: Array, k: Array, v: Array, d_out: Array, keep: NDArray[np.bool_]
) -> dict[str, Array]:
    """Attention forward and backward with one planted bug: ``out``, ``dq``, ``dk``, ``dv``."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    S = scale * q @ k.T
    P = _softmax_rows(np.where(keep, S, -np.inf))
    out = P @ v
    dv = P.T @ d_out
    dP = d_out @ v.T
    D = np.sum(d_out * out, axis=-1, keepdims=True)
    dS = P * (dP - D)
    return {"out": out, "dq": scale * dS @ k, "dk": dS.T @ q, "dv": dv}


def mystery_c(
    q: Array, k: Array, v: Array, d_out: Array, keep: NDArray[np.bool_]
) -> dict[str, Array]:
    """Attention forward and backward with one planted bug: ``out``, ``dq``, ``dk``, ``dv``."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    S = scale * q @ k.T
    P = _softmax_rows(np.where(keep, S, -np.inf))
    out = P @ v
    dv = P.T @ d_out
    dP = d_out @ v.T
    D = np.sum(dP * P, axis=0, keepdims=True)
    dS = P * (dP - D)
    return {"out": out, "dq": scale * dS @ k, "dk": scale * dS.T @ q, "dv": dv}


#: Exercise 1: which equation does ``mystery_a`` break? For example "2.5".
EX1: str | None = None

#: Exercise 2: which equation does ``mystery_b`` break?
EX2: str | None = None

#: Exercise 3: which equation does ``mystery_c`` break?
EX3: str | None = None


# ---------------------------------------------------------------------------
# Write it yourself
# ---------------------------------------------------------------------------


@unsolved
def ex4_dS(dP: Array, P: Array) -> Array:
    """Exercise 4: the softmax backward, Eq. (2.13): ``dS`` from ``dP`` and ``P``, both ``(L, S)``.

    ``P`` holds softmax rows (each sums to 1, or is all 0 for a row with no key).
    """
    return np.zeros_like(P)


@unsolved
def ex5_dq_dk(dS: Array, q: Array, k: Array, scale: float) -> tuple[Array, Array]:
    """Exercise 5: ``dq (L, E)`` and ``dk (S, E)`` from ``dS (L, S)``, Eq. (2.14)."""
    return np.zeros_like(q), np.zeros_like(k)


@unsolved
def ex6_attention_backward(
    q: Array, k: Array, v: Array, d_out: Array, keep: NDArray[np.bool_]
) -> dict[str, Array]:
    """Exercise 6: the whole backward, Eqs. (2.10)-(2.14): ``dq``, ``dk``, ``dv``.

    One head, ``scale = 1/sqrt(E)``, ``keep`` a boolean mask (True = the key takes part); a row
    with no key must get zero gradients, never NaN. Recompute what you need from the inputs.
    """
    return {"dq": np.zeros_like(q), "dk": np.zeros_like(k), "dv": np.zeros_like(v)}


@unsolved
def ex7_online_softmax(scores: Array, v: Array, block: int) -> Array:
    """Exercise 7: the tiled forward, Eqs. (5.3)-(5.6), for one row of ``scores (S,)``.

    Walk over the keys ``block`` at a time keeping a running maximum ``m``, a running sum
    ``l`` and an unnormalised output; never exponentiate a score without subtracting the
    running maximum. Return the output ``softmax(scores) @ v``, shape ``(Ev,)``.
    """
    return np.zeros(v.shape[-1])
