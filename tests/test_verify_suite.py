"""numpy_attention.verify.suite: writing the suite never harms the user's files.

``vectors --out DIR`` replaces only files of a suite it wrote there before (the manifest.json in
DIR is ours and lists them, and each holds the arrays it lists); anything else is refused unless
``--force``; nothing is written
through a symbolic link; the empty path is refused; a case name cannot leave DIR.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from numpy_attention.app.cli import main
from numpy_attention.verify import Case, UnusableInput, build_suite, write_suite


@pytest.fixture(scope="module")
def suite_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("reference")
    write_suite(d)
    return {p.name: p.read_bytes() for p in d.iterdir()}


def run_vectors(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["vectors", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_vectors_rewrites_a_suite_it_wrote_and_leaves_other_files(tmp_path, capsys,
                                                                  suite_bytes) -> None:  # fmt: skip
    """Writing twice into one directory works (our files are replaced, byte-identical), and a
    file of the user's that the suite does not write is left alone."""
    (tmp_path / "notes.txt").write_text("mine")
    for _ in range(2):
        code, _, err = run_vectors(capsys, "--out", str(tmp_path))
        assert code == 0, err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "notes.txt"} == (
        suite_bytes
    )


@pytest.mark.parametrize("name, content", [("plain.npz", b"my own data"),
                                           ("manifest.json", b'{"my": "settings"}')])  # fmt: skip
def test_vectors_refuses_to_overwrite_a_file_that_is_not_ours(tmp_path, capsys, name,
                                                              content) -> None:  # fmt: skip
    """A user's plain.npz or manifest.json in DIR was silently replaced: now exit 2, one line
    naming the file and --force, the file untouched and nothing else written."""
    (tmp_path / name).write_bytes(content)
    code, _, err = run_vectors(capsys, "--out", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert name in err and "--force" in err
    assert (tmp_path / name).read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_file_our_manifest_does_not_list_is_not_ours(tmp_path, capsys) -> None:
    """Our manifest.json is there, but it does not list gqa.npz (the user's): refused."""
    write_suite(tmp_path, [c for c in build_suite() if c.name != "gqa"])
    (tmp_path / "gqa.npz").write_bytes(b"mine")
    code, _, err = run_vectors(capsys, "--out", str(tmp_path))
    assert code == 2 and "gqa.npz" in err
    assert (tmp_path / "gqa.npz").read_bytes() == b"mine"


@pytest.mark.parametrize("content", ["text", "other_zip"])
def test_a_listed_file_the_user_replaced_is_not_ours(tmp_path, capsys, content) -> None:
    """Our manifest lists plain.npz, but the file there now is the user's (text, or an .npz of
    other arrays): refused, since a file is ours only if it holds the arrays the manifest lists."""
    write_suite(tmp_path)
    if content == "text":
        (tmp_path / "plain.npz").write_text("hi")
    else:
        np.savez(tmp_path / "plain.npz", my_array=np.zeros(3))
    before = (tmp_path / "plain.npz").read_bytes()
    code, _, err = run_vectors(capsys, "--out", str(tmp_path))
    assert code == 2 and "plain.npz" in err
    assert (tmp_path / "plain.npz").read_bytes() == before


def test_force_replaces_files_that_are_not_ours(tmp_path, capsys, suite_bytes) -> None:
    """--force (force=True) writes the suite over the user's files."""
    (tmp_path / "plain.npz").write_bytes(b"my own data")
    code, _, err = run_vectors(capsys, "--out", str(tmp_path), "--force")
    assert code == 0, err
    assert (tmp_path / "plain.npz").read_bytes() == suite_bytes["plain.npz"]


@pytest.mark.parametrize("force", [False, True])
def test_vectors_never_writes_through_a_symlink(tmp_path, capsys, suite_bytes, force) -> None:
    """DIR/plain.npz a link to a file outside DIR: refused without --force; with --force the
    link itself is replaced by our file. The file it pointed to is never written."""
    out, precious = tmp_path / "suite", tmp_path / "precious.bin"
    write_suite(out)
    precious.write_bytes(b"precious")
    (out / "plain.npz").unlink()
    (out / "plain.npz").symlink_to(precious)
    code, _, err = run_vectors(capsys, "--out", str(out), *(["--force"] if force else []))
    assert precious.read_bytes() == b"precious"
    if force:
        assert code == 0 and not (out / "plain.npz").is_symlink()
        assert (out / "plain.npz").read_bytes() == suite_bytes["plain.npz"]
    else:
        assert code == 2 and "symbolic link" in err and (out / "plain.npz").is_symlink()


def test_vectors_refuses_the_empty_path(tmp_path, capsys, monkeypatch) -> None:
    """--out '' wrote the suite into the current directory: now exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_vectors(capsys, "--out", "")
    assert code == 2 and "out is empty" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnusableInput, match="out is empty"):
        write_suite("")


def test_a_case_name_cannot_leave_the_directory(tmp_path) -> None:
    """Case names are file stems [a-z0-9_]+: '../evil' is a ValueError, so write_suite can never
    write outside DIR."""
    case = build_suite()[0]
    with pytest.raises(ValueError, match="case name must match"):
        Case("../evil", case.kind, case.description, case.inputs, case.expected)
    with pytest.raises(ValueError, match="two cases are named 'plain'"):
        write_suite(tmp_path / "s", [case, case])


def test_force_must_be_a_bool(tmp_path) -> None:
    """force="no" is a TypeError, not a truthy yes."""
    with pytest.raises(TypeError, match="force must be a bool"):
        write_suite(tmp_path, force="no")


def test_out_naming_a_file_is_an_error_and_the_file_is_kept(tmp_path) -> None:
    """out naming an existing regular file: NotADirectoryError, the file unchanged."""
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        write_suite(f)
    assert f.read_text() == "x"


def test_written_files_have_ordinary_permissions_and_no_leftovers(tmp_path) -> None:
    """Files get the mode a plain write gives (0o666 minus the umask) and no temporary file
    stays behind."""
    umask = os.umask(0)
    os.umask(umask)
    paths = write_suite(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(paths)
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p


def test_written_suite_reads_back_exactly(tmp_path) -> None:
    """What write_suite writes, np.load reads back as the cases' arrays."""
    cases = build_suite()[:2]
    write_suite(tmp_path, cases)
    for c in cases:
        with np.load(tmp_path / f"{c.name}.npz", allow_pickle=False) as z:
            for n, a in c.arrays().items():
                assert np.array_equal(z[n], a) and z[n].dtype == a.dtype, n
