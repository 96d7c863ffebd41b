r"""Pictures of attention: heatmaps of weights, heads, masks, fusion and training.

matplotlib is imported lazily, inside these functions only, so the rest of the
package needs numpy alone (install the ``plot`` extra for this module).

Every function uses matplotlib's object-oriented API and never pyplot's global
state: it draws into the ``ax`` you pass, or builds a new
:class:`matplotlib.figure.Figure` (rendered by Agg, so it works headless), and
returns the Figure. Nothing calls ``plt.show()``; display the Figure in a
notebook, or pass ``ax`` from your own ``plt.subplots()``. :func:`save_figure`
writes PNGs without version metadata, so regenerated files are byte-identical.

Shapes (letter legend)::

    H heads    N fusion branches    L queries (rows)    S keys (columns)

    weights (L, S) or (H, L, S), values in [0, 1]; row i = what query i attends to;
    a fusion's branch_weights (N, L, S).
    mask    (L, S) bool, True = the key takes part (the polarity of
            numpy_attention.masks and torch's boolean attn_mask).

Masked cells (``mask`` False) are drawn in light grey, outside the colour
scale, so they cannot be confused with small weights (dark purple). The colour
scale is fixed to [0, 1] so that every map is comparable with every other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._arrays import broadcast_as

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

__all__ = [
    "MASKED_COLOR",
    "MAX_ANNOTATE",
    "MAX_LABEL",
    "check_weights",
    "plot_attention",
    "plot_heads",
    "plot_cross_attention",
    "plot_fusion",
    "plot_mask_gallery",
    "plot_training",
    "plot_computation_graph",
    "select_heads",
    "save_figure",
]

#: Links weaker than this are not drawn in the cross-attention diagram (the figure says so).
MIN_LINK = 0.02
#: Colour of masked cells: light grey, not on the viridis scale.
MASKED_COLOR = "#d0d0d0"
#: ``annotate=True`` writes numbers only in maps of at most this many rows and columns
#: (beyond, they overlap and drawing them takes minutes).
MAX_ANNOTATE = 30
#: Longer labels are cut to this many characters (an ellipsis marks the cut).
MAX_LABEL = 32
_CMAP = "viridis"
_TOL = 1e-6  # weights may exceed [0, 1] by float rounding, no more


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


_RANKS = {2: "shape (L, S)", 3: "shape (H, L, S)"}
#: The ranks ``plot`` reads: a map, heads, a batch of heads, a stack of layers.
_ANY = "2-D (L, S), 3-D (H, L, S), 4-D (B, H, L, S) or 5-D (layers, B, H, L, S) weights"


def check_weights(
    weights: ArrayLike, name: str = "weights", ndim: int | tuple[int, ...] = 2, nan_hint: str = ""
) -> NDArray[np.float64]:
    r"""Return attention weights as float64 after checking dtype, rank, size, finiteness and range.

    The one check of a weights array, shared by the plotting functions and
    ``plot``'s file reader.

    Parameters
    ----------
    weights : array_like
        Attention weights, values in [0, 1].
    name : str, optional
        How messages name the array (a file name for ``plot``).
    ndim : int or tuple of int, optional
        The accepted rank(s): 2 for ``(L, S)``, 3 for ``(H, L, S)``.
    nan_hint : str, optional
        Appended to the message about NaN/inf.

    Returns
    -------
    w : ndarray of float64

    Raises
    ------
    TypeError
        If ``weights`` is not a real numeric array.
    ValueError
        If its rank is not accepted, it is empty, holds NaN/inf, or has values
        outside [0, 1] (beyond float rounding of 1e-6).

    Examples
    --------
    >>> check_weights([[0.25, 0.75]]).dtype
    dtype('float64')
    >>> check_weights(np.ones(3))
    Traceback (most recent call last):
    ...
    ValueError: weights: expected shape (L, S), got shape (3,)
    """
    w = np.asarray(weights)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric array of attention weights, got {w.dtype}")
    ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if w.ndim not in ranks:
        want = (_RANKS[ranks[0]] if len(ranks) == 1
                else _ANY if 5 in ranks else "2-D (L, S) or 3-D (H, L, S) weights")  # fmt: skip
        hint = " (save one batch element, e.g. w[0])" if w.ndim == 4 and 4 not in ranks else ""
        raise ValueError(f"{name}: expected {want}, got shape {w.shape}{hint}")
    if w.size == 0:
        raise ValueError(f"{name}: the array is empty (shape {w.shape})")
    x = w.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "NaN" if np.isnan(x).any() else "inf"
        raise ValueError(
            f"{name}: contains {what} ({int(bad.sum())} entries, first at {first}){nan_hint}"
        )
    lo, hi = float(x.min()), float(x.max())
    if lo < -_TOL or hi > 1 + _TOL:
        raise ValueError(
            f"{name}: values must lie in [0, 1] (attention weights, not scores), "
            f"got min {lo:.6g} and max {hi:.6g}"
        )
    return x


def _check_weights(weights: ArrayLike, ndim: int, name: str = "weights") -> NDArray[np.float64]:
    """:func:`check_weights` as the drawing functions call it (NaN: point to ``mask=``)."""
    hint = "; weights must be finite (mark masked cells with mask=)"
    return check_weights(weights, name, ndim, hint)


def _check_mask(mask: ArrayLike | None, shape: tuple[int, ...]) -> NDArray[np.bool_] | None:
    """Broadcast a boolean keep-mask (True = attend) to ``shape``."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be boolean (True = attend), got dtype {m.dtype}")
    return broadcast_as(m, shape, "mask")


