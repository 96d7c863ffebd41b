r"""Declared gaps: the cases or quantities a candidate's framework cannot produce.

A results set may say what it leaves out and why (JAX returns no attention
weights and draws its own dropout masks). ``check`` reports a declared gap as
``N/A``: neither passed nor failed, and ``--strict`` counts only the gaps that
are *not* declared. The declaration (``docs/verify.md``, "Declared gaps"):

.. code-block:: json

    {"format": "numpy-attention-gaps",
     "framework": "jax 0.10.2",
     "gaps": [{"quantity": "weights", "reason": "dot_product_attention returns no weights"},
              {"case": "dropout", "reason": "no way to pass a given keep-mask"}]}

Each gap names a ``case``, a ``quantity`` or both (a missing key means every
case or every quantity) and gives a ``reason``. It lives in ``gaps.json`` of a
results directory, or, for one ``.npz`` of results, as the JSON text in a
string array under the key ``gaps``.

- :class:`Gap`, :func:`parse_gaps`, :func:`read_gaps`, :func:`gaps_json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._files import NpzReader, UnusableInput, regular_file

__all__ = ["GAPS_FORMAT", "Gap", "parse_gaps", "read_gaps", "gaps_json"]

#: The ``format`` of a gaps declaration.
GAPS_FORMAT = "numpy-attention-gaps"
#: The largest declaration read (bytes).
_MAX_GAPS_BYTES = 2**20


@dataclass(frozen=True)
class Gap:
    """A case and/or quantity (None: every one) a framework cannot produce, and why."""

    case: str | None
    quantity: str | None
    reason: str

    def covers(self, case: str, quantity: str | None = None) -> bool:
        """Tell whether the gap declares ``quantity`` of ``case`` (None: the whole case).

        Examples
        --------
        >>> Gap(None, "weights", "no weights").covers("plain", "weights")
        True
        >>> Gap(None, "weights", "no weights").covers("plain")
        False
        """
        if self.case is not None and self.case != case:
            return False
        return self.quantity is None or self.quantity == quantity


def parse_gaps(obj: Any, where: str = "gaps") -> list[Gap]:
    r"""Read a gaps declaration (parsed JSON, or a list of gap objects, or of :class:`Gap`\ s).

    Parameters
    ----------
    obj : dict or list
        ``{"format": "numpy-attention-gaps", "gaps": [...]}``, or just the list.
    where : str, optional
        Names the declaration in error messages.

    Returns
    -------
    gaps : list of Gap

    Raises
    ------
    UnusableInput
        If the format is wrong, a gap names neither a case nor a quantity, a
        name is not a string, or a reason is missing or empty.

    Examples
    --------
    >>> parse_gaps([{"quantity": "weights", "reason": "not returned"}])
    [Gap(case=None, quantity='weights', reason='not returned')]
    """
    if isinstance(obj, Mapping):
        if obj.get("format") != GAPS_FORMAT:
            raise UnusableInput(f"{where}: 'format' must be {GAPS_FORMAT!r}")
        obj = obj.get("gaps")
    if not isinstance(obj, (list, tuple)):
        raise UnusableInput(f"{where}: 'gaps' must be a list of gaps")
    return [g if isinstance(g, Gap) else _gap(g, f"{where}[{i}]") for i, g in enumerate(obj)]


def _gap(entry: Any, where: str) -> Gap:
    if not isinstance(entry, Mapping):
        raise UnusableInput(f"{where} must be an object with 'case' and/or 'quantity', 'reason'")
    case, quantity, reason = entry.get("case"), entry.get("quantity"), entry.get("reason")
    for name, value in (("case", case), ("quantity", quantity)):
        if value is not None and (not isinstance(value, str) or not value):
            raise UnusableInput(f"{where}.{name} must be a non-empty string, got {value!r}")
    if case is None and quantity is None:
        raise UnusableInput(f"{where} must name a case, a quantity or both")
    if not isinstance(reason, str) or not reason.strip():
        raise UnusableInput(f"{where}.reason must say why the framework cannot produce it")
    return Gap(case, quantity, reason)


def read_gaps(results: Path) -> list[Gap]:
    """Read the gaps a results directory (``gaps.json``) or ``.npz`` (key ``gaps``) declares.

    Returns ``[]`` when there is no declaration; raises :class:`UnusableInput`
    for a malformed one.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "gaps.json").write_text(gaps_json([Gap("dropout", None, "no mask")]))
    ...     read_gaps(Path(d))
    [Gap(case='dropout', quantity=None, reason='no mask')]
    """
    if results.is_dir():
        path = results / "gaps.json"
        if not path.exists() and not path.is_symlink():
            return []
        st = regular_file(path, "gaps declaration")
        if st.st_size > _MAX_GAPS_BYTES:
            raise UnusableInput(f"{path} has {st.st_size} bytes, too many for a gaps declaration")
        text = path.read_bytes().decode("utf-8", errors="replace")
    else:
        with NpzReader(results, "results file") as z:
            if "gaps" not in z.keys():
                return []
            a = z.read("gaps", max_bytes=_MAX_GAPS_BYTES)
        if a.dtype.kind != "U" or a.size != 1:
            raise UnusableInput(f"{results}: 'gaps' must hold the declaration's JSON as one string")
        text, path = str(a.reshape(())), results
    try:
        return parse_gaps(json.loads(text), str(path))
    except (ValueError, RecursionError) as e:
        if isinstance(e, UnusableInput):
            raise
        raise UnusableInput(f"{path}: the gaps declaration is not valid JSON ({e})") from None


def gaps_json(gaps: Iterable[Gap | Mapping[str, Any]], framework: str = "") -> str:
    """Return the text of ``gaps.json`` for ``gaps`` (what an adapter writes).

    Examples
    --------
    >>> text = gaps_json([Gap(None, "weights", "not returned")], "jax")
    >>> parse_gaps(json.loads(text))[0].quantity
    'weights'
    """
    items = [g if isinstance(g, Gap) else _gap(g, "gap") for g in gaps]
    body = [{k: v for k, v in (("case", g.case), ("quantity", g.quantity), ("reason", g.reason))
             if v is not None} for g in items]  # fmt: skip
    return json.dumps({"format": GAPS_FORMAT, "framework": framework, "gaps": body}, indent=2)
