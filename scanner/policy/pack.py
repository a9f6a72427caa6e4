"""Rules packs: declarative policies in TOML that configure the rule catalogue.

A pack sets, per rule, a severity, whether it is enabled and its thresholds; the change
classes allowed anywhere and those allowed only when a verified claim or attested chain
backs them; per-tensor-pattern overrides; suppressions; and what the gate requires.
Packs compose: ``extends`` names a shipped pack or a file, and the child's settings are
laid over the parent's (docs/rules-packs.md).

Unknown keys, rule ids, classes and threshold names are errors, never ignored: a typo
in a security policy must not silently widen it.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import importlib.resources
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scanner.diff.model import CHANGE_CLASSES
from scanner.findings import Severity
from signing.errors import ModelsealError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHIPPED_PACKS: tuple[str, ...] = ("default", "strict", "audit")
GATE_INPUTS: tuple[str, ...] = ("signature", "trusted", "attestations")

_TOP_KEYS = {"pack", "classes", "gate", "rules", "tensors", "suppress"}
_PACK_KEYS = {"name", "description", "extends", "fail_on"}
_CLASSES_KEYS = {"allow", "allow_claimed"}
_GATE_KEYS = {"require"}
_RULE_KEYS = {"severity", "enabled", "thresholds"}
_TENSOR_KEYS = {"pattern", "allow", "severity", "rules", "reason"}
_SUPPRESS_KEYS = {"rule", "tensor", "file", "reason", "expires"}


class PackError(ModelsealError):
    """A rules pack could not be read or does not validate (exit 2)."""


@dataclass(frozen=True)
class RuleSettings:
    """What a pack says about one rule; ``None`` means "as inherited"."""

    severity: Severity | None = None
    enabled: bool | None = None
    thresholds: Mapping[str, Any] = field(default_factory=dict)

    def over(self, base: RuleSettings) -> RuleSettings:
        """These settings laid over ``base``."""
        return RuleSettings(
            severity=self.severity if self.severity is not None else base.severity,
            enabled=self.enabled if self.enabled is not None else base.enabled,
            thresholds={**base.thresholds, **self.thresholds},
        )


@dataclass(frozen=True)
class TensorOverride:
    """Settings for the tensors whose names match ``pattern`` (an fnmatch glob)."""

    pattern: str
    allow: tuple[str, ...] | None = None
    """Change classes allowed in these tensors; replaces the pack's ``[classes]`` lists."""
    severity: Severity | None = None
    """Severity of every finding located in these tensors."""
    rules: Mapping[str, RuleSettings] = field(default_factory=dict)
    reason: str = ""
    source: str = ""

    def matches(self, tensor: str) -> bool:
        return fnmatch.fnmatchcase(tensor, self.pattern)


@dataclass(frozen=True)
class Suppression:
    """Accept a finding on purpose: a reason is mandatory, an expiry recommended."""

    rule: str
    reason: str
    tensor: str | None = None
    """fnmatch glob over the tensor names of the finding's locations."""
    file: str | None = None
    """fnmatch glob over the file names of the finding's locations."""
    expires: dt.date | None = None
    source: str = ""

    def expired(self, today: dt.date) -> bool:
        return self.expires is not None and self.expires < today

    def describe(self) -> str:
        where = "".join(f" {k}={v}" for k, v in (("tensor", self.tensor), ("file", self.file)) if v)
        until = f" until {self.expires.isoformat()}" if self.expires else ""
        return f"{self.rule}{where}{until} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "reason": self.reason, "source": self.source}
        if self.tensor is not None:
            out["tensor"] = self.tensor
        if self.file is not None:
            out["file"] = self.file
        out["expires"] = self.expires.isoformat() if self.expires else None
        return out


