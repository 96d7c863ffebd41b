"""The ``numpy-attention`` command: ``demo`` (the default), ``plot``, ``vectors`` and ``check``.

Every argument of every subcommand is declared here. ``numpy-attention`` with no
arguments (or ``python -m numpy_attention``) runs the demo.

Exit codes: 0 success; 1 ``check`` found a mismatch; 2 anything that could not
be done (a bad argument, an unusable file, a file that would be overwritten,
a full disk): one line on stderr, never a traceback. When the reader of the
output goes away (``numpy-attention check ... | head -1``) the command stops
writing quietly and still exits with the code of what it found.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .._validate import check_int
from .files import InputError, LoadedWeights, load_weights, open_output

__all__ = ["main", "build_parser", "load_weights", "InputError", "LoadedWeights"]

#: Exit code of a check that found a mismatch.
EXIT_MISMATCH = 1
#: Exit code of everything that could not be done (argparse uses 2 for usage errors too).
EXIT_BAD_INPUT = 2
#: ``plot`` draws at most this many heads of an (H, L, S) array.
MAX_HEADS = 16
#: ``plot`` cuts a longer --title to this many characters.
MAX_TITLE = 200


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MESSAGE (see PROG --help)``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _seed(text: str) -> int:
    """``--seed``: an integer >= 0 (a NumPy seed cannot be negative)."""
    try:
        return check_int(int(text), "--seed", minimum=0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None


def _worked_example() -> str:
    """Three tokens of width 2, small enough to follow by hand (docs/tour.md)."""
    from ..attention import attention_forward

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

    prog = "numpy-attention demo"
    try:
        _need_matplotlib()
        print(_worked_example())
        run_demo(args.out, quick=args.quick, seed=args.seed)
    except InputError as e:
        return _fail(prog, str(e))
    return 0


# ---------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------


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


def _literal(text: str) -> str:
    r"""Text that matplotlib draws as written: ``$`` escaped (no mathtext)."""
    return text.replace("$", r"\$")


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
    q = None if q is None else [_literal(t) for t in q]
    k = None if k is None else [_literal(t) for t in k]
    return q, k


def _plot_notes(args: argparse.Namespace, w: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Bound the drawing (heads, annotation); return the weights to draw and notes saying so."""
    from .plotting import MAX_ANNOTATE

    notes = []
    if w.ndim == 3 and w.shape[0] > MAX_HEADS:
        notes.append(
            f"drawing the first {MAX_HEADS} of {w.shape[0]} heads; save the others "
            f"separately (e.g. w[{MAX_HEADS}:{2 * MAX_HEADS}]) to see them"
        )
        w = w[:MAX_HEADS]
    if args.annotate and max(w.shape[-2:]) > MAX_ANNOTATE:
        notes.append(
            f"--annotate ignored: the map is {w.shape[-2]} x {w.shape[-1]}, numbers are "
            f"written up to {MAX_ANNOTATE} x {MAX_ANNOTATE} only"
        )
    if args.title is not None and len(args.title) > MAX_TITLE:
        notes.append(f"--title cut to {MAX_TITLE} characters")
    return w, notes


def _title(args: argparse.Namespace, name: str) -> str:
    """Return the user's --title (mathtext allowed), cut; or the file's name, drawn literally."""
    if args.title is not None:
        t = args.title
        return t if len(t) <= MAX_TITLE else t[: MAX_TITLE - 1] + "\u2026"
    picked = getattr(args, "picked", "")  # the layer and batch drawn from a stack
    return _literal(Path(args.file).name + (f" [{name}]" if name else "") + picked)


