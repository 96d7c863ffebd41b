"""The demo's tiny attention model: hand-written backward, Adam, and that it really learns."""

import numpy as np
import pytest

from numpy_attention.model import (
    PARAM_NAMES,
    adam_init,
    adam_step,
    evaluate,
    ideal_attention,
    init_model,
    model_backward,
    model_forward,
    positional_encoding,
    reverse_task,
    train,
)
from numpy_attention.testing import gradcheck


def _small(seed=0, B=3, L=5, Nv=6, Dm=6, E=4):
    rng = np.random.default_rng(seed)
    params = init_model(rng, vocab=Nv, width=Dm, head_width=E)
    params["b_o"] = rng.normal(size=Nv)  # a non-zero bias, so its role is exercised
    x, y = reverse_task(rng, B, L, Nv)
    return params, x, y


def _loss_fn(tokens, targets, **params):
    loss, cache = model_forward(params, tokens, targets)
    return np.array(loss), cache


def _loss_bwd(g, cache):
    return model_backward(cache, d_loss=float(g))


@pytest.mark.parametrize("seed", [0, 1])
def test_model_backward_equals_finite_differences_of_the_loss(seed):
    """Eqs. (6.7)-(6.10) and (2.10)-(2.14): each parameter's gradient equals float64 differences."""
    params, x, y = _small(seed)
    report = gradcheck(_loss_fn, dict(params, tokens=x, targets=y), _loss_bwd, wrt=PARAM_NAMES)
    assert report.passed
    assert set(report.checked) == set(PARAM_NAMES)


def test_readout_bias_gradient_sums_to_zero():
    """Eq. (6.7): each row of dZ = (softmax - onehot)/BL sums to 0, so sum(db_o) = 0."""
    params, x, y = _small(2)
    g = model_backward(model_forward(params, x, y)[1])
    assert abs(g["b_o"].sum()) < 1e-15
    assert np.abs(g["b_o"]).max() > 1e-3  # and it is not trivially zero


def test_embedding_gradient_is_zero_exactly_for_unused_tokens():
    """Eq. (6.10): a token absent from the batch receives no gradient; present tokens do."""
    params, _, _ = _small(3, Nv=8)
    x = np.array([[0, 1, 2, 1]])
    g = model_backward(model_forward(params, x, x[:, ::-1])[1])
    assert np.all(g["embed"][3:] == 0.0)
    assert np.all(np.abs(g["embed"][:3]).sum(axis=1) > 0)


def test_backward_scales_linearly_with_d_loss():
    """The backward is a vector-Jacobian product: doubling d_loss doubles every gradient."""
    params, x, y = _small(4)
    cache = model_forward(params, x, y)[1]
    g1, g2 = model_backward(cache), model_backward(cache, d_loss=2.0)
    for n in PARAM_NAMES:
        np.testing.assert_allclose(g2[n], 2 * g1[n], rtol=1e-14, atol=1e-18)


def test_loss_is_the_mean_negative_log_likelihood_of_the_targets():
    """Eq. (6.6) against a literal loop over positions with the log of a softmax."""
    params, x, y = _small(5)
    loss, cache = model_forward(params, x, y)
    total = 0.0
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            z = cache.logits[b, i]
            total -= z[y[b, i]] - np.log(np.sum(np.exp(z)))
    assert loss == pytest.approx(total / x.size, rel=1e-12)


def test_positional_encoding_pairs_lie_on_the_unit_circle():
    """Eq. (6.2): (sin, cos) pairs satisfy sin^2 + cos^2 = 1; position 0 is (0, 1, 0, 1, ...)."""
    pe = positional_encoding(7, 10)
    np.testing.assert_allclose(pe[:, 0::2] ** 2 + pe[:, 1::2] ** 2, 1.0, rtol=0, atol=1e-15)
    assert pe[0].tolist() == [0.0, 1.0] * 5
    assert np.allclose(pe[1, :2], [np.sin(1.0), np.cos(1.0)])  # omega_0 = 1
    with pytest.raises(ValueError, match="even"):
        positional_encoding(3, 5)


