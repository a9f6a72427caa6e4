"""Single-artifact structural checks: what a parseable artifact still should not contain.

Structural errors (truncation, bad offsets, escaping paths ...) never reach these checks:
the readers refuse such files outright (exit 2). These checks look at well-formed
artifacts for content that deserves a look.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from scanner.artifact import Artifact
from scanner.diff.compare import iter_rows
from scanner.findings import Finding, Location, Severity
from scanner.rulebook import define_rule, finding

NON_FINITE = define_rule(
    "MS101",
    "non-finite-weights",
    Severity.MEDIUM,
    "NaN or infinite values in float weights",
    checks="Float tensors holding NaN or +/-inf values.",
    why="Real trained weights are finite. NaN/inf values come from corrupted conversion, bit "
    "flips in the exponent, or values planted to make some inputs blow up.",
    example="`layer.2.weight`: 3 NaN values in rows [17].",
    fix="Re-export from the source checkpoint; if the values are intended (masks stored as "
    "-inf), allow the rule for that tensor in the rules pack.",
    references=("THREATS.md section 1 (bit flips)",),
)
CUSTOM_DOMAIN = define_rule(
    "MS102",
    "onnx-custom-op-domain",
    Severity.MEDIUM,
    "ONNX graph uses custom operator domains",
    checks="Nodes whose operator domain is not a standard ONNX domain (ai.onnx, ai.onnx.ml, "
    "ai.onnx.training, ai.onnx.preview.training) or com.microsoft.",
    why="A custom domain names code the runtime must load from a plugin library; that code is "
    "outside what modelseal or ONNX can verify.",
    example="node `trig_0` uses op `Detect` from domain `com.evil`.",
    fix="Make sure the runtime's custom-op library is trusted and pinned; allow the domain "
    "in the rules pack.",
    references=("THREATS.md section 5",),
)
EXTERNAL_DATA = define_rule(
    "MS103",
    "onnx-external-data",
    Severity.INFO,
    "ONNX weights stored in external files",
    checks="ONNX initializers whose bytes live in separate files beside the model.",
    why="External files are part of the model: sign and ship the whole folder, not only the "
    ".onnx file. (Locations that escape the folder are refused as malformed.)",
    example="412 tensors in `model.onnx.data`.",
    fix="Nothing; informational.",
)
LARGE_METADATA = define_rule(
    "MS104",
    "large-metadata-value",
    Severity.LOW,
    "Unusually large metadata value",
    checks="Metadata strings over 64 KiB (safetensors `__metadata__`, ONNX `metadata_props`), "
    "excluding GGUF tokenizer vocabularies.",
    why="Metadata is a place to smuggle payloads that loaders or downstream tools might act on.",
    example="`metadata_props['notes']` is 3.1 MB.",
    fix="Inspect the value; strip it if it is not needed.",
)

STANDARD_DOMAINS = {
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "ai.onnx.training",
    "ai.onnx.preview.training",
    "com.microsoft",
}
LARGE_METADATA_BYTES = 64 << 10


def check_non_finite(artifact: Artifact) -> Iterable[Finding]:
    for info in artifact.tensors.values():
        if not info.dtype.is_float or info.n_elements == 0:
            continue
        count = 0
        rows: set[int] = set()
        for r0, chunk in iter_rows(artifact, info, native=False):
            bad = ~np.isfinite(chunk)
            n = int(bad.sum())
            if n:
                count += n
                rows.update(int(r) + r0 for r in np.flatnonzero(bad.any(axis=(1, 2)))[:64])
        if count:
            yield finding(
                NON_FINITE,
                f"{info.name}: {count} non-finite values",
                [Location(tensor=info.name, file=info.file)],
                evidence={"count": count, "rows": sorted(rows)[:64]},
            )


def check_onnx_domains(artifact: Artifact) -> Iterable[Finding]:
    if artifact.graph is None:
        return
    custom: dict[str, list[str]] = {}
    for node in artifact.graph.nodes:
        if node.domain not in STANDARD_DOMAINS:
            custom.setdefault(node.domain, []).append(node.name)
    for domain, nodes in sorted(custom.items()):
        yield finding(
            CUSTOM_DOMAIN,
            f"{len(nodes)} nodes use custom domain {domain!r}",
            [Location(node=n) for n in nodes[:20]],
            evidence={"domain": domain, "nodes": nodes[:100]},
        )


def check_external_data(artifact: Artifact) -> Iterable[Finding]:
    if artifact.format != "onnx":
        return
    external = [f.relpath for f in artifact.files[1:] if f.role == "weights"]
    if external:
        yield finding(
            EXTERNAL_DATA,
            f"weights stored in {', '.join(external[:5])}",
            [Location(file=f) for f in external[:5]],
        )


def check_metadata_size(artifact: Artifact) -> Iterable[Finding]:
    sources = {
        "safetensors": artifact.metadata.get("safetensors") or {},
        "metadata_props": artifact.metadata.get("metadata_props") or {},
    }
    for where, values in sources.items():
        for key, value in values.items():
            if isinstance(value, str) and len(value.encode()) > LARGE_METADATA_BYTES:
                yield finding(
                    LARGE_METADATA,
                    f"{where}[{key!r}] is {len(value.encode()):,} bytes",
                    evidence={"key": key, "bytes": len(value.encode())},
                )
