r"""The verification wing: checking attention implementations, ours and other people's.

Read in this order (``docs/verify.md`` is the chapter):

- :mod:`~numpy_attention.verify.gradcheck`: :func:`gradcheck`, a hand-written
  backward against float64 finite differences.
- :mod:`~numpy_attention.verify.tolerance`: the tolerance policy
  (:data:`TOLERANCES`, :func:`tolerance`, :data:`DTYPES`) and
  :func:`round_to_bfloat16`.
- :mod:`~numpy_attention.verify.compare`: :func:`compare_attention` and
  :func:`assert_attention_close`, which apply the policy to two arrays, and
  :mod:`~numpy_attention.verify.diagnosis`, which explains a failure.
- :mod:`~numpy_attention.verify.cases`: the golden suite's case table
  (:func:`build_suite`), one line per case.
- :mod:`~numpy_attention.verify.config`: :func:`cases_from_config`, cases at a
  user's shapes and variants from a small JSON config.
- :mod:`~numpy_attention.verify.suite`: the suite on disk
  (:func:`write_suite`, :func:`load_suite`, :func:`load_results`), with the
  file rules of :mod:`~numpy_attention.verify._files` (:class:`UnusableInput`).
- :mod:`~numpy_attention.verify.grading`: :func:`check_path` and
  :func:`check_results`, the verdict of ``numpy-attention check``
  (:class:`CheckReport`).

The command line's ``vectors`` and ``check`` are thin layers over
:func:`write_suite` and :func:`check_path`.
"""

from ._files import MAX_ARRAY_BYTES, UnusableInput
from .cases import Case, build_suite
from .compare import Comparison, assert_attention_close, compare_attention
from .config import cases_from_config
from .diagnosis import diagnose
from .gradcheck import GradcheckReport, gradcheck
from .grading import CheckReport, Row, check_path, check_results
from .suite import (
    MAX_SUITE_BYTES,
    SUITE_FORMAT,
    SUITE_VERSION,
    load_results,
    load_suite,
    manifest,
    write_suite,
)
from .tolerance import (
    DTYPES,
    MAX_TOLERANCE,
    TOLERANCES,
    Tolerance,
    round_to_bfloat16,
    tolerance,
    tolerance_table,
)

__all__ = [
    "gradcheck",
    "GradcheckReport",
    "DTYPES",
    "Tolerance",
    "TOLERANCES",
    "MAX_TOLERANCE",
    "tolerance",
    "tolerance_table",
    "round_to_bfloat16",
    "Comparison",
    "compare_attention",
    "assert_attention_close",
    "diagnose",
    "Case",
    "build_suite",
    "cases_from_config",
    "SUITE_FORMAT",
    "SUITE_VERSION",
    "MAX_SUITE_BYTES",
    "MAX_ARRAY_BYTES",
    "manifest",
    "write_suite",
    "load_suite",
    "load_results",
    "UnusableInput",
    "Row",
    "CheckReport",
    "check_results",
    "check_path",
]
