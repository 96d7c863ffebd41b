r"""The worked examples of ``numpy-attention demo``: each one computes, prints and draws.

1. The seed document's two examples: cross-attention between two sentences
   (section 4.1, :func:`seed_cross_attention_example`) and the weighted fusion
   of several attention branches (4.2, :func:`seed_fusion_example`).
2. Multi-head self-attention maps, and a gallery of masks.
3. A tiny model trained with the package's own backward passes
   (:mod:`numpy_attention.model`): its loss curve and its learned attention
   map beside the ideal one.

Every figure is written reproducibly (matplotlib's default style, no version
metadata), so running the demo twice gives byte-identical PNGs.

What the demo writes (what is "ours"): exactly the files named in
:data:`FIGURES`, inside the directory ``out`` (created if missing). A second
run replaces those five files; nothing else in ``out`` is touched. It refuses an
``out`` that exists but is not a directory, and a figure name in ``out`` that is
a symbolic link or not a regular file (it never writes through a link). Each
figure is written to a temporary file and renamed, so an interrupted run never
leaves half a PNG.

The model's matrix products are tiny; several BLAS threads would only fight
over them (on a busy 2-core machine training took 27 s instead of 2 s), so the
demo runs on one BLAS thread when ``threadpoolctl`` is installed (the ``plot``
extra installs it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._arrays import Array
from .._validate import check_int
from ..flash import one_blas_thread
from ..fusion import weighted_fusion
from ..layers import CrossAttentionParams, cross_attention_forward
from ..masks import causal_mask, padding_mask, sliding_window_mask
from ..model import train
from ..softmax import softmax
from .files import InputError, open_output

__all__ = [
    "FIGURES",
    "SENTENCE",
    "TRAIN_STEPS",
    "run_demo",
    "SeedCrossAttentionExample",
    "seed_cross_attention_example",
    "SeedFusionExample",
    "seed_fusion_example",
]

#: The sentence of the self-attention and fusion examples.
SENTENCE = ("the", "cat", "sat", "on", "the", "mat", "and", "the", "cat", "slept")

#: Training schedule of the demo's model: full, and ``--quick`` (for tests).
TRAIN_STEPS = {False: 400, True: 60}

#: The files the demo writes into its output directory, in order: the only ones it touches.
FIGURES = (
    "graph.png",
    "cross_attention.png",
    "fusion.png",
    "heads.png",
    "masks.png",
    "training.png",
)


# ---------------------------------------------------------------------------
# The seed document's examples (its sections 4.1 and 4.2)
# ---------------------------------------------------------------------------


class SeedCrossAttentionExample(NamedTuple):
    """Result of :func:`seed_cross_attention_example`."""

    s1: tuple[str, ...]  # tokens of the query sentence S1
    s2: tuple[str, ...]  # tokens of the key/value sentence S2
    r1: Array  # (len(s1), 4): the new sequence R1, one row per token of S1
    weights: Array  # (len(s1), len(s2)): how much each S1 token reads each S2 token


def seed_cross_attention_example() -> SeedCrossAttentionExample:
    r"""Run the seed's section 4.1 example, ``Cross-Attention(Q1, K2, V2)`` of two sentences.

    Two sentences, :math:`S_1` = "the cat sat" and :math:`S_2` = "le chat
    s'est assis", get hand-made 4-dimensional word vectors (axes: determiner,
    cat, sitting, auxiliary). Their vectors serve directly as
    :math:`Q_1` and :math:`K_2 = V_2`, so the layer runs with one head and
    identity projections, which is exactly the seed's formula.

    Returns
    -------
    example : SeedCrossAttentionExample
        ``s1``, ``s2`` (token labels), ``r1`` of shape ``(3, 4)`` (one row
        per token of :math:`S_1`) and the weights of shape ``(3, 4)``.

    Notes
    -----
    Eq. (3.12) of ``docs/layers.md``:
    :math:`R_1 = \mathrm{CrossAttention}(Q_1, K_2, V_2)
    = \mathrm{softmax}(Q_1K_2^\top/\sqrt{d_k})\,V_2`,
    computed by Eqs. (3.1)-(3.5) with :math:`H = 1`, :math:`W = I`, no biases.

    Examples
    --------
    >>> ex = seed_cross_attention_example()
    >>> ex.r1.shape  # R1 has the length of S1
    (3, 4)
    >>> for word, row in zip(ex.s1, ex.weights):
    ...     print(f"{word:>4}", " ".join(f"{s2}={w:.2f}" for s2, w in zip(ex.s2, row)))
     the le=0.97 chat=0.01 s'est=0.01 assis=0.01
     cat le=0.01 chat=0.97 s'est=0.01 assis=0.01
     sat le=0.01 chat=0.01 s'est=0.18 assis=0.80
    >>> from numpy_attention.softmax import softmax
    >>> q1, k2 = _SEED_VECTORS[:3], _SEED_VECTORS[3:]
    >>> bool(np.allclose(ex.r1, softmax(q1 @ k2.T / np.sqrt(4)) @ k2))  # the seed's formula
    True
    """
    s1, s2 = ("the", "cat", "sat"), ("le", "chat", "s'est", "assis")
    x1, x2 = _SEED_VECTORS[None, :3], _SEED_VECTORS[None, 3:]  # (B=1, L=3, 4), (1, S=4, 4)
    eye = np.eye(4)
    identity = CrossAttentionParams(w_q=eye, w_k=eye, w_v=eye, w_o=eye, num_heads=1)
    r1, cache = cross_attention_forward(identity, x1, x2)
    return SeedCrossAttentionExample(s1=s1, s2=s2, r1=r1[0], weights=cache.weights[0, 0])


#: Word vectors of "the cat sat" (rows 0-2) and "le chat s'est assis" (rows 3-6);
#: axes: determiner, cat, sitting, auxiliary.
_SEED_VECTORS = np.array(
    [
        [3.0, 0.0, 0.0, 0.0],  # the
        [0.0, 3.0, 0.0, 0.0],  # cat
        [0.0, 0.0, 3.0, 0.0],  # sat
        [3.0, 0.0, 0.0, 0.0],  # le
        [0.0, 3.0, 0.0, 0.0],  # chat
        [0.0, 0.0, 2.0, 2.0],  # s'est
        [0.0, 0.0, 3.0, 0.0],  # assis
    ]
)


class SeedFusionExample(NamedTuple):
    """Result of :func:`seed_fusion_example`."""

    sentences: tuple[tuple[str, ...], ...]  # the N sentences X_1..X_N of the text X_text
    tokens: tuple[str, ...]  # the text X_text, every sentence's tokens in order
    outputs: Array  # (N, len(tokens), 4): A_r = CrossAttention(X_text, X_r)
    alpha: Array  # (N,): softmax(beta)
    r: Array  # (len(tokens), 4): the fused sequence R


def seed_fusion_example() -> SeedFusionExample:
    r"""Run the seed's section 4.2 example: fuse attention over a text's sentences.

    A text :math:`X_\mathrm{text}` has three sentences :math:`X_1, X_2, X_3` of
    different lengths (deterministic random word vectors of width 4). Branch ``r``
    lets every token of the text attend over sentence :math:`X_r`:
    :math:`A_r = \mathrm{CrossAttention}(X_\mathrm{text}, X_r)`. All branches run as one
    batched call, the sentences padded to one length and masked with
    ``key_lengths``. :func:`~numpy_attention.fusion.weighted_fusion` then gives
    :math:`R = \sum_r \alpha_r A_r`, with :math:`\alpha = \mathrm{softmax}(\beta)`.

    Returns
    -------
    example : SeedFusionExample

    Notes
    -----
    Eq. (4.10) of ``docs/fusion.md``:
    :math:`R = \sum_{r=1}^N \alpha_r\,\mathrm{CrossAttention}(X_\mathrm{text}, X_r)`,
    computed by Eqs. (3.1)-(3.5) and Eq. (4.1).

    Examples
    --------
    >>> ex = seed_fusion_example()
    >>> [" ".join(s) for s in ex.sentences]
    ['the cat sat', 'it purred', 'then it slept soundly']
    >>> ex.outputs.shape, ex.r.shape  # R has one row per token of the text
    ((3, 9, 4), (9, 4))
    >>> ex.alpha.round(3).tolist()
    [0.09, 0.245, 0.665]
    >>> lo, hi = ex.outputs.min(axis=0), ex.outputs.max(axis=0)
    >>> bool(np.all((lo - 1e-12 <= ex.r) & (ex.r <= hi + 1e-12)))  # convex hull
    True
    """
    sentences = (("the", "cat", "sat"), ("it", "purred"), ("then", "it", "slept", "soundly"))
    tokens = tuple(t for s in sentences for t in s)
    vocab = _seed_vocabulary(tokens)
    text = np.array([vocab[t] for t in tokens])  # (T, Dm): the whole text X_text
    N, S = len(sentences), max(len(s) for s in sentences)
    padded = np.zeros((N, S, 4))  # sentence i in row i, zero padding after it
    for i, s in enumerate(sentences):
        padded[i, : len(s)] = [vocab[t] for t in s]
    lengths = np.array([len(s) for s in sentences])
    eye = np.eye(4)
    identity = CrossAttentionParams(w_q=eye, w_k=eye, w_v=eye, w_o=eye, num_heads=1)
    x_q = np.broadcast_to(text, (N,) + text.shape)  # every branch asks from the whole text
    outputs, _ = cross_attention_forward(identity, x_q, padded, key_lengths=lengths)
    alpha = softmax(np.array([0.0, 1.0, 2.0]))  # Eq. (4.2) with beta = (0, 1, 2)
    r = weighted_fusion(outputs, alpha)  # Eq. (4.1)
    return SeedFusionExample(sentences=sentences, tokens=tokens, outputs=outputs, alpha=alpha, r=r)


def _seed_vocabulary(tokens: Sequence[str]) -> dict[str, Array]:
    """Deterministic 4-dimensional word vectors, one per distinct token, in first-seen order."""
    rng = np.random.default_rng(42)
    return {t: rng.normal(size=4) for t in dict.fromkeys(tokens)}


# ---------------------------------------------------------------------------
# The demo's figures
# ---------------------------------------------------------------------------


def _sentence_inputs(rng: np.random.Generator, content: int) -> np.ndarray:
    """Word vectors of :data:`SENTENCE`, shape ``(1, L, content + L)``.

    Each distinct word gets a random unit vector, orthogonal to the other words'
    (so only equal words are similar), followed by a one-hot position.
    """
    words = sorted(set(SENTENCE))
    basis, _ = np.linalg.qr(rng.standard_normal((content, content)))
    table = {w: basis[:, n] for n, w in enumerate(words)}
    x = np.stack([table[w] for w in SENTENCE])
    return np.concatenate([x, np.eye(len(SENTENCE))], axis=1)[None]


def _save(fig: Any, out: Path, name: str, written: list[Path], log: Callable[[str], None]) -> None:
    """Write one of :data:`FIGURES` into ``out``, replacing the previous run's file."""
    from .plotting import save_figure

    assert name in FIGURES, name
    path = out / name
    with open_output(path, replace=True) as f:
        save_figure(fig, f)
    written.append(path)
    log(f"wrote {path}")


