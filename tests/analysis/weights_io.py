"""Writers for modified copies of real weights (safetensors, ONNX), and float32 pairs of
them as the analysis sees a changed tensor."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file

from scanner.analysis.tensors import TensorPair


def write_safetensors(path: Path, weights: Mapping[str, np.ndarray], bf16: bool = False) -> Path:
    """Store ``weights`` (float32 values); ``bf16`` stores every float tensor as BF16."""
    out = {}
    for k, v in weights.items():
        out[k] = v.astype(ml_dtypes.bfloat16) if bf16 and v.dtype == np.float32 else v
    save_file(out, str(path))
    return path


def onnx_weights(path: Path) -> dict[str, np.ndarray]:
    """Float tensors of an ONNX model: initializers and Constant node values."""
    model = onnx.load(str(path))
    out = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t).copy()
    return {k: v for k, v in out.items() if v.dtype == np.float32}


def write_onnx(base: Path, path: Path, weights: Mapping[str, np.ndarray]) -> Path:
    """A copy of ``base`` whose initializer / Constant values are replaced by ``weights``
    (the graph is kept as is)."""
    model = onnx.load(str(base))
    for init in model.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in weights:
            for attr in node.attribute:
                if attr.name == "value":
                    attr.t.CopyFrom(numpy_helper.from_array(weights[node.output[0]], attr.t.name))
    onnx.save(model, str(path))
    return path


def tensor_pair(name: str, a: np.ndarray, b: np.ndarray) -> TensorPair:
    """A float32 pair of whole tensors in the analysis' ``(out, in, k)`` view."""
    a3 = np.ascontiguousarray(a, dtype=np.float32).reshape(a.shape[0], a.shape[1], -1)
    b3 = np.ascontiguousarray(b, dtype=np.float32).reshape(a3.shape)
    return TensorPair(
        name, "F32", a.shape, a3, b3, a3.view(np.uint32), b3.view(np.uint32), None, None
    )  # type: ignore[arg-type]
