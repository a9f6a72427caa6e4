"""Diff a trusted artifact against a deployed one.

Stages: pair tensors by name (then by digest for renames), compare every pair on all
cores, then hand the open artifacts and per-tensor results to the pair analyzers the
caller passes in (the composition root, :mod:`scanner.api`, passes the product's), which
add findings, labels and explanations. Whatever change no analyzer explains becomes an
"unexplained change" finding, so new analyses plug in without touching this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from scanner.artifact import Artifact
from scanner.diff.compare import bytes_equal, cast_check, is_float_cast, value_delta
from scanner.diff.model import TensorDiff, TensorStatus, class_rank
from scanner.diff.options import DiffOptions
from scanner.digest import file_sha256, tensor_digest
from scanner.findings import Finding
from scanner.formats import open_artifact
from scanner.parallel import run_parallel
from scanner.progress import NoProgress, Progress


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str
    """``added``, ``removed`` or ``changed``."""
    role: str


@dataclass(frozen=True)
class Analysis:
    """What one pair analyzer contributes."""

    findings: tuple[Finding, ...] = ()
    labels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-tensor results to attach to the tensor's diff entry."""
    explained: Mapping[str, str] = field(default_factory=dict)
    """Tensor name -> the change class that accounts for its change."""
    classification: str | None = None
    """A proposed class for the whole pair (the most severe proposal wins)."""
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PairContext:
    trusted: Artifact
    deployed: Artifact
    tensors: tuple[TensorDiff, ...]
    files: tuple[FileChange, ...]
    options: DiffOptions
    explained: Mapping[str, str]
    """Explanations from analyzers that ran earlier."""

    def changed(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.is_change]


class PairAnalyzer(Protocol):
    name: str

    def __call__(self, ctx: PairContext) -> Analysis: ...


@dataclass(frozen=True)
class Analyzer:
    """A named analysis function; satisfies :class:`PairAnalyzer`."""

    name: str
    run: Callable[[PairContext], Analysis]

    def __call__(self, ctx: PairContext) -> Analysis:
        return self.run(ctx)


@dataclass(frozen=True)
class DiffResult:
    trusted: Artifact
    deployed: Artifact
    tensors: tuple[TensorDiff, ...]
    files: tuple[FileChange, ...]
    findings: tuple[Finding, ...]
    classification: str
    evidence: Mapping[str, Any]
    seconds: float


