"""The verdict (issue 15): the precision model, declared gaps, check_callable and the strategies."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from optional import TORCH_MISSING

from numpy_attention.app.cli import main
from numpy_attention.attention import attention_backward, attention_forward
from numpy_attention.flash import flash_attention_backward, flash_attention_forward
from numpy_attention.verify import (
    UnusableInput,
    build_suite,
    check_callable,
    check_path,
    compare_attention,
    emulate_sdpa,
    gaps_json,
    load_suite,
    write_suite,
)
from numpy_attention.verify.callables import (
    VARIANT_ARGUMENTS,
    assert_matches_reference,
    call_arguments,
    gradient_terms,
    reference,
)
from numpy_attention.verify.precision import EMULATED_KINDS, baseline_errors, rounding
from numpy_attention.verify.strategies import attention_inputs


def numpy_kernel(q, k, v, attn_mask, dropout_p, dropout_mask, is_causal, causal_bottom_right,
                 scale, enable_gqa, d_out, dtype, bug=None):  # fmt: skip
    """This package's attention computed in float32: a correct candidate (or a planted bug)."""
    f = np.float32
    align = "bottom_right" if causal_bottom_right else "top_left"
    scale = 1.0 if bug == "missing_scale" else scale
    out, cache = attention_forward(q.astype(f), k.astype(f), v.astype(f), attn_mask, dropout_p,
                                   is_causal, scale, enable_gqa, dropout_mask=dropout_mask,
                                   causal_align=align)  # fmt: skip
    g = attention_backward(d_out.astype(f), cache)
    res = {"out": out, "weights": cache.P, "lse": cache.lse, "dq": g.dq, "dk": g.dk, "dv": g.dv}
    return res if g.d_attn_mask is None else {**res, "d_attn_mask": g.d_attn_mask}


# --- the precision model ---------------------------------------------------------------------


def test_bfloat16_rounding_agrees_with_ml_dtypes() -> None:
    """The pure-NumPy bfloat16 rounding the baseline uses is ml_dtypes' (ties to even)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.random.default_rng(0).standard_normal(10000) * 10.0 ** np.arange(-5, 5).repeat(1000)
    want = x.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    assert np.array_equal(rounding("bfloat16")(x), want)
    f8 = rounding("float8_e4m3fn")(np.array([1.0, 1.1]))
    assert f8.tolist() == [1.0, 1.125]


def _float32_patterns() -> np.ndarray:
    """Every sign, exponent and top 7 mantissa bits, each with the low halves that decide a
    rounding to bfloat16 or float16 (just below, at and above half an ulp, odd and even
    kept bits); NaNs of every payload, signalling ones, infinities, subnormals among them."""
    high = np.arange(2**16, dtype=np.uint32) << 16
    low = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000,
                    0x8001, 0xC000, 0xFFFF, 0x1234], dtype=np.uint32)  # fmt: skip
    return (high[:, None] | low[None, :]).ravel().view(np.float32)


def _same_bits(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Where ``got`` and ``want`` hold the same float32 (every NaN the same)."""
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    return (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))


