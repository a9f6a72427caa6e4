"""Fleet scans: many diff / scan / verify jobs, one result file, resumable.

Public API::

    from scanner.batch import load_jobs, run_batch, LocalEngine, RayEngine

Jobs come from a JSONL file or a folder of models (:mod:`scanner.batch.jobs`), run on a
local process pool or a Ray cluster (:mod:`scanner.batch.engine`), and each job's result
is one line of a JSONL file (:mod:`scanner.batch.results`), optionally also one SARIF
run for the whole batch. docs/batch.md is the user's reference.
"""

from scanner.batch.jobs import Job, JobDefaults, load_jobs
from scanner.batch.local import LocalEngine
from scanner.batch.ray_engine import RayEngine
from scanner.batch.run import BatchSummary, run_batch

__all__ = [
    "BatchSummary",
    "Job",
    "JobDefaults",
    "LocalEngine",
    "RayEngine",
    "load_jobs",
    "run_batch",
]
