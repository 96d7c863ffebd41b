"""Scaled dot-product attention: Eqs. (2.1)-(2.16) of docs/attention.md.

Oracle agreement (loop oracle, 1e-12 in float64), properties, finite-difference
gradient checks, bad input, dtypes.
"""

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import attention_backward_oracle, attention_oracle
from strategies import attention_cases, dims, gqa_groups, seeds

from numpy_attention.attention import (
    attention_backward,
    attention_forward,
    scaled_dot_product_attention,
)
from numpy_attention.masks import padding_mask, sliding_window_mask
from numpy_attention.testing import gradcheck

RNG = np.random.default_rng


def _d_out(out, seed=0):
    return RNG(seed).normal(size=out.shape)


def _kv_per_query_head(a, case):
    """k or v broadcast to the scores' leading shape, GQA heads repeated (repeat_interleave)."""
    lead = case.scores_shape[:-2]
    if case.enable_gqa:
        a = np.repeat(a, lead[-1] // a.shape[-3], axis=-3)
    return np.broadcast_to(a, lead + a.shape[-2:])


# ---------------------------------------------------------------------------
# Agreement with the loop oracle (seed Sec. 3.1 written with math.exp)
# ---------------------------------------------------------------------------


@given(attention_cases())
def test_forward_matches_loop_oracle(case):
    """out, P and lse (Eqs. (2.1)-(2.5)) equal the loop oracle to 1e-12 (masks, causal, GQA,
    L != S, E != Ev, broadcast batch and heads)."""
    out, cache = attention_forward(**case.kwargs())
    o, P, lse = attention_oracle(**case.kwargs())
    assert out.shape == o.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, o, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cache.P, P, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cache.lse, lse, rtol=1e-12, atol=1e-12)  # -inf where -inf


@settings(max_examples=30)
@given(attention_cases(dropout=True))
def test_forward_with_dropout_keep_mask_matches_loop_oracle(case):
    """Eq. (2.4): kept weights scaled by 1/(1-p), dropped ones 0, as in the loop oracle."""
    out, cache = attention_forward(**case.kwargs())
    o, P, _ = attention_oracle(**case.kwargs())
    np.testing.assert_allclose(out, o, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cache.P, P, rtol=0, atol=1e-12)  # P is stored before dropout


@settings(max_examples=40)
@given(attention_cases(dropout=False) | attention_cases(dropout=True), seeds)
def test_backward_matches_loop_oracle_with_explicit_jacobian(case, seed):
    """Eqs. (2.10)-(2.16) equal a loop backward that uses the full softmax Jacobian and
    accumulates broadcast and GQA gradients index by index (1e-12 relative)."""
    out, cache = attention_forward(**case.kwargs())
    G = _d_out(out, seed)
    g = attention_backward(G, cache)
    expect = attention_backward_oracle(G, **case.kwargs())
    for name in ("dq", "dk", "dv", "d_attn_mask"):
        got, want = getattr(g, name), expect[name]
        if want is None:
            assert got is None, name
            continue
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------------------
# Properties of the forward
# ---------------------------------------------------------------------------


@given(attention_cases())
def test_weights_rows_sum_to_one_or_are_zero_with_lse_minus_inf(case):
    """Eq. (2.3): each row of P sums to 1; a row with no key left is all 0 and has lse = -inf."""
    out, cache = attention_forward(**case.kwargs())
    dead = cache.lse == -np.inf
    assert np.all(cache.P >= 0)
    np.testing.assert_allclose(cache.P.sum(-1)[~dead], 1.0, rtol=0, atol=1e-13)
    assert np.all(cache.P[dead] == 0) and np.all(out[dead] == 0)
    assert np.all(np.isfinite(cache.lse[~dead])) and not np.any(np.isnan(out))


@given(attention_cases())
def test_output_row_is_convex_combination_of_value_rows(case):
    """Eq. (2.5) with P >= 0, sum P = 1: each output entry lies between the smallest and the
    largest value entry over the keys it attends to."""
    out, cache = attention_forward(**case.kwargs())
    v = _kv_per_query_head(case.v, case)[..., None, :, :]  # (..., 1, S, Ev)
    used = (cache.P > 0)[..., None]  # (..., L, S, 1)
    lo = np.where(used, v, np.inf).min(axis=-2)
    hi = np.where(used, v, -np.inf).max(axis=-2)
    live = cache.lse > -np.inf
    assert np.all(out[live] >= lo[live] - 1e-12) and np.all(out[live] <= hi[live] + 1e-12)


