"""Tensor digests do not depend on the container; manifests list files and tensors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

from scanner import build_manifest, open_artifact
from scanner.digest import tensor_digest, tensor_digest_header
from signing.errors import ManifestError
from signing.manifest import Manifest

PICKED = (
    "embeddings.word_embeddings.weight",
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.5.output.LayerNorm.bias",
)


def _write_onnx(path: Path, tensors: dict[str, np.ndarray], as_constants: bool) -> None:
    nodes, inits = [], []
    for i, (name, array) in enumerate(tensors.items()):
        proto = numpy_helper.from_array(array, name)
        if as_constants:
            nodes.append(helper.make_node("Constant", [], [name], value=proto, name=f"c{i}"))
        else:
            inits.append(proto)
        nodes.append(helper.make_node("Identity", [name], [f"out{i}"]))
    outputs = [
        helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, None)
        for i in range(len(tensors))
    ]
    onnx.save(
        helper.make_model(helper.make_graph(nodes, "g", [], outputs, initializer=inits)), str(path)
    )


def _write_gguf(path: Path, tensors: dict[str, np.ndarray]) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "bert")
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_same_tensor_same_digest_in_safetensors_onnx_and_gguf(
    tmp_path: Path, minilm: Path, dtype: type
) -> None:
    weights = load_file(str(minilm))
    tensors = {n: weights[n].astype(dtype) for n in PICKED}
    st, on, oc, gg = (tmp_path / f for f in ("m.safetensors", "m.onnx", "c.onnx", "m.gguf"))
    save_file(tensors, str(st))
    _write_onnx(on, tensors, as_constants=False)
    _write_onnx(oc, tensors, as_constants=True)
    _write_gguf(gg, tensors)
    digests = []
    for path in (st, on, oc, gg):
        with open_artifact(path) as art:
            assert {n: art.tensors[n].shape for n in PICKED} == {
                n: a.shape for n, a in tensors.items()
            }
            digests.append({n: tensor_digest(art, n) for n in PICKED})
    assert digests[0] == digests[1] == digests[2] == digests[3]
    # And the digest is exactly the documented definition (docs/digests.md).
    name = PICKED[1]
    array = tensors[name]
    dtype_name = "F32" if dtype is np.float32 else "F16"
    shape = ",".join(map(str, array.shape))
    expected = hashlib.sha256(
        b"modelseal.tensor.v1\n" + f"{dtype_name}\n[{shape}]\n".encode() + array.tobytes()
    ).hexdigest()
    assert digests[0][name] == "sha256:" + expected


def test_digest_changes_with_dtype_shape_or_one_bit(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32)
    variants = {
        "base": {"t": a},
        "reshaped": {"t": a.reshape(3, 4)},
        "cast": {"t": a.view(np.int32)},
        "bit": {"t": np.frombuffer(bytearray(a.tobytes()[:-1] + b"\x01"), np.float32)},
    }
    seen = set()
    for key, tensors in variants.items():
        save_file(tensors, str(tmp_path / f"{key}.safetensors"))
        with open_artifact(tmp_path / f"{key}.safetensors") as art:
            seen.add(tensor_digest(art, "t"))
            if key == "reshaped":
                assert tensor_digest_header(art.tensors["t"]).endswith(b"F32\n[3,4]\n")
    assert len(seen) == 4


def test_manifest_cli_lists_files_and_tensors(minilm: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "manifest.json"
    result = run_cli("manifest", minilm, "-o", out)
    assert result.code == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "modelseal/manifest/v1"
    assert data["files"] == [
        {
            "path": "model.safetensors",
            "size": minilm.stat().st_size,
            "sha256": hashlib.sha256(minilm.read_bytes()).hexdigest(),
        }
    ]
    assert len(data["tensors"]) == 104
    entry = next(t for t in data["tensors"] if t["name"] == PICKED[1])
    assert entry["dtype"] == "F32" and entry["shape"] == [384, 384]
    assert entry["digest"].startswith("sha256:") and entry["file"] == "model.safetensors"
    manifest = Manifest.from_json(out.read_text())
    assert manifest.root_digest == data["digest"] == build_manifest(minilm).root_digest
    # stdout form is the same document
    assert json.loads(run_cli("manifest", minilm).out)["digest"] == data["digest"]


def test_manifest_root_digest_ignores_worker_order(minilm: Path) -> None:
    one = build_manifest(minilm, workers=1)
    two = build_manifest(minilm, workers=2)
    assert one == two and one.root_digest == two.root_digest


def test_edited_manifest_is_detected(minilm: Path) -> None:
    data = build_manifest(minilm).to_dict()
    data["tensors"][0]["digest"] = "sha256:" + "0" * 64
    with pytest.raises(ManifestError, match="does not match its entries"):
        Manifest.from_dict(data)
    with pytest.raises(ManifestError, match="schema"):
        Manifest.from_dict({"schema": "other"})
