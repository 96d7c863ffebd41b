"""Multi-head cross-attention and self-attention layers (numpy_attention/layers.py, docs/layers.md).

Oracles: the seed's formula (section 3.1) written as loops over heads, queries and keys
(tests/oracles.py) with per-head column slices of the weights; the core attention function;
float64 finite differences; torch.nn.MultiheadAttention when torch is installed.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from optional import TORCH_MISSING
from oracles import attention_oracle

from numpy_attention.attention import attention_backward, attention_forward
from numpy_attention.layers import (
    CrossAttentionParams,
    cross_attention_backward,
    cross_attention_forward,
    init_cross_attention,
    self_attention_backward,
    self_attention_forward,
)
from numpy_attention.testing import gradcheck

NAMES = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")


def random_params(rng, e_q, e_kv, H, *, E=2, Ev=3, Hkv=None, e_out=4, bias=True):
    """Parameters with every entry random (biases too), so that no gradient is trivially zero."""
    Hkv = H if Hkv is None else Hkv

    def n(*shape):
        return rng.normal(size=shape) * 0.6

    return CrossAttentionParams(
        w_q=n(e_q, H * E),
        w_k=n(e_kv, Hkv * E),
        w_v=n(e_kv, Hkv * Ev),
        w_o=n(H * Ev, e_out),
        b_q=n(H * E) if bias else None,
        b_k=n(Hkv * E) if bias else None,
        b_v=n(Hkv * Ev) if bias else None,
        b_o=n(e_out) if bias else None,
        num_heads=H,
        num_kv_heads=None if Hkv == H else Hkv,
    )


def check_layer_gradients(params, x_q, x_kv, **kwargs):
    """gradcheck of cross_attention_backward for x_q, x_kv and every weight and bias."""
    present = [n for n in NAMES if getattr(params, n) is not None]

    def fn(x_q, x_kv, **w):
        return cross_attention_forward(replace(params, **w), x_q, x_kv, **kwargs)

    def bw(d, cache):
        d_x_q, d_x_kv, g = cross_attention_backward(d, cache)
        return {"x_q": d_x_q, "x_kv": d_x_kv, **{n: getattr(g, n) for n in present}}

    inputs = {"x_q": x_q, "x_kv": x_kv, **{n: getattr(params, n) for n in present}}
    report = gradcheck(fn, inputs, bw, wrt=tuple(inputs))
    assert set(report.checked) == set(inputs)
    return report


# ---------------------------------------------------------------------------
# Gradients: finite differences for every input, weight and bias
# ---------------------------------------------------------------------------

GRAD_CASES = {
    "plain": dict(),
    "key_lengths": dict(key_lengths=np.array([5, 2])),
    "bool_mask+key_lengths": dict(
        key_lengths=np.array([4, 3]),
        attn_mask=np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1], [1, 0, 1, 0, 1]], bool),
    ),
    "float_mask": dict(attn_mask=np.linspace(-1.0, 1.0, 2 * 3 * 5).reshape(2, 1, 3, 5)),
    "causal": dict(is_causal=True),
    "causal_bottom_right": dict(is_causal=True, causal_align="bottom_right"),
    "scale": dict(scale=0.3),
    "dropout": dict(
        dropout_p=0.25, dropout_mask=np.random.default_rng(9).random((2, 4, 3, 5)) > 0.25
    ),
}


@pytest.mark.parametrize("case", list(GRAD_CASES), ids=list(GRAD_CASES))
def test_cross_attention_gradients_match_finite_differences(case):
    """d_x_q, d_x_kv and the gradient of every weight and bias equal float64 central differences
    of sum(out * G), with padding, bool/float masks, causal masks, scale and dropout."""
    rng = np.random.default_rng(1)
    p = random_params(rng, e_q=3, e_kv=4, H=4, E=2, Ev=2, e_out=3)
    check_layer_gradients(
        p, rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 5, 4)), **GRAD_CASES[case]
    )


@pytest.mark.parametrize("Hkv", [1, 2])
def test_gqa_layer_gradients_match_finite_differences(Hkv):
    """With grouped-query attention (w_k, w_v with Hkv*E columns) every gradient, including the
    shared key/value heads' (summed over their query group), equals finite differences."""
    rng = np.random.default_rng(2)
    p = random_params(rng, e_q=4, e_kv=3, H=4, E=2, Ev=3, Hkv=Hkv, e_out=2)
    check_layer_gradients(
        p,
        rng.normal(size=(2, 3, 4)),
        rng.normal(size=(2, 4, 3)),
        key_lengths=np.array([3, 4]),
        is_causal=True,
    )


