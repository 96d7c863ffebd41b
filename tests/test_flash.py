"""FlashAttention's tiled online softmax: Eqs. (5.1)-(5.12) of docs/flash.md.

The tiled functions must give the core's results (attention_forward /
attention_backward, Eqs. (2.1)-(2.16)) for every argument they share, to 1e-12
in float64, for any block sizes; never hold an L x S array; pass float64
finite differences; and give the same result with threads.
"""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optional import TORCH_MISSING
from strategies import attention_cases

from numpy_attention.attention import attention_backward, attention_forward
from numpy_attention.flash import (
    default_blocks,
    flash_attention_backward,
    flash_attention_forward,
)
from numpy_attention.testing import gradcheck

RNG = np.random.default_rng
GRADS = ("dq", "dk", "dv", "d_attn_mask")


def _shared_kwargs(case):
    """The arguments the tiled forward shares with the core (no dropout)."""
    kw = case.kwargs()
    del kw["dropout_p"], kw["dropout_mask"]
    return kw


def _assert_same(flash, core, tol=1e-12):
    """out, lse and every gradient of the tiled and the core functions agree to ``tol``."""
    (out, cache, grads), (out_c, cache_c, grads_c) = flash, core
    assert out.shape == out_c.shape and out.dtype == out_c.dtype
    np.testing.assert_allclose(out, out_c, rtol=tol, atol=tol)
    np.testing.assert_allclose(cache.lse, cache_c.lse, rtol=tol, atol=tol)  # -inf where -inf
    for name in GRADS:
        a, b = getattr(grads, name), getattr(grads_c, name)
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=name)


def _run_both(kwargs, d_out=None, **tiling):
    out_c, cache_c = attention_forward(**kwargs)
    d_out = RNG(1).normal(size=out_c.shape) if d_out is None else d_out
    core = (out_c, cache_c, attention_backward(d_out, cache_c))
    out, cache = flash_attention_forward(**kwargs, **tiling)
    flash = (out, cache, flash_attention_backward(d_out, cache))
    return flash, core


# ---------------------------------------------------------------------------
# Same results as the core
# ---------------------------------------------------------------------------


@given(
    attention_cases(max_len=7),
    st.integers(1, 9),
    st.integers(1, 9),
    st.sampled_from([None, 2, 3]),
)
def test_tiled_equals_core_for_any_blocks(case, block_q, block_k, workers):
    """Eqs. (5.1)-(5.12) give the core's out, lse, dq, dk, dv, dB (Eqs. (2.1)-(2.16)) to 1e-12:
    bool and float masks, both causal alignments, GQA, broadcast batch and heads, block sizes
    of 1, odd, not dividing L or S, larger than L or S, with and without threads."""
    flash, core = _run_both(_shared_kwargs(case), block_q=block_q, block_k=block_k, workers=workers)
    _assert_same(flash, core)


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("mask", ["bool", "float"])
def test_tiled_equals_core_on_a_larger_gqa_problem(align, mask):
    """Several blocks in each direction (37 queries, 53 keys in blocks of 8 x 16, G = 3),
    a causal mask crossing blocks diagonally and a mask of its own broadcast shape."""
    rng = RNG(0)
    q, k, v = (
        rng.normal(size=(2, 6, 37, 5)),
        rng.normal(size=(1, 2, 53, 5)),
        rng.normal(size=(2, 2, 53, 4)),
    )
    if mask == "bool":
        attn_mask = rng.random((6, 37, 53)) < 0.8
    else:
        attn_mask = rng.normal(size=(2, 1, 1, 53))
        attn_mask[..., 3] = -np.inf
    kwargs = dict(q=q, k=k, v=v, attn_mask=attn_mask, is_causal=True, causal_align=align,
                  enable_gqa=True, scale=0.7)  # fmt: skip
    flash, core = _run_both(kwargs, block_q=8, block_k=16)
    _assert_same(flash, core)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_computes_in_float32_like_the_core(dtype):
    """float32 is computed in float32 and float16 in float32, rounded once (the core's policy):
    results keep the input dtype and agree with the core to float32 rounding."""
    rng = RNG(2)
    q, k, v = (rng.normal(size=(2, 33, 8)).astype(dtype) for _ in range(3))
    kwargs = dict(q=q, k=k, v=v, is_causal=True)
    flash, core = _run_both(kwargs, d_out=np.ones((2, 33, 8), dtype), block_q=5, block_k=7)
    out, cache, grads = flash
    assert out.dtype == dtype and cache.lse.dtype == np.float32 and grads.dq.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 2e-3
    _assert_same(flash, core, tol=tol)


