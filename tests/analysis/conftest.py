"""Real weights to plant attacks into."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fixtures import real_model
from fixtures.real_models import MINILM, RAPIDOCR_CLS
from tests.analysis.weights_io import onnx_weights, write_onnx


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return real_model(MINILM)


@pytest.fixture(scope="session")
def minilm_weights(minilm_path: Path) -> dict[str, np.ndarray]:
    return load_file(str(minilm_path))


@pytest.fixture(scope="session")
def cnn_path() -> Path:
    return real_model(RAPIDOCR_CLS)


@pytest.fixture(scope="session")
def cnn_weights(cnn_path: Path) -> dict[str, np.ndarray]:
    return onnx_weights(cnn_path)


@pytest.fixture
def write_cnn(cnn_path: Path, tmp_path: Path) -> Callable[[str, Mapping[str, np.ndarray]], Path]:
    def write(name: str, weights: Mapping[str, np.ndarray]) -> Path:
        return write_onnx(cnn_path, tmp_path / f"{name}.onnx", weights)

    return write