@dataclass(frozen=True)
class Pack:
    """A loaded, validated rules pack with its parents already merged in."""

    name: str
    description: str = ""
    source: str = ""
    lineage: tuple[str, ...] = ()
    """Names of the packs merged into this one, base first (this pack last)."""
    fail_on: Severity | None = Severity.MEDIUM
    """``None``: never fail on findings (the ``audit`` pack); errors still fail."""
    allow: tuple[str, ...] = ("identical",)
    allow_claimed: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    rules: Mapping[str, RuleSettings] = field(default_factory=dict)
    tensors: tuple[TensorOverride, ...] = ()
    suppressions: tuple[Suppression, ...] = ()

    def settings(self, rule_id: str, tensors: Iterable[str] = ()) -> RuleSettings:
        """Effective settings of ``rule_id`` for a finding located in ``tensors``."""
        current = self.rules.get(rule_id, RuleSettings())
        for override in self.overrides_for(tensors):
            if rule_id in override.rules:
                current = override.rules[rule_id].over(current)
        return current

    def overrides_for(self, tensors: Iterable[str]) -> list[TensorOverride]:
        """Overrides matching any of ``tensors``, in pack order (later ones win)."""
        names = list(tensors)
        return [o for o in self.tensors if any(o.matches(t) for t in names)]

    def allowed_classes(self, tensor: str | None, *, claimed: bool) -> tuple[tuple[str, ...], str]:
        """Classes allowed for ``tensor`` and where that allowance comes from.

        The last ``[[tensors]]`` override whose pattern matches and that sets ``allow``
        decides; otherwise ``[classes] allow`` (plus ``allow_claimed`` when the change is
        backed by a verified claim or an attested chain).
        """
        if tensor is not None:
            for override in reversed(self.tensors):
                if override.allow is not None and override.matches(tensor):
                    return override.allow, f"tensors[{override.pattern!r}]"
        if claimed:
            return (*self.allow, *self.allow_claimed), "classes.allow_claimed"
        return self.allow, "classes.allow"

    def threshold(self, rule_id: str, key: str, default: Any) -> Any:
        return self.rules.get(rule_id, RuleSettings()).thresholds.get(key, default)


# ---------------------------------------------------------------------------- loading


def shipped_pack_dir() -> Path:
    """The folder of shipped packs (``rules/`` in the source tree, package data when
    installed: ``scanner/policy/packs`` is a link to it)."""
    return Path(str(importlib.resources.files("scanner.policy") / "packs"))


def load_pack(name_or_path: str | Path) -> Pack:
    """Load a shipped pack by name (``default``, ``strict``, ``audit``) or a pack file."""
    path = _resolve(str(name_or_path), base=None)
    return _load(path, chain=())


def parse_pack(data: Mapping[str, Any], source: str, base_dir: Path | None = None) -> Pack:
    """Build a pack from parsed TOML (``extends`` resolved relative to ``base_dir``)."""
    return _build(data, source, base_dir, chain=())


def _resolve(ref: str, base: Path | None) -> Path:
    if ref in SHIPPED_PACKS or (ref.isidentifier() and not ref.endswith(".toml")):
        path = shipped_pack_dir() / f"{ref}.toml"
        if not path.is_file():
            raise PackError(
                f"no shipped rules pack named {ref!r}; choose one of "
                f"{', '.join(SHIPPED_PACKS)} or give a path to a .toml file"
            )
        return path
    path = Path(ref)
    if base is not None and not path.is_absolute():
        path = base / path
    return path


