"""The exercises of docs/exercises.md grade themselves.

- ``python -m pytest tests/test_exercises.py -k ex4`` grades the student's
  ``examples/exercises.py``: an exercise still marked ``@unsolved`` (or a puzzle answer still
  ``None``) is skipped, a solved one passes or fails with a message saying what is wrong.
- The answers of docs/exercise_answers.md (the blocks after ``<!-- answer: exN -->``) pass every
  grader; the stubs as shipped fail theirs; and each grader rejects the plausible wrong answers
  listed in ``WRONG`` (among them the planted bugs of the puzzles), so no grader accepts anything.
- Each puzzle's planted bug breaks the equation its answer names: the mystery's output and the
  gradients upstream of that equation are right, the ones downstream are wrong.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from numpy_attention.attention import attention_backward, attention_forward

ROOT = Path(__file__).resolve().parents[1]
ANSWERS = ROOT / "docs" / "exercise_answers.md"
EXERCISES = ["ex1", "ex2", "ex3", "ex4", "ex5", "ex6", "ex7"]
PUZZLES = {"ex1": ("EX1", "mystery_a"), "ex2": ("EX2", "mystery_b"), "ex3": ("EX3", "mystery_c")}
FUNCTIONS = {
    "ex4": "ex4_dS",
    "ex5": "ex5_dq_dk",
    "ex6": "ex6_attention_backward",
    "ex7": "ex7_online_softmax",
}


def load_exercises() -> ModuleType:
    """``examples/exercises.py`` as a module (examples/ is no package)."""
    spec = importlib.util.spec_from_file_location("exercises", ROOT / "examples" / "exercises.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


def _case(seed: int, L: int = 3, S: int = 5, E: int = 4, Ev: int = 2) -> dict[str, Any]:
    """Random q, k, v, d_out and a mask with a masked key, a row with no key when L >= 3."""
    rng = np.random.default_rng(seed)
    keep = rng.random((L, S)) < 0.7
    keep[:, 0] = True
    keep[0, 1] = False
    if L >= 3:
        keep[2] = False  # a query with nothing to attend to
    q, k, v = rng.normal(size=(L, E)), rng.normal(size=(S, E)), rng.normal(size=(S, Ev))
    return {"q": q, "k": k, "v": v, "d_out": rng.normal(size=(L, Ev)), "keep": keep}


def _reference(c: dict[str, Any]) -> dict[str, np.ndarray]:
    out, cache = attention_forward(c["q"], c["k"], c["v"], c["keep"])
    g = attention_backward(c["d_out"], cache)
    return {"out": out, "dq": g.dq, "dk": g.dk, "dv": g.dv, "P": cache.P}


def _close(name: str, got: Any, want: np.ndarray) -> None:
    got = np.asarray(got, dtype=float)
    assert got.shape == want.shape, f"{name} has shape {got.shape}, expected {want.shape}"
    assert np.all(np.isfinite(got)), f"{name} has NaN or inf: {got}"
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= 1e-10 * (1 + float(np.max(np.abs(want)))), (
        f"{name} is off by up to {err:.3g}; expected\n{np.round(want, 4)}\ngot\n{np.round(got, 4)}"
    )


# ---------------------------------------------------------------------------
# Graders: each raises AssertionError with a message saying what is wrong
# ---------------------------------------------------------------------------

#: The equation each puzzle's planted bug breaks.
SOLUTIONS = {"ex1": "2.13", "ex2": "2.14", "ex3": "2.12"}


def _equation(answer: Any) -> str:
    assert answer is not None, "no answer yet: set it to the equation number, e.g. '2.5'"
    m = re.fullmatch(r"\s*(?:Eq\.?\s*)?\(?\s*(\d+\.\d+)\s*\)?\s*", str(answer))
    assert m, f"write the answer as an equation number such as '2.5', got {answer!r}"
    return m.group(1)


def grade_puzzle(name: str, answer: Any) -> None:
    """The answer names the equation the mystery's planted bug breaks."""
    got = _equation(answer)
    assert got == SOLUTIONS[name], (
        f"{name}: Eq. ({got}) still holds in the mystery; compare its gradients with "
        "attention_backward's and find the first line whose result differs"
    )


def grade_ex4(fn: Callable[..., Any]) -> None:
    """``dS = P * (dP - rowsum(dP * P))`` on softmax rows, masked entries and an empty row."""
    for seed in range(3):
        c = _case(seed)
        P = _reference(c)["P"]
        dP = np.random.default_rng(seed + 10).normal(size=P.shape)
        want = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))
        _close("dS", fn(dP.copy(), P.copy()), want)


