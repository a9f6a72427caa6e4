"""The OpenSSF model signing (OMS) v1.0 "files" and "shards" serializations,
byte-compatible with ``model-signing`` 1.1.x.

OMS digests each file with sha256, names it by its POSIX path relative to the model
root, orders the resources by path *components* (``a/b`` sorts before ``a-c``, which
plain string order would get wrong) and defines the root digest as sha256 over the
concatenated raw digests in that order. Anything that differs here breaks interop, so
this module follows the reference behaviour rule for rule: the same git paths ignored by
default, the same prefix-by-component ignore matching, symlinks refused unless allowed,
and the ignore list recorded in the signed predicate (verifiers must apply it too).

The "shards" method (opt-in) splits every file into byte ranges of ``shard_size`` and
digests each range, so one large file hashes on every core. Resources are named
``PATH:START:END`` and ordered by (path components, start, end). One deliberate
difference: the reference leaves zero-length files out of a shard manifest, so adding
or deleting an empty file goes unnoticed; modelseal records an empty file as
``PATH:0:0`` and, when verifying, requires every file present to be covered.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from signing._hashing import ByteRange, hash_files, hash_ranges
from signing.errors import ModelsealError, SigningError, VerificationError

IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
OMS_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
OMS_LEGACY_PREDICATE_TYPE = "https://model_signing/Digests/v0.1"
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
"""Ignored by default, as ``model_signing`` does (``--no-ignore-git-paths`` turns it off)."""
EXTENSION_KEY = "modelseal"
"""Predicate field for modelseal's extras; OMS v1.0 verifiers ignore unknown fields."""
SHARD_ALGORITHM_PREFIX = "sha256-sharded-"
"""Shard resources name their algorithm ``sha256-sharded-<shard_size>``, as the reference."""
EMPTY_FILE_NOTE = (
    "an empty file the signature does not cover: added after signing, or the signature "
    "was made by model_signing 1.1, whose shard signatures do not cover empty files"
)
_SHARD_NAME = re.compile(r"(.+):(0|[1-9][0-9]*):(0|[1-9][0-9]*)", re.DOTALL)


class ModelPathError(ModelsealError):
    """The model path cannot be serialized (missing, special file, refused symlink)."""


@dataclass(frozen=True)
class Resource:
    """One hashed file: its OMS name (POSIX path relative to the model root) and digest."""

    name: str
    digest: str
    """Lower-case hex digest."""
    algorithm: str = "sha256"

    @property
    def sort_key(self) -> tuple[str, ...]:
        # OMS orders by pathlib.PurePosixPath, which compares path components.
        return PurePosixPath(self.name).parts


@dataclass(frozen=True)
class Shard:
    """Bytes ``[start, end)`` of one file, named ``PATH:START:END`` in a shard manifest."""

    path: str
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"{self.path}:{self.start}:{self.end}"

    @property
    def sort_key(self) -> tuple[tuple[str, ...], int, int]:
        # The reference orders shards as (PurePosixPath, start, end): offsets by number,
        # so 'w:2048:3072' comes before 'w:10240:11264'.
        return PurePosixPath(self.path).parts, self.start, self.end

    @classmethod
    def parse(cls, name: str) -> Shard:
        """The shard a resource name stands for; the path may itself contain ``:``."""
        # Offsets must be written canonically (no sign, no leading zero): otherwise two
        # names could stand for the same bytes and one of them would go unchecked.
        match = _SHARD_NAME.fullmatch(name)
        if match is None:
            raise VerificationError(f"OMS shard resource name {name!r} is not PATH:START:END")
        start, end = int(match[2]), int(match[3])
        if end <= start and (start, end) != (0, 0):
            raise VerificationError(f"OMS shard resource {name!r} has an empty or reversed range")
        return cls(match[1], start, end)


