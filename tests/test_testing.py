"""numpy_attention.testing: the tolerance policy, assert_attention_close and its diagnoses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpy_attention.attention import attention_backward, attention_forward
from numpy_attention.testing import (
    DTYPES,
    TOLERANCES,
    assert_attention_close,
    compare_attention,
    round_to_bfloat16,
    tolerance,
)


def _case(seed: int = 0, shape: tuple[int, ...] = (2, 3, 5, 7), **kw):
    rng = np.random.default_rng(seed)
    B, H, L, S = shape
    q, k, v = (
        rng.normal(size=(B, H, L, 8)),
        rng.normal(size=(B, H, S, 8)),
        rng.normal(size=(B, H, S, 4)),
    )
    out, cache = attention_forward(q, k, v, **kw)
    return q, k, v, out, cache


# ---------------------------------------------------------------------------
# Tolerance policy
# ---------------------------------------------------------------------------


def test_tolerances_grow_as_precision_shrinks() -> None:
    """Policy: float64 < float32 < float16 < bfloat16, for forward and gradient tolerances."""
    for group in ("forward", "gradient"):
        t = [TOLERANCES[d][group].atol for d in ("float64", "float32", "float16", "bfloat16")]
        assert t == sorted(t) and len(set(t)) == 4
        for d in DTYPES:
            assert TOLERANCES[d]["gradient"].atol >= TOLERANCES[d]["forward"].atol


def test_tolerances_sit_between_unit_roundoff_and_one_percent_of_it_times_1000() -> None:
    """Each tolerance is above the dtype's unit roundoff and below 64 x it (not loose)."""
    u = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
    for d, ud in u.items():
        for t in TOLERANCES[d].values():
            assert ud < t.atol <= 2**13 * ud, (d, t)


def test_tolerance_picks_the_group_by_quantity_name() -> None:
    """Quantities starting with 'd' are gradients; out/weights/lse are forward."""
    assert tolerance("float32", "out") == TOLERANCES["float32"]["forward"]
    assert tolerance(np.float32, "d_attn_mask") == TOLERANCES["float32"]["gradient"]
    assert tolerance("bfloat16", "lse") == TOLERANCES["bfloat16"]["forward"]


