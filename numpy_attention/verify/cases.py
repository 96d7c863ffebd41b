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

from ..attention import attention_backward, attention_forward
from ..masks import padding_mask, sliding_window_mask
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
) -> Case:
    """Draw the inputs from ``seed`` and compute the expected results in float64."""
    rng = np.random.default_rng(seed)
    q, k = _normal(rng, *q_shape), _normal(rng, *k_shape)
    v = _normal(rng, *k_shape[:-1], Ev)
    mask = attn_mask(rng) if attn_mask is not None else None
    E = q_shape[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    probe, _ = attention_forward(q, k, v, mask, is_causal=is_causal, scale=scale,
                                 enable_gqa=enable_gqa, causal_align=causal_align)  # fmt: skip
    keep = rng.random(probe.shape[:-1] + (k_shape[-2],)) >= dropout_p if dropout_p else None
    d_out = _normal(rng, *probe.shape)
    out, cache = attention_forward(
        q, k, v, mask, dropout_p, is_causal, scale, enable_gqa,
        dropout_mask=keep, causal_align=causal_align,
    )  # fmt: skip
    grads = attention_backward(d_out, cache)
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
    expected = {
        "out": out, "weights": cache.P, "lse": cache.lse,
        "dq": grads.dq, "dk": grads.dk, "dv": grads.dv,
    }  # fmt: skip
    if grads.d_attn_mask is not None:
        expected["d_attn_mask"] = grads.d_attn_mask
    flags = {
        "scale": scale,
        "scale_is_default": scale == 1.0 / math.sqrt(E),
        "dropout_p": float(dropout_p),
        "is_causal": bool(is_causal),
        "causal_align": causal_align,
        "enable_gqa": bool(enable_gqa),
        "attn_mask": None if mask is None else ("bool" if mask.dtype == bool else "float"),
    }
    expected = {n: np.ascontiguousarray(a, dtype=np.float64) for n, a in expected.items()}
    return Case(name, "sdpa", description, inputs, expected, flags)


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


def _window(rng: np.random.Generator) -> NDArray[np.bool_]:
    return sliding_window_mask(9, 9, (3, 1))


_CAUSAL: dict[str, Any] = {"is_causal": True}
_BOTTOM_RIGHT: dict[str, Any] = {"is_causal": True, "causal_align": "bottom_right"}
_GQA: dict[str, Any] = {"enable_gqa": True}

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
]

#: One sentence per case, written into manifest.json (changing one changes the suite's bytes).
_DESCRIPTIONS = {
    "plain": "Self-attention shapes, no mask: L = S, E = Ev.",
    "lengths_differ": "L != S: 4 queries over 9 keys.",
    "value_width": "E != Ev: query/key width 8, value width 3.",
    "batch_broadcast": "k and v have batch 1 and broadcast over q's batch 3; dk, dv are summed "
    "over it.",
    "bool_mask": "Boolean attn_mask of shape (B, 1, L, S), True = attend, broadcast over heads.",
    "float_bias": "Float attn_mask (1, H, L, S) added to the scores (ALiBi-like); its gradient "
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
    return cases


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
            "x_q (B, L, Eq), x_kv (B, S, Ekv), 2 heads, key_lengths [6, 3] (keys at positions "
            ">= length are padding).")  # fmt: skip
    expected = {n: np.asarray(a, dtype=np.float64) for n, a in expected.items()}
    return Case("cross_attention_layer", "cross_attention", desc, inputs, expected, flags)


def _fusion_case() -> Case:
    """``fusion_forward`` with fixed weights alpha: ``sum_i alpha_i SelfAttention_i(x)``."""
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
             "formula": "out = sum_i alpha_i * SelfAttention_i(x), Eq. (4.1)"}  # fmt: skip
    desc = (
        "Weighted fusion of 3 self-attention branches (own weights each, 2 heads) with "
        "fixed weights alpha = [0.5, 0.25, 0.25]; gradients of x, alpha and every branch."
    )
    expected = {n: np.asarray(a, dtype=np.float64) for n, a in expected.items()}
    return Case("weighted_fusion", "fusion", desc, inputs, expected, flags)


def _layer_cases() -> list[Case]:
    """Build the cross-attention layer and weighted-fusion cases (layers.py, fusion.py)."""
    return [_cross_attention_case(), _fusion_case()]
