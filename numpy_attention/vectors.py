r"""Golden vectors for other implementations, and the ``check`` that grades their results.

``numpy-attention vectors --out DIR`` writes the suite: one ``<case>.npz`` per
case (inputs and float64 expected results) and ``manifest.json``.
``numpy-attention check RESULTS`` compares a candidate's results with it.
Both formats are specified in ``docs/verify.md`` so that C++, Rust or
JavaScript tests can read and write them; in short:

- ``<case>.npz`` holds the inputs under their argument names (``q``, ``k``,
  ``v``, ``attn_mask``, ``dropout_mask``, ``d_out``, and 0-d ``scale``,
  ``dropout_p``, ``is_causal``, ``causal_bottom_right``, ``enable_gqa``)
  and the reference results as ``expected_<quantity>`` (``expected_out``,
  ``expected_weights``, ``expected_lse``, ``expected_dq``, ...).
- A candidate's results are ``<case>.npz`` files in a directory, or one
  ``.npz`` with keys ``<case>/<quantity>``; quantities are named without the
  ``expected_`` prefix and have the expected arrays' shapes.

Every input is exactly representable in bfloat16 and float16, so a candidate
in any dtype sees the very inputs the float64 oracle saw; the differences
``check`` measures are the candidate's arithmetic only.

Shapes (legend as in :mod:`numpy_attention.attention`): ``q (B, Hq, L, E)``,
``k (B, Hkv, S, E)``, ``v (B, Hkv, S, Ev)``, ``out (B, Hq, L, Ev)``,
``weights (B, Hq, L, S)``, ``lse (B, Hq, L)``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .attention import attention_backward, attention_forward
from .masks import padding_mask, sliding_window_mask
from .testing import DTYPES, TOLERANCES, Comparison, compare_attention, round_to_bfloat16

__all__ = [
    "SUITE_FORMAT",
    "SUITE_VERSION",
    "Case",
    "build_suite",
    "write_suite",
    "load_suite",
    "load_results",
    "CheckReport",
    "check_results",
    "register",
    "UnusableInput",
]

#: Identifies the suite's files; readers should refuse anything else.
SUITE_FORMAT = "numpy-attention-vectors"
#: Bumped whenever a case, an input or an expected value changes.
SUITE_VERSION = 1
#: Fixed zip entry timestamp (the earliest a zip can hold) for byte-identical files.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

_SDPA_QUANTITIES = ("out", "weights", "lse", "dq", "dk", "dv")


class UnusableInput(Exception):
    """A suite or results file that cannot be read: missing, corrupt, wrong format."""


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


def _sdpa_cases() -> list[Case]:
    c = _sdpa_case
    return [
        c(
            "plain",
            "Self-attention shapes, no mask: L = S, E = Ev.",
            1,
            (2, 3, 6, 8),
            (2, 3, 6, 8),
            8,
        ),
        c("lengths_differ", "L != S: 4 queries over 9 keys.", 2, (2, 2, 4, 8), (2, 2, 9, 8), 8),
        c(
            "value_width",
            "E != Ev: query/key width 8, value width 3.",
            3,
            (2, 2, 5, 8),
            (2, 2, 7, 8),
            3,
        ),
        c(
            "batch_broadcast",
            "k and v have batch 1 and broadcast over q's batch 3; dk, dv are summed over it.",
            4,
            (3, 2, 5, 8),
            (1, 2, 7, 8),
            8,
        ),
        c(
            "bool_mask",
            "Boolean attn_mask of shape (B, 1, L, S), True = attend, broadcast over heads.",
            5,
            (2, 2, 5, 8),
            (2, 2, 7, 8),
            8,
            attn_mask=lambda r: _row_mask(r, (2, 1, 5, 7), 0.5),
        ),
        c(
            "float_bias",
            "Float attn_mask (1, H, L, S) added to the scores (ALiBi-like); its "
            "gradient d_attn_mask is expected.",
            6,
            (2, 2, 5, 8),
            (2, 2, 7, 8),
            8,
            attn_mask=_float_bias,
        ),
        c(
            "causal_square",
            "is_causal with L = S.",
            7,
            (2, 2, 6, 8),
            (2, 2, 6, 8),
            8,
            is_causal=True,
        ),
        c(
            "causal_top_left_short",
            "is_causal, top-left aligned (torch), L = 4 < S = 7: query i sees keys j <= i.",
            8,
            (2, 2, 4, 8),
            (2, 2, 7, 8),
            8,
            is_causal=True,
        ),
        c(
            "causal_top_left_tall",
            "is_causal, top-left aligned, L = 7 > S = 4.",
            9,
            (2, 2, 7, 8),
            (2, 2, 4, 8),
            8,
            is_causal=True,
        ),
        c(
            "causal_bottom_right_short",
            "is_causal, bottom-right aligned (FlashAttention), "
            "L = 4 < S = 7: query i sees keys j <= i + S - L.",
            10,
            (2, 2, 4, 8),
            (2, 2, 7, 8),
            8,
            is_causal=True,
            causal_align="bottom_right",
        ),
        c(
            "causal_bottom_right_tall",
            "is_causal, bottom-right aligned, L = 7 > S = 4: the "
            "first 3 queries see no key (output 0, lse -inf).",
            11,
            (2, 2, 7, 8),
            (2, 2, 4, 8),
            8,
            is_causal=True,
            causal_align="bottom_right",
        ),
        c(
            "key_padding",
            "Key padding: sequence b has lengths [7, 4, 1] real keys, mask "
            "(B, 1, 1, S) True = real key.",
            12,
            (3, 2, 5, 8),
            (3, 2, 7, 8),
            8,
            attn_mask=lambda r: padding_mask(np.array([7, 4, 1]), 7),
        ),
        c(
            "sliding_window",
            "Sliding window: query i sees keys i-3 .. i+1 (mask (L, S)).",
            13,
            (2, 2, 9, 8),
            (2, 2, 9, 8),
            8,
            attn_mask=lambda r: sliding_window_mask(9, 9, (3, 1)),
        ),
        c(
            "fully_masked_rows",
            "Boolean mask with rows whose every key is masked: output 0, "
            "weights 0, lse -inf, zero gradients (PyTorch >= 2.5).",
            14,
            (2, 2, 6, 8),
            (2, 2, 6, 8),
            8,
            attn_mask=_fully_masked,
        ),
        c(
            "gqa",
            "Grouped-query attention: Hq = 6 query heads share Hkv = 2 key/value heads, "
            "query head h uses kv head h // 3 (repeat_interleave).",
            15,
            (2, 6, 5, 8),
            (2, 2, 7, 8),
            8,
            enable_gqa=True,
        ),
        c(
            "mqa",
            "Multi-query attention: Hq = 4 query heads share one key/value head.",
            16,
            (2, 4, 5, 8),
            (2, 1, 7, 8),
            8,
            enable_gqa=True,
        ),
        c(
            "dropout",
            "Dropout p = 0.25 with the given keep-mask dropout_mask (True = kept); kept "
            "weights are scaled by 1/(1-p). 'weights' are before dropout.",
            17,
            (2, 2, 5, 8),
            (2, 2, 7, 8),
            8,
            dropout_p=0.25,
        ),
        c(
            "large_logits",
            "Logits of 100 to 250 (a large float bias on O(1) scores): exp without "
            "the max shift overflows float32, bfloat16 and float16.",
            18,
            (1, 2, 6, 8),
            (1, 2, 9, 8),
            8,
            attn_mask=_large_bias,
        ),
        c(
            "single_key",
            "S = 1: every weight is 1, output = v, dq = dk = 0.",
            19,
            (2, 2, 4, 8),
            (2, 2, 1, 8),
            8,
        ),
        c(
            "long_rows",
            "Long rows: S = 2048 keys (accumulation error grows with S).",
            20,
            (1, 2, 4, 16),
            (1, 2, 2048, 16),
            16,
        ),
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
    from .layers import init_cross_attention

    p = init_cross_attention(rng, e_q, e_kv, heads)
    out = {n: _exact(getattr(p, n)) for n in ("w_q", "w_k", "w_v", "w_o")}
    for n in ("b_q", "b_k", "b_v", "b_o"):
        out[n] = _normal(rng, *getattr(p, n).shape, std=0.1)
    return out


def _cross_attention_case() -> Case:
    """``cross_attention_forward`` with given weights: nn.MultiheadAttention's computation."""
    from .layers import CrossAttentionParams, cross_attention_backward, cross_attention_forward

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
    from .fusion import FusionParams, fusion_backward, fusion_forward
    from .layers import CrossAttentionParams

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


