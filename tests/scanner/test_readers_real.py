"""Every reader on real model files from PyPI wheels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures import real_model
from fixtures.real_models import (
    MINILM_CONFIG,
    RAPIDOCR_CLS,
    SILERO_ONNX,
    SILERO_ONNX_IF,
    SMOLLM_Q4_1,
    TASHKEEL_INT8,
    WORDLLAMA,
)
from scanner import open_artifact
from scanner.errors import MalformedArtifactError


def test_safetensors_minilm_matches_the_safetensors_library(minilm: Path) -> None:
    expected = load_file(str(minilm))
    with open_artifact(minilm) as art:
        assert art.format == "safetensors"
        assert set(art.tensors) == set(expected)
        assert len(art.tensors) == 104
        for name, array in expected.items():
            info = art.tensors[name]
            assert info.shape == array.shape
            got = art.array(name)
            assert got.dtype == array.dtype
            assert np.array_equal(got, array)
        q = art.tensors["encoder.layer.0.attention.self.query.weight"]
        assert (q.dtype.name, q.shape) == ("F32", (384, 384))


def test_safetensors_f16_single_tensor() -> None:
    with open_artifact(real_model(WORDLLAMA)) as art:
        (info,) = art.tensors.values()
        assert (info.dtype.name, info.shape) == ("F16", (32000, 256))
        assert art.to_float(info.name).dtype == np.float32


def test_safetensors_bf16_and_fp8_dtypes(tmp_path: Path) -> None:
    import ml_dtypes

    rng = np.random.default_rng(0)
    values = rng.normal(size=(16, 8)).astype(np.float32)
    tensors = {
        "bf16": values.astype(ml_dtypes.bfloat16),
        "f8": values.astype(ml_dtypes.float8_e4m3fn),
        "i8": (values * 10).astype(np.int8),
        "u8": np.abs(values * 10).astype(np.uint8),
    }
    header, blobs, offset = {}, [], 0
    names = {"bf16": "BF16", "f8": "F8_E4M3", "i8": "I8", "u8": "U8"}
    for key, array in tensors.items():
        blob = array.tobytes()
        header[key] = {
            "dtype": names[key],
            "shape": [16, 8],
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    from fixtures.synthetic import safetensors_bytes

    path = tmp_path / "mixed.safetensors"
    path.write_bytes(safetensors_bytes(header, b"".join(blobs)))
    with open_artifact(path) as art:
        for key, array in tensors.items():
            assert art.tensors[key].dtype.name == names[key]
            assert np.array_equal(art.to_float(key), array.astype(np.float32))


def test_hf_folder_and_sharded_checkpoint(tmp_path: Path, minilm: Path) -> None:
    weights = load_file(str(minilm))
    names = sorted(weights)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    folder = tmp_path / "sharded"
    folder.mkdir()
    for shard, members in shards.items():
        save_file({n: weights[n] for n in members}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {n: s for s, ms in shards.items() for n in ms}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(real_model(MINILM_CONFIG), folder / "config.json")
    with open_artifact(folder) as art:
        assert art.format == "safetensors"
        assert set(art.tensors) == set(weights)
        assert {f.relpath for f in art.files if f.role == "other"} == {
            "config.json",
            "model.safetensors.index.json",
        }
        assert art.tensors[names[-1]].file == "model-00002-of-00002.safetensors"
        assert np.array_equal(art.array(names[0]), weights[names[0]])
    # An index that does not match the shards is refused.
    index["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MalformedArtifactError, match=r"ghost\.weight"):
        open_artifact(folder)


def test_onnx_initializers_real_model() -> None:
    with open_artifact(real_model(SILERO_ONNX)) as art:
        assert art.format == "onnx"
        assert art.graph is not None and len(art.graph.nodes) > 50
        conv = [t for t in art.tensors.values() if t.dtype.name == "F32" and len(t.shape) == 3]
        assert conv, "expected conv weights"
        assert art.to_float(conv[0].name).shape == conv[0].shape


def test_onnx_weights_inside_if_subgraphs() -> None:
    """silero_vad.onnx keeps its weights in If branches (16 kHz / 8 kHz)."""
    with open_artifact(real_model(SILERO_ONNX_IF)) as art:
        scopes = {n.scope for n in art.graph.nodes}
        assert any("/then_branch" in s or "/else_branch" in s for s in scopes)
        big = [t for t in art.tensors.values() if t.n_elements >= 10_000]
        assert len(big) >= 4


def test_onnx_weights_in_constant_nodes() -> None:
    import onnx

    path = real_model(RAPIDOCR_CLS)
    model = onnx.load(str(path))
    constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    with open_artifact(path) as art:
        held = constants & set(art.tensors)
        assert held, "Constant-node weights must be read as tensors"
        big = [n for n in held if art.tensors[n].n_elements > 1000]
        assert big


def test_onnx_model_local_functions(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    fn = helper.make_function(
        "custom.fn",
        "AddW",
        ["x"],
        ["y"],
        [
            helper.make_node("Constant", [], ["w"], value=weight),
            helper.make_node("Add", ["x", "w"], ["y"]),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [helper.make_node("AddW", ["x"], ["y"], domain="custom.fn")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(
        graph,
        functions=[fn],
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.fn", 1)],
    )
    path = tmp_path / "fn.onnx"
    onnx.save(model, str(path))
    with open_artifact(path) as art:
        assert np.array_equal(art.array("w"), np.arange(6, dtype=np.float32).reshape(2, 3))
        assert any(n.scope == "function:custom.fn:AddW" for n in art.graph.nodes)


def test_onnx_external_data_inside_folder(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph)
    path = tmp_path / "m.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    with open_artifact(path) as art:
        assert np.array_equal(art.array("w"), w)
        assert [f.relpath for f in art.files] == ["m.onnx", "weights.bin"]


def test_onnx_already_quantized_int8_model() -> None:
    with open_artifact(real_model(TASHKEEL_INT8)) as art:
        dtypes = {t.dtype.name for t in art.tensors.values()}
        assert {"I8", "F32"} <= dtypes or {"U8", "F32"} <= dtypes
        ops = {n.op_type for n in art.graph.nodes}
        assert ops & {"MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeLinear"}


def test_gguf_quantized_real_model_conventional_shapes() -> None:
    with open_artifact(real_model(SMOLLM_Q4_1)) as art:
        assert art.format == "gguf"
        types = {t.dtype.name for t in art.tensors.values()}
        assert {"Q4_1", "Q8_0", "F32"} <= types
        emb = art.tensors["token_embd.weight"]
        # ggml order is [576, 49152]; conventional (rows = vocabulary) is (49152, 576).
        assert emb.shape == (49152, 576)
        assert art.metadata["gguf"]["general.architecture"] == "llama"
        q41 = next(t for t in art.tensors.values() if t.dtype.name == "Q4_1")
        raw = art.array(q41.name)
        assert raw.dtype == np.uint8 and raw.size == q41.nbytes  # the raw blocks
        values = art.to_float(q41.name)
        assert values.shape == q41.shape and np.isfinite(values).all()
        assert 0 < float(np.abs(values).mean()) < 1.0
