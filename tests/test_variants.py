"""The variant keywords of the core and tiled functions: chapter 8 of the docs (docs/variants.md).

``window``, ``softcap``, ``alibi_slopes``, ``sinks``, ``chunk_size``, ``sink_tokens``,
``mask_mod``, ``score_mod`` and ``score_mod_grad`` on ``attention_forward`` /
``scaled_dot_product_attention`` / ``flash_attention_forward``, with ``AttentionGrads.d_sinks``:

- agreement with the loop oracle (tests/oracles.py) to 1e-12 in float64, forward (out, P, lse)
  and backward (dq, dk, dv, d_attn_mask, d_sinks), core and tiled (small odd blocks);
- float64 finite differences of every new gradient (softcap, sinks, score_mod through
  score_mod_grad, the float mask under softcap), core and tiled;
- properties: each variant at its neutral value equals no variant; a mask_mod expressing causal
  equals is_causal; fully masked rows; ALiBi's other forms under causal masking; the windows of
  other libraries through variants.py; blocks outside the window or chunk are skipped; the memory
  of a windowed tiled call at L = S = 16384;
- bad input: each a ValueError or TypeError naming the argument;
- the torch float64 reference (tests/torch_reference.py), optional.
"""

import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from optional import TORCH_MISSING
from oracles import attention_backward_oracle, attention_oracle, visibility_oracle
from strategies import MASK_MODS, SCORE_MODS, dims, seeds, variant_cases, windows
from test_variants_conventions import (
    _cudnn_ref_visible,
    _fa_ref_visible,
    _hf_sliding_window_causal,
    _jax_get_window_mask,
)
from variant_cases import NAMES, named_case

from numpy_attention.attention import (
    attention_backward,
    attention_forward,
    scaled_dot_product_attention,
)
from numpy_attention.flash import flash_attention_backward, flash_attention_forward
from numpy_attention.testing import gradcheck
from numpy_attention.variants import (
    alibi_slopes,
    window_from_cudnn,
    window_from_flash,
    window_from_hf,
    window_from_jax,
)

RNG = np.random.default_rng
GRADS = ("dq", "dk", "dv", "d_attn_mask", "d_sinks")
TOL = 1e-12


def _no_dropout(kw):
    kw = dict(kw)
    kw.pop("dropout_p", None)
    kw.pop("dropout_mask", None)
    return kw


def _run(kind, kw, seed=0, block_q=3, block_k=4, workers=None):
    """``(out, lse, P or None, grads)`` of the core (``"core"``) or tiled (``"tiled"``) path."""
    if kind == "core":
        out, cache = attention_forward(**kw)
        d_out = RNG(seed).normal(size=out.shape)
        return out, cache.lse, cache.P, attention_backward(d_out, cache)
    out, cache = flash_attention_forward(**_no_dropout(kw), block_q=block_q, block_k=block_k,
                                         workers=workers)  # fmt: skip
    d_out = RNG(seed).normal(size=out.shape)
    return out, cache.lse, None, flash_attention_backward(d_out, cache)


def _assert_grads(grads, want, tol=TOL):
    for name in GRADS:
        got, expect = getattr(grads, name), want[name]
        if expect is None:
            assert got is None, name
            continue
        assert got.shape == expect.shape, (name, got.shape, expect.shape)
        np.testing.assert_allclose(got, expect, rtol=tol, atol=tol, err_msg=name)


def _assert_matches_oracle(kind, kw, seed=0, **tiling):
    out, lse, P, grads = _run(kind, kw, seed, **tiling)
    o, P_o, lse_o = attention_oracle(**kw)
    assert out.shape == o.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, o, rtol=TOL, atol=TOL, err_msg="out")
    np.testing.assert_allclose(lse, lse_o, rtol=TOL, atol=TOL, err_msg="lse")  # -inf where -inf
    if P is not None:
        np.testing.assert_allclose(P, P_o, rtol=TOL, atol=TOL, err_msg="P")
    d_out = RNG(seed).normal(size=out.shape)
    _assert_grads(grads, attention_backward_oracle(d_out, **kw))


