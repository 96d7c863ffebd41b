r"""Checking a Python callable directly: the suite without files, and property tests.

:func:`check_callable` runs a user's attention function (NumPy-, torch- or
JAX-backed) over the suite's scaled dot-product attention cases and returns
the :class:`~numpy_attention.verify.CheckReport` that ``numpy-attention
check`` would print. :func:`assert_matches_reference` checks it on one set of
inputs, such as those :mod:`numpy_attention.verify.strategies` draws, so a
hypothesis property test shrinks a failure to a small case.

**The calling convention.** ``fn(**arguments)`` receives, by keyword:

- ``q (B, Hq, L, E)``, ``k (B', Hkv, S, E)``, ``v (B', Hkv, S, Ev)``,
  ``d_out (B, Hq, L, Ev)``: float64 NumPy arrays whose values are exactly
  representable in ``dtype`` (cast them to your dtype: nothing is lost);
- ``attn_mask``: None, a bool array (True = attend) or a float array (added
  to the scaled scores), broadcastable to ``(B, Hq, L, S)``;
- ``dropout_p`` (float), ``dropout_mask`` (None or bool ``(B, Hq, L, S)``,
  True = kept; kept weights are multiplied by ``1/(1-p)``);
- ``is_causal``, ``causal_bottom_right``, ``enable_gqa`` (bool),
  ``scale`` (float);
- ``dtype``: the name of the dtype to compute in (``"bfloat16"``, ...);
- for a case with a variant (a ``"variant"`` case of the suite, or one of
  :func:`~numpy_attention.verify.cases_from_config` with ``window``, ``softcap``,
  ...), also the variant's own keywords, named as
  :func:`~numpy_attention.attention.attention_forward` names them
  (FlashAttention's ``window_size`` is ``window``): ``window`` (``(left, right)``,
  None = unbounded), ``softcap`` (float),
  ``alibi_slopes`` and ``sinks`` (float64 ``(Hq,)``), ``chunk_size`` and
  ``sink_tokens`` (int). Only the keywords a case uses are passed, so a candidate
  without variants is never called with them (the default cases have none).

It returns a mapping from quantity names (``out``, ``weights``, ``lse``,
``dq``, ``dk``, ``dv``, ``d_attn_mask``, ``d_sinks``; ``docs/verify.md``, "The suite")
to arrays: NumPy arrays, torch tensors or JAX arrays of any real dtype
(bfloat16 included). A quantity it leaves out, or returns as None, is
``MISSING``; raising :class:`NotImplementedError` leaves out the whole case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._arrays import sum_to_shape
from ..attention import (
    AttentionCache,
    _dropout,
    _per_kv_head,
    _per_query_head,
    attention_backward,
    attention_forward,
)
from ..variants import window_from_flash
from .cases import Case, _one_key_per_row, build_suite
from .compare import Comparison, compare_attention
from .diagnosis import case_context
from .grading import CheckReport, check_results
from .precision import LOW_PRECISION, baseline_errors
from .tolerance import dtype_name

__all__ = [
    "call_arguments", "reference", "gradient_terms", "to_numpy", "check_callable",
    "assert_matches_reference",
]  # fmt: skip

#: The keyword arguments a candidate receives, in this order.
ARGUMENTS = ("q", "k", "v", "attn_mask", "dropout_p", "dropout_mask", "is_causal",
             "causal_bottom_right", "scale", "enable_gqa", "d_out")  # fmt: skip
#: The variant keywords a case may add (only those it uses), as attention_forward takes them.
VARIANT_ARGUMENTS = ("window", "softcap", "alibi_slopes", "sinks", "chunk_size", "sink_tokens")
#: Eq. (7.4): a gradient through dS is judged relative to at least this part of its terms.
TERMS_FRACTION = 1 / 8
#: The kinds of case a callable can be checked on: attention with or without variants.
CALLABLE_KINDS = ("sdpa", "variant")


def call_arguments(inputs: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """Return the keyword arguments of the calling convention for a case's inputs.

    Examples
    --------
    >>> args = call_arguments(build_suite()[0].inputs, "bfloat16")
    >>> sorted(args)[:4], args["is_causal"], args["attn_mask"] is None
    (['attn_mask', 'causal_bottom_right', 'd_out', 'dropout_mask'], False, True)
    """
    args: dict[str, Any] = {}
    for name in ARGUMENTS:
        a = inputs.get(name)
        if name in ("dropout_p", "scale"):
            args[name] = float(a) if a is not None else (0.0 if name == "dropout_p" else None)
        elif name in ("is_causal", "causal_bottom_right", "enable_gqa"):
            args[name] = bool(a) if a is not None else False
        else:
            args[name] = None if a is None else np.array(a)
    if args["scale"] is None:
        args["scale"] = 1.0 / float(np.sqrt(args["q"].shape[-1]))
    args["dtype"] = dtype_name(dtype)
    args.update(_variant_arguments(inputs))
    return args


def _variant_arguments(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Return the variant keywords of a case's inputs (the window's -1 sides: None)."""
    out: dict[str, Any] = {}
    for name in VARIANT_ARGUMENTS:
        a = inputs.get(name)
        if a is None:
            continue
        if name == "window":
            left, right = (int(w) for w in np.asarray(a))
            out[name] = window_from_flash((left, right))[0]
        elif name in ("chunk_size", "sink_tokens"):
            out[name] = int(a)
        elif name == "softcap":
            out[name] = float(a)
        else:
            out[name] = np.array(a, dtype=np.float64)
    return out