# ---------------------------------------------------------------------------
# Fully masked rows, skipped blocks
# ---------------------------------------------------------------------------


def test_fully_masked_rows_give_zero_output_minus_inf_lse_and_zero_gradients():
    """A query with no visible key (a False mask row; the first L - S queries under bottom-right
    causal with L > S): out 0, lse -inf, its dq and its mask gradient 0, no NaN anywhere."""
    rng = RNG(3)
    L, S = 9, 5
    q, k, v = rng.normal(size=(2, L, 4)), rng.normal(size=(2, S, 4)), rng.normal(size=(2, S, 3))
    bias = rng.normal(size=(2, L, S))
    bias[1, 6] = -np.inf  # row 6 of head 1: fully masked by the bias
    kwargs = dict(q=q, k=k, v=v, attn_mask=bias, is_causal=True, causal_align="bottom_right")
    flash, core = _run_both(kwargs, block_q=2, block_k=2)
    out, cache, grads = flash
    hidden = [(h, i) for h in range(2) for i in range(L - S)] + [(1, 6)]
    for h, i in hidden:
        assert np.all(out[h, i] == 0) and cache.lse[h, i] == -np.inf
        assert np.all(grads.dq[h, i] == 0) and np.all(grads.d_attn_mask[h, i] == 0)
    for a in (out, grads.dq, grads.dk, grads.dv, grads.d_attn_mask):
        assert not np.isnan(a).any()
    _assert_same(flash, core)


def test_causal_blocks_above_the_diagonal_are_never_computed():
    """Eq. (5.2): key blocks above the causal diagonal are skipped, not computed and masked.
    NaN in the values of keys 8..11 reaches every output row in the core (0 * NaN in P V), but in
    the tiled forward only the rows of query blocks that reach key block [8, 12)."""
    rng = RNG(4)
    q, k, v = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)), rng.normal(size=(12, 2))
    v[8:] = np.nan
    out, _ = flash_attention_forward(q, k, v, is_causal=True, block_q=4, block_k=4)
    assert np.isnan(attention_forward(q, k, v, is_causal=True)[0]).all()
    assert not np.isnan(out[:8]).any() and np.isnan(out[8:]).all()


def test_fully_masked_key_blocks_are_skipped():
    """A block that the boolean mask hides entirely is skipped (NaN values there stay out),
    and the visible keys give the core's result."""
    rng = RNG(5)
    q, k, v = rng.normal(size=(8, 3)), rng.normal(size=(12, 3)), rng.normal(size=(12, 2))
    keep = np.ones((8, 12), dtype=bool)
    keep[:, 4:8] = False
    v_nan = v.copy()
    v_nan[4:8] = np.nan
    out, _ = flash_attention_forward(q, k, v_nan, attn_mask=keep, block_q=3, block_k=4)
    np.testing.assert_allclose(out, attention_forward(q, k, v, attn_mask=keep)[0], atol=1e-14)


# ---------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------


def _tiled(block_q, block_k, workers=None):
    def forward(**kw):
        return flash_attention_forward(**kw, block_q=block_q, block_k=block_k, workers=workers)

    return forward


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_gradcheck_with_bias_causal_and_gqa(align):
    """dq, dk, dv and the float-mask gradient (Eqs. (5.7)-(5.12)) match float64 central
    finite differences; the mask is broadcast over heads, so dB is summed to its shape."""
    rng = RNG(6)
    inputs = dict(
        q=rng.normal(size=(4, 5, 3)), k=rng.normal(size=(2, 7, 3)), v=rng.normal(size=(2, 7, 2)),
        attn_mask=rng.normal(size=(1, 5, 7)), is_causal=True, causal_align=align, enable_gqa=True,
    )  # fmt: skip
    report = gradcheck(_tiled(2, 3, workers=2), inputs, flash_attention_backward)
    assert report.passed and set(report.checked) == {"q", "k", "v", "attn_mask"}


