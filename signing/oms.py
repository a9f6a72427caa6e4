"""The OpenSSF model signing (OMS) v1.0 file serialization, byte-compatible with
``model-signing`` 1.1.x.

OMS digests each file with sha256, names it by its POSIX path relative to the model
root, orders the resources by path *components* (``a/b`` sorts before ``a-c``, which
plain string order would get wrong) and defines the root digest as sha256 over the
concatenated raw digests in that order. Anything that differs here breaks interop, so
this module follows the reference behaviour rule for rule: the same git paths ignored by
default, the same prefix-by-component ignore matching, symlinks refused unless allowed,
and the ignore list recorded in the signed predicate (verifiers must apply it too).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from signing._hashing import hash_files
from signing.errors import ModelsealError, SigningError, VerificationError

IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
OMS_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
OMS_LEGACY_PREDICATE_TYPE = "https://model_signing/Digests/v0.1"
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
"""Ignored by default, as ``model_signing`` does (``--no-ignore-git-paths`` turns it off)."""
EXTENSION_KEY = "modelseal"
"""Predicate field for modelseal's extras; OMS v1.0 verifiers ignore unknown fields."""


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
class Discrepancy:
    """One way in which a model differs from what was signed."""

    kind: str
    """``modified``, ``added``, ``missing`` or ``tensor-modified``/``tensor-added``/..."""
    name: str
    expected: str = ""
    actual: str = ""

    def describe(self) -> str:
        """A short human sentence, e.g. ``file 'a.bin' modified (sha256 12ab.. != 34cd..)``."""
        what = "tensor" if self.kind.startswith("tensor-") else "file"
        verb = self.kind.removeprefix("tensor-")
        text = f"{what} '{self.name}' {verb}"
        if verb == "modified" and self.expected and self.actual:
            text += f" (signed {self.expected[:12]}.., now {self.actual[:12]}..)"
        elif verb == "added":
            text += " (not in the signature)"
        elif verb == "missing":
            text += " (signed but not found)"
        return text


@dataclass(frozen=True)
class OmsManifest:
    """The OMS view of a model: named file digests plus how they were serialized."""

    model_name: str
    resources: tuple[Resource, ...]
    hash_type: str = "sha256"
    allow_symlinks: bool = False
    ignore_paths: tuple[str, ...] = ()
    extensions: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Canonical order regardless of which worker finished first.
        object.__setattr__(
            self, "resources", tuple(sorted(self.resources, key=lambda r: r.sort_key))
        )
        names = [r.name for r in self.resources]
        if len(set(names)) != len(names):
            raise VerificationError("OMS manifest lists the same resource twice")

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
        body: dict[str, Any] = {
            "method": "files",
            "hash_type": self.hash_type,
            "allow_symlinks": self.allow_symlinks,
        }
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
            if ser.get("method") != "files":
                raise VerificationError(
                    f"OMS serialization method {ser.get('method')!r} is not supported "
                    "(modelseal verifies the 'files' method); re-sign with file serialization"
                )
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
            manifest = cls(
                model_name=str(subjects[0].get("name", "")),
                resources=resources,
                hash_type="sha256",
                allow_symlinks=bool(ser.get("allow_symlinks", False)),
                ignore_paths=tuple(str(p) for p in ser.get("ignore_paths", ())),
                extensions=dict(predicate.get(EXTENSION_KEY) or {}),
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
) -> OmsManifest:
    """Hash a model directory (or file) exactly as ``model_signing`` does, on all cores.

    ``ignore_paths`` are relative to the model root; the git paths are added unless
    ``ignore_git_paths`` is false. The effective ignore list is recorded in the result.
    """
    model_path = Path(model_path)
    ignore = set(normalize_ignore_paths(ignore_paths))
    if ignore_git_paths:
        ignore.update(GIT_PATHS)
    recorded = tuple(sorted(ignore))
    entries = list_model_files(model_path, recorded, allow_symlinks)
    digests = hash_files([p for _, p in entries], workers=workers, progress=progress)
    resources = tuple(Resource(name, d) for (name, _), d in zip(entries, digests, strict=True))
    return OmsManifest(
        model_name=model_name_of(model_path),
        resources=resources,
        allow_symlinks=allow_symlinks,
        ignore_paths=recorded,
        extensions=dict(extensions or {}),
    )


def compare(expected: OmsManifest, actual: OmsManifest) -> tuple[Discrepancy, ...]:
    """Every file that is modified, added or missing in ``actual``; empty when equal."""
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
