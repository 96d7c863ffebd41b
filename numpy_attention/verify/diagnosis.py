r"""Diagnosis: which convention difference or bug commonly produces a given pattern of errors.

- :func:`axis_names`: the names of a quantity's axes (``lse`` is (batch,
  head, query); the layers' 3-D tensors are (batch, position, feature)).
- :func:`diagnose`: the hints for one quantity, from its pattern of errors and
  the case's context (:func:`case_context`: scale, widths, dropout
  probability, GQA group size): a uniform factor named (scale, 1/scale,
  sqrt(E), 1/(1-p), the group size, 1/ln 2), NaN where the reference is
  finite, fully masked rows, causal diagonals, weights after dropout, the
  batch, heads or positions that are wrong.
- :func:`case_hints`: the hints from which quantities of one case fail
  (the forward right and only the gradients wrong, ...).
- :func:`shape_hints`: the hints for a shape mismatch (a swapped layout, a
  missing head axis, a broadcast gradient not reduced).

A hint is given only when the pattern is clear: rounding noise (errors that
pass a looser dtype's tolerance, no structure) gets none. The hints table of
``docs/verify.md`` lists them all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["axis_names", "case_context", "diagnose", "case_hints", "shape_hints"]

#: Axis names of the scaled dot-product attention quantities.
_SDPA_AXES = {
    "out": ("batch", "head", "query", "feature"),
    "dq": ("batch", "head", "query", "feature"),
    "dk": ("batch", "head", "key", "feature"),
    "dv": ("batch", "head", "key", "feature"),
    "weights": ("batch", "head", "query", "key"),
    "d_attn_mask": ("batch", "head", "query", "key"),
    "lse": ("batch", "head", "query"),
}
#: Axis names of the layers' quantities, by number of axes.
_LAYER_AXES = {4: ("batch", "head", "query", "key"), 3: ("batch", "position", "feature"),
               2: ("row", "column"), 1: ("index",)}  # fmt: skip
#: The localisation hints (generic: they name where, not why): "only heads [1, 2] of 6 ...".
_GENERIC = re.compile(r"only (batch|heads|\w+ positions) \[")


def axis_names(
    ndim: int, axes: tuple[str, ...] | None = None, quantity: str = "out", kind: str = "sdpa"
) -> tuple[str, ...]:
    """Return the names of the ``ndim`` axes of ``quantity`` in a case of ``kind``.

    Examples
    --------
    >>> axis_names(3, quantity="lse"), axis_names(3, quantity="out", kind="cross_attention")
    (('batch', 'head', 'query'), ('batch', 'position', 'feature'))
    """
    if axes is not None:
        if len(axes) != ndim:
            raise ValueError(f"axes names {len(axes)} axes, the arrays have {ndim}")
        return tuple(axes)
    names = _SDPA_AXES.get(quantity) if kind == "sdpa" else None
    if names is None or (kind != "sdpa" and ndim in _LAYER_AXES):
        names = _LAYER_AXES.get(ndim, ("index",))
    if ndim <= len(names):
        return names[len(names) - ndim :]
    return tuple(f"batch{i}" for i in range(ndim - len(names) + 1)) + names[1:]


def case_context(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Return what the hints use of a manifest case entry: scale, E, Ev, p, G, broadcast.

    Examples
    --------
    >>> from numpy_attention.verify import build_suite
    >>> ctx = case_context(build_suite()[14].manifest_entry())
    >>> ctx["G"], ctx["E"]
    (3, 8)
    """
    raw_flags, raw_inputs = entry.get("flags"), entry.get("inputs")
    flags: Mapping[str, Any] = raw_flags if isinstance(raw_flags, Mapping) else {}
    inputs: Mapping[str, Any] = raw_inputs if isinstance(raw_inputs, Mapping) else {}
    shape = {n: d.get("shape") for n, d in inputs.items() if isinstance(d, Mapping)}
    q, k, v = shape.get("q"), shape.get("k"), shape.get("v")
    ctx: dict[str, Any] = {"kind": entry.get("kind", "sdpa")}
    for key in ("scale", "dropout_p"):
        if isinstance(flags.get(key), (int, float)) and not isinstance(flags.get(key), bool):
            ctx[key] = float(flags[key])
    if isinstance(q, list) and isinstance(k, list) and len(q) == len(k) >= 3:
        ctx["E"] = int(q[-1])
        ctx["G"] = int(q[-3]) // max(int(k[-3]), 1) if flags.get("enable_gqa") else 1
        ctx["broadcast"] = int(k[0]) == 1 < int(q[0])
    if isinstance(v, list) and v:
        ctx["Ev"] = int(v[-1])
    ctx["mask"] = flags.get("attn_mask")
    ctx["causal"] = bool(flags.get("is_causal"))
    ctx["bottom_right"] = flags.get("causal_align") == "bottom_right"
    return ctx


