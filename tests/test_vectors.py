"""The golden suite and ``numpy-attention check``: content, determinism, formats, exit codes."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from oracles import attention_backward_oracle, attention_oracle

from numpy_attention.app.cli import main
from numpy_attention.verify import (
    SUITE_FORMAT,
    SUITE_VERSION,
    build_suite,
    check_results,
    load_results,
    load_suite,
    round_to_bfloat16,
    write_suite,
)

#: Every case the issue requires, by the name it has in the suite.
REQUIRED = {
    "plain", "lengths_differ", "value_width", "batch_broadcast", "bool_mask", "float_bias",
    "causal_top_left_short", "causal_top_left_tall", "causal_bottom_right_short",
    "causal_bottom_right_tall", "key_padding", "sliding_window", "fully_masked_rows", "gqa",
    "mqa", "dropout", "large_logits", "single_key", "long_rows", "cross_attention_layer",
    "weighted_fusion",
}  # fmt: skip


@pytest.fixture(scope="module")
def suite() -> list:
    return build_suite()


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory, suite: list) -> Path:
    d = tmp_path_factory.mktemp("suite")
    write_suite(d, suite)
    return d


def write_results(directory: Path, suite_dir: Path, drop: dict | None = None,
                  change: dict | None = None) -> Path:  # fmt: skip
    """Results equal to the expected values, minus ``drop``, with ``change`` applied."""
    directory.mkdir(parents=True, exist_ok=True)
    man, expected = load_suite(suite_dir)
    for case, quantities in expected.items():
        if drop and drop.get(case) == "*":
            continue
        q = {n: a for n, a in quantities.items() if not (drop and n in drop.get(case, ()))}
        for (c, n), f in (change or {}).items():
            if c == case:
                q[n] = f(q[n])
        np.savez(directory / f"{case}.npz", **q)
    return directory


# ---------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------


def test_suite_covers_every_required_case(suite: list) -> None:
    """Coverage: the suite holds every case the issue lists, each with a description."""
    names = {c.name for c in suite}
    assert REQUIRED <= names, REQUIRED - names
    assert all(c.description for c in suite)


def test_cases_exercise_what_their_names_say(suite: list) -> None:
    """Each special case has the property it is named for (shapes, masks, flags)."""
    c = {x.name: x for x in suite}
    assert c["lengths_differ"].inputs["q"].shape[-2] != c["lengths_differ"].inputs["k"].shape[-2]
    assert c["value_width"].inputs["v"].shape[-1] != c["value_width"].inputs["q"].shape[-1]
    assert (
        c["batch_broadcast"].inputs["k"].shape[0] == 1 < c["batch_broadcast"].inputs["q"].shape[0]
    )
    for n in ("causal_top_left_short", "causal_bottom_right_short"):
        assert c[n].inputs["q"].shape[-2] < c[n].inputs["k"].shape[-2]
    for n in ("causal_top_left_tall", "causal_bottom_right_tall"):
        assert c[n].inputs["q"].shape[-2] > c[n].inputs["k"].shape[-2]
    assert bool(c["causal_bottom_right_tall"].inputs["causal_bottom_right"])
    assert np.isneginf(c["fully_masked_rows"].expected["lse"]).any()
    assert np.isneginf(c["causal_bottom_right_tall"].expected["lse"]).any()
    assert c["gqa"].inputs["q"].shape[-3] == 3 * c["gqa"].inputs["k"].shape[-3]
    assert c["mqa"].inputs["k"].shape[-3] == 1
    assert c["dropout"].inputs["dropout_mask"].dtype == bool
    assert c["single_key"].inputs["k"].shape[-2] == 1
    assert c["long_rows"].inputs["k"].shape[-2] >= 2048
    assert c["float_bias"].inputs["attn_mask"].dtype == np.float64
    assert "d_attn_mask" in c["float_bias"].expected


def test_large_logits_overflow_an_unshifted_float32_softmax(suite: list) -> None:
    """large_logits: some masked score exceeds log(float32 max) ~ 88.7, so exp overflows."""
    c = next(x for x in suite if x.name == "large_logits")
    assert np.max(c.expected["lse"]) > np.log(np.finfo(np.float32).max) + 10
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(c.expected["lse"].astype(np.float32))).any()


def test_inputs_are_exact_in_bfloat16_and_float16(suite: list) -> None:
    """Every float input survives rounding to bfloat16 and to float16 unchanged."""
    for c in suite:
        for n, a in c.inputs.items():
            if a.dtype == np.float64 and n != "scale" and a.ndim:
                b16 = round_to_bfloat16(a).astype(np.float64)
                assert np.array_equal(b16, a, equal_nan=True), (c.name, n)  # NaN: poisoned padding
                f16 = a.astype(np.float16).astype(np.float64)
                assert np.array_equal(f16, a, equal_nan=True), (c.name, n)


@pytest.mark.parametrize("name", [
    "plain", "lengths_differ", "batch_broadcast", "bool_mask", "float_bias",
    "causal_bottom_right_tall", "causal_top_left_tall", "key_padding", "fully_masked_rows",
    "gqa", "mqa", "dropout", "large_logits", "single_key",
])  # fmt: skip
def test_expected_values_match_the_loop_oracle(suite: list, name: str) -> None:
    """The golden values equal the independent loop oracle (tests/oracles.py) to 1e-12."""
    c = next(x for x in suite if x.name == name)
    a = c.inputs
    kw = dict(
        attn_mask=a.get("attn_mask"), is_causal=bool(a["is_causal"]), scale=float(a["scale"]),
        causal_align="bottom_right" if bool(a["causal_bottom_right"]) else "top_left",
        enable_gqa=bool(a["enable_gqa"]), dropout_p=float(a["dropout_p"]),
        dropout_mask=a.get("dropout_mask"),
    )  # fmt: skip
    out, P, lse = attention_oracle(a["q"], a["k"], a["v"], **kw)
    g = attention_backward_oracle(a["d_out"], a["q"], a["k"], a["v"], **kw)
    want = {"out": out, "weights": P, "lse": lse, **{n: x for n, x in g.items() if x is not None}}
    for n, x in want.items():
        np.testing.assert_allclose(c.expected[n], x, rtol=1e-12, atol=1e-12, err_msg=n)


def test_layer_cases_hold_the_gradients_of_every_parameter(suite: list) -> None:
    """Layer cases: one gradient per float input (x, weights, biases, alpha), same shape."""
    for c in (x for x in suite if x.kind in ("cross_attention", "fusion")):
        for n, a in c.inputs.items():
            if a.dtype == np.float64 and n != "d_out":
                assert c.expected[f"d_{n}"].shape == a.shape, (c.name, n)
        assert "out" in c.expected


# ---------------------------------------------------------------------------
# Files: deterministic, self-describing, readable without numpy_attention
# ---------------------------------------------------------------------------


def test_regeneration_is_byte_identical(tmp_path: Path, suite_dir: Path) -> None:
    """Determinism: writing the suite again (fresh build) gives byte-identical files."""
    write_suite(tmp_path)
    names = sorted(p.name for p in suite_dir.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for n in names:
        assert (suite_dir / n).read_bytes() == (tmp_path / n).read_bytes(), n


def test_npz_entries_have_a_fixed_date_and_no_compression(suite_dir: Path) -> None:
    """The zip entries carry the fixed 1980-01-01 date and are stored, not deflated."""
    with zipfile.ZipFile(suite_dir / "plain.npz") as z:
        for info in z.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_STORED


def test_manifest_describes_every_file(suite_dir: Path) -> None:
    """manifest.json: format, version, tolerances, and every case's arrays with shape and dtype."""
    man = json.loads((suite_dir / "manifest.json").read_text())
    assert man["format"] == SUITE_FORMAT and man["version"] == SUITE_VERSION
    assert set(man["tolerances"]) == {"float64", "float32", "float16", "bfloat16"}
    for entry in man["cases"]:
        with np.load(suite_dir / entry["file"], allow_pickle=False) as z:
            files = set(z.files)
            for n, d in entry["inputs"].items():
                assert list(z[n].shape) == d["shape"] and z[n].dtype.name == d["dtype"]
            for n, d in entry["quantities"].items():
                assert list(z[f"expected_{n}"].shape) == d["shape"]
        assert files == set(entry["inputs"]) | {f"expected_{n}" for n in entry["quantities"]}