@given(dims(1, 2), dims(1, 3), dims(1, 6), dims(1, 4), st.sampled_from(["none", "bool", "float"]),
       seeds, st.randoms(use_true_random=False))  # fmt: skip
def test_self_attention_is_equivariant_to_permuting_positions(B, H, N, E, mask, seed, rand):
    """Without a causal mask, permuting the positions of q, k, v (and both axes of the mask)
    permutes the output rows the same way: out(pi x) = pi out(x)."""
    rng = RNG(seed)
    q, k, v = (rng.normal(size=(B, H, N, E)) for _ in range(3))
    m = {"none": None, "bool": rng.random((N, N)) < 0.6, "float": rng.normal(size=(H, N, N))}[mask]
    perm = list(range(N))
    rand.shuffle(perm)
    out = scaled_dot_product_attention(q, k, v, m)
    pm = None if m is None else m[..., perm, :][..., perm]
    out_p = scaled_dot_product_attention(q[..., perm, :], k[..., perm, :], v[..., perm, :], pm)
    np.testing.assert_allclose(out_p, out[..., perm, :], rtol=0, atol=1e-12)


def _permute_keys(a, perm, S):
    """Permute the key axis (last) of a mask, unless it is broadcast (size 1 or absent)."""
    if a is None or a.ndim == 0 or a.shape[-1] != S:
        return a
    return a[..., perm]


@given(attention_cases(causal=False) | attention_cases(causal=False, dropout=True),
       st.randoms(use_true_random=False))  # fmt: skip
def test_jointly_permuting_keys_and_values_leaves_output_unchanged(case, rand):
    """Attention is a set function of the (key, value) pairs: permuting k, v (and the mask's
    key axis) together leaves out and lse unchanged and permutes the columns of P."""
    S = case.k.shape[-2]
    perm = list(range(S))
    rand.shuffle(perm)
    out, cache = attention_forward(**case.kwargs())
    kw = case.kwargs()
    kw.update(
        k=case.k[..., perm, :], v=case.v[..., perm, :],
        attn_mask=_permute_keys(case.attn_mask, perm, S),
        dropout_mask=_permute_keys(case.dropout_mask, perm, S),
    )  # fmt: skip
    out_p, cache_p = attention_forward(**kw)
    np.testing.assert_allclose(out_p, out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cache_p.lse, cache.lse, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(cache_p.P, cache.P[..., perm], rtol=0, atol=1e-13)


def test_default_scale_is_one_over_sqrt_E_and_scale_multiplies_scores():
    """Eq. (2.1): scale=None means 1/sqrt(E); scale=c gives lse of c q.k rows."""
    rng = RNG(3)
    q, k, v = rng.normal(size=(3, 9)), rng.normal(size=(4, 9)), rng.normal(size=(4, 2))
    out, cache = attention_forward(q, k, v)
    out3, cache3 = attention_forward(q, k, v, scale=1 / 3)
    np.testing.assert_array_equal(out, out3)
    _, c2 = attention_forward(q, k, v, scale=2.0)
    np.testing.assert_allclose(c2.lse, np.log(np.exp(2.0 * q @ k.T).sum(-1)), rtol=1e-14)


def test_bool_mask_equals_float_mask_of_zero_and_minus_inf():
    """Eq. (2.2): a boolean mask M is the additive bias 0 where M, -inf elsewhere (out, grads)."""
    rng = RNG(4)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 3))
    m = rng.random((2, 3, 5)) < 0.5
    m[0, 1] = False  # a fully masked row
    out_b, cb = attention_forward(q, k, v, m)
    out_f, cf = attention_forward(q, k, v, np.where(m, 0.0, -np.inf))
    np.testing.assert_array_equal(out_b, out_f)
    gb, gf = (
        attention_backward(np.ones_like(out_b), cb),
        attention_backward(np.ones_like(out_f), cf),
    )
    for n in ("dq", "dk", "dv"):
        np.testing.assert_array_equal(getattr(gb, n), getattr(gf, n))
    assert gb.d_attn_mask is None and gf.d_attn_mask.shape == m.shape


# ---------------------------------------------------------------------------
# Properties of the backward
# ---------------------------------------------------------------------------


@settings(max_examples=40)
@given(attention_cases(masks=("none", "bool")) | attention_cases(masks=("none",), dropout=True),
       seeds)  # fmt: skip