def test_ideal_attention_is_the_reversal_permutation():
    """The ideal map applied to the tokens gives the targets: P* x = reversed x."""
    rng = np.random.default_rng(0)
    x, y = reverse_task(rng, 4, 6, 9)
    P = ideal_attention(6)
    np.testing.assert_array_equal(P @ x.T, y.T)
    np.testing.assert_array_equal(P.sum(axis=1), 1.0)


def test_adam_first_step_moves_each_entry_by_lr_against_the_gradient_sign():
    """Eq. (6.11): with bias correction, step 1 is theta - lr * g/|g| (up to eps)."""
    p = {"w": np.array([1.0, -2.0, 0.5])}
    g = {"w": np.array([3.0, -0.01, 200.0])}
    new, state = adam_step(p, g, adam_init(p), lr=0.1)
    np.testing.assert_allclose(new["w"], p["w"] - 0.1 * np.sign(g["w"]), rtol=1e-6)
    assert state.t == 1
    assert p["w"].tolist() == [1.0, -2.0, 0.5]  # the input is untouched


def test_model_forward_rejects_bad_tokens():
    """Principle 5: tokens outside [0, Nv), float tokens, or mismatched shapes raise clearly."""
    params, x, y = _small()
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, Nv=6\)"):
        model_forward(params, x + 6, y)
    with pytest.raises(TypeError, match="integer"):
        model_forward(params, x.astype(float), y)
    with pytest.raises(ValueError, match="shape"):
        model_forward(params, x, y[:, :2])


def test_training_on_a_short_schedule_learns_the_reversal_attention():
    """Our backward and Adam: 120 steps cut the loss 10x and put the argmax weight on key L-1-i."""
    r = train(seed=0, steps=120, test_size=300)
    assert r.losses[-10:].mean() < r.losses[:10].mean() / 10
    assert r.match >= 0.9
    assert r.accuracy >= 0.9
    # the learned map's heaviest entry in each row is the anti-diagonal, like the ideal one
    np.testing.assert_array_equal(r.mean_weights.argmax(axis=1), r.ideal.argmax(axis=1))


def test_an_untrained_model_does_not_attend_to_the_ideal_key():
    """The metric can fail: at initialisation the match is near chance (1/L), not near 1."""
    rng = np.random.default_rng(0)
    x, y = reverse_task(rng, 300, 12, 16)
    m = evaluate(init_model(np.random.default_rng(1), 16, 32, 32), x, y)
    assert m["match"] < 0.5
    assert m["accuracy"] < 0.3


def test_training_is_deterministic_from_the_seed():
    """Same seed, same losses bit for bit; another seed, different losses."""
    a = train(seed=3, steps=15, test_size=20)
    b = train(seed=3, steps=15, test_size=20)
    c = train(seed=4, steps=15, test_size=20)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert not np.array_equal(a.losses, c.losses)


# ---------------------------------------------------------------------------
# Hardening (issue 14): no ZeroDivisionError, no NaN, clear errors, a cache that owns its arrays
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch": 0},
        {"length": 0},
        {"log_every": 0, "log": lambda line: None},
        {"test_size": 0},
        {"vocab": 0},
        {"steps": -1},
        {"seed": -1},
    ],
    ids=["batch=0", "length=0", "log_every=0", "test_size=0", "vocab=0", "steps=-1", "seed=-1"],
)
def test_train_refuses_sizes_that_would_divide_by_zero_or_give_nan(kwargs):
    """batch, length or log_every of 0 divided by zero and test_size=0 gave accuracy NaN: each
    is now a ValueError naming the argument and its minimum."""
    name = next(k for k in kwargs if k != "log")
    with pytest.raises(ValueError, match=rf"{name} must be .*>= \d+, got -?\d"):
        train(**{"steps": 2, "batch": 2, "test_size": 2, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"batch": 2.0}, TypeError, "batch must be an? .*integer, got float"),
        ({"width": 5}, ValueError, "width must be a positive even number"),
        ({"lr": float("nan")}, ValueError, "lr must be .*finite.*, got nan"),
        ({"log": "print"}, TypeError, "log must be callable"),
    ],
)
def test_train_refuses_arguments_of_the_wrong_kind(kwargs, exc, match):
    """A float size, an odd width, a NaN step size or a log that cannot be called is refused
    before any training (not a traceback from deep inside, not NaN losses)."""
    with pytest.raises(exc, match=match):
        train(**{"steps": 2, "batch": 2, "test_size": 2, **kwargs})


