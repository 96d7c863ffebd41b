r"""FlashAttention's tiled online-softmax algorithm, forward and backward right below it, in NumPy.

The plain formula of :mod:`numpy_attention.attention` materialises the
``L x S`` scores. This module computes the same output block by block
(Dao et al. 2022; FlashAttention-2, Dao 2023): each block of queries walks
over the blocks of keys keeping a running row maximum ``m``, a running sum
``l`` and an unnormalised output, rescaled by ``exp(m_old - m_new)`` whenever
the maximum grows. The forward saves only ``out``, ``m`` and ``l`` (one value
per row); the backward recomputes every block of ``P`` from them. No array
larger than one block of scores (per thread) is ever formed, whatever the
variant: each block goes through the core's score pipeline
(:func:`~numpy_attention.attention.score_pipeline`), and blocks that the
causal mask, a window or a chunk hide entirely are skipped. Equations are
numbered as in ``docs/flash.md``. Its loop version is the core's:
``attention_oracle`` and ``attention_backward_oracle`` in ``tests/oracles.py``.

Shapes (letter legend)::

    B...  leading batch dimensions (any number, broadcast like torch)
    Hq    query heads            Hkv  key/value heads (Hq = G * Hkv with GQA)
    L     queries                S    keys
    E     query/key width        Ev   value width
    bq    queries in a block     bk   keys in a block

Symbols (docs/glossary.md): a query block is the index set ``I = i0:i1``, a
key block ``J = j0:j1``; ``i``, ``j`` are single queries and keys. ``m``
running row maximum, ``l`` running sum (ell), ``P^ = exp(S - m)`` a block's
unnormalised weights, ``gamma = exp(m_old - m_new)`` the rescale factor.

    q    (..., Hq,  L, E)       k    (..., Hkv, S, E)      v (..., Hkv, S, Ev)
    mask broadcastable to (..., Hq, L, S)                  out (..., Hq, L, Ev)

Inside a block, GQA query heads are stacked under their key/value head:
the ``G`` query heads that share key/value head ``g`` form one matrix of
``G * bq`` rows, so each block is one batched matmul with no copy of ``K``
or ``V`` (query head ``h`` reads key/value head ``h // G``).

Semantics, validation and precision are those of
:func:`numpy_attention.attention.attention_forward` (torch's
``scaled_dot_product_attention``); dropout takes an explicit ``dropout_mask``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import Array, absmax, block_view, pow2_scaled, sum_to_shape
from ._inputs import AttentionInputs, check_dropout, check_inputs
from ._validate import check_grad, check_instance, check_int
from .attention import (
    AttentionGrads,
    check_scores,
    score_pipeline,
    score_pipeline_backward,
    sink_grad,
)
from .softmax import row_shift

__all__ = [
    "FlashCache",
    "flash_attention_forward",
    "flash_attention_backward",
    "default_blocks",
    "one_blas_thread",
    "MAX_BLOCK",
]

#: The default tiling starts from 256 x 512 and keeps the blocks of scores a thread holds
#: at once, all heads together, at most this large (2 MiB in float32): one block in the
#: forward, two (P and dP) of half this size in the backward. Big enough for efficient
#: matmuls, small enough for the CPU caches.
_BLOCK_Q, _BLOCK_K, MAX_BLOCK = 256, 512, 2**19


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def default_blocks(scores_shape: tuple[int, ...], budget: int = MAX_BLOCK) -> tuple[int, int]:
    """Default ``(bq, bk)``: from 256 x 512, halve the larger side until a block is small enough.

    A block of all heads holds at most ``budget`` scores (one 16 x 16 tile per head at
    least; ``bq`` is halved on a tie); then each side is capped at ``L`` and ``S``.
    The memory of a call is thus bounded independently of ``L`` and ``S``.

    Examples
    --------
    >>> default_blocks((2, 8, 1024, 1024)), default_blocks((2, 8, 1024, 1024), MAX_BLOCK // 2)
    ((128, 256), (128, 128))
    """
    *lead, L, S = scores_shape
    heads = max(1, int(np.prod(lead)))
    bq, bk = _BLOCK_Q, _BLOCK_K
    while heads * bq * bk > budget and max(bq, bk) > 16:
        if bq >= bk:
            bq //= 2
        else:
            bk //= 2
    return max(1, min(bq, L)), max(1, min(bk, S))


def _tiling(
    scores_shape: tuple[int, ...], block_q: object, block_k: object, budget: int, span: int | None
) -> tuple[int, int]:
    """Return the caller's block sizes where given, the defaults for ``budget`` elsewhere.

    When a window or chunk shows each query at most ``span`` keys, the default key block is
    at most the power of two <= ``span``: narrower blocks compute fewer hidden scores (at
    L = S = 16384, window (256, 0): 0.08 of the full call's time instead of 0.13).
    """
    auto_q, auto_k = default_blocks(scores_shape, budget)
    if span is not None:
        auto_k = min(auto_k, max(16, 1 << (span.bit_length() - 1)))
    bq = auto_q if block_q is None else check_int(block_q, "block_q", minimum=1)
    bk = auto_k if block_k is None else check_int(block_k, "block_k", minimum=1)
    return bq, bk


def _check_is_causal(is_causal: object) -> None:
    # The core's 5th positional argument is dropout_p; a float here is a mistake.
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(
            f"is_causal must be a bool, got {type(is_causal).__name__} "
            "(the tiled functions take dropout_p only as a keyword, after *)"
        )


def _check_tiled_dropout(
    dropout_p: float, dropout_mask: ArrayLike | None, scores_shape: tuple[int, ...]
) -> NDArray[np.bool_] | None:
    """Return the keep-mask of Eq. (2.4): the tiled functions read a given one, never draw it."""
    if dropout_mask is None and not (isinstance(dropout_p, (int, float)) and dropout_p == 0):
        check_dropout(dropout_p, None, None, ())  # the type and range errors of the core
        raise ValueError(
            "the tiled functions need an explicit dropout_mask (bool, True = kept) with "
            "dropout_p > 0: they read it block by block and never draw one"
        )
    return check_dropout(dropout_p, dropout_mask, None, scores_shape)


# ---------------------------------------------------------------------------
# Block layout: rows of a block are (G query heads) x (bq queries)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Shapes of one call, in the block layout (see the module docstring)."""

    scores_shape: tuple[int, ...]  # (..., Hq, L, S)
    groups: int  # G

    @property
    def L(self) -> int:
        return self.scores_shape[-2]

    @property
    def S(self) -> int:
        return self.scores_shape[-1]

    def heads(self) -> tuple[int, ...]:
        """Leading axes of a block: ``(..., Hq)``, or ``(..., Hkv)`` with GQA."""
        lead = self.scores_shape[:-2]
        return lead if self.groups == 1 else lead[:-1] + (lead[-1] // self.groups,)

    def rows(self, a: Array, i0: int, i1: int) -> Array:
        """Query rows ``i0:i1`` of ``a (..., Hq, L, w)`` as ``(..., Hkv, G * bq, w)``."""
        blk = a[..., i0:i1, :]
        if self.groups == 1:
            return blk
        blk = np.broadcast_to(blk, self.heads()[:-1] + blk.shape[-3:])
        return blk.reshape(self.heads() + (self.groups * (i1 - i0), a.shape[-1]))

    def unrows(self, a: Array, n: int) -> Array:
        """Inverse of :meth:`rows`: ``(..., Hkv, G * n, w) -> (..., Hq, n, w)``."""
        if self.groups == 1:
            return a
        return a.reshape(a.shape[:-2] + (self.groups, n, a.shape[-1])).reshape(
            a.shape[:-3] + (a.shape[-3] * self.groups, n, a.shape[-1])
        )

    def split(self, s: Array, n: int) -> Array:
        """View of a block ``(..., Hkv, G * n, bk)`` as ``(..., Hq, n, bk)`` (no copy)."""
        return self.unrows(s, n)

    def rows_of(self, a4: Array, n: int) -> Array:
        """Inverse of :meth:`split`: ``(..., Hq, n, bk) -> (..., Hkv, G * n, bk)``."""
        if self.groups == 1:
            return a4
        full = np.broadcast_to(a4, self.heads()[:-1] + (self.scores_shape[-3], n, a4.shape[-1]))
        return full.reshape(self.heads() + (self.groups * n, a4.shape[-1]))

    def block_shape(self, n: int, m: int) -> tuple[int, ...]:
        """Full shape of a block of scores with ``n`` queries and ``m`` keys."""
        return self.heads() + (self.groups * n, m)


# ---------------------------------------------------------------------------
# One block of scores, Eq. (5.1), through the core's score pipeline
# ---------------------------------------------------------------------------


def _scores_block(
    x: AttentionInputs, lay: _Layout, q_rows: Array, i0: int, i1: int, j0: int, j1: int
) -> tuple[Array, Array | None] | None:
    """Eq. (5.1): ``S_ij = (scale Q_i) K_j^T`` through Eqs. (8.2)-(8.8), (2.2); or None if hidden.

    Returns the block in the block layout ``(..., Hkv, G * bq, bk)`` with
    ``-inf`` where masked, and the capped scores ``S_c`` (in the scores'
    layout) when the backward needs them; None when the positions or the
    boolean mask hide the whole block (it is skipped, Eq. (5.2)).
    """
    if x.pos.block(i0, i1, j0, j1) == "none":
        return None
    if x.keep is not None and not block_view(x.keep, i0, j0, i1 - i0, j1 - j0).any():
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        s = q_rows @ np.swapaxes(x.k[..., j0:j1, :], -1, -2)  # (5.1), scale folded into Q
    check_scores(s, x, "scale * q k^T")
    full = lay.block_shape(i1 - i0, j1 - j0)
    if s.shape != full:  # v or the mask carry batch dims that q, k lack
        s = np.array(np.broadcast_to(s, full))
    s4 = lay.split(s, i1 - i0)  # a view in the scores' layout (..., Hq, bq, bk)
    S_c = score_pipeline(x, s4, i0, j0)  # Eqs. (8.2)-(8.8), (2.2), in place
    check_scores(s4, x, "after the bias")
    return s, S_c


# ---------------------------------------------------------------------------
# Threads over query blocks
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """Return threadpoolctl's view of the loaded BLAS libraries (made once), or None without it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


class _BlasLimit:
    """BLAS on one thread while any tiled call runs threads (first in limits, last out restores).

    Concurrent calls share one limit (counted under a lock), so overlapping
    calls can neither restore each other's limit early nor leave BLAS at one
    thread for good.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.limiter: Any = None

    def enter(self, controller: Any) -> None:
        with self.lock:
            if self.users == 0:
                self.limiter = controller.limit(limits=1, user_api="blas")
            self.users += 1

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self.limiter.restore_original_limits()
                self.limiter = None


_BLAS_LIMIT = _BlasLimit()


@contextmanager
def one_blas_thread(workers: int) -> Iterator[None]:
    """Limit BLAS to one thread while ``workers > 1`` threads run (with threadpoolctl, if any).

    Overlapping uses share one limit: it is restored when the last one ends.

    Examples
    --------
    >>> with one_blas_thread(2):
    ...     _ = np.ones((4, 4)) @ np.ones((4, 4))
    """
    controller = _blas_controller() if workers > 1 else None
    if controller is None:
        yield
        return
    _BLAS_LIMIT.enter(controller)
    try:
        yield
    finally:
        _BLAS_LIMIT.leave()


def _map_blocks(task: Callable[[list[int]], object], L: int, bq: int, workers: int) -> list:
    """Run ``task(starts)`` on each worker's query-block starts (interleaved: balanced)."""
    starts = list(range(0, L, bq))
    n = max(1, min(workers, len(starts)))
    chunks = [starts[w::n] for w in range(n)]
    if n == 1:
        return [task(chunks[0])]
    with one_blas_thread(n), ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(task, chunks))


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashCache:
    """What :func:`flash_attention_backward` needs: no ``L x S`` array.

    Attributes
    ----------
    inputs : AttentionInputs
        The validated inputs (views of the caller's arrays where possible).
    out : ndarray, shape (..., Hq, L, Ev)
        The output, in the compute dtype (the caller gets a copy).
    lse : ndarray, shape (..., Hq, L)
        Natural-log log-sum-exp of each row of masked scores, Eq. (5.6)
        (with the sink's term, Eq. (8.9)); ``-inf`` for a fully masked row.
    m, l : ndarray, shape (..., Hq, L)
        The final running maximum and sum, Eqs. (5.3), (5.5): the backward
        recomputes ``P = exp(S - m) / l`` from them (Eq. (5.8)), exactly even
        where ``lse = m + log l`` rounds (logits of 1e18). ``m`` is 0 when the
        Cauchy-Schwarz bound ``|S| <= |scale| max ||q_i|| max ||k_j||`` proved
        ``exp(S)`` finite and normal (``inputs.exp_safe``): any shift gives the
        same ``P``, so the forward skips the running maximum.
    keep : ndarray of bool or None
        The dropout keep-mask (True = kept), Eq. (2.4); ``dropout_p`` its rate.
    block_q, block_k : int
        The backward's tiling: the caller's block sizes if given to the
        forward, else defaults with half the forward's block of scores (the
        backward holds two blocks at once, ``P_IJ`` and ``dP_IJ``).
    workers : int
        The forward's threads, reused by the backward.
    """

    inputs: AttentionInputs
    out: Array
    lse: Array
    m: Array
    l: Array  # noqa: E741
    keep: NDArray[np.bool_] | None
    dropout_p: float
    block_q: int
    block_k: int
    workers: int


def _initial_state(x: AttentionInputs, lay: _Layout, i0: int, i1: int) -> tuple[Array, Array]:
    """``m^(0)``, ``l^(0)`` of Eq. (5.3): ``-inf`` and 0, or a sink's logit and 1 (Eq. (8.9)).

    Under the Cauchy-Schwarz bound (``x.exp_safe``) the shift stays ``m = 0``: ``l^(0)`` is 0,
    or ``e^sink``.
    """
    shape = lay.block_shape(i1 - i0, 1)
    m0 = np.zeros(shape, x.q.dtype) if x.exp_safe else np.full(shape, -np.inf, x.q.dtype)
    if x.mods.sinks is None:
        return m0, np.zeros(shape, dtype=x.q.dtype)
    sink = np.array(
        lay.rows(np.broadcast_to(x.mods.sinks, x.scores_shape[:-2] + (lay.L, 1)), i0, i1)
    )
    return (m0, np.exp(sink)) if x.exp_safe else (sink, np.ones(shape, dtype=x.q.dtype))


def _forward_rows(
    x: AttentionInputs, lay: _Layout, i0: int, i1: int, bk: int, drop: tuple
) -> tuple[Array, Array, Array]:
    """Eqs. (5.1)-(5.6) for query rows ``i0:i1``: their output, ``m`` and ``l`` (block layout)."""
    keep, p_drop, v = drop
    q_rows = lay.rows(x.q, i0, i1) * x.q.dtype.type(x.scale)  # scale folded into Q_I
    m, l = _initial_state(x, lay, i0, i1)  # noqa: E741  (running max and sum)
    acc = np.zeros(m.shape[:-1] + (v.shape[-1],), dtype=x.q.dtype)  # unnormalised O
    for j0 in range(0, lay.S, bk):
        j1 = min(j0 + bk, lay.S)
        block = _scores_block(x, lay, q_rows, i0, i1, j0, j1)
        if block is None:
            continue  # Eq. (5.2): hidden by the causal mask, a window, a chunk or attn_mask
        s = block[0]
        if not x.exp_safe:  # else |S| is bounded: shift by m = 0, no running max
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))  # Eq. (5.3)
            shift = row_shift(m_new)  # the softmax's -inf-safe shift: no -inf - (-inf)
            gamma = np.exp(m - shift)  # Eq. (5.4): exp(m_old - m_new), 0 while m_old = -inf
            s -= shift
            l *= gamma  # noqa: E741
            acc *= gamma
            m = m_new
        p = np.exp(s, out=s)  # Eq. (5.4): P^_IJ = exp(S_IJ - m_new)
        l += p.sum(axis=-1, keepdims=True)  # noqa: E741  (Eq. (5.5))
        if keep is not None:  # Eq. (2.4), on this block: P^ * Z / (1 - dropout_p)
            lay.split(p, i1 - i0)[...] *= block_view(keep, i0, j0, i1 - i0, j1 - j0) / (1 - p_drop)
        acc += p @ v[..., j0:j1, :]  # Eq. (5.5)
        del s, p, block  # free this block before the next one is computed
    acc /= np.where(l > 0, l, 1.0)  # Eq. (5.6); a row with no key keeps O = 0
    return acc, m, l


