"""``cast``: every element must equal the trusted value rounded to nearest-even, exactly.

The diff engine already checks casts against rounding (``TensorDiff.cast``); a cast claim
is stricter: "within rounding" is not enough, the one correct rounding is required, and
every element that differs is named.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanner.artifact import Artifact
from scanner.claims.base import MAX_REPORTED, ClaimOutcome, TensorVerdict, Violation
from scanner.claims.grammar import Claim
from scanner.diff.compare import _bits, iter_rows
from scanner.diff.model import TensorDiff, TensorStatus
from scanner.values import numpy_dtype

FLOATS = ("F64", "F32", "F16", "BF16")


def check_cast(
    trusted: Artifact, deployed: Artifact, claim: Claim, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    target = claim.param("target") or ""
    verdicts: list[TensorVerdict] = []
    for t in diffs:
        if t.trusted_dtype not in FLOATS or t.deployed_dtype is None:
            continue
        if t.status in (
            TensorStatus.IDENTICAL,
            TensorStatus.RENAMED,
            TensorStatus.ADDED,
            TensorStatus.REMOVED,
        ):
            continue
        d_name = t.deployed_name or t.name
        if t.status is TensorStatus.SHAPE_CHANGED:
            verdicts.append(
                TensorVerdict(
                    t.name,
                    (d_name,),
                    False,
                    "cast",
                    f"{t.name}: shape changed, a cast keeps shapes",
                    problem="shape",
                )
            )
            continue
        if t.deployed_dtype != target:
            verdicts.append(
                TensorVerdict(
                    t.name,
                    (d_name,),
                    False,
                    "cast",
                    f"{t.name}: values changed while dtype is {t.deployed_dtype}, claim casts "
                    f"to {target}",
                    problem="dtype",
                )
            )
            continue
        verdicts.append(_verify(trusted, t.name, deployed, d_name, target))
    applicable = any(t.deployed_dtype == target and t.trusted_dtype != target for t in diffs)
    return ClaimOutcome(
        str(claim), tuple(verdicts), applicable=applicable, evidence={"target": target}
    )


def _verify(
    trusted: Artifact, name: str, deployed: Artifact, d_name: str, target: str
) -> TensorVerdict:
    it, idp = trusted.tensors[name], deployed.tensors[d_name]
    tnp = numpy_dtype(target)
    n = mismatched = 0
    samples: list[Violation] = []
    rows: set[int] = set()
    for (r0, ca), (_, cb) in zip(iter_rows(trusted, it), iter_rows(deployed, idp), strict=True):
        expected = ca.astype(tnp)
        n += ca.size
        both_nan = np.isnan(expected.astype(np.float32)) & np.isnan(cb.astype(np.float32))
        bad = (_bits(expected) != _bits(cb)) & ~both_nan
        k = int(np.count_nonzero(bad))
        if not k:
            continue
        mismatched += k
        where = np.argwhere(bad)
        rows.update(int(r0 + w[0]) for w in where)
        for w in where[: MAX_REPORTED - len(samples)]:
            ix = tuple(int(v) for v in w)
            idx = _shape_index((r0 + ix[0], *ix[1:]), it.shape)
            samples.append(Violation(idx, float(expected[ix]), float(cb[ix]), float(ca[ix])))
    stats = {"elements": n, "mismatched": mismatched, "from": it.dtype.name, "to": target}
    if mismatched:
        return TensorVerdict(
            name,
            (d_name,),
            False,
            "cast",
            f"{name}: {mismatched:,} of {n:,} elements are not the "
            f"round-to-nearest-even {target} value",
            stats=stats,
            violations=tuple(samples),
            rows=tuple(sorted(rows)),
            problem="rounding",
        )
    return TensorVerdict(
        name,
        (d_name,),
        True,
        "cast",
        f"{name}: {n:,} elements exactly round-to-nearest-even",
        stats=stats,
    )


def _shape_index(ix: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Map an (axis0, axis1, rest) grid index back to the tensor's own index."""
    if len(shape) <= 1:
        return ix[:1] if shape else ()
    if len(shape) == 2:
        return ix[:2]
    return (ix[0], ix[1], *(int(v) for v in np.unravel_index(ix[2], shape[2:])))
