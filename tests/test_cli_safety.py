"""The command line's promises (principle 4): the user's files are never overwritten unless asked,
never through a symbolic link; every error is one line and exit code 2, never a traceback, never a
hang; drawing is bounded whatever the file holds; a closed pipe keeps the command's exit code."""

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import numpy_attention.app.plotting as plotting  # noqa: E402
from numpy_attention.app.cli import MAX_HEADS, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def command(*args, timeout=120, **kwargs):
    """Run ``python -m numpy_attention ARGS`` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "numpy_attention", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs,
    )  # fmt: skip


def one_error_line(stderr: str, prog: str = "numpy-attention") -> str:
    """The single stderr line of a refused command (no traceback, no usage block)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}") and ": error: " in lines[0], stderr
    assert "Traceback" not in stderr
    return lines[0]


def weights_file(tmp_path, name="w.npy", w=None):
    f = tmp_path / name
    np.save(f, np.full((3, 3), 1 / 3) if w is None else w)
    return f


def capture_figures(monkeypatch):
    """Record the Figures that ``plot`` would save, without rendering them (fast, no timing)."""
    figures = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, dpi=110: figures.append(fig))
    return figures


# ---------------------------------------------------------------------------
# plot: the user's files
# ---------------------------------------------------------------------------


def test_plot_refuses_to_replace_an_existing_file_unless_forced(tmp_path, capsys):
    """An existing --out file is kept (exit 2, one line naming --force); --force replaces it."""
    f = weights_file(tmp_path)
    out = tmp_path / "mine.png"
    out.write_bytes(b"the user's picture")
    assert main(["plot", str(f), "--out", str(out)]) == 2
    assert "exists; add --force" in one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == b"the user's picture"
    assert main(["plot", str(f), "--out", str(out), "--force"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_never_overwrites_its_input_even_with_force(tmp_path, capsys):
    """`plot w.npy --out w.npy --force` (or a hard link to it) leaves the data as they were."""
    f = weights_file(tmp_path)
    before = f.read_bytes()
    link = tmp_path / "same.npy"
    os.link(f, link)
    for out in (f, link):
        assert main(["plot", str(f), "--out", str(out), "--force"]) == 2
        assert "is the input file" in one_error_line(capsys.readouterr().err)
    assert f.read_bytes() == before


def test_plot_default_output_named_like_the_input_is_refused(tmp_path, capsys):
    """Weights saved under a .png name: the default output (FILE with .png) is the input itself."""
    f = tmp_path / "w.png"
    with open(f, "wb") as fh:
        np.save(fh, np.eye(2))
    before = f.read_bytes()
    assert main(["plot", str(f), "--force"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert f.read_bytes() == before


@pytest.mark.parametrize("force", [False, True])
def test_plot_never_writes_through_a_symbolic_link(tmp_path, capsys, force):
    """--out a symlink (to a file elsewhere, or dangling) is refused, with --force too; the link's
    target is neither changed nor created."""
    f = weights_file(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target, missing = elsewhere / "precious.txt", elsewhere / "created.png"
    target.write_text("keep me")
    for name, to in (("a.png", target), ("b.png", missing)):
        (tmp_path / name).symlink_to(to)
        argv = ["plot", str(f), "--out", str(tmp_path / name)] + (["--force"] if force else [])
        assert main(argv) == 2
        assert "symbolic link" in one_error_line(capsys.readouterr().err)
    assert target.read_text() == "keep me" and not missing.exists()


def test_plot_leaves_no_partial_file_when_drawing_fails(tmp_path, capsys):
    """A title matplotlib cannot parse: one line, exit 2, and no (empty) PNG left behind."""
    f = weights_file(tmp_path)
    assert main(["plot", str(f), "--title", r"$\frac$"]) == 2
    assert "bad mathtext" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "w.png").exists()


def test_plot_draws_dollar_signs_in_labels_and_file_names_literally(tmp_path):
    """Token labels are text, not mathtext: `$\\frac$` as a label draws (exit 0)."""
    f = weights_file(tmp_path, "cost$.npy", np.full((2, 2), 0.5))
    assert main(["plot", str(f), "--labels", r"$\frac$", "$"]) == 0
    assert (tmp_path / "cost$.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------
# plot: hostile inputs
# ---------------------------------------------------------------------------


def npy_header_only(path, shape, dtype="<f8"):
    """A .npy file whose header declares ``shape`` but which holds 16 bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    pad = 64 - (10 + len(header) + 1) % 64
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + (len(header) + pad + 1).to_bytes(2, "little"))
        f.write(header + b" " * pad + b"\n" + bytes(16))
    return path


def test_plot_refuses_a_header_declaring_10_to_the_12_numbers_before_reading(tmp_path, capsys):
    """A tiny file declaring (10**6, 10**6) float64: refused from its header (no MemoryError),
    and a truncated one (declaring more data than it holds) is named so."""
    huge = npy_header_only(tmp_path / "huge.npy", (10**6, 10**6))
    assert main(["plot", str(huge)]) == 2
    assert "(1000000000000 numbers); plot reads at most" in one_error_line(capsys.readouterr().err)
    short = npy_header_only(tmp_path / "short.npy", (30, 30))
    assert main(["plot", str(short)]) == 2
    assert "truncated" in one_error_line(capsys.readouterr().err)


def test_plot_refuses_an_archive_member_that_is_not_npy(tmp_path, capsys):
    """A PyTorch .pt file is a zip of pickles: one line naming the member, nothing unpickled."""
    pt = tmp_path / "model.pt"
    with zipfile.ZipFile(pt, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/version", b"3\n")
    for key in ([], ["--key", "archive/data.pkl"]):
        assert main(["plot", str(pt), *key]) == 2
        assert "'archive/data.pkl' is not a .npy array" in one_error_line(capsys.readouterr().err)


def test_plot_refuses_an_npz_member_whose_header_declares_too_much(tmp_path, capsys):
    """The size check applies inside a .npz too, before the member is inflated."""
    member = npy_header_only(tmp_path / "m.npy", (10**7, 10**5))
    z = tmp_path / "bomb.npz"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(member, "attn.npy")
    assert main(["plot", str(z)]) == 2
    assert "bomb.npz[attn]: declares shape" in one_error_line(capsys.readouterr().err)


def test_plot_refuses_a_fifo_instead_of_waiting_for_a_writer(tmp_path):
    """A FIFO as input would block open() forever: refused before opening (exit 2 at once)."""
    fifo = tmp_path / "w.npy"
    os.mkfifo(fifo)
    proc = command("plot", fifo, timeout=60)
    assert proc.returncode == 2
    assert "not a regular file" in one_error_line(proc.stderr, "numpy-attention plot")


# ---------------------------------------------------------------------------
# plot: bounded drawing (counted in artists, not seconds)
# ---------------------------------------------------------------------------


def test_plot_of_2000_heads_draws_at_most_max_heads_and_says_so(tmp_path, monkeypatch, capsys):
    """(2000, 1, 1) weights: MAX_HEADS heatmaps (not 2000 axes), with a note on stderr."""
    figures = capture_figures(monkeypatch)
    f = weights_file(tmp_path, w=np.ones((2000, 1, 1)))
    assert main(["plot", str(f)]) == 0
    (fig,) = figures
    assert sum(1 for a in fig.axes if a.images) <= MAX_HEADS + 1  # the heads (+ colour bar)
    assert f"drawing the first {MAX_HEADS} of 2000 heads" in capsys.readouterr().err


def test_plot_annotate_on_150_by_150_writes_no_numbers_and_says_so(tmp_path, monkeypatch, capsys):
    """--annotate above MAX_ANNOTATE x MAX_ANNOTATE: no 22,500 text artists, a note instead;
    at the limit every cell is written."""
    figures = capture_figures(monkeypatch)
    n = plotting.MAX_ANNOTATE
    big = weights_file(tmp_path, "big.npy", np.full((150, 150), 1 / 150))
    small = weights_file(tmp_path, "small.npy", np.full((n, n), 1 / n))
    assert main(["plot", str(big), "--annotate"]) == 0
    assert main(["plot", str(small), "--annotate"]) == 0
    assert len(figures[0].axes[0].texts) == 0
    assert len(figures[1].axes[0].texts) == n * n
    assert "--annotate ignored: the map is 150 x 150" in capsys.readouterr().err


def test_plot_cuts_a_100k_character_label_and_title(tmp_path, monkeypatch):
    """A 100,000-character label is drawn cut to MAX_LABEL characters; the title to MAX_TITLE."""
    from numpy_attention.app.cli import MAX_TITLE

    figures = capture_figures(monkeypatch)
    f = weights_file(tmp_path, w=np.ones((1, 1)))
    assert main(["plot", str(f), "--labels", "x" * 100_000, "--title", "t" * 100_000]) == 0
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert labels and max(map(len, labels)) == plotting.MAX_LABEL
    assert len(ax.get_title()) == MAX_TITLE


# ---------------------------------------------------------------------------
# demo: its own files only
# ---------------------------------------------------------------------------


def test_demo_refuses_an_out_that_is_an_existing_file(tmp_path, capsys):
    """--out naming a file: exit 2, one line, the file unchanged (no FileExistsError traceback)."""
    f = tmp_path / "figures"
    f.write_text("not a directory")
    assert main(["demo", "--quick", "--out", str(f)]) == 2
    assert "exists and is not a directory" in one_error_line(capsys.readouterr().err)
    assert f.read_text() == "not a directory"


def test_demo_refuses_an_unwritable_out_with_one_line(tmp_path):
    """--out below a regular file cannot be created: exit 2, one line, as a real command."""
    (tmp_path / "file").write_text("x")
    proc = command("demo", "--quick", "--out", tmp_path / "file" / "figures")
    assert proc.returncode == 2
    assert "cannot create the output directory" in one_error_line(proc.stderr)


def test_demo_writes_only_its_own_figures_and_not_through_a_symlink(tmp_path, capsys):
    """The demo replaces its own figure names in --out, leaves the user's other files alone, and
    refuses a figure name that is a symbolic link (the link's target keeps its content)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "fusion.png").write_bytes(b"an old run")
    target = tmp_path / "precious.png"
    target.write_bytes(b"keep me")
    (out / "heads.png").symlink_to(target)
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    assert "heads.png: is a symbolic link" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "fusion.png").read_bytes()[:4] == b"\x89PNG"  # ours: replaced


def test_demo_refuses_a_negative_seed_with_one_line(tmp_path):
    """`--seed -1` is a usage error (exit 2, one line), not numpy's ValueError traceback."""
    proc = command("demo", "--quick", "--seed", "-1", "--out", tmp_path)
    assert proc.returncode == 2
    assert "--seed: must be an integer >= 0" in one_error_line(proc.stderr)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_demo_on_a_full_disk_stdout_exits_2_with_one_line(tmp_path):
    """`numpy-attention demo > /dev/full`: exit 2 and one line saying why, no traceback."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "numpy_attention", "demo", "--quick", "--out", str(tmp_path)],
            cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "cannot write to standard output: No space left on device" in line


# ---------------------------------------------------------------------------
# Every error: one line, exit 2; a closed pipe: the command's own code
# ---------------------------------------------------------------------------


def test_every_cli_error_is_one_line_and_exit_2(tmp_path):
    """Several bad command lines as real commands: each exit 2, one stderr line, no traceback."""
    (tmp_path / "file").write_text("x")
    w = weights_file(tmp_path)
    bad = [
        ["no-such-command"],
        ["plot"],
        ["plot", w, "--no-such-flag"],
        ["plot", tmp_path / "missing.npy"],
        ["plot", tmp_path],
        ["plot", w, "--out", tmp_path / "no" / "dir.png"],
        ["plot", w, "--key", "a"],
        ["demo", "--seed", "x"],
        ["demo", "--out", tmp_path / "file"],
        ["check", tmp_path / "missing"],
        ["check", w, "--dtype", "float8"],
        ["vectors"],
        ["vectors", "--out", tmp_path / "file"],
    ]
    for argv in bad:
        proc = command(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        one_error_line(proc.stderr)


def exact_results(tmp_path) -> tuple[Path, Path]:
    """A suite written by `vectors` and results equal to its expected values (a pass)."""
    suite, results = tmp_path / "suite", tmp_path / "results"
    assert command("vectors", "--out", suite).returncode == 0
    results.mkdir()
    for case in suite.glob("*.npz"):
        with np.load(case) as z:
            got = {k[len("expected_") :]: z[k] for k in z.files if k.startswith("expected_")}
        np.savez(results / case.name, **got)
    return suite, results


def test_check_into_a_closed_pipe_keeps_its_exit_code(tmp_path):
    """`check ... | head -1`: the reader is gone before the report is written; a pass still exits
    0 (not 1, which CI reads as a mismatch), quietly."""
    suite, results = exact_results(tmp_path)
    argv = [sys.executable, "-m", "numpy_attention", "check", str(results), "--suite", str(suite),
            "--dtype", "float64"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `head -1` exiting at once: every write gets EPIPE
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert err == b""


def test_version_is_the_package_version(capsys):
    """`numpy-attention --version` prints the version pyproject.toml declares."""
    import re

    declared = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"numpy-attention {declared.group(1)}"


def test_files_module_refuses_non_regular_files_before_opening(tmp_path):
    """The reader's first gate, directly: a character device is refused by its mode."""
    from numpy_attention.app.files import InputError, regular_file

    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(InputError, match="not a regular file"):
        regular_file("/dev/null")


# ---------------------------------------------------------------------------
# The demo on one BLAS thread
# ---------------------------------------------------------------------------


class Restarted(Exception):
    """Raised by the fake os.execve: the command replaced itself."""


def fake_execve(monkeypatch):
    def execve(path, args, env):
        raise Restarted(path, args, env)

    monkeypatch.setattr(os, "execve", execve)


def test_demo_without_threadpoolctl_restarts_with_one_blas_thread(tmp_path, monkeypatch):
    """No threadpoolctl: the real command re-runs itself with OPENBLAS/OMP/MKL_NUM_THREADS=1
    (BLAS reads them only when NumPy loads it) and the same arguments."""
    import numpy_attention.app.cli as cli

    fake_execve(monkeypatch)
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    for v in cli.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(sys, "argv", ["numpy-attention", "demo", "--out", str(tmp_path)])
    with pytest.raises(Restarted) as restart:
        main()
    path, args, env = restart.value.args
    assert path == sys.executable
    assert args[1:] == ["-m", "numpy_attention", "demo", "--out", str(tmp_path)]
    assert all(env[v] == "1" for v in cli.BLAS_THREAD_VARIABLES)


@pytest.mark.parametrize("case", ["user_set_the_variable", "threadpoolctl", "not_the_demo"])
def test_demo_restart_only_when_needed(tmp_path, monkeypatch, case):
    """No restart when the user set a BLAS variable, when threadpoolctl limits BLAS in-process,
    or for another subcommand."""
    import numpy_attention.app.cli as cli

    fake_execve(monkeypatch)
    ran = []
    monkeypatch.setattr(cli, "_run_demo", lambda args: ran.append(args) or 0)
    for v in cli.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    argv = ["numpy-attention", "demo", "--out", str(tmp_path)]
    if case == "threadpoolctl":
        pytest.importorskip("threadpoolctl")
    else:
        monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    if case == "user_set_the_variable":
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
    elif case == "not_the_demo":
        argv = ["numpy-attention", "plot", str(tmp_path / "missing.npy")]
    monkeypatch.setattr(sys, "argv", argv)
    assert main() == (2 if case == "not_the_demo" else 0)
    assert len(ran) == (0 if case == "not_the_demo" else 1)


def test_run_demo_trains_the_model_on_one_blas_thread(tmp_path, monkeypatch):
    """With threadpoolctl, every BLAS library reports one thread while the demo trains, and the
    limit is lifted afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy_attention.app.demo as demo

    def blas_threads():
        return [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]

    seen, train = [], demo.train
    monkeypatch.setattr(demo, "train", lambda **kw: seen.append(blas_threads()) or train(**kw))
    before = blas_threads()
    demo.run_demo(tmp_path, quick=True, log=lambda line: None)
    assert seen and set(seen[0]) == {1}
    assert blas_threads() == before
