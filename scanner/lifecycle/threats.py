"""The threat catalogue (docs/threats.md) as data: which step kinds each threat applies to
and which evidence covers it, fully or in part.

Evidence kinds: ``signature`` (a verified signed attestation of the step: who did it,
and that the artifact was not swapped afterwards), ``claim`` (the step's transformation
re-derived from its input: any other change is caught), ``pair`` (diff of the output
against the step's input), ``scan`` (single-artifact checks), ``probe`` (behavioural
test of the running model).
"""

from __future__ import annotations

from dataclasses import dataclass

FULL = "full"
PARTIAL = "partial"

WEIGHT_STEPS = (
    "export",
    "convert",
    "cast",
    "quantize",
    "prune",
    "fine-tune",
    "merge",
    "optimize",
    "deploy",
)
REDERIVABLE = ("export", "convert", "cast", "quantize", "prune", "deploy")
"""Step kinds whose claim a checker can recompute (deploy: identical to its input)."""


@dataclass(frozen=True)
class Threat:
    id: str
    title: str
    reference: str
    """Where the threat catalogue describes it: a ``docs/threats.md`` heading anchor."""
    applies_to: tuple[str, ...]
    evidence: dict[str, str]
    """Evidence kind -> ``full`` or ``partial``."""
    graph_only: bool = False
    """Applies only where the output is an ONNX / compiled graph."""
    third_party_only: bool = False
    recommendation: str = ""


CATALOGUE: tuple[Threat, ...] = (
    Threat(
        "T1.1",
        "replaced subnetwork (SRA)",
        "docs/threats.md#replaced-subnetworks",
        WEIGHT_STEPS,
        {"claim": FULL, "pair": FULL, "scan": PARTIAL},
        recommendation="diff the output against the step's input (pair) or re-derive the "
        "step's claim",
    ),
    Threat(
        "T1.2",
        "handcrafted neuron path",
        "docs/threats.md#handcrafted-backdoors",
        WEIGHT_STEPS,
        {"claim": FULL, "pair": FULL, "scan": PARTIAL},
        recommendation="diff against the step's input (pair)",
    ),
    Threat(
        "T1.3",
        "knowledge edit (ROME / MEMIT / abliteration)",
        "docs/threats.md#knowledge-edits",
        ("fine-tune", "merge", *REDERIVABLE),
        {"claim": FULL, "pair": PARTIAL, "probe": PARTIAL},
        recommendation="re-derive the step where possible; for fine-tunes and merges "
        "run a behavioural probe suite and pair analysis",
    ),
    Threat(
        "T1.4",
        "weight steganography and bit flips",
        "docs/threats.md#bit-flips-and-steganography",
        WEIGHT_STEPS,
        {"claim": FULL, "pair": FULL, "scan": PARTIAL},
        recommendation="pair analysis or a re-derived claim",
    ),
    Threat(
        "T2.1",
        "graph backdoor (ShadowLogic, TrojanNet, architectural, ImpNet)",
        "docs/threats.md#graph-backdoors",
        ("export", "convert", "quantize", "optimize", "deploy"),
        {"pair": FULL, "scan": PARTIAL, "probe": PARTIAL},
        graph_only=True,
        recommendation="diff the graph against its source (pair): weight claims do "
        "not cover graph structure",
    ),
    Threat(
        "T3.1",
        "quantization-activated backdoor (box-constrained)",
        "docs/threats.md#quantization-activated-backdoors",
        ("quantize",),
        {"scan": PARTIAL, "pair": PARTIAL, "probe": PARTIAL},
        recommendation="scan the full-precision input for the quantization gap (MS409) "
        "and probe the quantized model",
    ),
    Threat(
        "T3.2",
        "pruning-activated backdoor",
        "docs/threats.md#pruning-activated-backdoors",
        ("prune",),
        {"pair": PARTIAL, "probe": PARTIAL},
        recommendation="pair analysis of the pre-pruning model against the trusted one "
        "and a probe of the pruned model",
    ),
    Threat(
        "T3.3",
        "unfaithful transformation (flipped codes)",
        "docs/threats.md#unfaithful-transformations",
        ("export", "convert", "cast", "quantize", "prune"),
        {"claim": FULL, "pair": PARTIAL},
        recommendation="require a re-derived claim (attestation with claim=pass or "
        "--claim in the gate): a signature alone does not make a claim true",
    ),
    Threat(
        "T4.1",
        "regression or backdoor through continued training / adapters",
        "docs/threats.md#continued-training-adapters-and-merges",
        ("fine-tune", "merge"),
        {"pair": PARTIAL, "probe": PARTIAL, "signature": PARTIAL},
        recommendation="classify the change (pair), run safety and trigger probes, and "
        "require a signed attestation naming who trained",
    ),
    Threat(
        "T5.1",
        "serialization attack (pickle, safetensors header, ONNX paths, GGUF templates)",
        "docs/threats.md#serialization",
        ("train", *WEIGHT_STEPS),
        {"scan": FULL},
        recommendation="scan every artifact before it is loaded",
    ),
    Threat(
        "T6.1",
        "artifact substituted between steps or at rest",
        "docs/threats.md#substitution-and-provenance",
        ("train", *WEIGHT_STEPS),
        {"signature": FULL, "claim": PARTIAL, "pair": PARTIAL},
        recommendation="sign the step's output (signed attestation) and verify it before "
        "the next step consumes it",
    ),
    Threat(
        "T6.2",
        "unaccountable third-party step",
        "docs/threats.md#substitution-and-provenance",
        ("train", *WEIGHT_STEPS),
        {"signature": FULL},
        third_party_only=True,
        recommendation="require a signed step attestation from the third party",
    ),
)


def applicable(threat: Threat, kind: str, fmt: str, third_party: bool) -> bool:
    if kind not in threat.applies_to:
        return False
    if threat.graph_only and fmt != "onnx":
        return False
    return not (threat.third_party_only and not third_party)
