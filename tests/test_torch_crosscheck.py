"""Optional cross-check against torch.nn.functional.scaled_dot_product_attention (float64, CPU).

Outputs, dq, dk, dv and the float mask's gradient agree to 1e-10; skipped without torch.
"""

import numpy as np
import pytest
from optional import TORCH_MISSING

torch = pytest.importorskip("torch", reason=TORCH_MISSING)
F = torch.nn.functional

from numpy_attention.attention import attention_backward, attention_forward  # noqa: E402


def _case(name):
    r = np.random.default_rng(sum(map(ord, name)))
    q, k, v = r.normal(size=(2, 4, 3, 5)), r.normal(size=(2, 4, 6, 5)), r.normal(size=(2, 4, 6, 2))
    keep = r.random((3, 6)) < 0.5
    keep[1] = False  # a fully masked row: torch's _safe_softmax gives 0
    return {
        "plain_L!=S_E!=Ev": dict(q=q, k=k, v=v),
        "explicit_scale": dict(q=q, k=k, v=v, scale=0.3),
        "causal_top_left_L<S": dict(q=q, k=k, v=v, is_causal=True),
        "causal_top_left_L>S": dict(q=r.normal(size=(2, 4, 8, 5)), k=k, v=v, is_causal=True),
        "causal_bottom_right": dict(q=q, k=k, v=v, is_causal=True, causal_align="bottom_right"),
        "bool_mask_with_dead_row": dict(q=q, k=k, v=v, attn_mask=keep),
        "float_mask_broadcast": dict(q=q, k=k, v=v, attn_mask=r.normal(size=(2, 1, 3, 6))),
        "gqa_float_mask": dict(q=q, k=k[:, :2], v=v[:, :2], enable_gqa=True,
                               attn_mask=r.normal(size=(4, 3, 6))),
        "gqa_bool_mask": dict(q=q, k=k[:, :1], v=v[:, :1], enable_gqa=True, attn_mask=keep),
        "batch_broadcast": dict(q=q, k=k[:1], v=v[:1]),
    }[name]  # fmt: skip


CASES = ["plain_L!=S_E!=Ev", "explicit_scale", "causal_top_left_L<S", "causal_top_left_L>S",
         "causal_bottom_right", "bool_mask_with_dead_row", "float_mask_broadcast",
         "gqa_float_mask", "gqa_bool_mask", "batch_broadcast"]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_sdpa_outputs_and_gradients(name):
    """Same output and gradients (q, k, v, float mask) as torch's SDPA in float64."""
    kw = _case(name)
    out, cache = attention_forward(**kw)
    d_out = np.random.default_rng(1).normal(size=out.shape)
    g = attention_backward(d_out, cache)

    t = {n: torch.tensor(kw[n], requires_grad=True) for n in ("q", "k", "v")}
    mask = kw.get("attn_mask")
    tm = None if mask is None else torch.tensor(mask, requires_grad=mask.dtype.kind == "f")
    is_causal = kw.get("is_causal", False)
    if kw.get("causal_align") == "bottom_right":
        from torch.nn.attention.bias import causal_lower_right

        tm, is_causal = causal_lower_right(kw["q"].shape[-2], kw["k"].shape[-2]), False
    t_out = F.scaled_dot_product_attention(
        t["q"], t["k"], t["v"], attn_mask=tm, is_causal=is_causal, scale=kw.get("scale"),
        enable_gqa=kw.get("enable_gqa", False),
    )  # fmt: skip
    t_out.backward(torch.tensor(d_out))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=1e-12)
    for n in ("q", "k", "v"):
        np.testing.assert_allclose(getattr(g, "d" + n), t[n].grad.numpy(), rtol=0, atol=1e-10,
                                   err_msg=n)  # fmt: skip
    if mask is not None and mask.dtype.kind == "f":
        np.testing.assert_allclose(g.d_attn_mask, tm.grad.numpy(), rtol=0, atol=1e-10)
    else:
        assert g.d_attn_mask is None


@pytest.mark.parametrize("is_causal", [False, True])
def test_lse_matches_torch_cpu_flash_kernel(is_causal):
    """cache.lse (natural log, Eq. (2.3)) equals the logsumexp returned by torch's CPU flash op."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        pytest.skip("this torch has no CPU flash attention op")
    r = np.random.default_rng(2)
    q, k, v = r.normal(size=(2, 3, 4, 8)), r.normal(size=(2, 3, 6, 8)), r.normal(size=(2, 3, 6, 8))
    out, cache = attention_forward(q, k, v, is_causal=is_causal)
    t_out, t_lse = op(*(torch.tensor(a) for a in (q, k, v)), 0.0, is_causal)[:2]
    np.testing.assert_allclose(out, t_out.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cache.lse, t_lse.numpy(), rtol=0, atol=1e-12)
