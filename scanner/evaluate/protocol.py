"""Plant, gate, score.

For each entry of the red-team registry that applies to the model's format, each
strength of its sweep and each seed ``0..K-1``: plant into a copy
(:func:`scanner.redteam.registry.plant`), run the gate on (trusted = the model, deployed
= the copy) with the claim and allowed classes a pipeline expecting that step would
configure (benign twins only; attacks get none), and score the verdict against the
ground truth:

* detected: the verdict is ``fail`` (or ``error``: the gate fails closed);
* localized: a failing finding names a tensor (trusted or deployed name) or an ONNX node
  that the ground truth lists as changed;
* false alarm: a benign twin whose verdict is ``fail`` or ``error``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.findings import Finding, Severity
from scanner.redteam import registry
from scanner.redteam.groundtruth import GroundTruth


@dataclass(frozen=True)
class Case:
    """One planted copy and what the gate said about it."""

    entry: str
    kind: str
    family: str
    strength: float
    seed: int
    verdict: str
    detected: bool
    localized: bool
    rules: tuple[str, ...]
    """Rule ids of the failing findings."""
    changed: int
    """Tensors (and nodes) the ground truth lists as changed."""
    seconds: float
    """Gate time (diff + scan), planting excluded."""
    classification: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Summary:
    """One entry at one strength, over the seeds."""

    entry: str
    kind: str
    family: str
    strength: float
    n: int
    detection_rate: float
    """Attacks: share detected. Benign twins: share flagged (the false-alarm rate)."""
    localization_rate: float
    """Share of cases whose failing findings named a truly changed tensor or node."""
    mean_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Evaluation:
    model: str
    format: str
    seeds: int
    gate: str
    """``rules pack NAME`` or ``fail-on SEVERITY``."""
    cases: tuple[Case, ...]
    not_applicable: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summaries(self) -> list[Summary]:
        groups: dict[tuple[str, float], list[Case]] = {}
        for c in self.cases:
            groups.setdefault((c.entry, c.strength), []).append(c)
        out = []
        for (entry, strength), cases in groups.items():
            n = len(cases)
            out.append(
                Summary(
                    entry,
                    cases[0].kind,
                    cases[0].family,
                    strength,
                    n,
                    sum(c.detected for c in cases) / n,
                    sum(c.localized for c in cases) / n,
                    sum(c.seconds for c in cases) / n,
                )
            )
        return out

    def totals(self) -> dict[str, float]:
        attacks = [c for c in self.cases if c.kind == registry.ATTACK]
        twins = [c for c in self.cases if c.kind == registry.TRANSFORM]
        return {
            "attack_cases": len(attacks),
            "detection_rate": _rate(c.detected for c in attacks),
            "localization_rate": _rate(c.localized for c in attacks),
            "benign_cases": len(twins),
            "false_alarm_rate": _rate(c.detected for c in twins),
        }


def _rate(flags: Any) -> float:
    values = list(flags)
    return sum(values) / len(values) if values else 0.0


Gate = Callable[[Path, Path, GroundTruth], tuple[str, list[Finding], str, float]]
"""(trusted, deployed, truth) -> (verdict, failing findings, classification, seconds)."""


def gate_case(pack: str | None = None, fail_on: Severity | None = None) -> Gate:
    """The gate the protocol runs: ``scanner.gate.run_gate`` judged by the rules pack
    ``pack`` when given (an explicit ``fail_on`` wins over the pack's), else the diff +
    scan pipeline with a ``fail_on`` threshold (default medium)."""

    def run(
        trusted: Path, deployed: Path, truth: GroundTruth
    ) -> tuple[str, list[Finding], str, float]:
        claims = (truth.claim,) if truth.claim else ()
        allow = tuple(truth.details.get("allow") or ())
        started = time.perf_counter()
        if pack is not None:
            from dataclasses import replace as _replace

            from scanner.gate import GateRequest, run_gate
            from scanner.policy import load_pack

            loaded = load_pack(pack)
            # A pipeline step that expects this change class allows it in its pack.
            loaded = _replace(loaded, allow=tuple(dict.fromkeys((*loaded.allow, *allow))))
            report = run_gate(
                GateRequest(
                    deployed=deployed,
                    pack=loaded,
                    trusted=trusted,
                    claims=claims,
                    allow=allow,
                    fail_on=fail_on,
                )
            )
        else:
            from dataclasses import replace

            from scanner.api import diff_open
            from scanner.checks.single import scan_open
            from scanner.diff.options import DiffOptions
            from scanner.formats import open_artifact
            from scanner.report.build import report_from_diff

            options = DiffOptions(claims=tuple(claims), allow=tuple(allow))
            with open_artifact(trusted) as t, open_artifact(deployed) as d:
                result = diff_open(t, d, options=options)
                single = scan_open(d)
                report = report_from_diff(result, fail_on or Severity.MEDIUM)
                report = replace(report, findings=(*report.findings, *single.findings))
        seconds = time.perf_counter() - started
        return report.verdict, report.failing(), report.classification or "", seconds

    return run


def localized(findings: Sequence[Finding], truth: GroundTruth) -> bool:
    """Whether a finding names a tensor or node the ground truth lists as changed."""
    tensors, nodes = set(truth.tensors), set(truth.nodes)
    for f in findings:
        for loc in f.locations:
            if (loc.tensor and loc.tensor in tensors) or (loc.node and loc.node in nodes):
                return True
        for key in ("tensor", "tensors", "nodes"):  # evidence that lists locations
            value = f.evidence.get(key) if isinstance(f.evidence, dict) else None
            if isinstance(value, str) and (value in tensors or value in nodes):
                return True
            if isinstance(value, (list, tuple)) and any(
                isinstance(v, str) and (v in tensors or v in nodes) for v in value
            ):
                return True
    return False


def evaluate(
    model: Path,
    *,
    names: Sequence[str] | None = None,
    seeds: int = 3,
    strengths: dict[str, Sequence[float]] | None = None,
    pack: str | None = None,
    fail_on: Severity | None = None,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Run the protocol on ``model`` for ``names`` (default: every applicable entry)."""
    from scanner.formats import open_artifact

    started = time.perf_counter()
    with open_artifact(model) as art:
        fmt = art.format
    chosen = list(names) if names else [e.name for e in registry.ENTRIES]
    gate = gate_case(pack, fail_on)
    cases: list[Case] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for name in chosen:
            entry = registry.get(name)
            if fmt not in entry.formats:
                skipped[name] = f"applies to {', '.join(entry.formats)}"
                continue
            sweep = tuple((strengths or {}).get(name) or entry.sweep)
            for strength in sweep:
                for seed in range(seeds):
                    out = Path(tmp, f"{name}-{strength:g}-{seed}{model.suffix}")
                    try:
                        truth = registry.plant(model, name, out, seed=seed, strength=strength)
                    except registry.NotApplicableError as exc:
                        skipped[name] = str(exc)
                        break
                    verdict, failing, cls, seconds = gate(model, Path(truth.output), truth)
                    cases.append(
                        Case(
                            entry=name,
                            kind=entry.kind,
                            family=entry.family,
                            strength=strength,
                            seed=seed,
                            verdict=verdict,
                            detected=verdict in ("fail", "error"),
                            localized=localized(failing, truth),
                            rules=tuple(sorted({f.rule_id for f in failing})),
                            changed=len(truth.tensors) + len(truth.nodes),
                            seconds=seconds,
                            classification=cls,
                        )
                    )
                    if progress:
                        progress(f"{name} strength={strength:g} seed={seed}: {verdict}")
                    Path(truth.output).unlink(missing_ok=True)
                if name in skipped:
                    break
    if pack:
        label = f"rules pack {pack}" + (f", fail-on {fail_on}" if fail_on is not None else "")
    else:
        label = f"fail-on {fail_on or Severity.MEDIUM}"
    return Evaluation(
        str(model), fmt, seeds, label, tuple(cases), skipped, time.perf_counter() - started
    )
