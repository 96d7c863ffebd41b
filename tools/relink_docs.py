"""Rewrite the line anchors of the docs' links to Python functions.

A link such as ``[`attention_forward`](../numpy_attention/attention.py)`` in ``docs/*.md`` or
``README.md`` names a function (or class, or ``Class.method``) of a Python file. This script gives
every such link the anchor of the lines that define it, decorators included,
``attention.py#L412-L450``, so that the link opens on the function instead of on line 1. Every code
change moves lines: run it after editing the code, and ``tests/test_docs.py`` fails until it is run.

Usage::

    python tools/relink_docs.py          # rewrite the anchors in place, list what changed
    python tools/relink_docs.py --check  # change nothing; exit 1 when an anchor is stale

The script reads the files only with the standard library (``ast``); it does not import the
package.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: ``[`name`](target)``: the link text is one code span, the target has no spaces.
LINK_RE = re.compile(r"\[`([^`\]]+)`\]\(([^)\s#]+\.py)(#L\d+(?:-L\d+)?)?\)")
_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})")


def markdown_files(root: Path = ROOT) -> list[Path]:
    """List the files whose links are kept anchored: ``docs/*.md`` and ``README.md``.

    Parameters
    ----------
    root : Path, optional
        The repository's root.

    Returns
    -------
    list of Path
    """
    return sorted((root / "docs").glob("*.md")) + [root / "README.md"]


def definition_span(path: Path, dotted: str) -> tuple[int, int] | None:
    """First and last line of the top-level function or class ``dotted`` (or ``Class.method``).

    Parameters
    ----------
    path : Path
        A Python file.
    dotted : str
        The name, e.g. ``attention_forward`` or ``Positions.block``; a trailing ``()`` is ignored.

    Returns
    -------
    (int, int) or None
        The 1-based first line (the first decorator's, if any) and last line of the definition;
        None when the file defines no such name.

    Examples
    --------
    >>> definition_span(Path(__file__), "definition_span")[0] > 1
    True
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in dotted.strip().removesuffix("()").split("."):
        node = next(
            (
                n
                for n in body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and n.name == part
            ),
            None,
        )
        if node is None:
            return None
        body = node.body  # type: ignore[attr-defined]
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return start, node.end_lineno or node.lineno


def anchored_links(md: Path) -> list[tuple[int, str, str, str, tuple[int, int] | None]]:
    """Every link of ``md`` (outside code blocks) to a function of a Python file.

    Parameters
    ----------
    md : Path
        A Markdown file.

    Returns
    -------
    list of (line, name, file, anchor, span)
        The 1-based line, the linked name, the file part of the target, the anchor as written
        (``""`` when there is none) and the lines that define the name (None when the file does
        not define it, e.g. a link ``[`attention.py`](attention.py)`` to the file itself).
    """
    found = []
    fence: str | None = None
    for number, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
        m = _FENCE_RE.match(line)
        if m and (fence is None or line.strip().startswith(fence)):
            fence = m.group(1) if fence is None else None
            continue
        if fence is not None:
            continue
        for link in LINK_RE.finditer(line):
            name, target, anchor = link.group(1), link.group(2), link.group(3) or ""
            path = (md.parent / target).resolve()
            span = definition_span(path, name) if path.is_file() else None
            found.append((number, name, target, anchor, span))
    return found


def relink_text(text: str, md: Path) -> str:
    """``text`` (the content of ``md``) with every function link anchored on its definition.

    Parameters
    ----------
    text : str
        Markdown.
    md : Path
        Where the Markdown lives (links are relative to it).

    Returns
    -------
    str
        The text with each ``[`f`](m.py)`` or stale ``[`f`](m.py#La-Lb)`` rewritten to
        ``[`f`](m.py#Lstart-Lend)``; links to names the file does not define are left alone, and
        so is everything inside fenced code blocks.
    """
    out = []
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        m = _FENCE_RE.match(line)
        if m and (fence is None or line.strip().startswith(fence)):
            fence = m.group(1) if fence is None else None
        elif fence is None:
            line = LINK_RE.sub(lambda link: _relinked(link, md), line)
        out.append(line)
    return "".join(out)


def _relinked(link: re.Match[str], md: Path) -> str:
    name, target = link.group(1), link.group(2)
    path = (md.parent / target).resolve()
    span = definition_span(path, name) if path.is_file() else None
    if span is None:
        return link.group(0)
    return f"[`{name}`]({target}#L{span[0]}-L{span[1]})"


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or, with ``--check``, only report) the stale anchors; return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0, or 1 with ``--check`` when some file would change.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale anchors, change nothing")
    args = parser.parse_args(argv)
    stale = []
    for md in markdown_files():
        text = md.read_text(encoding="utf-8")
        new = relink_text(text, md)
        if new != text:
            stale.append(md.relative_to(ROOT))
            if not args.check:
                md.write_text(new, encoding="utf-8")
    verb = "stale anchors in" if args.check else "relinked"
    for name in stale:
        print(f"{verb} {name}")
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
