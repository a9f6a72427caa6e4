"""Values produced by the trusted-vs-deployed diff."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class TensorStatus(str, Enum):
    IDENTICAL = "identical"
    CHANGED = "changed"
    """Same dtype and shape, different values."""
    CAST = "cast"
    """Different float dtype, values agree within the target dtype's rounding."""
    DTYPE_CHANGED = "dtype-changed"
    """Different dtype and the values do not agree as a cast would."""
    SHAPE_CHANGED = "shape-changed"
    ADDED = "added"
    REMOVED = "removed"
    RENAMED = "renamed"
    """Same digest under another name."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Localization:
    """Where the changed elements of a tensor sit."""

    rows: tuple[int, ...] = ()
    """Indices along axis 0 (rows of a matrix, output channels of a conv) with a change."""
    cols: tuple[int, ...] = ()
    """Indices along axis 1 (columns, input channels) with a change."""
    n_rows: int = 0
    n_cols: int = 0
    block: tuple[tuple[int, int], ...] = ()
    """Half-open bounding box ``((r0, r1), (c0, c1))`` of all changes."""
    block_density: float = 0.0
    """Changed elements / elements in the bounding box (1.0 = a solid block)."""

    def to_dict(self, limit: int = 256) -> dict[str, Any]:
        return {
            "rows": list(self.rows[:limit]),
            "rows_total": len(self.rows),
            "cols": list(self.cols[:limit]),
            "cols_total": len(self.cols),
            "block": [list(r) for r in self.block],
            "block_density": round(self.block_density, 6),
        }

    def describe(self) -> str:
        parts = []
        if self.block and self.block_density >= 0.5 and len(self.block) >= 2:
            (r0, r1), (c0, c1) = self.block[0], self.block[1]
            parts.append(f"block rows {r0}:{r1} x cols {c0}:{c1}")
        if self.rows:
            parts.append(f"{len(self.rows)}/{self.n_rows} rows {_ranges(self.rows)}")
        if self.cols:
            parts.append(f"{len(self.cols)}/{self.n_cols} cols {_ranges(self.cols)}")
        return "; ".join(parts)


def _ranges(indices: tuple[int, ...], limit: int = 6) -> str:
    """Compact ``[0-3, 7, 9-12]`` form of sorted indices."""
    spans: list[str] = []
    start = prev = None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:  # type: ignore[operator]
            prev = i
        else:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        spans.append(f"{start}" if start == prev else f"{start}-{prev}")
    more = f", +{len(spans) - limit} more" if len(spans) > limit else ""
    return "[" + ", ".join(spans[:limit]) + more + "]"


@dataclass(frozen=True)
class ValueDelta:
    """Numeric size of a change between two same-shaped tensors."""

    n_elements: int
    n_changed: int
    max_abs: float
    rel_l2: float
    """||deployed - trusted|| / ||trusted|| (inf when the trusted tensor is all zero)."""

    @property
    def fraction_changed(self) -> float:
        return self.n_changed / self.n_elements if self.n_elements else 0.0


@dataclass(frozen=True)
class CastCheck:
    """How a dtype change relates to correct rounding."""

    source: str
    target: str
    exact: bool
    """Every element equals the round-to-nearest-even conversion of the trusted value."""
    n_mismatched: int
    """Elements that differ from the correctly rounded value."""
    n_beyond_rounding: int
    """Elements farther from the trusted value than half a unit in the last place of the
    wider of the two dtypes' spacing at that value: not explainable by any rounding."""


@dataclass(frozen=True)
class TensorDiff:
    name: str
    status: TensorStatus
    deployed_name: str | None = None
    trusted_dtype: str | None = None
    deployed_dtype: str | None = None
    trusted_shape: tuple[int, ...] | None = None
    deployed_shape: tuple[int, ...] | None = None
    nbytes: int = 0
    delta: ValueDelta | None = None
    where: Localization | None = None
    cast: CastCheck | None = None
    labels: dict[str, Any] = field(default_factory=dict, compare=False)
    """Free-form per-tensor results that later analyses attach (change class, rank ...)."""

    @property
    def is_change(self) -> bool:
        return self.status not in (TensorStatus.IDENTICAL,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status.value,
            "trusted": None
            if self.trusted_dtype is None
            else {"dtype": self.trusted_dtype, "shape": list(self.trusted_shape or ())},
            "deployed": None
            if self.deployed_dtype is None
            else {
                "name": self.deployed_name or self.name,
                "dtype": self.deployed_dtype,
                "shape": list(self.deployed_shape or ()),
            },
        }
        if self.delta is not None:
            out["stats"] = {
                "n_elements": self.delta.n_elements,
                "n_changed": self.delta.n_changed,
                "fraction_changed": self.delta.fraction_changed,
                "max_abs_change": _finite(self.delta.max_abs),
                "rel_l2_change": _finite(self.delta.rel_l2),
            }
        if self.where is not None:
            out["where"] = self.where.to_dict()
        if self.cast is not None:
            out["cast"] = {
                "from": self.cast.source,
                "to": self.cast.target,
                "exact_rne": self.cast.exact,
                "n_mismatched": self.cast.n_mismatched,
                "n_beyond_rounding": self.cast.n_beyond_rounding,
            }
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


def _finite(x: float) -> float | str:
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    return x


# Classes of change for a whole pair, from most benign to most alarming. An analysis
# that proposes a class not listed here ranks with "unexplained change".
CHANGE_CLASSES: tuple[str, ...] = (
    "identical",
    "renamed",
    "cast",
    "equivalent rewrite",
    "conversion",
    "quantization",
    "rounding noise",
    "pruning",
    "low-rank update",
    "full fine-tune",
    "unexplained change",
    "unfaithful transformation",
    "localized edit",
    "prune-activated edit",
    "handcrafted path",
    "graph change",
    "bit-level tampering",
    "replaced subnetwork",
)


def class_rank(name: str) -> int:
    try:
        return CHANGE_CLASSES.index(name)
    except ValueError:
        return CHANGE_CLASSES.index("unexplained change")
