r"""numpy-attention: a float64 NumPy reference for attention, with hand-written backward passes.

Read ``docs/README.md`` first; the modules, bottom to top:

- :mod:`numpy_attention.softmax`: softmax, log-softmax, log-sum-exp and their backward.
- :mod:`numpy_attention.masks`: boolean masks (causal, padding, sliding window).
- :mod:`numpy_attention.attention`: scaled dot-product attention, forward and backward.
"""

from .attention import (
    AttentionCache,
    AttentionGrads,
    attention_backward,
    attention_forward,
    scaled_dot_product_attention,
)
from .masks import causal_mask, padding_mask, sliding_window_mask
from .softmax import log_softmax, log_softmax_backward, logsumexp, softmax, softmax_backward

__version__ = "0.1.0"

__all__ = [
    "AttentionCache",
    "AttentionGrads",
    "attention_backward",
    "attention_forward",
    "scaled_dot_product_attention",
    "causal_mask",
    "padding_mask",
    "sliding_window_mask",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "softmax",
    "softmax_backward",
]
