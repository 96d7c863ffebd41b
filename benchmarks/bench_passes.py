"""What one pass over the scores costs on this machine, beside the two products of a forward.

Usage (from the repository root)::

    python benchmarks/bench_passes.py              # (2, 8, 1024, 64), float32 and float64
    python benchmarks/bench_passes.py 1,8,2048,64

Each step of an attention over the (B, H, L, S) scores, timed alone, interleaved round-robin in
one process (median of 9 rounds): the two products into preallocated arrays, np.exp, a row sum, a
division by the row sums, a multiplication, a fresh L x S array (its page faults and zeroing),
and Q K^T into a fresh array. Prints a Markdown table: ms and, in parentheses, ns per score.
Where a pass costs about a product (AVX-512 machines, where np.exp is cheap), every pass a
NumPy attention adds to the floor (2 products + 1 exp) weighs a third of it; docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import _inputs, _interleaved_ms  # noqa: E402


def _passes(shape: tuple[int, ...], dtype: str) -> dict[str, float]:
    """Median ms of each pass, interleaved."""
    q, k, v, _ = _inputs(shape, dtype)
    q = q * q.dtype.type(q.shape[-1] ** -0.5)
    kT = np.swapaxes(k, -1, -2)
    s0 = q @ kT
    s, o = s0.copy(), np.empty(q.shape[:-1] + v.shape[-1:], q.dtype)
    total = np.exp(s0).sum(-1, keepdims=True)
    runs = {
        "S = q k^T (out=)": lambda: np.matmul(q, kT, out=s),
        "O = P v (out=)": lambda: np.matmul(s0, v, out=o),
        "exp (out=)": lambda: np.exp(s0, out=s),
        "row sum": lambda: s0.sum(-1, keepdims=True),
        "divide by the row sum (out=)": lambda: np.divide(s0, total, out=s),
        "multiply (out=)": lambda: np.multiply(s0, s0, out=s),
        "fresh L x S array (empty + fill)": lambda: np.empty_like(s0).fill(1),
        "S = q k^T into a fresh array": lambda: q @ kT,
    }
    return _interleaved_ms(runs, 9)


def main(argv: list[str]) -> None:
    shape = tuple(int(n) for n in (argv[0] if argv else "2,8,1024,64").split(","))
    rows, size = [], int(np.prod(shape[:-1])) * shape[-2]
    for dtype in ("float32", "float64"):
        ms = _passes(shape, dtype)
        cells = " | ".join(f"{t:.1f} ({1e6 * t / size:.2f})" for t in ms.values())
        rows.append(f"| {dtype} | {cells} |")
    print(f"Shape (B, H, L, E) = {shape}; ms (ns per score)\n")
    print("| dtype | " + " | ".join(ms) + " |")
    print("|---" * (len(ms) + 1) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
