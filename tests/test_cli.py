"""The command line: the demo writes its figures, ``plot`` draws good files and refuses bad ones."""

import contextlib
import io
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from numpy_attention.app.cli import build_parser, load_weights, main  # noqa: E402

DEMO_FILES = [  # sorted, as a directory listing
    "cross_attention.png",
    "fusion.png",
    "graph.png",
    "heads.png",
    "masks.png",
    "training.png",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One quick demo run shared by the tests that inspect its output: (directory, stdout)."""
    out = tmp_path_factory.mktemp("figures")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def demo_dir(demo_run):
    return demo_run[0]


def test_demo_writes_every_figure_as_a_png(demo_dir):
    """`numpy-attention demo --out DIR` writes the six PNGs, and nothing else."""
    assert sorted(p.name for p in demo_dir.iterdir()) == DEMO_FILES
    for name in DEMO_FILES:
        assert (demo_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_prints_each_file_it_writes_and_the_training_progress(demo_run):
    """The user sees the worked example, training progress lines, and one 'wrote' line per file."""
    out, text = demo_run
    assert text.startswith("Causal self-attention of X")
    for name in DEMO_FILES:
        assert f"wrote {out / name}" in text
    assert "step   50/60" in text and "test accuracy" in text


def test_demo_figures_are_byte_identical_when_regenerated(demo_dir, tmp_path):
    """Determinism: a second run (same seed) reproduces every PNG bit for bit."""
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    for name in DEMO_FILES:
        assert (tmp_path / name).read_bytes() == (demo_dir / name).read_bytes(), name


def test_no_arguments_means_demo():
    """`numpy-attention` with no subcommand runs the demo (default out: figures/)."""
    args = build_parser().parse_args([])
    assert args.func.__name__ == "_run_demo"
    assert build_parser().parse_args(["demo"]).out == "figures"


def test_every_subcommand_has_help(capsys):
    """--help works for the command and each subcommand, including vectors and check."""
    for argv in ([], ["demo"], ["plot"], ["vectors"], ["check"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        assert "usage: numpy-attention" in capsys.readouterr().out


def test_plot_draws_a_2d_file_with_labels(tmp_path, capsys):
    """A valid (L, S) .npy becomes a PNG at --out; the drawn data are the file's weights."""
    w = np.array([[0.7, 0.3], [0.1, 0.9], [0.5, 0.5]])
    f = tmp_path / "w.npy"
    np.save(f, w)
    out = tmp_path / "w.png"
    code = main(["plot", str(f), "--query-labels", "a", "b", "c", "--key-labels", "x", "y"])
    assert code == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    np.testing.assert_array_equal(load_weights(f).weights, w)


def test_plot_draws_3d_heads_from_an_npz_key(tmp_path):
    """(H, L, S) from a .npz with --key gives one PNG named after the key by default."""
    f = tmp_path / "attn.npz"
    np.savez(f, layer0=np.full((2, 3, 3), 1 / 3), other=np.eye(2))
    assert main(["plot", str(f), "--key", "layer0", "--labels", "a", "b", "c"]) == 0
    assert (tmp_path / "attn_layer0.png").is_file()


def _bad_files(tmp_path):
    nan = np.full((2, 2), 0.5)
    nan[1, 0] = np.nan
    cases = {
        "missing.npy": (None, "no such file"),
        "nan.npy": (nan, "contains NaN"),
        "scores.npy": (np.array([[2.0, -1.0]]), r"values must lie in [0, 1]"),
        "vector.npy": (np.ones(3) / 3, "expected 2-D (L, S), 3-D (H, L, S), 4-D (B, H, L, S)"),
        "batch.npy": (np.full((1, 1, 1, 1, 2, 2), 0.5), "got shape (1, 1, 1, 1, 2, 2)"),
        "text.npy": (b"hello, not numpy", "not a .npy or .npz file"),
        "objects.npy": (np.array([{"a": 1}], dtype=object), "pickled Python objects"),
        "two.npz": ({"a": np.eye(2), "b": np.eye(2)}, "choose one with --key"),
        "strings.npy": (np.array([["a", "b"]]), "expected a numeric array"),
    }
    paths = {}
    for name, (content, message) in cases.items():
        p = tmp_path / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif isinstance(content, dict):
            np.savez(p, **content)
        elif content is not None:
            np.save(p, content, allow_pickle=content.dtype == object)
        paths[name] = (p, message)
    return paths


@pytest.mark.parametrize(
    "name",
    [
        "missing.npy",
        "nan.npy",
        "scores.npy",
        "vector.npy",
        "batch.npy",
        "text.npy",
        "objects.npy",
        "two.npz",
        "strings.npy",
    ],
)
def test_plot_refuses_a_bad_file_with_one_line_and_exit_code_2(tmp_path, capsys, name):
    """Bad files: exit 2, one stderr line 'numpy-attention plot: error: FILE: why', no PNG."""
    path, message = _bad_files(tmp_path)[name]
    assert main(["plot", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"numpy-attention plot: error: {path}")
    assert message in lines[0]
    assert captured.out == ""
    assert not list(tmp_path.glob("*.png"))


def test_plot_warns_when_rows_sum_to_neither_1_nor_0(tmp_path, capsys):
    """A row summing to 0.4 draws (exit 0) with a warning; a masked row (sum 0) does not."""
    f = tmp_path / "odd.npy"
    np.save(f, np.array([[0.2, 0.2], [0.5, 0.5], [0.0, 0.0]]))
    assert main(["plot", str(f)]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 of 3 rows sum to neither 1 nor 0 (row 0 sums to 0.4)" in err
    np.save(f, np.array([[0.3, 0.7], [0.0, 0.0]]))
    assert main(["plot", str(f), "--force"]) == 0  # replaces the first run's PNG
    assert capsys.readouterr().err == ""


def test_plot_refuses_labels_of_the_wrong_length(tmp_path, capsys):
    """Two labels for three rows is an error naming both counts."""
    f = tmp_path / "w.npy"
    np.save(f, np.full((3, 3), 1 / 3))
    assert main(["plot", str(f), "--labels", "a", "b"]) == 2
    assert "2 query labels given, expected 3" in capsys.readouterr().err


def test_plot_error_in_a_subprocess_has_no_traceback(tmp_path):
    """As a real command: a NaN file gives exit code 2 and a single line, no Python traceback."""
    f = tmp_path / "nan.npy"
    np.save(f, np.array([[np.nan, 1.0]]))
    proc = subprocess.run(
        [sys.executable, "-m", "numpy_attention", "plot", str(f)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"numpy-attention plot: error: {f}: contains NaN (1 entries, first at (0, 0))"
    ]


def test_plot_zeros_masked_draws_exact_zeros_grey(tmp_path, monkeypatch):
    """--zeros-masked passes mask = (w != 0) to the drawing; without it no mask is drawn."""
    import numpy_attention.app.plotting as plotting

    seen = []
    real = plotting.plot_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(plotting, "plot_attention", spy)
    f = tmp_path / "causal.npy"
    w = np.array([[1.0, 0.0], [0.4, 0.6]])
    np.save(f, w)
    assert main(["plot", str(f), "--zeros-masked"]) == 0
    assert main(["plot", str(f), "--force"]) == 0
    np.testing.assert_array_equal(seen[0], [[True, False], [True, True]])
    assert seen[1] is None


def test_without_matplotlib_demo_and_plot_say_how_to_install_it(tmp_path, monkeypatch, capsys):
    """No matplotlib: exit 2 and one line naming the 'plot' extra, not an ImportError traceback."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert main(["plot", str(tmp_path / "w.npy")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "numpy-attention demo: error: matplotlib is not installed: "
        "python -m pip install 'numpy-attention[plot]'",
        "numpy-attention plot: error: matplotlib is not installed: "
        "python -m pip install 'numpy-attention[plot]'",
    ]
    assert not list(tmp_path.iterdir())


def test_plot_reads_a_models_stack_and_draws_the_chosen_layer(tmp_path):
    """`plot` reads (layers, B, H, L, S), as np.save(torch.stack(out.attentions)) writes it, and
    draws --layer / --batch; an index out of range is a one-line error, exit 2."""
    w = np.random.default_rng(0).random((2, 3, 4, 5, 5))
    f = tmp_path / "attn.npy"
    np.save(f, w / w.sum(-1, keepdims=True))
    assert main(["plot", str(f), "--layer", "1", "--batch", "2"]) == 0
    assert (tmp_path / "attn.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(f), "--layer", "2", "--force"]) == 2


def test_plot_title_says_which_layer_and_batch_of_a_stack(tmp_path, monkeypatch):
    """The default title of a stack's figure names the layer and batch drawn, not only the file."""
    import numpy_attention.app.plotting as plotting

    titles = []
    real = plotting.plot_heads
    monkeypatch.setattr(
        plotting, "plot_heads", lambda *a, **kw: titles.append(kw["title"]) or real(*a, **kw)
    )
    w = np.random.default_rng(0).random((2, 3, 4, 5, 5))
    np.save(tmp_path / "attn.npy", w / w.sum(-1, keepdims=True))
    np.save(tmp_path / "batch.npy", w[0] / w[0].sum(-1, keepdims=True))
    assert main(["plot", str(tmp_path / "attn.npy"), "--layer", "1", "--batch", "2"]) == 0
    assert main(["plot", str(tmp_path / "batch.npy"), "--batch", "1"]) == 0
    assert titles == ["attn.npy: layer 1, batch 2", "batch.npy: batch 1"]
