"""A measured idea for the core (issue 17): deferred normalisation, against the core, interleaved.

Usage (from the repository root)::

    python benchmarks/bench_deferred.py

The prototype never forms ``P``: it keeps ``E = exp(S)`` and ``1/l`` (as the tiled forward does,
Eq. (5.6)), computes ``O = (E V) / l``, and its backward lets ``1/l`` ride on ``dO`` and ``D``:
``dV = E^T (dO / l)``, ``dS = E * (dO V^T / l - D / l)``. No mask, no variants, the scores
bounded (no max shift, as under the core's Cauchy-Schwarz bound). It checks itself against the
core, then prints both as ratios to the floor of bench_attention.py. Not library code: the
core's cache would hold ``E`` and ``1/l`` instead of ``P`` (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import _inputs, _interleaved_ms, _product_runs  # noqa: E402

from numpy_attention.attention import attention_backward, attention_forward  # noqa: E402


def fwd_deferred(q, k, v):
    scale = q.dtype.type(q.shape[-1] ** -0.5)
    E = (q * scale) @ np.swapaxes(k, -1, -2)
    np.exp(E, out=E)  # bounded scores: no shift
    inv = 1 / E.sum(-1, keepdims=True)
    return (E @ v) * inv, (E, inv)


def bwd_deferred(g, q, k, v, out, E, inv):
    scale = q.dtype.type(q.shape[-1] ** -0.5)
    g_l = g * inv  # dO / l
    dv = np.swapaxes(E, -1, -2) @ g_l  # P^T dO = E^T (dO / l)
    D_l = np.sum(g_l * out, -1, keepdims=True)  # D / l
    dS = g_l @ np.swapaxes(v, -1, -2)  # dP / l
    dS -= D_l
    dS *= E  # P (dP - D) = E (dP / l - D / l)
    return (dS @ k) * scale, (np.swapaxes(dS, -1, -2) @ q) * scale, dv


def _ratios(shape, dtype):
    q, k, v, g = _inputs(shape, dtype)
    floor_fwd, floor_six, _, _ = _product_runs(q, k, v, g, exp=True)
    out, (E, inv) = fwd_deferred(q, k, v)
    ref, cache = attention_forward(q, k, v)
    got, want = bwd_deferred(g, q, k, v, out, E, inv), attention_backward(g, cache)
    tol = 1e-4 if dtype == "float32" else 1e-10
    assert np.allclose(out, ref, atol=tol)
    pairs = zip(got, (want.dq, want.dk, want.dv), strict=True)
    assert all(np.allclose(a, b, atol=10 * tol) for a, b in pairs)
    del E, cache

    def core_both():
        o, c = attention_forward(q, k, v)
        return attention_backward(g, c)

    def deferred_both():
        o, (E, inv) = fwd_deferred(q, k, v)
        return bwd_deferred(g, q, k, v, o, E, inv)

    ms = _interleaved_ms({"floor": floor_fwd, "floor6": floor_six,
                          "core fwd": lambda: attention_forward(q, k, v),
                          "deferred fwd": lambda: fwd_deferred(q, k, v),
                          "core both": core_both, "deferred both": deferred_both}, 5)  # fmt: skip
    return [ms["core fwd"] / ms["floor"], ms["deferred fwd"] / ms["floor"],
            ms["core both"] / ms["floor6"], ms["deferred both"] / ms["floor6"]]  # fmt: skip


def main() -> None:
    print("| B,H,L,E | dtype | core fwd | deferred fwd | core fwd+bwd | deferred fwd+bwd |")
    print("|---|---|---|---|---|---|")
    for shape in ((2, 8, 1024, 64), (1, 4, 4096, 128)):
        for dtype in ("float32", "float64"):
            cells = " | ".join(f"{r:.2f}" for r in _ratios(shape, dtype))
            print(f"| {','.join(map(str, shape))} | {dtype} | {cells} |")


if __name__ == "__main__":
    main()