def _assert_same_calls(a, b, tol=TOL, lse=True, skip=()):
    """Two ``_run`` results agree on out, lse (if asked) and every gradient not in ``skip``."""
    np.testing.assert_allclose(a[0], b[0], rtol=tol, atol=tol, err_msg="out")
    if lse:
        np.testing.assert_allclose(a[1], b[1], rtol=tol, atol=tol, err_msg="lse")
    for name in set(GRADS) - set(skip):
        x, y = getattr(a[3], name), getattr(b[3], name)
        if y is None or x is None:
            assert x is None and y is None, name
            continue
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol, err_msg=name)


# ---------------------------------------------------------------------------
# Agreement with the loop oracle
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_core_matches_loop_oracle_on_each_variant_and_model_combination(name):
    """Eqs. (8.1)-(8.15): out, P, lse and dq, dk, dv, d_attn_mask, d_sinks of attention_forward /
    attention_backward equal the loop oracle to 1e-12 (Gemma 2, gpt-oss, Mistral, Llama 4 style
    combinations, ALiBi bottom-right with L != S, dropout with a given keep-mask)."""
    _assert_matches_oracle("core", named_case(name))


@pytest.mark.parametrize("name", [n for n in NAMES if "dropout" not in n])
def test_tiled_matches_loop_oracle_on_each_variant_with_odd_blocks(name):
    """The same for flash_attention_forward / _backward with blocks of 3 queries x 4 keys
    (partial blocks at both ends, windows and chunks crossing block edges)."""
    _assert_matches_oracle("tiled", named_case(name), block_q=3, block_k=4)


@settings(max_examples=40)
@given(variant_cases(dropout=False) | variant_cases(dropout=True), seeds)
def test_core_matches_loop_oracle_on_random_combinations(case, seed):
    """Random combinations of every variant with bool/float masks, causal in either alignment,
    GQA, broadcast batch and heads, L != S, E != Ev, with and without dropout."""
    _assert_matches_oracle("core", case.kwargs(), seed)


@settings(max_examples=40)
@given(variant_cases(), seeds, dims(1, 5), dims(1, 5), st.sampled_from([None, 2]))
def test_tiled_matches_loop_oracle_on_random_combinations(case, seed, bq, bk, workers):
    """The same for the tiled functions, with random block sizes and one or two threads."""
    _assert_matches_oracle("tiled", case.kwargs(), seed, block_q=bq, block_k=bk, workers=workers)


@settings(max_examples=20)
@given(variant_cases(dropout=True))
def test_scaled_dot_product_attention_returns_attention_forwards_output(case):
    """The output-only function takes the same variant keywords and gives the same output."""
    kw = case.kwargs()
    np.testing.assert_array_equal(scaled_dot_product_attention(**kw), attention_forward(**kw)[0])


def test_d_sinks_is_none_without_sinks_in_core_and_tiled():
    """AttentionGrads gains d_sinks: None when no sinks were given (as d_attn_mask without a
    float mask), an (Hq,) array when they were."""
    kw = named_case("window_both_sides_top_left")
    for kind in ("core", "tiled"):
        assert _run(kind, kw)[3].d_sinks is None
        grads = _run(kind, dict(kw, sinks=np.zeros(4)))[3]
        assert grads.d_sinks.shape == (4,) and grads.d_sinks.dtype == np.float64


# ---------------------------------------------------------------------------
# Finite differences (every new gradient, core and tiled)
# ---------------------------------------------------------------------------


def _tiled_forward(**kw):
    return flash_attention_forward(**kw, block_q=2, block_k=3)


PATHS = [(attention_forward, attention_backward), (_tiled_forward, flash_attention_backward)]
PATH_IDS = ["core", "tiled"]


def _fd_inputs(r, **extra):
    q, k, v = r.normal(size=(2, 4, 5, 3)), r.normal(size=(2, 2, 6, 3)), r.normal(size=(2, 2, 6, 2))
    return dict(q=q, k=k, v=v, enable_gqa=True, **extra)


@pytest.mark.parametrize("forward, backward", PATHS, ids=PATH_IDS)
def test_gradcheck_softcap(forward, backward):
    """Eq. (8.14) (tanh'): dq, dk through c tanh(s / c) with a small cap that bends every score,
    window and causal too, match central finite differences."""
    inputs = _fd_inputs(RNG(20), softcap=0.8, window=(2, 1), is_causal=True)
    inputs["q"] *= 3
    report = gradcheck(forward, inputs, backward, wrt=("q", "k", "v"))
    assert report.passed


