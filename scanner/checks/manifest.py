"""Check an artifact against its trusted digest manifest (``modelseal manifest`` output).

A trusted manifest names every file (size, sha256) and every tensor (dtype, shape,
container-independent digest) of the artifact that was approved. Anything on disk that
differs from it, file or tensor, added, missing or modified, is one finding (MS601) that
names each difference; nothing is explained away, since the manifest is the statement of
exactly what was trusted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from scanner.artifact import Artifact
from scanner.findings import Finding, Location, Severity
from scanner.manifest import manifest_of
from scanner.progress import Progress
from scanner.rulebook import define_rule, finding
from signing.errors import ManifestError
from signing.manifest import Manifest

MANIFEST_MISMATCH = define_rule(
    "MS601",
    "model-differs-from-manifest",
    Severity.CRITICAL,
    "Model differs from its trusted manifest",
    checks="Every file (sha256) and every tensor (dtype, shape, digest) of the artifact is "
    "compared with the trusted manifest written by `modelseal manifest` when the artifact was "
    "approved (`modelseal batch` verify jobs with a `manifest`). Fails on any file or tensor "
    "that was modified, added or removed, and on a changed container format.",
    why="The manifest is the record of exactly what was trusted. A byte that changed since is "
    "outside that record, whether the change is a re-serialization or weight surgery.",
    example="tensor 'conv2.weight' modified (trusted 3f2a19c0.., now 9b0e44d1..); file "
    "'model.safetensors' modified.",
    fix="Deploy the artifact the manifest describes; if the new artifact is intended, review "
    "it with `modelseal diff` against the trusted one and write a new manifest.",
    references=("docs/batch.md", "docs/digests.md"),
)

MAX_LOCATIONS = 50
MAX_LISTED = 200


@dataclass(frozen=True)
class ManifestDifference:
    """One way in which an artifact differs from its trusted manifest."""

    what: str
    """``file``, ``tensor`` or ``format``."""
    name: str
    change: str
    """``modified``, ``added`` (not in the manifest) or ``missing`` (in it, not on disk)."""
    trusted: str = ""
    actual: str = ""

    def describe(self) -> str:
        text = f"{self.what} '{self.name}' {self.change}"
        if self.change == "modified":
            text += f" (trusted {self.trusted}, now {self.actual})"
        elif self.change == "added":
            text += " (not in the trusted manifest)"
        elif self.change == "missing":
            text += " (in the trusted manifest, not on disk)"
        return text


def read_manifest(path: Path) -> Manifest:
    """The trusted manifest at ``path``; one-line :class:`ManifestError` when unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read trusted manifest {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"trusted manifest {path} is not UTF-8 text") from None
    try:
        return Manifest.from_json(text)
    except ManifestError as exc:
        raise ManifestError(f"trusted manifest {path}: {exc}") from None


def compare_to_manifest(
    trusted: Manifest, actual: Manifest, ignore: Collection[str] = ()
) -> tuple[ManifestDifference, ...]:
    """Every difference of ``actual`` from ``trusted``; files in ``ignore`` (paths
    relative to the artifact root) are left out on both sides."""
    out: list[ManifestDifference] = []
    if trusted.format != actual.format:
        out.append(
            ManifestDifference("format", "container", "modified", trusted.format, actual.format)
        )
    files_t = {f.path: (f.size, f.sha256) for f in trusted.files}
    files_a = {f.path: (f.size, f.sha256) for f in actual.files}
    for name in ignore:
        files_t.pop(name, None)
        files_a.pop(name, None)
    out.extend(_differences("file", files_t, files_a))
    out.extend(_differences("tensor", _tensors(trusted), _tensors(actual)))
    return tuple(out)


def check_manifest(
    artifact: Artifact,
    trusted: Manifest,
    *,
    ignore: Collection[str] = (),
    progress: Progress | None = None,
) -> tuple[Finding, ...]:
    """Digest the open ``artifact`` and compare it with ``trusted`` (MS601 on any
    difference; no finding when it matches exactly)."""
    differences = compare_to_manifest(trusted, manifest_of(artifact, progress), ignore)
    if not differences:
        return ()
    shown = "; ".join(d.describe() for d in differences[:8])
    more = f"; and {len(differences) - 8} more" if len(differences) > 8 else ""
    locations = [
        Location(artifact="deployed", tensor=d.name)
        if d.what == "tensor"
        else Location(artifact="deployed", file=d.name if d.what == "file" else None)
        for d in differences[:MAX_LOCATIONS]
    ]
    return (
        finding(
            MANIFEST_MISMATCH,
            f"{len(differences)} difference(s) from the trusted manifest: {shown}{more}",
            locations,
            evidence={
                "trusted_digest": trusted.root_digest,
                "differences": [d.describe() for d in differences[:MAX_LISTED]],
            },
        ),
    )


def _tensors(manifest: Manifest) -> dict[str, tuple[object, ...]]:
    return {t.name: (t.dtype, t.shape, t.digest) for t in manifest.tensors}


def _shown(value: tuple[object, ...]) -> str:
    """A digest entry as people read it; comparisons use the full values."""
    if len(value) == 2:
        size, sha256 = value
        return f"{size} B, sha256 {str(sha256)[:12]}.."
    dtype, shape, digest = value
    return f"{dtype}{list(shape)} {str(digest).removeprefix('sha256:')[:12]}.."  # type: ignore[call-overload]


def _differences(
    what: str,
    trusted: Mapping[str, tuple[object, ...]],
    actual: Mapping[str, tuple[object, ...]],
) -> list[ManifestDifference]:
    out = []
    for name in sorted(set(trusted) | set(actual)):
        if name not in actual:
            out.append(ManifestDifference(what, name, "missing", trusted=_shown(trusted[name])))
        elif name not in trusted:
            out.append(ManifestDifference(what, name, "added", actual=_shown(actual[name])))
        elif trusted[name] != actual[name]:
            out.append(
                ManifestDifference(
                    what, name, "modified", _shown(trusted[name]), _shown(actual[name])
                )
            )
    return out