def _load(path: Path, chain: tuple[str, ...]) -> Pack:
    key = str(path.resolve())
    if key in chain:
        raise PackError(f"{path}: rules packs extend each other in a cycle")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackError(f"cannot read rules pack {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PackError(f"{path}: not valid TOML: {exc}") from None
    return _build(data, str(path), path.parent, chain=(*chain, key))


def _build(
    data: Mapping[str, Any], source: str, base_dir: Path | None, chain: tuple[str, ...]
) -> Pack:
    v = _Validator(source)
    v.keys(data, _TOP_KEYS, "the top level")
    meta = v.table(data, "pack")
    v.keys(meta, _PACK_KEYS, "[pack]")
    name = v.string(meta, "name", "pack.name") or Path(source).stem
    parent: Pack | None = None
    extends = meta.get("extends")
    if extends is not None:
        ref = v.string(meta, "extends", "pack.extends")
        assert ref is not None
        try:
            parent = _load(_resolve(ref, base_dir), chain)
        except PackError as exc:
            raise PackError(f"{source}: pack.extends: {exc}") from None
    pack = parent or Pack(name=name)

    fail_on: Severity | None = pack.fail_on
    if "fail_on" in meta:
        raw = meta["fail_on"]
        fail_on = None if raw == "never" else v.severity(raw, "pack.fail_on", extra="never")

    classes = v.table(data, "classes")
    v.keys(classes, _CLASSES_KEYS, "[classes]")
    allow = v.classes(classes, "allow", "classes.allow")
    allow_claimed = v.classes(classes, "allow_claimed", "classes.allow_claimed")

    gate = v.table(data, "gate")
    v.keys(gate, _GATE_KEYS, "[gate]")
    require = pack.require
    if "require" in gate:
        require = tuple(v.str_list(gate["require"], "gate.require"))
        for item in require:
            if item not in GATE_INPUTS:
                v.fail(
                    f"gate.require: unknown input {item!r} (choose from {', '.join(GATE_INPUTS)})"
                )

    rules = dict(pack.rules)
    for rule_id, raw in v.table(data, "rules").items():
        settings = v.rule_settings(rule_id, raw, f"rules.{rule_id}")
        rules[rule_id] = settings.over(rules.get(rule_id, RuleSettings()))

    overrides = list(pack.tensors)
    for i, raw in enumerate(v.array(data, "tensors")):
        where = f"tensors[{i}]"
        if not isinstance(raw, Mapping):
            v.fail(f"{where}: expected a table, got {_type(raw)}")
        v.keys(raw, _TENSOR_KEYS, f"[[tensors]] #{i}")
        pattern = v.string(raw, "pattern", f"{where}.pattern")
        if not pattern:
            v.fail(f"{where}: 'pattern' is required (an fnmatch glob over tensor names)")
        assert pattern is not None
        severity = v.severity(raw["severity"], f"{where}.severity") if "severity" in raw else None
        sub_rules = {
            rid: v.rule_settings(rid, rs, f"{where}.rules.{rid}")
            for rid, rs in v.table(raw, "rules", where).items()
        }
        overrides.append(
            TensorOverride(
                pattern=pattern,
                allow=v.classes(raw, "allow", f"{where}.allow"),
                severity=severity,
                rules=sub_rules,
                reason=v.string(raw, "reason", f"{where}.reason") or "",
                source=source,
            )
        )

    suppressions = list(pack.suppressions)
    suppressions += parse_suppressions(v.array(data, "suppress"), source)

    return Pack(
        name=name,
        description=v.string(meta, "description", "pack.description") or pack.description,
        source=source,
        lineage=(*pack.lineage, name) if parent else (name,),
        fail_on=fail_on,
        allow=allow if allow is not None else pack.allow,
        allow_claimed=allow_claimed if allow_claimed is not None else pack.allow_claimed,
        require=require,
        rules=rules,
        tensors=tuple(overrides),
        suppressions=tuple(suppressions),
    )


def parse_suppressions(items: Iterable[Any], source: str) -> list[Suppression]:
    """``[[suppress]]`` entries (from a pack or from the gate configuration)."""
    v = _Validator(source)
    known = _rule_ids()
    out = []
    for i, raw in enumerate(items):
        where = f"suppress[{i}]"
        if not isinstance(raw, Mapping):
            v.fail(f"{where}: expected a table, got {_type(raw)}")
        v.keys(raw, _SUPPRESS_KEYS, f"[[suppress]] #{i}")
        rule = v.string(raw, "rule", f"{where}.rule")
        if not rule:
            v.fail(f"{where}: 'rule' is required (a rule id such as MS208)")
        assert rule is not None
        if rule not in known:
            v.fail(f"{where}.rule: unknown rule id {rule!r}; see `modelseal rules list`")
        reason = (v.string(raw, "reason", f"{where}.reason") or "").strip()
        if not reason:
            v.fail(f"{where}: 'reason' is required: say why this finding is accepted")
        expires = raw.get("expires")
        if expires is not None:
            if isinstance(expires, dt.datetime):
                expires = expires.date()
            elif isinstance(expires, str):
                try:
                    expires = dt.date.fromisoformat(expires)
                except ValueError:
                    v.fail(f"{where}.expires: {expires!r} is not a date (YYYY-MM-DD)")
            elif not isinstance(expires, dt.date):
                v.fail(f"{where}.expires: expected a date (YYYY-MM-DD), got {_type(expires)}")
        out.append(
            Suppression(
                rule=rule,
                reason=reason,
                tensor=v.string(raw, "tensor", f"{where}.tensor"),
                file=v.string(raw, "file", f"{where}.file"),
                expires=expires,
                source=source,
            )
        )
    return out


def with_suppressions(pack: Pack, extra: Iterable[Suppression]) -> Pack:
    """``pack`` with more suppressions (e.g. from the repository's gate configuration)."""
    return replace(pack, suppressions=(*pack.suppressions, *extra))


def _rule_ids() -> set[str]:
    from scanner.rulebook import all_rules

    return {r.id for r in all_rules()}


def _type(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class _Validator:
    """Type checks with messages that name the file and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> None:
        raise PackError(f"{self.source}: {message}")

    def keys(self, table: Mapping[str, Any], allowed: set[str], where: str) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(
                f"unknown key {unknown[0]!r} in {where} (allowed: {', '.join(sorted(allowed))})"
            )

    def table(self, data: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, Mapping):
            self.fail(f"{where + '.' if where else ''}{key}: expected a table, got {_type(value)}")
        return value

    def array(self, data: Mapping[str, Any], key: str) -> list[Any]:
        value = data.get(key, [])
        if not isinstance(value, list):
            self.fail(f"{key}: expected an array of tables ([[{key}]]), got {_type(value)}")
        return value

    def string(self, data: Mapping[str, Any], key: str, where: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(f"{where}: expected a string, got {_type(value)}")
        return value

    def str_list(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            self.fail(f"{where}: expected an array of strings, got {_type(value)}")
        return list(value)

    def severity(self, value: Any, where: str, extra: str = "") -> Severity:
        names = [str(s) for s in Severity] + ([extra] if extra else [])
        if not isinstance(value, str):
            self.fail(f"{where}: expected a string (one of {', '.join(names)}), got {_type(value)}")
        try:
            return Severity.parse(value)
        except ValueError:
            self.fail(f"{where}: unknown severity {value!r} (one of {', '.join(names)})")
        raise AssertionError  # unreachable: fail() raises

    def classes(self, data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
        if key not in data:
            return None
        names = self.str_list(data[key], where)
        for name in names:
            if name not in CHANGE_CLASSES:
                self.fail(
                    f"{where}: unknown change class {name!r} (one of {', '.join(CHANGE_CLASSES)})"
                )
        return tuple(names)

    def rule_settings(self, rule_id: str, raw: Any, where: str) -> RuleSettings:
        from scanner.rulebook import RULES

        if rule_id not in _rule_ids():
            self.fail(f"[{where}]: unknown rule id {rule_id!r}; see `modelseal rules list`")
        if not isinstance(raw, Mapping):
            self.fail(f"{where}: expected a table, got {_type(raw)}")
        self.keys(raw, _RULE_KEYS, f"[{where}]")
        severity = (
            self.severity(raw["severity"], f"{where}.severity") if "severity" in raw else None
        )
        enabled = raw.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            self.fail(f"{where}.enabled: expected a boolean, got {_type(enabled)}")
        thresholds = self.table(raw, "thresholds", where)
        rule = RULES[rule_id]
        for key, value in thresholds.items():
            spec = rule.threshold(key)
            if spec is None:
                declared = ", ".join(t.key for t in rule.thresholds) or "none"
                self.fail(
                    f"{where}.thresholds: unknown threshold {key!r} for {rule_id} "
                    f"(declared: {declared})"
                )
            assert spec is not None
            if not _same_kind(spec.default, value):
                self.fail(
                    f"{where}.thresholds.{key}: expected {_type(spec.default)} like "
                    f"the default {spec.default!r}, got {_type(value)}"
                )
        return RuleSettings(severity=severity, enabled=enabled, thresholds=dict(thresholds))


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return type(value) is type(default)
