"""Explain or fail, on real weights, with tampering written here (tests/tamper/regions.py).

Plain edits (a row, a column, a conv channel, an LSTM row, one element, low-rank edits
confined to a few tensors) fail with a localized-edit finding naming the tensor and its
rows or columns, alone and under a fine-tune. Benign twins (fine-tunes at several
learning rates, a LoRA merge across every layer, casts, storage round trips) raise no
localized edit; a fine-tune or LoRA fails by default policy only (medium) and passes once
allowed or claimed.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from scanner.diff import diff_artifacts
from scanner.findings import Severity
from tests.analysis.weights_io import write_safetensors
from tests.tamper import regions

EDIT_RULES = {"MS301", "MS302", "MS303", "MS304", "MS305", "MS306", "MS307"}
QUERY = "encoder.layer.3.attention.self.query.weight"
FFN = "encoder.layer.3.intermediate.dense.weight"


@pytest.fixture(scope="module")
def mini(minilm_weights) -> dict[str, np.ndarray]:
    """Four real encoder layers of MiniLM."""
    keep = tuple(f"encoder.layer.{i}." for i in (2, 3, 4, 5))
    return {k: v for k, v in minilm_weights.items() if k.startswith(keep)}


@pytest.fixture(scope="module")
def silero(silero_safetensors: Path) -> dict[str, np.ndarray]:
    """Silero VAD: convolutions and an LSTM cell."""
    return {k: v for k, v in load_file(str(silero_safetensors)).items() if v.dtype == np.float32}


def _diff(tmp_path: Path, base, new, *, bf16: bool = False, allow=(), claims=()):
    a = write_safetensors(tmp_path / "trusted.safetensors", base, bf16)
    b = write_safetensors(tmp_path / "deployed.safetensors", new, bf16)
    return diff_artifacts(a, b, options={"allow": list(allow), "claims": list(claims)})


def _edits(result) -> list:
    return [f for f in result.findings if f.rule_id in EDIT_RULES and f.severity >= Severity.HIGH]


def _fails(result) -> bool:
    return any(f.severity >= Severity.MEDIUM for f in result.findings)


def _region(result, tensor: str) -> tuple[int | None, set[int]]:
    """(axis, indices) of the edit findings' locations in ``tensor``."""
    axis, idx = None, set()
    for f in _edits(result):
        for loc in f.locations:
            if loc.tensor == tensor and loc.region is not None:
                axis = loc.region.axis
                idx.update(loc.region.indices)
    return axis, idx


def _with(weights, name: str, value: np.ndarray) -> dict[str, np.ndarray]:
    out = dict(weights)
    out[name] = np.asarray(value, dtype=np.float32)
    return out


def _finetune(weights, lr: float, seed: int, names=None) -> dict[str, np.ndarray]:
    """A gradient-like update: a sum of outer products of per-row and per-column scaled
    (log-normal, i.e. unevenly learning) signals plus a little element noise, sized
    ``lr`` x the tensor's std; vectors get small gaussian updates."""
    rng = np.random.default_rng(seed)
    out = dict(weights)
    for k in names or [k for k, v in weights.items() if v.ndim >= 1]:
        v = weights[k]
        if v.ndim >= 2:
            m, n = v.shape[0], v.size // v.shape[0]
            rows = np.exp(rng.normal(0, 0.6, m))
            cols = np.exp(rng.normal(0, 0.6, n))
            g = (rng.standard_normal((m, 48)) * rows[:, None]) @ (
                rng.standard_normal((48, n)) * cols[None, :]
            )
            g += 0.3 * rng.standard_normal((m, n)) * np.outer(rows, cols) * np.sqrt(48)
            d = g / np.sqrt(np.mean(g**2)) * lr * float(v.std())
        else:
            d = rng.standard_normal(v.shape) * lr * (float(v.std()) + 1e-3)
        out[k] = (v + d.reshape(v.shape)).astype(np.float32)
    return out