def shape_hints(shape_a: tuple[int, ...], shape_d: tuple[int, ...]) -> list[str]:
    """Name the likely causes of a shape mismatch (a swapped layout, a missing head axis).

    Examples
    --------
    >>> shape_hints((2, 5, 3, 8), (2, 3, 5, 8))[0][:38]
    'the result looks like the (B, L, H, E)'
    >>> shape_hints((3, 2, 7, 8), (1, 2, 7, 8))[0][:40]
    'a broadcast gradient was not reduced: th'
    """
    hints = []
    if len(shape_a) == len(shape_d) >= 3:
        swapped = list(shape_a)
        swapped[-2], swapped[-3] = swapped[-3], swapped[-2]
        if tuple(swapped) == tuple(shape_d):
            hints.append(
                "the result looks like the (B, L, H, E) layout (JAX, FlashAttention); "
                "the suite uses (B, H, L, E): swap axes -3 and -2"
            )
    if len(shape_a) == len(shape_d) - 1 and shape_a == shape_d[:-3] + shape_d[-2:]:
        hints.append(
            "the head axis is missing: weights averaged over heads? (nn.MultiheadAttention "
            "average_attn_weights=True); pass average_attn_weights=False"
        )
    if len(shape_a) == len(shape_d) and all(
        x == y or y == 1 for x, y in zip(shape_a, shape_d, strict=True)
    ):
        axes = [i for i, (x, y) in enumerate(zip(shape_a, shape_d, strict=True)) if x != y]
        hints.append(
            f"a broadcast gradient was not reduced: the expected shape {shape_d} has size 1 on "
            f"axes {axes}, which the forward broadcast; sum the gradient over them (keepdims)"
        )
    return hints


def _factor_stories(c: float, quantity: str, ctx: Mapping[str, Any]) -> list[str]:
    """Return the constants of the case that a uniform factor ``c`` equals (within 0.1 %)."""
    cands: list[tuple[float, str]] = [(-1.0, "-1: a sign error in the backward")]
    cands.append((1 / math.log(2), "1/ln 2: a base-2 log-sum-exp (Triton tutorial); report ln"))
    scale, E = ctx.get("scale"), ctx.get("E")
    if scale:
        cands += [(scale, "the scale: the scale applied twice (or where it does not belong)"),
                  (1 / scale, "1/scale: the scale missing (scores or the backward's dS not "
                              "multiplied by it)")]  # fmt: skip
    if E:
        cands += [(math.sqrt(E), f"sqrt(E) = sqrt({E}): the scale 1/E instead of 1/sqrt(E), or "
                                 "scaled by 1/sqrt(E) twice"),
                  (1 / math.sqrt(E), f"1/sqrt(E) = 1/sqrt({E}): an extra 1/sqrt(E)")]  # fmt: skip
    p = ctx.get("dropout_p") or 0.0
    if 0 < p < 1:
        cands += [
            (1 - p, f"1-p = {1 - p:g}: dropout without the 1/(1-p) rescaling"),
            (1 / (1 - p), f"1/(1-p) = {1 / (1 - p):.4g}: dropout rescaled twice"),
        ]
    G = ctx.get("G") or 1
    if G > 1 and quantity in ("dk", "dv"):
        cands += [(1 / G, f"1/G = 1/{G}: dk, dv averaged over each GQA group instead of summed"),
                  (float(G), f"G = {G}: the GQA group summed twice")]  # fmt: skip
    return [s for x, s in cands if abs(c - x) <= 1e-3 * abs(x)]


