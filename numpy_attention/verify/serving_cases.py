r"""The golden suite's serving cases and the padded case with NaN-poisoned padding.

Each builder draws its inputs from a fixed seed and computes the expected results in float64
with :mod:`numpy_attention.serving` (chapter 9, ``docs/serving.md``):

- :func:`padded_case` (kind ``"padded"``): a padded batch whose keys and values past each
  sequence's length are NaN; the expected values are those of attention over each
  sequence's real keys (finite).
- :func:`varlen_case` (``"varlen"``): packed sequences, FlashAttention's varlen layout.
- :func:`kvcache_case` (``"kvcache"``): a decoding step over a (paged) KV cache, with new keys
  appended and rotated; unused cache slots hold NaN.
- :func:`merge_case` (``"merge"``): merging split-KV attention states (FlashDecoding);
  :func:`merge_split_case` the same kind at a user's size, one attention's keys split.
- :func:`rotary_case` (``"rotary"``): rotary embedding, both layouts.

Every finite float input is exactly representable in bfloat16 and float16, as in
:mod:`numpy_attention.verify.cases`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..attention import attention_backward, attention_forward
from ..flash import flash_attention_forward
from ..masks import padding_mask
from ..serving import (
    kvcache_attention,
    merge_attention_states_backward,
    merge_attention_states_forward,
    rotary_cos_sin,
    rotary_embedding,
    rotary_embedding_backward,
    varlen_attention_backward,
    varlen_attention_forward,
)
from .cases import Case, _draw_variants, _exact, _normal, _variant_flags, _variant_inputs

__all__ = ["padded_case", "varlen_case", "kvcache_case", "merge_case", "merge_split_case",
           "rotary_case"]  # fmt: skip

Arrays = dict[str, NDArray[Any]]


def _f64(expected: Arrays) -> Arrays:
    return {n: np.ascontiguousarray(a, dtype=np.float64) for n, a in expected.items()}


def _cu(lengths: list[int]) -> NDArray[np.int64]:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def padded_case(
    name: str, description: str, seed: int, shape: tuple[int, int, int, int, int],
    key_lengths: list[int], *, is_causal: bool = False,
) -> Case:  # fmt: skip
    """Build a padded batch ``(B, Hq, L, S, E)``, k and v NaN at positions ``>= key_lengths[b]``.

    The expected values are attention with the boolean padding mask over the same inputs
    with the padding replaced by 0 (any finite padding gives the same: its weights are 0);
    ``dk`` and ``dv`` are 0 there. A dense ``P V`` or ``dS K`` multiplies the NaN rows by a
    zero weight and leaks them (``0 * NaN = NaN``); a kernel that never reads past a
    sequence's length does not.

    Examples
    --------
    >>> c = padded_case("p", "NaN padding", 0, (2, 1, 3, 4, 8), [4, 2])
    >>> bool(np.isnan(c.inputs["k"][1, 0, 2:]).all()), bool(np.isfinite(c.expected["dq"]).all())
    (True, True)
    """
    B, H, L, S, E = shape
    rng = np.random.default_rng(seed)
    q, k, v = _normal(rng, B, H, L, E), _normal(rng, B, H, S, E), _normal(rng, B, H, S, E)
    lengths = np.array(key_lengths, dtype=np.int64)
    mask = padding_mask(lengths, S)  # (B, 1, 1, S), True = real key
    real = mask[:, :, 0, :, None]  # (B, 1, S, 1)
    k, v = np.where(real, k, 0.0), np.where(real, v, 0.0)
    d_out = _normal(rng, B, H, L, E)
    scale = 1.0 / math.sqrt(E)
    out, cache = attention_forward(q, k, v, mask, is_causal=is_causal, scale=scale)
    g = attention_backward(d_out, cache)
    k_nan, v_nan = np.where(real, k, np.nan), np.where(real, v, np.nan)
    inputs = {"q": q, "k": k_nan, "v": v_nan, "attn_mask": mask, "key_lengths": lengths,
              "d_out": d_out, "scale": np.array(scale), "dropout_p": np.array(0.0),
              "is_causal": np.array(is_causal), "causal_bottom_right": np.array(False),
              "enable_gqa": np.array(False)}  # fmt: skip
    expected = {"out": out, "weights": cache.P, "lse": cache.lse, "dq": g.dq, "dk": g.dk,
                "dv": g.dv}  # fmt: skip
    flags = {
        "scale": scale,
        "is_causal": is_causal,
        "causal_align": "top_left",
        "key_lengths": key_lengths,
        "padding": "NaN in k and v at positions >= key_lengths",
    }
    return Case(name, "padded", description, inputs, _f64(expected), flags)


def varlen_case(
    name: str, description: str, seed: int, lengths_q: list[int], lengths_k: list[int],
    heads: tuple[int, int], widths: tuple[int, int], *, is_causal: bool = False,
    causal_align: str = "bottom_right", window: tuple[int | None, int | None] | None = None,
    scale: float | None = None, variants: dict[str, Any] | None = None, tiled: bool = False,
) -> Case:  # fmt: skip
    """Packed sequences: ``q (Tq, Hq, E)``, ``k (Tk, Hkv, E)``, ``v (Tk, Hkv, Ev)``.

    ``variants``: more Variants keywords, per sequence (``alibi_slopes=True``,
    ``sinks=True``: drawn after the arrays, so a case without them keeps its bytes).
    ``tiled``: each sequence by the flash functions (no ``L_b x S_b`` array).

    Examples
    --------
    >>> c = varlen_case("v", "packed", 0, [2, 0, 1], [3, 1, 1], (2, 1), (4, 4), is_causal=True)
    >>> c.inputs["cu_seqlens_q"].tolist(), c.expected["lse"].shape
    ([0, 2, 2, 3], (2, 3))
    """
    (Hq, Hkv), (E, Ev) = heads, widths
    rng = np.random.default_rng(seed)
    Tq, Tk = sum(lengths_q), sum(lengths_k)
    q, k, v = _normal(rng, Tq, Hq, E), _normal(rng, Tk, Hkv, E), _normal(rng, Tk, Hkv, Ev)
    cu_q, cu_k = _cu(lengths_q), _cu(lengths_k)
    d_out = _normal(rng, Tq, Hq, Ev)
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    kw = _draw_variants(rng, {**({} if window is None else {"window": window}),
                              **(variants or {})}, Hq)  # fmt: skip
    out, cache = varlen_attention_forward(
        q, k, v, cu_q, cu_k, scale=scale, is_causal=is_causal, causal_align=causal_align,
        enable_gqa=Hq != Hkv, tiled=tiled, **kw,
    )  # fmt: skip
    g = varlen_attention_backward(d_out, cache)
    inputs = {"q": q, "k": k, "v": v, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k,
              "d_out": d_out, "scale": np.array(scale), "is_causal": np.array(is_causal),
              "causal_bottom_right": np.array(causal_align == "bottom_right"),
              "enable_gqa": np.array(Hq != Hkv), **_variant_inputs(kw)}  # fmt: skip
    expected = {"out": out, "lse": cache.lse, "dq": g.dq, "dk": g.dk, "dv": g.dv}
    if g.d_sinks is not None:
        expected["d_sinks"] = g.d_sinks
    flags: dict[str, Any] = {"scale": scale, "is_causal": is_causal, "causal_align": causal_align,
                             "enable_gqa": Hq != Hkv, "lengths_q": lengths_q,
                             "lengths_k": lengths_k}  # fmt: skip
    if kw:
        flags["variants"] = _variant_flags(kw)
    if tiled:
        flags["path"] = "tiled (flash_attention_forward/backward per sequence): no L_b x S_b array"
    return Case(name, "varlen", description, inputs, _f64(expected), flags)


def _paged_cache(
    rng: np.random.Generator, B: int, page: int, max_blocks: int, Hkv: int, widths: tuple,
    seqlens: list[int],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:  # fmt: skip
    """Draw a paged cache whose unused slots are NaN, and a shuffled block table."""
    num_blocks = B * max_blocks + 1
    table = rng.permutation(num_blocks)[: B * max_blocks].reshape(B, max_blocks).astype(np.int64)
    kc = np.full((num_blocks, page, Hkv, widths[0]), np.nan)
    vc = np.full((num_blocks, page, Hkv, widths[1]), np.nan)
    for b, n in enumerate(seqlens):  # fill the first n positions of row b
        pos = np.arange(n)
        blk, off = table[b, pos // page], pos % page
        kc[blk, off] = _normal(rng, n, Hkv, widths[0])
        vc[blk, off] = _normal(rng, n, Hkv, widths[1])
    return kc, vc, table


def kvcache_case(
    name: str, description: str, seed: int, seqlens: list[int], L: int,
    heads: tuple[int, int], widths: tuple[int, int], *, page: int, max_blocks: int,
    rotary_dim: int | None, interleaved: bool, is_causal: bool = True,
    scale: float | None = None, variants: dict[str, Any] | None = None, tiled: bool = False,
) -> Case:  # fmt: skip
    """Build a decoding step: L new queries, keys, values appended to a paged rotary cache.

    ``rotary_dim`` None: no rotary (no ``rotary_cos``, ``rotary_sin`` inputs). ``variants``:
    window, softcap, ALiBi, sinks per row (``alibi_slopes=True``, ``sinks=True``: drawn after
    the arrays, so a case without them keeps its bytes). ``tiled``: each row by the tiled
    functions (no ``L x N_b`` array).

    Examples
    --------
    >>> c = kvcache_case("kv", "decode", 0, [3, 0], 1, (2, 1), (4, 4), page=2, max_blocks=2,
    ...                  rotary_dim=4, interleaved=False)
    >>> c.expected["out"].shape, int(np.isnan(c.expected["k_cache_out"]).any(axis=(2, 3)).sum())
    ((2, 1, 2, 4), 5)
    """
    (Hq, Hkv), (E, Ev), B = heads, widths, len(seqlens)
    rng = np.random.default_rng(seed)
    kc, vc, table = _paged_cache(rng, B, page, max_blocks, Hkv, widths, seqlens)
    q, k_new = _normal(rng, B, L, Hq, E), _normal(rng, B, L, Hkv, E)
    v_new = _normal(rng, B, L, Hkv, Ev)
    rotary: dict[str, Any] = {}
    if rotary_dim is not None:
        cos, sin = (_exact(t) for t in rotary_cos_sin(np.arange(page * max_blocks), rotary_dim))
        rotary = {"rotary_cos": cos, "rotary_sin": sin}
    n = np.array(seqlens, dtype=np.int64)
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    kw = _draw_variants(rng, variants or {}, Hq)
    out, lse, kc_out, vc_out = kvcache_attention(
        q, kc, vc, n, k_new=k_new, v_new=v_new, block_table=table, **rotary,
        rotary_interleaved=interleaved, scale=scale, is_causal=is_causal, tiled=tiled, **kw,
    )  # fmt: skip
    inputs = {"q": q, "k_cache": kc, "v_cache": vc, "cache_seqlens": n, "k_new": k_new,
              "v_new": v_new, "block_table": table, **rotary,
              "rotary_interleaved": np.array(interleaved), "scale": np.array(scale),
              "is_causal": np.array(is_causal), **_variant_inputs(kw)}  # fmt: skip
    expected = {"out": out, "lse": lse, "k_cache_out": kc_out, "v_cache_out": vc_out}
    flags: dict[str, Any] = {"scale": scale, "is_causal": is_causal,
                             "causal_align": "bottom_right", "page_size": page,
                             "rotary_dim": rotary_dim, "rotary_interleaved": interleaved,
                             "cache_seqlens": seqlens, "unused_slots": "NaN"}  # fmt: skip
    if kw:
        flags["variants"] = _variant_flags(kw)
    if tiled:
        flags["path"] = "tiled (flash_attention_forward per row): no L x N_b array"
    return Case(name, "kvcache", description, inputs, _f64(expected), flags)


def merge_case(
    name: str, description: str, seed: int, shape: tuple[int, int, int, int, int],
    splits: list[int],
) -> Case:  # fmt: skip
    """Split-KV merge of the chunks ``keys[splits[c]:splits[c+1]]`` of causal attention.

    ``shape = (B, Hq, L, S, E)``; query 1 of batch 1 sees no key at all. Each chunk is causal
    in its own key indices (top-left: query ``i`` sees the chunk's first ``i + 1`` keys). The
    chunks' states are rounded to bfloat16; an empty chunk's output is NaN (it must not be
    read).

    Examples
    --------
    >>> c = merge_case("m", "merge", 0, (2, 1, 3, 6, 4), [0, 3, 6])
    >>> c.expected["out"].shape, bool(np.isinf(c.expected["lse"][1, 0, 1]))
    ((2, 1, 3, 4), True)
    """
    B, H, L, S, E = shape
    rng = np.random.default_rng(seed)
    q, k, v = _normal(rng, B, H, L, E), _normal(rng, B, H, S, E), _normal(rng, B, H, S, E)
    keep = np.ones((B, 1, L, S), dtype=bool)
    keep[1, 0, 1] = False
    outs, lses = [], []
    for j0, j1 in zip(splits[:-1], splits[1:], strict=True):
        o, c = attention_forward(q, k[..., j0:j1, :], v[..., j0:j1, :], keep[..., j0:j1],
                                 is_causal=True)  # fmt: skip
        outs.append(o)
        lses.append(c.lse)
    flags = {"chunks": len(splits) - 1, "splits": splits, "lse": "natural log, -inf = empty"}
    return _merged(name, description, rng, outs, lses, flags)


def merge_split_case(
    name: str, description: str, seed: int, shape: tuple[int, int, int, int, int, int],
    num_splits: int, *, is_causal: bool = False, causal_align: str = "top_left",
    scale: float | None = None, tiled: bool = False,
) -> Case:  # fmt: skip
    """Split-KV merge of one attention's keys cut into ``num_splits`` near-equal chunks.

    ``shape = (B, Hq, L, S, E, Ev)``. Unlike :func:`merge_case`, each chunk's state is that
    chunk's part of one attention over all ``S`` keys (FlashDecoding's split): with
    ``is_causal`` the global mask of Eq. (2.6), aligned by ``causal_align``, through a
    ``mask_mod``, so the merged ``out`` and ``lse`` are that attention's. The first ``S %
    num_splits`` chunks have one key more (``np.array_split``). ``tiled``: each chunk by the
    tiled functions (no ``L x S`` array). States rounded to bfloat16; a chunk a query sees
    nothing of has ``lse = -inf`` and a NaN output. Each chunk's keys and values are drawn
    as it is attended (after ``q``), so one chunk of the cache is in memory at a time.

    Examples
    --------
    >>> c = merge_split_case("m", "merge", 0, (1, 2, 3, 7, 4, 4), 3, is_causal=True)
    >>> c.inputs["lses"].shape, c.flags["splits"], bool(np.isinf(c.inputs["lses"][2, 0, 0, 0]))
    ((3, 1, 2, 3), [0, 3, 5, 7], True)
    """
    B, H, L, S, E, Ev = shape
    rng = np.random.default_rng(seed)
    q = _normal(rng, B, H, L, E)
    sizes = [S // num_splits + (c < S % num_splits) for c in range(num_splits)]
    splits = [0, *np.cumsum(sizes).tolist()]
    d = S - L if causal_align == "bottom_right" else 0
    attend: Any = flash_attention_forward if tiled else attention_forward
    outs, lses = [], []
    for j0, j1 in zip(splits[:-1], splits[1:], strict=True):
        # a chunk's keys and values, drawn when needed: one chunk of the cache in memory
        k, v = _normal(rng, B, H, j1 - j0, E), _normal(rng, B, H, j1 - j0, Ev)
        kw: dict[str, Any] = {}
        if is_causal:  # the global causal mask, Eq. (2.6): key j0 + j' visible iff <= i + d
            kw["mask_mod"] = lambda b, h, i, j, j0=j0: j + j0 <= i + d
        o, c = attend(q, k, v, scale=scale, **kw)
        outs.append(o)
        lses.append(c.lse)
        del k, v
    flags: dict[str, Any] = {"chunks": num_splits, "splits": splits,
                             "lse": "natural log, -inf = empty", "is_causal": is_causal,
                             "causal_align": causal_align}  # fmt: skip
    if tiled:
        flags["path"] = "tiled (flash_attention_forward per chunk): no L x S array"
    return _merged(name, description, rng, outs, lses, flags)


def _merged(
    name: str, description: str, rng: np.random.Generator, outs: list[NDArray[np.floating]],
    lses: list[NDArray[np.floating]], flags: dict[str, Any],
) -> Case:  # fmt: skip
    """Return the merge case of the chunks' states ``outs``, ``lses`` (rounded), its backward."""
    lse_c = _exact(np.stack(lses))
    outs_c = np.where(np.isinf(lse_c)[..., None], np.nan, _exact(np.stack(outs)))
    d_out, d_lse = _normal(rng, *outs_c.shape[1:]), _normal(rng, *lse_c.shape[1:])
    out, lse, cache = merge_attention_states_forward(outs_c, lse_c)
    d_outs, d_lses = merge_attention_states_backward(d_out, d_lse, cache)
    inputs = {"outs": outs_c, "lses": lse_c, "d_out": d_out, "d_lse": d_lse}
    expected = {"out": out, "lse": lse, "d_outs": d_outs, "d_lses": d_lses}
    return Case(name, "merge", description, inputs, _f64(expected), flags)