def test_gradcheck_catches_a_wrong_tiled_backward():
    """The finite-difference check can fail: dropping the D term of Eq. (5.10) is detected."""
    rng = RNG(7)
    inputs = dict(q=rng.normal(size=(3, 2)), k=rng.normal(size=(4, 2)), v=rng.normal(size=(4, 2)))

    def without_D(d_out, cache):  # the gradient of an unnormalised exp(S) V
        zero_out = type(cache)(**{**cache.__dict__, "out": np.zeros_like(cache.out)})
        return flash_attention_backward(d_out, zero_out)

    report = gradcheck(_tiled(2, 3), inputs, without_D, raise_on_failure=False)
    assert not report.passed


# ---------------------------------------------------------------------------
# Memory, threads, defaults
# ---------------------------------------------------------------------------


def test_memory_stays_far_below_one_score_matrix():
    """No L x S array: at L = S = 2048 (one float64 score matrix is 32 MiB) the forward and
    backward together allocate at most 1/8 of it (4 MiB) beyond the inputs, measured by
    tracemalloc, and agree with a direct float64 formula on a few rows."""
    rng = RNG(8)
    L = S = 2048
    q, k, v = rng.normal(size=(L, 16)), rng.normal(size=(S, 16)), rng.normal(size=(S, 16))
    d_out = rng.normal(size=(L, 16))
    budget = L * S * 8 // 8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out, cache = flash_attention_forward(q, k, v, is_causal=True)
        grads = flash_attention_backward(d_out, cache)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < budget, f"peak {peak / 2**20:.1f} MiB >= budget {budget / 2**20:.1f} MiB"
    rows = [0, 1000, 2047]
    s = q[rows] @ k.T / 4.0
    s[np.arange(S) > np.array(rows)[:, None]] = -np.inf
    p = np.exp(s - s.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out[rows], p @ v / p.sum(axis=1, keepdims=True), atol=1e-12)
    assert grads.dq.shape == q.shape


def test_work_space_is_at_most_15_percent_of_the_scores_with_two_threads():
    """The benchmark's (B, H, L, E) = (2, 8, 1024, 64) in float32 with workers = 2: what forward
    and backward allocate beyond the arrays they return (out and the gradients) is at most 15%
    of the (B, H, L, S) scores the plain formula would hold (64 MiB). Two threads hold a block
    each in the forward and two half-size blocks each (P and dP) in the backward."""
    rng = RNG(10)
    shape = (2, 8, 1024, 64)
    q, k, v, d_out = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
    scores = 2 * 8 * 1024 * 1024 * 4
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out, cache = flash_attention_forward(q, k, v, workers=2)
        grads = flash_attention_backward(d_out, cache)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # the cache keeps its own out (the caller's is a copy it may edit): a kept result, not work
    returned = out.nbytes + cache.out.nbytes + grads.dq.nbytes + grads.dk.nbytes + grads.dv.nbytes
    work = peak - returned
    assert work <= 0.15 * scores, f"work space {work / 2**20:.1f} MiB > 15% of 64 MiB"
    assert np.isfinite(grads.dk).all()


def test_backwarddefault_blocks_hold_half_the_forward_block():
    """By default the backward, which keeps P_ij and dP_ij at once, tiles with half the forward's
    block of scores (2**18 against 2**19 scores with all heads); block sizes given to the
    forward are used by both."""
    q = np.ones((2, 8, 1024, 4))
    _, cache = flash_attention_forward(q, q, q)
    assert 16 * cache.block_q * cache.block_k == 2**18
    assert default_blocks((2, 8, 1024, 1024)) == (128, 256)
    _, cache = flash_attention_forward(q, q, q, block_q=64, block_k=32)
    assert (cache.block_q, cache.block_k) == (64, 32)