def test_bfloat16_rounding_is_ml_dtypes_bit_for_bit_on_every_exponent() -> None:
    """Sign of zero, ties, overflow to inf, subnormals and NaN payloads as ml_dtypes gives them."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = _float32_patterns()
    before = x.copy()
    with np.errstate(all="ignore"):
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    bad = ~_same_bits(rounding("bfloat16")(x), want)
    assert not bad.any(), x.view(np.uint32)[bad][:5]
    assert np.array_equal(x.view(np.uint32), before.view(np.uint32))  # the input is not written


def test_float16_rounding_is_numpys_bit_for_bit_on_every_exponent() -> None:
    """The bit-level float16 rounding of the baseline gives NumPy's ``astype`` exactly:
    float16's subnormals (the weights' many tiny entries), overflow past 65504, ties, NaN."""
    x = _float32_patterns()
    before = x.copy()
    with np.errstate(all="ignore"):
        want = x.astype(np.float16).astype(np.float32)
        got = rounding("float16")(x)
    bad = ~_same_bits(got, want)
    assert not bad.any(), x.view(np.uint32)[bad][:5]
    assert np.array_equal(x.view(np.uint32), before.view(np.uint32))
    assert rounding("float16")(np.array([65519.0, 65520.0, 2.0**-25, 3 * 2.0**-26])).tolist() == [
        65504.0, np.inf, 0.0, 2.0**-24]  # fmt: skip


def test_suite_inputs_are_exact_in_bfloat16_and_float16() -> None:
    """The float64 truth of the suite is the truth of the rounded inputs (attention-gym#242)."""
    for c in build_suite():
        for name, a in c.inputs.items():
            if a.dtype.kind == "f" and a.ndim:  # scale, dropout_p: Python floats for the kernel
                for dt in ("bfloat16", "float16"):
                    assert np.array_equal(rounding(dt)(a), a, equal_nan=True), (c.name, name, dt)


def test_baseline_error_grows_as_precision_falls_and_is_stored() -> None:
    """A naive bfloat16 attention errs more than float16, float16 more than float32; stored
    for the SDPA, variant and serving cases, not for the layer cases."""
    man, _ = load_suite()
    for e in man["cases"]:
        b = e.get("baseline_error")
        if e["kind"] not in EMULATED_KINDS:
            assert b is None
            continue
        if e["name"].startswith("single_key"):  # out = v, dv = d_out: exact in every dtype
            continue
        q = "dv" if "dv" in b["bfloat16"] else "out"  # KV cache, merge and rotary: no dv
        assert b["bfloat16"][q] > b["float16"][q] > b["float32"][q] > 0, e["name"]


def test_emulated_float32_matches_real_float32_arithmetic() -> None:
    """The emulation in float32 is plain float32 attention: within a few ulps of it."""
    c = build_suite()[0]
    got = emulate_sdpa(c.inputs, "float32")
    real = numpy_kernel(**call_arguments(c.inputs, "float32"))
    for q in ("out", "dq", "dk", "dv"):
        assert np.max(np.abs(got[q] - real[q])) < 1e-5 * np.max(np.abs(c.expected[q]))


def _config_case_list(*entries):
    from numpy_attention.verify import cases_from_config

    return cases_from_config({"cases": list(entries)})


def _config_case(**fields):
    from numpy_attention.verify import cases_from_config

    return cases_from_config({"cases": [{"name": "c", **fields}]})[0]


def test_blocked_baseline_equals_the_dense_one_in_low_precision(monkeypatch) -> None:
    """Long user rows are emulated a block of query rows at a time; in float16 and bfloat16
    (what the baseline policy judges) the stored baseline is the dense emulation's."""
    import numpy_attention.verify.precision as precision

    case = _config_case(B=2, Hq=2, Hkv=1, L=300, S=700, E=16, is_causal=True,
                        causal_align="bottom_right")  # fmt: skip
    dense = baseline_errors(case.inputs, case.expected)
    monkeypatch.setattr(precision, "BLOCKED_FROM", 1)
    monkeypatch.setattr(precision, "_BLOCK_SCORES", 7 * 700 * 4)  # 7 rows a block: 43 blocks
    blocked = baseline_errors(case.inputs, case.expected)
    for dtype in ("float16", "bfloat16"):
        want = {q: e for q, e in dense[dtype].items() if q != "weights"}
        assert blocked[dtype] == pytest.approx(want, rel=0.1), dtype


def test_a_long_user_row_gets_a_baseline_without_an_l_by_s_array(monkeypatch) -> None:
    """A config case past BLOCKED_FROM scores (tiled path) is stored with its baseline (Eq. (7.3)),
    computed in blocks: the peak memory stays below one float64 L x S array."""
    import tracemalloc

    import numpy_attention.verify.precision as precision
    from numpy_attention.verify.suite import manifest

    case = _config_case(L=1024, S=1536, E=8, is_causal=True, path="tiled")
    monkeypatch.setattr(precision, "BLOCKED_FROM", 2**20)  # the real one is 2**24: a 4k x 4k row
    monkeypatch.setattr(precision, "_BLOCK_SCORES", 2**16)  # and 2**21 scores a block: 42 rows
    tracemalloc.start()
    try:
        errors = baseline_errors(case.inputs, case.expected)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1536 * 8 / 2, peak
    assert set(errors["bfloat16"]) == {"out", "lse", "dq", "dk", "dv"}
    assert 0 < errors["bfloat16"]["out"] < 0.05
    entry = manifest([case])["cases"][0]
    assert entry["baseline_error"]["bfloat16"] == errors["bfloat16"]


def test_baseline_policy_is_tighter_than_absolute_on_small_cases() -> None:
    """An error of 2 % of out passes bfloat16's absolute tolerance, fails its baseline."""
    c = build_suite()[0]
    d = c.expected["out"]
    a = d + 0.02 * np.max(np.abs(d)) * np.sign(d)
    b = baseline_errors(c.inputs, c.expected)["bfloat16"]["out"]
    assert compare_attention(a, d, dtype="bfloat16").passed
    r = compare_attention(a, d, dtype="bfloat16", baseline=b)
    assert not r.passed and r.policy == "baseline" and 0 < r.mismatch <= 1
    assert 0.99 < r.cosine < 1


def _serving_cases() -> list:
    from numpy_attention.verify.cases import _serving_cases

    return _serving_cases()


def test_float64_emulation_of_the_layer_cases_is_the_truth_and_bfloat16_is_tighter() -> None:
    """rounding('float64') is the identity: the emulated cross-attention layer (projections,
    padding mask, heads, output projection and every backward product) and weighted fusion
    (three branches, d_alpha) give every stored quantity to 1e-14; in bfloat16 each baseline
    bound (3 err_naive) is below the absolute tolerance, and err_naive is bfloat16's size of
    error (above 2^-16 of the quantity: the steps were rounded), not float32's."""
    from numpy_attention.verify.precision import _LAYER_EMULATIONS

    layers = [c for c in build_suite() if c.kind in _LAYER_EMULATIONS]
    assert sorted(c.kind for c in layers) == ["cross_attention", "fusion"]
    for c in layers:
        got = _LAYER_EMULATIONS[c.kind](c.inputs, "float64")
        assert set(got) == set(c.expected), c.name
        for q, want in c.expected.items():
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got[q], want, rtol=0, atol=1e-14 * scale,
                                       err_msg=f"{c.name} {q}")  # fmt: skip
        low = baseline_errors(c.inputs, c.expected, c.kind, dtypes=["bfloat16"])["bfloat16"]
        for q, want in c.expected.items():
            size = float(np.abs(want).max())
            if size:  # d_b_k is exactly 0: its baseline is the naive kernel's round-off alone
                assert 2.0**-16 * size < low[q] < 0.05 * size / 3, (c.name, q, low[q], size)


