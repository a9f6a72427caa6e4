"""Replay DARE's drop masks from the merge's seed with torch's own generator.

mergekit seeds torch's global CPU generator once (``--random-seed``) and draws one
``torch.bernoulli`` mask per sparsified input of each tensor, in the order its scheduler
runs the tensors. ``torch.bernoulli`` on a CPU tensor of probabilities consumes the
Mersenne Twister stream element by element, so the masks are consecutive segments of
one stream; only their order is unknown. It is recovered greedily: from the current
generator state, the next segment is the pending (tensor, input) whose recovered keep
bits (at its decisive elements, :mod:`scanner.claims.merge.dare`) the next draws
reproduce; its full mask is then drawn and every decisive element compared.

numpy cannot reproduce torch's stream, so this needs torch (the ``torch`` extra);
without it a seeded DARE claim cannot be re-derived and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROBE = 256
"""Decisive elements compared when choosing the next segment."""
NEAR = 0.1
MIN_EVIDENCE = 32
"""A pending mask whose probe differs from the stream at no more than ``NEAR`` of at
least ``MIN_EVIDENCE`` elements is taken as the next segment with elements changed (a
random segment differs at about ``2 p (1 - p)`` of them, 0.42 at density 0.7)."""


@dataclass(frozen=True)
class Draw:
    """One mask mergekit drew: which tensor and input, and what the output shows of it."""

    tensor: str
    input: int
    size: int
    density: float
    dtype: str
    """``F32`` or ``BF16``: the dtype of the probabilities tensor (mergekit's work dtype)."""
    decisive: np.ndarray
    """Flat positions whose keep/drop is visible in the output, ascending."""
    kept: np.ndarray
    """The keep bit at each decisive position."""


@dataclass(frozen=True)
class Replay:
    reproduced: bool
    order: tuple[tuple[str, int], ...]
    message: str
    mismatched: tuple[tuple[str, int, int], ...] = ()
    """(tensor, input, count of decisive elements whose bit differs from the draw)."""


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def replay(draws: Sequence[Draw], seed: int) -> Replay:
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    pending = list(draws)
    order: list[tuple[str, int]] = []
    mismatched: list[tuple[str, int, int]] = []

    def bernoulli(n: int, density: float, dtype: str) -> np.ndarray:
        tdt = torch.bfloat16 if dtype == "BF16" else torch.float32
        p = torch.full((n,), density, dtype=tdt)
        return torch.bernoulli(p, generator=gen).to(torch.float32).numpy() > 0.5

    while pending:
        state = gen.get_state()
        probes = {id(d): d.decisive[:PROBE] for d in pending}
        length = max((int(p[-1]) + 1 if p.size else 0) for p in probes.values())
        samples: dict[tuple[float, str], np.ndarray] = {}
        matches = []
        near: list[tuple[float, Draw]] = []
        for d in pending:
            key = (d.density, d.dtype)
            if key not in samples:
                gen.set_state(state)
                samples[key] = bernoulli(max(length, 1), d.density, d.dtype)
            pos = probes[id(d)]
            wrong = int(np.count_nonzero(samples[key][pos] != d.kept[: pos.size]))
            if not wrong:
                matches.append(d)
            elif pos.size >= MIN_EVIDENCE:
                near.append((wrong / pos.size, d))
        if not matches and near and min(near, key=lambda x: x[0])[0] <= NEAR:
            # A mask that follows the stream except at a few elements: the segment is
            # found, and the elements are reported (by the full comparison below).
            matches = [min(near, key=lambda x: x[0])[1]]
        if not matches:
            left = ", ".join(f"{d.tensor} input {d.input + 1}" for d in pending[:3])
            return Replay(
                False,
                tuple(order),
                f"after {len(order)} of {len(draws)} masks, no pending mask ({left} ...) "
                f"continues torch's stream from seed {seed}",
                tuple(mismatched),
            )
        # The most evidence first; equal evidence keeps the plan order.
        best = max(matches, key=lambda d: min(d.decisive.size, PROBE))
        gen.set_state(state)
        full = bernoulli(best.size, best.density, best.dtype)
        wrong = int(np.count_nonzero(full[best.decisive] != best.kept))
        if wrong:
            mismatched.append((best.tensor, best.input, wrong))
        order.append((best.tensor, best.input))
        pending.remove(best)
    if mismatched:
        t, i, n = mismatched[0]
        return Replay(
            False,
            tuple(order),
            f"{len(mismatched)} masks differ from torch's draws from seed {seed} "
            f"(e.g. {t} input {i + 1}: {n} decisive elements)",
            tuple(mismatched),
        )
    return Replay(
        True,
        tuple(order),
        f"all {len(draws)} DARE masks re-derived from seed {seed} with torch's generator "
        "(every decisive element matches)",
    )
