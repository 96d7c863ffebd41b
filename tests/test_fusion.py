"""Weighted fusion of attention branches (numpy_attention/fusion.py, docs/fusion.md).

Oracles: the seed's fusion formula written as loops over branches and entries, each branch
computed by the per-head loop oracle of test_layers.py; float64 finite differences; the
concat + linear identity; the softmax backward written out.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_layers import NAMES, per_head_loop_oracle, random_params

from numpy_attention.fusion import (
    ConcatFusionParams,
    FusionParams,
    concat_fusion_backward,
    concat_fusion_forward,
    fusion_backward,
    fusion_forward,
    init_concat_fusion,
    init_fusion,
    weighted_fusion,
    weighted_fusion_backward,
)
from numpy_attention.layers import (
    CrossAttentionParams,
    self_attention_forward,
)
from numpy_attention.testing import gradcheck


def random_branches(rng, N, Dm=3, e_out=3, heads=(1, 2, 2), kv_heads=(None, None, 1)):
    """N self-attention branches with random weights and biases; branch 2 uses GQA."""
    return tuple(
        random_params(rng, Dm, Dm, heads[i % 3], E=2, Ev=2, Hkv=kv_heads[i % 3], e_out=e_out)
        for i in range(N)
    )


def flat_inputs(branches):
    """Every branch parameter as a separate gradcheck input, named ``b{i}_{field}``."""
    return {
        f"b{i}_{n}": getattr(bp, n)
        for i, bp in enumerate(branches)
        for n in NAMES
        if getattr(bp, n) is not None
    }


def unflatten(branches, flat):
    return tuple(
        replace(bp, **{n: flat[f"b{i}_{n}"] for n in NAMES if f"b{i}_{n}" in flat})
        for i, bp in enumerate(branches)
    )


def flat_grads(d_branches):
    return {
        f"b{i}_{n}": getattr(g, n)
        for i, g in enumerate(d_branches)
        for n in NAMES
        if getattr(g, n) is not None
    }


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"key_lengths": np.array([4, 2])}, {"is_causal": True}],
    ids=["plain", "key_lengths", "causal"],
)
def test_learned_fusion_gradients_match_finite_differences(kwargs):
    """d_x, d_beta and every branch's weight and bias gradients (one branch with GQA) equal float64
    finite differences of sum(Y * G), Y = sum_r softmax(beta)_r A_r(X)."""
    rng = np.random.default_rng(20)
    branches = random_branches(rng, 3)
    beta = rng.normal(size=3)

    def fn(x, beta, **flat):
        return fusion_forward(FusionParams(unflatten(branches, flat), beta=beta), x, **kwargs)

    def bw(d, cache):
        d_x, g = fusion_backward(d, cache)
        assert g.beta is not None
        return {"x": d_x, "beta": g.beta, **flat_grads(g.branches)}

    inputs = {"x": rng.normal(size=(2, 4, 3)), "beta": beta, **flat_inputs(branches)}
    report = gradcheck(fn, inputs, bw, wrt=tuple(inputs))
    assert len(report.checked) == len(inputs)


def test_fixed_alpha_fusion_gradients_match_finite_differences():
    """With alpha fixed by the caller (convex=False so it may be perturbed), d_alpha of
    fusion_backward (in d_params.alpha) and d_x equal finite differences; d_params.beta is None."""
    rng = np.random.default_rng(21)
    branches = random_branches(rng, 2)

    def fn(x, alpha, **flat):
        return fusion_forward(FusionParams(unflatten(branches, flat)), x, alpha=alpha, convex=False)

    def bw(d, cache):
        d_x, g = fusion_backward(d, cache)
        assert g.beta is None
        return {"x": d_x, "alpha": g.alpha, **flat_grads(g.branches)}

    inputs = {
        "x": rng.normal(size=(2, 3, 3)),
        "alpha": np.array([0.3, 0.7]),
        **flat_inputs(branches),
    }
    gradcheck(fn, inputs, bw, wrt=tuple(inputs))


def test_concat_fusion_gradients_match_finite_differences():
    """The seed's concat + linear form: d_x, d_w, d_b and every branch's gradients equal finite
    differences."""
    rng = np.random.default_rng(22)
    branches = random_branches(rng, 3, e_out=2)
    w, b = rng.normal(size=(6, 4)), rng.normal(size=4)

    def fn(x, w, b, **flat):
        p = ConcatFusionParams(unflatten(branches, flat), w=w, b=b)
        return concat_fusion_forward(p, x, key_lengths=np.array([3, 1]))

    def bw(d, cache):
        d_x, g = concat_fusion_backward(d, cache)
        return {"x": d_x, "w": g.w, "b": g.b, **flat_grads(g.branches)}

    inputs = {"x": rng.normal(size=(2, 3, 3)), "w": w, "b": b, **flat_inputs(branches)}
    gradcheck(fn, inputs, bw, wrt=tuple(inputs))


@pytest.mark.parametrize("as_array", [False, True])
def test_weighted_fusion_backward_matches_finite_differences(as_array):
    """weighted_fusion_backward gives d_outputs = alpha_r dY and d_alpha_r = <dY, A_r>, equal to
    finite differences, for outputs given as a list or as one (N, ...) array."""
    rng = np.random.default_rng(23)
    A = rng.normal(size=(3, 2, 4))

    def fn(a0, a1, a2, alpha):
        outs = np.stack([a0, a1, a2]) if as_array else [a0, a1, a2]
        return weighted_fusion(outs, alpha, convex=False), (outs, alpha)

    def bw(d, cache):
        d_out, d_alpha = weighted_fusion_backward(d, *cache)
        assert isinstance(d_out, np.ndarray) == as_array
        return {"a0": d_out[0], "a1": d_out[1], "a2": d_out[2], "alpha": d_alpha}

    gradcheck(fn, {"a0": A[0], "a1": A[1], "a2": A[2], "alpha": rng.normal(size=3)}, bw)


def test_d_beta_is_the_softmax_backward_of_d_alpha():
    """d_beta = alpha * (d_alpha - sum_j alpha_j d_alpha_j) (Eq. (1.4) reused), written out with a
    loop over the softmax Jacobian alpha_r (delta_rr' - alpha_r'); it sums to 0."""
    rng = np.random.default_rng(24)
    p = FusionParams(random_branches(rng, 3), beta=rng.normal(size=3))
    y, cache = fusion_forward(p, rng.normal(size=(1, 3, 3)))
    _, g = fusion_backward(rng.normal(size=y.shape), cache)
    a = cache.alpha
    jac = [[a[i] * ((i == j) - a[j]) for j in range(3)] for i in range(3)]
    expected = [math.fsum(jac[i][j] * g.alpha[i] for i in range(3)) for j in range(3)]
    np.testing.assert_allclose(g.beta, expected, rtol=0, atol=1e-14)
    assert abs(g.beta.sum()) < 1e-14


# ---------------------------------------------------------------------------
# Oracles and properties
# ---------------------------------------------------------------------------


def test_fusion_equals_the_seed_formula_as_loops_over_branches():
    """Y[b, t, u] = sum_r alpha_r A_r(X)[b, t, u] summed entry by entry with math.fsum, each A_r
    from the per-head loop oracle (independent projections per branch)."""
    rng = np.random.default_rng(25)
    branches = random_branches(rng, 3)
    beta = rng.normal(size=3)
    x = rng.normal(size=(2, 3, 3))
    lengths = np.array([3, 2])
    y, cache = fusion_forward(FusionParams(branches, beta=beta), x, key_lengths=lengths)
    e = [math.exp(v) for v in beta]
    alpha = [v / math.fsum(e) for v in e]
    outs = [
        per_head_loop_oracle(bp, x, x, bp.num_kv_heads or bp.num_heads, key_lengths=lengths)[0]
        for bp in branches
    ]
    expected = np.zeros_like(y)
    for idx in np.ndindex(*y.shape):
        expected[idx] = math.fsum(alpha[i] * outs[i][idx] for i in range(3))
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(cache.alpha, alpha, rtol=0, atol=1e-15)
    for w, bp in zip(cache.branch_weights, branches, strict=True):
        assert w.shape == (2, bp.num_heads, 3, 3)


@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.1, 20.0))
def test_learned_fusion_lies_in_the_convex_hull_of_the_branch_outputs(seed, scale):
    """With alpha = softmax(beta) every entry of Y lies between the smallest and largest of the
    branches' entries at that position, even for large logits beta."""
    rng = np.random.default_rng(seed)
    p = FusionParams(random_branches(rng, 3), beta=rng.normal(size=3) * scale)
    y, cache = fusion_forward(p, rng.normal(size=(2, 3, 3)))
    assert np.all(cache.alpha >= 0) and abs(cache.alpha.sum() - 1) < 1e-15
    lo, hi = cache.outputs.min(axis=0), cache.outputs.max(axis=0)
    tol = 1e-14 * (1 + np.abs(cache.outputs).max())
    assert np.all(lo - tol <= y) and np.all(y <= hi + tol)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_one_hot_alpha_selects_one_branch_exactly(k):
    """alpha = e_k gives exactly branch k's output (bit for bit) and zero gradient to every other
    branch's parameters."""
    rng = np.random.default_rng(26)
    branches = random_branches(rng, 3)
    x = rng.normal(size=(2, 4, 3))
    y, cache = fusion_forward(FusionParams(branches), x, alpha=np.eye(3)[k])
    ref, _ = self_attention_forward(branches[k], x)
    np.testing.assert_array_equal(y, ref)
    _, g = fusion_backward(rng.normal(size=y.shape), cache)
    for i, gi in enumerate(g.branches):
        assert (np.abs(gi.w_q).sum() > 0) == (i == k)


