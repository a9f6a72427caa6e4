"""Catalogued attacks and their benign twins, by name, for any model the scanner reads.

Each :class:`Entry` maps a name (``sra``, ``rank1``, ``int8`` ...) to a planting
primitive of :mod:`scanner.redteam.weights`, :mod:`scanner.redteam.quant` or
:mod:`scanner.redteam.graph` and says how to aim it at the user's model: which tensors
(found from the model's own layer graph, :func:`scanner.analysis.layers.infer_layers`),
which strength parameter it sweeps, and which formats it applies to. The planting itself
stays in those modules; this module only chooses targets, converts to and from the
stored layout and describes the result (:class:`Plan`).

:func:`plant` runs one entry on one model and writes the copy plus its ground truth.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scanner import __version__
from scanner.errors import UsageError
from scanner.redteam import groundtruth as gt
from scanner.redteam.graph_planters import _image_graph, _token_trigger
from scanner.redteam.groundtruth import GroundTruth, truth_path
from scanner.redteam.io import ModelCopy
from scanner.redteam.plan import (  # noqa: F401  (the catalogue's types, and targeting for evaluate)
    ATTACK,
    TAMPER,
    TRANSFORM,
    Context,
    Entry,
    NotApplicableError,
    Plan,
    Planter,
    _float32_weights,
    _matrices,
    _orient,
)
from scanner.redteam.quant_planters import _gguf_quant, _int8
from scanner.redteam.twin_planters import (  # noqa: F401  (PARAMETER_MIN_ELEMENTS: tests)
    PARAMETER_MIN_ELEMENTS,
    _cast,
    _finetune,
    _lora,
    _ort,
    _prune,
    _rename,
)
from scanner.redteam.weight_planters import (  # noqa: F401  (tamper_targets: evaluate)
    _abliteration,
    _exponent,
    _gap,
    _handcrafted,
    _lowbyte,
    _prune_activated,
    _rank1,
    _sra,
    _tamper,
    tamper_targets,
)

# -------------------------------------------------------------------------- catalogue

ST, OX, GG = "safetensors", "onnx", "gguf"
WEIGHTS = (ST, OX, GG)

ENTRIES: tuple[Entry, ...] = (
    Entry(
        "sra",
        ATTACK,
        "replaced subnetwork",
        "Subnet Replacement Attack over a full layer chain (Qi et al. 2022)",
        WEIGHTS,
        _sra(False),
        "width",
        (1.0, 2.0),
        1.0,
    ),
    Entry(
        "sra-last",
        ATTACK,
        "replaced subnetwork",
        "SRA on the last three layers, planted values drawn from each layer's own distribution",
        WEIGHTS,
        _sra(True),
        "width",
        (1.0, 2.0),
        1.0,
    ),
    Entry(
        "handcrafted",
        ATTACK,
        "handcrafted path",
        "Hong et al. neuron path: repeated max-multiples, other inputs scaled down",
        WEIGHTS,
        _handcrafted,
        "suppress",
        (0.2, 0.5),
    ),
    Entry(
        "rank1",
        ATTACK,
        "localized edit",
        "ROME-like rank-1 update of one matrix",
        WEIGHTS,
        _rank1,
        "rel",
        (0.002, 0.01, 0.05),
    ),
    Entry(
        "abliteration",
        ATTACK,
        "localized edit",
        "one shared direction removed from every matrix writing to the residual stream",
        WEIGHTS,
        _abliteration,
    ),
    Entry(
        "quant-gap-int8",
        ATTACK,
        "quantization gap",
        "weights pressed to int8 bin walls (box-constrained quantization attack)",
        WEIGHTS,
        _gap("int8"),
        "margin",
        (0.02, 0.06, 0.12),
    ),
    Entry(
        "quant-gap-q8_0",
        ATTACK,
        "quantization gap",
        "weights pressed to Q8_0 bin walls",
        WEIGHTS,
        _gap("q8_0"),
        "margin",
        (0.02, 0.06, 0.12),
    ),
    Entry(
        "quant-gap-q4_0",
        ATTACK,
        "quantization gap",
        "weights pressed to Q4_0 bin walls",
        WEIGHTS,
        _gap("q4_0"),
        "margin",
        (0.02, 0.06, 0.12),
    ),
    Entry(
        "prune-activated",
        ATTACK,
        "prune-activated edit",
        "edit on kept weights repaired by prune candidates (wakes up when pruned)",
        WEIGHTS,
        _prune_activated,
        "rel",
        (0.005, 0.01, 0.05),
    ),
    Entry(
        "unfaithful-quant",
        ATTACK,
        "unfaithful transformation",
        "claimed round-to-nearest quantization with codes flipped on the largest weights",
        WEIGHTS,
        _int8(True),
        "fraction",
        (0.001, 0.003, 0.01),
    ),
    Entry(
        "lowbyte-payload",
        ATTACK,
        "bit-level tampering",
        "EvilModel: payload in the low 2 bytes of float32 weights",
        (ST, OX),
        _lowbyte,
        "fraction",
        (0.01, 0.1, 0.5),
    ),
    Entry(
        "exponent-flip",
        ATTACK,
        "bit-level tampering",
        "a few exponent bits flipped",
        (ST, OX),
        _exponent,
        "count",
        (1.0, 3.0, 10.0),
    ),
    Entry(
        "shadowlogic",
        ATTACK,
        "graph backdoor",
        "ShadowLogic: corner-patch trigger, Where override of the output",
        (OX,),
        _image_graph("shadowlogic"),
        "trigger value",
        (3.0,),
    ),
    Entry(
        "trojannet",
        ATTACK,
        "graph backdoor",
        "TrojanNet: parallel detector on an input window added to the logits",
        (OX,),
        _image_graph("trojannet"),
        "trigger value",
        (3.0,),
    ),
    Entry(
        "deeppayload",
        ATTACK,
        "graph backdoor",
        "DeepPayload: detector gate blends the logits with a target",
        (OX,),
        _image_graph("deeppayload"),
        "trigger value",
        (3.0,),
    ),
    Entry(
        "parameter-free",
        ATTACK,
        "graph backdoor",
        "architectural backdoor: parameter-free pooling path to the logits",
        (OX,),
        _image_graph("parameter-free"),
        "trigger value",
        (3.0,),
    ),
    Entry(
        "token-trigger",
        ATTACK,
        "graph backdoor",
        "ShadowLogic on token ids: Equal(input_ids, t) masks an added residual vector",
        (OX,),
        _token_trigger,
        "scale",
        (50.0,),
    ),
    # Generic tampering (no attack semantics): the minimal-detectable-change sweep.
    *(
        Entry(
            f"tamper-{shape}",
            ATTACK,
            TAMPER,
            f"generic tamper: one {shape} region moved by magnitude x the tensor's std",
            WEIGHTS,
            _tamper(shape),
            "magnitude",
            (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
            1e-3,
        )
        for shape in ("element", "row", "column", "block", "channel", "scattered")
    ),
    # Benign twins.
    Entry("cast-fp16", TRANSFORM, "cast", "float32 -> float16", (ST,), _cast("fp16")),
    Entry("cast-bf16", TRANSFORM, "cast", "float32 -> bfloat16", (ST,), _cast("bf16")),
    Entry(
        "int8",
        TRANSFORM,
        "quantization",
        "round-to-nearest int8 per-channel (safetensors layout / onnxruntime dynamic)",
        (ST, OX),
        _int8(False),
    ),
    Entry(
        "gguf-q8_0",
        TRANSFORM,
        "quantization",
        "GGUF Q8_0 (from safetensors) or re-quantization of a GGUF in place",
        (ST, GG),
        _gguf_quant("q8_0"),
    ),
    Entry(
        "gguf-q4_0",
        TRANSFORM,
        "quantization",
        "GGUF Q4_0 from safetensors",
        (ST,),
        _gguf_quant("q4_0"),
    ),
    Entry(
        "prune-magnitude",
        TRANSFORM,
        "pruning",
        "magnitude pruning of every matrix",
        WEIGHTS,
        _prune("magnitude"),
        "sparsity",
        (0.1, 0.3, 0.5),
    ),
    Entry("prune-2:4", TRANSFORM, "pruning", "2:4 structured sparsity", WEIGHTS, _prune("2:4")),
    Entry(
        "prune-channel",
        TRANSFORM,
        "pruning",
        "structured pruning: lowest-norm output channels zeroed",
        WEIGHTS,
        _prune("channel"),
        "fraction",
        (0.05, 0.1),
    ),
    Entry(
        "lora-merge",
        TRANSFORM,
        "low-rank update",
        "a random rank-8 adapter merged into module types covering about a third of the "
        "matrices, in every layer that has them",
        WEIGHTS,
        _lora,
        "rel",
        (0.002, 0.01, 0.05),
    ),
    Entry(
        "finetune",
        TRANSFORM,
        "full fine-tune",
        "simulated full fine-tune: every tensor moves by a smooth dense delta",
        WEIGHTS,
        _finetune,
        "rel",
        (0.002, 0.01, 0.05),
    ),
    Entry(
        "ort-optimize",
        TRANSFORM,
        "graph rewrite",
        "ONNX Runtime offline optimization (basic level)",
        (OX,),
        _ort,
    ),
    Entry("rename", TRANSFORM, "renamed", "every node / tensor renamed", (ST, OX), _rename),
)

REGISTRY: dict[str, Entry] = {e.name: e for e in ENTRIES}
ATTACKS = tuple(e.name for e in ENTRIES if e.kind == ATTACK)
TRANSFORMS = tuple(e.name for e in ENTRIES if e.kind == TRANSFORM)


def get(name: str) -> Entry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown attack or transform {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None


def applicable(name: str, fmt: str) -> bool:
    return fmt in get(name).formats


# ------------------------------------------------------------------------ planting


def plant(
    model: Path,
    name: str,
    out: Path,
    *,
    seed: int = 0,
    strength: float | None = None,
    params: Mapping[str, str] | None = None,
    exact_output: bool = False,
    mark: bool = False,
) -> GroundTruth:
    """Plant ``name`` into a copy of ``model`` at ``out``; write and return its ground
    truth (``OUT.groundtruth.json``). The output path's suffix follows the format; with
    ``exact_output`` an ``out`` whose suffix is not the written format's is refused
    (nothing is written) instead of renamed. A parameter the entry does not take is
    refused before anything is written. The copy's container metadata stays the
    source's unless ``mark`` (the marker is a metadata change a strict gate fails on, so
    a marked copy must never be used to measure detection)."""
    entry = get(name)
    ctx = Context(
        seed, float(entry.default_strength if strength is None else strength), dict(params or {})
    )
    with ModelCopy(model) as copy:
        if copy.format not in entry.formats:
            raise NotApplicableError(
                f"{name} applies to {', '.join(entry.formats)} models; {model} is {copy.format}"
            )
        if entry.name == "unfaithful-quant" and copy.format == "gguf":
            plan = _gguf_quant("q8_0", tamper=True)(copy, ctx)
        else:
            plan = entry.planter(copy, ctx)
        unknown = sorted(set(ctx.params) - ctx.asked)
        if unknown:
            takes = ", ".join(sorted(ctx.asked)) or "no parameters"
            raise UsageError(f"{name} does not take {', '.join(unknown)}; it takes: {takes}")
        written = plan.suffix or (None if copy.path.is_dir() else f".{copy.format}")
        if exact_output and written and out.suffix.lower() != written:
            raise UsageError(
                f"{out} does not end in {written}, the format {name} writes; "
                f"name it {out.with_suffix(written).name}"
            )
        if plan.suffix and out.suffix != plan.suffix:
            out = out.with_suffix(plan.suffix)
        marker = {
            "produced_by": "modelseal redteam",
            "version": __version__,
            "name": name,
            "kind": entry.kind,
            "seed": seed,
            "strength": ctx.strength,
            "warning": "synthetic red-team artifact; not a real model",
        }
        import json

        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        text = json.dumps(marker, sort_keys=True) if mark else None
        if plan.writer is not None:
            notes = dict(plan.writer(out, text))
        else:
            notes = copy.save(
                out, plan.changed, marker if mark else None, onnx_model=plan.onnx_model
            )
        source = str(copy.path)
        fmt = copy.format
    tensors = gt.changed_tensors(Path(source), out)
    truth = GroundTruth(
        name=name,
        kind=entry.kind,
        family=entry.family,
        seed=seed,
        strength=ctx.strength if entry.strength_name else None,
        params={
            **ctx.params,
            **({entry.strength_name: ctx.strength} if entry.strength_name else {}),
        },
        source=source,
        output=str(out),
        format=fmt,
        tensors=tuple(tensors),
        nodes=tuple(plan.nodes),
        claim=plan.claim,
        details={
            **plan.details,
            **notes,
            "allow": list(plan.allow),
            "marked": mark,
            "produced_by": f"modelseal redteam {__version__}",
            "write_seconds": round(time.perf_counter() - started, 3),
        },
        verification=dict(plan.verification),
    )
    truth.write(truth_path(out))
    return truth


def describe() -> list[dict[str, Any]]:
    """The catalogue as rows (for ``modelseal redteam --list`` and the docs)."""
    return [{k: v for k, v in dataclasses.asdict(e).items() if k != "planter"} for e in ENTRIES]
