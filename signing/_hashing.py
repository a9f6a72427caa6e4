"""Streaming, parallel file hashing shared by every signing path.

hashlib releases the GIL while it digests a buffer, so a thread pool keeps every core
busy without the pickling cost of processes. Files are streamed through one reusable
buffer per file so memory stays flat whatever the model size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CHUNK_SIZE = 4 * 1024 * 1024
"""Bytes read per call: large enough to amortise syscalls, small enough for caches."""


def default_workers() -> int:
    """One worker per usable core (the container may be pinned to fewer than the host)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def sha256_file(
    path: Path, chunk_size: int = CHUNK_SIZE, on_bytes: Callable[[int], None] | None = None
) -> str:
    """Lower-case hex sha256 of a file, read in chunks into one reused buffer;
    ``on_bytes`` is told how many bytes each chunk held (progress)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return digest.hexdigest()


def hash_files(
    paths: Sequence[Path],
    workers: int | None = None,
    hasher: Callable[[Path], str] = sha256_file,
    progress: Any = None,
) -> list[str]:
    """Hash ``paths`` on a thread pool; results come back in the order of ``paths``.

    ``progress`` (``start(total, description)``, ``advance(n)``, ``finish()``) is told
    the bytes hashed, when the default hasher is used.
    """
    if not paths:
        return []
    if progress is not None and hasher is sha256_file:
        progress.start(sum(_size(p) for p in paths), "hashing")
        try:
            return hash_files(paths, workers, lambda p: sha256_file(p, on_bytes=progress.advance))
        finally:
            progress.finish()
    workers = workers or default_workers()
    if workers == 1 or len(paths) == 1:
        return [hasher(p) for p in paths]
    # Largest first so one big file started last never leaves a core idle at the end.
    order = sorted(range(len(paths)), key=lambda i: _size(paths[i]), reverse=True)
    results: list[str] = [""] * len(paths)
    with ThreadPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        futures = {i: pool.submit(hasher, paths[i]) for i in order}
        for i, future in futures.items():
            results[i] = future.result()
    return results


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