def _graph(out: Path, written: list[Path], log: Callable[[str], None]) -> None:
    """Chapter 2's computation graph, forward and backward arrows labelled by equation."""
    from .plotting import plot_computation_graph

    log("\n0. The computation graph of attention (docs/attention.md): graph.png")
    fig = plot_computation_graph(
        title="Attention's computation graph: forward (blue) and backward (orange), by equation"
    )
    _save(fig, out, "graph.png", written, log)


def _cross_attention(out: Path, written: list[Path], log: Callable[[str], None]) -> None:
    """Seed section 4.1: R1 = softmax(Q1 K2^T / sqrt(d)) V2 for two sentences."""
    from .plotting import plot_cross_attention

    ex = seed_cross_attention_example()
    log("\n1a. Cross-attention (seed section 4.1): queries from S1, keys and values from S2")
    for word, row in zip(ex.s1, ex.weights, strict=True):
        best = ex.s2[int(np.argmax(row))]
        log(f"    {word:>5} reads {best:<6} (weights: {np.array2string(row, precision=2)})")
    fig = plot_cross_attention(
        ex.weights, ex.s1, ex.s2,
        title="Cross-attention: English queries, French keys and values",
        query_name="English", key_name="French",
    )  # fmt: skip
    _save(fig, out, "cross_attention.png", written, log)


