"""Named variant cases shared by the tests: each variant alone and today's models' combinations.

Used by test_variants_oracle.py (loop oracle against the torch reference) and test_variants.py
(the package against both). Float64 NumPy arrays, the keywords of ``attention_forward``.
"""

import numpy as np
from strategies import MASK_MODS, SCORE_MODS

RNG = np.random.default_rng


def _qkv(r, Hq=4, Hkv=4, L=4, S=6, E=3, Ev=2, B=(2,), mag=1.0):
    return (r.normal(scale=mag, size=B + (Hq, L, E)), r.normal(scale=mag, size=B + (Hkv, S, E)),
            r.normal(size=B + (Hkv, S, Ev)))  # fmt: skip


def named_case(name):
    """Named cases: each variant alone and the combinations of today's models."""
    r = RNG(sum(map(ord, name)))
    q, k, v = _qkv(r)
    heads = r.normal(size=4)
    slopes = np.abs(r.normal(size=4))
    keep = r.random((4, 6)) < 0.6  # True = attend
    keep[2] = False  # query 2 sees no key
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
        "sinks_with_a_fully_masked_row": dict(q=q, k=k, v=v, sinks=heads, attn_mask=keep),
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


NAMES = ["window_both_sides_top_left", "window_left_unbounded_bottom_right",
         "window_right_unbounded_L>S", "softcap_small_cap_large_scores", "softcap_with_float_mask",
         "alibi_per_head_bottom_right", "alibi_per_batch_and_head", "alibi_causal_bottom_right_L<S",
         "alibi_causal_bottom_right_L>S", "sinks_with_a_fully_masked_row",
         "sinks_causal_bottom_right_L>S", "chunk_causal", "chunk_bottom_right_L>S",
         "sink_tokens_window", "sink_tokens_chunk_causal", "mask_mod_head_batch",
         "score_mod_quadratic", "score_mod_head_scale_gqa", "gemma2_softcap_window_gqa",
         "gpt_oss_sinks_window_gqa", "mistral_window_bottom_right", "llama4_chunk_causal_gqa",
         "two_batch_axes_score_mod_uses_b", "everything_with_dropout"]  # fmt: skip
