"""Boolean mask helpers: Eqs. (2.6)-(2.8) of docs/attention.md, and how attention combines them."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import dims, seeds

from numpy_attention.attention import attention_forward
from numpy_attention.masks import causal_mask, padding_mask, sliding_window_mask

ALIGN = st.sampled_from(["top_left", "bottom_right"])


def _loop_mask(L, S, d, left, right):
    """[i + d - left <= j <= i + d + right], entry by entry (right = S means no upper window)."""
    return np.array([[i + d - left <= j <= i + d + right for j in range(S)] for i in range(L)],
                    dtype=bool).reshape(L, S)  # fmt: skip


@given(dims(0, 7), dims(0, 7), ALIGN)
def test_causal_mask_is_j_le_i_plus_d(L, S, align):
    """Eq. (2.6): M_ij = [j <= i + d], d = 0 (top-left, torch) or S - L (bottom-right, flash)."""
    d = 0 if align == "top_left" else S - L
    expect = _loop_mask(L, S, d, left=L + S + abs(d), right=0)
    np.testing.assert_array_equal(causal_mask(L, S, align), expect)


@given(dims(1, 7), dims(1, 7))
def test_bottom_right_causal_last_query_sees_every_key(L, S):
    """Bottom-right: the last query sees all S keys; top-left: the first query sees key 0 only."""
    assert causal_mask(L, S, "bottom_right")[-1].all()
    assert causal_mask(L, S)[0, 0] and not causal_mask(L, S)[0, 1:].any()


@given(dims(0, 7), dims(0, 7), dims(0, 3), dims(0, 3), ALIGN)
def test_sliding_window_mask_is_a_band_around_the_diagonal(L, S, left, right, align):
    """Eq. (2.8): M_ij = [i + d - l <= j <= i + d + r]; (w, 0) is causal local attention."""
    d = 0 if align == "top_left" else S - L
    m = sliding_window_mask(L, S, (left, right), align)
    np.testing.assert_array_equal(m, _loop_mask(L, S, d, left, right))
    assert not np.any(sliding_window_mask(L, S, (left, 0), align) & ~causal_mask(L, S, align))
    np.testing.assert_array_equal(
        sliding_window_mask(L, S, left, align), _loop_mask(L, S, d, left, left)
    )


@given(st.lists(dims(0, 6), min_size=1, max_size=4), dims(6, 8))
def test_padding_mask_keeps_the_first_n_keys(lengths, S):
    """Eq. (2.7): M_bj = [j < n_b], shape (B, 1, 1, S) so it broadcasts over heads and queries."""
    m = padding_mask(lengths, S)
    assert m.shape == (len(lengths), 1, 1, S)
    for b, n in enumerate(lengths):
        assert m[b, 0, 0].tolist() == [j < n for j in range(S)]


@given(dims(1, 5), dims(1, 5), ALIGN, seeds)
def test_is_causal_equals_explicit_causal_mask_and_intersects_attn_mask(L, S, align, seed):
    """is_causal applies Eq. (2.6); with attn_mask, the allowed set is the intersection."""
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(2, L, 3)), rng.normal(size=(2, S, 3)), rng.normal(size=(2, S, 2))
    m = rng.random((2, L, S)) < 0.7
    out_c, _ = attention_forward(q, k, v, is_causal=True, causal_align=align)
    out_m, _ = attention_forward(q, k, v, causal_mask(L, S, align))
    np.testing.assert_array_equal(out_c, out_m)
    out_cm, _ = attention_forward(q, k, v, m, is_causal=True, causal_align=align)
    out_and, _ = attention_forward(q, k, v, m & causal_mask(L, S, align))
    np.testing.assert_array_equal(out_cm, out_and)


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: causal_mask(-1, 3), ValueError, r"L must be >= 0, got -1"),
        (lambda: causal_mask(2, 3.0), TypeError, r"S must be an integer, got float"),
        (lambda: causal_mask(True, 3), TypeError, r"L must be an integer, got bool"),
        (lambda: causal_mask(2, 3, "lower"), ValueError, r"align must be one of .*'lower'"),
        (lambda: padding_mask([1, 4], 3), ValueError, r"lengths must lie in \[0, S=3\].*max 4"),
        (lambda: padding_mask([-1], 3), ValueError, r"lengths .* min -1"),
        (lambda: padding_mask([[1, 2]], 3), ValueError, r"lengths must .*\(B,\), got .*\(1, 2\)"),
        (lambda: padding_mask([1.5], 3), TypeError, r"lengths must be integers, got dtype float64"),
        (lambda: sliding_window_mask(3, 3, (1, 2, 3)), TypeError, r"window must be an int or a"),
        (lambda: sliding_window_mask(3, 3, -1), ValueError, r"window must be >= 0"),
        (lambda: sliding_window_mask(3, 3, (0, 1.0)), TypeError, r"window\[1\] must be an integer"),
    ],
)  # fmt: skip
def test_bad_mask_arguments_raise_naming_the_argument(call, error, pattern):
    """Negative or non-integer sizes, unknown alignments and bad lengths raise clear errors."""
    with pytest.raises(error, match=pattern):
        call()