def _fusion(out: Path, written: list[Path], log: Callable[[str], None]) -> None:
    """Seed section 4.2: Y = sum_r alpha_r A_r(X), three branches with their own parameters."""
    from ..fusion import fusion_forward, init_fusion
    from .plotting import plot_fusion

    rng = np.random.default_rng(1)
    C, L = 8, len(SENTENCE)
    x = _sentence_inputs(rng, C)
    E = C + L
    alpha = np.array([0.5, 0.3, 0.2])
    params = init_fusion(rng, E, 3, num_heads=1, alpha=alpha, bias=False)
    # branch 0, "previous word": q_i = 20 e_{i-1}, k_j = e_j on the one-hot positions
    prev, pos = np.zeros((E, E)), np.zeros((E, E))
    prev[C:, C:] = 20.0 * np.eye(L, k=-1)
    pos[C:, C:] = np.eye(L)
    # branch 1, "same word": q_i . k_j = 20 [word i == word j] on the word vectors
    same = np.zeros((E, E))
    same[:C, :C] = math.sqrt(20.0) * np.eye(C)
    branches = (
        replace(params.branches[0], w_q=prev, w_k=pos),
        replace(params.branches[1], w_q=same, w_k=same),
        params.branches[2],  # branch 2: the random initialisation, as it comes
    )
    params = replace(params, branches=branches)
    y, cache = fusion_forward(params, x, is_causal=True)
    maps = np.stack([w[0, 0] for w in cache.branch_weights])  # (N, L, L)
    names = ["previous word (hand-built)", "same word (hand-built)", "random init (untrained)"]
    log("\n1b. Weighted fusion of 3 self-attention branches (seed section 4.2), causal")
    log(f"    alpha = {np.array2string(cache.alpha, precision=2)}, output shape {y.shape}")
    fig = plot_fusion(
        maps, cache.alpha, SENTENCE, SENTENCE, branch_names=names,
        title=r"Fusion $Y = \sum_r \alpha_r A_r(X)$ (causal): 2 hand-built branches, 1 random",
        mask=causal_mask(len(SENTENCE), len(SENTENCE)),
    )  # fmt: skip
    _save(fig, out, "fusion.png", written, log)