def _forward(a: Mapping[str, Any]) -> tuple[NDArray[np.floating], AttentionCache]:
    """Run the float64 reference forward on a call's keyword arguments."""
    align = "bottom_right" if a["causal_bottom_right"] else "top_left"
    variants = {n: a[n] for n in VARIANT_ARGUMENTS if a.get(n) is not None}
    return attention_forward(
        a["q"], a["k"], a["v"], a.get("attn_mask"), a["dropout_p"], a["is_causal"], a["scale"],
        a["enable_gqa"], dropout_mask=a.get("dropout_mask"), causal_align=align, **variants,
    )  # fmt: skip


def reference(arguments: Mapping[str, Any]) -> dict[str, NDArray[np.floating]]:
    """Return the float64 expected quantities for a call's arguments (the oracle).

    Examples
    --------
    >>> case = build_suite()[0]
    >>> ref = reference(call_arguments(case.inputs, "float32"))
    >>> bool(np.array_equal(ref["dq"], case.expected["dq"]))
    True
    """
    a = arguments
    out, cache = _forward(a)
    g = attention_backward(np.asarray(a["d_out"], dtype=np.float64), cache)
    res = {"out": out, "weights": cache.P, "lse": cache.lse, "dq": g.dq, "dk": g.dk, "dv": g.dv}
    if g.d_attn_mask is not None:
        res["d_attn_mask"] = g.d_attn_mask
    if g.d_sinks is not None:
        res["d_sinks"] = g.d_sinks
    res = {n: np.asarray(x, dtype=np.float64) for n, x in res.items()}
    if _one_key_per_row(cache.inputs, np.asarray(cache.P, dtype=np.float64)):
        # each row's one weight is 1: dS = P (dP - D) = 0, so dq, dk and dB are exactly 0 (as the
        # suite stores them), not float64 round-off, which would be a meaningless scale.
        for n in ("dq", "dk", "d_attn_mask"):
            if n in res:
                res[n] = np.zeros_like(res[n])
    return res


