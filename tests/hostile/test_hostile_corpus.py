"""Every hostile corpus file meets its expected outcome: a finding (exit 1) or a one-line
refusal (exit 2); never a clean pass, never a traceback, never a payload run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile import make_corpus

CORPUS = make_corpus.CORPUS
EXPECTED: dict[str, dict] = json.loads((CORPUS / "expected.json").read_text())


@pytest.fixture(autouse=True)
def _no_marker():
    marker = Path(make_corpus.MARKER)
    if marker.exists():
        marker.unlink()
    yield
    assert not marker.exists(), "a corpus payload was executed"


def _check(result, expected: dict, path: Path) -> None:
    assert "Traceback" not in result.err
    assert result.code == expected["exit"], (result.code, result.err)
    if expected["exit"] == 1:
        rules = {f["rule_id"] for f in result.json()["findings"]}
        assert expected["rule"] in rules, rules
    else:
        lines = result.err.splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("modelseal: error: ")
        assert re.search(expected["error"], lines[0]), lines[0]


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_corpus_file(rel: str, run_cli) -> None:
    path = CORPUS / rel
    _check(run_cli("scan", "-f", "json", path), EXPECTED[rel], path)


def test_corpus_covers_every_format_and_class() -> None:
    by_format: dict[str, int] = {}
    for rel in EXPECTED:
        by_format[rel.split("/")[0]] = by_format.get(rel.split("/")[0], 0) + 1
    assert by_format["safetensors"] >= 10
    assert by_format["onnx"] >= 6
    assert by_format["gguf"] >= 9
    assert by_format["pytorch"] >= 30
    assert all(e["exit"] in (1, 2) for e in EXPECTED.values())


def test_committed_corpus_is_what_the_script_writes(tmp_path: Path) -> None:
    fresh = make_corpus.build(tmp_path)
    committed = {k: v for k, v in EXPECTED.items() if not k.startswith("crashes/")}
    assert fresh == committed
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (CORPUS / rel).read_bytes(), rel
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total < 2 << 20


def test_link_escapes_are_refused(tmp_path: Path, run_cli) -> None:
    cases = make_corpus.build_link_cases(tmp_path)
    assert len(cases) == 2
    for path, expected in cases.items():
        _check(run_cli("scan", "-f", "json", path), expected, path)


def test_malicious_zip_in_a_fresh_process_names_the_global(tmp_path: Path) -> None:
    """The real entry point, in its own process: exit 1, the global named, nothing run."""
    path = CORPUS / "pytorch" / "zip_reduce_os_system.pt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-m", "scanner", "scan", "-f", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    findings = json.loads(proc.stdout)["findings"]
    hit = [f for f in findings if f["rule_id"] == "MS701"]
    assert hit and hit[0]["evidence"]["global"] == "posix.system"
    assert hit[0]["evidence"]["invocations"][0]["how"] == "REDUCE"
    assert isinstance(hit[0]["locations"][0]["offset"], int)
    assert not Path(make_corpus.MARKER).exists()
