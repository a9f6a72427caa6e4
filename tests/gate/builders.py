"""Helpers for the gate tests: reports built from findings and tensor diffs we construct."""

from __future__ import annotations

from scanner.diff.model import Localization, TensorDiff, TensorStatus, ValueDelta
from scanner.findings import Finding, Location, Severity
from scanner.report.model import ArtifactSummary, Report


def tensor(
    name: str,
    cls: str | None,
    *,
    status: TensorStatus = TensorStatus.CHANGED,
    rel: float = 1e-3,
    rows: tuple[int, ...] = (0, 1, 2, 3),
    claim: bool = False,
) -> TensorDiff:
    labels: dict[str, object] = {}
    if cls is not None:
        labels["class"] = cls
    if claim:
        labels["claim"] = "quantize:int8"
    return TensorDiff(
        name=name,
        status=status,
        trusted_dtype="F32",
        deployed_dtype="F32",
        trusted_shape=(8, 4),
        deployed_shape=(8, 4),
        nbytes=128,
        delta=ValueDelta(32, 32, rel, rel) if status is TensorStatus.CHANGED else None,
        where=Localization(
            rows=rows,
            cols=(0, 1, 2, 3),
            n_rows=8,
            n_cols=4,
            block=((0, 4), (0, 4)),
            block_density=1.0,
        )
        if status is TensorStatus.CHANGED
        else None,
        labels=labels,
    )


def changed_finding(
    name: str, rule: str = "MS201", severity: Severity = Severity.HIGH, **evidence: object
) -> Finding:
    return Finding(
        rule,
        severity,
        "Tensor values changed",
        f"{name}: changed",
        (Location(artifact="deployed", tensor=name),),
        dict(evidence),
    )


def pair_report(tensors: list[TensorDiff], findings: list[Finding]) -> Report:
    arts = (
        ArtifactSummary("trusted", "t.safetensors", ".", "safetensors", 1, 3, 384),
        ArtifactSummary("deployed", "d.safetensors", ".", "safetensors", 1, 3, 384),
    )
    return Report(
        "diff", arts, tuple(findings), tensors=tuple(tensors), classification="full fine-tune"
    )


def finetune_report() -> Report:
    """Every tensor fine-tuned; the classifier explained the change (no MS201)."""
    names = ["embeddings.word.weight", "encoder.0.weight", "lm_head.weight"]
    return pair_report([tensor(n, "full fine-tune") for n in names], [])
