"""Open any supported artifact: a single file or a model folder, format chosen by content."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from scanner.artifact import Artifact, FileInfo, TensorInfo
from scanner.errors import (
    ArtifactError,
    MalformedArtifactError,
    ResourceLimitError,
    UnsafePathError,
    UnsupportedFormatError,
)
from scanner.formats.base import DEFAULT_LIMITS, Limits, Reader, read_head
from scanner.formats.gguf_reader import GgufReader
from scanner.formats.onnx_reader import OnnxReader
from scanner.formats.pytorch_reader import PytorchReader
from scanner.formats.safetensors_reader import SafetensorsReader

# Order matters twice: sniffing tries readers in this order (most specific magic first),
# and in a folder holding several formats, tensors come from the first format present.
READERS: list[Reader] = [SafetensorsReader(), GgufReader(), OnnxReader(), PytorchReader()]

SKIPPED_DIRS = {".git", ".hg", ".svn", "__pycache__"}
SUFFIX_FORMATS = {
    ".safetensors": "safetensors",
    ".gguf": "gguf",
    ".onnx": "onnx",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".bin": "pytorch",
    ".ckpt": "pytorch",
}


def register_reader(reader: Reader, *, first: bool = False) -> None:
    """Add a reader (used by optional format modules)."""
    if any(r.format == reader.format for r in READERS):
        return
    READERS.insert(0 if first else len(READERS), reader)


def sniff(path: Path) -> Reader | None:
    head = read_head(path)
    for reader in READERS:
        if reader.sniff(head):
            return reader
    return None


def open_artifact(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> Artifact:
    """Open ``path`` (a model file or a model folder) and validate it fully."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ArtifactError(path, "no such file or folder") from None
    except OSError as exc:
        raise ArtifactError(path, f"cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return _open_folder(path, limits)
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(path, "not a regular file or folder")
    reader = sniff(path) or _by_suffix(path)
    if reader is None:
        raise UnsupportedFormatError(
            path, "content is not a supported model format (safetensors, ONNX, GGUF, PyTorch)"
        )
    return _open_with(reader, path, path.parent, limits)


def _by_suffix(path: Path) -> Reader | None:
    """When content is too damaged to recognize, let the reader the name points to
    explain precisely what is wrong (it still parses by content, and will refuse)."""
    wanted = SUFFIX_FORMATS.get(path.suffix.lower())
    return next((r for r in READERS if r.format == wanted), None)


def _open_with(reader: Reader, path: Path, root: Path, limits: Limits) -> Artifact:
    try:
        return reader.open(path, root, limits)
    except ArtifactError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
        # Library parsers fail in many ways on hostile input; each is a malformed file.
        raise MalformedArtifactError(path, f"cannot parse as {reader.format}: {exc}") from None
    except RecursionError:
        raise ResourceLimitError(path, f"{reader.format} structure nests too deeply") from None
    except MemoryError:
        raise ResourceLimitError(
            path, f"{reader.format} asks for more memory than allowed"
        ) from None


def _walk_files(root: Path, limits: Limits) -> list[tuple[str, Path]]:
    real_root = root.resolve()
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise UnsafePathError(
                    Path(dirpath, d), "symlinked folders are not followed; copy the folder in"
                )
        for name in sorted(filenames):
            full = Path(dirpath, name)
            real = full.resolve()
            if real_root not in real.parents:
                raise UnsafePathError(full, "symlink points outside the model folder")
            if not real.is_file():
                continue
            found.append((full.relative_to(root).as_posix(), real))
            if len(found) > limits.max_files:
                raise ResourceLimitError(root, f"more than {limits.max_files} files in the folder")
    return found


def _open_folder(root: Path, limits: Limits) -> Artifact:
    entries = _walk_files(root, limits)
    if not entries:
        raise ArtifactError(root, "folder is empty")
    parsed: dict[str, Artifact] = {}
    by_format: dict[str, list[str]] = {}
    external: set[Path] = set()
    # ONNX first: its external-data files are raw bytes that must not be sniffed.
    ordered = sorted(entries, key=lambda e: (0 if e[0].endswith(".onnx") else 1, e[0]))
    for rel, real in ordered:
        if real in external:
            continue
        reader = sniff(real)
        if reader is None:
            continue
        art = _open_with(reader, real, real.parent, limits)
        parsed[rel] = art
        by_format.setdefault(reader.format, []).append(rel)
        external.update(f.path for f in art.files[1:])
    if not parsed:
        raise UnsupportedFormatError(root, "folder holds no model file modelseal can read")
    primary = next(r.format for r in READERS if r.format in by_format)
    tensors: dict[str, TensorInfo] = {}
    graph = None
    metadata: dict[str, object] = {"model_files": {}}
    for rel in by_format[primary]:
        art = parsed[rel]
        prefix = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        for name, info in art.tensors.items():
            if name in tensors:
                # Two files define the same tensor: not shards of one model but several
                # models side by side (a working folder).
                found = [r for f in by_format.values() for r in f]
                shown = ", ".join(found[:8]) + (
                    f" and {len(found) - 8} more" if len(found) > 8 else ""
                )
                raise ArtifactError(
                    root,
                    f"the folder holds several models ({shown}): tensor {name!r} is in both "
                    f"{tensors[name].file} and {rel}; give one model file, or a folder that "
                    "holds one model",
                )
            tensors[name] = TensorInfo(
                info.name, info.dtype, info.shape, info.source, prefix + info.file
            )
        graph = graph or art.graph
        metadata["model_files"][rel] = dict(art.metadata)  # type: ignore[index]
    _check_shard_index(root, tensors)
    weight_files = {p for a in parsed.values() for p in (f.path for f in a.files)}
    files = tuple(
        FileInfo(rel, real, os.path.getsize(real), "weights" if real in weight_files else "other")
        for rel, real in entries
    )
    if len(by_format) > 1:
        metadata["also_contains"] = {f: v for f, v in by_format.items() if f != primary}
    for art in parsed.values():
        art.close()
    return Artifact(root, root, primary, files, tensors, graph=graph, metadata=metadata)


def _check_shard_index(root: Path, tensors: dict[str, TensorInfo]) -> None:
    """A sharded checkpoint's index must name exactly the tensors its shards hold."""
    index_path = root / "model.safetensors.index.json"
    if not index_path.is_file():
        return
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError):
        raise MalformedArtifactError(index_path, "index has no valid 'weight_map'") from None
    if not isinstance(weight_map, dict):
        raise MalformedArtifactError(index_path, "'weight_map' is not an object")
    missing = sorted(set(weight_map) - set(tensors))
    extra = sorted(set(tensors) - set(weight_map))
    if missing:
        raise MalformedArtifactError(
            index_path, f"index names tensors no shard holds: {missing[:5]}"
        )
    if extra:
        raise MalformedArtifactError(
            index_path, f"shards hold tensors the index omits: {extra[:5]}"
        )
    for name, shard in weight_map.items():
        if tensors[name].file != shard:
            raise MalformedArtifactError(
                index_path, f"index puts {name!r} in {shard}, but it is in {tensors[name].file}"
            )


__all__ = ["READERS", "Limits", "open_artifact", "register_reader", "sniff"]