def test_layer_without_biases_has_none_bias_gradients():
    """Biases set to None stay None in d_params; the weight gradients still pass gradcheck."""
    rng = np.random.default_rng(3)
    p = random_params(rng, e_q=2, e_kv=3, H=2, bias=False)
    check_layer_gradients(p, rng.normal(size=(1, 2, 2)), rng.normal(size=(1, 3, 3)))
    out, cache = cross_attention_forward(p, rng.normal(size=(1, 2, 2)), rng.normal(size=(1, 3, 3)))
    _, _, g = cross_attention_backward(np.ones_like(out), cache)
    assert (g.b_q, g.b_k, g.b_v, g.b_o) == (None, None, None, None)
    assert g.num_heads == 2


@pytest.mark.parametrize("kwargs", [{}, {"key_lengths": np.array([2, 3])}, {"is_causal": True}])
def test_self_attention_gradients_match_finite_differences(kwargs):
    """d_x of self-attention (x used as queries, keys and values) and every parameter gradient
    equal finite differences of the one-input function."""
    rng = np.random.default_rng(4)
    p = random_params(rng, e_q=3, e_kv=3, H=2, e_out=3)

    def fn(x, **w):
        return self_attention_forward(replace(p, **w), x, **kwargs)

    def bw(d, cache):
        d_x, g = self_attention_backward(d, cache)
        return {"x": d_x, **{n: getattr(g, n) for n in NAMES}}

    inputs = {"x": rng.normal(size=(2, 3, 3)), **{n: getattr(p, n) for n in NAMES}}
    gradcheck(fn, inputs, bw, wrt=tuple(inputs))


def test_self_attention_d_x_is_the_sum_of_the_query_and_key_value_paths():
    """self_attention_backward's d_x equals d_x_q + d_x_kv of cross_attention_backward on the
    same x (Eq. (3.11)); neither path alone is the gradient."""
    rng = np.random.default_rng(5)
    p = random_params(rng, e_q=4, e_kv=4, H=2, e_out=4)
    x = rng.normal(size=(2, 5, 4))
    G = rng.normal(size=(2, 5, 4))
    out_s, cache_s = self_attention_forward(p, x, key_lengths=np.array([5, 3]))
    out_c, cache_c = cross_attention_forward(p, x, x, key_lengths=np.array([5, 3]))
    np.testing.assert_array_equal(out_s, out_c)
    d_x, g_s = self_attention_backward(G, cache_s)
    d_x_q, d_x_kv, g_c = cross_attention_backward(G, cache_c)
    np.testing.assert_allclose(d_x, d_x_q + d_x_kv, rtol=0, atol=1e-14)
    assert not np.allclose(d_x, d_x_q) and not np.allclose(d_x, d_x_kv)
    for n in NAMES:
        np.testing.assert_array_equal(getattr(g_s, n), getattr(g_c, n))


def test_self_attention_backward_rejects_a_cross_attention_cache():
    """A cross-attention cache has two different inputs; self_attention_backward refuses it."""
    rng = np.random.default_rng(6)
    p = random_params(rng, 2, 2, 1, e_out=2)
    out, cache = cross_attention_forward(p, rng.normal(size=(1, 2, 2)), rng.normal(size=(1, 3, 2)))
    with pytest.raises(ValueError, match="self_attention_forward"):
        self_attention_backward(out, cache)


# ---------------------------------------------------------------------------
# Oracles: core attention, the seed's formula as loops per head
# ---------------------------------------------------------------------------


