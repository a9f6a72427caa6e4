"""Per-file and per-tensor digest manifests: the statement every signature is about.

The manifest is a value: the scanner computes one from an artifact, signing signs and
verifies statements about it. Entries are kept sorted so the root digest never depends
on the order in which parallel workers finished (docs/digests.md defines every digest).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from signing.errors import ManifestError

MANIFEST_SCHEMA = "modelseal/manifest/v1"


@dataclass(frozen=True, order=True)
class FileDigest:
    path: str
    """POSIX path relative to the artifact root."""
    size: int
    sha256: str
    """Lower-case hex sha256 of the file's bytes."""


@dataclass(frozen=True, order=True)
class TensorDigest:
    name: str
    dtype: str
    shape: tuple[int, ...]
    digest: str
    """``sha256:<hex>`` over the canonical tensor encoding (docs/digests.md)."""
    file: str = ""


@dataclass(frozen=True)
class Manifest:
    format: str
    files: tuple[FileDigest, ...] = ()
    tensors: tuple[TensorDigest, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(sorted(self.files)))
        object.__setattr__(self, "tensors", tuple(sorted(self.tensors)))

    def canonical_body(self) -> dict[str, Any]:
        """What the root digest covers: files and tensors, nothing else."""
        return {
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "tensors": [
                {"digest": t.digest, "dtype": t.dtype, "name": t.name, "shape": list(t.shape)}
                for t in self.tensors
            ],
        }

    @property
    def root_digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of :meth:`canonical_body`."""
        body = json.dumps(
            self.canonical_body(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()

    def file(self, path: str) -> FileDigest | None:
        return next((f for f in self.files if f.path == path), None)

    def tensor(self, name: str) -> TensorDigest | None:
        return next((t for t in self.tensors if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "format": self.format,
            "digest": self.root_digest,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "digest": t.digest,
                    "file": t.file,
                }
                for t in self.tensors
            ],
            "metadata": dict(self.metadata),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        if data.get("schema") != MANIFEST_SCHEMA:
            raise ManifestError(
                f"not a modelseal manifest: schema is {data.get('schema')!r}, "
                f"expected {MANIFEST_SCHEMA!r}"
            )
        try:
            files = _entries(data.get("files", []), _file)
            tensors = _entries(data.get("tensors", []), _tensor)
            manifest = cls(
                format=str(data["format"]),
                files=tuple(files),
                tensors=tuple(tensors),
                metadata=dict(data.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest entry is malformed: {exc}") from None
        claimed = data.get("digest")
        if claimed is not None and claimed != manifest.root_digest:
            raise ManifestError(
                f"manifest root digest {claimed} does not match its entries "
                f"({manifest.root_digest}); the manifest was edited"
            )
        return manifest

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        return cls.from_dict(data)


def _file(e: Mapping[str, Any]) -> FileDigest:
    return FileDigest(path=str(e["path"]), size=int(e["size"]), sha256=str(e["sha256"]))


def _tensor(e: Mapping[str, Any]) -> TensorDigest:
    return TensorDigest(
        name=str(e["name"]),
        dtype=str(e["dtype"]),
        shape=tuple(int(d) for d in e["shape"]),
        digest=str(e["digest"]),
        file=str(e.get("file", "")),
    )


def _entries(items: Iterable[Any], build: Any) -> list[Any]:
    if not isinstance(items, list):
        raise TypeError("expected a list")
    return [build(e) for e in items]
