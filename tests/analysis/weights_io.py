"""Writers for modified copies of real weights (safetensors, ONNX)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file


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
