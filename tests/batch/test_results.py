"""The result file: durable appends, torn last lines, other files left alone, one writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanner.batch.results import ResultLog
from scanner.batch.run import resumable_digest
from scanner.errors import UsageError


def _line(job_id: str, exit_code: int = 0, digest: str = "sha256:ab") -> dict[str, object]:
    return {
        "schema": "modelseal/batch-result/v1",
        "id": job_id,
        "exit_code": exit_code,
        "digests": {"job": digest},
    }


def test_lines_are_on_disk_when_append_returns_and_reload_keeps_the_latest(tmp_path: Path) -> None:
    path = tmp_path / "out" / "r.jsonl"
    with ResultLog(path) as log:
        log.append(_line("a", 2))
        log.append(_line("b"))
        assert path.read_text().count("\n") == 2  # visible to any reader already
        log.append(_line("a", 0))
    with ResultLog(path) as log:
        assert log.previous["a"]["exit_code"] == 0 and set(log.previous) == {"a", "b"}
        log.compact(["b", "a"], {"a": log.previous["a"], "b": log.previous["b"]})
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["b", "a"]


def test_a_torn_last_line_is_dropped_and_never_glued_to_the_next(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_line("a")) + "\n" + json.dumps(_line("b"))[:25])
    with ResultLog(path) as log:
        assert set(log.previous) == {"a"}
        log.append(_line("c"))
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "c"]


def test_a_file_that_is_not_a_result_file_is_never_written(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\nmore notes\n")
    with pytest.raises(UsageError, match=r"notes.txt:1 is not a modelseal batch result line"):
        ResultLog(path)
    assert path.read_text() == "my notes\nmore notes\n"


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ResultLog(path), pytest.raises(UsageError, match="in use by another modelseal batch run"):
        ResultLog(path)
    with ResultLog(path):  # released on close
        pass


def test_fresh_forgets_earlier_results(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ResultLog(path) as log:
        log.append(_line("a"))
    with ResultLog(path, fresh=True) as log:
        assert log.previous == {}
    assert path.read_text() == ""


def test_compaction_keeps_lines_of_jobs_this_run_did_not_name(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(_line(i)) + "\n" for i in ("old", "a")))
    with ResultLog(path) as log:
        log.compact(["a"], {"a": _line("a", 1)})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["id"], x["exit_code"]) for x in lines] == [("a", 1), ("old", 0)]


def test_only_completed_lines_are_resumed() -> None:
    assert resumable_digest(_line("a", 0), sarif=False) == "sha256:ab"
    assert resumable_digest(_line("a", 1), sarif=False) == "sha256:ab"
    assert resumable_digest(_line("a", 2), sarif=False) is None  # could not complete: rerun
    assert resumable_digest(_line("a", 0), sarif=True) is None  # no SARIF kept for it
    assert resumable_digest({**_line("a"), "sarif": {}}, sarif=True) == "sha256:ab"
    assert resumable_digest(None, sarif=False) is None
