"""The library's front door (re-exported by :mod:`scanner`) and its composition root.

The diff engine runs whatever analyzers it is handed; this module hands it the
product's analyzers (claims, weights, graph, files, metadata, unexplained), so the engine
never imports the checks that sit above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanner.formats import open_artifact
from scanner.manifest import build_manifest

if TYPE_CHECKING:
    from scanner.artifact import Artifact
    from scanner.checks.single import ScanResult
    from scanner.diff import DiffOptions, DiffResult, PairAnalyzer
    from scanner.progress import Progress


def pair_analyzers() -> list[PairAnalyzer]:
    """The analyzers a trusted-vs-deployed diff runs, in order."""
    from scanner.checks.pair import default_analyzers

    return default_analyzers()


def diff_open(
    trusted: Artifact,
    deployed: Artifact,
    *,
    options: DiffOptions | Mapping[str, Any] | None = None,
    analyzers: Sequence[PairAnalyzer] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> DiffResult:
    """Diff two open artifacts with the product's analyzers (or ``analyzers``)."""
    from scanner.diff.engine import diff_open as run

    return run(
        trusted,
        deployed,
        analyzers=pair_analyzers() if analyzers is None else analyzers,
        options=options,
        progress=progress,
        workers=workers,
    )


def diff_artifacts(
    trusted: str | Path,
    deployed: str | Path,
    *,
    options: DiffOptions | Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> DiffResult:
    """Open and diff two artifacts with the product's analyzers."""
    from scanner.diff.engine import diff_artifacts as run

    return run(
        trusted,
        deployed,
        analyzers=pair_analyzers(),
        options=options,
        progress=progress,
        workers=workers,
    )


def scan_artifact(path: str | Path, **kwargs: Any) -> ScanResult:
    """Audit one artifact on its own (structure, serialization, graph)."""
    from scanner.checks.single import scan_artifact as run

    return run(path, **kwargs)


__all__ = [
    "build_manifest",
    "diff_artifacts",
    "diff_open",
    "open_artifact",
    "pair_analyzers",
    "scan_artifact",
]
