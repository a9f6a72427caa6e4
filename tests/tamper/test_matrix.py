"""A representative slice of the tamper matrix (tests/tamper/matrix.py), run through the
CLI on four real models: every shape, storage and host at least once, at the stated
bound (``BOUND``: 8x the storage's rounding bound alone / after a cast, one code step in
quantized codes, 0.5x median |w| under a fine-tune or LoRA merge), two seeds per cell;
plus the benign twins, which must not alarm. The full matrix, every magnitude and more
seeds, is ``benchmarks/bench_tamper_matrix.py`` (table in docs/analysis.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tamper.matrix import BOUND, CODE_STORAGES, Cell, at_bound, benign_twin, trial
from tests.tamper.subjects import Subject, load_subject

pytestmark = pytest.mark.long_file(35)

SEEDS = (0, 1)


def _cell(spec: str) -> Cell:
    """``model/storage/host/shape[/magnitude]``; the magnitude defaults to the bound."""
    model, storage, host, shape, *mag = spec.split("/")
    magnitude = mag[0] if mag else "1" if storage in CODE_STORAGES else BOUND[host]
    return Cell(model, storage, host, shape, magnitude)


CELLS = [
    # alone: any change beyond storage rounding
    "encoder/F32/alone/element",
    "encoder/F16/alone/row",
    "encoder/BF16/alone/column",
    # a column edit confined beside nothing else: located by column, not by all its rows
    "encoder/BF16/alone/column/0.1med",
    # int8 codes next to int8 codes: codes are never storage noise, one step is an edit
    "encoder/int8/alone/block16",
    "encoder/int8/alone/row",
    "cnn/F32/alone/channel",
    "lstm/F32/alone/elements3",
    "gguf/F32/alone/scattered",
    "gguf/Q6_K/alone/element",
    # after a cast
    "encoder/F16/cast/elements3",
    "encoder/F16/cast/column",
    # in quantized codes
    "encoder/int8/quantized/row",
    "gguf/Q8_0/quantized/block16",
    "gguf/Q8_0/quantized/column",
    "gguf/Q4_K/quantized/row",
    "gguf/Q6_K/quantized/scattered",
    # under a fine-tune
    "cnn/F32/finetune/element",
    "lstm/F32/finetune/row",
    "encoder/F32/finetune/block16",
    # a block in a small conv: few tiles, whose 99th percentile would be the block itself
    "cnn/F32/finetune/block16",
    # under a LoRA merge
    "encoder/F32/lora/elements3",
    "encoder/F32/lora/column",
    "gguf/F32/lora/block16",
]

TWINS = [
    "cnn/finetune:1e-05",
    "cnn/finetune:0.001",
    "lstm/finetune:0.0001",
    "cnn/prune:0.5",
    "encoder/lora:0.05",
    "encoder/cast:BF16",
    "encoder/int8",
    "gguf/gguf:Q8_0",
    "gguf/gguf:Q4_K",
    "gguf/gguf:Q6_K",
    # SmolLM2's F32 base is dequantized Q4_1: its weights sit at arithmetic positions on
    # other grids, which a fine-tune or LoRA merge smears but keeps
    "gguf/finetune:0.0001",
    "gguf/lora:0.01",
    "encoder/prune:0.5",
]


class Subjects:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded: dict[str, Subject] = {}

    def __getitem__(self, key: str) -> Subject:
        if key not in self._loaded:
            self._loaded[key] = load_subject(key, self.folder / key)
        return self._loaded[key]


@pytest.fixture(scope="module")
def subjects(tmp_path_factory: pytest.TempPathFactory) -> Subjects:
    return Subjects(tmp_path_factory.mktemp("matrix"))


def test_the_slice_covers_every_shape_storage_and_host() -> None:
    from tests.tamper.matrix import HOSTS, STORAGES
    from tests.tamper.regions import REGIONS
    from tests.tamper.subjects import SUBJECTS

    cells = [_cell(s) for s in CELLS]
    assert {c.shape for c in cells} == set(REGIONS)
    assert {c.storage for c in cells} == set(STORAGES)
    assert {c.host for c in cells} == set(HOSTS)
    assert {c.model for c in cells} == set(SUBJECTS)
    assert all(at_bound(c) for c in cells)


@pytest.mark.parametrize("spec", CELLS)
def test_tamper_at_the_bound_fails_and_is_localized(
    spec: str, subjects: Subjects, tmp_path
) -> None:
    cell = _cell(spec)
    subject = subjects[cell.model]
    missed = []
    for seed in SEEDS:
        t = trial(subject, cell, seed, tmp_path)
        if not t.detected:
            where = f"rows {t.rows}" if t.rows else f"cols {t.cols}" if t.cols else ""
            missed.append(f"seed {seed} {t.tensor} {where}: {t.reason}; {t.verdict.summary()}")
    assert not missed, f"{cell.label}: " + "\n".join(missed)


@pytest.mark.parametrize("spec", TWINS)
def test_benign_twin_passes_with_its_claim_and_never_alarms(
    spec: str, subjects: Subjects, tmp_path
) -> None:
    model, _, name = spec.partition("/")
    twin = benign_twin(subjects[model], name, tmp_path)
    assert twin.verdict.code == 0, f"{spec} {' '.join(twin.args)}: {twin.verdict.summary()}"
    assert not twin.bare.attacks(), f"{spec} without a claim: {twin.bare.summary()}"


def test_a_trial_can_fail(subjects: Subjects, tmp_path) -> None:
    """The detection criterion is not vacuous: a tamper under a fine-tune far below the
    fine-tune's own movement (8 ulps) is not reported, and the trial says so."""
    t = trial(subjects["cnn"], Cell("cnn", "F32", "finetune", "element", "8u"), 0, tmp_path)
    assert not t.detected
