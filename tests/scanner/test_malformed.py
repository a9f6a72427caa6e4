"""Crafted malformed files: a one-line error naming the file and the problem, exit 2."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.synthetic import malformed_gguf, malformed_safetensors
from scanner import open_artifact
from scanner.errors import MalformedArtifactError, UnsafePathError
from signing.errors import ModelsealError

# Built at collection so each case is its own test id; the files are a few bytes each.
_CASES_DIR = Path(tempfile.mkdtemp(prefix="modelseal-malformed-"))
ST_CASES = malformed_safetensors(_CASES_DIR / "safetensors")
GGUF_CASES = malformed_gguf(_CASES_DIR / "gguf")


@pytest.mark.parametrize("case", sorted(ST_CASES))
def test_malformed_safetensors(case: str, run_cli) -> None:
    path, fragment = ST_CASES[case]
    with pytest.raises(MalformedArtifactError) as info:
        open_artifact(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)
    for command in (["scan", path], ["manifest", path], ["diff", path, path]):
        result = run_cli(*command)
        assert result.code == 2, command
        assert result.out == ""
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("modelseal: error: ")
        assert "Traceback" not in result.err


@pytest.mark.parametrize("case", sorted(GGUF_CASES))
def test_malformed_gguf(case: str, run_cli) -> None:
    path, fragment = GGUF_CASES[case]
    with pytest.raises(ModelsealError) as info:
        open_artifact(path)
    assert fragment in str(info.value)
    result = run_cli("scan", path)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1


def _external_model(tmp_path: Path, location: str) -> Path:
    tensor = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[tensor],
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    path = model_dir / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("../secret.bin", "climbs out"),
        ("a/../../secret.bin", "climbs out"),
        ("/etc/passwd", "absolute path"),
        ("missing.bin", "does not exist"),
    ],
)
def test_onnx_external_data_escapes_are_refused(
    tmp_path: Path, location: str, fragment: str, run_cli
) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 16)
    path = _external_model(tmp_path, location)
    with pytest.raises(UnsafePathError, match=fragment):
        open_artifact(path)
    assert run_cli("scan", path).code == 2


def test_onnx_external_data_symlink_and_hardlink_escapes(tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\x00" * 16)
    path = _external_model(tmp_path, "link.bin")
    (path.parent / "link.bin").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside the model folder"):
        open_artifact(path)
    (path.parent / "link.bin").unlink()
    os.link(outside, path.parent / "link.bin")
    with pytest.raises(UnsafePathError, match="hard link"):
        open_artifact(path)


def test_garbage_onnx_and_unknown_content(tmp_path: Path, run_cli) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07" + os.urandom(64))
    with pytest.raises(MalformedArtifactError):
        open_artifact(bad)
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    result = run_cli("scan", text)
    assert result.code == 2 and "not a supported model format" in result.err


def test_onnx_initializer_with_wrong_byte_count(tmp_path: Path) -> None:
    tensor = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    tensor.dims[:] = [5]
    graph = helper.make_graph([], "g", [], [], initializer=[tensor])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(MalformedArtifactError, match="need 20 bytes, found 16"):
        open_artifact(path)


def test_folder_symlink_escape(tmp_path: Path) -> None:
    from fixtures.synthetic import write_safetensors

    folder = tmp_path / "model"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"a": np.zeros(2, np.float32)})
    (tmp_path / "secret.txt").write_text("x")
    (folder / "config.json").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(UnsafePathError, match="outside the model folder"):
        open_artifact(folder)


def test_missing_path(run_cli) -> None:
    result = run_cli("diff", "/nonexistent/a", "/nonexistent/b")
    assert result.code == 2
    assert "no such file or folder" in result.err
