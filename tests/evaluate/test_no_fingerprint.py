"""The planted copy carries no fingerprint: its metadata changes no verdict under any pack.

A metadata marker in the copy would be a change of its own (MS208): the strict pack fails
any metadata change, so benign twins failed and attacks were "detected" by the marker
alone. The copies the evaluation gates must differ from the source only where the planter
changed values.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS, SILERO_ST, SMOLLM_Q4_1
from scanner.evaluate import evaluate
from scanner.gate import GateRequest, run_gate
from scanner.policy import load_pack
from scanner.redteam.io import ModelCopy, read_marker

pytestmark = pytest.mark.long_file(14)

PACKS = ("default", "strict", "audit")


def _gate(trusted: Path, deployed: Path, pack: str) -> tuple[str, set[str]]:
    report = run_gate(GateRequest(deployed=deployed, pack=load_pack(pack), trusted=trusted))
    return report.verdict, {f.rule_id for f in report.findings}


@pytest.mark.parametrize("key", [SILERO_ST, RAPIDOCR_CLS, SMOLLM_Q4_1])
def test_an_unchanged_copy_gates_like_the_source(key: str, tmp_path: Path) -> None:
    """A copy written by the planting writer with nothing changed: every pack gives the
    verdict of the source against itself, and no metadata finding; the marked copy shows
    the check can fail (strict fails it on MS208 alone)."""
    src = real_model(key)
    plain, marked = tmp_path / f"plain{src.suffix}", tmp_path / f"marked{src.suffix}"
    with ModelCopy(src) as copy:
        copy.save(plain, {}, None)
        copy.save(marked, {}, {"produced_by": "modelseal redteam", "name": "none"})
    assert read_marker(plain) is None and read_marker(marked) is not None
    # A GGUF LLM gates in seconds: only the pack that fails on metadata runs there.
    for pack in ("strict",) if key == SMOLLM_Q4_1 else PACKS:
        self_verdict, _ = _gate(src, src, pack)
        verdict, rules = _gate(src, plain, pack)
        assert verdict == self_verdict, (pack, rules)
        assert "MS208" not in rules, pack
    verdict, rules = _gate(src, marked, "strict")
    assert "MS208" in rules and verdict == "fail", "the marker is a metadata change"


@pytest.mark.parametrize("pack", PACKS)
def test_marker_changes_no_verdict_of_the_evaluation(pack: str) -> None:
    """Twins and an attack evaluated under each pack: no case fails on MS208, and the
    copies the evaluation writes carry the source's metadata exactly. (What the gate
    should say about the planted changes is not asserted here: a test must not judge a
    detector on the planter's own output.)"""
    seen: list[dict] = []

    def spy(trusted: Path, deployed: Path, truth) -> None:
        from scanner.formats import open_artifact

        with open_artifact(trusted) as a, open_artifact(deployed) as b:
            seen.append({"same": a.metadata.get("safetensors") == b.metadata.get("safetensors")})

    ev = evaluate(
        real_model(SILERO_ST),
        names=["cast-fp16", "prune-2:4", "rename", "rank1"],
        seeds=1,
        strengths={"rank1": [0.01]},
        pack=pack,
        inspect=spy,
    )
    assert {c.entry for c in ev.cases} == {"cast-fp16", "prune-2:4", "rename", "rank1"}
    assert len(seen) == len(ev.cases) and all(s["same"] for s in seen)
    for c in ev.cases:
        assert "MS208" not in c.rules, c
    if pack == "audit":
        assert not any(c.detected for c in ev.cases)  # audit fails nothing
