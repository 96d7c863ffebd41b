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

from ..attention import attention_backward, attention_forward
from ..variants import window_from_flash
from .cases import Case, build_suite
from .compare import Comparison, compare_attention
from .diagnosis import case_context
from .grading import CheckReport, check_results
from .precision import LOW_PRECISION, baseline_errors
from .tolerance import dtype_name

__all__ = ["call_arguments", "reference", "to_numpy", "check_callable", "assert_matches_reference"]

#: The keyword arguments a candidate receives, in this order.
ARGUMENTS = ("q", "k", "v", "attn_mask", "dropout_p", "dropout_mask", "is_causal",
             "causal_bottom_right", "scale", "enable_gqa", "d_out")  # fmt: skip
#: The variant keywords a case may add (only those it uses), as attention_forward takes them.
VARIANT_ARGUMENTS = ("window", "softcap", "alibi_slopes", "sinks", "chunk_size", "sink_tokens")
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
    align = "bottom_right" if a["causal_bottom_right"] else "top_left"
    variants = {n: a[n] for n in VARIANT_ARGUMENTS if a.get(n) is not None}
    out, cache = attention_forward(
        a["q"], a["k"], a["v"], a.get("attn_mask"), a["dropout_p"], a["is_causal"], a["scale"],
        a["enable_gqa"], dropout_mask=a.get("dropout_mask"), causal_align=align, **variants,
    )  # fmt: skip
    g = attention_backward(np.asarray(a["d_out"], dtype=np.float64), cache)
    res = {"out": out, "weights": cache.P, "lse": cache.lse, "dq": g.dq, "dk": g.dk, "dv": g.dv}
    if g.d_attn_mask is not None:
        res["d_attn_mask"] = g.d_attn_mask
    if g.d_sinks is not None:
        res["d_sinks"] = g.d_sinks
    res = {n: np.asarray(x, dtype=np.float64) for n, x in res.items()}
    # Every row seeing at most one key (S = 1, masks): P is constant, dS = 0 exactly. Store that
    # 0, not float64 round-off (~1e-18), which would make a meaningless scale for the tolerance.
    big = max((float(np.max(np.abs(a[n]), initial=0.0)) for n in ("q", "k", "v", "d_out")))
    floor = 1e-12 * max(abs(a["scale"]), 1.0) * big**3
    for n in ("dq", "dk", "d_attn_mask"):
        if n in res and float(np.max(np.abs(res[n]), initial=0.0)) < floor:
            res[n] = np.zeros_like(res[n])
    return res


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
    out = []
    for q in names:
        c = compare_attention(got[q], want[q], dtype=dtype, quantity=q, baseline=base.get(q))
        if not c.passed:
            raise AssertionError(str(c))
        out.append(c)
    return out
