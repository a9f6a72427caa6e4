"""MS601: an artifact against its trusted manifest; every difference is named, nothing is
explained away (a re-serialized container with identical tensors still differs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from scanner.checks.manifest import check_manifest, compare_to_manifest, read_manifest
from scanner.formats import open_artifact
from scanner.manifest import build_manifest
from signing.errors import ManifestError
from tests.batch.conftest import DEMO


@pytest.fixture
def pinned(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(DEMO, model / "model.safetensors")
    (model / "config.json").write_text('{"a": 1}')
    manifest = tmp_path / "trusted.json"
    manifest.write_text(build_manifest(model).to_json())
    return model, manifest


def _findings(model: Path, manifest: Path, ignore: tuple[str, ...] = ()):
    with open_artifact(model) as artifact:
        return check_manifest(artifact, read_manifest(manifest), ignore=ignore)


def test_an_unchanged_model_matches(pinned: tuple[Path, Path]) -> None:
    assert _findings(*pinned) == ()


def test_one_element_changed_names_the_tensor_and_the_file(pinned: tuple[Path, Path]) -> None:
    model, manifest = pinned
    tensors = load_file(model / "model.safetensors")
    tensors["lstm_cell.weight_hh"][300, 77] = np.nextafter(
        tensors["lstm_cell.weight_hh"][300, 77], 1
    )
    save_file(tensors, model / "model.safetensors")
    (finding,) = _findings(model, manifest)
    assert finding.rule_id == "MS601" and str(finding.severity) == "critical"
    where = {(loc.file, loc.tensor) for loc in finding.locations}
    assert where == {("model.safetensors", None), (None, "lstm_cell.weight_hh")}
    assert "tensor 'lstm_cell.weight_hh' modified" in finding.message


def test_reserialized_container_with_identical_tensors_still_differs(
    pinned: tuple[Path, Path],
) -> None:
    model, manifest = pinned
    tensors = load_file(model / "model.safetensors")
    save_file(tensors, model / "model.safetensors", metadata={"note": "re-saved"})
    (finding,) = _findings(model, manifest)
    (difference,) = finding.evidence["differences"]
    assert difference.startswith("file 'model.safetensors' modified (trusted ")
    assert all(loc.tensor is None for loc in finding.locations)


def test_added_and_missing_files_and_ignored_evidence(pinned: tuple[Path, Path]) -> None:
    model, manifest = pinned
    (model / "config.json").unlink()
    (model / "extra.py").write_text("import os\n")
    (model / "modelseal.manifest.json").write_text(manifest.read_text())
    (finding,) = _findings(model, manifest, ignore=("modelseal.manifest.json",))
    assert sorted(finding.evidence["differences"]) == [
        "file 'config.json' missing (in the trusted manifest, not on disk)",
        "file 'extra.py' added (not in the trusted manifest)",
    ]


def test_full_digests_are_compared_not_the_shown_prefixes(pinned: tuple[Path, Path]) -> None:
    model, manifest = pinned
    data = json.loads(manifest.read_text())
    entry = data["tensors"][0]
    entry["digest"] = entry["digest"][:-4] + (
        "0000" if not entry["digest"].endswith("0000") else "1111"
    )
    data.pop("digest")
    from signing.manifest import Manifest

    edited = Manifest.from_dict(data)
    actual = build_manifest(model)
    differences = compare_to_manifest(edited, actual)
    assert [(d.what, d.name, d.change) for d in differences] == [
        ("tensor", entry["name"], "modified")
    ]
    assert differences[0].trusted == differences[0].actual  # the shown prefixes are equal


def test_an_edited_or_unreadable_manifest_cannot_be_used(
    pinned: tuple[Path, Path], tmp_path: Path
) -> None:
    _, manifest = pinned
    data = json.loads(manifest.read_text())
    data["files"][0]["sha256"] = "0" * 64
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"edited.json: .*the manifest was edited"):
        read_manifest(edited)
    with pytest.raises(ManifestError, match="cannot read trusted manifest"):
        read_manifest(tmp_path / "absent.json")
