"""examples/jax_adapter.py: JAX's dot_product_attention passes the suite; planted bugs fail it.

The adapter runs every sdpa, variant, varlen and padded case it can express as one
``jax.nn.dot_product_attention`` call (the positions as ``mask``, ALiBi and float masks as
``bias``, a document mask for varlen, padding packed away), with gradients by ``jax.vjp``.
Skipped without jax; .ci/jax-check runs the whole suite in float32 and bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from optional import JAX_MISSING

from numpy_attention.verify import check_path

ROOT = Path(__file__).resolve().parents[1]
#: One case of each new thing: windows (bottom-right; one side unbounded), ALiBi with bottom-right
#: causal, a chunk, sink tokens, varlen (GQA, both a bottom-right causal and a window, sequences
#: with no query or no key), NaN padding with causal, sinks (one row sees only its sink), E != Ev
#: (zero columns); and, as before, a float mask with its gradient and fully masked rows.
RUN = ("variant_window", "variant_window_left", "variant_alibi_bottom_right",
       "variant_chunk_causal", "variant_sink_tokens_window", "varlen_causal_bottom_right",
       "varlen_window", "nan_padding_causal", "causal_bottom_right_and_float_bias",
       "fully_masked_rows", "variant_sinks", "variant_sinks_fully_masked", "value_width",
       "varlen_causal_top_left")  # fmt: skip
#: What the adapter declares instead: softcap, dropout, the kinds that are not one call.
GAPPED = {"variant_gemma2": "no softcap", "dropout": "no dropout",
          "merge_split_kv": "no attention call"}  # fmt: skip
#: A bug planted in the adapter's source (``old`` -> ``new``) and the cases it must fail.
PLANTS = {
    "window_right_bound_exclusive": (
        "ok = ok & (j <= i + right)", "ok = ok & (j < i + right)",
        {"variant_window", "variant_sink_tokens_window", "varlen_window"},
    ),
    "alibi_without_bottom_right_offset": (
        "return attend(a, dtype, allowed, alibi(a, i - j))",
        "return attend(a, dtype, allowed, alibi(a, i - d - j))",
        {"variant_alibi_bottom_right"},
    ),
    "varlen_without_its_offset": (
        "i = i + (len_k - len_q)[doc_q]", "i = i  # planted",
        {"varlen_causal_bottom_right", "varlen_window"},
    ),
    "sink_logit_scaled_like_a_score": (
        "jnp.broadcast_to(sinks[:, None, None], (B, H, L, 1))",
        "jnp.broadcast_to(sinks[:, None, None] * a['scale'], (B, H, L, 1))",
        {"variant_sinks", "variant_gpt_oss", "variant_sinks_fully_masked"},
    ),
    "padding_masked_not_packed": (
        '"padded": run_padded', '"padded": run_attention', {"nan_padding", "nan_padding_causal"}
    ),
}  # fmt: skip


def _adapter(plant: tuple[str, str] | None = None) -> ModuleType:
    """Load examples/jax_adapter.py, with ``plant = (old, new)`` replacing its one ``old``."""
    pytest.importorskip("jax", reason=JAX_MISSING)
    source = (ROOT / "examples/jax_adapter.py").read_text()
    if plant is not None:
        assert source.count(plant[0]) == 1, plant[0]
        source = source.replace(*plant)
    module = ModuleType("jax_adapter")
    exec(compile(source, str(ROOT / "examples/jax_adapter.py"), "exec"), module.__dict__)
    return module


def test_jax_passes_check_with_its_gaps_declared(default_suite: Path, tmp_path: Path) -> None:
    """No false alarm: every quantity but weights passes in float32; the gaps are N/A."""
    suite = default_suite  # conftest.py: written once per session
    adapter = _adapter()
    cases = ",".join((*RUN, *GAPPED))
    assert adapter.main([str(suite), str(tmp_path), "--dtype", "float32", "--cases", cases]) == 0
    rep = check_path(tmp_path, suite, dtype="float32", strict=True)
    assert rep.passed, rep.table()
    manifest = {c["name"]: c for c in json.loads((suite / "manifest.json").read_text())["cases"]}
    graded = {(c, q) for c in RUN for q in manifest[c]["quantities"] if q != "weights"}
    assert {(r.case, r.quantity) for r in rep.rows if r.status == "PASS"} == graded
    assert set(GAPPED) <= set(rep.gap_cases)  # N/A, whole cases
    gaps = json.loads((tmp_path / "gaps.json").read_text())["gaps"]
    reasons = {g.get("case"): g["reason"] for g in gaps}
    for case, why in GAPPED.items():
        assert why in reasons[case], reasons[case]


@pytest.mark.parametrize("planted", sorted(PLANTS))
def test_a_bug_planted_in_the_adapter_fails_check(
    default_suite: Path, tmp_path: Path, planted: str
) -> None:
    """The check can fail: each planted bug fails exactly its cases, and not a control case."""
    suite = default_suite  # conftest.py: written once per session
    old, new, failing = PLANTS[planted]
    adapter = _adapter((old, new))
    cases = ",".join(sorted(failing | {"gqa"}))
    assert adapter.main([str(suite), str(tmp_path), "--dtype", "float32", "--cases", cases]) == 0
    rep = check_path(tmp_path, suite, dtype="float32", strict=True)
    assert not rep.passed
    failed = {r.case for r in rep.rows if r.status == "FAIL"}
    assert failed == failing, rep.table()


def test_jax_passes_varlen_with_sinks_alibi_and_e_ne_ev(varlen_suite: Path, tmp_path: Path) -> None:
    """Varlen positions reach ALiBi and the sink key, and d_sinks comes back as (Hq,)."""
    adapter = _adapter()
    assert adapter.main([str(varlen_suite), str(tmp_path), "--dtype", "float32"]) == 0
    rep = check_path(tmp_path, varlen_suite, dtype="float32", strict=True)
    assert rep.passed, rep.table()
    assert rep.counts["PASS"] == 12  # out, lse, dq, dk, dv, d_sinks of the two; softcap a gap