def gradient_terms(arguments: Mapping[str, Any]) -> dict[str, float]:
    r"""Return the size of the terms that ``dq``, ``dk`` and ``d_attn_mask`` sum (Eq. (7.4)).

    These gradients pass through :math:`dS = P \odot (dP - D)`, which cancels: where the
    weights are peaked or the keys tie, the gradient is far smaller than the terms it sums,
    and float64's round-off of those terms (or a float32 kernel's) is far larger than the
    gradient's own size. Eq. (7.4) takes the same backward over absolute values:

    .. math:: \overline{dS} = P \odot (|dO|\,|V|^\top \odot Z/(1-p)
       + (|dO| \odot |O|)\,\mathbf 1),\quad
       T_{dq} = |\mathrm{scale}| \max \overline{dS}\,|K|,\quad
       T_{dk} = |\mathrm{scale}| \max \overline{dS}^\top |Q|,\quad
       T_{dB} = \max \overline{dS} \text{ summed to } B\text{'s shape}

    Examples
    --------
    >>> args = call_arguments(build_suite()[0].inputs, "float32")
    >>> T, ref = gradient_terms(args), reference(args)
    >>> sorted(T), round(T["dq"] / float(np.abs(ref["dq"]).max()), 1)  # terms are 9.7 times dq
    (['dk', 'dq'], 9.7)
    """
    a = arguments
    out, cache = _forward(a)
    x, G, dO = cache.inputs, cache.inputs.groups, np.abs(np.asarray(a["d_out"], np.float64))
    # dP = dO v^T (Eq. (2.10)), dropout (2.11); D = rowsum(dO * out) (2.12): their terms' sizes
    dP = _dropout(_per_query_head(dO, np.swapaxes(np.abs(x.v), -1, -2), G), cache.keep,
                  cache.dropout_p)  # fmt: skip
    dS_bar = cache.P * (dP + np.sum(dO * np.abs(out), axis=-1, keepdims=True))  # (2.13)'s terms
    dS_bar_T = np.swapaxes(dS_bar, -1, -2)
    terms = {  # dq = scale dS k, dk = scale dS^T q (2.14), dB = dS summed to B's shape (2.15)
        "dq": abs(x.scale) * sum_to_shape(_per_query_head(dS_bar, np.abs(x.k), G), x.q.shape),
        "dk": abs(x.scale) * sum_to_shape(_per_kv_head(dS_bar_T, np.abs(x.q), G), x.k.shape),
    }
    if x.bias is not None:
        terms["d_attn_mask"] = sum_to_shape(dS_bar, x.bias.shape)
    return {n: float(np.max(t, initial=0.0)) for n, t in terms.items()}


def to_numpy(x: Any) -> NDArray[Any]:
    """Convert a NumPy array, torch tensor or JAX array (bfloat16 too) to a real NumPy array.

    Examples
    --------
    >>> to_numpy([1, 2]).tolist()
    [1, 2]
    """
    if hasattr(x, "detach"):  # torch: off the autograd graph, onto the CPU, bfloat16 upcast
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
    a = np.asarray(x)
    return a if a.dtype.kind in "biuf" else a.astype(np.float32)  # ml_dtypes bfloat16 etc.


