"""Serving: Eqs. (9.1)-(9.14) of docs/serving.md.

Rotary embeddings, packing, varlen attention, KV-cache attention and the split-KV merge, each
against an independent float64 torch reference built from per-sequence dense attention (to
1e-12, skipped without torch), finite-difference gradient checks, properties and bad input.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optional import TORCH_MISSING
from strategies import seeds

from numpy_attention import serving
from numpy_attention.attention import attention_backward, attention_forward
from numpy_attention.serving import (
    MergeCache,
    VarlenCache,
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
from numpy_attention.testing import gradcheck

RNG = np.random.default_rng
TOL = dict(rtol=0, atol=1e-12)


def _cu(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


# ---------------------------------------------------------------------------
# torch references (float64, eager, per sequence): independent of the package
# ---------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch", reason=TORCH_MISSING)


def _torch_rotary(x, cos, sin, interleaved):
    """FlashAttention's ``apply_rotary_emb_torch`` (flash_attn/layers/rotary.py), einops
    written out: ``x (..., E)``, ``cos (..., R/2)`` already broadcastable to ``x[..., :R/2]``."""
    torch = _torch()
    ro = cos.shape[-1] * 2
    if interleaved:
        cos2, sin2 = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        x1, x2 = x[..., :ro:2], x[..., 1:ro:2]
        rot = torch.stack((-x2, x1), dim=-1).flatten(-2)
    else:
        cos2, sin2 = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
        x1, x2 = x[..., : ro // 2], x[..., ro // 2 : ro]
        rot = torch.cat((-x2, x1), dim=-1)  # Hugging Face's rotate_half
    return torch.cat([x[..., :ro] * cos2 + rot * sin2, x[..., ro:]], dim=-1)


def _torch_attention(q, k, v, keep=None, scale=None, drop=None, p=0.0, bias=None, softcap=None,
                     sink=None):  # fmt: skip
    """One problem: ``q (H, L, E)``, ``k, v (H, S, .)`` (heads already repeated), keep-mask
    ``(L, S)`` or ``(H, L, S)``; a row with no key gives 0 and lse -inf. FlashAttention's
    order: scale, softcap, masks, + bias; sinks join the denominator (gpt-oss)."""
    torch = _torch()
    E = q.shape[-1]
    s = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(E) if scale is None else scale)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    if keep is not None:
        s = s.masked_fill(~keep, -math.inf)
    if sink is not None:
        s = torch.cat([s, sink[:, None, None].expand(s.shape[:-1] + (1,))], dim=-1)
    m = s.amax(-1, keepdim=True).detach() if s.shape[-1] else torch.zeros(s.shape[:-1] + (1,))
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m)
    tot = e.sum(-1, keepdim=True)
    P = e / torch.where(tot > 0, tot, torch.ones_like(tot))
    lse = (m + torch.log(tot)).squeeze(-1)
    if sink is not None:
        P = P[..., :-1]
    if drop is not None:
        P = P * drop / (1.0 - p)
    return P @ v, lse


def _causal_keep(L, S, align):
    torch = _torch()
    d = S - L if align == "bottom_right" else 0
    return torch.arange(S)[None, :] <= torch.arange(L)[:, None] + d


def _torch_varlen(q, k, v, cu_q, cu_k, causal, align, drops=None, p=0.0, **variant):
    """Per-sequence eager attention over packed tensors; returns packed out and lse (Hq, Tq)."""
    torch = _torch()
    G = q.shape[1] // k.shape[1]
    outs, lses = [], []
    for b in range(len(cu_q) - 1):
        qb = q[cu_q[b] : cu_q[b + 1]].transpose(0, 1)
        kb = k[cu_k[b] : cu_k[b + 1]].transpose(0, 1).repeat_interleave(G, dim=0)
        vb = v[cu_k[b] : cu_k[b + 1]].transpose(0, 1).repeat_interleave(G, dim=0)
        L, S = qb.shape[1], kb.shape[1]
        keep = _causal_keep(L, S, align) if causal else None
        extra = {n: (f(b, L, S) if callable(f) else f) for n, f in variant.items()}
        keep = _merge_keep(keep, extra.pop("keep", None))
        o, lse = _torch_attention(qb, kb, vb, keep, None, None if drops is None else drops[b],
                                  p, **extra)  # fmt: skip
        outs.append(o.transpose(0, 1))
        lses.append(lse)
    return torch.cat(outs, 0), torch.cat(lses, 1)


def _merge_keep(a, b):
    if a is None or b is None:
        return b if a is None else a
    return a & b


# ---------------------------------------------------------------------------
# Rotary (Eqs. (9.5)-(9.8))
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("R", [8, 4])  # 8 = E (full), 4 < E (partial rotary)
def test_rotary_matches_flash_attention_apply_rotary_emb_reference(interleaved, R):
    """Eqs. (9.6)-(9.7) equal FlashAttention's torch reference (rotate-half = HF's rotate_half)
    for (B, L, H, E) inputs at per-sequence offsets, partial rotary included."""
    torch = _torch()
    x = RNG(0).normal(size=(2, 5, 3, 8))
    offsets = np.array([0, 7])
    pos = offsets[:, None] + np.arange(5)  # (B, L)
    cos, sin = rotary_cos_sin(pos, R)  # (B, L, R/2)
    y = rotary_embedding(x, cos[:, :, None], sin[:, :, None], interleaved=interleaved)
    ref = _torch_rotary(torch.tensor(x), torch.tensor(cos)[:, :, None],
                        torch.tensor(sin)[:, :, None], interleaved)  # fmt: skip
    np.testing.assert_allclose(y, ref.numpy(), **TOL)
    np.testing.assert_array_equal(y[..., R:], x[..., R:])


def test_rotary_cos_sin_uses_the_inverse_frequencies_of_llama_and_flash_attention():
    """Eq. (9.5): angle = position * 1 / base ** (arange(0, R, 2) / R), as HF's
    LlamaRotaryEmbedding and FlashAttention's RotaryEmbedding compute it (in float64 here)."""
    torch = _torch()
    pos = np.array([0, 1, 5, 1000])
    cos, sin = rotary_cos_sin(pos, 6, base=500000.0)
    inv = 1.0 / (500000.0 ** (torch.arange(0, 6, 2, dtype=torch.float64) / 6))
    freqs = torch.outer(torch.tensor(pos, dtype=torch.float64), inv)
    np.testing.assert_allclose(cos, torch.cos(freqs).numpy(), **TOL)
    np.testing.assert_allclose(sin, torch.sin(freqs).numpy(), **TOL)


@given(seed=seeds, m=st.integers(-50, 50), n=st.integers(-50, 50), t=st.integers(-1000, 1000),
       interleaved=st.booleans(), R=st.sampled_from([2, 4, 6]))  # fmt: skip
def test_rotated_dot_product_depends_only_on_the_position_difference(seed, m, n, t, interleaved, R):
    """<rot(q, m), rot(k, n)> = <rot(q, m + t), rot(k, n + t)>: RoPE is relative (partial
    rotary too: the pass-through features do not depend on positions)."""
    q, k = RNG(seed).normal(size=(2, 6))

    def dot(a, b):
        ca, sa = rotary_cos_sin(a, R)
        cb, sb = rotary_cos_sin(b, R)
        qa = rotary_embedding(q, ca, sa, interleaved=interleaved)
        return float(qa @ rotary_embedding(k, cb, sb, interleaved=interleaved))

    assert math.isclose(dot(m, n), dot(m + t, n + t), rel_tol=1e-9, abs_tol=1e-9)
    assert not math.isclose(dot(m, n), dot(m, n + 1), rel_tol=1e-9, abs_tol=1e-9)  # it does


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_backward_passes_gradcheck(interleaved):
    """Eq. (9.8): the hand-written backward equals finite differences (partial rotary, a
    (H, L, E) input with cos (L, R/2))."""
    cos, sin = rotary_cos_sin(np.arange(3, 7), 4)
    x = RNG(1).normal(size=(2, 4, 6))

    def fn(x):
        return rotary_embedding(x, cos, sin, interleaved=interleaved), None

    def bwd(d, _):
        return {"x": rotary_embedding_backward(d, cos, sin, interleaved=interleaved)}

    assert gradcheck(fn, {"x": x}, bwd).passed