def test_concat_with_scaled_identity_blocks_equals_the_weighted_sum():
    """Concat + linear with W = [alpha_1 I; ...; alpha_N I] and no bias (Eq. (4.9)) equals the
    weighted sum Y = sum_r alpha_r A_r, forward and backward (d_x and every branch gradient)."""
    rng = np.random.default_rng(27)
    branches = random_branches(rng, 3, e_out=3)
    alpha = np.array([0.2, 0.5, 0.3])
    x = rng.normal(size=(2, 4, 3))
    w = np.concatenate([a * np.eye(3) for a in alpha])
    yc, cc = concat_fusion_forward(ConcatFusionParams(branches, w=w), x, is_causal=True)
    yw, cw = fusion_forward(FusionParams(branches), x, alpha=alpha, is_causal=True)
    np.testing.assert_allclose(yc, yw, rtol=0, atol=1e-14)
    G = rng.normal(size=yc.shape)
    d_xc, gc = concat_fusion_backward(G, cc)
    d_xw, gw = fusion_backward(G, cw)
    np.testing.assert_allclose(d_xc, d_xw, rtol=0, atol=1e-13)
    assert gc.b is None
    for a, b in zip(gc.branches, gw.branches, strict=True):
        for n in NAMES:
            np.testing.assert_allclose(getattr(a, n), getattr(b, n), rtol=0, atol=1e-13)
    # and the linear layer's gradient, block r, is A_r^T dY: its trace pairing is d_alpha_r
    blocks = np.split(gc.w, 3)
    np.testing.assert_allclose([np.trace(bl) for bl in blocks], gw.alpha, rtol=0, atol=1e-13)


