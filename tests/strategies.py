"""Hypothesis strategies shared by the test suite.

Arrays are drawn from a hypothesis-chosen seed (fast, reproducible, and the
seed is printed on failure); shapes, masks and flags are drawn directly so
hypothesis can shrink them. Other test modules may APPEND strategies at the end.

Legend: B... batch dims, Hq/Hkv heads, L queries, S keys, E q/k width, Ev v width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "MASK_MODS",
    "SCORE_MODS",
    "VARIANT_KEYWORDS",
    "AttnCase",
    "VariantCase",
    "attention_cases",
    "bool_masks",
    "broadcastable_to",
    "config_entries",
    "dims",
    "float_biases",
    "gqa_groups",
    "keep_masks",
    "normal_arrays",
    "per_head_arrays",
    "scales",
    "score_rows",
    "seeds",
    "variant_cases",
    "variant_kwargs",
    "windows",
]

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def dims(min_value: int = 1, max_value: int = 5) -> st.SearchStrategy[int]:
    """A small dimension size (L, S, E, Ev, a head or batch count)."""
    return st.integers(min_value=min_value, max_value=max_value)


def gqa_groups(max_groups: int = 3) -> st.SearchStrategy[int]:
    """The GQA group size G = Hq // Hkv (1 is plain multi-head attention)."""
    return st.integers(min_value=1, max_value=max_groups)


def scales() -> st.SearchStrategy[float | None]:
    """``scale`` argument: None (the default 1/sqrt(E)) or an explicit positive/negative float."""
    return st.one_of(
        st.none(),
        st.floats(min_value=0.05, max_value=2.0),
        st.sampled_from([1.0, -0.5]),
    )


@st.composite
def broadcastable_to(draw: Any, shape: tuple[int, ...], min_ndim: int = 0) -> tuple[int, ...]:
    """A shape that broadcasts to ``shape`` (and to nothing larger).

    Some axes become 1 and some leading axes are dropped, never fewer than
    ``min_ndim`` axes remain.
    """
    kept = tuple(n if draw(st.booleans()) else 1 for n in shape)
    drop = draw(st.integers(min_value=0, max_value=max(0, len(shape) - min_ndim)))
    return kept[drop:]


@st.composite
def normal_arrays(draw: Any, shape: tuple[int, ...], magnitude: float | None = None) -> np.ndarray:
    """Float64 normal array of ``shape``; magnitude drawn from {0.1, 1, 3} unless given."""
    mag = magnitude if magnitude is not None else draw(st.sampled_from([0.1, 1.0, 3.0]))
    return np.random.default_rng(draw(seeds)).normal(scale=mag, size=shape)


@st.composite
def bool_masks(
    draw: Any, scores_shape: tuple[int, ...], density: float | None = None
) -> np.ndarray:
    """Boolean keep-mask (True = attend) of a shape that broadcasts to ``scores_shape``.

    The density of True is drawn from {0.3, 0.7, 1.0} unless given, so some rows
    are fully masked.
    """
    shape = draw(broadcastable_to(scores_shape))
    p = density if density is not None else draw(st.sampled_from([0.3, 0.7, 1.0]))
    return np.random.default_rng(draw(seeds)).random(shape) < p


@st.composite
def float_biases(draw: Any, scores_shape: tuple[int, ...], neg_inf: bool = True) -> np.ndarray:
    """Float additive bias broadcastable to ``scores_shape``; with ``neg_inf``, some ``-inf``."""
    shape = draw(broadcastable_to(scores_shape))
    rng = np.random.default_rng(draw(seeds))
    b = rng.normal(size=shape)
    if neg_inf and draw(st.booleans()):
        b[rng.random(shape) < draw(st.sampled_from([0.2, 0.6]))] = -np.inf
    return b


@st.composite
def keep_masks(draw: Any, shape: tuple[int, ...], p: float) -> np.ndarray:
    """Dropout keep-mask (True = kept) of exactly ``shape``, each entry kept w.p. ``1 - p``."""
    return np.random.default_rng(draw(seeds)).random(shape) >= p


