"""numpy_attention.testing.gradcheck: it passes correct backwards and catches wrong ones."""

import numpy as np
import pytest

from numpy_attention.attention import AttentionGrads, attention_backward, attention_forward
from numpy_attention.testing import gradcheck


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"q": rng.normal(size=(2, 3, 4)), "k": rng.normal(size=(2, 5, 4)),
            "v": rng.normal(size=(2, 5, 3))}  # fmt: skip


def _wrong_dk_entry(d_out, cache):
    """The right backward with one entry of dk off by 1e-3."""
    g = attention_backward(d_out, cache)
    dk = g.dk.copy()
    dk[1, 2, 3] += 1e-3
    return AttentionGrads(dq=g.dq, dk=dk, dv=g.dv, d_attn_mask=g.d_attn_mask)


def _softmax_backward_missing_D(d_out, cache):
    """A classic mistake: dS = P * dP, forgetting the - D term of Eq. (2.13)."""
    x, P = cache.inputs, cache.P
    dP = d_out @ np.swapaxes(x.v, -1, -2)
    dS = P * dP
    return {"q": x.scale * dS @ x.k, "k": x.scale * np.swapaxes(dS, -1, -2) @ x.q,
            "v": np.swapaxes(P, -1, -2) @ d_out}  # fmt: skip


def test_gradcheck_passes_the_hand_written_backward():
    """The correct backward passes, every entry of q, k, v is differenced."""
    report = gradcheck(attention_forward, _inputs(), attention_backward)
    assert report.passed and report.checked == {"q": 24, "k": 40, "v": 30}
    assert report.max_abs_error < 1e-8
    assert all(abs(n - a) < 1e-8 for n, a in report.directional)


def test_gradcheck_fails_on_one_wrong_entry_and_names_input_and_index():
    """A single wrong entry of dk is found: the report names input 'k' and index (1, 2, 3)."""
    report = gradcheck(attention_forward, _inputs(), _wrong_dk_entry, raise_on_failure=False)
    assert not report.passed
    assert report.worst_input == "k" and report.worst_index == (1, 2, 3)
    assert abs(report.worst_analytic - report.worst_numeric - 1e-3) < 1e-8
    assert "FAILED" in str(report) and "k[1, 2, 3]" in str(report)


def test_gradcheck_raises_assertion_error_with_the_report():
    """With raise_on_failure (the default) a failure raises AssertionError carrying the report."""
    with pytest.raises(AssertionError, match=r"gradcheck FAILED.*worst at k\[1, 2, 3\]"):
        gradcheck(attention_forward, _inputs(), _wrong_dk_entry)


def test_gradcheck_catches_softmax_backward_without_the_D_term():
    """dS = P * dP (no - D) is wrong for q and k (dv is still right): the report blames q or k."""
    report = gradcheck(attention_forward, _inputs(1), _softmax_backward_missing_D,
                       raise_on_failure=False)  # fmt: skip
    assert not report.passed and report.worst_input in ("q", "k")


def test_directional_check_alone_catches_an_error_in_unsampled_entries():
    """With max_entries=1 most entries are not differenced; the random-direction check fails."""
    report = gradcheck(attention_forward, _inputs(), _wrong_dk_entry, max_entries=1,
                       wrt=("k",), raise_on_failure=False, seed=3)  # fmt: skip
    assert report.checked == {"k": 1} and report.worst_index != (1, 2, 3)
    assert not report.passed


def test_gradcheck_rejects_bad_wrt():
    """wrt naming a missing/non-float input, or one without a gradient, is a ValueError."""
    with pytest.raises(ValueError, match="'w', which is not a floating array input"):
        gradcheck(attention_forward, _inputs(), attention_backward, wrt=("w",))
    inputs = dict(_inputs(), attn_mask=np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="'attn_mask', which is not a floating array input"):
        gradcheck(attention_forward, inputs, attention_backward, wrt=("attn_mask",))
    inputs = dict(_inputs(), attn_mask=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="backward returned no gradient for input 'attn_mask'"):
        gradcheck(attention_forward, inputs, lambda d, c: {"q": attention_backward(d, c).dq},
                  wrt=("attn_mask",))  # fmt: skip


def test_gradcheck_rejects_a_gradient_of_the_wrong_shape():
    """A backward returning dq of the wrong shape is reported with both shapes."""

    def bad(d, c):
        return {"q": attention_backward(d, c).dq[0]}

    with pytest.raises(ValueError, match=r"gradient of q has shape \(3, 4\), expected \(2, 3, 4\)"):
        gradcheck(attention_forward, _inputs(), bad)