def test_rows_of_dS_sum_to_zero_and_vanish_where_masked(case, seed):
    """Eq. (2.13): dS = P (dP - D) has rows summing to 0 (softmax ignores a common shift) and is
    exactly 0 on masked entries. dS is read from the backward as the gradient of a zero
    float bias of the scores' full shape (Eq. (2.15))."""
    keep = np.ones(case.scores_shape, bool) if case.attn_mask is None else case.attn_mask
    bias = np.where(np.broadcast_to(keep, case.scores_shape), 0.0, -np.inf)
    kw = dict(case.kwargs(), attn_mask=bias)
    out, cache = attention_forward(**kw)
    dS = attention_backward(_d_out(out, seed), cache).d_attn_mask
    assert dS.shape == case.scores_shape
    scale = max(1.0, float(np.abs(dS).max()))
    np.testing.assert_allclose(dS.sum(-1), 0.0, rtol=0, atol=1e-13 * scale * case.k.shape[-2])
    assert np.all(dS[cache.P == 0] == 0)


@given(dims(1, 4), dims(1, 4), dims(1, 4), seeds)
def test_D_equals_rowsum_dP_P_equals_rowsum_dO_O(L, S, Ev, seed):
    """Eq. (2.12): sum_j dP_ij P_ij = sum_e dO_ie O_ie, because O = P V and dP = dO V^T."""
    rng = RNG(seed)
    q, k, v = rng.normal(size=(L, 3)), rng.normal(size=(S, 3)), rng.normal(size=(S, Ev))
    out, cache = attention_forward(q, k, v)
    dO = rng.normal(size=out.shape)
    dP = dO @ v.T
    np.testing.assert_allclose((dP * cache.P).sum(-1), (dO * out).sum(-1), rtol=1e-12, atol=1e-13)


@given(dims(1, 3), dims(1, 2), gqa_groups(), dims(1, 4), dims(2, 6), dims(1, 4), seeds,
       st.booleans())  # fmt: skip
def test_masked_keys_get_exactly_zero_dk_and_dv(B, Hkv, G, L, S, E, seed, gqa):
    """A key masked for every query (padding, Eq. (2.7)) has P = 0 in its column, so
    dK = scale dS^T Q and dV = P^T dO give exactly 0 for it, also summed over a GQA group."""
    rng = RNG(seed)
    Hq = Hkv * G if gqa else Hkv
    q = rng.normal(size=(B, Hq, L, E))
    k, v = rng.normal(size=(B, Hkv, S, E)), rng.normal(size=(B, Hkv, S, 3))
    lengths = rng.integers(1, S + 1, size=B)
    out, cache = attention_forward(q, k, v, padding_mask(lengths, S), enable_gqa=gqa)
    g = attention_backward(_d_out(out, seed), cache)
    for b, n in enumerate(lengths):
        assert np.all(g.dk[b, :, n:] == 0) and np.all(g.dv[b, :, n:] == 0)
        if n > 0:
            assert np.any(g.dv[b, :, :n] != 0)


def test_fully_masked_rows_give_zero_output_weights_grads_and_no_nan():
    """A query with no key (bottom-right causal with L > S, Eq. (2.6)) has out 0, P 0,
    lse -inf, dq 0, contributes nothing to dk, dv, and no floating-point warning is raised."""
    rng = RNG(5)
    L, S = 5, 3  # bottom-right: queries 0, 1 see no key
    q, k, v = rng.normal(size=(2, L, 4)), rng.normal(size=(2, S, 4)), rng.normal(size=(2, S, 2))
    with np.errstate(all="raise"):
        out, cache = attention_forward(q, k, v, is_causal=True, causal_align="bottom_right")
        dO = _d_out(out)
        g = attention_backward(dO, cache)
    assert np.all(out[:, :2] == 0) and np.all(cache.P[:, :2] == 0)
    assert np.all(cache.lse[:, :2] == -np.inf) and np.all(g.dq[:, :2] == 0)
    _, c_live = attention_forward(q[:, 2:], k, v, is_causal=True, causal_align="bottom_right")
    g_live = attention_backward(dO[:, 2:], c_live)
    np.testing.assert_allclose(g.dk, g_live.dk, rtol=1e-14, atol=0)
    np.testing.assert_allclose(g.dv, g_live.dv, rtol=1e-14, atol=0)
    for a in (out, cache.P, g.dq, g.dk, g.dv):
        assert not np.any(np.isnan(a))