@pytest.mark.parametrize("forward, backward", PATHS, ids=PATH_IDS)
def test_gradcheck_sinks(forward, backward):
    """Eq. (8.11): d_sinks (and dq, dk, dv with the sink in the denominator) match finite
    differences, with a fully masked row (which attends only to its sink) and ALiBi."""
    r = RNG(21)
    keep = r.random((5, 6)) < 0.7
    keep[3] = False
    inputs = _fd_inputs(r, sinks=r.normal(size=4), attn_mask=keep, alibi_slopes=alibi_slopes(4))
    report = gradcheck(forward, inputs, backward, wrt=("q", "k", "v", "sinks"))
    assert report.passed and report.checked["sinks"] == 4


@pytest.mark.parametrize("forward, backward", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("mod", sorted(SCORE_MODS))
def test_gradcheck_score_mod_through_score_mod_grad(forward, backward, mod):
    """Eq. (8.13): dq, dk go through score_mod by the chain rule with score_mod_grad."""
    score_mod, score_mod_grad = SCORE_MODS[mod]
    inputs = _fd_inputs(RNG(22), score_mod=score_mod, score_mod_grad=score_mod_grad)
    report = gradcheck(forward, inputs, backward, wrt=("q", "k", "v"))
    assert report.passed


@pytest.mark.parametrize("forward, backward", PATHS, ids=PATH_IDS)
def test_gradcheck_float_mask_under_softcap(forward, backward):
    """Eq. (8.12): the float mask is added after the cap, so its gradient is dS~ (no tanh'
    factor); broadcast over heads it is summed to its shape. With sinks and a score_mod too."""
    r = RNG(23)
    mod, grad = SCORE_MODS["head_scale"]
    inputs = _fd_inputs(r, softcap=1.2, attn_mask=r.normal(size=(1, 5, 6)), sinks=r.normal(size=4),
                        score_mod=mod, score_mod_grad=grad)  # fmt: skip
    report = gradcheck(forward, inputs, backward, wrt=("q", "k", "attn_mask", "sinks"))
    assert report.passed


def test_gradcheck_catches_a_missing_tanh_derivative():
    """The finite-difference check can fail: a score_mod_grad of 1 for a tanh score_mod (the
    softcap's derivative left out) is detected."""
    c = 0.8

    def cap(s, b, h, i, j):
        return c * np.tanh(s / c)

    def wrong_grad(s, b, h, i, j):
        return np.ones_like(s)

    inputs = _fd_inputs(RNG(24), score_mod=cap, score_mod_grad=wrong_grad)
    inputs["q"] *= 3
    report = gradcheck(attention_forward, inputs, attention_backward, wrt=("q",),
                       raise_on_failure=False)  # fmt: skip
    assert not report.passed


# ---------------------------------------------------------------------------
# Properties: neutral values, equivalent forms
# ---------------------------------------------------------------------------

KINDS = ["core", "tiled"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15)
@given(variant_cases(kinds=("window", "alibi", "sinks", "score_mod")), seeds)
def test_softcap_with_a_huge_cap_equals_no_softcap(kind, case, seed):
    """c tanh(s / c) = s - s^3 / (3 c^2) + ...: at c = 1e9 the cap moves no score by more than
    1e-17 relative, so out, lse and every gradient equal those without softcap (1e-12)."""
    kw = case.kwargs()
    _assert_same_calls(_run(kind, dict(kw, softcap=1e9), seed), _run(kind, kw, seed))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15)
