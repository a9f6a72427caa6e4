"""One SARIF 2.1.0 run for a whole batch, built from the result lines.

Each job's worker renders its report as ``--format sarif`` would and keeps the run in
its result line; this module merges them into a single run: the union of the rules
used, every job's results (tagged with ``properties.job`` and the job id in the message,
fingerprints salted with the job id so identical findings in two jobs stay two alerts),
and one invocation per job carrying its verdict and, for a job that could not complete,
its error. One run per upload is what code-scanning services expect from one tool.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from scanner.report.sarif import sarif_document

FINGERPRINT = "modelsealFinding/v1"


def batch_sarif(lines: Iterable[Mapping[str, Any]], cwd: Path | None = None) -> str:
    base = str(cwd or Path.cwd())
    rules: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    invocations: list[dict[str, Any]] = []
    artifacts: dict[str, dict[str, Any]] = {}
    driver: dict[str, Any] = {"name": "modelseal"}
    worst = 0
    count = 0
    for line in lines:
        count += 1
        job = str(line["id"])
        worst = max(worst, int(line["exit_code"]))
        invocations.append(_invocation(line))
        fragment = line.get("sarif") or {}
        driver = fragment.get("driver") or driver
        for rule in fragment.get("rules", []):
            rules.setdefault(rule["id"], rule)
        for artifact in fragment.get("artifacts", []):
            item = _relative(copy.deepcopy(artifact), base)
            artifacts.setdefault(item["location"]["uri"], item)
        for result in fragment.get("results", []):
            results.append(_for_job(_relative(copy.deepcopy(result), base), job))
    order = sorted(rules)
    index = {rule_id: i for i, rule_id in enumerate(order)}
    for result in results:
        if result.get("ruleId") in index:
            result["ruleIndex"] = index[result["ruleId"]]
    run = {
        "tool": {"driver": {**driver, "rules": [rules[r] for r in order]}},
        "automationDetails": {"id": "modelseal-batch/"},
        "invocations": invocations,
        "artifacts": list(artifacts.values()),
        "results": results,
        "properties": {"jobs": count, "exit_code": worst},
    }
    return sarif_document(run)


def _invocation(line: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "executionSuccessful": int(line["exit_code"]) != 2,
        "properties": {
            "job": line["id"],
            "kind": line["kind"],
            "verdict": line["verdict"],
            "exit_code": line["exit_code"],
            "timed_out": bool(line.get("timed_out")),
        },
    }
    if line.get("error"):
        out["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": f"[{line['id']}] {line['error']}"}}
        ]
    return out


def _for_job(result: dict[str, Any], job: str) -> dict[str, Any]:
    result.pop("ruleIndex", None)
    message = result.setdefault("message", {})
    message["text"] = f"[{job}] {message.get('text', '')}"
    result.setdefault("properties", {})["job"] = job
    prints = result.get("partialFingerprints") or {}
    if FINGERPRINT in prints:
        salted = hashlib.sha256(f"{job}|{prints[FINGERPRINT]}".encode()).hexdigest()[:32]
        prints[FINGERPRINT] = salted
    return result


def map_uris(node: Any, change: Callable[[str], str]) -> Any:
    """Apply ``change`` to every artifact URI in a SARIF structure, in place."""
    if isinstance(node, dict):
        for key in ("artifactLocation", "location"):
            location = node.get(key)
            if isinstance(location, dict) and isinstance(location.get("uri"), str):
                location["uri"] = change(location["uri"])
        for value in node.values():
            map_uris(value, change)
    elif isinstance(node, list):
        for value in node:
            map_uris(value, change)
    return node


def _relative(node: Any, base: str) -> Any:
    """URIs relative to the folder the batch runs in, as single reports have them."""

    def change(uri: str) -> str:
        return Path(os.path.relpath(uri, base)).as_posix() if os.path.isabs(uri) else uri

    return map_uris(node, change)
