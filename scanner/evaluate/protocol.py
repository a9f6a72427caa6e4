"""Plant, gate, score.

For each case of the suites asked for (catalogue, tamper, sweep, combination, adaptive;
see :func:`evaluate`) and each seed ``0..K-1``: plant into a copy
(:func:`scanner.redteam.registry.plant`), run the gate on (trusted = the model, deployed
= the copy) with the claim and allowed classes a pipeline expecting that step would
configure (benign twins only; attacks get none, combinations get the twin's), and score
the verdict against the ground truth:

* detected: the verdict is ``fail`` (or ``error``: the gate fails closed);
* localized: a failing finding names a tensor (trusted or deployed name) or an ONNX node
  that the ground truth lists as changed (by the attack, in a combination);
* false alarm: a benign twin whose verdict is ``fail`` or ``error``;
* absorbed: the planted change did not survive storage (not scored).

Every rate of a row is reported with its 95% Wilson interval over the row's seeds.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.evaluate.stats import wilson
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
    suite: str = "catalogue"
    """``catalogue``, ``tamper``, ``sweep``, ``combination`` or ``adaptive``."""
    params: tuple[tuple[str, str], ...] = ()
    """Attacker-controlled planter parameters besides the strength (sweeps, tamper kind)."""
    twin: str = ""
    """Combinations: the benign twin planted with the attack."""
    order: str = ""
    """Combinations: ``attack>twin`` (attack first) or ``twin>attack``."""
    success: float | None = None
    """Adaptive attacks: the attack's measured success on the planted copy (0..1)."""
    absorbed: bool = False
    """The change did not survive storage (the copy equals the source): not scored."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if k == "params":
                out[k] = dict(v)
            else:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @property
    def group(self) -> tuple[Any, ...]:
        return (self.suite, self.entry, self.strength, self.params, self.twin, self.order)


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
    detected: int = 0
    ci_low: float = 0.0
    ci_high: float = 1.0
    """95% Wilson interval of ``detection_rate`` over the ``n`` scored cases."""
    suite: str = "catalogue"
    params: tuple[tuple[str, str], ...] = ()
    twin: str = ""
    order: str = ""
    absorbed: int = 0
    """Cases whose change did not survive storage (not in ``n``)."""
    success: float | None = None
    """Adaptive attacks: mean measured success."""

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["params"] = dict(self.params)
        return out


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

    def summaries(self, suite: str | None = None) -> list[Summary]:
        groups: dict[tuple[Any, ...], list[Case]] = {}
        for c in self.cases:
            if suite is None or c.suite == suite:
                groups.setdefault(c.group, []).append(c)
        out = []
        for cases in groups.values():
            scored = [c for c in cases if not c.absorbed]
            n = len(scored)
            k = sum(c.detected for c in scored)
            lo, hi = wilson(k, n)
            first = cases[0]
            successes = [c.success for c in scored if c.success is not None]
            out.append(
                Summary(
                    first.entry,
                    first.kind,
                    first.family,
                    first.strength,
                    n,
                    k / n if n else 0.0,
                    sum(c.localized for c in scored) / n if n else 0.0,
                    sum(c.seconds for c in cases) / len(cases),
                    k,
                    lo,
                    hi,
                    first.suite,
                    first.params,
                    first.twin,
                    first.order,
                    len(cases) - n,
                    sum(successes) / len(successes) if successes else None,
                )
            )
        return out

    def totals(self, suite: str = "catalogue") -> dict[str, Any]:
        cases = [c for c in self.cases if c.suite == suite and not c.absorbed]
        attacks = [c for c in cases if c.kind == registry.ATTACK]
        twins = [c for c in cases if c.kind == registry.TRANSFORM]
        hit = sum(c.detected for c in attacks)
        alarms = sum(c.detected for c in twins)
        return {
            "attack_cases": len(attacks),
            "detected": hit,
            "detection_rate": _rate(c.detected for c in attacks),
            "detection_ci": list(wilson(hit, len(attacks))),
            "localization_rate": _rate(c.localized for c in attacks),
            "benign_cases": len(twins),
            "false_alarms": alarms,
            "false_alarm_rate": _rate(c.detected for c in twins),
            "false_alarm_ci": list(wilson(alarms, len(twins))),
        }

    def suites(self) -> list[str]:
        return list(dict.fromkeys(c.suite for c in self.cases))


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


SUITES = ("catalogue", "tamper", "sweep", "combination", "adaptive")


def _case(
    entry: registry.Entry,
    truth: GroundTruth,
    gated: tuple[str, list[Finding], str, float],
    *,
    scored_truth: GroundTruth | None = None,
    **extra: Any,
) -> Case:
    verdict, failing, cls, seconds = gated
    target = scored_truth or truth
    return Case(
        entry=entry.name,
        kind=entry.kind,
        family=entry.family,
        strength=float(truth.strength if truth.strength is not None else 1.0),
        seed=truth.seed,
        verdict=verdict,
        detected=verdict in ("fail", "error"),
        localized=localized(failing, target),
        rules=tuple(sorted({f.rule_id for f in failing})),
        changed=len(target.tensors) + len(target.nodes),
        seconds=seconds,
        classification=cls,
        absorbed=not (truth.tensors or truth.nodes),
        **extra,
    )


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
    suites: Sequence[str] = ("catalogue",),
    magnitudes: Sequence[float] | None = None,
    shapes: Sequence[str] | None = None,
    sweeps: dict[str, Sequence[dict[str, str]]] | None = None,
    twins: Sequence[str] | None = None,
    adaptive_attacks: Sequence[str] | None = None,
    quick: bool = False,
    inspect: Callable[[Path, Path, GroundTruth], None] | None = None,
) -> Evaluation:
    """Run the protocol on ``model``.

    ``suites`` (docs/evaluation.md): ``catalogue`` (every entry of ``names``, default all
    that apply, at each strength of its sweep), ``tamper`` (generic tampering by region
    shape, tensor kind and magnitude: the minimal detectable change), ``sweep`` (every
    attacker-controlled planter parameter, :data:`scanner.evaluate.sweeps.GRID`),
    ``combination`` (each attack with each benign twin, both orders) and ``adaptive``
    (:mod:`scanner.evaluate.adaptive`). ``quick`` trims the grids for a first look.
    ``inspect(trusted, deployed, truth)`` is called before every gate run (audits of
    what the protocol hands the gate)."""
    from scanner.evaluate import sweeps as grid
    from scanner.formats import open_artifact

    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suites {unknown}; choose from {', '.join(SUITES)}")
    started = time.perf_counter()
    with open_artifact(model) as art:
        fmt = art.format
    gate = gate_case(pack, fail_on)
    if inspect is not None:
        inner = gate

        def gate(trusted: Path, deployed: Path, truth: GroundTruth) -> Any:
            inspect(trusted, deployed, truth)
            return inner(trusted, deployed, truth)

    cases: list[Case] = []
    skipped: dict[str, str] = {}
    say = progress or (lambda _line: None)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        counter = iter(range(10**9))

        def out_path(tag: str) -> Path:
            return Path(tmp, f"{next(counter)}-{tag}{model.suffix}")

        def plant(src: Path, name: str, seed: int, strength: float | None, params: Any) -> Any:
            return registry.plant(
                src, name, out_path(name), seed=seed, strength=strength, params=params
            )

        if "catalogue" in suites:
            chosen = (
                list(names)
                if names
                else [e.name for e in registry.ENTRIES if e.family != registry.TAMPER]
            )
            for name in chosen:
                entry = registry.get(name)
                if fmt not in entry.formats:
                    skipped[name] = f"applies to {', '.join(entry.formats)}"
                    continue
                sweep = tuple((strengths or {}).get(name) or entry.sweep)
                if quick and len(sweep) > 2:
                    sweep = (sweep[0], sweep[-1])
                try:
                    for strength in sweep:
                        for seed in range(seeds):
                            truth = plant(model, name, seed, strength, None)
                            res = gate(model, Path(truth.output), truth)
                            cases.append(_case(entry, truth, res))
                            say(f"{name} strength={strength:g} seed={seed}: {res[0]}")
                            _remove(truth)
                except registry.NotApplicableError as exc:
                    skipped[name] = str(exc)

        if "tamper" in suites:
            mags = tuple(magnitudes or (grid.QUICK_MAGNITUDES if quick else grid.MAGNITUDES))
            from scanner.redteam.io import ModelCopy

            with ModelCopy(model) as copy:
                kinds = sorted(registry.tamper_targets(copy))
            for shape in shapes or grid.SHAPES:
                entry = registry.get(f"tamper-{shape}")
                for kind in kinds:
                    for m in mags:
                        for seed in range(seeds):
                            params = {"kind": kind}
                            try:
                                truth = plant(model, entry.name, seed, m, params)
                            except registry.NotApplicableError as exc:
                                skipped[f"{entry.name} ({kind})"] = str(exc)
                                continue
                            res = gate(model, Path(truth.output), truth)
                            cases.append(
                                _case(entry, truth, res, suite="tamper", params=(("kind", kind),))
                            )
                            say(f"{entry.name} {kind} magnitude={m:g} seed={seed}: {res[0]}")
                            _remove(truth)

        if "sweep" in suites:
            table = sweeps if sweeps is not None else grid.grid(quick)
            for name, settings in table.items():
                if names and name not in names:
                    continue
                entry = registry.get(name)
                if fmt not in entry.formats:
                    skipped[f"sweep {name}"] = f"applies to {', '.join(entry.formats)}"
                    continue
                for setting in settings:
                    params = {k: v for k, v in setting.items() if k != "strength"}
                    strength = float(setting.get("strength", entry.default_strength))
                    key = tuple(sorted(params.items()))
                    try:
                        for seed in range(seeds):
                            truth = plant(model, name, seed, strength, params)
                            res = gate(model, Path(truth.output), truth)
                            cases.append(_case(entry, truth, res, suite="sweep", params=key))
                            say(f"sweep {name} {dict(key)} seed={seed}: {res[0]}")
                            _remove(truth)
                    except registry.NotApplicableError as exc:
                        skipped[f"sweep {name} {dict(key)}"] = str(exc)

        if "combination" in suites:
            attacks = [
                n
                for n in (names or grid.combination_attacks(quick))
                if registry.get(n).kind == registry.ATTACK and fmt in registry.get(n).formats
            ]
            benign = [
                n
                for n in (twins or grid.combination_twins(quick))
                if fmt in registry.get(n).formats
            ]
            for attack in attacks:
                entry = registry.get(attack)
                for twin in benign:
                    for order in ("attack>twin", "twin>attack"):
                        for seed in range(seeds):
                            first, second = (
                                (attack, twin) if order == "attack>twin" else (twin, attack)
                            )
                            try:
                                a = plant(model, first, seed, None, None)
                                b = plant(Path(a.output), second, seed, None, None)
                            except registry.NotApplicableError as exc:
                                skipped[f"{attack} + {twin} ({order})"] = str(exc)
                                break
                            twin_truth = b if order == "attack>twin" else a
                            attack_truth = a if order == "attack>twin" else b
                            # The deployed copy is gated against the original model, with
                            # what a pipeline expecting the twin configures.
                            res = gate(model, Path(b.output), twin_truth)
                            cases.append(
                                _case(
                                    entry,
                                    attack_truth,
                                    res,
                                    scored_truth=attack_truth,
                                    suite="combination",
                                    twin=twin,
                                    order=order,
                                )
                            )
                            say(f"{attack} + {twin} ({order}) seed={seed}: {res[0]}")
                            _remove(a)
                            _remove(b)

        if "adaptive" in suites:
            from scanner.evaluate import adaptive

            adaptive_cases, adaptive_skipped = adaptive.run(
                model,
                gate,
                seeds=seeds,
                quick=quick,
                workdir=Path(tmp),
                progress=say,
                attacks=tuple(adaptive_attacks) if adaptive_attacks else None,
            )
            cases.extend(adaptive_cases)
            skipped.update(adaptive_skipped)
    if pack:
        label = f"rules pack {pack}" + (f", fail-on {fail_on}" if fail_on is not None else "")
    else:
        label = f"fail-on {fail_on or Severity.MEDIUM}"
    return Evaluation(
        str(model), fmt, seeds, label, tuple(cases), skipped, time.perf_counter() - started
    )


def _remove(truth: GroundTruth) -> None:
    from scanner.redteam.groundtruth import truth_path

    out = Path(truth.output)
    out.unlink(missing_ok=True)
    truth_path(out).unlink(missing_ok=True)