@given(variant_cases(kinds=("window", "softcap", "alibi", "chunk", "mask_mod")), seeds)
def test_sinks_at_minus_ten_thousand_equal_no_sinks(kind, case, seed):
    """A sink logit of -1e4 stands for -inf: exp(-1e4 - lse) underflows to exactly 0 in float64
    (the smallest subnormal is exp(-744.4)), so out, every gradient and the lse of each row that
    sees a key equal those without sinks, and d_sinks is 0. A row that sees no key has lse = the
    sink logit, -1e4, instead of -inf. (-inf itself is not passed: the API may refuse a
    non-finite sink, and an online softmax rescaled by exp(-inf - (-inf)) would give NaN.)"""
    kw = case.kwargs()
    assume(len(case.scores_shape) >= 3)
    Hq = case.scores_shape[-3]
    with_sinks, without = _run(kind, dict(kw, sinks=np.full(Hq, -1e4)), seed), _run(kind, kw, seed)
    _assert_same_calls(with_sinks, without, lse=False, skip=("d_sinks",))
    assert without[3].d_sinks is None and np.all(with_sinks[3].d_sinks == 0)
    live = without[1] > -np.inf
    np.testing.assert_allclose(with_sinks[1][live], without[1][live], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(with_sinks[1][~live], -1e4, rtol=TOL, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15)
@given(variant_cases(kinds=("softcap", "alibi", "sinks", "chunk", "mask_mod", "score_mod")), seeds)
def test_window_none_none_equals_no_window(kind, case, seed):
    """window=(None, None): both sides unbounded, every key in the window."""
    kw = case.kwargs()
    _assert_same_calls(_run(kind, dict(kw, window=(None, None)), seed), _run(kind, kw, seed))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15)
@given(variant_cases(kinds=("window", "softcap", "sinks", "sink_tokens", "score_mod")), seeds)
def test_chunk_size_of_at_least_L_plus_S_equals_no_chunk(kind, case, seed):
    """One chunk holds every key and every diagonal i + d in [0, S): chunk_size >= L + S is no
    chunk. (With bottom-right alignment and L > S the rows i < L - S have i + d < 0, in no
    key's chunk; causal masks them anyway, so those cases are drawn only with is_causal.)"""
    L, S = case.scores_shape[-2:]
    assume(case.causal_align == "top_left" or L <= S or case.is_causal)
    kw = case.kwargs()
    _assert_same_calls(_run(kind, dict(kw, chunk_size=L + S), seed), _run(kind, kw, seed))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15)
@given(variant_cases(kinds=("window", "softcap", "sinks", "chunk", "mask_mod")), seeds)
def test_alibi_with_zero_slopes_equals_no_alibi(kind, case, seed):
    """Zero slopes add -0 * |i + d - j| = 0 to every score."""
    assume(len(case.scores_shape) >= 3)
    kw = case.kwargs()
    zero = np.zeros(case.scores_shape[-3])
    _assert_same_calls(_run(kind, dict(kw, alibi_slopes=zero), seed), _run(kind, kw, seed))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15)
@given(variant_cases(kinds=("window", "softcap", "alibi", "sinks", "chunk", "score_mod")), seeds)
def test_a_mask_mod_expressing_causal_equals_is_causal(kind, case, seed):
    """mask_mod(b, h, i, j) = (j <= i + d) in place of is_causal=True (same d), either alignment."""
    L, S = case.scores_shape[-2:]
    d = 0 if case.causal_align == "top_left" else S - L
    kw = dict(case.kwargs(), is_causal=False)

    def causal(b, h, i, j):
        return j <= i + d

    _assert_same_calls(_run(kind, dict(kw, mask_mod=causal), seed),
                       _run(kind, dict(kw, is_causal=True), seed))  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cap", [0.5, 3.0])
