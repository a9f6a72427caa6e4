"""Every attack and benign twin of `modelseal redteam` on real fixture models, with its
ground truth checked against the written artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS, SILERO_ST, SMOLLM_Q4_1, TASHKEEL_INT8
from scanner.cli.main import main
from scanner.formats import open_artifact
from scanner.redteam import registry
from scanner.redteam.groundtruth import GroundTruth, truth_path
from scanner.redteam.io import MARKER_KEY, read_marker

# Which fixture each entry is exercised on (small models keep the suite fast).
MODEL_FOR = {
    **{name: SILERO_ST for name in registry.REGISTRY},
    "handcrafted": RAPIDOCR_CLS,
    "shadowlogic": RAPIDOCR_CLS,
    "trojannet": RAPIDOCR_CLS,
    "deeppayload": RAPIDOCR_CLS,
    "parameter-free": RAPIDOCR_CLS,
    "token-trigger": TASHKEEL_INT8,
    "ort-optimize": RAPIDOCR_CLS,
}
ONNX_TOO = (
    "sra",
    "sra-last",
    "rank1",
    "int8",
    "unfaithful-quant",
    "rename",
    "prune-magnitude",
    "lowbyte-payload",
)


def _plant(name: str, key: str, tmp_path: Path, seed: int = 3) -> tuple[Path, GroundTruth]:
    src = real_model(key)
    truth = registry.plant(src, name, tmp_path / f"{name}{src.suffix}", seed=seed)
    return src, truth


def _check_common(src: Path, truth: GroundTruth) -> None:
    out = Path(truth.output)
    assert out.is_file()
    # No fingerprint: the copy's metadata carries no marker (provenance is in the truth).
    assert read_marker(out) is None
    assert truth.details["marked"] is False
    assert truth.details["produced_by"].startswith("modelseal redteam")
    again = GroundTruth.read(truth_path(out))
    assert again.to_dict() == truth.to_dict()
    assert truth.tensors or truth.nodes, "nothing changed"


@pytest.mark.parametrize("name", sorted(registry.REGISTRY))
def test_every_entry_plants_on_a_real_model(name: str, tmp_path: Path) -> None:
    src, truth = _plant(name, MODEL_FOR[name], tmp_path)
    _check_common(src, truth)
    assert truth.kind == registry.get(name).kind


@pytest.mark.parametrize("name", ONNX_TOO)
def test_weight_entries_also_plant_into_onnx(name: str, tmp_path: Path) -> None:
    src, truth = _plant(name, RAPIDOCR_CLS, tmp_path)
    _check_common(src, truth)
    model = onnx.load(truth.output)
    onnx.checker.check_model(model)
    assert not any(p.key == MARKER_KEY for p in model.metadata_props)


@pytest.mark.parametrize("key", [SILERO_ST, RAPIDOCR_CLS])
def test_mark_writes_the_marker_on_request(key: str, tmp_path: Path) -> None:
    src = real_model(key)
    truth = registry.plant(src, "rank1", tmp_path / f"m{src.suffix}", seed=1, mark=True)
    marker = read_marker(Path(truth.output))
    assert marker is not None and marker["produced_by"] == "modelseal redteam"
    assert marker["name"] == "rank1" and truth.details["marked"] is True
    assert read_marker(src) is None


def test_sra_chain_is_isolated(tmp_path: Path) -> None:
    """Every changed element of a chain layer lies on the planted channels: rows `out`
    or columns `in`; nothing else in the model moved (BatchNorm of the chain aside)."""
    src, truth = _plant("sra", RAPIDOCR_CLS, tmp_path, seed=5)
    chain = truth.details["chain"]
    assert chain[-1]["tensor"] == "fc_0.w_0" and len(chain) >= 10
    with open_artifact(src) as a, open_artifact(Path(truth.output)) as b:
        for step in chain:
            name = step["tensor"]
            old, new = a.to_float(name), b.to_float(name)
            if name == "fc_0.w_0":  # MatMul weight [in, out]: only the chain input rows
                rows = np.nonzero((old != new).any(axis=1))[0].tolist()
                assert rows == step["in"]
                continue
            diff = (old != new).reshape(old.shape[0], old.shape[1], -1).any(axis=2)
            rows, cols = np.nonzero(diff)
            allowed_rows = set(step.get("out") or [])
            allowed_cols = set(step.get("in") or [])
            assert all(
                r in allowed_rows or c in allowed_cols for r, c in zip(rows, cols, strict=True)
            )
        layer_names = {s["tensor"] for s in chain}
        for name in truth.tensors:  # besides the chain layers, only per-channel vectors
            assert name in layer_names or len(a.tensors[name].shape) == 1, name


def test_quantization_gap_codes_equal_the_malicious_quantization(tmp_path: Path) -> None:
    from scanner.redteam.quant import quantize_int8

    for name in ("quant-gap-int8", "quant-gap-q8_0", "quant-gap-q4_0"):
        src, truth = _plant(name, SILERO_ST, tmp_path, seed=4)
        assert all(truth.verification["codes_equal_malicious_quantization"].values())
        (tensor,) = truth.tensors
        with open_artifact(src) as a, open_artifact(Path(truth.output)) as b:
            w, attacked = a.to_float(tensor), b.to_float(tensor)
        assert not np.array_equal(w, attacked)
        if name.endswith("int8"):
            assert np.array_equal(quantize_int8(attacked).codes, quantize_int8(w).codes)
            s = quantize_int8(w).scale.reshape((-1,) + (1,) * (w.ndim - 1))
            r = attacked / s - np.rint(attacked / s)
            # Pressed against the walls: most residuals within the margin of +-0.5.
            assert np.mean(np.abs(r) > 0.5 - truth.strength - 1e-4) > 0.95


@pytest.mark.parametrize(
    "name", ["shadowlogic", "trojannet", "deeppayload", "parameter-free", "token-trigger"]
)
def test_graph_backdoor_fires_on_trigger_and_is_silent_on_clean(name: str, tmp_path: Path) -> None:
    _src, truth = _plant(name, MODEL_FOR[name], tmp_path)
    v = truth.verification
    assert v["runtime"] == "onnxruntime"
    assert v["fires_on_trigger"] and v["fired"] == v["samples"]
    assert v["clean_unchanged"] and v["clean_max_abs_diff"] <= 1e-5
    with open_artifact(Path(truth.output)) as art:
        names = {n.name for n in art.graph.nodes}
    assert set(truth.nodes) <= names


def test_unfaithful_quantization_fails_its_claim_and_int8_twin_holds(tmp_path: Path) -> None:
    from scanner.claims import check_claim

    src = real_model(SILERO_ST)
    honest = registry.plant(src, "int8", tmp_path / "honest.safetensors", seed=2)
    bad = registry.plant(
        src, "unfaithful-quant", tmp_path / "bad.safetensors", seed=2, strength=0.003
    )
    assert honest.claim == bad.claim
    assert check_claim("quantize", honest.claim.split(":", 1)[1], src, Path(honest.output)).holds
    result = check_claim("quantize", bad.claim.split(":", 1)[1], src, Path(bad.output))
    assert not result.holds
    assert [v.tensor for v in result.tensors if not v.ok] == [bad.details["tensor"]]


@pytest.mark.parametrize(
    "name",
    [
        "cast-fp16",
        "cast-bf16",
        "prune-magnitude",
        "prune-2:4",
        "prune-channel",
        "gguf-q8_0",
        "gguf-q4_0",
    ],
)
def test_benign_twin_claims_hold(name: str, tmp_path: Path) -> None:
    from scanner.claims import check_claim

    src, truth = _plant(name, SILERO_ST, tmp_path)
    kind, _, params = truth.claim.partition(":")
    result = check_claim(kind, params, src, Path(truth.output))
    assert result.holds, result.message


def test_gguf_in_gguf_out_keeps_metadata(tmp_path: Path) -> None:
    src, truth = _plant("rank1", SMOLLM_Q4_1, tmp_path)
    _check_common(src, truth)
    assert truth.tensors == (truth.details["tensor"],)
    with open_artifact(src) as a, open_artifact(Path(truth.output)) as b:
        before = dict(a.metadata["gguf"])
        after = dict(b.metadata["gguf"])
        assert MARKER_KEY not in after
        assert before.keys() <= after.keys()
        assert b.tensors[truth.tensors[0]].dtype.name == "Q4_1"


def test_not_applicable_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(registry.NotApplicableError, match="applies to onnx"):
        registry.plant(real_model(SILERO_ST), "shadowlogic", tmp_path / "x.safetensors")
    with pytest.raises(Exception, match="unknown attack or transform"):
        registry.get("nope")


def test_seeded_and_deterministic(tmp_path: Path) -> None:
    a = registry.plant(real_model(SILERO_ST), "rank1", tmp_path / "a.safetensors", seed=9)
    b = registry.plant(real_model(SILERO_ST), "rank1", tmp_path / "b.safetensors", seed=9)
    assert Path(a.output).read_bytes() == Path(b.output).read_bytes()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["redteam", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "sra-last" in listed and "ort-optimize" in listed
    out = tmp_path / "bad.onnx"
    assert (
        main(
            [
                "redteam",
                str(real_model(RAPIDOCR_CLS)),
                "--attack",
                "shadowlogic",
                "--seed",
                "1",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    summary = capsys.readouterr().out
    assert summary.startswith(f"wrote {out}: attack shadowlogic (seed 1")
    assert "under onnxruntime: fires on its trigger, clean outputs unchanged" in summary
    assert json.loads(truth_path(out).read_text())["verification"]["fires_on_trigger"]
    assert (
        main(
            [
                "redteam",
                str(real_model(SILERO_ST)),
                "--attack",
                "int8",
                "-o",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "redteam",
                str(real_model(SILERO_ST)),
                "--attack",
                "rank1",
                "--strength",
                "0.02",
                "--param",
                "tensor=lstm_cell.weight_ih",
                "-o",
                str(tmp_path / "r.safetensors"),
            ]
        )
        == 0
    )
    truth = GroundTruth.read(truth_path(tmp_path / "r.safetensors"))
    assert truth.tensors == ("lstm_cell.weight_ih",) and truth.params["rel"] == 0.02
