r"""The suite on disk: byte-identical writing, and reading that refuses what it cannot trust.

``numpy-attention vectors --out DIR`` (:func:`write_suite`) writes one
``<case>.npz`` per case (inputs and float64 expected results) and
``manifest.json``; :func:`load_suite` and :func:`load_results` read a suite
and a candidate's results back for the grading. Both formats are specified in
``docs/verify.md`` so that C++, Rust or JavaScript tests can read and write them.

Writing never replaces a file that is not ours: a file in ``DIR`` named like
one the suite writes may be replaced only if the ``manifest.json`` already in
``DIR`` is a suite manifest that lists it and the file holds exactly the
arrays listed there (``force=True`` replaces anyway);
no file is ever written through a symbolic link. Reading checks the manifest's
every field, refuses files outside the suite's directory and non-regular
files, and reads each array's ``.npy`` header before its data (see
:mod:`numpy_attention.verify._files`).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import reprlib
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._validate import check_bool, check_int
from ._files import (
    NpzReader,
    UnusableInput,
    inside,
    path_argument,
    regular_file,
    write_new,
)
from .cases import CASE_NAME, Case, build_suite
from .precision import BASELINE_FACTORS, LOW_PRECISION, baseline_errors
from .tolerance import DTYPES, TOLERANCES, tolerance_table

__all__ = [
    "SUITE_FORMAT",
    "SUITE_VERSION",
    "MAX_SUITE_BYTES",
    "manifest",
    "write_suite",
    "load_suite",
    "load_results",
]

#: Identifies the suite's files; readers should refuse anything else.
SUITE_FORMAT = "numpy-attention-vectors"
#: Bumped whenever a case, an input or an expected value changes.
SUITE_VERSION = 2
#: The default limit on a suite's expected arrays, in total (256 MiB; ours: 12 MiB). A reader's
#: ``max_bytes`` (``--max-mib``) raises it; a manifest never can.
MAX_SUITE_BYTES = 256 * 2**20
#: Largest ``manifest.json`` read (ours: 180 KiB).
_MAX_MANIFEST_BYTES = 16 * 2**20
#: Fixed zip entry timestamp (the earliest a zip can hold) for byte-identical files.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
#: A result's dtype may have at most this many bytes per element (a real number has <= 16).
_MAX_ITEMSIZE = 1024


# ---------------------------------------------------------------------------
# Writing: deterministic bytes, never over a file that is not ours
# ---------------------------------------------------------------------------


def _npz_bytes(arrays: dict[str, NDArray[Any]]) -> bytes:
    """Serialise an uncompressed ``.npz`` with fixed entry dates and order (byte-identical)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            body = io.BytesIO()
            np.lib.format.write_array(body, np.array(a, order="C"), version=(1, 0),
                                      allow_pickle=False)  # fmt: skip
            zf.writestr(info, body.getvalue())
    return buf.getvalue()


def _tolerance_table() -> dict[str, Any]:
    return {
        d: {g: {"atol": t.atol, "rtol": t.rtol} for g, t in TOLERANCES[d].items()} for d in DTYPES
    }


#: How the variant and serving cases' inputs are to be read (manifest "conventions").
_VARIANT_CONVENTIONS = {
    "kinds": "sdpa: torch SDPA's arguments; variant: sdpa plus the variant inputs below; padded, "
    "varlen, kvcache, merge, rotary: see docs/verify.md; each case's flags repeat its arguments",
    "window": "int64 (left, right), -1 = unbounded side (FlashAttention's window_size): query i "
    "sees keys i + d - left .. i + d + right, d = S - L if causal_bottom_right else 0",
    "softcap": "scores <- softcap * tanh(scores / softcap), after the scale, before bias and masks",
    "alibi_slopes": "(Hq,): scores - slope_h * |i + d - j| (d as for the window)",
    "sinks": "(Hq,): a logit per head added to every row's softmax denominator and to lse; "
    "weights exclude it (rows sum to less than 1); d_sinks is its gradient",
    "chunk_size": "query i sees key j only if (i + d) // chunk_size == j // chunk_size",
    "sink_tokens": "keys j < sink_tokens stay visible outside the window or chunk (not past the "
    "causal mask)",
    "varlen": "packed (T, H, E) with cu_seqlens (B + 1,) int64; each sequence is its own problem, "
    "causal alignment per sequence; lse (Hq, Tq)",
    "kvcache": "flash_attn_with_kvcache: q (B, L, Hq, E), paged cache (num_blocks, page, Hkv, E), "
    "block_table (B, max_blocks); new keys written at cache_seqlens[b] + j, rotated there; queries "
    "rotated at cache_seqlens[b] + i (causal); lse (B, Hq, L); unused slots NaN stay NaN",
    "merge": "outs (C, ..., Ev), lses (C, ...): lse = logsumexp_c lses, out = sum_c "
    "exp(lse_c - lse) outs_c; an empty chunk (lse_c = -inf) is not read",
    "rotary": "x (B, L, H, E), cos/sin (L, R/2) (bfloat16-rounded tables); rotate-half pairs "
    "(i, i + R/2), interleaved (2i, 2i + 1); features R: pass through",
    "padded": "k, v are NaN at key positions >= key_lengths[b]; expected = attention over the "
    "real keys (finite); dk = dv = 0 there",
    "tiled": "cases with flags.path 'tiled' were computed by flash_attention_forward/backward "
    "and have no weights",
}


