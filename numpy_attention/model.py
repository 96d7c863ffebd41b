r"""A tiny attention model trained with the package's own backward passes.

The task is to *reverse* a sequence of digits: the output at position ``i`` is
the input token at position ``L - 1 - i``. Every query must therefore look at
exactly one key, known in advance, so the ideal attention map is the
anti-diagonal (:func:`ideal_attention`) and we can measure how close the
learned map comes to it.

The model (chapter 6, ``docs/model.md``) is one attention layer and nothing
else: token embedding + sinusoidal positional encoding, one head of
scaled dot-product attention (:func:`numpy_attention.attention.attention_forward`),
a linear readout to the vocabulary and a cross-entropy loss. There is no
residual connection, so the answer can only reach position ``i`` through the
attention weights. The backward of the embedding, projections, readout and
loss is written out here; the attention backward is
:func:`numpy_attention.attention.attention_backward`. Adam (NumPy) trains it.

Shapes (letter legend; the attention letters are those of docs/README.md's Notation)::

    B   batch        L   sequence length (queries = keys, S = L)     Nv  vocabulary size
    Dm  model width (embedding, positional encoding)    E  query/key width    Ev  value width

    tokens, targets (B, L) int       embed (Nv, Dm)    pe (L, Dm)
    w_q, w_k (Dm, E)    w_v (Dm, Ev)    w_o (Ev, Nv)    b_o (Nv,)
    weights (B, L, L)                logits (B, L, Nv)

:func:`init_model` makes ``E = Ev`` (its ``head_width``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import Array, as_float_array
from ._validate import check_instance, check_int, check_real
from .attention import AttentionCache, attention_backward, attention_forward
from .softmax import log_softmax

__all__ = [
    "PARAM_NAMES",
    "ModelCache",
    "TrainResult",
    "reverse_task",
    "ideal_attention",
    "positional_encoding",
    "init_model",
    "model_forward",
    "model_backward",
    "AdamState",
    "adam_init",
    "adam_step",
    "evaluate",
    "train",
]

Params = dict[str, Array]

#: The trainable parameters, in a fixed order.
PARAM_NAMES = ("embed", "w_q", "w_k", "w_v", "w_o", "b_o")


# ---------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------


def reverse_task(
    rng: np.random.Generator, batch: int, length: int, vocab: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    r"""Draw a batch of the reversal task: uniform random tokens and their reversal.

    Parameters
    ----------
    rng : numpy.random.Generator
    batch, length, vocab : int
        ``B`` sequences of ``L`` tokens drawn uniformly from ``range(Nv)``.

    Returns
    -------
    tokens, targets : ndarray of int64, shape (B, L)
        ``targets[b, i] = tokens[b, L - 1 - i]``.

    Raises
    ------
    TypeError
        If ``rng`` is not a ``numpy.random.Generator`` or a size not an integer.
    ValueError
        If ``batch`` or ``length`` is negative or ``vocab`` is not positive.

    Examples
    --------
    >>> x, y = reverse_task(np.random.default_rng(0), 1, 4, 10)
    >>> bool(np.array_equal(y, x[:, ::-1]))
    True
    """
    rng = check_instance(rng, np.random.Generator, "rng", "numpy.random.default_rng")
    B, L = check_int(batch, "batch"), check_int(length, "length")
    Nv = check_int(vocab, "vocab", minimum=1)
    tokens = rng.integers(0, Nv, size=(B, L), dtype=np.int64)
    return tokens, tokens[:, ::-1].copy()


def ideal_attention(length: int) -> Array:
    r"""Return the attention map that solves the reversal: query ``i`` sees key ``L - 1 - i``.

    Examples
    --------
    >>> ideal_attention(3).astype(int)
    array([[0, 0, 1],
           [0, 1, 0],
           [1, 0, 0]])
    """
    return np.eye(length)[::-1].copy()


def positional_encoding(length: int, width: int) -> Array:
    r"""Sinusoidal positional encoding (Vaswani et al. 2017), shape ``(L, Dm)``.

    Parameters
    ----------
    length : int
        ``L`` positions.
    width : int
        ``Dm``, the model width (even).

    Returns
    -------
    pe : ndarray, shape (L, Dm)

    Raises
    ------
    TypeError
        If ``length`` or ``width`` is not an integer.
    ValueError
        If ``length`` is negative, or ``width`` odd or not positive.

    Notes
    -----
    Eq. (6.2) of ``docs/model.md``:

    .. math:: PE_{i,2k} = \sin(i\,\omega_k), \quad PE_{i,2k+1} = \cos(i\,\omega_k),
              \quad \omega_k = 10000^{-2k/D_m}.

    Examples
    --------
    >>> positional_encoding(2, 4).round(3)
    array([[0.   , 1.   , 0.   , 1.   ],
           [0.841, 0.54 , 0.01 , 1.   ]])
    """
    L, Dm = check_int(length, "length"), check_int(width, "width")
    if Dm <= 0 or Dm % 2:
        raise ValueError(f"width must be a positive even number, got {Dm}")
    omega = 10000.0 ** (-np.arange(0, Dm, 2) / Dm)  # omega_k = 10000^(-2k/Dm)  (Eq. (6.2))
    angle = np.arange(L)[:, None] * omega[None, :]
    pe = np.empty((L, Dm))
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle)
    return pe


# ---------------------------------------------------------------------------
# Parameters, forward, backward
# ---------------------------------------------------------------------------


def init_model(
    rng: np.random.Generator, vocab: int = 10, width: int = 32, head_width: int = 32
) -> Params:
    r"""Random initial parameters: N(0, 1) embeddings, N(0, 1/fan_in) weights, zero bias.

    Parameters
    ----------
    rng : numpy.random.Generator
    vocab, width, head_width : int, optional
        ``Nv``, ``Dm`` and ``E = Ev``. Defaults 10, 32, 32.

    Returns
    -------
    params : dict of str to ndarray
        Keys :data:`PARAM_NAMES`: ``embed (Nv, Dm)``, ``w_q``, ``w_k`` ``(Dm, E)``,
        ``w_v (Dm, Ev)``, ``w_o (Ev, Nv)``, ``b_o (Nv,)``.

    Raises
    ------
    TypeError
        If ``rng`` is not a ``numpy.random.Generator`` or a size not an integer.
    ValueError
        If a size is not positive.

    Examples
    --------
    >>> p = init_model(np.random.default_rng(0), vocab=5, width=4, head_width=3)
    >>> {k: v.shape for k, v in p.items()}["w_o"]
    (3, 5)
    """
    rng = check_instance(rng, np.random.Generator, "rng", "numpy.random.default_rng")
    Nv, Dm = check_int(vocab, "vocab", minimum=1), check_int(width, "width", minimum=1)
    E = Ev = check_int(head_width, "head_width", minimum=1)
    return {
        "embed": rng.standard_normal((Nv, Dm)),
        "w_q": rng.standard_normal((Dm, E)) / math.sqrt(Dm),
        "w_k": rng.standard_normal((Dm, E)) / math.sqrt(Dm),
        "w_v": rng.standard_normal((Dm, Ev)) / math.sqrt(Dm),
        "w_o": rng.standard_normal((Ev, Nv)) / math.sqrt(Ev),
        "b_o": np.zeros(Nv),
    }


@dataclass(frozen=True)
class ModelCache:
    """What :func:`model_backward` needs, and the forward's by-products.

    Attributes
    ----------
    tokens, targets : ndarray of int, shape (B, L)
        Own copies of the forward's tokens and targets.
    h : ndarray, shape (B, L, Dm)
        The attention's input :math:`X`: embedding plus positional encoding, Eq. (6.3).
    q, k, v : ndarray, shape (B, L, E), (B, L, E), (B, L, Ev)
        Projections, Eq. (6.4).
    attention : AttentionCache
        The cache of the attention layer, Eqs. (2.1)-(2.5).
    o : ndarray, shape (B, L, Ev)
        Attention output.
    logits : ndarray, shape (B, L, Nv)
        Eq. (6.5).
    log_probs : ndarray, shape (B, L, Nv)
        Log-softmax of the logits, Eq. (6.6).
    params : dict
        Own float64 copies of the parameters the forward used.
    """

    tokens: NDArray[np.int64]
    targets: NDArray[np.int64]
    h: Array
    q: Array
    k: Array
    v: Array
    attention: AttentionCache
    o: Array
    logits: Array
    log_probs: Array
    params: Mapping[str, Array]

    @property
    def weights(self) -> Array:
        """Attention weights of shape ``(B, L, L)``: row ``i`` is query ``i``."""
        return self.attention.P[:, 0]


def _check_tokens(x: ArrayLike, name: str, vocab: int) -> NDArray[np.int64]:
    """Return an own int64 copy of ``x``: at least one token, all in ``[0, Nv)``."""
    t = np.asarray(x)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {t.dtype}")
    if t.ndim != 2 or t.size == 0:
        raise ValueError(f"{name} must have shape (B, L) with B, L >= 1, got shape {t.shape}")
    if t.min() < 0 or t.max() >= vocab:
        raise ValueError(f"{name} must lie in [0, Nv={vocab}), got min {t.min()} and max {t.max()}")
    return np.array(t, dtype=np.int64)


def _check_params(params: Mapping[str, ArrayLike]) -> Params:
    """Return own float64 copies of the parameters, their shapes checked against each other."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping with keys {PARAM_NAMES}, got {type(params)}")
    missing = [n for n in PARAM_NAMES if n not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; it needs the keys {PARAM_NAMES}")
    p: Params = {
        n: as_float_array(params[n], f"params[{n!r}]").astype(np.float64) for n in PARAM_NAMES
    }
    if not p["embed"].ndim == p["w_q"].ndim == p["w_v"].ndim == 2:
        shapes = {n: p[n].shape for n in ("embed", "w_q", "w_v")}
        raise ValueError(f"params['embed'], ['w_q'] and ['w_v'] must be 2-D, got shapes {shapes}")
    (Nv, Dm), E, Ev = p["embed"].shape, p["w_q"].shape[1], p["w_v"].shape[1]
    want = {"w_q": (Dm, E), "w_k": (Dm, E), "w_v": (Dm, Ev), "w_o": (Ev, Nv), "b_o": (Nv,)}
    for n, shape in want.items():
        if p[n].shape != shape:
            raise ValueError(
                f"params[{n!r}] has shape {p[n].shape}, expected {shape} "
                f"(Nv={Nv}, Dm={Dm} from params['embed'], E={E}, Ev={Ev} from w_q, w_v)"
            )
    return p


def model_forward(
    params: Mapping[str, ArrayLike], tokens: ArrayLike, targets: ArrayLike
) -> tuple[float, ModelCache]:
    r"""Loss of the one-layer attention model on a batch, and the cache for the backward.

    Parameters
    ----------
    params : mapping of str to array_like
        As returned by :func:`init_model`.
    tokens, targets : array_like of int, shape (B, L)
        Input tokens and the token wanted at each position, in ``range(Nv)``;
        at least one of each.

    Returns
    -------
    loss : float
        Mean cross-entropy over the ``B * L`` positions, in nats, Eq. (6.6).
    cache : ModelCache
        ``cache.logits`` (B, L, Nv), ``cache.weights`` (B, L, L), and the rest;
        it holds its own copies of the parameters, tokens and targets.

    Raises
    ------
    ValueError
        If ``tokens``/``targets`` differ in shape, are not 2-D, are empty or
        hold tokens outside ``[0, Nv)``; if a parameter is missing or its shape
        does not fit the others'.
    TypeError
        If ``tokens`` or ``targets`` is not an integer array, or a parameter
        not a real array.

    Notes
    -----
    Eqs. (6.1)-(6.6) of ``docs/model.md``, with the attention of Eqs. (2.1)-(2.5):

    .. math::

        X^\mathrm{tok}_{bi} = W^{\mathrm{emb}}_{\mathrm{tok}_{bi}} \;(6.1), \qquad
        X = X^\mathrm{tok} + PE \;(6.3), \qquad Q, K, V = X W_q, X W_k, X W_v \;(6.4),

        O = \mathrm{softmax}(QK^\top/\sqrt{E})\,V, \qquad U = O W_o + b_o \;(6.5),

        \mathcal{L} = -\frac{1}{BL}\sum_{b,i}
        \log\mathrm{softmax}(U_{bi})_{\mathrm{tgt}_{bi}} \;(6.6).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_model(rng, vocab=4, width=8, head_width=8)
    >>> x, y = reverse_task(rng, 2, 5, 4)
    >>> loss, cache = model_forward(p, x, y)
    >>> cache.logits.shape, cache.weights.shape
    ((2, 5, 4), (2, 5, 5))
    """
    p = _check_params(params)
    Nv, Dm = p["embed"].shape
    t = _check_tokens(tokens, "tokens", Nv)
    y = _check_tokens(targets, "targets", Nv)
    if t.shape != y.shape:
        raise ValueError(f"targets has shape {y.shape}, expected the shape of tokens {t.shape}")
    L = t.shape[1]
    x_tok = p["embed"][t]  # X_tok = W_emb[tokens], (B, L, Dm)  (Eq. (6.1))
    h = x_tok + positional_encoding(L, Dm)  # X = X_tok + PE  (Eqs. (6.2)-(6.3))
    q, k, v = h @ p["w_q"], h @ p["w_k"], h @ p["w_v"]  # Q, K, V = X W_q, X W_k, X W_v  (Eq. (6.4))
    # O = softmax(Q K^T / sqrt(E)) V, one head  (the core's Eqs. (2.1)-(2.5))
    o1, att = attention_forward(q[:, None], k[:, None], v[:, None])
    o = o1[:, 0]  # (B, L, Ev)
    logits = o @ p["w_o"] + p["b_o"]  # U = O W_o + b_o  (Eq. (6.5))
    log_probs = log_softmax(logits, axis=-1)  # log softmax(U)  (Eq. (6.6))
    picked = np.take_along_axis(log_probs, y[..., None], axis=-1)
    loss = -float(np.mean(picked))  # loss = -mean_{b,i} log softmax(U_bi)[tgt_bi]  (Eq. (6.6))
    cache = ModelCache(t, y, h, q, k, v, att, o, logits, log_probs, p)
    return loss, cache


def model_backward(cache: ModelCache, d_loss: float = 1.0) -> Params:
    r"""Hand-written gradient of the loss of :func:`model_forward` with respect to every parameter.

    Parameters
    ----------
    cache : ModelCache
        From :func:`model_forward`.
    d_loss : float, optional
        Upstream gradient of the (scalar) loss, a finite real number (or a
        0-d array). Default 1.

    Returns
    -------
    grads : dict of str to ndarray
        ``grads[name]`` has the shape of ``params[name]``, for each of :data:`PARAM_NAMES`.

    Raises
    ------
    TypeError
        If ``cache`` is not a ``ModelCache`` or ``d_loss`` not a real number.
    ValueError
        If ``d_loss`` is not finite.

    Notes
    -----
    Eqs. (6.7)-(6.10) of ``docs/model.md``, each undoing a forward line, with the
    attention backward of Eqs. (2.10)-(2.14) in the middle:

    .. math::

        dU = \frac{d\mathcal{L}}{BL}\,(\mathrm{softmax}(U) - \mathrm{onehot}(\mathrm{tgt})) \;(6.7),

        dW_o = \textstyle\sum_{bi} O_{bi}^\top dU_{bi},\ db_o = \sum_{bi} dU_{bi},\
        dO = dU\,W_o^\top \;(6.8),

        dW_q = \textstyle\sum_{bi} X_{bi}^\top dQ_{bi} \text{ (same for } k, v),\
        dX = dQ W_q^\top + dK W_k^\top + dV W_v^\top \;(6.9),

        dW^{\mathrm{emb}}_a = \textstyle\sum_{b,i:\,\mathrm{tok}_{bi}=a} dX_{bi} \;(6.10).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_model(rng, vocab=4, width=8, head_width=8)
    >>> x, y = reverse_task(rng, 2, 5, 4)
    >>> g = model_backward(model_forward(p, x, y)[1])
    >>> all(g[n].shape == p[n].shape for n in p)
    True
    """
    # Shapes: dU (B, L, Nv), dO (B, L, Ev), dQ, dK (B, L, E), dV (B, L, Ev), dX (B, L, Dm),
    #         d_embed (Nv, Dm)
    c = check_instance(cache, ModelCache, "cache", "model_forward")
    if isinstance(d_loss, np.ndarray) and d_loss.shape == ():
        d_loss = d_loss.item()
    d_loss = check_real(d_loss, "d_loss")
    p = c.params
    B, L = c.tokens.shape
    Nv, Dm = p["embed"].shape
    # loss = -mean_{b,i} log softmax(U_bi)[tgt_bi]  (Eq. (6.6))
    #   ->  dU = d_loss / (B L) * (softmax(U) - onehot(tgt))  (Eq. (6.7))
    d_logits = np.exp(c.log_probs)
    np.put_along_axis(
        d_logits, c.targets[..., None],
        np.take_along_axis(d_logits, c.targets[..., None], axis=-1) - 1.0, axis=-1,
    )  # fmt: skip
    d_logits *= d_loss / (B * L)
    # U = O W_o + b_o  (Eq. (6.5))  ->  dW_o = O^T dU, db_o = sum dU, dO = dU W_o^T  (Eq. (6.8))
    d_w_o = c.o.reshape(-1, c.o.shape[-1]).T @ d_logits.reshape(-1, Nv)
    d_b_o = d_logits.sum(axis=(0, 1))
    d_o = d_logits @ p["w_o"].T
    # O = softmax(Q K^T / sqrt(E)) V  (Eqs. (2.1)-(2.5))  ->  dQ, dK, dV  (Eqs. (2.10)-(2.14))
    ga = attention_backward(d_o[:, None], c.attention)
    dq, dk, dv = ga.dq[:, 0], ga.dk[:, 0], ga.dv[:, 0]
    # Q, K, V = X W_q, X W_k, X W_v  (Eq. (6.4))
    #   ->  dW_q = X^T dQ, dW_k = X^T dK, dW_v = X^T dV,
    #       dX = dQ W_q^T + dK W_k^T + dV W_v^T  (Eq. (6.9))
    hf = c.h.reshape(-1, Dm)
    d_w_q, d_w_k, d_w_v = (hf.T @ g.reshape(-1, g.shape[-1]) for g in (dq, dk, dv))
    d_h = dq @ p["w_q"].T + dk @ p["w_k"].T + dv @ p["w_v"].T
    # X = X_tok + PE  (Eq. (6.3))  ->  dX_tok = dX (PE, Eq. (6.2), is a constant)
    # X_tok = W_emb[tokens]  (Eq. (6.1))
    #   ->  dW_emb[a] = sum of dX_tok over the positions holding token a  (Eq. (6.10))
    d_embed = np.zeros_like(p["embed"])
    np.add.at(d_embed, c.tokens.ravel(), d_h.reshape(-1, Dm))
    return {
        "embed": d_embed,
        "w_q": d_w_q,
        "w_k": d_w_k,
        "w_v": d_w_v,
        "w_o": d_w_o,
        "b_o": d_b_o,
    }


# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AdamState:
    """Adam's state: the step count and the first and second moment of each parameter."""

    t: int
    m: Params
    v: Params


def adam_init(params: Mapping[str, Array]) -> AdamState:
    r"""Zero Adam state for ``params``.

    Examples
    --------
    >>> s = adam_init({"w": np.ones(2)})
    >>> s.t, s.m["w"].tolist()
    (0, [0.0, 0.0])
    """
    zeros = {n: np.zeros_like(a) for n, a in params.items()}
    return AdamState(t=0, m=zeros, v=dict(zeros))


def adam_step(
    params: Mapping[str, Array],
    grads: Mapping[str, Array],
    state: AdamState,
    lr: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[Params, AdamState]:
    r"""One Adam step (Kingma & Ba 2015); returns new parameters and state, inputs untouched.

    Parameters
    ----------
    params, grads : mapping of str to ndarray
        Same keys and shapes.
    state : AdamState
        From :func:`adam_init` or a previous step.
    lr : float, optional
        Step size. Default ``1e-2``.
    betas : (float, float), optional
        Moment decay rates. Default ``(0.9, 0.999)``.
    eps : float, optional
        Added to the root of the second moment. Default ``1e-8``.

    Returns
    -------
    params : dict
    state : AdamState

    Raises
    ------
    TypeError, ValueError
        If ``lr`` is not a finite number ``>= 0``, a beta not in ``[0, 1)`` or
        ``eps`` not ``> 0`` (``eps = 0`` would divide 0 by 0 where a gradient
        is 0).

    Notes
    -----
    Eq. (6.11) of ``docs/model.md``, at step :math:`t` with gradient :math:`\nabla`, decay rates
    :math:`(\rho_1, \rho_2)` = ``betas`` and moments :math:`\nu_1`, :math:`\nu_2`
    (``state.m``, ``state.v``):

    .. math::

        \nu_1 \leftarrow \rho_1 \nu_1 + (1-\rho_1) \nabla, \quad
        \nu_2 \leftarrow \rho_2 \nu_2 + (1-\rho_2) \nabla^2, \quad
        \Theta \leftarrow \Theta
        - \eta\,\frac{\nu_1/(1-\rho_1^t)}{\sqrt{\nu_2/(1-\rho_2^t)} + \epsilon}.

    Examples
    --------
    >>> p, s = adam_step({"w": np.zeros(1)}, {"w": np.array([3.0])}, adam_init({"w": np.zeros(1)}),
    ...                  lr=0.1)
    >>> p["w"].round(6).tolist()  # the first step moves by lr * sign(g)
    [-0.1]
    """
    lr = check_real(lr, "lr", low=0.0)
    b1 = check_real(betas[0], "betas[0]", low=0.0, high=1.0, high_open=True)
    b2 = check_real(betas[1], "betas[1]", low=0.0, high=1.0, high_open=True)
    eps = check_real(eps, "eps", low=0.0, low_open=True)
    t = state.t + 1
    m: Params = {n: b1 * state.m[n] + (1 - b1) * g for n, g in grads.items()}  # Eq. (6.11)
    v: Params = {n: b2 * state.v[n] + (1 - b2) * g * g for n, g in grads.items()}
    new: Params = {
        n: params[n] - lr * (m[n] / (1 - b1**t)) / (np.sqrt(v[n] / (1 - b2**t)) + eps)
        for n in grads
    }
    return new, AdamState(t=t, m=m, v=v)


# ---------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    params : dict
        The trained parameters.
    losses : ndarray, shape (steps,)
        Training loss at each step (before that step's update).
    accuracy : float
        Fraction of test positions whose most likely token is the right one.
    sequence_accuracy : float
        Fraction of test sequences reversed without a single error.
    match : float
        Fraction of test queries whose largest attention weight is on the ideal key.
    mean_weights : ndarray, shape (L, L)
        Attention weights averaged over the test batch.
    ideal : ndarray, shape (L, L)
        :func:`ideal_attention`.
    """

    params: Params
    losses: Array
    accuracy: float
    sequence_accuracy: float
    match: float
    mean_weights: Array
    ideal: Array


def evaluate(
    params: Mapping[str, Array], tokens: ArrayLike, targets: ArrayLike
) -> dict[str, object]:
    r"""Measure accuracy and closeness to the ideal attention on a batch of the reversal task.

    Parameters
    ----------
    params : mapping of str to ndarray
        As returned by :func:`init_model` or :func:`train`.
    tokens, targets : array_like of int, shape (B, L)

    Returns
    -------
    metrics : dict
        ``loss``, ``accuracy`` (per position), ``sequence_accuracy``,
        ``match`` (fraction of queries whose argmax key is ``L - 1 - i``) and
        ``mean_weights`` (L, L).

    Notes
    -----
    Eq. (6.12) of ``docs/model.md``:
    :math:`\mathrm{match} = \frac{1}{BL}\sum_{b,i}[\arg\max_j P_{bij} = L - 1 - i]`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = reverse_task(rng, 3, 4, 5)
    >>> sorted(evaluate(init_model(rng, 5, 8, 8), x, y))
    ['accuracy', 'loss', 'match', 'mean_weights', 'sequence_accuracy']
    """
    loss, cache = model_forward(params, tokens, targets)
    right = cache.logits.argmax(axis=-1) == cache.targets
    L = cache.tokens.shape[1]
    best_key = cache.weights.argmax(axis=-1)  # (B, L)
    return {
        "loss": loss,
        "accuracy": float(right.mean()),
        "sequence_accuracy": float(right.all(axis=1).mean()),
        "match": float((best_key == np.arange(L)[::-1]).mean()),  # Eq. (6.12)
        "mean_weights": cache.weights.mean(axis=0),
    }


def _check_train(
    seed: object, steps: object, batch: object, length: object, width: object, lr: object,
    log: object, log_every: object, test_size: object,
) -> None:  # fmt: skip
    """Refuse the arguments of :func:`train` that would divide by zero, give NaN or fail late."""
    check_int(seed, "seed")
    check_int(steps, "steps")
    for name, size in (("batch", batch), ("length", length), ("log_every", log_every)):
        check_int(size, name, minimum=1)
    check_int(test_size, "test_size", minimum=1)  # an empty test set has no accuracy
    positional_encoding(0, check_int(width, "width"))  # refuses an odd or non-positive width
    check_real(lr, "lr", low=0.0)
    if log is not None and not callable(log):
        raise TypeError(f"log must be callable (such as print) or None, got {type(log).__name__}")


def train(
    seed: int = 0,
    steps: int = 400,
    batch: int = 64,
    length: int = 12,
    vocab: int = 16,
    width: int = 32,
    lr: float = 1e-2,
    log: Callable[[str], None] | None = None,
    log_every: int = 50,
    test_size: int = 1000,
) -> TrainResult:
    r"""Train the model on the reversal task with Adam; deterministic given ``seed``.

    Parameters
    ----------
    seed : int, optional
        Seeds the initial parameters, the training batches and the test set
        (a non-negative integer).
    steps : int, optional
        Adam steps, each on a fresh batch. Default 400.
    batch, length, vocab, width : int, optional
        ``B``, ``L``, ``Nv`` and ``Dm = E = Ev`` (even). Defaults 64, 12, 16, 32.
    lr : float, optional
        Adam step size. Default ``1e-2``.
    log : callable, optional
        Called with a progress line every ``log_every`` steps (e.g. ``print``).
    log_every : int, optional
        At least 1. Default 50.
    test_size : int, optional
        Number of held-out sequences the result is measured on (at least 1).
        Default 1000.

    Returns
    -------
    result : TrainResult

    Raises
    ------
    TypeError
        If a size, ``seed`` or ``log_every`` is not an integer, ``lr`` not a
        real number or ``log`` not callable.
    ValueError
        If ``seed`` or ``steps`` is negative, ``batch``, ``length``, ``vocab``,
        ``log_every`` or ``test_size`` is below 1, ``width`` is not a positive
        even number or ``lr`` is negative or not finite.

    Examples
    --------
    >>> r = train(steps=3, batch=4, test_size=8)
    >>> r.losses.shape
    (3,)
    """
    _check_train(seed, steps, batch, length, width, lr, log, log_every, test_size)
    rng = np.random.default_rng(seed)
    params = init_model(rng, vocab, width, width)
    test_x, test_y = reverse_task(np.random.default_rng([seed, 1]), test_size, length, vocab)
    state = adam_init(params)
    losses = np.empty(steps)
    for step in range(steps):
        x, y = reverse_task(rng, batch, length, vocab)
        losses[step], cache = model_forward(params, x, y)
        params, state = adam_step(params, model_backward(cache), state, lr=lr)
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            m = evaluate(params, test_x[:200], test_y[:200])
            log(
                f"  step {step + 1:4d}/{steps}  train loss {losses[step]:.4f}  "
                f"test accuracy {m['accuracy']:6.1%}  attention on ideal key {m['match']:6.1%}"
            )
    m = evaluate(params, test_x, test_y)
    return TrainResult(
        params=params,
        losses=losses,
        accuracy=float(m["accuracy"]),  # type: ignore[arg-type]
        sequence_accuracy=float(m["sequence_accuracy"]),  # type: ignore[arg-type]
        match=float(m["match"]),  # type: ignore[arg-type]
        mean_weights=np.asarray(m["mean_weights"]),
        ideal=ideal_attention(length),
    )
