"""Windowed, parallel hashing gives the digests of plain serial hashing.

Every path is checked against ``hashlib.sha256(whole file)``: mapped windows (sizes that
end on, before and after a window boundary, windows smaller than the allocation
granularity), the ``pread`` fallback where a file cannot be mapped, the thread pool over
many files, and the tensor digests and manifest the scanner builds on top.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from signing import _hashing
from signing._hashing import hash_files, sha256_file, update_from_fd

WINDOW = 4 * mmap.ALLOCATIONGRANULARITY


def _serial(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    sizes = [0, 1, WINDOW - 1, WINDOW, WINDOW + 1, 3 * WINDOW + 12_345]
    out = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        out.append(path)
    return out


def test_windows_give_the_serial_digest(files: list[Path]) -> None:
    for path in files:
        for window in (WINDOW, mmap.ALLOCATIONGRANULARITY, 1 << 26):
            seen: list[int] = []
            assert sha256_file(path, window, seen.append) == _serial(path), (path, window)
            assert sum(seen) == path.stat().st_size


def test_unaligned_ranges_give_the_serial_digest(files: list[Path]) -> None:
    path = files[-1]
    data = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, length in [(0, 10), (1, WINDOW), (WINDOW - 3, WINDOW + 7), (12_345, 99)]:
            h = hashlib.sha256()
            update_from_fd(h, fd, offset, length, window=WINDOW)
            assert h.hexdigest() == hashlib.sha256(data[offset : offset + length]).hexdigest()
    finally:
        os.close(fd)


def test_unmappable_files_fall_back_to_reads(files: list[Path], monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("mapping refused")

    monkeypatch.setattr(_hashing.mmap, "mmap", refuse)
    for path in files:
        assert sha256_file(path, WINDOW) == _serial(path)


def test_a_file_shorter_than_asked_is_an_error(files: list[Path]) -> None:
    path = files[-1]
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="file ended"):
            update_from_fd(hashlib.sha256(), fd, 0, path.stat().st_size + 1, window=WINDOW)
    finally:
        os.close(fd)


def test_thread_pool_keeps_the_order_and_the_digests(files: list[Path]) -> None:
    many = files * 3
    assert hash_files(many, workers=2) == [_serial(p) for p in many]
    assert hash_files(many, workers=1) == [_serial(p) for p in many]


def test_tensor_digests_and_manifest_match_the_definition(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from scanner.digest import tensor_digest, tensor_digest_header
    from scanner.formats import open_artifact
    from scanner.manifest import manifest_of

    rng = np.random.default_rng(1)
    tensors = {
        "big": rng.standard_normal((700, 300)).astype(np.float32),
        "odd": rng.standard_normal(7).astype(np.float16),
        "empty": np.zeros((0, 4), np.float32),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    with open_artifact(path) as art:
        for name in tensors:
            h = hashlib.sha256(tensor_digest_header(art.tensors[name]))
            h.update(bytes(art.raw(name)))
            assert tensor_digest(art, name) == "sha256:" + h.hexdigest()
        manifest = manifest_of(art, workers=2)
        assert manifest == manifest_of(art, workers=1)
    assert manifest.files[0].sha256 == _serial(path)


def test_a_failed_key_load_stops_the_hashing(files: list[Path], tmp_path: Path) -> None:
    """``modelseal sign`` loads the key beside the hashing; a key error stops the hashing
    at its next window and is the error reported."""
    from scanner.cli.sign import Beside, StoppedError, StopWhenFailed
    from scanner.progress import CountingProgress
    from signing.errors import SigningError
    from signing.oms import hash_model

    def bad_key() -> None:
        raise SigningError("cannot read private key")

    job = Beside(bad_key)
    with pytest.raises(SigningError):
        job.result()
    counted = CountingProgress()
    with pytest.raises(StoppedError):
        hash_model(tmp_path, progress=StopWhenFailed(counted, job))
    assert counted.done == 0
    good = Beside(lambda: "signer")
    assert good.result() == "signer"
    counted = CountingProgress()
    hash_model(tmp_path, progress=StopWhenFailed(counted, good))
    assert counted.done == sum(p.stat().st_size for p in files)