def _short(text: str, limit: int = MAX_LABEL) -> str:
    """``text`` cut to ``limit`` characters, the cut marked by an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _check_labels(labels: Sequence[Any] | None, n: int, name: str) -> list[str] | None:
    """Labels as strings, each at most :data:`MAX_LABEL` characters; one per row/column."""
    if labels is None:
        return None
    out = [_short(str(t)) for t in labels]
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} labels, expected {n} (one per row/column)")
    return out


# ---------------------------------------------------------------------------
# Drawing helpers
# ---------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """Make a Figure with an Agg canvas, outside pyplot (no global state, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _cmap() -> Any:
    import matplotlib

    return matplotlib.colormaps[_CMAP].with_extremes(bad=MASKED_COLOR)


def _set_ticks(ax: Axes, labels: list[str] | None, n: int, axis: str) -> None:
    """Token labels on one axis; x labels rotate when long or many."""
    if labels is None:
        if n > 16:
            return  # let matplotlib choose integer ticks
        labels = [str(i) for i in range(n)]
    if axis == "x":
        ax.set_xticks(np.arange(n), labels)
        if max(len(t) for t in labels) > 3 or n > 12:
            for t in ax.get_xticklabels():
                t.set_rotation(45)
                t.set_horizontalalignment("right")
                t.set_rotation_mode("anchor")
    else:
        ax.set_yticks(np.arange(n), labels)


def _annotate(ax: Axes, w: NDArray[np.float64], keep: NDArray[np.bool_] | None) -> None:
    """Write each weight in its cell, dark on light cells and light on dark ones.

    Nothing is written in a map larger than :data:`MAX_ANNOTATE` in either direction.
    """
    if max(w.shape) > MAX_ANNOTATE:
        return
    for i, j in np.ndindex(*w.shape):
        if keep is not None and not keep[i, j]:
            continue
        color = "black" if w[i, j] > 0.6 else "white"
        size = 9 if max(w.shape) <= 12 else 7  # readable in small maps, no overlap in large ones
        ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=size, color=color)


