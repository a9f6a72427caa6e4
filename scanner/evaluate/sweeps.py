"""What the evaluation sweeps: every planter parameter an attacker controls, the generic
tamper grid, and which attacks are combined with which benign twins.

A sweep setting is a dict of planter parameters (``modelseal redteam --param K=V``) plus
an optional ``strength``; parameters not named keep the planter's default. The grid is
the attacker's choice space, not the detectors' tuning: each value is one an attacker
could pick to stay quiet (a longer or shorter chain, an edit spread over more tensors, a
payload in fewer bytes, another sparsity).
"""

from __future__ import annotations

from scanner.redteam.tamper import MAGNITUDES, QUICK_MAGNITUDES, SHAPES

__all__ = ["GRID", "MAGNITUDES", "QUICK_MAGNITUDES", "SHAPES", "grid"]

GRID: dict[str, tuple[dict[str, str], ...]] = {
    # Chain length (layers from the end), channel width, magnitude rescaling.
    "sra": (
        {"span": "2"},
        {"span": "3"},
        {"span": "5"},
        {"span": "3", "rescale": "1"},
        {"span": "3", "strength": "2"},
        {"span": "3", "strength": "4"},
    ),
    # Suppression factor of the path neuron's other inputs.
    "handcrafted": ({"strength": "0.05"}, {"strength": "0.3"}, {"strength": "0.9"}),
    # Relative norm and number of matrices the edit is spread over.
    "rank1": (
        {"strength": "0.0005"},
        {"strength": "0.002", "tensors": "4"},
        {"strength": "0.01", "tensors": "8"},
    ),
    # Share of the residual-writing matrices edited (layer span).
    "abliteration": ({"span": "0.1"}, {"span": "0.5"}),
    # Gap attacks: margin from the bin walls, number of tensors.
    "quant-gap-int8": (
        {"strength": "0.01"},
        {"strength": "0.25"},
        {"strength": "0.45"},
        {"tensors": "3"},
    ),
    "quant-gap-q8_0": ({"strength": "0.01"}, {"strength": "0.45"}, {"tensors": "3"}),
    "quant-gap-q4_0": ({"strength": "0.01"}, {"strength": "0.45"}, {"tensors": "3"}),
    # Prune-activated: the sparsity the attacker expects, the edit size.
    "prune-activated": (
        {"sparsity": "0.2"},
        {"sparsity": "0.7"},
        {"sparsity": "0.9"},
        {"strength": "0.001"},
    ),
    # Payload: fraction, bytes per word (bit positions), number of tensors it is split over.
    "lowbyte-payload": (
        {"strength": "0.001"},
        {"bytes": "1"},
        {"bytes": "3"},
        {"tensors": "4"},
        {"tensors": "16", "strength": "0.01"},
    ),
    # Flipped code fraction of a claimed quantization.
    "unfaithful-quant": ({"strength": "0.0001"}, {"strength": "0.03"}),
    "exponent-flip": ({"strength": "30"},),
}

QUICK_KEYS = ("sra", "rank1", "prune-activated", "lowbyte-payload", "quant-gap-int8")

COMBINATION_ATTACKS = (
    "rank1",
    "sra",
    "prune-activated",
    "quant-gap-int8",
    "lowbyte-payload",
    "unfaithful-quant",
    "token-trigger",
    "shadowlogic",
)
COMBINATION_TWINS = (
    "finetune",
    "lora-merge",
    "cast-fp16",
    "int8",
    "gguf-q8_0",
    "prune-magnitude",
    "ort-optimize",
)


def grid(quick: bool = False) -> dict[str, tuple[dict[str, str], ...]]:
    if not quick:
        return dict(GRID)
    return {k: GRID[k][:3] for k in QUICK_KEYS}


def combination_attacks(quick: bool = False) -> tuple[str, ...]:
    return ("rank1", "sra", "lowbyte-payload", "token-trigger") if quick else COMBINATION_ATTACKS


def combination_twins(quick: bool = False) -> tuple[str, ...]:
    return ("finetune", "lora-merge", "int8", "ort-optimize") if quick else COMBINATION_TWINS
