"""A bounded fuzz of the public attention API (issue 14): whatever hypothesis draws, a call
either returns finite results (finite inputs of magnitude up to 1e30 in float64, 1e5 in
float32, where every exact result is representable) or raises TypeError/ValueError, never
another exception and never a NaN or inf. Derandomized in CI (tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpy_attention import (
    attention_backward,
    attention_forward,
    causal_mask,
    flash_attention_backward,
    flash_attention_forward,
    log_softmax,
    logsumexp,
    padding_mask,
    sliding_window_mask,
    softmax,
)

LIMIT = {np.float64: 30, np.float32: 5}  # log10 of the largest magnitude drawn


@st.composite
def wide_arrays(draw: Any, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Entries of magnitude 10^[-LIMIT, LIMIT], with exact zeros, of both signs."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lim = LIMIT[dtype]
    e = draw(st.integers(-lim, lim))  # one decade for the whole array: ratios stay tame
    x = rng.normal(size=shape) * 10.0**e
    x[rng.random(shape) < 0.2] = 0.0
    return x.astype(dtype)


def _variant_kwargs(draw: Any, Hq: int, L: int, S: int) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["window"] = draw(st.tuples(st.none() | st.integers(0, S), st.none() | st.integers(0, S)))
    if draw(st.booleans()):
        kw["softcap"] = draw(st.floats(0.01, 100.0))
    if draw(st.booleans()):
        kw["chunk_size"] = draw(st.integers(1, L + S + 1))
    if draw(st.booleans()):
        kw["sink_tokens"] = draw(st.integers(0, S))
    if draw(st.booleans()):
        kw["alibi_slopes"] = np.array(draw(st.lists(st.floats(0, 2), min_size=Hq, max_size=Hq)))
    if draw(st.booleans()):
        kw["sinks"] = np.array(draw(st.lists(st.floats(-30, 30), min_size=Hq, max_size=Hq)))
    return kw


@st.composite
def calls(draw: Any) -> tuple[dict[str, Any], np.ndarray]:
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    B, Hkv, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    L, S, E, Ev = (draw(st.integers(0 if n in "LS" else 1, 6)) for n in "LSEV")
    Hq = Hkv * G
    kw: dict[str, Any] = dict(
        q=draw(wide_arrays((B, Hq, L, E), dtype)),
        k=draw(wide_arrays((B, Hkv, S, E), dtype)),
        v=draw(wide_arrays((B, Hkv, S, Ev), dtype)),
        enable_gqa=G > 1 or draw(st.booleans()),
        is_causal=draw(st.booleans()),
        causal_align=draw(st.sampled_from(["top_left", "bottom_right"])),
    )
    if draw(st.booleans()):
        kw["scale"] = draw(st.floats(-1e3, 1e3, allow_nan=False) | st.sampled_from([1e-10, 0.0]))
    mask = draw(st.sampled_from(["none", "bool", "float"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mask == "bool":
        kw["attn_mask"] = rng.random((Hq, L, S)) < 0.6
    elif mask == "float":
        bias = rng.normal(size=(1, L, S)) * 10.0 ** draw(st.integers(-3, 3))
        bias[rng.random(bias.shape) < 0.3] = -np.inf
        kw["attn_mask"] = bias.astype(dtype)
    kw.update(_variant_kwargs(draw, Hq, L, S))
    d_out = draw(wide_arrays((B, Hq, L, Ev), dtype))
    return kw, d_out


def _all_finite(*arrays: Any) -> bool:
    return all(a is None or bool(np.isfinite(a).all()) for a in arrays)


@settings(max_examples=120, deadline=None)
@given(calls(), st.booleans())
def test_attention_gives_finite_results_or_a_clear_error(call, tiled):
    kw, d_out = call
    forward, backward = (
        (flash_attention_forward, flash_attention_backward)
        if tiled
        else (attention_forward, attention_backward)
    )
    extra = dict(block_q=2, block_k=3) if tiled else {}
    try:
        out, cache = forward(**kw, **extra)
        g = backward(d_out, cache)
    except (TypeError, ValueError):
        return
    assert _all_finite(out, cache.lse[np.isfinite(cache.lse)], g.dq, g.dk, g.dv, g.d_sinks)
    assert g.d_attn_mask is None or not np.isnan(g.d_attn_mask).any()


JUNK = [None, "1", [1, 2], (1,), 1.5, -1, 0, True, np.array([1.0, 2.0]), object(), float("nan")]
ARGS = ["attn_mask", "is_causal", "scale", "enable_gqa", "causal_align", "window", "softcap",
        "chunk_size", "sink_tokens", "alibi_slopes", "sinks", "mask_mod", "score_mod"]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ARGS), st.sampled_from(JUNK), st.booleans())
def test_a_junk_argument_is_a_type_or_value_error(name, junk, tiled):
    """Any junk value for any argument: the call works or raises TypeError/ValueError."""
    q = np.random.default_rng(0).normal(size=(2, 3, 4))
    forward = flash_attention_forward if tiled else attention_forward
    try:
        out, _ = forward(q, q, q, **{name: junk})
    except (TypeError, ValueError):
        return
    assert np.isfinite(out).all()


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(JUNK + [2**62, 2**63 - 1, -(2**40)]), st.sampled_from(JUNK + [3, 2**62]))
def test_mask_builders_and_softmax_take_junk_with_clear_errors(a, b):
    for build in (
        lambda: causal_mask(a, b),
        lambda: padding_mask(a, b),
        lambda: sliding_window_mask(a, b, 1),
        lambda: softmax(a),
        lambda: log_softmax(a),
        lambda: logsumexp(a),
    ):
        try:
            build()
        except (TypeError, ValueError):
            pass


def test_the_fuzz_can_fail():
    """The property above is not vacuous: a NaN result would fail it."""
    with pytest.raises(AssertionError):
        assert _all_finite(np.array([np.nan]))
