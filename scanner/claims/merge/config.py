"""A mergekit YAML configuration read as untrusted input, and its parameter resolution.

The file comes with the claim, so it is hostile input: it is size-bounded, parsed with
``yaml.safe_load`` after refusing anchors and aliases (no alias expansion bombs), and
every ``model:`` path is resolved inside one folder (the YAML's own, or the folder the
claim names explicitly); a path that leaves it is refused, never opened.

Parameter semantics follow mergekit: a setting is a scalar, a gradient (a list of
numbers interpolated over the layer position ``t``), or a list of ``{filter, value}``
conditions where the first whose filter is empty, ``*`` or a substring of the tensor
name applies. Precedence, highest first: the input model's own parameters (per-input
parameters only), the slice's, then the top level's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.errors import UsageError

MAX_CONFIG_BYTES = 1 << 20
MAX_MODELS = 64
MAX_LIST = 4096
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp")
"""Merge methods re-derived (mergekit names)."""
DTYPES = {
    "float32": "F32",
    "fp32": "F32",
    "float": "F32",
    "float16": "F16",
    "fp16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "float64": "F64",
}


@dataclass(frozen=True)
class Source:
    """One input model of a slice."""

    ref: str
    """The ``model:`` text as written."""
    path: Path | None
    """Where it resolved; None for the model that is the trusted artifact."""
    layer_range: tuple[int, int] | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Slice:
    sources: tuple[Source, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int | None:
        r = self.sources[0].layer_range
        return None if r is None else r[1] - r[0]


@dataclass(frozen=True)
class MergeConfig:
    method: str
    base: str | None
    """``model:`` text of the base model (the trusted artifact), if the method has one."""
    trusted_ref: str
    """``model:`` text of the input that is the trusted artifact."""
    slices: tuple[Slice, ...]
    form: str
    """``models`` or ``slices``."""
    dtype: str | None
    out_dtype: str | None
    parameters: Mapping[str, Any]
    root: Path
    notes: tuple[str, ...] = ()

    def models(self) -> list[str]:
        """Every input's ``model:`` text, in first-seen order."""
        out: list[str] = []
        for s in self.slices:
            for src in s.sources:
                if src.ref not in out:
                    out.append(src.ref)
        return out

    def path_of(self, ref: str) -> Path | None:
        for s in self.slices:
            for src in s.sources:
                if src.ref == ref:
                    return src.path
        return None


def _refuse_aliases(text: str, where: str) -> None:
    import yaml

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise UsageError(f"{where}: YAML aliases are not accepted in a merge config")
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: not valid YAML ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def read_config(path: Path, models_root: Path | None = None) -> MergeConfig:
    """Read and validate a mergekit YAML; resolve its models inside the allowed folder."""
    import yaml

    where = f"merge config {path}"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"{where}: cannot read ({exc.strerror})") from None
    if size > MAX_CONFIG_BYTES:
        raise UsageError(f"{where}: {size:,} bytes, more than a merge config may hold")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: cannot read as UTF-8 text ({exc})") from None
    _refuse_aliases(text, where)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: not valid YAML ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping at the top level")
    root = (models_root or path.parent).resolve()
    return parse_config(data, root, where)


def _str(value: Any, what: str, where: str) -> str:
    if isinstance(value, dict) and "model" in value and len(value) == 1:
        value = value["model"]  # mergekit accepts {model: path}
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise UsageError(f"{where}: {what} must be a model path string")
    if "+" in value:
        raise UsageError(
            f"{where}: {what} {value!r} applies a LoRA on the fly (model+lora); "
            "merge the adapter first and claim lora:adapter=... for that step"
        )
    return value


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UsageError(f"{where}: parameters must be a mapping of names to settings")
    for k, v in value.items():
        _check_setting(v, f"{where}: parameter {k!r}")
    return dict(value)