def test_one_head_identity_projections_equal_core_attention():
    """With H = 1, W_q = W_k = W_v = W_o = I and no biases the layer is the core scaled
    dot-product attention (the seed's Cross-Attention(Q, K, V)), forward and backward."""
    rng = np.random.default_rng(7)
    E = 3
    eye = np.eye(E)
    p = CrossAttentionParams(w_q=eye, w_k=eye, w_v=eye, w_o=eye, num_heads=1)
    xq, xkv = rng.normal(size=(2, 4, E)), rng.normal(size=(2, 6, E))
    mask = rng.random((2, 1, 4, 6)) > 0.3
    out, cache = cross_attention_forward(p, xq, xkv, attn_mask=mask, is_causal=True)
    ref, ref_cache = attention_forward(
        xq[:, None], xkv[:, None], xkv[:, None], mask, is_causal=True
    )
    np.testing.assert_allclose(out, ref[:, 0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cache.weights, ref_cache.P, rtol=0, atol=1e-15)
    G = rng.normal(size=out.shape)
    d_x_q, d_x_kv, _ = cross_attention_backward(G, cache)
    g = attention_backward(G[:, None], ref_cache)
    np.testing.assert_allclose(d_x_q, g.dq[:, 0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(d_x_kv, g.dk[:, 0] + g.dv[:, 0], rtol=0, atol=1e-14)


def per_head_loop_oracle(p, x_q, x_kv, Hkv, key_lengths=None, is_causal=False):
    """The layer written head by head: column slices of the weights, the seed's formula as loops
    (tests/oracles.py, math.exp), output = b_o + sum_h O_h W_o[rows of head h]."""
    H, E = p.num_heads, p.w_q.shape[1] // p.num_heads
    Ev, G = p.w_v.shape[1] // Hkv, H // Hkv
    B, L, S = x_q.shape[0], x_q.shape[1], x_kv.shape[1]
    out = np.zeros((B, L, p.w_o.shape[1])) + p.b_o
    weights = np.zeros((B, H, L, S))
    for b in range(B):
        n = S if key_lengths is None else key_lengths[b]
        mask = np.arange(S)[None, :] < n
        for h in range(H):
            g = h // G
            q = x_q[b] @ p.w_q[:, h * E : (h + 1) * E] + p.b_q[h * E : (h + 1) * E]
            k = x_kv[b] @ p.w_k[:, g * E : (g + 1) * E] + p.b_k[g * E : (g + 1) * E]
            v = x_kv[b] @ p.w_v[:, g * Ev : (g + 1) * Ev] + p.b_v[g * Ev : (g + 1) * Ev]
            o, P, _ = attention_oracle(q, k, v, np.broadcast_to(mask, (L, S)), is_causal)
            out[b] += o @ p.w_o[h * Ev : (h + 1) * Ev]
            weights[b, h] = P
    return out, weights


@pytest.mark.parametrize(
    ("H", "Hkv", "kwargs"),
    [
        (1, 1, {}),
        (3, 3, {}),
        (2, 2, {"key_lengths": np.array([4, 1])}),
        (4, 2, {"is_causal": True}),
        (4, 1, {"key_lengths": np.array([2, 4]), "is_causal": True}),
    ],
)
def test_multi_head_layer_equals_per_head_loop_of_the_seed_formula(H, Hkv, kwargs):
    """The vectorized layer (reshape/transpose heads, GQA by grouping) equals an independent
    per-head loop of softmax(Q_h K_g^T / sqrt(E)) V_g with sliced projections."""
    rng = np.random.default_rng(8 + H + Hkv)
    p = random_params(rng, e_q=5, e_kv=3, H=H, E=2, Ev=3, Hkv=Hkv, e_out=4)
    xq, xkv = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 4, 3))
    out, cache = cross_attention_forward(p, xq, xkv, **kwargs)
    ref, ref_w = per_head_loop_oracle(p, xq, xkv, Hkv, **kwargs)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-13)
    np.testing.assert_allclose(cache.weights, ref_w, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), H=st.sampled_from([1, 2, 4]), data=st.data())
def test_permuting_real_keys_leaves_cross_attention_unchanged(seed, H, data):
    """Cross-attention has no notion of key order: permuting the real (unpadded) key/value
    positions of each sequence leaves the output unchanged and permutes the weights alike;
    whatever sits in the padding does not matter either."""
    rng = np.random.default_rng(seed)
    B, L, S = 2, 3, 5
    p = random_params(rng, e_q=3, e_kv=2, H=H, E=2, Ev=2, e_out=3)
    xq, xkv = rng.normal(size=(B, L, 3)), rng.normal(size=(B, S, 2))
    lengths = np.array(data.draw(st.lists(st.integers(1, S), min_size=B, max_size=B)))
    out, cache = cross_attention_forward(p, xq, xkv, key_lengths=lengths)
    perm_kv = xkv.copy()
    perms = []
    for b in range(B):
        perm = np.concatenate([rng.permutation(lengths[b]), np.arange(lengths[b], S)])
        perm_kv[b] = xkv[b, perm]
        perm_kv[b, lengths[b] :] = rng.normal(size=(S - lengths[b], 2)) * 100  # new padding
        perms.append(perm)
    out2, cache2 = cross_attention_forward(p, xq, perm_kv, key_lengths=lengths)
    np.testing.assert_allclose(out2, out, rtol=0, atol=1e-13)
    for b in range(B):
        n = lengths[b]
        np.testing.assert_allclose(
            cache2.weights[b, ..., :n], cache.weights[b][..., perms[b][:n]], rtol=0, atol=1e-14
        )
        assert not cache2.weights[b, ..., n:].any()


