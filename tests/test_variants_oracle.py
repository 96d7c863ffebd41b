"""The two independent references of the variants agree: the loop oracle and eager torch.

tests/oracles.py computes every variant of docs/variants.md one score at a time with math.exp
and math.tanh, its backward entry by entry from the softmax Jacobian (the sink as one more
column); tests/torch_reference.py computes them vectorized in torch float64 (modelled on
FlashAttention's ``attention_ref`` and gpt-oss's eager sink attention), its gradients by
autograd. They share no code, so agreement to 1e-12 on out, P, lse and every gradient (dq, dk,
dv, the float mask's, the sinks') checks both before the package's implementation is compared
with them (tests/test_variants.py). Skipped without torch.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from oracles import attention_backward_oracle, attention_oracle, visibility_oracle
from strategies import MASK_MODS, SCORE_MODS, seeds, variant_cases

torch = pytest.importorskip("torch")
from torch_reference import reference  # noqa: E402

RNG = np.random.default_rng
QUANTITIES = ("out", "P", "lse", "dq", "dk", "dv", "d_attn_mask", "d_sinks")


def _qkv(r, Hq=4, Hkv=4, L=4, S=6, E=3, Ev=2, B=(2,), mag=1.0):
    return (r.normal(scale=mag, size=B + (Hq, L, E)), r.normal(scale=mag, size=B + (Hkv, S, E)),
            r.normal(size=B + (Hkv, S, Ev)))  # fmt: skip


def _case(name):
    """Named cases: each variant alone and the combinations of today's models."""
    r = RNG(sum(map(ord, name)))
    q, k, v = _qkv(r)
    heads = r.normal(size=4)
    slopes = np.abs(r.normal(size=4))
    dead = r.random((4, 6)) < 0.6
    dead[2] = False  # query 2 sees no key
    quad, quad_grad = SCORE_MODS["quadratic"]
    scale_mod, scale_grad = SCORE_MODS["head_scale"]
    ql, kl, vl = _qkv(r, L=7, S=3)  # L > S
    gq, gk, gv = _qkv(r, Hq=4, Hkv=2, L=5, S=8)
    cases = {
        "window_both_sides_top_left": dict(q=q, k=k, v=v, window=(2, 1)),
        "window_left_unbounded_bottom_right": dict(q=q, k=k, v=v, window=(None, 1),
                                                   causal_align="bottom_right"),
        "window_right_unbounded_L>S": dict(q=ql, k=kl, v=vl, window=(1, None),
                                           causal_align="bottom_right"),
        "softcap_small_cap_large_scores": dict(q=3 * q, k=k, v=v, softcap=0.7),
        "softcap_with_float_mask": dict(q=3 * q, k=k, v=v, softcap=1.5,
                                        attn_mask=r.normal(size=(4, 1, 6))),
        "alibi_per_head_bottom_right": dict(q=q, k=k, v=v, alibi_slopes=slopes,
                                            causal_align="bottom_right"),
        "alibi_per_batch_and_head": dict(q=q, k=k, v=v, alibi_slopes=np.abs(r.normal(size=(2, 4)))),
        "alibi_causal_bottom_right_L<S": dict(q=q, k=k, v=v, alibi_slopes=slopes, is_causal=True,
                                              causal_align="bottom_right"),
        "alibi_causal_bottom_right_L>S": dict(q=ql, k=kl, v=vl, alibi_slopes=slopes,
                                              is_causal=True, causal_align="bottom_right"),
        "sinks_with_a_fully_masked_row": dict(q=q, k=k, v=v, sinks=heads, attn_mask=dead),
        "sinks_causal_bottom_right_L>S": dict(q=ql, k=kl, v=vl, sinks=heads, is_causal=True,
                                              causal_align="bottom_right"),
        "chunk_causal": dict(q=q, k=k, v=v, chunk_size=2, is_causal=True),
        "chunk_bottom_right_L>S": dict(q=ql, k=kl, v=vl, chunk_size=2,
                                       causal_align="bottom_right"),
        "sink_tokens_window": dict(q=q, k=k, v=v, sink_tokens=2, window=(1, 0)),
        "sink_tokens_chunk_causal": dict(q=q, k=k, v=v, sink_tokens=1, chunk_size=3,
                                         is_causal=True, causal_align="bottom_right"),
        "mask_mod_head_batch": dict(q=q, k=k, v=v, mask_mod=MASK_MODS["head_batch"]),
        "score_mod_quadratic": dict(q=q, k=k, v=v, score_mod=quad, score_mod_grad=quad_grad),
        "score_mod_head_scale_gqa": dict(q=gq, k=gk, v=gv, enable_gqa=True, score_mod=scale_mod,
                                         score_mod_grad=scale_grad),
        "gemma2_softcap_window_gqa": dict(q=2 * gq, k=gk, v=gv, enable_gqa=True, softcap=2.0,
                                          window=(3, 0), is_causal=True, scale=0.4),
        "gpt_oss_sinks_window_gqa": dict(q=gq, k=gk, v=gv, enable_gqa=True, sinks=heads,
                                         window=(3, 0), is_causal=True),
        "mistral_window_bottom_right": dict(q=gq, k=gk, v=gv, enable_gqa=True, window=(2, 0),
                                            is_causal=True, causal_align="bottom_right"),
        "llama4_chunk_causal_gqa": dict(q=gq, k=gk, v=gv, enable_gqa=True, chunk_size=3,
                                        is_causal=True),
        "two_batch_axes_score_mod_uses_b": dict(
            q=r.normal(size=(2, 3, 2, 4, 3)), k=r.normal(size=(3, 2, 5, 3)),
            v=r.normal(size=(2, 1, 2, 5, 2)), score_mod=quad, score_mod_grad=quad_grad,
            mask_mod=MASK_MODS["stripes"], sinks=heads[:2],
            alibi_slopes=np.abs(r.normal(size=(3, 2)))),
        "everything_with_dropout": dict(
            q=2 * gq, k=gk, v=gv, enable_gqa=True, softcap=1.0, score_mod=scale_mod,
            score_mod_grad=scale_grad, attn_mask=r.normal(size=(5, 8)), alibi_slopes=slopes,
            window=(2, 1), chunk_size=4, sink_tokens=1, mask_mod=MASK_MODS["head_batch"],
            sinks=heads, is_causal=True, causal_align="bottom_right", dropout_p=0.3,
            dropout_mask=r.random((2, 4, 5, 8)) >= 0.3),
    }  # fmt: skip
    return cases[name]