def test_all_keys_masked_everywhere_gives_all_zero_gradients():
    """Every row fully masked (a float bias of -inf): out, dq, dk, dv and d_attn_mask are all 0."""
    rng = RNG(6)
    q, k, v = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    bias = np.full((3, 5), -np.inf)
    with np.errstate(all="raise"):
        out, cache = attention_forward(q, k, v, bias)
        g = attention_backward(np.ones_like(out), cache)
    for a in (out, g.dq, g.dk, g.dv, g.d_attn_mask):
        assert np.all(a == 0)


def test_no_keys_at_all_gives_zeros_like_torch():
    """S = 0: every row has nothing to attend to (out 0, lse -inf); L = 0: empty output."""
    out, cache = attention_forward(np.ones((3, 2)), np.ones((0, 2)), np.ones((0, 4)))
    assert out.shape == (3, 4) and np.all(out == 0) and np.all(cache.lse == -np.inf)
    g = attention_backward(np.ones_like(out), cache)
    assert np.all(g.dq == 0) and g.dk.shape == (0, 2) and g.dv.shape == (0, 4)
    out0, _ = attention_forward(np.ones((0, 2)), np.ones((3, 2)), np.ones((3, 4)))
    assert out0.shape == (0, 4)


def test_nan_in_query_row_reaches_only_that_row():
    """NaN in q[b, h, i] makes out[b, h, i] and dq[b, h, i] NaN and nothing else of out or dq."""
    rng = RNG(7)
    q, k, v = (
        rng.normal(size=(2, 2, 4, 3)),
        rng.normal(size=(2, 2, 5, 3)),
        rng.normal(size=(2, 2, 5, 2)),
    )
    q[1, 0, 2, 1] = np.nan
    with np.errstate(invalid="ignore"):
        out, cache = attention_forward(q, k, v, is_causal=True)
        g = attention_backward(np.ones_like(out), cache)
    hit = np.zeros(out.shape[:-1], bool)
    hit[1, 0, 2] = True
    assert np.all(np.isnan(out[hit])) and np.all(np.isfinite(out[~hit]))
    assert np.all(np.isnan(g.dq[hit])) and np.all(np.isfinite(g.dq[~hit]))
    assert np.all(np.isfinite(cache.P[~hit]))


def test_nan_in_a_key_row_spares_rows_that_mask_that_key_with_a_bool_mask():
    """NaN in k[b, j] reaches rows that may attend to key j; a boolean mask that removes key j
    from a row keeps that row finite (the masked score is replaced by -inf)."""
    rng = RNG(16)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 2))
    k[0, 3, 1] = np.nan
    m = np.ones((3, 5), bool)
    m[1, 3] = False
    with np.errstate(invalid="ignore"):
        out = scaled_dot_product_attention(q, k, v, m)
    assert np.all(np.isnan(out[0, [0, 2]])) and np.all(np.isfinite(out[0, 1]))
    assert np.all(np.isfinite(out[1]))


def test_nan_in_a_value_row_reaches_every_query_row_of_that_head_only():
    """Documented: NaN in v[b, h, j] reaches all rows of head (b, h), even masked ones (0 * NaN)."""
    rng = RNG(8)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 2))
    v[0, 4, 0] = np.nan
    with np.errstate(invalid="ignore"):
        out = scaled_dot_product_attention(q, k, v, is_causal=True)  # row 0 never sees key 4
    assert np.all(np.isnan(out[0, :, 0])) and np.all(np.isfinite(out[0, :, 1]))
    assert np.all(np.isfinite(out[1]))


# ---------------------------------------------------------------------------
# Finite-difference gradient checks (float64 central differences)
# ---------------------------------------------------------------------------


