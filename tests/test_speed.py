"""The speed paths keep the results: the Cauchy-Schwarz bound that lets the softmax skip its max."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_attention._inputs import check_inputs
from numpy_attention.attention import attention_backward, attention_forward
from numpy_attention.flash import flash_attention_backward, flash_attention_forward
from numpy_attention.softmax import softmax_lse_inplace


def _qkv(seed=0, shape=(2, 3, 40, 16)):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape) for _ in range(3))


def test_exp_safe_holds_for_standard_normal_inputs_only_while_the_bound_does():
    """The bound |scale| max||q_i|| max||k_j|| + max|B| (and |sink|) below half the log range
    is what lets the softmax shift by 0; large scores, a large bias or sink, NaN and a
    score_mod fall back to the row max."""
    q, k, v = _qkv()
    assert check_inputs(q, k, v).exp_safe
    assert check_inputs(q.astype(np.float32), k, v).exp_safe
    assert not check_inputs(q * 100, k * 100, v).exp_safe  # bound 1e4 / 4 > 354
    assert not check_inputs(q * 30, k * 30, v.astype(np.float32), scale=1.0).exp_safe
    assert not check_inputs(q, k, v, attn_mask=np.full((40, 40), 400.0)).exp_safe
    assert check_inputs(q, k, v, attn_mask=np.where(np.eye(40) > 0, -np.inf, 1.0)).exp_safe
    assert not check_inputs(q, k, v, sinks=[400.0, 0.0, 0.0]).exp_safe
    assert not check_inputs(np.where(q > 2, np.nan, q), k, v).exp_safe
    assert not check_inputs(
        q, k, v, score_mod=lambda s, *i: s, score_mod_grad=lambda s, *i: 1
    ).exp_safe
    assert check_inputs(q * 100, k * 100, v, softcap=30.0).exp_safe  # |c tanh(S / c)| <= c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bounded_softmax_equals_the_max_shifted_one(dtype):
    """Shifting by 0 (bounded) and by the row max give the same P and lse, sinks and fully
    masked rows included."""
    rng = np.random.default_rng(1)
    x = (rng.uniform(-40, 40, (3, 5, 7))).astype(dtype)
    x[0, 1] = -np.inf  # a fully masked row
    x[1, :, 2] = -np.inf
    sink = rng.uniform(-30, 30, (3, 1, 1)).astype(dtype)
    for s in (None, sink):
        P0, lse0 = softmax_lse_inplace(x.copy(), sink=s)
        P1, lse1 = softmax_lse_inplace(x.copy(), sink=s, bounded=True)
        np.testing.assert_allclose(P1, P0, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=0)
        np.testing.assert_allclose(lse1, lse0, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("scale", [0.25, 30.0])  # the bound holds / fails (fallback)
def test_tiled_and_core_agree_on_both_sides_of_the_bound(scale):
    """With the running max skipped (bound holds) and kept (bound fails), the tiled functions
    give the core's output, lse and gradients, with sinks and a window."""
    q, k, v = _qkv(2)
    g = np.random.default_rng(3).standard_normal(q.shape[:-1] + (16,))
    kw = {"scale": scale, "sinks": [0.5, -1.0, 2.0], "window": (7, 3)}
    assert check_inputs(q, k, v, **kw).exp_safe == (scale < 1)
    out, cache = attention_forward(q, k, v, **kw)
    tout, tcache = flash_attention_forward(q, k, v, block_q=16, block_k=8, **kw)
    np.testing.assert_allclose(tout, out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tcache.lse, cache.lse, rtol=1e-13, atol=1e-13)
    ref, got = attention_backward(g, cache), flash_attention_backward(g, tcache)
    for a, b in ((got.dq, ref.dq), (got.dk, ref.dk), (got.dv, ref.dv), (got.d_sinks, ref.d_sinks)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize(
    ("kw", "expected"),
    [({}, (256, 512)), ({"window": (256, 0)}, (256, 256)), ({"window": (8, 8)}, (256, 16)),
     ({"is_causal": True, "window": (100, None)}, (256, 64)), ({"chunk_size": 40}, (256, 32)),
     ({"window": (None, 5)}, (256, 512)), ({"block_k": 512, "window": (8, 8)}, (256, 512))],
)  # fmt: skip
def test_a_window_or_chunk_narrows_the_default_key_block_and_the_result_is_unchanged(kw, expected):
    """A window of w keys computes about w keys per query: key blocks no wider than w."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 600, 8)) for _ in range(3))
    out, cache = flash_attention_forward(q, k, v, **kw)
    assert (cache.block_q, cache.block_k) == expected  # the backward's tiling
    kw.pop("block_k", None)
    ref, _ = attention_forward(q, k, v, **kw)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-13)
    grads = flash_attention_backward(np.ones_like(out), cache)
    assert np.isfinite(grads.dq).all()
