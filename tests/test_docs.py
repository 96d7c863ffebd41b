"""The docs and the code must agree: equation numbers, links, the tour's numbers, runnable blocks.

- Cross-references: every ``\\tag{c.n}`` in ``docs/*.md`` is a numbered equation; the code cites
  equations as ``Eq. (c.n)`` or ``Eqs. (c.a)-(c.b)`` (inclusive ranges; ``Eq. c.n`` and lists
  ``Eqs. (c.a), (c.b)`` are read too) in docstrings and comments of ``numpy_attention/``. Every
  citation must name a defined equation, every equation must be cited by code, no number may be
  defined twice, and the ``Code:`` line after an equation must link functions that exist in the
  linked file and whose source cites that equation.
- Line anchors: every link to a function of a Python file (``Code:`` lines, loop oracles) carries
  ``#Lm-Ln``, the lines of that function's definition; ``python tools/relink_docs.py`` rewrites
  them after a code change (the failure message says so).
- Links: every relative link in ``docs/*.md`` and ``README.md`` reaches an existing file (and an
  existing heading or line when it has an anchor).
- The tour (``docs/tour.md``): its table of hand-computed numbers matches ``attention_forward`` and
  its copy of the demo's output matches ``numpy_attention.app.cli._worked_example``.
- Runnable blocks: a fenced ``python`` block directly after the line ``<!-- runnable -->`` is
  executed (``<!-- runnable: requires torch -->`` when it needs an optional module). The blocks of
  one file run in order in one namespace; a block starting with ``>>>`` is a doctest whose printed
  output is compared.
"""

from __future__ import annotations

import ast
import doctest
import io
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from optional import TORCH_MISSING

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PKG = ROOT / "numpy_attention"

#: Each chapter owns one equation number prefix (docs/README.md, "Writing a chapter").
CHAPTERS = {
    "softmax.md": 1,
    "attention.md": 2,
    "layers.md": 3,
    "fusion.md": 4,
    "flash.md": 5,
    "model.md": 6,
    "verify.md": 7,
    "variants.md": 8,
    "serving.md": 9,
}

Eq = tuple[int, int]


def _fmt(eq: Eq) -> str:
    return f"({eq[0]}.{eq[1]})"


def _doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------
# Markdown: hide code, find display math, headings, links
# ---------------------------------------------------------------------------

_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
_INLINE_CODE_RE = re.compile(r"(`+)(.+?)\1")


def _mask_code(text: str) -> list[str]:
    """Lines of ``text`` with code blanked out; a ```` ```math ```` fence becomes ``$$``.

    Line numbers are kept, so every finding can name its line.
    """
    out: list[str] = []
    fence: str | None = None
    is_math = False
    for line in text.splitlines():
        if fence is None:
            m = _FENCE_RE.match(line)
            if m:
                fence, is_math = m.group(1), m.group(2) == "math"
                out.append("$$" if is_math else "")
            else:
                out.append(_INLINE_CODE_RE.sub(lambda mm: " " * len(mm.group(0)), line))
        else:
            stripped = line.strip()
            if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                out.append("$$" if is_math else "")
                fence = None
            else:
                out.append(line if is_math else "")
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    keep = "".join(ch for ch in s if ch in " -_" or unicodedata.category(ch)[0] in "LMN")
    return keep.replace(" ", "-")


