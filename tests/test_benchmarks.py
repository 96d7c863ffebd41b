"""The benchmark script runs end to end on a tiny shape (a smoke test: nothing is timed here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_attention.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_products_floor_computes_the_products_it_names():
    """The 'products' floor computes S = Q K^T, O = S V, then dV = S^T dO, dP = dO V^T,
    dQ = dP K, dK = dP^T Q (the shapes and FLOPs of attention's products, no softmax)."""
    bench = _load()
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((2, 3, 5, 4)) for _ in range(4))
    k, v = k[..., :4, :], v[..., :4, :3]  # S = 4 keys, Ev = 3
    g = g[..., :3]
    run_fwd, run_six, run_seven, out = bench._product_runs(q, k, v, g)
    S = q @ np.swapaxes(k, -1, -2)
    dP = g @ np.swapaxes(v, -1, -2)
    run_fwd()
    np.testing.assert_allclose(out["o"], S @ v, rtol=1e-12)
    for run in (run_six, run_seven):
        run()
        np.testing.assert_allclose(out["dv"], np.swapaxes(S, -1, -2) @ g, rtol=1e-12)
        np.testing.assert_allclose(out["s"], dP, rtol=1e-12)
        np.testing.assert_allclose(out["dq"], dP @ k, rtol=1e-12)
        np.testing.assert_allclose(out["dk"], np.swapaxes(dP, -1, -2) @ q, rtol=1e-12)


def test_benchmark_script_prints_every_table():
    """`bench_attention.py` on a tiny shape prints the time, GFLOP/s, memory and error tables
    with a row for the core, the tiled functions and the products floor."""
    cmd = [sys.executable, str(SCRIPT), "--shapes", "1,2,32,8", "--repeat", "1",
           "--impl", "core,tiled,products", "--dtypes", "float64", "--no-big"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for title in ("## Time (ms, median)", "## Achieved GFLOP/s", "## Peak extra memory",
                  "## Largest |error|"):  # fmt: skip
        assert title in out, out
    assert "core fwd" in out and "tiled fwd" in out and "products fwd" in out, proc.stderr
    assert "| 1,2,32,8 | float64 |" in out


def test_floor_adds_one_exp_per_score_to_the_products():
    """With ``exp=True`` the floor computes P = exp(scale Q K^T) in place before O = P V, and
    recomputes it before the backward's products (FlashAttention's second exp)."""
    bench = _load()
    rng = np.random.default_rng(1)
    q, k, v, g = (rng.standard_normal((2, 3, 5, 4)) for _ in range(4))
    run_fwd, _, run_seven, out = bench._product_runs(q, k, v, g, exp=True)
    P = np.exp(q @ np.swapaxes(k, -1, -2) / 2.0)  # scale = 1 / sqrt(E), E = 4
    run_fwd()
    np.testing.assert_allclose(out["o"], P @ v, rtol=1e-12)
    run_seven()
    np.testing.assert_allclose(out["dv"], np.swapaxes(P, -1, -2) @ g, rtol=1e-12)


def test_window_check_reports_both_calls(capsys):
    """The window check times the full tiled forward and the one with window (256, 0)."""
    import json

    from numpy_attention.flash import flash_attention_forward

    bench = _load()
    bench._window_check(flash_attention_forward, 1, L=600)
    record = json.loads(capsys.readouterr().out.split("RESULT ", 1)[1])
    assert record["kind"] == "window" and record["shape"] == [1, 1, 600, 64]
    assert record["window_ms"] > 0 and record["full_ms"] > 0


def test_benchmark_script_prints_floor_torch_and_variant_ratios():
    """With torch, the script prints the torch math and eager columns, the ratios of the core and
    the tiled functions to the floor and to those references, and the variants-off ratios."""
    import pytest

    pytest.importorskip("torch")
    cmd = [sys.executable, str(SCRIPT), "--shapes", "1,2,32,8", "--repeat", "1",
           "--impl", "torch,core,tiled", "--dtypes", "float32", "--no-big"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for title in ("## Ratio to the floor", "## Ratio to torch's math backend",
                  "## The variants off"):  # fmt: skip
        assert title in out, out
    assert "torch_math fwd" in out and "torch_eager fwd+bwd" in out, out
    assert "core fwd / math" in out and "tiled fwd+bwd / eager" in out, out
    floor_table = out.split("## Ratio to the floor", 1)[1].split("##", 1)[0]
    assert "| 1,2,32,8 | float32 |" in floor_table
