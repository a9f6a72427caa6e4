"""pre-commit hook run for real, the GitHub Action's inputs, the rules doc is current."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import save_file

from scanner.rulebook import rules_markdown

REPO = Path(__file__).resolve().parents[2]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@e",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@e",
        },
    )


def test_pre_commit_hook_runs_for_real(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    shutil.copy(REPO / ".pre-commit-hooks.yaml", hooks)
    _git(hooks, "init", "-q")
    _git(hooks, "add", ".")
    _git(hooks, "commit", "-qm", "hooks")
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q")
    rng = np.random.default_rng(3)
    save_file({"w": rng.standard_normal((4, 4)).astype(np.float32)}, str(work / "good.safetensors"))
    bad = rng.standard_normal((4, 4)).astype(np.float32)
    bad[0, 0] = np.nan
    save_file({"w": bad}, str(work / "bad.safetensors"))
    (work / "modelseal.toml").write_text('rules = "strict"\n')
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PRE_COMMIT_HOME": str(tmp_path / "cache"),
    }
    pre_commit = [sys.executable, "-m", "pre_commit"]
    check = subprocess.run(
        [*pre_commit, "validate-manifest", str(hooks / ".pre-commit-hooks.yaml")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    def run(*files: str) -> subprocess.CompletedProcess[str]:
        _git(work, "add", *files)
        return subprocess.run(
            [
                *pre_commit,
                "try-repo",
                str(hooks),
                "modelseal-system",
                "--verbose",
                "--files",
                *files,
            ],
            cwd=work,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    ok = run("good.safetensors")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "good.safetensors: PASS" in ok.stdout
    failed = run("good.safetensors", "bad.safetensors")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "bad.safetensors: FAIL" in failed.stdout and "MS101" in failed.stdout


def test_action_yml_inputs_and_steps() -> None:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    inputs = action["inputs"]
    for name in (
        "deployed",
        "trusted",
        "signature",
        "public-key",
        "attestations",
        "chain-policy",
        "rules",
        "config",
        "sarif-file",
        "upload-sarif",
    ):
        assert name in inputs and "description" in inputs[name]
        assert isinstance(inputs[name].get("default", ""), str)
    steps = action["runs"]["steps"]
    for step in steps:
        assert "uses" in step or step.get("shell") == "bash"  # composite run steps need shell
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("github/codeql-action/upload-sarif@") for u in uses)
    gate = next(s for s in steps if s.get("id") == "gate")
    assert "modelseal gate" in gate["run"] and "--format sarif" in gate["run"]
    assert steps[-1]["run"].rstrip().endswith("exit 1")  # the job fails on the verdict
    referenced = {
        ref.split(".")[1]
        for s in steps
        for v in (s.get("env") or {}).values()
        for ref in [v.strip("${} ")]
        if ref.startswith("inputs.")
    }
    assert referenced <= set(inputs)


def test_rules_doc_is_current_is_in_its_own_file() -> None:
    # The CI check lives in test_rules_doc_current.py; this guards the generator itself.
    assert rules_markdown().startswith("# Rules\n")
