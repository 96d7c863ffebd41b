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
Every case of kind ``sdpa``, ``variant``, ``varlen`` and ``padded`` that the
function can express is one such call:

- the positions are its boolean ``mask`` (True = attend), built from indices as
  docs/variants.md's Eq. (8.8) (``visible``): causal with either alignment (query
  ``i`` sits at key ``i + d``, ``d = S - L`` bottom-right), the ``window (left,
  right)`` with -1 unbounded, ``chunk_size``, ``sink_tokens``, and a boolean
  ``attn_mask`` ANDed in. JAX's own ``is_causal`` and ``local_window_size`` are
  top-left only, so they are not used;
- a float ``attn_mask`` and ALiBi (``- slope[h] |i + d - j|``) are its ``bias``;
  ALiBi is made in JAX's score dtype (float32 for bfloat16 inputs, where
  ``slope * distance`` is exact) and gets no gradient, the float mask does;
- varlen (packed ``(T, H, E)``): one call of batch 1 with the block-diagonal
  document mask of ``cu_seqlens``, positions counted from each sequence's start,
  bottom-right offset ``len_k - len_q`` per sequence; ``lse`` is ``(Hq, Tq)``;
- padded: a call with the padding mask reads the NaN padding (``P V`` multiplies
  its NaN values by a weight 0; measured: ``out`` and ``dq`` are NaN in every row
  of a padded sequence, ``dk`` at its real keys, ``lse`` and ``dv`` stay finite;
  ``key_value_seq_lengths`` gives the same), so the real keys are packed first,
  as a varlen kernel's caller does (flash_attn's ``unpad_input``), and ``dk``,
  ``dv`` scattered back, 0 on the padding;