def _draw(args: argparse.Namespace, loaded: LoadedWeights, out: Path) -> None:
    """Draw the weights and write the PNG (``open_output``'s rules: --force, never the input)."""
    import matplotlib.style

    from .plotting import plot_attention, plot_heads, save_figure

    w, name, _ = loaded
    q, k = _labels(args, w.shape[-2], w.shape[-1])
    with matplotlib.style.context("default"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = w != 0 if args.zeros_masked else None
        draw = plot_attention if w.ndim == 2 else plot_heads
        fig = draw(w, q, k, mask=mask, title=_title(args, name), annotate=args.annotate)
        with open_output(out, replace=args.force, protect=args.file) as f:
            try:
                save_figure(fig, f)
            except ValueError as e:  # matplotlib's mathtext parser (ParseException's text)
                why = str(e).strip().splitlines()[-1]
                raise InputError(
                    f"--title cannot be drawn: bad mathtext ({why}); write \\$ for a dollar sign"
                ) from None
    for w_ in dict.fromkeys(str(c.message).splitlines()[0] for c in caught):
        print(f"numpy-attention plot: note: matplotlib: {w_}", file=sys.stderr)


def _one_layer(args: argparse.Namespace, loaded: LoadedWeights) -> LoadedWeights:
    """Reduce a stack (layers, B, H, L, S) or a batch (B, H, L, S) to --layer and --batch."""
    from .plotting import select_heads

    w = loaded.weights
    if w.ndim <= 3:
        return loaded
    args.picked = (f": layer {args.layer}, " if w.ndim == 5 else ": ") + f"batch {args.batch}"
    try:
        return loaded._replace(weights=select_heads(w, args.layer, args.batch))
    except ValueError as e:
        raise InputError(f"{args.file}: {e} (the array has shape {w.shape})") from None


def _default_out(path: Path, key: str) -> Path:
    stem = path.stem + (f"_{key}" if key else "")
    return path.with_name(stem + ".png")


def _run_plot(args: argparse.Namespace) -> int:
    prog = "numpy-attention plot"
    try:
        _need_matplotlib()
        loaded = load_weights(args.file, args.key)
        out = Path(args.out) if args.out else _default_out(Path(args.file), loaded.key)
        loaded = _one_layer(args, loaded)
        warning = _row_warning(loaded.weights, loaded.dtype.itemsize)
        w, notes = _plot_notes(args, loaded.weights)
        for line in ([f"warning: {warning}"] if warning else []) + [f"note: {n}" for n in notes]:
            print(f"{prog}: {line}", file=sys.stderr)
        _draw(args, loaded._replace(weights=w), out)
    except InputError as e:
        return _fail(prog, str(e))
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------
# vectors and check (the verification wing, numpy_attention.verify, does the work)
# ---------------------------------------------------------------------------


def _run_vectors(args: argparse.Namespace) -> int:
    from ..verify import SUITE_VERSION, UnusableInput, cases_from_config, write_suite

    cases = None
    if args.config is not None:  # the user's cases only (docs/verify.md, "User-sized cases")
        try:
            cases = cases_from_config(args.config, max_bytes=args.max_mib * 2**20)
        except (TypeError, ValueError) as e:
            return _fail("numpy-attention vectors", f"--config {args.config}: {e}")
    try:
        paths = write_suite(args.out, cases, force=args.force)
    except (UnusableInput, OSError) as e:
        why = getattr(e, "strerror", None) or e
        return _fail("numpy-attention vectors", f"cannot write {args.out!r}: {why}")
    print(f"wrote {len(paths) - 1} cases and manifest.json (suite version {SUITE_VERSION}) "
          f"to {args.out}")  # fmt: skip
    return 0


def _run_check(args: argparse.Namespace) -> int:
    """Grade RESULTS; the exit code (0 pass, 1 mismatch) is known before anything is printed."""
    import json

    from ..verify import UnusableInput, check_path

    try:
        report = check_path(args.results, args.suite, dtype=args.dtype, strict=args.strict,
                            policy=args.policy, max_bytes=args.max_mib * 2**20)  # fmt: skip
    except (UnusableInput, OSError) as e:
        return _fail("numpy-attention check", str(getattr(e, "strerror", None) or e))
    code = report.exit_code()
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table())
    return code


def _add_vectors(sub: Any) -> None:
    vec = sub.add_parser(
        "vectors",
        help="write the golden vectors (one .npz per case and manifest.json)",
        description="Write the versioned golden suite: one <case>.npz per case with inputs "
        "and float64 expected results, and manifest.json (format: docs/verify.md). Files in "
        "DIR that are not those of a suite written there before are never replaced.",
    )
    vec.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    vec.add_argument(
        "--force", action="store_true", help="replace files in DIR even if they are not ours"
    )
    vec.add_argument(
        "--config", metavar="FILE", help="write the cases a JSON config describes (your shapes, "
        "dtypes and variants; format: docs/verify.md, 'User-sized cases') instead of the suite"
    )  # fmt: skip
    _add_max_mib(vec, "refuse a config whose expected arrays would hold more than N MiB in all")
    vec.set_defaults(func=_run_vectors)