def _prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(number, line)`` of each line of ``path`` outside fenced code blocks (from 1)."""
    fence: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = _FENCE_RE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                fence = None
            continue
        yield number, line


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = defaultdict(int)
    anchors = set()
    for _, line in _prose_lines(path):
        h = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if h:
            base = _slug(h.group(1))
            anchors.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
            seen[base] += 1
    return anchors


# ---------------------------------------------------------------------------
# Equations defined in docs/
# ---------------------------------------------------------------------------

_TAG_RE = re.compile(r"\\tag\*?\{([^}]*)\}")
_CODE_LINK_RE = re.compile(r"\[`([^`\]]+)`\]\(([^)\s]+)\)")  # [`name`](file)


@dataclass(frozen=True)
class Definition:
    eq: Eq | None  # None when the tag is not of the form c.n
    raw: str
    file: Path
    line: int  # 1-based
    code_line: str | None  # the first paragraph after the display block


def _paragraph_after(lines: list[str], index: int) -> str | None:
    """The first paragraph after line ``index``, joined into one line (a wrapped Code: line)."""
    start = next((j for j in range(index + 1, len(lines)) if lines[j].strip()), None)
    if start is None:
        return None
    end = start
    while end + 1 < len(lines) and lines[end + 1].strip() and "$$" not in lines[end + 1]:
        end += 1
    return " ".join(ln.strip() for ln in lines[start : end + 1])


def _definitions(path: Path) -> list[Definition]:
    text = path.read_text(encoding="utf-8")
    raw_lines = text.splitlines()
    lines = _mask_code(text)
    # display blocks: pairs of $$ delimiters, as (line, column) positions in order
    marks = [(i, m.start()) for i, ln in enumerate(lines) for m in re.finditer(r"\$\$", ln)]
    blocks = list(zip(marks[0::2], marks[1::2], strict=False))
    found = []
    for i, ln in enumerate(lines):
        for m in _TAG_RE.finditer(ln):
            end_line = i
            for start, end in blocks:
                if start <= (i, m.start()) <= end:
                    end_line = end[0]
                    break
            code_line = _paragraph_after(raw_lines, end_line)
            num = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", m.group(1))
            eq = (int(num.group(1)), int(num.group(2))) if num else None
            found.append(Definition(eq, m.group(1), path, i + 1, code_line))
    return found


def _all_definitions() -> list[Definition]:
    return [d for path in _doc_files() for d in _definitions(path)]


# ---------------------------------------------------------------------------
# Equations cited in numpy_attention/ (and in docs/ prose)
# ---------------------------------------------------------------------------

_NUM = r"\(?\d+\.\d+\)?"
_CITE_RE = re.compile(rf"\bEqs?\.\s*({_NUM}(?:\s*(?:-|–|—|,|and|to)\s*{_NUM})*)")
_TOKEN_RE = re.compile(r"(\d+)\.(\d+)|(-|–|—|to)|(,|and)")


def _parse_citation(group: str) -> tuple[list[Eq], str | None]:
    """Equations named by one citation; a range ``a-b`` is inclusive and stays in one chapter."""
    eqs: list[Eq] = []
    pending_range = False
    for m in _TOKEN_RE.finditer(group):
        if m.group(1):
            eq = (int(m.group(1)), int(m.group(2)))
            if pending_range:
                first = eqs[-1]
                if first[0] != eq[0] or eq[1] < first[1]:
                    return eqs, f"bad range {_fmt(first)}-{_fmt(eq)}"
                eqs.extend((eq[0], n) for n in range(first[1] + 1, eq[1] + 1))
            else:
                eqs.append(eq)
            pending_range = False
        elif m.group(3):
            pending_range = True
    return eqs, None


@dataclass(frozen=True)
class Citation:
    eq: Eq
    file: Path
    line: int


def _citations_in(text: str, path: Path, first_line: int = 1) -> tuple[list[Citation], list[str]]:
    cites, errors = [], []
    for m in _CITE_RE.finditer(text):
        line = first_line + text.count("\n", 0, m.start())
        eqs, err = _parse_citation(m.group(1))
        if err:
            errors.append(f"{_rel(path)}:{line}: {err} in {m.group(0)!r}")
        cites.extend(Citation(eq, path, line) for eq in eqs)
    return cites, errors


def _code_files() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _code_citations() -> tuple[list[Citation], list[str]]:
    cites, errors = [], []
    for path in _code_files():
        c, e = _citations_in(path.read_text(encoding="utf-8"), path)
        cites += c
        errors += e
    return cites, errors


def _find_node(tree: ast.Module, dotted: str) -> ast.AST | None:
    """The function or class ``name`` (or ``Class.method``) defined at the top of a module."""
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in dotted.split("."):
        node = next(
            (n for n in body
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             and n.name == part),
            None,
        )  # fmt: skip
        if node is None:
            return None
        body = node.body  # type: ignore[attr-defined]
    return node


def _source_of(path: Path, dotted: str) -> tuple[str, int, int] | None:
    """Source of a function or class (decorators included) and its first and last line."""
    text = path.read_text(encoding="utf-8")
    node = _find_node(ast.parse(text), dotted)
    if node is None:
        return None
    lines = text.splitlines()
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    end = node.end_lineno or node.lineno
    return "\n".join(lines[start - 1 : end]), start, end


# ---------------------------------------------------------------------------
# (a) Cross-references
# ---------------------------------------------------------------------------


def _fail(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{len(problems)} {what}:\n  " + "\n  ".join(problems), pytrace=False)


def test_equation_tags_are_numbered_by_their_own_chapter():
    r"""Every ``\tag{c.n}`` has the form c.n and sits in the chapter that owns prefix c."""
    problems = []
    for d in _all_definitions():
        where = f"{_rel(d.file)}:{d.line}"
        chapter = CHAPTERS.get(d.file.name)
        if d.eq is None:
            problems.append(f"{where}: tag {{{d.raw}}} is not of the form chapter.number")
        elif chapter is None:
            problems.append(f"{where}: {d.file.name} is no numbered chapter, yet tags {_fmt(d.eq)}")
        elif d.eq[0] != chapter:
            problems.append(f"{where}: {_fmt(d.eq)} in {d.file.name}, whose tags are ({chapter}.n)")
    _fail(problems, "misnumbered equation tags")


def test_no_equation_number_is_defined_twice():
    """An equation number names exactly one equation in docs/."""
    where: dict[Eq, list[str]] = defaultdict(list)
    for d in _all_definitions():
        if d.eq is not None:
            where[d.eq].append(f"{_rel(d.file)}:{d.line}")
    problems = [f"{_fmt(eq)} defined at {', '.join(w)}" for eq, w in sorted(where.items())
                if len(w) > 1]  # fmt: skip
    _fail(problems, "equation numbers defined more than once")


def test_code_cites_only_equations_that_docs_define():
    """Every ``Eq. (c.n)`` in numpy_attention/ (ranges expanded) is a tag in docs/."""
    defined = {d.eq for d in _all_definitions()}
    cites, errors = _code_citations()
    where: dict[Eq, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for c in cites:
        if c.eq not in defined and c.line not in where[c.eq][_rel(c.file)]:
            where[c.eq][_rel(c.file)].append(c.line)
    problems = errors + [
        f"Eq. {_fmt(eq)}, not defined in docs/, is cited at "
        + "; ".join(f"{f}:{','.join(map(str, lines))}" for f, lines in sorted(files.items()))
        for eq, files in sorted(where.items())
    ]
    _fail(problems, "citations of undefined equations in the code")


def test_docs_cite_only_equations_that_docs_define():
    """Every ``Eq. (c.n)`` in the prose of docs/ (outside code) is a tag somewhere in docs/."""
    defined = {d.eq for d in _all_definitions()}
    problems = []
    for path in _doc_files():
        cites, errors = _citations_in("\n".join(_mask_code(path.read_text(encoding="utf-8"))), path)
        problems += errors
        problems += [f"{_rel(c.file)}:{c.line}: cites Eq. {_fmt(c.eq)}, which docs/ does not define"
                     for c in cites if c.eq not in defined]  # fmt: skip
    _fail(problems, "citations of undefined equations in docs/")


def test_every_defined_equation_is_cited_by_the_code():
    """Each numbered equation of docs/ is cited in numpy_attention/ (a formula nobody computes
    should not carry a number)."""
    cited = {c.eq for c in _code_citations()[0]}
    problems = [f"{_rel(d.file)}:{d.line}: Eq. {_fmt(d.eq)} is cited nowhere in numpy_attention/"
                for d in _all_definitions() if d.eq is not None and d.eq not in cited]  # fmt: skip
    _fail(problems, "equations that no code cites")


def _code_line_problems(d: Definition) -> list[str]:
    """What is wrong with the ``Code:`` line after equation ``d`` (nothing: an empty list)."""
    where = f"{_rel(d.file)}:{d.line}"
    label = _fmt(d.eq) if d.eq else d.raw
    line = (d.code_line or "").strip()
    if not line.startswith("Code:"):
        return [f"{where}: Eq. {label} is not followed by a 'Code:' line: {line!r}"]
    links = _CODE_LINK_RE.findall(line)
    if not links:
        return [f"{where}: the Code: line of Eq. {label} links no [`function`](file)"]
    problems = []
    for name, target in links:
        name = name.strip().removesuffix("()")
        path = (d.file.parent / target.split("#")[0]).resolve()
        if path.suffix != ".py" or not path.is_file():
            problems.append(f"{where}: Eq. {label}: {target} is not an existing Python file")
            continue
        found = _source_of(path, name)
        if found is None:
            problems.append(f"{where}: Eq. {label}: `{name}` is not defined in {target}")
            continue
        source, first, last = found
        span = re.fullmatch(r"L(\d+)(?:-L(\d+))?", target.partition("#")[2])
        if span and not first <= int(span.group(1)) <= int(span.group(2) or span.group(1)) <= last:
            problems.append(f"{where}: Eq. {label}: {target} is outside `{name}`, "
                            f"lines {first}-{last}")  # fmt: skip
        inside = span and first <= int(span.group(1)) <= int(span.group(2) or span.group(1)) <= last
        if span and inside:  # the lines the link opens must be the ones that cite the equation
            lines = path.read_text(encoding="utf-8").splitlines()
            first_line, last_line = int(span.group(1)), int(span.group(2) or span.group(1))
            source = "\n".join(lines[first_line - 1 : last_line])
        cites, _ = _citations_in(source, path)
        if d.eq is not None and d.eq not in {c.eq for c in cites}:
            problems.append(f"{where}: Eq. {label}: the source of `{name}` ({target}) "
                            "does not cite it")  # fmt: skip
    return problems


def test_code_lines_link_functions_that_cite_their_equation():
    """The line after each numbered equation is ``Code: [`f`](../numpy_attention/m.py)``; ``f``
    exists in ``m.py``, its source (docstring or comments) cites that equation, and a line
    anchor ``#Lm-Ln`` on the link stays inside ``f``."""
    problems = [p for d in _all_definitions() for p in _code_line_problems(d)]
    _fail(problems, "broken Code: lines")


