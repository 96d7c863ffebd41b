r"""User-sized golden cases: :func:`cases_from_config` builds cases at your shapes and variants.

The built-in suite uses small shapes. A kernel engineer also wants the float64 answer at the
kernel's real sizes: its tile boundaries (``L``, ``S`` not multiples of the block), its head
dims, its variant, rows of 16k keys and more. A small JSON config names them; each case is
drawn from a fixed seed (deterministic) and computed by the dense core or, for long rows, by
the tiled functions (no ``L x S`` array). The format is in ``docs/verify.md``
("User-sized cases").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._validate import check_bool, check_int, check_real
from .cases import CASE_NAME, Case, _sdpa_case
from .suite import MAX_SUITE_BYTES
from .tolerance import DTYPES

__all__ = ["cases_from_config", "CONFIG_FIELDS"]

#: The fields of one case in a config, with their defaults (None: required or off).
CONFIG_FIELDS: dict[str, Any] = {
    "name": None, "seed": None, "B": 1, "Hq": 1, "Hkv": None, "L": None, "S": None, "E": None,
    "Ev": None, "scale": None, "is_causal": False, "causal_align": "top_left", "window": None,
    "softcap": None, "alibi": False, "sinks": False, "chunk_size": None, "sink_tokens": 0,
    "dtypes": list(DTYPES), "path": "auto", "lengths_q": None, "lengths_k": None,
    "cache_seqlens": None, "page_size": 16, "rotary_dim": None, "rotary_interleaved": False,
    "kind": "attention", "num_splits": None, "positions_from": 0, "rotary_base": 10000.0,
}  # fmt: skip
_REQUIRED = ("name", "L", "S", "E")
#: A packed (varlen) case: ``lengths_q`` and ``lengths_k`` replace ``B``, ``L`` and ``S``.
_REQUIRED_PACKED = ("name", "E", "lengths_q", "lengths_k")
#: A decoding step over a paged KV cache: ``cache_seqlens`` replaces ``B`` and ``S``.
_REQUIRED_KVCACHE = ("name", "E", "cache_seqlens")
#: KV cache cases (and packed ones on the dense path) are computed one sequence at a time,
#: dense: at most this many scores in all.
_PACKED_SCORES = 2**27
#: The fields only a KV cache case reads.
_KVCACHE_ONLY = ("page_size", "rotary_dim", "rotary_interleaved")
#: ``kind``: attention (SDPA, variant, packed or KV cache, by the fields given), a split-KV
#: merge of one attention's chunks, or rotary embedding alone.
_KINDS = ("attention", "merge", "rotary")
#: The most keys and values (numbers) a merge case draws for one chunk: 1 GiB in float64.
_MERGE_CHUNK_NUMBERS = 2**27
#: The fields each of the other kinds reads (the rest must keep their defaults).
_KIND_FIELDS = {
    "merge": ("name", "seed", "B", "Hq", "L", "S", "E", "Ev", "scale", "is_causal",
              "causal_align", "dtypes", "path", "kind", "num_splits"),
    "rotary": ("name", "seed", "B", "Hq", "L", "E", "rotary_dim", "rotary_interleaved",
               "positions_from", "rotary_base", "dtypes", "kind"),
}  # fmt: skip
#: ``path: "auto"`` computes by the tiled functions from this many scores (B Hq L S) on.
_TILED_FROM = 2**22
#: The largest config file read (a config is a few lines).
_MAX_CONFIG_BYTES = 2**20


def _load(config: str | os.PathLike[str] | Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the config as a mapping: itself, or a JSON file's contents."""
    if isinstance(config, Mapping):
        return config
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config must be a path or a mapping, got {type(config).__name__}")
    path = Path(config)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise ValueError(f"config {path} {what}")
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise ValueError(f"config {path} has {path.stat().st_size} bytes, too many for a config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"config {path} cannot be read as JSON ({e})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"config {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _field(where: str, name: str, check: Any, *args: Any, **kw: Any) -> Any:
    """Run a validator on one field; any complaint becomes a ValueError naming the field."""
    try:
        return check(*args, **kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}.{name}: {e}") from None


def _window(where: str, w: Any) -> tuple[int | None, int | None] | None:
    """``[left, right]`` with sides >= 0 or null (unbounded); None: no window."""
    if w is None:
        return None
    if not isinstance(w, (list, tuple)) or len(w) != 2:
        raise ValueError(f"{where}.window must be [left, right] (each >= 0 or null), got {w!r}")
    sides = [None if x is None else _field(where, "window", check_int, x, "window side")
             for x in w]  # fmt: skip
    return sides[0], sides[1]


def _spec(entry: Any, where: str, seed: int) -> dict[str, Any]:
    """Validate one case of the config; return its fields with the defaults filled in."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be an object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}; known: {sorted(CONFIG_FIELDS)}")
    kind = entry.get("kind", "attention")
    if kind not in _KINDS:
        raise ValueError(f"{where}.kind must be one of {list(_KINDS)}, got {kind!r}")
    if kind != "attention":
        return _other_kind_spec(entry, kind, where, seed)
    theirs = sorted(n for n in ("num_splits", "positions_from", "rotary_base")
                    if entry.get(n, CONFIG_FIELDS[n]) != CONFIG_FIELDS[n])  # fmt: skip
    if theirs:
        raise ValueError(f"{where}: {theirs} belong to a merge or rotary case (give kind)")
    packed = entry.get("lengths_q") is not None or entry.get("lengths_k") is not None
    if entry.get("cache_seqlens") is not None:
        if packed:
            raise ValueError(f"{where}: cache_seqlens (a KV cache case) and lengths_q/lengths_k "
                             "(a packed case) do not go together")  # fmt: skip
        return _kvcache_spec(entry, where, seed)
    for n in _REQUIRED_PACKED if packed else _REQUIRED:
        if entry.get(n) is None:
            raise ValueError(f"{where}.{n} is required" + " (a packed case)" * packed)
    others = sorted(n for n in _KVCACHE_ONLY if entry.get(n, CONFIG_FIELDS[n]) != CONFIG_FIELDS[n])
    if others:
        raise ValueError(f"{where}: {others} belong to a KV cache case (give cache_seqlens)")
    if packed:
        return _packed_spec(entry, where, seed)
    c = {**CONFIG_FIELDS, **entry}
    name = c["name"]
    if not isinstance(name, str) or not CASE_NAME.fullmatch(name):
        raise ValueError(f"{where}.name must match [a-z0-9_]+ (a file stem), got {name!r}")
    c["seed"] = seed if c["seed"] is None else _field(where, "seed", check_int, c["seed"], "seed")
    for n in ("B", "Hq", "L", "S", "E"):
        c[n] = _field(where, n, check_int, c[n], n, minimum=1)
    c["Hkv"] = c["Hq"] if c["Hkv"] is None else _field(where, "Hkv", check_int, c["Hkv"], "Hkv",
                                                       minimum=1)  # fmt: skip
    c["Ev"] = c["E"] if c["Ev"] is None else _field(where, "Ev", check_int, c["Ev"], "Ev",
                                                    minimum=1)  # fmt: skip
    if c["Hq"] % c["Hkv"]:
        raise ValueError(f"{where}: Hq = {c['Hq']} must be a multiple of Hkv = {c['Hkv']}")
    return _spec_options(c, where)


def _other_kind_spec(entry: Mapping[str, Any], kind: str, where: str, seed: int) -> dict[str, Any]:
    """Validate a split-KV merge (``num_splits``) or a rotary case (``rotary_dim``).

    Only the fields of :data:`_KIND_FIELDS` may be given; the shared ones are checked as an
    attention case's are (a rotary case has no keys: ``S`` stands at 1 while checking).
    """
    extra = sorted(n for n in entry if n not in _KIND_FIELDS[kind])
    if extra:
        raise ValueError(f"{where}: a {kind} case takes {list(_KIND_FIELDS[kind])}; drop {extra}")
    need = ("name", "L", "S", "E", "num_splits") if kind == "merge" else ("name", "L", "E",
                                                                         "rotary_dim")  # fmt: skip
    for n in need:
        if entry.get(n) is None:
            raise ValueError(f"{where}.{n} is required (a {kind} case)")
    own = ("kind", "num_splits", "rotary_dim", "rotary_interleaved", "positions_from",
           "rotary_base")  # fmt: skip
    shared = {n: v for n, v in entry.items() if n not in own}
    c = _spec({**shared, "S": entry.get("S", 1)}, where, seed)
    c["kind"] = kind
    if kind == "merge":
        n = _field(where, "num_splits", check_int, entry["num_splits"], "num_splits", minimum=1)
        if n > c["S"]:
            raise ValueError(f"{where}.num_splits must be at most S = {c['S']}, got {n}")
        drawn = c["B"] * c["Hq"] * -(-c["S"] // n) * (c["E"] + c["Ev"])
        if drawn > _MERGE_CHUNK_NUMBERS:  # not stored, so not in the size limit: bounded here
            raise ValueError(f"{where}: a merge case draws one chunk's keys and values at a "
                             f"time, B Hq ceil(S / num_splits) (E + Ev) = {drawn} numbers, more "
                             f"than {_MERGE_CHUNK_NUMBERS}; raise num_splits or lower B, Hq, S or "
                             "E")  # fmt: skip
        c["num_splits"] = n
        return c
    R, il = _rotary_fields(entry, where, c["E"])
    c.update(S=None, rotary_dim=R, rotary_interleaved=il, tiled=False)
    c["positions_from"] = _field(where, "positions_from", check_int,
                                 entry.get("positions_from", 0), "positions_from")  # fmt: skip
    if c["positions_from"] + c["L"] > 2**31:  # FlashAttention's position offsets are int32
        raise ValueError(f"{where}: positions_from + L must be at most 2**31 (int32 positions), "
                         f"got {c['positions_from']} + {c['L']}")  # fmt: skip
    c["rotary_base"] = _field(where, "rotary_base", check_real, entry.get("rotary_base", 1e4),
                              "rotary_base", low=1.0, low_open=True)  # fmt: skip
    return c


def _rotary_fields(entry: Mapping[str, Any], where: str, E: int) -> tuple[int | None, bool]:
    """``rotary_dim`` (even, 2 to ``E``; None: no rotary) and ``rotary_interleaved``."""
    R = entry.get("rotary_dim")
    if R is not None:
        R = _field(where, "rotary_dim", check_int, R, "rotary_dim", minimum=2)
        if R % 2 or R > E:
            raise ValueError(f"{where}.rotary_dim must be even and at most E = {E}, got {R}")
    il = _field(where, "rotary_interleaved", check_bool, entry.get("rotary_interleaved", False),
                "rotary_interleaved")  # fmt: skip
    return R, il


def _tiled(path: str, scores: int) -> bool:
    """Tell whether a case is computed by the tiled functions: asked, or auto from 2**22 scores."""
    return path == "tiled" or (path == "auto" and scores >= _TILED_FROM)


def _packed_spec(entry: Mapping[str, Any], where: str, seed: int) -> dict[str, Any]:
    """Validate a packed (varlen) case: its lengths, then the fields it shares with the rest."""
    given = sorted(n for n in ("B", "L", "S") if entry.get(n) is not None)
    if given:
        raise ValueError(f"{where}: lengths_q and lengths_k replace B, L and S; drop {given}")
    lengths = {}
    for n in ("lengths_q", "lengths_k"):
        x = entry[n]
        if not isinstance(x, list) or not x:
            raise ValueError(f"{where}.{n} must be a non-empty list of lengths >= 0, got {x!r}")
        lengths[n] = [_field(where, n, check_int, b, "length", minimum=0) for b in x]
    lq, lk = lengths["lengths_q"], lengths["lengths_k"]
    if len(lq) != len(lk):
        raise ValueError(f"{where}: lengths_q has {len(lq)} sequences, lengths_k {len(lk)}")
    local = sorted(n for n in ("chunk_size", "sink_tokens") if entry.get(n))
    if local:
        raise ValueError(f"{where}: a packed case takes FlashAttention's varlen variants (window, "
                         f"softcap, alibi, sinks); drop {local}")  # fmt: skip
    c = _spec(
        {
            **entry,
            "lengths_q": None,
            "lengths_k": None,
            "B": 1,
            "L": max(1, max(lq)),
            "S": max(1, max(lk)),
        },
        where,
        seed,
    )
    scores = c["Hq"] * sum(a * b for a, b in zip(lq, lk, strict=True))
    tiled = _tiled(c["path"], scores)
    c.update(lengths_q=lq, lengths_k=lk, B=None, L=None, S=None, tiled=tiled)
    if not tiled and scores > _PACKED_SCORES:
        raise ValueError(f"{where}: the sequences hold {scores} scores (Hq sum L_b S_b), more "
                         f"than the {_PACKED_SCORES} a dense packed case computes; set path "
                         "'tiled' or 'auto'")  # fmt: skip
    return c


def _kvcache_spec(entry: Mapping[str, Any], where: str, seed: int) -> dict[str, Any]:
    """Validate a decoding step over a paged cache: ``cache_seqlens``, ``L`` new tokens."""
    given = sorted(n for n in ("B", "S") if entry.get(n) is not None)
    if given:
        raise ValueError(f"{where}: cache_seqlens replaces B and S (L is the new tokens, "
                         f"default 1); drop {given}")  # fmt: skip
    n_b = entry["cache_seqlens"]
    if not isinstance(n_b, list) or not n_b:
        raise ValueError(f"{where}.cache_seqlens must be a non-empty list of lengths >= 0, "
                         f"got {n_b!r}")  # fmt: skip
    seqlens = [_field(where, "cache_seqlens", check_int, x, "length", minimum=0) for x in n_b]
    local = sorted(n for n in ("chunk_size", "sink_tokens") if entry.get(n))
    if local:
        raise ValueError(f"{where}: a KV cache case takes flash_attn_with_kvcache's variants "
                         f"(window, softcap, alibi, sinks); drop {local}")  # fmt: skip
    L = 1 if entry.get("L") is None else entry["L"]
    S = max(seqlens) + (L if isinstance(L, int) else 1)
    rest = {n: v for n, v in entry.items() if n not in _KVCACHE_ONLY}
    c = _spec({**rest, "B": 1, "L": L, "S": S, "cache_seqlens": None}, where, seed)
    page = _field(where, "page_size", check_int, entry.get("page_size", 16), "page_size",
                  minimum=1)  # fmt: skip
    R, il = _rotary_fields(entry, where, c["E"])
    L = c["L"]
    scores = c["Hq"] * L * sum(n + L for n in seqlens)
    tiled = _tiled(c["path"], scores)
    c.update(cache_seqlens=seqlens, page_size=page, rotary_dim=R, rotary_interleaved=il,
             B=None, S=None, tiled=tiled)  # fmt: skip
    if not tiled and scores > _PACKED_SCORES:
        raise ValueError(f"{where}: the rows hold {scores} scores (Hq L sum (n_b + L)), more "
                         f"than the {_PACKED_SCORES} a dense KV cache case computes; set path "
                         "'tiled' or 'auto'")  # fmt: skip
    return c


def _spec_options(c: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate the scale, the flags and the variants of one case (see :func:`_spec`)."""
    if c["scale"] is not None:
        c["scale"] = _field(where, "scale", check_real, c["scale"], "scale", low=0.0,
                            low_open=True)  # fmt: skip
    for n in ("is_causal", "alibi", "sinks"):
        c[n] = _field(where, n, check_bool, c[n], n)
    if c["causal_align"] not in ("top_left", "bottom_right"):
        raise ValueError(f"{where}.causal_align must be 'top_left' or 'bottom_right', "
                         f"got {c['causal_align']!r}")  # fmt: skip
    c["window"] = _window(where, c["window"])
    if c["softcap"] is not None:
        c["softcap"] = _field(where, "softcap", check_real, c["softcap"], "softcap", low=0.0,
                              low_open=True)  # fmt: skip
    if c["chunk_size"] is not None:
        c["chunk_size"] = _field(where, "chunk_size", check_int, c["chunk_size"], "chunk_size",
                                 minimum=1)  # fmt: skip
    c["sink_tokens"] = _field(where, "sink_tokens", check_int, c["sink_tokens"], "sink_tokens")
    dtypes = c["dtypes"]
    if not isinstance(dtypes, list) or not dtypes or any(d not in DTYPES for d in dtypes):
        raise ValueError(f"{where}.dtypes must be a non-empty list of {list(DTYPES)}, "
                         f"got {dtypes!r}")  # fmt: skip
    if c["path"] not in ("auto", "dense", "tiled"):
        raise ValueError(f"{where}.path must be 'auto', 'dense' or 'tiled', got {c['path']!r}")
    B, Hq, L, S = c["B"], c["Hq"], c["L"], c["S"]
    c["tiled"] = _tiled(c["path"], B * Hq * L * S)
    return c


def _expected_bytes(c: dict[str, Any]) -> dict[str, int]:
    """Return the float64 bytes of each expected array of a spec's case, before it is built.

    These are what ``check`` reads (the inputs are the candidate's to read); a test holds
    them equal to the built case's arrays.
    """
    Hq, Hkv, E, Ev = c["Hq"], c["Hkv"], c["E"], c["Ev"]
    if c["lengths_q"] is not None:  # packed: q (Tq, Hq, E), lse (Hq, Tq)
        Tq, Tk = sum(c["lengths_q"]), sum(c["lengths_k"])
        n = {"out": Tq * Hq * Ev, "lse": Hq * Tq, "dq": Tq * Hq * E, "dk": Tk * Hkv * E,
             "dv": Tk * Hkv * Ev}  # fmt: skip
    elif c["kind"] == "merge":  # outs (Nc, B, Hq, L, Ev), lses (Nc, B, Hq, L) and their grads
        B, L, Nc = c["B"], c["L"], c["num_splits"]
        n = {"out": B * Hq * L * Ev, "lse": B * Hq * L, "d_outs": Nc * B * Hq * L * Ev,
             "d_lses": Nc * B * Hq * L}  # fmt: skip
    elif c["kind"] == "rotary":  # x (B, L, Hq, E)
        n = {"out": c["B"] * c["L"] * Hq * E, "dx": c["B"] * c["L"] * Hq * E}
    elif c["cache_seqlens"] is not None:  # a decoding step: no gradient, the caches written
        B, L, page = len(c["cache_seqlens"]), c["L"], c["page_size"]
        slots = (B * -(-(max(c["cache_seqlens"]) + L) // page) + 1) * page * Hkv
        n = {"out": B * L * Hq * Ev, "lse": B * Hq * L, "k_cache_out": slots * E,
             "v_cache_out": slots * Ev}  # fmt: skip
    else:
        B, L, S = c["B"], c["L"], c["S"]
        n = {"out": B * Hq * L * Ev, "lse": B * Hq * L, "dq": B * Hq * L * E,
             "dk": B * Hkv * S * E, "dv": B * Hkv * S * Ev}  # fmt: skip
        if not c["tiled"]:
            n["weights"] = B * Hq * L * S
    if c["sinks"] and c["cache_seqlens"] is None:
        n["d_sinks"] = Hq
    return {q: 8 * size for q, size in n.items()}


def _check_total(specs: list[dict[str, Any]], max_bytes: int) -> None:
    """Refuse a config whose expected arrays exceed ``max_bytes`` (what ``check`` will read)."""
    sizes = [_expected_bytes(c) for c in specs]
    total = sum(sum(n.values()) for n in sizes)
    if total <= max_bytes:
        return
    i = max(range(len(specs)), key=lambda j: sum(sizes[j].values()))
    big = max(sizes[i], key=sizes[i].__getitem__)
    tiled = "" if big != "weights" else ", or set its path 'tiled' (no weights)"
    mib = 2**20
    raise ValueError(
        f"config.cases: the expected arrays would hold {total / mib:.1f} MiB in float64, more "
        f"than the limit of {max_bytes / mib:g} MiB that check reads (the largest, cases[{i}] "
        f"{specs[i]['name']!r}: {sum(sizes[i].values()) / mib:.1f} MiB, {big} "
        f"{sizes[i][big] / mib:.1f} of them); raise the limit to {-(-total // mib)} MiB "
        f"(--max-mib on both vectors and check; max_bytes in Python), or lower B, heads, L, S "
        f"or E{tiled}"
    )


def _case(c: dict[str, Any]) -> Case:
    """Build the case a validated spec describes."""
    variants: dict[str, Any] = {n: c[n] for n in ("window", "softcap", "chunk_size")
                                if c[n] is not None}  # fmt: skip
    if c["sink_tokens"]:
        variants["sink_tokens"] = c["sink_tokens"]
    if c["alibi"]:
        variants["alibi_slopes"] = True
    if c["sinks"]:
        variants["sinks"] = True
    if c["kind"] != "attention":
        case = _other_kind_case(c)
    elif c["lengths_q"] is not None:
        case = _packed_case(c, variants)
    elif c["cache_seqlens"] is not None:
        case = _kvcache_case(c, variants)
    else:
        case = _sdpa_config_case(c, variants)
    config = {n: c[n] for n in _KIND_FIELDS.get(c["kind"], CONFIG_FIELDS)}  # it rebuilds the case
    if "window" in config:
        config["window"] = None if c["window"] is None else list(c["window"])
    case.flags.update(dtypes=list(c["dtypes"]), config=config)
    return case


def _described(variants: dict[str, Any]) -> str:
    """Describe the variants for a case's description: values, then the drawn ones by name."""
    given = "".join(f", {n} {v}" for n, v in variants.items() if v is not True)
    return given + "".join(f", {n}" for n, v in variants.items() if v is True) + "."


def _sdpa_config_case(c: dict[str, Any], variants: dict[str, Any]) -> Case:
    """Build an SDPA or variant case: ``(B, H, L, E)``, dense or tiled."""
    shape = ", ".join(f"{n} = {c[n]}" for n in ("B", "Hq", "Hkv", "L", "S", "E", "Ev"))
    desc = f"User-sized case ({shape})" + (", causal " + c["causal_align"]) * c["is_causal"]
    desc += _described(variants)
    case = _sdpa_case(
        c["name"], desc, c["seed"], (c["B"], c["Hq"], c["L"], c["E"]),
        (c["B"], c["Hkv"], c["S"], c["E"]), c["Ev"], is_causal=c["is_causal"],
        causal_align=c["causal_align"], enable_gqa=c["Hq"] != c["Hkv"], scale=c["scale"],
        variants=variants, tiled=c["tiled"],
    )  # fmt: skip
    return case


def _packed_case(c: dict[str, Any], variants: dict[str, Any]) -> Case:
    """Build a packed (varlen) case: ``flash_attn_varlen_func``'s layout, one truth per sequence."""
    from .serving_cases import varlen_case  # it imports this package's cases module

    shape = ", ".join(f"{n} = {c[n]}" for n in ("Hq", "Hkv", "E", "Ev"))
    desc = (f"User-sized packed sequences (lengths_q {c['lengths_q']}, lengths_k "
            f"{c['lengths_k']}, {shape})")  # fmt: skip
    desc += (", causal " + c["causal_align"]) * c["is_causal"]
    desc += _described(variants)
    case = varlen_case(
        c["name"], desc, c["seed"], c["lengths_q"], c["lengths_k"], (c["Hq"], c["Hkv"]),
        (c["E"], c["Ev"]), is_causal=c["is_causal"], causal_align=c["causal_align"],
        scale=c["scale"], variants=variants, tiled=c["tiled"],
    )  # fmt: skip
    return case


def _other_kind_case(c: dict[str, Any]) -> Case:
    """Build a split-KV merge of one attention's chunks, or a rotary embedding case."""
    from .serving_cases import merge_split_case, rotary_case  # they import the cases module

    if c["kind"] == "rotary":
        R, il = c["rotary_dim"], c["rotary_interleaved"]
        desc = (f"User-sized rotary embedding (B = {c['B']}, L = {c['L']}, H = {c['Hq']}, E = "
                f"{c['E']}, {'interleaved' if il else 'rotate-half'} R = {R}, positions from "
                f"{c['positions_from']}, base {c['rotary_base']:g}).")  # fmt: skip
        return rotary_case(c["name"], desc, c["seed"], (c["B"], c["L"], c["Hq"], c["E"]), R,
                           interleaved=il, offset=c["positions_from"],
                           base=c["rotary_base"])  # fmt: skip
    shape = ", ".join(f"{n} = {c[n]}" for n in ("B", "Hq", "L", "S", "E", "Ev"))
    causal = (", causal " + c["causal_align"]) * c["is_causal"]
    desc = f"User-sized split-KV merge of {c['num_splits']} chunks of one attention ({shape})"
    desc += causal + "."
    return merge_split_case(
        c["name"], desc, c["seed"], (c["B"], c["Hq"], c["L"], c["S"], c["E"], c["Ev"]),
        c["num_splits"], is_causal=c["is_causal"], causal_align=c["causal_align"],
        scale=c["scale"], tiled=c["tiled"],
    )  # fmt: skip


def _kvcache_case(c: dict[str, Any], variants: dict[str, Any]) -> Case:
    """Build a decoding step: ``L`` new tokens per row appended to a shuffled paged cache."""
    from .serving_cases import kvcache_case  # it imports this package's cases module

    page, n_b, L = c["page_size"], c["cache_seqlens"], c["L"]
    shape = ", ".join(f"{n} = {c[n]}" for n in ("L", "Hq", "Hkv", "E", "Ev"))
    desc = (f"User-sized decoding step over a paged KV cache (cache_seqlens {n_b}, page_size "
            f"{page}, {shape})")  # fmt: skip
    if c["rotary_dim"] is not None:
        layout = "interleaved" if c["rotary_interleaved"] else "rotate-half"
        desc += f", {layout} rotary R = {c['rotary_dim']}"
    desc += ", causal" * c["is_causal"]
    desc += _described(variants)
    case = kvcache_case(
        c["name"], desc, c["seed"], n_b, L, (c["Hq"], c["Hkv"]), (c["E"], c["Ev"]), page=page,
        max_blocks=-(-(max(n_b) + L) // page), rotary_dim=c["rotary_dim"],
        interleaved=c["rotary_interleaved"], is_causal=c["is_causal"], scale=c["scale"],
        variants=variants, tiled=c["tiled"],
    )  # fmt: skip
    return case


def cases_from_config(
    config: str | os.PathLike[str] | Mapping[str, Any], *, max_bytes: int = MAX_SUITE_BYTES
) -> list[Case]:
    r"""Build deterministic golden cases at the shapes, dtypes and variants a config names.

    Parameters
    ----------
    config : str, os.PathLike or mapping
        A JSON file, or its contents: ``{"seed": 0, "cases": [{...}, ...]}``. Each case has
        the fields of :data:`CONFIG_FIELDS`: ``name``, ``L``, ``S``, ``E`` (required), ``B``,
        ``Hq``, ``Hkv`` (default ``Hq``; fewer is GQA), ``Ev`` (default ``E``), ``seed``
        (default: the config's seed plus the case's index), ``scale``, ``is_causal``,
        ``causal_align``, ``window`` (``[left, right]``, null = unbounded side), ``softcap``,
        ``alibi`` and ``sinks`` (true: drawn), ``chunk_size``, ``sink_tokens``, ``dtypes``
        (the dtypes you will check in, recorded; the baselines are emulated in the
        float16 and bfloat16 among them only), ``path`` (``"auto"``, ``"dense"``,
        ``"tiled"``; auto tiles from ``2**22`` scores on, packed cases too). ``lengths_q`` and
        ``lengths_k`` instead of ``B``, ``L``, ``S``: a packed (varlen) case, one
        sequence per pair of lengths, with the varlen variants (window, softcap,
        alibi, sinks). ``cache_seqlens`` instead of ``B`` and ``S`` (with ``L`` new
        tokens, default 1; ``page_size`` 16, ``rotary_dim`` none, ``rotary_interleaved``):
        a decoding step over a paged KV cache, with the same variants. ``kind``
        ``"merge"`` (``name``, ``L``, ``S``, ``E``, ``num_splits``; ``B``, ``Hq``, ``Ev``,
        ``scale``, ``is_causal``, ``causal_align``, ``path``): a split-KV merge of one
        attention's ``num_splits`` chunks; ``kind`` ``"rotary"`` (``name``, ``L``, ``E``,
        ``rotary_dim``; ``B``, ``Hq``, ``rotary_interleaved``, ``positions_from``,
        ``rotary_base``): rotary embedding alone.
    max_bytes : int, optional
        The most bytes the cases' expected arrays may hold in all, checked before anything
        is computed (default 256 MiB, :data:`~numpy_attention.verify.MAX_SUITE_BYTES`).
        ``check`` reads a suite up to the same default: give both the same limit
        (``--max-mib``; :func:`~numpy_attention.verify.check_path`'s ``max_bytes``).

    Returns
    -------
    cases : list of Case
        Kind ``"sdpa"``, ``"variant"`` with a variant, ``"varlen"`` (packed),
        ``"kvcache"``, ``"merge"`` or ``"rotary"``; tiled, packed and KV cache cases have no
        ``weights``.
        Pass them to :func:`~numpy_attention.verify.write_suite`. The same config always
        gives the same arrays.

    Raises
    ------
    TypeError
        If ``config`` is neither a path nor a mapping.
    ValueError
        An unreadable file; a missing, unknown or invalid field (each named, as
        ``cases[i].field``); two cases of one name; expected arrays of more than
        ``max_bytes`` in all.

    Examples
    --------
    >>> cfg = {"seed": 1, "cases": [{"name": "tile_edge", "Hq": 4, "Hkv": 2, "L": 130,
    ...        "S": 257, "E": 64, "is_causal": True, "causal_align": "bottom_right",
    ...        "window": [64, 0], "softcap": 30.0}]}
    >>> [case] = cases_from_config(cfg)
    >>> case.kind, case.expected["dk"].shape, case.flags["variants"]["window"]
    ('variant', (1, 2, 257, 64), [64, 0])
    >>> cases_from_config({"cases": [{"name": "x", "L": 4, "S": 0, "E": 8}]})
    Traceback (most recent call last):
    ...
    ValueError: cases[0].S: S must be >= 1, got 0
    """
    max_bytes = check_int(max_bytes, "max_bytes", minimum=1)
    data = _load(config)
    unknown = sorted(set(data) - {"seed", "cases"})
    if unknown:
        raise ValueError(f"config has unknown field(s) {unknown}; known: ['cases', 'seed']")
    seed = _field("config", "seed", check_int, data.get("seed", 0), "seed")
    entries = data.get("cases")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"config.cases must be a non-empty list, got {type(entries).__name__}")
    specs = [_spec(e, f"cases[{i}]", seed + i) for i, e in enumerate(entries)]
    names = [s["name"] for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"config.cases: names must be unique, {twice} appear twice")
    _check_total(specs, max_bytes)
    return [_case(s) for s in specs]