def _rank_k(w: np.ndarray, k: int, rel: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m, n = w.shape
    d = rng.standard_normal((m, k)) @ rng.standard_normal((k, n))
    return w + d / np.linalg.norm(d) * rel * np.linalg.norm(w)


# --- plain tampering, alone ------------------------------------------------------------


@pytest.mark.parametrize("times", [3.0, 5.0])
def test_row_overwritten_alone(mini, tmp_path, times):
    rng = np.random.default_rng(int(times))
    w = mini[FFN]
    mask = regions.region_mask("row", w.shape, rng)
    result = _diff(tmp_path, mini, _with(mini, FFN, regions.overwrite(w, mask, times, rng)))
    assert _fails(result) and result.classification == "localized edit"
    assert _region(result, FFN) == (0, set(np.flatnonzero(mask.any(axis=1)).tolist()))


def test_column_overwritten_alone(mini, tmp_path):
    rng = np.random.default_rng(2)
    w = mini[QUERY]
    mask = regions.region_mask("column", w.shape, rng)
    result = _diff(tmp_path, mini, _with(mini, QUERY, regions.overwrite(w, mask, 4.0, rng)))
    assert _region(result, QUERY) == (1, set(np.flatnonzero(mask.any(axis=0)).tolist()))


def test_one_element_set_to_40(mini, tmp_path):
    w = mini[FFN].copy()
    w[700, 123] = 40.0
    result = _diff(tmp_path, mini, _with(mini, FFN, w))
    (edit,) = _edits(result)
    assert edit.evidence["outlier_elements"] == [[700, 123]]
    assert _region(result, FFN) == (0, {700})


def test_conv_channel_scaled_and_lstm_row_shifted(silero, tmp_path):
    rng = np.random.default_rng(3)
    conv = silero["conv3.weight"]
    ch = regions.region_mask("channel", conv.shape, rng)
    lstm = silero["lstm_cell.weight_hh"]
    row = regions.region_mask("row", lstm.shape, rng)
    shifted = lstm.astype(np.float64)
    shifted[row] += 0.5 * float(np.ptp(lstm[row]))
    for name, new, mask in (
        ("conv3.weight", regions.scale_region(conv, ch, 3.0), ch),
        ("lstm_cell.weight_hh", shifted, row),
    ):
        result = _diff(tmp_path, silero, _with(silero, name, new))
        assert _fails(result) and _edits(result), name
        rows = set(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)).tolist())
        assert _region(result, name) == (0, rows), name


# --- plain tampering under a fine-tune -------------------------------------------------


def test_two_rows_under_a_light_finetune_of_six_matrices(mini, tmp_path):
    rng = np.random.default_rng(4)
    mats = sorted(k for k, v in mini.items() if v.ndim == 2 and k != FFN)
    tuned = _finetune(mini, 1e-3, seed=4, names=mats[:6])
    w = mini[FFN]
    mask = regions.region_mask("row", w.shape, rng) | regions.region_mask("row", w.shape, rng)
    tuned[FFN] = regions.overwrite(w, mask, 2.0, rng).astype(np.float32)
    result = _diff(tmp_path, mini, tuned, allow=["finetune"])
    assert _region(result, FFN) == (0, set(np.flatnonzero(mask.any(axis=1)).tolist()))
    assert {f.rule_id for f in _edits(result)} == {"MS303"}


def test_edits_inside_a_finetuned_tensor(silero, tmp_path):
    """The tampered tensor is itself fine-tuned; allowing the fine-tune does not silence
    the edit."""
    rng = np.random.default_rng(5)
    tuned = _finetune(silero, 3e-3, seed=5)
    w = tuned["lstm_cell.weight_ih"]
    mask = regions.region_mask("row", w.shape, rng)
    tuned["lstm_cell.weight_ih"] = regions.overwrite(w, mask, 1.0, rng).astype(np.float32)
    conv = tuned["conv4.weight"]
    ch = regions.region_mask("channel", conv.shape, rng)
    tuned["conv4.weight"] = regions.scale_region(conv, ch, 3.0).astype(np.float32)
    result = _diff(tmp_path, silero, tuned, allow=["finetune"])
    assert _region(result, "lstm_cell.weight_ih")[1] == set(np.flatnonzero(mask.any(1)).tolist())
    assert _region(result, "conv4.weight")[1] == set(
        np.flatnonzero(ch.reshape(ch.shape[0], -1).any(1)).tolist()
    )
    assert all(f.severity is Severity.HIGH for f in _edits(result))


# --- low-rank edits confined to a few tensors ------------------------------------------


def _low_rank_case(mini, names: list[str], k: int) -> dict[str, np.ndarray]:
    out = dict(mini)
    for i, n in enumerate(names):
        out[n] = _rank_k(mini[n], k, 0.02, seed=10 + i).astype(np.float32)
    return out