def manifest(cases: Iterable[Case]) -> dict[str, Any]:
    """Return the contents of ``manifest.json`` for ``cases`` (see ``docs/verify.md``).

    Examples
    --------
    >>> m = manifest(build_suite())
    >>> m["format"], m["version"] == SUITE_VERSION, m["cases"][0]["file"]
    ('numpy-attention-vectors', True, 'plain.npz')
    """
    return {
        "format": SUITE_FORMAT,
        "version": SUITE_VERSION,
        "conventions": {
            "layout": "(B, H, L, E): batch, heads, queries, width (torch); JAX and "
            "FlashAttention use (B, L, H, E)",
            "bool_mask": "True = the key takes part in attention (torch SDPA attn_mask; "
            "nn.MultiheadAttention key_padding_mask is the opposite)",
            "float_mask": "added to the scaled scores; -inf masks",
            "causal": "causal_bottom_right false: query i sees keys j <= i (torch is_causal); "
            "true: j <= i + S - L (FlashAttention)",
            "fully_masked_rows": "output 0, weights 0, lse -inf, gradients 0",
            "gqa": "query head h uses key/value head h // (Hq // Hkv) (repeat_interleave)",
            "lse": "natural logarithm of sum_j exp(masked scaled score), shape (B, Hq, L)",
            "weights": "softmax probabilities before dropout, shape (B, Hq, L, S)",
            "dropout": "dropout_mask True = kept; kept weights are multiplied by 1/(1-p)",
            "gradients": "of sum(out * d_out); dk, dv summed over broadcast batch and GQA groups",
            **_VARIANT_CONVENTIONS,
        },
        "tolerance_rule": "|actual - expected| <= atol * max|expected| + rtol * |expected| "
        "elementwise (for lse, max(max|expected|, 1) in place of max|expected|); infinities "
        "must match exactly; 'gradient' applies to quantities whose name starts with 'd', "
        "'forward' to the others",
        "tolerances": _tolerance_table(),
        "baseline_rule": "policy 'baseline' (float16, bfloat16): max|actual - expected| <= "
        f"k * baseline_error + u * max|expected|, k = {BASELINE_FACTORS['forward']:g} forward, "
        f"{BASELINE_FACTORS['gradient']:g} gradients, u the dtype's unit roundoff (lse: "
        "max(max|expected|, 1) as above); "
        "baseline_error: the largest error of a naive implementation in the dtype (float32 "
        "accumulation, every result rounded to the dtype) against the float64 expected values",
        "cases": [_entry(c) for c in cases],
    }


def _entry(case: Case) -> dict[str, Any]:
    """Return the case's manifest entry with its baseline errors (Eq. (7.3)), if it has them.

    A user-sized case gets them only in the low-precision dtypes its config names (the others
    no policy reads, and a large case spends most of ``vectors`` on them).
    """
    entry = case.manifest_entry()
    named = case.flags.get("dtypes")  # a config's "dtypes"; the built-in cases keep all four
    dtypes = DTYPES if named is None else [d for d in LOW_PRECISION if d in named]
    errors = baseline_errors(case.inputs, case.expected, case.kind, dtypes)
    if errors:
        entry["baseline_error"] = errors
    return entry


def _manifest_bytes(cases: Iterable[Case]) -> bytes:
    return (json.dumps(manifest(cases), indent=2, sort_keys=True) + "\n").encode()