def _factor_hint(aa: NDArray[np.floating], dd: NDArray[np.floating], quantity: str,
                 ctx: Mapping[str, Any]) -> list[str]:  # fmt: skip
    """``actual = c x desired`` everywhere, with the case's constant ``c`` matches, if any."""
    if not dd.size or np.dot(dd, dd) == 0:
        return []
    c = float(np.dot(aa, dd) / np.dot(dd, dd))
    resid = float(np.max(np.abs(aa - c * dd)))
    if abs(c - 1) <= 1e-2 or resid > 1e-3 * float(np.max(np.abs(dd))):
        return []
    stories = _factor_stories(c, quantity, ctx)
    why = "; or ".join(stories) if stories else "no constant of the case matches"
    return [f"actual = {c:.4g} x desired everywhere: a uniform factor ({why})"]


def diagnose(
    a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_], quantity: str,
    axes: tuple[str, ...] | None = None, context: Mapping[str, Any] | None = None,
) -> list[str]:  # fmt: skip
    r"""Name the likely causes of a mismatch from the pattern of its errors.

    Parameters
    ----------
    a, d : ndarray
        Actual and desired values, same shape, float64.
    bad : ndarray of bool
        Elements outside the tolerance.
    quantity : str
        ``"out"``, ``"weights"``, ``"lse"``, ``"dq"``, ...
    axes : tuple of str, optional
        The axes' names (default :func:`axis_names`).
    context : mapping, optional
        The case's constants (:func:`case_context`); lets a uniform factor be
        named (the scale, 1/(1-p), the group size) and the dropout hints fire.

    Returns
    -------
    hints : list of str
        Most specific first; the hints saying only *where* the errors are
        (``only batch [1] ...``) come last. Empty if nothing is clear.

    Examples
    --------
    >>> d = np.full((2, 3), 0.5)
    >>> diagnose(0.75 * d, d, np.ones((2, 3), bool), "out", context={"dropout_p": 0.25})[0]
    'actual = 0.75 x desired everywhere: a uniform factor (1-p = 0.75: dropout without the 1/(1-p) rescaling)'
    """  # noqa: E501
    ctx = context or {}
    axes = axis_names(d.ndim, axes, quantity, ctx.get("kind", "sdpa"))
    hints: list[str] = []
    finite = np.isfinite(d)
    nonfinite = ~np.isfinite(a) & finite
    if nonfinite.any():
        hints.append(
            f"{int(nonfinite.sum())} NaN/inf values where the reference is finite: an unshifted "
            "softmax (exp overflows; subtract the row max), or 0/0 in a fully masked row "
            "(the reference gives weights 0, output 0, lse -inf there)"
        )
    hints.extend(_fully_masked_hint(a, d, bad, quantity))
    ok = finite & np.isfinite(a)
    with np.errstate(invalid="ignore", over="ignore"):
        hints.extend(_factor_hint(a[ok], d[ok], quantity, ctx))
        if quantity == "weights" and a.ndim >= 2:
            hints.extend(_weight_hints(a, d, bad, ctx))
        if quantity == "lse":
            hints.extend(_lse_hints(a, d, ok, bad))
        hints.extend(_where_hints(a, d, bad, axes))
    return hints


