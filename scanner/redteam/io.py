"""Read a user's model for planting and write the planted copy back in the same format.

:class:`ModelCopy` opens any artifact the scanner reads (the format is chosen by content,
never by suffix), hands out float32 copies of its weights on demand (only the tensors an
attack touches are ever decoded, so a large GGUF stays cheap), and writes a copy in which
the given tensors are replaced:

* safetensors: every tensor kept in its stored dtype (edited float tensors are cast back),
  ``__metadata__`` copied;
* ONNX: initializer / ``Constant`` values replaced in the ModelProto, or a whole new
  ModelProto (graph attacks and optimizers) written as given;
* GGUF: every key-value entry and unchanged tensor copied byte for byte, streamed
  (:mod:`scanner.formats.gguf_rewrite`; a split model is written as one file); edited
  tensors re-encoded in their own type when ``gguf`` can quantize it (F32, F16, Q8_0,
  Q4_0, Q4_1, Q5_0, Q5_1), else stored as F32 (recorded in the ground truth).

The copy carries no fingerprint by default: its container metadata is the source's, so
a gate sees only the planted change (a metadata marker would be a change of its own that a
strict pack fails on, inflating detection). Provenance lives in the ground truth written
next to the copy; ``mark=True`` adds the marker :data:`MARKER_KEY` to the container for
copies meant to be handed around, never for measuring detection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.errors import UsageError
from scanner.formats import open_artifact

MARKER_KEY = "modelseal.redteam"
"""Metadata key (safetensors ``__metadata__``, ONNX ``metadata_props``, GGUF key-value)."""

SUPPORTED_FORMATS = ("safetensors", "onnx", "gguf")
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
GGUF_REQUANTIZABLE = {"F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}


class ModelCopy:
    """A model opened for planting. Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.artifact: Artifact = open_artifact(self.path)
        self.format = self.artifact.format
        if self.format not in SUPPORTED_FORMATS:
            self.artifact.close()
            raise UsageError(
                f"{self.path}: red-team planting supports {', '.join(SUPPORTED_FORMATS)} "
                f"models; this one is {self.format}"
            )
        self._cache: dict[str, np.ndarray] = {}
        self._onnx: Any = None

    def __enter__(self) -> ModelCopy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.artifact.close()

    # -- reading -----------------------------------------------------------------------
    def dtype(self, name: str) -> str:
        return self.artifact.tensors[name].dtype.name

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.artifact.tensors[name].shape)

    def float_names(self) -> list[str]:
        """Tensors with real values an attack may edit: float tensors and (GGUF) block
        quantized ones, main graph only for ONNX (subgraph tensors are keyed ``scope::``)."""
        out = []
        for name, info in self.artifact.tensors.items():
            if "::" in name:
                continue
            dt = info.dtype.name
            if dt in FLOAT_DTYPES or self.format == "gguf":
                out.append(name)
        return out

    def weight(self, name: str) -> np.ndarray:
        """A writable float32 copy of the tensor's values (cached)."""
        if name not in self._cache:
            info = self.artifact.tensors[name]
            values = self.artifact.to_float(name).astype(np.float32, copy=True)
            self._cache[name] = values.reshape(tuple(info.shape))
        return self._cache[name].copy()

    def weights(self, names: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
        return {n: self.weight(n) for n in names}

    def onnx_model(self) -> Any:
        """The ModelProto with tensor data loaded (a fresh copy on every call)."""
        import onnx

        if self.format != "onnx":
            raise UsageError(f"{self.path} is {self.format}, not ONNX")
        if self._onnx is None:
            self._onnx = onnx.load(str(self.artifact.path))
        copy = onnx.ModelProto()
        copy.CopyFrom(self._onnx)
        return copy

    # -- writing -----------------------------------------------------------------------
    def save(
        self,
        out: Path,
        changed: Mapping[str, np.ndarray],
        marker: Mapping[str, Any] | None,
        *,
        onnx_model: Any = None,
    ) -> dict[str, Any]:
        """Write the copy with ``changed`` tensors replaced and, when ``marker`` is given,
        the marker in its container metadata (else the source's metadata unchanged);
        returns notes on storage (for the ground truth): tensors stored in another dtype
        than the original."""
        out.parent.mkdir(parents=True, exist_ok=True)
        text = None if marker is None else json.dumps(dict(marker), sort_keys=True)
        if self.format == "safetensors":
            return self._save_safetensors(out, changed, text)
        if self.format == "onnx":
            return self._save_onnx(out, changed, text, onnx_model)
        return self._save_gguf(out, changed, text)

    def _save_safetensors(
        self, out: Path, changed: Mapping[str, np.ndarray], text: str | None
    ) -> dict:
        from safetensors.numpy import save_file

        tensors: dict[str, np.ndarray] = {}
        for name in self.artifact.tensors:
            if name in changed:
                tensors[name] = _as_dtype(changed[name], self.dtype(name))
            else:
                tensors[name] = np.array(self.artifact.array(name))
        for name, value in changed.items():
            if name not in tensors:  # tensors a transform adds (int8 scales ...)
                tensors[name] = np.ascontiguousarray(value)
        meta = {
            str(k): str(v) for k, v in (self.artifact.metadata.get("safetensors") or {}).items()
        }
        if text is not None:
            meta[MARKER_KEY] = text
        save_file(tensors, str(out), metadata=meta or None)
        return {}

    def _save_onnx(
        self, out: Path, changed: Mapping[str, np.ndarray], text: str | None, model: Any
    ) -> dict:
        import onnx
        from onnx import numpy_helper

        model = model if model is not None else self.onnx_model()
        g = model.graph
        for init in g.initializer:
            if init.name in changed:
                dt = numpy_helper.to_array(init).dtype
                init.CopyFrom(
                    numpy_helper.from_array(np.asarray(changed[init.name]).astype(dt), init.name)
                )
        for node in g.node:
            if node.op_type == "Constant" and node.output and node.output[0] in changed:
                for attr in node.attribute:
                    if attr.name == "value":
                        dt = numpy_helper.to_array(attr.t).dtype
                        value = np.asarray(changed[node.output[0]]).astype(dt)
                        attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
        if text is not None:
            kept = [p for p in model.metadata_props if p.key != MARKER_KEY]
            del model.metadata_props[:]
            model.metadata_props.extend(kept)
            prop = model.metadata_props.add()
            prop.key, prop.value = MARKER_KEY, text
        onnx.save(model, str(out))
        return {}

    def _save_gguf(self, out: Path, changed: Mapping[str, np.ndarray], text: str | None) -> dict:
        import gguf

        from scanner.formats.gguf_rewrite import StoredTensor, rewrite_gguf, stored

        replaced: dict[str, StoredTensor] = {}
        stored_as: dict[str, str] = {}
        for name, value in changed.items():
            info = self.artifact.tensors.get(name)
            if info is None:  # tensors a transform adds
                replaced[name] = stored(value)
                continue
            qname = info.dtype.name
            shape = tuple(info.shape)
            values = np.asarray(value, dtype=np.float32).reshape(shape)
            if qname in ("F32", "F16"):
                replaced[name] = stored(values.astype(np.float16 if qname == "F16" else np.float32))
            elif qname in GGUF_REQUANTIZABLE:
                blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType[qname])
                replaced[name] = StoredTensor(qname, shape, blocks.tobytes())
            else:
                stored_as[name] = "F32"
                replaced[name] = stored(values)
        strings = {} if text is None else {MARKER_KEY: text}
        rewrite_gguf(self.artifact.path, out, tensors=replaced, strings=strings)
        return {"stored_as": stored_as} if stored_as else {}


def _as_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Cast edited float32 values back to the tensor's stored dtype."""
    import ml_dtypes

    target = {
        "F64": np.float64,
        "F32": np.float32,
        "F16": np.float16,
        "BF16": ml_dtypes.bfloat16,
    }.get(dtype)
    arr = np.asarray(values)
    # Planters edit in float32; a transform that chose another dtype (a cast to fp16,
    # int8 codes) keeps it.
    if target is None or arr.dtype != np.float32:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr.astype(target))


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """The red-team marker of a file, or ``None`` if it carries none."""
    with open_artifact(path) as art:
        meta = art.metadata
        text = None
        if art.format == "safetensors":
            text = (meta.get("safetensors") or {}).get(MARKER_KEY)
        elif art.format == "onnx":
            text = (meta.get("metadata_props") or {}).get(MARKER_KEY)
        elif art.format == "gguf":
            text = (meta.get("gguf") or {}).get(MARKER_KEY)
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None
