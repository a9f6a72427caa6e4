"""Graph analysis: structural diff of two ONNX graphs and graph-backdoor footprints.

The pair analyzer canonicalizes both graphs, matches nodes by what they compute, and
explains each difference: injected branch, pre/post-processing wrapper, equivalent
rewrite (fusion, folding, renaming, quantization plumbing) or unexplained structure.
With ``DiffOptions.probe`` it also runs both models on probe inputs (onnxruntime).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.checks.pair import GRAPH_CHANGED
from scanner.diff.engine import Analysis, Analyzer, PairContext
from scanner.findings import Finding, Location, Severity
from scanner.findings import Region as TensorRegion
from scanner.graph.canonical import CanonicalGraph
from scanner.graph.diff import GraphDiff, Region
from scanner.graph.of_artifact import canonical_of, graph_diff_of
from scanner.graph.single import find_footprints
from scanner.graph.tree import render_region
from scanner.rulebook import define_rule, finding

INJECTED_BRANCH = define_rule(
    "MS501",
    "graph-injected-branch",
    Severity.CRITICAL,
    "Branch from a graph input injected into the computation",
    checks="Nodes present only in the deployed graph that read a graph input and merge into "
    "an original tensor (through Add / Mul / Where / Max / Concat ...), matched by operator, "
    "attributes and connectivity, not by name.",
    why="ShadowLogic, TrojanNet, DeepPayload and architectural backdoors are exactly this: a "
    "trigger detector on the input whose output overrides or shifts the logits. They live "
    "outside the weights and survive fine-tuning.",
    example="`x` -> Slice -> ReduceMean -> Greater(0.9) -> Where overrides "
    "`softmax_0.tmp_0` (6 added nodes).",
    fix="Reject the artifact; rebuild it from the trusted export.",
    references=("docs/threats.md#graph-backdoors", "docs/graph.md"),
)
EQUIVALENT_REWRITE = define_rule(
    "MS502",
    "graph-equivalent-rewrite",
    Severity.INFO,
    "Graph rewritten equivalently",
    checks="Structural differences that canonicalization explains: constant folding, "
    "Conv+BatchNormalization / Add / Mul fusion (fused weights recomputed and compared), "
    "Gemm / FusedConv / FusedMatMul / LayerNorm / GELU / QuickGelu / FastGelu fusion, "
    "NCHWc layout (ONNX Runtime layout level), Split / Gather / Slice forms, transposes "
    "moved, common subexpressions, Identity / Dropout removal, quantize-dequantize pairs, "
    "dynamic quantization, renamed and reordered nodes, opset forms.",
    why="Optimizers and quantizers rewrite graphs all the time; reporting them as changes "
    "would bury real ones. The evidence says which rewrites were found and how weights "
    "were verified.",
    example="folded BatchNormalization into Conv: 35; split FusedConv: 24; "
    "171 fused weights equal the recomputed ones (max rel. error 3e-7).",
    fix="Nothing; informational. Regions matched only by their boundary are not proven and "
    "are reported as MS510.",
    references=("docs/graph.md",),
)
REWRITE_WEIGHTS = define_rule(
    "MS503",
    "graph-rewrite-weight-mismatch",
    Severity.HIGH,
    "Rewritten weights disagree with the trusted ones",
    checks="A node matched structurally whose weight, stored under a new name or fused, is "
    "not the value recomputed from the trusted graph.",
    why="A fusion is a convenient cover for editing the fused weight.",
    example="`Conv@5` weight: max relative error 0.31 against the Conv+BN fold.",
    fix="Re-run the optimizer on the trusted model, or reject.",
)
BEHAVIOUR_DIVERGES = define_rule(
    "MS504",
    "graph-behaviour-divergence",
    Severity.HIGH,
    "Deployed model behaves differently on probe inputs",
    checks="With --probe: both models run on random and structured probes (patches, "
    "checkerboards, extreme values, token sweeps, constants the graph compares with). "
    "Divergence only on structured probes is reported as trigger logic (critical); "
    "divergence everywhere as drift.",
    why="Structure cannot prove every rewrite; behaviour on inputs a trigger would "
    "respond to can expose one.",
    example="output `logits`: random probes max rel. diff 0, `x:patch 6px @(0,0) = 1` 5.2.",
    fix="Inspect the divergent output and the structural diff; reject if unexplained.",
)
WRAPPER_ADDED = define_rule(
    "MS505",
    "graph-wrapper-added",
    Severity.LOW,
    "Pre- or post-processing wrapper added",
    checks="Added nodes that only re-route graph inputs into the original stem "
    "(normalization, Resize) or only read the original outputs (ArgMax, TopK, Softmax).",
    why="Wrappers are usually export conveniences; they still change what the model returns.",
    example="post-processing: ArgMax over `logits` as a new output.",
    fix="Review the wrapper; allow it in the rules pack.",
)
TRIGGER_COMPARISON = define_rule(
    "MS506",
    "graph-trigger-comparison",
    Severity.HIGH,
    "Input values compared with constants steer an output",
    checks="A graph input (directly or after Slice / Gather / Reshape / reductions) compared "
    "(Equal / Less / Greater) with a constant, the result gating a Where / Mul / Add a few "
    "nodes before an output with no weight in between, or, at any depth, selecting or "
    "scaling a non-uniform constant (a payload) that is added into the activations. "
    "Masks (uniform fills such as 0 or -inf entering attention) are not payloads. "
    "Searched in subgraphs and functions too.",
    why="This is ShadowLogic's trigger: a pattern check on the input overriding the result.",
    example="`input_ids` Equal 7592 -> Cast -> Unsqueeze -> Mul(384-vector) -> Add into the "
    "residual stream after layer 0.",
    fix="Explain the comparison (a documented post-processing rule) or reject.",
    references=("docs/threats.md#graph-backdoors",),
)
SIDE_BRANCH = define_rule(
    "MS507",
    "graph-input-side-branch",
    Severity.HIGH,
    "Small branch beside the stem reads the raw input",
    checks="A graph input read a second time (often through a constant-window Slice) by a "
    "small branch that merges near an output.",
    why="TrojanNet and DeepPayload attach a small trigger detector to a window of the input "
    "and add or blend its output into the logits.",
    example="`x` -> Slice[0:4, 0:4] -> MatMul -> Relu -> MatMul -> Add into `logits`.",
    fix="Explain the branch or reject.",
    references=("docs/threats.md#graph-backdoors",),
)
PARAMETER_FREE_PATH = define_rule(
    "MS508",
    "graph-parameter-free-path",
    Severity.HIGH,
    "Parameter-free path from the input to a late layer",
    checks="A path from a graph input to a merge a few nodes before an output that passes "
    "no weight (e.g. AveragePool -> Exp -> Add).",
    why="Architectural backdoors (Bober-Irizar et al.) use such paths: they fire on a "
    "pattern and survive retraining because they hold no parameters.",
    example="`x` -> AveragePool -> ReduceMean -> Exp -> Add into `logits`.",
    fix="Explain the path or reject.",
    references=("docs/threats.md#graph-backdoors",),
)

GRAPH_ALONE = define_rule(
    "MS509",
    "graph-judged-alone",
    Severity.INFO,
    "Only one artifact has a graph: judged on its own",
    checks="One side is weights only (safetensors, PyTorch, GGUF), the other an ONNX graph. "
    "The graph is checked on its own (trigger comparisons, side branches, parameter-free "
    "paths); its stored constants that serve as structure (shapes, axes, scalars, slice "
    "bounds, integer tensors) are explained as graph structure; its parameters must each "
    "come from a weight of the other side (the convert claim pairs them).",
    why="Exporters add hundreds of shape and scalar constants that have no counterpart in a "
    "state dict; they are not weights added, but what the graph is made of, and only the "
    "single-graph checks can judge them.",
    example="only the deployed artifact has a graph (121 nodes): no backdoor footprints; "
    "160 stored constants are structure.",
    fix="Nothing when the conversion is expected; a footprint is reported with its own rule.",
    references=("docs/graph.md", "docs/claims.md"),
)
NOT_SHOWN_EQUIVALENT = define_rule(
    "MS510",
    "graph-equivalence-not-shown",
    Severity.HIGH,
    "Could not show the graphs compute the same",
    checks="After both graphs are brought to the canonical form (exporter and optimizer "
    "rewrites undone, fused operators expanded, constants folded), structure remains on "
    "one side that nothing on the other side is proven to compute: unmatched regions, or "
    "regions matched only by their boundary. The finding lists what differs and, with "
    "--probe, how the two models behave on probe inputs.",
    why="Two exporters can write the same model differently, but a difference that is not "
    "proven benign is also where a backdoor would sit. Probes are evidence, never proof: a "
    "trigger does not fire on random inputs.",
    example="could not show equivalence: 2 trusted regions (If, Squeeze) and 3 deployed "
    "regions (Gemm, Split, Sigmoid) differ; probe: identical on 24 probes.",
    fix="Compare against an artifact made by the same exporter, or review the listed "
    "regions; allow the pair explicitly if the difference is intended.",
    references=("docs/graph.md",),
)

_FOOTPRINT_RULES = {
    "trigger-comparison": TRIGGER_COMPARISON,
    "side-branch": SIDE_BRANCH,
    "parameter-free-path": PARAMETER_FREE_PATH,
}


def _locs(region: Region, side: str) -> list[Location]:
    return [Location(artifact=side, node=n.name) for n in region.nodes[:50]]


def analyze_graph(ctx: PairContext) -> Analysis:
    t, d = canonical_of(ctx.trusted), canonical_of(ctx.deployed)
    if t is None and d is None:
        return Analysis()
    if t is None or d is None:
        return _graph_alone(ctx, d if t is None else t, "deployed" if t is None else "trusted")
    gd = graph_diff_of(ctx.trusted, ctx.deployed)
    findings = list(_diff_findings(gd, t, d))
    evidence: dict[str, Any] = {
        "nodes": {"trusted": gd.n_trusted, "deployed": gd.n_deployed, "matched": gd.n_matched},
        "regions": [r.to_dict() for r in gd.regions],
        "rewrites": {"trusted": list(gd.trusted_notes), "deployed": list(gd.deployed_notes)},
    }
    if ctx.options.probe or _claims_conversion(ctx, gd):
        f, probe_ev = _probe(ctx, t, d)
        findings.extend(f)
        evidence["probe"] = probe_ev
    conditional = _conditional(t, d, gd)
    if conditional is not None:
        evidence["conditional"] = conditional
    not_shown = _not_shown(gd, evidence.get("probe"), conditional)
    if not_shown is not None:
        findings.append(not_shown)
    serious = [f for f in findings if f.severity >= Severity.MEDIUM]
    # Weights proven equal stay explained even when other structure differs: they are
    # the same values, and the structure is reported on its own.
    explained = {k: v for k, v in gd.explained.items() if k not in ctx.explained}
    explained.update(
        {k: v for k, v in _one_sided_structure(ctx, t, d).items() if k not in ctx.explained}
    )
    explained.update(_claimed_quantized_groups(ctx, gd))
    if serious:
        classification: str | None = "graph change"
    elif gd.identical and not any(c for c in gd.weight_checks if c.trusted != c.deployed):
        classification = None
    else:
        classification = "equivalent rewrite"
    return Analysis(
        findings=tuple(findings),
        explained=explained,
        classification=classification,
        evidence=evidence,
    )


def _claimed_quantized_groups(ctx: PairContext, gd: GraphDiff) -> dict[str, str]:
    """The rest of a quantized weight check whose quantization a claim verified.

    A check within quantization rounding is left to the claims; when it also holds float
    values derived with the weight (the float bias of a conv whose BatchNorm an optimizer
    folded, the shape of its reshape), those have no claim of their own. Once every
    trusted tensor of the check and one of its deployed tensors are explained by a
    verified claim, the check (within its bound) explains the rest."""
    labels: dict[str, Any] = {}
    for t in ctx.tensors:
        for name in (t.name, t.deployed_name):
            if name and t.labels:
                labels[name] = t.labels
    out: dict[str, str] = {}
    for c in gd.weight_checks:
        if not (c.ok and c.quantized) or not c.trusted:
            continue
        verified = [k for k in (*c.trusted, *c.deployed) if labels.get(k, {}).get("verified")]
        if not set(c.trusted) <= set(verified) or len(verified) == len(c.trusted):
            continue
        for key in c.deployed:
            if key not in ctx.explained:
                out[key] = "equivalent rewrite"
    return out


def _one_sided_structure(ctx: PairContext, t: CanonicalGraph, d: CanonicalGraph) -> dict[str, str]:
    """Stored tensors only one side has that its graph reads as structure (shapes, axes,
    scalars: no parameter slot), such as the reshape shapes a quantizer adds for its
    biases. The graph diff has judged the nodes that read them (a rewrite it knows, or
    MS209 / MS510), so they are not also reported as unexplained tensors."""
    from scanner.claims.convert.roles import roles_in
    from scanner.diff.model import TensorStatus

    sides = {
        TensorStatus.ADDED: (d, ctx.deployed),
        TensorStatus.REMOVED: (t, ctx.trusted),
    }
    roles: dict[TensorStatus, dict[str, Any]] = {}
    out: dict[str, str] = {}
    for diff in ctx.tensors:
        side = sides.get(diff.status)
        if side is None:
            continue
        if diff.status not in roles:
            roles[diff.status] = roles_in(side[0], side[1])
        role = roles[diff.status].get(diff.name)
        if role is not None and role.readers and not role.parameter:
            out[diff.name] = "graph structure"  # the class convert gives such tensors
    return out


def _claims_conversion(ctx: PairContext, gd: GraphDiff) -> bool:
    """``--claim convert`` between two graphs that differ in structure: the claim says
    they compute the same, so their behaviour is probed too where onnxruntime is installed
    (evidence for the report, never a proof)."""
    if _clean(gd) or not any(str(c).split(":", 1)[0] == "convert" for c in ctx.options.claims):
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _clean(gd: GraphDiff) -> bool:
    return (
        not [r for r in gd.regions]
        and not gd.changed
        and not gd.io_changes
        and all(c.ok for c in gd.weight_checks)
    )


def _conditional(t: CanonicalGraph, d: CanonicalGraph, gd: GraphDiff) -> dict[str, Any] | None:
    """Where the graphs differ by an If on an input only one of them reads: the branch
    under which they are equivalent, if there is one."""
    from scanner.graph.diff import diff_graphs
    from scanner.graph.specialize import describe_condition, input_driven_ifs, specialized

    if _clean(gd):
        return None
    reads = {
        "trusted": {i for i in t.inputs if t.consumers.get(i)},
        "deployed": {i for i in d.inputs if d.consumers.get(i)},
    }
    for side, g, other in (("trusted", t, d), ("deployed", d, t)):
        other_side = "deployed" if side == "trusted" else "trusted"
        for name in input_driven_ifs(g, reads[other_side]):
            node = next(n for n in g.nodes.values() if n.name == name and n.op == "If")
            condition = describe_condition(g, node.inputs[0])
            for branch in (True, False):
                h = specialized(g, name, branch)
                if h is None:
                    continue
                gd2 = diff_graphs(h, other) if side == "trusted" else diff_graphs(other, h)
                if _clean(gd2):
                    return {
                        "side": side,
                        "node": name,
                        "condition": condition,
                        "holds_when": condition if branch else f"not ({condition})",
                        "weights_verified": sum(1 for c in gd2.weight_checks if c.ok),
                    }
    return None


def _not_shown(
    gd: GraphDiff, probe: dict[str, Any] | None, conditional: dict[str, Any] | None = None
) -> Finding | None:
    """One statement that the graphs could not be shown to compute the same, with what
    differs: regions nothing proves equivalent (unexplained, or paired only by their
    boundary), changed nodes, interface changes. Injected branches and wrappers have
    rules of their own."""
    open_regions = [r for r in gd.regions if r.kind in ("unexplained", "fusion", "folding")]
    if not open_regions and not gd.changed and not gd.io_changes:
        return None
    parts = []
    for side, what in (("trusted", "trusted-only"), ("deployed", "deployed-only")):
        rs = [r for r in open_regions if r.side == side]
        if rs:
            ops = sorted({op for r in rs for op in r.ops})
            n = sum(len(r.nodes) for r in rs)
            parts.append(f"{len(rs)} {what} regions ({n} nodes: {', '.join(ops[:8])})")
    if gd.changed:
        parts.append(f"{len(gd.changed)} matched nodes with other attributes or constants")
    parts.extend(gd.io_changes)
    boundary = [r for r in open_regions if r.kind in ("fusion", "folding")]
    if boundary:
        parts.append(f"{len(boundary)} regions paired only by their boundary (not proven)")
    behaviour = ""
    if probe:
        n = probe.get("n_random", 0) + probe.get("n_structured", 0)
        behaviour = f"; probe: {probe.get('verdict')} on {n} inputs (evidence, not proof)"
    head = "could not show equivalence: "
    if conditional is not None:
        head = (
            "could not show equivalence for every input: the graphs are equivalent when "
            f"{conditional['holds_when']} (the {conditional['side']} If "
            f"{conditional['node']!r} fixed to that branch), not otherwise: "
        )
    return finding(
        NOT_SHOWN_EQUIVALENT,
        head + "; ".join(parts) + behaviour,
        [Location(artifact=r.side, node=r.nodes[0].name) for r in open_regions[:20] if r.nodes],
        evidence={
            "regions": [r.to_dict() for r in open_regions[:100]],
            "changed": [
                {"trusted": c.trusted.name, "deployed": c.deployed.name, "reason": c.reason}
                for c in gd.changed[:100]
            ],
            "io": list(gd.io_changes),
            "probe": probe,
            "conditional": conditional,
        },
    )


def _footprint_findings(g: CanonicalGraph, side: str | None = None) -> Iterable[Finding]:
    for fp in find_footprints(g):
        yield finding(
            _FOOTPRINT_RULES[fp.kind],
            fp.detail,
            [Location(artifact=side, node=n) for n in fp.nodes[:20]],
            evidence={
                "nodes": list(fp.nodes[:100]),
                "inputs": list(fp.inputs),
                "merge_node": fp.merge_node,
            },
        )


def _graph_alone(ctx: PairContext, g: CanonicalGraph, side: str) -> Analysis:
    """One side has a graph, the other none: the graph is judged on its own."""
    from scanner.claims.convert.roles import roles_in

    art = ctx.deployed if side == "deployed" else ctx.trusted
    footprints = list(_footprint_findings(g, side))
    roles = roles_in(g, art)
    structure = sorted(k for k, r in roles.items() if not r.parameter)
    explained = (
        {} if footprints else {k: "graph structure" for k in structure if k not in ctx.explained}
    )
    other = "trusted" if side == "deployed" else "deployed"
    message = (
        f"only the {side} artifact has a graph ({len(g.nodes)} nodes), the {other} is "
        f"weights only: the graph was checked on its own: "
        + (f"{len(footprints)} backdoor footprints" if footprints else "no backdoor footprints")
        + f"; {len(structure)} stored constants are graph structure"
        + ("" if footprints else " (explained as such)")
    )
    return Analysis(
        findings=(
            finding(
                GRAPH_ALONE,
                message,
                evidence={"side": side, "structure": structure[:500], "nodes": len(g.nodes)},
            ),
            *footprints,
        ),
        explained=explained,
        classification="graph change" if footprints else None,
    )


def _diff_findings(gd: GraphDiff, t: CanonicalGraph, d: CanonicalGraph) -> Iterable[Finding]:
    for r in gd.regions:
        if r.side == "deployed" and r.kind == "injected":
            tree = render_region(d, r)
            yield finding(
                INJECTED_BRANCH,
                f"{len(r.nodes)} added nodes ({', '.join(r.ops)}): {r.reason}; merge via "
                f"{', '.join(r.merge_ops)} at {', '.join(r.merge_nodes)}",
                _locs(r, "deployed"),
                evidence={**r.to_dict(), "tree": tree},
            )
        elif r.side == "deployed" and r.kind in ("pre-processing", "post-processing"):
            yield finding(
                WRAPPER_ADDED,
                f"{r.kind} wrapper: {', '.join(r.ops)} ({r.reason})",
                _locs(r, "deployed"),
                evidence={**r.to_dict(), "tree": render_region(d, r)},
            )
        elif r.kind == "unexplained":
            side = r.side
            what = "added" if side == "deployed" else "removed"
            ev = r.to_dict()
            if side == "deployed":
                ev["tree"] = render_region(d, r)
            yield finding(
                GRAPH_CHANGED,
                f"{len(r.nodes)} {what} nodes ({', '.join(r.ops)}) not explained by any "
                f"known rewrite"
                + (f"; merge at {', '.join(r.merge_nodes)}" if r.merge_nodes else ""),
                _locs(r, side),
                evidence=ev,
            )
    for c in gd.changed:
        yield finding(
            GRAPH_CHANGED,
            f"node {c.deployed.name!r} ({c.deployed.op}): {c.reason}",
            [Location(artifact="deployed", node=c.deployed.name)],
            evidence={"trusted_node": c.trusted.name, "reason": c.reason},
        )
    for io in gd.io_changes:
        yield finding(GRAPH_CHANGED, io)
    bad = [c for c in gd.weight_checks if not c.ok and c.max_rel_err is not None]
    for c in bad[:20]:
        # A fold mismatch spread over most elements is what retrained weights fused
        # afterwards look like (every value moves a little); an edit hidden in a fusion
        # touches few. Say which, since the weight diff cannot pair a fused weight.
        spread = (
            f"; {c.spread:.0%} of elements differ: consistent with weights changed "
            "(fine-tuned) as well as fused, not with a broken fold alone"
            if c.spread is not None and c.spread >= 0.5
            else f"; {c.spread:.2%} of elements differ"
            if c.spread is not None
            else ""
        )
        yield finding(
            REWRITE_WEIGHTS,
            f"{', '.join(c.deployed)} ({c.derivation}) differs from the value recomputed "
            f"from {', '.join(c.trusted[:4])}: max relative error {c.max_rel_err:.3g}" + spread,
            [
                Location(
                    artifact="deployed",
                    tensor=k,
                    # the rows index the compared value, which is the first source's
                    region=TensorRegion(axis=0, indices=c.rows[:256])
                    if c.rows and i == 0
                    else None,
                )
                for i, k in enumerate(c.deployed[:4])
            ],
            evidence={
                "trusted": list(c.trusted),
                "deployed": list(c.deployed),
                "spread": c.spread,
                "rows": list(c.rows[:256]),
            },
        )
    rewrites = [r for r in gd.regions if r.kind in ("fusion", "folding")]
    verified = [c for c in gd.weight_checks if c.ok]
    notes = sorted(set(gd.trusted_notes) | set(gd.deployed_notes))
    if (
        rewrites
        or verified
        or notes != sorted(set(gd.trusted_notes))
        or (gd.n_trusted != gd.n_deployed)
    ):
        unverified = [c for c in gd.weight_checks if c.max_rel_err is None]
        exact = [c for c in verified if not c.quantized]
        quantized = [c for c in verified if c.quantized]
        errs = [c.max_rel_err for c in exact if c.max_rel_err is not None]
        parts = [
            f"{gd.n_matched} of {gd.n_deployed} deployed nodes match trusted ones",
            f"{len(exact)} renamed/fused weights equal the recomputed ones"
            + (f" (max rel. error {max(errs):.2g})" if errs else ""),
        ]
        if quantized:
            # the graph side only proves the quantized weights stand for the trusted ones;
            # whether the quantization itself is as claimed is the claims analysis
            parts.append(
                f"{len(quantized)} dequantized weights within half a quantization "
                "step of the trusted ones (weight changes left to claim checks)"
            )
        if unverified:
            parts.append(f"{len(unverified)} weights could not be read for verification")
        yield finding(
            EQUIVALENT_REWRITE,
            "; ".join(parts),
            evidence={
                "trusted_rewrites": list(gd.trusted_notes),
                "deployed_rewrites": list(gd.deployed_notes),
                "regions": [r.to_dict() for r in rewrites],
            },
        )


def _hints(*graphs: CanonicalGraph) -> list[float]:
    """Small constants the graphs compare values with: probe values worth trying."""
    values: list[float] = []
    for g in graphs:
        for n in g.nodes.values():
            if n.op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
                for i in n.inputs:
                    c = g.consts.get(i)
                    v = c.value() if c is not None and c.numel <= 16 else None
                    if v is not None:
                        values.extend(float(x) for x in np.asarray(v, dtype=np.float64).ravel())
    return list(dict.fromkeys(values))[:32]


def _vocab(g: CanonicalGraph) -> dict[str, int]:
    out = {}
    for i in g.inputs:
        for cid, slot in g.consumers.get(i, ()):
            n = g.nodes[cid]
            if n.op == "Gather" and slot == 1 and n.inputs[0] in g.consts:
                out[i] = g.consts[n.inputs[0]].shape[0]
    return out


def _probe(
    ctx: PairContext, t: CanonicalGraph, d: CanonicalGraph
) -> tuple[list[Finding], dict[str, Any]]:
    from scanner.graph.probe import DEFAULT_BUDGET_S, probe_models

    budget = ctx.options.probe_budget or DEFAULT_BUDGET_S
    res = probe_models(
        ctx.trusted.path, ctx.deployed.path, budget_s=budget, hints=_hints(t, d), vocab=_vocab(t)
    )
    ev = res.to_dict()
    findings: list[Finding] = []
    if res.verdict in ("trigger", "deployed-fails", "drift"):
        worst = max(res.outputs, key=lambda o: max(o.structured_max, o.random_max))
        sev = Severity.CRITICAL if res.verdict == "trigger" else Severity.HIGH
        findings.append(
            finding(
                BEHAVIOUR_DIVERGES,
                f"{res.verdict}: output {worst.name!r} random probes max rel. diff "
                f"{worst.random_max:.3g}, structured max {worst.structured_max:.3g} "
                f"({worst.n_structured_diverged} of {res.n_structured} structured probes diverge; "
                f"worst {worst.worst_probe!r}); {res.n_random + res.n_structured} probes in "
                f"{res.seconds:.1f}s of a {res.budget_s:g}s budget",
                evidence=ev,
                severity=sev,
            )
        )
    return findings, ev


ANALYZERS: list[Analyzer] = [Analyzer("graph", analyze_graph)]


def check_graph_backdoors(artifact: Artifact) -> Iterable[Finding]:
    """Single-artifact check: trigger comparisons, side branches, parameter-free paths."""
    g = canonical_of(artifact)
    if g is None:
        return
    yield from _footprint_findings(g)