def test_padded_keys_get_zero_weight_and_zero_gradient():
    """Keys at positions >= key_lengths[b] get weight exactly 0 and their rows of d_x_kv are
    exactly 0 (they do not take part)."""
    rng = np.random.default_rng(10)
    p = random_params(rng, e_q=3, e_kv=3, H=2)
    out, cache = cross_attention_forward(
        p, rng.normal(size=(2, 2, 3)), rng.normal(size=(2, 4, 3)), key_lengths=np.array([1, 3])
    )
    assert not cache.weights[0, ..., 1:].any() and not cache.weights[1, ..., 3:].any()
    _, d_x_kv, _ = cross_attention_backward(rng.normal(size=out.shape), cache)
    assert not d_x_kv[0, 1:].any() and not d_x_kv[1, 3:].any()
    assert d_x_kv[0, 0].any() and d_x_kv[1, :3].any()


def test_sequence_without_keys_gives_the_output_bias_and_finite_gradients():
    """key_lengths[b] = 0 leaves every query of sequence b with no key: its context is 0 (not
    NaN, unlike torch), so its output is b_o, and every gradient stays finite."""
    rng = np.random.default_rng(11)
    p = random_params(rng, e_q=2, e_kv=2, H=2)
    out, cache = cross_attention_forward(
        p, rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 2, 2)), key_lengths=np.array([0, 2])
    )
    np.testing.assert_array_equal(out[0], np.broadcast_to(p.b_o, out[0].shape))
    d_x_q, d_x_kv, g = cross_attention_backward(np.ones_like(out), cache)
    assert np.isfinite(d_x_q).all() and np.isfinite(d_x_kv).all()
    assert not d_x_q[0].any() and not d_x_kv[0].any()


def test_weights_rows_sum_to_one_and_have_per_head_shape():
    """cache.weights is (B, H, L, S), every row a probability vector."""
    rng = np.random.default_rng(12)
    p = init_cross_attention(rng, 6, 5, num_heads=3)
    out, cache = cross_attention_forward(p, rng.normal(size=(2, 4, 6)), rng.normal(size=(2, 7, 5)))
    assert out.shape == (2, 4, 6) and cache.weights.shape == (2, 3, 4, 7)
    np.testing.assert_allclose(cache.weights.sum(-1), 1.0, rtol=0, atol=1e-15)


