"""Dispatch a parsed claim to its checker, and infer the likely transformation of a pair."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

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
        from scanner.claims.gguf import check_gguf

        return check_gguf(trusted, deployed, claim)
    if claim.kind == "prune":
        from scanner.claims.prune import check_prune

        return check_prune(trusted, deployed, claim, diffs)
    if claim.kind == "merge":
        from scanner.claims.merge import check_merge

        return check_merge(trusted, deployed, claim, diffs)
    if claim.kind == "lora":
        from scanner.claims.lora import check_lora

        return check_lora(trusted, deployed, claim, diffs)
    from scanner.claims.convert import check_convert

    return check_convert(trusted, deployed, claim, diffs)


def candidate_claims(
    trusted: Artifact, deployed: Artifact, diffs: Sequence[TensorDiff]
) -> list[str]:
    """Claims worth trying on a pair nobody described, most specific first.

    Driven by what the pair shows: integer tensors with stored scales, and the vendor
    layouts of bitsandbytes, GPTQ and AWQ, suggest quantization, and only round-to-
    nearest is inferred (a search algorithm's freedom to pick non-nearest codes is
    accepted only when claimed); ggml block types suggest GGUF quantization of their
    type; many new exact zeros with unchanged kept weights suggest pruning (one
    threshold per tensor, per row, over all tensors, N:M, channels); a container change
    suggests conversion.
    """
    from scanner.claims.layouts import find_groups
    from scanner.claims.vendor import vendor_groups

    out: list[str] = []
    if find_groups(deployed) or vendor_groups(deployed):
        out.append("quantize")
    out += _gguf_candidates(trusted, deployed)
    changed = [t for t in diffs if t.status is TensorStatus.CHANGED]
    if changed:
        out += [
            "prune:2:4",
            "prune:magnitude",
            "prune:magnitude:per-row",
            "prune:magnitude:global",
            "prune:channel",
            "prune:sparsegpt",
        ]
    if any(t.status is TensorStatus.SHAPE_CHANGED for t in diffs):
        out.append("prune:channel:remove")
    if trusted.format != deployed.format or any(
        t.status in (TensorStatus.RENAMED, TensorStatus.REMOVED) for t in diffs
    ):
        out.append("convert")
    return out


def _gguf_candidates(trusted: Artifact, deployed: Artifact) -> list[str]:
    """GGUF claims a pair's footprint suggests: the llama.cpp file type the deployed file
    declares (every tensor judged by llama.cpp's per-tensor rules), else each ggml type
    it holds. Always round-to-nearest first; the importance-matrix variant only when the
    file itself records that llama-quantize used one. Never a search algorithm: codes
    within one step of nearest are not explained without a claim that says so."""
    from scanner.claims.gguf.check import declares_imatrix, gguf_metadata
    from scanner.claims.gguf.filetypes import declared_ftype
    from scanner.claims.grammar import GGUF_FILE_TYPES, GGUF_TYPES

    d_types = sorted(
        {i.dtype.name for i in deployed.tensors.values() if i.dtype.is_block_quantized}
    )
    if not d_types:
        return []
    kind = (
        "requantize"
        if any(i.dtype.is_block_quantized for i in trusted.tensors.values())
        else "gguf"
    )
    ftype = (declared_ftype(gguf_metadata(deployed)) or "").lower()
    names = [ftype] if ftype in (*GGUF_FILE_TYPES, *GGUF_TYPES) else []
    names = names or [q.lower() for q in d_types if q.lower() in GGUF_TYPES]
    imatrix = declares_imatrix(deployed)
    out = []
    for name in names:
        out.append(f"{kind}:{name}")
        if imatrix:
            out.append(f"{kind}:{name}:imatrix")
    return out


def infer(
    trusted: Artifact, deployed: Artifact, diffs: Sequence[TensorDiff]
) -> tuple[list[ClaimOutcome], list[ClaimOutcome]]:
    """Try candidate claims; returns every attempt and, per family, the first that holds.

    Families: int8 quantization, each ggml type, pruning, conversion. Quantization and
    pruning candidates are only tried when the pair shows their footprint.

    Quantized layouts are unambiguous footprints: when round-to-nearest, the strictest
    explanation, does not hold for every quantized tensor, its outcome is returned
    anyway, so the tensors that break it are reported and localized (rows, elements)
    instead of falling through as unexplained changes of dtype.
    """
    tried: list[ClaimOutcome] = []
    held: dict[str, ClaimOutcome] = {}
    pruned = None
    for text in candidate_claims(trusted, deployed, diffs):
        claim = parse_claim(text)
        family = claim.kind + ":" + (claim.param("type") or "")
        if family in held:
            continue
        if claim.kind == "prune" and not claim.param("remove"):
            if pruned is None:
                pruned = _looks_pruned(trusted, deployed, diffs)
            if not pruned:
                continue
        outcome = run_claim(claim, trusted, deployed, diffs)
        tried.append(outcome)
        strictest = claim.kind == "quantize" and outcome.applicable
        if outcome.verdicts and (outcome.holds or strictest):
            held[family] = outcome
        elif claim.kind == "convert" and trusted.format != deployed.format and outcome.verdicts:
            # A container change is a conversion whatever else happened: what does not
            # carry over is reported against it, tensor by tensor and row by row.
            held[family] = outcome
    _keep_gguf_majority(tried, held)
    return tried, leave_judged_to_their_claim(list(held.values()))


def leave_judged_to_their_claim(outcomes: list[ClaimOutcome]) -> list[ClaimOutcome]:
    """A conversion next to another transformation (an exporter that also quantized, cast
    or pruned; inferred, or claimed together) does not report again what that
    transformation re-derived: its tensors held there, or failed there with rows and
    codes named, rather than being "missing" or "with no trusted origin" here."""
    others = [o for o in outcomes if not _is_convert(o)]
    if len(others) == len(outcomes) or not others:
        return outcomes
    trusted = {v.tensor for o in others for v in o.verdicts}
    deployed = {d for o in others for v in o.verdicts for d in v.deployed}
    out = []
    for o in outcomes:
        if _is_convert(o):
            keep = tuple(
                v
                for v in o.verdicts
                if v.ok or not (v.tensor in trusted or (v.deployed and set(v.deployed) <= deployed))
            )
            o = replace(o, verdicts=keep)
        out.append(o)
    return out


def _is_convert(o: ClaimOutcome) -> bool:
    return o.claim.split(":", 1)[0] == "convert"


def _keep_gguf_majority(tried: list[ClaimOutcome], held: dict[str, ClaimOutcome]) -> None:
    """A GGUF quantization that re-derives most tensors of the pair is the transformation
    that was applied even when a few tensors break it: keep the best such attempt, so its
    violations are reported where they are (MS402, localized to rows and blocks) instead
    of every quantized tensor showing as an unexplained dtype change."""
    best: dict[str, ClaimOutcome] = {}
    for o in tried:
        claim = parse_claim(o.claim)
        family = claim.kind + ":" + (claim.param("type") or "")
        if claim.kind not in ("gguf", "requantize") or family in held or not o.applicable:
            continue
        ok = sum(v.ok for v in o.verdicts)
        if ok * 2 <= len(o.verdicts):
            continue
        if family not in best or ok > sum(v.ok for v in best[family].verdicts):
            best[family] = o
    held.update(best)


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
        # compared in their storage dtype: no float copies of either tensor
        w = trusted.array(t.name)
        d = deployed.array(t.deployed_name or t.name)
        if w.dtype != d.dtype or w.shape != d.shape:
            w = trusted.to_float(t.name)
            d = deployed.to_float(t.deployed_name or t.name)
        if np.count_nonzero((d == 0) & (w != 0)) >= 0.5 * max(np.count_nonzero(d != w), 1):
            hits += 1
    return hits * 2 > len(changed)
