"""The anchor for ``modelseal diff`` timings: a plain numpy memmap diff of two safetensors
models (files or sharded folders), as one would write it by hand.

    python benchmarks/numpy_diff.py TRUSTED DEPLOYED

Per tensor name: same dtype -> count the elements that differ and their largest absolute
change; float dtype change -> both sides to float32, largest absolute difference;
int8 codes with a ``<name>_scale`` -> dequantize and take the largest error. Whole
tensors at a time through ``np.memmap``. Prints one summary line.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

_NP = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16, "I8": np.int8}


def tensors(path: Path) -> dict[str, np.ndarray]:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    out: dict[str, np.ndarray] = {}
    for f in files:
        with open(f, "rb") as handle:
            (n,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(n))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            dtype = entry["dtype"]
            arr = np.memmap(
                f,
                dtype=_NP[dtype],
                mode="r",
                offset=8 + n + start,
                shape=(end - start) // np.dtype(_NP[dtype]).itemsize,
            )
            out[name] = (dtype, arr.reshape(entry["shape"]))
    return out


def as_f32(dtype: str, a: np.ndarray) -> np.ndarray:
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def main(trusted: str, deployed: str) -> int:
    t, d = tensors(Path(trusted)), tensors(Path(deployed))
    changed = 0
    worst = 0.0
    for name, (tdt, a) in t.items():
        if name not in d:
            continue
        ddt, b = d[name]
        if tdt == ddt:
            diff = a != b
            k = int(np.count_nonzero(diff))
            if k:
                changed += k
                worst = max(worst, float(np.abs(as_f32(tdt, a[diff]) - as_f32(ddt, b[diff])).max()))
        elif ddt == "I8":
            scale = (
                d[name + "_scale"][1]
                if name + "_scale" in d
                else d[name.removesuffix(".weight") + ".weight_scale"][1]
            )
            deq = b.astype(np.float32) * np.asarray(scale, dtype=np.float32)[:, None]
            err = np.abs(deq - as_f32(tdt, a))
            changed += int(np.count_nonzero(err))
            worst = max(worst, float(err.max()))
        else:
            err = np.abs(as_f32(tdt, a) - as_f32(ddt, b))
            changed += int(np.count_nonzero(err))
            worst = max(worst, float(err.max()))
    print(f"{len(t)} tensors, {changed} elements differ, max |d| {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
