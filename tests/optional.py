"""The tests' optional dependencies: what a skip says when one is missing, and how to install it."""

import pytest

#: The reason every torch cross-check gives when torch is missing (pytest -rs prints it).
TORCH_MISSING = "torch not installed: pip install torch==2.13.0 (CPU) to run the cross-checks"


def import_torch():
    """Return the torch module, or skip the test saying why and how to run it."""
    return pytest.importorskip("torch", reason=TORCH_MISSING)
