"""softmax, log_softmax, logsumexp and their backward: Eqs. (1.1)-(1.5) of docs/softmax.md."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import log_softmax_oracle, logsumexp_oracle, softmax_oracle
from strategies import score_rows, seeds

from numpy_attention.softmax import (
    log_softmax,
    log_softmax_backward,
    logsumexp,
    softmax,
    softmax_backward,
)
from numpy_attention.testing import gradcheck


def _rows(fn, x):
    return np.array([fn(list(map(float, r))) for r in x])


@given(score_rows())
def test_softmax_logsumexp_log_softmax_match_loop_oracle(x):
    """Eqs. (1.1)-(1.3) agree with math.exp loops to 1e-12, including -inf entries and rows."""
    np.testing.assert_allclose(softmax(x), _rows(softmax_oracle, x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(logsumexp(x), _rows(logsumexp_oracle, x), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(log_softmax(x), _rows(log_softmax_oracle, x), rtol=1e-13, atol=1e-12)


@given(score_rows())
def test_softmax_rows_sum_to_one_or_are_all_zero(x):
    """Each row of softmax sums to 1, or is exactly 0 when the row is all -inf."""
    y = softmax(x)
    dead = np.all(x == -np.inf, axis=-1)
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(-1)[~dead], 1.0, rtol=0, atol=1e-14)
    assert np.all(y[dead] == 0)
    assert np.all(y[x == -np.inf] == 0)


@given(score_rows(), st.floats(min_value=-50, max_value=50))
def test_softmax_is_shift_invariant(x, c):
    """softmax(x + c) = softmax(x) and lse(x + c) = lse(x) + c for a constant c per row."""
    shift = c * np.arange(1, x.shape[0] + 1)[:, None]
    np.testing.assert_allclose(softmax(x + shift), softmax(x), rtol=0, atol=1e-12)
    live = ~np.all(x == -np.inf, axis=-1)
    np.testing.assert_allclose(
        logsumexp(x + shift)[live], logsumexp(x)[live] + shift[live, 0], rtol=1e-13, atol=1e-11
    )


def test_all_neg_inf_row_gives_zeros_not_nan_and_no_warning():
    """An all -inf row: softmax 0, lse -inf, log_softmax -inf, zero gradients; no FP warning."""
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 1.0]])
    with np.errstate(all="raise"):
        y, ly, lse = softmax(x), log_softmax(x), logsumexp(x)
        d_x = softmax_backward(np.ones_like(y), y)
        d_lx = log_softmax_backward(np.ones_like(ly), ly)
    assert np.all(y[0] == 0) and np.all(ly[0] == -np.inf) and lse[0] == -np.inf
    assert np.all(d_x[0] == 0) and np.all(d_lx[0] == 0)
    assert y[1, 1] == 0 and d_x[1, 1] == 0 and d_lx[1, 1] == 0
    assert not np.any(np.isnan(y)) and not np.any(np.isnan(d_lx))


def test_empty_axis_behaves_like_all_masked():
    """A length-0 axis: softmax is empty, logsumexp is -inf (the empty sum is 0)."""
    assert softmax(np.ones((2, 0))).shape == (2, 0)
    assert np.all(logsumexp(np.ones((2, 0))) == -np.inf)


def test_nan_propagates_to_its_own_row_only():
    """NaN in row 0 makes row 0 NaN (never a silent 0) and leaves row 1 exact."""
    x = np.array([[np.nan, 1.0], [0.0, 1.0]])
    for f in (softmax, log_softmax):
        y = f(x)
        assert np.all(np.isnan(y[0])) and not np.any(np.isnan(y[1]))
    assert np.isnan(logsumexp(x)[0]) and np.isfinite(logsumexp(x)[1])


def test_huge_scores_do_not_overflow():
    """Max-shifting (Eq. (1.1)): scores of 1e4 give exact finite results."""
    x = np.array([1e4, 1e4 - np.log(3.0)])
    np.testing.assert_allclose(softmax(x), [0.75, 0.25], rtol=1e-12)
    np.testing.assert_allclose(logsumexp(x), 1e4 + np.log(4.0 / 3.0), rtol=1e-15)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_axis_argument_normalises_that_axis(axis):
    """softmax(x, axis) equals softmax along the last axis after moving ``axis`` there."""
    x = np.random.default_rng(0).normal(size=(3, 4, 5))
    for f in (softmax, log_softmax):
        expect = np.moveaxis(f(np.moveaxis(x, axis, -1)), -1, axis)
        np.testing.assert_allclose(f(x, axis=axis), expect, rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        logsumexp(x, axis=axis, keepdims=True).squeeze(axis), logsumexp(np.moveaxis(x, axis, -1))
    )


@given(score_rows(), seeds)
def test_softmax_backward_equals_explicit_jacobian_product(x, seed):
    """Eq. (1.4) equals d_y @ J with J_ij = y_i (delta_ij - y_j), built entry by entry."""
    y = softmax(x)
    d_y = np.random.default_rng(seed).normal(size=x.shape)
    expect = np.array(
        [dr @ (np.diag(yr) - np.outer(yr, yr)) for dr, yr in zip(d_y, y, strict=True)]
    )
    np.testing.assert_allclose(softmax_backward(d_y, y), expect, rtol=0, atol=1e-12)


@given(score_rows(), seeds)
def test_log_softmax_backward_equals_explicit_jacobian_product(x, seed):
    """Eq. (1.5) equals d_y @ J with J_ij = delta_ij - p_j over the live (finite) entries."""
    y = log_softmax(x)
    d_y = np.random.default_rng(seed).normal(size=x.shape)
    expect = np.zeros_like(x)
    for r in range(x.shape[0]):
        live = np.isfinite(x[r])
        p = np.exp(y[r, live])
        expect[r, live] = d_y[r, live] @ (np.eye(live.sum()) - np.outer(np.ones_like(p), p))
    np.testing.assert_allclose(log_softmax_backward(d_y, y), expect, rtol=0, atol=1e-12)


@given(score_rows(), seeds)
def test_softmax_backward_rows_sum_to_zero(x, seed):
    """sum_j dx_j = 0 (softmax is shift-invariant, so the gradient is orthogonal to ones)."""
    y = softmax(x)
    d_y = np.random.default_rng(seed).normal(size=x.shape)
    np.testing.assert_allclose(softmax_backward(d_y, y).sum(-1), 0.0, atol=1e-14)
    np.testing.assert_allclose(log_softmax_backward(d_y, log_softmax(x)).sum(-1), 0.0, atol=1e-12)


@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax_and_log_softmax_backward_pass_finite_differences(axis, masked):
    """Eqs. (1.4), (1.5) agree with float64 central differences, -inf entries included."""
    x = np.random.default_rng(1).normal(size=(4, 5))
    if masked:
        x[1, [0, 3]] = -np.inf
        if axis == -1:
            x[2, :] = -np.inf  # a fully masked slice along the normalised axis
        else:
            x[:, 2] = -np.inf
    for f, b in ((softmax, softmax_backward), (log_softmax, log_softmax_backward)):

        def fwd(x, f=f):
            y = f(x, axis=axis)
            return np.where(np.isinf(y), 0.0, y), y  # a finite loss: -inf outputs are constants

        def bwd(d_y, y, b=b):
            return {"x": b(np.where(np.isinf(y), 0.0, d_y), y, axis=axis)}

        report = gradcheck(fwd, {"x": x}, bwd)
        assert report.passed and report.checked == {"x": x.size}


def test_backward_rejects_mismatched_shapes():
    """softmax_backward / log_softmax_backward: d_y must have the shape of y (named in message)."""
    y = softmax(np.zeros((2, 3)))
    for b in (softmax_backward, log_softmax_backward):
        with pytest.raises(ValueError, match=r"d_y has shape \(3, 2\).*\(2, 3\)"):
            b(np.zeros((3, 2)), y)


@pytest.mark.parametrize(
    "bad, kind",
    [(np.ones(2, dtype=complex), "complex"), (np.array(["a", "b"]), "non-numeric"),
     (np.array([1.0, None], dtype=object), "non-numeric")],
)  # fmt: skip
def test_non_real_inputs_raise_type_error(bad, kind):
    """Complex, string and object arrays raise TypeError naming the argument and the dtype."""
    for f in (softmax, log_softmax, logsumexp):
        with pytest.raises(TypeError, match=f"x must be a real .* got {kind} dtype"):
            f(bad)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_dtype_is_preserved(dtype):
    """float16/32/64 in -> the same dtype out, for every function and its backward."""
    x = np.array([[0.5, -1.0, 2.0]], dtype=dtype)
    for f in (softmax, log_softmax, logsumexp):
        assert f(x).dtype == dtype
    y = softmax(x)
    assert softmax_backward(np.ones_like(y), y).dtype == dtype
    tol = {np.float16: 5e-4, np.float32: 1e-7, np.float64: 1e-16}[dtype]  # half an ulp of 1
    np.testing.assert_allclose(y.astype(np.float64), softmax(x.astype(np.float64)), atol=tol)


def test_integer_input_is_promoted_to_float64():
    """Integer scores become float64."""
    y = softmax(np.array([1, 2, 3]))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, softmax(np.array([1.0, 2.0, 3.0])), rtol=0, atol=0)


def test_float16_is_computed_in_float32_and_rounded_once():
    """float16 softmax equals the exact softmax of the float16 input rounded once to float16
    (relative error <= 2**-11, the unit roundoff); computing in float16 would be ~3x worse."""
    x = np.random.default_rng(2).uniform(-3, 0, size=(8, 64)).astype(np.float16)
    exact = softmax(x.astype(np.float64))
    np.testing.assert_allclose(softmax(x).astype(np.float64), exact, rtol=2**-11 + 1e-6, atol=0)