def _draw_map(
    ax: Axes,
    w: NDArray[np.float64],
    keep: NDArray[np.bool_] | None,
    query_labels: list[str] | None,
    key_labels: list[str] | None,
    annotate: bool,
    xlabel: str = "key",
    ylabel: str = "query",
) -> AxesImage:
    """One heatmap, rows = queries, columns = keys, fixed [0, 1] scale."""
    data = w if keep is None else np.ma.masked_array(w, mask=~keep)
    im = ax.imshow(data, cmap=_cmap(), vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    _set_ticks(ax, query_labels, w.shape[0], "y")
    _set_ticks(ax, key_labels, w.shape[1], "x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if annotate:
        _annotate(ax, w, keep)
    return im


def _masked_legend(ax: Axes, below: bool = False) -> None:
    """Add a "masked" swatch: under ``ax`` (a colour bar) or at its lower right outside."""
    from matplotlib.patches import Patch

    patch = Patch(facecolor=MASKED_COLOR, edgecolor="0.5", label="masked")
    style: dict[str, Any] = {"fontsize": 8, "frameon": False, "handlelength": 1.2}
    if below:
        ax.legend(handles=[patch], loc="upper center", bbox_to_anchor=(0.5, -0.02), **style)
    else:
        ax.legend(handles=[patch], loc="upper left", bbox_to_anchor=(1.0, -0.02), **style)


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def plot_attention(
    weights: ArrayLike,
    query_labels: Sequence[Any] | None = None,
    key_labels: Sequence[Any] | None = None,
    ax: Axes | None = None,
    *,
    mask: ArrayLike | None = None,
    title: str | None = None,
    annotate: bool = False,
    colorbar: bool = True,
    xlabel: str = "key",
    ylabel: str = "query",
) -> Figure:
    r"""Heatmap of one attention map: rows are queries, columns are keys.

    Parameters
    ----------
    weights : array_like, shape (L, S)
        Attention weights in [0, 1]; row ``i`` is query ``i``'s distribution over keys.
    query_labels, key_labels : sequence, optional
        Token labels of the rows (length L) and columns (length S). Default: indices.
        Long or many key labels are rotated; labels longer than :data:`MAX_LABEL`
        characters are cut.
    ax : matplotlib.axes.Axes, optional
        Draw here; default: a new Figure.
    mask : array_like of bool, optional
        Broadcastable to (L, S), True = attend. False cells are drawn in
        :data:`MASKED_COLOR`, with a "masked" legend entry under the colour bar.
    title : str, optional
    annotate : bool, optional
        Write each weight in its cell; ignored for maps larger than
        :data:`MAX_ANNOTATE` x :data:`MAX_ANNOTATE` (the numbers would overlap).
    colorbar : bool, optional
        Add a colour bar (default True). The scale is always [0, 1].
    xlabel, ylabel : str, optional
        Axis titles. Default "key" and "query".

    Returns
    -------
    fig : matplotlib.figure.Figure
        The Figure holding the heatmap (``ax.figure`` when ``ax`` is given).

    Raises
    ------
    ValueError
        If ``weights`` is not 2-D, is empty, holds NaN/inf or values outside
        [0, 1]; if a label list has the wrong length; if ``mask`` does not broadcast.
    TypeError
        If ``weights`` is not a real array or ``mask`` is not boolean.

    Examples
    --------
    >>> fig = plot_attention([[0.9, 0.1], [0.0, 1.0]], ["a", "b"], ["x", "y"])
    >>> fig.axes[0].images[0].get_clim()
    (0.0, 1.0)
    >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
    ['x', 'y']
    """
    w = _check_weights(weights, 2)
    keep = _check_mask(mask, w.shape)
    qlab = _check_labels(query_labels, w.shape[0], "query_labels")
    klab = _check_labels(key_labels, w.shape[1], "key_labels")
    if ax is None:
        L, S = w.shape
        label_w = 0.07 * max(map(len, qlab or [""]))  # inches for the longest query label
        label_h = 0.05 * max(map(len, klab or [""]))  # rotated key labels hang below
        width, height = min(2.0 + 0.45 * S, 12.0) + label_w, min(1.6 + 0.4 * L, 10.0) + label_h
        ax = _new_figure(width, height).add_subplot()
    im = _draw_map(ax, w, keep, qlab, klab, annotate, xlabel, ylabel)
    if title:
        ax.set_title(title)
    cbar = ax.figure.colorbar(im, ax=ax, label="weight", fraction=0.08) if colorbar else None
    if keep is not None and not keep.all():
        _masked_legend(ax if cbar is None else cbar.ax, below=cbar is not None)
    return cast("Figure", ax.figure)


def select_heads(weights: Any, layer: int = 0, batch: int = 0) -> NDArray[np.float64]:
    r"""Pick one layer and one batch element of a model's attention maps: ``(H, L, S)``.

    Hugging Face (``output_attentions=True``) and bertviz hand over a tuple with one
    ``(B, H, L, S)`` array per layer; ``plot`` reads the same stack saved as one array
    ``(layers, B, H, L, S)``, for instance with
    ``np.save("attn.npy", torch.stack(out.attentions).float().numpy())``.

    Parameters
    ----------
    weights : tuple or list of array_like (B, H, L, S), or array_like
        One array per layer; or one array of shape ``(layers, B, H, L, S)``,
        ``(B, H, L, S)`` (``layer`` is then ignored) or ``(H, L, S)`` (returned as is).
    layer, batch : int, optional
        Which layer and which batch element (negative counts from the end, as in NumPy).

    Returns
    -------
    w : ndarray of float64, shape (H, L, S)

    Raises
    ------
    ValueError
        If the layers differ in shape, the rank is not 3 to 5, or ``layer`` or ``batch`` is out
        of range (the message names the range).

    Examples
    --------
    >>> per_layer = (np.full((2, 4, 3, 3), 1 / 3), np.full((2, 4, 3, 3), 1 / 3))  # 2 layers
    >>> select_heads(per_layer, layer=1, batch=0).shape
    (4, 3, 3)
    """
    if isinstance(weights, (tuple, list)) and weights and np.ndim(weights[0]) == 4:
        shapes = {np.shape(w) for w in weights}
        if len(shapes) != 1:
            raise ValueError(f"the layers' attention maps differ in shape: {sorted(shapes)}")
        weights = np.stack([np.asarray(w) for w in weights])
    w = check_weights(weights, "weights", (3, 4, 5))
    if w.ndim == 5:
        if not -w.shape[0] <= layer < w.shape[0]:
            raise ValueError(f"layer must lie in [0, {w.shape[0]}), got {layer}")
        w = w[layer]
    if w.ndim == 4:
        if not -w.shape[0] <= batch < w.shape[0]:
            raise ValueError(f"batch must lie in [0, {w.shape[0]}), got {batch}")
        w = w[batch]
    return w


def plot_heads(
    weights: ArrayLike,
    query_labels: Sequence[Any] | None = None,
    key_labels: Sequence[Any] | None = None,
    *,
    mask: ArrayLike | None = None,
    ncols: int | None = None,
    head_names: Sequence[str] | None = None,
    title: str | None = None,
    annotate: bool = False,
    layer: int = 0,
    batch: int = 0,
) -> Figure:
    r"""Draw a grid of attention maps, one per head, with one shared [0, 1] colour bar.

    Parameters
    ----------
    weights : array_like, shape (H, L, S), or a model's stack of layers
        Per-head attention weights in [0, 1]; or a tuple of per-layer ``(B, H, L, S)``
        arrays (Hugging Face's ``attentions``, bertviz), or one array ``(layers, B, H, L, S)``
        or ``(B, H, L, S)``: ``layer`` and ``batch`` pick the maps (:func:`select_heads`).
    query_labels, key_labels : sequence, optional
        Row (length L) and column (length S) token labels, shared by every head.
    mask : array_like of bool, optional
        Broadcastable to (H, L, S), True = attend; False cells are drawn in
        :data:`MASKED_COLOR`, with a "masked" legend entry under the colour bar.
    ncols : int, optional
        Panels per row; default ``min(H, 4)``.
    head_names : sequence of str, optional
        Panel titles; default ``"head 0"``, ``"head 1"``, ...
    title : str, optional
        Figure title.
    annotate : bool, optional
        Write each weight in its cell (maps up to :data:`MAX_ANNOTATE` x
        :data:`MAX_ANNOTATE` only).
    layer, batch : int, optional
        Which layer and batch element of a stack to draw (default the first of each).

    Returns
    -------
    fig : matplotlib.figure.Figure
        ``H`` heatmap axes (in head order) followed by the colour-bar axes.

    Raises
    ------
    ValueError
        If ``weights`` is not 3-D or not in [0, 1]; wrong label or name counts.

    Examples
    --------
    >>> fig = plot_heads(np.full((3, 2, 4), 0.25))
    >>> sum(1 for a in fig.axes if a.images)
    3
    """
    stacked = isinstance(weights, (tuple, list)) or np.ndim(weights) > 3
    w = select_heads(weights, layer, batch) if stacked else _check_weights(weights, 3)
    H, L, S = w.shape
    keep = _check_mask(mask, w.shape)
    qlab = _check_labels(query_labels, L, "query_labels")
    klab = _check_labels(key_labels, S, "key_labels")
    names = _check_labels(head_names, H, "head_names") or [f"head {h}" for h in range(H)]
    ncols = min(H, 4) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = -(-H // ncols)
    panel_w, panel_h = min(1.2 + 0.32 * S, 5.0), min(1.0 + 0.3 * L, 5.0)
    fig = _new_figure(ncols * panel_w + 1.0, nrows * panel_h + (0.5 if title else 0.1))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im, used = None, []
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.remove()
            continue
        used.append(ax)
        im = _draw_map(
            ax, w[h], None if keep is None else keep[h], qlab, klab, annotate,
            ylabel="query" if h % ncols == 0 else "",
        )  # fmt: skip
        if h % ncols:
            ax.set_yticklabels([])
        ax.set_title(names[h])
    assert im is not None  # H >= 1
    cbar = fig.colorbar(im, ax=used, label="weight", fraction=0.04, pad=0.01, aspect=30)
    if keep is not None and not keep.all():
        _masked_legend(cbar.ax, below=True)
    if title:
        fig.suptitle(title)
    return fig


def plot_cross_attention(
    weights: ArrayLike,
    query_tokens: Sequence[Any],
    key_tokens: Sequence[Any],
    *,
    title: str | None = None,
    query_name: str = "S1",
    key_name: str = "S2",
    annotate: bool = True,
) -> Figure:
    r"""Cross-attention between two sentences: a heatmap and a token-alignment diagram.

    Left: the weights, queries from sentence ``query_name`` as rows, keys from
    ``key_name`` as columns. Right: the same weights as links from each query
    token (left column) to each key token (right column), line width and
    opacity proportional to the weight; the strongest key of each query is
    drawn in orange.

    Parameters
    ----------
    weights : array_like, shape (L, S)
        ``softmax(Q_1 K_2^T / sqrt(E))`` for one head, in [0, 1].
    query_tokens : sequence of str, length L
        Tokens of the query sentence.
    key_tokens : sequence of str, length S
        Tokens of the key/value sentence.
    title : str, optional
    query_name, key_name : str, optional
        Names of the two sentences, used in axis titles. Default "S1", "S2".
    annotate : bool, optional
        Write each weight in its cell (default True; maps up to
        :data:`MAX_ANNOTATE` x :data:`MAX_ANNOTATE` only).

    Returns
    -------
    fig : matplotlib.figure.Figure
        Axes: heatmap, colour bar, alignment diagram.

    Raises
    ------
    ValueError
        Bad weights or token counts (see :func:`plot_attention`).

    Examples
    --------
    >>> fig = plot_cross_attention([[0.7, 0.3]], ["cat"], ["le", "chat"])
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['cat']
    """
    w = _check_weights(weights, 2)
    L, S = w.shape
    qlab = _check_labels(query_tokens, L, "query_tokens")
    klab = _check_labels(key_tokens, S, "key_tokens")
    fig = _new_figure(min(2.5 + 0.55 * S, 11.0) + 3.2, min(1.8 + 0.42 * max(L, S), 9.0))
    ax_map, ax_link = fig.subplots(1, 2, width_ratios=[max(S, 2), 4])
    im = _draw_map(
        ax_map, w, None, qlab, klab, annotate, f"{key_name} (keys)", f"{query_name} (queries)"
    )
    fig.colorbar(im, ax=ax_map, label="weight", fraction=0.08)
    _draw_links(ax_link, w, qlab or [], klab or [], query_name, key_name)
    if title:
        fig.suptitle(title)
    return fig


def _draw_links(
    ax: Axes, w: NDArray[np.float64], qlab: list[str], klab: list[str], qname: str, kname: str
) -> None:
    """Bipartite diagram: query tokens on the left, key tokens on the right."""
    L, S = w.shape
    n = max(L, S)
    yq = np.linspace(0, n - 1, L) if L > 1 else np.array([(n - 1) / 2])
    yk = np.linspace(0, n - 1, S) if S > 1 else np.array([(n - 1) / 2])
    best = w.argmax(axis=1)
    for i, j in np.ndindex(L, S):
        if w[i, j] < MIN_LINK:
            continue
        top = j == best[i]
        ax.plot(
            [0, 1], [yq[i], yk[j]], color="tab:orange" if top else "tab:blue",
            lw=0.5 + 4.0 * w[i, j], alpha=0.25 + 0.75 * w[i, j], solid_capstyle="round",
        )  # fmt: skip
    for y, t in zip(yq, qlab, strict=True):
        ax.text(-0.04, y, t, ha="right", va="center", fontsize=9)
    for y, t in zip(yk, klab, strict=True):
        ax.text(1.04, y, t, ha="left", va="center", fontsize=9)
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xticks([0, 1], [qname, kname])
    ax.xaxis.set_ticks_position("top")
    ax.set_yticks([])
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(
        "one line per (query, key), width and\nopacity = weight; orange: each query's\n"
        f"strongest key, blue: the others;\nweights below {MIN_LINK:g} are not drawn",
        fontsize=8,
    )


def plot_fusion(
    branch_weights: ArrayLike,
    alpha: ArrayLike,
    query_labels: Sequence[Any] | None = None,
    key_labels: Sequence[Any] | None = None,
    *,
    branch_names: Sequence[str] | None = None,
    title: str | None = None,
    mask: ArrayLike | None = None,
) -> Figure:
    r"""Weighted fusion of attention branches: each branch's map beside a bar chart of alpha.

    Parameters
    ----------
    branch_weights : array_like, shape (N, L, S)
        The attention map of each of the ``N`` branches, in [0, 1].
    alpha : array_like, shape (N,)
        The fusion coefficients (softmax over branches: non-negative, sum 1).
    query_labels, key_labels : sequence, optional
        Token labels of rows and columns, shared by every branch.
    branch_names : sequence of str, optional
        Default ``"branch 0"``, ``"branch 1"``, ...
    title : str, optional
        Figure title (``$...$`` is mathtext).
    mask : array_like of bool, optional
        Broadcastable to (N, L, S), True = attend; False cells are drawn in
        :data:`MASKED_COLOR` (as :func:`plot_heads` does), with a "masked" legend entry.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Axes: ``N`` heatmaps, the alpha bar chart, the colour bar.

    Raises
    ------
    ValueError
        If ``alpha`` is not 1-D of length N or not in [0, 1]; bad weights or labels.

    Examples
    --------
    >>> fig = plot_fusion(np.full((2, 3, 3), 1 / 3), [0.25, 0.75])
    >>> [float(p.get_height()) for p in fig.axes[2].patches]
    [0.25, 0.75]
    """
    w = _check_weights(branch_weights, 3, "branch_weights")
    N, L, S = w.shape
    a = np.asarray(alpha, dtype=np.float64)
    if a.shape != (N,):
        raise ValueError(f"alpha must have shape (N,) = ({N},), got shape {a.shape}")
    _check_weights(a[None, :], 2, "alpha")
    qlab = _check_labels(query_labels, L, "query_labels")
    klab = _check_labels(key_labels, S, "key_labels")
    names = _check_labels(branch_names, N, "branch_names") or [f"branch {n}" for n in range(N)]
    keep = _check_mask(mask, w.shape)
    ncols = 2 if N >= 2 else 1  # two columns: readable in a README column (about 800 px)
    nrows = -(-(N + 1) // ncols)
    panel_w, panel_h = min(1.3 + 0.26 * S, 3.6), min(1.2 + 0.26 * L, 3.6)
    fig = _new_figure(ncols * panel_w + 1.0, nrows * panel_h + (0.5 if title else 0.1))
    grid = fig.subplots(nrows, ncols, squeeze=False).flat
    axes = [next(grid) for _ in range(N + 1)]
    for ax in grid:
        ax.remove()
    im = None
    for n in range(N):
        im = _draw_map(
            axes[n], w[n], None if keep is None else keep[n], qlab, klab, False,
            ylabel="query" if n % ncols == 0 else "",
        )  # fmt: skip
        axes[n].tick_params(labelsize=7)
        axes[n].set_title(f"{names[n]}\n$\\alpha_{n}$ = {a[n]:.2f}", fontsize=9)
    bar = axes[N]
    bars = bar.bar(np.arange(N), a, color="tab:orange")
    bar.bar_label(bars, fmt="%.2f", fontsize=8)
    bar.set_xticks(np.arange(N), names, rotation=45, ha="right", rotation_mode="anchor")
    bar.set_ylim(0, 1.05)
    bar.set_ylabel(r"$\alpha_r$ (fusion weight)")
    bar.set_title(r"weights $\alpha_r$ (they sum to 1)", fontsize=9)
    bar.tick_params(labelsize=7)
    assert im is not None  # N >= 1
    cbar = fig.colorbar(im, ax=list(axes[:N]), label="weight", fraction=0.05)
    if keep is not None and not keep.all():
        _masked_legend(cbar.ax, below=True)
    if title:
        fig.suptitle(title)
    return fig


#: The forward chain of chapter 2: node, its symbol, the equation that makes it from the last.
GRAPH_NODES = (
    ("S", r"$S$", "(2.1)"),
    ("S~", r"$\tilde S$", "(2.2)"),
    ("P", r"$P$", "(2.3)"),
    ("P~", r"$\tilde P$", "(2.4)"),
    ("O", r"$O$", "(2.5)"),
)
#: The backward arrows, from the gradient of a node to the gradient of the one before it.
GRAPH_BACKWARD = (
    ("O", "P~", r"$d\tilde P = dO\,V^\top$", "(2.10)"),
    ("P~", "P", r"$dP = d\tilde P \odot Z/(1-p_\mathrm{drop})$", "(2.11)"),
    ("P", "S~", r"$dS = P \odot (dP - D)$", "(2.12)-(2.13)"),
    ("S~", "S", r"$dS$ on allowed entries", "(2.2)"),
)


def plot_computation_graph(*, title: str | None = None) -> Figure:
    r"""Chapter 2's computation graph: forward arrows above, backward arrows below.

    The forward runs :math:`Q, K \to S \to \tilde S \to P \to \tilde P \to O` (with
    :math:`V` entering at :math:`O`), each arrow labelled with the equation it computes; the
    backward arrows run the other way, labelled with the equation that undoes each step, and
    the gradients leave the graph at :math:`dV` (Eq. (2.10)) and :math:`dQ`, :math:`dK`
    (Eq. (2.14)).

    Parameters
    ----------
    title : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_computation_graph()
    >>> sorted(t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("(2.1"))
    ['(2.1)', '(2.10)', '(2.11)', '(2.12)-(2.13)', '(2.14)']
    """
    fig = _new_figure(8.0, 3.4)
    ax = fig.add_subplot()
    x = {name: 1.6 * (n + 1) for n, (name, _, _) in enumerate(GRAPH_NODES)}
    box = {"boxstyle": "round,pad=0.35", "facecolor": "#eef3fb", "edgecolor": "tab:blue"}
    fwd = {"arrowstyle": "-|>", "color": "tab:blue", "lw": 1.4}
    bwd = {"arrowstyle": "-|>", "color": "tab:orange", "lw": 1.4}
    ax.text(0.0, 0.0, "$Q, K$", ha="center", va="center", fontsize=12, bbox=box)
    ax.text(x["O"], 1.0, "$V$", ha="center", va="center", fontsize=12, bbox=box)
    ax.annotate("", (x["O"], 0.25), (x["O"], 0.8), arrowprops=fwd)
    previous = 0.0
    for name, symbol, eq in GRAPH_NODES:
        ax.text(x[name], 0.0, symbol, ha="center", va="center", fontsize=13, bbox=box)
        ax.annotate("", (x[name] - 0.35, 0.0), (previous + 0.35, 0.0), arrowprops=fwd)
        ax.text((x[name] + previous) / 2, 0.18, eq, ha="center", fontsize=8, color="tab:blue")
        previous = x[name]
    ax.text(x["O"] + 1.0, 0.0, r"$\mathcal{L}$", ha="center", va="center", fontsize=13)
    ax.annotate("", (x["O"] + 0.8, 0.0), (x["O"] + 0.35, 0.0), arrowprops=fwd)
    for src, dst, formula, eq in GRAPH_BACKWARD:
        ax.annotate("", (x[dst] + 0.2, -0.55), (x[src] - 0.2, -0.55), arrowprops=bwd)
        mid = (x[src] + x[dst]) / 2
        ax.text(mid, -0.75, eq, ha="center", fontsize=8, color="tab:orange")
        ax.text(mid, -1.05, formula, ha="center", fontsize=7)
    ax.annotate("", (x["O"] + 0.25, 0.75), (x["O"] + 0.25, -0.4), arrowprops=bwd)
    ax.text(
        x["O"] + 0.35, 0.45, "$dV = \\tilde P^\\top dO$  (2.10)", fontsize=7, color="tab:orange"
    )
    ax.annotate("", (0.0, -0.35), (x["S"] - 0.2, -0.55), arrowprops=bwd)
    ax.text(0.0, -0.75, "(2.14)", ha="center", fontsize=8, color="tab:orange")
    ax.text(0.0, -1.05, r"$dQ = \mathrm{scale}\, dS\,K$" "\n" r"$dK = \mathrm{scale}\, dS^\top Q$",
            ha="center", va="top", fontsize=7)  # fmt: skip
    ax.text(x["O"] + 1.0, -0.55, "$dO$", ha="center", va="center", fontsize=11)
    ax.annotate("", (x["O"] + 0.2, -0.55), (x["O"] + 0.8, -0.55), arrowprops=bwd)
    ax.text(-0.7, 0.55, "forward", fontsize=9, color="tab:blue")
    ax.text(-0.7, -1.5, "backward", fontsize=9, color="tab:orange")
    ax.set_xlim(-0.8, x["O"] + 1.4)
    ax.set_ylim(-1.65, 1.3)
    ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def plot_mask_gallery(
    masks: Mapping[str, ArrayLike], *, ncols: int | None = None, title: str | None = None
) -> Figure:
    r"""Boolean masks side by side: dark cells attend, light grey cells are masked.

    Parameters
    ----------
    masks : mapping of str to array_like of bool, each of shape (L, S)
        Panel title -> mask (True = the key takes part), e.g. from
        :func:`numpy_attention.masks.causal_mask`.
    ncols : int, optional
        Panels per row; default ``min(len(masks), 4)``.
    title : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure
        One axes per mask, in the mapping's order.

    Raises
    ------
    ValueError
        If ``masks`` is empty or a mask is not 2-D.
    TypeError
        If a mask is not boolean.

    Examples
    --------
    >>> from numpy_attention.masks import causal_mask
    >>> fig = plot_mask_gallery({"causal": causal_mask(3, 3)})
    >>> fig.axes[0].images[0].get_array().astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if not masks:
        raise ValueError("masks must hold at least one mask")
    items = []
    for name, m in masks.items():
        arr = np.asarray(m)
        if arr.dtype != np.bool_:
            raise TypeError(f"mask {name!r} must be boolean (True = attend), got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"mask {name!r} must have shape (L, S), got shape {arr.shape}")
        items.append((str(name), arr))
    ncols = min(len(items), 4) if ncols is None else int(ncols)
    nrows = -(-len(items) // ncols)
    L = max(a.shape[0] for _, a in items)
    S = max(a.shape[1] for _, a in items)
    panel_w, panel_h = min(1.2 + 0.3 * S, 4.5), min(1.1 + 0.3 * L, 4.5)
    fig = _new_figure(ncols * panel_w, nrows * panel_h + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    cmap = ListedColormap([MASKED_COLOR, "#2b6ca3"])
    for k, ax in enumerate(axes.flat):
        if k >= len(items):
            ax.remove()
            continue
        name, m = items[k]
        ax.imshow(m, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(np.arange(m.shape[1]), minor=False)
        ax.set_yticks(np.arange(m.shape[0]))
        ax.set_xticks(np.arange(m.shape[1] + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(m.shape[0] + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", lw=1.0)
        ax.tick_params(which="minor", length=0)
        ax.tick_params(labelsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("key j", fontsize=8)
        ax.set_ylabel("query i", fontsize=8)
    handles = [
        Patch(facecolor="#2b6ca3", label="attends (True)"),
        Patch(facecolor=MASKED_COLOR, label="masked (False)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_training(
    losses: ArrayLike,
    learned: ArrayLike,
    ideal: ArrayLike,
    *,
    query_labels: Sequence[Any] | None = None,
    key_labels: Sequence[Any] | None = None,
    accuracy: float | None = None,
    match: float | None = None,
    title: str | None = None,
) -> Figure:
    r"""Draw a training run: the loss curve, the learned attention map and the ideal one.

    Parameters
    ----------
    losses : array_like, shape (T,)
        Training loss at each step (drawn on a log scale).
    learned, ideal : array_like, shape (L, S)
        The model's attention weights (e.g. averaged over a test batch) and the
        pattern that solves the task, in [0, 1].
    query_labels, key_labels : sequence, optional
        Row and column labels of the two maps.
    accuracy, match : float, optional
        Test accuracy and the fraction of queries whose strongest key is the
        ideal one; shown in the titles when given.
    title : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure
        Axes: loss curve, learned map, ideal map, colour bar.

    Raises
    ------
    ValueError
        If ``losses`` is not a non-empty 1-D finite array, or the maps differ in
        shape or are not valid weights.

    Examples
    --------
    >>> fig = plot_training([2.0, 1.0, 0.5], np.eye(2), np.eye(2))
    >>> fig.axes[0].get_yscale()
    'log'
    """
    loss = np.asarray(losses, dtype=np.float64)
    if loss.ndim != 1 or loss.size == 0 or not np.all(np.isfinite(loss)):
        raise ValueError(f"losses must be a non-empty 1-D finite array, got shape {loss.shape}")
    got = _check_weights(learned, 2, "learned")
    want = _check_weights(ideal, 2, "ideal")
    if got.shape != want.shape:
        raise ValueError(f"learned has shape {got.shape} but ideal has shape {want.shape}")
    L, S = got.shape
    qlab = _check_labels(query_labels, L, "query_labels")
    klab = _check_labels(key_labels, S, "key_labels")
    side = min(1.6 + 0.3 * max(L, S), 5.0)
    fig = _new_figure(4.2 + 2 * side + 1.0, side + (0.5 if title else 0.2))
    ax_loss, ax_got, ax_want = fig.subplots(1, 3, width_ratios=[1.3, 1.0, 1.0])
    ax_loss.plot(np.arange(1, loss.size + 1), loss, color="tab:blue", lw=1.0)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_loss.set_title(f"training loss (final {loss[-1]:.3g})", fontsize=10)
    ax_loss.grid(True, which="both", alpha=0.3)
    got_title = "learned attention"
    if match is not None:
        got_title += f"\nargmax on ideal key: {match:.0%}"
    if accuracy is not None:
        got_title += f", accuracy {accuracy:.1%}"
    _draw_map(ax_got, got, None, qlab, klab, False, "key position", "query position")
    ax_got.set_title(got_title, fontsize=10)
    im = _draw_map(ax_want, want, None, qlab, klab, False, "key position", "")
    ax_want.set_title("ideal attention", fontsize=10)
    fig.colorbar(im, ax=[ax_got, ax_want], label="weight", fraction=0.05)
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str | PathLike[str] | IO[bytes], dpi: int = 110) -> None:
    r"""Write ``fig`` to ``path`` reproducibly (no software-version metadata).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str, path-like or binary file object
        Where to write; the format is always PNG.
    dpi : int, optional
        Resolution. Default 110.

    Notes
    -----
    matplotlib stamps PNGs with ``Software: Matplotlib version ...``; this
    writes ``metadata={"Software": None}`` so the bytes depend only on the
    drawing (and the installed fonts/FreeType, which the same machine keeps).

    Examples
    --------
    >>> import io
    >>> buf = io.BytesIO()
    >>> save_figure(plot_attention(np.eye(2)), buf)
    >>> b"Matplotlib" in buf.getvalue()
    False
    """
    fig.savefig(path, dpi=dpi, format="png", metadata={"Software": None})