# ---------------------------------------------------------------------------
# Deterministic files
# ---------------------------------------------------------------------------


def _npz_bytes(arrays: dict[str, NDArray[Any]]) -> bytes:
    """Serialise an uncompressed ``.npz`` with fixed entry dates and order (byte-identical)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            body = io.BytesIO()
            np.lib.format.write_array(body, np.array(a, order="C"), version=(1, 0),
                                      allow_pickle=False)  # fmt: skip
            zf.writestr(info, body.getvalue())
    return buf.getvalue()


def _tolerance_table() -> dict[str, Any]:
    return {
        d: {g: {"atol": t.atol, "rtol": t.rtol} for g, t in TOLERANCES[d].items()} for d in DTYPES
    }


def manifest(cases: Iterable[Case]) -> dict[str, Any]:
    """Return the contents of ``manifest.json`` for ``cases`` (see ``docs/verify.md``)."""
    return {
        "format": SUITE_FORMAT,
        "version": SUITE_VERSION,
        "conventions": {
            "layout": "(B, H, L, E): batch, heads, queries, width (torch); JAX and "
            "FlashAttention use (B, L, H, E)",
            "bool_mask": "True = the key takes part in attention (torch SDPA attn_mask; "
            "nn.MultiheadAttention key_padding_mask is the opposite)",
            "float_mask": "added to the scaled scores; -inf masks",
            "causal": "causal_bottom_right false: query i sees keys j <= i (torch is_causal); "
            "true: j <= i + S - L (FlashAttention)",
            "fully_masked_rows": "output 0, weights 0, lse -inf, gradients 0",
            "gqa": "query head h uses key/value head h // (Hq // Hkv) (repeat_interleave)",
            "lse": "natural logarithm of sum_j exp(masked scaled score), shape (B, Hq, L)",
            "weights": "softmax probabilities before dropout, shape (B, Hq, L, S)",
            "dropout": "dropout_mask True = kept; kept weights are multiplied by 1/(1-p)",
            "gradients": "of sum(out * d_out); dk, dv summed over broadcast batch and GQA groups",
        },
        "tolerance_rule": "|actual - expected| <= atol * max|expected| + rtol * |expected| "
        "elementwise; infinities must match exactly; 'gradient' applies to quantities whose "
        "name starts with 'd', 'forward' to the others",
        "tolerances": _tolerance_table(),
        "cases": [c.manifest_entry() for c in cases],
    }


def _manifest_bytes(cases: Iterable[Case]) -> bytes:
    return (json.dumps(manifest(cases), indent=2, sort_keys=True) + "\n").encode()


def write_suite(out: str | Path, cases: list[Case] | None = None) -> list[Path]:
    r"""Write the suite: ``<case>.npz`` for every case and ``manifest.json``.

    Parameters
    ----------
    out : str or Path
        Directory, created if missing; existing suite files are overwritten.
    cases : list of Case, optional
        Default :func:`build_suite`.

    Returns
    -------
    paths : list of Path
        The files written, manifest last.

    Raises
    ------
    OSError
        If the directory cannot be created or written.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     paths = write_suite(d)
    ...     paths[-1].name, len(paths) == len(build_suite()) + 1
    ('manifest.json', True)
    """
    cases = build_suite() if cases is None else cases
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in cases:
        p = root / f"{c.name}.npz"
        p.write_bytes(_npz_bytes(c.arrays()))
        paths.append(p)
    p = root / "manifest.json"
    p.write_bytes(_manifest_bytes(cases))
    paths.append(p)
    return paths


# ---------------------------------------------------------------------------
# Reading suites and results
# ---------------------------------------------------------------------------


def _load_npz(path: Path, what: str) -> dict[str, NDArray[Any]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UnusableInput(f"{what} {path} does not exist") from None
    except Exception as e:  # corrupt zip, bad header, pickled object arrays ...
        raise UnusableInput(
            f"{what} {path} is not a readable .npz file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'corrupt'})"
        ) from None


def load_suite(suite: str | Path | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    r"""Read a suite directory, or build the suite in memory.

    Parameters
    ----------
    suite : str or Path, optional
        Directory written by :func:`write_suite`. None: build it in memory.

    Returns
    -------
    manifest : dict
        The parsed ``manifest.json``.
    expected : dict of str to dict of str to ndarray
        ``expected[case][quantity]``.

    Raises
    ------
    UnusableInput
        Missing directory or manifest, unreadable JSON, another format or
        version, or a case file that is missing or corrupt.

    Examples
    --------
    >>> man, expected = load_suite()
    >>> man["version"] == SUITE_VERSION, expected["gqa"]["dk"].shape
    (True, (2, 2, 7, 8))
    """
    if suite is None:
        cases = build_suite()
        return manifest(cases), {c.name: dict(c.expected) for c in cases}
    root = Path(suite)
    if not root.is_dir():
        raise UnusableInput(f"suite directory {root} does not exist")
    try:
        man = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        raise UnusableInput(
            f"{root} has no manifest.json; write the suite with 'numpy-attention vectors --out DIR'"
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UnusableInput(f"{root / 'manifest.json'} is not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != SUITE_FORMAT:
        raise UnusableInput(f"{root / 'manifest.json'} is not a {SUITE_FORMAT} manifest")
    if man.get("version") != SUITE_VERSION:
        raise UnusableInput(
            f"suite version {man.get('version')} in {root}, but this check "
            f"reads version {SUITE_VERSION}; rewrite the suite"
        )
    expected = {}
    for entry in man.get("cases", []):
        arrays = _load_npz(root / entry["file"], "suite file")
        expected[entry["name"]] = {
            n[len("expected_") :]: a for n, a in arrays.items() if n.startswith("expected_")
        }
    return man, expected


def load_results(
    path: str | Path, case_names: Iterable[str]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    r"""Read a candidate's results: a directory of ``<case>.npz`` or one ``.npz``.

    Parameters
    ----------
    path : str or Path
        A directory holding ``<case>.npz`` files (keys: quantity names), or
        one ``.npz`` file with keys ``<case>/<quantity>``.
    case_names : iterable of str
        The suite's cases.

    Returns
    -------
    results : dict of str to dict of str to ndarray
        ``results[case][quantity]`` for the cases found.
    unknown : list of str
        Names in the results that are not cases of the suite.

    Raises
    ------
    UnusableInput
        If ``path`` does not exist or a file in it is not a readable ``.npz``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     f = pathlib.Path(d) / "results.npz"
    ...     np.savez(f, **{"plain/out": np.zeros(3), "other/out": np.zeros(1)})
    ...     results, unknown = load_results(f, ["plain", "gqa"])
    >>> list(results["plain"]), unknown
    (['out'], ['other'])
    """
    p = Path(path)
    names = set(case_names)
    results: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    if p.is_dir():
        for f in sorted(p.glob("*.npz")):
            if f.stem in names:
                results[f.stem] = _load_npz(f, "results file")
            else:
                unknown.append(f.stem)
        return results, unknown
    if not p.exists():
        raise UnusableInput(
            f"results {p} do not exist (expected a directory of <case>.npz "
            "files or one .npz with keys '<case>/<quantity>')"
        )
    for key, a in _load_npz(p, "results file").items():
        case, sep, quantity = key.partition("/")
        if not sep:
            unknown.append(key)
        elif case in names:
            results.setdefault(case, {})[quantity] = a
        elif case not in unknown:
            unknown.append(case)
    return results, unknown


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the check table: a (case, quantity) pair."""

    case: str
    quantity: str
    status: str  # PASS, FAIL, MISSING
    comparison: Comparison | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (infinities as strings)."""
        c = self.comparison
        d: dict[str, Any] = {"case": self.case, "quantity": self.quantity, "status": self.status}
        if c is not None:
            d.update(
                max_abs_error=_json_float(c.max_abs), max_rel_error=_json_float(c.max_rel),
                atol=c.atol, rtol=c.rtol, bad_elements=c.n_bad, elements=c.size,
                needed_tolerance=_json_float(c.needed),
            )  # fmt: skip
            if not c.passed:
                d.update(worst_index=list(c.worst_index), worst_where=c.where(),
                         worst_actual=_json_float(c.worst_actual),
                         worst_expected=_json_float(c.worst_desired), hints=c.hints)  # fmt: skip
                if c.shape_error:
                    d["error"] = c.shape_error
        if self.note:
            d["note"] = self.note
        return d


def _json_float(x: float) -> float | str:
    return float(x) if math.isfinite(x) else str(x)


@dataclass
class CheckReport:
    """Outcome of :func:`check_results`."""

    dtype: str
    rows: list[Row]
    missing_cases: list[str]
    unknown: list[str]
    strict: bool = False

    @property
    def counts(self) -> dict[str, int]:
        """Rows per status."""
        out = {"PASS": 0, "FAIL": 0, "MISSING": 0}
        for r in self.rows:
            out[r.status] += 1
        return out

    @property
    def passed(self) -> bool:
        """No FAIL (and, with ``strict``, nothing missing)."""
        n = self.counts
        return n["FAIL"] == 0 and not (self.strict and (n["MISSING"] or self.missing_cases))

    def exit_code(self) -> int:
        """0 if passed, 1 otherwise."""
        return 0 if self.passed else 1

    def table(self) -> str:
        """Format the human-readable table, failures explained below it."""
        head = ("case", "quantity", "max abs err", "max rel err", "atol", "rtol", "result")
        lines = [head]
        for r in self.rows:
            c = r.comparison
            if c is None:
                lines.append((r.case, r.quantity, "-", "-", "-", "-", r.status))
            else:
                lines.append((r.case, r.quantity, f"{c.max_abs:.2e}", f"{c.max_rel:.2e}",
                              f"{c.atol:.1e}", f"{c.rtol:.1e}", r.status))  # fmt: skip
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        text = [
            "  ".join(s.ljust(w) for s, w in zip(row, widths, strict=True)).rstrip()
            for row in lines
        ]
        text.insert(1, "  ".join("-" * w for w in widths))
        fails = [r for r in self.rows if r.status == "FAIL"]
        if fails:
            text.append("")
            text.append("Failures:")
            for r in fails:
                text.append(f"- {r.case}: {r.comparison}".replace("\n", "\n  "))
        for name in self.missing_cases:
            text.append(f"missing case: {name} (no results for it)")
        for name in self.unknown:
            text.append(f"ignored: {name} is not a case of the suite")
        n = self.counts
        verdict = "PASS" if self.passed else "FAIL"
        text.append(
            f"{verdict} ({self.dtype} tolerances): {n['PASS']} passed, {n['FAIL']} failed, "
            f"{n['MISSING']} missing quantities, {len(self.missing_cases)} missing cases"
            + (" (missing counts as failure: --strict)" if self.strict else "")
        )
        return "\n".join(text)

    def as_json(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "dtype": self.dtype,
            "passed": self.passed,
            "strict": self.strict,
            "counts": self.counts,
            "missing_cases": self.missing_cases,
            "unknown": self.unknown,
            "rows": [r.as_dict() for r in self.rows],
        }


def check_results(
    results: dict[str, dict[str, Any]],
    expected: dict[str, dict[str, NDArray[np.float64]]],
    *,
    dtype: str = "float32",
    tolerances: dict[str, Any] | None = None,
    unknown: list[str] | None = None,
    strict: bool = False,
) -> CheckReport:
    r"""Grade a candidate's results against the expected ones.

    Parameters
    ----------
    results : dict
        ``results[case][quantity]`` arrays (see :func:`load_results`).
    expected : dict
        ``expected[case][quantity]`` float64 arrays (see :func:`load_suite`).
    dtype : {"float64", "float32", "float16", "bfloat16"}, optional
        The dtype the candidate computed in; selects the tolerances.
    tolerances : dict, optional
        ``{"forward": {"atol", "rtol"}, "gradient": {...}}`` from a manifest;
        default the package's :data:`~numpy_attention.testing.TOLERANCES`.
    unknown : list of str, optional
        Names found in the results that are not cases (reported).
    strict : bool, optional
        Count missing cases and quantities as failures.

    Returns
    -------
    report : CheckReport

    Raises
    ------
    ValueError
        If ``dtype`` is unknown.

    Notes
    -----
    Each quantity is compared by Eq. (7.1) of ``docs/verify.md``.

    Examples
    --------
    >>> exp = {"c": {"out": np.ones((1, 1, 2, 2))}}
    >>> check_results({"c": {"out": np.ones((1, 1, 2, 2))}}, exp).passed
    True
    >>> check_results({"c": {"out": np.zeros((1, 1, 2, 2))}}, exp).counts["FAIL"]
    1
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    rows: list[Row] = []
    missing_cases = []
    unknown = list(unknown or [])
    for case, quantities in expected.items():
        got = results.get(case)
        if got is None:
            missing_cases.append(case)
            continue
        for quantity, desired in quantities.items():
            if quantity not in got:
                rows.append(Row(case, quantity, "MISSING", note="not in the results"))
                continue
            rows.append(_compare_one(case, quantity, got[quantity], desired, dtype, tolerances))
        unknown.extend(f"{case}/{q}" for q in got if q not in quantities)
    return CheckReport(dtype, rows, missing_cases, unknown, strict)


