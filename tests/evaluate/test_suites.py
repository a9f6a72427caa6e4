"""The evaluation suites beyond the catalogue: generic tamper, sweeps, combinations and
adaptive attacks, on real fixture models.

These tests check the protocol (what is planted, what is counted, the intervals) and that
an adaptive attack's success is measured on the model's real output, never a detector:
nothing here asserts what the gate should say.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS, SILERO_ST
from scanner.cli.main import main
from scanner.evaluate import adaptive, evaluate, render_table, to_json
from scanner.evaluate.protocol import SUITES, gate_case
from scanner.evaluate.render import minimal_detectable
from scanner.evaluate.stats import fmt_rate, wilson
from scanner.redteam.io import ModelCopy
from scanner.redteam.tamper import SHAPES, region_mask, spread, tamper

pytestmark = pytest.mark.long_file(19)


def test_wilson_interval() -> None:
    lo, hi = wilson(3, 3)
    assert lo == pytest.approx(0.4385, abs=1e-3) and hi == 1.0
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.192, abs=2e-3)
    assert fmt_rate(2, 3) == "67% [21-94] (2/3)"


@pytest.mark.parametrize("shape", SHAPES)
def test_tamper_moves_one_region_by_the_magnitude(shape: str) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 4, 3)).astype(np.float32)
    new, n = tamper(w, shape, 0.5, np.random.default_rng(1))
    moved = new != w
    expect = {"element": 1, "row": 12, "column": 16, "block": 64, "channel": 48, "scattered": 2}
    assert n == int(moved.sum()) == expect[shape]
    assert np.allclose(np.abs(new - w)[moved], 0.5 * spread(w), rtol=1e-4)
    mask = region_mask(shape, w.shape, np.random.default_rng(1))
    assert np.array_equal(mask, moved)


def test_tamper_suite_gives_a_minimal_detectable_change_per_kind() -> None:
    ev = evaluate(
        real_model(SILERO_ST),
        suites=["tamper"],
        shapes=["element", "block"],
        magnitudes=[1e-6, 1.0],
        seeds=1,
        pack="default",
    )
    kinds = {dict(c.params)["kind"] for c in ev.cases}
    assert kinds == {"conv kernel", "matrix", "vector"}
    assert len(ev.cases) == 2 * 3 * 2
    mdc = minimal_detectable(ev)
    assert set(mdc) == {(k, s) for k in kinds for s in ("element", "block")}
    for (kind, shape), value in mdc.items():
        rows = sorted(
            (c for c in ev.cases if dict(c.params)["kind"] == kind and c.entry.endswith(shape)),
            key=lambda c: c.strength,
        )
        if all(c.detected for c in rows):
            assert value == "1e-06"
        elif rows[-1].detected:
            assert value == "1"
        else:
            assert value == "> 1"
    assert "Minimal detectable change" in render_table(ev)


def test_sweeps_and_combinations_report_rates_with_intervals() -> None:
    ev = evaluate(
        real_model(SILERO_ST),
        names=["rank1"],
        suites=["sweep", "combination"],
        sweeps={"rank1": [{"tensors": "2"}, {"strength": "0.05"}]},
        twins=["finetune"],
        seeds=2,
        pack="default",
    )
    sweep = ev.summaries("sweep")
    assert {(s.params, s.strength) for s in sweep} == {
        ((("tensors", "2"),), 0.01),
        ((), 0.05),
    }
    combos = ev.summaries("combination")
    assert {(s.twin, s.order) for s in combos} == {
        ("finetune", "attack>twin"),
        ("finetune", "twin>attack"),
    }
    for s in [*sweep, *combos]:
        assert s.n == 2
        assert (s.ci_low, s.ci_high) == wilson(s.detected, 2)
        assert s.ci_low <= s.detection_rate <= s.ci_high
    # The sweep's tensors=2 copy changed two matrices, the combination changed many.
    two = [c for c in ev.cases if c.suite == "sweep" and c.params == (("tensors", "2"),)]
    assert all(c.changed == 2 for c in two)
    assert all(c.changed == 1 for c in ev.cases if c.suite == "combination")
    text = render_table(ev, markdown=True)
    assert "attack>twin" in text and "twin>attack" in text
    assert re.search(r"\d+% \[\d+-\d+\] \([012]/2\)", text)
    data = json.loads(to_json(ev))
    assert {"sweep", "combination"} <= set(data["totals"])


def _predict(path: Path, x: np.ndarray) -> np.ndarray:
    """The test's own onnxruntime run: class index per input."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return np.asarray(out).argmax(axis=1)


def test_adaptive_backdoor_success_is_measured_on_the_model_output(tmp_path: Path) -> None:
    """The trigger really fires: run the written copy under onnxruntime and check the
    triggered inputs go to the target class while clean ones keep their class; an edit
    below the smallest that works does not fire, and the recorded success agrees (a
    much larger edit fires too but moves clean predictions, which success counts)."""
    src = real_model(RAPIDOCR_CLS)
    x = (np.random.default_rng(123).standard_normal((48, 3, 48, 192)) * 0.5).astype(np.float32)
    fired = {}
    with ModelCopy(src) as copy:
        for scale in (0.25, 1.1):
            edit = adaptive._backdoor(copy, scale, seed=0)
            target = edit.target
            out = tmp_path / f"bd-{scale}.onnx"
            copy.save(out, {k: copy.weight(k) + v for k, v in edit.deltas.items()}, None)
            triggered = _predict(out, adaptive.add_trigger(x))
            fired[scale] = float(np.mean(triggered == target))
            kept = float(np.mean(_predict(out, x) == _predict(src, x)))
            assert float(np.mean(_predict(src, adaptive.add_trigger(x)) == target)) < 0.2
            recorded = edit.success(out, src)
            if scale == 1.1:
                assert fired[scale] >= 0.9 and kept >= 0.85, (fired, kept)
                assert recorded >= 0.9
            else:
                assert fired[scale] < 0.5 and recorded < 0.5
    cases, skipped = adaptive.run(
        src,
        gate_case("default"),
        seeds=1,
        quick=True,
        workdir=tmp_path,
        progress=lambda _l: None,
        covers=("none",),
        attacks=("backdoor",),
    )
    assert not skipped
    by = {(dict(c.params)["cover"], c.strength): c.success for c in cases}
    assert set(by) == {("none", s) for s in adaptive.QUICK_SCALES}
    assert by[("none", 1.1)] >= 0.9 and by[("none", 0.5)] < 0.5


def test_cli_suite_and_suites_agree(tmp_path: Path) -> None:
    from scanner.cli.evaluate import SUITES as CLI_SUITES

    assert CLI_SUITES == SUITES
    out = tmp_path / "ev.json"
    code = main(
        [
            "evaluate",
            str(real_model(SILERO_ST)),
            "--suite",
            "sweep",
            "--attacks",
            "exponent-flip",
            "--seeds",
            "1",
            "--format",
            "json",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert [c["suite"] for c in data["cases"]] == ["sweep"]
    assert data["cases"][0]["strength"] == 30.0