def rotary_case(
    name: str, description: str, seed: int, shape: tuple[int, int, int, int], rotary_dim: int,
    *, interleaved: bool, offset: int = 0, base: float = 10000.0,
) -> Case:  # fmt: skip
    """Rotary embedding of ``x (B, L, H, E)`` at positions ``offset + arange(L)``.

    ``base``: the frequency base of Eq. (9.5) (recorded in the flags when not 10000).

    Examples
    --------
    >>> c = rotary_case("r", "rotary", 0, (1, 3, 2, 8), 4, interleaved=True)
    >>> c.inputs["cos"].shape, bool(np.all(c.expected["out"][..., 4:] == c.inputs["x"][..., 4:]))
    ((3, 2), True)
    """
    B, L, H, E = shape
    rng = np.random.default_rng(seed)
    x, d_out = _normal(rng, B, L, H, E), _normal(rng, B, L, H, E)
    cos, sin = (_exact(t) for t in rotary_cos_sin(offset + np.arange(L), rotary_dim, base))
    y = rotary_embedding(x, cos[:, None, :], sin[:, None, :], interleaved=interleaved)
    dx = rotary_embedding_backward(d_out, cos[:, None, :], sin[:, None, :],
                                   interleaved=interleaved)  # fmt: skip
    inputs = {"x": x, "cos": cos, "sin": sin, "interleaved": np.array(interleaved),
              "d_out": d_out}  # fmt: skip
    flags: dict[str, Any] = {"rotary_dim": rotary_dim, "interleaved": interleaved,
                             "positions_from": offset}  # fmt: skip
    if base != 10000.0:
        flags["base"] = base
    return Case(name, "rotary", description, inputs, _f64({"out": y, "dx": dx}), flags)