def test_float32_in_float32_out():
    """float32 inputs and parameters give float32 outputs and gradients close to float64's."""
    rng = np.random.default_rng(13)
    p = random_params(rng, e_q=3, e_kv=3, H=2)
    xq, xkv = rng.normal(size=(1, 2, 3)), rng.normal(size=(1, 4, 3))
    p32 = replace(p, **{n: getattr(p, n).astype(np.float32) for n in NAMES})
    out32, c32 = cross_attention_forward(p32, xq.astype(np.float32), xkv.astype(np.float32))
    out64, c64 = cross_attention_forward(p, xq, xkv)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-5)
    g32 = cross_attention_backward(np.ones_like(out32), c32)
    g64 = cross_attention_backward(np.ones_like(out64), c64)
    assert g32[0].dtype == g32[2].w_q.dtype == np.float32
    np.testing.assert_allclose(g32[2].w_k, g64[2].w_k, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------


def test_init_is_glorot_uniform_like_torch_with_zero_biases():
    """w_q, w_k, w_v lie within the Xavier bound sqrt(6 / (fan_in + fan_out)) and fill it (max
    close to the bound); w_o within nn.Linear's 1/sqrt(fan_in); biases are zero; a fixed seed
    gives the same parameters."""
    p = init_cross_attention(np.random.default_rng(0), 64, 32, num_heads=8, e_out=16)
    for w in (p.w_q, p.w_k, p.w_v):
        bound = math.sqrt(6.0 / sum(w.shape))
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    bound_o = 1.0 / math.sqrt(p.w_o.shape[0])
    assert np.abs(p.w_o).max() <= bound_o and np.abs(p.w_o).max() > 0.95 * bound_o
    assert p.w_k.shape == (32, 64) and p.w_o.shape == (64, 16)
    for b in (p.b_q, p.b_k, p.b_v, p.b_o):
        assert not b.any()
    p2 = init_cross_attention(np.random.default_rng(0), 64, 32, num_heads=8, e_out=16)
    np.testing.assert_array_equal(p.w_v, p2.w_v)


def test_init_gqa_shapes_and_forward_uses_params_num_kv_heads():
    """init with num_kv_heads gives w_k, w_v of Hkv*E columns, and the forward reads Hkv from
    the params (no argument needed)."""
    rng = np.random.default_rng(1)
    p = init_cross_attention(rng, 8, 8, num_heads=4, num_kv_heads=2, bias=False)
    assert p.w_k.shape == p.w_v.shape == (8, 4) and p.b_q is None
    out, cache = self_attention_forward(p, rng.normal(size=(1, 3, 8)))
    assert out.shape == (1, 3, 8) and cache.num_kv_heads == 2
    assert cache.weights.shape == (1, 4, 3, 3)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _bad_cases():
    rng = np.random.default_rng(0)
    p = random_params(rng, e_q=3, e_kv=4, H=2, E=2, Ev=2, e_out=3)
    xq, xkv = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 5, 4))
    return p, xq, xkv


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        (lambda p, q, kv: (p, q[..., :2], kv, {}), ValueError, r"x_q has width Dq=2.*w_q"),
        (lambda p, q, kv: (p, q, kv[..., :3], {}), ValueError, r"params\.w_k.*x_kv of width 3"),
        (lambda p, q, kv: (p, q, kv[:1], {}), ValueError, r"x_q and x_kv.*batch size"),
        (lambda p, q, kv: (p, q[0], kv, {}), ValueError, r"x_q must have shape \(B, L, Dq\)"),
        (lambda p, q, kv: (p, q, kv[0], {}), ValueError, r"x_kv must have shape \(B, S, Dkv\)"),
        (
            lambda p, q, kv: (replace(p, num_heads=3), q, kv, {}),
            ValueError,
            r"num_heads=3 must divide the projection width of params\.w_q",
        ),
        (lambda p, q, kv: (replace(p, num_heads=0), q, kv, {}), ValueError, r"params\.num_heads"),
        (
            lambda p, q, kv: (p, q, kv, {"num_kv_heads": 3}),
            ValueError,
            r"num_kv_heads=3 must divide",
        ),
        (lambda p, q, kv: (p, q, kv, {"num_kv_heads": 1}), ValueError, r"params\.w_k has shape"),
        (lambda p, q, kv: (replace(p, w_o=p.w_o[:3]), q, kv, {}), ValueError, r"params\.w_o"),
        (lambda p, q, kv: (replace(p, b_v=p.b_v[:1]), q, kv, {}), ValueError, r"params\.b_v"),
        (
            lambda p, q, kv: (p, q, kv, {"key_lengths": np.array([5])}),
            ValueError,
            r"key_lengths must have shape \(B,\) = \(2,\)",
        ),
        (
            lambda p, q, kv: (p, q, kv, {"key_lengths": np.array([-1, 2])}),
            ValueError,
            r"key_lengths must lie in \[0, S=5\]",
        ),
        (
            lambda p, q, kv: (p, q, kv, {"key_lengths": np.array([6, 2])}),
            ValueError,
            r"key_lengths must lie in \[0, S=5\]",
        ),
        (
            lambda p, q, kv: (p, q, kv, {"key_lengths": np.array([2.0, 1.0])}),
            TypeError,
            r"key_lengths must be integers",
        ),
        (
            lambda p, q, kv: (p, q, kv, {"attn_mask": np.ones((4, 5), bool)}),
            ValueError,
            r"attn_mask has shape \(4, 5\)",
        ),
        (lambda p, q, kv: (p, q.astype(complex), kv, {}), TypeError, r"x_q must be a real"),
        (
            lambda p, q, kv: ("params", q, kv, {}),
            TypeError,
            r"params must be a CrossAttentionParams",
        ),
    ],
)
def test_bad_input_raises_a_clear_error_naming_the_argument(change, exc, match):
    """Mismatched widths, heads not dividing the projection width, bad key_lengths, masks and
    dtypes each raise an error that names the argument and the shapes involved."""
    p, xq, xkv, kwargs = change(*_bad_cases())
    with pytest.raises(exc, match=match):
        cross_attention_forward(p, xq, xkv, **kwargs)


def test_bad_init_and_bad_d_out_raise():
    """init rejects heads that do not divide embed_dim; the backward rejects a d_out of the
    wrong shape."""
    rng = np.random.default_rng(0)
    with pytest.raises(
        ValueError, match=r"num_heads=3 must divide the projection width embed_dim=8"
    ):
        init_cross_attention(rng, 8, 8, num_heads=3)
    with pytest.raises(ValueError, match=r"num_kv_heads=3 must divide num_heads=4"):
        init_cross_attention(rng, 8, 8, num_heads=4, num_kv_heads=3)
    p = init_cross_attention(rng, 4, 4, num_heads=2)
    out, cache = cross_attention_forward(p, rng.normal(size=(1, 2, 4)), rng.normal(size=(1, 3, 4)))
    with pytest.raises(ValueError, match=r"d_out has shape \(1, 2, 3\)"):
        cross_attention_backward(np.ones((1, 2, 3)), cache)


