"""The cases of suite version 2: each one's expected values recomputed independently.

- sdpa cases: the loop oracle (tests/oracles.py), from the arguments the manifest records;
- variant cases: an independent dense formula written here, and its directional derivative
  for the gradients; the variant arguments are read back from the manifest's JSON;
- tiled cases: computed without an ``L x S`` array, equal to the dense core;
- serving cases: per-sequence dense attention, an explicit rotation, the merge formula;
- user-sized cases (:func:`cases_from_config`): deterministic, validated, reproducible.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from oracles import attention_backward_oracle, attention_oracle
from strategies import config_entries

from numpy_attention.attention import attention_backward, attention_forward
from numpy_attention.verify import (
    build_suite,
    cases_from_config,
    check_results,
    compare_attention,
    load_suite,
    manifest,
    write_suite,
)
from numpy_attention.verify import cases as cases_module

ROOT = Path(__file__).resolve().parent.parent
#: The 22 cases of suite version 1, whose inputs and values must stay as they were.
V1 = {
    "plain", "lengths_differ", "value_width", "batch_broadcast", "bool_mask", "float_bias",
    "causal_square", "causal_top_left_short", "causal_top_left_tall",
    "causal_bottom_right_short", "causal_bottom_right_tall", "key_padding", "sliding_window",
    "fully_masked_rows", "gqa", "mqa", "dropout", "large_logits", "single_key", "long_rows",
    "cross_attention_layer", "weighted_fusion",
}  # fmt: skip


@pytest.fixture(scope="module")
def suite() -> dict[str, Any]:
    return {c.name: c for c in build_suite()}


@pytest.fixture(scope="module")
def entries(suite: dict[str, Any]) -> dict[str, Any]:
    """The manifest's entries, through JSON (what another implementation reads)."""
    man = json.loads(json.dumps(manifest(suite.values())))
    return {e["name"]: e for e in man["cases"]}


def new_cases(suite: dict[str, Any], *kinds: str) -> list[str]:
    return [n for n, c in suite.items() if n not in V1 and c.kind in kinds]


