"""Issue 14's defects in the core, the tiled functions, softmax and masks: each test failed on
the code before the fix. Never a NaN or inf from finite inputs, never a silently wrong gradient,
every wrong argument a TypeError/ValueError naming it, no process-wide BLAS side effect."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from numpy_attention import (
    attention_backward,
    attention_forward,
    causal_mask,
    flash_attention_backward,
    flash_attention_forward,
    log_softmax,
    padding_mask,
    sliding_window_mask,
)

RNG = np.random.default_rng
FORWARDS = [
    pytest.param(attention_forward, attention_backward, id="core"),
    pytest.param(flash_attention_forward, flash_attention_backward, id="tiled"),
]


@pytest.mark.parametrize(("forward", "backward"), FORWARDS)
def test_editing_the_returned_output_in_place_leaves_the_backward_unchanged(forward, backward):
    """A residual add into the returned out must not reach the cache (it did: dq off by 2.8)."""
    rng = RNG(0)
    q, k, v = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    d_out = rng.normal(size=(3, 2))
    out, cache = forward(q, k, v)
    before = backward(d_out, cache)
    out += 100.0  # the caller's residual connection, in place
    after = backward(d_out, cache)
    for name in ("dq", "dk", "dv"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name))


@pytest.mark.parametrize(("forward", "backward"), FORWARDS)
@pytest.mark.parametrize(("big", "dtype"), [(1e308, np.float64), (3.4e38, np.float32)])
def test_a_dot_product_that_overflows_to_nan_raises(forward, backward, big, dtype):
    """q = [[big, -big]], k = [[2, 2]]: inf - inf = NaN inside the product; refused, not passed."""
    q = np.array([[big, -big]], dtype=dtype)
    k = np.array([[2.0, 2.0]], dtype=dtype)
    with pytest.raises(ValueError, match="overflow"):
        forward(q, k, np.ones((1, 1), dtype=dtype), scale=1.0)


@pytest.mark.parametrize(("forward", "backward"), FORWARDS)
def test_a_scale_beyond_float32_range_is_refused_for_float32_inputs(forward, backward):
    """q = 0 and scale = 1e39 (inf in float32): 0 * inf gave NaN scores."""
    q = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="scale 1e\\+39 is beyond the range of float32"):
        forward(q, q, q, scale=1e39)


def test_tiled_forward_refuses_a_huge_finite_bias_as_the_core_does():
    """A score of 1e308 plus a finite bias of 1e308 overflows to +inf: the core raised, the
    tiled forward gave NaN."""
    q = np.array([[1e154, 0.0]])
    bias = np.full((1, 1), 1e308)
    with pytest.raises(ValueError, match="overflow"):
        attention_forward(q, q, np.ones((1, 1)), attn_mask=bias, scale=1.0)
    with pytest.raises(ValueError, match="overflow"):
        flash_attention_forward(q, q, np.ones((1, 1)), attn_mask=bias, scale=1.0)


def test_tiled_running_sum_does_not_overflow_for_huge_values():
    """|v| near finfo.max / S: the unnormalised running sum overflowed; now it equals the core."""
    S = 64
    v = np.full((S, 2), np.finfo(np.float64).max / 8)
    q, k = np.zeros((3, 4)), np.zeros((S, 4))
    ref, _ = attention_forward(q, k, v)
    out, _ = flash_attention_forward(q, k, v, block_k=16)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-14)


@pytest.mark.parametrize("logit", [1e18, 1e6])
def test_tiled_backward_is_exact_when_logits_are_huge(logit):
    """lse = m + log(l) rounds away log(l) at scores of 1e18: the recomputed P summed to l, not 1,
    and the gradients were off by up to a factor S. Now P = exp(S - m) / l, as the core."""
    rng = RNG(1)
    S = 8
    q = np.array([[1.0, 0.0]])
    k = np.column_stack([np.full(S, logit), rng.normal(size=S) * 0])  # S equal scores of `logit`
    v, d_out = rng.normal(size=(S, 3)), rng.normal(size=(1, 3))
    ref = attention_backward(d_out, attention_forward(q, k, v, scale=1.0)[1])
    got = flash_attention_backward(d_out, flash_attention_forward(q, k, v, scale=1.0)[1])
    np.testing.assert_allclose(got.dv, ref.dv, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.dv.sum(axis=0), d_out[0], rtol=1e-12)  # sum_j P_j = 1


@pytest.mark.parametrize(("forward", "backward"), FORWARDS)
def test_huge_identical_values_give_zero_gradient_not_nan(forward, backward):
    """v = 1e308 in every row: out = v exactly, and dq, dk are exactly 0 in math; dP - D
    overflowed to inf - inf = NaN. Now finite, and tiny against |dO| |v|."""
    rng = RNG(2)
    q, k = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    v = np.full((5, 2), 1e308)
    out, cache = forward(q, k, v)
    g = backward(np.ones_like(out), cache)
    for name in ("dq", "dk", "dv"):
        assert np.isfinite(getattr(g, name)).all(), name
    assert np.abs(g.dq).max() < 1e308 * 1e-12


@pytest.mark.parametrize(("forward", "backward"), FORWARDS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_unshifted_exps_under_the_bound_do_not_overflow_with_large_values(forward, backward, sign):
    """Under the Cauchy-Schwarz bound the softmax is not shifted: exp(S) reaches 1e18 (sign +)
    or 1/l reaches 1e17 (sign -) in float32, and E V or dO / l overflowed for |v| = 1e30 and
    |dO| = 1e15 (tiled out was inf). Now v is scaled by 2^e for them too: finite and exact."""
    q = np.full((1, 4, 1), 6.5, np.float32)  # S = +-42.25: inside the float32 bound of 44
    k = sign * q
    v = np.full((1, 4, 2), 1e30, np.float32)
    out, cache = forward(q, k, v, scale=1.0)
    np.testing.assert_array_equal(out, v[:, :, :])  # equal keys: every P_ij = 1/4, out = v
    g = backward(np.full_like(out, 1e15), cache)
    for name in ("dq", "dk", "dv"):
        assert np.isfinite(getattr(g, name)).all(), name
    np.testing.assert_allclose(g.dv, np.full_like(v, 1e15), rtol=1e-6)  # sum_i P_ij dO_i


@pytest.mark.parametrize(("forward", "backward"), FORWARDS)
def test_dO_over_l_under_the_bound_does_not_overflow_with_a_large_dO(forward, backward):
    """Unshifted, 1/l reaches 5e17 in float32 (every score -42.25), so the tiled backward's
    dO / l overflowed for |dO| = 1e25 (dv inf, dq NaN); it now divides dO by 2^f first. The
    core, which multiplies by P (<= 1), is held to the same."""
    q = np.full((1, 4, 1), 6.5, np.float32)
    k, v = -q, np.ones((1, 4, 2), np.float32)
    out, cache = forward(q, k, v, scale=1.0)
    assert cache.inputs.exp_safe  # the unshifted path is the one under test
    g = backward(np.full_like(out, 1e25), cache)
    for name in ("dq", "dk", "dv"):
        assert np.isfinite(getattr(g, name)).all(), name
    np.testing.assert_allclose(g.dv, np.full_like(v, 1e25), rtol=1e-6)  # sum_i P_ij dO_i
    np.testing.assert_allclose(g.dq, 0, atol=1e19)  # equal keys and values: dS = 0, to rounding


def test_log_softmax_keeps_the_digits_of_the_shifted_scores():
    """(x - m) - log(sum), not x - (m + log(sum)): [1e8, 1e8] in float32 gave [0, 0]."""
    y = log_softmax(np.array([1e8, 1e8], dtype=np.float32))
    np.testing.assert_allclose(y, [-np.log(2.0)] * 2, rtol=1e-6)


@pytest.mark.parametrize(("forward", "backward"), FORWARDS)
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(is_causal="False"), "is_causal"),
        (dict(is_causal=np.array([True, False])), "is_causal"),
        (dict(enable_gqa="yes"), "enable_gqa"),
    ],
)
def test_flags_must_be_bools_not_truthy_values(forward, backward, kwargs, name):
    """is_causal="False" applied the causal mask in the core (truthiness)."""
    q = np.ones((1, 2, 3))
    with pytest.raises(TypeError, match=name):
        forward(q, q, q, **kwargs)


def test_an_integer_rng_is_a_clear_type_error():
    q = np.ones((2, 3))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        attention_forward(q, q, q, dropout_p=0.5, rng=42)


@pytest.mark.parametrize(
    ("forward", "backward", "made_by"),
    [
        (attention_forward, flash_attention_backward, "flash_attention_forward"),
        (flash_attention_forward, attention_backward, "attention_forward"),
        (None, attention_backward, "attention_forward"),
        (None, flash_attention_backward, "flash_attention_forward"),
    ],
)
def test_a_wrong_cache_is_a_type_error_naming_the_forward(forward, backward, made_by):
    q = np.ones((2, 3))
    cache = None if forward is None else forward(q, q, q)[1]
    with pytest.raises(TypeError, match=f"cache must be the .* returned by {made_by}"):
        backward(np.ones((2, 3)), cache)


@pytest.mark.parametrize(
    "build",
    [
        lambda: causal_mask(2**62, 2**62),
        lambda: causal_mask(1, 2**63 - 1),
        lambda: sliding_window_mask(2**40, 2**40, 3),
        lambda: padding_mask([1, 2], 2**62),
    ],
)
def test_mask_builders_refuse_sizes_near_2_to_the_63(build):
    """numpy's arange overflowed (wrong shapes) or raised OverflowError."""
    with pytest.raises(ValueError, match="too large"):
        build()


