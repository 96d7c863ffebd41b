"""Hypothesis profiles (``ci`` is derandomized: same examples every run; ``dev`` explores), and
the default golden suite as a fixture shared by the framework adapters' tests."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from numpy_attention.verify import write_suite

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