def _heads(out: Path, written: list[Path], log: Callable[[str], None]) -> None:
    """Multi-head causal self-attention of a sentence, with a randomly initialised layer."""
    from ..layers import init_cross_attention, self_attention_forward
    from .plotting import plot_heads

    rng = np.random.default_rng(2)
    x = 3.0 * _sentence_inputs(rng, 8)
    params = init_cross_attention(rng, x.shape[-1], x.shape[-1], num_heads=4, embed_dim=16)
    _, cache = self_attention_forward(params, x, is_causal=True)
    w = cache.weights[0]  # (H, L, L)
    mask = causal_mask(len(SENTENCE), len(SENTENCE))
    log("\n2a. Multi-head causal self-attention (4 heads, random init)")
    log(f"    weights shape {cache.weights.shape}; every row sums to 1 over the allowed keys")
    fig = plot_heads(
        w, SENTENCE, SENTENCE, mask=mask, ncols=2,
        title="Causal self-attention, 4 heads of a RANDOMLY INITIALISED (untrained) layer:\n"
        "the patterns mean nothing yet; grey = masked (a query cannot see the future)",
    )  # fmt: skip
    _save(fig, out, "heads.png", written, log)


def _masks(out: Path, written: list[Path], log: Callable[[str], None]) -> None:
    """Causal top-left vs bottom-right for L != S, padding and sliding windows."""
    from .plotting import plot_mask_gallery

    L, S = 4, 7
    gallery = {
        f"causal top-left (L={L}, S={S})\ntorch is_causal": causal_mask(L, S),
        f"causal bottom-right (L={L}, S={S})\nFlashAttention >= 2.1": causal_mask(
            L, S, align="bottom_right"
        ),
        f"padding: 5 real keys of S={S}": np.broadcast_to(padding_mask([5], S)[0, 0], (L, S)),
        "sliding window (left 2, right 0)\nL=S=7, causal local": sliding_window_mask(7, 7, (2, 0)),
        "sliding window (left 1, right 1)\nL=S=7, symmetric": sliding_window_mask(7, 7, 1),
        "causal & padding (5 of 7)": causal_mask(7, 7) & padding_mask([5], 7)[0, 0],
    }
    log("\n2b. Mask gallery (True = attend): " + "; ".join(k.split("\n")[0] for k in gallery))
    fig = plot_mask_gallery(gallery, ncols=3, title="Attention masks (numpy_attention.masks)")
    _save(fig, out, "masks.png", written, log)