# ---------------------------------------------------------------------------
# torch.nn.MultiheadAttention
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_multihead_attention_with_kdim_vdim_and_padding(bias):
    """Same weights (w_q = q_proj_weight.T, ...), kdim = vdim != embed_dim, key_padding_mask
    (True = ignore) converted to key_lengths: outputs, per-head weights
    (average_attn_weights=False) and gradients of inputs and every parameter agree in float64."""
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    rng = np.random.default_rng(14)
    Dq, Dkv, H, B, L, S = 6, 4, 3, 2, 3, 5
    mha = torch.nn.MultiheadAttention(Dq, H, kdim=Dkv, vdim=Dkv, batch_first=True, bias=bias)
    mha = mha.double()
    with torch.no_grad():
        for prm in mha.parameters():
            prm.copy_(torch.from_numpy(rng.normal(size=tuple(prm.shape)) * 0.5))
    p = CrossAttentionParams(
        w_q=mha.q_proj_weight.detach().numpy().T.copy(),
        w_k=mha.k_proj_weight.detach().numpy().T.copy(),
        w_v=mha.v_proj_weight.detach().numpy().T.copy(),
        w_o=mha.out_proj.weight.detach().numpy().T.copy(),
        b_q=mha.in_proj_bias.detach().numpy()[:Dq].copy() if bias else None,
        b_k=mha.in_proj_bias.detach().numpy()[Dq : 2 * Dq].copy() if bias else None,
        b_v=mha.in_proj_bias.detach().numpy()[2 * Dq :].copy() if bias else None,
        b_o=mha.out_proj.bias.detach().numpy().copy() if bias else None,
        num_heads=H,
    )
    xq, xkv = rng.normal(size=(B, L, Dq)), rng.normal(size=(B, S, Dkv))
    key_padding_mask = np.array([[False] * 5, [False, False, True, True, True]])
    key_lengths = (~key_padding_mask).sum(axis=1)  # padding sits at the end
    G = rng.normal(size=(B, L, Dq))

    tq = torch.tensor(xq, requires_grad=True)
    tkv = torch.tensor(xkv, requires_grad=True)
    t_out, t_w = mha(
        tq, tkv, tkv, key_padding_mask=torch.from_numpy(key_padding_mask),
        need_weights=True, average_attn_weights=False,
    )  # fmt: skip
    (t_out * torch.from_numpy(G)).sum().backward()

    out, cache = cross_attention_forward(p, xq, xkv, key_lengths=key_lengths)
    d_x_q, d_x_kv, g = cross_attention_backward(G, cache)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(cache.weights, t_w.detach().numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(d_x_q, tq.grad.numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(d_x_kv, tkv.grad.numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(g.w_q, mha.q_proj_weight.grad.numpy().T, rtol=0, atol=1e-13)
    np.testing.assert_allclose(g.w_k, mha.k_proj_weight.grad.numpy().T, rtol=0, atol=1e-13)
    np.testing.assert_allclose(g.w_v, mha.v_proj_weight.grad.numpy().T, rtol=0, atol=1e-13)
    np.testing.assert_allclose(g.w_o, mha.out_proj.weight.grad.numpy().T, rtol=0, atol=1e-13)
    if bias:
        gb = mha.in_proj_bias.grad.numpy()
        np.testing.assert_allclose(np.concatenate([g.b_q, g.b_k, g.b_v]), gb, rtol=0, atol=1e-13)
        np.testing.assert_allclose(g.b_o, mha.out_proj.bias.grad.numpy(), rtol=0, atol=1e-13)


def test_matches_torch_self_attention_with_packed_in_proj_and_causal_mask():
    """Self-attention with torch's packed in_proj_weight (3 Dm, Dm) split into w_q, w_k, w_v and a
    causal attn_mask (torch's float -inf mask) agrees with our is_causal=True, with d_x the sum
    of both paths."""
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    rng = np.random.default_rng(15)
    Dm, H, B, T = 4, 2, 2, 5
    mha = torch.nn.MultiheadAttention(Dm, H, batch_first=True).double()
    with torch.no_grad():
        for prm in mha.parameters():
            prm.copy_(torch.from_numpy(rng.normal(size=tuple(prm.shape)) * 0.5))
    W, b = mha.in_proj_weight.detach().numpy(), mha.in_proj_bias.detach().numpy()
    p = CrossAttentionParams(
        w_q=W[:Dm].T.copy(), w_k=W[Dm : 2 * Dm].T.copy(), w_v=W[2 * Dm :].T.copy(),
        w_o=mha.out_proj.weight.detach().numpy().T.copy(),
        b_q=b[:Dm].copy(), b_k=b[Dm : 2 * Dm].copy(), b_v=b[2 * Dm :].copy(),
        b_o=mha.out_proj.bias.detach().numpy().copy(), num_heads=H,
    )  # fmt: skip
    x = rng.normal(size=(B, T, Dm))
    G = rng.normal(size=(B, T, Dm))
    tx = torch.tensor(x, requires_grad=True)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)
    t_out, _ = mha(tx, tx, tx, attn_mask=causal, need_weights=False)
    (t_out * torch.from_numpy(G)).sum().backward()
    out, cache = self_attention_forward(p, x, is_causal=True)
    d_x, g = self_attention_backward(G, cache)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(d_x, tx.grad.numpy(), rtol=0, atol=1e-13)
    dW = np.concatenate([g.w_q.T, g.w_k.T, g.w_v.T])
    np.testing.assert_allclose(dW, mha.in_proj_weight.grad.numpy(), rtol=0, atol=1e-13)


def test_key_bias_gradient_vanishes():
    """b_k adds q_i . b_k to every score of row i, which the softmax ignores (shift invariance),
    so d_b_k = sum dK is 0 up to rounding, with masks and GQA too; the other biases do get a
    gradient."""
    rng = np.random.default_rng(16)
    p = random_params(rng, e_q=3, e_kv=4, H=4, Hkv=2, e_out=3)
    out, cache = cross_attention_forward(
        p, rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 5, 4)),
        key_lengths=np.array([5, 2]), is_causal=True,
    )  # fmt: skip
    _, _, g = cross_attention_backward(rng.normal(size=out.shape), cache)
    np.testing.assert_allclose(g.b_k, 0.0, rtol=0, atol=1e-13)
    assert np.abs(g.b_q).max() > 1e-3 and np.abs(g.b_v).max() > 1e-3