def test_shared_parameters_make_the_seed_formula_a_single_attention():
    """The seed's formula with one shared attention: sum_r alpha_r A(X) = A(X) for any convex
    alpha (N identical terms, Eq. (4.6)), and the learned weights get no gradient (d_beta = 0)."""
    rng = np.random.default_rng(28)
    shared = random_params(rng, 3, 3, 2, e_out=3)
    x = rng.normal(size=(1, 4, 3))
    p = FusionParams((shared,) * 4, beta=rng.normal(size=4))
    y, cache = fusion_forward(p, x)
    ref, _ = self_attention_forward(shared, x)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-14)
    _, g = fusion_backward(rng.normal(size=y.shape), cache)
    np.testing.assert_allclose(g.beta, 0.0, rtol=0, atol=1e-14)


def test_init_fusion_gives_independent_branches_and_uniform_alpha():
    """init_fusion draws N different branches (else fusion is pointless) and beta = 0, i.e.
    alpha_r = 1/N; a fixed alpha is stored instead of beta when given."""
    p = init_fusion(np.random.default_rng(0), 4, 3, num_heads=2)
    assert not np.allclose(p.branches[0].w_q, p.branches[1].w_q)
    y, cache = fusion_forward(p, np.ones((1, 2, 4)))
    np.testing.assert_allclose(cache.alpha, 1 / 3, rtol=0, atol=1e-15)
    q = init_fusion(np.random.default_rng(0), 4, 2, alpha=[0.25, 0.75])
    assert q.beta is None and q.alpha.tolist() == [0.25, 0.75]
    _, cache = fusion_forward(q, np.ones((1, 2, 4)))
    assert cache.alpha.tolist() == [0.25, 0.75]
    c = init_concat_fusion(np.random.default_rng(0), 4, 3, num_heads=2, e_y=5)
    assert c.w.shape == (12, 5) and np.abs(c.w).max() <= 1 / math.sqrt(12)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _fusion_case():
    rng = np.random.default_rng(0)
    return FusionParams(random_branches(rng, 2)), rng.normal(size=(1, 3, 3))


