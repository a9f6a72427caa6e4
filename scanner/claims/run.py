"""Dispatch a parsed claim to its checker, and infer the likely transformation of a pair."""

from __future__ import annotations

from collections.abc import Sequence

from scanner.artifact import Artifact
from scanner.claims.base import ClaimOutcome
from scanner.claims.grammar import Claim, parse_claim
from scanner.diff.model import TensorDiff, TensorStatus


def run_claim(
    claim: Claim, trusted: Artifact, deployed: Artifact, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    """Re-derive ``claim`` on one pair of open artifacts."""
    if claim.kind == "cast":
        from scanner.claims.cast import check_cast

        return check_cast(trusted, deployed, claim, diffs)
    if claim.kind == "quantize":
        from scanner.claims.int8 import check_quantize

        return check_quantize(trusted, deployed, claim)
    if claim.kind in ("gguf", "requantize"):
        from scanner.claims.gguf_quant import check_gguf

        return check_gguf(trusted, deployed, claim)
    if claim.kind == "prune":
        from scanner.claims.prune import check_prune

        return check_prune(trusted, deployed, claim, diffs)
    from scanner.claims.convert import check_convert

    return check_convert(trusted, deployed, claim, diffs)


def candidate_claims(
    trusted: Artifact, deployed: Artifact, diffs: Sequence[TensorDiff]
) -> list[str]:
    """Claims worth trying on a pair nobody described, most specific first.

    Driven by what the pair shows: integer tensors with stored scales suggest int8
    quantization (round-to-nearest first, then a one-step search algorithm); ggml block
    types suggest GGUF quantization of their type; many new exact zeros with unchanged
    kept weights suggest pruning; a container change suggests conversion.
    """
    from scanner.claims.layouts import find_groups

    out: list[str] = []
    if find_groups(deployed):
        out += ["quantize", "quantize:algorithm=gptq"]
    t_block = any(i.dtype.is_block_quantized for i in trusted.tensors.values())
    d_types = sorted(
        {i.dtype.name for i in deployed.tensors.values() if i.dtype.is_block_quantized}
    )
    for q in d_types:
        name = q.lower()
        if t_block:
            out.append(f"requantize:{name}")
        else:
            out += [f"gguf:{name}"] if not name.endswith("_k") else [f"gguf:{name}:search"]
            if not name.endswith("_k"):
                out.append(f"gguf:{name}:search")
    changed = [t for t in diffs if t.status is TensorStatus.CHANGED]
    if changed:
        out += [
            "prune:2:4",
            "prune:magnitude",
            "prune:magnitude:per-row",
            "prune:channel",
            "prune:sparsegpt",
        ]
    if trusted.format != deployed.format or any(
        t.status in (TensorStatus.RENAMED, TensorStatus.REMOVED) for t in diffs
    ):
        out.append("convert")
    return out


def infer(
    trusted: Artifact, deployed: Artifact, diffs: Sequence[TensorDiff]
) -> tuple[list[ClaimOutcome], list[ClaimOutcome]]:
    """Try candidate claims; returns every attempt and, per family, the first that holds.

    Families: int8 quantization, each ggml type, pruning, conversion. Quantization and
    pruning candidates are only tried when the pair shows their footprint.
    """
    tried: list[ClaimOutcome] = []
    held: dict[str, ClaimOutcome] = {}
    pruned = None
    for text in candidate_claims(trusted, deployed, diffs):
        claim = parse_claim(text)
        family = claim.kind + ":" + (claim.param("type") or "")
        if family in held:
            continue
        if claim.kind == "prune":
            if pruned is None:
                pruned = _looks_pruned(trusted, deployed, diffs)
            if not pruned:
                continue
        outcome = run_claim(claim, trusted, deployed, diffs)
        tried.append(outcome)
        if outcome.holds and outcome.verdicts:
            held[family] = outcome
        elif claim.kind == "convert" and trusted.format != deployed.format and outcome.verdicts:
            # A container change is a conversion whatever else happened: what does not
            # carry over is reported against it, tensor by tensor and row by row.
            held[family] = outcome
    return tried, list(held.values())


def _looks_pruned(trusted: Artifact, deployed: Artifact, diffs: Sequence[TensorDiff]) -> bool:
    """Most changed float tensors gained exact zeros."""
    import numpy as np

    changed = [
        t
        for t in diffs
        if t.status is TensorStatus.CHANGED and t.trusted_dtype in ("F32", "F16", "BF16", "F64")
    ]
    if not changed:
        return False
    hits = 0
    for t in changed:
        w = trusted.to_float(t.name)
        d = deployed.to_float(t.deployed_name or t.name)
        if np.count_nonzero((d == 0) & (w != 0)) >= 0.5 * max(np.count_nonzero(d != w), 1):
            hits += 1
    return hits * 2 > len(changed)
