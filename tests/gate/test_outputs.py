"""SARIF against the official 2.1.0 schema, JSON against report v1, HTML in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from scanner.policy import apply_pack, load_pack
from scanner.report import OutputFormat, render
from scanner.report.model import REPORT_SCHEMA
from tests.gate.builders import changed_finding, pair_report, tensor

DATA = Path(__file__).parent / "data"
SCHEMA_V1 = Path(__file__).resolve().parents[2] / "scanner/report/schema/report-v1.schema.json"


def _judged():
    pack = load_pack("default")
    from dataclasses import replace

    from scanner.policy import Suppression

    pack = replace(pack, suppressions=(Suppression("MS208", "metadata bump, SEC-1"),))
    report = pair_report(
        [
            tensor(
                f"encoder.layer.{i}.weight",
                "full fine-tune",
                rel=10 ** -(i + 1),
                rows=tuple(range(i, 8, 2)),
            )
            for i in range(4)
        ],
        [
            changed_finding("encoder.layer.0.weight"),
            changed_finding("encoder.layer.1.weight", "MS208", title="x"),
        ],
    )
    return apply_pack(report, pack)


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_every_format_renders(fmt: OutputFormat) -> None:
    assert render(_judged(), fmt)


def test_sarif_validates_against_the_official_schema() -> None:
    schema = json.loads((DATA / "sarif-schema-2.1.0.json").read_text())
    assert schema["id"].endswith("/sarif-schema-2.1.0.json")
    doc = json.loads(render(_judged(), OutputFormat.SARIF))
    jsonschema.validate(doc, schema, cls=jsonschema.Draft4Validator)
    run = doc["runs"][0]
    assert run["properties"]["rules_pack"] == "default"
    suppressed = [r for r in run["results"] if r.get("suppressions")]
    assert suppressed[0]["suppressions"][0]["justification"] == "metadata bump, SEC-1"
    for rule in run["tool"]["driver"]["rules"]:
        assert rule["help"]["text"] and float(rule["properties"]["security-severity"]) >= 0
    for result in run["results"]:
        assert result["partialFingerprints"]["modelsealFinding/v1"]
        uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert not uri.startswith("/")  # repository-relative
    again = json.loads(render(_judged(), OutputFormat.SARIF))
    assert [r["partialFingerprints"] for r in again["runs"][0]["results"]] == [
        r["partialFingerprints"] for r in run["results"]
    ]


def test_sarif_with_a_broken_result_fails_the_schema() -> None:
    schema = json.loads((DATA / "sarif-schema-2.1.0.json").read_text())
    doc = json.loads(render(_judged(), OutputFormat.SARIF))
    doc["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema, cls=jsonschema.Draft4Validator)


def test_json_report_has_rules_pack_and_validates() -> None:
    doc = json.loads(render(_judged(), OutputFormat.JSON))
    assert doc["schema"] == REPORT_SCHEMA and doc["rules_pack"] == "default"
    assert doc["suppressed"][0]["suppression"]["reason"] == "metadata bump, SEC-1"
    jsonschema.validate(doc, json.loads(SCHEMA_V1.read_text()))


def test_text_report_lists_pack_and_suppressions() -> None:
    text = render(_judged(), OutputFormat.TEXT)
    assert "rules pack: default" in text and "reason: metadata bump, SEC-1" in text


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is required for the HTML report test (apt-get install chromium)")
    return exe


def test_html_is_self_contained_and_renders_in_chromium(tmp_path: Path) -> None:
    report = _judged()
    page = render(report, OutputFormat.HTML)
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert 'id="heatmap-svg"' in page and page.count('class="cell"') == 4 * 32
    assert "full fine-tune" in page and "metadata bump, SEC-1" in page
    html_path = tmp_path / "report.html"
    html_path.write_text(page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    # a page with a real script error is caught by the same check
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefined_fn()</script></body></html>")
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={tmp_path / 'bad.png'}",
            bad.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert any("CONSOLE" in line and "undefined_fn" in line for line in proc.stderr.splitlines())