def shard_ranges(size: int, shard_size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` shards of a file of ``size`` bytes (the last one shorter).

    An empty file is one shard ``(0, 0)``: the reference records no shard at all, which
    would leave adding or deleting an empty file unnoticed.
    """
    if size == 0:
        return [(0, 0)]
    return [(start, min(start + shard_size, size)) for start in range(0, size, shard_size)]


@dataclass(frozen=True)
class Discrepancy:
    """One way in which a model differs from what was signed."""

    kind: str
    """``modified``, ``added``, ``missing`` or ``tensor-modified``/``tensor-added``/..."""
    name: str
    expected: str = ""
    actual: str = ""
    byte_range: tuple[int, int] | None = None
    """Shard signatures: the bytes ``[start, end)`` of file ``name`` that differ."""
    note: str = ""
    """Replaces the default explanation in parentheses."""

    def describe(self) -> str:
        """A short human sentence, e.g. ``file 'a.bin' modified (sha256 12ab.. != 34cd..)``
        or ``file 'a.bin' bytes 0-1024 modified (...)``."""
        what = "tensor" if self.kind.startswith("tensor-") else "file"
        verb = self.kind.removeprefix("tensor-")
        where = f" bytes {self.byte_range[0]}-{self.byte_range[1]}" if self.byte_range else ""
        text = f"{what} '{self.name}'{where} {verb}"
        if self.note:
            text += f" ({self.note})"
        elif verb == "modified" and self.expected and self.actual:
            text += f" (signed {self.expected[:12]}.., now {self.actual[:12]}..)"
        elif verb == "added":
            text += " (not in the signature)"
        elif verb == "missing":
            text += " (signed but not found)"
        return text


@dataclass(frozen=True)
class OmsManifest:
    """The OMS view of a model: named file (or file shard) digests plus how they were
    serialized."""

    model_name: str
    resources: tuple[Resource, ...]
    hash_type: str = "sha256"
    allow_symlinks: bool = False
    ignore_paths: tuple[str, ...] = ()
    extensions: Mapping[str, Any] = field(default_factory=dict, compare=False)
    shard_size: int | None = None
    """``None`` for the "files" method; the shard size in bytes for "shards"."""

    def __post_init__(self) -> None:
        if self.shard_size is not None:
            _check_shard_size(self.shard_size)
        # Canonical order regardless of which worker finished first.
        object.__setattr__(self, "resources", tuple(sorted(self.resources, key=self._sort_key)))
        names = [r.name for r in self.resources]
        if len(set(names)) != len(names):
            raise VerificationError("OMS manifest lists the same resource twice")

    def _sort_key(self, resource: Resource) -> tuple[Any, ...]:
        if self.shard_size is None:
            return resource.sort_key
        return Shard.parse(resource.name).sort_key

    @property
    def method(self) -> str:
        """The OMS serialization method: ``files`` or ``shards``."""
        return "files" if self.shard_size is None else "shards"

    def shards(self) -> tuple[tuple[Shard, Resource], ...]:
        """Each resource of a shard manifest with the shard it names, in canonical order."""
        if self.shard_size is None:
            raise ValueError("a files manifest has no shards")
        return tuple((Shard.parse(r.name), r) for r in self.resources)

    def files(self) -> tuple[str, ...]:
        """The files covered, once each, in canonical order (``.`` for a single file)."""
        if self.shard_size is None:
            return tuple(r.name for r in self.resources)
        return tuple(dict.fromkeys(shard.path for shard, _ in self.shards()))

    @property
    def root_digest(self) -> str:
        """Hex sha256 over the raw resource digests in canonical order (the OMS subject)."""
        hasher = hashlib.sha256()
        for resource in self.resources:
            hasher.update(bytes.fromhex(resource.digest))
        return hasher.hexdigest()

    def digests(self) -> dict[str, str]:
        """Resource name to ``algorithm:hex``, for comparisons."""
        return {r.name: f"{r.algorithm}:{r.digest}" for r in self.resources}

    def serialization(self) -> dict[str, Any]:
        """The ``serialization`` block of the predicate."""
        body: dict[str, Any] = {"method": self.method, "hash_type": self.hash_type}
        if self.shard_size is not None:
            body["shard_size"] = self.shard_size
        body["allow_symlinks"] = self.allow_symlinks
        if self.ignore_paths:
            body["ignore_paths"] = list(self.ignore_paths)
        return body

    def to_statement(self) -> dict[str, Any]:
        """The in-toto Statement v1 that OMS signs."""
        predicate: dict[str, Any] = {
            "serialization": self.serialization(),
            "resources": [
                {"name": r.name, "algorithm": r.algorithm, "digest": r.digest}
                for r in self.resources
            ],
        }
        if self.extensions:
            predicate[EXTENSION_KEY] = dict(self.extensions)
        return {
            "_type": IN_TOTO_STATEMENT_TYPE,
            "subject": [{"name": self.model_name, "digest": {"sha256": self.root_digest}}],
            "predicateType": OMS_PREDICATE_TYPE,
            "predicate": predicate,
        }

    def to_payload(self) -> bytes:
        """Statement bytes as signed (2-space indented JSON, like the reference tool)."""
        return json.dumps(self.to_statement(), indent=2).encode()

    @classmethod
    def from_statement(cls, statement: Mapping[str, Any]) -> OmsManifest:
        """Parse and check a signed OMS statement (root digest must match its resources)."""
        try:
            if statement.get("_type") != IN_TOTO_STATEMENT_TYPE:
                raise VerificationError(
                    f"signed payload is not an in-toto Statement v1 (_type "
                    f"{statement.get('_type')!r})"
                )
            ptype = statement.get("predicateType")
            if ptype == OMS_LEGACY_PREDICATE_TYPE:
                raise VerificationError(
                    "signature uses the pre-1.0 OMS predicate (Digests/v0.1), which modelseal "
                    "does not accept; re-sign the model with a current signer"
                )
            if ptype != OMS_PREDICATE_TYPE:
                raise VerificationError(
                    f"signed statement has predicateType {ptype!r}, expected "
                    f"{OMS_PREDICATE_TYPE!r} (is this a modelseal attestation? use verify-chain)"
                )
            subjects = statement["subject"]
            if len(subjects) != 1:
                raise VerificationError(
                    f"OMS statement must have exactly one subject, found {len(subjects)}"
                )
            predicate = statement["predicate"]
            ser = predicate["serialization"]
            shard_size = _statement_shard_size(ser)
            if ser.get("hash_type") != "sha256":
                raise VerificationError(
                    f"OMS hash type {ser.get('hash_type')!r} is not supported; re-sign with sha256"
                )
            resources = tuple(
                Resource(
                    name=str(r["name"]),
                    digest=str(r["digest"]).lower(),
                    algorithm=str(r["algorithm"]),
                )
                for r in predicate["resources"]
            )
            if shard_size is not None:
                _check_shard_algorithms(resources, shard_size)
            manifest = cls(
                model_name=str(subjects[0].get("name", "")),
                resources=resources,
                hash_type="sha256",
                allow_symlinks=bool(ser.get("allow_symlinks", False)),
                ignore_paths=tuple(str(p) for p in ser.get("ignore_paths", ())),
                extensions=dict(predicate.get(EXTENSION_KEY) or {}),
                shard_size=shard_size,
            )
            claimed = str(subjects[0]["digest"]["sha256"]).lower()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VerificationError(f"signed OMS statement is malformed: {exc!r}") from None
        if claimed != manifest.root_digest:
            raise VerificationError(
                f"signed statement is inconsistent: subject digest {claimed} does not match "
                f"its resources ({manifest.root_digest})"
            )
        return manifest


def _is_shard_size(value: object) -> bool:
    # bool is an int subclass, and True is no size.
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_shard_size(shard_size: object) -> None:
    if not _is_shard_size(shard_size):
        raise VerificationError(f"OMS shard size {shard_size!r} is not a positive integer")


def _statement_shard_size(serialization: Mapping[str, Any]) -> int | None:
    """``None`` for the files method, the shard size for the shards method."""
    method = serialization.get("method")
    if method == "files":
        return None
    if method != "shards":
        raise VerificationError(
            f"OMS serialization method {method!r} is not supported (modelseal verifies "
            "the 'files' and 'shards' methods); re-sign with one of them"
        )
    value = serialization.get("shard_size")
    # The reference writes its payload through a protobuf Struct, where every number is
    # a double: 1024 arrives as 1024.0.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    _check_shard_size(value)
    return int(value)


def _check_shard_algorithms(resources: Sequence[Resource], shard_size: int) -> None:
    expected = f"{SHARD_ALGORITHM_PREFIX}{shard_size}"
    for resource in resources:
        if resource.algorithm != expected:
            raise VerificationError(
                f"OMS shard resource {resource.name!r} uses algorithm "
                f"{resource.algorithm!r}, expected {expected!r}"
            )


def normalize_ignore_paths(paths: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    """Model-relative ignore paths in normal POSIX form; ones outside the model are
    dropped, as the reference tool does."""
    out: set[str] = set()
    for raw in paths:
        text = Path(raw).as_posix()
        if posixpath.isabs(text):
            continue
        norm = posixpath.normpath(text)
        if norm == ".." or norm.startswith("../"):
            continue
        if norm == ".":
            raise SigningError("an ignore path covers the whole model; list files inside it")
        out.add(norm)
    return tuple(sorted(out))


def resolve_cli_ignore_paths(
    model_path: Path, paths: Iterable[str | os.PathLike[str]], cwd: Path | None = None
) -> tuple[str, ...]:
    """Turn command-line ignore paths (relative to the working directory, like
    ``model_signing``'s CLI) into model-relative paths; paths outside the model are dropped."""
    root = model_path.resolve()
    base = cwd or Path.cwd()
    out = []
    for raw in paths:
        p = Path(raw)
        candidate = (p if p.is_absolute() else base / p).resolve()
        try:
            out.append(candidate.relative_to(root).as_posix())
        except ValueError:
            continue
    return tuple(out)


def model_name_of(model_path: Path) -> str:
    """The subject name OMS uses: the last path component."""
    name = model_path.name
    if not name or name == "..":
        name = os.path.basename(model_path.resolve())
    return name


def list_model_files(
    model_path: Path, ignore_paths: Sequence[str], allow_symlinks: bool = False
) -> list[tuple[str, Path]]:
    """(OMS name, path) of every file to hash, after the OMS ignore rules."""
    _check_entry(model_path, allow_symlinks)
    if model_path.is_file():
        # A single-file model: OMS names its one resource ".".
        return [(".", model_path)]
    ignored = [PurePosixPath(p).parts for p in ignore_paths]
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(model_path, followlinks=False):
        base = Path(dirpath)
        # Directory symlinks are listed in dirnames; OMS checks (and then skips) them.
        for name in sorted(dirnames):
            _check_entry(base / name, allow_symlinks)
        for name in sorted(filenames):
            path = base / name
            _check_entry(path, allow_symlinks)
            if not path.is_file():
                continue
            rel = path.relative_to(model_path).as_posix()
            parts = PurePosixPath(rel).parts
            if any(parts[: len(ig)] == ig for ig in ignored):
                continue
            found.append((rel, path))
    return found


def _check_entry(path: Path, allow_symlinks: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ModelPathError(f"model path not found: {path}") from None
    if stat.S_ISLNK(st.st_mode):
        if not allow_symlinks:
            raise ModelPathError(
                f"'{path}' is a symbolic link; refusing to follow it (pass --allow-symlinks "
                "if the link is intended)"
            )
        if not (path.is_file() or path.is_dir()):
            raise ModelPathError(f"'{path}' is a broken symbolic link")
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ModelPathError(f"'{path}' is neither a regular file nor a directory")


def hash_model(
    model_path: Path,
    *,
    ignore_paths: Iterable[str | os.PathLike[str]] = (),
    ignore_git_paths: bool = True,
    allow_symlinks: bool = False,
    workers: int | None = None,
    extensions: Mapping[str, Any] | None = None,
    progress: Any = None,
    shard_size: int | None = None,
) -> OmsManifest:
    """Hash a model directory (or file) exactly as ``model_signing`` does, on all cores.

    ``ignore_paths`` are relative to the model root; the git paths are added unless
    ``ignore_git_paths`` is false. The effective ignore list is recorded in the result.
    ``shard_size`` selects the "shards" method (ranges of that many bytes hashed in
    parallel, so one large file uses every core); ``None`` the "files" method.
    """
    if shard_size is not None and not _is_shard_size(shard_size):
        raise SigningError(f"shard size must be a positive number of bytes, not {shard_size!r}")
    model_path = Path(model_path)
    ignore = set(normalize_ignore_paths(ignore_paths))
    if ignore_git_paths:
        ignore.update(GIT_PATHS)
    recorded = tuple(sorted(ignore))
    entries = list_model_files(model_path, recorded, allow_symlinks)
    if shard_size is None:
        resources = _hash_whole_files(entries, workers, progress)
    else:
        resources = _hash_shards(entries, shard_size, workers, progress)
    return OmsManifest(
        model_name=model_name_of(model_path),
        resources=resources,
        allow_symlinks=allow_symlinks,
        ignore_paths=recorded,
        extensions=dict(extensions or {}),
        shard_size=shard_size,
    )


def _hash_whole_files(
    entries: Sequence[tuple[str, Path]], workers: int | None, progress: Any
) -> tuple[Resource, ...]:
    digests = hash_files([p for _, p in entries], workers=workers, progress=progress)
    return tuple(Resource(name, d) for (name, _), d in zip(entries, digests, strict=True))


def _hash_shards(
    entries: Sequence[tuple[str, Path]], shard_size: int, workers: int | None, progress: Any
) -> tuple[Resource, ...]:
    shards = [
        Shard(name, start, end)
        for name, path in entries
        for start, end in shard_ranges(os.stat(path).st_size, shard_size)
    ]
    paths = dict(entries)
    ranges = [ByteRange(paths[s.path], s.start, s.end) for s in shards]
    digests = hash_ranges(ranges, workers=workers, progress=progress)
    algorithm = f"{SHARD_ALGORITHM_PREFIX}{shard_size}"
    return tuple(Resource(s.name, d, algorithm) for s, d in zip(shards, digests, strict=True))


def compare(expected: OmsManifest, actual: OmsManifest) -> tuple[Discrepancy, ...]:
    """Every file (or, for shard manifests, byte range of a file) that is modified, added
    or missing in ``actual``; empty when equal. Both must use the same serialization."""
    if expected.shard_size != actual.shard_size:
        raise VerificationError(
            f"cannot compare a {expected.method} manifest with a {actual.method} manifest "
            "(or shard sizes differ): hash the model the way the signature did"
        )
    if expected.shard_size is not None:
        return _compare_shards(expected, actual)
    return _compare_files(expected, actual)


def _compare_files(expected: OmsManifest, actual: OmsManifest) -> tuple[Discrepancy, ...]:
    want, have = expected.digests(), actual.digests()
    out: list[Discrepancy] = []
    for name in sorted(set(want) | set(have), key=lambda n: PurePosixPath(n).parts):
        if name not in have:
            out.append(Discrepancy("missing", name, expected=want[name]))
        elif name not in want:
            out.append(Discrepancy("added", name, actual=have[name]))
        elif want[name] != have[name]:
            out.append(
                Discrepancy(
                    "modified",
                    name,
                    expected=want[name].split(":", 1)[1],
                    actual=have[name].split(":", 1)[1],
                )
            )
    return tuple(out)


def _by_file(manifest: OmsManifest) -> dict[str, dict[tuple[int, int], str]]:
    """File path to its shards' ``(start, end)`` and ``algorithm:hex`` digest."""
    out: dict[str, dict[tuple[int, int], str]] = {}
    for shard, resource in manifest.shards():
        out.setdefault(shard.path, {})[shard.start, shard.end] = (
            f"{resource.algorithm}:{resource.digest}"
        )
    return out


def _compare_shards(expected: OmsManifest, actual: OmsManifest) -> tuple[Discrepancy, ...]:
    want, have = _by_file(expected), _by_file(actual)
    # A signature that records an empty file was not made by model_signing 1.1, so an
    # uncovered empty file can only have been added; otherwise say both possibilities.
    records_empty = any(set(spans) == {(0, 0)} for spans in want.values())
    out: list[Discrepancy] = []
    for path in sorted(set(want) | set(have), key=lambda p: PurePosixPath(p).parts):
        if path not in have:
            out.append(Discrepancy("missing", path))
        elif path not in want:
            empty = set(have[path]) == {(0, 0)}
            note = EMPTY_FILE_NOTE if empty and not records_empty else ""
            out.append(Discrepancy("added", path, note=note))
        else:
            out.extend(_compare_file_shards(path, want[path], have[path]))
    return tuple(out)


def _compare_file_shards(
    path: str, want: Mapping[tuple[int, int], str], have: Mapping[tuple[int, int], str]
) -> list[Discrepancy]:
    out: list[Discrepancy] = []
    signed_size, size = max(e for _, e in want), max(e for _, e in have)
    if signed_size != size:
        # One sentence for a resized file rather than every shard past the change.
        note = f"signed {signed_size} bytes, now {size}"
        out.append(Discrepancy("modified", path, note=note))
    for span in sorted(set(want) | set(have)):
        if span in want and span in have:
            if want[span] != have[span]:
                out.append(
                    Discrepancy(
                        "modified",
                        path,
                        expected=want[span].split(":", 1)[1],
                        actual=have[span].split(":", 1)[1],
                        byte_range=span,
                    )
                )
        elif signed_size == size:
            # Same length but other ranges: a manifest that does not tile the file.
            kind = "missing" if span in want else "added"
            out.append(Discrepancy(kind, path, byte_range=span))
    return out