@pytest.mark.parametrize(
    ("kwargs", "params_change", "exc", "match"),
    [
        ({"alpha": [0.5, 0.3, 0.2]}, {}, ValueError, r"alpha must have shape \(N,\) = \(2,\)"),
        ({"alpha": [0.5, 0.6]}, {}, ValueError, r"alpha must sum to 1.*convex=False"),
        ({"alpha": [1.5, -0.5]}, {}, ValueError, r"alpha must be non-negative"),
        ({"alpha": [np.nan, 1.0]}, {}, ValueError, r"alpha must be finite"),
        ({}, {}, ValueError, r"exactly one source.*got none"),
        (
            {"alpha": [0.5, 0.5]},
            {"beta": np.zeros(2)},
            ValueError,
            r"exactly one source.*'alpha', 'params.beta'",
        ),
        ({}, {"beta": np.zeros(3)}, ValueError, r"params\.beta must have shape \(N,\) = \(2,\)"),
        ({}, {"alpha": np.array([0.9, 0.2])}, ValueError, r"params\.alpha must sum to 1"),
        ({}, {"branches": ()}, ValueError, r"params\.branches must be a non-empty"),
    ],
)
def test_fusion_bad_input_raises_a_clear_error_naming_the_argument(
    kwargs, params_change, exc, match
):
    """alpha of the wrong length, not summing to 1, negative or NaN; no or two sources of weights;
    beta of the wrong length; no branches: each a clear error naming the argument."""
    p, x = _fusion_case()
    with pytest.raises(exc, match=match):
        fusion_forward(replace(p, **params_change), x, **kwargs)


def test_fusion_of_branches_with_different_output_widths_is_refused():
    """Branches whose outputs differ in shape cannot be summed (nor concatenated along rows)."""
    rng = np.random.default_rng(1)
    branches = (random_params(rng, 3, 3, 1, e_out=3), random_params(rng, 3, 3, 1, e_out=2))
    x = rng.normal(size=(1, 2, 3))
    with pytest.raises(ValueError, match=r"outputs must have one shape"):
        fusion_forward(FusionParams(branches), x, alpha=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"params\.w has shape \(4, 3\), expected \(N\*Do, Dy\)"):
        concat_fusion_forward(ConcatFusionParams(branches[:1] * 2, w=np.zeros((4, 3))), x)


def test_weighted_fusion_bad_input():
    """weighted_fusion refuses outputs of different shapes, an empty list and a wrong alpha;
    its backward refuses a d_y of the wrong shape."""
    with pytest.raises(ValueError, match=r"outputs must all have the same shape"):
        weighted_fusion([np.zeros(2), np.zeros(3)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"non-empty"):
        weighted_fusion([], [])
    with pytest.raises(ValueError, match=r"alpha must sum to 1"):
        weighted_fusion([np.zeros(2), np.zeros(2)], [0.5, 0.4])
    assert weighted_fusion([np.ones(2), np.ones(2)], [2.0, -1.0], convex=False).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"d_y has shape \(3,\), expected one output's shape"):
        weighted_fusion_backward(np.zeros(3), [np.zeros(2), np.zeros(2)], [0.5, 0.5])


def test_concat_of_one_head_branches_is_multi_head_attention():
    """The seed's concat + linear over N one-head branches without their own output projection
    (w_o = I) is multi-head attention with H = N: the heads' projections are the branches'
    side by side, and the linear layer is W_o."""
    rng = np.random.default_rng(29)
    Dm, E, N = 4, 2, 3
    heads = [random_params(rng, Dm, Dm, 1, E=E, Ev=E, e_out=E) for _ in range(N)]
    branches = tuple(replace(h, w_o=np.eye(E), b_o=None) for h in heads)
    w_o, b_o = rng.normal(size=(N * E, 5)), rng.normal(size=5)
    mha = CrossAttentionParams(
        **{n: np.concatenate([getattr(h, n) for h in heads], axis=-1) for n in NAMES[:3]},
        **{n: np.concatenate([getattr(h, n) for h in heads]) for n in ("b_q", "b_k", "b_v")},
        w_o=w_o,
        b_o=b_o,
        num_heads=N,
    )
    x = rng.normal(size=(2, 4, Dm))
    y, cache = concat_fusion_forward(ConcatFusionParams(branches, w=w_o, b=b_o), x, is_causal=True)
    ref, ref_cache = self_attention_forward(mha, x, is_causal=True)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        np.concatenate(cache.branch_weights, axis=1), ref_cache.weights, rtol=0, atol=1e-15
    )