def test_padding_mask_of_an_empty_list_is_empty_not_a_dtype_complaint():
    """padding_mask([], 3) said "got dtype float64" for an empty list."""
    assert padding_mask([], 3).shape == (0, 1, 1, 3)


def test_concurrent_threaded_tiled_calls_restore_the_blas_threads():
    """Two overlapping workers=2 calls: the first to end restored the limit the second saw (1),
    then the second restored 1, leaving the process's BLAS on one thread for good."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from numpy_attention import flash

    def blas_threads() -> list[int]:
        return [
            p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"
        ]

    before = blas_threads()
    if not before or max(before) < 2:
        pytest.skip("BLAS runs one thread here already")
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    qa, qb = RNG(3).normal(size=(2, 8, 4)), RNG(4).normal(size=(2, 8, 4))
    original = flash._forward_rows

    def gated(x, *args, **kwargs):  # A waits inside its BLAS limit until B is inside its own
        if x.q is qa:
            a_inside.set()
            b_inside.wait(10)
        elif x.q is qb:
            b_inside.set()
            a_done.wait(10)
        return original(x, *args, **kwargs)

    def call(q: np.ndarray) -> None:
        flash_attention_forward(q, q, q, block_q=4, workers=2)

    flash._forward_rows = gated
    try:
        ta = threading.Thread(target=call, args=(qa,))
        ta.start()
        a_inside.wait(10)
        tb = threading.Thread(target=call, args=(qb,))
        tb.start()
        b_inside.wait(10)
        ta.join(20)
        a_done.set()
        tb.join(20)
    finally:
        flash._forward_rows = original
    assert blas_threads() == before


def test_a_row_with_one_key_gives_its_value_exactly_shifted_or_not():
    """A query that sees one key has P = 1 there and out = v_j, exactly, whether the softmax
    shifts by the max or not (under the bound E = e^s is not 1: E / l is exactly 1, but a
    deferred (E v) / l or E (1 / l) rounds). Its dq, scale (dP - D) k with D = dP, is an exact
    0 only where numpy's row sum and BLAS's product add the E terms in the same order: here
    3e-16 off in float64, so it is held to a tolerance."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, 3, 6, 5)) for _ in range(3))
    for scale in (None, 30.0):  # the bound holds (no shift) / fails (shift by the max)
        out, cache = attention_forward(q, k, v, is_causal=True, scale=scale)
        assert cache.inputs.exp_safe == (scale is None)
        np.testing.assert_array_equal(out[..., 0, :], v[..., 0, :])  # row 0 sees key 0 only
        np.testing.assert_array_equal(cache.P[..., 0, :], np.broadcast_to(np.eye(6)[0], (2, 3, 6)))
        g = attention_backward(rng.standard_normal(out.shape), cache)
        np.testing.assert_allclose(g.dq[..., 0, :], 0.0, atol=1e-13)
        out, cache = attention_forward(q, k[..., :1, :], v[..., :1, :], scale=scale)  # S = 1
        np.testing.assert_array_equal(out, np.broadcast_to(v[..., :1, :], out.shape))
