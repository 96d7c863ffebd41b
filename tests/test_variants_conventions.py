"""numpy_attention/variants.py against the sources it converts from (Eqs. (8.5), (8.16)-(8.19)).

Each test builds the other library's mask or slopes the way its own code does, copied below with
a citation (torch/jnp calls transliterated to NumPy, line for line), and compares it with our
convention: the window returned by the converter, drawn by the loop oracle's visibility rule
(tests/oracles.py), on L != S cases in both directions. Sources read 2026-12-01:
Dao-AILab/flash-attention at 0251105a, huggingface/transformers (masking_utils.py,
modeling_bloom.py), jax-ml/jax at cec06d11 (jax/_src/nn/functions.py), NVIDIA/cudnn-frontend at
3929da2 (test/python/test_mhas.py), ofirpress/attention_with_linear_biases (get_slopes).
"""

import math

import numpy as np
import pytest
from oracles import visibility_oracle

from numpy_attention.variants import (
    alibi_slopes,
    window_from_cudnn,
    window_from_flash,
    window_from_hf,
    window_from_jax,
)

SHAPES = [(3, 7), (7, 3), (5, 5), (1, 6), (6, 1)]  # (L, S): L < S, L > S, square, edges


def _ours(L, S, converted, is_causal=False):
    (window, align) = converted
    return visibility_oracle(L, S, is_causal=is_causal, causal_align=align, window=window)


# ---------------------------------------------------------------------------
# ALiBi slopes, Eq. (8.5)
# ---------------------------------------------------------------------------