def _layer_results(case, bug: str) -> dict:
    """The layer case computed in float64 with a planted bug (what a wrong kernel returns)."""
    from numpy_attention.fusion import FusionParams, fusion_backward, fusion_forward
    from numpy_attention.layers import (
        CrossAttentionParams,
        cross_attention_backward,
        cross_attention_forward,
    )

    a, names = case.inputs, ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")
    H = int(a["num_heads"])
    if case.kind == "cross_attention":
        p = CrossAttentionParams(**{n: a[n] for n in names}, num_heads=H)
        E = a["w_q"].shape[1] // H
        lengths = None if bug == "padding_ignored" else a["key_lengths"]
        scale = 1 / np.sqrt(E * H) if bug == "scale_of_the_model_width" else None
        out, cache = cross_attention_forward(p, a["x_q"], a["x_kv"], key_lengths=lengths,
                                             scale=scale)  # fmt: skip
        d_x_q, d_x_kv, d_p = cross_attention_backward(a["d_out"], cache)
        res = {"out": out, "weights": cache.P, "d_x_q": d_x_q, "d_x_kv": d_x_kv}
        return {**res, **{f"d_{n}": getattr(d_p, n) for n in names}}
    alpha = a["alpha"]
    if bug == "softmax_of_alpha":  # fixed weights taken for logits
        alpha = np.exp(alpha) / np.exp(alpha).sum()
    branches = tuple(CrossAttentionParams(**{n: a[f"branch{i}_{n}"] for n in names}, num_heads=H)
                     for i in range(len(a["alpha"])))  # fmt: skip
    y, cache = fusion_forward(FusionParams(branches), a["x"], alpha=alpha)
    d_x, d_p = fusion_backward(a["d_out"], cache)
    res = {"out": y, "d_x": d_x, "d_alpha": np.asarray(d_p.alpha)}
    for i, g in enumerate(d_p.branches):
        res.update({f"d_branch{i}_{n}": getattr(g, n) for n in names})
    return res


@pytest.mark.parametrize("bug", ["scale_of_the_model_width", "padding_ignored",
                                 "softmax_of_alpha", "two_percent"])  # fmt: skip
def test_layer_bugs_fail_the_bfloat16_baseline(bug) -> None:
    """Planted layer bugs (1/sqrt(Dm) for 1/sqrt(E), key_lengths ignored, softmax applied to
    fixed fusion weights, a 2 % error of every output) fail some quantity under the layer
    cases' bfloat16 baseline; the 2 % error passes the absolute bfloat16 tolerance."""
    cases = {c.kind: c for c in build_suite() if c.kind in ("cross_attention", "fusion")}
    case = cases["fusion" if bug == "softmax_of_alpha" else "cross_attention"]
    if bug == "two_percent":
        got = {q: d + 0.02 * np.abs(d).max() * np.sign(d) for q, d in case.expected.items()}
    else:
        got = _layer_results(case, bug)
    base = baseline_errors(case.inputs, case.expected, case.kind, dtypes=["bfloat16"])
    results = {q: compare_attention(got[q], d, dtype="bfloat16", quantity=q,
                                    baseline=base["bfloat16"][q])
               for q, d in case.expected.items()}  # fmt: skip
    assert not all(r.passed for r in results.values()), bug
    if bug == "two_percent":
        assert all(compare_attention(got[q], d, dtype="bfloat16", quantity=q).passed
                   for q, d in case.expected.items())  # fmt: skip
    correct = _layer_results(case, "none")  # the same code without the bug passes
    assert all(compare_attention(correct[q], d, dtype="bfloat16", quantity=q,
                                 baseline=base["bfloat16"][q]).passed
               for q, d in case.expected.items() if q != "d_b_k")  # fmt: skip


