"""Run PyTorch's attention on the numpy-attention golden suite and write results for ``check``.

Usage (see docs/verify.md for the worked example)::

    numpy-attention vectors --out suite
    python examples/torch_adapter.py suite results-fp32 --dtype float32
    numpy-attention check results-fp32 --suite suite --dtype float32

Which PyTorch function produces which quantity:

- ``out``, ``dq``, ``dk``, ``dv``, ``d_attn_mask``:
  ``torch.nn.functional.scaled_dot_product_attention`` and autograd. The
  ``dropout`` case uses ``torch.ops.aten._scaled_dot_product_attention_math``,
  the one torch entry point that accepts a given dropout keep-mask.
- ``lse``: ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu``
  (the fused CPU kernel behind SDPA, which returns the log-sum-exp).
- ``weights``: ``torch.ops.aten._scaled_dot_product_attention_math`` (it
  returns the attention weights).
- cross-attention layer: ``torch.nn.MultiheadAttention`` with the suite's
  weights copied in (``need_weights=True, average_attn_weights=False``).
- weighted fusion: one ``nn.MultiheadAttention`` per branch, combined with
  the suite's branch weights (the fusion formula of docs/fusion.md).

Every convention difference is handled here, never by loosening tolerances:

- boolean masks: the suite's True = attend is SDPA's polarity; the internal
  ops need an additive float mask (0 / -inf) in the query's dtype, and
  ``nn.MultiheadAttention``'s ``key_padding_mask`` is True = *ignore*;
- causal alignment: ``is_causal=True`` is top-left; bottom-right uses
  ``torch.nn.attention.bias.causal_lower_right``;
- fully masked rows: the CPU flash kernel reports ``lse = 0`` there, the
  suite ``-inf``;
- GQA: ``enable_gqa=True`` (repeat_interleave order, as the suite);
  the flash op has no GQA, so key/value heads are repeated for it;
- layouts: the suite is (B, H, L, E) like SDPA; ``nn.MultiheadAttention``
  takes (B, L, E) with ``batch_first=True``, weights transposed
  (``nn.Linear`` computes ``x @ W.T``).

bfloat16 results are upcast to float32 before saving (NumPy has no
bfloat16; the upcast is exact). torch is imported here only; the package
never imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}  # fmt: skip


def tensor(a: np.ndarray, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
    """Make a leaf tensor of ``dtype`` from a suite array (exact: inputs are bf16-exact)."""
    t = torch.from_numpy(np.ascontiguousarray(a)).to(dtype)
    return t.requires_grad_(grad)


def to_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """float64/float32 stay; bfloat16 and float16 are upcast (exactly) to float32."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy().copy()


# ---------------------------------------------------------------------------
# Scaled dot-product attention cases
# ---------------------------------------------------------------------------


def allowed_keys(a: dict, L: int, S: int) -> np.ndarray:
    """Return the suite's boolean 'may attend' pattern (True = attend), broadcastable."""
    allowed = np.ones((L, S), dtype=bool)
    mask = a.get("attn_mask")
    if mask is not None and mask.dtype == bool:
        allowed = allowed & mask
    if bool(a["is_causal"]):
        d = S - L if bool(a["causal_bottom_right"]) else 0
        allowed = allowed & (np.arange(S)[None, :] <= np.arange(L)[:, None] + d)
    return allowed


def additive_mask(a: dict, L: int, S: int, dtype: torch.dtype) -> torch.Tensor:
    """Float mask for the internal ops: the bias (if any) plus -inf where keys are not allowed."""
    mask = a.get("attn_mask")
    bias = mask if mask is not None and mask.dtype != bool else 0.0
    allowed = allowed_keys(a, L, S)
    return tensor(np.where(allowed, bias, -np.inf), dtype)


