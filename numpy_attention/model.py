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

Shapes (letter legend)::

    B batch    L sequence length (queries = keys)    V vocabulary size
    D model width (embedding, positional encoding)   E query/key/value width

    tokens, targets (B, L) int       embed (V, D)    pe (L, D)
    w_q, w_k, w_v (D, E)             w_o (E, V)      b_o (V,)
    weights (B, L, L)                logits (B, L, V)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

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

Array = NDArray[np.floating]
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
        ``B`` sequences of ``L`` tokens drawn uniformly from ``range(V)``.

    Returns
    -------
    tokens, targets : ndarray of int64, shape (B, L)
        ``targets[b, i] = tokens[b, L - 1 - i]``.

    Examples
    --------
    >>> x, y = reverse_task(np.random.default_rng(0), 1, 4, 10)
    >>> bool(np.array_equal(y, x[:, ::-1]))
    True
    """
    tokens = rng.integers(0, vocab, size=(batch, length), dtype=np.int64)
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
    r"""Sinusoidal positional encoding (Vaswani et al. 2017), shape ``(L, D)``.

    Parameters
    ----------
    length : int
        ``L`` positions.
    width : int
        ``D``, the model width (even).

    Returns
    -------
    pe : ndarray, shape (L, D)

    Raises
    ------
    ValueError
        If ``width`` is odd or not positive.

    Notes
    -----
    Eq. (6.2) of ``docs/model.md``:

    .. math:: PE_{i,2k} = \sin(i\,\omega_k), \quad PE_{i,2k+1} = \cos(i\,\omega_k),
              \quad \omega_k = 10000^{-2k/D}.

    Examples
    --------
    >>> positional_encoding(2, 4).round(3)
    array([[0.   , 1.   , 0.   , 1.   ],
           [0.841, 0.54 , 0.01 , 1.   ]])
    """
    if width <= 0 or width % 2:
        raise ValueError(f"width must be a positive even number, got {width}")
    omega = 10000.0 ** (-np.arange(0, width, 2) / width)  # Eq. (6.2)
    angle = np.arange(length)[:, None] * omega[None, :]
    pe = np.empty((length, width))
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
        ``V``, ``D`` and ``E``. Defaults 10, 32, 32.

    Returns
    -------
    params : dict of str to ndarray
        Keys :data:`PARAM_NAMES`: ``embed (V, D)``, ``w_q``, ``w_k``, ``w_v`` ``(D, E)``,
        ``w_o (E, V)``, ``b_o (V,)``.

    Examples
    --------
    >>> p = init_model(np.random.default_rng(0), vocab=5, width=4, head_width=3)
    >>> {k: v.shape for k, v in p.items()}["w_o"]
    (3, 5)
    """
    V, D, E = vocab, width, head_width
    return {
        "embed": rng.standard_normal((V, D)),
        "w_q": rng.standard_normal((D, E)) / math.sqrt(D),
        "w_k": rng.standard_normal((D, E)) / math.sqrt(D),
        "w_v": rng.standard_normal((D, E)) / math.sqrt(D),
        "w_o": rng.standard_normal((E, V)) / math.sqrt(E),
        "b_o": np.zeros(V),
    }