def test_softcap_as_a_score_mod_equals_softcap(kind, cap):
    """Eqs. (8.2)-(8.3): softcap=c and score_mod = c tanh(s / c) with score_mod_grad =
    1 - tanh^2(s / c) are the same forward and backward (flex_attention's way of capping)."""
    kw = named_case("gemma2_softcap_window_gqa")
    kw = dict(kw, softcap=None)

    def mod(s, b, h, i, j):
        return cap * np.tanh(s / cap)

    def mod_grad(s, b, h, i, j):
        return 1 - np.tanh(s / cap) ** 2

    as_mod = _run(kind, dict(kw, score_mod=mod, score_mod_grad=mod_grad))
    _assert_same_calls(_run(kind, dict(kw, softcap=cap)), as_mod)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L, S", [(4, 7), (7, 4), (6, 6)])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_alibi_key_index_and_signed_forms_agree_under_causal_masking(kind, L, S, align):
    """Under causal masking (j <= i + d) FlashAttention's -m |i + d - j|, its causal key-index
    forms m (j - S + 1) (test reference) and m j (kernel), and cuDNN's signed (j - i) m differ by
    a constant per row (docs/variants.md, "ALiBi forms"), which softmax ignores: the same out
    and gradients, and lse shifted by exactly that constant."""
    r = RNG(30)
    q, k, v = r.normal(size=(2, 3, L, 4)), r.normal(size=(2, 3, S, 4)), r.normal(size=(2, 3, S, 2))
    m = alibi_slopes(3)[:, None, None]
    i, j = np.arange(L)[:, None], np.arange(S)[None, :]
    d = 0 if align == "top_left" else S - L
    base = dict(q=q, k=k, v=v, is_causal=True, causal_align=align)
    ours = _run(kind, dict(base, alibi_slopes=alibi_slopes(3)))
    for bias, shift in [(m * (j - S + 1), m * (S - 1 - i - d)), (m * j, -m * (i + d)),
                        (m * (j - i), -m * d + 0 * i)]:  # fmt: skip
        form = _run(kind, dict(base, attn_mask=np.broadcast_to(bias, (3, L, S)).copy()))
        _assert_same_calls(ours, form, lse=False, skip=("d_attn_mask",))
        live = form[1] > -np.inf
        expect = (form[1] + shift[..., 0])[live]
        np.testing.assert_allclose(ours[1][live], expect, rtol=TOL, atol=1e-11)


@settings(max_examples=30)
@given(dims(1, 7), dims(1, 7), windows(), st.none() | dims(1, 4), st.integers(0, 2),
       st.booleans(), st.sampled_from(["top_left", "bottom_right"]), seeds)  # fmt: skip
def test_weights_are_positive_exactly_on_the_visible_keys(L, S, window, chunk, n, causal, align,
                                                          seed):  # fmt: skip
    """Eqs. (8.6)-(8.8): the support of P (small scores: no underflow) is the visibility rule
    causal AND ((window AND chunk) OR j < sink_tokens), as drawn by the loop oracle."""
    r = RNG(seed)
    q, k, v = (0.1 * r.normal(size=(2, n_, 3)) for n_ in (L, S, S))
    kw = dict(is_causal=causal, causal_align=align, window=window, chunk_size=chunk, sink_tokens=n)
    _, cache = attention_forward(q, k, v, **kw)
    want = visibility_oracle(L, S, **kw)
    np.testing.assert_array_equal(cache.P > 0, np.broadcast_to(want, (2, L, S)))


def test_mod_batch_index_flattens_the_batch_axes_in_c_order():
    """With batch axes (2, 3), flex's b is the flattened index b0 * 3 + b1: a mask_mod hiding key
    0 only for b == 4 hides it exactly for batch index (1, 1)."""
    r = RNG(31)
    q, k, v = r.normal(size=(2, 3, 2, 4, 3)), r.normal(size=(2, 3, 2, 5, 3)), r.normal(size=(5, 2))

    def hide(b, h, i, j):
        return (b != 4) | (j != 0)

    _, cache = attention_forward(q, k, v, mask_mod=hide)
    zero = cache.P[..., 0] == 0
    assert zero[1, 1].all() and zero.sum() == zero[1, 1].size


def test_mods_receive_integer_indices_and_the_tiled_path_calls_them_per_block():
    """mask_mod and score_mod get integer index arrays (b, h, i, j) that broadcast to the scores;
    in the tiled path no call covers more than one block of scores (B * Hq * bq * bk entries)."""
    r = RNG(32)
    q, k, v = (r.normal(size=s) for s in [(2, 4, 9, 3), (2, 2, 11, 3), (2, 2, 11, 2)])
    seen = []

    def record(*idx):
        assert all(np.asarray(a).dtype.kind in "iu" for a in idx[-4:]), [type(a) for a in idx]
        seen.append(int(np.prod(np.broadcast_shapes(*(np.shape(a) for a in idx)))))

    def mask_mod(b, h, i, j):
        record(b, h, i, j)
        return (i + j) % 4 != 3

    def score_mod(s, b, h, i, j):
        record(s, b, h, i, j)
        return s + 0.1 * h

    def score_mod_grad(s, b, h, i, j):
        return np.ones_like(s)

    kw = dict(q=q, k=k, v=v, enable_gqa=True, mask_mod=mask_mod, score_mod=score_mod,
              score_mod_grad=score_mod_grad)  # fmt: skip
    core = _run("core", kw)
    seen.clear()
    tiled = _run("tiled", kw, block_q=3, block_k=4)
    assert seen and max(seen) <= 2 * 4 * 3 * 4
    _assert_same_calls(tiled, core)


