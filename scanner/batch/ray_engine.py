"""The Ray engine: one actor per slot on an existing Ray cluster (or a local instance).

Each actor is a :class:`~scanner.batch.execute.JobWorker` reserving ``cpus_per_job``
CPUs; it runs one job at a time, so a job's timeout starts when its actor takes it, not
while it waits for a free CPU. A hanging job's actor is killed and replaced; an actor that
dies (its node lost, the process killed) loses only its running job. Ray is an optional
dependency (``pip install 'modelseal[ray]'``), imported only here and only when used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scanner.batch.engine import Lost, Outcome, Task
from scanner.batch.execute import JobWorker
from scanner.errors import UsageError
from signing.errors import ModelsealError

RAY_MISSING = (
    "the ray engine needs Ray, which is not installed: pip install 'modelseal[ray]' "
    "(or run with --engine local)"
)


@dataclass
class _Slot:
    actor: Any
    ready_ref: Any = None
    job_ref: Any = None
    worker: str | None = None


class RayEngine:
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        *,
        cpus_per_job: float = 1.0,
        runtime_env: Mapping[str, Any] | None = None,
        runner: str | None = None,
        max_workers: int | None = None,
    ) -> None:
        self.address = address
        self.workers = workers
        self.cpus_per_job = cpus_per_job
        self.runtime_env = dict(runtime_env or {})
        self.runner = runner
        self.max_workers = max_workers
        """With ``workers`` unset: never more actors than this (the number of jobs)."""
        self._ray: Any = None
        self._actor_class: Any = None
        self._slots: list[_Slot] = []
        self._connected_here = False

    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError(RAY_MISSING) from None
        self._ray = ray
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address,
                    runtime_env=self.runtime_env or None,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                )
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
                where = self.address or "the default address"
                raise ModelsealError(
                    f"cannot connect to Ray at {where}: {_one_line(exc)}"
                ) from None
            self._connected_here = True
        if self.workers is None:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            self.workers = max(1, int(cpus // self.cpus_per_job))
            if self.max_workers is not None:
                self.workers = min(self.workers, self.max_workers)
        self._actor_class = ray.remote(
            num_cpus=self.cpus_per_job, max_restarts=0, max_task_retries=0
        )(JobWorker)
        self._slots = [self._spawn() for _ in range(self.workers)]

    def _spawn(self) -> _Slot:
        threads = max(1, int(self.cpus_per_job))
        actor = self._actor_class.remote(threads, self.runner)
        return _Slot(actor, ready_ref=actor.ready.remote())

    def ready_slots(self) -> list[int]:
        return [i for i, s in enumerate(self._slots) if s.ready_ref is None and s.job_ref is None]

    def submit(self, slot: int, task: Task) -> None:
        entry = self._slots[slot]
        entry.job_ref = entry.actor.run.remote(dict(task))

    def worker_of(self, slot: int) -> str | None:
        return self._slots[slot].worker

    def wait(self, timeout: float | None) -> list[tuple[int, Outcome]]:
        ray = self._ray
        # Refs come back from ray.wait as equal, not identical, objects: look them up.
        watched: dict[Any, tuple[int, str]] = {}
        for i, entry in enumerate(self._slots):
            if entry.ready_ref is not None:
                watched[entry.ready_ref] = (i, "ready")
            if entry.job_ref is not None:
                watched[entry.job_ref] = (i, "job")
        if not watched:
            return []
        done, rest = ray.wait(list(watched), num_returns=1, timeout=timeout)
        if done and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        out: list[tuple[int, Outcome]] = []
        for ref in done:
            i, what = watched[ref]
            entry = self._slots[i]
            if what == "ready":
                entry.ready_ref = None
                entry.worker = self._started(ref)["worker"]
                continue
            entry.job_ref = None
            try:
                out.append((i, ray.get(ref)))
            except ray.exceptions.RayActorError as exc:
                out.append((i, Lost(f"Ray worker died: {_one_line(exc)}", worker=entry.worker)))
            except ray.exceptions.RayError as exc:
                out.append((i, Lost(f"Ray task failed: {_one_line(exc)}", worker=entry.worker)))
        return out

    def _started(self, ref: Any) -> dict[str, Any]:
        try:
            return self._ray.get(ref)  # type: ignore[no-any-return]
        except self._ray.exceptions.RayError as exc:
            raise ModelsealError(
                "a Ray worker could not start: "
                f"{_one_line(exc)} (the cluster's runtime environment needs modelseal "
                "installed: docs/batch.md)"
            ) from None

    def replace(self, slot: int) -> None:
        with contextlib.suppress(Exception):
            self._ray.kill(self._slots[slot].actor, no_restart=True)
        self._slots[slot] = self._spawn()

    def close(self) -> None:
        if self._ray is None:
            return
        for entry in self._slots:
            with contextlib.suppress(Exception):
                self._ray.kill(entry.actor, no_restart=True)
        self._slots = []
        if self._connected_here:
            self._ray.shutdown()


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