def run_sdpa(a: dict, dtype: torch.dtype) -> dict:
    """One SDPA case: out and gradients via autograd, weights and lse via internal ops."""
    scale, gqa, p = float(a["scale"]), bool(a["enable_gqa"]), float(a["dropout_p"])
    q, k, v = (tensor(a[n], dtype, grad=True) for n in ("q", "k", "v"))
    L, S = q.shape[-2], k.shape[-2]
    mask = a.get("attn_mask")
    m = None
    if mask is not None:
        # bool: True = attend, SDPA's polarity, passed as is; float: an additive bias
        m = tensor(mask, torch.bool) if mask.dtype == bool else tensor(mask, dtype, grad=True)
    is_causal = bool(a["is_causal"])
    if is_causal and bool(a["causal_bottom_right"]):
        assert m is None, "suite cases never combine a mask with bottom-right causal"
        with warnings.catch_warnings():  # "will produce NaNs when L > S": not so on 2.13,
            warnings.simplefilter("ignore")  # fully masked rows give 0 (the suite checks it)
            m, is_causal = causal_lower_right(L, S), False  # FlashAttention's alignment
    if p > 0:
        keep = tensor(a["dropout_mask"], torch.bool)
        out, _ = torch.ops.aten._scaled_dot_product_attention_math(
            q, k, v, attn_mask=None if mask is None else additive_mask(a, L, S, dtype),
            dropout_p=p, is_causal=False, dropout_mask=keep, scale=scale, enable_gqa=gqa,
        )  # fmt: skip
    else:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=m, is_causal=is_causal, scale=scale, enable_gqa=gqa
        )
    out.backward(tensor(a["d_out"], dtype))
    with torch.no_grad():
        res = {"out": out, "dq": q.grad, "dk": k.grad, "dv": v.grad}
        if m is not None and mask is not None and mask.dtype != bool:
            res["d_attn_mask"] = m.grad
        res["weights"] = torch.ops.aten._scaled_dot_product_attention_math(
            q, k, v, attn_mask=additive_mask(a, L, S, dtype), scale=scale, enable_gqa=gqa
        )[1]
        res["lse"] = flash_lse(a, q, k, scale, dtype)
    return {n: to_numpy(t) for n, t in res.items()}


def flash_lse(a: dict, q: torch.Tensor, k: torch.Tensor, scale: float, dtype: torch.dtype
              ) -> torch.Tensor:  # fmt: skip
    """Return the CPU flash kernel's natural-log lse, fully masked rows mapped to -inf."""
    L, S = q.shape[-2], k.shape[-2]
    lead = q.shape[:-2]
    if k.shape[-3] != q.shape[-3]:  # the flash op has no GQA: repeat kv heads (interleave)
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    k = k.expand(lead + k.shape[-2:])
    v = k  # lse does not depend on v, and the op wants v's width to equal E
    mask = additive_mask(a, L, S, dtype).expand(lead + (L, S)).contiguous()
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask, scale=scale
    )
    dead = ~np.broadcast_to(allowed_keys(a, L, S), mask.shape).any(axis=-1)
    return lse.masked_fill(torch.from_numpy(np.ascontiguousarray(dead)), float("-inf"))


# ---------------------------------------------------------------------------
# The cross-attention layer and weighted fusion (nn.MultiheadAttention)
# ---------------------------------------------------------------------------


def make_mha(a: dict, prefix: str, dtype: torch.dtype) -> torch.nn.MultiheadAttention:
    """nn.MultiheadAttention holding the suite's weights ``{prefix}w_q``... (transposed)."""
    w_q, w_k, w_v, w_o = (a[f"{prefix}{n}"] for n in ("w_q", "w_k", "w_v", "w_o"))
    H = int(a["num_heads"])
    E, kdim = w_q.shape[1], w_k.shape[0]
    mha = torch.nn.MultiheadAttention(E, H, bias=True, kdim=kdim, vdim=w_v.shape[0],
                                      batch_first=True, dtype=dtype)  # fmt: skip
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            mha.in_proj_weight.copy_(tensor(np.concatenate([w_q.T, w_k.T, w_v.T]), dtype))
        else:
            mha.q_proj_weight.copy_(tensor(w_q.T, dtype))
            mha.k_proj_weight.copy_(tensor(w_k.T, dtype))
            mha.v_proj_weight.copy_(tensor(w_v.T, dtype))
        b = np.concatenate([a[f"{prefix}b_q"], a[f"{prefix}b_k"], a[f"{prefix}b_v"]])
        mha.in_proj_bias.copy_(tensor(b, dtype))
        mha.out_proj.weight.copy_(tensor(w_o.T, dtype))
        mha.out_proj.bias.copy_(tensor(a[f"{prefix}b_o"], dtype))
    return mha


