"""The result file: one JSON line per job, appended and flushed as each job finishes.

A crash loses at most the jobs that were running: every finished job's line is on disk
(written whole, flushed and fsynced) before the next is handed out. Reopening the file
to resume reads the lines already there (the latest line of a job wins), drops a line a
crash cut short, and refuses a file that is not a batch result file, so a mistyped
``--output`` never overwrites other data. When a run ends the file is rewritten
atomically with one line per job, in job order.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from scanner.batch.execute import RESULT_SCHEMA
from scanner.errors import UsageError


class ResultLog:
    """An open result file; use as a context manager."""

    def __init__(self, path: Path, *, fresh: bool = False) -> None:
        self.path = path
        self.previous: dict[str, dict[str, Any]] = {}
        """Job id -> its latest line already in the file (empty when ``fresh``)."""
        self._order: list[str] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[bytes] = open(path, "a+b")  # noqa: SIM115 - closed in close()
        try:
            _lock(self._handle, path)
            if fresh:
                self._handle.truncate(0)
            else:
                self._load()
        except BaseException:
            self._handle.close()
            raise

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self) -> None:
        self._handle.seek(0)
        data = self._handle.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            # The last line was being written when a run died: it never counted.
            self._handle.truncate(complete)
        for number, raw in enumerate(data[:complete].splitlines(), 1):
            if not raw.strip():
                continue
            line = _result_line(raw)
            if line is None:
                raise UsageError(
                    f"{self.path}:{number} is not a modelseal batch result line; refusing to "
                    "write into this file (choose another --output)"
                )
            if line["id"] not in self.previous:
                self._order.append(line["id"])
            self.previous[line["id"]] = line

    def append(self, line: Mapping[str, Any]) -> None:
        """Write one job's line and make it durable before returning."""
        data = json.dumps(line, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        self._handle.seek(0, os.SEEK_END)
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def compact(self, order: Sequence[str], latest: Mapping[str, Mapping[str, Any]]) -> None:
        """Rewrite the file atomically: the latest line of each job in ``order``, then the
        lines of jobs from earlier runs that this run did not name."""
        others = [i for i in self._order if i not in set(order)]
        lines = [latest[i] for i in order if i in latest] + [self.previous[i] for i in others]
        write_atomic(self.path, "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines))

    def close(self) -> None:
        self._handle.close()


def _result_line(raw: bytes) -> dict[str, Any] | None:
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(line, dict) or line.get("schema") != RESULT_SCHEMA:
        return None
    if not isinstance(line.get("id"), str):
        return None
    return line


def _lock(handle: IO[bytes], path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UsageError(f"{path} is in use by another modelseal batch run") from None


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every result line of a result file (for tools and tests)."""
    return [x for x in (_result_line(r) for r in _nonblank(path.read_bytes())) if x is not None]


def _nonblank(data: bytes) -> Iterable[bytes]:
    return (r for r in data.splitlines() if r.strip())
