"""``convert``: the same tensors in another container, possibly renamed or transposed.

Tensors pair by name, then by container-independent digest (the diff engine's renames),
then, for the rest, by shape (or transposed shape, as converters store some matrices) and
equal values. Values must be identical; a dtype change needs its own ``cast`` claim.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanner.artifact import Artifact
from scanner.claims.base import ClaimOutcome, TensorVerdict
from scanner.claims.grammar import Claim
from scanner.diff.model import TensorDiff, TensorStatus


def check_convert(
    trusted: Artifact, deployed: Artifact, claim: Claim, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    allow_t = claim.param("transpose", "allow") == "allow"
    verdicts: list[TensorVerdict] = []
    removed = [t for t in diffs if t.status is TensorStatus.REMOVED]
    added = {t.name: t for t in diffs if t.status is TensorStatus.ADDED}
    for t in diffs:
        if t.status is TensorStatus.RENAMED:
            verdicts.append(
                TensorVerdict(
                    t.name,
                    (t.deployed_name or t.name,),
                    True,
                    "conversion",
                    f"{t.name} -> {t.deployed_name}",
                    stats={"renamed_to": t.deployed_name},
                )
            )
    notes: list[str] = []
    for t in removed:
        src = trusted.tensors[t.name]
        match = None
        for name in list(added):
            info = deployed.tensors[name]
            if info.dtype != src.dtype:
                continue
            if info.shape == src.shape:
                perm = None
            elif allow_t and len(src.shape) == 2 and info.shape == src.shape[::-1]:
                perm = (1, 0)
            else:
                continue
            a = trusted.array(t.name)
            b = deployed.array(name)
            if perm is not None:
                a = a.T
            if np.array_equal(
                a.view(np.uint8) if a.dtype.kind == "V" else a,
                b.view(np.uint8) if b.dtype.kind == "V" else b,
            ):
                match = (name, perm)
                break
        if match is None:
            notes.append(f"{t.name}: no deployed tensor holds the same values")
            verdicts.append(
                TensorVerdict(
                    t.name,
                    (),
                    False,
                    "conversion",
                    f"{t.name}: missing after conversion (no tensor with "
                    "the same values, renamed or transposed)",
                    problem="missing",
                )
            )
            continue
        name, perm = match
        del added[name]
        verdicts.append(
            TensorVerdict(
                t.name,
                (name,),
                True,
                "conversion",
                f"{t.name} -> {name}" + (" (transposed)" if perm else ""),
                stats={"renamed_to": name, "transposed": perm is not None},
            )
        )
    for t in diffs:
        if t.status in (TensorStatus.CHANGED, TensorStatus.SHAPE_CHANGED):
            verdicts.append(
                TensorVerdict(
                    t.name,
                    (t.deployed_name or t.name,),
                    False,
                    "conversion",
                    f"{t.name}: values or shape changed; a conversion keeps them",
                    problem="changed",
                )
            )
    transposed = [v.tensor for v in verdicts if v.stats.get("transposed")]
    return ClaimOutcome(
        str(claim),
        tuple(verdicts),
        tuple(notes),
        evidence={"transposed": transposed, "formats": [trusted.format, deployed.format]},
        applicable=True,
    )