@pytest.mark.parametrize(
    ("names", "k"),
    [
        ([f"encoder.layer.{i}.output.dense.weight" for i in (2, 3, 4)], 1),
        ([FFN], 3),
        (
            [
                f"encoder.layer.3.attention.{m}.weight"
                for m in ("self.query", "self.key", "self.value", "output.dense")
            ],
            2,
        ),
    ],
    ids=["rank1-three-consecutive-layers", "rank3-one-tensor", "rank2-four-tensors"],
)
def test_low_rank_edit_of_a_few_tensors_fails(mini, tmp_path, names, k):
    result = _diff(tmp_path, mini, _low_rank_case(mini, names, k), allow=["lora"])
    edits = [
        f for f in _edits(result) if f.evidence.get("kind") == "low-rank edit of a few tensors"
    ]
    assert len(edits) == 1
    assert sorted(edits[0].evidence["tensors"]) == sorted(names)
    assert {v["rank"] for v in edits[0].evidence["tensors"].values()} == {k}


# --- benign twins ----------------------------------------------------------------------


@pytest.mark.parametrize("lr", [3e-4, 3e-3, 3e-2])
def test_finetunes_fail_only_by_default_policy(silero, tmp_path, lr):
    tuned = _finetune(silero, lr, seed=int(lr * 1e5))
    result = _diff(tmp_path, silero, tuned)
    assert not _edits(result)
    failing = {(f.rule_id, f.severity) for f in result.findings if f.severity >= Severity.MEDIUM}
    assert failing == {("MS308", Severity.MEDIUM)}
    assert result.classification == "full fine-tune"
    allowed = _diff(tmp_path, silero, tuned, allow=["finetune"])
    assert not _fails(allowed)


def test_finetune_of_a_transformer(mini, tmp_path):
    names = [k for k in mini if k.startswith("encoder.layer.5.")]
    result = _diff(tmp_path, mini, _finetune(mini, 1e-2, seed=7, names=names), bf16=True)
    assert not _edits(result)
    assert result.classification == "full fine-tune"


def test_lora_across_every_layer(mini, tmp_path):
    bf16 = True
    # a two-layer model keeps the three diffs fast; "every layer" is both of them
    mini = {k: v for k, v in mini.items() if k.startswith(("encoder.layer.4.", "encoder.layer.5."))}
    rng = np.random.default_rng(8)
    merged = dict(mini)
    targets = sorted(k for k in mini if k.endswith(("self.query.weight", "self.value.weight")))
    for t in targets:
        w = mini[t]
        d = rng.standard_normal((w.shape[0], 8)) @ rng.standard_normal((8, w.shape[1]))
        merged[t] = (w + d / np.linalg.norm(d) * 0.02 * np.linalg.norm(w)).astype(np.float32)
    result = _diff(tmp_path, mini, merged, bf16=bf16)
    assert not _edits(result)
    assert result.classification == "low-rank update"
    assert {(f.rule_id, f.severity) for f in result.findings if _fails_one(f)} == {
        ("MS308", Severity.MEDIUM)
    }
    assert not _fails(_diff(tmp_path, mini, merged, bf16=bf16, allow=["lora"]))
    claim = "lora:r=8:modules=self.query,self.value"
    assert not _fails(_diff(tmp_path, mini, merged, bf16=bf16, claims=[claim]))


def _fails_one(f) -> bool:
    return f.severity >= Severity.MEDIUM


def test_casts_and_storage_round_trips_pass(silero, tmp_path):
    for narrow in (np.float16, ml_dtypes.bfloat16):
        a = write_safetensors(tmp_path / "t.safetensors", silero)
        cast = {k: v.astype(narrow) for k, v in silero.items()}
        save_file(cast, str(tmp_path / "c.safetensors"))
        result = diff_artifacts(a, tmp_path / "c.safetensors")
        assert not _fails(result) and result.classification == "cast"
        # Stored back in F32: a round trip through the narrow dtype.
        back = {k: v.astype(np.float32) for k, v in cast.items()}
        result = _diff(tmp_path, silero, back)
        assert not _fails(result) and result.classification == "rounding noise"
    nudged = {k: np.nextafter(v, np.float32(np.inf)) for k, v in silero.items()}
    result = _diff(tmp_path, silero, nudged)
    assert not _fails(result) and result.classification == "rounding noise"
    assert any(f.rule_id == "MS309" for f in result.findings)


def test_three_ulps_is_not_rounding_noise(silero, tmp_path):
    """The bound is per element: one element three ulps away is an edit, never noise."""
    w = silero["conv2.weight"].copy()
    flat = w.reshape(-1)
    for _ in range(3):
        flat[100] = np.nextafter(flat[100], np.float32(np.inf))
    result = _diff(tmp_path, silero, _with(silero, "conv2.weight", w))
    assert result.classification == "localized edit" and _fails(result)
