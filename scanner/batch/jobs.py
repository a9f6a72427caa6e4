"""Batch jobs: the JSONL job file, the folder-of-models convention, strict validation.

A job file holds one JSON object per line (blank lines are skipped)::

    {"id": "bert-int8", "kind": "diff", "trusted": "bert/", "deployed": "bert-int8/",
     "claims": ["quantize:int8:per-channel"]}

Relative paths are relative to the job file's folder. Every problem is reported as one
line naming the file and line (``jobs.jsonl:7: ...``) before any job runs. The folder
convention: every subfolder of the folder is one model to verify, holding a trusted
manifest (:data:`MANIFEST_NAME`), a signature bundle (:data:`SIGNATURE_NAME`), or both.
docs/batch.md is the reference for both forms.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from scanner.errors import UsageError
from scanner.findings import Severity

JOB_KINDS = ("diff", "scan", "verify")
MANIFEST_NAME = "modelseal.manifest.json"
"""In a folder of models: the trusted manifest of the model folder it lies in."""
SIGNATURE_NAME = "model.sig"
"""In a folder of models: the signature bundle of the model folder it lies in."""

PATH_FIELDS = ("trusted", "deployed", "signature", "public_key", "manifest")
COMMON_FIELDS = ("id", "kind", "rules", "fail_on")
KIND_FIELDS: Mapping[str, tuple[str, ...]] = {
    "diff": ("trusted", "deployed", "claims", "allow"),
    "scan": ("deployed",),
    "verify": ("deployed", "signature", "public_key", "manifest"),
}
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "diff": ("trusted", "deployed"),
    "scan": ("deployed",),
    "verify": ("deployed",),
}
ALL_FIELDS = frozenset(COMMON_FIELDS).union(*KIND_FIELDS.values())
MAX_LINE_BYTES = 1 << 20
MAX_ID_CHARS = 200


@dataclass(frozen=True)
class Job:
    """One check to run. Paths are absolute strings, so a job is plain data that any
    worker (a local process or a Ray actor) can receive."""

    id: str
    kind: str
    deployed: str
    source: str = ""
    """Where the job was defined: ``jobs.jsonl:3`` or the model folder."""
    trusted: str | None = None
    claims: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    rules: str | None = None
    fail_on: str | None = None
    signature: str | None = None
    public_key: str | None = None
    manifest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        values = dict(data)
        values["claims"] = tuple(values.get("claims", ()))
        values["allow"] = tuple(values.get("allow", ()))
        return cls(**values)

    def spec(self) -> dict[str, Any]:
        """What the job asks for: every field but its id and where it was written."""
        return {"kind": self.kind, **self.inputs()}

    def inputs(self) -> dict[str, Any]:
        """The fields that are set, as a result line records them."""
        out: dict[str, Any] = {}
        for name in ("trusted", "deployed", "signature", "public_key", "manifest"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.claims:
            out["claims"] = list(self.claims)
        if self.allow:
            out["allow"] = list(self.allow)
        if self.rules is not None:
            out["rules"] = self.rules
        if self.fail_on is not None:
            out["fail_on"] = self.fail_on
        return out


@dataclass(frozen=True)
class JobDefaults:
    """Command-line values that apply to every job that does not set its own."""

    rules: str | None = None
    fail_on: str | None = None
    public_key: str | None = None


def load_jobs(path: Path, defaults: JobDefaults | None = None) -> list[Job]:
    """Jobs from a JSONL job file, or from a folder of models (one verify job each)."""
    defaults = defaults or JobDefaults()
    try:
        is_dir = path.is_dir()
    except OSError as exc:
        raise UsageError(f"cannot read jobs {path}: {exc.strerror}") from None
    jobs = jobs_from_folder(path, defaults) if is_dir else read_job_file(path, defaults)
    if not jobs:
        raise UsageError(f"{path}: no jobs")
    return jobs


def read_job_file(path: Path, defaults: JobDefaults) -> list[Job]:
    base = path.absolute().parent
    jobs: list[Job] = []
    first_line: dict[str, int] = {}
    for number, raw in _lines(path):
        where = f"{path}:{number}"
        if not raw.strip():
            continue
        job = _parse_line(raw, where, base, defaults)
        if job.id in first_line:
            raise UsageError(
                f"{where}: duplicate id {job.id!r} (first on line {first_line[job.id]})"
            )
        first_line[job.id] = number
        jobs.append(job)
    return jobs


def jobs_from_folder(root: Path, defaults: JobDefaults) -> list[Job]:
    """One verify job per subfolder of ``root`` (hidden ones skipped); files in ``root``
    itself are not models and are ignored."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise UsageError(f"cannot list {root}: {exc.strerror}") from None
    jobs = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        folder = Path(entry.path).absolute()
        manifest = folder / MANIFEST_NAME
        signature = folder / SIGNATURE_NAME
        has_manifest, has_signature = manifest.is_file(), signature.is_file()
        if not has_manifest and not has_signature:
            raise UsageError(
                f"{folder}: holds neither {MANIFEST_NAME} nor {SIGNATURE_NAME}; every model "
                "folder needs its trusted manifest or signature (docs/batch.md)"
            )
        if has_signature and defaults.public_key is None:
            raise UsageError(
                f"{folder}: {SIGNATURE_NAME} needs a trusted signer: pass --public-key PUB.pem"
            )
        jobs.append(
            Job(
                id=entry.name,
                kind="verify",
                deployed=str(folder),
                source=str(folder),
                manifest=str(manifest) if has_manifest else None,
                signature=str(signature) if has_signature else None,
                public_key=defaults.public_key if has_signature else None,
                rules=defaults.rules,
                fail_on=defaults.fail_on,
            )
        )
    return jobs


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read jobs {path}: {exc.strerror}") from None
    with handle:
        for number, data in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(data) > MAX_LINE_BYTES:
                raise UsageError(f"{path}:{number}: line longer than {MAX_LINE_BYTES} bytes")
            try:
                yield number, data.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{path}:{number}: not UTF-8 text") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"field {key!r} given twice")
        out[key] = value
    return out