def write_suite(
    out: str | os.PathLike[str], cases: Iterable[Case] | None = None, *, force: bool = False
) -> list[Path]:
    r"""Write the suite: ``<case>.npz`` for every case and ``manifest.json``.

    Parameters
    ----------
    out : str or os.PathLike
        Directory, created if missing. Not empty (``"."`` names the current one).
    cases : iterable of Case, optional
        Default :func:`~numpy_attention.verify.build_suite`.
    force : bool, optional
        Replace files in ``out`` that are named like the suite's but are not
        ours. Default False: such a file is an error and nothing is written.

    Returns
    -------
    paths : list of Path
        The files written, manifest last.

    Raises
    ------
    UnusableInput
        If ``out`` is the empty string.
    FileExistsError
        If a file the suite writes exists and is not ours (``manifest.json``
        already in ``out`` is not a suite manifest listing it with the arrays
        it holds), or is a symbolic link, and ``force`` is False. Nothing is
        written then.
    OSError
        If the directory cannot be created or written.
    ValueError
        If two cases have the same name.

    Notes
    -----
    A file is written to a fresh temporary name in ``out`` and renamed over
    its target, so an existing file or symbolic link is replaced, never
    written through, and no file outside ``out`` is touched. The bytes depend
    only on the cases: fixed zip dates, member order, ``.npy`` format 1.0.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     paths = write_suite(d)
    ...     again = write_suite(d)  # our own files: replaced
    ...     paths[-1].name, len(paths) == len(build_suite()) + 1
    ('manifest.json', True)
    """
    force = check_bool(force, "force")
    root = path_argument(out, "out")
    cases = build_suite() if cases is None else list(cases)
    files = {}
    for c in cases:
        if f"{c.name}.npz" in files:
            raise ValueError(f"two cases are named {c.name!r}")
        files[f"{c.name}.npz"] = _npz_bytes(c.arrays())
    files["manifest.json"] = _manifest_bytes(cases)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(root))
    root.mkdir(parents=True, exist_ok=True)
    if not force:
        _refuse_foreign(root, list(files))
    return [write_new(root, name, data) for name, data in files.items()]


def _refuse_foreign(root: Path, names: list[str]) -> None:
    """Raise ``FileExistsError`` if a file about to be written is not ours (or is a link)."""
    present = [n for n in names if os.path.lexists(root / n)]
    if not present:
        return
    ours = _files_of_our_manifest(root)
    for n in present:
        p = root / n
        if p.is_symlink():
            raise FileExistsError(
                f"{p} is a symbolic link; refusing to replace it (force=True, or --force, "
                "replaces the link itself, never what it points to)"
            )
        if n not in ours or not p.is_file() or not _holds(p, ours[n]):
            raise FileExistsError(
                f"{p} exists and is not a file of a suite written by numpy-attention (the "
                "manifest.json there does not list it with these arrays); refusing to overwrite "
                "it: remove it, choose another directory, or pass --force (force=True)"
            )


def _files_of_our_manifest(root: Path) -> dict[str, set[str] | None]:
    """Map each file ``root/manifest.json`` lists to the zip members it declares (if ours).

    The manifest is ours if it is a regular file of format ``SUITE_FORMAT``
    (any version); ``manifest.json`` itself maps to None (no members).
    """
    path = root / "manifest.json"
    if path.is_symlink():
        return {}
    try:
        man = _load_json(path)
    except UnusableInput:
        return {}
    if not isinstance(man, dict) or man.get("format") != SUITE_FORMAT:
        return {}
    ours: dict[str, set[str] | None] = {"manifest.json": None}
    cases = man.get("cases")
    for e in cases if isinstance(cases, list) else []:
        if not isinstance(e, dict) or not isinstance(e.get("file"), str):
            continue
        inputs, quantities = e.get("inputs"), e.get("quantities")
        if isinstance(inputs, dict) and isinstance(quantities, dict):
            arrays = [*inputs, *(f"expected_{q}" for q in quantities)]
            ours[e["file"]] = {f"{n}.npy" for n in arrays}
    return ours


def _holds(path: Path, members: set[str] | None) -> bool:
    """Tell whether the zip at ``path`` has exactly ``members`` (None: no zip to look into)."""
    if members is None:
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return set(z.namelist()) == members
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


# ---------------------------------------------------------------------------
# Reading a suite: the manifest checked field by field, arrays checked before reading
# ---------------------------------------------------------------------------