def _compare_one(
    case: str,
    quantity: str,
    actual: Any,
    desired: Any,
    dtype: str,
    tolerances: dict[str, Any] | None,
) -> Row:
    a = np.asarray(actual)
    if a.dtype.kind not in "fiub":
        c = Comparison(False, quantity, dtype, math.inf, math.inf, 0.0, 0.0,
                       shape_error=f"has dtype {a.dtype}, expected real numbers")  # fmt: skip
        return Row(case, quantity, "FAIL", c)
    kw: dict[str, Any] = {}
    if tolerances is not None:
        group = tolerances["gradient" if quantity.startswith("d") else "forward"]
        kw = {"atol": float(group["atol"]), "rtol": float(group["rtol"])}
    c = compare_attention(a, desired, dtype=dtype, quantity=quantity, **kw)
    return Row(case, quantity, "PASS" if c.passed else "FAIL", c)


# ---------------------------------------------------------------------------
# Command line: ``numpy-attention vectors`` and ``numpy-attention check``
# ---------------------------------------------------------------------------


def _run_vectors(args: argparse.Namespace) -> int:
    try:
        paths = write_suite(args.out)
    except OSError as e:
        print(
            f"numpy-attention vectors: cannot write {args.out}: {e.strerror or e}", file=sys.stderr
        )
        return 2
    print(f"wrote {len(paths) - 1} cases and manifest.json (suite version {SUITE_VERSION}) "
          f"to {args.out}")  # fmt: skip
    return 0


