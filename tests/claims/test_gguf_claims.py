"""GGUF claims on real weights: every ggml type the checker re-derives, faithful and with
an unfaithful twin, and the requantize path (explicit and inferred) on SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from fixtures import real_model
from scanner.claims import check_claim
from scanner.claims.gguf import REFERENCE_TYPES, dequantize_blocks, quantize_rows
from scanner.cli.main import main
from scanner.formats import open_artifact
from tests.claims.conftest import FRACTION, TAMPER_TENSOR
from tests.claims.tampering import largest

TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def write_gguf(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, str]]) -> Path:
    """A GGUF file of raw blocks (or float arrays): name -> (data, ggml type name)."""
    wr = gguf.GGUFWriter(str(path), arch)
    for name, (data, qt) in tensors.items():
        if qt in ("F32", "F16"):
            wr.add_tensor(name, data)
        else:
            wr.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType[qt])
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def _negate_largest(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` with its FRACTION largest-magnitude weights negated, and their flat indices
    (the tampered twin re-encodes these rows: the blocks are valid, the codes are not
    the claimed ones)."""
    idx = largest(w, FRACTION)
    out = w.copy().reshape(-1)
    out[idx] = -out[idx]
    return out.reshape(w.shape), idx


@pytest.fixture(scope="session")
def minilm_k_subset(work: Path, minilm) -> tuple[Path, list[str]]:
    """MiniLM's 2-D encoder weights whose rows fill 256-element K-quant super-blocks."""
    names = [
        n
        for n, a in minilm.items()
        if a.ndim == 2 and a.shape[1] % 256 == 0 and n.startswith("encoder.layer.")
    ]
    assert TAMPER_TENSOR in names
    path = work / "minilm_gguf_subset.safetensors"
    save_file({n: minilm[n] for n in names}, str(path))
    return path, names