def core_kwargs(entry: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of attention_forward, from the manifest's flags and the inputs."""
    f = entry["flags"]
    kw = dict(attn_mask=a.get("attn_mask"), dropout_p=f["dropout_p"], is_causal=f["is_causal"],
              scale=f["scale"], enable_gqa=f["enable_gqa"], causal_align=f["causal_align"],
              dropout_mask=a.get("dropout_mask"))  # fmt: skip
    for n, val in f.get("variants", {}).items():
        kw[n] = tuple(val) if n == "window" else val
    return kw


# ---------------------------------------------------------------------------
# The suite: coverage and byte identity of version 1
# ---------------------------------------------------------------------------


def test_suite_holds_a_case_for_every_blind_spot_and_variant(suite: dict[str, Any]) -> None:
    """Coverage: the cases issue 12, 13 and 15 ask for, by their properties."""
    c = suite
    assert sum(not x.flags.get("scale_is_default", True) for x in c.values()) >= 3
    for kind in ("bool", "float"):
        assert sum(bool(x.flags.get("is_causal")) and x.flags.get("attn_mask") == kind
                   for x in c.values()) >= 2  # fmt: skip
    assert max(x.inputs["k"].shape[-2] for x in c.values() if x.kind == "sdpa") >= 8192
    assert {c[f"head_dim_{e}"].inputs["q"].shape[-1] for e in (59, 72, 104)} == {59, 72, 104}
    assert (
        c["mla_widths"].inputs["q"].shape[-1] == 192
        and c["mla_widths"].inputs["v"].shape[-1] == 128
    )
    assert c["decode_single_query"].inputs["q"].shape[-2] == 1
    variants = set().union(*(x.flags.get("variants", {}) for x in c.values()))
    assert {"window", "softcap", "alibi_slopes", "sinks", "chunk_size", "sink_tokens"} <= variants
    assert {x.kind for x in c.values()} >= {"varlen", "kvcache", "merge", "rotary", "padded"}
    assert (
        np.isnan(c["nan_padding"].inputs["k"]).any()
        and np.isnan(c["nan_padding"].inputs["v"]).any()
    )
    assert c["logits_below_sentinel"].expected["lse"].max() < -5e4


V1_FINGERPRINTS = ROOT / "tests/data/suite_v1.json"
#: How far a version-1 expected value's projections may move: round-off (1e-16 per value) in
#: any summation order passes, a change of meaning (1e-12 of the array and more) does not.
V1_RTOL = 1e-13


def v1_fingerprint(path: Path) -> dict[str, Any]:
    """What must not change in one case file, on any machine.

    The inputs (seeded draws, rounded to 8 bits: no BLAS) byte for byte; of each expected
    array, the place and sign of every non-finite entry exactly and three projections of its
    finite entries (sum, sum of |x|, sum of w x with w a fixed normal draw). The expected
    values' last bits depend on the BLAS kernel's summation order (OpenBLAS's Haswell and
    SkylakeX kernels write different bits), so their bytes are not pinned.
    """
    with np.load(path) as z:
        arrays = {n: z[n] for n in z.files}
    inputs, nonfinite, sums = hashlib.sha256(), hashlib.sha256(), {}
    for name, a in arrays.items():
        head = f"{name} {a.dtype.str} {a.shape};".encode()
        if not name.startswith("expected_"):
            inputs.update(head + a.tobytes())
            continue
        finite = np.isfinite(a)
        pattern = np.where(np.isnan(a), 2, np.where(finite, 0, np.sign(a))).astype(np.int8)
        nonfinite.update(head + pattern.tobytes())
        x = np.where(finite, a, 0.0).ravel()
        w = np.random.default_rng(x.size).standard_normal(x.size)
        ax = np.abs(x)
        sums[name] = [float(x.sum()), float(ax.sum()), float(w @ x), float(np.abs(w) @ ax)]
    return {"inputs": inputs.hexdigest(), "nonfinite": nonfinite.hexdigest(), "sums": sums}


def write_v1_fingerprints() -> None:
    """Rewrite tests/data/suite_v1.json (only when a change of version 1 is meant)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        write_suite(d, [c for c in build_suite() if c.name in V1])
        prints = {n: v1_fingerprint(Path(d) / f"{n}.npz") for n in sorted(V1)}
    V1_FINGERPRINTS.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")


def test_version_1_case_files_keep_their_inputs_and_values(tmp_path: Path) -> None:
    """The 22 case files of version 1: the same inputs, bytes; the same expected values.

    Pinned by tests/data/suite_v1.json (``write_v1_fingerprints``): inputs and non-finite
    entries exactly, the finite expected values to ``V1_RTOL`` of their projections. The
    no-shift softmax (merge ce97ab1) moved them by at most 2e-15, which passes; writing a
    different value anywhere, or a different input, fails.
    """
    want = json.loads(V1_FINGERPRINTS.read_text())
    assert set(want) == V1
    write_suite(tmp_path, [c for c in build_suite() if c.name in V1])
    for name in sorted(V1):
        got, ref = v1_fingerprint(tmp_path / f"{name}.npz"), want[name]
        assert got["inputs"] == ref["inputs"], f"{name}: the inputs changed"
        assert got["nonfinite"] == ref["nonfinite"], f"{name}: the non-finite entries moved"
        assert set(got["sums"]) == set(ref["sums"]), f"{name}: other expected arrays"
        for q, (s, s_abs, ws, ws_abs) in ref["sums"].items():
            g = got["sums"][q]
            assert abs(g[0] - s) <= V1_RTOL * s_abs and abs(g[1] - s_abs) <= V1_RTOL * s_abs, (
                name, q, g, ref["sums"][q])  # fmt: skip
            assert abs(g[2] - ws) <= V1_RTOL * ws_abs, (name, q, g, ref["sums"][q])


# ---------------------------------------------------------------------------
# sdpa cases: the loop oracle; tiled cases: no L x S array
# ---------------------------------------------------------------------------

SMALL_SDPA = [
    "scale_not_default", "scale_one_causal", "scale_small_gqa", "causal_and_bool_mask",
    "causal_bottom_right_and_bool_mask", "causal_and_float_bias",
    "causal_bottom_right_and_float_bias", "bool_mask_per_batch", "float_bias_per_batch",
    "gqa_causal", "dropout_causal", "logits_below_sentinel", "logits_below_sentinel_padded",
    "heavy_tailed", "outlier_channels", "head_dim_59", "head_dim_72", "mla_widths",
    "decode_single_query", "decode_single_query_masked", "single_key_causal",
]  # fmt: skip


@pytest.mark.parametrize("name", SMALL_SDPA)
def test_new_sdpa_case_matches_the_loop_oracle(suite, entries, name: str) -> None:
    """Expected values = the loop oracle run with the arguments the manifest records, to 1e-12."""
    c, e = suite[name], entries[name]
    kw = core_kwargs(e, c.inputs)
    a = c.inputs
    out, P, lse = attention_oracle(a["q"], a["k"], a["v"], **kw)
    g = attention_backward_oracle(a["d_out"], a["q"], a["k"], a["v"], **kw)
    want = {"out": out, "weights": P, "lse": lse, **{n: x for n, x in g.items() if x is not None}}
    assert set(c.expected) == set(want)
    logits = float(np.max(np.abs(lse[np.isfinite(lse)]), initial=0))  # round-off grows with them
    for n, x in want.items():
        tol = 1e-12 * max(1.0, float(np.max(np.abs(x[np.isfinite(x)]), initial=0))) + 1e-15 * logits
        np.testing.assert_allclose(c.expected[n], x, rtol=1e-12, atol=tol, err_msg=n)


def test_the_remaining_new_sdpa_cases_are_listed(suite) -> None:
    """Every new dense sdpa case is checked by the oracle above or the tiled test below."""
    rest = set(new_cases(suite, "sdpa")) - set(SMALL_SDPA)
    assert rest == {"long_rows_8192", "long_rows_8192_causal", "long_rows_gqa", "head_dim_104"}


@pytest.mark.parametrize("name", ["long_rows_8192", "long_rows_8192_causal"])
def test_long_rows_are_computed_tiled_without_an_l_by_s_array(monkeypatch, name: str) -> None:
    """The 8192-key cases come from the tiled path: every block of scores is narrower than S,
    the dense core is never called, and the values equal the dense core's to 1e-12."""
    import numpy_attention.flash as flash

    row = next(r for r in cases_module._SDPA_TABLE if r[0] == name)
    widths: list[int] = []
    real = flash._scores_block

    def spy(x, lay, q_rows, i0, i1, j0, j1):  # type: ignore[no-untyped-def]
        widths.append(j1 - j0)
        return real(x, lay, q_rows, i0, i1, j0, j1)

    def no_dense(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the dense core was called")

    monkeypatch.setattr(flash, "_scores_block", spy)
    monkeypatch.setattr(cases_module, "attention_forward", no_dense)
    c = cases_module._sdpa_case(name, "", *row[1:5], **row[5])
    S = c.inputs["k"].shape[-2]
    assert S >= 8192 and widths and max(widths) < S and "weights" not in c.expected
    monkeypatch.undo()
    out, cache = attention_forward(c.inputs["q"], c.inputs["k"], c.inputs["v"],
                                   **core_kwargs(manifest([c])["cases"][0], c.inputs))  # fmt: skip
    g = attention_backward(c.inputs["d_out"], cache)
    for n, x in {"out": out, "lse": cache.lse, "dq": g.dq, "dk": g.dk, "dv": g.dv}.items():
        np.testing.assert_allclose(c.expected[n], x, rtol=1e-12, atol=1e-13, err_msg=n)


@pytest.mark.parametrize("name", ["long_rows_gqa", "head_dim_104"])
def test_larger_sdpa_cases_match_the_core_from_the_manifest(suite, entries, name: str) -> None:
    """The cases too large for the loop oracle: the core with the recorded arguments."""
    c = suite[name]
    out, cache = attention_forward(c.inputs["q"], c.inputs["k"], c.inputs["v"],
                                   **core_kwargs(entries[name], c.inputs))  # fmt: skip
    g = attention_backward(c.inputs["d_out"], cache)
    for n, x in {"out": out, "weights": cache.P, "lse": cache.lse, "dq": g.dq, "dk": g.dk,
                 "dv": g.dv}.items():  # fmt: skip
        np.testing.assert_array_equal(c.expected[n], x, err_msg=n)


# ---------------------------------------------------------------------------
# variant cases: an independent formula, read from the manifest
# ---------------------------------------------------------------------------


def variant_formula(a: dict[str, Any], f: dict[str, Any], q, k, v, sinks=None):  # type: ignore[no-untyped-def]
    """Dense attention with the variants, written here from docs/variants.md's conventions."""
    var = f.get("variants", {})
    L, S = q.shape[-2], k.shape[-2]
    if f["enable_gqa"]:
        G = q.shape[-3] // k.shape[-3]
        k, v = np.repeat(k, G, axis=-3), np.repeat(v, G, axis=-3)
    s = f["scale"] * np.einsum("...le,...se->...ls", q, k)
    if "softcap" in var:
        s = var["softcap"] * np.tanh(s / var["softcap"])
    d = S - L if f["causal_align"] == "bottom_right" else 0
    i, j = np.arange(L)[:, None] + d, np.arange(S)[None, :]
    if "alibi_slopes" in var:
        s = s - np.array(var["alibi_slopes"])[:, None, None] * np.abs(i - j)
    see = np.ones((L, S), dtype=bool)
    left, right = var.get("window", (None, None))
    if left is not None:
        see &= j >= i - left
    if right is not None:
        see &= j <= i + right
    if "chunk_size" in var:
        see &= i // var["chunk_size"] == j // var["chunk_size"]
    if var.get("sink_tokens"):
        see |= j < var["sink_tokens"]
    if f["is_causal"]:
        see &= j <= i
    s = np.where(see, s, -np.inf)
    cols = [s] if sinks is None else [s, np.broadcast_to(sinks[:, None, None], s.shape[:-1] + (1,))]
    full = np.concatenate(cols, axis=-1)
    m = np.max(full, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(full - m)
    tot = e.sum(-1, keepdims=True)
    P = (e / np.where(tot > 0, tot, 1.0))[..., :S]
    with np.errstate(divide="ignore"):
        lse = (m + np.log(tot))[..., 0]
    return P @ v, P, lse


@pytest.mark.parametrize(
    "name", [n for n in cases_module._DESCRIPTIONS if n.startswith("variant_")]
)
def test_variant_case_matches_an_independent_formula(suite, entries, name: str) -> None:
    """Forward: the formula above with the manifest's arguments, to 1e-12; gradients: its
    directional derivative along random directions (central differences, 1e-6)."""
    c, f = suite[name], entries[name]["flags"]
    a = c.inputs
    sinks = np.array(f["variants"]["sinks"]) if "sinks" in f["variants"] else None
    out, P, lse = variant_formula(a, f, a["q"], a["k"], a["v"], sinks)
    for n, x in {"out": out, "weights": P, "lse": lse}.items():
        np.testing.assert_allclose(c.expected[n], x, rtol=1e-12, atol=1e-12, err_msg=n)
    rng = np.random.default_rng(0)
    names = ["q", "k", "v"] + (["sinks"] if sinks is not None else [])
    x0 = {"q": a["q"], "k": a["k"], "v": a["v"], "sinks": sinks}
    for n in names:
        d = rng.standard_normal(np.shape(x0[n]))
        h = 1e-6

        def loss(t: float, n: str = n, d: np.ndarray = d) -> float:
            x = dict(x0, **{n: x0[n] + t * d})
            res = variant_formula(a, f, x["q"], x["k"], x["v"], x["sinks"])[0]
            return float(np.sum(res * a["d_out"]))

        numeric = (loss(h) - loss(-h)) / (2 * h)
        analytic = float(np.sum(c.expected[f"d{'_' if n == 'sinks' else ''}{n}"] * d))
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (n, numeric, analytic)


# ---------------------------------------------------------------------------
# serving cases
# ---------------------------------------------------------------------------


def test_nan_padding_expected_values_are_attention_over_the_real_keys(suite) -> None:
    """Padded cases: finite; each batch row equals attention over its first key_lengths keys
    (the NaN never read); dk = dv = 0 on the padding."""
    for name in new_cases(suite, "padded"):
        c = suite[name]
        a = c.inputs
        assert all(np.isfinite(x).all() for x in c.expected.values())
        for b, n in enumerate(a["key_lengths"]):
            assert np.isnan(a["k"][b, :, n:]).all() and np.isfinite(a["k"][b, :, :n]).all()
            out, cache = attention_forward(a["q"][b], a["k"][b, :, :n], a["v"][b, :, :n],
                                           is_causal=bool(a["is_causal"]),
                                           scale=float(a["scale"]))  # fmt: skip
            g = attention_backward(a["d_out"][b], cache)
            np.testing.assert_allclose(c.expected["out"][b], out, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(c.expected["weights"][b, ..., :n], cache.P, atol=1e-13)
            np.testing.assert_allclose(c.expected["dq"][b], g.dq, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(c.expected["dk"][b, :, :n], g.dk, rtol=1e-12, atol=1e-13)
            assert not c.expected["dk"][b, :, n:].any() and not c.expected["dv"][b, :, n:].any()


def test_varlen_cases_equal_dense_attention_per_sequence(suite) -> None:
    """Packed cases: sequence b's rows are dense attention over its own keys (S_b = 0: out 0,
    lse -inf); zero-length and length-1 sequences are present."""
    for name in new_cases(suite, "varlen"):
        c = suite[name]
        a, f = c.inputs, c.flags
        cq, ck = a["cu_seqlens_q"], a["cu_seqlens_k"]
        assert 0 in np.diff(cq) and 1 in np.diff(cq)
        for b in range(len(cq) - 1):
            rq, rk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
            if rq.stop == rq.start:
                continue
            if rk.stop == rk.start:
                assert (
                    not c.expected["out"][rq].any() and np.isneginf(c.expected["lse"][:, rq]).all()
                )
                continue
            kw = {"window": tuple(f["variants"]["window"])} if "variants" in f else {}
            out, cache = attention_forward(
                *(np.swapaxes(a[n][r], 0, 1) for n, r in (("q", rq), ("k", rk), ("v", rk))),
                is_causal=f["is_causal"], causal_align=f["causal_align"], scale=f["scale"],
                enable_gqa=f["enable_gqa"], **kw,
            )  # fmt: skip
            g = attention_backward(np.swapaxes(a["d_out"][rq], 0, 1), cache)
            np.testing.assert_allclose(c.expected["out"][rq], np.swapaxes(out, 0, 1), atol=1e-13)
            np.testing.assert_allclose(c.expected["lse"][:, rq], cache.lse, atol=1e-13)
            np.testing.assert_allclose(c.expected["dk"][rk], np.swapaxes(g.dk, 0, 1), atol=1e-13)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """Rotary embedding written out pair by pair (loops over the pairs)."""
    y = x.copy()
    half = cos.shape[-1]
    for i in range(half):
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
        c, s = cos[..., i], sin[..., i]
        y[..., a] = x[..., a] * c - x[..., b] * s
        y[..., b] = x[..., b] * c + x[..., a] * s
    return y


def test_rotary_cases_follow_the_pairwise_formula(suite) -> None:
    """out = the pairwise rotation; dx is its transpose applied to d_out: sum(dx x) = sum(d_out y)
    for this linear map, and dx rotated back equals d_out."""
    for name in new_cases(suite, "rotary"):
        c = suite[name]
        a = c.inputs
        cos, sin = a["cos"][:, None], a["sin"][:, None]
        y = rotate(a["x"], cos, sin, bool(a["interleaved"]))
        np.testing.assert_allclose(c.expected["out"], y, atol=1e-15)
        assert np.isclose(np.sum(c.expected["dx"] * a["x"]), np.sum(a["d_out"] * y), rtol=1e-12)
    assert {suite[n].flags["interleaved"] for n in new_cases(suite, "rotary")} == {True, False}


def test_kvcache_cases_equal_dense_attention_over_the_written_cache(suite) -> None:
    """Each row's output is dense bottom-right attention over its first n_b + L positions of
    the updated cache (gathered through the block table); NaN only in unused slots."""
    for name in new_cases(suite, "kvcache"):
        c = suite[name]
        a, f = c.inputs, c.flags
        page, table = a["k_cache"].shape[1], a["block_table"]
        L = a["q"].shape[1]
        for b, n in enumerate(a["cache_seqlens"]):
            new = np.arange(n, n + L)
            kn = rotate(a["k_new"][b], a["rotary_cos"][new][:, None], a["rotary_sin"][new][:, None],
                        f["rotary_interleaved"])  # fmt: skip
            np.testing.assert_allclose(c.expected["k_cache_out"][table[b, new // page], new % page],
                                       kn, atol=1e-15)  # fmt: skip
            qb = rotate(a["q"][b], a["rotary_cos"][new][:, None], a["rotary_sin"][new][:, None],
                        f["rotary_interleaved"])  # fmt: skip
            pos = np.arange(n + L)
            kb = c.expected["k_cache_out"][table[b, pos // page], pos % page]
            vb = c.expected["v_cache_out"][table[b, pos // page], pos % page]
            assert np.isfinite(kb).all() and np.isfinite(vb).all()
            out, cache = attention_forward(np.swapaxes(qb, 0, 1), np.swapaxes(kb, 0, 1),
                                           np.swapaxes(vb, 0, 1), is_causal=True,
                                           causal_align="bottom_right", enable_gqa=True,
                                           scale=f["scale"])  # fmt: skip
            np.testing.assert_allclose(c.expected["out"][b], np.swapaxes(out, 0, 1), atol=1e-13)
            np.testing.assert_allclose(c.expected["lse"][b], cache.lse, atol=1e-13)
        assert np.isnan(a["k_cache"]).any() and np.isnan(c.expected["k_cache_out"]).any()


def test_merge_case_follows_the_merge_rule_and_its_gradient(suite) -> None:
    """out = sum_c w_c O_c with w_c = exp(lse_c - logsumexp(lse)); the gradients agree with
    central differences of sum(out d_out) + sum(lse d_lse) in the finite lse entries."""
    c = suite["merge_split_kv"]
    a = c.inputs

    def merge(lses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = np.max(lses, axis=0)
        m = np.where(np.isfinite(m), m, 0.0)
        tot = np.exp(lses - m).sum(0)
        with np.errstate(divide="ignore"):
            lse = m + np.log(tot)
        w = np.exp(lses - m) / np.where(tot > 0, tot, 1.0)
        return np.sum(w[..., None] * np.nan_to_num(a["outs"]), axis=0), lse

    out, lse = merge(a["lses"])
    np.testing.assert_allclose(c.expected["out"], out, atol=1e-14)
    np.testing.assert_array_equal(np.isneginf(c.expected["lse"]), np.isneginf(lse))
    assert np.isnan(a["outs"]).any() and np.isneginf(lse).any()
    d = np.where(
        np.isfinite(a["lses"]), np.random.default_rng(1).standard_normal(a["lses"].shape), 0
    )

    def loss(t: float) -> float:
        o, s = merge(a["lses"] + t * d)
        return float(np.sum(o * a["d_out"]) + np.sum(np.where(np.isfinite(s), s * a["d_lse"], 0)))

    numeric = (loss(1e-6) - loss(-1e-6)) / 2e-6
    assert np.isclose(numeric, np.sum(c.expected["d_lses"] * d), rtol=1e-6)
    assert not c.expected["d_outs"][np.isneginf(a["lses"])].any()


# ---------------------------------------------------------------------------
# User-sized cases
# ---------------------------------------------------------------------------

CONFIG = {
    "seed": 7,
    "cases": [
        {"name": "tile_edges", "B": 2, "Hq": 4, "Hkv": 2, "L": 65, "S": 129, "E": 24,
         "is_causal": True, "causal_align": "bottom_right", "window": [32, 0], "softcap": 20.0,
         "dtypes": ["bfloat16"]},
        {"name": "sinks_tiled", "Hq": 2, "L": 33, "S": 300, "E": 16, "Ev": 8, "sinks": True,
         "path": "tiled", "scale": 0.2},
        {"name": "plain_user", "L": 5, "S": 7, "E": 8},
    ],
}  # fmt: skip


def test_config_cases_are_deterministic(tmp_path: Path) -> None:
    """The same config gives the same arrays and the same bytes on disk; another seed does not."""
    a, b = cases_from_config(CONFIG), cases_from_config(json.loads(json.dumps(CONFIG)))
    for x, y in zip(a, b, strict=True):
        for n in x.arrays():
            np.testing.assert_array_equal(x.arrays()[n], y.arrays()[n])
    write_suite(tmp_path / "one", a)
    write_suite(tmp_path / "two", b)
    for p in (tmp_path / "one").iterdir():
        assert p.read_bytes() == (tmp_path / "two" / p.name).read_bytes(), p.name
    other = cases_from_config(dict(CONFIG, seed=8))
    assert not np.array_equal(other[0].inputs["q"], a[0].inputs["q"])


def test_config_cases_have_the_shapes_variants_and_path_asked_for(tmp_path: Path) -> None:
    """Shapes, GQA, the variants in the manifest, no weights on the tiled path; the manifest's
    recorded config rebuilds the same case; a config file works like the mapping."""
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(CONFIG))
    edges, tiled, plain = cases_from_config(path)
    assert edges.kind == "variant" and edges.expected["dk"].shape == (2, 2, 129, 24)
    assert edges.flags["variants"] == {"window": [32, 0], "softcap": 20.0}
    assert edges.flags["dtypes"] == ["bfloat16"] and edges.flags["causal_align"] == "bottom_right"
    assert "weights" not in tiled.expected and "d_sinks" in tiled.expected
    assert tiled.expected["out"].shape == (1, 2, 33, 8) and tiled.flags["scale"] == 0.2
    assert plain.kind == "sdpa" and "weights" in plain.expected
    again = cases_from_config({"cases": [edges.flags["config"]]})[0]
    np.testing.assert_array_equal(again.expected["dq"], edges.expected["dq"])
    kw = core_kwargs(manifest([tiled])["cases"][0], tiled.inputs)
    out, cache = attention_forward(tiled.inputs["q"], tiled.inputs["k"], tiled.inputs["v"], **kw)
    np.testing.assert_allclose(tiled.expected["out"], out, rtol=1e-12, atol=1e-13)


def _kv(**fields: Any) -> dict[str, Any]:
    return {"cases": [{"name": "x", "E": 4, "cache_seqlens": [3, 0], **fields}]}


def _packed(**fields: Any) -> dict[str, Any]:
    base = {"name": "x", "E": 8, "lengths_q": [2, 3], "lengths_k": [4, 3]}
    return {"cases": [{**base, **fields}]}


def _merge(**fields: Any) -> dict[str, Any]:
    base = {"name": "x", "kind": "merge", "L": 4, "S": 6, "E": 8, "num_splits": 3}
    return {"cases": [{**base, **fields}]}


def _rotary(**fields: Any) -> dict[str, Any]:
    return {"cases": [{"name": "x", "kind": "rotary", "L": 4, "E": 8, "rotary_dim": 4, **fields}]}


def _bad(**fields: Any) -> dict[str, Any]:
    return {"cases": [{"name": "x", "L": 4, "S": 6, "E": 8, **fields}]}


@pytest.mark.parametrize(("config", "message"), [
    (_bad(L=0), r"cases\[0\]\.L: L must be >= 1"),
    (_bad(E="8"), r"cases\[0\]\.E"),
    (_bad(Hq=3, Hkv=2), r"Hq = 3 must be a multiple of Hkv = 2"),
    (_bad(window=[2]), r"cases\[0\]\.window must be \[left, right\]"),
    (_bad(window=[-1, 0]), r"cases\[0\]\.window"),
    (_bad(softcap=0), r"cases\[0\]\.softcap"),
    (_bad(scale=float("nan")), r"cases\[0\]\.scale"),
    (_bad(is_causal="yes"), r"cases\[0\]\.is_causal"),
    (_bad(causal_align="left"), r"cases\[0\]\.causal_align"),
    (_bad(dtypes=["float8"]), r"cases\[0\]\.dtypes"),
    (_bad(path="gpu"), r"cases\[0\]\.path"),
    (_bad(chunk_size=0), r"cases\[0\]\.chunk_size"),
    (_bad(heads=2), r"unknown field\(s\) \['heads'\]"),
    (_bad(name="Bad Name"), r"cases\[0\]\.name"),
    ({"cases": [{"name": "x", "S": 6, "E": 8}]}, r"cases\[0\]\.L is required"),
    ({"cases": []}, r"config\.cases must be a non-empty list"),
    ({"cases": [_bad()["cases"][0]] * 2}, r"names must be unique"),
    ({"cases": _bad()["cases"], "extra": 1}, r"unknown field\(s\) \['extra'\]"),
    (_bad(L=16384, S=16384, path="dense"),
     r"would hold 2052\.1 MiB .* weights 2048\.0 of them.* set its path 'tiled'"),
    (_bad(S=2**24, E=64), r"more than the limit of 256 MiB .* raise the limit to 16385 MiB "
                          r"\(--max-mib on both vectors and check; max_bytes in Python\)"),
    (_packed(lengths_q=[2**20], lengths_k=[1], Hq=8, E=64), r"'x': 8\d{3}\.\d MiB, out 4096"),
    (_packed(L=4), r"lengths_q and lengths_k replace B, L and S; drop \['L'\]"),
    (_packed(lengths_k=[3]), r"lengths_q has 2 sequences, lengths_k 1"),
    (_packed(lengths_q=[2, -1]), r"cases\[0\]\.lengths_q: length must be >= 0"),
    (_packed(lengths_q="2"), r"lengths_q must be a non-empty list"),
    (_packed(chunk_size=2), r"varlen variants .* drop \['chunk_size'\]"),
    (_packed(lengths_q=[9000], lengths_k=[9000], Hq=2, path="dense"),
     r"more than the 134217728 a dense packed case computes; set path 'tiled' or 'auto'"),
    (_kv(S=9), r"cache_seqlens replaces B and S .* drop \['S'\]"),
    (_kv(lengths_q=[1], lengths_k=[2]), r"do not go together"),
    (_kv(cache_seqlens=[3, -2]), r"cases\[0\]\.cache_seqlens: length must be >= 0"),
    (_kv(rotary_dim=6), r"rotary_dim must be even and at most E = 4"),
    (_kv(rotary_dim=3, E=8), r"rotary_dim must be even"),
    (_kv(page_size=0), r"cases\[0\]\.page_size"),
    (_kv(sink_tokens=1), r"flash_attn_with_kvcache's variants .* drop \['sink_tokens'\]"),
    (_kv(rotary_interleaved="no"), r"cases\[0\]\.rotary_interleaved"),
    (_kv(path="gpu"), r"cases\[0\]\.path must be 'auto', 'dense' or 'tiled'"),
    (_bad(kind="decode"), r"cases\[0\]\.kind must be one of \['attention', 'merge', 'rotary'\]"),
    (_bad(num_splits=2), r"\['num_splits'\] belong to a merge or rotary case \(give kind\)"),
    (_merge(window=[2, 0]), r"a merge case takes .*; drop \['window'\]"),
    (_merge(num_splits=None), r"cases\[0\]\.num_splits is required \(a merge case\)"),
    (_merge(num_splits=7), r"num_splits must be at most S = 6, got 7"),
    (_merge(num_splits=0), r"cases\[0\]\.num_splits: num_splits must be >= 1"),
    (_merge(B=8, Hq=32, S=32769, E=128, num_splits=16),
     r"draws one chunk's keys and values at a time, .* = 134283264 numbers, more than 134217728"),
    (_rotary(S=4), r"a rotary case takes .*; drop \['S'\]"),
    (_rotary(rotary_dim=5), r"rotary_dim must be even and at most E = 8, got 5"),
    (_rotary(positions_from=-1), r"cases\[0\]\.positions_from"),
    (_rotary(positions_from=10**30), r"positions_from \+ L must be at most 2\*\*31"),
    (_rotary(rotary_base=1.0), r"cases\[0\]\.rotary_base"),
    (_rotary(rotary_dim=None), r"cases\[0\]\.rotary_dim is required \(a rotary case\)"),
    (_packed(path="gpu"), r"cases\[0\]\.path must be 'auto', 'dense' or 'tiled'"),
    (_bad(page_size=8), r"\['page_size'\] belong to a KV cache case"),
    (_kv(cache_seqlens=[2**20], Hq=64, Hkv=1, L=4, path="dense"),
     r"more than the 134217728 a dense KV cache case computes; set path 'tiled' or 'auto'"),
    (_kv(cache_seqlens=[2**20], Hq=8, Hkv=8, E=64), r"k_cache_out 4096\.\d of them"),
    ({"cases": [{"name": "x", "E": 8, "lengths_q": [1]}]}, r"lengths_k is required"),
])  # fmt: skip
def test_config_errors_name_the_field(config: dict[str, Any], message: str) -> None:
    """Each invalid config is a ValueError naming the field and what it should be."""
    with pytest.raises(ValueError, match=message):
        cases_from_config(config)


@pytest.mark.parametrize(("max_bytes", "error"), [(0, ValueError), (1.5, TypeError),
                                                  (True, TypeError)])  # fmt: skip
def test_max_bytes_must_be_a_positive_integer(tmp_path: Path, max_bytes, error) -> None:
    """cases_from_config, load_suite and check_path refuse a limit that is no byte count."""
    from numpy_attention.verify import check_path

    with pytest.raises(error, match="max_bytes"):
        cases_from_config(CONFIG, max_bytes=max_bytes)
    with pytest.raises(error, match="max_bytes"):
        load_suite(tmp_path, max_bytes=max_bytes)
    with pytest.raises(error, match="max_bytes"):
        check_path(tmp_path, tmp_path, max_bytes=max_bytes)


PACKED = {"name": "packed_user", "Hq": 4, "Hkv": 2, "E": 16, "Ev": 8, "scale": 0.3,
          "lengths_q": [5, 0, 1, 40, 1], "lengths_k": [7, 3, 0, 40, 65], "is_causal": True,
          "causal_align": "bottom_right", "window": [8, 0], "softcap": 20.0, "alibi": True,
          "sinks": True, "dtypes": ["bfloat16"]}  # fmt: skip


def test_a_long_packed_case_is_tiled_and_equals_the_dense_one() -> None:
    """From 2**22 scores (Hq sum L_b S_b) on, path "auto" computes each sequence by the flash
    functions (no L_b x S_b array; said in the flags): every expected array equals the dense
    path's to 1e-12 of its scale, with the varlen variants and sequences without keys."""
    entry = {"name": "long", "Hq": 2, "Hkv": 1, "E": 8, "lengths_q": [1500, 0, 3],
             "lengths_k": [1450, 4, 0], "is_causal": True, "causal_align": "bottom_right",
             "window": [300, 0], "softcap": 20.0, "alibi": True, "sinks": True,
             "dtypes": ["bfloat16"]}  # fmt: skip
    (tiled,) = cases_from_config({"cases": [entry]})
    (dense,) = cases_from_config({"cases": [{**entry, "path": "dense"}]})
    assert "tiled" in tiled.flags["path"] and "path" not in dense.flags
    assert sorted(tiled.expected) == sorted(dense.expected)
    for n, want in dense.expected.items():
        scale = max(1.0, float(np.abs(want[np.isfinite(want)]).max()))
        np.testing.assert_allclose(tiled.expected[n], want, rtol=0, atol=1e-12 * scale, err_msg=n)


def test_config_packed_case_equals_dense_attention_per_sequence() -> None:
    """lengths_q / lengths_k give a varlen case at the user's sizes, with FlashAttention's varlen
    variants: each sequence's rows are attention_forward over its own keys (ALiBi's distance
    and the window from its own bottom-right offset), a query without keys gets out 0 and
    lse = the sink logit, and d_sinks sums over the sequences."""
    (c,) = cases_from_config({"cases": [PACKED]})
    a = c.inputs
    assert c.kind == "varlen" and c.flags["config"]["lengths_q"] == PACKED["lengths_q"]
    cq, ck = a["cu_seqlens_q"], a["cu_seqlens_k"]
    assert cq.tolist() == [0, 5, 5, 6, 46, 47] and a["q"].shape == (47, 4, 16)
    kw = {"window": (8, 0), "softcap": 20.0, "alibi_slopes": a["alibi_slopes"],
          "sinks": a["sinks"]}  # fmt: skip
    d_sinks = np.zeros(4)
    for b in range(len(cq) - 1):
        rq, rk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        if rq.stop == rq.start:
            continue
        if rk.stop == rk.start:
            assert not c.expected["out"][rq].any()
            np.testing.assert_array_equal(c.expected["lse"][:, rq], a["sinks"][:, None])
            continue
        out, cache = attention_forward(
            *(np.swapaxes(a[n][r], 0, 1) for n, r in (("q", rq), ("k", rk), ("v", rk))),
            is_causal=True, causal_align="bottom_right", scale=0.3, enable_gqa=True, **kw,
        )  # fmt: skip
        g = attention_backward(np.swapaxes(a["d_out"][rq], 0, 1), cache)
        d_sinks += g.d_sinks
        np.testing.assert_allclose(c.expected["out"][rq], np.swapaxes(out, 0, 1), atol=1e-13)
        np.testing.assert_allclose(c.expected["lse"][:, rq], cache.lse, atol=1e-13)
        np.testing.assert_allclose(c.expected["dq"][rq], np.swapaxes(g.dq, 0, 1), atol=1e-13)
        np.testing.assert_allclose(c.expected["dk"][rk], np.swapaxes(g.dk, 0, 1), atol=1e-13)
    np.testing.assert_allclose(c.expected["d_sinks"], d_sinks, atol=1e-13)


KVCACHE = [
    {"name": "decode_rotary", "Hq": 4, "Hkv": 2, "E": 16, "L": 3, "cache_seqlens": [5, 0, 40],
     "page_size": 8, "rotary_dim": 8, "is_causal": True, "window": [6, 0], "softcap": 20.0,
     "alibi": True, "sinks": True},
    {"name": "decode_plain", "Hq": 8, "Hkv": 1, "E": 32, "Ev": 16, "cache_seqlens": [0, 100, 37],
     "scale": 0.25},
]  # fmt: skip


def test_config_kvcache_cases_equal_dense_attention_over_the_written_cache() -> None:
    """cache_seqlens gives flash_attn_with_kvcache's decoding step at the user's sizes: the new
    keys (rotated, if rotary_dim) land in their pages of a shuffled block table, the rest stays
    NaN, and each row's out and lse are attention_forward over its n_b + L keys (bottom-right,
    with the window, softcap, ALiBi and sinks); no rotary leaves q and the keys as drawn."""
    from numpy_attention.serving import rotary_embedding

    for c in cases_from_config({"cases": KVCACHE}):
        a, f = c.inputs, c.flags
        assert c.kind == "kvcache" and f["config"]["cache_seqlens"] == a["cache_seqlens"].tolist()
        assert ("rotary_cos" in a) == (f["rotary_dim"] is not None)
        page, table, L = f["page_size"], a["block_table"], a["q"].shape[1]
        kw = {n: tuple(v) if n == "window" else v for n, v in f.get("variants", {}).items()}
        kw.update({n: a[n] for n in ("alibi_slopes", "sinks") if n in a})
        for b, n in enumerate(a["cache_seqlens"].tolist()):
            new, pos = np.arange(n, n + L), np.arange(n + L)
            qb, kn = a["q"][b], a["k_new"][b]
            if "rotary_cos" in a:  # rotate-half here; causal: the queries at n_b + i
                cs = (a["rotary_cos"][new][:, None], a["rotary_sin"][new][:, None])
                qb, kn = rotary_embedding(qb, *cs), rotary_embedding(kn, *cs)
            slots = table[b, new // page], new % page
            np.testing.assert_allclose(c.expected["k_cache_out"][slots], kn, atol=1e-15)
            np.testing.assert_array_equal(c.expected["v_cache_out"][slots], a["v_new"][b])
            kb, vb = (c.expected[x][table[b, pos // page], pos % page]
                      for x in ("k_cache_out", "v_cache_out"))  # fmt: skip
            out, cache = attention_forward(*(np.swapaxes(x, 0, 1) for x in (qb, kb, vb)),
                                           is_causal=f["is_causal"], causal_align="bottom_right",
                                           enable_gqa=True, scale=f["scale"], **kw)  # fmt: skip
            np.testing.assert_allclose(c.expected["out"][b], np.swapaxes(out, 0, 1), atol=1e-13)
            np.testing.assert_allclose(c.expected["lse"][b], cache.lse, atol=1e-13)
        assert np.isnan(c.expected["k_cache_out"]).any()
        again = cases_from_config({"cases": [f["config"]]})[0]  # the recorded config rebuilds it
        np.testing.assert_array_equal(again.expected["out"], c.expected["out"])
    (packed,) = cases_from_config({"cases": [PACKED]})
    again = cases_from_config({"cases": [packed.flags["config"]]})[0]
    np.testing.assert_array_equal(again.expected["dq"], packed.expected["dq"])


def test_a_long_kvcache_case_is_tiled_and_equals_the_dense_one(monkeypatch) -> None:
    """From 2**22 scores (Hq L sum (n_b + L)) on, path "auto" attends each row of a KV cache
    case by the flash functions (said in the flags; the dense core is never called): every
    expected array equals the dense path's to 1e-12 of its scale, with rotary, every
    flash_attn_with_kvcache variant and a row whose cache is empty."""
    import numpy_attention.serving as serving

    entry = {"name": "prefill", "Hq": 4, "Hkv": 2, "E": 8, "L": 700, "cache_seqlens": [900, 0],
             "page_size": 64, "rotary_dim": 4, "is_causal": True, "window": [500, 0],
             "softcap": 20.0, "alibi": True, "sinks": True, "dtypes": ["bfloat16"]}  # fmt: skip
    (dense,) = cases_from_config({"cases": [{**entry, "path": "dense"}]})

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the dense core was called on the tiled path")

    monkeypatch.setattr(serving, "attention_forward", refuse)
    (tiled,) = cases_from_config({"cases": [entry]})
    assert 4 * 700 * (1600 + 700) >= 2**22
    assert "tiled" in tiled.flags["path"] and "path" not in dense.flags
    assert sorted(tiled.expected) == sorted(dense.expected)
    for n, want in dense.expected.items():
        ok = np.isfinite(want)
        np.testing.assert_array_equal(np.isnan(tiled.expected[n]), np.isnan(want), err_msg=n)
        scale = max(1.0, float(np.abs(want[ok]).max()))
        np.testing.assert_allclose(tiled.expected[n][ok], want[ok], rtol=0, atol=1e-12 * scale,
                                   err_msg=n)  # fmt: skip


MERGE = {"name": "decode_split", "kind": "merge", "B": 2, "Hq": 3, "L": 5, "S": 23, "E": 8,
         "Ev": 4, "num_splits": 4, "is_causal": True,
         "dtypes": ["bfloat16", "float32"]}  # fmt: skip
ROTARY = {"name": "rope_llama3", "kind": "rotary", "B": 2, "Hq": 3, "L": 6, "E": 16,
          "rotary_dim": 12, "rotary_interleaved": True, "positions_from": 4000,
          "rotary_base": 500000.0}  # fmt: skip


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("path", ["dense", "tiled"])
def test_config_merge_case_splits_one_attention(align: str, path: str) -> None:
    """kind "merge" cuts one attention's S keys into num_splits chunks of sizes differing by at
    most one: a chunk's lse is -inf exactly where the global causal mask (aligned as asked)
    hides all of it from a query, and the merged out and lse are the whole attention's up to
    the bfloat16 rounding of the chunks' states; dense and tiled give the same arrays."""
    from numpy_attention.verify.cases import _normal

    entry = {**MERGE, "causal_align": align, "path": path}
    (c,) = cases_from_config({"cases": [entry]})
    splits, lses = c.flags["splits"], c.inputs["lses"]
    assert c.kind == "merge" and splits == [0, 6, 12, 18, 23] and lses.shape == (4, 2, 3, 5)
    d = 23 - 5 if align == "bottom_right" else 0
    i = np.arange(5)
    for r, j0 in enumerate(splits[:-1]):
        hidden = j0 > i + d  # no key of chunk r is at or before query i's diagonal
        np.testing.assert_array_equal(np.isinf(lses[r]), np.broadcast_to(hidden, (2, 3, 5)))
        assert np.isnan(c.inputs["outs"][r][..., hidden, :]).all()
    rng = np.random.default_rng(c.flags["config"]["seed"])  # the inputs as the builder drew them
    q = _normal(rng, 2, 3, 5, 8)
    kv = [(_normal(rng, 2, 3, b - a, 8), _normal(rng, 2, 3, b - a, 4))
          for a, b in zip(splits[:-1], splits[1:], strict=True)]  # fmt: skip
    k, v = (np.concatenate(x, axis=-2) for x in zip(*kv, strict=True))
    out, cache = attention_forward(q, k, v, is_causal=True, causal_align=align)
    np.testing.assert_allclose(c.expected["out"], out, atol=2e-2 * np.abs(out).max())
    np.testing.assert_allclose(c.expected["lse"], cache.lse, atol=2e-2 * np.abs(cache.lse).max())
    other = cases_from_config({"cases": [{**entry, "path": "tiled" if path == "dense" else
                                          "dense"}]})[0]  # fmt: skip
    for n, want in c.expected.items():
        np.testing.assert_array_equal(other.expected[n], want, err_msg=n)


def test_config_rotary_case_rotates_at_its_positions_with_its_base() -> None:
    """kind "rotary": the tables are Eq. (9.5) at positions positions_from + i with the given
    base (rounded to bfloat16; not base 10000's), and out, dx are rotary_embedding and its
    backward at them, interleaved as asked."""
    from numpy_attention.serving import rotary_cos_sin, rotary_embedding, rotary_embedding_backward

    (c,) = cases_from_config({"cases": [ROTARY]})
    a = c.inputs
    cos, sin = rotary_cos_sin(4000 + np.arange(6), 12, 500000.0)
    np.testing.assert_allclose(a["cos"], cos, atol=2**-8)
    assert np.abs(a["cos"] - rotary_cos_sin(4000 + np.arange(6), 12)[0]).max() > 0.1
    cs = (a["cos"][:, None], a["sin"][:, None])
    np.testing.assert_allclose(c.expected["out"], rotary_embedding(a["x"], *cs, interleaved=True),
                               atol=1e-15)  # fmt: skip
    np.testing.assert_allclose(c.expected["dx"], rotary_embedding_backward(a["d_out"], *cs,
                               interleaved=True), atol=1e-15)  # fmt: skip
    assert c.flags["base"] == 500000.0 and c.flags["positions_from"] == 4000
    again = cases_from_config({"cases": [c.flags["config"]]})[0]
    np.testing.assert_array_equal(again.expected["out"], c.expected["out"])


def test_torch_passes_a_packed_config_case_in_bfloat16_under_its_baseline(tmp_path) -> None:
    """vectors' packed, KV cache, merge and rotary cases, through the torch adapter (eager
    attention per sequence or cache row with the window, softcap, ALiBi and sinks; rotary in
    the dtype; the merge a rounded step at a time) and check: every quantity passes the
    stored baseline."""
    pytest.importorskip("torch")
    from numpy_attention.verify import load_results
    from numpy_attention.verify.grading import manifest_baselines

    spec = importlib.util.spec_from_file_location(
        "torch_adapter", ROOT / "examples/torch_adapter.py"
    )
    adapter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapter)
    cases = cases_from_config({"cases": [PACKED, *KVCACHE, MERGE, ROTARY]})
    write_suite(tmp_path / "suite", cases)
    assert (
        adapter.main([str(tmp_path / "suite"), str(tmp_path / "res"), "--dtype", "bfloat16"]) == 0
    )
    man, expected = load_suite(tmp_path / "suite")
    results, unknown = load_results(tmp_path / "res", expected)
    report = check_results(results, expected, dtype="bfloat16", strict=True, unknown=unknown,
                           baselines=manifest_baselines(man))  # fmt: skip
    assert report.passed and report.counts["PASS"] == 6 + 4 + 4 + 4 + 2, report.table()
    assert {r.comparison.policy for r in report.rows if r.comparison} == {"baseline"}


@settings(max_examples=300, deadline=None)
@given(entry=config_entries())
def test_any_config_entry_builds_its_case_or_is_a_value_error_naming_it(entry) -> None:
    """Whatever the fields and values (sizes from 0 to 10**30, NaN, strings, lists, unknown
    fields, every kind), a config builds or raises ValueError (the CLI's one-line exit 2),
    never another exception; a refusal names the case."""
    try:
        (case,) = cases_from_config({"cases": [entry]}, max_bytes=2**16)
    except ValueError as e:
        assert str(e).startswith(("cases[0]", "config.cases")), e
        return
    assert case.name == "c" and case.expected


def test_the_example_config_is_valid_and_fits_the_default_limit() -> None:
    """examples/llama3_8b.json (a layer's prefill, a chunked prefill over a paged cache, a
    split decode, RoPE at Llama 3 8B's sizes) passes every field check and holds at most the
    default 256 MiB: the size refusal comes only after every case was validated."""
    path = ROOT / "examples" / "llama3_8b.json"
    kinds = [c.get("kind", "kvcache" if "cache_seqlens" in c else "attention")
             for c in json.loads(path.read_text())["cases"]]  # fmt: skip
    assert kinds == ["attention", "kvcache", "merge", "rotary"]
    with pytest.raises(ValueError, match=r"would hold ([\d.]+) MiB") as refused:
        cases_from_config(path, max_bytes=1)
    mib = float(re.search(r"would hold ([\d.]+) MiB", str(refused.value)).group(1))
    assert 200 < mib <= 256, mib


def test_config_file_that_is_not_json_is_a_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        cases_from_config(bad)
    with pytest.raises(TypeError, match="config must be a path or a mapping"):
        cases_from_config(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["dense", "tiled"])
@pytest.mark.parametrize(
    "spec",
    [{"L": 40, "S": 40, "E": 64, "window": [0, 0]},  # each query sees only its own key
     {"L": 7, "S": 1, "E": 5, "Hq": 4, "Hkv": 2},  # one key, GQA
     {"L": 9, "S": 30, "E": 16, "chunk_size": 1, "is_causal": True}],  # chunks of one key
)  # fmt: skip
def test_rows_that_see_one_key_get_exactly_zero_dq_and_dk_on_both_paths(spec, path) -> None:
    """One visible key per row: its weight is 1, dS = P (dP - D) = 0, so dq = dk = 0 exactly.

    Stored as float64 round-off instead (the tiled path gives ~1e-15), the truth would be the
    scale of its own tolerance, and a correct candidate's exact 0 (torch's) would fail.
    """
    (case,) = cases_from_config({"cases": [dict(spec, name="one_key", seed=3, path=path)]})
    for n in ("dq", "dk"):
        assert not case.expected[n].any(), (n, float(np.abs(case.expected[n]).max()))
        zero = compare_attention(np.zeros_like(case.expected[n]), case.expected[n], quantity=n)
        assert zero.passed, zero
    assert np.abs(case.expected["dv"]).max() > 0.1  # the gradient that does not cancel


def test_torch_passes_the_config_cases_in_float64(tmp_path: Path) -> None:
    """The torch adapter expresses user-sized cases too (variants, tiled, sinks): float64."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location(
        "torch_adapter", ROOT / "examples/torch_adapter.py"
    )
    adapter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapter)
    write_suite(tmp_path / "suite", cases_from_config(CONFIG))
    assert adapter.main([str(tmp_path / "suite"), str(tmp_path / "res"), "--dtype", "float64"]) == 0
    from numpy_attention.verify import load_results

    man, expected = load_suite(tmp_path / "suite")
    results, unknown = load_results(tmp_path / "res", expected)
    report = check_results(results, expected, dtype="float64", strict=True, unknown=unknown)
    assert report.passed and not unknown, report.table()


@pytest.mark.parametrize("config", [
    CONFIG,
    {"cases": [{"name": "dense_gqa_sinks", "B": 2, "Hq": 4, "Hkv": 2, "L": 9, "S": 13, "E": 8,
                "Ev": 4, "sinks": True, "path": "dense"}]},
    {"cases": [PACKED]},
    {"cases": KVCACHE},
    {"cases": [MERGE, ROTARY]},
])  # fmt: skip
def test_the_size_limit_is_exactly_the_expected_arrays_bytes(config: dict[str, Any]) -> None:
    """max_bytes is checked against the bytes predicted before anything is computed: a limit
    of exactly the built cases' expected bytes is accepted, one byte less is refused (so the
    prediction is neither over nor under, for dense, tiled, packed and KV cache cases)."""
    built = cases_from_config(config)
    total = sum(a.nbytes for c in built for a in c.expected.values())
    again = cases_from_config(config, max_bytes=total)
    np.testing.assert_array_equal(again[0].expected["out"], built[0].expected["out"])
    with pytest.raises(ValueError, match=rf"raise the limit to {-(-total // 2**20)} MiB"):
        cases_from_config(config, max_bytes=total - 1)


def test_a_config_case_stores_baselines_in_the_low_precision_dtypes_it_names(
    tmp_path: Path,
) -> None:
    """dtypes ["bfloat16", "float32"]: the manifest stores the bfloat16 baseline only (float32
    is judged by fixed tolerances), equal to the one computed in every dtype; check refuses
    float16 (exit 2, naming the case, its dtypes and the way out) but grades float32,
    bfloat16, and float16 under --policy absolute."""
    from numpy_attention.app.cli import main
    from numpy_attention.verify.precision import baseline_errors

    entry = {"name": "named", "Hq": 2, "L": 9, "S": 13, "E": 8, "dtypes": ["bfloat16", "float32"]}
    (case,) = cases_from_config({"cases": [entry]})
    (stored,) = manifest([case])["cases"]
    full = baseline_errors(case.inputs, case.expected, case.kind)
    assert stored["baseline_error"] == {"bfloat16": full["bfloat16"]}
    write_suite(tmp_path / "s", [case])
    (tmp_path / "r").mkdir()
    np.savez(tmp_path / "r" / "named.npz", **case.expected)
    suite_args = [str(tmp_path / "r"), "--suite", str(tmp_path / "s")]
    assert main(["check", *suite_args, "--dtype", "float16"]) == 2
    for more in (["--dtype", "float32"], ["--dtype", "bfloat16"],
                 ["--dtype", "float16", "--policy", "absolute"]):  # fmt: skip
        assert main(["check", *suite_args, *more]) == 0, more


def test_check_names_the_dtypes_a_case_was_written_for(tmp_path: Path, capsys) -> None:
    """The refusal is one line: the case, the dtypes its config named, what to do."""
    from numpy_attention.app.cli import main

    (case,) = cases_from_config({"cases": [{"name": "bf", "L": 3, "S": 5, "E": 4,
                                            "dtypes": ["bfloat16"]}]})  # fmt: skip
    write_suite(tmp_path / "s", [case])
    (tmp_path / "r").mkdir()
    np.savez(tmp_path / "r" / "bf.npz", **case.expected)
    code = main(["check", str(tmp_path / "r"), "--suite", str(tmp_path / "s"), "--dtype",
                 "float16"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "case 'bf' was written for the dtypes ['bfloat16']" in err, err
    assert "with 'float16' in its dtypes, or check with --policy absolute" in err, err


def test_vectors_config_writes_the_configs_cases(tmp_path: Path) -> None:
    """`vectors --config FILE --out DIR`: the config's cases, readable by check; exit 0."""
    import subprocess
    import sys

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"cases": [CONFIG["cases"][2]]}))
    run = subprocess.run([sys.executable, "-m", "numpy_attention", "vectors", "--config",
                          str(cfg), "--out", str(tmp_path / "s")], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr
    man, expected = load_suite(tmp_path / "s")
    assert [e["name"] for e in man["cases"]] == ["plain_user"]
    want = cases_from_config({"cases": [CONFIG["cases"][2]]})[0].expected
    np.testing.assert_array_equal(expected["plain_user"]["out"], want["out"])


@pytest.mark.parametrize(("text", "message"), [
    ('{"cases": [{"name": "x", "L": 4, "S": 6, "E": 8, "window": 3}]}', "cases[0].window"),
    ("{not json", "cannot be read as JSON"),
    (None, "does not exist"),
])  # fmt: skip
def test_vectors_config_errors_are_one_line_and_exit_2(tmp_path: Path, text, message) -> None:
    """A bad config: exit 2, one line on stderr naming the problem, nothing written."""
    import subprocess
    import sys

    cfg = tmp_path / "cfg.json"
    if text is not None:
        cfg.write_text(text)
    run = subprocess.run([sys.executable, "-m", "numpy_attention", "vectors", "--config",
                          str(cfg), "--out", str(tmp_path / "s")], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_max_mib_lets_vectors_and_check_take_cases_beyond_the_default(tmp_path: Path) -> None:
    """A config larger than the limit: vectors refuses it naming the MiB to give; written with
    that --max-mib, check refuses the suite at a lower limit (exit 2, one line naming the MiB
    again) and grades it at the same limit (its own expected values pass: exit 0). The same
    flow as a 300 MiB case against the default 256 MiB, scaled down to a 1 MiB limit."""
    import subprocess
    import sys

    cfg = tmp_path / "cfg.json"  # expected: out 256 KiB, dq 256 KiB, dk, dv 512 KiB each
    big = {"name": "big", "Hq": 2, "L": 2048, "S": 4096, "E": 8, "path": "tiled",
           "dtypes": ["bfloat16"]}  # fmt: skip
    cfg.write_text(json.dumps({"cases": [big]}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "numpy_attention", *args],
                              capture_output=True, text=True, cwd=ROOT)  # fmt: skip

    suite, res = tmp_path / "s", tmp_path / "r"
    run = cli("vectors", "--config", str(cfg), "--out", str(suite), "--max-mib", "1")
    assert run.returncode == 2 and not suite.exists(), run.stderr
    assert "raise the limit to 2 MiB (--max-mib" in run.stderr, run.stderr
    run = cli("vectors", "--config", str(cfg), "--out", str(suite), "--max-mib", "2")
    assert run.returncode == 0, run.stderr
    res.mkdir()
    _, expected = load_suite(suite, max_bytes=2**21)
    np.savez(res / "big.npz", **expected["big"])
    run = cli("check", str(res), "--suite", str(suite), "--dtype", "float64", "--max-mib", "1")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "more than the 1048576 this check reads" in run.stderr, run.stderr
    assert "raise the limit to 2 MiB (--max-mib" in run.stderr, run.stderr
    run = cli("check", str(res), "--suite", str(suite), "--dtype", "float64", "--max-mib", "2")
    assert run.returncode == 0 and "FAIL" not in run.stdout, run.stdout + run.stderr