def n_specific(hints: list[str]) -> int:
    """Return the number of leading hints that say why, not only where."""
    return next((i for i, h in enumerate(hints) if _GENERIC.match(h)), len(hints))


def _fully_masked_hint(a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_],
                       quantity: str) -> list[str]:  # fmt: skip
    if quantity == "lse":
        rows = np.isneginf(d)
    elif quantity in ("weights", "out") and d.ndim >= 2:
        rows = np.broadcast_to(np.all(d == 0, axis=-1, keepdims=True), d.shape)
    else:
        return []
    if not ((bad & rows).any() and not (bad & ~rows).any()):
        return []
    return [
        "only rows whose every key is masked are wrong: the reference (PyTorch >= 2.5) gives "
        "output 0, weights 0 and lse -inf there; JAX and a finite mask sentinel (a -1e9 or "
        "-5e4 fill) give mean(V) (softmax of equal scores), the CPU flash kernel lse 0"
    ]


def _lse_hints(a: NDArray[np.floating], d: NDArray[np.floating], ok: NDArray[np.bool_],
               bad: NDArray[np.bool_]) -> list[str]:  # fmt: skip
    """Name a constant offset of the finite entries, only if finite entries fail (not noise)."""
    if not (bad & ok).any():
        return []
    diff, dd = (a - d)[ok], d[ok]
    mean = float(diff.mean())
    if np.allclose(a[ok], dd / np.log(2), rtol=1e-3):
        return ["lse = desired / ln 2: base-2 log-sum-exp (Triton tutorial); report ln"]
    if np.ptp(diff) < 1e-3 * max(1.0, float(np.max(np.abs(dd)))) and abs(mean) > 10 * np.ptp(diff):
        return [f"lse is off by a constant {mean:.4g}: a missing or extra shift (the row max "
                "not added back, or a constant bias left out)"]  # fmt: skip
    return []


def _weight_hints(a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_],
                  ctx: Mapping[str, Any]) -> list[str]:  # fmt: skip
    hints = _after_dropout(a, d, ctx) or _score_factor(a, d, ctx)
    rows, want = a.sum(axis=-1), d.sum(axis=-1)  # 1, or less with attention sinks
    live = (want > 0.5) & (rows > 0)  # a row of zeros is a masking matter, below
    if not hints and live.any() and not np.allclose(rows[live], want[live], atol=1e-2):
        cols = a.sum(axis=-2)
        if np.allclose(cols[np.isfinite(cols)], 1.0, atol=1e-2):
            hints.append("columns of the weights sum to 1, rows do not: softmax over the query "
                         "axis instead of the key axis")  # fmt: skip
        else:
            hints.append("rows of the weights do not sum to what the reference's do (1 without "
                         "sinks)")  # fmt: skip
    L, S = a.shape[-2:]
    after_dropout = bool(hints) and hints[0].startswith("the weights are reported after")
    differ = bad & ((d == 0) != (a == 0))  # attended by one of the two only
    every_batch = a.ndim != 4 or differ.reshape(a.shape[0], -1).any(axis=1).all()
    if differ.any() and every_batch and not after_dropout:  # (else: a per-batch story below)
        story = _mask_story(a != 0, d != 0, a, ctx)
        if story:  # the candidate's pattern of attended keys is exactly that of one mask bug
            return [*hints, story]
    for what, where in (
        ("attends to keys the reference masks", bad & (d == 0) & (a != 0)),
        ("masks keys the reference attends to", bad & (d != 0) & (a == 0)),
    ):
        pos = np.argwhere(where.reshape(-1, L, S).any(axis=0))
        if not pos.size or after_dropout:
            continue
        batches = np.flatnonzero(where.reshape(where.shape[0], -1).any(axis=1))
        if a.ndim == 4 and batches.size < a.shape[0]:
            hints.append(f"the mask of another batch: the weights {what} only in batch "
                         f"{batches.tolist()} of {a.shape[0]}: a per-batch mask (or lengths) "
                         "taken from the wrong batch, or a batch stride")  # fmt: skip
            continue
        offsets = sorted(set((pos[:, 1] - pos[:, 0]).tolist()))
        if len(offsets) <= 2:
            diag = ", ".join(f"j = i {'+-'[o < 0]} {abs(o)}" for o in offsets)
            hints.append(f"{what}, on the diagonal {diag}: a causal mask off by one (j < i vs "
                         "j <= i) or the other causal alignment (top-left offset 0, bottom-right "
                         f"S - L = {S - L})")  # fmt: skip
        elif what.startswith("attends"):
            hints.append(f"{what}: inverted mask polarity (True = attend here), a finite mask "
                         "sentinel (-1e4, -5e4) that loses to very negative logits, a wrong "
                         "causal alignment or a missing mask")  # fmt: skip
        else:
            hints.append(f"{what}: inverted mask polarity (True = attend here), a wrong causal "
                         "alignment or a mask the reference does not apply")  # fmt: skip
    return hints


