"""The baseline of the variant cases (issue 15): the naive same-dtype emulation of softcap,
ALiBi, windows, chunks, sink tokens and sinks, and the verdicts it gives.

1. In float64 (where rounding is the identity) the emulation, dense and blocked, is the truth.
2. Correct candidates pass the baseline on every variant case: PyTorch through the adapter,
   a naive same-dtype PyTorch written here (autograd), this package's float32 attention.
3. Planted variant bugs in that naive PyTorch fail under the baseline policy.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from optional import TORCH_MISSING

import numpy_attention.verify.precision as precision
from numpy_attention.attention import attention_backward, attention_forward
from numpy_attention.masks import Positions
from numpy_attention.verify import cases as cases_module
from numpy_attention.verify import cases_from_config, compare_attention, emulate_sdpa
from numpy_attention.verify.precision import baseline_errors
from numpy_attention.verify.suite import manifest
from numpy_attention.verify.tolerance import DTYPES

ROOT = Path(__file__).resolve().parents[1]

#: Combinations the suite lacks: softcap with ALiBi (the order of the two matters), chunks with
#: sink tokens and sinks, a window with sinks where rows see no key (L > S, bottom-right).
EXTRA = {
    "seed": 3,
    "cases": [
        {"name": "softcap_alibi", "B": 2, "Hq": 4, "Hkv": 2, "L": 7, "S": 11, "E": 16,
         "softcap": 3.0, "alibi": True, "is_causal": True, "causal_align": "bottom_right"},
        {"name": "chunk_sink_tokens_sinks", "Hq": 2, "L": 12, "S": 12, "E": 8, "chunk_size": 5,
         "sink_tokens": 2, "sinks": True},
        {"name": "window_sinks_tall", "Hq": 2, "L": 9, "S": 4, "E": 8, "window": [1, 1],
         "sinks": True, "is_causal": True, "causal_align": "bottom_right"},
    ],
}  # fmt: skip

#: The suite's variant cases (built from its table alone: no need for the whole suite), then EXTRA.
CASES = [
    cases_module._sdpa_case(name, cases_module._DESCRIPTIONS[name], seed, q, k, Ev, **options)
    for name, seed, q, k, Ev, options in cases_module._SDPA_TABLE
    if name.startswith("variant_")
] + cases_from_config(EXTRA)
BY_NAME = {c.name: c for c in CASES}
LOW = ("bfloat16", "float16")


def _assert_truth(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal to 1e-12 of the quantity's scale; infinities (lse of dead rows) exactly."""
    assert got.shape == want.shape, what
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=what)
    err = float(np.max(np.abs(got[~inf] - want[~inf]), initial=0.0))
    scale = max(1.0, float(np.max(np.abs(want[~inf]), initial=0.0)))
    assert err <= 1e-12 * scale, (what, err)


# --- 1. the emulation in float64 is the truth -----------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_float64_emulation_is_the_truth_of_every_variant(case) -> None:
    """rounding('float64') is the identity: the naive steps, variants included, give the
    float64 truth (numpy_attention.attention) to 1e-12, every quantity, d_sinks too."""
    assert case.kind == "variant"
    got = emulate_sdpa(case.inputs, "float64")
    assert set(got) == set(case.expected), case.name
    for q, want in case.expected.items():
        _assert_truth(got[q], want, f"{case.name} {q}")


@pytest.mark.parametrize("key_block", [256, 2])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_float64_blocked_emulation_is_the_truth_of_every_variant(case, key_block,
                                                                 monkeypatch) -> None:  # fmt: skip
    """The blocked emulation of long cases, one query row a block (positions, ALiBi distances
    and the sinks' gradient sum must follow the row offset), is the truth in float64; with key
    blocks of 2 it skips the ones a row cannot see (ALiBi and the masks must follow the kept
    keys' indices, dk and dv land on their rows)."""
    monkeypatch.setattr(precision, "_BLOCK_SCORES", 1)
    monkeypatch.setattr(precision, "_KEY_BLOCK", key_block)
    got = precision._emulate_blocked(case.inputs, "float64")
    assert set(got) == set(case.expected) - {"weights"}, case.name
    for q, want in case.expected.items():
        if q != "weights":
            _assert_truth(got[q], want, f"{case.name} {q}")


