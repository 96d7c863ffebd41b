r"""FlashAttention's tiled online-softmax algorithm, forward and backward, in NumPy.

The plain formula of :mod:`numpy_attention.attention` materialises the
``L x S`` scores. This module computes the same output block by block
(Dao et al. 2022; FlashAttention-2, Dao 2023): each block of queries walks
over the blocks of keys keeping a running row maximum ``m``, a running sum
``l`` and an unnormalised output, rescaled by ``exp(m_old - m_new)`` whenever
the maximum grows. The forward saves only ``out`` and the natural-log
``lse``; the backward recomputes every block of ``P`` from ``lse``. No array
larger than one block of scores (per thread) is ever formed. Equations are
numbered as in ``docs/flash.md``.

Shapes (letter legend)::

    B...  leading batch dimensions (any number, broadcast like torch)
    Hq    query heads            Hkv  key/value heads (Hq = G * Hkv with GQA)
    L     queries                S    keys
    E     query/key width        Ev   value width
    bq    queries in a block     bk   keys in a block

    q    (..., Hq,  L, E)       k    (..., Hkv, S, E)      v (..., Hkv, S, Ev)
    mask broadcastable to (..., Hq, L, S)                  out (..., Hq, L, Ev)

Inside a block, GQA query heads are stacked under their key/value head:
the ``G`` query heads that share key/value head ``g`` form one matrix of
``G * bq`` rows, so each block is one batched matmul with no copy of ``K``
or ``V`` (query head ``h`` reads key/value head ``h // G``).

Semantics, validation and precision are those of
:func:`numpy_attention.attention.attention_forward` (torch's
``scaled_dot_product_attention``), except that dropout is not supported.
"""

from __future__ import annotations

import functools
import numbers
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import as_float_array, sum_to_shape
from .attention import AttentionGrads, AttentionInputs, _may_overflow, check_inputs
from .masks import _offset

__all__ = ["FlashCache", "flash_attention_forward", "flash_attention_backward"]

Array = NDArray[np.floating]

#: The default tiling starts from 256 x 512 and keeps the blocks of scores a thread holds
#: at once, all heads together, at most this large (2 MiB in float32): one block in the
#: forward, two (P and dP) of half this size in the backward. Big enough for efficient
#: matmuls, small enough for the CPU caches.
_BLOCK_Q, _BLOCK_K, _MAX_BLOCK = 256, 512, 2**19


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_block(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__}")
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _default_blocks(scores_shape: tuple[int, ...], budget: int = _MAX_BLOCK) -> tuple[int, int]:
    """Default ``(bq, bk)``: from 256 x 512, halve the larger side until a block is small enough.

    A block of all heads holds at most ``budget`` scores (one 16 x 16 tile per head at
    least; ``bq`` is halved on a tie); then each side is capped at ``L`` and ``S``.
    The memory of a call is thus bounded independently of ``L`` and ``S``.
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
    scores_shape: tuple[int, ...], block_q: object, block_k: object, budget: int
) -> tuple[int, int]:
    """Return the caller's block sizes where given, the defaults for ``budget`` elsewhere."""
    auto_q, auto_k = _default_blocks(scores_shape, budget)
    bq = auto_q if block_q is None else _check_block(block_q, "block_q")
    bk = auto_k if block_k is None else _check_block(block_k, "block_k")
    return bq, bk


def _check_workers(workers: object) -> int:
    if workers is None:
        return 1
    return _check_block(workers, "workers")


def _check_is_causal(is_causal: object) -> None:
    # The core's 5th positional argument is dropout_p; a float here is a mistake.
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(
            f"is_causal must be a bool, got {type(is_causal).__name__} "
            "(the tiled functions take no dropout_p: dropout is not supported)"
        )


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

    def block_shape(self, n: int, m: int) -> tuple[int, ...]:
        """Full shape of a block of scores with ``n`` queries and ``m`` keys."""
        return self.heads() + (self.groups * n, m)


# ---------------------------------------------------------------------------
# One block of scores, Eq. (5.1), and which blocks to skip, Eq. (5.2)
# ---------------------------------------------------------------------------


def _block_visible(x: AttentionInputs, i0: int, i1: int, j0: int) -> bool:
    """Tell whether queries ``i0:i1`` may see key ``j0`` or later (causal mask, Eq. (5.2))."""
    if not x.is_causal:
        return True
    d = _offset(x.scores_shape[-2], x.scores_shape[-1], x.causal_align)
    return j0 <= i1 - 1 + d


