"""examples/flex_adapter.py: torch's flex_attention passes the suite, and a wrong mod fails it.

The adapter writes each case as a flex user would (mask_mod and BlockMask, score_mod,
enable_gqa, a document mask for varlen). Skipped without torch; .ci/flex-check runs the whole
suite in three dtypes and the fused kernel.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from optional import TORCH_MISSING

from numpy_attention.verify import check_path

ROOT = Path(__file__).resolve().parents[1]
#: One case of each thing the adapter writes: the positions (both alignments, window, chunk,
#: sink tokens, a bool mask), the score_mod (softcap, float mask, ALiBi), GQA, varlen, padding,
#: and a sink (an extra key; one row sees only it).
CASES = ("causal_bottom_right_and_bool_mask,float_bias_per_batch,gqa,variant_gemma2,"
         "variant_alibi_bottom_right,variant_chunk_causal,variant_sink_tokens_window,"
         "varlen_causal_bottom_right,varlen_window,nan_padding,fully_masked_rows,"
         "variant_sinks_fully_masked")  # fmt: skip


def _adapter() -> ModuleType:
    pytest.importorskip("torch", reason=TORCH_MISSING)
    spec = importlib.util.spec_from_file_location("flex_adapter", ROOT / "examples/flex_adapter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["flex_adapter"] = module  # torch.compile's tracer imports the mods' module
    spec.loader.exec_module(module)
    return module


def test_flex_attention_passes_check_with_its_gaps_declared(
    default_suite: Path, tmp_path: Path
) -> None:
    """No false alarm: out and lse of every chosen case pass in float32; the rest is N/A."""
    suite = default_suite  # conftest.py: written once per session
    flex = _adapter()
    assert flex.main([str(suite), str(tmp_path), "--dtype", "float32", "--cases", CASES]) == 0
    rep = check_path(tmp_path, suite, dtype="float32", strict=True)
    assert rep.passed, rep.table()
    assert rep.counts["PASS"] == 2 * len(CASES.split(",")) - 1  # nan_padding: lse only


@pytest.mark.parametrize(
    ("planted", "failing"),
    [
        ("softcap", {"variant_gemma2"}),
        ("alibi_top_left", {"variant_alibi_bottom_right"}),
        ("varlen_offset", {"varlen_causal_bottom_right", "varlen_window"}),
        ("sink_scaled", {"variant_sinks", "variant_gpt_oss", "variant_sinks_fully_masked"}),
    ],
)
def test_a_wrong_mod_in_the_adapter_fails_check(
    default_suite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str, failing: set
) -> None:
    """The check can fail: drop the softcap; align ALiBi or varlen top-left; scale the sink."""
    suite = default_suite  # conftest.py: written once per session
    flex = _adapter()
    if planted == "softcap":
        right = flex.score_mod_of
        monkeypatch.setattr(flex, "score_mod_of", lambda a, *r: right(
            {n: x for n, x in a.items() if n != "softcap"}, *r))  # fmt: skip
    elif planted == "sink_scaled":  # the sink logit scaled like a score
        sink = flex.with_sink
        monkeypatch.setattr(flex, "with_sink", lambda a, *r: sink(
            dict(a, sinks=a["sinks"] * a["scale"]), *r))  # fmt: skip
    else:
        key = "alibi_slopes" if planted == "alibi_top_left" else "cu_seqlens_q"
        runner = flex.RUNNERS["variant" if key == "alibi_slopes" else "varlen"]

        def wrong(a: dict, *rest: object) -> dict:
            return runner(dict(a, causal_bottom_right=False) if key in a else a, *rest)

        monkeypatch.setitem(flex.RUNNERS, "variant" if key == "alibi_slopes" else "varlen", wrong)
    cases = ",".join(sorted(failing | {"gqa"}))  # and one case the plant leaves right
    assert flex.main([str(suite), str(tmp_path), "--dtype", "float32", "--cases", cases]) == 0
    rep = check_path(tmp_path, suite, dtype="float32", strict=True)
    assert not rep.passed
    failed = {r.case for r in rep.rows if r.status == "FAIL"}
    assert failed == failing, rep.table()


def test_flex_attention_passes_varlen_with_sinks_alibi_and_softcap(
    varlen_suite: Path, tmp_path: Path
) -> None:
    """Varlen positions reach every mod: ALiBi per sequence, the sink key, softcap."""
    flex = _adapter()
    assert flex.main([str(varlen_suite), str(tmp_path), "--dtype", "float32"]) == 0
    rep = check_path(tmp_path, varlen_suite, dtype="float32", strict=True)
    assert rep.passed, rep.table()
    assert rep.counts["PASS"] == 6  # out and lse of the three
