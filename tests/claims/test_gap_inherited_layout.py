"""In a diff, the quantization-gap check judges the change, not the layout the trusted
weights already had: weights dequantized from one grid sit at arithmetic positions on
another grid's bins, and a fine-tune that smears them is no gap attack; pressing the
same weights against a grid's walls still is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures import real_model
from fixtures.real_models import MINILM
from scanner.api import diff_artifacts

NAME = "encoder.layer.3.output.dense.weight"  # (384, 1536)


def _dequantized_q4_1(w: np.ndarray) -> np.ndarray:
    """``w`` through a 4-bit min/max quantization in blocks of 32 along each row (the
    layout of ggml's Q4_1), dequantized back to float32."""
    b = w.astype(np.float64).reshape(-1, 32)
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = np.where(hi > lo, (hi - lo) / 15, 1.0)
    codes = np.clip(np.rint((b - lo) / d), 0, 15)
    return (lo + codes * d).astype(np.float32).reshape(w.shape)


def _smeared(w: np.ndarray, step: float, seed: int) -> np.ndarray:
    """Every weight moved by an independent step of about ``step`` (Adam's updates are
    the size of the learning rate whatever the gradient), heavy-tailed across columns."""
    rng = np.random.default_rng(seed)
    size = step * rng.lognormal(0.0, 0.5, w.shape[1])
    return (w + rng.choice([-1.0, 1.0], w.shape) * size * rng.random(w.shape)).astype(np.float32)


def _pressed_to_q8_0_walls(w: np.ndarray, margin: float) -> np.ndarray:
    """Each weight moved inside its Q8_0 bin (blocks of 32, scale absmax / 127) to within
    ``margin`` of the wall it is nearest to: the code it rounds to is unchanged."""
    b = w.astype(np.float64).reshape(-1, 32)
    d = np.abs(b).max(axis=1, keepdims=True) / 127
    d = np.where(d > 0, d, 1.0)
    q = b / d
    base = np.rint(q)
    side = np.where(q >= base, 1.0, -1.0)
    pressed = np.where(np.abs(base) >= 127, q, base + side * (0.5 - margin))
    return (pressed * d).astype(np.float32).reshape(w.shape)


def _diff(tmp_path: Path, trusted_w: np.ndarray, deployed_w: np.ndarray) -> list:
    weights = load_file(str(real_model(MINILM)))
    save_file({**weights, NAME: trusted_w}, str(tmp_path / "trusted.safetensors"))
    save_file({**weights, NAME: deployed_w}, str(tmp_path / "deployed.safetensors"))
    result = diff_artifacts(tmp_path / "trusted.safetensors", tmp_path / "deployed.safetensors")
    return [f for f in result.findings if f.rule_id == "MS409"]


@pytest.mark.parametrize("relative_step", [3e-3, 3e-2, 0.1])
def test_smearing_dequantized_weights_is_not_a_gap_footprint(
    tmp_path: Path, relative_step: float
) -> None:
    w = load_file(str(real_model(MINILM)))[NAME]
    trusted = _dequantized_q4_1(w)
    # the step relative to the 4-bit grid's median step in this tensor
    q4_step = float(np.median(np.ptp(trusted.reshape(-1, 32), axis=1))) / 15
    deployed = _smeared(trusted, relative_step * q4_step, seed=1)
    assert not _diff(tmp_path, trusted, deployed)


def test_pressing_dequantized_weights_against_walls_is_flagged(tmp_path: Path) -> None:
    w = load_file(str(real_model(MINILM)))[NAME]
    trusted = _dequantized_q4_1(w)
    deployed = trusted.copy()
    rows = slice(100, 228)
    deployed[rows] = _pressed_to_q8_0_walls(trusted[rows], margin=0.04)
    gap = _diff(tmp_path, trusted, deployed)
    assert gap and gap[0].locations[0].tensor == NAME
    assert {f.evidence["scheme"] for f in gap} & {"q8_0"}