# ---------------------------------------------------------------------------
# Hardening (issue 14): clear errors for wrong arguments, caches that own their arrays
# ---------------------------------------------------------------------------


def _grads(d_x_q, d_x_kv, d_params):
    """The backward's results as one dict of arrays (biases included)."""
    return {"x_q": d_x_q, "x_kv": d_x_kv, **{n: getattr(d_params, n) for n in NAMES}}


def test_params_given_as_nested_lists_are_stored_as_arrays_and_work():
    """CrossAttentionParams accepts array_like weights and biases (nested lists): they are stored
    as ndarrays, and the layer gives bit for bit the output and gradients of the ndarray params."""
    rng = np.random.default_rng(30)
    p = random_params(rng, e_q=3, e_kv=2, H=2)
    as_lists = CrossAttentionParams(**{n: getattr(p, n).tolist() for n in NAMES}, num_heads=2)
    assert all(isinstance(getattr(as_lists, n), np.ndarray) for n in NAMES)
    xq, xkv = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 4, 2))
    out, cache = cross_attention_forward(p, xq, xkv)
    out_l, cache_l = cross_attention_forward(as_lists, xq, xkv)
    np.testing.assert_array_equal(out_l, out)
    G = rng.normal(size=out.shape)
    ref, got = (_grads(*cross_attention_backward(G, c)) for c in (cache, cache_l))
    for n in ref:
        np.testing.assert_array_equal(got[n], ref[n])


def _foreign_caches():
    rng = np.random.default_rng(31)
    q = rng.normal(size=(1, 1, 2, 3))
    return {"None": None, "str": "cache", "core AttentionCache": attention_forward(q, q, q)[1]}


@pytest.mark.parametrize("what", list(_foreign_caches()))
@pytest.mark.parametrize(
    ("backward", "made_by"),
    [
        (cross_attention_backward, "cross_attention_forward"),
        (self_attention_backward, "self_attention_forward"),
    ],
)
def test_backward_refuses_a_foreign_cache_with_a_type_error_naming_it(backward, made_by, what):
    """None, a string or the core's AttentionCache passed as the cache is a TypeError naming the
    cache and the forward that makes one (not an AttributeError or a misleading ValueError)."""
    cache = _foreign_caches()[what]
    with pytest.raises(TypeError, match=rf"cache must be the CrossAttentionCache .*{made_by}"):
        backward(np.ones((1, 2, 3)), cache)


@pytest.mark.parametrize(
    "rng", [None, 42, np.random.RandomState(0)], ids=["None", "int seed", "RandomState"]
)
def test_init_refuses_an_rng_that_is_not_a_generator(rng):
    """init_cross_attention needs a numpy.random.Generator: None, a bare seed or the legacy
    RandomState is a TypeError that says so (today's rule: no hidden draws from a seed)."""
    with pytest.raises(TypeError, match=r"rng must be the Generator .*numpy\.random\.default_rng"):
        init_cross_attention(rng, 4, 4, num_heads=2)


@pytest.mark.parametrize(
    "dtype",
    ["U3", np.int64, np.complex128, bool, "no such dtype"],
    ids=["U3", "int64", "complex128", "bool", "no such dtype"],
)
def test_init_refuses_a_dtype_that_is_not_real_floating(dtype):
    """Strings, integers (which would truncate the weights to 0), complex and bool are refused
    with a TypeError naming dtype, instead of returning such weights."""
    with pytest.raises(TypeError, match=r"dtype must be a real floating dtype"):
        init_cross_attention(np.random.default_rng(0), 4, 4, num_heads=2, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, "float64"])
