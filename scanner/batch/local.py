"""The local engine: a pool of worker processes on this machine.

Each slot is one spawned process running :class:`~scanner.batch.execute.JobWorker`,
talking over a pipe. A worker that hangs is killed and replaced (the scheduler's
timeout), one that dies takes only its running job with it, and every worker dies with
this process (Linux: the parent-death signal), so a killed batch leaves no job running.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from scanner.batch.engine import Lost, Outcome, Task
from signing.errors import ModelsealError

STOP_GRACE_SECONDS = 2.0


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Slot:
    process: Any
    conn: Any
    ready: bool = False
    busy: bool = False
    worker: str | None = None


class LocalEngine:
    name = "local"

    def __init__(
        self, workers: int | None = None, *, threads: int | None = None, runner: str | None = None
    ) -> None:
        self.workers = workers or usable_cores()
        self.threads = threads or max(1, usable_cores() // self.workers)
        self.runner = runner
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []
        self._lost: list[tuple[int, Lost]] = []

    def start(self) -> None:
        self._slots = [self._spawn() for _ in range(self.workers)]

    def _spawn(self) -> _Slot:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=serve, args=(child, self.threads, self.runner), daemon=True
        )
        process.start()
        child.close()
        return _Slot(process, parent)

    def ready_slots(self) -> list[int]:
        return [i for i, s in enumerate(self._slots) if s.ready and not s.busy]

    def submit(self, slot: int, task: Task) -> None:
        entry = self._slots[slot]
        entry.busy = True
        try:
            entry.conn.send(task)
        except (BrokenPipeError, ConnectionError, OSError):
            self._lost.append((slot, Lost(self._death(entry), worker=entry.worker)))

    def worker_of(self, slot: int) -> str | None:
        return self._slots[slot].worker

    def wait(self, timeout: float | None) -> list[tuple[int, Outcome]]:
        if self._lost:
            lost, self._lost = self._lost, []
            return list(lost)
        watched = [s.conn for s in self._slots] + [s.process.sentinel for s in self._slots]
        fired = set(multiprocessing.connection.wait(watched, timeout))
        out: list[tuple[int, Outcome]] = []
        for i, entry in enumerate(self._slots):
            if entry.conn in fired:
                message = self._receive(entry)
                if message is not None:
                    kind, payload = message
                    if kind == "ready":
                        entry.ready, entry.worker = True, payload["worker"]
                    elif kind == "failed":
                        raise ModelsealError(f"a local worker could not start: {payload}")
                    elif kind == "done":
                        entry.busy = False
                        out.append((i, payload))
                    continue
            if entry.process.sentinel in fired or not entry.process.is_alive():
                out.extend(self._died(i, entry))
        return out

    def _receive(self, entry: _Slot) -> tuple[str, Any] | None:
        try:
            return entry.conn.recv()  # type: ignore[no-any-return]
        except (EOFError, ConnectionError, OSError):
            return None

    def _died(self, i: int, entry: _Slot) -> list[tuple[int, Outcome]]:
        entry.process.join(STOP_GRACE_SECONDS)
        if not entry.ready:
            raise ModelsealError(f"a local worker exited while starting ({self._death(entry)})")
        if entry.busy:
            return [(i, Lost(self._death(entry), worker=entry.worker))]
        self.replace(i)  # an idle worker died: nothing was lost
        return []

    def _death(self, entry: _Slot) -> str:
        code = entry.process.exitcode
        if code is None:
            how = "stopped answering"
        elif code < 0:
            how = f"killed by {_signal_name(-code)}"
        else:
            how = f"exited with code {code}"
        return f"worker process {entry.process.pid} {how}"

    def replace(self, slot: int) -> None:
        self._stop(self._slots[slot], force=True)
        self._slots[slot] = self._spawn()

    def close(self) -> None:
        for entry in self._slots:
            self._stop(entry, force=entry.busy or not entry.ready)
        self._slots = []

    def _stop(self, entry: _Slot, *, force: bool) -> None:
        if not force:
            with contextlib.suppress(OSError, ValueError):
                entry.conn.send(None)
            entry.process.join(STOP_GRACE_SECONDS)
        if entry.process.is_alive():
            entry.process.kill()
            entry.process.join(STOP_GRACE_SECONDS)
        entry.conn.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def serve(conn: Any, threads: int, runner: str | None) -> None:
    """A worker process: start a :class:`JobWorker`, then run tasks until told to stop."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the batch process decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from scanner.batch.execute import JobWorker

        worker = JobWorker(threads, runner)
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", worker.ready()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(("done", worker.run(task)))


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the batch process dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