- learnable sinks: one more key with a zero key and value and the sink logit as its
  ``bias``, visible to every row (as gpt-oss's eager attention concatenates it):
  ``lse`` includes it, ``out`` does not, and the bias's gradient is ``d_sinks``.

What JAX cannot produce is declared in ``results/gaps.json`` (reported ``N/A``
by ``check``, not failed, and not counted by ``--strict``):

- ``weights``: the function never returns the attention weights;
- the ``dropout`` cases: it has no dropout, let alone a given keep-mask;
- the softcap cases: it has no softcap (its only score inputs are ``bias`` and
  ``mask``, and ``c tanh(s / c)`` is no bias: it is nonlinear in the score);
- the kinds that are not one attention call: the layers (``jax.nn`` has no
  ``nn.MultiheadAttention``), the KV cache, the merge and rotary.

Conventions converted here, never by loosening tolerances:

- layout: JAX is ``(B, L, H, E)``, the suite ``(B, H, L, E)``: transposed in and out;
- boolean masks: the same polarity (True = attend), passed as ``mask``;
- ``E != Ev`` (``value_width``, ``mla_widths``, ``varlen_causal_top_left``): the function
  needs equal widths, so the narrower of ``q, k`` and ``v, d_out`` gets zero columns (no
  score and no output entry changes) and the results are cut back to their widths;
- fully masked rows: JAX gives ``mean(V)`` there (softmax of equal scores), the
  suite 0: the output is multiplied by "the row sees a key" (0 or 1), which also
  zeroes the gradients flowing through those rows, and their lse is set to -inf;
- GQA: JAX groups query head ``n`` with key/value head ``n // G``
  (the suite's repeat_interleave order); broadcast batches are expanded and the
  gradients summed back;
- the log-sum-exp: JAX's residual is ``(B, L, H)`` natural-log: transposed.

float16 runs eagerly, not under ``jax.jit``: jax 0.10.2 asks for the dot algorithm
``F16_F16_F32``, which the CPU rejects when a jitted program is lowered, after the
``try`` that falls back to the default precision has passed (the eager call falls
back; docs/verify.md has the two-line reproduction): 5x slower, the same verdict.

float64 needs ``jax_enable_x64``; even then JAX computes the softmax in float32
(measured in docs/verify.md: errors about 1e-7), so its float64 results fail
float64 tolerances: a true property of JAX, reported, not hidden.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
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
#: Why a kind is not run: it is not one attention call.
KIND_GAPS = {
    "cross_attention": "a layer (projections and heads): jax.nn has no nn.MultiheadAttention",
    "fusion": "a weighted sum of self-attention layers: jax.nn has no attention layer",
    "kvcache": "a paged KV-cache update with rotary embedding: not one dot_product_attention call",
    "merge": "a split-KV merge of partial results: no attention call",
    "rotary": "a rotary embedding: no attention call",
}
SOFTCAP = ("jax.nn.dot_product_attention has no softcap (jax 0.10.2: its only score inputs "
           "are bias and mask; no bias gives c tanh(s / c), nonlinear in s)")  # fmt: skip


def visible(a: dict[str, Any], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Return the visibility of docs/variants.md, Eq. (8.8), without the boolean mask.

    ``i`` is the query's diagonal key ``i + d`` and ``j`` the key, integer arrays that
    broadcast: causal ``j <= i``, the window ``i - left <= j <= i + right`` (-1 = unbounded),
    the chunk ``i // C == j // C`` (rounding down, also below 0) and the first ``sink_tokens``
    keys visible outside window and chunk.
    """
    ok = np.ones(np.broadcast_shapes(i.shape, j.shape), dtype=bool)
    left, right = (int(w) for w in a["window"]) if "window" in a else (-1, -1)
    if left >= 0:
        ok = ok & (j >= i - left)
    if right >= 0:
        ok = ok & (j <= i + right)
    if "chunk_size" in a:
        ok = ok & (i // int(a["chunk_size"]) == j // int(a["chunk_size"]))
    if "sink_tokens" in a:
        ok = ok | (j < int(a["sink_tokens"]))
    return ok & (j <= i) if bool(a["is_causal"]) else ok


def alibi(a: dict[str, Any], distance: np.ndarray) -> np.ndarray | None:
    """Return ALiBi's bias ``-slope[h] |i + d - j|`` (Eq. (8.4)) as ``(..., Hq, L, S)``, or None."""
    if "alibi_slopes" not in a:
        return None
    return -np.asarray(a["alibi_slopes"])[..., None, None] * np.abs(distance)


def _widen(x: Any, width: int) -> Any:
    """Pad the last axis of ``x`` with zeros to ``width``."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])


def _as_4d(x: np.ndarray) -> np.ndarray:
    """Give an array broadcastable to ``(B, H, L, S)`` exactly four axes (leading 1s)."""
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def to_numpy(x: Any) -> np.ndarray:
    """bfloat16 and float16 upcast (exactly) to float32; float32/float64 kept."""
    a = np.asarray(x)
    return a.astype(np.float32) if a.dtype.itemsize < 4 else a


def attend(a: dict[str, Any], dtype: Any, allowed: np.ndarray,
           fixed_bias: np.ndarray | None) -> dict[str, np.ndarray]:  # fmt: skip
    """One dot_product_attention call on ``a``'s ``(B, H, L, E)`` arrays, gradients by jax.vjp.

    ``allowed`` (broadcastable to ``(B, Hq, L, S)``, True = attend) is passed as ``mask``;
    ``a``'s float ``attn_mask`` plus ``fixed_bias`` (ALiBi: no gradient) as ``bias``. Sinks
    (Eq. (8.9)) are one more key, visible to every row, with a zero key and value and the
    sink logit ``sinks[h]`` as its bias (gpt-oss's eager code): the sink joins every row's
    denominator and lse, adds nothing to ``out``, and its bias's gradient is ``d_sinks``.
    """
    B, H, L, _ = a["q"].shape
    S = a["k"].shape[-2]
    kv_batch = a["k"].shape[0]
    q, k, v, d_out = (jnp.asarray(a[n], dtype=dtype) for n in ("q", "k", "v", "d_out"))
    # E != Ev: the function needs equal widths; zero columns change no score and no output
    E, Ev = q.shape[-1], v.shape[-1]
    q, k, v, d_out = (_widen(x, max(E, Ev)) for x in (q, k, v, d_out))
    mask = a.get("attn_mask")
    float_mask = jnp.asarray(mask, dtype) if mask is not None and mask.dtype != bool else None
    # ALiBi in JAX's score dtype (float32 for bfloat16 inputs): slope * distance is exact there
    score_dtype = jnp.promote_types(dtype, jnp.float32)
    fixed = None if fixed_bias is None else jnp.asarray(_as_4d(fixed_bias), score_dtype)
    allowed = np.broadcast_to(allowed, (B, H, L, S))
    sinks = None if "sinks" not in a else jnp.asarray(a["sinks"], score_dtype)
    if sinks is not None:  # the sink's column: every row sees it
        allowed = np.concatenate([allowed, np.ones((B, H, L, 1), bool)], axis=-1)
    alive = allowed.any(axis=-1)  # (B, H, L): rows that see at least one key (or their sink)
    keep = jnp.asarray(np.swapaxes(alive, 1, 2)[..., None], dtype=dtype)  # (B, L, H, 1)

    def run(q, k, v, float_mask, sinks):
        def t(x):  # (B, H, L, E) <-> (B, L, H, E)
            return jnp.swapaxes(x, 1, 2)

        k, v = (jnp.broadcast_to(x, (B,) + x.shape[1:]) for x in (k, v))
        bias = fixed if float_mask is None else float_mask if fixed is None else float_mask + fixed
        if bias is not None:
            bias = jnp.broadcast_to(bias, (B, H, L, S))
        if sinks is not None:  # append the sink: key 0, value 0, bias sinks[h]
            k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 0))) for x in (k, v))
            zeros = jnp.zeros((B, H, L, S), score_dtype) if bias is None else bias
            column = jnp.broadcast_to(sinks[:, None, None], (B, H, L, 1)).astype(zeros.dtype)
            bias = jnp.concatenate([zeros, column], axis=-1)
        out, lse = jax.nn.dot_product_attention(
            t(q), t(k), t(v), bias=bias, mask=jnp.asarray(allowed), scale=float(a["scale"]),
            return_residual=True,
        )  # fmt: skip
        return t(out * keep), jnp.swapaxes(lse, 1, 2)  # lse (B, L, H) -> (B, H, L)

    def forward_backward(q, k, v, float_mask, sinks, d_out):
        (out, lse), vjp = jax.vjp(run, q, k, v, float_mask, sinks)
        return (out, lse), vjp((d_out, jnp.zeros_like(lse)))

    # float16 runs eagerly: under jax.jit, jax 0.10.2 fails on CPU ("The precision
    # 'F16_F16_F32' is not supported by dot_general"; its fallback catches eager errors only)
    fb = forward_backward if dtype == jnp.float16 else jax.jit(forward_backward)
    (out, lse), (dq, dk, dv, d_mask, d_sinks) = fb(q, k, v, float_mask, sinks, d_out)
    out, dq, dk, dv = out[..., :Ev], dq[..., :E], dk[..., :E], dv[..., :Ev]  # the zeros dropped
    res = {"out": out, "lse": jnp.where(jnp.asarray(alive), lse, -jnp.inf), "dq": dq}
    res["dk"], res["dv"] = dk, dv
    if kv_batch == 1 and B > 1:  # jax.vjp already sums a broadcast: keep the (1, ...) shape
        res["dk"], res["dv"] = dk.reshape(a["k"].shape), dv.reshape(a["v"].shape)
    if float_mask is not None:
        res["d_attn_mask"] = d_mask
    if sinks is not None:
        res["d_sinks"] = d_sinks
    return {n: to_numpy(x) for n, x in res.items()}


def run_attention(a: dict[str, Any], dtype: Any) -> dict[str, np.ndarray]:
    """Run an sdpa or variant case: positions as ``mask``, a float mask and ALiBi as ``bias``."""
    L, S = a["q"].shape[-2], a["k"].shape[-2]
    d = S - L if bool(a["causal_bottom_right"]) else 0  # query i sits at key i + d
    i, j = np.arange(L)[:, None] + d, np.arange(S)[None, :]
    allowed = visible(a, i, j)
    mask = a.get("attn_mask")
    if mask is not None and mask.dtype == bool:
        allowed = allowed & mask  # the same polarity: True = attend
    return attend(a, dtype, allowed, alibi(a, i - j))


def run_packed(a: dict[str, Any], dtype: Any, doc_q: np.ndarray, i: np.ndarray,
               doc_k: np.ndarray, j: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Packed tokens ``(T, H, E)`` as one call of batch 1 with a block-diagonal document mask.

    Query token ``t`` belongs to sequence ``doc_q[t]`` and sits at key position ``i[t]`` of it
    (its diagonal, the offset ``d`` included); key token ``u`` is key ``j[u]`` of ``doc_k[u]``.
    """
    i, j = i[:, None], j[None, :]
    allowed = (doc_q[:, None] == doc_k[None, :]) & visible(a, i, j)
    packed = {n: np.swapaxes(a[n], 0, 1)[None] for n in ("q", "k", "v", "d_out")}
    res = attend(dict(a, **packed), dtype, allowed, alibi(a, i - j))
    per_token = ("out", "dq", "dk", "dv")
    unpacked = {n: np.swapaxes(res[n][0], 0, 1) for n in per_token}  # (T, H, E)
    return res | unpacked | {"lse": res["lse"][0]}  # lse (Hq, Tq); d_sinks (Hq,) as it is


def run_varlen(a: dict[str, Any], dtype: Any) -> dict[str, np.ndarray]:
    """Run a varlen case: positions from each sequence's start, bottom-right per sequence."""
    cu_q, cu_k = (a[n].astype(np.int64) for n in ("cu_seqlens_q", "cu_seqlens_k"))
    len_q, len_k = np.diff(cu_q), np.diff(cu_k)
    doc_q, doc_k = (np.repeat(np.arange(len(n)), n) for n in (len_q, len_k))
    i, j = np.arange(cu_q[-1]) - cu_q[doc_q], np.arange(cu_k[-1]) - cu_k[doc_k]
    if bool(a["causal_bottom_right"]):
        i = i + (len_k - len_q)[doc_q]  # each sequence's own S - L
    return run_packed(a, dtype, doc_q, i, doc_k, j)


def run_padded(a: dict[str, Any], dtype: Any) -> dict[str, np.ndarray]:
    """Run a padded case unpadded (as flash_attn's ``unpad_input``): its NaN padding never enters.

    The real keys of each batch row are packed by the case's key mask ``(B, 1, 1, S)``, the
    queries stay at their positions; ``dk`` and ``dv`` are scattered back, 0 on the padding.
    """
    B, H, L, E = a["q"].shape
    S = a["k"].shape[-2]
    real = np.broadcast_to(a["attn_mask"], (B, 1, 1, S))[:, 0, 0]  # (B, S), True = a real key
    doc_k, j = np.nonzero(real)
    doc_q, i = np.repeat(np.arange(B), L), np.tile(np.arange(L), B)
    if bool(a["causal_bottom_right"]):
        i = i + S - L
    rows = {n: np.swapaxes(a[n], 1, 2) for n in ("q", "k", "v", "d_out")}  # (B, L or S, H, E)
    packed = {n: rows[n].reshape((B * L,) + rows[n].shape[2:]) for n in ("q", "d_out")}
    packed |= {n: rows[n][real] for n in ("k", "v")}  # (Tk, Hkv, E)
    unpadded = {n: x for n, x in a.items() if n != "attn_mask"} | packed
    res = run_packed(unpadded, dtype, doc_q, i, doc_k, j)
    out = {n: np.swapaxes(res[n].reshape(B, L, *res[n].shape[1:]), 1, 2) for n in ("out", "dq")}
    out["lse"] = np.swapaxes(res["lse"].reshape(H, B, L), 0, 1)
    if "d_sinks" in res:
        out["d_sinks"] = res["d_sinks"]
    for n in ("dk", "dv"):
        full = np.zeros(real.shape + res[n].shape[1:], dtype=res[n].dtype)  # (B, S, Hkv, E)
        full[real] = res[n]
        out[n] = np.swapaxes(full, 1, 2)
    return out


RUNNERS: dict[str, Callable[[dict[str, Any], Any], dict[str, np.ndarray]]] = {
    "sdpa": run_attention, "variant": run_attention, "varlen": run_varlen, "padded": run_padded,
}  # fmt: skip


def case_gap(case: dict[str, Any]) -> str | None:
    """Why jax.nn.dot_product_attention cannot run ``case`` (None: it can)."""
    kind, flags, inputs = case["kind"], case["flags"], case["inputs"]
    if kind not in RUNNERS:
        return f"kind {kind!r}: {KIND_GAPS.get(kind, 'not one dot_product_attention call')}"
    if flags.get("dropout_p"):
        return "jax.nn.dot_product_attention has no dropout (no given keep-mask)"
    if "softcap" in inputs:
        return SOFTCAP
    return None


def main(argv: list[str] | None = None) -> int:
    """Run every case dot_product_attention can express, in one dtype; write ``OUT/<case>.npz``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("suite", help="directory written by 'numpy-attention vectors'")
    parser.add_argument("out", help="directory for the results (<case>.npz, gaps.json)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--cases", help="comma-separated case names (default: every case)")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    manifest = json.loads((Path(args.suite) / "manifest.json").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gaps = list(GAPS)
    chosen = None if args.cases is None else set(args.cases.split(","))
    ran = 0
    for case in manifest["cases"]:
        reason = case_gap(case) if chosen is None or case["name"] in chosen else "not chosen"
        if reason is not None:
            gaps.append({"case": case["name"], "reason": reason})
            continue
        with np.load(Path(args.suite) / case["file"], allow_pickle=False) as z:
            arrays = {n: z[n] for n in z.files if not n.startswith("expected_")}
        results: dict[str, Any] = RUNNERS[case["kind"]](arrays, dtype)
        np.savez(out / f"{case['name']}.npz", **results)
        ran += 1
    body = {"format": "numpy-attention-gaps", "framework": f"jax {jax.__version__}", "gaps": gaps}
    (out / "gaps.json").write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.dtype} results of {ran} cases to {out} ({len(gaps)} declared gaps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
