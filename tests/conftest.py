"""Hypothesis profiles: ``ci`` is derandomized (same examples every run), ``dev`` explores."""

import os

from hypothesis import HealthCheck, settings

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