def load_suite(
    suite: str | os.PathLike[str] | None = None,
    *,
    max_bytes: int = MAX_SUITE_BYTES,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    r"""Read a suite directory, or build the suite in memory.

    Parameters
    ----------
    suite : str or os.PathLike, optional
        Directory written by :func:`write_suite`. None: build it in memory.
    max_bytes : int, optional
        The most bytes of expected arrays the manifest may declare, in total
        (default :data:`MAX_SUITE_BYTES`, 256 MiB): raise it for a suite of
        user-sized cases written with the same limit
        (:func:`~numpy_attention.verify.cases_from_config`).

    Returns
    -------
    manifest : dict
        The parsed ``manifest.json``.
    expected : dict of str to dict of str to ndarray
        ``expected[case][quantity]``.

    Raises
    ------
    UnusableInput
        Missing directory or manifest; a manifest that is not valid JSON, not
        of this format and version, or malformed in any field (types, missing
        keys, case names, files outside the directory, tolerances that are
        NaN, infinite, negative or above 1, declared arrays larger than
        ``max_bytes`` in total); a case file that is missing, not a
        regular file, corrupt, or whose arrays differ from what the manifest
        declares.

    Examples
    --------
    >>> man, expected = load_suite()
    >>> man["version"] == SUITE_VERSION, expected["gqa"]["dk"].shape
    (True, (2, 2, 7, 8))
    """
    max_bytes = check_int(max_bytes, "max_bytes", minimum=1)
    if suite is None:
        cases = build_suite()
        return manifest(cases), {c.name: dict(c.expected) for c in cases}
    root = path_argument(suite, "suite")
    if not root.exists():
        raise UnusableInput(f"suite directory {root} does not exist")
    if not root.is_dir():
        raise UnusableInput(
            f"suite {root} is not a directory: name the directory written by "
            "'numpy-attention vectors --out DIR'"
        )
    man = _read_manifest(root, max_bytes)
    expected = {}
    for entry in man["cases"]:
        path = inside(root, entry["file"], "suite file")
        with NpzReader(path, "suite file") as z:
            expected[entry["name"]] = _read_expected(z, entry["quantities"])
    return man, expected


def _load_json(path: Path) -> Any:
    """Parse a small regular JSON file; every failure is an ``UnusableInput``."""
    st = regular_file(path, "manifest")
    if st.st_size > _MAX_MANIFEST_BYTES:
        raise UnusableInput(f"{path} has {st.st_size} bytes, too many for a manifest")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(_MAX_MANIFEST_BYTES + 1).decode("utf-8"))
    except RecursionError:
        raise UnusableInput(f"{path} is nested too deeply to be a manifest") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UnusableInput(f"{path} is not valid JSON ({e})") from None
    except OSError as e:
        raise UnusableInput(f"{path} cannot be read ({e.strerror or e})") from None


def _read_manifest(root: Path, max_bytes: int) -> dict[str, Any]:
    """Return the manifest of the suite in ``root``, every field checked."""
    path = root / "manifest.json"
    if not os.path.lexists(path):
        raise UnusableInput(
            f"{root} has no manifest.json; write the suite with 'numpy-attention vectors --out DIR'"
        )
    man = _load_json(inside(root, "manifest.json", "manifest"))
    if not isinstance(man, dict) or man.get("format") != SUITE_FORMAT:
        raise UnusableInput(f"{path} is not a {SUITE_FORMAT} manifest")
    version = man.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise UnusableInput(
            f"{path}: version must be an integer, got {type(version).__name__} {version!r}"
        )
    if version != SUITE_VERSION:
        raise UnusableInput(
            f"suite version {version} in {root}, but this check "
            f"reads version {SUITE_VERSION}; rewrite the suite"
        )
    cases = man.get("cases")
    if not isinstance(cases, list) or not cases:
        raise UnusableInput(f"{path}: 'cases' must be a non-empty list, got {_kind(cases)}")
    seen: set[str] = set()
    total = sum(
        _check_case_entry(entry, f"{path}: cases[{i}]", seen) for i, entry in enumerate(cases)
    )
    if total > max_bytes:
        raise UnusableInput(
            f"{path} declares {total} bytes of expected arrays, more than the {max_bytes} this "
            f"check reads; for a suite you wrote, raise the limit to {-(-total // 2**20)} MiB "
            "(--max-mib, or max_bytes in Python)"
        )
    _check_tolerances(man.get("tolerances"), path)
    return man


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _check_case_entry(entry: Any, where: str, seen: set[str]) -> int:
    """Check one entry of ``cases``; return the bytes its expected arrays declare."""
    if not isinstance(entry, dict):
        raise UnusableInput(f"{where} must be an object, got {_kind(entry)}")
    name, file, quantities = entry.get("name"), entry.get("file"), entry.get("quantities")
    if not isinstance(name, str) or not CASE_NAME.fullmatch(name) or name in seen:
        raise UnusableInput(f"{where}.name must be a new case name ([a-z0-9_]+), got {_kind(name)}")
    seen.add(name)
    if not isinstance(file, str) or not file.endswith(".npz"):
        raise UnusableInput(f"{where}.file must be the name of a .npz file, got {_kind(file)}")
    if not isinstance(quantities, dict) or not quantities:
        raise UnusableInput(
            f"{where}.quantities must be a non-empty object, got {_kind(quantities)}"
        )
    _check_baseline(entry.get("baseline_error"), where)
    total = 0
    for q, desc in quantities.items():
        shape = _declared_shape(desc)
        if shape is None or not CASE_NAME.fullmatch(q):
            raise UnusableInput(
                f"{where}.quantities.{q[:40]} must be {{'shape': [non-negative integers], "
                f"'dtype': 'float64'}}, got {_kind(desc)}"
            )
        total += 8 * math.prod(shape)  # exact: Python integers
    return total