def _mask_story(attends: NDArray[np.bool_], ref: NDArray[np.bool_], a: NDArray[np.floating],
                ctx: Mapping[str, Any]) -> str | None:  # fmt: skip
    """Name the mask bug whose pattern of attended keys is exactly the candidate's, if one is.

    ``attends`` and ``ref``: where the candidate's and the reference's weights are non-zero.
    """
    L, S = ref.shape[-2:]
    i, j = np.arange(L)[:, None], np.arange(S)[None, :]
    tl, br = j <= i, j <= i + (S - L)  # the two causal alignments (Eq. (2.6))
    if attends.any() and not (attends & ref).any():
        rows = attends.any(axis=-1)
        picked = np.where(attends, a, np.nan)[rows]
        uniform = np.allclose(np.nanmax(picked, axis=-1), np.nanmin(picked, axis=-1), rtol=1e-2)
        if uniform:  # equal weights on the masked keys: they all got the same finite score
            return (
                "the weights attend only to keys the reference masks, with equal weights: "
                "a finite mask sentinel (-1e4, -5e4) that loses to logits far below it"
            )
        return ("the weights attend exactly where the reference masks, never where it attends: "
                "inverted mask polarity (True = attend here, as in PyTorch)")  # fmt: skip
    if ctx.get("causal") and L != S:
        mine, other = (br, tl) if ctx.get("bottom_right") else (tl, br)
        inner = other & mine  # the alignment that attends to fewer keys
        if (
            np.array_equal(attends, ref & other)
            if np.array_equal(inner, other)
            else (np.array_equal(ref, attends & mine) and not (attends & ~other).any())
        ):
            name = ("top-left (j <= i)", "bottom-right (j <= i + S - L)")
            want, got = (name[1], name[0]) if ctx.get("bottom_right") else name
            return (
                f"the weights follow the {got} causal mask, the reference the {want} one: "
                f"a wrong causal alignment (S - L = {S - L})"
            )
    if (attends & ~ref).any() and not (ref & ~attends).any():  # attends to more keys
        mine = (br if ctx.get("bottom_right") else tl) if ctx.get("causal") else np.True_
        if (
            ctx.get("mask")
            and ctx.get("causal")
            and np.array_equal(attends, np.broadcast_to(mine, attends.shape))
        ):
            return (
                "the weights attend to every key the causal mask allows: a missing mask "
                "(attn_mask dropped when is_causal is given; apply both)"
            )
        if attends.all():
            return "the weights attend to every key: a missing mask (no mask applied at all)"
    return None