@pytest.mark.parametrize("qt", TYPES)
def test_gguf_faithful_and_tampered_twin(work: Path, minilm, minilm_k_subset, qt: str) -> None:
    trusted, names = minilm_k_subset
    faithful = {n: (quantize_rows(minilm[n], qt), qt) for n in names}
    tampered_w, idx = _negate_largest(minilm[TAMPER_TENSOR])
    twin = {**faithful, TAMPER_TENSOR: (quantize_rows(tampered_w, qt), qt)}
    ok = check_claim(
        "gguf", qt.lower(), trusted, write_gguf(work / f"minilm_{qt}.gguf", "bert", faithful)
    )
    assert ok.holds and len(ok.tensors) == len(names), (qt, ok.message)
    check = "exact" if qt in REFERENCE_TYPES else "nearest"
    assert all(v.stats["check"] == check for v in ok.tensors)
    bad = check_claim(
        "gguf", qt.lower(), trusted, write_gguf(work / f"minilm_{qt}_t.gguf", "bert", twin)
    )
    assert not bad.holds
    failed = [v for v in bad.tensors if not v.ok]
    assert [v.tensor for v in failed] == [TAMPER_TENSOR], (qt, bad.message)
    # Localized: exactly the rows holding the negated weights, and each reported
    # element is one of them or shares its block.
    shape = minilm[TAMPER_TENSOR].shape
    rows = set(np.unravel_index(idx, shape)[0].tolist())
    assert set(failed[0].rows) == rows
    negated = {tuple(int(i) for i in t) for t in zip(*np.unravel_index(idx, shape), strict=True)}
    block = 32 if qt in REFERENCE_TYPES else 256
    blocks = {(r, c // block) for r, c in negated}
    assert failed[0].violations
    assert all((v.index[0], v.index[1] // block) in blocks for v in failed[0].violations)
    assert any(tuple(v.index) in negated for v in failed[0].violations)


def _k_reconstruction(w: np.ndarray, qt: str) -> np.ndarray:
    """Q2_K / Q3_K values rebuilt from the encoders' round-to-nearest rule, independently
    of the bit layout."""
    x = w.astype(np.float32).reshape(-1, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        if qt == "Q2_K":
            lo = np.minimum(x.min(axis=2), 0.0)
            scale, mins = (x.max(axis=2) - lo) / 3.0, -lo
            d = (scale.max(axis=1) / 15.0).astype(np.float16).astype(np.float32)[:, None]
            dm = (mins.max(axis=1) / 15.0).astype(np.float16).astype(np.float32)[:, None]
            step = (d * np.where(d > 0, np.rint(scale / d), 0).clip(0, 15))[:, :, None]
            off = (dm * np.where(dm > 0, np.rint(mins / dm), 0).clip(0, 15))[:, :, None]
            q = np.where(step > 0, np.rint((x + off) / step), 0).clip(0, 3)
            return (step * q - off).reshape(-1, 256)
        at = np.abs(x).argmax(axis=2)[:, :, None]
        sub = np.take_along_axis(x, at, axis=2)[:, :, 0] / -4.0
        d = (np.abs(sub).max(axis=1) / 31.0).astype(np.float16).astype(np.float32)[:, None]
        step = (d * np.where(d > 0, np.rint(sub / d), 0).clip(-32, 31))[:, :, None]
        q = np.where(step != 0, np.rint(x / step), 0).clip(-4, 3)
        return (step * q).reshape(-1, 256)


@pytest.mark.parametrize("qt", ["Q2_K", "Q3_K"])
def test_k_encoder_layout_round_trips(minilm, qt: str) -> None:
    """``gguf.quants.dequantize`` of the encoder's blocks is exactly the encoder's own
    reconstruction, so the bit layout (scales, mins, hmask, 2-bit codes) is ggml's."""
    w = minilm[TAMPER_TENSOR]
    w = np.concatenate([w, np.zeros((1, w.shape[1]), np.float32), np.abs(w[:1]), -np.abs(w[1:2])])
    blocks = quantize_rows(w, qt)
    bb = 84 if qt == "Q2_K" else 110
    assert blocks.shape == (w.shape[0], w.shape[1] // 256 * bb)
    got = dequantize_blocks(blocks.reshape(-1, bb), qt)
    assert np.array_equal(got, _k_reconstruction(w, qt).astype(np.float32))


def _smollm_subset(work: Path) -> tuple[Path, dict[str, np.ndarray], list[str]]:
    """Twelve Q4_1 tensors of SmolLM2, copied block for block into a GGUF of their own,
    and their dequantized values."""
    src = real_model("smollm2-q4_1")
    with open_artifact(src) as a:
        names = [n for n, i in a.tensors.items() if i.dtype.name == "Q4_1"][:12]
        raw = {}
        values = {}
        for n in names:
            info = a.tensors[n]
            rows = info.shape[0]
            raw[n] = (np.frombuffer(a.raw(n), dtype=np.uint8).reshape(rows, -1).copy(), "Q4_1")
            values[n] = a.to_float(n).reshape(rows, -1)
    return write_gguf(work / "smollm_q4_1_subset.gguf", "llama", raw), values, names


def test_requantize_explicit_and_inferred(work: Path) -> None:
    trusted, values, names = _smollm_subset(work)
    q8 = {n: (quantize_rows(values[n], "Q8_0"), "Q8_0") for n in names}
    out = write_gguf(work / "smollm_q8_0.gguf", "llama", q8)
    tw, _ = _negate_largest(values[names[3]])
    bad = write_gguf(
        work / "smollm_q8_0_t.gguf", "llama", {**q8, names[3]: (quantize_rows(tw, "Q8_0"), "Q8_0")}
    )
    r = check_claim("requantize", "q8_0", trusted, out)
    assert r.holds and len(r.tensors) == 12, r.message
    r = check_claim("requantize", "q8_0", trusted, bad)
    assert [v.tensor for v in r.tensors if not v.ok] == [names[3]]
    # Without --claim: the pair's footprint (Q4_1 source, Q8_0 result) suggests
    # requantization, which is re-derived, reported as MS408 and explains every tensor.
    report_path = work / "smollm_requant.json"
    assert main(["diff", str(trusted), str(out), "--format", "json", "-o", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    inferred = [f for f in report["findings"] if f["rule_id"] == "MS408"]
    assert inferred and inferred[0]["evidence"]["claim"] == "requantize:q8_0"
    assert inferred[0]["evidence"]["tensors"] == 12 and inferred[0]["evidence"]["holds"]
    # ... and the tampered twin is not explained by it.
    assert main(["diff", str(trusted), str(bad), "--format", "json", "-o", str(report_path)]) == 1
