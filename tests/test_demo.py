"""The demo's worked examples: the seed document's two examples against literal formulas."""

import math

import numpy as np
import pytest
from oracles import softmax_oracle

from numpy_attention.app.demo import (
    _SEED_VECTORS,
    _seed_vocabulary,
    seed_cross_attention_example,
    seed_fusion_example,
)
from numpy_attention.layers import CrossAttentionParams, cross_attention_forward


def test_seed_formula_literal_loops_give_the_layer_weights():
    """A fully literal oracle: Q1 K2^T / sqrt(d_k) entry by entry with math.exp for the seed's
    section 4.1 example (one head, identity projections) gives the layer's weights and R1."""
    ex = seed_cross_attention_example()
    q1, k2 = _SEED_VECTORS[:3].tolist(), _SEED_VECTORS[3:].tolist()
    d_k = len(q1[0])
    for i, qi in enumerate(q1):
        scores = [
            math.fsum(a * b for a, b in zip(qi, kj, strict=True)) / math.sqrt(d_k) for kj in k2
        ]
        p = softmax_oracle(scores)
        assert ex.weights[i].tolist() == pytest.approx(p, abs=1e-15)
        r = [math.fsum(p[j] * k2[j][c] for j in range(len(k2))) for c in range(d_k)]
        assert ex.r1[i].tolist() == pytest.approx(r, abs=1e-15)
    assert ex.r1.shape[0] == len(ex.s1)
    assert ex.weights.shape == (len(ex.s1), len(ex.s2))


def test_seed_fusion_example_matches_unpadded_per_sentence_attention():
    """The seed's section 4.2 example: each padded, batched branch equals cross-attention of the
    text S over that sentence alone (no padding), and R = sum_r alpha_r A_r."""
    ex = seed_fusion_example()
    vocab = _seed_vocabulary(ex.tokens)
    text = np.array([vocab[t] for t in ex.tokens])[None]
    eye = np.eye(4)
    ident = CrossAttentionParams(w_q=eye, w_k=eye, w_v=eye, w_o=eye, num_heads=1)
    for i, sentence in enumerate(ex.sentences):
        alone, _ = cross_attention_forward(
            ident, text, np.array([vocab[t] for t in sentence])[None]
        )
        np.testing.assert_allclose(ex.outputs[i], alone[0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ex.r, np.tensordot(ex.alpha, ex.outputs, axes=1), rtol=0, atol=0)
    assert ex.r.shape == (len(ex.tokens), 4)