@st.composite
def score_rows(draw: Any, max_rows: int = 4, max_len: int = 6) -> np.ndarray:
    """A 2-D array of scores, some entries ``-inf`` and possibly an all ``-inf`` row."""
    shape = (draw(dims(1, max_rows)), draw(dims(1, max_len)))
    rng = np.random.default_rng(draw(seeds))
    x = rng.normal(scale=draw(st.sampled_from([1.0, 10.0, 300.0])), size=shape)
    if draw(st.booleans()):
        x[rng.random(shape) < 0.3] = -np.inf
    if draw(st.booleans()):
        x[draw(st.integers(0, shape[0] - 1))] = -np.inf
    return x


@dataclass
class AttnCase:
    """One set of arguments for ``attention_forward`` (float64 arrays)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    attn_mask: np.ndarray | None = None
    is_causal: bool = False
    causal_align: str = "top_left"
    scale: float | None = None
    enable_gqa: bool = False
    dropout_p: float = 0.0
    dropout_mask: np.ndarray | None = None
    scores_shape: tuple[int, ...] = field(default=())

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``attention_forward`` / ``scaled_dot_product_attention``."""
        return dict(
            q=self.q, k=self.k, v=self.v, attn_mask=self.attn_mask, is_causal=self.is_causal,
            causal_align=self.causal_align, scale=self.scale, enable_gqa=self.enable_gqa,
            dropout_p=self.dropout_p, dropout_mask=self.dropout_mask,
        )  # fmt: skip


@st.composite
def attention_cases(
    draw: Any,
    masks: tuple[str, ...] = ("none", "bool", "float"),
    causal: bool = True,
    gqa: bool = True,
    dropout: bool = False,
    max_batch_dims: int = 2,
    max_len: int = 5,
) -> AttnCase:
    """Arguments for attention: shapes (L != S, E != Ev), broadcast batch and heads, masks.

    ``masks`` lists the mask kinds to draw from (``"none"``, ``"bool"``, ``"float"``).
    Without GQA the head axis broadcasts like a batch axis (Hq or Hkv may be 1);
    with GQA ``Hq = G * Hkv``. With ``dropout``, an explicit keep-mask of the
    scores' shape and ``dropout_p`` in {0.2, 0.5}.
    """
    n_batch = draw(st.integers(0, max_batch_dims))
    batch = tuple(draw(dims(1, 3)) for _ in range(n_batch))
    L, S, E, Ev = (draw(dims(1, max_len)) for _ in range(4))
    use_gqa = gqa and draw(st.booleans())
    if use_gqa:
        hkv, G = draw(dims(1, 2)), draw(gqa_groups())
        qb = draw(broadcastable_to(batch))
        kb = draw(broadcastable_to(batch))
        vb = draw(broadcastable_to(batch))
        q_lead, k_lead, v_lead = qb + (hkv * G,), kb + (hkv,), vb + (hkv,)
        head_axes = np.broadcast_shapes(qb, kb, vb) + (hkv * G,)
    else:
        full = batch + (draw(dims(1, 3)),)  # the head axis is one more batch axis
        q_lead, k_lead, v_lead = (draw(broadcastable_to(full)) for _ in range(3))
        head_axes = np.broadcast_shapes(q_lead, k_lead, v_lead)
    scores_shape = tuple(head_axes) + (L, S)
    case = AttnCase(
        q=draw(normal_arrays(q_lead + (L, E))),
        k=draw(normal_arrays(k_lead + (S, E))),
        v=draw(normal_arrays(v_lead + (S, Ev), magnitude=1.0)),
        enable_gqa=use_gqa,
        scale=draw(scales()),
        scores_shape=scores_shape,
    )
    kind = draw(st.sampled_from(masks))
    if kind == "bool":
        case.attn_mask = draw(bool_masks(scores_shape))
    elif kind == "float":
        case.attn_mask = draw(float_biases(scores_shape))
    if causal and draw(st.booleans()):
        case.is_causal = True
        case.causal_align = draw(st.sampled_from(["top_left", "bottom_right"]))
    if dropout:
        case.dropout_p = draw(st.sampled_from([0.2, 0.5]))
        case.dropout_mask = draw(keep_masks(scores_shape, case.dropout_p))
    return case