def test_unknown_dtype_is_a_value_error() -> None:
    """A dtype outside the four is rejected by name."""
    with pytest.raises(ValueError, match="dtype must be one of"):
        tolerance("int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        compare_attention(np.zeros(2), np.zeros(2), dtype="float8")


def test_float32_numpy_attention_passes_float32_but_not_float64_tolerance() -> None:
    """An honest float32 computation passes at float32 and is distinguishable at float64."""
    q, k, v, out, cache = _case(shape=(2, 2, 16, 64))
    out32, c32 = attention_forward(*(x.astype(np.float32) for x in (q, k, v)))
    assert_attention_close(out32, out, dtype="float32")
    assert_attention_close(c32.lse, cache.lse, dtype="float32", quantity="lse")
    assert not compare_attention(out32, out, dtype="float64").passed
    d_out = np.random.default_rng(1).normal(size=out.shape)
    g, g32 = attention_backward(d_out, cache), attention_backward(d_out.astype(np.float32), c32)
    for n in ("dq", "dk", "dv"):
        assert_attention_close(getattr(g32, n), getattr(g, n), dtype="float32", quantity=n)


def test_bfloat16_rounded_output_passes_bfloat16_but_not_float32() -> None:
    """Rounding the exact output to bfloat16 passes bfloat16 tolerances and fails float32 ones."""
    *_, out, _ = _case()
    assert_attention_close(round_to_bfloat16(out), out, dtype="bfloat16")
    assert not compare_attention(round_to_bfloat16(out), out, dtype="float32").passed


# ---------------------------------------------------------------------------
# The comparison rule, Eq. (7.1)
# ---------------------------------------------------------------------------


@given(st.floats(1e-3, 1e3), st.integers(0, 2**16))
def test_comparison_is_invariant_to_the_scale_of_the_arrays(c: float, seed: int) -> None:
    """Eq. (7.1) scales atol by max|desired|: multiplying both arrays by c keeps the verdict."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(3, 4))
    a = d + rng.normal(size=d.shape) * 1e-5
    r1, r2 = (
        compare_attention(a, d, dtype="float32"),
        compare_attention(c * a, c * d, dtype="float32"),
    )
    assert r1.passed == r2.passed
    assert math.isclose(r1.needed, r2.needed, rel_tol=1e-9)


def test_needed_is_the_smallest_passing_tolerance() -> None:
    """'needed' t: atol = rtol = t passes, atol = rtol = 0.99 t fails."""
    rng = np.random.default_rng(3)
    d = rng.normal(size=(4, 5))
    a = d + 1e-4 * rng.normal(size=d.shape)
    t = compare_attention(a, d).needed
    assert compare_attention(a, d, atol=t * 1.0000001, rtol=t * 1.0000001).passed
    assert not compare_attention(a, d, atol=0.99 * t, rtol=0.99 * t).passed


def test_infinities_must_match_exactly() -> None:
    """lse = -inf of a fully masked row matches only -inf; NaN or a finite value fails."""
    d = np.array([0.5, -np.inf])
    assert compare_attention(np.array([0.5, -np.inf]), d, quantity="lse").passed
    for bad in (0.0, np.nan, np.inf, -1e30):
        c = compare_attention(np.array([0.5, bad]), d, quantity="lse", dtype="bfloat16")
        assert not c.passed and c.worst_index == (1,)


def test_nan_in_the_candidate_fails_and_is_named() -> None:
    """A NaN where the reference is finite fails, with the overflow/0-over-0 hint."""
    *_, out, _ = _case()
    a = out.copy()
    a[0, 1, 2, 3] = np.nan
    c = compare_attention(a, out, dtype="bfloat16")
    assert not c.passed and c.worst_index == (0, 1, 2, 3)
    assert any("NaN/inf" in h for h in c.hints)


def test_shape_mismatch_fails_without_raising() -> None:
    """Different shapes: a failing Comparison naming both shapes."""
    c = compare_attention(np.zeros((2, 3)), np.zeros((3, 2)))
    assert not c.passed and "(2, 3)" in str(c) and "(3, 2)" in str(c)
    with pytest.raises(AssertionError, match="does not match the expected"):
        assert_attention_close(np.zeros((2, 3)), np.zeros((3, 2)))


def test_failure_message_locates_the_worst_element() -> None:
    """The message names (batch, head, query, feature) of the largest violation."""
    *_, out, _ = _case()
    a = out.copy()
    a[1, 2, 4, 0] += 1.0
    a[0, 0, 0, 0] += 1e-3
    with pytest.raises(AssertionError) as e:
        assert_attention_close(a, out, dtype="float32", err_msg="my kernel")
    msg = str(e.value)
    assert msg.startswith("my kernel\n")
    assert "batch 1, head 2, query 4, feature 0" in msg
    assert "2 of 120 elements" in msg


# ---------------------------------------------------------------------------
# Diagnoses: each common pattern gets its name
# ---------------------------------------------------------------------------


def _hints(actual: np.ndarray, desired: np.ndarray, quantity: str = "out") -> str:
    c = compare_attention(actual, desired, dtype="bfloat16", quantity=quantity)
    assert not c.passed
    return "\n".join(c.hints)


def test_hint_uniform_scale_factor_names_dropout_rescaling() -> None:
    """actual = 0.75 desired: a uniform scale factor, e.g. dropout without 1/(1-p)."""
    *_, out, _ = _case()
    h = _hints(0.75 * out, out)
    assert "0.75 x desired" in h and "1/(1-p)" in h


def test_hint_base2_lse() -> None:
    """lse / ln 2: named as a base-2 log-sum-exp."""
    *_, cache = _case()
    assert "base-2" in _hints(cache.lse / math.log(2), cache.lse, "lse")


def test_hint_off_by_one_diagonal() -> None:
    """Causal j < i + 1 instead of j <= i: extra weight on the diagonal j = i + 1."""
    q, k, v, _, cache = _case(shape=(1, 2, 6, 6), is_causal=True)
    s = np.einsum("bhle,bhse->bhls", q, k) / math.sqrt(8)
    i, j = np.arange(6)[:, None], np.arange(6)[None, :]
    s = np.where(j <= i + 1, s, -np.inf)
    P = np.exp(s - s.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    h = _hints(P, cache.P, "weights")
    assert "diagonal j = i + 1" in h and "off by one" in h


def test_hint_one_query_row_wrong() -> None:
    """Errors only at query 3 (every batch and head): the row is named."""
    *_, out, _ = _case()
    a = out.copy()
    a[..., 3, :] += 0.5
    assert "only query positions [3] of 5" in _hints(a, out)


def test_hint_fully_masked_rows_mean_of_v() -> None:
    """A fully masked row given mean(V) instead of 0: the convention is named."""
    rng = np.random.default_rng(0)
    q, k, v = (
        rng.normal(size=(1, 1, 3, 4)),
        rng.normal(size=(1, 1, 5, 4)),
        rng.normal(size=(1, 1, 5, 2)),
    )
    mask = np.ones((3, 5), bool)
    mask[1] = False
    out, _ = attention_forward(q, k, v, mask)
    a = out.copy()
    a[0, 0, 1] = v[0, 0].mean(axis=0)
    assert "every key is masked" in _hints(a, out)


def test_hint_gqa_tile_order() -> None:
    """Key/value heads repeated as tile (0,1,0,1) instead of repeat_interleave (0,0,1,1)."""
    rng = np.random.default_rng(0)
    q, k, v = (
        rng.normal(size=(1, 4, 3, 4)),
        rng.normal(size=(1, 2, 5, 4)),
        rng.normal(size=(1, 2, 5, 2)),
    )
    out, _ = attention_forward(q, k, v, enable_gqa=True)
    tiled, _ = attention_forward(q, np.tile(k, (1, 2, 1, 1)), np.tile(v, (1, 2, 1, 1)))
    h = _hints(tiled, out)
    assert "only heads [1, 2] of 4 are wrong" in h
    # with queries shared across heads the wrong heads are exactly permuted copies
    q2 = np.repeat(q[:, :1], 4, axis=1)
    out2, _ = attention_forward(q2, k, v, enable_gqa=True)
    tiled2, _ = attention_forward(q2, np.tile(k, (1, 2, 1, 1)), np.tile(v, (1, 2, 1, 1)))
    assert "tile order" in _hints(tiled2, out2)


def test_hint_softmax_over_the_query_axis() -> None:
    """Weights whose columns sum to 1: softmax over the wrong axis."""
    *_, cache = _case(shape=(1, 1, 4, 4))
    s = np.log(cache.P)
    wrong = np.exp(s) / np.exp(s).sum(axis=-2, keepdims=True)
    assert "query axis" in _hints(wrong, cache.P, "weights")


def test_hint_layout_blhe() -> None:
    """A (B, L, H, E) result for a (B, H, L, E) reference: the layout is named."""
    *_, out, _ = _case()
    c = compare_attention(np.swapaxes(out, 1, 2), out)
    assert not c.passed and "(B, L, H, E)" in "\n".join(c.hints)


def test_no_hint_for_noise() -> None:
    """Unstructured large noise gets no convention story (no false diagnosis)."""
    *_, out, _ = _case()
    a = out + np.random.default_rng(5).normal(size=out.shape)
    c = compare_attention(a, out, dtype="bfloat16")
    assert not c.passed and c.hints == []


# ---------------------------------------------------------------------------
# bfloat16 emulation
# ---------------------------------------------------------------------------


def test_round_to_bfloat16_keeps_8_significant_bits_ties_to_even() -> None:
    """Results have zero low 16 bits; halfway cases go to the even neighbour."""
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2**-130, 3.4e38, np.inf, -np.inf])
    y = round_to_bfloat16(x)
    assert y.dtype == np.float32
    assert np.all(y.view(np.uint32) & 0xFFFF == 0)
    assert y[:3].tolist() == [1.0, 1 + 4 * 2**-8, -1.0]
    assert np.isinf(y[4]) and y[5] == np.inf and y[6] == -np.inf  # 3.4e38 rounds past the max
    assert np.isnan(round_to_bfloat16(np.nan))


@given(st.floats(-(2.0**100), 2.0**100, allow_nan=False, width=32))
def test_round_to_bfloat16_is_nearest(x: float) -> None:
    """The result is within half a bfloat16 ulp of the input (ulp 2^(e-7) in binade 2^e)."""
    y = float(round_to_bfloat16(x))
    half_ulp = 2.0 ** (math.floor(math.log2(abs(x))) - 8) if x else 0.0
    assert abs(y - x) <= max(half_ulp, 2.0**-134)


def test_axis_names_follow_the_quantity() -> None:
    """Worst elements are named per quantity: lse has no key axis, dk's rows are keys."""
    d = np.zeros((2, 3, 4))
    a = d.copy()
    a[1, 2, 3] = 1.0
    assert compare_attention(a, d, quantity="lse").where() == "batch 1, head 2, query 3"
    d4 = np.zeros((1, 2, 3, 4))
    a4 = d4.copy()
    a4[0, 1, 2, 3] = 1.0
    assert compare_attention(a4, d4, quantity="dk").where() == "batch 0, head 1, key 2, feature 3"
    assert compare_attention(a4, d4, quantity="weights").where().endswith("query 2, key 3")
    assert compare_attention(a4[0, 1], d4[0, 1], quantity="d_w_q").where() == "row 2, column 3"


# ---------------------------------------------------------------------------
# Hardening (issue 14): the comparison never passes vacuously
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"atol": math.nan}, {"atol": math.inf}, {"rtol": math.nan},
                                {"rtol": math.inf}, {"atol": -1e-3}])  # fmt: skip