@given(seed=seeds, interleaved=st.booleans())
def test_rotary_backward_is_the_inverse_rotation(seed, interleaved):
    """R(theta) is orthogonal: the backward (R^T) of the forward gives x back, and norms keep."""
    rng = RNG(seed)
    x = rng.normal(size=(3, 8))
    cos, sin = rotary_cos_sin(rng.integers(0, 10_000, size=3), 6)
    y = rotary_embedding(x, cos, sin, interleaved=interleaved)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)
    back = rotary_embedding_backward(y, cos, sin, interleaved=interleaved)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-12)


@given(seed=seeds, R=st.sampled_from([2, 4, 8]))
def test_interleaved_is_a_permutation_of_rotate_half(seed, R):
    """GPT-J = GPT-NeoX after moving the even features to the first half and the odd to the
    second: interleaved(x)[perm] = rotate_half(x[perm]), perm = [0, 2, .., 1, 3, ..]."""
    rng = RNG(seed)
    x = rng.normal(size=(4, 8))
    cos, sin = rotary_cos_sin(rng.integers(0, 100, size=4), R)
    perm = np.concatenate([np.arange(0, R, 2), np.arange(1, R, 2), np.arange(R, 8)])
    inter = rotary_embedding(x, cos, sin, interleaved=True)
    half = rotary_embedding(x[:, perm], cos, sin, interleaved=False)
    np.testing.assert_allclose(inter[:, perm], half, **TOL)
    assert R == 2 or not np.allclose(inter, rotary_embedding(x, cos, sin))


# ---------------------------------------------------------------------------
# Packing and document masks (Eqs. (9.1)-(9.2))
# ---------------------------------------------------------------------------


@given(seed=seeds, B=st.integers(0, 4), L=st.integers(0, 5))
def test_unpack_inverts_pack_and_zeroes_the_padding(seed, B, L):
    """unpack(pack(x, n), L) is x with rows past n zeroed; packed rows are the real tokens in
    sequence order (Eq. (9.1), checked by a loop)."""
    rng = RNG(seed)
    x = rng.normal(size=(B, L, 2, 3))
    n = rng.integers(0, L + 1, size=B)
    packed, cu = pack(x, n)
    expected = [x[b, i] for b in range(B) for i in range(n[b])]
    assert packed.shape == (int(n.sum()), 2, 3)
    np.testing.assert_array_equal(packed, np.array(expected).reshape(packed.shape))
    np.testing.assert_array_equal(cu, _cu(n))
    padded = unpack(packed, cu, L)
    keep = np.arange(L)[None, :] < n[:, None]
    np.testing.assert_array_equal(padded, np.where(keep[..., None, None], x, 0.0))
    assert unpack(packed, cu).shape[1] == (int(n.max()) if B else 0)


def test_document_mask_matches_a_loop_with_padding():
    """Eq. (9.2): same document and not padding (negative id), shape (B, 1, L, S)."""
    seg_q = np.array([[0, 0, 1, 1, -1], [2, 2, 2, 3, 3]])
    seg_k = np.array([[0, 1, 1, -1], [2, 3, 3, 3]])
    m = document_mask(seg_q, seg_k)
    assert m.shape == (2, 1, 5, 4) and m.dtype == bool
    for b in range(2):
        for i in range(5):
            for j in range(4):
                want = seg_q[b, i] == seg_k[b, j] and seg_q[b, i] >= 0
                assert m[b, 0, i, j] == want, (b, i, j)


@pytest.mark.parametrize("is_causal", [False, True])
def test_documents_packed_in_one_row_with_document_mask_equal_varlen(is_causal):
    """Llama 3 style: documents concatenated into one row with document_mask (and causal)
    give the same output and gradients as varlen attention over the documents."""
    rng = RNG(2)
    lengths = [3, 1, 4]
    T = sum(lengths)
    q, k, v = rng.normal(size=(T, 2, 4)), rng.normal(size=(T, 2, 4)), rng.normal(size=(T, 2, 3))
    seg = np.repeat(np.arange(3), lengths)
    cu = _cu(lengths)
    out_v, cache_v = varlen_attention_forward(q, k, v, cu, cu, is_causal=is_causal)
    mask = document_mask(seg, seg)[0]  # (1, T, T)
    out_d, cache_d = attention_forward(*(np.swapaxes(a, 0, 1) for a in (q, k, v)), mask,
                                       is_causal=is_causal)  # fmt: skip
    np.testing.assert_allclose(out_v, np.swapaxes(out_d, 0, 1), **TOL)
    d = rng.normal(size=out_v.shape)
    g_v = varlen_attention_backward(d, cache_v)
    g_d = attention_backward(np.swapaxes(d, 0, 1), cache_d)
    for a, b in ((g_v.dq, g_d.dq), (g_v.dk, g_d.dk), (g_v.dv, g_d.dv)):
        np.testing.assert_allclose(a, np.swapaxes(b, 0, 1), **TOL)


# ---------------------------------------------------------------------------
# Varlen attention (Eqs. (9.3)-(9.4))
# ---------------------------------------------------------------------------

# a zero-length query and key sequence, queries without keys, a length-1 sequence, L > S, L < S
LQ, LK = [3, 0, 1, 5, 2, 1], [5, 0, 0, 2, 2, 1]


def _varlen_inputs(seed=0, Hq=4, Hkv=2, E=4, Ev=3, lq=LQ, lk=LK):
    rng = RNG(seed)
    Tq, Tk = sum(lq), sum(lk)
    q, k, v = (rng.normal(size=(Tq, Hq, E)), rng.normal(size=(Tk, Hkv, E)),
               rng.normal(size=(Tk, Hkv, Ev)))  # fmt: skip
    return q, k, v, _cu(lq), _cu(lk)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("align", ["bottom_right", "top_left"])
@pytest.mark.parametrize("dropout", [False, True])
def test_varlen_matches_torch_per_sequence_reference(is_causal, align, dropout):
    """Eqs. (9.3)-(9.4): out, lse (Hq, Tq) and dq, dk, dv equal eager float64 torch attention
    run sequence by sequence (GQA, zero-length sequences, L != S, explicit dropout masks)."""
    torch = _torch()
    q, k, v, cu_q, cu_k = _varlen_inputs()
    rng = RNG(5)
    drops = [rng.random((4, a, b)) > 0.3 for a, b in zip(LQ, LK, strict=True)] if dropout else None
    p = 0.3 if dropout else 0.0
    out, cache = varlen_attention_forward(q, k, v, cu_q, cu_k, is_causal=is_causal,
                                          causal_align=align, enable_gqa=True, dropout_p=p,
                                          dropout_mask=drops)  # fmt: skip
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tdrops = None if drops is None else [torch.tensor(z) for z in drops]
    ref, ref_lse = _torch_varlen(tq, tk, tv, cu_q, cu_k, is_causal, align, tdrops, p)
    np.testing.assert_allclose(out, ref.detach().numpy(), **TOL)
    np.testing.assert_allclose(cache.lse, ref_lse.detach().numpy(), **TOL)
    d = rng.normal(size=out.shape)
    ref.backward(torch.tensor(d))
    g = varlen_attention_backward(d, cache)
    for mine, t in ((g.dq, tq), (g.dk, tk), (g.dv, tv)):
        np.testing.assert_allclose(mine, t.grad.numpy(), **TOL)
    assert g.d_sinks is None


