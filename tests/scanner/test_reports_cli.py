"""Report formats, the JSON schema, SARIF shape, exit codes, the demo and --help."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from scanner.cli.main import build_parser
from scanner.findings import Finding, Location, Severity
from scanner.report import OutputFormat, Report, render

SCHEMA = json.loads(
    (resources.files("scanner") / "report" / "schema" / "report-v1.schema.json").read_text()
)
TARGET = "encoder.layer.3.output.dense.weight"


@pytest.fixture(scope="module")
def pair(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    weights = load_file(str(minilm))
    tampered = dict(weights)
    w = weights[TARGET].copy()
    w[100:164, 200:264] += 0.01
    tampered[TARGET] = w
    save_file(tampered, str(folder / "tampered.safetensors"))
    save_file(
        {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()},
        str(folder / "fp16.safetensors"),
    )
    return minilm, folder / "tampered.safetensors", folder / "fp16.safetensors"


def test_json_report_validates_against_schema(pair, run_cli) -> None:
    trusted, tampered, fp16 = pair
    reports = {}
    for deployed, verdict, code in ((tampered, "fail", 1), (fp16, "pass", 0)):
        result = run_cli("diff", trusted, deployed, "--format", "json")
        assert result.code == code
        data = reports[verdict] = result.json()
        jsonschema.validate(data, SCHEMA)
        assert data["schema"] == "modelseal/report/v1"
        assert data["verdict"] == verdict
        assert len(data["tensors"]) == 104
    data = reports["fail"]
    entry = next(t for t in data["tensors"] if t["name"] == TARGET)
    assert entry["stats"]["n_changed"] == 4096
    assert entry["where"]["block"] == [[100, 164], [200, 264]]
    located = [
        loc
        for f in data["findings"]
        for loc in f["locations"]
        if loc.get("tensor") == TARGET and loc.get("artifact") == "deployed"
    ]
    assert located and located[0]["file"] == "tampered.safetensors"


def test_scan_json_report_validates(silero_safetensors: Path, run_cli) -> None:
    result = run_cli("scan", silero_safetensors, "--format", "json")
    assert result.code == 0
    data = result.json()
    jsonschema.validate(data, SCHEMA)
    assert data["command"] == "scan" and data["verdict"] == "pass"


def test_sarif_shape_and_relative_uris(pair, run_cli, monkeypatch) -> None:
    trusted, tampered, _ = pair
    monkeypatch.chdir(tampered.parent)
    result = run_cli("diff", trusted, tampered, "--format", "sarif")
    assert result.code == 1
    sarif = json.loads(result.out)
    assert sarif["version"] == "2.1.0"
    assert sarif["$schema"].endswith("sarif-2.1.0.json")
    (run,) = sarif["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "modelseal"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert run["invocations"][0]["executionSuccessful"] is True
    for rule in driver["rules"]:
        assert rule["help"]["text"] and float(rule["properties"]["security-severity"]) >= 0
    results = run["results"]
    assert results
    for res in results:
        assert res["ruleId"] in rule_ids and rule_ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note")
        assert res["partialFingerprints"]
        for loc in res["locations"]:
            uri = loc["physicalLocation"]["artifactLocation"]["uri"]
            assert not uri.startswith("/") and "://" not in uri
    hit = next(
        r
        for r in results
        if any(
            ll.get("name") == TARGET
            for loc in r["locations"]
            for ll in loc.get("logicalLocations", [])
        )
    )
    assert (
        hit["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "tampered.safetensors"
    )


def test_error_reports_fail_closed(tmp_path: Path, run_cli) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{}")
    result = run_cli("scan", bad, "--format", "sarif")
    assert result.code == 2
    sarif = json.loads(result.out)
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is False
    result = run_cli("diff", bad, bad, "--format", "json")
    assert result.code == 2
    data = result.json()
    jsonschema.validate(data, SCHEMA)
    assert data["verdict"] == "error" and "bad.safetensors" in data["error"]


def test_text_report_fixed_width() -> None:
    report = Report(
        command="scan",
        artifacts=(),
        findings=(
            Finding(
                "MS101",
                Severity.MEDIUM,
                "NaN values",
                "w: 3 non-finite values",
                (Location(tensor="w"),),
            ),
        ),
    )
    text = render(report, OutputFormat.TEXT, width=80)
    assert "verdict: FAIL" in text
    assert "MEDIUM" in text and "MS101" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "\x1b[" not in text
    assert "\x1b[" in render(report, OutputFormat.TEXT, color=True, width=80)


def test_every_output_format_is_handled() -> None:
    report = Report(command="scan", artifacts=(), findings=())
    for fmt in OutputFormat:
        assert render(report, fmt)


def test_output_file_and_fail_on(pair, silero_safetensors: Path, tmp_path: Path, run_cli) -> None:
    trusted, tampered, fp16 = pair
    out = tmp_path / "r" / "report.json"
    # The report's folder must exist: refused before the diff runs, nothing created.
    missing = run_cli("diff", trusted, tampered, "--format", "json", "-o", out)
    assert missing.code == 2 and "folder" in missing.err and not out.parent.exists()
    out.parent.mkdir()
    result = run_cli("diff", trusted, tampered, "--format", "json", "-o", out)
    assert result.code == 1 and result.out == ""
    assert json.loads(out.read_text())["verdict"] == "fail"
    # The tampered diff's findings are high: --fail-on critical lets it pass.
    assert run_cli("diff", trusted, tampered, "--fail-on", "critical", "-q").code == 0
    # A cast carries an info finding: --fail-on info makes it fail (a small real model:
    # the MiniLM cast is diffed by the schema test above).
    small = tmp_path / "silero-fp16.safetensors"
    weights = load_file(str(silero_safetensors))
    save_file({k: v.astype(np.float16) for k, v in weights.items()}, str(small))
    assert run_cli("diff", silero_safetensors, small, "-q").code == 0
    assert run_cli("diff", silero_safetensors, small, "--fail-on", "info", "-q").code == 1
    assert run_cli("diff", trusted, fp16, "--fail-on", "bogus").code == 2


def test_text_diff_output(pair, run_cli) -> None:
    trusted, tampered, _ = pair
    result = run_cli("diff", trusted, tampered)
    assert result.code == 1
    assert "verdict: FAIL" in result.out
    assert TARGET in result.out
    assert "block rows 100:164 x" in result.out


def test_usage_errors_exit_2(run_cli) -> None:
    assert run_cli().code == 2
    assert run_cli("diff", "only-one").code == 2
    assert run_cli("frobnicate").code == 2


def test_help_for_every_subcommand(run_cli) -> None:
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"demo", "scan", "diff", "manifest", "rules"} <= set(subcommands)
    for name in subcommands:
        result = run_cli(name, "--help")
        assert result.code == 0 and "usage: modelseal" in result.out
        assert len(result.out.splitlines()) >= 4


def test_demo(run_cli, tmp_path: Path) -> None:
    result = run_cli("demo", "--keep", tmp_path)
    assert result.code == 0, result.out + result.err
    assert "tampered copy FAILS, benign cast PASSES" in result.out
    assert {p.name for p in tmp_path.iterdir()} == {
        "trusted.safetensors",
        "tampered.safetensors",
        "benign-fp16.safetensors",
    }
    data = run_cli("demo", "--format", "json").out
    reports = [json.loads(chunk) for chunk in data.replace("}\n{", "}\n\x00{").split("\x00")]
    assert [r["verdict"] for r in reports] == ["fail", "pass"]


def test_demo_works_offline_from_the_installed_package() -> None:
    from scanner.demo import demo_model_path

    path = demo_model_path()
    assert path.is_file() and path.stat().st_size == 1239748
    assert os.access(path, os.R_OK)