def _check_baseline(errors: Any, where: str) -> None:
    """Check a case's ``baseline_error``, if any: ``{dtype: {quantity: number >= 0}}``."""
    if errors is None:
        return
    ok = isinstance(errors, dict) and all(
        d in DTYPES and isinstance(t, dict) and all(
            isinstance(q, str) and isinstance(b, (int, float)) and not isinstance(b, bool)
            and math.isfinite(b) and b >= 0 for q, b in t.items()
        ) for d, t in errors.items()
    )  # fmt: skip
    if not ok:
        raise UnusableInput(f"{where}.baseline_error must map dtypes to {{quantity: finite number "
                            f">= 0}}, got {_kind(errors)}")  # fmt: skip


def _declared_shape(desc: Any) -> list[int] | None:
    """Return ``desc["shape"]`` if ``desc`` declares a float64 array of at most 32 axes."""
    if not isinstance(desc, dict) or desc.get("dtype") != "float64":
        return None
    shape = desc.get("shape")
    if not isinstance(shape, list) or len(shape) > 32:
        return None
    ok = all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    return shape if ok else None


def _check_tolerances(tolerances: Any, path: Path) -> None:
    """Check a manifest's tolerances, if any: a table per known dtype, each value in [0, 1]."""
    if tolerances is None:
        return
    if not isinstance(tolerances, dict):
        raise UnusableInput(f"{path}: 'tolerances' must be an object, got {_kind(tolerances)}")
    for dtype, table in tolerances.items():
        if dtype not in DTYPES:
            raise UnusableInput(f"{path}: tolerances for unknown dtype {dtype[:40]!r}")
        try:
            tolerance_table(table, f"tolerances.{dtype}")
        except ValueError as e:
            raise UnusableInput(f"{path}: {e}") from None


def _read_expected(z: NpzReader, quantities: dict[str, Any]) -> dict[str, NDArray[Any]]:
    """Read the ``expected_<q>`` arrays in the file's order, each as the manifest declares it."""
    out = {}
    for key in z.keys():
        q = key[len("expected_") :]
        if not key.startswith("expected_"):
            continue
        if q not in quantities:
            raise UnusableInput(f"suite file {z.path}: array {key!r} is not in the manifest")
        shape, dtype = z.header(key)
        want = tuple(quantities[q]["shape"])
        if shape != want or dtype.kind != "f" or dtype.itemsize != 8:
            raise UnusableInput(f"suite file {z.path}: array {key!r} is {dtype} of shape {shape}, "
                                f"the manifest says float64 of shape {want}")  # fmt: skip
        out[q] = z.read(key, max_bytes=8 * math.prod(want))  # within the manifest's total
    missing = [q for q in quantities if q not in out]
    if missing:
        raise UnusableInput(f"suite file {z.path} has no array 'expected_{missing[0]}'")
    return out


# ---------------------------------------------------------------------------
# Reading a candidate's results
# ---------------------------------------------------------------------------