def _after_dropout(a: NDArray[np.floating], d: NDArray[np.floating],
                   ctx: Mapping[str, Any]) -> list[str]:  # fmt: skip
    """Weights equal to 0 or ``desired / (1-p)`` everywhere: reported after dropout."""
    p = ctx.get("dropout_p") or 0.0
    live = d > 0
    if not 0 < p < 1 or not live.any():
        return []
    r = a[live] / d[live]
    dropped, kept = np.isclose(r, 0, atol=1e-2), np.isclose(r, 1 / (1 - p), rtol=1e-2)
    if not (dropped | kept).all() or not dropped.any():
        return []
    return [f"the weights are reported after dropout (0 or desired / (1-p) = desired x "
            f"{1 / (1 - p):.4g}): report the softmax before dropout"]  # fmt: skip


def _score_factor(a: NDArray[np.floating], d: NDArray[np.floating],
                  ctx: Mapping[str, Any]) -> list[str]:  # fmt: skip
    """Weights equal to softmax(c x the reference's scores): log-weights centred per row scale."""
    both = (a > 0) & (d > 0) & np.isfinite(a)
    if not both.any() or not (both == (d > 0)).all():
        return []
    n = np.maximum(both.sum(axis=-1, keepdims=True), 1)
    la, ld = (np.where(both, np.log(np.where(both, x, 1.0)), 0.0) for x in (a, d))
    la, ld = (np.where(both, x - x.sum(axis=-1, keepdims=True) / n, 0.0) for x in (la, ld))
    den = float(np.sum(ld * ld))
    if den == 0:
        return []
    c = float(np.sum(la * ld) / den)
    if abs(c - 1) <= 1e-2 or np.max(np.abs(la - c * ld)) > 1e-2 * max(1.0, np.max(np.abs(ld))):
        return []
    scale, E = ctx.get("scale"), ctx.get("E")
    cands = []
    if scale:
        cands += [(1 / scale, "1/scale: the scores not multiplied by the scale"),
                  (scale, "the scale applied twice")]  # fmt: skip
    if E and scale and abs(scale * math.sqrt(E) - 1) < 1e-6:
        cands += [(1 / math.sqrt(E), f"1/sqrt(E) = 1/sqrt({E}): the scale 1/E instead of "
                                     "1/sqrt(E)")]  # fmt: skip
    stories = [t for x, t in cands if abs(c - x) <= 2e-3 * abs(x)]
    why = "; or ".join(stories) if stories else "no constant of the case matches"
    return [f"the weights are softmax({c:.4g} x the reference's scores): a wrong scale ({why})"]


def _where_hints(a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_],
                 axes: tuple[str, ...]) -> list[str]:  # fmt: skip
    """Which batch, heads or positions hold every wrong element (or a head permutation)."""
    hints: list[str] = []
    if "head" in axes:
        hints.extend(_head_permutation(a, d, axes.index("head")))
    why = {"batch": "a per-batch input (mask, lengths, bias) taken from the wrong batch, or a "
                    "batch stride",
           "head": "with GQA, key/value heads repeated in tile order instead of repeat_interleave "
                   "leave exactly the heads where both orders agree right",
           "query": "typical of causal alignment (top-left vs bottom-right), a padding mask on "
                    "the wrong side, or an edge case in the first/last rows"}  # fmt: skip
    for i, name in enumerate(axes):
        n = bad.shape[i]
        idx = np.flatnonzero(np.moveaxis(bad, i, 0).reshape(n, -1).any(axis=1))
        if name == "feature" or not 0 < idx.size < n or (name == "head" and hints):
            continue
        label = {"batch": "batch", "head": "heads"}.get(name, f"{name} positions")
        story = why.get(name, why["query"] if name in ("key", "position") else "")
        hints.append(
            f"only {label} {idx.tolist()[:12]} of {n} are wrong" + (f": {story}" * bool(story))
        )
    return hints


