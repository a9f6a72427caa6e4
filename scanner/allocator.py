"""Keep freed numpy buffers in the process instead of handing them back to the kernel.

Chunked passes (dequantize a chunk, judge it, free it, next chunk) allocate the same few
megabytes over and over. glibc's malloc serves buffers that large with ``mmap`` and
returns them with ``munmap`` on free (or trims the heap once a few megabytes sit free at
its top), so every chunk faults its pages in again: on a virtual machine a page fault
costs microseconds, and the faults were a third of a GGUF requantize check. Raising
both thresholds lets buffers up to :data:`MMAP_THRESHOLD` be reused from the heap;
larger ones are still mapped and returned at once, and no more than
:data:`TRIM_THRESHOLD` of free memory stays at a heap's top, so the resident set grows
by a bounded amount.
"""

from __future__ import annotations

import os
import sys

MMAP_THRESHOLD = 32 << 20
"""Largest request served from the heap (glibc's own ceiling for this setting)."""
TRIM_THRESHOLD = 128 << 20
"""Free memory kept at the top of a heap before it is returned."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_done = False


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; True when they are in force.

    A no-op off glibc (no ``mallopt``) and when the user tunes malloc through its
    environment variables, which then win."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or any(v in os.environ for v in _USER_SETTINGS):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Set the mmap threshold first: setting either one turns glibc's dynamic adjustment
    # off, and musl's mallopt accepts nothing (returns 0).
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done