@dataclass(frozen=True)
class ModelCache:
    """What :func:`model_backward` needs, and the forward's by-products.

    Attributes
    ----------
    tokens, targets : ndarray of int, shape (B, L)
    h : ndarray, shape (B, L, D)
        Embedding plus positional encoding, Eq. (6.3).
    q, k, v : ndarray, shape (B, L, E)
        Projections, Eq. (6.4).
    attention : AttentionCache
        The cache of the attention layer, Eqs. (2.1)-(2.5).
    o : ndarray, shape (B, L, E)
        Attention output.
    logits : ndarray, shape (B, L, V)
        Eq. (6.5).
    log_probs : ndarray, shape (B, L, V)
        Log-softmax of the logits, Eq. (6.6).
    params : dict
        The parameters the forward used.
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
    t = np.asarray(x)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (B, L), got shape {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= vocab):
        raise ValueError(f"{name} must lie in [0, V={vocab}), got min {t.min()} and max {t.max()}")
    return t.astype(np.int64, copy=False)


def model_forward(
    params: Mapping[str, ArrayLike], tokens: ArrayLike, targets: ArrayLike
) -> tuple[float, ModelCache]:
    r"""Loss of the one-layer attention model on a batch, and the cache for the backward.

    Parameters
    ----------
    params : mapping of str to array_like
        As returned by :func:`init_model`.
    tokens, targets : array_like of int, shape (B, L)
        Input tokens and the token wanted at each position, in ``range(V)``.

    Returns
    -------
    loss : float
        Mean cross-entropy over the ``B * L`` positions, in nats, Eq. (6.6).
    cache : ModelCache
        ``cache.logits`` (B, L, V), ``cache.weights`` (B, L, L), and the rest.

    Raises
    ------
    ValueError
        If ``tokens``/``targets`` differ in shape, are not 2-D, or hold tokens
        outside ``[0, V)``.
    TypeError
        If ``tokens`` or ``targets`` is not an integer array.

    Notes
    -----
    Eqs. (6.1)-(6.6) of ``docs/model.md``, with the attention of Eqs. (2.1)-(2.5):

    .. math::

        X_{bi} = W^{\mathrm{emb}}_{x_{bi}} \;(6.1), \qquad H = X + PE \;(6.3), \qquad
        Q, K, V = H W_q, H W_k, H W_v \;(6.4),

        O = \mathrm{softmax}(QK^\top/\sqrt{E})\,V, \qquad Z = O W_o + b_o \;(6.5), \qquad
        \mathcal{L} = -\frac{1}{BL}\sum_{b,i} \log\mathrm{softmax}(Z_{bi})_{y_{bi}} \;(6.6).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_model(rng, vocab=4, width=8, head_width=8)
    >>> x, y = reverse_task(rng, 2, 5, 4)
    >>> loss, cache = model_forward(p, x, y)
    >>> cache.logits.shape, cache.weights.shape
    ((2, 5, 4), (2, 5, 5))
    """
    p = {n: np.asarray(params[n], dtype=np.float64) for n in PARAM_NAMES}
    V, D = p["embed"].shape
    x = _check_tokens(tokens, "tokens", V)
    y = _check_tokens(targets, "targets", V)
    if x.shape != y.shape:
        raise ValueError(f"targets has shape {y.shape}, expected the shape of tokens {x.shape}")
    L = x.shape[1]
    h = p["embed"][x] + positional_encoding(L, D)  # Eqs. (6.1)-(6.3)
    q, k, v = h @ p["w_q"], h @ p["w_k"], h @ p["w_v"]  # Eq. (6.4)
    o, att = attention_forward(q[:, None], k[:, None], v[:, None])  # Eqs. (2.1)-(2.5), one head
    o = o[:, 0]
    logits = o @ p["w_o"] + p["b_o"]  # Eq. (6.5)
    log_probs = log_softmax(logits, axis=-1)  # Eq. (6.6)
    picked = np.take_along_axis(log_probs, y[..., None], axis=-1)
    loss = -float(np.mean(picked))  # Eq. (6.6)
    cache = ModelCache(x, y, h, q, k, v, att, o, logits, log_probs, p)
    return loss, cache


def model_backward(cache: ModelCache, d_loss: float = 1.0) -> Params:
    r"""Hand-written gradient of the loss of :func:`model_forward` with respect to every parameter.

    Parameters
    ----------
    cache : ModelCache
        From :func:`model_forward`.
    d_loss : float, optional
        Upstream gradient of the (scalar) loss. Default 1.

    Returns
    -------
    grads : dict of str to ndarray
        ``grads[name]`` has the shape of ``params[name]``, for each of :data:`PARAM_NAMES`.

    Notes
    -----
    Eqs. (6.7)-(6.10) of ``docs/model.md``, each undoing a forward line, with the
    attention backward of Eqs. (2.10)-(2.14) in the middle:

    .. math::

        dZ = \frac{d\mathcal{L}}{BL}\,(\mathrm{softmax}(Z) - \mathrm{onehot}(y)) \;(6.7),

        dW_o = \textstyle\sum_{bi} O_{bi}^\top dZ_{bi},\ db_o = \sum_{bi} dZ_{bi},\
        dO = dZ\,W_o^\top \;(6.8),

        dW_q = \textstyle\sum_{bi} H_{bi}^\top dQ_{bi} \text{ (same for } k, v),\
        dH = dQ W_q^\top + dK W_k^\top + dV W_v^\top \;(6.9),

        dW^{\mathrm{emb}}_t = \textstyle\sum_{b,i:\,x_{bi}=t} dH_{bi} \;(6.10).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = init_model(rng, vocab=4, width=8, head_width=8)
    >>> x, y = reverse_task(rng, 2, 5, 4)
    >>> g = model_backward(model_forward(p, x, y)[1])
    >>> all(g[n].shape == p[n].shape for n in p)
    True
    """
    c, p = cache, cache.params
    B, L = c.tokens.shape
    V, D = p["embed"].shape
    E = c.o.shape[-1]
    # Eq. (6.7), undoes Eq. (6.6): the softmax/cross-entropy pair collapses to probs - onehot
    d_logits = np.exp(c.log_probs)
    np.put_along_axis(
        d_logits, c.targets[..., None],
        np.take_along_axis(d_logits, c.targets[..., None], axis=-1) - 1.0, axis=-1,
    )  # fmt: skip
    d_logits *= d_loss / (B * L)
    # Eq. (6.8), undoes Z = O W_o + b_o (Eq. (6.5))
    d_w_o = c.o.reshape(-1, E).T @ d_logits.reshape(-1, V)
    d_b_o = d_logits.sum(axis=(0, 1))
    d_o = d_logits @ p["w_o"].T
    # Eqs. (2.10)-(2.14), undo the attention (Eqs. (2.1)-(2.5))
    ga = attention_backward(d_o[:, None], c.attention)
    dq, dk, dv = ga.dq[:, 0], ga.dk[:, 0], ga.dv[:, 0]
    # Eq. (6.9), undoes the projections Q, K, V = H W (Eq. (6.4))
    hf = c.h.reshape(-1, D)
    d_w_q, d_w_k, d_w_v = (hf.T @ g.reshape(-1, E) for g in (dq, dk, dv))
    d_h = dq @ p["w_q"].T + dk @ p["w_k"].T + dv @ p["w_v"].T
    # Eq. (6.10), undoes the lookup X = W_emb[x] (Eq. (6.1)); PE (Eq. (6.2)) is a constant
    d_embed = np.zeros_like(p["embed"])
    np.add.at(d_embed, c.tokens.ravel(), d_h.reshape(-1, D))
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

    Notes
    -----
    Eq. (6.11) of ``docs/model.md``, at step :math:`t` with gradient :math:`g`:

    .. math::

        m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        \theta \leftarrow \theta - \eta\,\frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)} + \epsilon}.

    Examples
    --------
    >>> p, s = adam_step({"w": np.zeros(1)}, {"w": np.array([3.0])}, adam_init({"w": np.zeros(1)}),
    ...                  lr=0.1)
    >>> p["w"].round(6).tolist()  # the first step moves by lr * sign(g)
    [-0.1]
    """
    b1, b2 = betas
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
        Seeds the initial parameters, the training batches and the test set.
    steps : int, optional
        Adam steps, each on a fresh batch. Default 400.
    batch, length, vocab, width : int, optional
        ``B``, ``L``, ``V`` and ``D = E``. Defaults 64, 12, 16, 32.
    lr : float, optional
        Adam step size. Default ``1e-2``.
    log : callable, optional
        Called with a progress line every ``log_every`` steps (e.g. ``print``).
    log_every : int, optional
    test_size : int, optional
        Number of held-out sequences the result is measured on. Default 1000.

    Returns
    -------
    result : TrainResult

    Examples
    --------
    >>> r = train(steps=3, batch=4, test_size=8)
    >>> r.losses.shape
    (3,)
    """
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
