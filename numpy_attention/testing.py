"""Tools for checking attention implementations: the documented path of the verification wing.

Everything here lives in :mod:`numpy_attention.verify` (``gradcheck``,
``assert_attention_close``, ``compare_attention``, the tolerance policy, the
diagnosis); this module re-exports it so that
``from numpy_attention.testing import gradcheck`` keeps working.
"""

from .verify.compare import Comparison, assert_attention_close, compare_attention
from .verify.diagnosis import diagnose
from .verify.gradcheck import GradcheckReport, gradcheck
from .verify.tolerance import DTYPES, TOLERANCES, Tolerance, round_to_bfloat16, tolerance

__all__ = [
    "GradcheckReport",
    "gradcheck",
    "Tolerance",
    "TOLERANCES",
    "DTYPES",
    "tolerance",
    "Comparison",
    "compare_attention",
    "assert_attention_close",
    "round_to_bfloat16",
    "diagnose",
]