def test_code_line_check_catches_each_kind_of_drift(tmp_path):
    """Missing Code: line, unknown function, a function that does not cite the equation, and a
    line anchor outside the function are each reported; a correct line is not."""
    (tmp_path / "m.py").write_text(
        'def f():\n    """Eq. (1.1)."""\n\n\ndef g():\n    return 0  # Eqs. (1.2)-(1.3)\n',
        encoding="utf-8",
    )
    md = tmp_path / "softmax.md"
    md.write_text(
        "$$ a \\tag{1.1} $$\nCode: [`f`](m.py#L1-L2)\n\n"
        "$$ b \\tag{1.2} $$\nCode: [`f`](m.py)\n\n"
        "$$ c \\tag{1.3} $$\nCode: [`g`](m.py#L1)\n\n"
        "$$ d \\tag{1.4} $$\nCode: [`h`](m.py)\n\n"
        "$$ e \\tag{1.5} $$\nno code line\n",
        encoding="utf-8",
    )
    found = [_code_line_problems(d) for d in _definitions(md)]
    assert [len(p) for p in found] == [0, 1, 1, 1, 1]
    assert "does not cite it" in found[1][0] and "outside `g`" in found[2][0]
    assert "not defined" in found[3][0] and "'Code:' line" in found[4][0]


_BARE_CITE_RE = re.compile(
    rf"\b(?:[Ee]qs?\.?|[Ee]quations?)\s*({_NUM}(?:\s*(?:-|–|—|,|and|to)\s*{_NUM})*)"
)