def test_threads_give_the_same_result():
    """workers > 1 (query blocks in threads, shared dK/dV/dB sums under a lock) gives the
    one-thread result: forward bit for bit, sums over blocks to 1e-13."""
    rng = RNG(9)
    q, k, v = (
        rng.normal(size=(2, 3, 50, 8)),
        rng.normal(size=(2, 3, 40, 8)),
        rng.normal(size=(2, 3, 40, 8)),
    )
    bias = rng.normal(size=(3, 1, 40))
    d_out = rng.normal(size=(2, 3, 50, 8))
    one = flash_attention_forward(q, k, v, attn_mask=bias, is_causal=True, block_q=7, block_k=6)
    two = flash_attention_forward(q, k, v, attn_mask=bias, is_causal=True, block_q=7, block_k=6,
                                  workers=2)  # fmt: skip
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1].lse, two[1].lse)
    g1, g2 = flash_attention_backward(d_out, one[1]), flash_attention_backward(d_out, two[1])
    for name in GRADS:
        np.testing.assert_allclose(getattr(g1, name), getattr(g2, name), rtol=1e-13, atol=1e-13)


def test_default_tiling_differs_between_passes_and_still_equals_the_core():
    """With 64 heads the default forward blocks are 64 x 100 and the backward's 64 x 64 (half the
    scores), neither dividing L = S = 100: out, lse and every gradient (float bias, causal, GQA,
    two threads) still equal the core's to 1e-12."""
    rng = RNG(12)
    q = rng.normal(size=(2, 32, 100, 4))
    k, v = rng.normal(size=(2, 16, 100, 4)), rng.normal(size=(2, 16, 100, 3))
    kwargs = dict(q=q, k=k, v=v, attn_mask=rng.normal(size=(32, 1, 100)), is_causal=True,
                  enable_gqa=True)  # fmt: skip
    flash, core = _run_both(kwargs, workers=2)
    assert (flash[1].block_q, flash[1].block_k) == (64, 64)
    assert default_blocks((2, 32, 100, 100)) == (64, 100)
    _assert_same(flash, core)


class _GuardedSum(np.ndarray):
    """An array whose in-place additions fail unless the lock in ``.guard`` is held."""

    guard = None
    added: list[int] = []

    def __array_finalize__(self, obj):
        self.guard, self.added = getattr(obj, "guard", None), getattr(obj, "added", [])

    def __iadd__(self, other):
        assert self.guard is not None and self.guard.locked(), "a shared sum added without lock"
        self.added.append(1)
        return super().__iadd__(other)


def test_shared_key_gradients_are_added_under_the_lock(monkeypatch):
    """With workers > 1 the threads add their dK_j, dV_j and dB terms into shared sums; every
    such in-place addition happens while the _KeyGrads lock is held (a race would otherwise
    lose terms now and then, which a comparison of results cannot catch reliably)."""
    import numpy_attention.flash as flash

    added: list[int] = []
    base = flash._KeyGrads

    class Guarded(base):
        def __init__(self, **fields):
            super().__init__(**fields)
            for name in ("dk", "dv", "d_bias"):
                arr = getattr(self, name)
                if arr is not None:
                    arr = arr.view(_GuardedSum)
                    arr.guard, arr.added = self.lock, added
                    setattr(self, name, arr)

    monkeypatch.setattr(flash, "_KeyGrads", Guarded)
    rng = RNG(11)
    q, k, v = rng.normal(size=(2, 20, 4)), rng.normal(size=(2, 16, 4)), rng.normal(size=(2, 16, 4))
    bias = rng.normal(size=(20, 16))
    out, cache = flash_attention_forward(q, k, v, attn_mask=bias, block_q=5, block_k=4, workers=2)
    grads = flash_attention_backward(rng.normal(size=out.shape), cache)
    assert len(added) == 3 * 4 * 4  # dK, dV and dB for each of the 4 x 4 blocks
    assert np.isfinite(grads.dk).all() and grads.d_attn_mask.shape == bias.shape


