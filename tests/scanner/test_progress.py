"""The progress bar: on stderr, only on a terminal, only for work over a second."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from scanner.cli import progress as progress_module
from scanner.cli.progress import DelayedBar, progress_for
from scanner.manifest import build_manifest
from scanner.progress import CountingProgress, NoProgress


def test_bar_appears_only_after_the_delay(monkeypatch) -> None:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=100)
    bar = DelayedBar(console)
    bar.start(1000, "hashing")
    bar.advance(10)  # fast work: nothing shown
    assert stream.getvalue() == ""
    monkeypatch.setattr(progress_module, "SHOW_AFTER_SECONDS", -1.0)
    bar.advance(500)
    bar.finish()
    assert "hashing" in stream.getvalue()


def test_no_bar_when_not_a_terminal_or_quiet() -> None:
    assert isinstance(progress_for(quiet=True), NoProgress)
    assert isinstance(progress_for(quiet=False), NoProgress)  # pytest captures stderr


def test_library_reports_every_byte_once(minilm: Path) -> None:
    """Files and tensors are both hashed, but the bar counts the model's size once."""
    counter = CountingProgress()
    build_manifest(minilm, progress=counter)
    files = [minilm] if minilm.is_file() else [p for p in minilm.rglob("*") if p.is_file()]
    model_bytes = sum(p.stat().st_size for p in files)
    assert counter.total == counter.done == model_bytes > 90_000_000