def _bare_citations(text: str) -> list[tuple[int, str]]:
    """Citations not written ``Eq. (c.n)`` / ``Eqs. (c.a)-(c.b)``: a number without parentheses,
    ``Eq`` without its dot, a lower-case ``eq.`` or a spelled-out ``Equation`` (one form
    everywhere, so that searching for ``Eq. (2.10)`` finds every use)."""
    found = []
    for m in _BARE_CITE_RE.finditer(text):
        numbers = re.findall(r"\(?\d+\.\d+\)?", m.group(1))
        dotted = re.match(r"Eqs?\.", m.group(0))
        if not dotted or any(not (n.startswith("(") and n.endswith(")")) for n in numbers):
            found.append((text.count("\n", 0, m.start()) + 1, m.group(0)))
    return found


def _cited_files() -> list[Path]:
    """Where equations are cited: the package, the tests (but this file, whose parser tests
    hold bare forms on purpose), the examples, the benchmarks and the docs."""
    here = Path(__file__).resolve()
    files = sorted(PKG.rglob("*.py")) + _doc_files() + [ROOT / "README.md"]
    for folder in ("tests", "examples", "benchmarks"):
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if p.resolve() != here)
    return files


def test_equations_are_cited_in_one_form_everywhere():
    """Every citation reads ``Eq. (2.10)`` or ``Eqs. (2.10)-(2.12)``, never ``Eq. 2.10``,
    ``Eqs. (5.4)-5.6`` or ``Eq (2.10)``."""
    problems = [f"{_rel(path)}:{line}: {cite!r}, write it Eq. (c.n)"
                for path in _cited_files()
                for line, cite in _bare_citations(path.read_text(encoding="utf-8"))]  # fmt: skip
    _fail(problems, "citations not in the form Eq. (c.n)")


def test_bare_citation_finder_sees_each_bare_form():
    """The finder behind the one-form test flags a bare number, a half-bare range, a missing
    dot, a lower-case ``eq.`` and ``Equation``, and passes the parenthesised forms."""
    text = "Eq. (2.10) Eqs. (2.1)-(2.3) Eq. 2.10 Eqs. (5.4)-5.6 Eq (2.4) Eqs. (3.6), (3.10)"
    assert [c for _, c in _bare_citations(text)] == ["Eq. 2.10", "Eqs. (5.4)-5.6", "Eq (2.4)"]
    text = "see eq. (2.3), Equation (2.4), equations 2.5-2.6; Equations are numbered as in"
    assert [c for _, c in _bare_citations(text)] == [
        "eq. (2.3)",
        "Equation (2.4)",
        "equations 2.5-2.6",
    ]


def test_citation_parser_reads_ranges_lists_and_both_styles():
    """The parser behind the cross-reference tests: inclusive ranges, lists, with or without
    parentheses; a backwards or cross-chapter range is an error."""
    assert _parse_citation("(2.1)-(2.3)") == ([(2, 1), (2, 2), (2, 3)], None)
    assert _parse_citation("2.12-2.13") == ([(2, 12), (2, 13)], None)
    assert _parse_citation("(3.6), (3.10)") == ([(3, 6), (3, 10)], None)
    assert _parse_citation("(2.5)")[0] == [(2, 5)]
    assert _parse_citation("(2.5)-(2.3)")[1] is not None
    assert _parse_citation("(2.5)-(3.1)")[1] is not None
    text = "see Eqs. (2.1)-(2.2) and Eq. 1.4; Eq (9.9) and Eq. (2) are not citations"
    found = [c.eq for c in _citations_in(text, ROOT / "x.py")[0]]
    assert found == [(2, 1), (2, 2), (1, 4)]


def test_tag_finder_pairs_each_equation_with_the_line_after_its_block(tmp_path):
    r"""A tag inside a multi-line ``$$`` block gets the first non-blank line after the block;
    tags inside code are not definitions."""
    md = tmp_path / "softmax.md"
    md.write_text(
        "Text `\\tag{9.9}` and\n\n```latex\n$$ x \\tag{8.8} $$\n```\n"
        "$$\ny = 1 \\tag{1.1}\n$$\n\nCode: [`softmax`](../numpy_attention/softmax.py),\n"
        "[`logsumexp`](../numpy_attention/softmax.py)\n$$ z \\tag{1.2} $$\nnext\n",
        encoding="utf-8",
    )
    defs = _definitions(md)
    assert [(d.eq, d.line, d.code_line) for d in defs] == [
        (
            (1, 1),
            7,
            "Code: [`softmax`](../numpy_attention/softmax.py), "
            "[`logsumexp`](../numpy_attention/softmax.py)",
        ),
        ((1, 2), 12, "next"),
    ]


# ---------------------------------------------------------------------------
# (b) Links
# ---------------------------------------------------------------------------

_LINK_RE = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")


def _links(path: Path) -> list[tuple[int, str]]:
    found = []
    for i, line in enumerate(_mask_code(path.read_text(encoding="utf-8"))):
        found += [(i + 1, m.group(1)) for m in _LINK_RE.finditer(line)]
        found += [(i + 1, m.group(1)) for m in _REF_DEF_RE.finditer(line)]
    return found


