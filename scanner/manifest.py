"""Build the per-file and per-tensor digest manifest of an artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scanner.artifact import Artifact
from scanner.digest import file_sha256, tensor_digest
from scanner.formats import open_artifact
from scanner.parallel import run_parallel
from scanner.progress import NoProgress, Progress, ScaledProgress
from signing.manifest import FileDigest, Manifest, TensorDigest


def manifest_of(
    artifact: Artifact, progress: Progress | None = None, workers: int | None = None
) -> Manifest:
    """Digest every file and every tensor of an open artifact, on all cores."""
    # Files and tensors are both hashed, so the work reads tensor bytes twice; the bar
    # counts in the model's own size.
    model_bytes = sum(f.size for f in artifact.files)
    work = model_bytes + artifact.total_tensor_bytes
    progress = ScaledProgress(progress or NoProgress(), model_bytes, work)
    progress.start(work, "hashing")
    jobs: list[tuple[int, Callable[[], FileDigest | TensorDigest]]] = []
    for f in artifact.files:
        jobs.append(
            (f.size, lambda f=f: FileDigest(f.relpath, f.size, file_sha256(f.path, progress)))
        )
    for info in artifact.tensors.values():
        jobs.append(
            (
                info.nbytes,
                lambda info=info: TensorDigest(
                    info.name,
                    info.dtype.name,
                    info.shape,
                    tensor_digest(artifact, info.name, progress),
                    info.file,
                ),
            )
        )
    results = run_parallel(jobs, workers)
    progress.finish()
    return Manifest(
        format=artifact.format,
        files=tuple(r for r in results if isinstance(r, FileDigest)),
        tensors=tuple(r for r in results if isinstance(r, TensorDigest)),
    )


def build_manifest(
    path: str | Path, progress: Progress | None = None, workers: int | None = None
) -> Manifest:
    """Open ``path`` and return its manifest."""
    with open_artifact(path) as artifact:
        return manifest_of(artifact, progress, workers)
