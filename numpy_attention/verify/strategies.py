r"""Hypothesis strategies for attention inputs: property tests of your kernel against the oracle.

Needs ``hypothesis`` (imported when this module is, never by the package
itself). :func:`attention_inputs` draws the keyword arguments of
:func:`~numpy_attention.verify.callables.check_callable`'s calling
convention (shapes, GQA, masks, causal alignment, dropout, scale, and the
variants you name), with
values exactly representable in the dtype; hypothesis shrinks a failing draw
to a small one. Use it with
:func:`~numpy_attention.verify.callables.assert_matches_reference`::

    from hypothesis import given
    from numpy_attention.verify.callables import assert_matches_reference
    from numpy_attention.verify.strategies import attention_inputs

    @given(attention_inputs(dtype="bfloat16"))
    def test_my_kernel(arguments):
        assert_matches_reference(my_kernel, arguments)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from hypothesis import strategies as st

from .callables import VARIANT_ARGUMENTS
from .precision import rounding
from .tolerance import dtype_name

__all__ = ["attention_inputs"]


def _exact(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round to ``dtype`` and back to float64 (exact in every dtype at least as wide)."""
    return np.asarray(rounding(dtype)(x), dtype=np.float64)


def _draw_variants(
    draw: Any, rng: np.random.Generator, names: tuple[str, ...], Hq: int, max_len: int, dtype: str
) -> dict[str, Any]:  # fmt: skip
    """Draw each variant of ``names`` on or off; return those drawn on (attention_forward names)."""
    out: dict[str, Any] = {}
    side = st.one_of(st.none(), st.integers(0, max_len))  # None: that side unbounded
    for name in names:
        if not draw(st.booleans()):
            continue
        if name == "window":
            out[name] = (draw(side), draw(side))
        elif name == "softcap":
            out[name] = draw(st.sampled_from([1.0, 5.0, 30.0]))
        elif name == "alibi_slopes":
            out[name] = _exact(rng.uniform(1 / 16, 1.0, Hq), dtype)
        elif name == "sinks":
            out[name] = _exact(rng.standard_normal(Hq), dtype)
        elif name == "chunk_size":
            out[name] = draw(st.integers(1, max_len))
        else:  # sink_tokens: the first keys, visible through a window or a chunk
            out[name] = draw(st.integers(1, 2))
    return out


@st.composite
def _draw(
    draw: Any, dtype: str, max_len: int, max_dim: int, dropout: bool, variants: tuple[str, ...]
) -> dict[str, Any]:  # fmt: skip
    B, Hkv, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    L, S = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    E, Ev = draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q = _exact(rng.standard_normal((B, Hkv * G, L, E)), dtype)
    k = _exact(rng.standard_normal((B, Hkv, S, E)), dtype)
    v = _exact(rng.standard_normal((B, Hkv, S, Ev)), dtype)
    mask_kind = draw(st.sampled_from(["none", "bool", "float"]))
    mask: np.ndarray | None = None
    if mask_kind == "bool":
        mask = rng.random((B, 1, L, S)) < 0.7
    elif mask_kind == "float":
        mask = _exact(rng.standard_normal((1, Hkv * G, L, S)), dtype)
    is_causal = draw(st.booleans())
    p = draw(st.sampled_from([0.0, 0.25])) if dropout else 0.0
    keep = rng.random((B, Hkv * G, L, S)) >= p if p else None
    scale = draw(st.sampled_from([None, 0.5, 1.0, 0.125]))
    return {
        "q": q, "k": k, "v": v, "attn_mask": mask, "dropout_p": p, "dropout_mask": keep,
        "is_causal": is_causal, "causal_bottom_right": is_causal and draw(st.booleans()),
        "scale": 1.0 / np.sqrt(E) if scale is None else scale, "enable_gqa": G > 1,
        "d_out": _exact(rng.standard_normal((B, Hkv * G, L, Ev)), dtype), "dtype": dtype,
        **_draw_variants(draw, rng, variants, Hkv * G, max_len, dtype),
    }  # fmt: skip


def attention_inputs(
    *, dtype: Any = "float32", max_len: int = 8, max_dim: int = 8, dropout: bool = True,
    variants: Iterable[str] = (),
) -> st.SearchStrategy[dict[str, Any]]:  # fmt: skip
    r"""Draw one call's keyword arguments (the calling convention of ``check_callable``).

    Parameters
    ----------
    dtype : {"float32", "float64", "float16", "bfloat16"}, optional
        The dtype the candidate computes in; the arrays' values are exact in it.
    max_len : int, optional
        Largest ``L`` and ``S``.
    max_dim : int, optional
        Largest ``E`` and ``Ev``.
    dropout : bool, optional
        Also draw ``dropout_p = 0.25`` with a keep-mask.
    variants : iterable of str, optional
        Also draw these of :data:`~numpy_attention.verify.callables.VARIANT_ARGUMENTS`
        (the ones your kernel implements), each on or off per draw, with
        ``attention_forward``'s names, as ``check_callable`` passes them; one drawn
        off is left out of the arguments. ``window``: ``(left, right)``, each
        side 0 to ``max_len`` or None (unbounded); ``softcap``: 1, 5 or 30;
        ``alibi_slopes``, ``sinks``: ``(Hq,)``, exact in the dtype;
        ``chunk_size``: 1 to ``max_len``; ``sink_tokens``: 1 or 2.

    Returns
    -------
    strategy : hypothesis SearchStrategy of dict
        Batches 1-2, 1-2 key/value heads, GQA groups 1-3, no/bool/float mask,
        causal top-left or bottom-right, default or explicit scale.

    Raises
    ------
    ValueError
        An unknown name in ``variants``.

    Examples
    --------
    In a test, decorate it with ``@given(attention_inputs(...))`` (above).
    Outside one, ``hypothesis.find`` gives the smallest draw meeting a
    condition (``.example()`` would warn that it is for interactive use);
    here, a GQA call with a boolean mask:

    >>> from hypothesis import find, settings
    >>> args = find(attention_inputs(dtype="bfloat16"),
    ...             lambda a: a["enable_gqa"] and a["attn_mask"] is not None
    ...             and a["attn_mask"].dtype == bool, settings=settings(database=None))
    >>> args["q"].shape, args["k"].shape, args["v"].shape, args["attn_mask"].shape
    ((1, 2, 1, 1), (1, 1, 1, 1), (1, 1, 1, 1), (1, 1, 1, 1))
    >>> args["q"].dtype, args["dtype"], args["dropout_p"], args["is_causal"]
    (dtype('float64'), 'bfloat16', 0.0, False)
    """
    names = tuple(variants)
    unknown = sorted(set(names) - set(VARIANT_ARGUMENTS))
    if unknown:
        raise ValueError(
            f"variants has unknown name(s) {unknown}; known: {list(VARIANT_ARGUMENTS)}"
        )
    return _draw(dtype_name(dtype), int(max_len), int(max_dim), bool(dropout), names)
