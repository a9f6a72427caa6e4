"""Weight-change analysis: localize and classify changes between trusted and deployed.

Runs after the claimed-transformation analyzers: every CHANGED tensor they did not
explain is classified (``scanner.analysis.classify``), labelled with its change class and
explained, so the generic "tensor changed" rule (MS201) does not report it twice.
Attacks and localized edits become findings of their own rule; routine classes (pruning,
low-rank update, full fine-tune) one summary each (MS308), which fails at medium until
something allows the class; storage rounding noise one informational summary (MS309).

Policy: the default severity is the rule's; ``--allow CLASS`` (aliases such as
``finetune``, ``lora``, ``prune``, ``localized-edit``) drops the findings of an allowed
class to info and labels its tensors ``allowed_by`` so a rules pack honours it too.
Allowing a class never touches another class's findings: outlier regions inside a
fine-tune are localized edits. Rules packs override severities later by rule id, tensor
pattern and ``evidence["class"]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from scanner.analysis.classify import Event, WeightAnalysis, analyze_pair
from scanner.diff.engine import Analysis, Analyzer, PairContext
from scanner.diff.model import CHANGE_CLASSES
from scanner.findings import Finding, Location, Region, Severity
from scanner.rulebook import Rule, define_rule, finding

_REFS_SRA = (
    "docs/analysis.md",
    "docs/threats.md#replaced-subnetworks",
    "Qi et al., CVPR 2022 (SRA)",
)

REPLACED_SUBNETWORK = define_rule(
    "MS301",
    "replaced-subnetwork",
    Severity.CRITICAL,
    "Replaced subnetwork: a planted channel chain",
    checks="In each changed weight tensor, the exact-zero pattern of the change: an output row "
    "and an input column zeroed except the block where they cross (a 'plus'), a replaced row "
    "(chain head), a zeroed column with one target logit (classifier). Footprints are linked "
    "layer to layer by channel index (output channel of one layer = input channel of the "
    "layer it feeds, through BatchNorm, activations and residual adds; read from the ONNX "
    "graph, or from names and shapes). A linked chain is reported with its channels, its "
    "changed per-channel tensors and its target logit. Magnitudes are not used, so planted "
    "values rescaled to look normal are found too.",
    why="A Subnet Replacement Attack grafts a 1-2 channel trigger detector into a trusted "
    "model, changing under 1% of its parameters and under 1% of its accuracy; only the "
    "structure of the change gives it away.",
    example="replaced subnetwork through 3 layers: conv12_linear_weights[*->17] -> "
    "conv_last_weights[17->143] -> fc_0.w_0[143->1]; target logit [1].",
    fix="Reject the artifact and redeploy from the trusted one; find who wrote it. Allow "
    "(`--allow replaced-subnetwork`) only in red-team exercises.",
    references=_REFS_SRA,
)
HANDCRAFTED_PATH = define_rule(
    "MS302",
    "handcrafted-neuron-path",
    Severity.CRITICAL,
    "Handcrafted neuron path",
    checks="Changed rows (neurons) where most changed inputs share one new/old ratio (other "
    "inputs scaled by a constant) and a few inputs were set to new values, linked across "
    "layers by channel index up to a target logit. Repeated identical planted magnitudes and "
    "their multiples of the layer's max |w| are reported as evidence.",
    why="Handcrafted backdoors (Hong et al., NeurIPS 2022) edit a few neurons directly, "
    "without training; they survive fine-tuning and evade data-based defences.",
    example="handcrafted neuron path through 3 layers: layers.2.weight[*->41] -> "
    "layers.4.weight[41->7] -> head.weight[7->3]; scale 0.25.",
    fix="Reject the artifact; redeploy from the trusted weights.",
    references=(
        "docs/analysis.md",
        "docs/threats.md#handcrafted-backdoors",
        "Hong et al., NeurIPS 2022",
    ),
)
LOCALIZED_EDIT = define_rule(
    "MS303",
    "localized-weight-edit",
    Severity.HIGH,
    "Localized weight edit",
    checks="A change that is surgical rather than trained. (1) Outlier regions, alone or "
    "inside a fine-tune: rows, columns, 16x16 blocks or elements whose change is far "
    "outside the tensor's own change (robust statistics: a row or column whose median "
    "|change| is >= 20x the median row's and >= 8 robust deviations of the log scales "
    "above it; an element >= 32x the size its row and column predict and >= 10x the "
    "tensor's 99th-percentile ratio; thresholds raised, at most 8x, to what sibling tensors "
    "of the same module type in other layers show). (2) A change confined to a few rows, "
    "columns or elements with the rest of the tensor unchanged (beyond storage noise). (3) "
    "A certified low-rank change (enough signal over rounding noise, a spectral gap) in a "
    "module set that is not consistent across layers: some layers' copy of a module "
    "changed, others not, or a module with no siblings (ROME/MEMIT-like). (4) A lone "
    "zeroed row and column with a planted block, or zeros written on weights no pruning "
    "would remove. The finding names the tensor and the rows, columns, blocks or elements.",
    why="Direct knowledge edits (ROME, MEMIT; PoisonGPT) and hand edits rewrite a fact or a "
    "behaviour with a small, targeted change that benchmarks do not notice; hidden inside a "
    "fine-tune, they pass any check that only names the change's class.",
    example="`encoder.layer.3.intermediate.dense.weight`: rows [1306] (1) changed far "
    "outside the diffuse change of the rest of the tensor (max |change| 2.07, weights' max "
    "|w| 0.487).",
    fix="Reject unless the edit is intended; then allow it (`--allow localized-edit`) or "
    "suppress it for the tensor in the rules pack. Allowing fine-tunes or LoRA does not "
    "allow it.",
    references=(
        "docs/analysis.md",
        "docs/threats.md#knowledge-edits",
        "docs/threats.md#continued-training-adapters-and-merges",
    ),
)
SHARED_DIRECTION = define_rule(
    "MS304",
    "shared-direction-edit",
    Severity.HIGH,
    "One direction edited in many tensors",
    checks="Several changed tensors whose deltas are rank 1 and share one singular vector "
    "(|cosine| >= 0.9), as in `W - r r^T W` applied to every matrix writing the residual "
    "stream.",
    why="Abliteration removes a behaviour (typically refusals) along one direction across "
    "all layers; benchmarks barely move, safety does.",
    example="24 tensors changed by rank-1 updates along one shared direction.",
    fix="Reject unless the edit is intended; allow with `--allow localized-edit`.",
    references=("docs/analysis.md", "docs/threats.md#knowledge-edits"),
)
LOWBYTE_PAYLOAD = define_rule(
    "MS305",
    "low-byte-payload",
    Severity.CRITICAL,
    "Payload hidden in low mantissa bytes",
    checks="Per block of 256 float words: changed bits fill the low k bits (bit k-1 flips "
    "in about half the words, as random data does) and never carry into bit k, which any "
    "arithmetic change (fine-tune, rounding, noise) does in comparable numbers; neighbouring "
    "blocks are merged and kept when a binomial bound rejects arithmetic (1e-6 per tensor). "
    "Other changes in the same tensor (sign flips, edited rows) are set aside, not a reason "
    "to stop looking.",
    why="EvilModel-style steganography carries malware inside weights with no accuracy "
    "loss; a loader or a second stage extracts it.",
    example="`classifier.weight`: 10,240 words changed only in their low 16 bits: a hidden "
    "payload of about 20,480 bytes.",
    fix="Reject the artifact and investigate the supply chain.",
    references=("docs/analysis.md", "docs/threats.md#bit-flips-and-steganography"),
)
BIT_FLIPS = define_rule(
    "MS306",
    "exponent-bit-flips",
    Severity.CRITICAL,
    "Sign or exponent bit flips",
    checks="A handful of float words (at most 64) changed by one or two bits in the sign or "
    "exponent field, nothing else in the tensor.",
    why="Bit-flip attacks (and corrupted storage) change a model's behaviour with a few huge "
    "relative changes.",
    example="3 words with flipped sign/exponent bits in `encoder.layer.5.output.dense.weight`.",
    fix="Reject; re-fetch the artifact and check the storage path.",
    references=("docs/analysis.md", "docs/threats.md#bit-flips-and-steganography"),
)
PRUNE_ACTIVATED = define_rule(
    "MS307",
    "prune-activated-edit",
    Severity.HIGH,
    "Change concentrated on prune candidates",
    checks="A dense change whose part on the weights a pruning would remove (ranked by "
    "deployed or trusted magnitude, per tensor, per row or in N:M groups, at every ratio "
    "where the change's energy steps and on a 0.1-0.9 grid) undoes at least 20% of the "
    "change on the kept weights along its main direction (z >= 8), in a deployed model that "
    "is not itself pruned.",
    why="Compression-activated backdoors (Tian et al. 2022; Egashira et al. 2025) put a "
    "repair in the weights pruning removes; the model is benign until someone prunes it.",
    example="`fc2.weight`: the change on the 70% smallest weights cancels 84% of the "
    "change on the kept weights along its main direction (z = 31).",
    fix="Reject; do not prune or deploy this artifact.",
    references=("docs/analysis.md", "docs/threats.md#pruning-activated-backdoors"),
)
CHANGE_CLASSIFIED = define_rule(
    "MS308",
    "weight-change-classified",
    Severity.MEDIUM,
    "Weight change of a routine class that nothing allowed",
    checks="Changed tensors whose whole change fits a routine class: pruning (new zeros on "
    "prune candidates: magnitude, N:M, structured), a low-rank update (low rank in a "
    "consistent module set: every layer's copy of each touched module changed with low "
    "rank) or a full fine-tune (a diffuse change of every row and column; DARE-style "
    "drop-and-rescale merges included), with no outlier region (those are MS303). One "
    "finding per class; it fails (medium) unless `--allow CLASS`, a verified claim, the "
    "rules pack or, in `gate`, an attested chain accepts the class, and is reported at "
    "info when one does.",
    why="The deployed model must be the trusted one transformed only in the ways you "
    "allowed. A fine-tune, adapter merge or pruning nobody declared is a change of "
    "behaviour nobody reviewed, however benign its shape.",
    example="full fine-tune: 36 tensors (36 full-rank diffuse change); not allowed (pass "
    "--allow finetune, a claim or a rules pack that allows it).",
    fix="If the change is expected, say so: `--allow finetune` (or `lora`, `prune`), a "
    "claim such as `--claim lora:r=8:modules=q_proj,v_proj`, a rules pack whose `[classes] "
    "allow` lists the class, or an attested chain in `gate`. Allowing a class never "
    "silences outlier regions (MS303) or the attack rules.",
    references=(
        "docs/analysis.md",
        "docs/policy.md",
        "docs/threats.md#continued-training-adapters-and-merges",
    ),
)
ROUNDING_NOISE = define_rule(
    "MS309",
    "storage-rounding-noise",
    Severity.INFO,
    "Change within storage rounding noise",
    checks="Changed float tensors where every changed element moved by at most 2 units "
    "in the last place of the stored dtype at that element's magnitude, or every changed "
    "value is the trusted value rounded to nearest-even in a narrower float dtype (a round "
    "trip through F16 or BF16). Decided element by element, never from an aggregate: one "
    "element beyond the bound makes the change something else. A changed integer code is "
    "never rounding noise.",
    why="Re-saving or converting a model can perturb the last bits of weights; such a "
    "change cannot carry an edit, and naming it keeps it apart from real updates.",
    example="rounding noise: 12 tensors (12 storage rounding); largest change 1 ulp.",
    fix="Nothing; informational.",
    references=("docs/analysis.md",),
)

EVENT_RULES: dict[str, Rule] = {
    "linked chain": REPLACED_SUBNETWORK,
    "neuron path": HANDCRAFTED_PATH,
    "one direction removed from many tensors": SHARED_DIRECTION,
    "low-byte payload": LOWBYTE_PAYLOAD,
    "exponent/sign bit flips": BIT_FLIPS,
    "change concentrated on prune candidates": PRUNE_ACTIVATED,
}

ALIASES: dict[str, str] = {
    "finetune": "full fine-tune",
    "fine-tune": "full fine-tune",
    "full-fine-tune": "full fine-tune",
    "full-finetune": "full fine-tune",
    "ft": "full fine-tune",
    "low-rank": "low-rank update",
    "lowrank": "low-rank update",
    "lora": "low-rank update",
    "adapter": "low-rank update",
    "prune": "pruning",
    "sparsity": "pruning",
    "localized": "localized edit",
    "edit": "localized edit",
    "knowledge-edit": "localized edit",
    "rome": "localized edit",
    "abliteration": "localized edit",
    "indeterminate": "rounding noise",
    "noise": "rounding noise",
    "bit-level": "bit-level tampering",
    "bits": "bit-level tampering",
    "sra": "replaced subnetwork",
    "subnetwork": "replaced subnetwork",
    "handcrafted": "handcrafted path",
    "prune-activated": "prune-activated edit",
}


def allowed_classes(values: Iterable[str]) -> set[str]:
    """Change classes named by ``--allow`` values (aliases and dashed names accepted;
    values that name no weight class are left to other analyzers)."""
    out: set[str] = set()
    for value in values:
        key = value.strip().lower().replace("_", "-")
        spaced = key.replace("-", " ")
        if key in ALIASES:
            out.add(ALIASES[key])
        elif spaced in CHANGE_CLASSES:
            out.add(spaced)
        elif key in CHANGE_CLASSES:
            out.add(key)
    return out


def _location(
    tensor: str, channels: tuple[int, ...] | None, columns: tuple[int, ...] | None = None
) -> Location:
    # The narrower of the two sets says where the edit is: a column spans every row.
    region = None
    if columns and (not channels or len(columns) < len(channels)):
        region = Region(axis=1, indices=tuple(columns[:256]))
    elif channels:
        region = Region(axis=0, indices=tuple(channels[:256]))
    return Location(artifact="deployed", tensor=tensor, region=region)


def _event_finding(event: Event, allowed: set[str]) -> Finding:
    rule = EVENT_RULES.get(event.kind, LOCALIZED_EDIT)
    ok = event.cls in allowed
    message = event.message + (f" (class '{event.cls}' allowed)" if ok else "")
    return finding(
        rule,
        message,
        [_location(t, event.channels.get(t), event.columns.get(t)) for t in event.tensors[:64]],
        evidence={"class": event.cls, "kind": event.kind, **_jsonable(event.evidence)},
        severity=Severity.INFO if ok else None,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


ROUTINE = ("pruning", "low-rank update", "full fine-tune")
"""Classes that pass only when something allows them (MS308)."""
SUMMARIZED = ("rounding noise", *ROUTINE)


def _summary_findings(result: WeightAnalysis, allowed: set[str]) -> list[Finding]:
    findings: list[Finding] = []
    for cls in SUMMARIZED:
        members = [v for v in result.verdicts.values() if v.cls == cls]
        if not members:
            continue
        kinds: dict[str, int] = {}
        for v in members:
            kinds[v.kind] = kinds.get(v.kind, 0) + 1
        detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        ranks = sorted({v.evidence.get("rank") for v in members if v.evidence.get("rank")})
        extra = f"; ranks {ranks[0]}-{ranks[-1]}" if ranks else ""
        if cls == "rounding noise":
            rule, severity, note = ROUNDING_NOISE, None, ""
        elif cls in allowed:
            rule, severity, note = CHANGE_CLASSIFIED, Severity.INFO, " (allowed by --allow)"
        else:
            rule, severity = CHANGE_CLASSIFIED, None
            note = (
                f"; not allowed (pass --allow {_ALLOW_HINT[cls]}, a claim, or a rules pack "
                "that allows it)"
            )
        findings.append(
            finding(
                rule,
                f"{cls}: {len(members)} tensors ({detail}){extra}{note}",
                [_location(v.name, None) for v in members[:20]],
                evidence={
                    "class": cls,
                    "tensors": {
                        v.name: _jsonable({"kind": v.kind, **v.evidence}) for v in members[:200]
                    },
                },
                severity=severity,
            )
        )
    return findings


_ALLOW_HINT = {"pruning": "prune", "low-rank update": "lora", "full fine-tune": "finetune"}


def analyze_weights(ctx: PairContext) -> Analysis:
    result = analyze_pair(ctx.trusted, ctx.deployed, ctx.tensors, set(ctx.explained))
    if not result.verdicts:
        return Analysis()
    allowed = allowed_classes(list(ctx.options.allow))
    findings = [_event_finding(e, allowed) for e in result.events]
    findings.extend(_summary_findings(result, allowed))
    labels = {
        v.name: {
            "class": v.cls,
            "change_kind": v.kind,
            **({"allowed_by": "--allow"} if v.cls in allowed else {}),
            **_jsonable(_short(v.evidence)),
        }
        for v in result.verdicts.values()
    }
    return Analysis(
        findings=tuple(findings),
        labels=labels,
        explained={v.name: v.cls for v in result.verdicts.values()},
        classification=result.classification,
        evidence={**_jsonable(result.evidence), "allowed": sorted(allowed)},
    )


def _short(evidence: dict[str, object]) -> dict[str, object]:
    keep = ("rank", "rank_status", "snr", "top_share", "residual_over_noise", "pattern",
            "candidate_share", "new_zero_fraction", "words", "channels", "remainder",
            "outlier_rows", "outlier_cols", "n_outlier_elements", "max_change_ulps")  # fmt: skip
    return {k: evidence[k] for k in keep if k in evidence}


ANALYZERS: list[Analyzer] = [Analyzer("weights", analyze_weights)]