def test_blocked_emulation_reads_only_the_key_blocks_a_row_sees(monkeypatch) -> None:
    """A window (2, 0) over 64 keys, blocks of 4 keys: a row reads 1 or 2 blocks (plus the
    sink tokens' block), not 16; a row that sees no key (L > S, bottom-right) keeps one."""
    monkeypatch.setattr(precision, "_KEY_BLOCK", 4)
    window = Positions(is_causal=True, window=(2, 0), sink_tokens=1)
    assert [len(precision._visible_keys(window, i, i + 1, 64)) for i in (0, 5, 40)] == [4, 8, 12]
    assert set(precision._visible_keys(window, 40, 41, 64)) == {0, 1, 2, 3, 36, 37, 38, 39, 40,
                                                                  41, 42, 43}  # fmt: skip
    tall = Positions(is_causal=True, offset=-3)  # L = 7, S = 4 bottom-right: rows 0-2 see none
    assert list(precision._visible_keys(tall, 0, 3, 4)) == [0, 1, 2, 3]
    assert len(precision._visible_keys(Positions(), 0, 9, 64)) == 64  # no mask: every key


def test_blocked_emulation_gives_up_heads_before_rows() -> None:
    """A block holds at most its budget of scores (or one row of one head), and takes fewer
    heads rather than fewer than _BLOCK_ROWS rows: 32 heads of 4096 keys go 4 heads of 128
    rows a block, not 32 heads of 16 rows that reread every key every 16 queries."""
    budget, least = precision._BLOCK_SCORES, precision._BLOCK_ROWS
    assert precision._block_shape(32, 1, 4096) == (4, 128)
    for H, batch, S in itertools.product([1, 3, 8, 32, 64], [1, 2, 5], [1, 100, 4096, 2**16]):
        heads, rows = precision._block_shape(H, batch, S)
        assert 1 <= heads <= H and rows >= 1, (H, batch, S)
        assert heads * rows * batch * S <= max(budget, batch * S), (H, batch, S)
        if least * batch * S <= budget:  # one head of that many rows fits: never fewer rows
            assert rows >= least, (H, batch, S, heads, rows)


def test_variant_cases_have_a_stored_baseline_blocked_as_dense(monkeypatch) -> None:
    """manifest.json stores baseline_error for every variant case (d_sinks included), and the
    blocked emulation gives about the dense one in float16 and bfloat16."""
    entries = {e["name"]: e for e in manifest(CASES)["cases"]}
    for case in CASES:
        b = entries[case.name]["baseline_error"]
        assert set(b["bfloat16"]) == set(case.expected), case.name
        user = "dtypes" in case.flags  # a config's case: the low-precision dtypes it names
        assert set(b) == ({"bfloat16", "float16"} if user else set(DTYPES)), case.name
        chain = [b[d]["dv"] for d in ("bfloat16", "float16", "float32") if d in b]
        assert chain == sorted(chain, reverse=True) and len(set(chain)) == len(chain), case.name
        assert chain[-1] > 0, case.name
    monkeypatch.setattr(precision, "BLOCKED_FROM", 1)
    monkeypatch.setattr(precision, "_BLOCK_SCORES", 3 * 4 * 11)
    for case in CASES:
        blocked = baseline_errors(case.inputs, case.expected, case.kind)
        for dtype in LOW:
            want = {q: e for q, e in entries[case.name]["baseline_error"][dtype].items()
                    if q != "weights"}  # fmt: skip
            assert blocked[dtype] == pytest.approx(want, rel=0.25), (case.name, dtype)


# --- 2. correct candidates pass the baseline --------------------------------------------------