CASES = ["window_both_sides_top_left", "window_left_unbounded_bottom_right",
         "window_right_unbounded_L>S", "softcap_small_cap_large_scores", "softcap_with_float_mask",
         "alibi_per_head_bottom_right", "alibi_per_batch_and_head", "alibi_causal_bottom_right_L<S",
         "alibi_causal_bottom_right_L>S", "sinks_with_a_fully_masked_row",
         "sinks_causal_bottom_right_L>S", "chunk_causal", "chunk_bottom_right_L>S",
         "sink_tokens_window", "sink_tokens_chunk_causal", "mask_mod_head_batch",
         "score_mod_quadratic", "score_mod_head_scale_gqa", "gemma2_softcap_window_gqa",
         "gpt_oss_sinks_window_gqa", "mistral_window_bottom_right", "llama4_chunk_causal_gqa",
         "two_batch_axes_score_mod_uses_b", "everything_with_dropout"]  # fmt: skip


def _oracle(d_out, kw):
    out, P, lse = attention_oracle(**kw)
    return dict(attention_backward_oracle(d_out, **kw), out=out, P=P, lse=lse)


def _assert_agree(kw, seed=0, tol=1e-12):
    out = attention_oracle(**kw)[0]
    d_out = RNG(seed).normal(size=out.shape)
    mine, ref = _oracle(d_out, kw), reference(d_out, **kw)
    for name in QUANTITIES:
        a, b = mine[name], ref[name]
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape, (name, a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=name)  # -inf where -inf
    return mine


@pytest.mark.parametrize("name", CASES)
def test_loop_oracle_equals_torch_reference_forward_and_backward(name):
    """out, P, lse, dq, dk, dv, d_attn_mask and d_sinks of the loop oracle equal the eager torch
    float64 reference (autograd) to 1e-12, for each variant and today's combinations."""
    _assert_agree(_case(name))


@settings(max_examples=40)
@given(variant_cases(masks=("none", "bool", "float")), seeds)
def test_loop_oracle_equals_torch_reference_on_random_combinations(case, seed):
    """Random combinations of every variant with masks, causal (either alignment), GQA,
    broadcast batch and heads, L != S: the two references agree to 1e-12."""
    _assert_agree(case.kwargs(), seed)


@settings(max_examples=20)
@given(variant_cases(masks=("none", "float"), dropout=True), seeds)
def test_loop_oracle_equals_torch_reference_with_dropout(case, seed):
    """The same with an explicit dropout keep-mask (Eq. (2.4) after the sink softmax)."""
    _assert_agree(case.kwargs(), seed)


def test_a_fully_masked_row_with_a_sink_has_lse_equal_to_the_sink_and_zero_gradients():
    """Both references: the row that sees no key gives out 0, lse = its head's sink logit, and
    no gradient reaches q from it."""
    kw = _case("sinks_with_a_fully_masked_row")
    mine = _assert_agree(kw)
    np.testing.assert_array_equal(mine["lse"][:, :, 2], np.broadcast_to(kw["sinks"], (2, 4)))
    assert np.all(mine["out"][:, :, 2] == 0) and np.all(mine["dq"][:, :, 2] == 0)
    assert np.all(mine["d_sinks"] != 0)


def test_visibility_oracle_draws_the_documented_masks():
    """The positional masks of the oracle on a 4 x 6 bottom-right example, drawn by hand:
    window (1, 0), chunks of 3, and the first key kept as a sink token (causal)."""
    got = visibility_oracle(4, 6, is_causal=True, causal_align="bottom_right", window=(1, 0),
                            chunk_size=3, sink_tokens=1)  # fmt: skip
    want = np.array([[1, 1, 1, 0, 0, 0],   # i + d = 2: window {1, 2}, chunk {0, 1, 2}
                     [1, 0, 0, 1, 0, 0],   # 3: window {2, 3}, chunk {3, 4, 5}, sink 0
                     [1, 0, 0, 1, 1, 0],   # 4
                     [1, 0, 0, 0, 1, 1]])  # fmt: skip
    np.testing.assert_array_equal(got, want.astype(bool))