def grade_ex5(fn: Callable[..., Any]) -> None:
    """``dq = scale dS k``, ``dk = scale dS^T q`` with L != S and a scale that is not 1."""
    rng = np.random.default_rng(5)
    q, k, dS = rng.normal(size=(2, 3)), rng.normal(size=(4, 3)), rng.normal(size=(2, 4))
    got = fn(dS.copy(), q.copy(), k.copy(), 0.3)
    assert isinstance(got, tuple) and len(got) == 2, "return the pair (dq, dk)"
    _close("dq", got[0], 0.3 * dS @ k)
    _close("dk", got[1], 0.3 * dS.T @ q)


def grade_ex6(fn: Callable[..., Any]) -> None:
    """The gradients of the core's attention_backward, on cases with masked keys, a query with no
    key, and L < S, L = S, L > S."""
    for seed, (L, S) in enumerate([(3, 5), (4, 4), (5, 3)]):
        c = _case(seed, L, S)
        ref = _reference(c)
        got = fn(**{n: np.array(c[n]) for n in ("q", "k", "v", "d_out", "keep")})
        for name in ("dq", "dk", "dv"):
            assert name in got, f"return a dict with dq, dk and dv (no {name!r})"
            _close(f"{name} (L={L}, S={S})", got[name], ref[name])


def grade_ex7(fn: Callable[..., Any]) -> None:
    """``softmax(scores) @ v`` for scores up to 800 (no overflow), -inf entries, any block size."""
    rng = np.random.default_rng(7)
    for scores in (rng.normal(size=7), 800.0 + rng.normal(size=7), -800.0 + rng.normal(size=7)):
        scores[2] = -np.inf
        v = rng.normal(size=(7, 3))
        e = np.exp(scores - scores.max())
        want = (e / e.sum()) @ v
        for block in (1, 2, 3, 7, 8):
            _close(f"out (block={block}, max score {scores.max():.0f})",
                   fn(scores.copy(), v.copy(), block), want)  # fmt: skip


GRADERS: dict[str, Callable[[Any], None]] = {
    "ex4": grade_ex4,
    "ex5": grade_ex5,
    "ex6": grade_ex6,
    "ex7": grade_ex7,
}


def grade(name: str, answer: Any) -> None:
    """Grade one exercise's answer (an equation number or a function)."""
    if name in PUZZLES:
        grade_puzzle(name, answer)
    else:
        GRADERS[name](answer)


# ---------------------------------------------------------------------------
# (a) The student's file
# ---------------------------------------------------------------------------


def _student_answer(module: ModuleType, name: str) -> Any:
    if name in PUZZLES:
        answer = getattr(module, PUZZLES[name][0])
        if answer is None:
            pytest.skip(f"{name} not answered yet: set {PUZZLES[name][0]} in examples/exercises.py")
        return answer
    fn = getattr(module, FUNCTIONS[name])
    if getattr(fn, "unsolved", False):
        pytest.skip(f"{name} not solved yet: write {FUNCTIONS[name]} in examples/exercises.py "
                    "and delete its @unsolved line")  # fmt: skip
    return fn


@pytest.mark.parametrize("name", EXERCISES)
def test_exercise(name: str) -> None:
    """Grade the student's answer in examples/exercises.py (skipped while unsolved)."""
    grade(name, _student_answer(load_exercises(), name))


# ---------------------------------------------------------------------------
# (b) The answers pass, the stubs and the wrong answers fail
# ---------------------------------------------------------------------------


def answer_blocks() -> dict[str, str]:
    """The code of each ``<!-- answer: exN -->`` block of docs/exercise_answers.md."""
    text = ANSWERS.read_text(encoding="utf-8")
    found = re.findall(r"<!--\s*answer:\s*(ex\d+)\s*-->\s*\n```python\n(.*?)\n```", text, re.S)
    return dict(found)


def answer_of(name: str) -> Any:
    """Run the answer block of ``name``; its result (the constant or the function)."""
    namespace: dict[str, Any] = {"np": np, "__name__": "__answers__"}
    exec(compile(answer_blocks()[name], str(ANSWERS), "exec"), namespace)
    return namespace[PUZZLES[name][0] if name in PUZZLES else FUNCTIONS[name]]


