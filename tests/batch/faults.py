"""A job runner for the isolation tests: modelseal's own runner, except that jobs whose
id says so really hang (sleep far past any timeout) or really crash their worker process
(SIGKILL, as the kernel's OOM killer would)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from typing import Any

from scanner.batch.execute import run_task as real_run_task


def run_task(task: Mapping[str, Any]) -> dict[str, Any]:
    job_id = str(task["job"]["id"])
    if job_id.startswith("hang"):
        time.sleep(3600)
    if job_id.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    if job_id.startswith("raise"):
        raise RuntimeError("runner bug")
    return real_run_task(task)
