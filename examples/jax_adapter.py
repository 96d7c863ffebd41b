"""Run JAX's attention on the numpy-attention golden suite and write results for ``check``.

Usage (see docs/verify.md, "A second framework: JAX")::

    numpy-attention vectors --out suite
    python examples/jax_adapter.py suite results-jax --dtype bfloat16
    numpy-attention check results-jax --suite suite --dtype bfloat16 --strict

``jax.nn.dot_product_attention`` (jax 0.10.2, CPU, ``implementation=None``
= XLA) gives ``out`` and, with ``return_residual=True``, the log-sum-exp;
``jax.vjp`` gives ``dq``, ``dk``, ``dv`` and ``d_attn_mask`` (the gradient of
its ``bias``), forward and backward compiled as one ``jax.jit`` per case (6.5x
faster than eager dispatch, which compiles each operation at each new shape).
What JAX cannot produce is declared in ``results/gaps.json`` (reported ``N/A``
by ``check``, not failed, and not counted by ``--strict``):

- ``weights``: the function never returns the attention weights;
- the ``dropout`` case: it has no dropout, let alone a given keep-mask;
- cases with ``E != Ev`` (``value_width``): it requires equal widths;
- the layer cases: ``jax.nn`` has no ``nn.MultiheadAttention`` equivalent.

Conventions converted here, never by loosening tolerances:

- layout: JAX is ``(B, L, H, E)``, the suite ``(B, H, L, E)``: transposed in and out;
- boolean masks: the same polarity (True = attend), passed as ``mask``; a float
  mask is ``bias``; bottom-right causal is passed as a mask (``is_causal`` is top-left);
- fully masked rows: JAX gives ``mean(V)`` there (softmax of equal scores), the
  suite 0: the output is multiplied by "the row sees a key" (0 or 1), which also
  zeroes the gradients flowing through those rows, and their lse is set to -inf;
- GQA: JAX groups query head ``n`` with key/value head ``n // G``
  (the suite's repeat_interleave order); broadcast batches are expanded and the
  gradients summed back;
- the log-sum-exp: JAX's residual is ``(B, H, L)`` natural-log, as the suite.

float64 needs ``jax_enable_x64``; even then JAX computes the softmax in float32
(measured in docs/verify.md: errors about 1e-7), so its float64 results fail
float64 tolerances: a true property of JAX, reported, not hidden.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # float64 inputs stay float64 (the softmax does not)
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402

DTYPES = {"float64": jnp.float64, "float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}  # fmt: skip
GAPS = [
    {"quantity": "weights", "reason": "jax.nn.dot_product_attention returns no attention weights"},
]


def allowed_keys(a: dict[str, Any], L: int, S: int) -> np.ndarray:
    """Return the suite's 'may attend' pattern (True = attend), broadcastable to (B, H, L, S)."""
    allowed = np.ones((L, S), dtype=bool)
    mask = a.get("attn_mask")
    if mask is not None and mask.dtype == bool:
        allowed = allowed & mask
    if bool(a["is_causal"]):
        d = S - L if bool(a["causal_bottom_right"]) else 0
        allowed = allowed & (np.arange(S)[None, :] <= np.arange(L)[:, None] + d)
    return allowed


def to_numpy(x: Any) -> np.ndarray:
    """bfloat16 and float16 upcast (exactly) to float32; float32/float64 kept."""
    a = np.asarray(x)
    return a.astype(np.float32) if a.dtype.itemsize < 4 else a


def run_sdpa(a: dict[str, Any], dtype: Any) -> dict[str, np.ndarray]:
    """One SDPA case: out and lse from dot_product_attention, gradients from jax.vjp."""
    B, H, L, _ = a["q"].shape
    S = a["k"].shape[-2]
    kv_batch = a["k"].shape[0]
    q, k, v, d_out = (jnp.asarray(a[n], dtype=dtype) for n in ("q", "k", "v", "d_out"))
    mask = a.get("attn_mask")
    bias = jnp.asarray(mask, dtype=dtype) if mask is not None and mask.dtype != bool else None
    allowed = np.broadcast_to(allowed_keys(a, L, S), (B, H, L, S))
    alive = allowed.any(axis=-1)  # (B, H, L): rows that see at least one key
    keep = jnp.asarray(np.swapaxes(alive, 1, 2)[..., None], dtype=dtype)  # (B, L, H, 1)

    def attend(q, k, v, bias):
        def t(x):  # (B, H, L, E) <-> (B, L, H, E)
            return jnp.swapaxes(x, 1, 2)

        k, v = (jnp.broadcast_to(x, (B,) + x.shape[1:]) for x in (k, v))
        bb = None if bias is None else jnp.broadcast_to(bias, (B, H, L, S))
        out, lse = jax.nn.dot_product_attention(
            t(q), t(k), t(v), bias=bb, mask=jnp.asarray(allowed), scale=float(a["scale"]),
            return_residual=True,
        )  # fmt: skip
        return t(out * keep), jnp.swapaxes(lse, 1, 2)  # lse (B, L, H) -> (B, H, L)

    def forward_backward(q, k, v, bias, d_out):
        (out, lse), vjp = jax.vjp(attend, q, k, v, bias)
        return (out, lse), vjp((d_out, jnp.zeros_like(lse)))

    (out, lse), (dq, dk, dv, d_bias) = jax.jit(forward_backward)(q, k, v, bias, d_out)
    res = {"out": out, "lse": jnp.where(jnp.asarray(alive), lse, -jnp.inf), "dq": dq}
    res["dk"], res["dv"] = dk, dv
    if kv_batch == 1 and B > 1:  # jax.vjp already sums a broadcast: keep the (1, ...) shape
        res["dk"], res["dv"] = dk.reshape(a["k"].shape), dv.reshape(a["v"].shape)
    if bias is not None:
        res["d_attn_mask"] = d_bias
    return {n: to_numpy(x) for n, x in res.items()}


def main(argv: list[str] | None = None) -> int:
    """Run every SDPA case of the suite in one dtype; write ``OUT/<case>.npz`` and gaps.json."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("suite", help="directory written by 'numpy-attention vectors'")
    parser.add_argument("out", help="directory for the results (<case>.npz, gaps.json)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    manifest = json.loads((Path(args.suite) / "manifest.json").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gaps = list(GAPS)
    for case in manifest["cases"]:
        if case["kind"] != "sdpa":
            gaps.append({"case": case["name"], "reason": f"kind {case['kind']!r}: jax.nn has no "
                         "equivalent (this adapter runs dot_product_attention only)"})  # fmt: skip
            continue
        if case["flags"].get("dropout_p"):
            gaps.append({"case": case["name"], "reason": "jax.nn.dot_product_attention has no "
                         "dropout (no given keep-mask)"})  # fmt: skip
            continue
        if case["inputs"]["v"]["shape"][-1] != case["inputs"]["q"]["shape"][-1]:
            gaps.append({"case": case["name"], "reason": "jax.nn.dot_product_attention requires "
                         "the value width to equal the query/key width (E = Ev)"})  # fmt: skip
            continue
        with np.load(Path(args.suite) / case["file"], allow_pickle=False) as z:
            arrays = {n: z[n] for n in z.files if not n.startswith("expected_")}
        results: dict[str, Any] = run_sdpa(arrays, dtype)
        np.savez(out / f"{case['name']}.npz", **results)
    body = {"format": "numpy-attention-gaps", "framework": f"jax {jax.__version__}", "gaps": gaps}
    (out / "gaps.json").write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.dtype} results of the SDPA cases to {out} ({len(gaps)} declared gaps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
