"""Hypothesis profiles (``ci`` is derandomized: same examples every run; ``dev`` explores), and
the default golden suite as a fixture shared by the framework adapters' tests."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from numpy_attention.verify import cases_from_config, write_suite

#: Helper modules that import torch at the top: tests import them after importorskip("torch");
#: --doctest-modules must not import them itself, or a machine without torch (README's test
#: command in a fresh .venv) fails at collection instead of skipping the cross-checks.
collect_ignore = ["torch_reference.py"]

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def default_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default suite (``numpy-attention vectors``), written once: read it, never write to it."""
    path = tmp_path_factory.mktemp("default-suite") / "suite"
    write_suite(path)
    return path


#: User-sized varlen cases that combine what the default suite keeps apart: sinks with GQA, a
#: window and an empty sequence; softcap; ALiBi with sinks, bottom-right, E != Ev.
VARLEN_COMBINATIONS = {"seed": 0, "cases": [
    {"name": "varlen_sinks", "lengths_q": [3, 0, 5], "lengths_k": [4, 2, 7], "Hq": 4, "Hkv": 2,
     "E": 8, "is_causal": True, "sinks": True, "window": [3, 0]},
    {"name": "varlen_softcap", "lengths_q": [3, 5], "lengths_k": [4, 7], "Hq": 2, "E": 8,
     "softcap": 5.0},
    {"name": "varlen_alibi_sinks_br", "lengths_q": [2, 6], "lengths_k": [5, 6], "Hq": 2, "E": 8,
     "Ev": 4, "is_causal": True, "causal_align": "bottom_right", "alibi": True, "sinks": True},
]}  # fmt: skip


@pytest.fixture(scope="session")
def varlen_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A suite of :data:`VARLEN_COMBINATIONS`, written once: read it, never write to it."""
    path = tmp_path_factory.mktemp("varlen-suite") / "suite"
    write_suite(path, cases_from_config(VARLEN_COMBINATIONS))
    return path