def _config(name):
    r = RNG(zlib.crc32(name.encode()))
    q, k, v = r.normal(size=(2, 2, 3, 4)), r.normal(size=(2, 2, 5, 4)), r.normal(size=(2, 2, 5, 3))
    bias = r.normal(size=(2, 1, 3, 5))
    bias[0, 0, 1, [1, 3]] = -np.inf
    bias[1, 0, 2, :] = -np.inf  # a fully masked row
    keep = r.random((2, 2, 3, 5)) < 0.6
    keep[0, 1, 0] = False
    configs = {
        "plain": dict(q=q[0, 0], k=k[0, 0], v=v[0, 0]),
        "explicit_scale": dict(q=q, k=k, v=v, scale=0.7),
        "bool_mask": dict(q=q, k=k, v=v, attn_mask=keep),
        "float_mask_with_-inf": dict(q=q, k=k, v=v, attn_mask=bias),
        "float_mask_broadcast_(S,)": dict(q=q, k=k, v=v, attn_mask=r.normal(size=5)),
        "causal_top_left": dict(q=q, k=k, v=v, is_causal=True),
        "causal_bottom_right": dict(q=q, k=k, v=v, is_causal=True, causal_align="bottom_right"),
        "causal_bottom_right_L>S": dict(
            q=r.normal(size=(2, 6, 4)), k=k[0], v=v[0], is_causal=True, causal_align="bottom_right"
        ),
        "causal_and_float_mask": dict(q=q, k=k, v=v, attn_mask=bias, is_causal=True),
        "gqa": dict(q=r.normal(size=(2, 4, 3, 4)), k=k, v=v, enable_gqa=True),
        "gqa_float_mask_causal": dict(
            q=r.normal(size=(2, 6, 3, 4)),
            k=k,
            v=v,
            enable_gqa=True,
            is_causal=True,
            attn_mask=r.normal(size=(6, 1, 5)),
        ),  # fmt: skip
        "dropout_keep_mask": dict(q=q, k=k, v=v, dropout_p=0.4, dropout_mask=keep),
        "dropout_gqa_bias": dict(
            q=r.normal(size=(2, 4, 3, 4)),
            k=k,
            v=v,
            enable_gqa=True,
            attn_mask=bias,
            dropout_p=0.25,
            dropout_mask=r.random((2, 4, 3, 5)) < 0.7,
        ),  # fmt: skip
        "broadcast_batch_and_heads": dict(
            q=r.normal(size=(3, 1, 2, 3, 4)),
            k=r.normal(size=(2, 5, 4)),
            v=r.normal(size=(1, 2, 1, 5, 3)),
            attn_mask=r.normal(size=(1, 2, 1, 5)),
        ),  # fmt: skip
        "padding_mask": dict(q=q, k=k, v=v, attn_mask=padding_mask([2, 5], 5)),
        "sliding_window": dict(q=q, k=k, v=v, attn_mask=sliding_window_mask(3, 5, (1, 1))),
        "E_ne_Ev_large_scale": dict(q=3 * q, k=k, v=r.normal(size=(2, 2, 5, 7)), scale=1.5),
    }
    return configs[name]


GRAD_CONFIGS = [
    "plain", "explicit_scale", "bool_mask", "float_mask_with_-inf", "float_mask_broadcast_(S,)",
    "causal_top_left", "causal_bottom_right", "causal_bottom_right_L>S", "causal_and_float_mask",
    "gqa", "gqa_float_mask_causal", "dropout_keep_mask", "dropout_gqa_bias",
    "broadcast_batch_and_heads", "padding_mask", "sliding_window", "E_ne_Ev_large_scale",
]  # fmt: skip


@pytest.mark.parametrize("name", GRAD_CONFIGS)
def test_gradients_pass_finite_differences(name):
    """dq, dk, dv and d_attn_mask (float masks) agree with float64 central differences."""
    inputs = _config(name)
    report = gradcheck(attention_forward, inputs, attention_backward)
    float_mask = np.asarray(inputs.get("attn_mask", False)).dtype.kind == "f"
    expect = {"q", "k", "v"} | ({"attn_mask"} if float_mask else set())
    assert report.passed and set(report.checked) == expect


@settings(max_examples=20)
@given(attention_cases(max_len=4) | attention_cases(max_len=4, dropout=True), seeds)
def test_gradients_pass_finite_differences_on_generated_cases(case, seed):
    """The finite-difference check on hypothesis-generated shapes, masks, GQA, dropout."""
    kw = {n: a for n, a in case.kwargs().items() if a is not None}
    gradcheck(attention_forward, kw, attention_backward, seed=seed, max_entries=60)


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------


def test_all_true_keep_mask_scales_output_by_one_over_one_minus_p():
    """Eq. (2.4) with Z = 1 everywhere: out = out_without_dropout / (1 - p); P is unchanged."""
    rng = RNG(9)
    q, k, v = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    out0, c0 = attention_forward(q, k, v)
    out, c = attention_forward(q, k, v, dropout_p=0.2, dropout_mask=np.ones((3, 5), bool))
    np.testing.assert_allclose(out, out0 / 0.8, rtol=1e-14)
    np.testing.assert_array_equal(c.P, c0.P)


