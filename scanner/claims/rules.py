"""Claimed transformations: re-derive what DEPLOYED should be from TRUSTED and compare.

``--claim KIND[:PARAMS]`` (grammar in ``docs/claims.md``) names a transformation; the
checkers in :mod:`scanner.claims` re-derive it tensor by tensor. Tensors a claim accounts
for are explained (so the unexplained-change analyzer does not report them again);
violations become findings that name the tensor, the rows and the elements. Without a
claim, the most likely transformation is inferred from the pair's footprint and reported;
when it verifies, its tensors count as explained.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from scanner.claims.base import ClaimOutcome, TensorVerdict
from scanner.claims.gap import QUANT_GAP  # noqa: F401  (defines MS409 for the catalogue)
from scanner.claims.grammar import parse_claim
from scanner.claims.run import infer, leave_judged_to_their_claim, run_claim
from scanner.diff.engine import Analysis, Analyzer, PairContext
from scanner.diff.model import TensorStatus
from scanner.findings import Finding, Location, Region, Severity
from scanner.rulebook import define_rule, finding

CLAIM_VERIFIED = define_rule(
    "MS401",
    "claim-verified",
    Severity.INFO,
    "Claimed transformation re-derived",
    checks="Every tensor the claimed transformation (cast, quantize, gguf, requantize, prune, "
    "convert) touches was re-derived from the trusted artifact and matches.",
    why="A signature says who made a claim; re-deriving it shows the claim is true.",
    example="quantize:int8:per-channel:symmetric verified on 36 tensors (codes re-derived "
    "exactly).",
    fix="Nothing; informational.",
    references=("docs/claims.md", "docs/threats.md#unfaithful-transformations"),
)
CODES_MISMATCH = define_rule(
    "MS402",
    "quantized-codes-mismatch",
    Severity.HIGH,
    "Quantized codes contradict the claimed quantization",
    checks="Integer or ggml-block codes of the deployed artifact differ from the codes the "
    "claimed algorithm gives for the trusted weights: for round-to-nearest any code that is "
    "not the nearest one (rounding ties excepted), for search algorithms (GPTQ, AWQ, "
    "k-quant scale search) any code more than one step from nearest or beyond the scheme's "
    "error bound.",
    why="An unfaithful quantization flips a few codes on important weights of an otherwise "
    "faithful artifact; the float model is benign, the deployed one is not. Only "
    "re-deriving the codes catches it.",
    example="`encoder.layer.3.output.dense.weight`: 354 of 1,179,648 codes differ from "
    "round-to-nearest, rows [12, 97, ...]; element (12, 301) expected 127, found -127.",
    fix="Re-quantize from the trusted weights with the claimed tool, or claim the algorithm "
    "actually used (e.g. quantize:int8:gptq).",
    references=("docs/claims.md", "docs/threats.md#unfaithful-transformations"),
)
PARAMS_MISMATCH = define_rule(
    "MS403",
    "quantization-params-mismatch",
    Severity.HIGH,
    "Quantization scales, zero points or layout contradict the claim",
    checks="Stored scales or zero points do not follow from the trusted tensor's range for "
    "the claimed scheme (absmax / 127..128 symmetric, range / 254..256 asymmetric), or the "
    "stored dtype, granularity or scheme is not the claimed one.",
    why="Rescaling one channel's scale changes every weight in it while leaving the codes "
    "plausible.",
    example="`fc.weight_scale`: 1 of 512 channel scales does not follow from the weights "
    "(channel 17).",
    fix="Re-quantize from the trusted weights, or claim the actual scheme.",
    references=("docs/claims.md",),
)
CAST_NOT_RNE = define_rule(
    "MS404",
    "cast-not-exact",
    Severity.HIGH,
    "Claimed cast is not the exact round-to-nearest-even conversion",
    checks="Under a cast claim, elements whose value is not the trusted value rounded "
    "to nearest-even in the target dtype, or tensors changed without the claimed cast.",
    why="A within-rounding change can still move every weight by one ulp in a chosen "
    "direction; an exact cast has exactly one correct answer.",
    example="`encoder.layer.0.attention.self.query.weight`: 147,456 of 147,456 elements are "
    "not the round-to-nearest-even F16 value.",
    fix="Re-run the cast with a correctly rounding converter (numpy, torch `.to`).",
    references=("docs/claims.md",),
)
PRUNE_VIOLATION = define_rule(
    "MS405",
    "prune-criterion-violated",
    Severity.HIGH,
    "Pruned weights contradict the claimed criterion",
    checks="Under a prune claim: zeros placed on weights the criterion keeps (larger |w| than "
    "kept weights, per tensor, row, N:M group or channel), kept weights changed (except "
    "SparseGPT updates in rows that lost weights), or a sparsity other than claimed.",
    why="Compression-activated backdoors hide their repair in the weights pruning removes; "
    "zeros on large weights are how a pruned model is made to misbehave.",
    example="`fc.weight`: 40 zeroed weights are larger than weights the magnitude criterion "
    "keeps; largest (3, 17) |w| = 0.41.",
    fix="Re-prune from the trusted weights, or claim the method actually used.",
    references=("docs/claims.md", "docs/threats.md#unfaithful-transformations"),
)
CONVERT_MISMATCH = define_rule(
    "MS406",
    "conversion-mismatch",
    Severity.HIGH,
    "Claimed conversion does not preserve the tensors",
    checks="Under a convert claim, a trusted tensor has no deployed tensor with identical "
    "values (by name, digest, or transposed), or a tensor's values or shape changed.",
    why="A conversion moves tensors between containers; it never changes a value.",
    example="`classifier.weight`: missing after conversion.",
    fix="Re-convert from the trusted artifact; claim cast:... as well if the dtype changed.",
    references=("docs/claims.md",),
)
CLAIM_NOT_APPLICABLE = define_rule(
    "MS407",
    "claim-not-applicable",
    Severity.HIGH,
    "Claimed transformation does not describe the pair",
    checks="The claim finds nothing to re-derive (e.g. quantize on two float artifacts, "
    "gguf:q4_0 when no tensor is Q4_0), so it cannot be true.",
    why="A claim that cannot be checked must not pass as verified.",
    example="claim gguf:q4_0: deployed holds no Q4_0 tensors.",
    fix="Claim the transformation actually applied (see the inferred transformation).",
    references=("docs/claims.md",),
)
INFERRED = define_rule(
    "MS408",
    "transformation-inferred",
    Severity.INFO,
    "Transformation inferred without a claim",
    checks="No --claim was given; the pair's footprint (integer tensors with scales, ggml "
    "block types, new exact zeros, container change) suggested a transformation, which was "
    "re-derived; the finding says whether it verified.",
    why="Naming the most likely transformation turns a wall of changed tensors into one "
    "checkable statement.",
    example="inferred quantize:int8:per-channel:symmetric (rtn): verified on 36 tensors.",
    fix="Pass the inferred claim explicitly to make the check part of policy.",
    references=("docs/claims.md",),
)

MERGE_MISMATCH = define_rule(
    "MS420",
    "merge-mismatch",
    Severity.HIGH,
    "Merged tensor does not follow from the merge config",
    checks="Under merge:CONFIG, the mergekit method (linear, task_arithmetic, ties, "
    "dare_ties, dare_linear, slerp) with the config's parameters (filters, layer "
    "gradients) is applied to the input models' tensors, and a merged element differs from "
    "the result by more than the method's own rounding; or an input tensor is missing; or "
    "DARE's drop mask, read back from the output, keeps deltas at a rate that chance does "
    "not explain (per tensor, per row, or on the largest deltas), or (with seed=N) is not "
    "torch's draw from that seed; a seeded DARE claim without torch is could-not-check.",
    why="A merge mixes several models; a change slipped into the mixture hides among "
    "legitimate differences from the base unless every element is re-derived.",
    example="`model.layers.3.mlp.down_proj.weight`: 4,096 of 11,534,336 elements do not "
    "follow from the ties merge of its inputs in 1 rows; first at [17, 0]: expected "
    "0.0123, found 0.3811.",
    fix="Re-run the merge from the inputs with the config; check that the config and inputs "
    "given with the claim are the ones used.",
    references=("docs/claims.md",),
)
LORA_MISMATCH = define_rule(
    "MS421",
    "lora-mismatch",
    Severity.HIGH,
    "Change does not follow from the claimed LoRA",
    checks="Under lora:r=N:modules=A,B, a changed tensor lies outside the named modules, a "
    "named module's delta has rank above N (beyond storage rounding), or a named module "
    "changed in only some layers; under lora:adapter=PATH, a merged element differs from "
    "W + scale * B @ A (PEFT adapter) by more than rounding, or a tensor the adapter does "
    "not touch changed.",
    why="A LoRA merge is low rank in a consistent set of modules; a rank-k change confined "
    "to a few tensors or layers is a knowledge edit, and a change outside the modules is "
    "not the adapter's.",
    example="`model.layers.7.mlp.down_proj.weight`: changed, but the claim covers q_proj, "
    "v_proj only.",
    fix="Re-merge the adapter into the trusted weights; claim the adapter itself "
    "(lora:adapter=PATH) to have every element re-derived.",
    references=("docs/claims.md",),
)

_CLASS_RULE = {"cast": CAST_NOT_RNE, "pruning": PRUNE_VIOLATION, "conversion": CONVERT_MISMATCH}
_KIND_RULE = {"merge": MERGE_MISMATCH, "lora": LORA_MISMATCH}
"""Claim kinds whose violations have a rule of their own, whatever the change class."""


UNFAITHFUL = "unfaithful transformation"


def _rule_for(v: TensorVerdict, claim: str = "") -> Any:
    kind_rule = _KIND_RULE.get(claim.split(":", 1)[0])
    if kind_rule is not None:
        return kind_rule
    if v.change_class == "quantization":
        return CODES_MISMATCH if v.problem == "codes" else PARAMS_MISMATCH
    return _CLASS_RULE.get(v.change_class, CODES_MISMATCH)


COLUMN_LIKE = 4
"""Violations on this many times more rows than columns make a column-shaped change."""


def _region(v: TensorVerdict) -> Region | None:
    """The rows along the verdict's axis, or, when the violating elements of a matrix
    sit in a few columns across many rows (a column edit, which touches every row), the
    columns."""
    if not v.rows:
        return None
    cells = [x.index for x in v.violations if len(x.index) == 2]
    if v.axis in (0, None) and cells:
        cols = sorted({c for _, c in cells})
        if len(cols) * COLUMN_LIKE <= len({r for r, _ in cells}):
            return Region(axis=1, indices=tuple(cols[:256]))
    return Region(axis=v.axis, indices=v.rows[:256])


def verdict_finding(v: TensorVerdict, claim: str) -> Finding:
    """A localized finding for one violated tensor."""
    name = v.deployed[0] if v.deployed else v.tensor
    region = _region(v)
    evidence: dict[str, Any] = {
        "claim": claim,
        "class": UNFAITHFUL,
        "claimed_class": v.change_class,
        "problem": v.problem,
        "trusted_tensor": v.tensor,
        "stats": dict(v.stats),
        "rows_total": len(v.rows),
        "elements": [x.to_dict() for x in v.violations],
    }
    first = v.violations[0] if v.violations else None
    detail = (
        f"; first at {list(first.index)}: expected {first.expected:g}, found {first.found:g}"
        if first is not None
        else ""
    )
    return finding(
        _rule_for(v, claim),
        v.message + detail,
        [
            Location(artifact="deployed", tensor=name, region=region),
            Location(artifact="trusted", tensor=v.tensor),
        ],
        evidence=evidence,
    )


def _summary(outcome: ClaimOutcome) -> dict[str, Any]:
    fracs = [
        v.stats.get("non_nearest_fraction")
        for v in outcome.verdicts
        if v.stats.get("non_nearest_fraction") is not None
    ]
    out: dict[str, Any] = {
        "claim": outcome.claim,
        "holds": outcome.holds,
        "tensors": len(outcome.verdicts),
        "violated": [v.tensor for v in outcome.verdicts if not v.ok][:100],
        "notes": list(outcome.notes[:50]),
        **{k: v for k, v in outcome.evidence.items()},
        "per_tensor": {
            v.tensor: {"ok": v.ok, **_jsonable(v.stats)} for v in outcome.verdicts[:500]
        },
    }
    if fracs:
        out["max_non_nearest_fraction"] = max(fracs)
    return out


def _jsonable(stats: Any) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (int, float, str, bool, list, type(None))) else str(v))
        for k, v in dict(stats).items()
    }


def outcome_analysis(outcomes: Iterable[ClaimOutcome], *, inferred: bool = False) -> Analysis:
    """Findings, explanations and labels for re-derived claims."""
    findings: list[Finding] = []
    explained: dict[str, str] = {}
    labels: dict[str, dict[str, Any]] = {}
    classes: list[str] = []
    evidence: dict[str, Any] = {}
    for o in outcomes:
        evidence[o.claim] = _summary(o)
        if inferred:
            n_bad = sum(1 for v in o.verdicts if not v.ok)
            findings.append(
                finding(
                    INFERRED,
                    f"inferred {o.claim}: verified on {len(o.verdicts)} tensors"
                    if not n_bad
                    else f"inferred {o.claim}: {n_bad} of {len(o.verdicts)} tensors "
                    "break it (see the findings that name them)",
                    evidence={**_summary(o), "class": _class_of(o)},
                )
            )
        elif not o.applicable:
            findings.append(
                finding(
                    CLAIM_NOT_APPLICABLE,
                    f"claim {o.claim}: nothing in the pair matches it"
                    + (f" ({'; '.join(o.notes[:3])})" if o.notes else ""),
                    evidence=_summary(o),
                )
            )
            continue
        for v in o.verdicts:
            # A tensor that breaks its claim is not an instance of the claimed class: a
            # rules pack that allows (claimed) quantization must not let it through.
            cls = v.change_class if v.ok else UNFAITHFUL
            for name in (v.tensor, *v.sources, *v.deployed):
                explained[name] = cls
                labels[name] = {
                    "class": cls,
                    "claimed_class": v.change_class,
                    "claim": o.claim,
                    "verified": v.ok,
                    "trusted_tensor": v.tensor,
                }
            if not v.ok:
                findings.append(verdict_finding(v, o.claim))
        if o.verdicts:
            classes.append(_class_of(o))
        if o.holds and not inferred:
            n_ok = len(o.verdicts)
            fr = _summary(o).get("max_non_nearest_fraction")
            extra = f"; max non-nearest fraction {fr:.2%}" if fr else ""
            findings.append(
                finding(
                    CLAIM_VERIFIED,
                    f"claim {o.claim} verified on {n_ok} tensors{extra}",
                    evidence={**_summary(o), "class": _class_of(o)},
                )
            )
    failed = any(not v.ok for o in outcomes for v in o.verdicts) or any(
        not o.applicable for o in outcomes
    )
    from scanner.diff.model import class_rank

    classification = (
        "unexplained change" if failed else (max(classes, key=class_rank) if classes else None)
    )
    return Analysis(
        findings=tuple(findings),
        labels=labels,
        explained=explained,
        classification=classification,
        evidence=evidence,
    )


def _class_of(o: ClaimOutcome) -> str:
    kind = o.claim.split(":", 1)[0]
    return {
        "cast": "cast",
        "quantize": "quantization",
        "gguf": "quantization",
        "requantize": "quantization",
        "prune": "pruning",
        "convert": "conversion",
        "merge": "full fine-tune",
        "lora": "low-rank update",
    }.get(kind, "unexplained change")


def analyze_claims(ctx: PairContext) -> Analysis:
    """Re-derive every ``--claim``; without one, infer and verify the likely transformation."""
    texts = list(ctx.options.claims)
    claims = [parse_claim(t) for t in texts]
    if claims:
        return outcome_analysis(
            leave_judged_to_their_claim(
                [run_claim(c, ctx.trusted, ctx.deployed, ctx.tensors) for c in claims]
            )
        )
    if not ctx.changed():
        return Analysis()
    _, held = infer(ctx.trusted, ctx.deployed, ctx.tensors)
    return outcome_analysis(held, inferred=True)


def analyze_gap_pair(ctx: PairContext) -> Analysis:
    """The quantization-gap check on the deployed side of a pair: a full-precision model
    that claims to be benign can be built to turn malicious only once quantized. What the
    trusted tensor already showed at a grid's walls is part of the null: a new footprint
    is one the change made."""
    from scanner.claims.gap import gap_findings

    # Only tensors that differ from the trusted side: an unchanged tensor carries nothing
    # the trusted artifact did not already have, and diff cost must follow the change.
    # An exact cast is a function of the trusted tensor alone, so it carries nothing new
    # either (and casts are whole models: testing them would cost a pass per grid).
    # Likewise a tensor an earlier analyzer re-derived from the trusted one (a claimed or
    # inferred conversion, merge or adapter, verified within rounding): a gap attack must
    # move weights by a fraction of a quantization step, far beyond that bound.
    changed = [
        t
        for t in ctx.changed()
        if t.deployed_dtype is not None
        and not (t.status is TensorStatus.CAST and t.cast is not None and t.cast.exact)
        and t.name not in ctx.explained
        and (t.deployed_name or t.name) not in ctx.explained
    ]
    if not changed:
        return Analysis()
    # Within a changed tensor, only the rows that changed can carry a new footprint.
    rows = {
        t.deployed_name or t.name: t.where.rows
        for t in changed
        if t.status is TensorStatus.CHANGED
        and t.where is not None
        and t.where.rows
        and len(t.where.rows) < t.where.n_rows
    }
    found = tuple(
        gap_findings(
            ctx.deployed,
            artifact_label="deployed",
            only=[t.deployed_name or t.name for t in changed],
            rows=rows,
            reference=ctx.trusted,
            reference_names={t.deployed_name or t.name: t.name for t in changed},
        )
    )
    return Analysis(findings=found)


ANALYZERS: list[Analyzer] = [
    Analyzer("claims", analyze_claims),
    Analyzer("quantization-gap", analyze_gap_pair),
]
