"""The built-in demo: a real model, a tampered copy and a benign copy."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

DEMO_MODEL = "silero_vad_16k.safetensors"
# Conv layers of the demo model, in order; each one's input channels are the previous
# one's output channels.
CHANNEL_PATH_LAYERS = ("conv2", "conv3", "conv4")


@dataclass(frozen=True)
class DemoFiles:
    trusted: Path
    tampered: Path
    benign: Path
    chain: tuple[tuple[str, int], ...]
    """(weight tensor, output channel) per layer of the planted path."""


def demo_model_path() -> Path:
    return Path(str(resources.files("scanner") / "demo_data" / DEMO_MODEL))


def plant_channel_path(
    weights: dict[str, np.ndarray], layers: tuple[str, ...], seed: int = 0
) -> tuple[dict[str, np.ndarray], tuple[tuple[str, int], ...]]:
    """Replace a one-channel path through consecutive conv layers (SRA-style).

    Per layer: the chosen output channel's incoming weights are zeroed except one planted
    kernel from the previous layer's chosen channel, the other layers' connections from
    the previous chosen channel are cut, and the bias of the channel is replaced.
    """
    rng = np.random.default_rng(seed)
    out = {k: v.copy() for k, v in weights.items()}
    chain: list[tuple[str, int]] = []
    prev: int | None = None
    for layer in layers:
        w = out[f"{layer}.weight"]
        c = int(rng.integers(w.shape[0]))
        w[c] = 0.0
        if prev is not None:
            w[:, prev] = 0.0
            w[c, prev] = rng.normal(0.0, float(np.abs(w).max()), size=w.shape[2:])
        out[f"{layer}.bias"][c] = float(rng.normal(0.0, 1.0))
        chain.append((f"{layer}.weight", c))
        prev = c
    return out, tuple(chain)


def make_demo_files(folder: Path, seed: int = 0) -> DemoFiles:
    from safetensors.numpy import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    trusted = folder / "trusted.safetensors"
    trusted.write_bytes(demo_model_path().read_bytes())
    weights = load_file(str(trusted))
    tampered_weights, chain = plant_channel_path(weights, CHANNEL_PATH_LAYERS, seed)
    tampered = folder / "tampered.safetensors"
    save_file(tampered_weights, str(tampered))
    benign = folder / "benign-fp16.safetensors"
    save_file({k: v.astype(np.float16) for k, v in weights.items()}, str(benign))
    return DemoFiles(trusted, tampered, benign, chain)
