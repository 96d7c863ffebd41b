"""The tests' optional dependencies: what a skip says when one is missing, and how to install it.

Use: ``torch = pytest.importorskip("torch", reason=TORCH_MISSING)``.
"""

#: The reason every torch cross-check gives when torch is missing (pytest -rs prints it).
TORCH_MISSING = "torch not installed: pip install torch==2.13.0 (CPU) to run the cross-checks"

#: The reason the JAX adapter's tests give when jax is missing.
JAX_MISSING = "jax not installed: pip install jax==0.10.2 (CPU) to run the JAX adapter's tests"
