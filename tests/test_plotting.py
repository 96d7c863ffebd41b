"""What the plotting functions draw: the pixels' data, the labels, the colour scale, the panels."""

import io
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from numpy_attention.masks import causal_mask  # noqa: E402
from numpy_attention.plotting import (  # noqa: E402
    MASKED_COLOR,
    plot_attention,
    plot_cross_attention,
    plot_fusion,
    plot_heads,
    plot_mask_gallery,
    plot_training,
    save_figure,
)
from numpy_attention.softmax import softmax  # noqa: E402


def _weights(*shape, seed=0):
    return softmax(np.random.default_rng(seed).normal(size=shape) * 2)


def _image_axes(fig):
    return [a for a in fig.axes if a.images and a.get_label() != "<colorbar>"]


def _texts(labels):
    return [t.get_text() for t in labels]


def test_plot_attention_draws_the_weights_with_token_labels_on_a_fixed_0_1_scale():
    """The image array is the weights (rows = queries), ticks are the tokens, clim is (0, 1)."""
    w = _weights(3, 5)
    q, k = ["the", "cat", "sat"], ["le", "chat", "est", "assis", "."]
    fig = plot_attention(w, q, k)
    (ax,) = _image_axes(fig)
    im = ax.images[0]
    np.testing.assert_array_equal(np.asarray(im.get_array()), w)
    assert im.get_clim() == (0.0, 1.0)
    assert _texts(ax.get_yticklabels()) == q
    assert _texts(ax.get_xticklabels()) == k
    assert ax.get_xlabel() == "key" and ax.get_ylabel() == "query"
    assert len(fig.axes) == 2  # the heatmap and its colour bar


def test_plot_attention_rotates_long_key_labels_only():
    """Long tokens on the key axis are rotated so they do not overlap; short ones stay level."""
    w = _weights(2, 2)
    long = plot_attention(w, ["a", "b"], ["attention", "weights"]).axes[0]
    short = plot_attention(w, ["a", "b"], ["x", "y"]).axes[0]
    assert {t.get_rotation() for t in long.get_xticklabels()} == {45.0}
    assert {t.get_rotation() for t in short.get_xticklabels()} == {0.0}


def test_plot_attention_masked_cells_are_masked_in_the_image_and_drawn_grey():
    """mask False -> the cell is masked (drawn in MASKED_COLOR), distinct from a weight of 0."""
    from matplotlib.colors import to_rgba

    m = causal_mask(3, 3)
    w = np.where(m, 1.0 / m.sum(axis=1, keepdims=True), 0.0)
    w[2, 2] = 0.0  # a real weight of zero, not masked
    w[2, :2] = 0.5
    fig = plot_attention(w, mask=m)
    im = _image_axes(fig)[0].images[0]
    arr = im.get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(arr), ~m)
    np.testing.assert_array_equal(arr.data, w)
    rgba = im.to_rgba(arr)
    assert np.allclose(rgba[0, 1], to_rgba(MASKED_COLOR))  # masked: grey
    assert not np.allclose(rgba[2, 2], to_rgba(MASKED_COLOR))  # weight 0: the colormap's low end
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert [_texts(leg.get_texts()) for leg in legends] == [["masked"]]


def test_plot_attention_draws_into_a_given_axes_and_returns_its_figure():
    """With ax=..., nothing new is created: the returned Figure is ax's Figure."""
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert plot_attention(np.eye(2), ax=ax, colorbar=False) is fig
    assert len(fig.axes) == 1 and len(ax.images) == 1


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(3), r"shape \(L, S\)"),
        (np.full((2, 2), np.nan), "finite"),
        (np.full((2, 2), 1.5), r"\[0, 1\]"),
        (-np.eye(2), r"\[0, 1\]"),
    ],
)
def test_plot_attention_rejects_what_are_not_attention_weights(weights, message):
    """Principle 5: wrong rank, NaN, or values outside [0, 1] raise a ValueError saying so."""
    with pytest.raises(ValueError, match=message):
        plot_attention(weights)