def _press_get_slopes(n):
    """ofirpress/attention_with_linear_biases, fairseq/models/transformer.py (get_slopes), as
    cited by BLOOM's build_alibi_tensor; copied verbatim."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + _press_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


def _bloom_slopes(n_head):
    """huggingface/transformers models/bloom/modeling_bloom.py, build_alibi_tensor (the slopes
    part), torch -> NumPy, in float64 instead of float32."""
    closest_power_of_2 = 2 ** math.floor(math.log2(n_head))
    base = np.float64(2 ** (-(2 ** -(math.log2(closest_power_of_2) - 3))))
    powers = np.arange(1, 1 + closest_power_of_2)
    slopes = np.power(base, powers)
    if closest_power_of_2 != n_head:
        extra_base = np.float64(2 ** (-(2 ** -(math.log2(2 * closest_power_of_2) - 3))))
        num_remaining_heads = min(closest_power_of_2, n_head - closest_power_of_2)
        extra_powers = np.arange(1, 1 + 2 * num_remaining_heads, 2)
        slopes = np.concatenate([slopes, np.power(extra_base, extra_powers)], axis=0)
    return slopes


def _cudnn_slopes(h_q):
    """NVIDIA/cudnn-frontend test/python/test_mhas.py, compute_ref (the ALiBi slopes m)."""
    n = 2 ** math.floor(math.log2(h_q))
    m_0 = 2.0 ** (-8.0 / n)
    m = np.power(m_0, np.arange(1, 1 + n))
    if n < h_q:
        m_hat_0 = 2.0 ** (-4.0 / n)
        m_hat = np.power(m_hat_0, np.arange(1, 1 + 2 * (h_q - n), 2))
        m = np.concatenate([m, m_hat])
    return m


@pytest.mark.parametrize("source", [_press_get_slopes, _bloom_slopes, _cudnn_slopes])
def test_alibi_slopes_equal_press_bloom_and_cudnn_for_every_head_count_up_to_96(source):
    """Eq. (8.5): the slopes of the ALiBi reference code, BLOOM and cuDNN's test reference, for
    H = 1 ... 96 (powers of two and the interleaving rule for the others), to 1e-14 relative
    (the sources multiply a rounded base up to 64 times; ours rounds 2^(-8h/n) once)."""
    for H in range(1, 97):
        got = alibi_slopes(H)
        assert got.shape == (H,) and got.dtype == np.float64
        np.testing.assert_allclose(got, source(H), rtol=1e-14, atol=0, err_msg=f"H={H}")


def test_alibi_slopes_of_a_power_of_two_are_the_papers_geometric_sequence():
    """Press et al. (2022), Sec. 3: for 8 heads, 1/2, 1/4, ..., 1/256 (exact in binary)."""
    assert alibi_slopes(8).tolist() == [2.0**-h for h in range(1, 9)]
    assert alibi_slopes(1).tolist() == [2.0**-8]


@pytest.mark.parametrize(
    "bad, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_alibi_slopes_refuses_a_head_count_that_is_not_a_positive_integer(bad, error):
    with pytest.raises(error, match="num_heads"):
        alibi_slopes(bad)


# ---------------------------------------------------------------------------
# FlashAttention, Eq. (8.16)
# ---------------------------------------------------------------------------


def _fa2_construct_local_mask(seqlen_q, seqlen_k, window_size=(-1, -1)):
    """Dao-AILab/flash-attention tests/test_flash_attn.py, construct_local_mask (no padding,
    no key_leftpad): True = masked. ``rearrange(arange, "s -> s 1")`` is ``[:, None]``."""
    row_idx = np.arange(seqlen_q)[:, None]
    col_idx = np.arange(seqlen_k)
    sk = seqlen_k
    sq = seqlen_q
    if window_size[0] < 0:
        return col_idx > row_idx + sk - sq + window_size[1]
    else:
        sk = np.full_like(col_idx, seqlen_k)
        return np.logical_or(
            col_idx > np.minimum(row_idx + sk - sq + window_size[1], sk),
            col_idx < row_idx + sk - sq - window_size[0],
        )


def _fa4_construct_local_mask(seqlen_q, seqlen_k, window_size=(None, None)):
    """flash_attn/cute/testing.py (FA4), construct_local_mask: None = unbounded; True = masked."""
    row_idx = np.arange(seqlen_q)[:, None]
    col_idx = np.arange(seqlen_k)
    sk = seqlen_k
    sq = seqlen_q
    if window_size[0] is None:
        return col_idx > row_idx + sk - sq + window_size[1]
    else:
        sk = np.full_like(col_idx, seqlen_k)
        if window_size[1] is None:
            local_mask_left = col_idx > sk
        else:
            local_mask_left = col_idx > np.minimum(row_idx + sk - sq + window_size[1], sk)
        return np.logical_or(local_mask_left, col_idx < row_idx + sk - sq - window_size[0])


def _fa_ref_visible(L, S, window_size, causal=False):
    """What attention_ref masks: with causal it sets ``window_size = (window_size[0], 0)``;
    a window is applied only if a side is >= 0."""
    if causal:
        window_size = (window_size[0], 0)
    if window_size[0] >= 0 or window_size[1] >= 0:
        return ~_fa2_construct_local_mask(L, S, window_size)
    return np.ones((L, S), dtype=bool)


@pytest.mark.parametrize("L, S", SHAPES)
@pytest.mark.parametrize("window_size", [(0, 0), (1, 0), (2, 1), (0, 3), (3, 2), (-1, 0), (-1, 2),
                                         (10, 10), (-1, -1)])  # fmt: skip
@pytest.mark.parametrize("causal", [False, True])
def test_flash_window_equals_flash_attention_reference_mask(L, S, window_size, causal):
    """FlashAttention's attention_ref mask (construct_local_mask, causal -> right 0) equals ours
    from window_from_flash (bottom-right), with or without is_causal, for L < S, L > S, L = S."""
    want = _fa_ref_visible(L, S, window_size, causal)
    converted = window_from_flash(window_size)
    assert converted[1] == "bottom_right"
    np.testing.assert_array_equal(_ours(L, S, converted, is_causal=causal), want)


@pytest.mark.parametrize("L, S", SHAPES)
@pytest.mark.parametrize("window_size", [(2, -1), (0, -1), (-1, 1)])
def test_flash_minus_one_on_the_right_is_unbounded_like_the_kernel_and_fa4(L, S, window_size):
    """``(w, -1)``: the kernel (flash_api.cpp: ``window_size_right = seqlen_k`` when negative) and
    FA4's reference (None = unbounded) read it as unbounded, and so does window_from_flash; FA2's
    reference construct_local_mask would mask the diagonal instead (its tests never draw -1)."""
    fa4 = tuple(None if s == -1 else s for s in window_size)
    want = ~_fa4_construct_local_mask(L, S, fa4)
    np.testing.assert_array_equal(_ours(L, S, window_from_flash(window_size)), want)


@pytest.mark.parametrize(
    "bad, error, match",
    [((-2, 0), ValueError, r"window_size\[0\]"), ((0, -5), ValueError, r"window_size\[1\]"),
     ((1.0, 0), TypeError, r"window_size\[0\]"), (3, TypeError, "window_size"),
     ((1, 2, 3), TypeError, "window_size")],
)  # fmt: skip
def test_window_from_flash_refuses_bad_sides(bad, error, match):
    with pytest.raises(error, match=match):
        window_from_flash(bad)


# ---------------------------------------------------------------------------
# Hugging Face, Eq. (8.17)
# ---------------------------------------------------------------------------


def causal_mask_function(batch_idx, head_idx, q_idx, kv_idx):
    """huggingface/transformers src/transformers/masking_utils.py (verbatim)."""
    return kv_idx <= q_idx


def sliding_window_overlay(sliding_window):
    """huggingface/transformers src/transformers/masking_utils.py (verbatim)."""

    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        return kv_idx > q_idx - sliding_window

    return inner_mask


def _hf_sliding_window_causal(L, S, sliding_window):
    """and_masks(sliding_window_overlay(W), causal_mask_function) on HF's absolute positions:
    with a KV cache of S - L tokens the queries sit at cache_position = S - L, ..., S - 1."""
    q_idx = np.arange(S - L, S)[:, None]
    kv_idx = np.arange(S)[None, :]
    overlay = sliding_window_overlay(sliding_window)
    return overlay(0, 0, q_idx, kv_idx) & causal_mask_function(0, 0, q_idx, kv_idx)


@pytest.mark.parametrize("L, S", [(3, 7), (5, 5), (1, 6), (4, 9)])  # L <= S: queries last
@pytest.mark.parametrize("W", [1, 2, 3, 5, 20])
def test_hf_sliding_window_equals_transformers_mask_functions(L, S, W):
    """HF's sliding_window W (the current token counted) is our (W - 1, 0), bottom-right: the
    same mask as transformers' mask functions at absolute positions, and each row sees at most
    W keys."""
    want = _hf_sliding_window_causal(L, S, W)
    ours = _ours(L, S, window_from_hf(W))
    np.testing.assert_array_equal(ours, want)
    assert ours.sum(axis=1).max() == min(W, S)


@pytest.mark.parametrize("W", [2, 3, 4])
def test_hf_window_passed_to_flash_as_w_w_is_the_off_by_one_of_transformers_39408(W):
    """Before transformers#40163, HF passed ``window_size=(W, W)`` with causal to FlashAttention:
    W + 1 keys, one more than HF's own mask; ``(W - 1, W - 1)`` with causal gives HF's mask."""
    L = S = 8
    hf = _hf_sliding_window_causal(L, S, W)
    before = _fa_ref_visible(L, S, (W, W), causal=True)
    after = _fa_ref_visible(L, S, (W - 1, W - 1), causal=True)
    assert before.sum(axis=1).max() == W + 1 and not np.array_equal(before, hf)
    np.testing.assert_array_equal(after, hf)
    np.testing.assert_array_equal(_ours(L, S, window_from_flash((W - 1, W - 1)), True), hf)


def test_hf_no_sliding_window_is_plain_causal_bottom_right():
    assert window_from_hf(None) == ((None, 0), "bottom_right")
    np.testing.assert_array_equal(_ours(3, 6, window_from_hf(None)),
                                  _hf_sliding_window_causal(3, 6, 10**6))  # fmt: skip


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (4.0, TypeError)])
def test_window_from_hf_refuses_bad_sizes(bad, error):
    with pytest.raises(error, match="sliding_window"):
        window_from_hf(bad)


# ---------------------------------------------------------------------------
# JAX, Eq. (8.18)
# ---------------------------------------------------------------------------


def _jax_get_window_mask(T, S, local_window_size):
    """jax-ml/jax jax/_src/nn/functions.py, _get_window_mask (jnp -> NumPy, without the two
    leading unit axes); True = takes part."""
    query_pos = np.array(range(T))
    key_pos = np.array(range(S))
    left_window, right_window = local_window_size
    left_mask = query_pos[..., None] <= key_pos[..., None, :] + left_window
    right_mask = query_pos[..., None] >= key_pos[..., None, :] - right_window
    return np.logical_and(right_mask, left_mask)


def _jax_get_causal_mask(T, S):
    """jax/_src/nn/functions.py, _get_causal_mask (top-left)."""
    return np.tril(np.ones((T, S), dtype=bool))


@pytest.mark.parametrize("L, S", SHAPES)
@pytest.mark.parametrize("lws", [0, 1, 2, (1, 0), (0, 2), (3, 1), (0, 0)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_jax_local_window_equals_jax_window_mask(L, S, lws, is_causal):
    """JAX's local_window_size (int w = (w, w)), top-left, combined with its is_causal as
    _apply_masks does, equals ours from window_from_jax."""
    pair = (lws, lws) if isinstance(lws, int) else lws  # dot_product_attention's int rule
    want = _jax_get_window_mask(L, S, pair)
    if is_causal:
        want = want & _jax_get_causal_mask(L, S)
    converted = window_from_jax(lws)
    assert converted[1] == "top_left"
    np.testing.assert_array_equal(_ours(L, S, converted, is_causal), want)


@pytest.mark.parametrize(
    "bad, error, match",
    [(-1, ValueError, r"local_window_size\[0\]"), ((1, -1), ValueError, r"local_window_size\[1\]"),
     ((1, 2.5), TypeError, r"local_window_size\[1\]"), ("3", TypeError, "local_window_size")],
)  # fmt: skip
def test_window_from_jax_refuses_bad_sizes(bad, error, match):
    with pytest.raises(error, match=match):
        window_from_jax(bad)


# ---------------------------------------------------------------------------
# cuDNN, Eq. (8.19)
# ---------------------------------------------------------------------------


def _cudnn_ref_visible(s_q, s_kv, left_bound, right_bound, top_left):
    """NVIDIA/cudnn-frontend test/python/test_mhas.py, compute_ref: the right-bound ("causal")
    and left-bound (SWA) masks without padding, torch -> NumPy (``ones.triu_(diagonal=k)`` is
    ``np.triu(ones, k)``). Returns (visible, rows the reference zeroes: ``swa_mask_zero``)."""
    masked = np.zeros((s_q, s_kv), dtype=bool)
    swa_mask_zero = np.ones((s_q, 1), dtype=bool)
    if left_bound is not None:
        swa_mask_zero[s_kv + left_bound - 1 :, :] = False
    if top_left and right_bound is not None:
        causal_mask = np.triu(np.ones((s_q, s_kv), dtype=bool), 1 + right_bound)
        masked |= causal_mask
    elif not top_left and right_bound is not None:
        causal_mask_bottom_right = np.triu(np.ones((s_q, s_kv), dtype=bool),
                                           s_kv - s_q + 1 + right_bound)  # fmt: skip
        masked |= causal_mask_bottom_right
    if left_bound is not None:
        if top_left:
            swa_mask = np.tril(np.ones((s_q, s_kv), dtype=bool), -1 * left_bound)
        else:
            swa_mask = np.tril(np.ones((s_q, s_kv), dtype=bool), -1 * left_bound + (s_kv - s_q))
        swa_mask &= swa_mask_zero.reshape(s_q, 1)
        masked |= swa_mask
    zeroed = ~swa_mask_zero[:, 0]  # p = p * swa_mask_zero: these rows give output 0
    return ~masked & ~zeroed[:, None], zeroed


@pytest.mark.parametrize("L, S", SHAPES + [(9, 4)])
@pytest.mark.parametrize("bounds", [(1, 0), (2, 0), (3, None), (None, 0), (None, 2), (2, 1),
                                    (5, 3)])  # fmt: skip
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_cudnn_bounds_equal_cudnn_reference_mask(L, S, bounds, align):
    """cuDNN's left bound is exclusive (our left = left_bound - 1), its right bound inclusive:
    ours from window_from_cudnn equals compute_ref's mask on every row the reference keeps. The
    reference also zeroes rows i >= S + left_bound - 1; those see no key in our band either,
    except with bottom-right alignment and L > S, where they do (a shortcut of the reference)."""
    left_bound, right_bound = bounds
    want, zeroed = _cudnn_ref_visible(L, S, left_bound, right_bound, align == "top_left")
    ours = _ours(L, S, window_from_cudnn(left_bound, right_bound, align))
    np.testing.assert_array_equal(ours[~zeroed], want[~zeroed])
    if align == "top_left" or L <= S:
        assert not ours[zeroed].any()


def test_cudnn_sliding_window_length_is_jax_left_plus_one():
    """JAX's cuDNN path: ``sliding_window = l_window + 1`` (exclusive bound); the round trip
    through both converters gives the same window."""
    for left in range(5):
        assert window_from_cudnn(left + 1, 0)[0] == window_from_jax((left, 0))[0]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [(dict(left_bound=0), ValueError, "left_bound"), (dict(right_bound=-1), ValueError,
      "right_bound"), (dict(left_bound=2.0), TypeError, "left_bound"),
     (dict(diagonal_alignment="TOP_LEFT"), ValueError, "diagonal_alignment")],
)  # fmt: skip
def test_window_from_cudnn_refuses_bad_bounds(kwargs, error, match):
    with pytest.raises(error, match=match):
        window_from_cudnn(**kwargs)


def test_cudnn_reference_zeroes_rows_that_see_keys_only_bottom_right_with_L_greater_than_S():
    """The one place the comparison above skips rows that see keys: L = 9 > S = 4, bottom-right,
    bounds (2, 1): the reference zeroes rows 5..8, our band gives row 5 the keys 0 and 1."""
    want, zeroed = _cudnn_ref_visible(9, 4, 2, 1, top_left=False)
    ours = _ours(9, 4, window_from_cudnn(2, 1, "bottom_right"))
    assert zeroed.tolist() == [False] * 5 + [True] * 4
    assert ours[5].tolist() == [True, True, False, False] and not want[5].any()