def _add_max_mib(parser: Any, what: str) -> None:
    """``--max-mib N``: the limit on a suite's expected arrays, the same for vectors and check."""
    from ..verify import MAX_SUITE_BYTES

    def mib(text: str) -> int:
        if not text.isdecimal() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a whole number of MiB >= 1, got {text!r}")
        return int(text)

    default = MAX_SUITE_BYTES // 2**20
    parser.add_argument("--max-mib", type=mib, default=default, metavar="N",
                        help=f"{what} (default {default}; give vectors and check the same "
                        "N for a suite of large cases)")  # fmt: skip


def _add_check(sub: Any) -> None:
    from ..verify import DTYPES

    chk = sub.add_parser(
        "check",
        help="compare a candidate's results with the golden vectors",
        description="Compare RESULTS (a directory of <case>.npz, or one .npz with keys "
        "'<case>/<quantity>') with the suite. Exit 0: all pass; 1: a mismatch; 2: unusable "
        "input.",
    )
    chk.add_argument("results", metavar="RESULTS", help="results directory or .npz file")
    chk.add_argument(
        "--suite", metavar="DIR", help="suite written by 'vectors' (default: build it in memory)"
    )
    chk.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype the candidate computed in (default float32)",
    )
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.add_argument(
        "--strict",
        action="store_true",
        help="count missing cases and quantities as failures (declared gaps excepted)",
    )
    chk.add_argument(
        "--policy",
        choices=("baseline", "absolute"),
        default="baseline",
        help="baseline (default): float16/bfloat16 judged against a naive implementation in the "
        "same dtype, Eq. (7.3); absolute: the fixed tolerances of Eq. (7.1)",
    )
    _add_max_mib(chk, "refuse a suite whose manifest declares more than N MiB of expected arrays")
    chk.set_defaults(func=_run_check)


# ---------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the worked examples and write their figures (the default)",
        description="Run the worked examples: the seed's cross-attention and fusion examples, "
        "multi-head maps, a mask gallery, and a small model trained with the package's own "
        "backward passes. Prints what it computes and each file it writes. It writes only its "
        "six figures (graph.png, cross_attention.png, fusion.png, heads.png, masks.png, "
        "training.png) "
        "into DIR, replacing those of an earlier run.",
    )
    demo.add_argument(
        "--out", default="figures", metavar="DIR", help="directory for the PNGs (default: figures)"
    )
    demo.add_argument(
        "--quick", action="store_true", help="train the model for 60 steps instead of 400"
    )
    demo.add_argument(
        "--seed", type=_seed, default=0, help="seed of the model's training, >= 0 (default 0)"
    )
    demo.set_defaults(func=_run_demo)