@pytest.mark.parametrize("blocked", [False, True])
def test_float64_emulation_of_every_serving_case_is_the_truth(blocked, monkeypatch) -> None:
    """rounding('float64') is the identity: the padded batch (its NaN padding read as 0), each
    packed sequence (its own causal offset and window, zero-length ones, queries without a
    key), the paged rotary decoding step (the cache written, NaN slots kept), the split-KV
    merge (empty chunks) and rotary emulated in float64 give the stored truth, NaN where it is;
    so do a packed and a KV cache config case with a window, ALiBi, softcap and sinks."""
    import numpy_attention.verify.precision as precision
    from numpy_attention.verify.precision import _SERVING_EMULATIONS

    if blocked:  # long packed sequences are emulated a block of rows at a time: here every one
        monkeypatch.setattr(precision, "BLOCKED_FROM", 1)
        monkeypatch.setattr(precision, "_BLOCK_SCORES", 1)
        monkeypatch.setattr(precision, "_KEY_BLOCK", 2)
    cases = _serving_cases()
    assert {c.kind for c in cases} == set(_SERVING_EMULATIONS) and len(cases) == 10
    packed = {"name": "packed", "Hq": 2, "E": 8, "lengths_q": [3, 1, 4], "lengths_k": [5, 0, 6],
              "is_causal": True, "alibi": True, "sinks": True, "softcap": 5.0}  # fmt: skip
    decode = {"name": "decode", "Hq": 4, "Hkv": 2, "E": 8, "L": 2, "cache_seqlens": [3, 0, 9],
              "page_size": 4, "is_causal": True, "window": [3, 0], "alibi": True, "sinks": True,
              "softcap": 5.0}  # fmt: skip
    # d_sinks summed over sequences, a row that sees the sink only; a KV cache without rotary
    cases += _config_case_list(packed, decode)
    for c in cases:
        got = _SERVING_EMULATIONS[c.kind](c.inputs, "float64")
        assert set(got) == set(c.expected), c.name
        for q, want in c.expected.items():
            fin = np.isfinite(want)
            assert np.array_equal(np.isfinite(got[q]), fin), (c.name, q)
            np.testing.assert_array_equal(got[q][np.isinf(want)], want[np.isinf(want)])
            scale = max(float(np.max(np.abs(want[fin]), initial=0.0)), 1.0)
            assert np.max(np.abs(got[q][fin] - want[fin]), initial=0.0) <= 1e-12 * scale, (
                c.name, q)  # fmt: skip


def test_serving_cases_get_a_baseline_that_torch_passes_and_2_percent_fails() -> None:
    """The manifest stores baseline_error for every serving case; PyTorch through the adapter
    (fused SDPA per batch row, eager attention per packed sequence and per cache row, its
    merge and rotary in the dtype) passes it in bfloat16 and float16, and an error of 2 % of
    max |out|, which the absolute bfloat16 tolerance lets through, fails it."""
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    import importlib.util

    from numpy_attention.verify.suite import manifest

    spec = importlib.util.spec_from_file_location(
        "torch_adapter", Path(__file__).resolve().parents[1] / "examples/torch_adapter.py"
    )
    adapter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapter)
    cases = _serving_cases()
    stored = {e["name"]: e.get("baseline_error") for e in manifest(cases)["cases"]}
    for c in cases:
        for dtype in ("bfloat16", "float16"):
            base = stored[c.name][dtype]
            assert set(base) == set(c.expected), c.name
            got = adapter.RUNNERS[c.kind](dict(c.inputs), getattr(torch, dtype))
            for q, want in c.expected.items():
                r = compare_attention(np.asarray(got[q], np.float64), want, dtype=dtype,
                                      quantity=q, baseline=base[q])  # fmt: skip
                assert r.passed and r.policy == "baseline", (c.name, dtype, q, str(r))
        want = c.expected["out"]
        off = want + 0.02 * np.max(np.abs(want[np.isfinite(want)])) * np.sign(want)
        assert compare_attention(off, want, dtype="bfloat16").passed, c.name
        b = stored[c.name]["bfloat16"]["out"]
        assert not compare_attention(off, want, dtype="bfloat16", baseline=b).passed, c.name


def test_lse_is_judged_relative_to_at_least_1() -> None:
    """lse = m + log(l): l's relative round-off is lse's absolute error, so Eq. (7.1)'s scale
    for lse is at least 1. One key at a score of 3.7e-4: a correct float32 kernel (exp, then log,
    under the Cauchy-Schwarz bound) errs by 5e-8, 1.3e-4 of lse, and passes; 1e-4 more fails."""
    q, k, v = (np.full((1, 1, 1, 1), x) for x in (31 / 1024, 101 / 8192, 1.0))
    f = np.float32
    _, c64 = attention_forward(q, k, v, scale=1.0)
    _, c32 = attention_forward(q.astype(f), k.astype(f), v.astype(f), scale=1.0)
    want, got = c64.lse, c32.lse.astype(np.float64)
    assert np.abs(got - want).max() > 1e-4 * np.abs(want).max() > 0
    assert compare_attention(got, want, dtype="float32", quantity="lse").passed
    assert not compare_attention(want + 1e-4, want, dtype="float32", quantity="lse").passed
    # the floor is lse's alone: the same numbers as out are judged relative to their own size
    assert not compare_attention(got, want, dtype="float32", quantity="out").passed


def test_float32_is_judged_by_the_absolute_policy_even_with_a_baseline() -> None:
    d = np.ones((1, 1, 2, 2))
    r = compare_attention(d * (1 + 1e-6), d, dtype="float32", baseline=0.0)
    assert r.passed and r.policy == "absolute"


def test_check_path_policy_and_cosine_in_the_report(tmp_path: Path) -> None:
    """check_path grades float16 by the baseline unless policy='absolute'; JSON has both."""
    suite = tmp_path / "suite"
    write_suite(suite)
    _, expected = load_suite(suite)
    res = tmp_path / "res"
    res.mkdir()
    for case, qs in expected.items():
        np.savez(res / f"{case}.npz", **{q: a.astype(np.float16) for q, a in qs.items()})
    rep = check_path(res, suite, dtype="float16")
    rows = rep.as_json()["rows"]
    assert rep.passed and {"baseline"} == {r["policy"] for r in rows}  # layers too, since 12-04
    assert all("cosine" in r and "mismatch" in r for r in rows)
    assert {
        r["policy"]
        for r in check_path(res, suite, dtype="float16", policy="absolute").as_json()["rows"]
    } == {"absolute"}
    with pytest.raises(ValueError, match="policy"):
        check_path(res, suite, dtype="float16", policy="loose")