def _check_setting(v: Any, where: str, depth: int = 0) -> None:
    if depth > 4:
        raise UsageError(f"{where}: settings nest too deeply")
    if isinstance(v, (bool, int, float, str)) or v is None:
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{where}: not a finite number")
        return
    if isinstance(v, list):
        if len(v) > MAX_LIST:
            raise UsageError(f"{where}: list longer than {MAX_LIST}")
        for x in v:
            _check_setting(x, where, depth + 1)
        return
    if isinstance(v, dict):
        unknown = set(v) - {"value", "filter"}
        if unknown or "value" not in v:
            raise UsageError(f"{where}: a condition is {{filter, value}}, got {sorted(v)}")
        if v.get("filter") is not None and not isinstance(v["filter"], str):
            raise UsageError(f"{where}: filter must be text")
        _check_setting(v["value"], where, depth + 1)
        return
    raise UsageError(f"{where}: unsupported setting {type(v).__name__}")


def resolve_model(ref: str, root: Path, where: str) -> Path:
    """``ref`` as a path inside ``root``; never a path outside it."""
    candidate = Path(ref)
    full = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not full.is_relative_to(root):
        raise UsageError(
            f"{where}: model {ref!r} resolves outside {root}; models are read only "
            "inside the config's folder (name another folder with models=DIR)"
        )
    if not full.exists():
        raise UsageError(f"{where}: model {ref!r} not found under {root}")
    return full


