"""The local process pool: verdicts equal the single commands', SARIF, resume, isolation
of hanging and crashing jobs, a killed batch, the folder convention, the missing extra."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from scanner.batch import LocalEngine, load_jobs, run_batch
from tests.batch.conftest import (
    REPO,
    Models,
    _edit,
    _scale_rows,
    check_isolation,
    cli,
    fault_jobs,
    job_specs,
    read_lines,
    reference_exit_code,
    write_jobs,
)

SARIF_SCHEMA = REPO / "tests" / "gate" / "data" / "sarif-schema-2.1.0.json"


def _jobs(models: Models) -> list[dict[str, Any]]:
    return [{"id": f"job-{i:02d}", **spec} for i, spec in enumerate(job_specs(models))]


@pytest.fixture(scope="module")
def first_run(models: Models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("local-run")
    specs = _jobs(models)
    jobs_file = write_jobs(root / "jobs.jsonl", specs)
    out, sarif = root / "results.jsonl", root / "results.sarif"
    summary = run_batch(load_jobs(jobs_file), LocalEngine(2), out, sarif=sarif, timeout=120)
    return {
        "root": root,
        "specs": specs,
        "jobs": jobs_file,
        "out": out,
        "sarif": sarif,
        "summary": summary,
    }


def test_local_pool_agrees_with_the_single_commands(first_run: dict[str, Any]) -> None:
    lines = read_lines(first_run["out"])
    specs = first_run["specs"]
    assert [x["id"] for x in lines] == [s["id"] for s in specs]  # compacted, in job order
    for spec, line in zip(specs, lines, strict=True):
        expected = reference_exit_code({k: v for k, v in spec.items() if k != "id"})
        assert line["exit_code"] == expected, (spec, line)
        assert line["verdict"] == {0: "pass", 1: "fail", 2: "error"}[expected]
        assert line["kind"] == spec["kind"] and line["inputs"]["deployed"] == spec["deployed"]
        assert line["schema"] == "modelseal/batch-result/v1" and not line["timed_out"]
        if expected == 2:
            assert line["error"] and line["findings"] is None
        else:
            assert line["error"] is None and line["digests"]["job"].startswith("sha256:")
            assert line["digests"]["deployed"].startswith("sha256:")
    by_deployed = {(Path(x["inputs"]["deployed"]).name, x["kind"]): x for x in lines}
    # The clear cases, whatever the detectors' details.
    assert by_deployed[("same.safetensors", "diff")]["verdict"] == "pass"
    assert by_deployed[("truncated.safetensors", "scan")]["exit_code"] == 2
    assert by_deployed[("pinned", "verify")]["verdict"] == "pass"
    tampered = by_deployed[("pinned-tampered", "verify")]
    assert tampered["findings"]["by_rule"] == {"MS601": 1}
    assert "conv2.weight" in tampered["findings"]["top"][0]["message"]
    assert by_deployed[("signed-tampered", "verify")]["findings"]["by_rule"] == {"MS802": 1}
    summary = first_run["summary"]
    assert summary.exit_code == 2 and summary.ran == len(specs) and summary.skipped == 0
    assert sum(summary.verdicts.values()) == len(specs)


def test_batch_sarif_is_one_valid_run_with_every_job(first_run: dict[str, Any]) -> None:
    doc = json.loads(first_run["sarif"].read_text())
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.validate(doc, schema, cls=jsonschema.Draft4Validator)
    (run,) = doc["runs"]
    lines = {x["id"]: x for x in read_lines(first_run["out"])}
    invocations = {i["properties"]["job"]: i for i in run["invocations"]}
    assert set(invocations) == set(lines)
    for job_id, line in lines.items():
        assert invocations[job_id]["executionSuccessful"] is (line["exit_code"] != 2)
        results = [r for r in run["results"] if r["properties"]["job"] == job_id]
        assert len(results) == (line["findings"] or {}).get("total", 0)
        assert all(r["message"]["text"].startswith(f"[{job_id}] ") for r in results)
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert {"MS601", "MS802"} <= set(rules)
    assert all(rules[r["ruleIndex"]] == r["ruleId"] for r in run["results"])
    prints = [r["partialFingerprints"]["modelsealFinding/v1"] for r in run["results"]]
    assert len(prints) == len(set(prints))


def test_rerun_skips_done_jobs_by_content_and_reruns_changed_and_failed_ones(
    first_run: dict[str, Any], models: Models, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    shutil.copy(first_run["out"], out)
    before = {x["id"]: x for x in read_lines(out)}
    errors = [i for i, x in before.items() if x["exit_code"] == 2]
    # Same inputs: every completed job is skipped; the ones that could not complete run again.
    summary = run_batch(load_jobs(first_run["jobs"]), LocalEngine(2), out)
    assert summary.skipped == len(before) - len(errors) and summary.ran == len(errors)
    after = {x["id"]: x for x in read_lines(out)}
    assert all(after[i] == before[i] for i in before if i not in errors)

    # Change one input's bytes in place (same path): only the jobs reading it run again.
    changed = tmp_path / "same.safetensors"
    shutil.copy(models.same, changed)
    specs = [dict(s) for s in first_run["specs"]]
    for spec in specs:
        if spec.get("deployed") == str(models.same):
            spec["deployed"] = str(changed)
    jobs_file = write_jobs(tmp_path / "jobs.jsonl", specs)
    run_batch(load_jobs(jobs_file), LocalEngine(2), out)  # new path: that job's spec changed
    _edit(models.same, changed, _scale_rows)
    summary = run_batch(load_jobs(jobs_file), LocalEngine(2), out)
    assert summary.ran == len(errors) + 1
    final = {x["id"]: x for x in read_lines(out)}
    moved = next(s["id"] for s in specs if s.get("deployed") == str(changed))
    assert before[moved]["verdict"] == "pass" and final[moved]["verdict"] == "fail"
    assert final[moved]["digests"]["deployed"] != before[moved]["digests"]["deployed"]
    assert len(read_lines(out)) == len(specs)


def test_hanging_crashing_and_broken_jobs_cost_only_themselves(
    models: Models, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    engine = LocalEngine(2, runner="tests.batch.faults:run_task")
    jobs = load_jobs(write_jobs(tmp_path / "j.jsonl", fault_jobs(models)))
    summary = run_batch(jobs, engine, out, timeout=4)
    check_isolation({x["id"]: x for x in read_lines(out)}, 4, "killed by SIGKILL")
    assert summary.exit_code == 2 and summary.timed_out == 1
    assert multiprocessing.active_children() == []


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_batch_leaves_no_worker_and_resumes(models: Models, tmp_path: Path) -> None:
    specs = [{"id": f"j{i:02d}", **spec} for i, spec in enumerate(job_specs(models) * 2)]
    jobs_file = write_jobs(tmp_path / "jobs.jsonl", specs)
    out = tmp_path / "results.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "scanner",
        "batch",
        str(jobs_file),
        "-o",
        str(out),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(read_lines(out)) < 4):
        assert proc.poll() is None, "the batch finished before it could be killed"
        time.sleep(0.05)
    workers = _children(proc.pid)
    proc.kill()
    proc.wait()
    assert workers, "the batch ran no worker process"
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "a worker outlived the killed batch"

    done = read_lines(out)
    assert 4 <= len(done) < len(specs)
    with out.open("a") as handle:  # as if the kill had landed mid-write
        handle.write('{"schema":"modelseal/batch-result/v1","id":"j')
    assert cli("batch", jobs_file, "-o", out, "--workers", "2", "-q") == 2
    final = read_lines(out)
    assert [x["id"] for x in final] == [s["id"] for s in specs]
    kept = {x["id"]: x for x in done if x["exit_code"] != 2}
    assert all(next(f for f in final if f["id"] == i) == x for i, x in kept.items())
    for spec, line in zip(specs, final, strict=True):
        assert line["exit_code"] == reference_exit_code(
            {k: v for k, v in spec.items() if k != "id"}
        )


def test_folder_of_models_on_the_command_line(models: Models, tmp_path: Path, run_cli) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    for folder in (models.signed, models.signed_tampered, models.pinned, models.pinned_tampered):
        shutil.copytree(folder, fleet / folder.name)
    shutil.copy(
        models.pinned / "modelseal.manifest.json", fleet / "signed" / "modelseal.manifest.json"
    )
    out = tmp_path / "fleet.jsonl"
    result = run_cli("batch", fleet, "--public-key", models.public_key, "-o", out, "--workers", "2")
    assert result.code == 1, result.err
    assert "batch: 4 jobs: 2 pass, 2 fail, 0 error; 4 ran, 0 already done" in result.out
    lines = {x["id"]: x for x in read_lines(out)}
    assert {i: x["verdict"] for i, x in lines.items()} == {
        "pinned": "pass",
        "pinned-tampered": "fail",
        "signed": "pass",  # signature and manifest both checked, neither file part of the model
        "signed-tampered": "fail",
    }
    assert lines["signed"]["inputs"]["manifest"].endswith("signed/modelseal.manifest.json")
    assert lines["signed-tampered"]["findings"]["by_rule"] == {"MS802": 1}


def test_engine_ray_without_ray_names_the_extra(
    models: Models, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    jobs = write_jobs(
        tmp_path / "j.jsonl", [{"id": "a", "kind": "scan", "deployed": str(models.trusted)}]
    )
    result = run_cli("batch", jobs, "-o", tmp_path / "out.jsonl", "--engine", "ray")
    assert result.code == 2
    assert "pip install 'modelseal[ray]'" in result.err and result.err.count("\n") == 1


def test_usage_errors_exit_2_before_anything_runs(models: Models, tmp_path: Path, run_cli) -> None:
    jobs = write_jobs(
        tmp_path / "j.jsonl", [{"id": "a", "kind": "scan", "deployed": str(models.trusted)}]
    )
    out = tmp_path / "out.jsonl"
    assert run_cli("batch", jobs, "-o", out, "--timeout", "0").code == 2
    assert run_cli("batch", jobs, "-o", out, "--engine", "local", "--address", "auto").code == 2
    bad = write_jobs(
        tmp_path / "bad.jsonl", [{"id": "a", "kind": "scan", "deployed": "m", "rules": "nopack"}]
    )
    result = run_cli("batch", bad, "-o", out)
    assert result.code == 2 and "bad.jsonl:1: no shipped rules pack named 'nopack'" in result.err
    assert not out.exists()
