"""Integer data movement between quantize and dequantize (how QOperator files keep
MaxPool, Transpose, Reshape on the quantized tensor) collapses only when the dequantize
undoes the quantize it follows."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from scanner.graph.canonical import canonicalize
from scanner.graph.diff import diff_graphs

SHAPE = [2, 9, 12]


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _float() -> onnx.ModelProto:
    return _model(
        [
            helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2], strides=[2]),
            helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Relu", ["t"], ["y"]),
        ],
        {},
    )


def _integer_moves(dequantize_scale: float) -> onnx.ModelProto:
    return _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("MaxPool", ["q"], ["p"], kernel_shape=[2], strides=[2]),
            helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 1]),
            helper.make_node("DequantizeLinear", ["t", "s2", "z"], ["d"]),
            helper.make_node("Relu", ["d"], ["y"]),
        ],
        {
            "s": np.float32(0.02),
            "s2": np.float32(dequantize_scale),
            "z": np.int8(3),
        },
    )


def _equivalent(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    gd = diff_graphs(canonicalize(a), canonicalize(b))
    return not gd.regions and not gd.changed and all(c.ok for c in gd.weight_checks)


def test_moves_on_quantized_values_collapse_to_the_float_graph() -> None:
    assert _equivalent(_float(), _integer_moves(0.02))


def test_dequantize_at_another_scale_is_not_collapsed() -> None:
    # the values come back 1.25x larger: not a rounding of the float graph
    assert not _equivalent(_float(), _integer_moves(0.025))


def test_a_negative_scale_does_not_move_past_a_max() -> None:
    """Quantizing and dequantizing at -0.02 is a round trip, but the MaxPool between them
    takes the max of codes that run the other way: the model computes a MinPool."""
    model = _integer_moves(-0.02)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.float32(-0.02), "s"))
    assert not _equivalent(_float(), model)
