"""The claim grammar: ``KIND[:PARAM[:PARAM...]]``.

A parameter is either a bare token whose meaning follows from its value (``int8``,
``per-channel``, ``2:4`` ...) or ``key=value``. Parsing never guesses: an unknown kind,
an unknown token or a contradiction raises :class:`scanner.errors.UsageError` with a
one-line message naming the offending piece. The full grammar is in ``docs/claims.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from scanner.errors import UsageError

KINDS = ("cast", "quantize", "gguf", "requantize", "prune", "convert", "merge", "lora")

CAST_TARGETS = {
    "fp16": "F16",
    "f16": "F16",
    "float16": "F16",
    "bf16": "BF16",
    "bfloat16": "BF16",
    "fp32": "F32",
    "f32": "F32",
    "float32": "F32",
}
QUANT_DTYPES = ("int8", "uint8", "int4", "nf4", "fp4")
# Vendor layouts: bitsandbytes (int8 + SCB, NF4/FP4 + absmax), packed GPTQ / AWQ
# integers (the gptq/awq algorithm tokens also name their layout), plain integer codes.
QUANT_LAYOUTS = ("bnb", "gptq", "awq", "int")
GRANULARITIES = ("per-channel", "per-tensor")
SCHEMES = ("symmetric", "asymmetric")
# Round-to-nearest must match code for code; the others legitimately choose non-nearest
# codes and are checked for "within one step of nearest" plus the scheme's error bound.
ALGORITHMS = ("rtn", "gptq", "awq", "adaround", "search")
GGUF_TYPES = (
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq4_nl",
    "iq4_xs",
    "iq3_s",
    "iq3_xxs",
    "iq2_s",
    "iq2_xs",
    "iq2_xxs",
    "iq1_s",
    "iq1_m",
)
# llama.cpp file types (``llama-quantize`` names): a mixture of ggml types chosen per
# tensor by llama.cpp's rules (scanner/claims/gguf/filetypes.py).
GGUF_FILE_TYPES = (
    "q2_k_s",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "iq2_m",
    "iq3_xs",
    "iq3_m",
)
# GGUF quantizers that search codes or scales: an importance matrix (llama.cpp's
# ``--imatrix``), or any search algorithm.
GGUF_ALGORITHMS = (*ALGORITHMS, "imatrix")
PRUNE_METHODS = ("magnitude", "nm", "channel", "sparsegpt")
PRUNE_SCOPES = ("per-tensor", "per-row", "global")

_FRACTION = re.compile(r"^(0(\.\d+)?|1(\.0+)?)$")
_NM = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class Claim:
    """A parsed claim: its kind and canonical parameters."""

    kind: str
    params: Mapping[str, str] = field(default_factory=dict)
    text: str = ""

    def param(self, key: str, default: str | None = None) -> str | None:
        return self.params.get(key, default)

    def __str__(self) -> str:
        return self.text or canonical_text(self.kind, self.params)


def canonical_text(kind: str, params: Mapping[str, str]) -> str:
    tail = ":".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{kind}:{tail}" if tail else kind


def parse_claim(text: str) -> Claim:
    """Parse ``--claim`` text such as ``quantize:int8:per-channel:symmetric``."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("empty --claim; expected KIND[:PARAMS], e.g. cast:fp16")
    text = text.strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind not in KINDS:
        raise UsageError(
            f"--claim {text!r}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}"
        )
    tokens = [t for t in rest.split(":")] if rest else []
    if any(not t for t in tokens):
        raise UsageError(f"--claim {text!r}: empty parameter between ':' separators")
    if kind == "prune":
        tokens = _join_nm(tokens)
    params: dict[str, str] = {}
    for token in tokens:
        key, value = _classify(kind, token, text)
        if key in params and params[key] != value:
            raise UsageError(f"--claim {text!r}: {key} given twice ({params[key]!r} and {value!r})")
        params[key] = value
    return Claim(kind, _validate(kind, params, text), text)