# ---------------------------------------------------------------------------
# check: verdicts, table, JSON, exit codes
# ---------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_exact_results_pass_with_exit_0(tmp_path: Path, suite_dir: Path, capsys) -> None:
    """The expected values themselves pass at the strictest (float64) tolerance: exit 0."""
    res = write_results(tmp_path / "r", suite_dir)
    code, out, _ = run_cli(
        capsys, "check", str(res), "--suite", str(suite_dir), "--dtype", "float64"
    )
    assert code == 0, out
    assert "FAIL" not in out and out.strip().splitlines()[-1].startswith("PASS")


def test_one_wrong_quantity_fails_with_exit_1_and_is_located(tmp_path: Path, suite_dir: Path,
                                                             capsys) -> None:  # fmt: skip
    """One perturbed element fails exactly that (case, quantity), located by its index."""

    def bump(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[1, 0, 2, 3] += 0.5
        return a

    res = write_results(tmp_path / "r", suite_dir, change={("plain", "dq"): bump})
    code, out, _ = run_cli(capsys, "check", str(res), "--suite", str(suite_dir), "--json")
    assert code == 1
    report = json.loads(out)
    fails = [r for r in report["rows"] if r["status"] == "FAIL"]
    assert [(r["case"], r["quantity"]) for r in fails] == [("plain", "dq")]
    assert fails[0]["worst_index"] == [1, 0, 2, 3]
    assert fails[0]["worst_where"] == "batch 1, head 0, query 2, feature 3"
    assert fails[0]["bad_elements"] == 1


def test_table_has_one_row_per_case_and_quantity(tmp_path: Path, suite_dir: Path, capsys) -> None:
    """The text table lists case, quantity, errors, tolerance and a verdict for every pair."""
    res = write_results(tmp_path / "r", suite_dir)
    code, out, _ = run_cli(capsys, "check", str(res), "--suite", str(suite_dir))
    _, expected = load_suite(suite_dir)
    n = sum(len(q) for q in expected.values())
    assert sum(line.endswith("PASS") for line in out.splitlines()) == n
    assert out.splitlines()[0].split()[:2] == ["case", "quantity"]


def test_missing_cases_and_quantities_are_reported(tmp_path: Path, suite_dir: Path, capsys) -> None:
    """Missing results are reported (MISSING), pass by default and fail with --strict."""
    res = write_results(tmp_path / "r", suite_dir, drop={"gqa": "*", "plain": ("lse",)})
    code, out, _ = run_cli(capsys, "check", str(res), "--suite", str(suite_dir), "--json")
    report = json.loads(out)
    assert code == 0 and report["missing_cases"] == ["gqa"]
    assert [(r["case"], r["quantity"]) for r in report["rows"] if r["status"] == "MISSING"] == [
        ("plain", "lse")
    ]
    code, out, _ = run_cli(capsys, "check", str(res), "--suite", str(suite_dir), "--strict")
    assert code == 1 and "missing case: gqa" in out


def test_single_npz_keyed_by_case_is_accepted(tmp_path: Path, suite_dir: Path, capsys) -> None:
    """Results as one .npz with keys '<case>/<quantity>' are read like a directory."""
    _, expected = load_suite(suite_dir)
    flat = {f"{c}/{n}": a for c, q in expected.items() for n, a in q.items()}
    flat["not_a_case/out"] = np.zeros(1)
    np.savez(tmp_path / "all.npz", **flat)
    code, out, _ = run_cli(capsys, "check", str(tmp_path / "all.npz"), "--suite", str(suite_dir))
    assert code == 0
    assert "ignored: not_a_case" in out


def test_check_without_suite_builds_it_in_memory(tmp_path: Path, suite_dir: Path, capsys) -> None:
    """--suite is optional: the in-memory suite gives the same verdict."""
    res = write_results(tmp_path / "r", suite_dir)
    code, out, _ = run_cli(capsys, "check", str(res))
    assert code == 0


def test_wrong_shape_is_a_failure_with_a_layout_hint(
    tmp_path: Path, suite_dir: Path, capsys
) -> None:
    """A (B, L, H, E) output is a FAIL with the layout named, not a crash."""
    swap = {("lengths_differ", "out"): lambda a: np.swapaxes(a, 1, 2)}
    res = write_results(tmp_path / "r", suite_dir, change=swap)
    code, out, _ = run_cli(capsys, "check", str(res), "--suite", str(suite_dir))
    assert code == 1
    assert "(B, L, H, E)" in out


@pytest.mark.parametrize("breakage", ["missing", "corrupt_results", "no_manifest", "bad_manifest",
                                      "corrupt_suite_file", "other_version", "nothing_matches",
                                      "pickled", "expected_prefix_kept"])  # fmt: skip
def test_unusable_input_exits_2_with_one_line(tmp_path: Path, suite_dir: Path, capsys,
                                              breakage: str) -> None:  # fmt: skip
    """Unusable input: exit 2, one line on stderr, no traceback."""
    import shutil

    suite = tmp_path / "suite"
    shutil.copytree(suite_dir, suite)
    res = write_results(tmp_path / "r", suite)
    if breakage == "missing":
        res = tmp_path / "nope"
    elif breakage == "corrupt_results":
        (res / "plain.npz").write_bytes(b"not a zip at all")
    elif breakage == "no_manifest":
        (suite / "manifest.json").unlink()
    elif breakage == "bad_manifest":
        (suite / "manifest.json").write_text("{not json")
    elif breakage == "corrupt_suite_file":
        (suite / "gqa.npz").write_bytes((suite / "gqa.npz").read_bytes()[:100])
    elif breakage == "other_version":
        man = json.loads((suite / "manifest.json").read_text())
        man["version"] = SUITE_VERSION + 1
        (suite / "manifest.json").write_text(json.dumps(man))
    elif breakage == "nothing_matches":
        shutil.rmtree(res)
        res.mkdir()
        np.savez(res / "unrelated.npz", out=np.zeros(3))
    elif breakage == "expected_prefix_kept":  # the suite's files copied as results
        shutil.rmtree(res)
        shutil.copytree(suite, res)
    elif breakage == "pickled":
        np.savez(res / "plain.npz", out=np.array([{"a": 1}], dtype=object))
    code, out, err = run_cli(capsys, "check", str(res), "--suite", str(suite))
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("numpy-attention check: ")


def test_non_numeric_result_is_a_failure(tmp_path: Path, suite_dir: Path) -> None:
    """A string array where numbers belong fails that quantity, it does not crash."""
    _, expected = load_suite(suite_dir)
    results = {"plain": {"out": np.array(["a"]), "lse": expected["plain"]["lse"]}}
    report = check_results(results, expected)
    status = {r.quantity: r.status for r in report.rows if r.case == "plain"}
    assert status["out"] == "FAIL" and status["lse"] == "PASS"


def test_vectors_command_writes_the_suite(tmp_path: Path, capsys) -> None:
    """'numpy-attention vectors --out DIR' writes manifest.json and one .npz per case (exit 0)."""
    code, out, _ = run_cli(capsys, "vectors", "--out", str(tmp_path / "v"))
    assert code == 0
    man = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert len(list((tmp_path / "v").glob("*.npz"))) == len(man["cases"]) >= len(REQUIRED)


def test_vectors_command_reports_an_unwritable_directory(tmp_path: Path, capsys) -> None:
    """An --out path under a regular file: exit 2, one-line error."""
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "vectors", "--out", str(tmp_path / "file" / "sub"))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_results_directory_reader_ignores_unknown_files(tmp_path: Path, suite_dir: Path) -> None:
    """load_results: unknown .npz files are listed, not read as cases."""
    res = write_results(tmp_path / "r", suite_dir)
    np.savez(res / "extra.npz", out=np.zeros(2))
    _, expected = load_suite(suite_dir)
    results, unknown = load_results(res, expected)
    assert unknown == ["extra"] and set(results) == set(expected)