def test_entrywise_check_catches_an_error_too_small_for_the_directions():
    """An error of 5e-6 in one entry of dk passes the (10x looser) directional check but fails
    the entry-by-entry one, which names input 'k' and the index."""

    def slightly_wrong(d_out, cache):
        g = attention_backward(d_out, cache)
        dk = g.dk.copy()
        dk[0, 4, 1] += 5e-6
        return AttentionGrads(dq=g.dq, dk=dk, dv=g.dv, d_attn_mask=None)

    report = gradcheck(attention_forward, _inputs(), slightly_wrong, raise_on_failure=False)
    assert all(abs(n - a) <= 1e-6 + 1e-5 * abs(n) for n, a in report.directional)
    assert not report.passed and report.worst_input == "k" and report.worst_index == (0, 4, 1)


# ---------------------------------------------------------------------------
# Hardening (issue 14): gradcheck never passes vacuously
# ---------------------------------------------------------------------------


def _zero_backward(d_out, cache):
    g = attention_backward(d_out, cache)
    return AttentionGrads(dq=0 * g.dq, dk=0 * g.dk, dv=0 * g.dv, d_attn_mask=None)


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), 0.0, -1e-6])
def test_gradcheck_refuses_an_eps_that_is_not_finite_and_positive(eps):
    """eps = nan passed an all-zero backward, eps = 0 raised ZeroDivisionError: both (and inf,
    negative) are a ValueError naming eps, even with a backward that is wrong everywhere."""
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        gradcheck(attention_forward, _inputs(), _zero_backward, eps=eps, raise_on_failure=False)


@pytest.mark.parametrize("name, value", [("atol", float("nan")), ("rtol", float("inf")),
                                         ("atol", -1.0), ("max_entries", 0),
                                         ("directions", -1)])  # fmt: skip
def test_gradcheck_refuses_tolerances_that_would_pass_anything(name, value):
    """A NaN/inf/negative tolerance or a count below its minimum is a ValueError naming it."""
    with pytest.raises(ValueError, match=name):
        gradcheck(attention_forward, _inputs(), _zero_backward, **{name: value})


def test_gradcheck_refuses_a_truthy_raise_on_failure():
    """raise_on_failure="no" is a TypeError, not a silent True."""
    with pytest.raises(TypeError, match="raise_on_failure must be a bool"):
        gradcheck(attention_forward, _inputs(), attention_backward, raise_on_failure="no")


def test_gradcheck_fails_a_backward_that_returns_nan():
    """A NaN gradient is a failure: NaN compares False with every tolerance, which used to count
    as agreement (the all-NaN backward passed), in the entries and in the directions."""

    def nan_backward(d_out, cache):
        g = attention_backward(d_out, cache)
        return AttentionGrads(dq=g.dq * np.nan, dk=g.dk, dv=g.dv, d_attn_mask=None)

    report = gradcheck(attention_forward, _inputs(), nan_backward, raise_on_failure=False)
    assert not report.passed and report.worst_input == "q"
    assert report.max_abs_error == np.inf
    with pytest.raises(AssertionError, match="gradcheck FAILED"):
        gradcheck(attention_forward, _inputs(), nan_backward, directions=0)


def test_gradcheck_fails_when_the_forward_returns_nan():
    """A forward that gives NaN under perturbation makes every difference NaN: a failure."""

    def nan_forward(q, k, v):
        out, cache = attention_forward(q, k, v)
        return out * np.nan if not np.array_equal(q, _inputs()["q"]) else out, cache

    report = gradcheck(nan_forward, _inputs(), attention_backward, raise_on_failure=False)
    assert not report.passed


def test_gradcheck_refuses_d_out_of_the_wrong_shape():
    """d_out must have the output's shape (it was broadcast silently)."""
    with pytest.raises(ValueError, match=r"d_out has shape \(3,\), expected the output's shape"):
        gradcheck(attention_forward, _inputs(), attention_backward, d_out=np.ones(3))


def test_gradcheck_with_nothing_to_check_is_an_error():
    """No floating input with a gradient: a ValueError, not a pass that checked nothing."""
    with pytest.raises(ValueError, match="nothing to check"):
        gradcheck(attention_forward, _inputs(), lambda d, c: {})


def test_gradcheck_fails_when_the_loss_overflows():
    """A forward that overflows to +inf under perturbation gives numeric = inf, whose relative
    tolerance rtol * inf made inf - inf = NaN count as agreement: now a failure."""
    base_q = _inputs()["q"]

    def overflowing(q, k, v):
        out, cache = attention_forward(q, k, v)
        return out + (np.inf if q.flat[0] > base_q.flat[0] else 0.0), cache

    d_out = np.ones((2, 3, 3))
    report = gradcheck(overflowing, _inputs(), attention_backward, d_out=d_out, directions=0,
                       raise_on_failure=False)  # fmt: skip
    assert not report.passed and report.worst_input == "q" and report.worst_index == (0, 0, 0)
    report = gradcheck(overflowing, _inputs(), attention_backward, d_out=d_out, max_entries=1,
                       wrt=("k",), raise_on_failure=False)  # fmt: skip
    assert report.passed  # k alone never triggers the overflow: the check is not just failing