def _grad(t: torch.Tensor | None) -> torch.Tensor:
    """Return the gradient of a parameter that took part in the backward (None is a bug)."""
    assert t is not None and t.grad is not None, "a parameter received no gradient"
    return t.grad


def mha_grads(mha: torch.nn.MultiheadAttention, prefix: str) -> dict:
    """Parameter gradients under the suite's names and layout (``x @ W + b``)."""
    E = mha.embed_dim
    if mha._qkv_same_embed_dim:
        w = _grad(mha.in_proj_weight)
        wq, wk, wv = w[:E], w[E : 2 * E], w[2 * E :]
    else:
        wq, wk, wv = (_grad(mha.q_proj_weight), _grad(mha.k_proj_weight),
                      _grad(mha.v_proj_weight))  # fmt: skip
    b = _grad(mha.in_proj_bias)
    return {
        f"d_{prefix}w_q": wq.T, f"d_{prefix}w_k": wk.T, f"d_{prefix}w_v": wv.T,
        f"d_{prefix}w_o": _grad(mha.out_proj.weight).T,
        f"d_{prefix}b_q": b[:E], f"d_{prefix}b_k": b[E : 2 * E], f"d_{prefix}b_v": b[2 * E :],
        f"d_{prefix}b_o": _grad(mha.out_proj.bias),
    }  # fmt: skip


def key_padding(a: dict, S: int) -> torch.Tensor | None:
    """nn.MultiheadAttention's key_padding_mask: True = IGNORE (the opposite polarity)."""
    if "key_lengths" not in a:
        return None
    return torch.from_numpy(np.arange(S)[None, :] >= a["key_lengths"][:, None])


def run_cross_attention(a: dict, dtype: torch.dtype) -> dict:
    """Run the cross-attention layer case with nn.MultiheadAttention."""
    x_q, x_kv = tensor(a["x_q"], dtype, grad=True), tensor(a["x_kv"], dtype, grad=True)
    mha = make_mha(a, "", dtype)
    out, w = mha(x_q, x_kv, x_kv, key_padding_mask=key_padding(a, x_kv.shape[1]),
                 need_weights=True, average_attn_weights=False)  # fmt: skip
    out.backward(tensor(a["d_out"], dtype))
    res = {"out": out, "weights": w, "d_x_q": x_q.grad, "d_x_kv": x_kv.grad}
    res.update(mha_grads(mha, ""))
    return {n: to_numpy(t) for n, t in res.items()}


def run_fusion(a: dict, dtype: torch.dtype) -> dict:
    """Weighted fusion: sum_i alpha_i * MHA_i(x, x, x), one nn.MultiheadAttention per branch."""
    x = tensor(a["x"], dtype, grad=True)
    alpha = tensor(a["alpha"], dtype, grad=True)
    mhas = [make_mha(a, f"branch{i}_", dtype) for i in range(alpha.shape[0])]
    outs = [m(x, x, x, need_weights=False)[0] for m in mhas]  # self-attention branches
    out = sum(alpha[i] * o for i, o in enumerate(outs))  # Eq. (4.1) of docs/fusion.md
    out.backward(tensor(a["d_out"], dtype))
    res = {"out": out, "d_x": x.grad, "d_alpha": alpha.grad}
    for i, m in enumerate(mhas):
        res.update(mha_grads(m, f"branch{i}_"))
    return {n: to_numpy(t) for n, t in res.items()}


RUNNERS = {"sdpa": run_sdpa, "cross_attention": run_cross_attention, "fusion": run_fusion}


def main(argv: list[str] | None = None) -> int:
    """Run every case of the suite in one dtype and write ``OUT/<case>.npz``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="directory written by 'numpy-attention vectors'")
    parser.add_argument("out", help="directory for the results (<case>.npz)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    manifest = json.loads((Path(args.suite) / "manifest.json").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for case in manifest["cases"]:
        runner = RUNNERS.get(case["kind"])
        if runner is None:
            print(f"skipping {case['name']}: no torch equivalent for kind {case['kind']!r}")
            continue
        with np.load(Path(args.suite) / case["file"], allow_pickle=False) as z:
            arrays = {n: z[n] for n in z.files if not n.startswith("expected_")}
        results = {n: r for n, r in runner(arrays, dtype).items() if r is not None}
        np.savez(out / f"{case['name']}.npz", **results)
    print(f"wrote {args.dtype} results of {len(manifest['cases'])} cases to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
