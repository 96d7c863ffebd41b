"""Run PyTorch's flex_attention on the numpy-attention golden suite and write results for ``check``.

Usage (see docs/verify.md, "flex_attention: score_mod and mask_mod")::

    numpy-attention vectors --out suite
    python examples/flex_adapter.py suite results-flex --dtype bfloat16
    numpy-attention check results-flex --suite suite --dtype bfloat16 --strict

Every case is expressed the way a flex_attention user writes it (torch 2.13.0, CPU):

- the positions as a ``mask_mod(b, h, q_idx, kv_idx) -> bool`` with its ``BlockMask``
  (``create_block_mask``): causal with either alignment (bottom-right: query ``i`` sits at
  key ``i + S - L``), ``window (left, right)`` with -1 unbounded, ``chunk_size``,
  ``sink_tokens``, a boolean ``attn_mask`` (True = attend, read as a captured tensor) and,
  for packed (varlen) sequences, the document mask of ``cu_seqlens``;
- the scores as a ``score_mod(score, b, h, q_idx, kv_idx)``: ``softcap`` (``c tanh(s / c)``,
  first, as the suite's pipeline), then a float ``attn_mask`` (``+ bias[b, h, q_idx, kv_idx]``)
  and ALiBi (``- slope[h] |q_idx + S - L - kv_idx|`` bottom-right, ``|q_idx - kv_idx|`` top-left);
- learnable ``sinks`` as one more key ``S`` with a zero key and value, visible to every row,
  whose score the ``score_mod`` sets to ``sinks[h]`` (gpt-oss's eager code concatenates the sink
  the same way): it joins each row's denominator and ``lse`` and adds nothing to ``out``;
- GQA with ``enable_gqa=True`` (query head ``h`` reads key/value head ``h // G``, the suite's
  order); a broadcast key/value batch is passed as it is;
- ``lse`` from ``return_aux=AuxRequest(lse=True)``: natural log, ``-inf`` for a row that sees
  no key, and ``out = 0`` there: the suite's conventions, no conversion needed.

With ``--compile`` the forward runs through ``torch.compile(flex_attention, dynamic=False)``,
the fused CPU kernel (a fresh compile per case: minutes for the suite). That kernel does
inference only and returns no ``lse`` on CPU, so ``lse`` is then a declared gap too. On a
CPU with only AVX2, torch 2.13.0's fused kernel is wrong at some shapes even with no mod (head
dim 8 or 16 with ``S`` = 24 or 40: errors of 0.1-1.2 or NaN; docs/verify.md has the measurements):
``check`` fails those cases, as it should.

What flex_attention cannot produce on CPU is declared in ``gaps.json`` (reported ``N/A`` by
``check``, not failed; ``--strict`` counts only undeclared gaps):

- the gradients: "FlexAttention does not support backward on CPU" (torch 2.13.0); run the same
  code on a GPU to check them;
- ``weights``: flex_attention never returns the attention weights;
- the dropout cases (no dropout) and the kinds that are not one attention call (KV cache,
  merge, rotary, the layers);
- ``out`` of the NaN-padded cases: the masked keys' NaN values reach it through ``0 * NaN`` in
  ``P V`` (measured, see ``PADDED_OUT``); their ``lse`` is checked.

flex_attention is a prototype in torch 2.13: it warns that without ``torch.compile`` it runs
an unfused implementation (the reference semantics, scores and softmax in float32 for
bfloat16 inputs, ``P`` rounded to the input dtype before ``P V``). torch is imported here only.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}  # fmt: skip
GRADIENTS = ("dq", "dk", "dv", "d_attn_mask", "d_sinks")
GAPS = [{"quantity": "weights", "reason": "flex_attention returns no attention weights"}] + [
    {"quantity": g, "reason": "FlexAttention does not support backward on CPU (torch 2.13.0)"}
    for g in GRADIENTS
]
PADDED_OUT = ("flex_attention reads the NaN keys and values of the padding: the mask_mod "
              "gives their scores -inf, but P V multiplies their NaN values by 0 (measured: out "
              "is NaN in every row of a padded sequence; lse is finite and checked)")  # fmt: skip


def tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Make a tensor of ``dtype`` from a suite array (exact: the inputs are bfloat16-exact)."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """float64/float32 stay; bfloat16 and float16 are upcast (exactly) to float32."""
    t = t.detach()
    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy().copy()


def mask_mod_of(a: dict, L: int, S: int) -> Callable:
    """Write the visibility of docs/variants.md as flex's ``mask_mod(b, h, q_idx, kv_idx)``."""
    d = S - L if bool(a.get("causal_bottom_right", False)) else 0  # query i sits at key i + d
    mask = a.get("attn_mask")
    allowed = None
    if mask is not None and mask.dtype == bool:
        allowed = torch.from_numpy(np.ascontiguousarray(_as_4d(mask)))  # True = attend
    left, right = (int(w) for w in a["window"]) if "window" in a else (-1, -1)
    chunk, n_sink = int(a.get("chunk_size", 0)), int(a.get("sink_tokens", 0))
    causal = bool(a["is_causal"])

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        i = q_idx + d
        local = kv_idx >= 0  # True
        if left >= 0:
            local = local & (kv_idx >= i - left)
        if right >= 0:
            local = local & (kv_idx <= i + right)
        if chunk:
            local = local & (i // chunk == kv_idx // chunk)
        if n_sink:
            local = local | (kv_idx < n_sink)  # the first keys stay visible outside the window
        if allowed is not None:
            local = local & allowed[_at(allowed, b, h, q_idx, kv_idx)]
        return local & (kv_idx <= i) if causal else local

    return mask_mod


def _at(t: torch.Tensor, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> tuple:
    """Index a captured ``(B or 1, H or 1, L or 1, S or 1)`` tensor at ``b, h, q_idx, kv_idx``."""
    zero = q_idx * 0
    return tuple(i if n > 1 else zero for i, n in zip((b, h, q_idx, kv_idx), t.shape, strict=True))


def _as_4d(mask: np.ndarray) -> np.ndarray:
    """Give a mask broadcastable to ``(B, H, L, S)`` exactly four axes (leading 1s)."""
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


def score_mod_of(a: dict, L: int, S: int, dtype: torch.dtype,
                 positions: Callable | None = None) -> Callable | None:  # fmt: skip
    """Softcap, a float ``attn_mask`` and ALiBi as flex's ``score_mod`` (None: none of them).

    ``positions(q_idx, kv_idx) -> (i, j)`` gives ALiBi's diagonal ``i`` and key ``j``; by
    default ``(q_idx + d, kv_idx)``, ``d = S - L`` bottom-right (varlen passes its own).
    """
    cap = float(a["softcap"]) if "softcap" in a else None
    mask = a.get("attn_mask")
    bias = tensor(_as_4d(mask), dtype) if mask is not None and mask.dtype != bool else None
    slopes = tensor(a["alibi_slopes"], torch.float32) if "alibi_slopes" in a else None
    d = S - L if bool(a.get("causal_bottom_right", False)) else 0
    if cap is None and bias is None and slopes is None:
        return None
    if positions is None:

        def positions(q_idx: Any, kv_idx: Any) -> tuple:
            return q_idx + d, kv_idx

    def score_mod(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        if cap is not None:
            score = cap * torch.tanh(score / cap)  # Eq. (8.2), before the bias and the masks
        if bias is not None:
            score = score + bias[_at(bias, b, h, q_idx, kv_idx)]  # Eq. (2.2)
        if slopes is not None:
            i, j = positions(q_idx, kv_idx)
            score = score - slopes[h] * (i - j).abs()  # Eq. (8.4)
        return score

    return score_mod


def attend(a: dict, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_mod: Callable,
           score_mod: Callable | None, compiled: bool) -> dict:  # fmt: skip
    """One flex_attention call: ``out`` (and ``lse`` unless compiled)."""
    B, Hq, L, _ = q.shape
    block_mask = create_block_mask(mask_mod, B, Hq, L, k.shape[-2], device="cpu")
    scale, gqa = float(a["scale"]), k.shape[1] != Hq
    if compiled:  # the fused CPU kernel: inference only, no lse
        torch._dynamo.reset()  # each case compiled alone: its verdict is its own kernel's
        fn = torch.compile(flex_attention, dynamic=False)
        return {"out": fn(q, k, v, score_mod, block_mask, scale, gqa)}
    out, aux = flex_attention(q, k, v, score_mod, block_mask, scale, gqa,
                              return_aux=AuxRequest(lse=True))  # fmt: skip
    return {"out": out, "lse": aux.lse}


def run_attention(a: dict, dtype: torch.dtype, compiled: bool) -> dict:
    """Run an sdpa, variant or padded case: ``(B, Hq, L, E)``, flex_attention's own layout."""
    q, k, v = (tensor(a[n], dtype) for n in ("q", "k", "v"))
    L, S = q.shape[-2], k.shape[-2]
    mask_mod, score_mod = mask_mod_of(a, L, S), score_mod_of(a, L, S, dtype)
    if "sinks" in a:
        k, v, mask_mod, score_mod = with_sink(a, k, v, mask_mod, score_mod, dtype)
    res = attend(a, q, k, v, mask_mod, score_mod, compiled)
    return {n: to_numpy(t) for n, t in res.items()}


def with_sink(a: dict, k: torch.Tensor, v: torch.Tensor, mask_mod: Callable,
              score_mod: Callable | None, dtype: torch.dtype) -> tuple:  # fmt: skip
    """Write learnable sinks (Eq. (8.9)) as one more key ``S``, visible to every row.

    Its key and value are zeros and its score is the sink logit ``sinks[h]`` (gpt-oss's eager
    code concatenates the sink the same way).

    The sink joins every row's denominator and ``lse`` and adds nothing to ``out``. The mods
    see the real keys' indices only (clamped), so a captured mask is never read past ``S``.
    """
    S = k.shape[-2]
    sinks = tensor(a["sinks"], torch.promote_types(dtype, torch.float32))
    k, v = (torch.nn.functional.pad(x, (0, 0, 0, 1)) for x in (k, v))  # key S: zeros

    def sink_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (kv_idx == S) | mask_mod(b, h, q_idx, kv_idx.clamp(max=S - 1))

    def sink_score(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        j = kv_idx.clamp(max=S - 1)
        real = score if score_mod is None else score_mod(score, b, h, q_idx, j)
        return torch.where(kv_idx == S, sinks[h].to(score.dtype), real)

    return k, v, sink_mask, sink_score


def run_varlen(a: dict, dtype: torch.dtype, compiled: bool) -> dict:
    """Packed sequences ``(T, H, E)`` as one flex call with a document mask (flex's own idiom).

    Token ``t`` belongs to the sequence ``doc[t]`` of ``cu_seqlens``; positions are counted
    from each sequence's start, so causal and windows align per sequence.
    """
    cu_q, cu_k = (torch.from_numpy(a[n].astype(np.int64)) for n in ("cu_seqlens_q", "cu_seqlens_k"))
    Tq, Tk = int(cu_q[-1]), int(cu_k[-1])
    doc_q = torch.searchsorted(cu_q[1:], torch.arange(Tq), right=True)
    doc_k = torch.searchsorted(cu_k[1:], torch.arange(Tk), right=True)
    len_q, len_k = cu_q.diff(), cu_k.diff()
    q, k, v = (tensor(a[n], dtype).transpose(0, 1)[None] for n in ("q", "k", "v"))  # (1, H, T, E)
    per_seq = mask_mod_of(dict(a, causal_bottom_right=False), 1, 1)  # alignment added below
    bottom_right = bool(a.get("causal_bottom_right", False))

    def positions(q_idx: Any, kv_idx: Any) -> tuple:
        """Query ``q_idx``'s diagonal and key ``kv_idx``'s position, each in its sequence."""
        dq, dk = doc_q[q_idx], doc_k[kv_idx]
        i = q_idx - cu_q[dq] + (len_k[dq] - len_q[dq] if bottom_right else 0)
        return i, kv_idx - cu_k[dk]

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (doc_q[q_idx] == doc_k[kv_idx]) & per_seq(b, h, *positions(q_idx, kv_idx))

    score_mod = score_mod_of(a, 1, 1, dtype, positions)
    if "sinks" in a:
        k, v, mask_mod, score_mod = with_sink(a, k, v, mask_mod, score_mod, dtype)
    res = attend(a, q, k, v, mask_mod, score_mod, compiled)
    res["out"] = res["out"][0].transpose(0, 1)  # (T, H, Ev)
    if "lse" in res:
        res["lse"] = res["lse"][0]  # (H, T)
    return {n: to_numpy(t) for n, t in res.items()}


RUNNERS = {"sdpa": run_attention, "variant": run_attention, "padded": run_attention,
           "varlen": run_varlen}  # fmt: skip


def case_gap(case: dict) -> str | None:
    """Why flex_attention cannot run ``case`` (None: it can)."""
    kind, flags = case["kind"], case["flags"]
    if kind not in RUNNERS:
        return f"kind {kind!r} is not one flex_attention call"
    if flags.get("dropout_p"):
        return "flex_attention has no dropout"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run every case flex_attention can express, in one dtype; write ``OUT/<case>.npz``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("suite", help="directory written by 'numpy-attention vectors'")
    parser.add_argument("out", help="directory for the results (<case>.npz, gaps.json)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="the fused CPU kernel (torch.compile; out only, slow to compile)",
    )
    parser.add_argument("--cases", help="comma-separated case names (default: every case)")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    manifest = json.loads((Path(args.suite) / "manifest.json").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gaps = list(GAPS)
    if args.compile:
        gaps.append({"quantity": "lse", "reason": "the compiled CPU kernel returns no lse"})
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
    ran = 0
    chosen = None if args.cases is None else set(args.cases.split(","))
    for case in manifest["cases"]:
        reason = case_gap(case) if chosen is None or case["name"] in chosen else "not chosen"
        if reason is not None:
            gaps.append({"case": case["name"], "reason": reason})
            continue
        with np.load(Path(args.suite) / case["file"], allow_pickle=False) as z:
            arrays = {n: z[n] for n in z.files if not n.startswith("expected_")}
        results = RUNNERS[case["kind"]](arrays, dtype, args.compile)
        if case["kind"] == "padded":
            gaps.append({"case": case["name"], "quantity": "out", "reason": PADDED_OUT})
            del results["out"]
        np.savez(out / f"{case['name']}.npz", **results)
        ran += 1
    body = {"format": "numpy-attention-gaps", "framework": f"torch {torch.__version__} "
            f"flex_attention{' (compiled)' if args.compile else ''}", "gaps": gaps}  # fmt: skip
    (out / "gaps.json").write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.dtype} flex_attention results of {ran} cases to {out} "
          f"({len(gaps)} declared gaps)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