def _link_problem(source: Path, target: str) -> str | None:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
        return None
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    if not dest.exists():
        return f"{target}: no such file"
    if not anchor:
        return None
    if dest.suffix == ".md":
        return None if anchor in _anchors(dest) else f"{target}: no heading with anchor #{anchor}"
    lines = re.fullmatch(r"L(\d+)(?:-L(\d+))?", anchor)
    if lines and dest.is_file():
        n = len(dest.read_text(encoding="utf-8").splitlines())
        last = int(lines.group(2) or lines.group(1))
        if not 1 <= int(lines.group(1)) <= last <= n:
            return f"{target}: lines out of range (the file has {n})"
    return None


def _linked_files() -> list[Path]:
    return _doc_files() + [ROOT / "README.md"]


@pytest.mark.parametrize("path", _linked_files(), ids=lambda p: _rel(p))
def test_relative_links_reach_existing_files(path):
    """Each relative link (and its #heading or #Lnn anchor) points at something that exists."""
    problems = []
    for line, target in _links(path):
        why = _link_problem(path, target)
        if why:
            problems.append(f"{_rel(path)}:{line}: {why}")
    _fail(problems, "broken links")


def test_link_checker_sees_a_broken_link(tmp_path):
    """The link check fails on a missing file and a missing heading, and ignores code and URLs."""
    (tmp_path / "a.md").write_text("# Top Part\n", encoding="utf-8")
    md = tmp_path / "b.md"
    md.write_text(
        "[ok](a.md#top-part) [gone](nope.md) [head](a.md#nothing) [web](https://x.org/y)\n"
        "`[code](missing.md)`\n```\n[block](missing.md)\n```\n",
        encoding="utf-8",
    )
    problems = [_link_problem(md, t) for _, t in _links(md)]
    assert [p is None for p in problems] == [True, False, False, True]


def test_docs_index_links_every_page():
    """docs/README.md, the reading order, links every page in docs/."""
    linked = {(DOCS / t.split("#")[0]).resolve() for _, t in _links(DOCS / "README.md")}
    missing = [p.name for p in _doc_files() if p.name != "README.md" and p.resolve() not in linked]
    _fail(missing, "pages of docs/ missing from docs/README.md")


# ---------------------------------------------------------------------------
# (c) The tour's numbers
# ---------------------------------------------------------------------------

TOUR = DOCS / "tour.md"


def _block_after(marker: str, text: str) -> str:
    """The body of the first fenced block after the line ``<!-- marker -->``."""
    m = re.search(rf"<!--\s*{re.escape(marker)}\s*-->\s*\n\s*(`{{3,}})[^\n]*\n(.*?)\n\s*\1", text,
                  re.S)  # fmt: skip
    assert m, f"docs/tour.md has no fenced block after <!-- {marker} -->"
    return m.group(2)


def _worked_example_arrays():
    from numpy_attention.attention import attention_forward

    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out, cache = attention_forward(x, x, x, is_causal=True)
    return cache.P, cache.lse, out


def test_tour_hand_computed_table_matches_attention_forward():
    """Each row of the tour's table (query i: P_i0, P_i1, P_i2, lse_i, O_i0, O_i1), computed by
    hand to 4 decimals, equals causal self-attention of X = [[1,0],[0,1],[1,1]]."""
    text = TOUR.read_text(encoding="utf-8")
    m = re.search(r"<!--\s*tour-table\s*-->\s*\n((?:\s*\|.*\n?)+)", text)
    assert m, "docs/tour.md has no table after <!-- tour-table -->"
    rows = [r for r in m.group(1).strip().splitlines()[2:]]  # skip header and separator
    P, lse, out = _worked_example_arrays()
    assert len(rows) == 3
    for i, row in enumerate(rows):
        cells = [c.strip().strip("$*") for c in row.strip().strip("|").split("|")]
        numbers = [float(c.replace("−", "-").replace("\\infty", "inf")) for c in cells[1:]]
        expected = np.concatenate([P[i], [lse[i]], out[i]])
        assert np.allclose(numbers, expected, rtol=0, atol=5e-5), (i, numbers, expected)


def test_tour_shows_what_the_demo_prints():
    """The tour's copy of the demo's worked example is what ``_worked_example()`` prints."""
    cli = pytest.importorskip("numpy_attention.app.cli")
    if not hasattr(cli, "_worked_example"):
        pytest.skip("numpy_attention.app.cli no longer has _worked_example")
    shown = _block_after("demo-output", TOUR.read_text(encoding="utf-8"))
    printed = cli._worked_example()
    assert [ln.rstrip() for ln in shown.strip().splitlines()] == [
        ln.rstrip() for ln in printed.strip().splitlines()
    ]


# ---------------------------------------------------------------------------
# (d) Runnable blocks
# ---------------------------------------------------------------------------