def _training(
    out: Path, written: list[Path], log: Callable[[str], None], quick: bool, seed: int
) -> None:
    """Train the reversal model with our backward passes and Adam; compare its attention."""
    from .plotting import plot_training

    steps = TRAIN_STEPS[quick]
    log(
        f"\n3. Training a one-layer attention model to reverse sequences (seed {seed}, "
        f"{steps} Adam steps, backward passes written by hand in this package)"
    )
    r = train(seed=seed, steps=steps, log=log)
    L = r.ideal.shape[0]
    log(
        f"    test accuracy {r.accuracy:.1%} per token, {r.sequence_accuracy:.1%} per sequence; "
        f"largest weight on the ideal key for {r.match:.1%} of queries; mean weight on it "
        f"{float(np.mean(np.diag(r.mean_weights[:, ::-1]))):.2f}"
    )
    fig = plot_training(
        r.losses, r.mean_weights, r.ideal,
        query_labels=range(L), key_labels=range(L), accuracy=r.accuracy, match=r.match,
        title="Reversing a sequence: query i must read key L-1-i (mean over 1000 test sequences)",
    )  # fmt: skip
    _save(fig, out, "training.png", written, log)


def _output_directory(out: str | Path) -> Path:
    """Create ``out`` if missing; refuse an existing non-directory or an unusable path."""
    p = Path(out)
    if str(out) == "":
        raise InputError("the output directory is empty; give a directory name")
    if os.path.lexists(p) and not p.is_dir():
        raise InputError(f"{p}: exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{p}: cannot create the output directory: {e.strerror or e}") from None
    return p


def run_demo(
    out: str | Path = "figures",
    *,
    quick: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[Path]:
    r"""Run every worked example, print what it shows and write its figure to ``out``.

    Parameters
    ----------
    out : str or Path, optional
        Directory for the PNGs (created if missing). Default ``figures``.
        Only the files of :data:`FIGURES` are written there (replacing a
        previous run's); see the module's docstring.
    quick : bool, optional
        Train the model for 60 steps instead of 400 (same figures, for tests).
    seed : int, optional
        Seed of the model's training, an integer >= 0. Default 0.
    log : callable, optional
        Receives each line of the report. Default ``print``.

    Returns
    -------
    written : list of Path
        The files written, in the order of :data:`FIGURES`.

    Raises
    ------
    InputError
        ``out`` exists and is not a directory, or cannot be created; a figure
        file cannot be written (a symbolic link, a directory, a full disk).
    TypeError, ValueError
        ``seed`` is not an integer >= 0.

    Notes
    -----
    matplotlib's default style is used whatever the user's ``matplotlibrc``
    says, so the figures do not depend on local settings. BLAS runs on one
    thread meanwhile (with threadpoolctl: :func:`numpy_attention.flash.one_blas_thread`).
    """
    import matplotlib.style

    seed = check_int(seed, "seed", minimum=0)
    out = _output_directory(out)
    written: list[Path] = []
    # one_blas_thread(n) limits BLAS while n > 1 threads run; here: the whole demo, one thread
    with matplotlib.style.context("default"), one_blas_thread(2):
        _graph(out, written, log)
        _cross_attention(out, written, log)
        _fusion(out, written, log)
        _heads(out, written, log)
        _masks(out, written, log)
        _training(out, written, log, quick, seed)
    log(f"\n{len(written)} figures in {out}")
    return written