# ---------------------------------------------------------------------------
# Hardening (issue 14): clear errors for wrong arguments, caches that own their arrays
# ---------------------------------------------------------------------------


def _both_caches():
    rng = np.random.default_rng(40)
    branches = random_branches(rng, 2)
    x = rng.normal(size=(1, 3, 3))
    y, f_cache = fusion_forward(FusionParams(branches, beta=np.zeros(2)), x)
    _, c_cache = concat_fusion_forward(ConcatFusionParams(branches, w=np.eye(6)[:, :3]), x)
    return y, f_cache, c_cache


@pytest.mark.parametrize(
    ("backward", "made_by", "foreign"),
    [
        (fusion_backward, "FusionCache returned by fusion_forward", None),
        (fusion_backward, "FusionCache returned by fusion_forward", "concat cache"),
        (concat_fusion_backward, "ConcatFusionCache returned by concat_fusion_forward", None),
        (concat_fusion_backward, "ConcatFusionCache returned by concat_fusion_forward", "fusion"),
    ],
)
def test_fusion_backwards_refuse_a_foreign_cache_with_a_type_error_naming_it(
    backward, made_by, foreign
):
    """None, or the other form's cache, passed to fusion_backward or concat_fusion_backward is a
    TypeError that names the cache and the forward that makes one (not an AttributeError)."""
    y, f_cache, c_cache = _both_caches()
    cache = {None: None, "concat cache": c_cache, "fusion": f_cache}[foreign]
    with pytest.raises(TypeError, match=rf"cache must be the {made_by}, got"):
        backward(np.ones_like(y), cache)


@pytest.mark.parametrize("init", [init_fusion, init_concat_fusion])
@pytest.mark.parametrize("rng", [None, 7], ids=["None", "int seed"])
def test_fusion_inits_refuse_an_rng_that_is_not_a_generator(init, rng):
    """init_fusion and init_concat_fusion need a numpy.random.Generator: a TypeError says so."""
    with pytest.raises(TypeError, match=r"rng must be the Generator .*numpy\.random\.default_rng"):
        init(rng, 4, 2)


@pytest.mark.parametrize(
    ("value", "exc"), [(2.5, TypeError), (True, TypeError), (0, ValueError), ("3", TypeError)]
)
def test_init_concat_fusion_output_width_must_be_a_positive_integer(value, exc):
    """e_y: a float, a bool or a string is a TypeError (not a ValueError), 0 a ValueError."""
    with pytest.raises(exc, match=r"e_y must be .*(integer|>= 1), got"):
        init_concat_fusion(np.random.default_rng(0), 4, 2, e_y=value)


def _fusion_grads(d_x, g):
    flat = {"x": d_x, **flat_grads(g.branches)}
    if isinstance(g, FusionParams):
        return {**flat, "alpha": g.alpha, "beta": g.beta}
    return {**flat, "w": g.w, "b": g.b}


def test_editing_the_output_inputs_and_params_in_place_leaves_the_fusion_backwards_unchanged():
    """Neither form returns an array its cache holds, and their caches hold their own copies of x,
    w, b and every branch's parameters: a residual x += y, y *= 2 and in-place optimizer steps
    after the forward change no gradient of fusion_backward or concat_fusion_backward."""
    rng = np.random.default_rng(41)
    branches = random_branches(rng, 3)
    x = rng.normal(size=(2, 4, 3))
    w, b, beta = rng.normal(size=(9, 3)), rng.normal(size=3), rng.normal(size=3)
    G = rng.normal(size=(2, 4, 3))
    forms = [
        (fusion_forward, fusion_backward, FusionParams(branches, beta=beta)),
        (concat_fusion_forward, concat_fusion_backward, ConcatFusionParams(branches, w=w, b=b)),
    ]
    for forward, backward, params in forms:
        ref = _fusion_grads(*backward(G, forward(params, x.copy())[1]))
        x_in = x.copy()
        y, cache = forward(params, x_in)
        x_in += y  # a residual connection, in place
        y *= 2.0
        edited = [w, b] + [getattr(bp, n) for bp in branches for n in NAMES]
        saved = [a.copy() for a in edited]
        for a in edited:
            a -= 0.1  # an optimizer step, in place
        got = _fusion_grads(*backward(G, cache))
        for a, s in zip(edited, saved, strict=True):
            a[...] = s
        for n, r in ref.items():
            if r is None:
                assert got[n] is None
            else:
                np.testing.assert_array_equal(got[n], r)