@pytest.mark.parametrize("shape", [(0, 5), (3, 0)])
def test_model_forward_refuses_an_empty_batch_instead_of_a_nan_loss(shape):
    """No sequence, or sequences of no token, made the mean loss NaN (and the backward divide by
    zero); it is a ValueError naming tokens."""
    params, _, _ = _small()
    empty = np.zeros(shape, dtype=np.int64)
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, L\) with B, L >= 1"):
        model_forward(params, empty, empty)


@pytest.mark.parametrize("foreign", [None, "attention cache"])
def test_model_backward_refuses_a_foreign_cache_with_a_type_error(foreign):
    """model_backward(None) or a core AttentionCache is a TypeError naming the cache and
    model_forward; a NaN d_loss is a ValueError."""
    from numpy_attention.attention import attention_forward

    q = np.ones((1, 1, 2, 2))
    cache = None if foreign is None else attention_forward(q, q, q)[1]
    with pytest.raises(TypeError, match=r"cache must be the ModelCache returned by model_forward"):
        model_backward(cache)
    params, x, y = _small()
    with pytest.raises(ValueError, match=r"d_loss must be .*finite.*, got nan"):
        model_backward(model_forward(params, x, y)[1], d_loss=float("nan"))


@pytest.mark.parametrize(
    ("name", "shape"), [("w_k", (6, 3)), ("w_o", (5, 6)), ("b_o", (5,)), ("embed", (6,))]
)
def test_model_forward_names_a_parameter_of_the_wrong_shape(name, shape):
    """A parameter whose shape does not fit the others' is a ValueError naming it, not numpy's
    matmul error (or a silently broadcast bias)."""
    params, x, y = _small()
    params[name] = np.zeros(shape)
    with pytest.raises(ValueError, match=rf"params\['{name}'\]"):
        model_forward(params, x, y)
    del params[name]
    with pytest.raises(ValueError, match=rf"params is missing \['{name}'\]"):
        model_forward(params, x, y)


@pytest.mark.parametrize("rng", [None, 0], ids=["None", "int seed"])
def test_init_model_and_reverse_task_refuse_an_rng_that_is_not_a_generator(rng):
    """Both draw from a numpy.random.Generator and say so when given something else."""
    with pytest.raises(TypeError, match=r"rng must be the Generator .*default_rng"):
        init_model(rng)
    with pytest.raises(TypeError, match=r"rng must be the Generator .*default_rng"):
        reverse_task(rng, 2, 3, 4)


def test_editing_params_tokens_and_targets_in_place_leaves_the_backward_unchanged():
    """The cache holds its own copies: an in-place optimizer step on every parameter and edits
    of the token and target arrays after the forward change no gradient."""
    params, x, y = _small(6)
    ref = model_backward(model_forward(params, x.copy(), y.copy())[1])
    cache = model_forward(params, x, y)[1]
    for a in params.values():
        a -= 0.5  # an optimizer step, in place
    x[...], y[...] = y.copy(), x.copy()
    got = model_backward(cache)
    for n in PARAM_NAMES:
        np.testing.assert_array_equal(got[n], ref[n])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"eps": 0.0}, "eps must be"), ({"betas": (0.9, 1.0)}, r"betas\[1\]"), ({"lr": -1.0}, "lr")],
)
def test_adam_step_refuses_settings_that_give_nan_or_ascend(kwargs, match):
    """eps = 0 divides 0 by 0 where a gradient is 0 (a NaN parameter from finite inputs), beta = 1
    divides by 1 - 1 = 0, a negative step size climbs the loss: each a ValueError."""
    p, g = {"w": np.ones(2)}, {"w": np.array([0.0, 1.0])}
    with pytest.raises(ValueError, match=match):
        adam_step(p, g, adam_init(p), **kwargs)