def test_manifest_baseline_that_is_not_a_number_is_unusable(tmp_path: Path) -> None:
    write_suite(tmp_path)
    man = json.loads((tmp_path / "manifest.json").read_text())
    man["cases"][0]["baseline_error"]["bfloat16"]["out"] = "1e300"
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UnusableInput, match="baseline_error"):
        load_suite(tmp_path)


# --- declared gaps ---------------------------------------------------------------------------


def _results_without_weights(tmp_path: Path, expected: dict) -> Path:
    d = tmp_path / "res"
    d.mkdir()
    for case, qs in expected.items():
        if case != "dropout":
            np.savez(d / f"{case}.npz", **{q: a for q, a in qs.items() if q != "weights"})
    return d


def test_declared_gaps_are_not_applicable_and_strict_counts_only_undeclared(tmp_path) -> None:
    suite = tmp_path / "suite"
    write_suite(suite)
    _, expected = load_suite(suite)
    res = _results_without_weights(tmp_path, expected)
    assert not check_path(res, suite, dtype="float64", strict=True).passed
    (res / "gaps.json").write_text(gaps_json([{"quantity": "weights", "reason": "none"},
                                              {"case": "dropout", "reason": "own"}]))  # fmt: skip
    rep = check_path(res, suite, dtype="float64", strict=True)
    assert rep.passed, rep.table()
    with_weights = [c for c, qs in expected.items() if "weights" in qs and c != "dropout"]
    assert rep.counts["N/A"] == len(with_weights) and rep.gap_cases == ["dropout"]
    assert rep.counts["MISSING"] == 0 and "not applicable" in rep.table().splitlines()[-1]
    (res / "gaps.json").write_text(gaps_json([{"quantity": "weights", "reason": "none"}]))
    assert not check_path(res, suite, dtype="float64", strict=True).passed  # dropout undeclared


def test_gaps_in_a_single_npz_and_malformed_gaps_exit_2(tmp_path, capsys) -> None:
    _, expected = load_suite()
    f = tmp_path / "r.npz"
    arrays = {f"{c}/{q}": a for c, qs in expected.items() for q, a in qs.items() if q != "weights"}
    np.savez(f, gaps=np.array(gaps_json([{"quantity": "weights", "reason": "x"}])), **arrays)
    rep = check_path(f, dtype="float64", strict=True)
    assert rep.passed and not rep.unknown
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "plain.npz", **expected["plain"])
    (tmp_path / "d" / "gaps.json").write_text('{"format": "numpy-attention-gaps", "gaps": [{}]}')
    assert main(["check", str(tmp_path / "d")]) == 2
    assert "must name a case" in capsys.readouterr().err


# --- check_callable and the strategies -------------------------------------------------------


def test_check_callable_passes_a_correct_kernel_and_names_a_planted_bug() -> None:
    ok = check_callable(numpy_kernel, dtype="bfloat16")
    assert ok.passed and ok.counts["PASS"] >= 100 and not ok.missing_cases
    bad = check_callable(lambda **a: numpy_kernel(**a, bug="missing_scale"), dtype="float32",
                         cases=["plain"])  # fmt: skip
    assert not bad.passed
    first = next(r for r in bad.rows if r.status == "FAIL").comparison
    assert "1/scale" in first.hints[0]