# ---------------------------------------------------------------------------
# Fully masked rows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_fully_masked_rows_give_zero_output_minus_inf_lse_and_zero_gradients(kind):
    """Rows that see no key (chunk + bottom-right with L > S puts rows 0..L-S-1 before every key;
    a window beyond the keys; a mask_mod): out 0, lse -inf, their dq 0, no NaN."""
    r = RNG(33)
    L, S = 7, 3
    q, k, v = r.normal(size=(2, L, 3)), r.normal(size=(2, S, 3)), r.normal(size=(2, S, 2))

    def hide_row_5(b, h, i, j):
        return i != 5

    kw = dict(q=q, k=k, v=v, chunk_size=2, causal_align="bottom_right", mask_mod=hide_row_5)
    out, lse, _, grads = _run(kind, kw)
    dead = [0, 1, 2, 3, 5]  # i + d = i - 4 < 0 for i < 4; row 5 by the mask_mod
    assert np.all(out[:, dead] == 0) and np.all(lse[:, dead] == -np.inf)
    assert np.all(grads.dq[:, dead] == 0)
    assert np.all(np.isfinite(lse[:, [4, 6]]))
    for a in (out, grads.dq, grads.dk, grads.dv):
        assert not np.isnan(a).any()


@pytest.mark.parametrize("kind", KINDS)
def test_fully_masked_rows_with_sinks_attend_only_to_the_sink(kind):
    """With sinks such a row gives out 0 and lse = its head's sink logit; its dq is 0, and it
    adds nothing to d_sinks (its D = rowsum(dO * O) is 0), so d_sinks equals that of the live
    rows alone, Eq. (8.11) computed from the cache's lse."""
    r = RNG(34)
    q, k, v = r.normal(size=(3, 6, 4)), r.normal(size=(3, 5, 4)), r.normal(size=(3, 5, 2))
    keep = r.random((3, 6, 5)) < 0.7
    keep[:, 2] = False
    keep[1, 4] = False
    sinks = r.normal(size=3)
    out, lse, _, grads = _run(kind, dict(q=q, k=k, v=v, attn_mask=keep, sinks=sinks))
    np.testing.assert_allclose(lse[:, 2], sinks, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(lse[1, 4], sinks[1], rtol=TOL, atol=TOL)
    assert np.all(out[:, 2] == 0) and np.all(grads.dq[:, 2] == 0) and np.all(out[1, 4] == 0)
    d_out = RNG(0).normal(size=out.shape)
    D = np.sum(d_out * out, axis=-1)
    p_sink = np.exp(sinks[:, None] - lse)
    np.testing.assert_allclose(grads.d_sinks, -np.sum(p_sink * D, axis=-1), rtol=TOL, atol=TOL)


# ---------------------------------------------------------------------------
# Other libraries' windows, through variants.py, on the whole attention
# ---------------------------------------------------------------------------


def _same_as_bool_mask(kw, window, align, mask, is_causal=False):
    """attention with ``window`` equals attention with the source's mask as a bool attn_mask."""
    got = _run("core", dict(kw, window=window, causal_align=align, is_causal=is_causal))
    want = _run("core", dict(kw, attn_mask=mask))
    _assert_same_calls(got, want)
    tiled = _run("tiled", dict(kw, window=window, causal_align=align, is_causal=is_causal))
    _assert_same_calls(tiled, want)


@pytest.mark.parametrize("L, S", [(3, 8), (8, 3)])
def test_converted_windows_give_the_sources_attention(L, S):
    """FlashAttention (2, 1) and (-1, 0) with causal, Hugging Face's sliding_window 3, JAX's
    local_window_size (1, 2), cuDNN's bounds (3, 0) bottom-right: attention with our converted
    window equals attention under each source's own mask (tests/test_variants_conventions.py)."""
    r = RNG(35)
    kw = dict(q=r.normal(size=(2, L, 3)), k=r.normal(size=(2, S, 3)), v=r.normal(size=(2, S, 2)))
    for ws in [(2, 1), (-1, 0)]:
        _same_as_bool_mask(kw, *window_from_flash(ws), _fa_ref_visible(L, S, ws, True), True)
    if L <= S:
        _same_as_bool_mask(kw, *window_from_hf(3), _hf_sliding_window_causal(L, S, 3))
    _same_as_bool_mask(kw, *window_from_jax((1, 2)), _jax_get_window_mask(L, S, (1, 2)))
    cudnn, zeroed = _cudnn_ref_visible(L, S, 3, 0, top_left=False)
    assert not zeroed.any() or L > S
    if not zeroed.any():
        _same_as_bool_mask(kw, *window_from_cudnn(3, 0, "bottom_right"), cudnn)


# ---------------------------------------------------------------------------
# The tiled path: skipped blocks, memory
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, clean_from",
    [(dict(window=(2, 0)), 8), (dict(chunk_size=4, is_causal=True), 4)],
    ids=["window", "chunk"],
)
def test_blocks_outside_the_window_or_chunk_are_never_computed(variant, clean_from):
    """NaN in the values of keys 0..3 reaches every output row in the core (0 * NaN in P V); in
    the tiled forward with 4 x 4 blocks only the rows of query blocks whose window (2, 0) or
    chunk of 4 reaches key block [0, 4): rows from ``clean_from`` on stay finite."""
    r = RNG(36)
    q, k, v = r.normal(size=(16, 3)), r.normal(size=(16, 3)), r.normal(size=(16, 2))
    v[:4] = np.nan
    assert np.isnan(attention_forward(q, k, v, **variant)[0]).all()
    out, _ = flash_attention_forward(q, k, v, block_q=4, block_k=4, **variant)
    assert not np.isnan(out[clean_from:]).any() and np.isnan(out[:4]).all()