def _add_plot(sub: Any) -> None:
    plot = sub.add_parser(
        "plot",
        help="draw attention weights saved from any model (.npy or .npz)",
        description="Draw attention weights that you saved from your own model (any framework): "
        "a 2-D array (L, S) as one heatmap, a 3-D array (H, L, S) as one map per head (the "
        f"first {MAX_HEADS}); a model's stack (layers, B, H, L, S), as Hugging Face's "
        "attentions give it (np.save('attn.npy', torch.stack(out.attentions).numpy())), or a "
        "batch (B, H, L, S): the heads of --layer and --batch. Rows are queries, columns "
        "keys; values must lie in [0, 1]. Bad "
        "files give a one-line error and exit code 2; rows that sum to neither 1 nor 0 give a "
        "warning. An existing output file is replaced only with --force, never the input file, "
        "never through a symbolic link.",
    )
    plot.add_argument("file", metavar="FILE", help="a .npy file, or a .npz archive (see --key)")
    plot.add_argument("--key", help="the array to draw from a .npz (needed if it holds several)")
    plot.add_argument(
        "--labels", nargs="+", metavar="TOKEN", help="token labels of both axes (when L == S)"
    )
    plot.add_argument("--query-labels", nargs="+", metavar="TOKEN", help="labels of the L rows")
    plot.add_argument("--key-labels", nargs="+", metavar="TOKEN", help="labels of the S columns")
    plot.add_argument("--out", metavar="PNG", help="output file (default: FILE with .png)")
    plot.add_argument("--force", action="store_true", help="replace an existing output file")
    plot.add_argument("--title", help="figure title (default: the file name; $...$ is mathtext)")
    plot.add_argument("--annotate", action="store_true", help="write each weight in its cell")
    plot.add_argument("--layer", type=int, default=0, help="the layer of a 5-D stack (default 0)")
    plot.add_argument(
        "--batch", type=int, default=0, help="the batch element of a 4-D or 5-D array (default 0)"
    )
    plot.add_argument(
        "--zeros-masked",
        action="store_true",
        help="draw weights that are exactly 0 as masked cells (grey), as a -inf score gives",
    )
    plot.set_defaults(func=_run_plot)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``numpy-attention`` command."""
    from .. import __version__

    parser = _Parser(
        prog="numpy-attention",
        description="A float64 NumPy reference for attention. With no subcommand: demo.",
    )
    parser.add_argument("--version", action="version", version=f"numpy-attention {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_plot(sub)
    _add_vectors(sub)
    _add_check(sub)
    parser.set_defaults(func=_run_demo, out="figures", quick=False, seed=0)
    return parser


# ---------------------------------------------------------------------------
# Standard output: a closed pipe is not an error, a full disk is
# ---------------------------------------------------------------------------


class _StdoutError(Exception):
    """Standard output cannot be written (a full disk, an I/O error)."""


def _discard_stdout() -> None:
    """Point file descriptor 1 at the null device: later writes and the final flush succeed."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(devnull)
    except (OSError, ValueError):
        pass


class _GuardedStdout:
    """Wrap ``sys.stdout``: drop output once the reader is gone; name other write errors."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.gone = False

    def _call(self, method: str, *args: Any) -> Any:
        if self.gone:
            return len(args[0]) if args else None
        try:
            return getattr(self._stream, method)(*args)
        except BrokenPipeError:
            self.gone = True
            _discard_stdout()
            return len(args[0]) if args else None
        except OSError as e:
            raise _StdoutError(e.strerror or str(e)) from None

    def write(self, text: str) -> int:
        return int(self._call("write", text))

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def _guarded_stdout() -> Iterator[None]:
    original = sys.stdout
    if original is not None:
        sys.stdout = _GuardedStdout(original)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = original


#: Environment variables that set the BLAS libraries' thread count when they load.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _demo_on_one_blas_thread(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Without threadpoolctl, restart the demo command with BLAS's thread variables set to 1.

    The demo's products are tiny and BLAS threads only fight over them (27 s instead of 2 s on a
    busy 2-core machine). threadpoolctl limits them at run time (``run_demo`` uses it). Without
    it the only way is the environment, which BLAS reads once, when NumPy loads it: before this
    function runs. So the real command (``argv`` None, POSIX) replaces itself by a fresh
    interpreter with the variables set; a variable the user set is respected.
    """
    if argv is not None or args.func is not _run_demo or os.name != "posix":
        return
    if not sys.executable or any(v in os.environ for v in BLAS_THREAD_VARIABLES):
        return
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        env = dict(os.environ, **dict.fromkeys(BLAS_THREAD_VARIABLES, "1"))
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "numpy_attention", *sys.argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    with _guarded_stdout():
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        _demo_on_one_blas_thread(args, argv)
        prog = "numpy-attention" + (f" {args.command}" if args.command else "")
        try:
            code = int(args.func(args))
            sys.stdout.flush()
        except _StdoutError as e:
            _discard_stdout()
            return _fail(prog, f"cannot write to standard output: {e}")
        except KeyboardInterrupt:
            _fail(prog, "interrupted")
            return 130  # the shell's code for SIGINT
        except Exception as e:  # never a traceback: say what happened in one line
            if os.environ.get("NUMPY_ATTENTION_TRACEBACK"):
                raise
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            return _fail(prog, f"internal error, please report it: {reason}")
        return code
