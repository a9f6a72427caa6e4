"""Single-artifact structural checks: what a parseable artifact still should not contain.

Structural errors (truncation, bad offsets, escaping paths ...) never reach these checks:
the readers refuse such files outright (exit 2). These checks look at well-formed
artifacts for content that deserves a look.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

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
    references=("docs/threats.md#bit-flips-and-steganography",),
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
    references=("docs/threats.md#serialization-onnx",),
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
    "Unusually large metadata value or doc string",
    checks="Metadata values and doc strings over 64 KiB (safetensors `__metadata__`, ONNX "
    "`metadata_props` and every `doc_string`, GGUF string values; GGUF token arrays are not "
    "strings) and up to the MS105 limit.",
    why="Metadata is a place to smuggle payloads that loaders or downstream tools might act on.",
    example="`metadata_props['notes']` is 310 KB.",
    fix="Inspect the value; strip it if it is not needed.",
    references=("docs/hostile-input.md#oversized-strings",),
)
OVERSIZED_STRING = define_rule(
    "MS105",
    "oversized-string",
    Severity.MEDIUM,
    "A string far larger than any real model needs",
    checks="Every string a model file carries outside tensor data, against limits: metadata "
    "values and doc strings over 1 MiB, names and identifiers (tensor, node, input, output, "
    "operator, domain and metadata key names, producer) over 4 KiB, and more than 16 MiB of "
    "such strings in one file. Byte payloads (tensor data, ONNX byte attributes) are not "
    "strings and are not counted.",
    why="Model viewers, registries and hub pages render names, doc strings and metadata; a "
    "50 MB string stalls or crashes them (denial of service), and it is room for a payload "
    "that no weight check looks at. Real exporters write names of at most a few hundred "
    "bytes and doc strings of a few kilobytes.",
    example="`metadata_props['description']` is 52,428,800 bytes (limit 1,048,576).",
    fix="Strip the string (onnx: edit `metadata_props` / `doc_string` and save); find out who "
    "added it. Allow the rule for the file in a rules pack if the value is expected.",
    references=("docs/hostile-input.md#oversized-strings", "docs/threats.md#serialization"),
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
"""MS104: a metadata value or doc string this large deserves a look."""
STRING_LIMITS = {"metadata": 1 << 20, "doc": 1 << 20, "name": 4 << 10}
"""MS105: the largest metadata value, doc string and name/identifier a model file may hold."""
MAX_STRING_TOTAL = 16 << 20
"""MS105: the most string bytes (outside tensor data) one model file may hold."""


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
    """MS104 / MS105: large and oversized strings in every model file of the artifact."""
    files = [(artifact.files[0].relpath if artifact.files else "", artifact.metadata)]
    files += [
        (rel, meta)
        for rel, meta in (artifact.metadata.get("model_files") or {}).items()
        if isinstance(meta, Mapping)
    ]
    for file, meta in files:
        model = artifact.graph.model if artifact.graph is not None else None
        if file == files[0][0] and model is not None:
            # The walk sees every string of the ONNX file, metadata_props included.
            strings = list(_onnx_strings(model))
            strings += [s for s in _metadata_strings(meta) if not s[0].startswith("metadata_")]
        else:
            strings = list(_metadata_strings(meta))
        strings += [("tensor name", "name", name, None) for name in artifact.tensors]
        yield from _string_findings(file, strings)


def _metadata_strings(meta: Mapping[str, Any]) -> Iterator[tuple[str, str, str, str | None]]:
    """(where, kind, value, node) of metadata strings: safetensors, ONNX props, GGUF."""
    for where, values in (
        ("safetensors __metadata__", meta.get("safetensors")),
        ("metadata_props", meta.get("metadata_props")),
        ("gguf", meta.get("gguf")),
    ):
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            yield f"{where} key", "name", str(key), None
            if isinstance(value, str):
                yield f"{where}[{str(key)[:60]!r}]", "metadata", value, None


def _onnx_strings(model: Any) -> Iterator[tuple[str, str, str, str | None]]:
    """Every string field of an ONNX ModelProto, found through the protobuf descriptors
    (bytes fields, such as tensor data, are never read)."""
    stack: list[tuple[Any, str, str | None]] = [(model, "model", None)]
    while stack:
        message, path, node = stack.pop()
        descriptor = message.DESCRIPTOR
        if descriptor.name == "NodeProto":
            node = message.name or node
        for field in descriptor.fields:
            if field.type == field.TYPE_STRING:
                values = getattr(message, field.name)
                if not _repeated(field):
                    values = [values] if values else []
                kind = _kind(descriptor.name, field.name)
                for value in values:
                    yield f"{path}.{field.name}", kind, value, node
            elif field.type == field.TYPE_MESSAGE:
                if _repeated(field):
                    for i, sub in enumerate(getattr(message, field.name)):
                        # metadata_props['key'] reads better than metadata_props[3]
                        label = repr(sub.key[:60]) if hasattr(sub, "key") else i
                        stack.append((sub, f"{path}.{field.name}[{label}]", node))
                elif message.HasField(field.name):
                    stack.append((getattr(message, field.name), f"{path}.{field.name}", node))


def _repeated(field: Any) -> bool:
    # protobuf 5.28+ has is_repeated; older ones only the label.
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else field.label == field.LABEL_REPEATED


def _kind(message: str, field: str) -> str:
    if field == "doc_string":
        return "doc"
    if message == "StringStringEntryProto" and field == "value":
        return "metadata"
    return "name"


def _string_findings(
    file: str, strings: list[tuple[str, str, str, str | None]]
) -> Iterator[Finding]:
    total = 0
    reported = 0
    for where, kind, value, node in strings:
        size = len(value.encode("utf-8", "surrogatepass"))
        total += size
        limit = STRING_LIMITS[kind]
        location = Location(file=file or None, node=node)
        if size > limit and reported < 50:
            reported += 1
            label = {"metadata": "metadata value", "doc": "doc string", "name": "name"}[kind]
            yield finding(
                OVERSIZED_STRING,
                f"{where} is {size:,} bytes, over the {limit:,}-byte limit for a {label}",
                [location],
                evidence={"where": where, "kind": kind, "bytes": size, "limit": limit},
            )
        elif kind != "name" and size > LARGE_METADATA_BYTES:
            yield finding(
                LARGE_METADATA,
                f"{where} is {size:,} bytes",
                [location],
                evidence={"where": where, "key": where, "bytes": size},
            )
    if total > MAX_STRING_TOTAL:
        yield finding(
            OVERSIZED_STRING,
            f"{file or 'the file'} holds {total:,} bytes of names, doc strings and metadata, "
            f"over the {MAX_STRING_TOTAL:,}-byte limit",
            [Location(file=file or None)],
            evidence={"kind": "total", "bytes": total, "limit": MAX_STRING_TOTAL},
        )
