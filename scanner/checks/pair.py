"""Baseline pair analyzers: casts, files, metadata, graph shape, and unexplained changes.

Deeper analyses (change classification, claimed transformations, graph diff) are further
analyzers listed in :func:`default_analyzers`; the unexplained-change analyzer runs last
and reports whatever none of them accounted for.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from scanner.diff.engine import Analysis, Analyzer, PairAnalyzer, PairContext
from scanner.diff.model import TensorDiff, TensorStatus
from scanner.findings import Finding, Location, Region, Severity
from scanner.rulebook import define_rule, finding

TENSOR_CHANGED = define_rule(
    "MS201",
    "tensor-changed",
    Severity.HIGH,
    "Tensor values changed",
    checks="A tensor present in both artifacts, with the same dtype and shape, holds different "
    "values, and no allowed transformation accounts for the change.",
    why="Unexplained weight edits are how subnetwork replacement, knowledge edits, backdoor "
    "fine-tunes and bit flips reach production. The location (rows, columns, block) shows "
    "where to look.",
    example="`encoder.layer.3.output.dense.weight`: 4,096 of 589,824 elements changed, "
    "block rows 100:164 x cols 200:264.",
    fix="If the change is a legitimate transformation, claim it (`--claim`) or allow its "
    "class in the rules pack; otherwise treat the artifact as tampered.",
    references=("docs/diff.md", "docs/threats.md#weight-surgery"),
)
TENSOR_ADDED = define_rule(
    "MS202",
    "tensor-added",
    Severity.HIGH,
    "Tensor added",
    checks="A tensor exists in the deployed artifact but not in the trusted one, and no "
    "tensor of identical content was renamed to it.",
    why="Added parameters can carry a trigger branch or an adapter nobody reviewed.",
    example="`classifier.trigger.weight` (F32, [2, 768]) only in deployed.",
    fix="Explain the addition (e.g. an attested conversion that adds tensors) or reject.",
)
TENSOR_REMOVED = define_rule(
    "MS203",
    "tensor-removed",
    Severity.HIGH,
    "Tensor removed",
    checks="A tensor of the trusted artifact is missing from the deployed one.",
    why="Removed parameters change behaviour (a safety head, a normalization) silently.",
    example="`pooler.dense.weight` missing from deployed.",
    fix="Explain the removal (e.g. structured pruning claim) or reject.",
)
TENSOR_RENAMED = define_rule(
    "MS204",
    "tensor-renamed",
    Severity.LOW,
    "Tensor renamed with identical content",
    checks="A tensor exists under a different name with an identical digest (dtype, shape, bytes).",
    why="Renames are usually harmless converter behaviour, but can hide a swap of two tensors.",
    example="`bert.encoder.layer.0.attention.self.query.weight` -> "
    "`encoder.layer.0.attention.self.query.weight`.",
    fix="Nothing to do if the converter renames; a swap of two same-shaped tensors also "
    "shows up here in pairs.",
)
SHAPE_CHANGED = define_rule(
    "MS205",
    "tensor-shape-changed",
    Severity.HIGH,
    "Tensor shape changed",
    checks="A tensor has a different shape in the deployed artifact.",
    why="A shape change alters the architecture: added heads, widened layers, channel surgery.",
    example="`fc.weight` [10, 512] -> [11, 512].",
    fix="Claim a conversion that transposes or reshapes, or reject.",
)
CAST_VERIFIED = define_rule(
    "MS206",
    "dtype-cast",
    Severity.INFO,
    "Tensors cast to another float dtype",
    checks="Tensors whose float dtype changed and whose every value equals the trusted value "
    "rounded to the new dtype (round-to-nearest-even), or is within one unit in the last place "
    "of the narrower dtype.",
    why="Casts (fp32 -> fp16/bf16) are routine; verifying each element shows nothing else "
    "changed along the way.",
    example="104 tensors F32 -> F16, all exactly round-to-nearest-even.",
    fix="Nothing; informational. A cast that is within rounding but not exactly RNE is named "
    "in the message.",
)
DTYPE_CHANGED = define_rule(
    "MS207",
    "dtype-changed-unexplained",
    Severity.HIGH,
    "Dtype changed and values disagree",
    checks="A tensor's dtype changed and its values are not a rounding of the trusted values "
    "(or the dtype pair is not a float cast, e.g. F32 -> I8, and no quantization claim "
    "explains it).",
    why="A cast is the classic cover for editing values: the diff looks noisy everywhere, "
    "so a planted change hides in the noise. Element-wise rounding checks remove that cover.",
    example="`fc.weight` F32 -> F16: 12 elements beyond rounding, rows [3], cols [0-11].",
    fix="Re-run the cast from the trusted artifact, or claim the transformation (quantization).",
)
METADATA_CHANGED = define_rule(
    "MS208",
    "metadata-changed",
    Severity.LOW,
    "Artifact metadata changed",
    checks="Container metadata differs: safetensors `__metadata__`, GGUF key-values, ONNX "
    "`metadata_props`, producer and opsets.",
    why="Metadata drives loaders (chat templates, tokenizers, architecture flags); a change "
    "can alter behaviour with no weight touched.",
    example="GGUF `tokenizer.chat_template` changed.",
    fix="Review the listed keys.",
)
GRAPH_CHANGED = define_rule(
    "MS209",
    "graph-structure-changed",
    Severity.HIGH,
    "Computation graph structure changed",
    checks="The operators of the ONNX graph (main graph, subgraphs and functions; counted by "
    "domain and type) or its inputs/outputs differ.",
    why="Graph backdoors (ShadowLogic, TrojanNet) live outside the weights and survive "
    "fine-tuning.",
    example="+2 Equal, +1 Where, +1 ReduceSum in deployed.",
    fix="Compare with the graph diff; an optimizer run must be claimed or re-derived.",
)
FILE_CHANGED = define_rule(
    "MS210",
    "file-changed",
    Severity.MEDIUM,
    "Non-weight file added, removed or changed",
    checks="Files of a model folder that are not parsed as weights (config, tokenizer, code) "
    "differ between trusted and deployed.",
    why="`config.json`, tokenizers and custom code change what the weights compute.",
    example="`config.json` changed; `modeling_custom.py` added.",
    fix="Review the file; sign the folder so such changes need a signature.",
)


def analyze_casts(ctx: PairContext) -> Analysis:
    casts = [t for t in ctx.tensors if t.status is TensorStatus.CAST]
    if not casts:
        return Analysis()
    by_pair = Counter((t.trusted_dtype, t.deployed_dtype) for t in casts)
    inexact = [t.name for t in casts if t.cast is not None and not t.cast.exact]
    pairs = ", ".join(f"{n} x {a} -> {b}" for (a, b), n in sorted(by_pair.items()))
    message = f"{len(casts)} tensors cast ({pairs})"
    message += (
        f"; {len(inexact)} not exactly round-to-nearest-even but within rounding"
        if inexact
        else "; every element is exactly round-to-nearest-even"
    )
    f = finding(
        CAST_VERIFIED,
        message,
        [Location(artifact="deployed", tensor=name) for name in inexact[:20]],
        evidence={"casts": {f"{a}->{b}": n for (a, b), n in by_pair.items()}, "inexact": inexact},
    )
    return Analysis(
        findings=(f,),
        explained={t.name: "cast" for t in casts},
        classification="cast",
    )


def analyze_files(ctx: PairContext) -> Analysis:
    findings = [
        finding(
            FILE_CHANGED,
            f"{c.path} {c.status}",
            [Location(artifact="deployed" if c.status != "removed" else "trusted", file=c.path)],
            evidence={"status": c.status, "role": c.role},
        )
        for c in ctx.files
    ]
    return Analysis(
        findings=tuple(findings), classification="unexplained change" if findings else None
    )


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value, sort_keys=True, default=str)


def analyze_metadata(ctx: PairContext) -> Analysis:
    a: dict[str, str] = {}
    b: dict[str, str] = {}
    _flatten("", ctx.trusted.metadata, a)
    _flatten("", ctx.deployed.metadata, b)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if not changed:
        return Analysis()
    shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    return Analysis(
        findings=(
            finding(
                METADATA_CHANGED,
                f"{len(changed)} metadata keys differ: {shown}",
                evidence={"keys": changed[:200]},
            ),
        )
    )


def _op_counts(ctx_artifact: Any) -> Counter[str]:
    graph = ctx_artifact.graph
    if graph is None:
        return Counter()
    return Counter(f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in graph.nodes)


def analyze_graph_shape(ctx: PairContext) -> Analysis:
    gt, gd = ctx.trusted.graph, ctx.deployed.graph
    if gt is None and gd is None:
        return Analysis()
    ct, cd = _op_counts(ctx.trusted), _op_counts(ctx.deployed)
    added = cd - ct
    removed = ct - cd
    io_changed = (gt is None) != (gd is None) or (
        gt is not None
        and gd is not None
        and (len(gt.inputs), len(gt.outputs)) != (len(gd.inputs), len(gd.outputs))
    )
    if not added and not removed and not io_changed:
        return Analysis()
    parts = [f"+{n} {op}" for op, n in sorted(added.items())] + [
        f"-{n} {op}" for op, n in sorted(removed.items())
    ]
    if io_changed:
        parts.append("graph inputs/outputs differ")
    new_ops = {op.split("::")[1] for op in added}
    nodes = [n.name for n in (gd.nodes if gd else ()) if n.op_type in new_ops][:20]
    return Analysis(
        findings=(
            finding(
                GRAPH_CHANGED,
                "; ".join(parts[:20]),
                [Location(artifact="deployed", node=n) for n in nodes],
                evidence={"added_ops": dict(added), "removed_ops": dict(removed)},
            ),
        ),
        classification="graph change",
    )


def _region(t: TensorDiff) -> Region | None:
    w = t.where
    if w is None:
        return None
    if w.block and w.block_density >= 0.5 and len(w.block) >= 2:
        return Region(axis=0, indices=w.rows[:256], block=w.block)
    if w.rows and (not w.cols or len(w.rows) <= len(w.cols)):
        return Region(axis=0, indices=w.rows[:256])
    if w.cols:
        return Region(axis=1, indices=w.cols[:256])
    return None


def _change_message(t: TensorDiff) -> str:
    d = t.delta
    text = ""
    if d is not None:
        text = (
            f"{d.n_changed:,} of {d.n_elements:,} elements changed "
            f"({d.fraction_changed:.4%}), max |change| {d.max_abs:.4g}, "
            f"relative L2 {d.rel_l2:.3g}"
        )
    if t.where is not None and t.where.describe():
        text += f"; {t.where.describe()}"
    return text


def analyze_unexplained(ctx: PairContext) -> Analysis:
    """Report every change that no earlier analyzer explained."""
    findings: list[Finding] = []
    for t in ctx.tensors:
        if not t.is_change or t.name in ctx.explained:
            continue
        loc_t = Location(artifact="trusted", tensor=t.name)
        loc_d = Location(artifact="deployed", tensor=t.deployed_name or t.name, region=_region(t))
        if t.status is TensorStatus.CHANGED:
            findings.append(
                finding(
                    TENSOR_CHANGED,
                    f"{t.name}: {_change_message(t)}",
                    [loc_d],
                    evidence=t.to_dict().get("stats", {}),
                )
            )
        elif t.status is TensorStatus.DTYPE_CHANGED:
            detail = _change_message(t) if t.cast is not None else "no cast or claim explains it"
            findings.append(
                finding(
                    DTYPE_CHANGED,
                    f"{t.name}: {t.trusted_dtype} -> {t.deployed_dtype}; {detail}",
                    [loc_d],
                    evidence=t.to_dict().get("cast", {}),
                )
            )
        elif t.status is TensorStatus.SHAPE_CHANGED:
            findings.append(
                finding(
                    SHAPE_CHANGED,
                    f"{t.name}: {list(t.trusted_shape or ())} -> {list(t.deployed_shape or ())}",
                    [loc_t, loc_d],
                )
            )
        elif t.status is TensorStatus.ADDED:
            findings.append(
                finding(
                    TENSOR_ADDED,
                    f"{t.name} ({t.deployed_dtype}, {list(t.deployed_shape or ())}) "
                    "only in deployed",
                    [Location(artifact="deployed", tensor=t.name)],
                )
            )
        elif t.status is TensorStatus.REMOVED:
            findings.append(
                finding(
                    TENSOR_REMOVED,
                    f"{t.name} ({t.trusted_dtype}, {list(t.trusted_shape or ())}) "
                    "missing from deployed",
                    [loc_t],
                )
            )
        elif t.status is TensorStatus.RENAMED:
            findings.append(
                finding(TENSOR_RENAMED, f"{t.name} -> {t.deployed_name}", [loc_t, loc_d])
            )
    serious = [f for f in findings if f.rule_id != TENSOR_RENAMED.id]
    proposal = "unexplained change" if serious else ("renamed" if findings else None)
    return Analysis(findings=tuple(findings), classification=proposal)


def default_analyzers() -> list[PairAnalyzer]:
    """The analyzers ``diff`` runs, in order; the unexplained-change analyzer stays last.

    Claimed transformations run first (they explain changes), then the change
    classification of weights and the graph diff, then the generic checks.
    """
    from scanner.analysis import rules as weights
    from scanner.claims import rules as claims
    from scanner.graph import rules as graph

    return [
        Analyzer("cast", analyze_casts),
        *claims.ANALYZERS,
        *weights.ANALYZERS,
        *graph.ANALYZERS,
        Analyzer("files", analyze_files),
        Analyzer("metadata", analyze_metadata),
        Analyzer("unexplained", analyze_unexplained),
    ]