def claim_from(kind: str, params: Mapping[str, str] | str | None) -> Claim:
    """A claim from a kind plus parameters as a dict (``--param k=v``) or claim text."""
    if params is None or params == "" or params == {}:
        return parse_claim(kind)
    if isinstance(params, str):
        return parse_claim(f"{kind}:{params}")
    if not isinstance(params, Mapping):
        raise UsageError(f"claim parameters must be a mapping or a string, not {type(params)}")
    tokens = []
    for key, value in params.items():
        if key in ("spec", "params", "args"):  # a whole PARAMS string inside a dict
            tokens.extend(str(value).split(":"))
        else:
            tokens.append(f"{key}={value}")
    return parse_claim(":".join([kind, *tokens]) if tokens else kind)


def _join_nm(tokens: list[str]) -> list[str]:
    """``prune:2:4`` splits into ``2``, ``4``: put N:M back together."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i].isdigit() and i + 1 < len(tokens) and tokens[i + 1].isdigit():
            out.append(f"{tokens[i]}:{tokens[i + 1]}")
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


_KEYS: dict[str, tuple[str, ...]] = {
    "cast": ("target",),
    "quantize": ("dtype", "granularity", "scheme", "algorithm", "axis", "layout", "bits", "group"),
    "gguf": ("type", "algorithm"),
    "requantize": ("type", "algorithm"),
    "prune": ("method", "sparsity", "n", "m", "scope", "axis", "remove"),
    "convert": ("transpose", "drop"),
    "merge": ("config", "models", "seed"),
    "lora": ("r", "modules", "adapter"),
}
_VERBATIM_KEYS = ("config", "models", "adapter", "modules", "drop")
"""Values kept as written (paths and module names are case-sensitive)."""


def _classify(kind: str, token: str, text: str) -> tuple[str, str]:
    if kind in ("merge", "lora"):
        return _classify_keyed(kind, token, text)
    low = token.lower()
    if "=" in low:
        key, _, value = low.partition("=")
        if key not in _KEYS[kind]:
            raise UsageError(
                f"--claim {text!r}: unknown parameter {key!r} for {kind}; "
                f"known: {', '.join(_KEYS[kind])}"
            )
        return key, token.partition("=")[2] if key in _VERBATIM_KEYS else value
    if kind == "cast" and low in CAST_TARGETS:
        return "target", low
    if kind == "quantize":
        for key, values in (
            ("dtype", QUANT_DTYPES),
            ("granularity", GRANULARITIES),
            ("scheme", SCHEMES),
            ("algorithm", ALGORITHMS),
        ):
            if low in values:
                return key, low
        if low == "bnb":
            return "layout", low
    if kind in ("gguf", "requantize") and (low in GGUF_TYPES or low in GGUF_FILE_TYPES):
        return "type", low
    if kind in ("gguf", "requantize") and low in GGUF_ALGORITHMS:
        return "algorithm", low
    if kind == "prune":
        if low in PRUNE_METHODS:
            return "method", low
        if low in PRUNE_SCOPES:
            return "scope", low
        if _FRACTION.match(low):
            return "sparsity", low
        if _NM.match(low):
            return "nm", low
        if low == "remove":
            # Structured pruning that deletes channels (shapes shrink along a chain).
            return "remove", "yes"
    if kind == "convert" and low in ("transpose", "no-transpose"):
        return "transpose", "allow" if low == "transpose" else "deny"
    raise UsageError(
        f"--claim {text!r}: {token!r} is not a valid {kind} parameter (see docs/claims.md)"
    )


def _classify_keyed(kind: str, token: str, text: str) -> tuple[str, str]:
    """``merge:CONFIG`` / ``key=value``; path values keep their case."""
    key, sep, value = token.partition("=")
    if not sep:
        if kind == "merge":
            return "config", token
        raise UsageError(
            f"--claim {text!r}: {token!r} is not a valid lora parameter; use r=N, "
            "modules=A,B or adapter=PATH"
        )
    key = key.lower()
    if key not in _KEYS[kind]:
        raise UsageError(
            f"--claim {text!r}: unknown parameter {key!r} for {kind}; "
            f"known: {', '.join(_KEYS[kind])}"
        )
    return key, value if key in _VERBATIM_KEYS else value.lower()


def _validate(kind: str, params: dict[str, str], text: str) -> dict[str, str]:
    def bad(msg: str) -> UsageError:
        return UsageError(f"--claim {text!r}: {msg}")

    if kind == "cast":
        target = params.get("target")
        if target is None:
            raise bad("cast needs a target dtype (fp16, bf16 or fp32)")
        if target not in CAST_TARGETS:
            raise bad(f"unknown cast target {target!r}")
        params["target"] = CAST_TARGETS[target]
    elif kind == "quantize":
        for key, allowed in (
            ("dtype", QUANT_DTYPES),
            ("granularity", GRANULARITIES),
            ("scheme", SCHEMES),
            ("algorithm", ALGORITHMS),
        ):
            if key in params and params[key] not in allowed:
                raise bad(f"{key} must be one of {', '.join(allowed)}")
        params.setdefault("algorithm", "rtn")
        if "axis" in params and not params["axis"].lstrip("-").isdigit():
            raise bad("axis must be an integer")
        if params.get("layout", "int") not in QUANT_LAYOUTS:
            raise bad(f"layout must be one of {', '.join(QUANT_LAYOUTS)}")
        if "bits" in params and params["bits"] not in ("2", "4", "8"):
            raise bad("bits must be 2, 4 or 8")
        if "group" in params and not params["group"].lstrip("-").isdigit():
            raise bad("group must be an integer (-1: one group per row)")
    elif kind in ("gguf", "requantize"):
        if params.get("type") not in (*GGUF_TYPES, *GGUF_FILE_TYPES):
            raise bad(
                f"{kind} needs a GGUF type ({', '.join(GGUF_TYPES)}) or llama.cpp file type "
                f"({', '.join(GGUF_FILE_TYPES)})"
            )
        # Round-to-nearest is the default for every type: llama.cpp searches K-quant
        # scales but then stores the nearest code of every weight under them.
        params.setdefault("algorithm", "rtn")
        if params["algorithm"] not in GGUF_ALGORITHMS:
            raise bad(f"algorithm must be one of {', '.join(GGUF_ALGORITHMS)}")
    elif kind == "prune":
        nm = params.pop("nm", None)
        if nm is not None:
            n, m = (int(x) for x in nm.split(":"))
            if not 0 < n < m:
                raise bad(f"N:M needs 0 < N < M, got {nm}")
            params["n"], params["m"] = str(n), str(m)
            if params.setdefault("method", "nm") != "nm":
                raise bad("N:M given with a different method")
        method = params.setdefault("method", "magnitude")
        if method not in PRUNE_METHODS:
            raise bad(f"method must be one of {', '.join(PRUNE_METHODS)}")
        if method == "nm" and ("n" not in params or "m" not in params):
            raise bad("nm pruning needs N:M, e.g. prune:2:4")
        for key in ("n", "m"):
            if key in params and not params[key].isdigit():
                raise bad(f"{key} must be a positive integer")
        if "sparsity" in params:
            try:
                s = float(params["sparsity"])
            except ValueError:
                raise bad("sparsity must be a number in [0, 1]") from None
            if not 0.0 <= s <= 1.0:
                raise bad("sparsity must be in [0, 1]")
        if params.get("scope", "per-tensor") not in PRUNE_SCOPES:
            raise bad(f"scope must be one of {', '.join(PRUNE_SCOPES)}")
    elif kind == "convert" and params.get("transpose", "allow") not in ("allow", "deny"):
        raise bad("transpose must be allow or deny")
    elif (
        kind == "convert"
        and "drop" in params
        and not [m for m in params["drop"].split(",") if m.strip(".")]
    ):
        raise bad("drop needs module names, e.g. convert:drop=pooler,lm_head")
    elif kind == "merge":
        if not params.get("config"):
            raise bad("merge needs its mergekit YAML: merge:CONFIG or merge:config=PATH")
        if "seed" in params and not params["seed"].isdigit():
            raise bad("seed must be a non-negative integer")
    elif kind == "lora":
        if "adapter" in params:
            if len(params) > 1:
                raise bad(
                    "lora:adapter=PATH takes no other parameter (r and modules come from "
                    "the adapter)"
                )
        else:
            if not params.get("r", "").isdigit() or int(params["r"]) < 1:
                raise bad("lora needs r=N (N >= 1) and modules=A,B, or adapter=PATH")
            mods = [x for x in params.get("modules", "").split(",") if x]
            if not mods:
                raise bad("lora needs modules=A,B (module names as in the tensor names)")
    return params
