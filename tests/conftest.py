"""Shared test fixtures: real models (downloaded once, pinned) and a CLI runner."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures import real_model


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``modelseal`` in-process and capture its exit code and output."""
    from scanner.cli.main import main

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors and --help
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def minilm() -> Path:
    return real_model("minilm")


@pytest.fixture(scope="session")
def silero_safetensors() -> Path:
    return real_model("silero-safetensors")