def _run_check(args: argparse.Namespace) -> int:
    try:
        man, expected = load_suite(args.suite)
        results, unknown = load_results(args.results, expected)
        if not results:
            raise UnusableInput(
                f"no case of the suite found in {args.results} (expected files or keys named "
                f"after the cases, e.g. '{next(iter(expected), 'plain')}')"
            )
    except UnusableInput as e:
        print(f"numpy-attention check: {e}", file=sys.stderr)
        return 2
    tolerances = man.get("tolerances", {}).get(args.dtype)
    report = check_results(results, expected, dtype=args.dtype, tolerances=tolerances,
                           unknown=unknown, strict=args.strict)  # fmt: skip
    if not any(r.comparison is not None for r in report.rows):
        print(
            f"numpy-attention check: no quantity of the suite found in {args.results} (name "
            "arrays out, weights, lse, dq, ... without the 'expected_' prefix)",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.table())
    return report.exit_code()


def register(subparsers: Any) -> None:
    r"""Add the ``vectors`` and ``check`` subcommands to the CLI's subparsers.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``; each subcommand sets ``func`` to a
        function of the parsed arguments returning the exit code.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> register(p.add_subparsers())
    >>> p.parse_args(["check", "res", "--dtype", "bfloat16"]).dtype
    'bfloat16'
    """
    vec = subparsers.add_parser(
        "vectors",
        help="write the golden vectors (one .npz per case and manifest.json)",
        description="Write the versioned golden suite: one <case>.npz per case with inputs "
        "and float64 expected results, and manifest.json (format: docs/verify.md).",
    )
    vec.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    vec.set_defaults(func=_run_vectors)
    chk = subparsers.add_parser(
        "check",
        help="compare a candidate's results with the golden vectors",
        description="Compare RESULTS (a directory of <case>.npz, or one .npz with keys "
        "'<case>/<quantity>') with the suite. Exit 0: all pass; 1: a mismatch; 2: unusable "
        "input.",
    )
    chk.add_argument("results", metavar="RESULTS", help="results directory or .npz file")
    chk.add_argument(
        "--suite",
        metavar="DIR",
        default=None,
        help="suite written by 'vectors' (default: build it in memory)",
    )
    chk.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype the candidate computed in (default float32)",
    )
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.add_argument(
        "--strict", action="store_true", help="count missing cases and quantities as failures"
    )
    chk.set_defaults(func=_run_check)