@given(st.lists(st.integers(1, 5000), min_size=2, max_size=5))
@settings(max_examples=40)
def testdefault_blocks_are_bounded_independently_of_L_and_S(shape):
    """The default tiling keeps one block (all heads) at most 2**19 scores, or one 16 x 16 tile
    per head when there are more heads than that allows, and inside L x S: the memory of a
    call does not grow with L x S."""
    shape = tuple(shape)
    *lead, L, S = shape
    heads = int(np.prod(lead))
    bq, bk = default_blocks(shape)
    assert 1 <= bq <= L and 1 <= bk <= S
    assert heads * bq * bk <= max(2**19, heads * 16 * 16)
    assert bq >= min(L, 16) and bk >= min(S, 16)


def test_cache_holds_no_score_sized_array():
    """The cache keeps out (..., L, Ev) and lse (..., L): nothing of size L x S."""
    q = k = v = np.ones((64, 4))
    _, cache = flash_attention_forward(q, k, v, block_q=8, block_k=8)
    arrays = [a for a in vars(cache).values() if isinstance(a, np.ndarray)]
    assert {a.shape for a in arrays} == {(64, 4), (64,)}


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(block_q=0), ValueError, "block_q must be >= 1"),
        (dict(block_k=2.5), TypeError, "block_k must be a positive integer"),
        (dict(workers=0), ValueError, "workers must be >= 1"),
        (dict(is_causal=0.1), TypeError, "dropout_p only as a keyword"),
        (dict(dropout_p=0.1), ValueError, "explicit dropout_mask"),
        (dict(causal_align="top"), ValueError, "causal_align"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    """Block sizes, workers, a dropout rate (not supported) and the core's checks are refused."""
    q = np.ones((3, 2))
    with pytest.raises(error, match=match):
        flash_attention_forward(q, q, q, **kwargs)


def test_backward_refuses_a_wrong_d_out_shape():
    out, cache = flash_attention_forward(np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"d_out has shape \(3, 2\), expected .*\(3, 5\)"):
        flash_attention_backward(np.ones((3, 2)), cache)


@pytest.mark.parametrize("dtype, jump", [(np.float64, 800.0), (np.float32, 200.0)])
def test_rescale_factor_reaches_zero_and_drops_the_old_blocks(dtype, jump):
    """Eq. (5.4)'s gamma = exp(m_old - m_new) lies in [0, 1], not (0, 1] (flash.md, 5.4): it is
    exactly 0 when the row maximum jumps by more than the dtype's exp range between two key
    blocks (row 0: scores 0, then `jump`), and when the row saw no allowed key before (row 1: key
    block 0 masked for it, m_old = -inf). Then l and O^ of the old blocks must be dropped: code
    that kept gamma away from 0 (gamma == 0 -> 1, say) would give key block 0 half the weight."""
    assert dtype(np.exp(dtype(-jump))) == 0  # the premise: gamma underflows to exactly 0
    rng = RNG(11)
    q = np.ones((2, 1), dtype)
    k = np.repeat([0.0, jump], 4)[:, None].astype(dtype)  # key block 0 scores 0, block 1 `jump`
    v = rng.normal(size=(8, 3)).astype(dtype)
    mask = np.ones((2, 8), dtype=bool)
    mask[1, :4] = False  # row 1 sees no key of block 0
    kwargs = dict(q=q, k=k, v=v, attn_mask=mask, scale=1.0)
    out, cache = flash_attention_forward(**kwargs, block_q=2, block_k=4)
    # exp(0 - jump) is 0 in dtype: both rows are the plain average of block 1's values
    want = v[4:].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(out, np.broadcast_to(want, (2, 3)), rtol=1e-6, atol=0)
    np.testing.assert_allclose(cache.lse, jump + np.log(4), rtol=1e-6)
    out_c, _ = attention_forward(**kwargs)
    np.testing.assert_allclose(out, out_c, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_overflowing_scores_are_refused_as_in_the_core():
    """A score that overflows to +-inf must not pass for a mask: ValueError, as the core."""
    q = np.full((2, 2), 1e200)
    with pytest.raises(ValueError, match="overflow"):
        attention_forward(q, q, np.ones((2, 1)))
    with pytest.raises(ValueError, match="overflow"):
        flash_attention_forward(q, q, np.ones((2, 1)))


# ---------------------------------------------------------------------------
# Optional: against torch's SDPA directly
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_tiled_matches_torch_sdpa_over_many_blocks(align):
    """Several blocks each way (70 queries, 90 keys, blocks of 16 x 32), GQA, causal, a float
    bias broadcast over heads: out, dq, dk, dv and dB equal torch's float64 SDPA to 1e-12."""
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    rng = RNG(10)
    q, k, v = (rng.normal(size=(2, n, m, 16)) for n, m in ((4, 70), (2, 90), (2, 90)))
    bias = rng.normal(size=(2, 1, 70, 90))
    out, cache = flash_attention_forward(q, k, v, attn_mask=bias, is_causal=True,
                                         causal_align=align, enable_gqa=True, block_q=16,
                                         block_k=32, workers=2)  # fmt: skip
    d_out = rng.normal(size=out.shape)
    g = flash_attention_backward(d_out, cache)

    t = {n: torch.tensor(a, requires_grad=True) for n, a in (("q", q), ("k", k), ("v", v))}
    t_bias = torch.tensor(bias, requires_grad=True)
    d = 90 - 70 if align == "bottom_right" else 0  # Eq. (2.6): key j visible when j <= i + d
    causal = torch.ones(70, 90, dtype=torch.bool).tril(diagonal=d)
    t_mask = t_bias.masked_fill(~causal, float("-inf"))
    t_out = torch.nn.functional.scaled_dot_product_attention(
        t["q"], t["k"], t["v"], attn_mask=t_mask, enable_gqa=True
    )
    t_out.backward(torch.tensor(d_out))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=1e-12)
    for name, ref in (("dq", t["q"]), ("dk", t["k"]), ("dv", t["v"]), ("d_attn_mask", t_bias)):
        np.testing.assert_allclose(getattr(g, name), ref.grad.numpy(), rtol=0, atol=1e-12,
                                   err_msg=name)  # fmt: skip


def test_threads_work_without_threadpoolctl(monkeypatch):
    """threadpoolctl is optional: without it, workers > 1 still runs (BLAS keeps its threads)."""
    import sys

    from numpy_attention import flash

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import now raises ImportError
    flash._blas_controller.cache_clear()
    try:
        assert flash._blas_controller() is None
        q = RNG(11).normal(size=(2, 20, 4))
        out, _ = flash_attention_forward(q, q, q, block_q=3, workers=2)
        np.testing.assert_allclose(out, attention_forward(q, q, q)[0], atol=1e-14)
    finally:
        flash._blas_controller.cache_clear()


@pytest.mark.parametrize(
    "variant",
    [{}, dict(is_causal=True), dict(window=(2, 1), softcap=3.0, sinks=np.array([0.5, -1.0]))],
    ids=["plain", "causal", "window-softcap-sinks"],
)
def test_tiled_dropout_from_a_given_mask_equals_the_core(variant):
    """FlashAttention's test grid has dropout with a given mask: the tiled functions read the
    keep-mask block by block and agree with the core to 1e-12, forward and backward (GQA,
    blocks that do not divide L or S)."""
    rng = RNG(21)
    q, k, v = (
        rng.normal(size=(2, 2, 7, 4)),
        rng.normal(size=(2, 1, 9, 4)),
        rng.normal(size=(2, 1, 9, 3)),
    )
    keep = rng.random((2, 2, 7, 9)) > 0.3
    d_out = rng.normal(size=(2, 2, 7, 3))
    kw = dict(enable_gqa=True, dropout_p=0.3, dropout_mask=keep, **variant)
    ref_out, ref_cache = attention_forward(q, k, v, **kw)
    out, cache = flash_attention_forward(q, k, v, block_q=3, block_k=4, **kw)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-12)
    ref, got = attention_backward(d_out, ref_cache), flash_attention_backward(d_out, cache)
    for name in ("dq", "dk", "dv", "d_sinks"):
        if getattr(ref, name) is not None:
            np.testing.assert_allclose(getattr(got, name), getattr(ref, name), atol=1e-12,
                                       err_msg=name)  # fmt: skip