def test_varlen_dropout_mask_as_one_padded_array_equals_the_list():
    """A padded (B, Hq, max L, max S) keep-mask (FlashAttention's S_dmask layout) is sliced
    per sequence: the same result as the list of per-sequence masks."""
    q, k, v, cu_q, cu_k = _varlen_inputs()
    padded = RNG(3).random((len(LQ), 4, max(LQ) + 1, max(LK) + 2)) > 0.5
    listed = [padded[b, :, : LQ[b], : LK[b]] for b in range(len(LQ))]
    a, _ = varlen_attention_forward(q, k, v, cu_q, cu_k, enable_gqa=True, dropout_p=0.5,
                                    dropout_mask=padded)  # fmt: skip
    b, _ = varlen_attention_forward(q, k, v, cu_q, cu_k, enable_gqa=True, dropout_p=0.5,
                                    dropout_mask=listed)  # fmt: skip
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("is_causal", [False, True])
def test_varlen_backward_passes_gradcheck(is_causal, tiled):
    """Eq. (9.4) equals finite differences of the packed forward (GQA, empty sequences), by the
    core and by the tiled functions per sequence."""
    q, k, v, cu_q, cu_k = _varlen_inputs(seed=4)

    def fn(q, k, v):
        return varlen_attention_forward(q, k, v, cu_q, cu_k, is_causal=is_causal,
                                        enable_gqa=True, tiled=tiled)  # fmt: skip

    assert gradcheck(fn, {"q": q, "k": k, "v": v}, varlen_attention_backward).passed


