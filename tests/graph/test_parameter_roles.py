"""The graph diff compares structure: a parameter tensor whose value changed with the same
dtype and shape is the weight diff's business, a changed structural constant (a Clip
bound) is a graph change; Conv+BN folds are checked only where one side is fused; a Clip /
Relu is a no-op only where the following QuantizeLinear's range lies inside it."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanner.graph.canonical import canonicalize
from scanner.graph.diff import diff_graphs

C = 8


def _conv_bn_clip(
    w: np.ndarray, var: np.ndarray, hi: float = 6.0, gamma: np.ndarray | None = None
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "B"),
        numpy_helper.from_array(np.ones(C, np.float32) if gamma is None else gamma, "g"),
        numpy_helper.from_array(np.zeros(C, np.float32), "beta"),
        numpy_helper.from_array(np.zeros(C, np.float32), "mean"),
        numpy_helper.from_array(var, "var"),
        numpy_helper.from_array(np.float32(0.0), "lo"),
        numpy_helper.from_array(np.float32(hi), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["b"], name="bn"),
        helper.make_node("Clip", ["b", "lo", "hi"], ["y"], name="clip"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _w(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((C, 3, 3, 3)).astype(np.float32)


def _diff(a: onnx.ModelProto, b: onnx.ModelProto):  # type: ignore[no-untyped-def]
    return diff_graphs(canonicalize(a), canonicalize(b))


def test_changed_parameters_with_same_structure_are_no_graph_change() -> None:
    var = np.ones(C, np.float32)
    w = _w()
    tuned = w + 0.01 * _w(1)
    gd = _diff(
        _conv_bn_clip(w, var), _conv_bn_clip(tuned, var * 1.1, gamma=np.full(C, 1.2, np.float32))
    )
    assert not gd.changed and not gd.regions
    assert not [c for c in gd.weight_checks if not c.ok]  # no fold to verify: same structure


def test_changed_clip_bound_is_a_graph_change() -> None:
    var = np.ones(C, np.float32)
    gd = _diff(_conv_bn_clip(_w(), var), _conv_bn_clip(_w(), var, hi=60.0))
    assert [c.reason for c in gd.changed] == ["constant input 2 differs"]


def test_negative_variance_is_not_folded_and_warns_nothing() -> None:
    var = np.ones(C, np.float32)
    var[3] = -2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = canonicalize(_conv_bn_clip(_w(), var))
    assert any(n.op == "BatchNormalization" for n in g.nodes.values())


def _relu_model(quantized: bool, zero_point: int = 0, lo: float | None = None) -> onnx.ModelProto:
    """x -> Conv -> Relu (trusted) or x -> Conv -> QuantizeLinear(uint8) ->
    DequantizeLinear (deployed, Relu removed as ONNX Runtime's QDQ quantizer does)."""
    w = numpy_helper.from_array(_w(), "W")
    inits = [w]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv")]
    if quantized:
        inits += [
            numpy_helper.from_array(np.float32(6.0 / 255), "s"),
            numpy_helper.from_array(np.uint8(zero_point), "zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["q"], name="ql"),
            helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["r"], name="dq"),
        ]
    elif lo is None:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    else:
        inits += [
            numpy_helper.from_array(np.float32(lo), "lo"),
            numpy_helper.from_array(np.float32(6.0), "hi"),
        ]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["r"], name="clip"))
    nodes.append(helper.make_node("Sigmoid", ["r"], ["y"], name="out"))
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_relu_before_quantize_range_inside_it_is_a_noop() -> None:
    gd = _diff(_relu_model(False), _relu_model(True))
    assert not gd.regions and not gd.changed
    assert "s" in gd.explained and "zp" in gd.explained
    gd = _diff(_relu_model(False, lo=0.0), _relu_model(True))  # Clip(0, 6) too
    assert not gd.regions and "lo" in gd.explained


def test_relu_stays_a_change_when_the_range_reaches_below_zero() -> None:
    gd = _diff(_relu_model(False), _relu_model(True, zero_point=128))
    assert [r.kind for r in gd.regions] == ["unexplained"]
    gd = _diff(_relu_model(False, lo=1.0), _relu_model(True))  # Clip(1, 6): range [0, 6]
    assert any(r.kind == "unexplained" for r in gd.regions)