def test_windowed_tiled_call_at_16384_tokens_stays_under_64_mib():
    """window=(64, 0) at L = S = 16384 in float64 (one score matrix is 2 GiB, a bool mask of it
    256 MiB): forward and backward allocate at most 64 MiB beyond the inputs (tracemalloc), and
    agree with a direct float64 formula on a few rows."""
    rng = RNG(37)
    L = S = 16384
    q, k, v = (rng.normal(size=(1, 1, n, 16)) for n in (L, S, S))
    d_out = rng.normal(size=(1, 1, L, 16))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out, cache = flash_attention_forward(q, k, v, window=(64, 0))
        grads = flash_attention_backward(d_out, cache)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.1f} MiB >= 64 MiB"
    for i in [0, 63, 64, 9000, L - 1]:
        j = np.arange(max(0, i - 64), i + 1)
        s = q[0, 0, i] @ k[0, 0, j].T / 4.0
        p = np.exp(s - s.max())
        np.testing.assert_allclose(out[0, 0, i], p @ v[0, 0, j] / p.sum(), rtol=0, atol=1e-12)
    assert grads.dq.shape == q.shape and not np.isnan(grads.dk).any()


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _bad_mask_mod_float(b, h, i, j):
    return (j <= i) * 1.0


def _bad_mask_mod_shape(b, h, i, j):
    return np.ones((7, 9), dtype=bool)


BAD = [
    (dict(window=(-1, 0)), ValueError, "window"),
    (dict(window=(0, -2)), ValueError, "window"),
    (dict(window=(1.5, 0)), TypeError, "window"),
    (dict(softcap=0.0), ValueError, "softcap"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(softcap=np.inf), ValueError, "softcap"),
    (dict(softcap=np.nan), ValueError, "softcap"),
    (dict(softcap="30"), TypeError, "softcap"),
    (dict(alibi_slopes=np.ones(3)), ValueError, "alibi_slopes"),
    (dict(alibi_slopes=np.ones((3, 4))), ValueError, "alibi_slopes"),
    (dict(sinks=np.ones(5)), ValueError, "sinks"),
    (dict(sinks=np.ones((2, 4))), ValueError, "sinks"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(chunk_size=2.5), TypeError, "chunk_size"),
    (dict(sink_tokens=-1), ValueError, "sink_tokens"),
    (dict(mask_mod=_bad_mask_mod_float), TypeError, "mask_mod"),
    (dict(mask_mod=_bad_mask_mod_shape), ValueError, "mask_mod"),
]
BAD_IDS = ["window_left_negative", "window_right_negative", "window_float", "softcap_zero",
           "softcap_negative", "softcap_inf", "softcap_nan", "softcap_str", "slopes_wrong_heads",
           "slopes_wrong_batch", "sinks_wrong_heads", "sinks_not_1d", "chunk_zero", "chunk_float",
           "sink_tokens_negative", "mask_mod_float", "mask_mod_shape"]  # fmt: skip