def pair_names(
    trusted: Artifact, deployed: Artifact
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Pairs by identical name, then the unmatched names on each side."""
    common = [(n, n) for n in trusted.tensors if n in deployed.tensors]
    only_t = [n for n in trusted.tensors if n not in deployed.tensors]
    only_d = [n for n in deployed.tensors if n not in trusted.tensors]
    return common, only_t, only_d


def compare_pair(
    trusted: Artifact, t_name: str, deployed: Artifact, d_name: str, progress: Progress
) -> TensorDiff:
    it, idp = trusted.tensors[t_name], deployed.tensors[d_name]
    base = dict(
        name=t_name,
        deployed_name=d_name if d_name != t_name else None,
        trusted_dtype=it.dtype.name,
        deployed_dtype=idp.dtype.name,
        trusted_shape=it.shape,
        deployed_shape=idp.shape,
        nbytes=max(it.nbytes, idp.nbytes),
    )
    try:
        if it.shape != idp.shape:
            return TensorDiff(status=TensorStatus.SHAPE_CHANGED, **base)  # type: ignore[arg-type]
        if it.dtype == idp.dtype:
            if bytes_equal(trusted, t_name, deployed, d_name):
                return TensorDiff(status=TensorStatus.IDENTICAL, **base)  # type: ignore[arg-type]
            delta, where = value_delta(trusted, t_name, deployed, d_name)
            return TensorDiff(status=TensorStatus.CHANGED, delta=delta, where=where, **base)  # type: ignore[arg-type]
        if is_float_cast(it.dtype.name, idp.dtype.name):
            check, delta, where = cast_check(trusted, t_name, deployed, d_name)
            status = (
                TensorStatus.CAST if check.n_beyond_rounding == 0 else TensorStatus.DTYPE_CHANGED
            )
            return TensorDiff(status=status, cast=check, delta=delta, where=where, **base)  # type: ignore[arg-type]
        return TensorDiff(status=TensorStatus.DTYPE_CHANGED, **base)  # type: ignore[arg-type]
    finally:
        progress.advance(it.nbytes + idp.nbytes)


def _renames(
    trusted: Artifact, only_t: list[str], deployed: Artifact, only_d: list[str], workers: int | None
) -> dict[str, str]:
    """Unmatched trusted name -> deployed name holding an identical tensor."""
    if not only_t or not only_d:
        return {}
    jobs: list[tuple[int, Callable[[], tuple[str, str, str]]]] = [
        (trusted.tensors[n].nbytes, lambda n=n: ("t", n, tensor_digest(trusted, n))) for n in only_t
    ] + [
        (deployed.tensors[n].nbytes, lambda n=n: ("d", n, tensor_digest(deployed, n)))
        for n in only_d
    ]
    digests = run_parallel(jobs, workers)
    deployed_by_digest: dict[str, list[str]] = {}
    for side, name, digest in digests:
        if side == "d":
            deployed_by_digest.setdefault(digest, []).append(name)
    renames: dict[str, str] = {}
    for side, name, digest in digests:
        if side == "t" and deployed_by_digest.get(digest):
            renames[name] = deployed_by_digest[digest].pop(0)
    return renames


def diff_files(trusted: Artifact, deployed: Artifact, workers: int | None) -> list[FileChange]:
    """Changes to files other than parsed weights (config, tokenizer ...).

    Weight files are compared tensor by tensor; their non-tensor content (metadata) is
    compared by the metadata check.
    """
    t_files = {f.relpath: f for f in trusted.files}
    d_files = {f.relpath: f for f in deployed.files}
    changes: list[FileChange] = []
    both: list[str] = []
    for rel, f in t_files.items():
        if rel not in d_files:
            changes.append(FileChange(rel, "removed", f.role))
        elif f.role == "other" or d_files[rel].role == "other":
            both.append(rel)
    changes.extend(
        FileChange(rel, "added", f.role) for rel, f in d_files.items() if rel not in t_files
    )
    if len(t_files) == 1 and len(d_files) == 1:
        return []  # two single files: the names are the user's business, not a change
    jobs: list[tuple[int, Callable[[], bool]]] = [
        (
            t_files[rel].size,
            lambda rel=rel: (
                t_files[rel].size == d_files[rel].size
                and file_sha256(t_files[rel].path) == file_sha256(d_files[rel].path)
            ),
        )
        for rel in both
    ]
    for rel, same in zip(both, run_parallel(jobs, workers), strict=True):
        if not same:
            changes.append(FileChange(rel, "changed", t_files[rel].role))
    return sorted(changes, key=lambda c: c.path)


def diff_open(
    trusted: Artifact,
    deployed: Artifact,
    *,
    analyzers: Sequence[PairAnalyzer],
    options: DiffOptions | Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> DiffResult:
    """Diff two open artifacts and run ``analyzers`` over the result, in order (the
    composition root, :mod:`scanner.api`, supplies the product's analyzers)."""
    options = DiffOptions.of(options)
    started = time.perf_counter()
    progress = progress or NoProgress()
    common, only_t, only_d = pair_names(trusted, deployed)
    total = sum(trusted.tensors[a].nbytes + deployed.tensors[b].nbytes for a, b in common)
    progress.start(total, "comparing")
    jobs = [
        (
            trusted.tensors[a].nbytes,
            lambda a=a, b=b: compare_pair(trusted, a, deployed, b, progress),
        )
        for a, b in common
    ]
    diffs = run_parallel(jobs, workers)
    progress.finish()
    renames = _renames(trusted, only_t, deployed, only_d, workers)
    for t_name, d_name in renames.items():
        it = trusted.tensors[t_name]
        diffs.append(
            TensorDiff(
                name=t_name,
                status=TensorStatus.RENAMED,
                deployed_name=d_name,
                trusted_dtype=it.dtype.name,
                deployed_dtype=it.dtype.name,
                trusted_shape=it.shape,
                deployed_shape=it.shape,
                nbytes=it.nbytes,
            )
        )
    renamed_to = set(renames.values())
    for name in only_t:
        if name not in renames:
            it = trusted.tensors[name]
            diffs.append(
                TensorDiff(
                    name=name,
                    status=TensorStatus.REMOVED,
                    trusted_dtype=it.dtype.name,
                    trusted_shape=it.shape,
                    nbytes=it.nbytes,
                )
            )
    for name in only_d:
        if name not in renamed_to:
            info = deployed.tensors[name]
            diffs.append(
                TensorDiff(
                    name=name,
                    status=TensorStatus.ADDED,
                    deployed_name=name,
                    deployed_dtype=info.dtype.name,
                    deployed_shape=info.shape,
                    nbytes=info.nbytes,
                )
            )
    files = tuple(diff_files(trusted, deployed, workers))
    tensors = tuple(diffs)
    findings: list[Finding] = []
    explained: dict[str, str] = {}
    proposals: list[str] = []
    evidence: dict[str, Any] = {}
    for analyzer in analyzers:
        ctx = PairContext(trusted, deployed, tensors, files, options, dict(explained))
        result = analyzer(ctx)
        findings.extend(result.findings)
        explained.update(result.explained)
        if result.labels:
            tensors = tuple(
                replace(t, labels={**t.labels, **result.labels[t.name]})
                if t.name in result.labels
                else t
                for t in tensors
            )
        if result.classification:
            proposals.append(result.classification)
        if result.evidence:
            evidence[analyzer.name] = dict(result.evidence)
    classification = max(proposals, key=class_rank) if proposals else "identical"
    return DiffResult(
        trusted=trusted,
        deployed=deployed,
        tensors=tensors,
        files=files,
        findings=tuple(findings),
        classification=classification,
        evidence=evidence,
        seconds=time.perf_counter() - started,
    )


def diff_artifacts(
    trusted: str | Path,
    deployed: str | Path,
    *,
    analyzers: Sequence[PairAnalyzer],
    options: DiffOptions | Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> DiffResult:
    """Open and diff two artifacts. The artifacts in the result are closed on return;
    their tensor descriptions stay usable."""
    with open_artifact(trusted) as t, open_artifact(deployed) as d:
        return diff_open(
            t, d, analyzers=analyzers, options=options, progress=progress, workers=workers
        )
