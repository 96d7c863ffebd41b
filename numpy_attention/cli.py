"""The ``numpy-attention`` command: ``demo`` (the default), ``plot``, ``vectors`` and ``check``.

``numpy-attention`` with no arguments (or ``python -m numpy_attention``) runs the
demo. Errors in user input (a bad file for ``plot``) are reported as one line on
stderr with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["main", "build_parser", "load_weights", "InputError", "LoadedWeights"]

#: Exit code of ``plot`` for a file that cannot be drawn (argparse uses 2 for usage errors).
EXIT_BAD_INPUT = 1


class InputError(Exception):
    """A user's input that cannot be used; its message is printed as one line."""


class LoadedWeights(NamedTuple):
    """Result of :func:`load_weights`."""

    weights: np.ndarray  # float64, (L, S) or (H, L, S)
    key: str  # the array's name in a .npz, "" for a .npy
    dtype: np.dtype  # the dtype stored in the file


def _worked_example() -> str:
    """Three tokens of width 2, small enough to follow by hand (docs/tour.md)."""
    from .attention import attention_forward

    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out, cache = attention_forward(q, q, q, is_causal=True)
    with np.printoptions(precision=4, suppress=True):
        return (
            "Causal self-attention of X = [[1, 0], [0, 1], [1, 1]] (Q = K = V = X):\n"
            f"weights P =\n{cache.P}\n"
            f"log-sum-exp = {cache.lse}\n"
            f"output O = P V =\n{out}"
        )


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(
            "matplotlib is not installed: python -m pip install 'numpy-attention[plot]'"
        ) from None


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    out = getattr(args, "out", None) or "figures"
    try:
        _need_matplotlib()
    except InputError as e:
        print(f"numpy-attention demo: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(_worked_example())
    run_demo(
        out, quick=bool(getattr(args, "quick", False)), seed=int(getattr(args, "seed", 0) or 0)
    )
    return 0


# ---------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------


def load_weights(path: str | Path, key: str | None = None) -> LoadedWeights:
    r"""Load attention weights from a ``.npy`` or ``.npz`` file and check them.

    Parameters
    ----------
    path : str or Path
        A ``.npy`` file, or a ``.npz`` archive (then ``key`` picks the array;
        it may be omitted when the archive holds exactly one).
    key : str, optional
        Name of the array inside a ``.npz``.

    Returns
    -------
    loaded : LoadedWeights
        ``weights`` (float64, shape ``(L, S)`` or ``(H, L, S)``), ``key`` (the
        array's name, ``""`` for a ``.npy``) and ``dtype`` (as stored).

    Raises
    ------
    InputError
        Missing or unreadable file, pickled objects, a missing or ambiguous
        key, a non-numeric array, not 2-D or 3-D, empty, NaN/inf, or values
        outside [0, 1]. The message is one line.

    Examples
    --------
    >>> import io, tempfile, os
    >>> d = tempfile.mkdtemp(); f = os.path.join(d, "w.npy")
    >>> np.save(f, np.array([[0.5, 0.5]]))
    >>> load_weights(f).weights.shape
    (1, 2)
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a .npy or .npz file")
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise InputError(f"{p}: unreadable: {e.strerror or e}") from None
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
        raise InputError(f"{p}: unreadable: not a .npy or .npz file (np.save / np.savez)")
    try:
        loaded = np.load(p, allow_pickle=False)
    except ValueError as e:  # pickled object arrays, or a damaged header
        reason = "holds pickled Python objects" if "pickle" in str(e) else f"damaged: {e}"
        raise InputError(f"{p}: unreadable: {reason}".splitlines()[0]) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{p}: unreadable: {type(e).__name__}: {e}".splitlines()[0]) from None
    name = ""
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            if key is None:
                if len(keys) != 1:
                    listed = ", ".join(keys) if keys else "none"
                    raise InputError(
                        f"{p}: holds {len(keys)} arrays ({listed}); choose one with --key"
                    )
                key = keys[0]
            if key not in keys:
                raise InputError(f"{p}: no array named {key!r}; it holds: {', '.join(keys)}")
            try:
                w = loaded[key]
            except ValueError:
                raise InputError(f"{p}: unreadable: {key!r} holds pickled Python objects") from None
            name = key
    else:
        if key is not None:
            raise InputError(f"{p}: --key applies to .npz archives; this is a single .npy array")
        w = loaded
    checked = _check_loaded(w, f"{p}" + (f"[{name}]" if name else ""))
    return LoadedWeights(checked, name, w.dtype)


def _check_loaded(w: np.ndarray, where: str) -> np.ndarray:
    """Return the weights as float64, or raise an InputError naming what is wrong."""
    if w.dtype.kind not in "biuf":
        raise InputError(f"{where}: expected a numeric array of attention weights, got {w.dtype}")
    if w.ndim not in (2, 3):
        raise InputError(
            f"{where}: expected 2-D (L, S) or 3-D (H, L, S) weights, got shape {w.shape}"
            + (" (save one batch element, e.g. w[0])" if w.ndim == 4 else "")
        )
    if w.size == 0:
        raise InputError(f"{where}: the array is empty (shape {w.shape})")
    x = w.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "NaN" if np.isnan(x).any() else "inf"
        raise InputError(f"{where}: contains {what} ({int(bad.sum())} entries, first at {first})")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(
            f"{where}: values must lie in [0, 1] (attention weights, not scores), "
            f"got min {lo:.6g} and max {hi:.6g}"
        )
    return x


def _row_warning(w: np.ndarray, dtype_bytes: int) -> str | None:
    """Return a warning when some rows sum to neither 1 nor 0 (0 = a fully masked query)."""
    tol = 1e-2 if dtype_bytes <= 2 else 1e-4
    sums = w.sum(axis=-1)
    odd = ~(np.isclose(sums, 1.0, rtol=0, atol=tol) | np.isclose(sums, 0.0, rtol=0, atol=tol))
    if not odd.any():
        return None
    first = tuple(int(i) for i in np.argwhere(odd)[0])
    where = f"row {first[0]}" if len(first) == 1 else f"head {first[0]}, row {first[1]}"
    return (
        f"{int(odd.sum())} of {sums.size} rows sum to neither 1 nor 0 ({where} sums to "
        f"{float(sums[first]):.6g}); rows should be queries and columns keys"
    )


def _labels(args: argparse.Namespace, L: int, S: int) -> tuple[list[str] | None, list[str] | None]:
    q, k = args.query_labels, args.key_labels
    if args.labels is not None:
        if q is not None or k is not None:
            raise InputError("give --labels, or --query-labels/--key-labels, not both")
        if L != S:
            raise InputError(
                f"--labels labels both axes, but the weights have L={L} queries and S={S} keys; "
                "use --query-labels and --key-labels"
            )
        q = k = args.labels
    for name, lab, n in (("query", q, L), ("key", k, S)):
        if lab is not None and len(lab) != n:
            raise InputError(f"{len(lab)} {name} labels given, expected {n}")
    return q, k


def _run_plot(args: argparse.Namespace) -> int:
    prog = "numpy-attention plot"
    try:
        _need_matplotlib()
        w, name, dtype = load_weights(args.file, args.key)
        q, k = _labels(args, w.shape[-2], w.shape[-1])
        warning = _row_warning(w, dtype.itemsize)
        out = Path(args.out) if args.out else _default_out(Path(args.file), name)
        if not out.parent.is_dir():
            raise InputError(f"{out.parent}: output directory does not exist")
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if warning:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    import matplotlib.style

    from .plotting import plot_attention, plot_heads, save_figure

    title = args.title
    if title is None:
        title = Path(args.file).name + (f" [{name}]" if name else "")
    with matplotlib.style.context("default"):
        mask = w != 0 if args.zeros_masked else None
        draw = plot_attention if w.ndim == 2 else plot_heads
        fig = draw(w, q, k, mask=mask, title=title, annotate=args.annotate)
        try:
            save_figure(fig, out)
        except OSError as e:
            print(f"{prog}: error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(f"wrote {out}")
    return 0


def _default_out(path: Path, key: str) -> Path:
    stem = path.stem + (f"_{key}" if key else "")
    return path.with_name(stem + ".png")


# ---------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``numpy-attention`` command."""
    parser = argparse.ArgumentParser(
        prog="numpy-attention",
        description="A float64 NumPy reference for attention. With no subcommand: demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the worked examples and write their figures (the default)",
        description="Run the worked examples: the seed's cross-attention and fusion examples, "
        "multi-head maps, a mask gallery, and a small model trained with the package's own "
        "backward passes. Prints what it computes and each file it writes.",
    )
    demo.add_argument(
        "--out", default="figures", metavar="DIR", help="directory for the PNGs (default: figures)"
    )
    demo.add_argument(
        "--quick", action="store_true", help="train the model for 60 steps instead of 400"
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the model's training (default 0)"
    )
    demo.set_defaults(func=_run_demo)

    plot = sub.add_parser(
        "plot",
        help="draw attention weights saved from any model (.npy or .npz)",
        description="Draw attention weights that you saved from your own model (any framework): "
        "a 2-D array (L, S) as one heatmap, a 3-D array (H, L, S) as one map per head. Rows are "
        "queries, columns keys; values must lie in [0, 1]. Bad files give a one-line error and "
        "exit code 1; rows that sum to neither 1 nor 0 give a warning.",
    )
    plot.add_argument("file", metavar="FILE", help="a .npy file, or a .npz archive (see --key)")
    plot.add_argument("--key", help="the array to draw from a .npz (needed if it holds several)")
    plot.add_argument(
        "--labels", nargs="+", metavar="TOKEN", help="token labels of both axes (when L == S)"
    )
    plot.add_argument("--query-labels", nargs="+", metavar="TOKEN", help="labels of the L rows")
    plot.add_argument("--key-labels", nargs="+", metavar="TOKEN", help="labels of the S columns")
    plot.add_argument("--out", metavar="PNG", help="output file (default: FILE with .png)")
    plot.add_argument("--title", help="figure title (default: the file name)")
    plot.add_argument("--annotate", action="store_true", help="write each weight in its cell")
    plot.add_argument(
        "--zeros-masked",
        action="store_true",
        help="draw weights that are exactly 0 as masked cells (grey), as a -inf score gives",
    )
    plot.set_defaults(func=_run_plot)

    from . import vectors

    vectors.register(sub)
    parser.set_defaults(func=_run_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `numpy-attention check ... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