def _bad_qkv():
    r = RNG(38)  # batch 2, Hq = 4, Hkv = 2, L = 3, S = 5
    return r.normal(size=(2, 4, 3, 2)), r.normal(size=(2, 2, 5, 2)), r.normal(size=(2, 2, 5, 2))


@pytest.mark.parametrize("kwargs, error, match", BAD, ids=BAD_IDS)
@pytest.mark.parametrize(
    "fn", [attention_forward, scaled_dot_product_attention, flash_attention_forward],
    ids=["attention_forward", "sdpa", "flash_attention_forward"],
)  # fmt: skip
def test_bad_variant_arguments_raise_errors_naming_them(fn, kwargs, error, match):
    """A negative window side, softcap <= 0 or non-finite, slopes or sinks of the wrong shape,
    chunk_size < 1, negative sink_tokens, a mask_mod returning a non-bool or a wrongly shaped
    array: a TypeError (wrong kind) or ValueError (wrong value) whose message names it."""
    q, k, v = _bad_qkv()
    with pytest.raises(error, match=match) as info:
        fn(q, k, v, enable_gqa=True, **kwargs)
    assert "unexpected keyword" not in str(info.value)  # the keyword exists, its value is refused


@pytest.mark.parametrize("forward, backward", PATHS, ids=PATH_IDS)
def test_score_mod_without_its_gradient_runs_forward_but_refuses_the_backward(forward, backward):
    """score_mod alone is enough for a forward (equal to the oracle's); asking for the backward
    without score_mod_grad is refused with an error naming score_mod_grad."""
    q, k, v = _bad_qkv()
    mod = SCORE_MODS["quadratic"][0]
    out, cache = forward(q=q, k=k, v=v, enable_gqa=True, score_mod=mod)
    np.testing.assert_allclose(out, attention_oracle(q, k, v, enable_gqa=True, score_mod=mod)[0],
                               rtol=TOL, atol=TOL)  # fmt: skip
    with pytest.raises((ValueError, TypeError), match="score_mod_grad") as info:
        backward(np.ones_like(out), cache)
    assert "unexpected keyword" not in str(info.value)


# ---------------------------------------------------------------------------
# Optional: against the eager torch float64 reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_api_matches_torch_reference(name):
    """Our core (and tiled, without dropout) out, lse and gradients equal the eager torch float64
    reference with autograd (tests/torch_reference.py) to 1e-12. Skipped without torch."""
    pytest.importorskip("torch", reason=TORCH_MISSING)
    from torch_reference import reference

    kw = named_case(name)
    kinds = ["core"] if "dropout_p" in kw else ["core", "tiled"]
    for kind in kinds:
        out, lse, P, grads = _run(kind, kw)
        ref = reference(RNG(0).normal(size=out.shape), **kw)
        np.testing.assert_allclose(out, ref["out"], rtol=TOL, atol=TOL, err_msg=kind)
        np.testing.assert_allclose(lse, ref["lse"], rtol=TOL, atol=TOL, err_msg=kind)
        _assert_grads(grads, ref)


def test_mask_mods_are_valid_for_the_mods_table():
    """The shared mask_mods return bool arrays broadcasting to the scores (a guard on the test
    table itself, so that a failure above is the package's)."""
    i, j = np.arange(3)[:, None], np.arange(5)[None, :]
    b, h = np.arange(2)[:, None, None, None], np.arange(4)[:, None, None]
    for mod in MASK_MODS.values():
        m = np.asarray(mod(b, h, i, j))
        assert m.dtype == np.bool_ and np.broadcast_shapes(m.shape, (2, 4, 3, 5)) == (2, 4, 3, 5)