def _head_permutation(a: NDArray[np.floating], d: NDArray[np.floating], axis: int) -> list[str]:
    H = a.shape[axis]
    if H < 2:
        return []
    ah, dh = (np.moveaxis(x, axis, 0).reshape(H, -1) for x in (a, d))
    ok = np.all(np.isfinite(ah), axis=0) & np.all(np.isfinite(dh), axis=0)
    ah, dh = ah[:, ok], dh[:, ok]
    if ah.shape[1] == 0:
        return []
    tol = 1e-2 * max(float(np.max(np.abs(dh))), 1e-300)
    match = np.array([[np.max(np.abs(ah[i] - dh[j])) <= tol for j in range(H)] for i in range(H)])
    if match.diagonal().all() or not match.any(axis=1).all():
        return []
    perm = [int(np.argmax(match[i])) for i in range(H)]
    return [
        f"heads are permuted: actual head h equals desired head {perm} for h = 0..{H - 1}: "
        "GQA/MQA key-value heads repeated in tile order (0,1,0,1) instead of "
        "repeat_interleave (0,0,1,1), or a (B, L, H, E) layout read as (B, H, L, E)"
    ]


def case_hints(status: Mapping[str, str], ctx: Mapping[str, Any]) -> list[str]:
    """Hints from which quantities of one SDPA case pass and which fail.

    Parameters
    ----------
    status : mapping
        ``status[quantity]``: ``"PASS"``, ``"FAIL"`` or anything else (not compared).
    ctx : mapping
        The case's :func:`case_context`.

    Returns
    -------
    hints : list of str

    Examples
    --------
    >>> case_hints({"out": "PASS", "dq": "FAIL", "dk": "FAIL", "dv": "PASS"}, {"kind": "sdpa"})[0][:42]
    'the forward and dv are right, dq and dk ar'
    """  # noqa: E501
    if ctx.get("kind", "sdpa") != "sdpa":
        return []
    fails = {q for q, s in status.items() if s == "FAIL"}
    fwd_ok = not fails & {"out", "weights", "lse"} and "out" in status
    p, G = ctx.get("dropout_p") or 0.0, ctx.get("G") or 1
    if fwd_ok and fails:
        return _backward_hints(fails, p, G, bool(ctx.get("broadcast")))
    if "weights" in fails and ctx.get("mask") == "float":
        return [
            "the weights fail in a case with a float mask: the bias is added to the scaled "
            "scores (scale q k^T + B, not scale (q k^T + B)); its gradient is d_attn_mask = dS"
        ]
    if "out" in fails and status.get("weights") == "PASS" and status.get("lse") != "FAIL" and p:
        return [
            "the weights are right but out is not, in a dropout case: the dropout step "
            "(an inverted keep-mask: dropout_mask True = kept; or the 1/(1-p) factor)"
        ]
    if fails == {"weights"} and p > 0:
        return ["only the weights fail, in a dropout case: weights reported after dropout?"]
    return []


def _backward_hints(fails: set[str], p: float, G: int, broadcast: bool) -> list[str]:
    grads = fails & {"dq", "dk", "dv"}
    if p > 0 and grads == {"dv"}:
        return [
            "the forward, dq and dk are right, dv is not, in a dropout case: dv = P_d^T dO "
            "must use the weights after dropout P_d = P * Z / (1-p), not P"
        ]
    if p > 0 and {"dq", "dk"} <= grads:
        return [
            "the forward is right, the gradients are not, in a dropout case: the keep-mask "
            "is missing from the backward (dP = (dO v^T) * Z / (1-p))"
        ]
    if grads and grads <= {"dk", "dv"} and (G > 1 or broadcast):
        what = f"each GQA group of G = {G} query heads" if G > 1 else "the broadcast batch axis"
        return [f"the forward and dq are right, dk and dv are not: dk, dv not summed over {what}"]
    if grads == {"dq", "dk"}:
        return [
            "the forward and dv are right, dq and dk are not: the softmax backward "
            "dS = P * (dP - rowsum(dP * P)) (the row-sum term missing?) or the scale in "
            "dq = scale dS k, dk = scale dS^T q"
        ]
    if fails == {"d_attn_mask"}:
        return ["only d_attn_mask fails: it is dS summed over the mask's broadcast axes"]
    return []
