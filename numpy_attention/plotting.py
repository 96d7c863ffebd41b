"""Attention maps with matplotlib: the documented path of :mod:`numpy_attention.app.plotting`.

``from numpy_attention.plotting import plot_attention`` keeps working; the code lives in the
application wing, ``numpy_attention/app/plotting.py``.
"""

from .app.plotting import (
    MASKED_COLOR,
    MAX_ANNOTATE,
    MAX_LABEL,
    check_weights,
    plot_attention,
    plot_cross_attention,
    plot_fusion,
    plot_heads,
    plot_mask_gallery,
    plot_training,
    save_figure,
)

__all__ = [
    "MASKED_COLOR",
    "MAX_ANNOTATE",
    "MAX_LABEL",
    "check_weights",
    "plot_attention",
    "plot_heads",
    "plot_cross_attention",
    "plot_fusion",
    "plot_mask_gallery",
    "plot_training",
    "save_figure",
]
