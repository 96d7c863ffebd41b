r"""Diagnosis: which convention difference commonly produces a given pattern of errors.

:func:`diagnose` reads the elements a comparison found outside its tolerance
and names the usual causes (a scale factor, the fully-masked-row convention,
a causal mask off by one or of the other alignment, GQA heads in tile order,
base-2 log-sum-exp, ...); :func:`shape_hints` does the same for a shape
mismatch. The hints table of ``docs/verify.md`` lists them all.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["diagnose", "shape_hints"]


def shape_hints(shape_a: tuple[int, ...], shape_d: tuple[int, ...]) -> list[str]:
    """Name the likely causes of a shape mismatch (a swapped layout, a missing head axis).

    Examples
    --------
    >>> shape_hints((2, 5, 3, 8), (2, 3, 5, 8))[0][:38]
    'the result looks like the (B, L, H, E)'
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
    return hints


def diagnose(
    a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_], quantity: str
) -> list[str]:
    r"""Name the likely causes of a mismatch from the pattern of its errors.

    Parameters
    ----------
    a, d : ndarray
        Actual and desired values, same shape, float64.
    bad : ndarray of bool
        Elements outside the tolerance.
    quantity : str
        ``"out"``, ``"weights"``, ``"lse"``, ``"dq"``, ...

    Returns
    -------
    hints : list of str
        Human-readable diagnoses, most specific first; empty if none applies.

    Examples
    --------
    >>> d = np.full((2, 3), 0.5)
    >>> diagnose(0.75 * d, d, np.ones((2, 3), bool), "out")[0][:34]
    'actual = 0.75 x desired everywhere'
    """
    hints: list[str] = []
    finite = np.isfinite(d)
    nonfinite = ~np.isfinite(a) & finite
    if nonfinite.any():
        hints.append(
            f"{int(nonfinite.sum())} NaN/inf values where the reference is finite: an unshifted "
            "softmax (exp overflows; subtract the row max), or 0/0 in a fully masked row "
            "(the reference gives weights 0, output 0, lse -inf there)"
        )
    fully_masked = _fully_masked_rows(d, quantity)
    if fully_masked is not None and (bad & fully_masked).any() and not (bad & ~fully_masked).any():
        hints.append(
            "only rows whose every key is masked are wrong: the reference (PyTorch >= 2.5) gives "
            "output 0, weights 0 and lse -inf there; JAX and a -1e9 fill give mean(V) "
            "(softmax of equal scores)"
        )
    ok = finite & np.isfinite(a)
    dd, aa = d[ok], a[ok]
    with np.errstate(invalid="ignore"):
        return hints + _pattern_hints(a, d, aa, dd, ok, bad, quantity)


def _pattern_hints(
    a: NDArray[np.floating], d: NDArray[np.floating], aa: NDArray[np.floating],
    dd: NDArray[np.floating], ok: NDArray[np.bool_], bad: NDArray[np.bool_], quantity: str,
) -> list[str]:  # fmt: skip
    hints: list[str] = []
    if dd.size and np.dot(dd, dd) > 0:
        c = float(np.dot(aa, dd) / np.dot(dd, dd))
        resid = np.max(np.abs(aa - c * dd)) if aa.size else 0.0
        if abs(c - 1) > 1e-3 and resid <= 1e-3 * np.max(np.abs(dd)):
            hints.append(
                f"actual = {c:.4g} x desired everywhere: a uniform scale factor " + _scale_story(c)
            )
    if quantity == "weights" and a.ndim >= 2:
        hints.extend(_weight_hints(a, d, bad))
    if a.ndim >= 3:
        hints.extend(_head_hints(a, d, bad))
    if a.ndim >= 2 and quantity != "lse":
        hints.extend(_row_hints(bad, quantity))
    elif quantity == "lse" and a.ndim >= 1:
        diff = (a - d)[ok]
        if (
            diff.size
            and np.ptp(diff) < 1e-3 * max(1.0, np.max(np.abs(dd)))
            and abs(diff.mean()) > 0
        ):
            t = float(diff.mean())
            hints.append(
                f"lse is off by a constant {t:.4g}"
                + (
                    ": log base 2 instead of natural log?"
                    if np.allclose(a[ok], d[ok] / np.log(2), rtol=1e-3)
                    else ": a missing or extra constant shift (max not added back?)"
                )
            )
        elif np.allclose(a[ok], d[ok] / np.log(2), rtol=1e-3):
            hints.append("lse = desired / ln 2: base-2 log-sum-exp (Triton tutorial); report ln")
    return hints