def load_results(
    path: str | os.PathLike[str], cases: Iterable[str] | Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    r"""Read a candidate's results: a directory of ``<case>.npz`` or one ``.npz``.

    Parameters
    ----------
    path : str or os.PathLike
        A directory holding ``<case>.npz`` files (keys: quantity names), or
        one ``.npz`` file with keys ``<case>/<quantity>``.
    cases : iterable of str, or mapping
        The suite's case names, or its expected arrays ``expected[case][quantity]``
        (as :func:`load_suite` returns them). With the arrays, each array's
        declared shape and dtype are compared with the expected ones before
        anything is read: an array of another shape or a non-real dtype is
        not read but returned as a zero-stride stand-in (``np.broadcast_to``
        of one zero) of the declared shape and dtype, enough to grade it FAIL;
        arrays that are not quantities of the suite are listed in ``unknown``
        and not read.

    Returns
    -------
    results : dict of str to dict of str to ndarray
        ``results[case][quantity]`` for the cases found.
    unknown : list of str
        Names in the results that are not cases (or ``case/quantity`` pairs
        that are not quantities) of the suite.

    Raises
    ------
    UnusableInput
        If ``path`` is empty or does not exist, a file is not a regular file
        (a FIFO, a directory named ``.npz``) or lies outside ``path``, is not
        a valid ``.npz``, holds Python objects, or declares an array larger
        than ``MAX_ARRAY_BYTES`` (64 MiB).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     f = pathlib.Path(d) / "results.npz"
    ...     np.savez(f, **{"plain/out": np.zeros(3), "other/out": np.zeros(1)})
    ...     results, unknown = load_results(f, ["plain", "gqa"])
    >>> list(results["plain"]), unknown
    (['out'], ['other'])
    """
    shapes, order = _shapes_of(cases), list(cases)
    names = set(order)
    skipped: list[tuple[str, str]] = []  # (case, quantity) pairs that are not in the suite
    p = path_argument(path, "results")
    results: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    if p.is_dir():
        for f in sorted(p.glob("*.npz")):
            if f.stem not in names:
                unknown.append(f.stem)
                continue
            with NpzReader(inside(p, f.name, "results file"), "results file") as z:
                got = {k: _read_result(z, k, f.stem, k, shapes, skipped) for k in z.keys()}
            results[f.stem] = {k: a for k, a in got.items() if a is not None}
        return results, unknown + [f"{c}/{q}" for c in order for d, q in skipped if d == c]
    if not p.exists():
        raise UnusableInput(
            f"results {p} do not exist (expected a directory of <case>.npz "
            "files or one .npz with keys '<case>/<quantity>')"
        )
    with NpzReader(p, "results file") as z:
        for key in z.keys():
            case, sep, quantity = key.partition("/")
            if key == "gaps":  # the declared gaps (numpy_attention.verify.gaps), not a result
                continue
            if not sep:
                unknown.append(key)
            elif case in names:
                a = _read_result(z, key, case, quantity, shapes, skipped)
                if a is not None:
                    results.setdefault(case, {})[quantity] = a
            elif case not in unknown:
                unknown.append(case)
    return results, unknown + [f"{c}/{q}" for c in order for d, q in skipped if d == c]


def _shapes_of(cases: Any) -> dict[str, dict[str, tuple[int, ...]]] | None:
    """Return the expected shapes per case and quantity, if ``cases`` holds the arrays."""
    if not isinstance(cases, Mapping) or not all(isinstance(q, Mapping) for q in cases.values()):
        return None
    return {c: {n: tuple(np.shape(a)) for n, a in q.items()} for c, q in cases.items()}


def _read_result(
    z: NpzReader, key: str, case: str, quantity: str,
    shapes: dict[str, dict[str, tuple[int, ...]]] | None, skipped: list[tuple[str, str]],
) -> NDArray[Any] | None:  # fmt: skip
    """Read one result array, or stand in for it (wrong shape or dtype), or skip it (unknown)."""
    if shapes is None:
        return z.read(key)
    want = shapes[case].get(quantity)
    if want is None:
        skipped.append((case, quantity))
        return None
    shape, dtype = z.header(key)
    if dtype.itemsize > _MAX_ITEMSIZE:
        raise UnusableInput(f"results file {z.path}: array {key!r} has dtype {dtype} of "
                            f"{dtype.itemsize} bytes per element, not numbers")  # fmt: skip
    if shape == want and dtype.kind in "biuf":
        return z.read(key, max_bytes=16 * math.prod(want))
    try:  # graded FAIL from its shape or dtype alone: never inflated
        return np.broadcast_to(np.zeros((), dtype=dtype), shape)
    except ValueError:
        raise UnusableInput(
            f"results file {z.path}: array {key!r} declares the impossible shape {shape}"
        ) from None
