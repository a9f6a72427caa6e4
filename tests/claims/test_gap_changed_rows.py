"""In a diff, the quantization-gap check looks at the rows that changed, with their
own indices."""

from __future__ import annotations

from pathlib import Path

from safetensors.numpy import load_file, save_file

from fixtures import real_model
from fixtures.real_models import MINILM
from scanner.api import diff_artifacts
from tests.claims.tampering import press_to_walls

NAME = "encoder.layer.2.intermediate.dense.weight"  # (1536, 384)


def test_box_projected_rows_are_flagged_at_their_own_indices(tmp_path: Path) -> None:
    minilm = real_model(MINILM)
    weights = load_file(str(minilm))
    w = weights[NAME].copy()
    rows = list(range(300, 428))
    w[rows] = press_to_walls(w[rows], "int8-per-channel", margin=0.05, seed=3)
    save_file({**weights, NAME: w}, str(tmp_path / "deployed.safetensors"))
    result = diff_artifacts(minilm, tmp_path / "deployed.safetensors")
    gap = [f for f in result.findings if f.rule_id == "MS409"]
    assert gap, [f.rule_id for f in result.findings]
    flagged = set(gap[0].evidence["rows"])
    assert flagged and flagged <= set(rows)
    assert gap[0].locations[0].tensor == NAME
