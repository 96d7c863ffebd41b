r"""The command line's files: read a user's weights safely, write only what is ours.

The rules of the developers' guide (principle 4), as this module applies them:

- **Reading** (``plot``'s input): only a regular file is opened (a FIFO would block
  forever, a device never ends); ``.npy`` headers and ``.npz`` members are checked
  (dtype, shape, declared size, at most :data:`MAX_ELEMENTS` numbers) *before* any
  data are read, so a 2 MiB file that declares 10**12 elements or inflates to
  gigabytes is refused at once; pickles are never loaded.
- **Writing**: a new file is created exclusively (``O_EXCL``): an existing file is
  never replaced unless the caller allows it (``plot --force``, or the demo's own
  figure names), and even then never through a symbolic link, never over the
  input being read, and always by writing a temporary file beside it and renaming
  it over the old one (an interrupted run leaves the old file whole).

Every refusal is an :class:`InputError` whose message is one line.
"""

from __future__ import annotations

import contextlib
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import numpy.lib.format as npy_format

__all__ = [
    "MAX_ELEMENTS",
    "InputError",
    "LoadedWeights",
    "load_weights",
    "regular_file",
    "open_output",
]

#: The most numbers ``plot`` reads from a file: 2**24 (128 MiB of float64).
MAX_ELEMENTS = 2**24


class InputError(Exception):
    """A user's input that cannot be used; its message is printed as one line."""


class LoadedWeights(NamedTuple):
    """Result of :func:`load_weights`."""

    weights: np.ndarray  # float64, (L, S) or (H, L, S)
    key: str  # the array's name in a .npz, "" for a .npy
    dtype: np.dtype  # the dtype stored in the file


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def regular_file(path: str | Path) -> Path:
    """Return ``path`` if it names an existing regular file (symlinks followed), else refuse.

    Raises
    ------
    InputError
        Missing, a directory, or not a regular file (a FIFO, a device, a socket).

    Examples
    --------
    >>> regular_file("/dev/null")
    Traceback (most recent call last):
    ...
    numpy_attention.app.files.InputError: /dev/null: not a regular file (a device, FIFO or socket)
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except OSError as e:
        raise InputError(f"{p}: unreadable: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: is a directory, expected a .npy or .npz file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: not a regular file (a device, FIFO or socket)")
    return p


# ---------------------------------------------------------------------------
# Reading: headers first, data after
# ---------------------------------------------------------------------------


def _read_header(f: IO[bytes], where: str, available: int) -> None:
    """Check a .npy header (at the stream's position) before any data are read."""
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise InputError(f"{where}: unreadable: .npy format version {version} not supported")
    except ValueError as e:
        raise InputError(_first_line(f"{where}: unreadable: damaged header: {e}")) from None
    if dtype.hasobject:
        raise InputError(f"{where}: unreadable: holds pickled Python objects")
    if dtype.kind not in "biuf":
        raise InputError(f"{where}: expected a numeric array of attention weights, got {dtype}")
    count = int(np.prod(shape, dtype=object))  # exact, no int64 overflow
    if count > MAX_ELEMENTS:
        raise InputError(
            f"{where}: declares shape {shape} ({count} numbers); plot reads at most {MAX_ELEMENTS}"
        )
    if count * dtype.itemsize > available - f.tell():
        raise InputError(f"{where}: unreadable: truncated (the header declares shape {shape})")


def _load_npy(f: IO[bytes], where: str, available: int) -> np.ndarray:
    start = f.tell()
    _read_header(f, where, available)
    f.seek(start)
    try:
        return np.asarray(npy_format.read_array(f, allow_pickle=False))
    except (ValueError, OSError, EOFError) as e:
        raise InputError(_first_line(f"{where}: unreadable: damaged: {e}")) from None


def _npz_member(z: zipfile.ZipFile, p: Path, key: str | None) -> zipfile.ZipInfo:
    """Return the archive member to draw: ``key`` (``key.npy`` in the archive), or the only one."""
    infos = z.infolist()
    arrays = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}
    if len(arrays) < len(infos):
        other = next(i.filename for i in infos if not i.filename.endswith(".npy"))
        raise InputError(
            f"{p}: unreadable: member {other!r} is not a .npy array (a PyTorch .pt file is a "
            "zip too; save the weights with np.save or np.savez)"
        )
    if key is None:
        if len(arrays) != 1:
            listed = ", ".join(arrays) if arrays else "none"
            raise InputError(f"{p}: holds {len(arrays)} arrays ({listed}); choose one with --key")
        key = next(iter(arrays))
    if key not in arrays:
        raise InputError(f"{p}: no array named {key!r}; it holds: {', '.join(arrays)}")
    return arrays[key]


