"""The behavioural cross-check through the CLI: ``modelseal diff --probe``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS
from scanner.cli.main import main
from tests.graph import backdoors as bd

BUDGET = 10


def _probe_diff(
    trusted: Path | str, deployed: Path | str, out: Path, budget: int = BUDGET
) -> tuple[int, dict]:
    code = main(
        [
            "diff",
            str(trusted),
            str(deployed),
            "--probe",
            "--probe-budget",
            str(budget),
            "--format",
            "json",
            "-o",
            str(out),
        ]
    )
    return code, json.loads(out.read_text())


def test_probe_cli_trojannet_vs_optimized_twin(
    cls_model: onnx.ModelProto, cls_twins: dict[str, Path], tmp_path: Path
) -> None:
    trusted = real_model(RAPIDOCR_CLS)
    bad, _ = bd.window_mlp(cls_model)
    bad_path = tmp_path / "trojannet.onnx"
    onnx.save(bad, bad_path)
    code, report = _probe_diff(trusted, bad_path, tmp_path / "bad.json")
    assert code == 1
    ms504 = [f for f in report["findings"] if f["rule_id"] == "MS504"]
    assert len(ms504) == 1 and ms504[0]["severity"] == "critical"
    ev = ms504[0]["evidence"]
    assert ev["verdict"] == "trigger" and ev["budget_s"] == BUDGET
    assert ev["seconds"] <= BUDGET + 2
    out = ev["outputs"][0]
    # silent on random inputs, divergent on structured ones (fills or patches: the probe
    # does not know where the trigger window is)
    assert out["random_max"] == 0.0 and out["n_structured_diverged"] >= 1
    assert out["structured_max"] > 0.1 and out["worst_probe"].startswith("x:")
    assert f"of a {BUDGET}s budget" in ms504[0]["message"]
    assert report["evidence"]["graph"]["probe"]["budget_s"] == BUDGET

    code, report = _probe_diff(trusted, cls_twins["extended"], tmp_path / "twin.json")
    assert code == 0, [(f["rule_id"], f["message"]) for f in report["findings"]]
    assert not [f for f in report["findings"] if f["rule_id"] == "MS504"]
    probe = report["evidence"]["graph"]["probe"]
    assert probe["verdict"] == "equivalent" and probe["budget_s"] == BUDGET
    assert probe["n_random"] >= 8 and probe["n_structured"] >= 8


def test_probe_cli_finds_the_trigger_token(token_models: object, tmp_path: Path) -> None:
    """The probe tries the ids the graph compares its input with first, so a trigger
    token among 30,522 is found within the budget, not by luck of the sweep."""
    tm = token_models
    direction = np.random.default_rng(5).standard_normal(tm.hidden)  # type: ignore[attr-defined]
    bad, _ = bd.token_shift(
        tm.clean,
        input_name="input_ids",  # type: ignore[attr-defined]
        residual=tm.residual,  # type: ignore[attr-defined]
        token=7592,
        direction=direction / np.linalg.norm(direction),
        whole_sequence=False,
    )
    bad_path = tmp_path / "token-bad.onnx"
    onnx.save(bad, bad_path)
    # a short budget: the token sweep would otherwise use all of it
    code, report = _probe_diff(
        tm.paths["clean"],
        bad_path,
        tmp_path / "t.json",  # type: ignore[attr-defined]
        budget=3,
    )
    assert code == 1
    probe = report["evidence"]["graph"]["probe"]
    assert probe["verdict"] == "trigger" and probe["budget_s"] == 3
    out = probe["outputs"][0]
    assert out["worst_probe"].startswith("input_ids:token ")
    assert out["random_max"] == 0.0 and out["n_structured_diverged"] >= 1