def test_every_exercise_has_an_answer() -> None:
    """docs/exercise_answers.md answers each exercise once."""
    assert sorted(answer_blocks()) == sorted(EXERCISES)


@pytest.mark.parametrize("name", EXERCISES)
def test_answer_passes_its_grader(name: str) -> None:
    """The answer shown in docs/exercise_answers.md passes the grader."""
    grade(name, answer_of(name))


@pytest.mark.parametrize("name", EXERCISES)
def test_shipped_stub_fails_its_grader(name: str) -> None:
    """The stub as shipped (``None``, or a function still marked ``@unsolved``) fails."""
    module = load_exercises()
    if name in PUZZLES:
        stub = getattr(module, PUZZLES[name][0])
        if stub is not None:
            pytest.skip(f"{name} has been answered in examples/exercises.py")
    else:
        stub = getattr(module, FUNCTIONS[name])
        if not getattr(stub, "unsolved", False):
            pytest.skip(f"{name} has been solved in examples/exercises.py")
    with pytest.raises(AssertionError):
        grade(name, stub)


def _without_max_shift(scores: np.ndarray, v: np.ndarray, block: int) -> np.ndarray:
    e = np.exp(scores)
    return (e / e.sum()) @ v


def _without_rescale(scores: np.ndarray, v: np.ndarray, block: int) -> np.ndarray:
    m, total, acc = -np.inf, 0.0, np.zeros(v.shape[-1])
    for j0 in range(0, len(scores), block):
        s = scores[j0 : j0 + block]
        m = max(m, float(s.max()))
        p = np.exp(s - m)
        total, acc = total + p.sum(), acc + p @ v[j0 : j0 + block]  # old terms not rescaled
    return acc / total


def _wrong_answers() -> dict[str, list[Any]]:
    ex = load_exercises()
    return {
        "ex1": ["2.12", "2.14", "(2.10)", "softmax"],
        "ex2": ["2.13", "Eq. (2.1)"],
        "ex3": ["2.13", "1.4"],
        "ex4": [lambda dP, P: P * dP,
                lambda dP, P: P * (dP - np.sum(dP * P, axis=0, keepdims=True)),
                lambda dP, P: dP - np.sum(dP * P, axis=-1, keepdims=True)],
        "ex5": [lambda dS, q, k, scale: (scale * dS @ k, dS.T @ q),
                lambda dS, q, k, scale: (scale * dS.T @ q, scale * dS @ k)],
        "ex6": [lambda **c: {n: g for n, g in ex.mystery_a(**c).items() if n != "out"},
                lambda **c: {n: g for n, g in ex.mystery_b(**c).items() if n != "out"},
                lambda **c: {n: g for n, g in ex.mystery_c(**c).items() if n != "out"}],
        "ex7": [_without_max_shift, _without_rescale],
    }  # fmt: skip


@pytest.mark.parametrize("name", EXERCISES)
def test_grader_rejects_plausible_wrong_answers(name: str) -> None:
    """Each grader fails the wrong answers a student is likely to write (the planted bugs, a
    missing scale or row term, the sum over the wrong axis, no max shift, no rescaling)."""
    for wrong in _wrong_answers()[name]:
        with np.errstate(all="ignore"), pytest.raises(AssertionError):
            grade(name, wrong)


# ---------------------------------------------------------------------------
# (c) Each puzzle's bug breaks the equation its answer names, and nothing upstream
# ---------------------------------------------------------------------------

#: For each puzzle: the results that are still right, and those the bug makes wrong.
BROKEN = {
    "ex1": (("out", "dv"), ("dq", "dk")),  # dS (2.13) feeds dq and dk only
    "ex2": (("out", "dv", "dq"), ("dk",)),  # dk's scale (2.14)
    "ex3": (("out", "dv"), ("dq", "dk")),  # the row term D (2.12) feeds dS, hence dq and dk
}


@pytest.mark.parametrize("name", sorted(PUZZLES))
def test_planted_bug_breaks_the_equation_its_answer_names(name: str) -> None:
    """The mystery agrees with the core up to the answer's equation and differs after it."""
    mystery = getattr(load_exercises(), PUZZLES[name][1])
    c = _case(0)
    ref, got = _reference(c), mystery(**c)
    right, wrong = BROKEN[name]
    for key in right:
        _close(key, got[key], ref[key])
    for key in wrong:
        assert not np.allclose(got[key], ref[key]), f"{name}: {key} is right, the bug is elsewhere"
