"""Trusted-vs-deployed diff on a real model: localize, pass casts, catch the rest."""

from __future__ import annotations

import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures import real_model
from fixtures.real_models import MINILM_CONFIG
from scanner.diff import TensorStatus, diff_artifacts
from scanner.diff import compare as compare_module
from scanner.findings import Severity
from scanner.report.build import report_from_diff

TARGET = "encoder.layer.3.output.dense.weight"  # (384, 1536)


@pytest.fixture(scope="module")
def weights(minilm: Path) -> dict[str, np.ndarray]:
    return load_file(str(minilm))


def _save(tmp_path: Path, name: str, tensors: dict[str, np.ndarray]) -> Path:
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def _failing_tensors(report) -> set[str]:
    return {loc.tensor for f in report.failing() for loc in f.locations if loc.tensor is not None}


def test_identical_pass_without_numeric_work(minilm: Path, tmp_path: Path, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("identical tensors must be recognized by a byte compare")

    monkeypatch.setattr(compare_module, "value_delta", forbidden)
    monkeypatch.setattr("scanner.diff.engine.value_delta", forbidden)
    copy = tmp_path / "copy.safetensors"
    shutil.copy(minilm, copy)
    report = report_from_diff(diff_artifacts(minilm, copy))
    assert report.verdict == "pass"
    assert report.classification == "identical"
    assert {t.status for t in report.tensors} == {TensorStatus.IDENTICAL}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_block_is_found_and_localized(
    minilm: Path, weights, tmp_path: Path, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    tampered = dict(weights)
    w = weights[TARGET].copy()
    r0 = int(rng.integers(0, w.shape[0] - 64))
    c0 = int(rng.integers(0, w.shape[1] - 64))
    w[r0 : r0 + 64, c0 : c0 + 64] = rng.normal(0, w.std(), size=(64, 64)).astype(np.float32)
    tampered[TARGET] = w
    path = _save(tmp_path, "tampered.safetensors", tampered)
    report = report_from_diff(diff_artifacts(minilm, path))
    assert report.verdict == "fail"
    changed = [t for t in report.tensors if t.status is not TensorStatus.IDENTICAL]
    assert [t.name for t in changed] == [TARGET]
    entry = changed[0]
    assert entry.delta is not None and entry.delta.n_changed == 64 * 64
    assert entry.where is not None
    assert entry.where.rows == tuple(range(r0, r0 + 64))
    assert entry.where.cols == tuple(range(c0, c0 + 64))
    assert entry.where.block == ((r0, r0 + 64), (c0, c0 + 64))
    assert entry.where.block_density == 1.0
    assert TARGET in _failing_tensors(report)


def test_single_element_change_fails(minilm: Path, weights, tmp_path: Path) -> None:
    """Three ulps on one element is beyond storage rounding (2 ulps): it fails, located.
    One ulp is what two roundings of one value can differ by: storage noise, reported."""
    name = "encoder.layer.5.output.dense.bias"
    for ulps, verdict in ((3, "fail"), (1, "pass")):
        tampered = dict(weights)
        bias = weights[name].copy()
        for _ in range(ulps):
            bias[7] = np.nextafter(bias[7], np.float32(np.inf))
        tampered[name] = bias
        path = _save(tmp_path, f"t{ulps}.safetensors", tampered)
        report = report_from_diff(diff_artifacts(minilm, path))
        assert report.verdict == verdict, ulps
        (entry,) = [t for t in report.tensors if t.status is TensorStatus.CHANGED]
        assert entry.delta.n_changed == 1 and entry.where.rows == (7,)
    assert report.classification == "rounding noise"
    assert any(f.rule_id == "MS309" for f in report.findings)


@pytest.mark.parametrize("target", [np.float16, ml_dtypes.bfloat16])
def test_real_cast_passes_as_cast(minilm: Path, weights, tmp_path: Path, target) -> None:
    cast = {k: v.astype(target) if v.dtype == np.float32 else v for k, v in weights.items()}
    report = report_from_diff(diff_artifacts(minilm, _save(tmp_path, "cast.safetensors", cast)))
    assert report.verdict == "pass", [f.message for f in report.failing()]
    assert report.classification == "cast"
    casts = [t for t in report.tensors if t.status is TensorStatus.CAST]
    assert len(casts) == 103  # every float tensor; position ids stay I64
    assert all(t.cast is not None and t.cast.exact for t in casts)
    assert any(f.rule_id == "MS206" and f.severity is Severity.INFO for f in report.findings)


def test_cast_back_to_fp32_is_a_cast(tmp_path: Path, weights) -> None:
    half = {k: v.astype(np.float16) for k, v in weights.items() if v.dtype == np.float32}
    back = {k: v.astype(np.float32) for k, v in half.items()}
    report = report_from_diff(
        diff_artifacts(
            _save(tmp_path, "h.safetensors", half), _save(tmp_path, "b.safetensors", back)
        )
    )
    assert report.verdict == "pass" and report.classification == "cast"


def test_cast_with_one_tensor_replaced_fails(minilm: Path, weights, tmp_path: Path) -> None:
    cast = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}
    w = cast[TARGET].copy()
    w[10, :32] = np.float16(0.5)
    cast[TARGET] = w
    report = report_from_diff(diff_artifacts(minilm, _save(tmp_path, "c.safetensors", cast)))
    assert report.verdict == "fail"
    (entry,) = [t for t in report.tensors if t.status is TensorStatus.DTYPE_CHANGED]
    assert entry.name == TARGET
    assert entry.cast is not None and entry.cast.n_beyond_rounding == 32
    assert entry.where.rows == (10,) and entry.where.cols == tuple(range(32))
    assert TARGET in _failing_tensors(report)


def test_truncating_cast_passes_within_rounding_but_is_not_rne(tmp_path: Path, weights) -> None:
    src = {TARGET: weights[TARGET]}
    bits = weights[TARGET].view(np.uint32) & np.uint32(0xFFFF0000)  # bf16 by truncation
    trunc = {TARGET: (bits >> 16).astype(np.uint16).view(ml_dtypes.bfloat16)}
    report = report_from_diff(
        diff_artifacts(
            _save(tmp_path, "s.safetensors", src), _save(tmp_path, "t.safetensors", trunc)
        )
    )
    (entry,) = report.tensors
    assert entry.status is TensorStatus.CAST
    assert not entry.cast.exact and entry.cast.n_mismatched > 0
    assert entry.cast.n_beyond_rounding == 0


def test_added_removed_renamed_and_reshaped(minilm: Path, weights, tmp_path: Path) -> None:
    changed = dict(weights)
    changed["encoder.layer.0.renamed.weight"] = changed.pop("encoder.layer.0.output.dense.weight")
    changed.pop("pooler.dense.bias")
    changed["backdoor.trigger"] = np.ones((2, 384), np.float32)
    changed["pooler.dense.weight"] = weights["pooler.dense.weight"].T.copy()[:, :200]
    report = report_from_diff(diff_artifacts(minilm, _save(tmp_path, "x.safetensors", changed)))
    status = {t.name: t.status for t in report.tensors if t.status is not TensorStatus.IDENTICAL}
    assert status == {
        "encoder.layer.0.output.dense.weight": TensorStatus.RENAMED,
        "pooler.dense.bias": TensorStatus.REMOVED,
        "backdoor.trigger": TensorStatus.ADDED,
        "pooler.dense.weight": TensorStatus.SHAPE_CHANGED,
    }
    renamed = next(t for t in report.tensors if t.status is TensorStatus.RENAMED)
    assert renamed.deployed_name == "encoder.layer.0.renamed.weight"
    rules = {f.rule_id for f in report.findings}
    assert {"MS202", "MS203", "MS204", "MS205"} <= rules
    assert report.verdict == "fail"


def test_folder_diff_reports_config_change(minilm: Path, tmp_path: Path) -> None:
    for side in ("trusted", "deployed"):
        (tmp_path / side).mkdir()
        shutil.copy(minilm, tmp_path / side / "model.safetensors")
        shutil.copy(real_model(MINILM_CONFIG), tmp_path / side / "config.json")
    config = tmp_path / "deployed" / "config.json"
    config.write_text(config.read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    report = report_from_diff(diff_artifacts(tmp_path / "trusted", tmp_path / "deployed"))
    (f,) = [f for f in report.findings if f.rule_id == "MS210"]
    assert f.locations[0].file == "config.json"
    assert report.verdict == "fail"
