"""numpy_attention.verify.grading and the suite's readers: ``check`` on hostile or broken input.

Every unusable input is exit 2 with one line on stderr (never a traceback, never exit 1, which
means "mismatch"); nothing outside the folders the user named is read; no file blocks the
reader; no array is inflated before its declared shape and size are checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from numpy_attention.app.cli import main
from numpy_attention.verify import (
    MAX_ARRAY_BYTES,
    CheckReport,
    UnusableInput,
    check_path,
    load_results,
    load_suite,
    write_suite,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("suite")
    write_suite(d)
    return d


@pytest.fixture()
def suite(tmp_path: Path, suite_dir: Path) -> Path:
    """A private copy of the suite, to break."""
    return Path(shutil.copytree(suite_dir, tmp_path / "suite"))


@pytest.fixture()
def results(tmp_path: Path, suite_dir: Path) -> Path:
    """Results equal to the expected values: a directory of <case>.npz."""
    d = tmp_path / "results"
    d.mkdir()
    for case, quantities in load_suite(suite_dir)[1].items():
        np.savez(d / f"{case}.npz", **quantities)
    return d


def run_check(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_unusable(code: int, err: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("numpy-attention check: ")


def edit_manifest(suite: Path, change) -> None:
    """Apply ``change`` to the parsed manifest in place; if it returns a str, write that text."""
    man = json.loads((suite / "manifest.json").read_text())
    text = change(man)
    (suite / "manifest.json").write_text(text if isinstance(text, str) else json.dumps(man))


def _pop(d: dict, key: str) -> None:
    del d[key]


# ---------------------------------------------------------------------------
# The interface the command line is built on
# ---------------------------------------------------------------------------


def test_check_path_gives_the_report_the_command_prints(suite_dir, results, capsys) -> None:
    """check_path returns the CheckReport whose table() the command prints, with its exit code."""
    report = check_path(results, suite_dir, dtype="float64")
    assert isinstance(report, CheckReport) and report.exit_code() == 0
    code, out, _ = run_check(capsys, str(results), "--suite", str(suite_dir), "--dtype", "float64")
    assert code == 0 and out == report.table() + "\n"
    assert report.as_json()["passed"] is True and report.as_json()["counts"]["FAIL"] == 0


def test_unusable_input_is_a_value_error(tmp_path) -> None:
    """UnusableInput is a ValueError: library callers may catch either."""
    with pytest.raises(ValueError, match="do not exist"):
        check_path(tmp_path / "nope")
    assert issubclass(UnusableInput, ValueError)


def test_empty_paths_are_refused_not_read_as_the_current_directory(suite_dir, results) -> None:
    """results='' or suite='' would mean the cwd: refused by name."""
    with pytest.raises(UnusableInput, match="results is empty"):
        check_path("", suite_dir)
    with pytest.raises(UnusableInput, match="suite is empty"):
        check_path(results, "")


# ---------------------------------------------------------------------------
# Nothing outside the folders the user named
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_check_refuses_suite_files_outside_the_suite(tmp_path, suite, results, capsys,
                                                     where) -> None:  # fmt: skip
    """A manifest entry '../x.npz', an absolute path, or a case file that is a link out of the
    suite is refused (exit 2), though the file it names is a perfectly valid copy."""
    outside = tmp_path / "x.npz"
    shutil.copy(suite / "plain.npz", outside)
    if where == "symlink":
        (suite / "plain.npz").unlink()
        (suite / "plain.npz").symlink_to(outside)
    else:
        name = "../x.npz" if where == "parent" else str(outside)
        edit_manifest(suite, lambda m: m["cases"][0].update(file=name))
    code, _, err = run_check(capsys, str(results), "--suite", str(suite))
    assert_unusable(code, err)
    assert "outside" in err


def test_check_refuses_results_files_linked_out_of_the_results_directory(
    tmp_path, suite_dir, results, capsys
) -> None:
    """A results file that is a symbolic link to a file elsewhere is refused, not followed."""
    outside = tmp_path / "elsewhere.npz"
    shutil.move(results / "plain.npz", outside)
    (results / "plain.npz").symlink_to(outside)
    code, _, err = run_check(capsys, str(results), "--suite", str(suite_dir))
    assert_unusable(code, err)
    assert "outside" in err


# ---------------------------------------------------------------------------
# Malformed manifests: exit 2, one line
# ---------------------------------------------------------------------------

_NESTED = '{"format": "numpy-attention-vectors", "version": 1, "cases": ' + "[" * 100_000


def _tol(m: dict) -> dict:
    return m["tolerances"]["float32"]


MALFORMED = {
    "top_level_list": lambda m: json.dumps([m]),
    "cases_not_a_list": lambda m: m.update(cases={"plain": m["cases"][0]}),
    "cases_a_number": lambda m: m.update(cases=5),
    "case_not_an_object": lambda m: m["cases"].__setitem__(0, "plain"),
    "missing_file": lambda m: _pop(m["cases"][0], "file"),
    "file_not_a_string": lambda m: m["cases"][0].update(file=7),
    "missing_name": lambda m: _pop(m["cases"][0], "name"),
    "name_not_a_string": lambda m: m["cases"][0].update(name=["plain"]),
    "name_with_a_slash": lambda m: m["cases"][0].update(name="../plain"),
    "duplicate_name": lambda m: m["cases"][1].update(name=m["cases"][0]["name"]),
    "quantities_not_an_object": lambda m: m["cases"][0].update(quantities=["out"]),
    "shape_not_a_list": lambda m: m["cases"][0]["quantities"]["out"].update(shape="2x3"),
    "shape_negative": lambda m: m["cases"][0]["quantities"]["out"].update(shape=[-1]),
    "tolerances_not_an_object": lambda m: m.update(tolerances="loose"),
    "tolerance_a_string": lambda m: _tol(m)["forward"].update(atol="abc"),
    "tolerance_group_missing": lambda m: _pop(_tol(m), "gradient"),
    "tolerance_a_bool": lambda m: _tol(m)["gradient"].update(rtol=True),
    "version_a_bool": lambda m: m.update(version=True),
    "deep_nesting": lambda m: _NESTED + "]" * 100_000 + "}",
    "truncated_json": lambda m: json.dumps(m)[:-10],
}


@pytest.mark.parametrize("breakage", sorted(MALFORMED))
def test_malformed_manifest_is_unusable_input(suite, results, capsys, breakage) -> None:
    """Wrong types, missing keys, deep nesting: exit 2 with one line, never a traceback."""
    edit_manifest(suite, MALFORMED[breakage])
    code, _, err = run_check(capsys, str(results), "--suite", str(suite))
    assert_unusable(code, err)


def test_a_directory_named_manifest_json_is_unusable_input(suite, results, capsys) -> None:
    """manifest.json that is a directory: exit 2 (it was an IsADirectoryError traceback)."""
    (suite / "manifest.json").unlink()
    (suite / "manifest.json").mkdir()
    code, _, err = run_check(capsys, str(results), "--suite", str(suite))
    assert_unusable(code, err)
    assert "is a directory" in err


def test_a_manifest_that_is_not_utf8_is_unusable_input(suite, results, capsys) -> None:
    """Bytes that are not UTF-8 are 'not valid JSON', exit 2."""
    (suite / "manifest.json").write_bytes(b"\xff\xfe{}")
    code, _, err = run_check(capsys, str(results), "--suite", str(suite))
    assert_unusable(code, err)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e300", "-1e-3", "1.5"])
def test_manifest_tolerances_that_pass_garbage_are_refused(tmp_path, suite, capsys,
                                                           value) -> None:  # fmt: skip
    """A manifest tolerance of NaN, inf or 1e300 made all-zero results PASS: each value must be
    a finite number in [0, 1], else the suite is unusable (exit 2)."""
    text = (suite / "manifest.json").read_text()
    man = json.loads(text)
    man["tolerances"]["float32"]["forward"]["atol"] = 12345.0
    text = json.dumps(man).replace("12345.0", value)
    (suite / "manifest.json").write_text(text)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for case, quantities in load_suite()[1].items():
        np.savez(garbage / f"{case}.npz", **{q: np.zeros_like(a) for q, a in quantities.items()})
    code, _, err = run_check(capsys, str(garbage), "--suite", str(suite))
    assert_unusable(code, err)
    assert "tolerances.float32.forward.atol must lie in [0, 1]" in err


def test_a_manifest_declaring_huge_arrays_is_refused_before_reading(suite, results,
                                                                    capsys) -> None:  # fmt: skip
    """Declared shapes beyond the limits are refused from the manifest alone."""
    edit_manifest(suite, lambda m: m["cases"][0]["quantities"]["out"].update(shape=[10**12]))
    code, _, err = run_check(capsys, str(results), "--suite", str(suite))
    assert_unusable(code, err)
    assert "more than" in err


def test_a_suite_array_unlike_its_manifest_entry_is_refused(suite, results, capsys) -> None:
    """expected_out of another shape than the manifest declares: exit 2, both shapes named."""
    edit_manifest(suite, lambda m: m["cases"][0]["quantities"]["out"].update(shape=[2, 3]))
    code, _, err = run_check(capsys, str(results), "--suite", str(suite))
    assert_unusable(code, err)
    assert "the manifest says float64 of shape (2, 3)" in err


# ---------------------------------------------------------------------------
# Size: nothing inflated before its header is checked
# ---------------------------------------------------------------------------


def _bomb(path: Path, key: str, shape: tuple[int, ...], data: int = 2**16) -> Path:
    """A small deflated .npz whose member's .npy header declares ``shape`` (float64) but holds
    only ``data`` bytes: reading it the trusting way allocates the whole declared array."""
    import io

    body = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(body, header)
    body.write(bytes(data))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{key}.npy", body.getvalue())
    return path


def test_a_member_declaring_2_gib_is_never_allocated(tmp_path, suite_dir, capsys) -> None:
    """A 'plain/out' member whose header declares 2**28 float64 (2 GiB): check grades it FAIL
    from its header (wrong shape) and allocates nothing near its size (traced peak < 64 MiB)."""
    bomb = _bomb(tmp_path / "bomb.npz", "plain/out", (2**28,))
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    try:
        code, out, err = run_check(capsys, str(bomb), "--suite", str(suite_dir), "--json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak
    assert code == 1, err
    row = next(r for r in json.loads(out)["rows"] if r["case"] == "plain")
    assert row["status"] == "FAIL" and "does not match the expected (2, 3, 6, 8)" in row["error"]


def test_unknown_members_are_listed_not_read(tmp_path, suite_dir) -> None:
    """A bomb under a name that is no quantity of the suite is only listed."""
    bomb = _bomb(tmp_path / "bomb.npz", "plain/zzz", (2**28,))
    _, expected = load_suite(suite_dir)
    tracemalloc.start()
    try:
        found, unknown = load_results(bomb, expected)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20 and found == {} and unknown == ["plain/zzz"]


def test_without_expected_shapes_members_are_capped_by_size(tmp_path) -> None:
    """load_results given only case names refuses a member above MAX_ARRAY_BYTES, unread."""
    bomb = _bomb(tmp_path / "bomb.npz", "plain/out", (MAX_ARRAY_BYTES // 8 + 1,))
    with pytest.raises(UnusableInput, match="more than the 67108864 bytes"):
        load_results(bomb, ["plain"])


@pytest.mark.parametrize("names_only", [False, True])
def test_a_negative_declared_shape_is_unusable_input(tmp_path, suite_dir, names_only) -> None:
    """A header declaring shape (-5,) (NumPy's header parser accepts it): UnusableInput, not a
    ValueError from np.empty deep inside the reader."""
    bomb = _bomb(tmp_path / "neg.npz", "plain/out", (-5,))
    cases = ["plain"] if names_only else load_suite(suite_dir)[1]
    with pytest.raises(UnusableInput, match="is not a .npy array"):
        load_results(bomb, cases)


def test_a_truncated_member_is_unusable_input(tmp_path, suite_dir, capsys) -> None:
    """A member of the right declared shape but too little data: exit 2, 'truncated'."""
    bomb = _bomb(tmp_path / "short.npz", "long_rows/out", (1, 2, 4, 16), data=100)
    code, _, err = run_check(capsys, str(bomb), "--suite", str(suite_dir))
    assert_unusable(code, err)
    assert "truncated" in err


# ---------------------------------------------------------------------------
# Files that are not regular files: refused before opening (a FIFO blocked forever)
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("where", ["results_path", "results_file", "suite_file", "manifest"])
def test_a_fifo_is_refused_instead_of_blocking(tmp_path, suite, results, where) -> None:
    """A FIFO as the results path, a results file, a case file or the manifest: exit 2 at once
    (run in a subprocess with a timeout: opening a FIFO without a writer blocks)."""
    targets = {"results_path": tmp_path / "fifo.npz", "results_file": results / "plain.npz",
               "suite_file": suite / "plain.npz", "manifest": suite / "manifest.json"}  # fmt: skip
    target = targets[where]
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    res = target if where == "results_path" else results
    cmd = [sys.executable, "-m", "numpy_attention", "check", str(res), "--suite", str(suite)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert_unusable(proc.returncode, proc.stderr)
    assert "not a regular file" in proc.stderr


# ---------------------------------------------------------------------------
# Messages that say what is wrong
# ---------------------------------------------------------------------------


def test_a_text_file_named_npz_is_not_answered_with_pickle_advice(tmp_path, suite_dir,
                                                                  capsys) -> None:  # fmt: skip
    """A text file named .npz: 'not a valid .npz file', never numpy's hint to allow_pickle."""
    f = tmp_path / "results.npz"
    f.write_text("plain/out = 1, 2, 3\n")
    code, _, err = run_check(capsys, str(f), "--suite", str(suite_dir))
    assert_unusable(code, err)
    assert "not a valid .npz file" in err and "allow_pickle" not in err


def test_an_object_array_is_refused_without_unpickling(tmp_path, suite_dir, capsys) -> None:
    """A member holding Python objects is refused from its header; nothing is unpickled."""
    np.savez(tmp_path / "r.npz", **{"plain/out": np.array([{"a": 1}], dtype=object)})
    code, _, err = run_check(capsys, str(tmp_path / "r.npz"), "--suite", str(suite_dir))
    assert_unusable(code, err)
    assert "never loaded" in err and "allow_pickle" not in err


def test_suite_pointing_at_a_file_says_it_is_not_a_directory(suite_dir, results,
                                                             capsys) -> None:  # fmt: skip
    """--suite naming a file: 'is not a directory' (it said 'does not exist')."""
    code, _, err = run_check(capsys, str(results), "--suite", str(suite_dir / "manifest.json"))
    assert_unusable(code, err)
    assert "is not a directory" in err and "does not exist" not in err


def test_a_version_of_the_wrong_type_is_named_as_such(suite, results, capsys) -> None:
    """ "version": "1" said 'version 1 ..., but this check reads version 1': it names the type."""
    edit_manifest(suite, lambda m: m.update(version="1"))
    code, _, err = run_check(capsys, str(results), "--suite", str(suite))
    assert_unusable(code, err)
    assert "version must be an integer, got str '1'" in err


def test_json_report_of_a_wrong_shape_is_printed(tmp_path, suite_dir, results, capsys) -> None:
    """check --json with a (B, L, H, E) result: a FAIL row with the error and hints (the report
    crashed: the worst element of a shape mismatch has no index to name)."""
    _, expected = load_suite(suite_dir)
    np.savez(results / "plain.npz", **dict(expected["plain"], out=np.swapaxes(
        expected["plain"]["out"], 1, 2)))  # fmt: skip
    code, out, err = run_check(capsys, str(results), "--suite", str(suite_dir), "--json")
    assert code == 1, err
    row = next(r for r in json.loads(out)["rows"] if (r["case"], r["quantity"]) == ("plain", "out"))
    assert row["status"] == "FAIL" and "(B, L, H, E)" in " ".join(row["hints"])


# ---------------------------------------------------------------------------
# Fuzz: any JSON value anywhere in the manifest is read or refused, never a crash
# ---------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip


#: The nodes of the manifest the reader uses, each replaced by fuzzed JSON values.
_READ = [(), ("format",), ("version",), ("cases",), ("cases", 0), ("cases", 0, "name"),
         ("cases", 1, "file"), ("cases", 0, "quantities"), ("cases", 0, "quantities", "out"),
         ("cases", 0, "quantities", "out", "shape"), ("cases", 2, "quantities", "dq", "shape", 0),
         ("cases", 0, "quantities", "lse", "dtype"), ("tolerances",), ("tolerances", "float32"),
         ("tolerances", "float32", "gradient"),
         ("tolerances", "float32", "forward", "atol")]  # fmt: skip


@pytest.mark.parametrize("where", _READ, ids=lambda w: ".".join(map(str, w)) or "root")
@settings(max_examples=8, deadline=None)
@given(value=_JSON)
def test_any_json_anywhere_in_the_manifest_is_read_or_refused(tmp_path_factory, suite_dir,
                                                              where, value) -> None:  # fmt: skip
    """Replacing a node of a real manifest by any JSON value (NaN, huge integers, nesting
    included) gives a suite or an UnusableInput, never another exception."""
    man = json.loads((suite_dir / "manifest.json").read_text())
    if where:
        node = man
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = value
    else:
        man = value
    d = tmp_path_factory.mktemp("fuzz")
    for f in suite_dir.glob("*.npz"):
        os.link(f, d / f.name)  # the case files themselves (a link out would be refused)
    (d / "manifest.json").write_text(json.dumps(man))
    try:
        load_suite(d)
    except UnusableInput:
        pass
