"""Shared test fixtures: real models (downloaded once, pinned) and a CLI runner."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# More test processes than cores (see below): BLAS's own worker threads would only
# contend for the same cores and spin while they wait. Set before numpy loads in the test
# processes and the CLI subprocesses they start; a user's explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from fixtures import real_model


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """One test process more than there are cores (``-n auto``): many tests wait on
    subprocesses (the CLI, llama.cpp's tools, a Ray head) and a third process keeps two
    cores busy through those waits. ``--maxprocesses`` still caps it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return cores + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files marked ``long_file(seconds)`` first, longest first: pytest-xdist hands out
    files in collection order (``--no-loadscope-reorder``), and a long file handed out
    last keeps one process busy after the rest end."""

    def cost(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long_file")
        return -float(marker.args[0]) if marker is not None else 0.0

    items.sort(key=cost)


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
