"""OMS serialization matches model_signing's hashing byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from model_signing import hashing as ms_hashing
from model_signing._signing.signing import Payload

from signing.oms import ModelPathError, Resource, hash_model, normalize_ignore_paths


def _reference(path: Path, ignore: list[str]) -> dict:
    config = ms_hashing.Config().set_ignored_paths(paths=ignore, ignore_git_paths=True)
    manifest = config.hash(path)
    statement = Payload(manifest).statement.pb
    from google.protobuf import json_format

    return json_format.MessageToDict(statement)


def test_root_digest_names_and_order_match_model_signing(model_dir: Path) -> None:
    ref = _reference(model_dir, ["weights.bin"])
    ours = hash_model(model_dir, ignore_paths=["weights.bin"]).to_statement()
    assert ours["subject"] == ref["subject"]
    assert ours["predicate"]["resources"] == ref["predicate"]["resources"]
    assert set(ours["predicate"]["serialization"]["ignore_paths"]) == set(
        ref["predicate"]["serialization"]["ignore_paths"]
    )
    # path-component order: a/b before a-c (string order would say the opposite)
    assert [r["name"] for r in ours["predicate"]["resources"]] == ["a/b", "a-c"]


def test_single_file_model_is_named_dot(model_dir: Path) -> None:
    ref = _reference(model_dir / "weights.bin", [])
    ours = hash_model(model_dir / "weights.bin").to_statement()
    assert ours["predicate"]["resources"] == ref["predicate"]["resources"]
    assert ours["predicate"]["resources"][0]["name"] == "."
    assert ours["subject"] == ref["subject"]


def test_git_paths_ignored_unless_asked(model_dir: Path) -> None:
    assert ".gitattributes" not in hash_model(model_dir).digests()
    assert ".gitattributes" in hash_model(model_dir, ignore_git_paths=False).digests()


def test_symlink_refused_by_default(model_dir: Path) -> None:
    os.symlink(model_dir / "weights.bin", model_dir / "link.bin")
    with pytest.raises(ModelPathError, match="symbolic link"):
        hash_model(model_dir)
    assert "link.bin" in hash_model(model_dir, allow_symlinks=True).digests()


def test_ignore_paths_outside_model_are_dropped() -> None:
    assert normalize_ignore_paths(["../x", "/abs", "a/./b/", "c"]) == ("a/b", "c")


def test_resource_sort_key_uses_components() -> None:
    names = sorted(["a-c", "a/b", "a/b/c", "ab"], key=lambda n: Resource(n, "00").sort_key)
    assert names == ["a/b", "a/b/c", "a-c", "ab"]


def test_hashing_uses_both_workers_and_is_order_independent(model_dir: Path) -> None:
    one = hash_model(model_dir, workers=1)
    two = hash_model(model_dir, workers=2)
    assert one.root_digest == two.root_digest