def test_varlen_default_causal_mask_is_flash_attn_varlen_funcs_per_sequence_bottom_right():
    """With the default causal_align, the keys each query sees (read off the output with one-hot
    values) are the two masks drawn in flash_attn_varlen_func's docstring: (L, S) = (2, 5) and
    (5, 2), packed in one call."""
    lq, lk = [2, 5], [5, 2]
    q, k, _, cu_q, cu_k = _varlen_inputs(seed=25, Hq=1, Hkv=1, lq=lq, lk=lk)
    v = np.concatenate([np.eye(5), np.eye(2, 5)])[:, None, :]  # key j's value: one-hot e_j
    out, _ = varlen_attention_forward(q, k, v, cu_q, cu_k, is_causal=True)
    seen = (out[:, 0] > 0).astype(int)
    np.testing.assert_array_equal(seen[:2], [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(seen[2:, :2], [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]])


def test_varlen_causal_is_per_sequence_not_one_global_bottom_right_mask():
    """The pitfall of issue 13: one global bottom-right causal mask plus a block-diagonal
    document mask over the packed rows is a different function from varlen's per-sequence
    alignment when L_b != S_b (here it changes the output)."""
    lq, lk = [3, 2], [3, 4]
    q, k, v, cu_q, cu_k = _varlen_inputs(seed=6, Hq=1, Hkv=1, lq=lq, lk=lk)
    out, _ = varlen_attention_forward(q, k, v, cu_q, cu_k, is_causal=True)
    seg_q, seg_k = np.repeat([0, 1], lq), np.repeat([0, 1], lk)
    glob, _ = attention_forward(*(np.swapaxes(a, 0, 1) for a in (q, k, v)),
                                document_mask(seg_q, seg_k)[0], is_causal=True,
                                causal_align="bottom_right")  # fmt: skip
    assert np.abs(out - np.swapaxes(glob, 0, 1)).max() > 1e-3


def test_varlen_memory_is_bounded_by_the_sequences_not_tq_by_tk():
    """16 sequences of 64 tokens: the forward's peak allocation stays under a quarter of one
    Tq x Tk float64 array (the per-sequence score blocks are 1/16 of it)."""
    B, n = 16, 64
    rng = RNG(7)
    q, k, v = (rng.normal(size=(B * n, 1, 8)) for _ in range(3))
    cu = _cu([n] * B)
    tracemalloc.start()
    try:
        out, cache = varlen_attention_forward(q, k, v, cu, cu, is_causal=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = (B * n) ** 2 * 8
    assert peak < full / 4, (peak, full)


@pytest.mark.parametrize(
    ("is_causal", "align"), [(False, "bottom_right"), (True, "bottom_right"), (True, "top_left")]
)
def test_tiled_varlen_equals_the_dense_varlen_with_every_variant_and_dropout(is_causal, align):
    """tiled=True (flash functions per sequence) gives the core's out, lse, dq, dk, dv and
    d_sinks to 1e-12, with window, softcap, (B, Hq) ALiBi, sinks and a padded keep-mask, over
    sequences of length 0 and queries without keys; the caches are the tiled ones."""
    q, k, v, cu_q, cu_k = _varlen_inputs(seed=11)
    rng = RNG(12)
    kw = dict(is_causal=is_causal, causal_align=align, enable_gqa=True, window=(1, 2),
              softcap=2.0, alibi_slopes=rng.random((len(LQ), 4)), sinks=rng.normal(size=4),
              dropout_p=0.25, dropout_mask=rng.random((len(LQ), 4, 5, 5)) > 0.25)  # fmt: skip
    dense, dc = varlen_attention_forward(q, k, v, cu_q, cu_k, **kw)
    tiled, tc = varlen_attention_forward(q, k, v, cu_q, cu_k, tiled=True, **kw)
    assert all(type(c).__name__ == "FlashCache" for c in tc.caches)
    np.testing.assert_allclose(tiled, dense, **TOL)
    np.testing.assert_allclose(tc.lse, dc.lse, **TOL)
    d = rng.normal(size=dense.shape)
    gd, gt = varlen_attention_backward(d, dc), varlen_attention_backward(d, tc)
    for n in ("dq", "dk", "dv", "d_sinks"):
        np.testing.assert_allclose(getattr(gt, n), getattr(gd, n), err_msg=n, **TOL)


def test_tiled_varlen_memory_is_independent_of_the_sequence_lengths():
    """One causal sequence of 4096 x 4096 with tiled=True: the forward and backward allocate
    under an eighth of one L_b x S_b float64 array (128 MiB) beyond their inputs and outputs."""
    n = 4096
    q, k, v = (RNG(13).normal(size=(n, 1, 16)) for _ in range(3))
    cu = _cu([n])
    tracemalloc.start()
    try:
        out, cache = varlen_attention_forward(q, k, v, cu, cu, is_causal=True, tiled=True)
        g = varlen_attention_backward(out, cache)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 8 / 8, peak
    assert np.isfinite(g.dq).all()


def test_tiled_varlen_refuses_rng():
    """The tiled functions draw no dropout mask: rng with tiled=True is a ValueError naming it."""
    q, k, v, cu_q, cu_k = _varlen_inputs()
    with pytest.raises(ValueError, match="rng: the tiled functions draw no dropout mask"):
        varlen_attention_forward(q, k, v, cu_q, cu_k, enable_gqa=True, dropout_p=0.5,
                                 rng=RNG(0), tiled=True)  # fmt: skip


def test_varlen_lse_is_heads_by_packed_tokens():
    """cache.lse is (Hq, Tq), FlashAttention's varlen softmax_lse layout: column t is query t's
    lse from its own sequence's core cache."""
    q, k, v, cu_q, cu_k = _varlen_inputs(seed=8)
    _, cache = varlen_attention_forward(q, k, v, cu_q, cu_k, enable_gqa=True)
    assert isinstance(cache, VarlenCache) and cache.lse.shape == (4, sum(LQ))
    b = 3
    _, cb = attention_forward(*(np.swapaxes(a, 0, 1) for a in (q[cu_q[b] : cu_q[b + 1]],
                              k[cu_k[b] : cu_k[b + 1]], v[cu_k[b] : cu_k[b + 1]])),
                              enable_gqa=True)  # fmt: skip
    np.testing.assert_array_equal(cache.lse[:, cu_q[b] : cu_q[b + 1]], cb.lse)
    assert np.all(cache.lse[:, cu_q[2]] == -np.inf)  # a query of a sequence without keys


# ---------------------------------------------------------------------------
# Variants pass-through
# ---------------------------------------------------------------------------


class _Spy:
    """Stands in for attention_forward: records the Variants keywords, runs the real core."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False, *, dropout_mask=None, rng=None, causal_align="top_left",
                 **variants):  # fmt: skip
        self.calls.append(variants)
        return attention_forward(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                 dropout_mask=dropout_mask, rng=rng,
                                 causal_align=causal_align)  # fmt: skip


def _kv_inputs(seed=0, B=2, L=2, Hq=4, Hkv=2, E=8, Ev=8, S=12, L_new=2):
    rng = RNG(seed)
    return dict(
        q=rng.normal(size=(B, L, Hq, E)),
        k_cache=rng.normal(size=(B, S, Hkv, E)),
        v_cache=rng.normal(size=(B, S, Hkv, Ev)),
        k_new=rng.normal(size=(B, L_new, Hkv, E)),
        v_new=rng.normal(size=(B, L_new, Hkv, Ev)),
    )


def test_variant_keywords_reach_the_core_only_when_given(monkeypatch):
    """With window, softcap, alibi_slopes, sinks all None the core gets none of them; given,
    each reaches every sequence's call, and (B, Hq) ALiBi slopes give sequence b row b."""
    spy = _Spy()
    monkeypatch.setattr(serving, "attention_forward", spy)
    q, k, v, cu_q, cu_k = _varlen_inputs()
    varlen_attention_forward(q, k, v, cu_q, cu_k, enable_gqa=True)
    x = _kv_inputs()
    kvcache_attention(cache_seqlens=[3, 4], **x)
    assert len(spy.calls) == len(LQ) + 2 and all(c == {} for c in spy.calls)
    spy.calls.clear()
    slopes = np.arange(len(LQ) * 4, dtype=float).reshape(len(LQ), 4)
    sinks = np.ones(4)
    varlen_attention_forward(q, k, v, cu_q, cu_k, enable_gqa=True, window=(2, None),
                             softcap=30.0, alibi_slopes=slopes, sinks=sinks)  # fmt: skip
    assert [c["alibi_slopes"].tolist() for c in spy.calls] == slopes.tolist()
    assert all(c["window"] == (2, None) and c["softcap"] == 30.0 and c["sinks"] is sinks
               for c in spy.calls)  # fmt: skip
    spy.calls.clear()
    kvcache_attention(cache_seqlens=[3, 4], alibi_slopes=np.ones(4), **x)
    assert [sorted(c) for c in spy.calls] == [["alibi_slopes"]] * 2


def _window_keep(L, S, window, d):
    torch = _torch()
    i, j = torch.arange(L)[:, None], torch.arange(S)[None, :]
    left, right = window
    keep = torch.ones(L, S, dtype=torch.bool)
    if left is not None:
        keep &= j >= i + d - left
    if right is not None:
        keep &= j <= i + d + right
    return keep


def _alibi_bias(slopes, L, S, d):
    torch = _torch()
    i, j = torch.arange(L)[:, None], torch.arange(S)[None, :]
    return -slopes[:, None, None] * (i + d - j).abs().to(torch.float64)


@pytest.mark.parametrize("is_causal", [False, True])
def test_varlen_variants_match_torch_per_sequence_reference(is_causal):
    """Window, softcap, (B, Hq) ALiBi slopes and sinks aligned bottom-right per sequence equal
    eager torch attention sequence by sequence, forward and backward (d_sinks summed)."""
    torch = _torch()
    q, k, v, cu_q, cu_k = _varlen_inputs(seed=9)
    B = len(LQ)
    rng = RNG(10)
    slopes, sinks = rng.random((B, 4)), rng.normal(size=4)
    window = (1, 2)
    out, cache = varlen_attention_forward(q, k, v, cu_q, cu_k, is_causal=is_causal,
                                          enable_gqa=True, window=window, softcap=2.0,
                                          alibi_slopes=slopes, sinks=sinks)  # fmt: skip
    tq, tk, tv, ts = (torch.tensor(a, requires_grad=True) for a in (q, k, v, sinks))
    ref, ref_lse = _torch_varlen(
        tq, tk, tv, cu_q, cu_k, is_causal, "bottom_right",
        keep=lambda b, L, S: _window_keep(L, S, window, S - L),
        bias=lambda b, L, S: _alibi_bias(torch.tensor(slopes[b]), L, S, S - L),
        softcap=2.0, sink=ts,
    )  # fmt: skip
    np.testing.assert_allclose(out, ref.detach().numpy(), **TOL)
    np.testing.assert_allclose(cache.lse, ref_lse.detach().numpy(), **TOL)
    d = rng.normal(size=out.shape)
    ref.backward(torch.tensor(d))
    g = varlen_attention_backward(d, cache)
    for mine, t in ((g.dq, tq), (g.dk, tk), (g.dv, tv), (g.d_sinks, ts)):
        np.testing.assert_allclose(mine, t.grad.numpy(), **TOL)


def test_varlen_window_matches_the_core_with_a_per_sequence_bool_mask():
    """window=(l, r) in varlen is the mask i + d_b - l <= j <= i + d_b + r per sequence."""
    q, k, v, cu_q, cu_k = _varlen_inputs(seed=11)
    out, _ = varlen_attention_forward(q, k, v, cu_q, cu_k, enable_gqa=True, window=(0, 1))
    for b in range(len(LQ)):
        L, S = LQ[b], LK[b]
        i, j = np.arange(L)[:, None], np.arange(S)[None, :]
        keep = (j >= i + S - L) & (j <= i + S - L + 1)
        o, _ = attention_forward(*(np.swapaxes(a, 0, 1) for a in (q[cu_q[b] : cu_q[b + 1]],
                                 k[cu_k[b] : cu_k[b + 1]], v[cu_k[b] : cu_k[b + 1]])), keep,
                                 enable_gqa=True)  # fmt: skip
        np.testing.assert_allclose(out[cu_q[b] : cu_q[b + 1]], np.swapaxes(o, 0, 1), **TOL)


# ---------------------------------------------------------------------------
# KV cache (Eqs. (9.9)-(9.11))
# ---------------------------------------------------------------------------


def _torch_kvcache(x, n, rows, cos, sin, interleaved, causal, local=False, **variant):
    """FlashAttention's test_flash_attn_kvcache reference, per batch row: rotate q and the new
    keys at cache_seqlens (+ i when causal or local), write them into a copy of the row, attend
    over the first n_b + L_new positions, causal bottom-right."""
    torch = _torch()
    q, kc, vc, kn, vn = (torch.tensor(x[n_]) for n_ in ("q", "k_cache", "v_cache", "k_new",
                                                         "v_new"))  # fmt: skip
    B, L, Hq, _ = q.shape
    L_new, G = kn.shape[1], Hq // kc.shape[2]
    outs, lses, k_rows, v_rows = [], [], [], []
    for b in range(B):
        qb, knb = q[b], kn[b]
        if cos is not None:
            pq = n[b] + (torch.arange(L) if (causal or local) else torch.zeros(L, dtype=int))
            pk = n[b] + torch.arange(L_new)
            qb = _torch_rotary(qb, cos[pq][:, None], sin[pq][:, None], interleaved)
            knb = _torch_rotary(knb, cos[pk][:, None], sin[pk][:, None], interleaved)
        kr, vr = kc[rows[b]].clone(), vc[rows[b]].clone()
        for j in range(L_new):
            kr[n[b] + j], vr[n[b] + j] = knb[j], vn[b, j]
        N = n[b] + L_new
        kb = kr[:N].transpose(0, 1).repeat_interleave(G, dim=0)
        vb = vr[:N].transpose(0, 1).repeat_interleave(G, dim=0)
        keep = _causal_keep(L, N, "bottom_right") if causal else None
        extra = {k_: (f(b, L, N) if callable(f) else f) for k_, f in variant.items()}
        keep = _merge_keep(keep, extra.pop("keep", None))
        o, lse = _torch_attention(qb.transpose(0, 1), kb, vb, keep, **extra)
        outs.append(o.transpose(0, 1))
        lses.append(lse)
        k_rows.append(kr)
        v_rows.append(vr)
    return torch.stack(outs), torch.stack(lses), k_rows, v_rows


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("rotary", [None, "half", "interleaved"])
@pytest.mark.parametrize("batch_idx", [False, True])
def test_kvcache_matches_flash_attention_test_reference(is_causal, rotary, batch_idx):
    """flash_attn_with_kvcache's semantics: out, lse (B, Hq, L) and the updated rows equal the
    reference of FlashAttention's test_flash_attn_kvcache in float64 torch (GQA, partial
    rotary R = 4 < E = 8, cache_batch_idx mapping rows, L_new < L, an empty cache row)."""
    torch = _torch()
    x = _kv_inputs(seed=12, B=3, L=3, L_new=2)
    x["k_cache"] = RNG(13).normal(size=(5, 12, 2, 8))
    x["v_cache"] = RNG(14).normal(size=(5, 12, 2, 8))
    n = np.array([4, 0, 10])
    rows = np.array([3, 0, 4]) if batch_idx else np.arange(3)
    cos = sin = None
    kw = {}
    if rotary:
        cos, sin = rotary_cos_sin(np.arange(13), 4)  # causal: the last query sits at 10 + 2
        kw = dict(rotary_cos=cos, rotary_sin=sin, rotary_interleaved=rotary == "interleaved")
    out, lse, k_out, v_out = kvcache_attention(
        cache_seqlens=n, cache_batch_idx=rows if batch_idx else None, is_causal=is_causal,
        **kw, **x,
    )  # fmt: skip
    tc = None if cos is None else torch.tensor(cos)
    ts = None if sin is None else torch.tensor(sin)
    ref, ref_lse, k_rows, v_rows = _torch_kvcache(x, n, rows, tc, ts, rotary == "interleaved",
                                                  is_causal)  # fmt: skip
    np.testing.assert_allclose(out, ref.numpy(), **TOL)
    np.testing.assert_allclose(lse, ref_lse.numpy(), **TOL)
    for b in range(3):
        np.testing.assert_allclose(k_out[rows[b]], k_rows[b].numpy(), **TOL)
        np.testing.assert_array_equal(v_out[rows[b]], v_rows[b].numpy())


def _paged(x, page, rng):
    """The dense caches cut into shuffled pages, like FlashAttention's _generate_block_kvcache:
    returns the pools (num_blocks, page, Hkv, .) and block_table (B, max_blocks)."""
    B, S = x["k_cache"].shape[:2]
    per = -(-S // page)
    num_blocks = per * B * 2
    table = rng.permutation(num_blocks)[: B * per].reshape(B, per)
    pools = []
    for name in ("k_cache", "v_cache"):
        c = x[name]
        pool = rng.normal(size=(num_blocks, page) + c.shape[2:])
        padded = np.zeros((B, per * page) + c.shape[2:])
        padded[:, :S] = c
        pool[table.ravel()] = padded.reshape((B * per, page) + c.shape[2:])
        pools.append(pool)
    return pools[0], pools[1], table


@pytest.mark.parametrize("is_causal", [False, True])
def test_paged_kvcache_equals_the_dense_cache_and_writes_into_the_right_pages(is_causal):
    """Eq. (9.10): the same cache cut into shuffled pages of 4 gives the same out and lse (with
    new keys that cross a page boundary, and rotary), and the new keys land in the pages that
    block_table names."""
    rng = RNG(15)
    x = _kv_inputs(seed=16, B=2, L=3, L_new=3, S=10)
    cos, sin = rotary_cos_sin(np.arange(16), 8)
    n = np.array([3, 7])
    kw = dict(cache_seqlens=n, rotary_cos=cos, rotary_sin=sin, is_causal=is_causal)
    dense = kvcache_attention(**kw, **x)
    k_pool, v_pool, table = _paged(x, 4, rng)
    paged = kvcache_attention(**kw, **dict(x, k_cache=k_pool, v_cache=v_pool), block_table=table)
    np.testing.assert_allclose(paged[0], dense[0], **TOL)
    np.testing.assert_allclose(paged[1], dense[1], **TOL)
    for out_pool, dense_cache in ((paged[2], dense[2]), (paged[3], dense[3])):
        gathered = out_pool[table].reshape((2, -1) + out_pool.shape[2:])[:, :10]
        np.testing.assert_array_equal(gathered, dense_cache)
    untouched = np.setdiff1d(np.arange(k_pool.shape[0]), table.ravel())
    np.testing.assert_array_equal(paged[2][untouched], k_pool[untouched])


@pytest.mark.parametrize("is_causal", [False, True])
def test_tiled_kvcache_equals_the_dense_one(is_causal, monkeypatch):
    """tiled=True attends each row by the flash functions in blocks of 4 keys (the dense core
    never called): out, lse and the written caches are the dense path's, with paged rotary
    keys, GQA, a window, softcap, ALiBi (B, Hq), sinks and an empty cache row; tiled="yes" is
    a TypeError."""
    import numpy_attention.flash as flash
    import numpy_attention.serving as serving

    x = _kv_inputs(seed=23, B=3, L=3, L_new=3, S=12)
    k_pool, v_pool, table = _paged(x, 4, RNG(24))
    cos, sin = rotary_cos_sin(np.arange(16), 4)
    kw = dict(x, k_cache=k_pool, v_cache=v_pool, block_table=table, cache_seqlens=[5, 0, 9],
              rotary_cos=cos, rotary_sin=sin, is_causal=is_causal, window=(4, 0),
              softcap=3.0, alibi_slopes=RNG(25).random((3, 4)),
              sinks=RNG(26).normal(size=4))  # fmt: skip
    dense = kvcache_attention(**kw)
    forward = flash.flash_attention_forward
    monkeypatch.setattr(serving, "attention_forward", None)  # the tiled path must not call it
    monkeypatch.setattr(serving, "flash_attention_forward",
                        lambda *a, **k: forward(*a, block_q=2, block_k=4, **k))  # fmt: skip
    tiled = kvcache_attention(**kw, tiled=True)
    for got, want in zip(tiled, dense, strict=True):
        np.testing.assert_allclose(got, want, **TOL)
    with pytest.raises(TypeError, match="tiled"):
        kvcache_attention(**kw, tiled="yes")


def test_kvcache_never_modifies_the_callers_caches():
    """New arrays come back; k_cache, v_cache (dense and paged) keep every byte."""
    x = _kv_inputs(seed=17)
    before = {n: a.copy() for n, a in x.items()}
    _, _, k_out, v_out = kvcache_attention(cache_seqlens=[1, 5], **x)
    for n, a in x.items():
        np.testing.assert_array_equal(a, before[n])
    assert not np.shares_memory(k_out, x["k_cache"]) and not np.shares_memory(v_out, x["v_cache"])
    assert not np.array_equal(k_out, x["k_cache"])


@pytest.mark.parametrize("interleaved", [False, True])
def test_decoding_token_by_token_equals_full_causal_attention_with_rotary(interleaved):
    """Prefill 5 tokens, then decode 3 one at a time with rotary at absolute positions: each
    step's output is the last row of causal attention over the whole rotated sequence."""
    rng = RNG(18)
    T, Hq, Hkv, E = 8, 4, 2, 8
    q, k, v = (rng.normal(size=(1, T, Hq, E)), rng.normal(size=(1, T, Hkv, E)),
               rng.normal(size=(1, T, Hkv, E)))  # fmt: skip
    cos, sin = rotary_cos_sin(np.arange(T), 6)
    rot = dict(rotary_cos=cos, rotary_sin=sin, rotary_interleaved=interleaved)
    kc, vc = np.zeros((1, T, Hkv, E)), np.zeros((1, T, Hkv, E))
    out, _, kc, vc = kvcache_attention(q[:, :5], kc, vc, 0, k_new=k[:, :5], v_new=v[:, :5],
                                       is_causal=True, **rot)  # fmt: skip
    steps = [out]
    for t in range(5, T):
        o, _, kc, vc = kvcache_attention(q[:, t : t + 1], kc, vc, t, k_new=k[:, t : t + 1],
                                         v_new=v[:, t : t + 1], is_causal=True, **rot)  # fmt: skip
        steps.append(o)
    c, s = cos[:, None], sin[:, None]
    qr = rotary_embedding(q[0], c, s, interleaved=interleaved)
    kr = rotary_embedding(k[0], c, s, interleaved=interleaved)
    full, _ = attention_forward(np.swapaxes(qr, 0, 1), np.swapaxes(kr, 0, 1),
                                np.swapaxes(v[0], 0, 1), is_causal=True,
                                enable_gqa=True)  # fmt: skip
    np.testing.assert_allclose(np.concatenate(steps, axis=1)[0], np.swapaxes(full, 0, 1), **TOL)


def test_noncausal_kvcache_rotates_every_query_at_cache_seqlens():
    """FlashAttention's rule: without causal or a window, all L queries sit at position n_b;
    with causal, query i sits at n_b + i (the two differ)."""
    x = _kv_inputs(seed=19, B=1, L=3, L_new=3)
    cos, sin = rotary_cos_sin(np.arange(12), 8)
    kw = dict(cache_seqlens=[4], rotary_cos=cos, rotary_sin=sin)
    out, *_ = kvcache_attention(**kw, **x)
    same = np.repeat(x["q"][:, :1], 3, axis=1)  # one query repeated: each row = the first's
    single, *_ = kvcache_attention(**kw, **dict(x, q=x["q"][:, :1]))
    q_at_4 = rotary_embedding(x["q"], cos[4], sin[4])
    k_all = kvcache_attention(**kw, **x)[2]
    ref, _ = attention_forward(np.swapaxes(q_at_4[0], 0, 1), np.swapaxes(k_all[0, :7], 0, 1),
                               np.swapaxes(kvcache_attention(**kw, **x)[3][0, :7], 0, 1),
                               enable_gqa=True)  # fmt: skip
    np.testing.assert_allclose(out[0], np.swapaxes(ref, 0, 1), **TOL)
    np.testing.assert_allclose(kvcache_attention(**kw, **dict(x, q=same))[0][:, 1], single[:, 0],
                               **TOL)  # fmt: skip


@pytest.mark.parametrize("is_causal", [False, True])
def test_kvcache_variants_match_the_flash_attention_test_reference(is_causal):
    """Window (which also makes the queries rotate at n_b + i), ALiBi (B, Hq), softcap and
    sinks, aligned bottom-right per row, equal the torch reference."""
    torch = _torch()
    x = _kv_inputs(seed=20, B=2, L=3, L_new=3)
    n = np.array([2, 6])
    cos, sin = rotary_cos_sin(np.arange(12), 4)
    slopes, sinks = RNG(21).random((2, 4)), RNG(22).normal(size=4)
    window = (2, 0)
    out, lse, _, _ = kvcache_attention(cache_seqlens=n, rotary_cos=cos, rotary_sin=sin,
                                       is_causal=is_causal, window=window, softcap=3.0,
                                       alibi_slopes=slopes, sinks=sinks, **x)  # fmt: skip
    ref, ref_lse, _, _ = _torch_kvcache(
        x, n, np.arange(2), torch.tensor(cos), torch.tensor(sin), False, is_causal, local=True,
        keep=lambda b, L, N: _window_keep(L, N, window, N - L),
        bias=lambda b, L, N: _alibi_bias(torch.tensor(slopes[b]), L, N, N - L),
        softcap=3.0, sink=torch.tensor(sinks),
    )  # fmt: skip
    np.testing.assert_allclose(out, ref.numpy(), **TOL)
    np.testing.assert_allclose(lse, ref_lse.numpy(), **TOL)


# ---------------------------------------------------------------------------
# Split-KV merge (Eqs. (9.12)-(9.14))
# ---------------------------------------------------------------------------


def _lse_backward(d_lse, cache, q, k, scale, G):
    """Gradient of sum(d_lse * lse) for a core cache: d lse_i / d s_ij = P_ij, so dS = P d_lse
    (the term FlashAttention's backward folds into D - d_lse), then dq, dk as Eq. (2.14)."""
    dS = cache.P * d_lse[..., None]
    kr = np.repeat(k, G, axis=-3)
    dq = scale * dS @ kr
    dk = scale * np.swapaxes(dS, -1, -2) @ q
    return dq, dk.reshape(k.shape[:-3] + (k.shape[-3], G) + dk.shape[-2:]).sum(axis=-3)


@settings(max_examples=40)
@given(seed=seeds, cuts=st.lists(st.integers(0, 9), max_size=4), G=st.sampled_from([1, 2]),
       masked=st.booleans())  # fmt: skip
def test_merge_of_any_key_split_equals_attention_over_all_keys(seed, cuts, G, masked):
    """Split the 9 keys anywhere (empty chunks and chunks masked for some rows included), attend
    per chunk, merge: out and lse equal attention over all keys; and the merge's backward chained
    through each chunk's attention backward (plus its lse term) equals the full backward."""
    rng = RNG(seed)
    Hkv, L, S, E = 2, 4, 9, 3
    q, k, v = (rng.normal(size=(G * Hkv, L, E)), rng.normal(size=(Hkv, S, E)),
               rng.normal(size=(Hkv, S, 2)))  # fmt: skip
    mask = rng.random((G * Hkv, L, S)) > 0.4 if masked else np.ones((L, S), dtype=bool)
    mask[..., 0, :] = False if masked else mask[..., 0, :]  # a row with no key at all
    edges = [0, *sorted(cuts), S]
    chunks = [attention_forward(q, k[:, a:b], v[:, a:b], mask[..., a:b], enable_gqa=True)
              for a, b in zip(edges, edges[1:], strict=False)]  # fmt: skip
    out, lse, mcache = merge_attention_states_forward([o for o, _ in chunks],
                                                      [c.lse for _, c in chunks])  # fmt: skip
    full_out, full = attention_forward(q, k, v, mask, enable_gqa=True)
    np.testing.assert_allclose(out, full_out, **TOL)
    np.testing.assert_allclose(lse, full.lse, rtol=1e-12, atol=1e-12)
    dO, dL = rng.normal(size=out.shape), np.where(np.isinf(lse), 0.0, rng.normal(size=lse.shape))
    d_outs, d_lses = merge_attention_states_backward(dO, dL, mcache)
    scale = 1 / math.sqrt(E)
    dq, dk, dv = np.zeros_like(q), [], []
    for (_, c), do_c, dl_c, a, b in zip(chunks, d_outs, d_lses, edges, edges[1:], strict=False):
        g = attention_backward(do_c, c)
        lq, lk = _lse_backward(dl_c, c, q, k[:, a:b], scale, G)
        dq += g.dq + lq
        dk.append(g.dk + lk)
        dv.append(g.dv)
    g_full = attention_backward(dO, full)
    lq, lk = _lse_backward(dL, full, q, k, scale, G)
    np.testing.assert_allclose(dq, g_full.dq + lq, **TOL)
    np.testing.assert_allclose(np.concatenate(dk, axis=1), g_full.dk + lk, **TOL)
    np.testing.assert_allclose(np.concatenate(dv, axis=1), g_full.dv, **TOL)


def _merge_fn(outs, lses):
    out, lse, cache = merge_attention_states_forward(outs, lses)
    return np.concatenate([out, lse[..., None]], axis=-1), cache


def _merge_bwd(d, cache):
    d_outs, d_lses = merge_attention_states_backward(d[..., :-1], d[..., -1], cache)
    return {"outs": d_outs, "lses": d_lses}


def test_merge_backward_passes_gradcheck_with_an_empty_chunk():
    """Eq. (9.14) equals finite differences of (out, lse) with respect to outs and lses; an
    empty chunk (lse = -inf) gets exactly zero gradient."""
    rng = RNG(23)
    outs, lses = rng.normal(size=(4, 2, 3, 5)), rng.normal(size=(4, 2, 3))
    lses[1, 0, 2] = -np.inf
    assert gradcheck(_merge_fn, {"outs": outs, "lses": lses}, _merge_bwd).passed
    _, _, cache = merge_attention_states_forward(outs, lses)
    d_outs, d_lses = merge_attention_states_backward(rng.normal(size=(2, 3, 5)),
                                                     rng.normal(size=(2, 3)), cache)  # fmt: skip
    assert np.all(d_outs[1, 0, 2] == 0) and d_lses[1, 0, 2] == 0


def test_merge_matches_torch_logsumexp_reference():
    """Eqs. (9.12)-(9.14) equal torch: lse = logsumexp(lses, 0), out = sum softmax(lses, 0) outs,
    and autograd's gradients, in the FlashAttention (Nc, B, L, Hq, Ev) layout."""
    torch = _torch()
    rng = RNG(24)
    outs, lses = rng.normal(size=(3, 2, 4, 2, 5)), rng.normal(scale=5, size=(3, 2, 4, 2))
    out, lse = merge_attention_states(outs, lses)
    to, tl = torch.tensor(outs, requires_grad=True), torch.tensor(lses, requires_grad=True)
    r_lse = torch.logsumexp(tl, 0)
    r_out = (torch.softmax(tl, 0)[..., None] * to).sum(0)
    np.testing.assert_allclose(out, r_out.detach().numpy(), **TOL)
    np.testing.assert_allclose(lse, r_lse.detach().numpy(), **TOL)
    dO, dL = rng.normal(size=out.shape), rng.normal(size=lse.shape)
    (r_out * torch.tensor(dO)).sum().add((r_lse * torch.tensor(dL)).sum()).backward()
    _, _, cache = merge_attention_states_forward(outs, lses)
    d_outs, d_lses = merge_attention_states_backward(dO, dL, cache)
    np.testing.assert_allclose(d_outs, to.grad.numpy(), **TOL)
    np.testing.assert_allclose(d_lses, tl.grad.numpy(), **TOL)


def test_empty_chunks_contribute_nothing_and_never_give_nan():
    """A chunk with lse = -inf is not read (its out may be NaN); a row empty in every chunk
    gives out 0, lse -inf and zero, finite gradients."""
    outs = np.array([[[1.0, 2.0], [np.nan, np.nan]], [[np.nan, 7.0], [np.nan, np.inf]]])
    lses = np.array([[0.5, -np.inf], [-np.inf, -np.inf]])
    out, lse, cache = merge_attention_states_forward(outs, lses)
    np.testing.assert_array_equal(out, [[1.0, 2.0], [0.0, 0.0]])
    np.testing.assert_array_equal(lse, [0.5, -np.inf])
    d_outs, d_lses = merge_attention_states_backward(np.ones((2, 2)), np.ones(2), cache)
    assert np.all(np.isfinite(d_outs)) and np.all(np.isfinite(d_lses))
    np.testing.assert_array_equal(d_outs[:, 1], 0.0)
    np.testing.assert_array_equal(d_lses[1], 0.0)
    assert isinstance(cache, MergeCache) and not np.shares_memory(out, cache.out)


# ---------------------------------------------------------------------------
# Bad input: each a TypeError / ValueError naming the argument
# ---------------------------------------------------------------------------


def _varlen_call(**over):
    q, k, v, cu_q, cu_k = _varlen_inputs()
    args = dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, enable_gqa=True)
    args.update(over)
    return lambda: varlen_attention_forward(**args)


def _kv_call(**over):
    args = dict(_kv_inputs(), cache_seqlens=[3, 4])
    args.update(over)
    return lambda: kvcache_attention(**args)


_COS, _SIN = rotary_cos_sin(np.arange(12), 4)
_X = _kv_inputs()
_PAGES = RNG(0).normal(size=(3, 4, 2, 8))

BAD_INPUT = {
    "cu_seqlens_q not starting at 0": (_varlen_call(cu_seqlens_q=[1, 3, 3, 4, 9, 11, 12]),
                                       ValueError, "cu_seqlens_q must .* starting at 0"),
    "cu_seqlens_k decreasing": (_varlen_call(cu_seqlens_k=[0, 5, 4, 5, 7, 9, 10]),
                                ValueError, r"cu_seqlens_k must be non-decreasing.*\[2\] = 4"),
    "cu_seqlens of different lengths": (_varlen_call(cu_seqlens_k=[0, 5, 10]), ValueError,
                                        "cu_seqlens_q has length 7 and cu_seqlens_k 3"),
    "cu_seqlens_q not ending at Tq": (_varlen_call(cu_seqlens_q=[0, 3, 3, 4, 9, 11, 11]),
                                      ValueError, "cu_seqlens_q ends at 11, .* packed length 12"),
    "cu_seqlens_k float": (_varlen_call(cu_seqlens_k=np.array(_cu(LK), dtype=float)), TypeError,
                           "cu_seqlens_k must be an integer array"),
    "cu_seqlens 2-D": (_varlen_call(cu_seqlens_q=_cu(LQ)[None]), ValueError,
                       "cu_seqlens_q must have 1 dimension"),
    "varlen is_causal a string": (_varlen_call(is_causal="False"), TypeError,
                                  "is_causal must be a bool"),
    "kvcache is_causal a string": (_kv_call(is_causal="False"), TypeError,
                                   "is_causal must be a bool"),
    "max_seqlen_q too small": (_varlen_call(max_seqlen_q=4), ValueError, "max_seqlen_q = 4"),
    "packed q with a batch axis": (_varlen_call(q=np.ones((1, 12, 4, 4))), ValueError,
                                   r"q must have the packed shape \(Tq, Hq, E\)"),
    "heads without enable_gqa": (_varlen_call(enable_gqa=False), ValueError,
                                 "pass enable_gqa=True"),
    "dropout_mask of the wrong rank": (_varlen_call(dropout_p=0.5, dropout_mask=np.ones((6, 4, 5),
                                       dtype=bool)), ValueError, "dropout_mask must be a list"),
    "alibi_slopes (B', Hq) with B' != B": (_varlen_call(alibi_slopes=np.ones((2, 4))),
                                           ValueError, r"alibi_slopes has shape \(2, 4\)"),
    "cache_seqlens + L_new beyond the cache": (_kv_call(cache_seqlens=[3, 11]), ValueError,
                                               r"cache_seqlens\[1\] = 11: with L_new = 2"),
    "negative cache_seqlens": (_kv_call(cache_seqlens=-1), ValueError, "cache_seqlens must be"),
    "cache_seqlens of the wrong length": (_kv_call(cache_seqlens=[1, 2, 3]), ValueError,
                                          r"cache_seqlens has shape \(3,\)"),
    "block_table past the blocks": (_kv_call(k_cache=_PAGES, v_cache=_PAGES, block_table=[[0, 2],
                                    [1, 3]]), ValueError, r"block_table\[1, 1\] = 3 points past"),
    "block_table with cache_batch_idx": (_kv_call(block_table=[[0]], cache_batch_idx=[0, 1]),
                                         ValueError, "cannot be combined"),
    "block_table float": (_kv_call(k_cache=_PAGES, v_cache=_PAGES, block_table=[[0.0], [1.0]]),
                          TypeError, "block_table must be an integer array"),
    "cache_batch_idx out of range": (_kv_call(cache_batch_idx=[0, 2]), ValueError,
                                     r"cache_batch_idx must be \(B,\)"),
    "cache_batch_idx writing one row twice": (_kv_call(cache_batch_idx=[1, 1], cache_seqlens=3),
                                              ValueError, "cache_batch_idx sends two new keys"),
    "k_new without v_new": (_kv_call(v_new=None), ValueError, "k_new and v_new"),
    "k_new of the wrong heads": (_kv_call(k_new=np.ones((2, 2, 4, 8))), ValueError,
                                 r"k_new has shape \(2, 2, 4, 8\)"),
    "rotary without k_new": (_kv_call(k_new=None, v_new=None, rotary_cos=_COS, rotary_sin=_SIN),
                             ValueError, "pass k_new and v_new too"),
    "rotary_cos without rotary_sin": (_kv_call(rotary_cos=_COS), ValueError, "given together"),
    "rotary_cos too short": (_kv_call(rotary_cos=_COS[:5], rotary_sin=_SIN[:5]), ValueError,
                             "rotary_cos has 5 rows, but position 5"),
    "rotary_cos wider than E": (_kv_call(rotary_cos=np.ones((12, 5)), rotary_sin=np.ones((12, 5))),
                                ValueError, r"\(seqlen_ro, R/2\) with 2 <= R <= E = 8"),
    "heads that do not group": (_kv_call(q=np.ones((2, 2, 3, 8))), ValueError,
                                "must be a multiple of the cache's Hkv=2"),
    "cache with 3 axes": (_kv_call(k_cache=np.ones((2, 12, 8))), ValueError,
                          "k_cache must have 4 dimensions"),
    "rotary_dim odd": (lambda: rotary_cos_sin(np.arange(3), 5), ValueError,
                       "rotary_dim must be even"),
    "rotary_dim 0": (lambda: rotary_cos_sin(np.arange(3), 0), ValueError, "rotary_dim must be"),
    "rotary_dim larger than E": (lambda: rotary_embedding(np.ones((3, 4)), *rotary_cos_sin(
                                 np.arange(3), 6)), ValueError, "R = 2 .* = 6 is larger than"),
    "cos and sin of different shapes": (lambda: rotary_embedding(np.ones((3, 4)), _COS[:3],
                                        _SIN[:2]), ValueError, "cos and sin must have the same"),
    "cos not broadcasting to x": (lambda: rotary_embedding(np.ones((3, 2, 4)), _COS[:3],
                                  _SIN[:3]), ValueError, r"cos has shape \(3, 2\)"),
    "rotary base 0": (lambda: rotary_cos_sin(np.arange(3), 4, base=0.0), ValueError, "base must"),
    "merge shapes that do not match": (lambda: merge_attention_states(np.ones((2, 3, 4)),
                                       np.ones((2, 4))), ValueError, r"lses has shape \(2, 4\)"),
    "merge outs without a chunk axis": (lambda: merge_attention_states(np.ones(3), np.ones(())),
                                        ValueError, r"outs must have shape \(Nc, \.\.\., Ev\)"),
    "merge lse +inf (FlashAttention's empty row)": (lambda: merge_attention_states(
                                                    np.ones((2, 1, 3)), [[0.0], [np.inf]]),
                                                    ValueError, "map it to -inf"),
    "merge d_out of the wrong shape": (lambda: merge_attention_states_backward(
        np.ones((2, 2)), None, merge_attention_states_forward(np.ones((2, 3, 4)),
                                                              np.ones((2, 3)))[2]),
        ValueError, r"d_out has shape \(2, 2\)"),
    "merge d_lse of the wrong shape": (lambda: merge_attention_states_backward(
        np.ones((3, 4)), np.ones(4), merge_attention_states_forward(np.ones((2, 3, 4)),
                                                                    np.ones((2, 3)))[2]),
        ValueError, r"d_lse has shape \(4,\)"),
    "merge cache of the wrong type": (lambda: merge_attention_states_backward(np.ones(1), None,
                                      object()), TypeError, "MergeCache returned by"),
    "varlen d_out of the wrong shape": (lambda: varlen_attention_backward(np.ones((12, 4, 2)),
                                        _varlen_call()()[1]), ValueError, "d_out has shape"),
    "varlen cache of the wrong type": (lambda: varlen_attention_backward(np.ones(1), None),
                                       TypeError, "VarlenCache returned by"),
    "varlen tiled not a bool": (_varlen_call(tiled="yes"), TypeError, "tiled must be"),
    "pack lengths beyond L": (lambda: pack(np.ones((2, 3, 1)), [1, 4]), ValueError,
                              r"lengths\[1\] = 4 is outside \[0, L\] = \[0, 3\]"),
    "pack lengths of the wrong count": (lambda: pack(np.ones((2, 3)), [1]), ValueError,
                                        r"lengths has shape \(1,\), expected \(B,\)"),
    "pack lengths bool": (lambda: pack(np.ones((2, 3)), [True, False]), TypeError,
                          "lengths must be an integer array"),
    "unpack max_len too short": (lambda: unpack(np.ones((5, 2)), [0, 1, 5], max_len=3),
                                 ValueError, "max_len = 3 is shorter"),
    "unpack cu_seqlens not matching packed": (lambda: unpack(np.ones((5, 2)), [0, 1, 4]),
                                              ValueError, "cu_seqlens ends at 4"),
    "document_mask float ids": (lambda: document_mask(np.ones(3), np.ones(3, dtype=int)),
                                TypeError, "segment_ids_q must be an integer array"),
    "document_mask batch clash": (lambda: document_mask(np.ones((2, 3), int), np.ones((3, 3), int)),
                                  ValueError, "do not broadcast"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_raises_a_clear_error_naming_the_argument(name):
    call, error, match = BAD_INPUT[name]
    with pytest.raises(error, match=match):
        call()