_RUNNABLE_RE = re.compile(r"^\s*<!--\s*runnable(?::\s*requires\s+([\w ,]+?))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # 1-based line of the first code line
    code: str
    requires: tuple[str, ...]


def _runnable_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = _RUNNABLE_RE.match(line)
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = _FENCE_RE.match(lines[j]) if j < len(lines) else None
        assert fence and fence.group(2) in ("python", "py", "pycon"), (
            f"{_rel(path)}:{i + 1}: <!-- runnable --> must be followed by a ```python block"
        )
        close = fence.group(1)
        end = next(n for n in range(j + 1, len(lines)) if lines[n].strip().startswith(close))
        requires = tuple(r for r in re.split(r"[\s,]+", m.group(1) or "") if r)
        blocks.append(Block(path, j + 2, "\n".join(lines[j + 1 : end]), requires))
    return blocks


def _run_block(block: Block, namespace: dict) -> None:
    where = f"{_rel(block.file)}:{block.line}"
    if block.code.lstrip().startswith(">>>"):
        parser = doctest.DocTestParser()
        test = parser.get_doctest(block.code, namespace, where, str(block.file), block.line - 1)
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        runner = doctest.DocTestRunner(optionflags=flags)
        report = io.StringIO()
        runner.run(test, out=report.write, clear_globs=False)
        namespace.update(test.globs)  # DocTest works on a copy; later blocks see its names
        if runner.failures:
            pytest.fail(f"doctest block at {where} failed:\n{report.getvalue()}", pytrace=False)
    else:
        code = compile("\n" * (block.line - 1) + block.code, str(block.file), "exec")
        exec(code, namespace)


def _block_runs() -> list:
    runs = []
    for path in _doc_files():
        blocks = _runnable_blocks(path)
        needs = sorted({r for b in blocks for r in b.requires})
        if any(not b.requires for b in blocks):
            runs.append(pytest.param(path, (), id=path.name))
        for extra in needs:
            runs.append(pytest.param(path, (extra,), id=f"{path.name}+{extra}"))
    return runs


@pytest.mark.parametrize(("path", "extras"), _block_runs())
def test_runnable_blocks_run(path, extras, monkeypatch):
    """The file's runnable blocks execute in order without error and print what they show.

    With ``extras`` (e.g. torch) every block runs, including those that need the extra; without,
    the blocks that need an optional module are left out."""
    for module in extras:
        pytest.importorskip(module, reason=TORCH_MISSING if module == "torch" else None)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for block in _runnable_blocks(path):
        if set(block.requires) <= set(extras):
            _run_block(block, namespace)
            ran += 1
    assert ran > 0


def test_block_runner_fails_on_a_wrong_printed_number(tmp_path):
    """A doctest block whose shown output differs from what it prints fails the run."""
    md = tmp_path / "x.md"
    md.write_text("<!-- runnable -->\n```python\n>>> print(1 + 1)\n3\n```\n", encoding="utf-8")
    (block,) = _runnable_blocks(md)
    with pytest.raises(pytest.fail.Exception):
        _run_block(block, {})
    md.write_text("<!-- runnable: requires torch -->\n```python\nx = 1\n```\n", encoding="utf-8")
    assert _runnable_blocks(md)[0].requires == ("torch",)


def test_torch_is_optional_for_the_doc_blocks():
    """A block that imports torch must be marked ``requires torch`` (so the docs run without it)."""
    problems = [f"{_rel(b.file)}:{b.line}: imports torch but is not marked 'requires torch'"
                for p in _doc_files() for b in _runnable_blocks(p)
                if re.search(r"^\s*(import|from)\s+torch", b.code, re.M)
                and "torch" not in b.requires]  # fmt: skip
    _fail(problems, "unmarked torch blocks")


# ---------------------------------------------------------------------------
# (e) Docstrings: every public function shows a runnable example
# ---------------------------------------------------------------------------


#: The command's modules: their functions are an interface, tested through the command itself.
_COMMAND_LINE = {"cli", "demo"}


def _public_functions() -> list:
    import importlib
    import inspect

    found = []
    for path in _code_files():
        parts = path.relative_to(PKG).with_suffix("").parts  # ("verify", "suite") in a wing
        if path.name.startswith("_") or path.stem in _COMMAND_LINE:
            continue
        module = importlib.import_module(".".join(("numpy_attention", *parts)))
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isfunction(obj) and obj.__module__ == module.__name__:
                found.append(pytest.param(obj, id=f"{'.'.join(parts)}.{name}"))
    return found


@pytest.mark.parametrize("fn", _public_functions())
def test_public_function_docstring_has_a_runnable_example(fn):
    """Each function in a library module's ``__all__`` (not the command's modules) has a numpydoc
    ``Examples`` section with a doctest (run by ``--doctest-modules``), so a reader sees it used."""
    doc = fn.__doc__ or ""
    examples = re.search(r"^\s*Examples\n\s*-{8,}\n(.*)", doc, re.M | re.S)
    assert examples and ">>>" in examples.group(1), (
        f"{fn.__module__}.{fn.__name__} has no 'Examples' section with a >>> example"
    )


def _matrix_products(path: Path, functions: tuple[str, ...]) -> int:
    """How many matrix products the source of ``functions`` writes: each ``a @ b`` and each call of
    the core's GQA product helpers ``_per_query_head`` / ``_per_kv_head`` (one ``@`` each)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    count = 0
    for name in functions:
        node = _find_node(tree, name)
        assert node is not None, f"{name} is not defined in {_rel(path)}"
        for n in ast.walk(node):
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult):
                count += 1
            elif isinstance(n, ast.Call) and getattr(n.func, "id", "") in (
                "_per_query_head",
                "_per_kv_head",
            ):
                count += 1
    return count


def test_flash_chapter_counts_the_backward_matrix_products_of_the_code():
    """docs/flash.md says how many matrix products one block of the tiled backward costs against
    the core's backward ("5 instead of the core's 4"): the numbers are those the code writes
    (the tiled backward recomputes the scores of Eq. (5.1) in ``_scores_block``)."""
    text = " ".join((DOCS / "flash.md").read_text(encoding="utf-8").split())
    m = re.search(r"(\d+) instead of the core's (\d+)", text)
    assert m, "docs/flash.md no longer says 'N instead of the core's M' products"
    core = _matrix_products(PKG / "attention.py", ("attention_backward",))
    tiled = _matrix_products(PKG / "flash.py", ("_backward_rows", "_scores_block"))
    assert (int(m.group(1)), int(m.group(2))) == (tiled, core)


def _relinker():
    """``tools/relink_docs.py`` as a module (tools/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("relink_docs", ROOT / "tools" / "relink_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RELINK = "run `python tools/relink_docs.py` to rewrite the anchors"


def _stale_anchors(md: Path) -> list[str]:
    """Links of ``md`` to a Python function whose anchor is missing or not the function's lines."""
    problems = []
    for line, name, target, anchor, span in _relinker().anchored_links(md):
        if span is not None and anchor != f"#L{span[0]}-L{span[1]}":
            now = anchor or "no anchor"
            problems.append(f"{_rel(md)}:{line}: [`{name}`]({target}{anchor}): {now}, but "
                            f"`{name}` is defined on lines {span[0]}-{span[1]}")  # fmt: skip
    return problems


def test_function_links_land_on_the_lines_of_their_function():
    """Every link to a function of a Python file (each `Code:` link, each loop oracle) carries the
    anchor ``#Lm-Ln`` of the function's definition, so that it opens on the function; the test
    names the stale links and says to run the relink script."""
    problems = [p for md in _relinker().markdown_files() for p in _stale_anchors(md)]
    if problems:
        problems.append(RELINK)
    _fail(problems, "links whose line anchor does not land on their function")


def test_anchor_check_sees_a_stale_anchor_and_the_relinker_mends_it(tmp_path):
    """A moved function makes the check fail; relinking writes the new lines and the check passes;
    a link to a file (not a function) needs no anchor."""
    relink = _relinker()
    (tmp_path / "m.py").write_text("\n\ndef f():\n    return 1  # Eq. (1.1)\n", encoding="utf-8")
    md = tmp_path / "x.md"
    md.write_text(
        "Code: [`f`](m.py#L1-L2), [`m.py`](m.py)\n```\n[`f`](m.py)\n```\n", encoding="utf-8"
    )
    assert len(_stale_anchors(md)) == 1 and "lines 3-4" in _stale_anchors(md)[0]
    md.write_text(relink.relink_text(md.read_text(encoding="utf-8"), md), encoding="utf-8")
    assert _stale_anchors(md) == []
    assert (
        md.read_text(encoding="utf-8").splitlines()[0] == "Code: [`f`](m.py#L3-L4), [`m.py`](m.py)"
    )
    assert "[`f`](m.py)" in md.read_text(encoding="utf-8")  # code blocks are left alone


def test_reliability_page_names_only_tests_that_exist():
    """docs/reliability.md: every test file and test function it names exists."""
    text = (DOCS / "reliability.md").read_text(encoding="utf-8")
    root = DOCS.parent
    files = set(re.findall(r"`(tests/[\w/]+\.py)`", text))
    names = set(re.findall(r"`(test_\w+)`", text))
    assert files and names
    missing = [f for f in files if not (root / f).is_file()]
    sources = "".join(p.read_text(encoding="utf-8") for p in (root / "tests").glob("test_*.py"))
    missing += [n for n in names if f"def {n}(" not in sources]
    _fail(missing, "tests named in docs/reliability.md that do not exist")


# ---------------------------------------------------------------------------
# The glossary: one meaning per symbol
# ---------------------------------------------------------------------------

GLOSSARY = DOCS / "glossary.md"


def _split_top_level(math: str) -> list[str]:
    """``S^{(0)}, S^{(1)}`` -> ``["S^{(0)}", "S^{(1)}"]``: split at commas outside braces."""
    parts, depth, current = [], 0, ""
    for ch in math:
        depth += (ch in "{([") - (ch in "})]")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in parts + [current] if p.strip()]


def _glossary_rows(text: str) -> list[tuple[int, str, list[tuple[str, str]]]]:
    """``(line, section, symbols)`` for every table row of the glossary; a symbol is
    ``("size", "Hq")`` (code font) or ``("math", <its LaTeX>)`` (a formula's letter)."""
    rows, section = [], ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        first = line.split(" | ")[0][2:].strip()
        if first in {"Size", "Symbol", "Index"}:
            continue
        symbols = [("size", c) for c in re.findall(r"`([^`]+)`", first)]
        symbols += [("math", s) for m in re.findall(r"\$([^$]+)\$", first)
                    for s in _split_top_level(m)]  # fmt: skip
        rows.append((number, section, symbols))
    return rows


def _glossary_problems(text: str) -> list[str]:
    rows = _glossary_rows(text)
    where: dict[tuple[str, str], list[int]] = defaultdict(list)
    for number, _, symbols in rows:
        for symbol in symbols:
            where[symbol].append(number)
    problems = [f"glossary.md:{lines[0]}: {s!r} is defined on lines {lines}"
                for (_, s), lines in where.items() if len(lines) > 1]  # fmt: skip
    indices = {s for _, section, symbols in rows if section == "Indices" for _, s in symbols}
    single = {s for s in indices if re.fullmatch(r"[a-z]", s)}
    for (kind, s), lines in where.items():
        m = re.fullmatch(r"(.+?)_\{?([a-z])\}?", s)
        if kind != "math" or not m or m.group(2) not in single:
            continue
        stem = m.group(1)  # a Greek or capital letter: a lower-case one may carry a name (b_k)
        others = [n for n in where.get(("math", stem), []) if n not in lines]
        if others and re.fullmatch(r"\\[A-Za-z]+|[A-Z]", stem):
            other = others[0]
            problems.append(
                f"glossary.md:{lines[0]}: {s!r} (letter {stem!r} with an index) and {stem!r}"
                f" on line {other} are two meanings"
            )
    return problems


def test_glossary_gives_each_symbol_one_row_and_one_meaning():
    """docs/glossary.md: no symbol is defined twice, and no Greek or capital letter means one
    thing bare and another with an index subscript (Adam's mu and ALiBi's mu_h once did)."""
    text = GLOSSARY.read_text(encoding="utf-8")
    rows = _glossary_rows(text)
    assert len(rows) > 80 and {s for _, _, row in rows for s in row} >= {
        ("size", "Hq"),
        ("math", "\\tilde S"),
        ("math", "i"),
        ("math", "\\delta_{jj'}"),
    }
    _fail(_glossary_problems(text), "symbols with more than one meaning in docs/glossary.md")


def test_glossary_check_sees_a_second_meaning():
    """The check fails on a symbol defined twice and on a bare Greek or capital letter that also
    names an indexed symbol, and passes a table that adds nothing."""
    text = GLOSSARY.read_text(encoding="utf-8")
    table = "\n## Indices\n\n| Index | Runs over |\n|---|---|\n"
    twice = text + "\n## Arrays\n\n| Symbol | Meaning |\n|---|---|\n| $\\gamma$ | a rate |\n"
    assert any("\\gamma" in p for p in _glossary_problems(twice))
    bare = text + "\n## Arrays\n\n| Symbol | Meaning |\n|---|---|\n| $\\mu$ | a moment |\n"
    assert any("\\mu_h" in p for p in _glossary_problems(bare))
    assert _glossary_problems(text + table + "| $A$ | a matrix |\n") != []
    assert _glossary_problems(text) == _glossary_problems(text + table)


_SHAPE_RE = re.compile(r"(?<![\w.\]])\(([^()]*,[^()]*)\)")
_NOT_SIZES = {"None", "True", "False"}


def _shape_problems(path: Path, sizes: set[str]) -> list[str]:
    """Shapes in code font in the prose of ``path`` (``(…, Hq, L, S)``, ``w_q (Dq, H·E)``) whose
    capitalised letters are not sizes of the glossary (a trailing digit numbers an axis)."""
    problems = []
    for number, line in _prose_lines(path):
        for span in _INLINE_CODE_RE.finditer(line):
            for shape in _SHAPE_RE.finditer(span.group(2)):
                if any(ord(ch) > 127 and ch not in "…·" for ch in shape.group(1)):
                    continue  # entries such as (P₁₀, P₁₁), not a shape
                for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", shape.group(1)):
                    if name[0].isupper() and name not in _NOT_SIZES:
                        if name.rstrip("0123456789") not in sizes:
                            problems.append(f"{_rel(path)}:{number}: {name!r} in {span.group(2)!r}")
    return problems


def _glossary_sizes() -> set[str]:
    rows = _glossary_rows(GLOSSARY.read_text(encoding="utf-8"))
    return {s for _, _, symbols in rows for kind, s in symbols if kind == "size"}


def test_shapes_in_the_docs_use_the_glossarys_sizes():
    """Every letter of a shape written in code font in docs/ is a size of the glossary: no
    ``(B, H_i, T, T)`` (i is a query), no other library's ``(B, L, H, D)``."""
    sizes = _glossary_sizes()
    assert {"B", "Hq", "Hkv", "L", "S", "E", "Ev", "Nc", "B_cache"} <= sizes
    problems = [p for path in _doc_files() + [ROOT / "README.md"]
                for p in _shape_problems(path, sizes)]  # fmt: skip
    _fail(problems, "shapes with letters that are not sizes of docs/glossary.md")


def test_shape_check_sees_a_letter_that_is_no_size(tmp_path):
    """The shape check flags a letter that is no size and passes sizes, products of sizes,
    calls, Python constants, numbered axes and code blocks."""
    md = tmp_path / "x.md"
    md.write_text(
        "weights `(B, H_i, T, T)`, ok `(…, Hq, L, S)` and `w_q (Dq, H·E)`, a call `f(Q, K)`,\n"
        "`window=(None, 0)`, axes `(B0, B1)`\n```\n(B, D)\n```\n",
        encoding="utf-8",
    )
    found = [p.split(": ", 1)[1] for p in _shape_problems(md, _glossary_sizes())]
    assert found == ["'H_i' in '(B, H_i, T, T)'"]


def test_docs_write_no_big_o():
    """O is the attention output: a cost is written "linear in S", never with big-O."""
    problems = [f"{_rel(path)}:{n}: {line.strip()[:80]}"
                for path in _doc_files()
                for n, line in enumerate(_mask_code(path.read_text(encoding="utf-8")), 1)
                if re.search(r"(?<![A-Za-z\\])O\(", line)]  # fmt: skip
    _fail(problems, "big-O in docs/ (O is the output)")
