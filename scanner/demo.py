"""The built-in demo: a real model, a tampered copy and a benign copy."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from scanner.redteam.weights import ChainLayer, plant_sra

DEMO_MODEL = "silero_vad_16k.safetensors"
# Conv layers of the demo model, in order; each one's input channels are the previous
# one's output channels.
CHANNEL_PATH_LAYERS = ("conv1", "conv2", "conv3", "conv4")


@dataclass(frozen=True)
class DemoFiles:
    trusted: Path
    tampered: Path
    benign: Path
    chain: tuple[tuple[str, int], ...]
    """(weight tensor, output channel) per layer of the planted chain."""


def demo_model_path() -> Path:
    return Path(str(resources.files("scanner") / "demo_data" / DEMO_MODEL))


def make_demo_files(folder: Path, seed: int = 0) -> DemoFiles:
    from safetensors.numpy import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    trusted = folder / "trusted.safetensors"
    trusted.write_bytes(demo_model_path().read_bytes())
    weights = load_file(str(trusted))
    layers = [ChainLayer(f"{n}.weight", params=(f"{n}.bias",)) for n in CHANNEL_PATH_LAYERS]
    tampered_weights, truth = plant_sra(weights, layers, seed)
    chain = tuple(_chain_step(step) for step in truth.details["chain"])  # type: ignore[attr-defined]
    tampered = folder / "tampered.safetensors"
    save_file(tampered_weights, str(tampered))
    benign = folder / "benign-fp16.safetensors"
    save_file({k: v.astype(np.float16) for k, v in weights.items()}, str(benign))
    return DemoFiles(trusted, tampered, benign, chain)


def _chain_step(step: dict[str, object]) -> tuple[str, int]:
    """(tensor, output channel) of one layer of the planted chain's ground truth."""
    channel = step["target"] if "target" in step else step["out"][0]  # type: ignore[index]
    return str(step["tensor"]), int(channel)  # type: ignore[call-overload]