def test_plot_attention_rejects_label_counts_that_do_not_match():
    """Three rows need three query labels."""
    with pytest.raises(ValueError, match="query_labels has 2 labels, expected 3"):
        plot_attention(_weights(3, 3), ["a", "b"])


@pytest.mark.parametrize(("H", "rows", "cols"), [(1, 1, 1), (3, 1, 3), (6, 2, 4)])
def test_plot_heads_draws_one_axes_per_head_with_a_shared_scale(H, rows, cols):
    """H heads -> H heatmaps (min(H, 4) columns), each its head's weights, all clim (0, 1)."""
    w = _weights(H, 4, 5)
    fig = plot_heads(w, list("abcd"), list("vwxyz"))
    axes = _image_axes(fig)
    assert len(axes) == H
    assert len(fig.axes) == H + 1  # one shared colour bar, unused grid cells removed
    for h, ax in enumerate(axes):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), w[h])
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert ax.get_title() == f"head {h}"
        assert _texts(ax.get_xticklabels()) == list("vwxyz")
    geometry = {ax.get_subplotspec().get_geometry()[:2] for ax in axes}
    assert geometry == {(rows, cols)}


def test_plot_cross_attention_puts_s1_on_rows_and_s2_on_columns():
    """Seed 4.1: S1 (queries) labels the rows, S2 (keys) the columns; a link per strong weight."""
    s1, s2 = ["the", "cat", "sleeps"], ["le", "chat", "dort", "."]
    w = _weights(3, 4)
    fig = plot_cross_attention(w, s1, s2)
    heat = _image_axes(fig)[0]
    np.testing.assert_array_equal(np.asarray(heat.images[0].get_array()), w)
    assert _texts(heat.get_yticklabels()) == s1
    assert _texts(heat.get_xticklabels()) == s2
    assert heat.get_ylabel() == "S1 (queries)" and heat.get_xlabel() == "S2 (keys)"
    links = next(a for a in fig.axes if a.get_title().startswith("one line per (query, key)"))
    assert "below 0.02 are not drawn" in links.get_title()
    assert len(links.lines) == int(np.sum(w >= 0.02))
    words = _texts(links.texts)
    assert words == s1 + s2


def test_plot_fusion_shows_each_branch_map_and_the_alpha_bars():
    """N branch maps equal the branch weights; the bar heights are alpha."""
    w = _weights(3, 4, 4)
    alpha = np.array([0.2, 0.5, 0.3])
    fig = plot_fusion(w, alpha, list("abcd"), list("abcd"), branch_names=["x", "y", "z"])
    maps = _image_axes(fig)
    assert len(maps) == 3
    for n, ax in enumerate(maps):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), w[n])
    bars = next(a for a in fig.axes if a.patches)
    assert [p.get_height() for p in bars.patches] == alpha.tolist()
    assert _texts(bars.get_xticklabels()) == ["x", "y", "z"]
    with pytest.raises(ValueError, match=r"alpha must have shape \(N,\) = \(3,\)"):
        plot_fusion(w, [0.5, 0.5])


def test_plot_mask_gallery_draws_each_mask_under_its_name():
    """One panel per mask, image = the boolean mask, titled by its key, in order."""
    masks = {
        "top-left": causal_mask(3, 5),
        "bottom-right": causal_mask(3, 5, align="bottom_right"),
    }
    fig = plot_mask_gallery(masks)
    axes = _image_axes(fig)
    assert [a.get_title() for a in axes] == list(masks)
    for ax, m in zip(axes, masks.values(), strict=True):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), m)
    with pytest.raises(TypeError, match="boolean"):
        plot_mask_gallery({"ints": np.eye(2, dtype=int)})