def _run(fn: Callable[..., Any], args: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        got = fn(**args)
    except NotImplementedError:
        return None
    if not isinstance(got, Mapping):
        raise TypeError(f"the candidate must return a mapping of quantities, got {type(got)}")
    return {q: to_numpy(x) for q, x in got.items() if x is not None}


def _select(cases: Iterable[Case | str] | None) -> list[Case]:
    suite = [c for c in build_suite() if c.kind in CALLABLE_KINDS]
    if cases is None:
        return [c for c in suite if c.kind == "sdpa"]
    by_name = {c.name: c for c in suite}
    chosen = []
    for c in cases:
        if isinstance(c, Case):
            if c.kind not in CALLABLE_KINDS:
                raise ValueError(
                    f"case {c.name!r} is of kind {c.kind!r}; a callable is checked on attention "
                    f"cases, of kind {' or '.join(CALLABLE_KINDS)} (use check_path for the others)"
                )
            chosen.append(c)
        elif c in by_name:
            chosen.append(by_name[c])
        else:
            raise ValueError(f"no attention case named {c!r}: {list(by_name)}")
    return chosen


def check_callable(
    fn: Callable[..., Any],
    *,
    dtype: Any = "float32",
    cases: Iterable[Case | str] | None = None,
    policy: str = "baseline",
    gaps: Any = None,
    strict: bool = False,
) -> CheckReport:
    r"""Run ``fn`` over the suite's attention cases and grade it: ``check`` without files.

    Parameters
    ----------
    fn : callable
        The candidate, called as the module docstring describes:
        ``fn(q=..., k=..., v=..., attn_mask=..., ..., dtype=...) -> {quantity: array}``.
    dtype : {"float32", "float64", "float16", "bfloat16"}, optional
        The dtype the candidate computes in (passed to it as ``dtype``).
    cases : iterable of str or Case, optional
        The cases to run: names of the suite's SDPA and variant cases, or
        :class:`~numpy_attention.verify.Case`\ s of kind ``"sdpa"`` or
        ``"variant"`` (:func:`~numpy_attention.verify.cases_from_config`'s, at
        your sizes); default every SDPA case of the suite (no variant keywords).
        A variant case passes its keywords to ``fn``.
    policy : {"baseline", "absolute"}, optional
        See :func:`~numpy_attention.verify.check_results`.
    gaps : list, optional
        Declared gaps (:mod:`~numpy_attention.verify.gaps`), reported ``N/A``.
    strict : bool, optional
        Count undeclared missing quantities and cases as failures.

    Returns
    -------
    report : CheckReport

    Raises
    ------
    ValueError
        An unknown dtype, policy or case name; a case of another kind (layers,
        serving: check their files with :func:`~numpy_attention.verify.check_path`).
    TypeError
        If ``fn`` returns something other than a mapping.

    Examples
    --------
    >>> from numpy_attention.attention import attention_forward
    >>> def mine(q, k, v, attn_mask, dropout_p, dropout_mask, is_causal, causal_bottom_right,
    ...          scale, enable_gqa, d_out, dtype):
    ...     align = "bottom_right" if causal_bottom_right else "top_left"
    ...     out, _ = attention_forward(q.astype(np.float32), k.astype(np.float32),
    ...                                v.astype(np.float32), attn_mask, dropout_p, is_causal,
    ...                                scale, enable_gqa, dropout_mask=dropout_mask,
    ...                                causal_align=align)
    ...     return {"out": out}
    >>> report = check_callable(mine, dtype="float32")
    >>> report.passed, report.counts["PASS"] >= 20, report.counts["MISSING"] > 0
    (True, True, True)
    """
    name = dtype_name(dtype)
    chosen = _select(cases)
    results, expected, baselines, contexts = {}, {}, {}, {}
    for case in chosen:
        expected[case.name] = case.expected
        baselines[case.name] = baseline_errors(case.inputs, case.expected, case.kind)
        contexts[case.name] = case_context(case.manifest_entry())
        got = _run(fn, call_arguments(case.inputs, name))
        if got is not None:
            results[case.name] = got
    return check_results(results, expected, dtype=name, policy=policy, baselines=baselines,
                         contexts=contexts, gaps=gaps, strict=strict)  # fmt: skip


def assert_matches_reference(
    fn: Callable[..., Any],
    arguments: Mapping[str, Any],
    *,
    policy: str = "baseline",
    quantities: Iterable[str] | None = None,
) -> list[Comparison]:
    r"""Call ``fn(**arguments)`` and assert each quantity it returns matches the oracle.

    Parameters
    ----------
    fn : callable
        The candidate (calling convention of the module docstring).
    arguments : mapping
        Its keyword arguments, e.g. drawn by
        :func:`~numpy_attention.verify.strategies.attention_inputs`; the
        dtype is ``arguments["dtype"]``.
    policy : {"baseline", "absolute"}, optional
        ``"baseline"``: in float16 and bfloat16, judged against a naive
        implementation in the same dtype on these inputs (Eq. (7.3)).
    quantities : iterable of str, optional
        Only these (default: all it returns).

    Returns
    -------
    comparisons : list of Comparison

    Raises
    ------
    AssertionError
        If a quantity fails, or ``fn`` returns no quantity of the oracle.

    Notes
    -----
    ``dq``, ``dk`` and ``d_attn_mask`` are judged relative to at least
    ``TERMS_FRACTION`` (1/8) of their terms (:func:`gradient_terms`, Eq. (7.4)),
    not to their own largest entry alone: where they cancel far below their
    terms, a correct kernel's round-off of those terms would otherwise fail.

    Examples
    --------
    >>> args = call_arguments(build_suite()[0].inputs, "float64")
    >>> [c.quantity for c in assert_matches_reference(lambda **a: reference(a), args)][:2]
    ['out', 'weights']
    """
    dtype = dtype_name(arguments["dtype"])
    want = reference(arguments)
    got = _run(fn, arguments) or {}
    names = [q for q in (quantities or want) if q in got and q in want]
    if not names:
        raise AssertionError(f"the candidate returned none of {sorted(want)}: got {sorted(got)}")
    base = {}
    if policy == "baseline" and dtype in LOW_PRECISION:
        base = baseline_errors(arguments, want)[dtype]
    terms = gradient_terms(arguments)
    out = []
    for q in names:
        size = TERMS_FRACTION * terms[q] if q in terms else None  # Eq. (7.4)
        c = compare_attention(got[q], want[q], dtype=dtype, quantity=q, baseline=base.get(q),
                              magnitude=size)  # fmt: skip
        if not c.passed:
            raise AssertionError(str(c))
        out.append(c)
    return out