def test_rng_dropout_is_reproducible_and_backward_reuses_its_mask():
    """Same seed -> same keep-mask; the backward of an rng draw equals that of the explicit
    keep-mask stored in the cache (Eq. (2.11)); about 1 - p of the weights are kept."""
    rng = RNG(10)
    q, k, v = rng.normal(size=(4, 30, 4)), rng.normal(size=(4, 40, 4)), rng.normal(size=(4, 40, 2))
    out1, c1 = attention_forward(q, k, v, dropout_p=0.3, rng=RNG(123))
    out2, _ = attention_forward(q, k, v, dropout_p=0.3, rng=RNG(123))
    np.testing.assert_array_equal(out1, out2)
    assert c1.keep.shape == (4, 30, 40) and abs(c1.keep.mean() - 0.7) < 0.03
    out3, c3 = attention_forward(q, k, v, dropout_p=0.3, dropout_mask=c1.keep)
    np.testing.assert_array_equal(out1, out3)
    dO = _d_out(out1)
    g1, g3 = attention_backward(dO, c1), attention_backward(dO, c3)
    for n in ("dq", "dk", "dv"):
        np.testing.assert_array_equal(getattr(g1, n), getattr(g3, n))


def test_scaled_dot_product_attention_returns_attention_forward_output():
    """The output-only function is attention_forward's output."""
    rng = RNG(11)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 2))
    np.testing.assert_array_equal(
        scaled_dot_product_attention(q, k, v, is_causal=True),
        attention_forward(q, k, v, is_causal=True)[0],
    )


# ---------------------------------------------------------------------------
# Bad input: a clear error naming the argument and the shapes
# ---------------------------------------------------------------------------

_q, _k, _v = np.ones((2, 3, 4)), np.ones((2, 5, 4)), np.ones((2, 5, 6))