def test_plot_training_draws_the_loss_and_both_maps():
    """The loss curve's y data is the losses; the two maps are the learned and the ideal weights."""
    losses = np.array([2.0, 1.0, 0.3, 0.1])
    learned, ideal = _weights(4, 4), np.eye(4)[::-1]
    fig = plot_training(losses, learned, ideal, accuracy=0.99, match=1.0)
    ax_loss = fig.axes[0]
    np.testing.assert_array_equal(ax_loss.lines[0].get_ydata(), losses)
    got, want = _image_axes(fig)
    np.testing.assert_array_equal(np.asarray(got.images[0].get_array()), learned)
    np.testing.assert_array_equal(np.asarray(want.images[0].get_array()), ideal)
    assert "100%" in got.get_title() and "99.0%" in got.get_title()


def test_save_figure_writes_identical_png_bytes_without_version_metadata():
    """Determinism: the same figure saved twice gives the same bytes, no 'Matplotlib' stamp."""

    def png():
        buf = io.BytesIO()
        save_figure(plot_heads(_weights(2, 3, 3), ["a", "b", "c"], ["a", "b", "c"]), buf)
        return buf.getvalue()

    first, second = png(), png()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert first == second
    assert b"Matplotlib" not in first and b"matplotlib" not in first


def test_importing_the_package_does_not_import_matplotlib():
    """Principle 7: numpy is the only runtime dependency; matplotlib loads only when plotting."""
    code = (
        "import sys, numpy_attention, numpy_attention.plotting, numpy_attention.model; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plot_heads_marks_masked_cells_in_every_head():
    """A causal mask shared by the heads masks the same cells in each image, with one legend."""
    m = causal_mask(3, 3)
    w = np.where(m, 1 / m.sum(axis=1, keepdims=True), 0.0)
    fig = plot_heads(np.stack([w, w]), mask=m)
    for ax in _image_axes(fig):
        np.testing.assert_array_equal(np.ma.getmaskarray(ax.images[0].get_array()), ~m)
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert [_texts(leg.get_texts()) for leg in legends] == [["masked"]]


def test_plot_heads_takes_a_models_tuple_of_per_layer_maps_and_picks_layer_and_batch():
    """Hugging Face / bertviz hand over one (B, H, L, S) array per layer: plot_heads draws the
    heads of the chosen layer and batch element (the same maps as passing them directly)."""
    from numpy_attention.app.plotting import select_heads

    rng = np.random.default_rng(0)
    layers = []
    for _ in range(3):
        w = rng.random((2, 4, 3, 5))
        layers.append(w / w.sum(-1, keepdims=True))
    picked = select_heads(tuple(layers), layer=2, batch=1)
    assert np.array_equal(picked, layers[2][1])
    assert np.array_equal(select_heads(np.stack(layers), layer=-1, batch=1), layers[2][1])
    fig = plot_heads(tuple(layers), layer=2, batch=1)
    drawn = [a.images[0].get_array() for a in fig.axes if a.images]
    assert len(drawn) == 4 and np.allclose(drawn[3], layers[2][1][3])
    with pytest.raises(ValueError, match=r"layer must lie in \[0, 3\), got 3"):
        select_heads(tuple(layers), layer=3)
    with pytest.raises(ValueError, match="differ in shape"):
        select_heads((layers[0], layers[1][:, :2]))


def test_computation_graph_labels_every_forward_and_backward_arrow_with_its_equation():
    """The graph figure names Eqs. (2.1)-(2.5) on the forward arrows and (2.10)-(2.14) backward."""
    from numpy_attention.app.plotting import plot_computation_graph

    texts = {t.get_text() for t in plot_computation_graph().axes[0].texts}
    forward = {f"(2.{n})" for n in range(1, 6)}
    assert forward <= texts and {"(2.10)", "(2.11)", "(2.12)-(2.13)", "(2.14)"} <= texts


def test_fusion_draws_masked_cells_grey_as_the_heads_figure_does():
    """plot_fusion with a causal mask leaves the masked cells out of the colour scale (grey)."""
    m = np.tril(np.ones((3, 3), dtype=bool))
    fig = plot_fusion(np.stack([np.where(m, 1 / 3, 0.0)] * 2), [0.5, 0.5], mask=m)
    data = fig.axes[0].images[0].get_array()
    assert np.ma.is_masked(data) and np.array_equal(np.ma.getmaskarray(data), ~m)