def _load_npz(f: IO[bytes], p: Path, key: str | None) -> tuple[np.ndarray, str]:
    try:
        with zipfile.ZipFile(f) as z:
            info = _npz_member(z, p, key)
            name = info.filename[:-4]
            with z.open(info) as member:
                return _load_npy(member, f"{p}[{name}]", info.file_size), name
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
        raise InputError(_first_line(f"{p}: unreadable: {type(e).__name__}: {e}")) from None


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
        ``weights`` (float64, shape ``(L, S)``, ``(H, L, S)``, ``(B, H, L, S)`` or a model's
        stack ``(layers, B, H, L, S)``), ``key`` (the
        array's name, ``""`` for a ``.npy``) and ``dtype`` (as stored).

    Raises
    ------
    InputError
        Missing, unreadable or not a regular file; pickled objects; a header
        declaring more than :data:`MAX_ELEMENTS` numbers or more data than the
        file holds; an archive member that is not ``.npy``; a missing or
        ambiguous key; a non-numeric array, not 2-D to 5-D, empty, NaN/inf, or
        values outside [0, 1]. The message is one line.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); f = os.path.join(d, "w.npy")
    >>> np.save(f, np.array([[0.5, 0.5]]))
    >>> load_weights(f).weights.shape
    (1, 2)
    """
    from .plotting import check_weights

    p = regular_file(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
            f.seek(0)
            if magic == b"\x93NUMPY":
                if key is not None:
                    raise InputError(
                        f"{p}: --key applies to .npz archives; this is a single .npy array"
                    )
                w, name = _load_npy(f, str(p), os.fstat(f.fileno()).st_size), ""
            elif magic.startswith(b"PK"):
                w, name = _load_npz(f, p, key)
            else:
                raise InputError(f"{p}: unreadable: not a .npy or .npz file (np.save / np.savez)")
    except OSError as e:
        raise InputError(f"{p}: unreadable: {e.strerror or e}") from None
    where = f"{p}" + (f"[{name}]" if name else "")
    try:
        checked = check_weights(w, where, (2, 3, 4, 5))
    except (TypeError, ValueError) as e:
        raise InputError(str(e)) from None
    return LoadedWeights(checked, name, w.dtype)


# ---------------------------------------------------------------------------
# Writing: exclusively, or by replacing what the caller may replace
# ---------------------------------------------------------------------------


def _refuse_replacing(path: Path, protect: Path | None) -> None:
    """Refuse a symlink, a non-regular file, or the very file being read (``protect``)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{path}: is a symbolic link; refusing to write through it")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: exists and is not a regular file; refusing to replace it")
    if protect is not None and protect.exists() and os.path.samefile(path, protect):
        raise InputError(f"{path}: is the input file; refusing to overwrite it (choose --out)")


@contextlib.contextmanager
def open_output(
    path: str | Path, *, replace: bool = False, protect: str | Path | None = None
) -> Iterator[IO[bytes]]:
    r"""Open ``path`` for writing a new file, or (``replace=True``) a replacement of a regular one.

    Parameters
    ----------
    path : str or Path
        The file to write. Its directory must exist.
    replace : bool, optional
        Allow replacing an existing regular file (``--force``). It is written
        to a temporary file in the same directory, renamed over ``path`` when
        the block ends without error, and removed otherwise.
    protect : str or Path, optional
        A file that must never be replaced, even with ``replace`` (the input).

    Yields
    ------
    f : binary file object

    Raises
    ------
    InputError
        ``path`` exists and ``replace`` is false; ``path`` is a symbolic link
        (even a dangling one), a directory or another non-regular file; it is
        ``protect``; its directory is missing or unwritable.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> with open_output(out) as f:
    ...     _ = f.write(b"1")
    >>> try:  # a second time: refused
    ...     with open_output(out) as f:
    ...         pass
    ... except InputError as e:
    ...     print(str(e).split(": ", 1)[1])
    exists; add --force to replace it
    """
    p = Path(path)
    if not p.parent.is_dir():
        raise InputError(f"{p.parent}: output directory does not exist")
    if p.name in ("", ".", ".."):
        raise InputError(f"{p}: not a file name")
    _refuse_replacing(p, None if protect is None else Path(protect))
    if not replace and os.path.lexists(p):
        raise InputError(f"{p}: exists; add --force to replace it")
    target = p if not replace else p.with_name(f".{p.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, 0o666)
    except FileExistsError:
        raise InputError(f"{p}: exists; add --force to replace it") from None
    except OSError as e:
        raise InputError(f"{p}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        if replace:
            os.replace(target, p)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(target)
        if isinstance(e, OSError):
            raise InputError(f"{p}: cannot write: {e.strerror or e}") from None
        raise
