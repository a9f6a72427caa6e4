"""What the jobs trust, read once on the machine that submits the batch.

Rules packs and trusted public keys are small configuration the person running the
batch controls; they are loaded and validated here, before any job runs, and shipped to
the workers with each job. Artifacts and their evidence (models, signature bundles,
manifests) are read by the workers, where the data is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanner import __version__
from scanner.batch.jobs import Job
from scanner.errors import UsageError
from signing.errors import ModelsealError


@dataclass(frozen=True)
class Trust:
    packs: Mapping[str, Any]
    """``rules`` value of a job -> the loaded :class:`scanner.policy.Pack`."""
    public_keys: Mapping[str, bytes]
    """``public_key`` path of a job -> the key as PEM."""

    def pack_for(self, job: Job) -> Any:
        return self.packs[job.rules] if job.rules is not None else None

    def key_for(self, job: Job) -> bytes | None:
        return self.public_keys[job.public_key] if job.public_key is not None else None


def load_trust(jobs: Sequence[Job]) -> Trust:
    """Load every rules pack and public key the jobs name; a bad one is a one-line
    error naming the first job that uses it."""
    from scanner.policy import load_pack
    from signing.keys import load_public_key, public_pem

    packs: dict[str, Any] = {}
    keys: dict[str, bytes] = {}
    for job in jobs:
        try:
            if job.rules is not None and job.rules not in packs:
                packs[job.rules] = load_pack(job.rules)
            if job.public_key is not None and job.public_key not in keys:
                keys[job.public_key] = public_pem(load_public_key(Path(job.public_key)))
        except ModelsealError as exc:
            raise UsageError(f"{job.source}: {exc}") from None
    return Trust(packs, keys)


def spec_digest(job: Job, trust: Trust) -> str:
    """Digest of what the job asks and whom it trusts (not of its input files): the job's
    fields, the loaded rules pack, the public key and the modelseal version."""
    pack = trust.pack_for(job)
    key = trust.key_for(job)
    body = {
        "modelseal": __version__,
        "spec": job.spec(),
        "pack": hashlib.sha256(repr(pack).encode()).hexdigest() if pack is not None else None,
        "public_key": hashlib.sha256(key).hexdigest() if key is not None else None,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