def test_init_makes_weights_of_any_real_floating_dtype(dtype):
    """The dtype check lets every real floating dtype through, given as a type or a name."""
    p = init_cross_attention(np.random.default_rng(0), 4, 4, num_heads=2, dtype=dtype)
    assert {getattr(p, n).dtype for n in NAMES} == {np.dtype(dtype)}


def test_editing_the_returned_output_in_place_leaves_the_backward_unchanged():
    """The output is a fresh array that the cache does not hold: a residual add into it
    (out += ...) changes no gradient, for cross- and self-attention."""
    rng = np.random.default_rng(32)
    p = random_params(rng, e_q=3, e_kv=3, H=1, E=3, Ev=3, e_out=3)
    xq, xkv = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 4, 3))
    G = rng.normal(size=(2, 3, 3))
    out, cache = cross_attention_forward(p, xq, xkv)
    ref = _grads(*cross_attention_backward(G, cross_attention_forward(p, xq, xkv)[1]))
    out += 100.0 * xq
    got = _grads(*cross_attention_backward(G, cache))
    for n in ref:
        np.testing.assert_array_equal(got[n], ref[n])
    out_s, cache_s = self_attention_forward(p, xq)
    d_x_ref, _ = self_attention_backward(G, self_attention_forward(p, xq)[1])
    out_s *= -3.0
    np.testing.assert_array_equal(self_attention_backward(G, cache_s)[0], d_x_ref)


def test_editing_the_inputs_and_params_in_place_leaves_the_backward_unchanged():
    """The cache holds its own copies of the inputs and parameters: a residual x += out and an
    in-place optimizer step on every weight and bias after the forward change no gradient."""
    rng = np.random.default_rng(33)
    p = random_params(rng, e_q=3, e_kv=2, H=2, e_out=3)
    xq, xkv = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 4, 2))
    G = rng.normal(size=(2, 3, 3))
    ref = _grads(*cross_attention_backward(G, cross_attention_forward(p, xq, xkv)[1]))
    out, cache = cross_attention_forward(p, xq, xkv)
    xq += out  # a residual connection, in place
    xkv *= 2.0
    for n in NAMES:
        getattr(p, n)[...] -= 0.1  # an optimizer step, in place
    got = _grads(*cross_attention_backward(G, cache))
    for n in ref:
        np.testing.assert_array_equal(got[n], ref[n])


# ---------------------------------------------------------------------------
# Variants through the layer (issue 12): window, softcap, ALiBi, and sinks held by the layer
# ---------------------------------------------------------------------------


def test_layer_passes_window_softcap_alibi_and_its_sinks_to_the_core():
    """The layer's output equals the projections around the core called with the same variants,
    and its gradients (d_params.sinks included) pass finite differences."""
    from numpy_attention import gradcheck

    rng = np.random.default_rng(5)
    p = init_cross_attention(rng, e_q=6, e_kv=5, num_heads=2)
    p = replace(p, sinks=rng.normal(size=2))
    x_q, x_kv = rng.normal(size=(2, 4, 6)), rng.normal(size=(2, 5, 5))
    kw = dict(window=(1, 1), softcap=2.0, alibi_slopes=np.array([0.5, 0.25]), is_causal=True)
    out, cache = cross_attention_forward(p, x_q, x_kv, **kw)
    q = (x_q @ p.w_q + p.b_q).reshape(2, 4, 2, -1).transpose(0, 2, 1, 3)
    k = (x_kv @ p.w_k + p.b_k).reshape(2, 5, 2, -1).transpose(0, 2, 1, 3)
    v = (x_kv @ p.w_v + p.b_v).reshape(2, 5, 2, -1).transpose(0, 2, 1, 3)
    o, _ = attention_forward(q, k, v, sinks=p.sinks, **kw)
    ref = o.transpose(0, 2, 1, 3).reshape(2, 4, -1) @ p.w_o + p.b_o
    np.testing.assert_allclose(out, ref, atol=1e-13)
    _, _, d_p = cross_attention_backward(np.ones_like(out), cache)
    assert d_p.sinks is not None and d_p.sinks.shape == (2,)

    def fwd(sinks, x_q):
        return cross_attention_forward(replace(p, sinks=sinks), x_q, x_kv, **kw)

    def bwd(d, c):
        d_x_q, _, dp = cross_attention_backward(d, c)
        return {"sinks": dp.sinks, "x_q": d_x_q}

    report = gradcheck(fwd, {"sinks": p.sinks, "x_q": x_q}, bwd)
    assert report.passed, report