def _mask_block(mask: np.ndarray, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
    """Block ``[i0:i1, j0:j1]`` of a mask in its own shape: a view that broadcasts to the block.

    The same values as ``np.broadcast_to(mask, scores_shape)[..., i0:i1, j0:j1]``,
    without reading the broadcast copies (size-1 axes stay size 1).
    """
    if mask.ndim < 2:
        mask = mask.reshape((1,) * (2 - mask.ndim) + mask.shape)
    rows = slice(None) if mask.shape[-2] == 1 else slice(i0, i1)
    cols = slice(None) if mask.shape[-1] == 1 else slice(j0, j1)
    return mask[..., rows, cols]


def _scores_block(
    x: AttentionInputs,
    lay: _Layout,
    q_rows: Array,
    i0: int,
    i1: int,
    j0: int,
    j1: int,
    check: bool,
) -> Array | None:
    """Eq. (5.1): ``S_ij = (scale Q_i) K_j^T + B_ij``, ``-inf`` where masked.

    Returns None when the boolean mask hides the whole block (it is skipped, Eq. (5.2)).
    With ``check``, refuses a +-inf score as the core does (an overflow must
    not pass for a mask).
    """
    allowed = None
    if x.keep is not None:
        allowed = _mask_block(x.keep, i0, i1, j0, j1)
        if not allowed.any():
            return None
    if x.is_causal:
        d = _offset(lay.L, lay.S, x.causal_align)
        if j1 - 1 > i0 + d:  # the block crosses the diagonal: Eq. (2.6) on indices
            causal = np.arange(j0, j1) <= np.arange(i0, i1)[:, None] + d
            allowed = causal if allowed is None else allowed & causal
    with np.errstate(over="ignore"):
        s = q_rows @ np.swapaxes(x.k[..., j0:j1, :], -1, -2)  # (5.1), scale folded into Q
    if check and np.isinf(s).any():
        raise ValueError(
            f"attention scores scale * q k^T overflow {s.dtype} (a score is +-inf; inf in q "
            "or k, or too large inputs); scale the inputs down or compute in float64"
        )
    full = lay.block_shape(i1 - i0, j1 - j0)
    if s.shape != full:  # v or the mask carry batch dims that q, k lack
        s = np.array(np.broadcast_to(s, full))
    s4 = lay.split(s, i1 - i0)  # a view in the scores' layout (..., Hq, bq, bk)
    if x.bias is not None:
        s4 += _mask_block(x.bias, i0, i1, j0, j1)  # (5.1), + B_ij
    if allowed is not None:
        np.copyto(s4, -np.inf, where=~allowed)  # (5.1), -inf where masked
    return s


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


@contextmanager
def _one_blas_thread(workers: int) -> Iterator[None]:
    """Limit BLAS to one thread while ``workers > 1`` threads run (with threadpoolctl, if any)."""
    controller = _blas_controller() if workers > 1 else None
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


def _map_blocks(task: Callable[[list[int]], object], L: int, bq: int, workers: int) -> list:
    """Run ``task(starts)`` on each worker's query-block starts (interleaved: balanced)."""
    starts = list(range(0, L, bq))
    n = max(1, min(workers, len(starts)))
    chunks = [starts[w::n] for w in range(n)]
    if n == 1:
        return [task(chunks[0])]
    with _one_blas_thread(n), ThreadPoolExecutor(max_workers=n) as pool:
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
        The output, in the compute dtype.
    lse : ndarray, shape (..., Hq, L)
        Natural-log log-sum-exp of each row of masked scores, Eq. (5.6);
        ``-inf`` for a fully masked row.
    block_q, block_k : int
        The backward's tiling: the caller's block sizes if given to the
        forward, else defaults with half the forward's block of scores (the
        backward holds two blocks at once, ``P_ij`` and ``dP_ij``).
    workers : int
        The forward's threads, reused by the backward.
    """

    inputs: AttentionInputs
    out: Array
    lse: Array
    block_q: int
    block_k: int
    workers: int


def _forward_rows(
    x: AttentionInputs, lay: _Layout, i0: int, i1: int, bk: int, check: bool
) -> tuple[Array, Array]:
    """Eqs. (5.1)-(5.6) for query rows ``i0:i1``: their output and ``lse`` (block layout)."""
    q_rows = lay.rows(x.q, i0, i1) * x.q.dtype.type(x.scale)  # scale folded into Q_i
    n = i1 - i0
    row_shape = lay.block_shape(n, 1)
    m = np.full(row_shape, -np.inf, dtype=x.q.dtype)  # running max, m^(0) = -inf
    l = np.zeros(row_shape, dtype=x.q.dtype)  # noqa: E741  (running sum, l^(0) = 0)
    acc = np.zeros(row_shape[:-1] + (x.v.shape[-1],), dtype=x.q.dtype)  # unnormalised O
    for j0 in range(0, lay.S, bk):
        if not _block_visible(x, i0, i1, j0):
            break  # Eq. (5.2): every later key block is above the diagonal too
        j1 = min(j0 + bk, lay.S)
        s = _scores_block(x, lay, q_rows, i0, i1, j0, j1, check)
        if s is None:
            continue
        m_new = np.maximum(m, s.max(axis=-1, keepdims=True))  # Eq. (5.3)
        shift = np.where(m_new == -np.inf, 0.0, m_new).astype(s.dtype)  # no -inf - -inf
        alpha = np.exp(m - shift)  # Eq. (5.4): exp(m_old - m_new), 0 while m_old = -inf
        s -= shift
        p = np.exp(s, out=s)  # Eq. (5.4): P~_ij = exp(S_ij - m_new)
        l *= alpha  # noqa: E741
        l += p.sum(axis=-1, keepdims=True)  # noqa: E741  (Eq. (5.5))
        acc *= alpha
        acc += p @ x.v[..., j0:j1, :]  # Eq. (5.5)
        m = m_new
        del s, p  # free this block before the next one is computed
    with np.errstate(divide="ignore"):
        lse = m + np.log(l)  # Eq. (5.6); -inf for a row with no key
    acc /= np.where(l > 0, l, 1.0)  # Eq. (5.6); a row with no key keeps O = 0
    return acc, lse


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
    block_q: int | None = None,
    block_k: int | None = None,
    workers: int | None = None,
) -> tuple[Array, FlashCache]:
    r"""Scaled dot-product attention by tiles with an online softmax (FlashAttention).

    Same result as :func:`numpy_attention.attention.attention_forward`
    (without dropout) in at most one block of scores of extra memory per
    thread. Shapes: ``q (..., Hq, L, E)``, ``k (..., Hkv, S, E)``,
    ``v (..., Hkv, S, Ev)`` -> ``out (..., Hq, L, Ev)``.

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
        Where the causal diagonal sits when ``L != S`` (see ``causal_mask``).
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

    Returns
    -------
    out : ndarray, shape (..., Hq, L, Ev)
        The attention output, in the inputs' (promoted) dtype.
    cache : FlashCache
        ``out`` and ``lse`` for :func:`flash_attention_backward`.

    Raises
    ------
    TypeError
        As :func:`~numpy_attention.attention.check_inputs`; ``is_causal`` not
        a bool (e.g. a ``dropout_p`` passed positionally: dropout is not
        supported by the tiled functions); a block size or ``workers`` that
        is not an integer.
    ValueError
        As :func:`~numpy_attention.attention.check_inputs`; a block size or
        ``workers`` below 1; scores that overflow the dtype.

    Notes
    -----
    Eqs. (5.1)-(5.6) of ``docs/flash.md``. For query block :math:`i` and key
    blocks :math:`j = 1, 2, \dots` (blocks above the causal diagonal or
    entirely masked are skipped, Eq. (5.2)):

    .. math::

        S_{ij} = \mathrm{scale}\, Q_i K_j^\top + B_{ij} \;(5.1), \qquad
        m_i^{(j)} = \max\big(m_i^{(j-1)}, \mathrm{rowmax}\, S_{ij}\big) \;(5.3),

        \tilde P_{ij} = e^{S_{ij} - m_i^{(j)}}, \
        \ell_i^{(j)} = e^{m_i^{(j-1)} - m_i^{(j)}} \ell_i^{(j-1)} + \mathrm{rowsum}\,\tilde P_{ij}
        \;(5.4)\text{-}(5.5),

        \tilde O_i^{(j)} = e^{m_i^{(j-1)} - m_i^{(j)}} \tilde O_i^{(j-1)} + \tilde P_{ij} V_j
        \;(5.5), \qquad
        O_i = \tilde O_i / \ell_i, \ \mathrm{lse}_i = m_i + \log \ell_i \;(5.6).

    A row with no visible key keeps :math:`m = -\infty`, :math:`\ell = 0`:
    ``out = 0`` and ``lse = -inf``, as the core.

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
    n_workers = _check_workers(workers)
    x = check_inputs(q, k, v, attn_mask, is_causal, scale, enable_gqa, causal_align)
    lay = _Layout(x.scores_shape, x.groups)
    bq, bk = _tiling(x.scores_shape, block_q, block_k, _MAX_BLOCK)  # one block per thread
    back_q, back_k = _tiling(x.scores_shape, block_q, block_k, _MAX_BLOCK // 2)  # two blocks
    check = _may_overflow(x)
    out = np.zeros(x.out_shape, dtype=x.q.dtype)
    lse = np.empty(x.scores_shape[:-1], dtype=x.q.dtype)

    def task(starts: list[int]) -> None:
        for i0 in starts:
            i1 = min(i0 + bq, lay.L)
            o_rows, lse_rows = _forward_rows(x, lay, i0, i1, bk, check)
            out[..., i0:i1, :] = lay.unrows(o_rows, i1 - i0)
            lse[..., i0:i1] = lay.unrows(lse_rows, i1 - i0)[..., 0]

    _map_blocks(task, lay.L, bq, n_workers)
    cache = FlashCache(inputs=x, out=out, lse=lse, block_q=back_q, block_k=back_k,
                       workers=n_workers)  # fmt: skip
    return out.astype(x.dtype, copy=False), cache


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------


def _backward_rows(
    x: AttentionInputs,
    lay: _Layout,
    i0: int,
    i1: int,
    bk: int,
    rows: tuple[Array, Array, Array],
    grads: _KeyGrads,
) -> Array:
    """Eqs. (5.8)-(5.12) for query rows ``i0:i1``: return their ``dQ``; add into ``grads``."""
    dO_rows, D_rows, lse_rows = rows
    q_rows = lay.rows(x.q, i0, i1) * x.q.dtype.type(x.scale)  # scale Q_i, as in the forward
    shift = np.where(lse_rows == -np.inf, 0.0, lse_rows).astype(q_rows.dtype)
    dq = np.zeros(lay.block_shape(i1 - i0, x.q.shape[-1]), dtype=q_rows.dtype)
    for j0 in range(0, lay.S, bk):
        if not _block_visible(x, i0, i1, j0):
            break  # Eq. (5.2), as in the forward
        j1 = min(j0 + bk, lay.S)
        # the forward refused overflowing scores: no check needed here
        s = _scores_block(x, lay, q_rows, i0, i1, j0, j1, False)  # Eq. (5.1), recomputed
        if s is None:
            continue
        # P~ = exp(S - m), O = P~ V / l  (Eqs. 5.4-5.6)  ->  P_ij = exp(S_ij - lse_i)  (Eq. 5.8)
        s -= shift
        P = np.exp(s, out=s)
        # O_i = sum_j P_ij V_j  (Eqs. 5.5-5.6)  ->  dV_j += P_ij^T dO_i, dP_ij = dO_i V_j^T
        # (Eq. 5.9); each term is added as soon as it is made, to hold one at a time
        grads.add_dv(j0, j1, np.swapaxes(P, -1, -2) @ dO_rows)
        dP = dO_rows @ np.swapaxes(x.v[..., j0:j1, :], -1, -2)
        # P_ij = softmax rows (Eq. 5.8)  ->  dS_ij = P_ij * (dP_ij - D_i)  (Eq. 5.10)
        dP -= D_rows
        dP *= P
        dS = dP
        # S_ij = (scale Q_i) K_j^T  (Eq. 5.1)
        #   ->  dQ_i += scale dS_ij K_j,  dK_j += dS_ij^T (scale Q_i)  (Eq. 5.11)
        dq += dS @ x.k[..., j0:j1, :]
        grads.add_dk(j0, j1, np.swapaxes(dS, -1, -2) @ q_rows)
        # S_ij = B_ij + ...  (Eq. 5.1)  ->  dB_ij = dS_ij summed to B's shape  (Eq. 5.12)
        grads.add_d_bias(lay.split(dS, i1 - i0), i0, i1, j0, j1)
        del s, P, dP, dS  # free this block before the next one is computed
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
        target = _mask_block(self.d_bias, i0, i1, j0, j1)
        summed = sum_to_shape(dS, target.shape)
        with self.lock:
            target += summed


def flash_attention_backward(d_out: ArrayLike, cache: FlashCache) -> AttentionGrads:
    r"""Hand-written backward of :func:`flash_attention_forward`, tile by tile.

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
        over broadcast dimensions and GQA groups) and ``d_attn_mask`` (float
        mask only, in the mask's own shape), as
        :func:`numpy_attention.attention.attention_backward`.

    Raises
    ------
    ValueError
        If ``d_out`` does not have the output's shape.

    Notes
    -----
    Eqs. (5.7)-(5.12) of ``docs/flash.md``; each block of :math:`P` is
    recomputed from the saved log-sum-exp instead of being stored:

    .. math::

        D_i = \mathrm{rowsum}(dO_i \odot O_i) \;(5.7), \qquad
        P_{ij} = e^{S_{ij} - \mathrm{lse}_i} \;(5.8),

        dV_j \mathrel{+}= P_{ij}^\top dO_i, \ dP_{ij} = dO_i V_j^\top \;(5.9), \qquad
        dS_{ij} = P_{ij} \odot (dP_{ij} - D_i) \;(5.10),

        dQ_i \mathrel{+}= \mathrm{scale}\, dS_{ij} K_j, \
        dK_j \mathrel{+}= \mathrm{scale}\, dS_{ij}^\top Q_i \;(5.11), \qquad
        dB_{ij} = dS_{ij} \;(5.12).

    With ``workers > 1`` the threads own interleaved query blocks; each
    computes its ``dQ_i`` alone and adds its terms of ``dK``, ``dV``, ``dB``
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
    x = cache.inputs
    lay = _Layout(x.scores_shape, x.groups)
    dO = as_float_array(d_out, "d_out")
    if dO.shape != cache.out.shape:
        raise ValueError(
            f"d_out has shape {dO.shape}, expected the output's shape {cache.out.shape}"
        )
    dO = dO.astype(cache.out.dtype, copy=False)
    lse = cache.lse[..., None]
    kv_lead = lay.heads() + (lay.S,)
    bias_shape = (
        None if x.bias is None else (1,) * (len(x.scores_shape) - x.bias.ndim) + x.bias.shape
    )
    grads = _KeyGrads(
        dk=np.zeros(kv_lead + (x.k.shape[-1],), dtype=dO.dtype),
        dv=np.zeros(kv_lead + (x.v.shape[-1],), dtype=dO.dtype),
        d_bias=None if bias_shape is None else np.zeros(bias_shape, dtype=dO.dtype),
        lock=threading.Lock(),
    )
    dq = np.empty(x.scores_shape[:-1] + (x.q.shape[-1],), dtype=dO.dtype)
    bq, bk = cache.block_q, cache.block_k

    def task(starts: list[int]) -> None:
        for i0 in starts:
            i1 = min(i0 + bq, lay.L)
            dO_rows = lay.rows(dO, i0, i1)
            # O_i = P_i V  (Eqs. 5.5-5.6)  ->  D_i = rowsum(dO_i * O_i) = rowsum(dP_i * P_i)
            # (Eq. 5.7)
            D_rows = np.sum(dO_rows * lay.rows(cache.out, i0, i1), axis=-1, keepdims=True)
            rows = (dO_rows, D_rows, lay.rows(lse, i0, i1))
            dq_rows = _backward_rows(x, lay, i0, i1, bk, rows, grads)
            dq[..., i0:i1, :] = lay.unrows(dq_rows, i1 - i0)

    _map_blocks(task, lay.L, bq, cache.workers)
    d_mask = None
    if grads.d_bias is not None and x.bias is not None:
        d_mask = grads.d_bias.reshape(x.bias.shape).astype(x.dtype)
    return AttentionGrads(
        dq=sum_to_shape(dq, x.q.shape).astype(x.dtype, copy=False),
        dk=sum_to_shape(grads.dk, x.k.shape).astype(x.dtype, copy=False),
        dv=sum_to_shape(grads.dv, x.v.shape).astype(x.dtype, copy=False),
        d_attn_mask=d_mask,
    )
