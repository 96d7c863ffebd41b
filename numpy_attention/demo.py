r"""The worked examples of ``numpy-attention demo``: each one computes, prints and draws.

1. The seed document's two examples: cross-attention between two sentences
   (section 4.1) and the weighted fusion of several attention branches (4.2).
2. Multi-head self-attention maps, and a gallery of masks.
3. A tiny model trained with the package's own backward passes
   (:mod:`numpy_attention.model`): its loss curve and its learned attention
   map beside the ideal one.

Every figure is written reproducibly (matplotlib's default style, no version
metadata), so running the demo twice gives byte-identical PNGs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .masks import causal_mask, padding_mask, sliding_window_mask
from .model import train

__all__ = ["SENTENCE", "TRAIN_STEPS", "run_demo"]

#: The sentence of the self-attention and fusion examples.
SENTENCE = ("the", "cat", "sat", "on", "the", "mat", "and", "the", "cat", "slept")

#: Training schedule of the demo's model: full, and ``--quick`` (for tests).
TRAIN_STEPS = {False: 400, True: 60}


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
    from .plotting import save_figure

    path = out / name
    save_figure(fig, path)
    written.append(path)
    log(f"wrote {path}")


def _cross_attention(out: Path, written: list[Path], log: Callable[[str], None]) -> None:
    """Seed section 4.1: R1 = softmax(Q1 K2^T / sqrt(d)) V2 for two sentences."""
    from .layers import seed_cross_attention_example
    from .plotting import plot_cross_attention

    ex = seed_cross_attention_example()
    log("\n1a. Cross-attention (seed section 4.1): queries from S1, keys and values from S2")
    for word, row in zip(ex.s1, ex.weights, strict=True):
        best = ex.s2[int(np.argmax(row))]
        log(f"    {word:>5} reads {best:<6} (weights: {np.array2string(row, precision=2)})")
    fig = plot_cross_attention(
        ex.weights, ex.s1, ex.s2,
        title="Cross-attention: S1 = English (queries), S2 = French (keys, values)",
    )  # fmt: skip
    _save(fig, out, "cross_attention.png", written, log)


def _fusion(out: Path, written: list[Path], log: Callable[[str], None]) -> None:
    """Seed section 4.2: Y = sum_i alpha_i A_i(X), three branches with their own parameters."""
    from .fusion import fusion_forward, init_fusion
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
    names = ["previous word", "same word", "random init"]
    log("\n1b. Weighted fusion of 3 self-attention branches (seed section 4.2), causal")
    log(f"    alpha = {np.array2string(cache.alpha, precision=2)}, output shape {y.shape}")
    fig = plot_fusion(
        maps, cache.alpha, SENTENCE, SENTENCE, branch_names=names,
        title="Fusion: Y = sum_i alpha_i A_i(X), each branch with its own parameters",
    )  # fmt: skip
    _save(fig, out, "fusion.png", written, log)


def _heads(out: Path, written: list[Path], log: Callable[[str], None]) -> None:
    """Multi-head causal self-attention of a sentence, with a randomly initialised layer."""
    from .layers import init_cross_attention, self_attention_forward
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
        title="Causal self-attention, 4 heads (grey: masked, a query cannot see the future)",
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
        "sliding window (2, 0), L=S=7\ncausal local": sliding_window_mask(7, 7, (2, 0)),
        "sliding window 1, L=S=7\nsymmetric": sliding_window_mask(7, 7, 1),
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
    quick : bool, optional
        Train the model for 60 steps instead of 400 (same figures, for tests).
    seed : int, optional
        Seed of the model's training. Default 0.
    log : callable, optional
        Receives each line of the report. Default ``print``.

    Returns
    -------
    written : list of Path
        The files written, in order: ``cross_attention.png``, ``fusion.png``,
        ``heads.png``, ``masks.png``, ``training.png``.

    Notes
    -----
    matplotlib's default style is used whatever the user's ``matplotlibrc``
    says, so the figures do not depend on local settings.
    """
    import matplotlib.style

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with matplotlib.style.context("default"):
        _cross_attention(out, written, log)
        _fusion(out, written, log)
        _heads(out, written, log)
        _masks(out, written, log)
        _training(out, written, log, quick, seed)
    log(f"\n{len(written)} figures in {out}")
    return written
