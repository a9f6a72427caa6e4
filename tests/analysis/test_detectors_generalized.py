"""Attack detectors beyond their own planters: payloads next to other changes, prune-
activated edits at any sparsity, quantization-gap attacks on every common grid.

Every tamper is written here (no planter from the scanner), with shapes, widths, grids and
margins the red-team planters do not use, on real fixture weights (MiniLM encoder, the
RapidOCR CNN, the Silero LSTM). Each attack sits next to its benign twins.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from fixtures import real_model
from fixtures.real_models import SILERO_ST
from scanner.analysis.bits import analyze_bits
from scanner.analysis.pruning import analyze_prune_activated
from scanner.api import diff_artifacts
from scanner.claims.gap import SCHEMES, gap_tensor, lattice_of, row_lattice
from scanner.claims.gap_grids import BY_NAME
from tests.analysis.weights_io import tensor_pair, write_safetensors

ATTN_OUT = "encoder.layer.3.attention.output.dense.weight"  # 384 x 384
VALUE = "encoder.layer.2.attention.self.value.weight"  # 384 x 384
FFN_OUT = "encoder.layer.5.output.dense.weight"  # 384 x 1536
LSTM = "lstm_cell.weight_ih"  # 512 x 128
CONV = "conv11_se_2_weights"  # 200 x 50


@pytest.fixture(scope="module")
def lstm_weights() -> dict[str, np.ndarray]:
    return load_file(str(real_model(SILERO_ST)))


# --- low-bit payloads -------------------------------------------------------------


def _mask_payload(w: np.ndarray, rows: slice, every: int, bits: int, seed: int) -> np.ndarray:
    """Overwrite the low ``bits`` of every ``every``-th word of ``rows`` with random bits."""
    rng = np.random.default_rng(seed)
    out = w.copy()
    words = out[rows].reshape(-1).view(np.uint32)[::every]
    mask = np.uint32((1 << bits) - 1)
    fresh = rng.integers(0, 1 << bits, words.size, dtype=np.uint64).astype(np.uint32)
    block = out[rows].reshape(-1).view(np.uint32)
    block[::every] = (words & ~mask) | fresh
    out[rows] = block.view(np.float32).reshape(out[rows].shape)
    return out


def _flip_sign(w: np.ndarray, row: int, col: int) -> np.ndarray:
    out = w.copy()
    out[row, col] = -out[row, col]
    return out


def test_payload_and_sign_flip_in_one_tensor(minilm_weights, tmp_path: Path) -> None:
    base = {k: minilm_weights[k] for k in (ATTN_OUT, VALUE)}
    tampered = _mask_payload(base[ATTN_OUT], slice(40, 80), every=2, bits=12, seed=3)
    tampered = _flip_sign(tampered, 300, 17)
    a = write_safetensors(tmp_path / "trusted.safetensors", base)
    b = write_safetensors(tmp_path / "deployed.safetensors", {**base, ATTN_OUT: tampered})
    result = diff_artifacts(a, b)
    found = [f for f in result.findings if f.rule_id == "MS305"]
    assert len(found) == 1, [(f.rule_id, f.message) for f in result.findings]
    ev = found[0].evidence
    assert ev["payload_bits_per_word"] == 12
    assert ev["other_sign_or_exponent_changes"] == 1
    # 40 rows x 192 words; a random payload can rewrite a word with its own bits.
    assert ev["words"] >= 0.97 * 40 * 192
    rows = found[0].locations[0].region.indices
    assert set(rows) <= set(range(40, 80)) and len(rows) >= 38


@pytest.mark.parametrize("bits", [9, 16, 21])
def test_payload_next_to_a_row_edit_on_the_lstm(lstm_weights, bits: int) -> None:
    w = lstm_weights[LSTM]
    tampered = _mask_payload(w, slice(300, 340), every=1, bits=bits, seed=bits)
    tampered[7] += np.float32(0.5) * np.abs(w).max()  # a plain row edit beside it
    found = analyze_bits(tensor_pair(LSTM, w, tampered))
    assert found is not None and found.kind == "low-byte payload"
    assert found.payload_bits == bits
    assert set(found.rows) <= set(range(300, 340)) and 7 not in found.rows


@pytest.mark.parametrize("rel", [1e-7, 1e-5, 1e-3, 1e-1])
def test_payload_benign_twins(minilm_weights, lstm_weights, rel: float) -> None:
    """Fine-tunes (additive and multiplicative noise), round-to-nearest and truncating
    casts stored back as float32: numeric changes or zeroed low bits, never a payload."""
    rng = np.random.default_rng(int(-np.log10(rel)))
    for name, w in ((VALUE, minilm_weights[VALUE]), (LSTM, lstm_weights[LSTM])):
        rms = float(np.sqrt(np.mean(np.square(w))))
        twins = [
            w + np.float32(rel * rms) * rng.standard_normal(w.shape).astype(np.float32),
            w * (1 + np.float32(rel) * rng.standard_normal(w.shape).astype(np.float32)),
            w.astype(np.float16).astype(np.float32),
            w.astype(ml_dtypes.bfloat16).astype(np.float32),
            (w.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32),  # truncation
        ]
        for twin in twins:
            found = analyze_bits(tensor_pair(name, w, twin.astype(np.float32)))
            assert found is None or found.kind != "low-byte payload", found


# --- prune-activated edits --------------------------------------------------------


def _prune_activated(
    w: np.ndarray, sparsity: float, per_row: bool, rel: float, seed: int
) -> np.ndarray:
    """Hide a rank-2 edit on the weights pruning keeps; repair its effect on two trigger
    directions and add clean-data noise on the weights pruning removes (kept below the
    prune threshold), solved row by row."""
    rng = np.random.default_rng(seed)
    a = w.reshape(w.shape[0], -1).astype(np.float64)
    mag = np.abs(a)
    thr = (
        np.quantile(mag, sparsity, axis=1, keepdims=True) if per_row else np.quantile(mag, sparsity)
    )
    cand = mag <= thr
    trig = np.linalg.qr(rng.standard_normal((a.shape[1], 2)))[0]
    edit = np.where(cand, 0.0, rng.standard_normal((a.shape[0], 2)) @ trig.T)
    edit *= 0.4 * rel * np.linalg.norm(a) / np.linalg.norm(edit)
    noise = np.where(cand, rng.standard_normal(a.shape), 0.0)
    noise *= rel * np.linalg.norm(a) / np.linalg.norm(noise)
    repair = np.zeros_like(a)
    for i in range(a.shape[0]):
        c = np.flatnonzero(cand[i])
        if c.size >= 2:
            need = -((edit[i] + noise[i]) @ trig)
            repair[i, c] = np.linalg.lstsq(trig[c].T, need, rcond=None)[0]
    hidden = np.clip(a + noise + repair, -thr * 0.999, thr * 0.999)
    out = np.where(cand, hidden, a + edit)
    return out.reshape(w.shape).astype(np.float32)


@pytest.mark.parametrize(
    ("sparsity", "per_row"), [(0.1, False), (0.6, True), (0.7, False), (0.8, True), (0.8, False)]
)
def test_prune_activated_at_any_sparsity(minilm_weights, lstm_weights, sparsity, per_row):
    for name, w in ((VALUE, minilm_weights[VALUE]), (LSTM, lstm_weights[LSTM])):
        tampered = _prune_activated(w, sparsity, per_row, rel=0.02, seed=int(sparsity * 10))
        found = analyze_prune_activated(tensor_pair(name, w, tampered))
        assert found is not None and found.kind == "prune-activated", (name, sparsity)
        assert abs(float(found.evidence["prune_ratio"]) - sparsity) <= 0.06, found.evidence


def test_prune_activated_end_to_end(cnn_weights, write_cnn) -> None:
    w = cnn_weights[CONV]
    tampered = _prune_activated(w, 0.75, per_row=False, rel=0.03, seed=4)
    result = diff_artifacts(
        write_cnn("trusted", cnn_weights), write_cnn("deployed", {**cnn_weights, CONV: tampered})
    )
    assert any(f.rule_id == "MS307" for f in result.findings), [
        (f.rule_id, f.message) for f in result.findings
    ]


@pytest.mark.parametrize("rel", [1e-3, 3e-2])
def test_prune_activated_benign_twins(minilm_weights, lstm_weights, rel: float) -> None:
    """Fine-tunes (Gaussian, sign-like, multiplicative), a LoRA merge, and magnitude
    pruning at 0.7 with a light update of the kept weights."""
    rng = np.random.default_rng(int(rel * 1e4))
    for name, w in ((VALUE, minilm_weights[VALUE]), (LSTM, lstm_weights[LSTM])):
        s = float(np.std(w)) * rel
        lora = rng.standard_normal((w.shape[0], 8)) @ rng.standard_normal((8, w.shape[1]))
        pruned = np.where(np.abs(w) <= np.quantile(np.abs(w), 0.7), 0.0, w)
        twins = [
            w + s * rng.standard_normal(w.shape),
            w + s * np.sign(rng.standard_normal(w.shape)),
            w * (1 + rel * rng.standard_normal(w.shape)),
            w + s * lora / np.sqrt(8),
            pruned + (pruned != 0) * s * rng.standard_normal(w.shape),
        ]
        for i, twin in enumerate(twins):
            assert analyze_prune_activated(tensor_pair(name, w, twin.astype(np.float32))) is None, i


# --- quantization-gap attacks -----------------------------------------------------


def _press(
    w: np.ndarray, grid: str, margin: float, rows: np.ndarray, seed: int, on_grid: float = 0.0
) -> np.ndarray:
    """Move the weights of ``rows`` to within ``margin`` of a wall of their own bin on
    ``grid`` (codes unchanged); ``on_grid`` of them are put on code points instead."""
    rng = np.random.default_rng(seed)
    c = BY_NAME[grid].coordinates(w, (float(w.min()), float(w.max())))
    code = np.rint(c.q)
    side = np.where(rng.random(w.shape) < 0.5, -1.0, 1.0)
    moved = code + side * (0.5 - margin * rng.random(w.shape))
    moved = np.where(rng.random(w.shape) < on_grid, code, moved).astype(np.float32)
    chosen = np.zeros(w.shape[0], dtype=bool)
    chosen[rows] = True
    return np.where(c.valid & chosen[:, None], c.to_value(moved), w).astype(np.float32)


def _gap(name: str, w: np.ndarray, scheme: str):
    ext = (float(w.min()), float(w.max()))
    return gap_tensor(name, w, scheme, 10**6, lattice_of(w, ext), ext, row_lattice(w))


@pytest.mark.parametrize(
    ("grid", "margin", "share", "on_grid"),
    [
        ("uint8-asym-per-tensor", 0.06, 1.0, 0.0),
        ("uint8-asym-per-channel", 0.12, 0.25, 0.0),
        ("int8-per-channel", 0.1, 1.0, 0.51),
        ("q4_1", 0.08, 1.0, 0.51),
        ("q5_0", 0.04, 0.1, 0.0),
        ("nf4", 0.1, 1.0, 0.0),
        ("fp4", 0.05, 0.5, 0.0),
    ],
)
def test_gap_attack_on_every_grid(minilm_weights, grid, margin, share, on_grid) -> None:
    w = minilm_weights[VALUE]
    rng = np.random.default_rng(len(grid))
    rows = np.sort(rng.choice(w.shape[0], max(1, int(share * w.shape[0])), replace=False))
    tampered = _press(w, grid, margin, rows, seed=5, on_grid=on_grid)
    r = _gap(VALUE, tampered, grid)
    assert r.flagged and not r.skipped, (grid, r.log10_p, r.skipped)
    if share < 1.0:
        assert set(r.rows) <= set(rows.tolist()) and len(r.rows) >= 0.5 * rows.size


def test_gap_attack_on_k_quant_blocks(lstm_weights) -> None:
    w = lstm_weights["lstm_cell.weight_hh"].reshape(128, 512)  # rows of two super-blocks
    tampered = _press(w, "q4_k", 0.08, np.arange(0, 128, 3), seed=9)
    r = _gap("hh", tampered, "q4_k")
    assert r.flagged, r.log10_p
    assert not _gap("hh", w, "q4_k").flagged


def test_gap_benign_twins(minilm_weights, lstm_weights, cnn_weights) -> None:
    """Real weights in float32, fp16 and bf16, and dequantized int8 / uint8 codes, on
    every grid: never flagged, and every grid that applies is tested."""
    tensors = {
        VALUE: minilm_weights[VALUE],
        LSTM: lstm_weights[LSTM],
        CONV: cnn_weights[CONV].reshape(cnn_weights[CONV].shape[0], -1),
    }
    flagged = []
    for name, w in tensors.items():
        c8 = BY_NAME["int8-per-channel"].coordinates(w, (float(w.min()), float(w.max())))
        cu = BY_NAME["uint8-asym-per-tensor"].coordinates(w, (float(w.min()), float(w.max())))
        twins = {
            "f32": w,
            "fp16": w.astype(np.float16).astype(np.float32),
            "bf16": w.astype(ml_dtypes.bfloat16).astype(np.float32),
            "int8": c8.to_value(np.clip(np.rint(c8.q), -127, 127)),
            "uint8": cu.to_value(np.clip(np.rint(cu.q), 0, 255)),
        }
        for label, twin in twins.items():
            for scheme in SCHEMES:
                r = _gap(name, twin, scheme)
                if r.flagged:
                    flagged.append((name, label, scheme, round(r.log10_p, 1)))
                assert not r.skipped or "multiple" in r.skipped or "code point" in r.skipped
    assert not flagged


def test_gap_coverage_names_untested_grids(minilm_weights, tmp_path: Path, run_cli) -> None:
    # Rows of 384 are no whole number of K-quant super-blocks (256): not tested, and said.
    path = write_safetensors(
        tmp_path / "two.safetensors", {k: minilm_weights[k] for k in (VALUE, FFN_OUT)}
    )
    out = run_cli("scan", path, "--format", "json")
    findings = out.json()["findings"]
    cover = [f for f in findings if f["rule_id"] == "MS410"]
    assert len(cover) == 1, findings
    assert sorted(cover[0]["evidence"]["not_tested"]["q4_k"].values())[0] == [VALUE]
    assert "q4_k" in cover[0]["evidence"]["approximate"]
    assert not [f for f in findings if f["rule_id"] == "MS409"]
    assert out.code == 0


def test_gap_dequantized_gguf_is_no_attack() -> None:
    """Rows of a real llama.cpp Q4_K_M file (Q8_0, Q5_0, Q4_K, Q6_K tensors) dequantized to
    float: their values are block lattices, explained by the quantization, on every grid."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from fixtures.real_models import GEMMA3_Q4_K_M, weights_only

    reader = GGUFReader(str(weights_only(GEMMA3_Q4_K_M)))
    seen: dict[str, str] = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        wanted = kind in ("Q8_0", "Q5_0", "Q4_K", "Q6_K") and kind not in seen
        if len(t.shape) < 2 or not t.name.startswith("blk.") or not wanted:
            continue
        seen[kind] = t.name
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1, int(t.shape[0]))
        w = np.ascontiguousarray(w[:64])
        assert row_lattice(w) is not None, (t.name, kind)
        for scheme in SCHEMES:
            r = _gap(t.name, w, scheme)
            assert not r.flagged, (t.name, kind, scheme, r.log10_p)
    assert len(seen) == 4
