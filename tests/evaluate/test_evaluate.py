"""The evaluation protocol on a small real model: scores agree with the diff case by case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import real_model
from fixtures.real_models import SILERO_ST
from scanner.cli.main import main
from scanner.evaluate import evaluate, plot_detection, render_table, to_json
from scanner.evaluate.protocol import gate_case, localized
from scanner.redteam import registry

pytestmark = pytest.mark.long_file(17)

NAMES = ["sra", "rank1", "exponent-flip", "quant-gap-int8", "cast-fp16", "prune-2:4", "lora-merge"]
STRENGTHS = {"rank1": [0.002, 0.05], "lora-merge": [0.01], "quant-gap-int8": [0.06]}


@pytest.fixture(scope="module")
def result():
    return evaluate(
        real_model(SILERO_ST), names=NAMES, seeds=2, strengths=STRENGTHS, pack="default"
    )


def test_every_case_is_scored(result) -> None:
    per_entry = {}
    for c in result.cases:
        per_entry.setdefault(c.entry, set()).add((c.strength, c.seed))
    assert per_entry["rank1"] == {(0.002, 0), (0.002, 1), (0.05, 0), (0.05, 1)}
    assert per_entry["sra"] == {(1.0, 0), (1.0, 1), (2.0, 0), (2.0, 1)}
    assert set(per_entry) == set(NAMES)
    totals = result.totals()
    assert totals["attack_cases"] + totals["benign_cases"] == len(result.cases)


def test_scores_match_the_diff_case_by_case(result, tmp_path: Path) -> None:
    """Re-plant each case with the same seed and strength, run the gate independently and
    compare verdict, detection and localization with the recorded case."""
    gate = gate_case("default")
    src = real_model(SILERO_ST)
    for c in result.cases:
        truth = registry.plant(
            src,
            c.entry,
            tmp_path / f"{c.entry}-{c.seed}.safetensors",
            seed=c.seed,
            strength=c.strength,
        )
        verdict, failing, _cls, _s = gate(src, Path(truth.output), truth)
        assert verdict == c.verdict, c
        assert (verdict in ("fail", "error")) == c.detected
        assert localized(failing, truth) == c.localized
        assert tuple(sorted({f.rule_id for f in failing})) == c.rules


def test_attacks_detected_and_localized_twins_pass(result) -> None:
    by = {(c.entry, c.strength, c.seed): c for c in result.cases}
    for key, c in by.items():
        if c.kind == "attack":
            assert c.detected and c.localized, key
        else:
            assert not c.detected, (key, c.rules)


def test_outputs(result, tmp_path: Path) -> None:
    text = render_table(result)
    assert "rank1" in text and "false alarms" in text
    md = render_table(result, markdown=True)
    assert "| kind | name | family | strength | flagged [95% CI] (k/n) |" in md
    data = json.loads(to_json(result))
    assert data["schema"] == "modelseal/evaluation/v2"
    assert len(data["cases"]) == len(result.cases)
    rates = {(s["entry"], s["strength"]): s["detection_rate"] for s in data["summaries"]}
    assert rates[("rank1", 0.05)] == 1.0 and rates[("cast-fp16", 1.0)] == 0.0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from scanner.errors import UsageError

        with pytest.raises(UsageError, match="plots"):
            plot_detection(result, tmp_path / "p.png")
    else:
        png = plot_detection(result, tmp_path / "p.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fail_on_without_pack_and_cli(tmp_path: Path, capsys) -> None:
    ev = evaluate(
        real_model(SILERO_ST),
        names=["exponent-flip", "rename"],
        seeds=1,
        strengths={"exponent-flip": [3.0]},
    )
    assert ev.gate == "fail-on medium"
    assert {c.entry: c.detected for c in ev.cases} == {"exponent-flip": True, "rename": False}
    out = tmp_path / "ev.json"
    assert (
        main(
            [
                "evaluate",
                str(real_model(SILERO_ST)),
                "--attacks",
                "rank1",
                "shadowlogic",
                "--seeds",
                "1",
                "--rules",
                "default",
                "--format",
                "json",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["not_applicable"]["shadowlogic"].startswith("applies to onnx")
    assert {c["entry"] for c in data["cases"]} == {"rank1"}
    assert data["gate"] == "rules pack default"
    assert capsys.readouterr().out == ""  # the record went to -o, not stdout
