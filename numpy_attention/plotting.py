"""Attention maps with matplotlib: the documented path of :mod:`numpy_attention.app.plotting`.

``from numpy_attention.plotting import plot_attention`` keeps working; the code lives in the
application wing, ``numpy_attention/app/plotting.py``, whose public names this module re-exports.
"""

from .app.plotting import *  # noqa: F403  (the re-export is the point of this module)
from .app.plotting import __all__ as __all__
