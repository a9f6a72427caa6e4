"""Streaming, parallel file hashing shared by every signing path.

hashlib releases the GIL while it digests a buffer, so a thread pool keeps every core
busy without the pickling cost of processes. Files are streamed through one reusable
mapped window per file (see :data:`WINDOW`) so memory stays flat whatever the model size.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CHUNK_SIZE = 4 * 1024 * 1024
"""Bytes read per call when a file cannot be mapped: large enough to amortise syscalls."""
WINDOW = 64 * 1024 * 1024
"""Bytes mapped at a time. Each window is populated by the kernel in one call (no page
fault per page, no copy out of the page cache) and unmapped once hashed, so resident
memory stays at one window per worker whatever the file size."""


def default_workers() -> int:
    """One worker per usable core (the container may be pinned to fewer than the host)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def update_from_fd(
    digest: Any,
    fd: int,
    offset: int,
    length: int,
    on_bytes: Callable[[int], None] | None = None,
    window: int = WINDOW,
) -> None:
    """Feed bytes ``[offset, offset + length)`` of ``fd`` to ``digest`` (anything with
    ``update``) through mapped windows; falls back to ``pread`` into one reused buffer
    where the file cannot be mapped. Raises ``OSError`` if the file ends early."""
    pos, end = offset, offset + length
    flags = getattr(mmap, "MAP_SHARED", 0) | getattr(mmap, "MAP_POPULATE", 0)
    while pos < end:
        start = pos - pos % mmap.ALLOCATIONGRANULARITY
        # Never map past the file's current end: touching such a page is a SIGBUS.
        stop = min(start + window, end, os.fstat(fd).st_size)
        if stop <= pos:
            raise OSError(f"file ended at byte {pos}, expected data up to {end}")
        try:
            mapped = mmap.mmap(fd, stop - start, flags=flags, prot=mmap.PROT_READ, offset=start)
        except (OSError, ValueError, TypeError):  # TypeError: no flags/prot (Windows)
            _update_by_reads(digest, fd, pos, end, on_bytes)
            return
        try:
            with memoryview(mapped) as view, view[pos - start :] as part:
                digest.update(part)
        finally:
            mapped.close()
        if on_bytes is not None:
            on_bytes(stop - pos)
        pos = stop


def _update_by_reads(
    digest: Any, fd: int, pos: int, end: int, on_bytes: Callable[[int], None] | None
) -> None:
    buffer = bytearray(min(CHUNK_SIZE, max(end - pos, 1)))
    view = memoryview(buffer)
    while pos < end:
        got = os.preadv(fd, [view[: min(len(buffer), end - pos)]], pos)
        if got <= 0:
            raise OSError(f"file ended at byte {pos}, expected data up to {end}")
        digest.update(view[:got])
        if on_bytes is not None:
            on_bytes(got)
        pos += got


def sha256_file(
    path: Path, chunk_size: int = WINDOW, on_bytes: Callable[[int], None] | None = None
) -> str:
    """Lower-case hex sha256 of a file, hashed through mapped windows of ``chunk_size``
    bytes; ``on_bytes`` is told how many bytes each window held (progress)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        update_from_fd(digest, fd, 0, os.fstat(fd).st_size, on_bytes, chunk_size)
    finally:
        os.close(fd)
    return digest.hexdigest()


def sha256_range(
    path: Path,
    start: int,
    end: int,
    on_bytes: Callable[[int], None] | None = None,
    window: int = WINDOW,
) -> str:
    """Lower-case hex sha256 of bytes ``[start, end)`` of a file (empty when equal)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        update_from_fd(digest, fd, start, end - start, on_bytes, window)
    except OSError as exc:
        if exc.filename is not None:
            raise
        # A file that shrank since its ranges were listed: say which one.
        raise OSError(f"{path}: {exc}") from exc
    finally:
        os.close(fd)
    return digest.hexdigest()


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``[start, end)`` of one file."""

    path: Path
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def hash_ranges(
    ranges: Sequence[ByteRange],
    workers: int | None = None,
    progress: Any = None,
    window: int = WINDOW,
) -> list[str]:
    """Hex sha256 of every range on a thread pool; results come back in the order of
    ``ranges``. Ranges of one file hash in parallel, so a one-file model uses every
    core; each worker maps one ``window`` at a time, so memory stays bounded.

    ``progress`` (``start(total, description)``, ``advance(n)``, ``finish()``) is told
    the bytes hashed.
    """
    if not ranges:
        return []
    on_bytes = progress.advance if progress is not None else None
    if progress is not None:
        progress.start(sum(r.length for r in ranges), "hashing")
    try:
        return _hash_ranges(ranges, workers or default_workers(), on_bytes, window)
    finally:
        if progress is not None:
            progress.finish()


def _hash_ranges(
    ranges: Sequence[ByteRange],
    workers: int,
    on_bytes: Callable[[int], None] | None,
    window: int,
) -> list[str]:
    def one(r: ByteRange) -> str:
        return sha256_range(r.path, r.start, r.end, on_bytes, window)

    return _largest_first(ranges, lambda r: r.length, one, workers)


def _largest_first(
    items: Sequence[T], size: Callable[[T], int], hasher: Callable[[T], str], workers: int
) -> list[str]:
    """``hasher`` of every item on a thread pool, results in the order of ``items``."""
    if workers == 1 or len(items) == 1:
        return [hasher(x) for x in items]
    # Largest first so one big item started last never leaves a core idle at the end.
    order = sorted(range(len(items)), key=lambda i: size(items[i]), reverse=True)
    results: list[str] = [""] * len(items)
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures: dict[int, Future[str]] = {i: pool.submit(hasher, items[i]) for i in order}
        try:
            for i, future in futures.items():
                results[i] = future.result()
        except BaseException:
            # The first failure decides the outcome: items not yet started would only
            # spend time before the same error is raised.
            for future in futures.values():
                future.cancel()
            raise
    return results


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
    return _largest_first(paths, _size, hasher, workers or default_workers())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
