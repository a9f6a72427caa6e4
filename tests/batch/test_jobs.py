"""The job file is validated strictly, before anything runs: one line per problem, naming
the file and line; the folder-of-models convention is checked the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanner.batch.jobs import MANIFEST_NAME, SIGNATURE_NAME, JobDefaults, load_jobs
from scanner.errors import UsageError


def _load(tmp_path: Path, *lines: str, defaults: JobDefaults | None = None):
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return load_jobs(path, defaults)


def _error(tmp_path: Path, *lines: str, defaults: JobDefaults | None = None) -> str:
    with pytest.raises(UsageError) as info:
        _load(tmp_path, *lines, defaults=defaults)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_jobs_resolve_paths_against_the_job_file(tmp_path: Path) -> None:
    jobs = _load(
        tmp_path,
        json.dumps({"id": "a", "kind": "diff", "trusted": "t.safetensors", "deployed": "/abs/d"}),
        "",
        json.dumps(
            {
                "id": "b",
                "kind": "diff",
                "trusted": "m/../t",
                "deployed": "d",
                "claims": ["quantize:int8:per-channel"],
                "allow": ["finetune"],
                "rules": "packs/mine.toml",
                "fail_on": "high",
            }
        ),
        json.dumps({"id": "c", "kind": "scan", "deployed": "x.onnx", "rules": "strict"}),
        json.dumps({"id": "d", "kind": "verify", "deployed": "m", "manifest": "m/pin.json"}),
    )
    assert [j.id for j in jobs] == ["a", "b", "c", "d"]
    assert jobs[0].trusted == str(tmp_path / "t.safetensors")
    assert jobs[0].deployed == "/abs/d"
    assert jobs[1].trusted == str(tmp_path / "t")
    assert jobs[1].claims == ("quantize:int8:per-channel",)
    assert jobs[1].rules == str(tmp_path / "packs" / "mine.toml")
    assert jobs[2].rules == "strict"  # a shipped pack's name stays a name
    assert jobs[1].source.endswith("jobs.jsonl:3")
    assert jobs[3].manifest == str(tmp_path / "m" / "pin.json")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "jobs.jsonl:2: not valid JSON"),
        ("[1, 2]", "jobs.jsonl:2: a job is a JSON object, not an array"),
        ('{"kind": "scan", "deployed": "m"}', "jobs.jsonl:2: 'id' must be a non-empty string"),
        ('{"id": "x\\ny", "kind": "scan", "deployed": "m"}', "'id' must be printable text"),
        ('{"id": "b", "kind": "dif", "deployed": "m"}', "'kind' must be one of diff, scan, verify"),
        (
            '{"id": "b", "kind": "diff", "trusted": "t"}',
            "jobs.jsonl:2: a diff job needs 'deployed'",
        ),
        (
            '{"id": "b", "kind": "diff", "trusted": "t", "deployed": "d", "trusetd": 1}',
            "unknown field 'trusetd' (fields: id, kind, rules, fail_on, trusted, deployed",
        ),
        (
            '{"id": "b", "kind": "scan", "deployed": "d", "claims": ["cast:fp16"]}',
            "not a field of a scan job: 'claims'",
        ),
        (
            '{"id": "b", "kind": "scan", "deployed": 7}',
            "'deployed' must be a non-empty path string",
        ),
        (
            '{"id": "b", "kind": "scan", "deployed": "s3://bucket/model"}',
            "'deployed' is a URI (s3://...); object stores are read through a mount",
        ),
        (
            '{"id": "b", "kind": "diff", "trusted": "t", "deployed": "d", "claims": "cast:fp16"}',
            "'claims' must be a list of non-empty strings",
        ),
        (
            '{"id": "b", "kind": "diff", "trusted": "t", "deployed": "d", "claims": ["cast:fp12"]}',
            "jobs.jsonl:2: claim 'cast:fp12'",
        ),
        (
            '{"id": "b", "kind": "scan", "deployed": "d", "fail_on": "severe"}',
            "'fail_on': unknown severity",
        ),
        (
            '{"id": "b", "kind": "scan", "deployed": "d", "rules": ""}',
            "'rules' must be a non-empty string",
        ),
        (
            '{"id": "b", "kind": "verify", "deployed": "d"}',
            "needs 'signature' (with 'public_key') or 'manifest'",
        ),
        (
            '{"id": "b", "kind": "verify", "deployed": "d", "signature": "s"}',
            "'signature' needs 'public_key'",
        ),
        (
            '{"id": "b", "kind": "verify", "deployed": "d", "manifest": "m", "public_key": "k"}',
            "'public_key' is only used with 'signature'",
        ),
        (
            '{"id": "b", "kind": "scan", "deployed": "d", "deployed": "e"}',
            "field 'deployed' given twice",
        ),
        (
            '{"id": "a", "kind": "scan", "deployed": "d"}',
            "jobs.jsonl:2: duplicate id 'a' (first on line 1)",
        ),
    ],
)
def test_each_problem_is_one_line_naming_the_line(tmp_path: Path, line: str, expected: str) -> None:
    first = '{"id": "a", "kind": "scan", "deployed": "m"}'
    assert expected in _error(tmp_path, first, line)


def test_command_line_defaults_fill_what_a_job_leaves_out(tmp_path: Path) -> None:
    defaults = JobDefaults(rules="strict", fail_on="high", public_key="/keys/pub.pem")
    jobs = _load(
        tmp_path,
        '{"id": "a", "kind": "verify", "deployed": "m", "signature": "m/model.sig"}',
        '{"id": "b", "kind": "scan", "deployed": "m", "rules": "audit", "fail_on": "low"}',
        defaults=defaults,
    )
    assert (jobs[0].public_key, jobs[0].rules, jobs[0].fail_on) == (
        "/keys/pub.pem",
        "strict",
        "high",
    )
    assert (jobs[1].public_key, jobs[1].rules, jobs[1].fail_on) == (None, "audit", "low")


def test_empty_or_unreadable_job_files_are_errors(tmp_path: Path) -> None:
    assert "no jobs" in _error(tmp_path, "", "   ")
    with pytest.raises(UsageError, match="cannot read jobs"):
        load_jobs(tmp_path / "absent.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(UsageError, match=r"bin.jsonl:1: not UTF-8"):
        load_jobs(tmp_path / "bin.jsonl")


def test_folder_of_models_is_one_verify_job_per_model_folder(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    for name in ("b-pinned", "a-signed", "c-both", ".hidden"):
        (fleet / name).mkdir(parents=True)
    (fleet / "b-pinned" / MANIFEST_NAME).write_text("{}")
    (fleet / "a-signed" / SIGNATURE_NAME).write_text("{}")
    (fleet / "c-both" / MANIFEST_NAME).write_text("{}")
    (fleet / "c-both" / SIGNATURE_NAME).write_text("{}")
    (fleet / "README.md").write_text("not a model folder")
    jobs = load_jobs(fleet, JobDefaults(public_key="/k.pem", rules="strict"))
    assert [j.id for j in jobs] == ["a-signed", "b-pinned", "c-both"]
    by_id = {j.id: j for j in jobs}
    assert by_id["a-signed"].signature == str(fleet / "a-signed" / SIGNATURE_NAME)
    assert by_id["a-signed"].manifest is None and by_id["a-signed"].public_key == "/k.pem"
    assert by_id["b-pinned"].signature is None and by_id["b-pinned"].public_key is None
    assert by_id["c-both"].signature and by_id["c-both"].manifest
    assert all(j.kind == "verify" and j.rules == "strict" for j in jobs)
    assert by_id["b-pinned"].deployed == str(fleet / "b-pinned")


def test_folder_of_models_needs_evidence_and_a_key(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    (fleet / "bare").mkdir(parents=True)
    with pytest.raises(
        UsageError, match=f"bare: holds neither {MANIFEST_NAME} nor {SIGNATURE_NAME}"
    ):
        load_jobs(fleet)
    (fleet / "bare" / SIGNATURE_NAME).write_text("{}")
    with pytest.raises(UsageError, match="needs a trusted signer: pass --public-key"):
        load_jobs(fleet)
    (fleet / "bare" / SIGNATURE_NAME).unlink()
    (fleet / "bare").rmdir()
    with pytest.raises(UsageError, match="no jobs"):
        load_jobs(fleet)
