r"""The golden suite's cases: inputs drawn from fixed seeds, expected results in float64.

- :class:`Case`: one case, its inputs and expected results.
- The case table :data:`_SDPA_TABLE`, one line per scaled dot-product
  attention case, with the sentence describing each in :data:`_DESCRIPTIONS`;
  the two layer cases (cross-attention, weighted fusion) are built below it.
- :func:`build_suite`: every case, in the suite's order.

Every input is exactly representable in bfloat16 and float16 (:func:`_exact`),
so a candidate in any dtype sees the very inputs the float64 oracle saw.
Shapes (legend of docs/README.md): ``q (B, Hq, L, E)``, ``k (B, Hkv, S, E)``,
``v (B, Hkv, S, Ev)``, ``out (B, Hq, L, Ev)``, ``weights (B, Hq, L, S)``,
``lse (B, Hq, L)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._inputs import AttentionInputs, check_inputs
from ..attention import AttentionGrads, attention_backward, attention_forward, score_pipeline
from ..flash import flash_attention_backward, flash_attention_forward
from ..masks import padding_mask, sliding_window_mask
from ..variants import alibi_slopes
from .tolerance import round_to_bfloat16

__all__ = ["Case", "CASE_NAME", "build_suite"]

#: What a case name may be: it is the stem of the case's file.
CASE_NAME = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class Case:
    """One golden case: its inputs and float64 expected results.

    Attributes
    ----------
    name : str
        File stem, ``[a-z0-9_]+``.
    kind : str
        ``"sdpa"`` (scaled dot-product attention), ``"cross_attention"`` or
        ``"fusion"`` (the layers of :mod:`numpy_attention.layers`).
    description : str
        What the case exercises, in one sentence.
    inputs : dict of str to ndarray
        Arrays and 0-d flags, under the names a candidate's function takes.
    expected : dict of str to ndarray
        Reference results, keyed by quantity (``out``, ``dq``, ...).
    flags : dict
        JSON copy of the scalar arguments (``scale``, ``is_causal``, ...).
    """

    name: str
    kind: str
    description: str
    inputs: dict[str, NDArray[Any]]
    expected: dict[str, NDArray[Any]]
    flags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not CASE_NAME.fullmatch(self.name):
            raise ValueError(f"case name must match [a-z0-9_]+ (a file stem), got {self.name!r}")

    def arrays(self) -> dict[str, NDArray[Any]]:
        """Everything stored in ``<name>.npz``: inputs, then ``expected_<quantity>``."""
        out = dict(self.inputs)
        out.update({f"expected_{q}": a for q, a in self.expected.items()})
        return out

    def manifest_entry(self) -> dict[str, Any]:
        """Describe the case for ``manifest.json``."""
        return {
            "name": self.name,
            "file": f"{self.name}.npz",
            "kind": self.kind,
            "description": self.description,
            "flags": self.flags,
            "inputs": {n: _describe(a) for n, a in self.inputs.items()},
            "quantities": {n: _describe(a) for n, a in self.expected.items()},
        }


def _describe(a: NDArray[Any]) -> dict[str, Any]:
    return {"shape": list(a.shape), "dtype": a.dtype.name}


# ---------------------------------------------------------------------------
# Inputs exactly representable in bfloat16 and float16
# ---------------------------------------------------------------------------


def _exact(x: NDArray[np.floating]) -> NDArray[np.float64]:
    """Round to bfloat16; zero what float16 cannot hold exactly (tiny subnormals)."""
    y = round_to_bfloat16(x).astype(np.float64)
    ok = y.astype(np.float16).astype(np.float64) == y
    return np.where(ok, y, 0.0)


def _normal(rng: np.random.Generator, *shape: int, std: float = 1.0) -> NDArray[np.float64]:
    return _exact(std * rng.standard_normal(shape))


# ---------------------------------------------------------------------------
# The scaled dot-product attention cases
# ---------------------------------------------------------------------------


def _sdpa_case(
    name: str,
    description: str,
    seed: int,
    q_shape: tuple[int, ...],
    k_shape: tuple[int, ...],
    Ev: int,
    *,
    attn_mask: Callable[[np.random.Generator], NDArray[Any]] | None = None,
    is_causal: bool = False,
    causal_align: str = "top_left",
    enable_gqa: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    variants: dict[str, Any] | None = None,
    draw: Draw | None = None,
    tiled: bool = False,
) -> Case:
    """Draw the inputs from ``seed`` and compute the expected results in float64.

    ``variants`` holds the Variants keywords (``alibi_slopes=True`` and
    ``sinks=True`` draw them); ``draw(rng, q_shape, k_shape, Ev)`` replaces the
    standard normal inputs; ``tiled`` computes by the tiled (flash) functions,
    which form no ``L x S`` array (no ``weights`` then).
    """
    rng = np.random.default_rng(seed)
    q, k, v = (draw or _standard)(rng, q_shape, k_shape, Ev)
    mask = attn_mask(rng) if attn_mask is not None else None
    kw = _draw_variants(rng, variants or {}, q_shape[-3] if len(q_shape) > 2 else 1)
    E = q_shape[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    common = dict(is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
                  causal_align=causal_align, **kw)  # fmt: skip
    probe_shape = np.broadcast_shapes(q_shape[:-1], k_shape[:-3] + (1, 1)) + (Ev,)
    keep = rng.random(probe_shape[:-1] + (k_shape[-2],)) >= dropout_p if dropout_p else None
    d_out = _normal(rng, *probe_shape)
    out, P, lse, grads = _attend(tiled, (q, k, v, mask), d_out, dropout_p, keep, common)
    inputs: dict[str, NDArray[Any]] = {"q": q, "k": k, "v": v}
    if mask is not None:
        inputs["attn_mask"] = mask
    if keep is not None:
        inputs["dropout_mask"] = keep
    inputs["d_out"] = d_out
    inputs.update(
        scale=np.array(scale),
        dropout_p=np.array(float(dropout_p)),
        is_causal=np.array(bool(is_causal)),
        causal_bottom_right=np.array(causal_align == "bottom_right"),
        enable_gqa=np.array(bool(enable_gqa)),
    )
    inputs.update(_variant_inputs(kw))
    expected: dict[str, Any] = {"out": out, "weights": P, "lse": lse,
                "dq": grads.dq, "dk": grads.dk, "dv": grads.dv,
                "d_attn_mask": grads.d_attn_mask, "d_sinks": grads.d_sinks}  # fmt: skip
    flags = _sdpa_flags(scale, E, dropout_p, is_causal, causal_align, enable_gqa, mask)
    if kw:
        flags["variants"] = _variant_flags(kw)
    if tiled:
        flags["path"] = "tiled (flash_attention_forward/backward): no L x S array"
    if draw is _tied_keys:
        # every key of a head is one vector and each row of dS sums to 0: dq = scale dS K is
        # exactly 0. Store that 0, not float64 round-off (~1e-16), a meaningless scale.
        expected["dq"] = np.zeros_like(grads.dq)
    if _one_key_per_row(check_inputs(q, k, v, attn_mask=mask, **common), P):
        # each row's one weight is 1: dS = P (dP - D) = 0, so dq, dk and dB are exactly 0.
        # Store that 0, not the round-off (~1e-15 on the tiled path), a meaningless scale.
        for n in ("dq", "dk", "d_attn_mask"):
            if expected[n] is not None:
                expected[n] = np.zeros_like(expected[n])
    expected = {n: np.ascontiguousarray(a, dtype=np.float64)
                for n, a in expected.items() if a is not None}  # fmt: skip
    return Case(name, "variant" if kw else "sdpa", description, inputs, expected, flags)


#: Rows of queries whose visible keys :func:`_one_key_per_row` counts at a time (tiled cases).
_COUNT_SCORES = 2**22


def _one_key_per_row(x: AttentionInputs, P: NDArray[np.float64] | None) -> bool:
    """Tell whether every query sees at most one key and there is no sink logit.

    From the weights when the case has them (a weight that underflowed to 0 counts as
    hidden: its term is below float64's range anyway), else from the scores' pipeline
    (Eqs. (8.2)-(8.8): masks, positions, ``-inf`` from a bias or ``score_mod``) run on zero
    scores, a block of query rows at a time, never an ``L x S`` array.
    """
    if x.mods.sinks is not None:
        return False  # the sink takes part of the weight: dS != 0
    if P is not None:
        return bool(np.count_nonzero(P, axis=-1).max(initial=0) <= 1)
    L, S = x.scores_shape[-2:]
    rows = max(1, _COUNT_SCORES // max(1, math.prod(x.scores_shape[:-2]) * S))
    for i0 in range(0, L, rows):
        scores = np.zeros(x.scores_shape[:-2] + (min(rows, L - i0), S))
        score_pipeline(x, scores, i0, 0)  # -inf where the key is hidden
        if np.count_nonzero(scores > -np.inf, axis=-1).max(initial=0) > 1:
            return False
    return True


def _attend(
    tiled: bool, arrays: tuple[Any, ...], d_out: NDArray[np.float64], dropout_p: float,
    keep: NDArray[np.bool_] | None, kw: dict[str, Any],
) -> tuple[Any, Any, Any, AttentionGrads]:  # fmt: skip
    """Forward and backward, dense (``out, P, lse, grads``) or tiled (``P`` is None)."""
    q, k, v, mask = arrays
    if tiled:
        out, fc = flash_attention_forward(q, k, v, mask, dropout_p=dropout_p, dropout_mask=keep,
                                          **kw)  # fmt: skip
        return out, None, fc.lse, flash_attention_backward(d_out, fc)
    out, cache = attention_forward(q, k, v, mask, dropout_p=dropout_p, dropout_mask=keep, **kw)
    return out, cache.P, cache.lse, attention_backward(d_out, cache)


def _sdpa_flags(
    scale: float, E: int, dropout_p: float, is_causal: bool, causal_align: str,
    enable_gqa: bool, mask: NDArray[Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """JSON copy of the scalar arguments of a scaled dot-product attention case."""
    return {
        "scale": scale,
        "scale_is_default": scale == 1.0 / math.sqrt(E),
        "dropout_p": float(dropout_p),
        "is_causal": bool(is_causal),
        "causal_align": causal_align,
        "enable_gqa": bool(enable_gqa),
        "attn_mask": None if mask is None else ("bool" if mask.dtype == bool else "float"),
    }


#: ``draw(rng, q_shape, k_shape, Ev) -> (q, k, v)``: a case's inputs.
Draw = Callable[[np.random.Generator, tuple[int, ...], tuple[int, ...], int], tuple[Any, ...]]


def _standard(
    rng: np.random.Generator, q_shape: tuple[int, ...], k_shape: tuple[int, ...], Ev: int
) -> tuple[NDArray[np.float64], ...]:
    """Draw standard normal q, k, v (the default draw)."""
    q, k = _normal(rng, *q_shape), _normal(rng, *k_shape)
    return q, k, _normal(rng, *k_shape[:-1], Ev)


def _draw_variants(rng: np.random.Generator, spec: dict[str, Any], Hq: int) -> dict[str, Any]:
    """Return a case's Variants keywords (``alibi_slopes=True``, ``sinks=True``: drawn)."""
    kw = dict(spec)
    if kw.get("alibi_slopes") is True:
        kw["alibi_slopes"] = _exact(alibi_slopes(Hq))  # ALiBi's, rounded to bfloat16
    if kw.get("sinks") is True:
        kw["sinks"] = _normal(rng, Hq)
    return kw


def _variant_inputs(kw: dict[str, Any]) -> dict[str, NDArray[Any]]:
    """Return the variant arguments as arrays: ``window (2,)`` int64, -1 = unbounded."""
    out: dict[str, NDArray[Any]] = {}
    for n, val in kw.items():
        if n == "window":
            out[n] = np.array([-1 if w is None else w for w in val], dtype=np.int64)
        elif n in ("chunk_size", "sink_tokens"):
            out[n] = np.array(val, dtype=np.int64)
        else:
            out[n] = np.asarray(val, dtype=np.float64)
    return out


def _variant_flags(kw: dict[str, Any]) -> dict[str, Any]:
    """JSON copy of the variant arguments (a window side of None is null: unbounded)."""
    return {n: (list(val) if n == "window" else np.asarray(val).tolist()) for n, val in kw.items()}


def _row_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> NDArray[np.bool_]:
    """Random keep-mask with at least one True in every row."""
    m = rng.random(shape) < p
    first = rng.integers(0, shape[-1], size=shape[:-1])
    np.put_along_axis(m, first[..., None], True, axis=-1)
    return m


def _fully_masked(rng: np.random.Generator) -> NDArray[np.bool_]:
    m = _row_mask(rng, (2, 2, 6, 6), 0.6)
    m[0, :, 1] = False  # query 1 of batch 0 sees nothing, in both heads
    m[1, 1, 4] = False  # and query 4 of batch 1, head 1
    return m


def _float_bias(rng: np.random.Generator) -> NDArray[np.float64]:
    slopes = np.array([0.5, 0.25])[:, None, None]  # ALiBi-like distance penalty per head
    dist = np.abs(np.arange(5)[:, None] - np.arange(7)[None, :])
    return _exact(-slopes * dist + 0.5 * rng.standard_normal((2, 5, 7)))[None]


def _large_bias(rng: np.random.Generator) -> NDArray[np.float64]:
    """Integer biases of 100 to 250 per row (exact in every dtype), a few units apart per key."""
    row = 100 + 30 * np.arange(6)[:, None] + rng.integers(-3, 4, size=(1, 2, 6, 9))
    return row.astype(np.float64)


def _bool_mask(rng: np.random.Generator) -> NDArray[np.bool_]:
    return _row_mask(rng, (2, 1, 5, 7), 0.5)


def _key_padding(rng: np.random.Generator) -> NDArray[np.bool_]:
    return padding_mask(np.array([7, 4, 1]), 7)


def _key_padding_11(rng: np.random.Generator) -> NDArray[np.bool_]:
    return padding_mask(np.array([11, 5, 1]), 11)


def _window(rng: np.random.Generator) -> NDArray[np.bool_]:
    return sliding_window_mask(9, 9, (3, 1))


def _causal_bool(rng: np.random.Generator) -> NDArray[np.bool_]:
    """Per-batch and per-head key mask (B, Hq, L, S) to intersect with the causal mask."""
    m = _row_mask(rng, (2, 2, 6, 9), 0.6)
    m[..., 0] = True  # key 0 is visible to every query under either causal alignment
    m[..., :, 8] = True  # and the last key, so bottom-right rows keep their diagonal
    return m


def _causal_float(rng: np.random.Generator) -> NDArray[np.float64]:
    """Per-batch float bias (B, 1, L, S) with a few -inf entries, to add to a causal mask."""
    b = _normal(rng, 2, 1, 6, 9)
    b[0, 0, 3, 1] = b[1, 0, 5, 4] = -np.inf
    return b


def _per_batch_bool(rng: np.random.Generator) -> NDArray[np.bool_]:
    return _row_mask(rng, (3, 2, 5, 11), 0.4)


def _per_batch_float(rng: np.random.Generator) -> NDArray[np.float64]:
    return _normal(rng, 3, 1, 5, 11, std=2.0)


def _below_sentinel(rng: np.random.Generator) -> NDArray[np.float64]:
    """Every visible logit is about -6.1e4 (below the -5e4 of finite mask sentinels).

    Exact in float16 and bfloat16 (-61440 = -15 * 2^12); the keys of a row tie (see
    :func:`_tied_keys`), so the softmax over the visible keys is uniform in any dtype.
    """
    return np.full((1, 2, 5, 8), -61440.0)


def _below_sentinel_padded(rng: np.random.Generator) -> NDArray[np.float64]:
    """-61440 on real keys, -inf on padding keys (lengths [8, 3]), per batch."""
    b = np.full((2, 1, 1, 8), -61440.0)
    b[1, ..., 3:] = -np.inf
    return b


def _tied_keys(
    rng: np.random.Generator, q_shape: tuple[int, ...], k_shape: tuple[int, ...], Ev: int
) -> tuple[NDArray[np.float64], ...]:
    """Draw normal q and v and one key per head, repeated (the scores of a row tie)."""
    q = _normal(rng, *q_shape)
    k = np.broadcast_to(_normal(rng, *k_shape[:-2], 1, k_shape[-1]), k_shape).copy()
    return q, k, _normal(rng, *k_shape[:-1], Ev)


def _heavy_tailed(
    rng: np.random.Generator, q_shape: tuple[int, ...], k_shape: tuple[int, ...], Ev: int
) -> tuple[NDArray[np.float64], ...]:
    """Student-t (3 degrees of freedom) q, k, v: heavy tails, a few entries near 10."""
    q, k = (_exact(np.clip(rng.standard_t(3, s), -12, 12) * 0.6) for s in (q_shape, k_shape))
    return q, k, _exact(np.clip(rng.standard_t(3, k_shape[:-1] + (Ev,)), -12, 12))


def _outlier_channels(
    rng: np.random.Generator, q_shape: tuple[int, ...], k_shape: tuple[int, ...], Ev: int
) -> tuple[NDArray[np.float64], ...]:
    """Massive activations: 2 outlier channels of k 12x larger; one value row 50x larger."""
    q, k, v = _standard(rng, q_shape, k_shape, Ev)
    k[..., [3, 11]] *= 12.0
    v[..., 2, :] *= 50.0  # a "massive activation" token (an attention-sink-like key)
    return _exact(0.5 * q), _exact(k), _exact(v)


_CAUSAL: dict[str, Any] = {"is_causal": True}
_BOTTOM_RIGHT: dict[str, Any] = {"is_causal": True, "causal_align": "bottom_right"}
_GQA: dict[str, Any] = {"enable_gqa": True}
_TILED: dict[str, Any] = {"tiled": True}
_ALIBI: dict[str, Any] = {"alibi_slopes": True}
_SINKS: dict[str, Any] = {"sinks": True}

#: The scaled dot-product attention cases, one per line: name, seed, q shape (B, Hq, L, E),
#: k shape (B, Hkv, S, E), Ev, keywords of :func:`_sdpa_case` (a mask is a function of the
#: case's generator). Adding or changing a line changes the suite: bump SUITE_VERSION.
_SDPA_TABLE: list[tuple[str, int, tuple[int, ...], tuple[int, ...], int, dict[str, Any]]] = [
    ("plain", 1, (2, 3, 6, 8), (2, 3, 6, 8), 8, {}),
    ("lengths_differ", 2, (2, 2, 4, 8), (2, 2, 9, 8), 8, {}),
    ("value_width", 3, (2, 2, 5, 8), (2, 2, 7, 8), 3, {}),
    ("batch_broadcast", 4, (3, 2, 5, 8), (1, 2, 7, 8), 8, {}),
    ("bool_mask", 5, (2, 2, 5, 8), (2, 2, 7, 8), 8, {"attn_mask": _bool_mask}),
    ("float_bias", 6, (2, 2, 5, 8), (2, 2, 7, 8), 8, {"attn_mask": _float_bias}),
    ("causal_square", 7, (2, 2, 6, 8), (2, 2, 6, 8), 8, _CAUSAL),
    ("causal_top_left_short", 8, (2, 2, 4, 8), (2, 2, 7, 8), 8, _CAUSAL),
    ("causal_top_left_tall", 9, (2, 2, 7, 8), (2, 2, 4, 8), 8, _CAUSAL),
    ("causal_bottom_right_short", 10, (2, 2, 4, 8), (2, 2, 7, 8), 8, _BOTTOM_RIGHT),
    ("causal_bottom_right_tall", 11, (2, 2, 7, 8), (2, 2, 4, 8), 8, _BOTTOM_RIGHT),
    ("key_padding", 12, (3, 2, 5, 8), (3, 2, 7, 8), 8, {"attn_mask": _key_padding}),
    ("sliding_window", 13, (2, 2, 9, 8), (2, 2, 9, 8), 8, {"attn_mask": _window}),
    ("fully_masked_rows", 14, (2, 2, 6, 8), (2, 2, 6, 8), 8, {"attn_mask": _fully_masked}),
    ("gqa", 15, (2, 6, 5, 8), (2, 2, 7, 8), 8, _GQA),
    ("mqa", 16, (2, 4, 5, 8), (2, 1, 7, 8), 8, _GQA),
    ("dropout", 17, (2, 2, 5, 8), (2, 2, 7, 8), 8, {"dropout_p": 0.25}),
    ("large_logits", 18, (1, 2, 6, 8), (1, 2, 9, 8), 8, {"attn_mask": _large_bias}),
    ("single_key", 19, (2, 2, 4, 8), (2, 2, 1, 8), 8, {}),
    ("long_rows", 20, (1, 2, 4, 16), (1, 2, 2048, 16), 16, {}),
    # Blind spots of suite version 1 (issue 15): scales, causal AND a mask, long rows, ...
    ("scale_not_default", 23, (2, 2, 5, 8), (2, 2, 7, 8), 8, {"scale": 0.5}),
    ("scale_one_causal", 24, (2, 2, 6, 8), (2, 2, 6, 8), 8, {"scale": 1.0, **_CAUSAL}),
    ("scale_small_gqa", 25, (2, 4, 5, 16), (2, 2, 9, 16), 16, {"scale": 0.0625, **_GQA}),
    (
        "causal_and_bool_mask",
        26,
        (2, 2, 6, 8),
        (2, 2, 9, 8),
        8,
        {"attn_mask": _causal_bool, **_CAUSAL},
    ),
    (
        "causal_bottom_right_and_bool_mask",
        27,
        (2, 2, 6, 8),
        (2, 2, 9, 8),
        8,
        {"attn_mask": _causal_bool, **_BOTTOM_RIGHT},
    ),
    (
        "causal_and_float_bias",
        28,
        (2, 2, 6, 8),
        (2, 2, 9, 8),
        8,
        {"attn_mask": _causal_float, **_CAUSAL},
    ),
    (
        "causal_bottom_right_and_float_bias",
        29,
        (2, 2, 6, 8),
        (2, 2, 9, 8),
        8,
        {"attn_mask": _causal_float, **_BOTTOM_RIGHT},
    ),
    ("long_rows_8192", 30, (1, 1, 4, 16), (1, 1, 8192, 16), 16, _TILED),
    ("long_rows_8192_causal", 31, (1, 1, 4, 8), (1, 1, 8192, 8), 8, {**_BOTTOM_RIGHT, **_TILED}),
    ("long_rows_gqa", 32, (1, 4, 3, 16), (1, 2, 1024, 16), 16, _GQA),
    ("bool_mask_per_batch", 33, (3, 2, 5, 8), (3, 2, 11, 8), 8, {"attn_mask": _per_batch_bool}),
    ("float_bias_per_batch", 34, (3, 2, 5, 8), (3, 2, 11, 8), 8, {"attn_mask": _per_batch_float}),
    ("gqa_causal", 35, (2, 6, 7, 8), (2, 3, 7, 8), 8, {**_GQA, **_CAUSAL}),
    ("dropout_causal", 36, (2, 2, 6, 8), (2, 2, 6, 8), 8, {"dropout_p": 0.5, **_CAUSAL}),
    (
        "logits_below_sentinel",
        37,
        (1, 2, 5, 8),
        (1, 2, 8, 8),
        8,
        {"attn_mask": _below_sentinel, "draw": _tied_keys, **_CAUSAL},
    ),
    (
        "logits_below_sentinel_padded",
        38,
        (2, 2, 4, 8),
        (2, 2, 8, 8),
        8,
        {"attn_mask": _below_sentinel_padded, "draw": _tied_keys},
    ),
    ("heavy_tailed", 39, (2, 2, 6, 16), (2, 2, 24, 16), 16, {"draw": _heavy_tailed}),
    (
        "outlier_channels",
        40,
        (2, 2, 6, 16),
        (2, 2, 24, 16),
        16,
        {"draw": _outlier_channels, **_CAUSAL},
    ),
    ("head_dim_59", 41, (2, 2, 5, 59), (2, 2, 7, 59), 59, {}),
    ("head_dim_72", 42, (1, 3, 6, 72), (1, 3, 6, 72), 72, _CAUSAL),
    ("head_dim_104", 43, (2, 2, 5, 104), (2, 1, 9, 104), 104, _GQA),
    ("mla_widths", 44, (2, 2, 5, 192), (2, 2, 7, 192), 128, _CAUSAL),
    ("decode_single_query", 45, (2, 4, 1, 16), (2, 2, 37, 16), 16, {**_GQA, **_BOTTOM_RIGHT}),
    (
        "decode_single_query_masked",
        46,
        (3, 2, 1, 8),
        (3, 2, 11, 8),
        8,
        {"attn_mask": _key_padding_11},
    ),
    ("single_key_causal", 47, (2, 2, 3, 8), (2, 2, 1, 8), 8, _CAUSAL),
    # The Variants (docs/variants.md), one per variant, then combinations of real models
    ("variant_softcap", 48, (2, 2, 5, 8), (2, 2, 7, 8), 8, {"variants": {"softcap": 2.0}}),
    (
        "variant_window",
        49,
        (2, 2, 6, 8),
        (2, 2, 9, 8),
        8,
        {"variants": {"window": (2, 1)}, "causal_align": "bottom_right"},
    ),
    ("variant_window_left", 50, (2, 2, 9, 8), (2, 2, 9, 8), 8, {"variants": {"window": (3, None)}}),
    ("variant_alibi", 51, (2, 4, 5, 8), (2, 4, 7, 8), 8, {"variants": _ALIBI}),
    ("variant_sinks", 52, (2, 2, 5, 8), (2, 2, 7, 8), 8, {"variants": _SINKS}),
    (
        "variant_chunk_causal",
        53,
        (2, 2, 10, 8),
        (2, 2, 10, 8),
        8,
        {"variants": {"chunk_size": 4}, **_CAUSAL},
    ),
    (
        "variant_sink_tokens_window",
        54,
        (2, 2, 10, 8),
        (2, 2, 10, 8),
        8,
        {"variants": {"sink_tokens": 2, "window": (3, 0)}, **_CAUSAL},
    ),
    (
        "variant_gemma2",
        55,
        (2, 4, 9, 16),
        (2, 2, 9, 16),
        16,
        {"variants": {"softcap": 5.0, "window": (4, 0)}, **_GQA, **_CAUSAL},
    ),
    (
        "variant_gpt_oss",
        56,
        (2, 4, 9, 8),
        (2, 2, 9, 8),
        8,
        {"variants": {"window": (3, 0), **_SINKS}, **_GQA, **_CAUSAL},
    ),
    (
        "variant_alibi_bottom_right",
        57,
        (2, 4, 4, 8),
        (2, 4, 9, 8),
        8,
        {"variants": _ALIBI, **_BOTTOM_RIGHT},
    ),
    (
        "variant_sinks_fully_masked",
        58,
        (1, 2, 6, 8),
        (1, 2, 3, 8),
        8,
        {"variants": _SINKS, **_BOTTOM_RIGHT},
    ),
]

#: One sentence per case, written into manifest.json (changing one changes the suite's bytes).
_DESCRIPTIONS = {
    "plain": "Self-attention shapes, no mask: L = S, E = Ev.",
    "lengths_differ": "L != S: 4 queries over 9 keys.",
    "value_width": "E != Ev: query/key width 8, value width 3.",
    "batch_broadcast": "k and v have batch 1 and broadcast over q's batch 3; dk, dv are summed "
    "over it.",
    "bool_mask": "Boolean attn_mask of shape (B, 1, L, S), True = attend, broadcast over heads.",
    "float_bias": "Float attn_mask (1, Hq, L, S) added to the scores (ALiBi-like); its gradient "
    "d_attn_mask is expected.",
    "causal_square": "is_causal with L = S.",
    "causal_top_left_short": "is_causal, top-left aligned (torch), L = 4 < S = 7: query i sees "
    "keys j <= i.",
    "causal_top_left_tall": "is_causal, top-left aligned, L = 7 > S = 4.",
    "causal_bottom_right_short": "is_causal, bottom-right aligned (FlashAttention), L = 4 < S = 7: "
    "query i sees keys j <= i + S - L.",
    "causal_bottom_right_tall": "is_causal, bottom-right aligned, L = 7 > S = 4: the first 3 "
    "queries see no key (output 0, lse -inf).",
    "key_padding": "Key padding: sequence b has lengths [7, 4, 1] real keys, mask (B, 1, 1, S) "
    "True = real key.",
    "sliding_window": "Sliding window: query i sees keys i-3 .. i+1 (mask (L, S)).",
    "fully_masked_rows": "Boolean mask with rows whose every key is masked: output 0, weights 0, "
    "lse -inf, zero gradients (PyTorch >= 2.5).",
    "gqa": "Grouped-query attention: Hq = 6 query heads share Hkv = 2 key/value heads, query head "
    "h uses kv head h // 3 (repeat_interleave).",
    "mqa": "Multi-query attention: Hq = 4 query heads share one key/value head.",
    "dropout": "Dropout p = 0.25 with the given keep-mask dropout_mask (True = kept); kept weights "
    "are scaled by 1/(1-p). 'weights' are before dropout.",
    "large_logits": "Logits of 100 to 250 (a large float bias on O(1) scores): exp without the "
    "max shift overflows float32, bfloat16 and float16.",
    "single_key": "S = 1: every weight is 1, output = v, dq = dk = 0.",
    "long_rows": "Long rows: S = 2048 keys (accumulation error grows with S).",
    "scale_not_default": "scale = 0.5, not 1/sqrt(E) = 0.354: a kernel that ignores scale= fails.",
    "scale_one_causal": "scale = 1.0 with is_causal (L = S = 6).",
    "scale_small_gqa": "scale = 1/16 (not 1/sqrt(16) = 1/4) with GQA, Hq = 4 over Hkv = 2.",
    "causal_and_bool_mask": "is_causal (top-left) AND a per-batch, per-head boolean attn_mask "
    "(B, Hq, L, S): a key takes part only if both allow it.",
    "causal_bottom_right_and_bool_mask": "Bottom-right causal (L = 6 < S = 9) AND a per-batch, "
    "per-head boolean attn_mask.",
    "causal_and_float_bias": "is_causal (top-left) AND a per-batch float attn_mask (B, 1, L, S) "
    "with a few -inf entries; d_attn_mask is expected (0 where causal-masked).",
    "causal_bottom_right_and_float_bias": "Bottom-right causal AND a per-batch float attn_mask "
    "with a few -inf entries; d_attn_mask is expected.",
    "long_rows_8192": "Long rows: S = 8192 keys, L = 4, E = 16 (low-precision running "
    "accumulators fail from here); computed by the tiled path, no weights.",
    "long_rows_8192_causal": "S = 8192 keys, L = 4, bottom-right causal: the last query sees "
    "every key; computed by the tiled path, no weights.",
    "long_rows_gqa": "S = 1024 keys with GQA (Hq = 4 over Hkv = 2): a second row over 64 keys.",
    "bool_mask_per_batch": "Boolean attn_mask (B, Hq, L, S), different for each of B = 3 batch "
    "rows and each head.",
    "float_bias_per_batch": "Float attn_mask (B, 1, L, S), different for each of B = 3 batch rows; "
    "d_attn_mask is summed over heads only.",
    "gqa_causal": "GQA (Hq = 6 over Hkv = 3) with is_causal.",
    "dropout_causal": "Dropout p = 0.5 with a given keep-mask, and is_causal.",
    "logits_below_sentinel": "Every visible logit is -61440 (a float bias; the keys of a head tie, "
    "so the softmax is uniform over the visible keys) AND is_causal: a kernel that masks with a "
    "finite sentinel such as -5e4 or -1e4 gives the masked keys the weight.",
    "logits_below_sentinel_padded": "Float attn_mask: -61440 on real keys, -inf on padding "
    "(lengths [8, 3]); tied keys: uniform weights over the real keys.",
    "heavy_tailed": "Heavy-tailed inputs: q, k, v drawn from a Student-t with 3 degrees of "
    "freedom (entries up to about 10), not a standard normal.",
    "outlier_channels": "Massive activations: 2 channels of k 12x larger than the rest (outlier "
    "features) and one value row 50x larger, with is_causal.",
    "head_dim_59": "Odd head dim E = Ev = 59 (not a multiple of 8).",
    "head_dim_72": "Head dim E = Ev = 72, with is_causal.",
    "head_dim_104": "Head dim E = Ev = 104 with MQA (Hq = 2 over Hkv = 1).",
    "mla_widths": "E != Ev as in MLA (DeepSeek-V2/V3): q, k width 192, v width 128, is_causal.",
    "decode_single_query": "Decode: L = 1 query over S = 37 keys, GQA, bottom-right causal (the "
    "query sees every key).",
    "decode_single_query_masked": "Decode: L = 1 query, key padding with lengths [11, 5, 1].",
    "single_key_causal": "S = 1 key with is_causal (top-left): every query sees key 0.",
    "variant_softcap": "Logit soft-capping (Gemma 2, Grok): S <- c tanh(S / c) with c = 2, "
    "Eq. (8.2), before masking.",
    "variant_window": "Sliding window (left, right) = (2, 1) aligned bottom-right, L = 6 < S = 9: "
    "query i sees keys i + 3 - 2 .. i + 3 + 1, Eq. (2.8).",
    "variant_window_left": "Window (3, None): query i sees keys j >= i - 3, unbounded on the "
    "right (FlashAttention window_size = (3, -1)).",
    "variant_alibi": "ALiBi: slopes mu_h = 2^(-8 (h + 1) / Hq) (h from 0), scores minus "
    "mu_h |i - j|, Eq. (8.4), no causal mask.",
    "variant_sinks": "Attention sinks (gpt-oss): a learned logit per head in every row's "
    "denominator, Eq. (8.9); d_sinks expected; weights sum to less than 1; lse includes the sink.",
    "variant_chunk_causal": "Chunked attention (Llama 4) with chunk_size 4 AND is_causal: query i "
    "sees keys j <= i of its own chunk, Eq. (8.7).",
    "variant_sink_tokens_window": "StreamingLLM: causal window (3, 0) plus the first 2 keys always "
    "visible (sink_tokens = 2), Eq. (8.8).",
    "variant_gemma2": "Gemma-2-like: softcap c = 5, causal sliding window (4, 0), GQA (Hq = 4 "
    "over Hkv = 2).",
    "variant_gpt_oss": "gpt-oss-like: attention sinks, causal sliding window (3, 0), GQA (Hq = 4 "
    "over Hkv = 2); d_sinks expected.",
    "variant_alibi_bottom_right": "ALiBi with bottom-right causal, L = 4 < S = 9: distances "
    "|i + S - L - j| (FlashAttention's alibi_slopes).",
    "variant_sinks_fully_masked": "Sinks with bottom-right causal, L = 6 > S = 3: the first 3 rows "
    "see no key, only the sink (output 0, weights 0, lse = sink, d_sinks gets 0 from them).",
}


def _sdpa_cases() -> list[Case]:
    """Build the table's cases, in its order."""
    return [
        _sdpa_case(name, _DESCRIPTIONS[name], seed, q, k, Ev, **options)
        for name, seed, q, k, Ev, options in _SDPA_TABLE
    ]


def build_suite() -> list[Case]:
    r"""Every golden case, computed in float64 by the package's core functions.

    Returns
    -------
    cases : list of Case
        Deterministic: the same version builds identical arrays.

    Notes
    -----
    The expected values are Eqs. (2.1)-(2.5) (forward) and Eqs. (2.10)-(2.16)
    (backward) of ``docs/attention.md``, as computed by
    :func:`~numpy_attention.attention.attention_forward` and
    :func:`~numpy_attention.attention.attention_backward`.

    Examples
    --------
    >>> cases = {c.name: c for c in build_suite()}
    >>> float(cases["single_key"].expected["weights"].min())
    1.0
    """
    cases = _sdpa_cases()
    cases.extend(_layer_cases())
    cases.extend(_serving_cases())
    return cases


#: The serving cases and the padded case, one per line: name, kind (its builder in
#: :mod:`numpy_attention.verify.serving_cases`), seed, positional and keyword arguments.
_SERVING_TABLE: list[tuple[str, str, int, tuple[Any, ...], dict[str, Any]]] = [
    ("nan_padding", "padded", 60, ((3, 2, 5, 9, 8), [9, 4, 1]), {}),
    ("nan_padding_causal", "padded", 61, ((2, 2, 6, 6, 8), [6, 2]), {"is_causal": True}),
    (
        "varlen_causal_bottom_right",
        "varlen",
        62,
        ([3, 0, 1, 4], [5, 3, 1, 6], (4, 2), (8, 8)),
        {"is_causal": True},
    ),
    (
        "varlen_causal_top_left",
        "varlen",
        63,
        ([4, 1, 0, 3], [2, 1, 0, 5], (2, 2), (8, 6)),
        {"is_causal": True, "causal_align": "top_left"},
    ),
    (
        "varlen_window",
        "varlen",
        64,
        ([5, 0, 1, 6, 2], [5, 2, 1, 8, 0], (2, 1), (8, 8)),
        {"window": (2, 1)},
    ),
    (
        "kvcache_paged_rotary",
        "kvcache",
        65,
        ([5, 12, 0], 1, (4, 2), (16, 16)),
        {"page": 4, "max_blocks": 4, "rotary_dim": 8, "interleaved": False},
    ),
    (
        "kvcache_paged_rotary_interleaved",
        "kvcache",
        66,
        ([3, 9], 3, (2, 1), (8, 8)),
        {"page": 4, "max_blocks": 3, "rotary_dim": 8, "interleaved": True},
    ),
    ("merge_split_kv", "merge", 67, ((2, 2, 3, 10, 8), [0, 4, 7, 10]), {}),
    ("rotary_half", "rotary", 68, ((2, 5, 2, 16), 8), {"interleaved": False, "offset": 3}),
    ("rotary_interleaved", "rotary", 69, ((2, 5, 2, 16), 16), {"interleaved": True}),
]

_SERVING_DESCRIPTIONS = {
    "nan_padding": "Padded batch, key lengths [9, 4, 1]: k and v are NaN past each length, with "
    "the boolean padding mask; expected values are finite (attention over the real keys, dk = dv "
    "= 0 on padding). Dense P V leaks the NaN (0 * NaN): never read past a sequence's length.",
    "nan_padding_causal": "Padded batch with is_causal, key lengths [6, 2], NaN past each length.",
    "varlen_causal_bottom_right": "Packed sequences (q lengths [3, 0, 1, 4], k lengths [5, 3, 1, "
    "6]: a zero-length and a length-1 sequence), GQA 4 over 2, causal bottom-right per sequence.",
    "varlen_causal_top_left": "Packed sequences (q [4, 1, 0, 3], k [2, 1, 0, 5]), causal top-left "
    "per sequence, Ev != E.",
    "varlen_window": "Packed sequences (q [5, 0, 1, 6, 2], k [5, 2, 1, 8, 0]), window (2, 1) "
    "bottom-right, GQA; the last sequence has no key (output 0, lse -inf).",
    "kvcache_paged_rotary": "Decode step over a paged KV cache (page 4, shuffled block table, "
    "cache_seqlens [5, 12, 0]): one new key/value per row appended, rotate-half rotary (R = 8 < E "
    "= 16) at positions n_b; unused slots are NaN and must not leak.",
    "kvcache_paged_rotary_interleaved": "3 new tokens per row appended to a paged cache "
    "(cache_seqlens [3, 9], up to its capacity), interleaved (GPT-J) rotary, causal, MQA.",
    "merge_split_kv": "Split-KV merge (FlashDecoding) of 3 key chunks of causal attention: some "
    "chunks are empty for some rows (lse -inf, output NaN: not to be read), one row is empty in "
    "every chunk (output 0, lse -inf).",
    "rotary_half": "Rotary embedding, rotate-half layout (GPT-NeoX, Llama), partial: R = 8 of "
    "E = 16, positions 3..7.",
    "rotary_interleaved": "Rotary embedding, interleaved layout (GPT-J), R = E = 16.",
}


def _serving_cases() -> list[Case]:
    """Build the serving table's cases (their builders import this module)."""
    from . import serving_cases

    sc = serving_cases
    builders: dict[str, Callable[..., Case]] = {
        "padded": sc.padded_case, "varlen": sc.varlen_case, "kvcache": sc.kvcache_case,
        "merge": sc.merge_case, "rotary": sc.rotary_case,
    }  # fmt: skip
    return [
        builders[kind](name, _SERVING_DESCRIPTIONS[name], seed, *args, **kw)
        for name, kind, seed, args, kw in _SERVING_TABLE
    ]


def _layer_params(rng: np.random.Generator, e_q: int, e_kv: int, heads: int) -> dict[str, Any]:
    """Layer weights as ``init_cross_attention`` draws them, biases small and nonzero, all exact."""
    from ..layers import init_cross_attention

    p = init_cross_attention(rng, e_q, e_kv, heads)
    out = {n: _exact(getattr(p, n)) for n in ("w_q", "w_k", "w_v", "w_o")}
    for n in ("b_q", "b_k", "b_v", "b_o"):
        out[n] = _normal(rng, *getattr(p, n).shape, std=0.1)
    return out


def _cross_attention_case() -> Case:
    """``cross_attention_forward`` with given weights: nn.MultiheadAttention's computation."""
    from ..layers import CrossAttentionParams, cross_attention_backward, cross_attention_forward

    rng = np.random.default_rng(21)
    B, L, S, e_q, e_kv, H = 2, 4, 6, 8, 6, 2
    w = _layer_params(rng, e_q, e_kv, H)
    x_q, x_kv = _normal(rng, B, L, e_q), _normal(rng, B, S, e_kv)
    lengths = np.array([6, 3], dtype=np.int64)
    params = CrossAttentionParams(**w, num_heads=H)
    out, cache = cross_attention_forward(params, x_q, x_kv, key_lengths=lengths)
    d_out = _normal(rng, *out.shape)
    d_x_q, d_x_kv, d_p = cross_attention_backward(d_out, cache)
    inputs = {"x_q": x_q, "x_kv": x_kv, **w, "key_lengths": lengths,
              "num_heads": np.array(H, dtype=np.int64), "d_out": d_out}  # fmt: skip
    expected = {"out": out, "weights": cache.P, "d_x_q": d_x_q, "d_x_kv": d_x_kv}
    expected.update({f"d_{n}": getattr(d_p, n) for n in w})
    # b_k adds q.b_k to every score of a row, which softmax ignores: its gradient is exactly 0.
    # Store that 0, not float64 round-off (~1e-16), which would make a meaningless scale.
    expected["d_b_k"] = np.zeros_like(expected["d_b_k"])
    flags = {"num_heads": H, "key_lengths": lengths.tolist(), "scale": 1 / math.sqrt(e_q // H),
             "projection": "y = x @ W + b (torch nn.Linear stores W transposed)"}  # fmt: skip
    desc = ("Cross-attention layer (nn.MultiheadAttention, batch_first) with given weights: "
            "x_q (B, L, Dq), x_kv (B, S, Dkv), 2 heads, key_lengths [6, 3] (keys at positions "
            ">= length are padding).")  # fmt: skip
    expected = {n: np.asarray(a, dtype=np.float64) for n, a in expected.items()}
    return Case("cross_attention_layer", "cross_attention", desc, inputs, expected, flags)


def _fusion_case() -> Case:
    """``fusion_forward`` with fixed weights alpha: ``sum_r alpha_r SelfAttention_r(x)``."""
    from ..fusion import FusionParams, fusion_backward, fusion_forward
    from ..layers import CrossAttentionParams

    rng = np.random.default_rng(22)
    B, T, E, H, N = 2, 5, 8, 2, 3
    ws = [_layer_params(rng, E, E, H) for _ in range(N)]
    alpha = np.array([0.5, 0.25, 0.25])
    x = _normal(rng, B, T, E)
    params = FusionParams(tuple(CrossAttentionParams(**w, num_heads=H) for w in ws))
    y, cache = fusion_forward(params, x, alpha=alpha)
    d_out = _normal(rng, *y.shape)
    d_x, d_p = fusion_backward(d_out, cache)
    inputs: dict[str, NDArray[Any]] = {"x": x, "alpha": alpha}
    expected: dict[str, NDArray[Any]] = {"out": y, "d_x": d_x, "d_alpha": np.asarray(d_p.alpha)}
    for i, (w, g) in enumerate(zip(ws, d_p.branches, strict=True)):
        inputs.update({f"branch{i}_{n}": a for n, a in w.items()})
        expected.update({f"d_branch{i}_{n}": getattr(g, n) for n in w})
        expected[f"d_branch{i}_b_k"] = np.zeros(w["b_k"].shape)  # exactly 0, as in the layer case
    inputs.update(num_heads=np.array(H, dtype=np.int64), d_out=d_out)
    flags = {"num_branches": N, "num_heads": H, "alpha": alpha.tolist(),
             "formula": "out = sum_r alpha_r * SelfAttention_r(x), Eq. (4.1)"}  # fmt: skip
    desc = (
        "Weighted fusion of 3 self-attention branches (own weights each, 2 heads) with "
        "fixed weights alpha = [0.5, 0.25, 0.25]; gradients of x, alpha and every branch."
    )
    expected = {n: np.asarray(a, dtype=np.float64) for n, a in expected.items()}
    return Case("weighted_fusion", "fusion", desc, inputs, expected, flags)


def _layer_cases() -> list[Case]:
    """Build the cross-attention layer and weighted-fusion cases (layers.py, fusion.py)."""
    return [_cross_attention_case(), _fusion_case()]
