r"""The files the verification wing reads and writes: refused unless they are safe to use.

Every rule here answers one way a suite or results file can hurt its reader:

- :func:`regular_file` refuses anything that is not a regular file before
  opening it (a FIFO would block forever, a directory named like a file
  gives a traceback).
- :func:`inside` refuses a name that leaves the directory the user named
  (``../x.npz``, an absolute path, a symbolic link pointing out).
- :class:`NpzReader` reads an ``.npz`` member by member: the ``.npy`` header
  (shape and dtype) is read first and checked against what the caller
  expects and against :data:`MAX_ARRAY_BYTES` *before* anything is
  inflated, so a small file with a huge deflated member costs nothing.
  Object arrays are never loaded (nothing is ever unpickled).
- :func:`write_new` never writes through an existing file or symbolic link:
  it writes a fresh temporary file next to the target and renames it over.

Every refusal is an :class:`UnusableInput` (a ``ValueError``) whose message
names the file and what is wrong with it, in one line.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
import zipfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "UnusableInput",
    "MAX_ARRAY_BYTES",
    "path_argument",
    "regular_file",
    "inside",
    "NpzReader",
    "write_new",
]

#: No array check reads may hold more than this (64 MiB; the golden suite's largest is 512 KiB).
MAX_ARRAY_BYTES = 64 * 2**20
#: Largest ``.npy`` header accepted (NumPy's own default limit).
_MAX_HEADER = 10_000
#: Streamed reads are done in pieces of this size.
_CHUNK = 2**20


class UnusableInput(ValueError):
    """Input the verification wing cannot use: missing, corrupt, hostile or of another format.

    A ``ValueError``; the command line prints its message as one line and exits with 2.
    """


def path_argument(value: object, name: str) -> Path:
    """Return ``value`` as a ``Path``; refuse the empty string (it would mean the cwd).

    Examples
    --------
    >>> path_argument("suite", "out").name
    'suite'
    >>> path_argument("", "out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    numpy_attention.verify._files.UnusableInput: out is empty: name a directory ...
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    if os.fspath(value) == "":
        raise UnusableInput(f"{name} is empty: name a directory (use '.' for the current one)")
    return Path(value)


def regular_file(path: Path, what: str) -> os.stat_result:
    """Return ``os.stat(path)`` if ``path`` is a regular file, else raise ``UnusableInput``.

    Checked before opening: a FIFO, a device or a directory is refused, not read.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UnusableInput(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UnusableInput(f"{what} {path} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UnusableInput(f"{what} {path} is {kind}")
    return st


def inside(root: Path, name: str, what: str) -> Path:
    """Return ``root / name`` after checking it stays in ``root``, symbolic links resolved.

    Examples
    --------
    >>> inside(Path("suite"), "../x.npz", "suite file")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    numpy_attention.verify._files.UnusableInput: suite file '../x.npz' is outside suite ...
    """
    if "\0" in name:
        raise UnusableInput(f"{what} {name!r} is not a file name")
    p = Path(name)
    outside = p.is_absolute() or p.drive or ".." in p.parts or p.name != name
    if not outside:
        base = root.resolve()
        outside = not (root / name).resolve().is_relative_to(base)
    if outside:
        raise UnusableInput(f"{what} {name!r} is outside {root} (only plain file names are read)")
    return root / name


class NpzReader:
    """Read the arrays of an ``.npz`` one at a time, each header checked before its data.

    Use as a context manager: ``with NpzReader(path, "results file") as z:``;
    :meth:`keys` lists the members (``.npy`` stripped), :meth:`header` gives a
    member's declared shape and dtype without inflating it, :meth:`read`
    streams its data in after the checks.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        regular_file(path, what)
        self._file: IO[bytes] = open(path, "rb")  # closed by __exit__
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            self._file.close()
            raise UnusableInput(
                f"{what} {path} is not a valid .npz file (not a zip archive: {e})"
            ) from None
        self._names = {_key(n): n for n in self._zip.namelist()}

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._zip.close()
        self._file.close()

    def keys(self) -> list[str]:
        """Member names in archive order, without the ``.npy`` suffix."""
        return list(self._names)

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
        """Return the declared ``(shape, dtype)`` of member ``key``; refuse object arrays."""
        f, (shape, _, dtype) = self._open(key)
        f.close()
        return shape, dtype

    def read(self, key: str, max_bytes: int = MAX_ARRAY_BYTES) -> NDArray[Any]:
        """Read member ``key``, refusing it if its header declares more than ``max_bytes``."""
        f, (shape, fortran, dtype) = self._open(key)
        with f:
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > max_bytes:
                raise self._bad(key, f"declares shape {shape} of {dtype} ({nbytes} bytes), more "
                                f"than the {max_bytes} bytes this check reads")  # fmt: skip
            flat = np.empty(math.prod(shape), dtype=dtype)
            raw = flat.view(np.uint8) if nbytes else np.empty(0, np.uint8)
            done = 0
            while done < nbytes:
                try:
                    chunk = f.read(min(_CHUNK, nbytes - done))
                except Exception as e:  # bad CRC, corrupt deflate stream
                    raise self._bad(key, f"has corrupt data ({type(e).__name__})") from None
                if not chunk:
                    raise self._bad(key, f"is truncated ({done} of {nbytes} data bytes)")
                raw[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
                done += len(chunk)
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)

    def _open(self, key: str) -> tuple[IO[bytes], tuple[tuple[int, ...], bool, np.dtype[Any]]]:
        if key not in self._names:
            raise UnusableInput(f"{self.what} {self.path} has no array {key!r}")
        try:
            f = self._zip.open(self._names[key])
        except Exception as e:  # encrypted, unsupported compression, corrupt directory ...
            raise self._bad(key, f"cannot be opened ({type(e).__name__})") from None
        try:
            header = _npy_header(f)
        except Exception as e:  # bad magic, bad header literal, header too long, corrupt data
            f.close()
            raise self._bad(key, f"is not a .npy array ({type(e).__name__})") from None
        if header[2].hasobject:
            f.close()
            raise self._bad(key, "holds Python objects (a pickle), which are never loaded")
        return f, header

    def _bad(self, key: str, why: str) -> UnusableInput:
        return UnusableInput(f"{self.what} {self.path}: array {key!r} {why}")


def _key(member: str) -> str:
    return member[: -len(".npy")] if member.endswith(".npy") else member


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, _MAX_HEADER)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, _MAX_HEADER)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if any(n < 0 for n in shape) or len(shape) > 32:  # NumPy's parser lets a negative through
        raise ValueError(f"impossible shape {shape}")
    return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype)


def write_new(root: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``root / name`` without ever writing through what is there.

    The bytes go to a new temporary file in ``root`` (created exclusively,
    mode ``0o666`` minus the umask, as an ordinary file would get), which is
    then renamed over ``name``: an existing file or symbolic link at ``name``
    is replaced itself, never written into, and a reader never sees a half file.
    """
    target = root / name
    tmp = root / f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