def parse_config(data: Mapping[str, Any], root: Path, where: str) -> MergeConfig:
    known = {
        "models",
        "slices",
        "modules",
        "merge_method",
        "base_model",
        "dtype",
        "out_dtype",
        "parameters",
        "tokenizer_source",
        "tokenizer",
        "chat_template",
        "name",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown keys {unknown}")
    method = data.get("merge_method")
    if not isinstance(method, str):
        raise UsageError(f"{where}: merge_method missing")
    method = method.lower()
    if method not in METHODS:
        raise UsageError(
            f"{where}: merge_method {method!r} cannot be re-derived "
            f"(re-derivable: {', '.join(METHODS)})"
        )
    if data.get("modules"):
        raise UsageError(f"{where}: 'modules:' configs are not re-derived; use models or slices")
    forms = [k for k in ("models", "slices") if data.get(k)]
    if len(forms) != 1:
        raise UsageError(f"{where}: exactly one of 'models' or 'slices' must be given")
    base = data.get("base_model")
    base = _str(base, "base_model", where) if base is not None else None
    dtype = _dtype(data.get("dtype"), "dtype", where)
    out_dtype = _dtype(data.get("out_dtype"), "out_dtype", where)
    top = _params(data.get("parameters"), f"{where}: parameters")
    notes: list[str] = []
    if data.get("tokenizer_source") is not None or data.get("tokenizer") is not None:
        notes.append("tokenizer settings are not re-derived: embedding rows must merge as tensors")
    slices: list[Slice] = []
    if forms[0] == "models":
        entries = data["models"]
        if not isinstance(entries, list) or len(entries) > MAX_MODELS:
            raise UsageError(f"{where}: models must be a list of at most {MAX_MODELS}")
        refs: list[tuple[str, dict[str, Any]]] = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or "model" not in e:
                raise UsageError(f"{where}: models[{i}] needs a 'model' entry")
            extra = set(e) - {"model", "parameters"}
            if extra:
                raise UsageError(f"{where}: models[{i}] has unknown keys {sorted(extra)}")
            refs.append(
                (
                    _str(e["model"], f"models[{i}].model", where),
                    _params(e.get("parameters"), f"{where}: models[{i}]"),
                )
            )
        if base is not None and base not in [r for r, _ in refs]:
            refs.append((base, {}))
        slices.append(Slice(tuple(Source(r, None, None, p) for r, p in refs)))
    else:
        entries = data["slices"]
        if not isinstance(entries, list) or len(entries) > 1024:
            raise UsageError(f"{where}: slices must be a list")
        for i, s in enumerate(entries):
            if not isinstance(s, dict) or not isinstance(s.get("sources"), list):
                raise UsageError(f"{where}: slices[{i}] needs a 'sources' list")
            if s.get("base_model") is not None and s["base_model"] != base:
                raise UsageError(f"{where}: slices[{i}] sets its own base_model")
            srcs = []
            for j, src in enumerate(s["sources"][:MAX_MODELS]):
                if not isinstance(src, dict) or "model" not in src:
                    raise UsageError(f"{where}: slices[{i}].sources[{j}] needs 'model'")
                lr = src.get("layer_range")
                if (
                    not isinstance(lr, list)
                    or len(lr) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
                    or not 0 <= lr[0] < lr[1] <= 100_000
                ):
                    raise UsageError(f"{where}: slices[{i}].sources[{j}].layer_range [a, b]")
                srcs.append(
                    Source(
                        _str(src["model"], f"slices[{i}].sources[{j}].model", where),
                        None,
                        (lr[0], lr[1]),
                        _params(src.get("parameters"), f"{where}: slices[{i}].sources[{j}]"),
                    )
                )
            if not srcs:
                raise UsageError(f"{where}: slices[{i}] has no sources")
            if len({x.layer_range[1] - x.layer_range[0] for x in srcs if x.layer_range}) != 1:
                raise UsageError(f"{where}: slices[{i}] sources differ in layer count")
            slices.append(Slice(tuple(srcs), _params(s.get("parameters"), f"{where}: slices[{i}]")))
    trusted_ref = base if base is not None else slices[0].sources[0].ref
    if method != "linear" and base is None:
        raise UsageError(f"{where}: {method} needs a base_model")
    if method == "slerp":
        for s in slices:
            if len({x.ref for x in s.sources}) != 2:
                raise UsageError(f"{where}: slerp merges exactly two models per slice")
    resolved: dict[str, Path | None] = {trusted_ref: None}
    for s in slices:
        for src in s.sources:
            if src.ref not in resolved:
                resolved[src.ref] = resolve_model(src.ref, root, where)
    slices = [
        Slice(
            tuple(Source(x.ref, resolved[x.ref], x.layer_range, x.parameters) for x in s.sources),
            s.parameters,
        )
        for s in slices
    ]
    return MergeConfig(
        method,
        base,
        trusted_ref,
        tuple(slices),
        forms[0],
        dtype,
        out_dtype,
        top,
        root,
        tuple(notes),
    )


def _dtype(value: Any, what: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in DTYPES:
        raise UsageError(f"{where}: {what} must be one of {', '.join(sorted(DTYPES))}")
    return DTYPES[value.lower()]


# --- parameter resolution ------------------------------------------------------------


def evaluate(setting: Any, tensor: str, t: float, kind: type) -> Any:
    """One setting's value for ``tensor`` at layer position ``t`` (None: no match)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return _validate(setting, kind)
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            values = [_validate(e, kind) for e in setting]
            if kind is bool or not all(isinstance(v, (int, float)) for v in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(values) - 1)
            i0 = int(scaled)
            i1 = min(len(values) - 1, i0 + 1)
            frac = scaled - i0
            return _validate((1 - frac) * values[i0] + frac * values[i1], kind)
        for cond in setting:
            if not isinstance(cond, dict):
                continue
            f = cond.get("filter")
            if f is None or f == "*" or (tensor and f in tensor):
                return evaluate(cond["value"], tensor, t, kind)
    return None


def _validate(v: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v)
        raise UsageError(f"merge parameter: expected true/false, got {v!r}")
    if isinstance(v, bool):
        raise UsageError(f"merge parameter: expected a number, got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise UsageError(f"merge parameter: expected a number, got {v!r}") from None


def resolve(
    name: str,
    kind: type,
    scopes: Sequence[Mapping[str, Any]],
    tensor: str,
    t: float,
    default: Any = None,
) -> Any:
    """The first scope that sets ``name`` (and matches ``tensor``) decides."""
    for scope in scopes:
        if name in scope:
            v = evaluate(scope[name], tensor, t, kind)
            if v is not None:
                return v
    if default is None:
        raise UsageError(f"merge parameter {name!r} is not set for {tensor}")
    return default
