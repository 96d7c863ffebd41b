r"""numpy-attention: a float64 NumPy reference for attention, with hand-written backward passes.

Read ``docs/README.md`` first; the modules, bottom to top:

- :mod:`numpy_attention.softmax`: softmax, log-softmax, log-sum-exp and their backward.
- :mod:`numpy_attention.masks`: boolean masks (causal, padding, sliding window).
- :mod:`numpy_attention.attention`: scaled dot-product attention, forward and backward.
- :mod:`numpy_attention.flash`: FlashAttention's tiled online softmax (no L x S array).
- :mod:`numpy_attention.variants`: ALiBi slopes and other libraries' windows in our convention.
- :mod:`numpy_attention.serving`: varlen (packed) attention, KV-cache decoding, split-KV merge,
  rotary embeddings.
- :mod:`numpy_attention.layers`: multi-head cross-/self-attention layers, forward and backward.
- :mod:`numpy_attention.fusion`: weighted fusion of attention branches (and concat + linear).
- :mod:`numpy_attention.verify`: the verification wing: ``gradcheck``, the tolerance policy,
  ``assert_attention_close``, golden vectors and ``check`` for other implementations
  (:mod:`numpy_attention.testing` re-exports its testing tools).
- :mod:`numpy_attention.model`: a tiny model trained with the hand-written gradients.
- :mod:`numpy_attention.app`: the ``numpy-attention`` command (cli, demo, plotting); its
  attention maps are importable as :mod:`numpy_attention.plotting` (matplotlib, lazily).
"""

from .attention import (
    AttentionCache,
    AttentionGrads,
    attention_backward,
    attention_forward,
    scaled_dot_product_attention,
)
from .flash import FlashCache, flash_attention_backward, flash_attention_forward
from .fusion import (
    ConcatFusionParams,
    FusionParams,
    concat_fusion_backward,
    concat_fusion_forward,
    fusion_backward,
    fusion_forward,
    init_concat_fusion,
    init_fusion,
    weighted_fusion,
    weighted_fusion_backward,
)
from .layers import (
    CrossAttentionParams,
    cross_attention_backward,
    cross_attention_forward,
    init_cross_attention,
    self_attention_backward,
    self_attention_forward,
)
from .masks import causal_mask, padding_mask, sliding_window_mask
from .model import train
from .serving import (
    VarlenCache,
    VarlenGrads,
    document_mask,
    kvcache_attention,
    merge_attention_states,
    merge_attention_states_backward,
    merge_attention_states_forward,
    pack,
    rotary_cos_sin,
    rotary_embedding,
    rotary_embedding_backward,
    unpack,
    varlen_attention_backward,
    varlen_attention_forward,
)
from .softmax import log_softmax, log_softmax_backward, logsumexp, softmax, softmax_backward
from .variants import (
    alibi_slopes,
    window_from_cudnn,
    window_from_flash,
    window_from_hf,
    window_from_jax,
)
from .verify import assert_attention_close, gradcheck

__version__ = "0.1.0"

__all__ = [
    "AttentionCache",
    "AttentionGrads",
    "attention_backward",
    "attention_forward",
    "scaled_dot_product_attention",
    "FlashCache",
    "flash_attention_backward",
    "flash_attention_forward",
    "ConcatFusionParams",
    "FusionParams",
    "concat_fusion_backward",
    "concat_fusion_forward",
    "fusion_backward",
    "fusion_forward",
    "init_concat_fusion",
    "init_fusion",
    "weighted_fusion",
    "weighted_fusion_backward",
    "CrossAttentionParams",
    "cross_attention_backward",
    "cross_attention_forward",
    "init_cross_attention",
    "self_attention_backward",
    "self_attention_forward",
    "causal_mask",
    "padding_mask",
    "sliding_window_mask",
    "VarlenCache",
    "VarlenGrads",
    "document_mask",
    "kvcache_attention",
    "merge_attention_states",
    "merge_attention_states_backward",
    "merge_attention_states_forward",
    "pack",
    "rotary_cos_sin",
    "rotary_embedding",
    "rotary_embedding_backward",
    "unpack",
    "varlen_attention_backward",
    "varlen_attention_forward",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "softmax",
    "softmax_backward",
    "assert_attention_close",
    "gradcheck",
    "train",
    "alibi_slopes",
    "window_from_cudnn",
    "window_from_flash",
    "window_from_hf",
    "window_from_jax",
]
