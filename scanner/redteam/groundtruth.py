"""The ground-truth record written next to every red-team output.

It says what was planted (or which benign transformation was applied), with which
parameters and seed, and where: the tensors whose values actually differ from the input
(measured after writing, not just what the planter meant to touch), the ONNX nodes added,
and primitive-specific details (chain channels, flipped indices, trigger). The evaluation
protocol scores a finding as *localized* when it names one of ``tensors`` or ``nodes``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "modelseal/redteam-groundtruth/v1"


@dataclass(frozen=True)
class GroundTruth:
    """One planted attack or applied transformation."""

    name: str
    """Registry name (``sra``, ``int8`` ...)."""
    kind: str
    """``attack`` or ``transform`` (a benign twin)."""
    family: str
    """Threat-catalogue family (a docs/threats.md section) or the transformation's class."""
    seed: int
    strength: float | None
    params: Mapping[str, Any]
    source: str
    output: str
    format: str
    tensors: tuple[str, ...]
    """Tensors of the output whose values differ from the input's (or that were added)."""
    nodes: tuple[str, ...] = ()
    """ONNX nodes added (as modelseal's reader names them)."""
    claim: str | None = None
    """The transformation claim a benign twin makes (``quantize:int8:per-channel``)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    verification: Mapping[str, Any] = field(default_factory=dict)
    """Behavioural check of the planted model (graph backdoors under onnxruntime)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = SCHEMA
        data["tensors"] = list(self.tensors)
        data["nodes"] = list(self.nodes)
        return _jsonable(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def write(self, path: Path) -> Path:
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroundTruth:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} record")
        fields = {k: v for k, v in data.items() if k != "schema"}
        fields["tensors"] = tuple(fields.get("tensors", ()))
        fields["nodes"] = tuple(fields.get("nodes", ()))
        return cls(**fields)

    @classmethod
    def read(cls, path: Path) -> GroundTruth:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def truth_path(output: Path) -> Path:
    """Where the ground truth of ``output`` goes: ``OUT.groundtruth.json``."""
    return output.with_name(output.name + ".groundtruth.json")


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, tuples and paths made JSON-ready."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


# ------------------------------------------------------------- measured ground truth


def changed_tensors(source: Path, output: Path) -> list[str]:
    """Names of ``output``'s tensors that are new or whose values differ from ``source``
    (compared as float values where both sides are numeric, else as bytes), plus the
    ``source`` tensors ``output`` lacks."""
    from scanner.formats import open_artifact

    changed: list[str] = []
    with open_artifact(source) as a, open_artifact(output) as b:
        for name, info in b.tensors.items():
            if name not in a.tensors:
                changed.append(name)
                continue
            old = a.tensors[name]
            if old.dtype.name == info.dtype.name and bytes(a.raw(name)) == bytes(b.raw(name)):
                continue
            try:
                same = old.shape == info.shape and np.array_equal(
                    a.to_float(name), b.to_float(name), equal_nan=True
                )
            except Exception:
                same = False
            if not same:
                changed.append(name)
        changed.extend(n for n in a.tensors if n not in b.tensors)
    return changed


def _session(model: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _image_shape(shape: tuple[Any, ...]) -> tuple[int, ...]:
    """A concrete input shape: batch 1, symbolic spatial sizes 48 x 192 (any size that
    a small CNN accepts and that holds the trigger window)."""
    fill = [1, 3, 48, 192]
    return tuple(d if isinstance(d, int) and d > 0 else fill[i] for i, d in enumerate(shape))


def verify_image_trigger(
    clean: Any,
    planted: Any,
    x: Any,
    *,
    patch: int,
    value: float,
    target: int,
    seed: int,
    samples: int = 4,
) -> dict[str, Any]:
    """Run both models on seeded clean inputs and on the same inputs with the trigger
    patch: the planted model must match the clean one on clean inputs and move its
    output to ``target`` on triggered ones."""
    rng = np.random.default_rng(seed)
    shape = _image_shape(x.shape)
    s_clean, s_bad = _session(clean), _session(planted)
    max_clean_diff, fired = 0.0, 0
    for _ in range(samples):
        inp = rng.standard_normal(shape).astype(np.float32)
        trig = inp.copy()
        trig[..., :patch, :patch] = value
        ref = s_clean.run(None, {x.name: inp})[0]
        got = s_bad.run(None, {x.name: inp})[0]
        max_clean_diff = max(max_clean_diff, float(np.max(np.abs(ref - got))))
        on = s_bad.run(None, {x.name: trig})[0]
        fired += int(int(np.argmax(on.reshape(on.shape[0], -1)[0])) == target)
    return {
        "runtime": "onnxruntime",
        "samples": samples,
        "clean_max_abs_diff": max_clean_diff,
        "clean_unchanged": max_clean_diff <= 1e-5,
        "fired": fired,
        "fires_on_trigger": fired == samples,
    }


def verify_token_trigger(
    clean: Any,
    planted: Any,
    x: Any,
    *,
    token: int,
    vocab: int,
    seed: int,
    samples: int = 4,
    length: int = 16,
) -> dict[str, Any]:
    """Token-id trigger: outputs equal on sequences without ``token``, different with it."""
    rng = np.random.default_rng(seed)
    dtype = np.int64 if x.elem_type == 7 else np.int32
    s_clean, s_bad = _session(clean), _session(planted)
    max_clean_diff, fired = 0.0, 0
    for _ in range(samples):
        seq = rng.integers(1, vocab, (1, length)).astype(dtype)
        seq[seq == token] = 1 if token != 1 else 2
        trig = seq.copy()
        trig[0, int(rng.integers(length))] = token
        ref = s_clean.run(None, {x.name: seq})[0]
        got = s_bad.run(None, {x.name: seq})[0]
        max_clean_diff = max(
            max_clean_diff, float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))
        )
        fired += int(
            not np.array_equal(
                s_clean.run(None, {x.name: trig})[0], s_bad.run(None, {x.name: trig})[0]
            )
        )
    return {
        "runtime": "onnxruntime",
        "samples": samples,
        "clean_max_abs_diff": max_clean_diff,
        "clean_unchanged": max_clean_diff <= 1e-5,
        "fired": fired,
        "fires_on_trigger": fired == samples,
    }