# ---------------------------------------------------------------------------
# Variants (docs/variants.md): window, softcap, ALiBi, sinks, chunks, sink tokens, mods
# ---------------------------------------------------------------------------
# The mods use only arithmetic, comparisons, & | and %, so one definition serves NumPy index
# arrays (the package), Python ints (the loop oracle) and torch tensors (the torch reference).
# Each score_mod's gradient returns an array of the score's shape (the "+ 0 * s").


def _mask_causal(b: Any, h: Any, i: Any, j: Any) -> Any:
    return j <= i


def _mask_head_batch(b: Any, h: Any, i: Any, j: Any) -> Any:
    return ((i - j) % 3 != 1) | (h == 0) | (b == 1)


def _mask_diagonal_stripes(b: Any, h: Any, i: Any, j: Any) -> Any:
    return (i + j + b) % 2 == 0


def _score_head_scale(s: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
    return s * (1 + 0.25 * h) + 0.1 * (i - j) + 0.05 * b


def _score_head_scale_grad(s: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
    return 1 + 0.25 * h + 0 * s


def _score_quadratic(s: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
    return s + 0.1 * s * s / (1 + b + (i - j) * (i - j))


def _score_quadratic_grad(s: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
    return 1 + 0.2 * s / (1 + b + (i - j) * (i - j))


#: ``mask_mod(b, h, q_idx, kv_idx) -> bool`` examples (flex_attention's signature).
MASK_MODS = {
    "causal": _mask_causal,
    "head_batch": _mask_head_batch,
    "stripes": _mask_diagonal_stripes,
}

#: ``(score_mod, score_mod_grad)`` pairs: ``g(score, b, h, q_idx, kv_idx)`` and ``dg/dscore``.
SCORE_MODS = {
    "head_scale": (_score_head_scale, _score_head_scale_grad),
    "quadratic": (_score_quadratic, _score_quadratic_grad),
}

VARIANT_KEYWORDS = ("window", "softcap", "alibi_slopes", "sinks", "chunk_size", "sink_tokens",
                    "mask_mod", "score_mod", "score_mod_grad")  # fmt: skip


@dataclass
class VariantCase(AttnCase):
    """An :class:`AttnCase` plus the variant keywords (only those that are not the default)."""

    variants: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``attention_forward`` and the oracles, variants included."""
        return dict(super().kwargs(), **self.variants)

    def tiled_kwargs(self) -> dict[str, Any]:
        """The same for ``flash_attention_forward`` (no dropout there)."""
        kw = self.kwargs()
        del kw["dropout_p"], kw["dropout_mask"]
        return kw


def windows(max_side: int = 4) -> st.SearchStrategy[tuple[int | None, int | None]]:
    """A ``window=(left, right)``, each side an int in [0, max_side] or None (unbounded)."""
    side = st.none() | st.integers(0, max_side)
    return st.tuples(side, side)


@st.composite
def per_head_arrays(
    draw: Any, scores_shape: tuple[int, ...], batch: bool = True, positive: bool = False
) -> np.ndarray:
    """A per-head float array: ``(Hq,)``, or with ``batch`` possibly ``(..., Hq)`` broadcasting
    against the scores' batch axes (ALiBi slopes may be per batch, FlashAttention's
    ``(batch, nheads)``)."""
    lead = scores_shape[:-2]
    shape = lead[-1:]
    if batch and len(lead) > 1 and draw(st.booleans()):
        shape = draw(broadcastable_to(lead[:-1])) + lead[-1:]
    a = np.random.default_rng(draw(seeds)).normal(size=shape)
    return np.abs(a) if positive else a


@st.composite
def variant_kwargs(
    draw: Any,
    scores_shape: tuple[int, ...],
    kinds: tuple[str, ...] = ("window", "softcap", "alibi", "sinks", "chunk", "sink_tokens",
                              "mask_mod", "score_mod"),
) -> dict[str, Any]:  # fmt: skip
    """A random subset of the variant keywords (each kind in ``kinds`` drawn or not).

    Per-head arrays (slopes, sinks) are drawn only when the scores have a head axis.
    """
    kw: dict[str, Any] = {}
    heads = len(scores_shape) >= 3
    if "window" in kinds and draw(st.booleans()):
        kw["window"] = draw(windows())
    if "softcap" in kinds and draw(st.booleans()):
        kw["softcap"] = draw(st.sampled_from([0.5, 2.0, 30.0]))
    if "alibi" in kinds and heads and draw(st.booleans()):
        kw["alibi_slopes"] = draw(per_head_arrays(scores_shape, positive=True))
    if "sinks" in kinds and heads and draw(st.booleans()):
        kw["sinks"] = draw(per_head_arrays(scores_shape, batch=False))
    if "chunk" in kinds and draw(st.booleans()):
        kw["chunk_size"] = draw(st.integers(1, 4))
    if "sink_tokens" in kinds and draw(st.booleans()):
        kw["sink_tokens"] = draw(st.integers(1, 2))
    if "mask_mod" in kinds and draw(st.booleans()):
        kw["mask_mod"] = MASK_MODS[draw(st.sampled_from(sorted(MASK_MODS)))]
    if "score_mod" in kinds and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(SCORE_MODS)))
        kw["score_mod"], kw["score_mod_grad"] = SCORE_MODS[name]
    return kw


@st.composite
def variant_cases(
    draw: Any,
    kinds: tuple[str, ...] = ("window", "softcap", "alibi", "sinks", "chunk", "sink_tokens",
                              "mask_mod", "score_mod"),
    masks: tuple[str, ...] = ("none", "bool", "float"),
    dropout: bool = False,
    max_len: int = 5,
) -> VariantCase:  # fmt: skip
    """:func:`attention_cases` (masks, causal either alignment, GQA, broadcast, L != S) plus a
    random combination of variants from ``kinds``."""
    base = draw(attention_cases(masks=masks, dropout=dropout, max_len=max_len))
    case = VariantCase(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    case.variants = draw(variant_kwargs(case.scores_shape, kinds))
    if {"window", "chunk_size", "alibi_slopes"} & set(case.variants):
        case.causal_align = draw(st.sampled_from(["top_left", "bottom_right"]))  # d without causal
    return case


#: Values a config field may be given by mistake or on purpose: small sizes (where a case is
#: quick to build), zero and negative ones, sizes no machine holds, and every other JSON type.
_CONFIG_VALUES = st.one_of(
    st.integers(0, 6), st.integers(-3, -1), st.sampled_from([2**31, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.sampled_from(["", "x", "top_left", "bottom_right", "tiled", "dense", "merge", "rotary"]),
    st.lists(st.one_of(st.integers(-1, 6), st.none()), max_size=3),
)  # fmt: skip


#: A valid case of each kind of config, to be spoilt one field at a time.
_CONFIG_SKELETONS = (
    {"L": 3, "S": 4, "E": 4},
    {"E": 4, "lengths_q": [2, 0], "lengths_k": [3, 1]},
    {"E": 4, "cache_seqlens": [2, 0], "page_size": 2},
    {"kind": "merge", "L": 2, "S": 5, "E": 4, "num_splits": 2},
    {"kind": "rotary", "L": 3, "E": 4, "rotary_dim": 2},
)


@st.composite
def config_entries(draw: Any) -> dict[str, Any]:
    """One case of a ``vectors --config`` file: a valid case of some kind (attention, packed,
    KV cache, merge, rotary), then up to three fields of ``CONFIG_FIELDS`` (or an unknown
    one) set to any JSON value."""
    from numpy_attention.verify.config import CONFIG_FIELDS

    entry: dict[str, Any] = {"name": "c", **draw(st.sampled_from(_CONFIG_SKELETONS))}
    fields = sorted(CONFIG_FIELDS) + ["heads"]
    for n in draw(st.lists(st.sampled_from(fields), max_size=3, unique=True)):
        entry[n] = draw(_CONFIG_VALUES)
    return entry
