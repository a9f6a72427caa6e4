"""Oversized names, doc strings and metadata (MS104 low, MS105 medium): limits in
docs/hostile-input.md#oversized-strings."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS, RAPIDOCR_DET, SILERO_ONNX, SILERO_ONNX_IF
from scanner.checks.single import scan_artifact
from scanner.checks.structure import MAX_STRING_TOTAL, STRING_LIMITS

MB = 1 << 20


def _model() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return helper.make_model(graph)


def _rules(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in scan_artifact(path).findings:
        out.setdefault(f.rule_id, []).append(f.message)
    return out


def test_fifty_megabyte_metadata_string_fails(tmp_path: Path, run_cli) -> None:
    model = _model()
    helper.set_model_props(model, {"description": "A" * (50 * MB)})
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = run_cli("scan", tmp_path / "m.onnx", "--format", "json")
    assert result.code == 1
    messages = [f["message"] for f in result.json()["findings"] if f["rule_id"] == "MS105"]
    assert any("metadata_props['description'].value is 52,428,800 bytes" in m for m in messages)


@pytest.mark.parametrize(
    ("field", "size", "rule"),
    [
        ("doc", 2 * MB, "MS105"),
        ("doc", 100_000, "MS104"),
        ("node-name", 10_000, "MS105"),
        ("graph-name", 5_000, "MS105"),
        ("producer", 5_000, "MS105"),
        ("node-name", 3_000, None),
        ("doc", 60_000, None),
    ],
)
def test_doc_strings_and_names_against_their_limits(
    tmp_path: Path, field: str, size: int, rule: str | None
) -> None:
    model = _model()
    text = "x" * size
    if field == "doc":
        model.graph.node[0].doc_string = text
    elif field == "node-name":
        model.graph.node[0].name = text
    elif field == "graph-name":
        model.graph.name = text
    else:
        model.producer_name = text
    onnx.save(model, str(tmp_path / "m.onnx"))
    rules = _rules(tmp_path / "m.onnx")
    found = {r for r in ("MS104", "MS105") if r in rules}
    assert found == ({rule} if rule else set()), rules
    if rule == "MS105":
        limit = STRING_LIMITS["doc" if field == "doc" else "name"]
        assert f"over the {limit:,}-byte limit" in rules["MS105"][0]


def test_many_strings_under_each_limit_still_count(tmp_path: Path) -> None:
    model = _model()
    per = 900_000  # under the 1 MiB doc-string limit, flagged only by MS104
    for i in range(MAX_STRING_TOTAL // per + 1):
        model.graph.value_info.append(
            helper.make_tensor_value_info(f"v{i}", TensorProto.FLOAT, [1], doc_string="d" * per)
        )
    onnx.save(model, str(tmp_path / "m.onnx"))
    rules = _rules(tmp_path / "m.onnx")
    assert (
        len(rules["MS105"]) == 1 and "bytes of names, doc strings and metadata" in rules["MS105"][0]
    )


def test_byte_payloads_are_not_strings(tmp_path: Path) -> None:
    """Tensor data and byte attributes (EPContext engines ...) are payloads, not text."""
    model = _model()
    model.graph.node[0].attribute.append(helper.make_attribute("blob", b"\x00" * (4 * MB)))
    model.graph.initializer.append(
        helper.make_tensor(
            "w", TensorProto.FLOAT, [MB], np.zeros(MB, np.float32).tobytes(), raw=True
        )
    )
    onnx.save(model, str(tmp_path / "m.onnx"))
    rules = _rules(tmp_path / "m.onnx")
    assert "MS105" not in rules and "MS104" not in rules


def _safetensors(path: Path, names: list[str], metadata: dict[str, str]) -> Path:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in names:
        header[name] = {"dtype": "F32", "shape": [2], "data_offsets": [offset, offset + 8]}
        offset += 8
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00" * offset)
    return path


def test_safetensors_metadata_and_tensor_names(tmp_path: Path) -> None:
    big = _safetensors(tmp_path / "meta.safetensors", ["w"], {"notes": "n" * (2 * MB)})
    assert "__metadata__['notes'] is 2,097,152 bytes" in _rules(big)["MS105"][0]
    long_name = _safetensors(tmp_path / "name.safetensors", ["w" * 5000], {})
    assert "tensor name is 5,000 bytes" in _rules(long_name)["MS105"][0]
    fine = _safetensors(tmp_path / "fine.safetensors", ["model.layers.0.weight"], {"a": "b"})
    assert not {"MS104", "MS105"} & set(_rules(fine))


@pytest.mark.parametrize("key", [RAPIDOCR_CLS, RAPIDOCR_DET, SILERO_ONNX, SILERO_ONNX_IF])
def test_real_onnx_models_are_within_every_limit(key: str) -> None:
    assert not {"MS104", "MS105"} & set(_rules(real_model(key)))