def _forward_all(
    x: AttentionInputs, lay: _Layout, blocks: tuple[int, int], drop: tuple, workers: int
) -> tuple[Array, Array, Array]:
    """Run :func:`_forward_rows` over every query block (in ``workers`` threads): ``out, m, l``."""
    bq, bk = blocks
    out = np.zeros(x.out_shape, dtype=x.q.dtype)
    m, l = (np.empty(x.scores_shape[:-1], dtype=x.q.dtype) for _ in range(2))  # noqa: E741

    def task(starts: list[int]) -> None:
        for i0 in starts:
            i1 = min(i0 + bq, lay.L)
            o_rows, m_rows, l_rows = _forward_rows(x, lay, i0, i1, bk, drop)
            out[..., i0:i1, :] = lay.unrows(o_rows, i1 - i0)
            m[..., i0:i1] = lay.unrows(m_rows, i1 - i0)[..., 0]
            l[..., i0:i1] = lay.unrows(l_rows, i1 - i0)[..., 0]

    _map_blocks(task, lay.L, bq, workers)
    return out, m, l


def flash_attention_forward(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    attn_mask: ArrayLike | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    causal_align: str = "top_left",
    dropout_p: float = 0.0,
    dropout_mask: ArrayLike | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    workers: int | None = None,
    **variants: Any,
) -> tuple[Array, FlashCache]:
    r"""Scaled dot-product attention by tiles with an online softmax (FlashAttention).

    Same result as :func:`numpy_attention.attention.attention_forward`
    in at most one block of scores of extra memory per thread. Shapes:
    ``q (..., Hq, L, E)``, ``k (..., Hkv, S, E)``, ``v (..., Hkv, S, Ev)``
    -> ``out (..., Hq, L, Ev)``.

    Parameters
    ----------
    q, k, v : array_like
        Queries, keys, values. Leading dimensions broadcast as in torch.
    attn_mask : array_like of bool or float, optional
        Broadcastable to ``(..., Hq, L, S)``. Bool: True = attend. Float: an
        additive bias (may hold ``-inf``), which receives a gradient. Only
        ``(bq, bk)`` blocks of it are ever read (views, no copy).
    is_causal : bool, optional
        Apply the causal mask of Eq. (2.6), aligned by ``causal_align``.
    scale : float, optional
        Multiplies ``q k^T``. Default ``1 / sqrt(E)``.
    enable_gqa : bool, optional
        Grouped-query attention: query head ``h`` uses key/value head ``h // G``.
    causal_align : {"top_left", "bottom_right"}, optional
        Where query ``i`` sits on the key axis (see ``attention_forward``).
    dropout_p : float, optional
        Dropout rate, with ``dropout_mask`` (required when ``dropout_p > 0``).
    dropout_mask : array_like of bool, optional
        Keep-mask (True = kept) broadcastable to ``(..., Hq, L, S)``, read by blocks.
    block_q, block_k : int, optional
        Queries and keys per block (any size >= 1; they need not divide
        ``L`` or ``S``). Default: from 256 x 512, the larger side halved
        until one block of all heads holds at most ``2**19`` scores (2 MiB
        in float32), each side capped at ``L`` and ``S``; the backward's
        default blocks hold ``2**18`` (it keeps two blocks at once). Sizes
        given here are used by the backward too.
    workers : int, optional
        Process query blocks in this many threads (NumPy releases the GIL);
        BLAS is limited to one thread meanwhile if ``threadpoolctl`` is
        installed. Default: one thread, no pool.
    **variants
        ``window``, ``chunk_size``, ``sink_tokens``, ``softcap``, ``score_mod``,
        ``score_mod_grad``, ``mask_mod``, ``alibi_slopes``, ``sinks``, as in
        :func:`~numpy_attention.attention.attention_forward`; the mods are
        called per block, with the block's index arrays.

    Returns
    -------
    out : ndarray, shape (..., Hq, L, Ev)
        The attention output, in the inputs' (promoted) dtype.
    cache : FlashCache
        ``out``, ``lse``, ``m``, ``l`` for :func:`flash_attention_backward`.

    Raises
    ------
    TypeError
        As :func:`~numpy_attention.attention.attention_forward`; ``is_causal``
        not a bool (e.g. a ``dropout_p`` passed positionally); a block size
        or ``workers`` that is not an integer.
    ValueError
        As :func:`~numpy_attention.attention.attention_forward`; a block size
        or ``workers`` below 1; ``dropout_p > 0`` without a ``dropout_mask``.

    Notes
    -----
    Eqs. (5.1)-(5.6) of ``docs/flash.md``. For query block :math:`\mathcal{I}`
    and its key blocks :math:`\mathcal{J}_1, \mathcal{J}_2, \dots` (blocks hidden
    by the causal mask, a window, a chunk or the boolean mask are skipped,
    Eq. (5.2)), :math:`\mathcal{J}` the :math:`n`-th:

    .. math::

        \tilde S_{\mathcal{IJ}} = \mathrm{scale}\, Q_\mathcal{I} K_\mathcal{J}^\top
        + B_{\mathcal{IJ}} \;(5.1), \qquad
        m_\mathcal{I}^{(n)} = \max\big(m_\mathcal{I}^{(n-1)},
        \mathrm{rowmax}\, \tilde S_{\mathcal{IJ}}\big) \;(5.3),

        \hat P_{\mathcal{IJ}} = e^{\tilde S_{\mathcal{IJ}} - m_\mathcal{I}^{(n)}}, \
        \gamma_\mathcal{I}^{(n)} = e^{m_\mathcal{I}^{(n-1)} - m_\mathcal{I}^{(n)}} \;(5.4), \qquad
        \ell_\mathcal{I}^{(n)} = \gamma_\mathcal{I}^{(n)} \ell_\mathcal{I}^{(n-1)}
        + \mathrm{rowsum}\,\hat P_{\mathcal{IJ}} \;(5.5),

        \hat O_\mathcal{I}^{(n)} = \gamma_\mathcal{I}^{(n)} \hat O_\mathcal{I}^{(n-1)}
        + \hat P_{\mathcal{IJ}} V_\mathcal{J} \;(5.5), \qquad
        O_\mathcal{I} = \hat O_\mathcal{I} / \ell_\mathcal{I}, \
        \mathrm{lse}_\mathcal{I} = m_\mathcal{I} + \log \ell_\mathcal{I} \;(5.6).

    The variants' Eqs. (8.1)-(8.9) of ``docs/variants.md`` apply to each block
    through the core's score pipeline. A row with no visible key keeps
    :math:`m = -\infty`, :math:`\ell = 0`: ``out = 0`` and ``lse = -inf``, as
    the core. With sinks the state starts at :math:`m^{(0)} = \text{sink}_h`,
    :math:`\ell^{(0)} = 1` (Eq. (8.9)).

    References
    ----------
    .. [1] T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Re, "FlashAttention: Fast
       and Memory-Efficient Exact Attention with IO-Awareness", NeurIPS 2022.
    .. [2] T. Dao, "FlashAttention-2: Faster Attention with Better Parallelism
       and Work Partitioning", ICLR 2024.

    Examples
    --------
    >>> from numpy_attention.attention import attention_forward
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(2, 7, 4)), rng.normal(size=(2, 9, 4)), rng.normal(size=(2, 9, 3))
    >>> out, cache = flash_attention_forward(q, k, v, is_causal=True, block_q=3, block_k=4)
    >>> ref, ref_cache = attention_forward(q, k, v, is_causal=True)
    >>> bool(np.allclose(out, ref, rtol=0, atol=1e-14)), cache.lse.shape
    (True, (2, 7))
    """
    _check_is_causal(is_causal)
    n_workers = 1 if workers is None else check_int(workers, "workers", minimum=1)
    x = check_inputs(
        q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
        causal_align=causal_align, **variants,
    )  # fmt: skip
    keep = _check_tiled_dropout(dropout_p, dropout_mask, x.scores_shape)
    lay = _Layout(x.scores_shape, x.groups)
    span = x.pos.key_span
    bq, bk = _tiling(x.scores_shape, block_q, block_k, MAX_BLOCK, span)  # one block per thread
    back_q, back_k = _tiling(x.scores_shape, block_q, block_k, MAX_BLOCK // 2, span)  # two
    (v,), e = pow2_scaled((x.v,), (lay.S + 1, x.exp_max))  # l <= S + 1 exps times v
    drop = (keep, float(dropout_p), v)
    out, m, l = _forward_all(x, lay, (bq, bk), drop, n_workers)  # noqa: E741
    if e:
        np.ldexp(out, e, out=out)
    with np.errstate(divide="ignore"):
        lse = m + np.log(l)  # Eq. (5.6); -inf for a row with no key
    cache = FlashCache(x, out, lse, m, l, keep, float(dropout_p), back_q, back_k, n_workers)
    return out.astype(x.dtype), cache  # a copy: editing it must not change the cache


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------


def _backward_rows(
    x: AttentionInputs, lay: _Layout, i0: int, i1: int, bk: int, rows: tuple, grads: _KeyGrads
) -> Array:
    """Eqs. (5.8)-(5.12) for query rows ``i0:i1``: return their ``dQ``; add into ``grads``."""
    dO_l, D_l, m_rows, (keep, p_drop, v, e) = rows
    q_rows = lay.rows(x.q, i0, i1) * x.q.dtype.type(x.scale)  # scale Q_I, as in the forward
    shift = row_shift(m_rows)
    dq = np.zeros(lay.block_shape(i1 - i0, x.q.shape[-1]), dtype=q_rows.dtype)
    for j0 in range(0, lay.S, bk):
        j1 = min(j0 + bk, lay.S)
        block = _scores_block(x, lay, q_rows, i0, i1, j0, j1)  # Eq. (5.1), recomputed
        if block is None:
            continue  # Eq. (5.2), as in the forward
        s, S_c = block
        # P^ = exp(S - m), O = P^ V / l  (Eqs. (5.4)-(5.6))  ->  P_IJ = exp(S_IJ - m_I) / l_I
        # (Eq. (5.8)); keep P^ and let 1/l ride on the row vectors: dO_l = dO / l, D_l = D / l
        if not x.exp_safe:  # else the forward shifted by m = 0 (the bound)
            s -= shift
        P_hat = np.exp(s, out=s)
        Z = None if keep is None else block_view(keep, i0, j0, i1 - i0, j1 - j0) / (1 - p_drop)
        P_hat_d = P_hat if Z is None else lay.rows_of(lay.split(P_hat, i1 - i0) * Z, i1 - i0)
        # O_I = sum_J P_d,IJ V_J  (Eqs. (5.5)-(5.6))
        #   ->  dV_J += P_d,IJ^T dO_I,  dP_d,IJ = dO_I V_J^T  (Eq. (5.9)); each term is added
        #   as soon as it is made, to hold one at a time
        grads.add_dv(j0, j1, np.swapaxes(P_hat_d, -1, -2) @ dO_l)
        dP = dO_l @ np.swapaxes(v[..., j0:j1, :], -1, -2)  # dP / l (v / 2^e)
        if Z is not None:  # P_d = P * Z / (1 - dropout_p)  (Eq. (2.4))  ->  dP = dP_d * Z / ...
            lay.split(dP, i1 - i0)[...] *= Z
        # P_IJ = softmax rows (Eq. (5.8))  ->  dS_IJ = P_IJ * (dP_IJ - D_I)  (Eq. (5.10))
        dP -= D_l
        dP *= P_hat
        dS = np.ldexp(dP, e, out=dP) if e else dP
        dS4 = lay.split(dS, i1 - i0)
        # S_IJ = ... + B_IJ  (Eq. (5.1))  ->  dB_IJ = dS_IJ summed to B's shape  (Eq. (5.12))
        grads.add_d_bias(dS4, i0, i1, j0, j1)
        score_pipeline_backward(x, dS4, S_c, i0, j0)  # Eqs. (8.13)-(8.14), in place
        # S_IJ = (scale Q_I) K_J^T  (Eq. (5.1))
        #   ->  dQ_I += scale dS_IJ K_J,  dK_J += dS_IJ^T (scale Q_I)  (Eq. (5.11))
        dq += dS @ x.k[..., j0:j1, :]
        grads.add_dk(j0, j1, np.swapaxes(dS, -1, -2) @ q_rows)
        del s, P_hat, P_hat_d, dP, dS, dS4, block  # free this block before the next one is computed
    dq *= x.q.dtype.type(x.scale)  # Eq. (5.11), the scale of dQ
    return dq


@dataclass
class _KeyGrads:
    """The sums over query blocks, Eqs. (5.9), (5.11), (5.12): ``dK``, ``dV`` and ``dB``.

    Threads that own different query blocks add into the same key rows, so
    every addition holds a lock (uncontended with one thread).
    """

    dk: Array  # (..., Hkv, S, E)
    dv: Array  # (..., Hkv, S, Ev)
    d_bias: Array | None  # the bias's shape, left-padded with 1s to the scores' ndim
    lock: threading.Lock

    def add_dv(self, j0: int, j1: int, dv_j: Array) -> None:
        with self.lock:
            self.dv[..., j0:j1, :] += dv_j

    def add_dk(self, j0: int, j1: int, dk_j: Array) -> None:
        with self.lock:
            self.dk[..., j0:j1, :] += dk_j

    def add_d_bias(self, dS: Array, i0: int, i1: int, j0: int, j1: int) -> None:
        if self.d_bias is None:
            return
        target = block_view(self.d_bias, i0, j0, i1 - i0, j1 - j0)
        summed = sum_to_shape(dS, target.shape)
        with self.lock:
            target += summed


def flash_attention_backward(d_out: ArrayLike, cache: FlashCache) -> AttentionGrads:
    r"""Hand-written backward of :func:`flash_attention_forward`, tile by tile.

    Shapes: ``d_out (..., Hq, L, Ev)`` -> ``dq``, ``dk``, ``dv`` of the shapes
    of ``q``, ``k``, ``v``; ``d_attn_mask`` the float mask's; ``d_sinks (Hq,)``.

    Parameters
    ----------
    d_out : array_like, shape (..., Hq, L, Ev)
        Gradient of the loss with respect to ``out``.
    cache : FlashCache
        From :func:`flash_attention_forward`; its block sizes and ``workers``
        are reused.

    Returns
    -------
    grads : AttentionGrads
        ``dq``, ``dk``, ``dv`` with the shapes of ``q``, ``k``, ``v`` (summed
        over broadcast dimensions and GQA groups), ``d_attn_mask`` (float
        mask only, in the mask's own shape) and ``d_sinks`` (sinks only), as
        :func:`numpy_attention.attention.attention_backward`.

    Raises
    ------
    TypeError
        If ``cache`` is not a :class:`FlashCache` (a core cache goes to
        ``attention_backward``).
    ValueError
        If ``d_out`` does not have the output's shape; a ``score_mod``
        without ``score_mod_grad``.

    Notes
    -----
    Eqs. (5.7)-(5.12) of ``docs/flash.md``; each block of :math:`P` is
    recomputed from the saved row maximum and sum instead of being stored:

    .. math::

        D_\mathcal{I} = \mathrm{rowsum}(dO_\mathcal{I} \odot O_\mathcal{I}) \;(5.7), \qquad
        P_{\mathcal{IJ}} = e^{\tilde S_{\mathcal{IJ}} - m_\mathcal{I}} / \ell_\mathcal{I} \;(5.8),

        dV_\mathcal{J} \mathrel{+}= P_{\mathcal{IJ}}^\top dO_\mathcal{I}, \
        dP_{\mathcal{IJ}} = dO_\mathcal{I} V_\mathcal{J}^\top \;(5.9), \qquad
        dS_{\mathcal{IJ}} = P_{\mathcal{IJ}} \odot (dP_{\mathcal{IJ}} - D_\mathcal{I}) \;(5.10),

        dQ_\mathcal{I} \mathrel{+}= \mathrm{scale}\, dS_{\mathcal{IJ}} K_\mathcal{J}, \
        dK_\mathcal{J} \mathrel{+}= \mathrm{scale}\, dS_{\mathcal{IJ}}^\top Q_\mathcal{I} \;(5.11),
        \qquad dB_{\mathcal{IJ}} = dS_{\mathcal{IJ}} \;(5.12).

    The variants' backward, Eqs. (8.10)-(8.15) of ``docs/variants.md``, runs on
    each block as in the core. With ``workers > 1`` the threads own interleaved
    query blocks; each
    computes its ``dQ_I`` alone and adds its terms of ``dK``, ``dV``, ``dB``
    into shared sums under a lock.

    Examples
    --------
    >>> from numpy_attention.attention import attention_forward, attention_backward
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(5, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    >>> out, cache = flash_attention_forward(q, k, v, block_q=2, block_k=4)
    >>> g = flash_attention_backward(np.ones_like(out), cache)
    >>> ref = attention_backward(np.ones_like(out), attention_forward(q, k, v)[1])
    >>> all(np.allclose(a, b, rtol=0, atol=1e-14) for a, b in
    ...     [(g.dq, ref.dq), (g.dk, ref.dk), (g.dv, ref.dv)])
    True
    """
    check_instance(cache, FlashCache, "cache", "flash_attention_forward")
    x = cache.inputs
    lay = _Layout(x.scores_shape, x.groups)
    dO = check_grad(d_out, "d_out", cache.out.shape, cache.out.dtype)
    # 1 / l may reach sqrt(max) under the bound: dO / 2^f (exact) so that dO / l stays finite
    (dO,), f = pow2_scaled((dO,), (x.exp_max,))
    # |dP / l| <= Ev max|dO| max|v| / l could overflow: v and out / 2^e (exact), dS * 2^e once small
    (v, out), e = pow2_scaled((x.v, cache.out), (x.v.shape[-1], absmax(dO), x.exp_max))
    l_safe = np.where(cache.l > 0, cache.l, 1.0)[..., None]  # a row with no key: l = 0
    D = np.empty(cache.l.shape + (1,), dtype=dO.dtype)
    grads = _key_grads(x, lay, dO.dtype)
    dq = np.empty(x.scores_shape[:-1] + (x.q.shape[-1],), dtype=dO.dtype)
    bq, bk = cache.block_q, cache.block_k
    drop = (cache.keep, cache.dropout_p, v, e + f)  # dS, D: / 2^(e + f); dV: / 2^f

    def task(starts: list[int]) -> None:
        for i0 in starts:
            i1 = min(i0 + bq, lay.L)
            # O_I = P_I V  (Eqs. (5.5)-(5.6))  ->  D_I = rowsum(dO_I * O_I)  (Eq. (5.7)); with
            # P = P^ / l (Eq. (5.8)) the 1/l rides on the rows: dO_l = dO_I / l_I, D_l = D_I / l_I
            dO_l = lay.rows(dO, i0, i1) / lay.rows(l_safe, i0, i1)
            D_l = np.sum(dO_l * lay.rows(out, i0, i1), axis=-1, keepdims=True)
            D[..., i0:i1, :] = lay.unrows(D_l * lay.rows(l_safe, i0, i1), i1 - i0)
            rows = (dO_l, D_l, lay.rows(cache.m[..., None], i0, i1), drop)
            dq[..., i0:i1, :] = lay.unrows(_backward_rows(x, lay, i0, i1, bk, rows, grads), i1 - i0)

    _map_blocks(task, lay.L, bq, cache.workers)
    if f:
        np.ldexp(grads.dv, f, out=grads.dv)  # undo the scaling of dO
    return _flash_grads(x, dq, grads, cache, D, e + f)


def _key_grads(x: AttentionInputs, lay: _Layout, dtype: np.dtype) -> _KeyGrads:
    """Zeroed sums for ``dK``, ``dV`` (block layout) and ``dB`` (the bias's shape)."""
    kv_lead = lay.heads() + (lay.S,)
    pad = len(x.scores_shape) - (0 if x.bias is None else x.bias.ndim)
    return _KeyGrads(
        dk=np.zeros(kv_lead + (x.k.shape[-1],), dtype=dtype),
        dv=np.zeros(kv_lead + (x.v.shape[-1],), dtype=dtype),
        d_bias=None if x.bias is None else np.zeros((1,) * pad + x.bias.shape, dtype=dtype),
        lock=threading.Lock(),
    )


def _flash_grads(
    x: AttentionInputs, dq: Array, grads: _KeyGrads, cache: FlashCache, D: Array, e: int
) -> AttentionGrads:
    """Sum the gradients to the inputs' shapes; ``d_sinks`` of Eq. (8.11) from ``D / 2^e``."""
    d_mask = None
    if grads.d_bias is not None and x.bias is not None:
        d_mask = grads.d_bias.reshape(x.bias.shape).astype(x.dtype)
    return AttentionGrads(
        dq=sum_to_shape(dq, x.q.shape).astype(x.dtype, copy=False),
        dk=sum_to_shape(grads.dk, x.k.shape).astype(x.dtype, copy=False),
        dv=sum_to_shape(grads.dv, x.v.shape).astype(x.dtype, copy=False),
        d_attn_mask=d_mask,
        d_sinks=sink_grad(x, cache.lse, D[..., 0], e),
    )