def _parse_line(raw: str, where: str, base: Path, defaults: JobDefaults) -> Job:
    try:
        data = json.loads(raw, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: a job is a JSON object, not {_type(data)}")
    job_id = data.get("id")
    if not isinstance(job_id, str) or not job_id.strip():
        raise UsageError(f"{where}: 'id' must be a non-empty string")
    if len(job_id) > MAX_ID_CHARS or not job_id.isprintable():
        raise UsageError(
            f"{where}: 'id' must be printable text of at most {MAX_ID_CHARS} characters"
        )
    kind = data.get("kind")
    if kind not in JOB_KINDS:
        raise UsageError(f"{where}: 'kind' must be one of {', '.join(JOB_KINDS)}, not {kind!r}")
    allowed = (*COMMON_FIELDS, *KIND_FIELDS[kind])
    for key in data:
        if key not in allowed:
            what = "unknown field" if key not in ALL_FIELDS else f"not a field of a {kind} job:"
            raise UsageError(f"{where}: {what} {key!r} (fields: {', '.join(allowed)})")
    for key in REQUIRED[kind]:
        if key not in data:
            raise UsageError(f"{where}: a {kind} job needs {key!r}")
    values: dict[str, Any] = {"id": job_id, "kind": kind, "source": where}
    for key in PATH_FIELDS:
        if key in data:
            values[key] = _path(data[key], key, where, base)
    for key in ("claims", "allow"):
        if key in data:
            values[key] = _strings(data[key], key, where)
    for claim in values.get("claims", ()):
        _check_claim(claim, where)
    for key in ("rules", "fail_on"):
        if key in data:
            if not isinstance(data[key], str) or not data[key].strip():
                raise UsageError(f"{where}: {key!r} must be a non-empty string")
            values[key] = data[key]
    if "rules" in values and not is_pack_name(values["rules"]):
        values["rules"] = _path(values["rules"], "rules", where, base)
    job = Job(**values)
    job = replace(
        job,
        rules=job.rules if job.rules is not None else defaults.rules,
        fail_on=job.fail_on if job.fail_on is not None else defaults.fail_on,
    )
    if job.fail_on is not None:
        try:
            Severity.parse(job.fail_on)
        except ValueError as exc:
            raise UsageError(f"{where}: 'fail_on': {exc}") from None
    if kind == "verify":
        job = _check_verify(job, where, defaults)
    return job


def _check_verify(job: Job, where: str, defaults: JobDefaults) -> Job:
    if job.signature is None and job.manifest is None:
        raise UsageError(
            f"{where}: a verify job needs 'signature' (with 'public_key') or 'manifest'"
        )
    if job.signature is None:
        if job.public_key is not None:
            raise UsageError(f"{where}: 'public_key' is only used with 'signature'")
        return job
    if job.public_key is None:
        if defaults.public_key is None:
            raise UsageError(
                f"{where}: 'signature' needs 'public_key' (or --public-key on the command line)"
            )
        job = replace(job, public_key=defaults.public_key)
    return job


def _path(value: Any, key: str, where: str, base: Path) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise UsageError(f"{where}: {key!r} must be a non-empty path string")
    if "://" in value:
        raise UsageError(
            f"{where}: {key!r} is a URI ({value.split('://', 1)[0]}://...); object stores are "
            "read through a mount visible to every worker, by path (docs/batch.md)"
        )
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def is_pack_name(rules: str) -> bool:
    """A shipped pack's name (``strict``), as opposed to a path to a pack file."""
    return rules.isidentifier() and not rules.endswith(".toml")


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UsageError(f"{where}: {key!r} must be a list of non-empty strings")
    return tuple(value)


def _check_claim(text: str, where: str) -> None:
    from scanner.claims.grammar import parse_claim

    try:
        parse_claim(text)
    except UsageError as exc:
        raise UsageError(f"{where}: {str(exc).replace('--claim ', 'claim ', 1)}") from None


def _type(value: Any) -> str:
    names = {list: "an array", str: "a string", int: "a number", float: "a number"}
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return names.get(type(value), type(value).__name__)