def test_check_callable_reads_torch_tensors_in_bfloat16() -> None:
    torch = pytest.importorskip("torch")

    def kernel(q, k, v, d_out, scale, **_):
        q, k, v = (torch.tensor(x, dtype=torch.bfloat16, requires_grad=True) for x in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
        out.backward(torch.tensor(d_out, dtype=torch.bfloat16))
        return {"out": out, "dq": q.grad, "dk": k.grad, "dv": v.grad}

    rep = check_callable(kernel, dtype="bfloat16", cases=["plain", "lengths_differ", "long_rows"])
    assert rep.passed and rep.counts["PASS"] == 12, rep.table()


def test_a_kernel_that_cannot_run_a_case_leaves_it_missing() -> None:
    def kernel(**a):
        if a["dropout_p"]:
            raise NotImplementedError
        return numpy_kernel(**a)

    dropout = [c.name for c in build_suite() if c.kind == "sdpa" and c.flags["dropout_p"]]
    gaps = [{"case": name, "reason": "no dropout"} for name in dropout]
    assert not check_callable(kernel, dtype="float32", strict=True).passed
    rep = check_callable(kernel, dtype="float32", gaps=gaps, strict=True)
    assert rep.passed and rep.gap_cases == dropout


def variant_kernel(q, k, v, d_out, scale, dtype, is_causal, causal_bottom_right, enable_gqa,
                   ignore=(), **variants):  # fmt: skip
    """This package's attention in float32 with the variant keywords it is given (minus ignore)."""
    f = np.float32
    kw = {n: a for n, a in variants.items() if n not in ignore and n in VARIANT_ARGUMENTS}
    align = "bottom_right" if causal_bottom_right else "top_left"
    out, cache = attention_forward(q.astype(f), k.astype(f), v.astype(f), is_causal=is_causal,
                                   scale=scale, enable_gqa=enable_gqa, causal_align=align,
                                   **kw)  # fmt: skip
    g = attention_backward(d_out.astype(f), cache)
    res = {"out": out, "lse": cache.lse, "dq": g.dq, "dk": g.dk, "dv": g.dv}
    return res if g.d_sinks is None else {**res, "d_sinks": g.d_sinks}


def test_check_callable_passes_each_variant_case_its_keywords() -> None:
    """A config case's window, softcap, ... reach the candidate; one that drops them fails."""
    from numpy_attention.verify import cases_from_config

    specs = [{"name": "window", "L": 24, "S": 24, "E": 8, "window": [3, 0], "is_causal": True},
             {"name": "softcap_sinks", "L": 9, "S": 17, "E": 8, "softcap": 5.0, "sinks": True},
             {"name": "alibi_chunks", "L": 16, "S": 16, "E": 8, "Hq": 2, "alibi": True,
              "chunk_size": 4, "sink_tokens": 1}]  # fmt: skip
    cases = cases_from_config({"cases": specs})
    seen = []
    rep = check_callable(lambda **a: seen.append(a) or variant_kernel(**a), dtype="float32",
                         cases=cases)  # fmt: skip
    assert rep.passed and rep.counts["PASS"] == 16 and rep.counts["FAIL"] == 0, rep.table()
    assert seen[0]["window"] == (3, 0)
    assert seen[1]["softcap"] == 5.0 and seen[1]["sinks"].shape == (1,)
    assert seen[2]["chunk_size"] == 4 and seen[2]["sink_tokens"] == 1
    for ignored in ("window", "softcap", "sinks", "alibi_slopes", "chunk_size"):
        bad = check_callable(partial(variant_kernel, ignore=(ignored,)), dtype="float32",
                             cases=cases)  # fmt: skip
        assert not bad.passed, ignored
    # the suite's variant cases by name; the default run passes no variant keyword
    names = [c.name for c in build_suite() if c.kind == "variant"]
    assert check_callable(variant_kernel, dtype="float32", cases=names).passed
    plain = []
    check_callable(lambda **a: plain.append(a) or numpy_kernel(**a), dtype="float32")
    assert plain and not any(set(a) & set(VARIANT_ARGUMENTS) for a in plain)


def test_check_callable_refuses_a_case_it_cannot_call() -> None:
    serving = next(c for c in build_suite() if c.kind not in ("sdpa", "variant"))
    with pytest.raises(ValueError, match=f"case '{serving.name}' is of kind"):
        check_callable(numpy_kernel, cases=[serving])
    with pytest.raises(ValueError, match="no attention case named 'nope'"):
        check_callable(numpy_kernel, cases=["nope"])


def test_the_oracle_of_a_call_with_variants_applies_them() -> None:
    case = _config_case(L=12, S=12, E=8, window=[2, 2], softcap=3.0, sinks=True, seed=5)
    args = call_arguments(case.inputs, "float64")
    want = reference(args)
    for q in ("out", "lse", "dq", "dk", "dv", "d_sinks"):
        np.testing.assert_allclose(want[q], case.expected[q], rtol=1e-13, atol=1e-13, err_msg=q)
    assert_matches_reference(variant_kernel, {**args, "dtype": "float32"})
    with pytest.raises(AssertionError):
        assert_matches_reference(lambda **a: variant_kernel(**a, ignore=("window",)),
                                 {**args, "dtype": "float32"})  # fmt: skip


def _peaked_arguments(dtype: str) -> dict:
    """Every query is 30 logits above its second key: dq and dk are ~1e-13 of their terms."""
    rng = np.random.default_rng(0)
    q = np.zeros((1, 1, 2, 4))
    q[..., 0] = 10.0
    k = np.zeros((1, 1, 3, 4))
    k[0, 0, :, 0] = [10.0, 7.0, 6.5]
    k[..., 1:] = np.round(rng.normal(size=(1, 1, 3, 3)) * 16) / 128  # exact in bfloat16
    v, d_out = (np.round(rng.normal(size=s) * 16) / 16 for s in ((1, 1, 3, 4), (1, 1, 2, 4)))
    return dict(q=q, k=k, v=v, attn_mask=None, dropout_p=0.0, dropout_mask=None,
                is_causal=False, causal_bottom_right=False, scale=1.0, enable_gqa=False,
                d_out=d_out, dtype=dtype)  # fmt: skip


def _flash_kernel(q, k, v, attn_mask, dropout_p, dropout_mask, is_causal, causal_bottom_right,
                  scale, enable_gqa, d_out, dtype, times=1.0):  # fmt: skip
    """The tiled path in ``dtype`` (float32 or float64): another order of the same sums."""
    f = np.dtype(dtype)
    out, c = flash_attention_forward(q.astype(f), k.astype(f), v.astype(f), attn_mask,
                                     is_causal=is_causal, scale=scale)  # fmt: skip
    g = flash_attention_backward(d_out.astype(f), c)
    return {"out": out, "dq": g.dq * times, "dk": g.dk, "dv": g.dv}


def test_a_gradient_far_below_its_terms_is_the_truth_and_judged_by_its_terms() -> None:
    """Eq. (7.4): the oracle's dq is the genuine 1e-12 (not zeroed), and the tolerance is
    relative to the terms it cancels from, so correct float64 and float32 kernels that sum
    in another order pass, while a float64 dq twice too large still fails."""
    args = _peaked_arguments("float64")
    out, cache = attention_forward(args["q"], args["k"], args["v"], scale=1.0)
    true_dq = attention_backward(args["d_out"], cache).dq
    T = gradient_terms(args)
    assert 0 < np.abs(true_dq).max() < 1e-12 * T["dq"]
    np.testing.assert_array_equal(reference(args)["dq"], true_dq)  # the float64 truth itself
    for dtype in ("float64", "float32"):
        assert_matches_reference(_flash_kernel, {**args, "dtype": dtype})
    assert_matches_reference(numpy_kernel, {**args, "dtype": "float32"})  # the dense one
    with pytest.raises(AssertionError, match="dq"):
        assert_matches_reference(partial(_flash_kernel, times=2.0), args)
    # without Eq. (7.4) the tiled float64 dq (the same sums in another order) fails its own size
    c = compare_attention(_flash_kernel(**args)["dq"], true_dq, dtype="float64", quantity="dq")
    assert not c.passed
    size = T["dq"] / 8
    assert compare_attention(_flash_kernel(**args)["dq"], true_dq, dtype="float64",
                             quantity="dq", magnitude=size).passed  # fmt: skip
    with pytest.raises(ValueError, match="magnitude"):
        compare_attention(true_dq, true_dq, magnitude=-1.0)


def test_gradient_terms_are_eq_7_4_written_as_loops() -> None:
    """Eq. (7.4) entry by entry, with GQA (2 query heads per KV head), a float bias broadcast
    over the batch and dropout: dS's terms in absolute value, summed into dq, dk and dB."""
    rng = np.random.default_rng(3)
    B, Hq, Hk, L, S, E, p = 2, 4, 2, 3, 5, 2, 0.25
    q, k, v = (
        rng.normal(size=(B, Hq, L, E)),
        rng.normal(size=(B, Hk, S, E)),
        rng.normal(size=(B, Hk, S, E)),
    )
    d_out, bias = rng.normal(size=(B, Hq, L, E)), rng.normal(size=(1, Hq, L, S))
    keep, scale = rng.random((B, Hq, L, S)) > p, -0.7
    args = dict(q=q, k=k, v=v, attn_mask=bias, dropout_p=p, dropout_mask=keep, is_causal=False,
                causal_bottom_right=False, scale=scale, enable_gqa=True, d_out=d_out,
                dtype="float64")  # fmt: skip
    ref = reference(args)
    P, out = ref["weights"], ref["out"]
    T_dq, T_dk, T_dB = np.zeros(q.shape), np.zeros(k.shape), np.zeros(bias.shape)
    for b, h, i, j in np.ndindex(B, Hq, L, S):
        g = h // (Hq // Hk)  # the KV head query head h reads
        dP_ij = np.abs(d_out[b, h, i]) @ np.abs(v[b, g, j]) * keep[b, h, i, j] / (1 - p)
        dS_ij = P[b, h, i, j] * (dP_ij + np.abs(d_out[b, h, i]) @ np.abs(out[b, h, i]))
        T_dq[b, h, i] += abs(scale) * dS_ij * np.abs(k[b, g, j])
        T_dk[b, g, j] += abs(scale) * dS_ij * np.abs(q[b, h, i])
        T_dB[0, h, i, j] += dS_ij
    T = gradient_terms(args)
    assert T.keys() == {"dq", "dk", "d_attn_mask"}
    np.testing.assert_allclose([T["dq"], T["dk"], T["d_attn_mask"]],
                               [T_dq.max(), T_dk.max(), T_dB.max()], rtol=1e-13)  # fmt: skip
    for n in T:  # a bound on each gradient
        assert np.abs(ref[n]).max() <= T[n]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_correct_kernel_matches_the_oracle_on_drawn_inputs(dtype: str) -> None:
    """The dense float32 kernel (float32 draws found the lse floor of Eq. (7.1))."""

    @settings(max_examples=40, deadline=None)
    @given(attention_inputs(dtype=dtype))
    def check(arguments) -> None:
        assert_matches_reference(numpy_kernel, arguments)

    check()


def tiled_kernel(q, k, v, attn_mask, dropout_p, dropout_mask, is_causal, causal_bottom_right,
                 scale, enable_gqa, d_out, dtype, **variants):  # fmt: skip
    """The tiled path with blocks of 2 queries and 3 keys, in float64 or else float32."""
    f = np.float64 if dtype == "float64" else np.float32
    align = "bottom_right" if causal_bottom_right else "top_left"
    out, c = flash_attention_forward(q.astype(f), k.astype(f), v.astype(f), attn_mask, is_causal,
                                     scale, enable_gqa, causal_align=align, dropout_p=dropout_p,
                                     dropout_mask=dropout_mask, block_q=2, block_k=3,
                                     **variants)  # fmt: skip
    g = flash_attention_backward(d_out.astype(f), c)
    res = {"out": out, "lse": c.lse, "dq": g.dq, "dk": g.dk, "dv": g.dv,
           "d_attn_mask": g.d_attn_mask, "d_sinks": g.d_sinks}  # fmt: skip
    return {n: a for n, a in res.items() if a is not None}


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_tiled_kernel_matches_the_oracle_on_drawn_variant_inputs(dtype: str) -> None:
    """The oracle (dense) and the tiled path (another summation order, blocks skipped) agree
    on every drawn combination of masks, dropout, GQA and the six variants, in each policy."""

    @settings(max_examples=30, deadline=None)
    @given(attention_inputs(dtype=dtype, variants=VARIANT_ARGUMENTS))
    def check(arguments) -> None:
        assert_matches_reference(tiled_kernel, arguments)

    check()


def drawn_variant_kernel(q, k, v, attn_mask, dropout_p, dropout_mask, is_causal,
                         causal_bottom_right, scale, enable_gqa, d_out, dtype, bug=None,
                         **variants):  # fmt: skip
    """This package's attention with the drawn variants, in float32 (or a planted bug)."""
    f = np.float32
    if bug == "window_one_wider" and variants.get("window", (None,))[0] is not None:
        variants["window"] = (variants["window"][0] + 1, variants["window"][1])
    out, cache = attention_forward(q.astype(f), k.astype(f), v.astype(f), attn_mask, dropout_p,
                                   is_causal, scale, enable_gqa, dropout_mask=dropout_mask,
                                   causal_align="bottom_right" if causal_bottom_right else
                                   "top_left", **variants)  # fmt: skip
    g = attention_backward(d_out.astype(f), cache)
    res = {"out": out, "lse": cache.lse, "dq": g.dq, "dk": g.dk, "dv": g.dv}
    return res if g.d_sinks is None else {**res, "d_sinks": g.d_sinks}


@settings(max_examples=40, deadline=None)
@given(attention_inputs(dtype="float64", variants=VARIANT_ARGUMENTS))
def test_float64_emulation_is_the_oracle_on_drawn_variant_arguments(arguments) -> None:
    """The baseline's emulation (rounding the identity in float64) gives the oracle on every
    drawn combination of the variants, dropout and masks: the window's None sides included."""
    want, got = reference(arguments), emulate_sdpa(arguments, "float64")
    for q, w in want.items():
        fin = np.isfinite(w)
        assert np.array_equal(np.isfinite(got[q]), fin), q
        scale = max(float(np.max(np.abs(w[fin]), initial=0.0)), 1.0)
        assert np.max(np.abs(got[q][fin] - w[fin]), initial=0.0) <= 1e-12 * scale, q


@settings(max_examples=40, deadline=None)
@given(attention_inputs(dtype="bfloat16", variants=VARIANT_ARGUMENTS))
def test_correct_variant_kernel_matches_the_oracle_on_drawn_inputs(arguments) -> None:
    assert_matches_reference(drawn_variant_kernel, arguments)


def test_property_test_finds_a_window_one_key_wider() -> None:
    """With variants=("window",) hypothesis finds a kernel whose window sees one key too many,
    and attention_inputs refuses a variant it does not know, naming the known ones."""
    from hypothesis import find

    def fails(arguments) -> bool:
        try:
            assert_matches_reference(
                partial(drawn_variant_kernel, bug="window_one_wider"), arguments
            )
        except AssertionError:
            return True
        return False

    found = find(attention_inputs(dtype="float32", variants=("window",)), fails,
                 settings=settings(deadline=None, database=None))  # fmt: skip
    assert found["window"][0] is not None and found["q"].size <= 16
    with pytest.raises(ValueError, match=r"unknown name\(s\) \['alibi'\]; known: \['window'"):
        attention_inputs(variants=("window", "alibi"))


def test_property_test_finds_and_shrinks_a_planted_bug() -> None:
    """hypothesis finds the missing scale and shrinks it to a small case."""
    from hypothesis import find

    def fails(arguments) -> bool:
        try:
            assert_matches_reference(lambda **a: numpy_kernel(**a, bug="missing_scale"), arguments)
        except AssertionError:
            return True
        return False

    found = find(attention_inputs(dtype="float32"), fails, settings=settings(deadline=None))
    assert found["q"].size <= 8 and found["scale"] != 1.0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_jax_passes_check_with_its_gaps_declared(tmp_path: Path, dtype: str) -> None:
    """No false alarm on JAX: every quantity it can produce passes; the rest is N/A, not MISSING."""
    pytest.importorskip("jax")
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("jax_adapter", root / "examples/jax_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    write_suite(tmp_path / "suite")
    assert module.main([str(tmp_path / "suite"), str(tmp_path / "res"), "--dtype", dtype]) == 0
    rep = check_path(tmp_path / "res", tmp_path / "suite", dtype=dtype, strict=True)
    assert rep.passed, rep.table()
    assert rep.counts["N/A"] > 0 and rep.counts["PASS"] > 80


def test_cli_policy_flag_selects_the_policy(tmp_path: Path, capsys) -> None:
    """check --policy absolute passes an error of 2 % in bfloat16 that the default refuses."""
    _, expected = load_suite()
    d = tmp_path / "res"
    d.mkdir()
    out = expected["plain"]["out"]
    np.savez(d / "plain.npz", out=out + 0.02 * np.max(np.abs(out)) * np.sign(out))
    assert main(["check", str(d), "--dtype", "bfloat16"]) == 1
    assert main(["check", str(d), "--dtype", "bfloat16", "--policy", "absolute"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["check", str(d), "--policy", "loose"])
    assert e.value.code == 2
    capsys.readouterr()
