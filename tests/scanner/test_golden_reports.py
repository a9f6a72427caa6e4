"""The demo pair's text, JSON and SARIF reports, byte for byte against golden files.

A change to what a report says or how it is laid out shows up here as a diff a reviewer
reads. After an intended change, regenerate the files and review them:
``MODELSEAL_UPDATE_GOLDEN=1 python -m pytest tests/scanner/test_golden_reports.py``.
Run times and the temporary folder are normalized, and long floats are compared to six
significant digits (the last bits of a numpy reduction depend on the CPU's vector width);
everything else is compared.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MODELSEAL_UPDATE_GOLDEN") == "1"


def _normalized(text: str, folder: Path) -> str:
    text = text.replace(str(folder), "<demo>")
    text = re.sub(r'"seconds": [0-9.e+-]+', '"seconds": 0', text)
    text = re.sub(r"\bin [0-9.]+ s\b", "in 0 s", text)
    return re.sub(r"\d+\.\d{7,}(?:e[+-]?\d+)?", lambda m: f"{float(m.group()):.6g}", text)


@pytest.mark.parametrize("fmt,suffix", [("text", "txt"), ("json", "json"), ("sarif", "sarif")])
def test_demo_report_matches_golden_file(
    fmt: str, suffix: str, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relative paths from the working folder: SARIF URIs are relative to it, and the text
    # report wraps the same way whatever the temporary folder's name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    out = tmp_path / f"report.{suffix}"
    res = run_cli("demo", "--keep", "demo", "--format", fmt, "-o", out)
    assert res.code == 0, res.err
    got = _normalized(out.read_text(encoding="utf-8"), tmp_path)
    golden = GOLDEN / f"demo.{suffix}"
    if UPDATE:
        golden.write_text(got, encoding="utf-8")
    assert golden.exists(), f"no golden file {golden}: run with MODELSEAL_UPDATE_GOLDEN=1"
    assert got == golden.read_text(encoding="utf-8"), (
        f"the {fmt} report of the demo pair changed; review it and run "
        "MODELSEAL_UPDATE_GOLDEN=1 python -m pytest tests/scanner/test_golden_reports.py"
    )