def test_assert_attention_close_refuses_tolerances_that_pass_garbage(kw) -> None:
    """atol = nan or inf made every element pass (garbage included): a ValueError naming it."""
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        assert_attention_close(np.full(4, 1e9), np.ones(4), **kw)
    with pytest.raises(ValueError, match=name):
        compare_attention(np.full(4, 1e9), np.ones(4), **kw)


def test_a_tolerance_that_is_not_a_number_is_a_type_error() -> None:
    """atol="1e-3" is a TypeError naming atol."""
    with pytest.raises(TypeError, match="atol must be a real number"):
        compare_attention(np.ones(2), np.ones(2), atol="1e-3")


def test_compare_attention_refuses_complex_instead_of_dropping_the_imaginary_part() -> None:
    """A complex candidate whose real part matches used to pass (imaginary part dropped)."""
    d = np.array([0.5, 0.25])
    with pytest.raises(TypeError, match="actual must hold real numbers, got dtype complex128"):
        compare_attention(d + 1j, d)
    with pytest.raises(TypeError, match="desired must hold real numbers"):
        assert_attention_close(d, d.astype(complex))


def test_compare_attention_quantity_must_be_a_name() -> None:
    """quantity=None raised AttributeError ('NoneType' has no 'startswith'): now a TypeError."""
    with pytest.raises(TypeError, match="quantity must be a str"):
        compare_attention(np.ones(2), np.ones(2), quantity=None)
    with pytest.raises(TypeError, match="quantity must be a str"):
        tolerance("float32", None)
    with pytest.raises(ValueError, match="quantity must be a non-empty name"):
        assert_attention_close(np.ones(2), np.ones(2), quantity="")


def test_tolerance_records_refuse_nan_and_negative_values() -> None:
    """Tolerance(nan, 0) cannot be built: a policy of NaN would pass anything."""
    from numpy_attention.testing import Tolerance

    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        Tolerance(math.nan, 0.0)
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0"):
        Tolerance(0.0, -1.0)
