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
from optional import TORCH_MISSING
from oracles import attention_backward_oracle, attention_oracle, visibility_oracle
from strategies import seeds, variant_cases
from variant_cases import NAMES, named_case

torch = pytest.importorskip("torch", reason=TORCH_MISSING)
from torch_reference import reference  # noqa: E402

RNG = np.random.default_rng
QUANTITIES = ("out", "P", "lse", "dq", "dk", "dv", "d_attn_mask", "d_sinks")


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


@pytest.mark.parametrize("name", NAMES)
def test_loop_oracle_equals_torch_reference_forward_and_backward(name):
    """out, P, lse, dq, dk, dv, d_attn_mask and d_sinks of the loop oracle equal the eager torch
    float64 reference (autograd) to 1e-12, for each variant and today's combinations."""
    _assert_agree(named_case(name))


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
    kw = named_case("sinks_with_a_fully_masked_row")
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