def _grade(case, results: dict[str, Any], dtype: str) -> list:
    """Compare every quantity a candidate returned under the baseline policy."""
    base = baseline_errors(case.inputs, case.expected, case.kind)[dtype]
    out = []
    for q, want in case.expected.items():
        if results.get(q) is not None:
            got = np.asarray(results[q], dtype=np.float64)
            out.append(compare_attention(got, want, dtype=dtype, quantity=q, baseline=base[q]))
    return out


def _adapter() -> Any:
    spec = importlib.util.spec_from_file_location(
        "torch_adapter", ROOT / "examples/torch_adapter.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def naive_torch(a: dict[str, Any], dtype: str, bug: str | None = None) -> dict[str, Any]:
    """Attention with the variants written in PyTorch ops in ``dtype`` (no upcast), as
    FlashAttention's ``attention_ref(upcast=False)`` and gpt-oss's sinks; autograd backward.

    ``bug`` plants one variant mistake: ``softcap_after_bias`` (ALiBi added before the cap),
    ``window_off_by_one`` (the window's left side one key wider), ``alibi_offset_ignored``
    (distance ``|i - j|`` under bottom-right alignment), ``softcap_backward_missing`` (the
    cap's derivative left out of the backward), ``d_sinks_first_batch`` (the sinks' gradient
    of batch 0 only).
    """
    import torch

    dt = getattr(torch, dtype)

    def t(x: Any, grad: bool = False) -> Any:
        return torch.tensor(np.asarray(x), dtype=dt, requires_grad=grad)

    q, k, v = (t(a[n], True) for n in ("q", "k", "v"))
    L, S = q.shape[-2], k.shape[-2]
    if bool(a["enable_gqa"]):
        G = q.shape[-3] // k.shape[-3]
        kk, vv = k.repeat_interleave(G, dim=-3), v.repeat_interleave(G, dim=-3)
    else:
        kk, vv = k, v
    s = (q @ kk.transpose(-1, -2)) * float(a["scale"])
    c = float(a["softcap"]) if "softcap" in a else None

    def cap(x: Any) -> Any:
        y = torch.tanh(x / c) * c
        return x + (y - x).detach() if bug == "softcap_backward_missing" else y

    if c is not None and bug != "softcap_after_bias":
        s = cap(s)
    d = S - L if bool(a["causal_bottom_right"]) else 0
    i, j = np.arange(L)[:, None] + d, np.arange(S)[None, :]  # query i sits over key i + d
    if "alibi_slopes" in a:
        dist = np.abs(i - (d if bug == "alibi_offset_ignored" else 0) - j)
        s = s + t(-np.asarray(a["alibi_slopes"])[:, None, None] * dist)
    if c is not None and bug == "softcap_after_bias":
        s = cap(s)
    local = np.ones((L, S), dtype=bool)
    if "window" in a:
        left, right = (int(w) for w in a["window"])
        left += bug == "window_off_by_one" and left >= 0
        local &= (j >= i - left) if left >= 0 else True
        local &= (j <= i + right) if right >= 0 else True
    if "chunk_size" in a:
        local &= i // int(a["chunk_size"]) == j // int(a["chunk_size"])
    if int(a.get("sink_tokens", 0)):
        local |= j < int(a["sink_tokens"])
    if bool(a["is_causal"]):
        local &= j <= i
    s = s.masked_fill(torch.from_numpy(~local), -torch.inf)
    sinks = None
    if "sinks" in a:  # one leaf per batch, to plant the unreduced gradient
        lead = s.shape[:-3]
        sinks = t(np.broadcast_to(a["sinks"], tuple(lead) + a["sinks"].shape).copy(), True)
        s = torch.cat([s, sinks[..., :, None, None].expand(s.shape[:-1] + (1,))], dim=-1)
    else:
        assert local.any(axis=-1).all(), "a row sees no key: softmax would give NaN"
    P = torch.softmax(s, dim=-1)
    lse = torch.logsumexp(s, dim=-1)
    if sinks is not None:
        P = P[..., :-1]
    out = P @ vv
    out.backward(t(a["d_out"]))
    res = {"out": out, "weights": P, "lse": lse, "dq": q.grad, "dk": k.grad, "dv": v.grad}
    if sinks is not None:
        g = sinks.grad.reshape(-1, sinks.shape[-1])
        res["d_sinks"] = g[0] if bug == "d_sinks_first_batch" else g.sum(dim=0)
    return {n: x.detach().float().numpy() for n, x in res.items()}


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_adapter_passes_the_variant_baseline(case, dtype: str) -> None:
    """No false alarm: examples/torch_adapter.py (SDPA with the masks, eager softcap and
    sinks) passes every quantity of every variant case, judged by the baseline."""
    pytest.importorskip("torch", reason=TORCH_MISSING)
    import torch

    rows = _grade(case, _adapter().run_variant(dict(case.inputs), getattr(torch, dtype)), dtype)
    assert rows and all(r.policy == "baseline" for r in rows)
    assert all(r.passed for r in rows), [str(r) for r in rows if not r.passed]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_naive_same_dtype_torch_passes_the_variant_baseline(case, dtype: str) -> None:
    """The implementation the baseline emulates, run by PyTorch itself in the dtype, passes:
    the emulation's roundings are no kinder than real same-dtype arithmetic."""
    pytest.importorskip("torch", reason=TORCH_MISSING)
    rows = _grade(case, naive_torch(dict(case.inputs), dtype), dtype)
    assert {r.quantity for r in rows} == set(case.expected)
    assert all(r.passed for r in rows), [str(r) for r in rows if not r.passed]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_float32_attention_passes_the_bfloat16_variant_baseline(case) -> None:
    """This package's float32 attention (the variants as keywords) is within bfloat16's."""
    a = case.inputs
    f = np.float32
    kw: dict[str, Any] = {n: a[n] for n in ("alibi_slopes", "sinks") if n in a}
    kw.update({n: float(a[n]) for n in ("softcap",) if n in a})
    kw.update({n: int(a[n]) for n in ("chunk_size", "sink_tokens") if n in a})
    if "window" in a:
        kw["window"] = tuple(None if w < 0 else int(w) for w in a["window"])
    out, cache = attention_forward(
        a["q"].astype(f), a["k"].astype(f), a["v"].astype(f), is_causal=bool(a["is_causal"]),
        scale=float(a["scale"]), enable_gqa=bool(a["enable_gqa"]),
        causal_align="bottom_right" if bool(a["causal_bottom_right"]) else "top_left", **kw,
    )  # fmt: skip
    g = attention_backward(a["d_out"].astype(f), cache)
    res = {"out": out, "weights": cache.P, "lse": cache.lse, "dq": g.dq, "dk": g.dk, "dv": g.dv,
           "d_sinks": g.d_sinks}  # fmt: skip
    rows = _grade(case, res, "bfloat16")
    assert {r.quantity for r in rows} == set(case.expected)
    assert all(r.passed and r.policy == "baseline" for r in rows), [str(r) for r in rows]


# --- 3. planted variant bugs fail under the baseline ------------------------------------------

#: bug -> the cases it is planted in (each must fail somewhere, in both low dtypes).
BUGS = {
    "softcap_after_bias": ["softcap_alibi"],
    "window_off_by_one": ["variant_window", "variant_gemma2", "variant_gpt_oss"],
    "alibi_offset_ignored": ["variant_alibi_bottom_right", "softcap_alibi"],
    "softcap_backward_missing": ["variant_softcap", "variant_gemma2"],
    "d_sinks_first_batch": ["variant_sinks", "variant_gpt_oss"],
}


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_variant_bug_fails_the_baseline(bug: str, dtype: str) -> None:
    pytest.importorskip("torch", reason=TORCH_MISSING)
    failed = []
    for name in BUGS[bug]:
        case = BY_NAME[name]
        rows = _grade(case, naive_torch(dict(case.inputs), dtype, bug=bug), dtype)
        failed += [f"{name} {r.quantity}" for r in rows if not r.passed and r.policy == "baseline"]
    assert failed, f"{bug} was not caught at {dtype} under the baseline policy"