def _scale_story(c: float) -> str:
    if abs(c * np.log(2) - 1) < 1e-3:
        return (
            "(1/ln 2: a base-2 log-sum-exp, as the Triton tutorial stores; report the natural log)"
        )
    stories = []
    if 0 < c < 1:
        stories.append(f"dropout without the 1/(1-p) rescaling (1-p = {c:.3g})")
    if c == c and c != 0 and abs(c + 1) < 1e-3:
        return "(a sign error in the backward)"
    stories.append(
        "a gradient summed or averaged one time too many (e.g. over GQA groups or heads)"
    )
    return "(" + "; or ".join(stories) + ")"


def _fully_masked_rows(d: NDArray[np.floating], quantity: str) -> NDArray[np.bool_] | None:
    if quantity == "lse":
        return np.isneginf(d)
    if quantity in ("weights", "out") and d.ndim >= 2:
        return np.broadcast_to(np.all(d == 0, axis=-1, keepdims=True), d.shape)
    return None


def _weight_hints(
    a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_]
) -> list[str]:
    hints = []
    rows = a.sum(axis=-1)
    live = d.sum(axis=-1) > 0.5
    if live.any() and not np.allclose(rows[live], 1.0, atol=1e-2):
        cols = a.sum(axis=-2)
        if np.allclose(cols[np.isfinite(cols)], 1.0, atol=1e-2):
            hints.append(
                "columns of the weights sum to 1, rows do not: softmax over the query "
                "axis instead of the key axis"
            )
        else:
            hints.append("rows of the weights do not sum to 1")
    extra = bad & (d == 0) & (a != 0)
    missing = bad & (d != 0) & (a == 0)
    L, S = a.shape[-2:]
    for what, where in (
        ("attends to keys the reference masks", extra),
        ("masks keys the reference attends to", missing),
    ):
        pos = np.argwhere(where.reshape(-1, L, S).any(axis=0))
        if pos.size:
            offsets = sorted(set((pos[:, 1] - pos[:, 0]).tolist()))
            if len(offsets) <= 2:
                diag = ", ".join(f"j = i {'+-'[o < 0]} {abs(o)}" for o in offsets)
                hints.append(
                    f"{what}, on the diagonal {diag}: a causal mask off by one (j < i vs j <= i) "
                    "or the other causal alignment (top-left offset 0, bottom-right "
                    f"S - L = {S - L})"
                )
            else:
                hints.append(
                    f"{what}: inverted mask polarity (True = attend here), "
                    "a wrong causal alignment or a missing mask"
                )
    return hints


def _head_hints(
    a: NDArray[np.floating], d: NDArray[np.floating], bad: NDArray[np.bool_]
) -> list[str]:
    H = a.shape[-3]
    if H < 2:
        return []
    ah = np.moveaxis(a, -3, 0).reshape(H, -1)
    dh = np.moveaxis(d, -3, 0).reshape(H, -1)
    ok = np.all(np.isfinite(ah), axis=0) & np.all(np.isfinite(dh), axis=0)
    ah, dh = ah[:, ok], dh[:, ok]
    if ah.shape[1] == 0:
        return []
    tol = 1e-2 * max(float(np.max(np.abs(dh))) if dh.size else 1.0, 1e-300)
    match = np.array([[np.max(np.abs(ah[i] - dh[j])) <= tol for j in range(H)] for i in range(H)])
    if not match.diagonal().all() and match.any(axis=1).all():
        perm = [int(np.argmax(match[i])) for i in range(H)]
        return [
            f"heads are permuted: actual head h equals desired head {perm} for h = 0..{H - 1}: "
            "GQA/MQA key-value heads repeated in tile order (0,1,0,1) instead of "
            "repeat_interleave (0,0,1,1), or a (B, L, H, E) layout read as (B, H, L, E)"
        ]
    bad_heads = np.flatnonzero(np.moveaxis(bad, -3, 0).reshape(H, -1).any(axis=1))
    if 0 < bad_heads.size < H:
        return [
            f"only heads {bad_heads.tolist()} of {H} are wrong (with GQA, key/value heads "
            "repeated in tile order instead of repeat_interleave leave exactly the heads "
            "where both orders agree right)"
        ]
    return []


def _row_hints(bad: NDArray[np.bool_], quantity: str) -> list[str]:
    axis = -2
    n = bad.shape[axis]
    rows = np.flatnonzero(np.moveaxis(bad, axis, 0).reshape(n, -1).any(axis=1))
    if 0 < rows.size < n:
        name = (
            "query"
            if quantity in ("out", "weights", "dq")
            else "key"
            if quantity in ("dk", "dv")
            else "row"
        )
        return [
            f"only {name} positions {rows.tolist()[:12]} of {n} are wrong (in every batch and "
            "head that fails): typical of causal alignment (top-left vs bottom-right), a "
            "padding mask on the wrong side, or an edge case in the first/last rows"
        ]
    return []
