"""GGUF claims against llama.cpp as it is used: ``llama-quantize`` file types with their
per-tensor mixtures and fallbacks, importance-matrix quantizations, IQ types, a vendor's
Q4_K_M re-quantized, and gguf-split sets."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from fixtures.llamacpp import split
from scanner.claims import check_claim
from scanner.cli.main import main
from scanner.diff.compare import bytes_equal
from scanner.errors import MalformedArtifactError
from scanner.formats import open_artifact
from tests.claims.gguf_files import LlamaFiles, copy_with, raw_blocks

pytestmark = pytest.mark.long_file(18)

FILE_TYPES = (
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
    "IQ3_S",
)


@pytest.fixture(scope="session")
def llama(work: Path) -> LlamaFiles:
    folder = work / "llamacpp"
    folder.mkdir(exist_ok=True)
    return LlamaFiles(folder)


@pytest.mark.parametrize("ftype", FILE_TYPES)
def test_llamacpp_file_type_claims_hold(llama: LlamaFiles, ftype: str) -> None:
    out = llama.smollm(ftype)
    result = check_claim("gguf", ftype.lower(), llama.base, out)
    assert result.holds, result.message
    with open_artifact(out) as art:
        quantized = {n for n, i in art.tensors.items() if i.dtype.is_block_quantized}
    assert {v.tensor for v in result.tensors} == quantized


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def test_type_claim_on_a_mixture_judges_every_tensor_in_its_own_type(
    llama: LlamaFiles, work: Path
) -> None:
    """``--claim gguf:q4_k`` on a Q4_K_M file (Q4_K, Q6_K, and Q5_0 / Q8_0 for rows of
    576): every tensor is re-derived in its stored type, none is left unexplained."""
    out = llama.smollm("Q4_K_M")
    with open_artifact(out) as art:
        types = {i.dtype.name for i in art.tensors.values() if i.dtype.is_block_quantized}
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} <= types
    report = work / "q4_k_mixture.json"
    code = main(
        [
            "diff",
            str(llama.base),
            str(out),
            "--claim",
            "gguf:q4_k",
            "--format",
            "json",
            "-o",
            str(report),
        ]
    )
    findings = _report(report)["findings"]
    assert code == 0, [f["rule_id"] for f in findings if f["severity"] != "info"]
    assert not [f for f in findings if f["rule_id"] in ("MS207", "MS402", "MS407")]


def test_file_type_inferred_without_a_claim(llama: LlamaFiles, work: Path) -> None:
    report = work / "q4_k_m_inferred.json"
    out = llama.smollm("Q4_K_M")
    assert main(["diff", str(llama.base), str(out), "--format", "json", "-o", str(report)]) == 0
    inferred = [f for f in _report(report)["findings"] if f["rule_id"] == "MS408"]
    assert inferred and inferred[0]["evidence"]["claim"] == "gguf:q4_k_m"
    assert inferred[0]["evidence"]["holds"]
    # Every Q4_K code of one row raised by one step: the inferred file type explains the
    # other tensors and names this one, localized to its row.
    name = "blk.1.ffn_down.weight"
    blocks, stored, _ = raw_blocks(out, name)
    assert stored == "Q4_K"
    for b in range(blocks.shape[1] // 144):
        qs = blocks[40, b * 144 + 16 : (b + 1) * 144]
        qs[:] = np.minimum((qs & 0x0F) + 1, 15) | (np.minimum((qs >> 4) + 1, 15) << 4)
    bad = copy_with(out, work / "q4_k_m_row_shifted.gguf", {name: blocks})
    assert main(["diff", str(llama.base), str(bad), "--format", "json", "-o", str(report)]) == 1
    serious = [f for f in _report(report)["findings"] if f["severity"] not in ("info", "low")]
    assert [f["rule_id"] for f in serious] == ["MS402"]
    assert serious[0]["locations"][0]["tensor"] == name
    assert serious[0]["locations"][0]["region"]["indices"] == [40]


def test_a_tensor_stored_below_its_file_type_rule_fails(llama: LlamaFiles, work: Path) -> None:
    """Q4_K_M keeps attn_v of some layers at Q6_K (Q8_0 where rows do not fill
    256): a file claiming Q4_K_M whose attn_v is Q5_0 holds fewer bits than llama.cpp
    gives it, though each value is a faithful Q5_0."""
    q4 = llama.smollm("Q4_K_M")
    q5 = llama.smollm("Q5_0")
    name = "blk.3.attn_v.weight"
    assert raw_blocks(q4, name)[1] == "Q8_0"
    writer = gguf.GGUFWriter(str(work / "downgraded.gguf"), "llama")
    fields = gguf.GGUFReader(str(q4)).fields  # parsed once: the vocabulary takes seconds
    for key in ("llama.block_count", "llama.attention.head_count", "llama.attention.head_count_kv"):
        field = fields[key]
        writer.add_key_value(key, field.contents(), field.types[0])
    for tensor, source in (("blk.0.attn_q.weight", q4), (name, q5)):
        data, stored, _ = raw_blocks(source, tensor)
        writer.add_tensor(
            tensor, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType[stored]
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = check_claim("gguf", "q4_k_m", llama.base, work / "downgraded.gguf")
    assert not result.holds
    bad = [v for v in result.tensors if not v.ok]
    assert [v.tensor for v in bad] == [name] and bad[0].problem == "type"


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q4_0", "Q5_1", "IQ2_XXS"])
def test_importance_matrix_quantizations(llama: LlamaFiles, ftype: str) -> None:
    out = llama.smollm(ftype, imatrix=True)
    result = check_claim("gguf", f"{ftype.lower()}:imatrix", llama.base, out)
    assert result.holds, result.message
    if ftype in ("Q4_0", "Q5_1"):
        # Their codes are rounded under a candidate scale, not the stored one: the
        # round-to-nearest claim does not explain them.
        assert not check_claim("gguf", ftype.lower(), llama.base, out).holds


def test_importance_matrix_claim_inferred_from_the_file(llama: LlamaFiles, work: Path) -> None:
    """llama-quantize records the importance matrix in ``quantize.imatrix.*``; only then
    is the permissive variant tried without a claim."""
    out = llama.smollm("Q4_0", imatrix=True)
    report = work / "imatrix_inferred.json"
    assert main(["diff", str(llama.base), str(out), "--format", "json", "-o", str(report)]) == 0
    inferred = [f for f in _report(report)["findings"] if f["rule_id"] == "MS408"]
    assert inferred[0]["evidence"]["claim"] == "gguf:q4_0:imatrix"


def _shift_row(blocks: np.ndarray, row: int, block_bytes: int, low: int, high: int) -> None:
    """Every 4-bit code of one row of Q4_0 blocks raised by one (at most 15)."""
    for b in range(blocks.shape[1] // block_bytes):
        qs = blocks[row, b * block_bytes + low : b * block_bytes + high]
        lo = np.minimum((qs & 0x0F) + 1, 15)
        hi = np.minimum((qs >> 4) + 1, 15)
        qs[:] = lo | (hi << 4)


@pytest.mark.parametrize("claim", ["q4_0:imatrix", "q4_0:search"])
def test_shifted_row_fails_under_permissive_claims(
    llama: LlamaFiles, work: Path, claim: str
) -> None:
    out = llama.smollm("Q4_0", imatrix=True)
    name = "blk.2.ffn_up.weight"
    blocks, stored, _ = raw_blocks(out, name)
    assert stored == "Q4_0"
    _shift_row(blocks, 7, 18, 2, 18)
    bad = copy_with(out, work / f"imatrix_shifted_{claim.replace(':', '_')}.gguf", {name: blocks})
    result = check_claim("gguf", claim, llama.base, bad)
    assert not result.holds
    failed = [v for v in result.tensors if not v.ok]
    assert [v.tensor for v in failed] == [name]
    assert failed[0].rows == (7,)


@pytest.mark.parametrize("ftype", ["Q8_0", "Q6_K", "Q4_K_M"])
def test_vendor_q4_k_m_requantized_by_llamacpp(llama: LlamaFiles, work: Path, ftype: str) -> None:
    out = llama.gemma_requantized(ftype)
    result = check_claim("requantize", ftype.lower(), llama.gemma, out)
    assert result.holds, result.message
    name = "blk.4.ffn_down.weight"
    blocks, stored, _ = raw_blocks(out, name)
    # Two codes of one row moved by one step (the low bit of a code byte), as a
    # tamperer would, in whatever type the tensor is stored.
    block_bytes = {"Q8_0": 34, "Q6_K": 210, "Q4_K": 144}[stored]
    first_code = {"Q8_0": 2, "Q6_K": 0, "Q4_K": 16}[stored]
    for b in (1, 3):
        blocks[11, b * block_bytes + first_code + 5] ^= 0x01
    bad = copy_with(out, work / f"gemma_req_{ftype}_tampered.gguf", {name: blocks})
    result = check_claim("requantize", ftype.lower(), llama.gemma, bad)
    assert not result.holds, stored
    failed = [v for v in result.tensors if not v.ok]
    assert [v.tensor for v in failed] == [name] and failed[0].rows == (11,)


@pytest.mark.parametrize("ftype", ["Q8_0", "Q6_K"])
def test_tensors_llamacpp_copies_are_compared_and_edits_to_them_judged(
    llama: LlamaFiles, work: Path, ftype: str
) -> None:
    """llama-quantize copies a tensor already in its target type: the copy holds as
    unchanged bytes, and an edit to it is judged in its type and localized."""
    out = llama.gemma_requantized(ftype)
    with open_artifact(llama.gemma) as t, open_artifact(out) as d:
        copied = [
            n
            for n, i in d.tensors.items()
            if i.dtype.is_block_quantized
            and t.tensors[n].dtype == i.dtype
            and bytes_equal(t, n, d, n)
        ]
    assert copied, "llama-quantize re-quantized every tensor"
    result = check_claim("requantize", ftype.lower(), llama.gemma, out)
    assert result.holds, result.message
    checks = {v.tensor: v.stats["check"] for v in result.tensors}
    assert {checks[n] for n in copied} == {"copied"}
    assert result.evidence["reference_quantizer"] == (ftype == "Q8_0")
    name = copied[-1]
    blocks, stored, _ = raw_blocks(out, name)
    block_bytes, scale_at = {"Q8_0": (34, 0), "Q6_K": (210, 208)}[stored]
    # One element's code in rows 2 to 5, and the float16 scale of the last block of
    # row 9 (its exponent).
    for row in range(2, 6):
        blocks[row, block_bytes + block_bytes // 3] ^= 0x04
    blocks[9, blocks.shape[1] - block_bytes + scale_at + 1] ^= 0x10
    bad = copy_with(out, work / f"gemma_req_{ftype}_copy_tampered.gguf", {name: blocks})
    result = check_claim("requantize", ftype.lower(), llama.gemma, bad)
    failed = [v for v in result.tensors if not v.ok]
    assert [v.tensor for v in failed] == [name]
    assert failed[0].rows == (2, 3, 4, 5, 9)
    assert failed[0].stats["check"] == ("exact" if stored == "Q8_0" else "nearest")


def test_split_gguf_reads_as_one_artifact(llama: LlamaFiles, work: Path) -> None:
    whole = llama.smollm("Q4_K_M")
    folder = work / "split"
    folder.mkdir(exist_ok=True)
    parts = split(whole, folder / "smollm2-q4_k_m", max_tensors=12)
    assert len(parts) >= 3 and parts[0].name.endswith("-00001-of-" + f"{len(parts):05d}.gguf")
    with open_artifact(whole) as a, open_artifact(parts[0]) as b, open_artifact(folder) as c:
        assert set(a.tensors) == set(b.tensors) == set(c.tensors)
        assert len(b.files) == len(parts)
        for name in a.tensors:
            assert np.array_equal(
                np.frombuffer(a.raw(name), np.uint8), np.frombuffer(b.raw(name), np.uint8)
            )
    assert check_claim("gguf", "q4_k_m", llama.base, parts[0]).holds
    with pytest.raises(MalformedArtifactError, match="first split"):
        open_artifact(parts[1])
    # A missing part is never read as a smaller model.
    parts[-1].rename(parts[-1].with_suffix(".moved"))
    with pytest.raises(MalformedArtifactError, match="missing"):
        open_artifact(parts[0])
