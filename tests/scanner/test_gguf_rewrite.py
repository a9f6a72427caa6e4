"""GGUF copies written by splicing the source's header entries and tensor bytes: checked
byte for byte against llama.cpp's own files and split sets, and read back with the
``gguf`` package's reader (an implementation independent of ours)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from fixtures.llamacpp import split
from scanner.errors import UsageError
from scanner.formats.gguf_rewrite import StoredTensor, rewrite_gguf, stored


@pytest.fixture(scope="module")
def smollm2_q4_1():
    from fixtures import real_model

    return real_model("smollm2-q4_1")


def test_a_copy_of_a_llamacpp_file_with_nothing_replaced_is_its_bytes(
    smollm2_q4_1: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy.gguf"
    rewrite_gguf(smollm2_q4_1, out)
    assert out.read_bytes() == smollm2_q4_1.read_bytes()


def test_a_split_set_is_written_back_as_the_file_it_was_split_from(
    smollm2_q4_1: Path, tmp_path: Path
) -> None:
    parts = split(smollm2_q4_1, tmp_path / "set", max_tensors=11)
    assert len(parts) > 3
    out = tmp_path / "merged.gguf"
    rewrite_gguf(parts[0], out)
    assert out.read_bytes() == smollm2_q4_1.read_bytes()


def _library_file(path: Path) -> Path:
    """A small GGUF made by the gguf package's writer: scalars, a string table, an int
    array, float and block-quantized tensors, a 64-byte alignment."""
    rng = np.random.default_rng(5)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(64)
    writer.add_string("general.name", "tiny")
    writer.add_float32("llama.rope.freq_base", 10000.5)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)])
    writer.add_array("tokenizer.ggml.token_type", list(range(300)))
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_tensor("embd", rng.standard_normal((300, 64)).astype(np.float16))
    q = gguf.quants.quantize(
        rng.standard_normal((96, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    writer.add_tensor("blk.0.w", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("norm", rng.standard_normal(64).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _fields(reader: gguf.GGUFReader) -> dict[str, object]:
    return {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}


def test_replaced_added_and_marked_read_back_in_the_gguf_package(tmp_path: Path) -> None:
    src = _library_file(tmp_path / "src.gguf")
    rng = np.random.default_rng(9)
    new_w = gguf.quants.quantize(
        rng.standard_normal((96, 64)).astype(np.float32) * 3, gguf.GGMLQuantizationType.Q8_0
    )
    extra = rng.standard_normal((7, 32)).astype(np.float32)
    out = tmp_path / "out.gguf"
    rewrite_gguf(
        src,
        out,
        tensors={
            "blk.0.w": StoredTensor("Q8_0", (96, 64), new_w.tobytes()),
            "embd": stored(np.zeros((300, 64), dtype=np.float32)),  # another type
            "added": stored(extra),
        },
        strings={"general.name": "renamed", "modelseal.note": '{"a": 1}'},
    )
    before, after = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(out))
    expected = _fields(before) | {"general.name": "renamed", "modelseal.note": '{"a": 1}'}
    assert _fields(after) == expected
    got = {t.name: t for t in after.tensors}
    assert [t.name for t in after.tensors] == ["embd", "blk.0.w", "norm", "added"]
    assert got["embd"].tensor_type.name == "F32" and not np.any(got["embd"].data)
    assert np.array_equal(np.array(got["blk.0.w"].data), new_w)
    assert np.array_equal(np.array(got["added"].data), extra)
    assert np.array_equal(np.array(got["norm"].data), np.array(before.tensors[2].data))
    assert all(int(t.data_offset) % 64 == 0 for t in after.tensors)


def test_a_wrong_size_or_type_or_the_source_itself_is_refused(tmp_path: Path) -> None:
    src = _library_file(tmp_path / "src.gguf")
    with pytest.raises(UsageError, match="takes 6528"):
        rewrite_gguf(
            src,
            tmp_path / "o.gguf",
            tensors={"blk.0.w": StoredTensor("Q8_0", (96, 64), b"\0" * 10)},
        )
    with pytest.raises(UsageError, match="not a ggml type"):
        rewrite_gguf(src, tmp_path / "o.gguf", tensors={"norm": StoredTensor("X9", (64,), b"")})
    with pytest.raises(UsageError, match="overwrite its source"):
        rewrite_gguf(src, src)
    with pytest.raises(UsageError, match="no tensor type"):
        stored(np.zeros(3, dtype=np.complex64))


def test_ggml_type_ids_are_the_gguf_packages() -> None:
    """The reader's own id table agrees with ``gguf.GGMLQuantizationType`` on every type
    modelseal knows, and leaves none of them out."""
    from scanner.dtypes import DTYPES
    from scanner.formats.gguf_reader import GGML_TYPES

    theirs = {int(t): t.name for t in gguf.GGMLQuantizationType if t.name in DTYPES}
    assert theirs == GGML_TYPES
