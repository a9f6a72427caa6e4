"""Real artifacts for claim tests, built once per session from pinned real models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures import real_model
from tests.claims.tampering import largest, negate_codes, rtn_int8

FRACTION = 0.003


def _weights2d(tensors: dict[str, np.ndarray]) -> list[str]:
    return [
        n
        for n, a in tensors.items()
        if a.ndim == 2 and a.dtype == np.float32 and n.endswith(".weight")
    ]


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return real_model("minilm")


@pytest.fixture(scope="session")
def minilm(minilm_path: Path) -> dict[str, np.ndarray]:
    return load_file(str(minilm_path))


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("claims")


def int8_artifact(
    base: dict[str, np.ndarray],
    path: Path,
    *,
    per_channel: bool,
    symmetric: bool = True,
    tamper: str | None = None,
) -> Path:
    """MiniLM with every 2-D weight stored as ``x.weight`` I8 + ``x.weight_scale``
    (+ ``x.weight_zero_point`` when asymmetric). ``tamper`` names one tensor whose codes
    are flipped on its 0.3% largest-magnitude weights."""
    out: dict[str, np.ndarray] = {}
    for name, arr in base.items():
        if name not in _weights2d(base):
            out[name] = arr
            continue
        q = rtn_int8(arr, per_channel=per_channel, symmetric=symmetric)
        codes = q.codes
        if name == tamper:
            if not symmetric:
                raise ValueError("codes are mirrored around zero: tamper symmetric files")
            codes = negate_codes(codes, largest(arr, FRACTION))
        out[name] = codes
        out[name + "_scale"] = q.scale if per_channel else q.scale.reshape(())
        if not symmetric:
            out[name + "_zero_point"] = q.zero_point if per_channel else q.zero_point.reshape(())
    save_file(out, str(path))
    return path


@pytest.fixture(scope="session")
def build(work: Path, minilm: dict[str, np.ndarray]) -> Callable[..., Path]:
    cache: dict[str, Path] = {}

    def make(key: str, **kw: object) -> Path:
        if key not in cache:
            cache[key] = int8_artifact(minilm, work / f"{key}.safetensors", **kw)  # type: ignore[arg-type]
        return cache[key]

    return make


TAMPER_TENSOR = "encoder.layer.3.output.dense.weight"


def tampered_indices(w: np.ndarray) -> np.ndarray:
    return largest(w, FRACTION)


def rapidocr_float(folder: Path) -> Path:
    """rapidocr's text-direction classifier with its Constant nodes turned into
    initializers (onnxruntime's quantizers only quantize initializers)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(real_model("rapidocr-cls")))
    keep = []
    for node in m.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = numpy_helper.to_array(node.attribute[0].t)
            m.graph.initializer.append(numpy_helper.from_array(t, node.output[0]))
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    path = folder / "rapidocr_cls_float.onnx"
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="session")
def onnx_quantized(work: Path) -> dict[str, Path]:
    """The float classifier and its onnxruntime int8 per-channel quantizations:
    ``float``, ``dynamic`` (ConvInteger / MatMulInteger), ``qdq`` (static, QDQ format, calibrated on
    two seeded random images), ``qoperator`` (the same static quantization written as
    QLinearConv / QLinearMatMul operators), and ``fused`` (onnxruntime's basic
    optimizations: BatchNormalization folded into Conv biases) with its QOperator and QDQ
    quantizations ``fused_qoperator`` (int32 biases, a QGemm) and ``fused_qdq``, and its
    dynamic one ``fused_dynamic`` (float biases)."""
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    src = rapidocr_float(work)
    dyn = work / "cls_dynamic.onnx"
    qdq = work / "cls_qdq.onnx"
    qop = work / "cls_qoperator.onnx"
    # onnxruntime logs a preprocessing hint per call; it says nothing about the result.
    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(src), str(dyn), weight_type=QuantType.QInt8, per_channel=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.items = iter(
                [{"x": rng.random((1, 3, 48, 192), dtype=np.float32)} for _ in range(2)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    # onnxruntime's basic optimizations fold BatchNormalization into the Conv weights
    # and biases and turn the classifier's MatMul + Add into a Gemm: quantized, the
    # biases become int32 codes and the Gemm a QGemm.
    fused = work / "cls_fused.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(fused)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    fused_qop = work / "cls_fused_qoperator.onnx"
    fused_qdq = work / "cls_fused_qdq.onnx"
    fused_dyn = work / "cls_fused_dynamic.onnx"
    quantize_dynamic(str(fused), str(fused_dyn), weight_type=QuantType.QInt8, per_channel=True)
    for source, path, fmt in (
        (src, qdq, QuantFormat.QDQ),
        (src, qop, QuantFormat.QOperator),
        (fused, fused_qop, QuantFormat.QOperator),
        (fused, fused_qdq, QuantFormat.QDQ),
    ):
        quantize_static(
            str(source),
            str(path),
            Reader(),
            quant_format=fmt,
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    return {
        "float": src,
        "dynamic": dyn,
        "qdq": qdq,
        "qoperator": qop,
        "fused": fused,
        "fused_qoperator": fused_qop,
        "fused_qdq": fused_qdq,
        "fused_dynamic": fused_dyn,
    }