BAD_INPUTS = {
    "E_mismatch": (dict(q=_q, k=np.ones((2, 5, 3)), v=_v), ValueError,
                   r"q and k .* E: q has shape \(2, 3, 4\) \(E=4\), k has shape \(2, 5, 3\)"),
    "S_mismatch": (dict(q=_q, k=_k, v=np.ones((2, 6, 6))), ValueError,
                   r"k and v .* S .* k has shape \(2, 5, 4\) \(S=5\), v has shape \(2, 6, 6\)"),
    "batch_not_broadcastable": (dict(q=_q, k=np.ones((3, 5, 4)), v=np.ones((3, 5, 6))), ValueError,
                                r"do not broadcast: q \(2,\) \(shape \(2, 3, 4\)\), k \(3,\)"),
    "heads_not_broadcastable_without_gqa": (
        dict(q=np.ones((1, 4, 3, 4)), k=np.ones((1, 2, 5, 4)), v=np.ones((1, 2, 5, 6))),
        ValueError, r"enable_gqa.*q \(1, 4\) \(shape \(1, 4, 3, 4\)\), k \(1, 2\)"),
    "mask_not_broadcastable": (dict(q=_q, k=_k, v=_v, attn_mask=np.ones((3, 3), bool)), ValueError,
                               r"attn_mask has shape \(3, 3\).*\(2, 3, 5\)"),
    "mask_larger_than_scores": (dict(q=_q, k=_k, v=_v, attn_mask=np.ones((4, 2, 3, 5))),
                                ValueError, r"attn_mask has shape \(4, 2, 3, 5\).*\(2, 3, 5\)"),
    "integer_mask": (dict(q=_q, k=_k, v=_v, attn_mask=np.ones((3, 5), int)), TypeError,
                     r"attn_mask must be bool .* got dtype int"),
    "plus_inf_in_float_mask": (dict(q=_q, k=_k, v=_v, attn_mask=np.full((3, 5), np.inf)),
                               ValueError, r"attn_mask .* \+inf"),
    "gqa_Hq_not_multiple": (dict(q=np.ones((1, 3, 3, 4)), k=np.ones((1, 2, 5, 4)),
                                 v=np.ones((1, 2, 5, 6)), enable_gqa=True), ValueError,
                            r"Hq=3 \(q shape \(1, 3, 3, 4\)\) .* Hkv=2 \(k shape \(1, 2, 5, 4\)\)"),
    "gqa_no_query_heads": (
        dict(q=np.ones((0, 3, 4)), k=np.ones((2, 5, 4)), v=np.ones((2, 5, 6)), enable_gqa=True),
        ValueError,
        r"Hq=0 \(q shape \(0, 3, 4\)\) must be a positive multiple of .* Hkv=2",
    ),
    "gqa_k_v_heads_differ": (dict(q=np.ones((4, 3, 4)), k=np.ones((2, 5, 4)),
                                  v=np.ones((1, 5, 6)), enable_gqa=True), ValueError,
                             r"k has shape \(2, 5, 4\) \(Hkv=2\), v has shape \(1, 5, 6\)"),
    "gqa_too_few_dims": (dict(q=np.ones((3, 4)), k=np.ones((5, 4)), v=np.ones((5, 6)),
                              enable_gqa=True), ValueError,
                         r"q must have at least 3 dim.* enable_gqa=True .* \(3, 4\)"),
    "dropout_p_negative": (dict(q=_q, k=_k, v=_v, dropout_p=-0.1), ValueError,
                           r"dropout_p must lie in \[0, 1\), got -0.1"),
    "dropout_p_one": (dict(q=_q, k=_k, v=_v, dropout_p=1.0), ValueError,
                      r"dropout_p must lie in \[0, 1\), got 1.0"),
    "dropout_p_not_a_number": (dict(q=_q, k=_k, v=_v, dropout_p="0.1"), TypeError,
                               r"dropout_p must be a real number, got str"),
    "dropout_mask_wrong_shape": (dict(q=_q, k=_k, v=_v, dropout_p=0.5,
                                      dropout_mask=np.ones((2, 5, 3), bool)), ValueError,
                                 r"dropout_mask has shape \(2, 5, 3\).*\(2, 3, 5\)"),
    "dropout_mask_not_bool": (dict(q=_q, k=_k, v=_v, dropout_p=0.5,
                                   dropout_mask=np.ones((2, 3, 5))), TypeError,
                              r"dropout_mask must be a bool keep-mask .* float64"),
    "dropout_mask_without_p": (dict(q=_q, k=_k, v=_v, dropout_mask=np.ones((3, 5), bool)),
                               ValueError, r"dropout_mask was given but dropout_p is 0"),
    "complex_q": (dict(q=_q.astype(complex), k=_k, v=_v), TypeError,
                  r"q must be a real floating or integer array, got complex dtype complex128"),
    "object_k": (dict(q=_q, k=_k.astype(object), v=_v), TypeError,
                 r"k must be a real floating or integer array, got non-numeric dtype object"),
    "string_v": (dict(q=_q, k=_k, v=np.full((2, 5, 6), "x")), TypeError,
                 r"v must be a real floating or integer array, got non-numeric dtype <U1"),
    "q_one_dim": (dict(q=np.ones(4), k=_k, v=_v), ValueError,
                  r"q must have at least 2 dimensions \(\.\.\., L, E\), got shape \(4,\)"),
    "k_two_dims_with_gqa": (dict(q=_q, k=_k[0], v=_v, enable_gqa=True), ValueError,
                            r"k must have at least 3 dimensions with enable_gqa=True "
                            r"\(\.\.\., Hkv, S, E\), got shape \(5, 4\)"),
    "v_zero_dim": (dict(q=_q, k=_k, v=np.float64(1.0)), ValueError,
                   r"v must have at least 2 dimensions \(\.\.\., S, Ev\), got shape \(\)"),
    "scale_not_a_number": (dict(q=_q, k=_k, v=_v, scale="1"), TypeError,
                           r"scale must be a real number or None, got str"),
    "scale_infinite": (dict(q=_q, k=_k, v=_v, scale=np.inf), ValueError, r"scale must be finite"),
    "causal_align_unknown": (dict(q=_q, k=_k, v=_v, is_causal=True, causal_align="top"),
                             ValueError, r"causal_align must be one of .* got 'top'"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_documented_error_naming_argument_and_shapes(name):
    """Each bad input raises ValueError/TypeError whose message names the argument and shapes."""
    kwargs, error, pattern = BAD_INPUTS[name]
    with pytest.raises(error, match=pattern):
        attention_forward(**kwargs)
    with pytest.raises(error, match=pattern):
        scaled_dot_product_attention(**kwargs)


def test_backward_rejects_d_out_of_the_wrong_shape():
    """attention_backward: d_out must have the output's shape; the message gives both."""
    out, cache = attention_forward(_q, _k, _v)
    with pytest.raises(ValueError, match=r"d_out has shape \(2, 3, 5\).*\(2, 3, 6\)"):
        attention_backward(np.ones((2, 3, 5)), cache)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_overflowing_scores_raise_instead_of_nan_or_a_silent_mask(sign):
    """Finite float32 inputs whose scores overflow to +inf (NaN) or -inf (which would pass for
    a masked key and give a silent 0) raise ValueError naming the overflow."""
    q = np.full((2, 4), 1e20, np.float32)
    with pytest.raises(ValueError, match=r"scores .* overflow float32"):
        attention_forward(q, sign * q, q, scale=1.0)


def test_heads_broadcast_without_gqa_like_batch_axes():
    """Without enable_gqa, Hkv = 1 broadcasts over Hq like any batch axis (torch semantics)."""
    rng = RNG(12)
    q, k, v = (
        rng.normal(size=(2, 4, 3, 5)),
        rng.normal(size=(2, 1, 6, 5)),
        rng.normal(size=(2, 1, 6, 2)),
    )
    out, cache = attention_forward(q, k, v)
    out_gqa, _ = attention_forward(q, k, v, enable_gqa=True)  # G = 4 groups of one kv head
    np.testing.assert_allclose(out, out_gqa, rtol=0, atol=1e-15)
    g = attention_backward(np.ones_like(out), cache)
    assert g.dk.shape == k.shape and g.dv.shape == v.shape


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_dtype_in_same_dtype_out(dtype):
    """float16/32/64 inputs give outputs and gradients of the same dtype."""
    rng = RNG(13)
    q, k, v = (rng.normal(size=s).astype(dtype) for s in ((2, 3, 4), (2, 5, 4), (2, 5, 2)))
    bias = rng.normal(size=(3, 5)).astype(dtype)
    out, cache = attention_forward(q, k, v, bias, is_causal=True)
    g = attention_backward(np.ones_like(out), cache)
    assert out.dtype == dtype
    assert g.dq.dtype == g.dk.dtype == g.dv.dtype == g.d_attn_mask.dtype == dtype
    assert cache.P.dtype == (np.float32 if dtype == np.float16 else dtype)  # float16 in float32


def test_integer_inputs_are_promoted_to_float64():
    """Integer q, k, v become float64, and give exactly the float64 result."""
    q, k, v = (
        np.arange(6).reshape(2, 3) % 3,
        np.arange(12).reshape(4, 3) % 4,
        np.eye(4, 2, dtype=int),
    )
    out = scaled_dot_product_attention(q, k, v)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(
        out, scaled_dot_product_attention(*(a.astype(float) for a in (q, k, v)))
    )


def test_mixed_float_dtypes_promote_like_numpy():
    """float32 q with float64 k, v: the result is float64 (numpy's result_type)."""
    rng = RNG(14)
    q32 = rng.normal(size=(3, 4)).astype(np.float32)
    out = scaled_dot_product_attention(q32, rng.normal(size=(5, 4)), rng.normal(size=(5, 2)))
    assert out.dtype == np.float64


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float16, 4e-3)])
def test_lower_precision_is_close_to_float64(dtype, tol):
    """float32 / float16 results are within their rounding of the float64 reference."""
    rng = RNG(15)
    q, k, v = (
        rng.normal(size=(2, 2, 8, 16)),
        rng.normal(size=(2, 2, 8, 16)),
        rng.normal(size=(2, 2, 8, 4)),
    )
    out64, c64 = attention_forward(q, k, v, is_causal=True)
    g64 = attention_backward(np.ones_like(out64), c64)
    lo = [a.astype(dtype) for a in (q, k, v)]
    out, c = attention_forward(*lo, is_causal=True)
    g = attention_backward(np.ones_like(out), c)
    # the inputs themselves are rounded: compare with float64 on the rounded inputs
    ref, cref = attention_forward(*(a.astype(np.float64) for a in lo), is_causal=True)
    gref = attention_backward(np.ones_like(ref), cref)
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol)
    for n in ("dq", "dk", "dv"):
        np.testing.assert_allclose(getattr(g, n), getattr(gref, n), rtol=0, atol=10 * tol)
    assert np.abs(out - out64).max() < 50 * tol and np.abs(g.dq - g64.dq).max() < 500 * tol


@given(dims(1, 4), dims(1, 5), seeds)
def test_bias_constant_along_keys_gets_zero_gradient(L, S, seed):
    """Eqs. (2.13), (2.15): a bias of shape (L, 1) shifts whole rows, which softmax ignores, so its
    gradient (a row sum of dS) is 0 and the output does not depend on it."""
    rng = RNG(seed)
    q, k, v = rng.normal(size=(2, L, 3)), rng.normal(size=(2, S, 3)), rng.normal(size=(2, S, 2))
    bias = rng.normal(scale=5.0, size=(L, 1))
    out, cache = attention_forward(q, k, v, bias)
    np.testing.assert_allclose(out, scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-13)
    d_bias = attention_backward(_d_out(out, seed), cache).d_attn_mask
    assert d_bias.shape == (L, 1)
    np.testing.assert_allclose(d_bias, 0.0, atol=1e-13 * S)
