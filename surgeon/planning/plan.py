"""A Plan: what to cut, as a frozen, JSON-serialisable value.

A plan names tensors by their qualified names and lists the indices to keep along each sliced
dimension, plus the module attributes to rewrite. Applying it needs no tracing, so it can be
saved, diffed, reviewed and replayed on another copy of the same architecture.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..slicing.edits import AttrUpdate, Slice

__all__ = ["Plan", "Slice", "AttrUpdate", "Decision"]

FORMAT = 1


def _runs(idx: tuple[int, ...]) -> list[list[int]]:
    """[[start, stop], ...] runs of consecutive indices (compact JSON)."""
    runs: list[list[int]] = []
    for i in idx:
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def _unruns(runs: list[list[int]]) -> tuple[int, ...]:
    return tuple(i for a, b in runs for i in range(a, b))


@dataclass(frozen=True)
class Decision:
    """What the plan does to one group."""

    group: int
    kind: str
    units: int
    kept: int
    tensors: tuple[str, ...]
    reason: str | None = None  # why nothing was removed, if the group could not be pruned


@dataclass(frozen=True)
class Plan:
    """Frozen description of a structural pruning; see :func:`surgeon.apply`."""

    model: str
    target: float
    metric: str
    criterion: str
    round_to: int | None
    cost_before: float
    cost_after: float  # the planner's estimate, in ``metric`` units
    slices: tuple[Slice, ...] = ()
    attrs: tuple[AttrUpdate, ...] = ()
    decisions: tuple[Decision, ...] = ()
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # original shapes of sliced tensors
    extra: tuple[tuple[str, Any], ...] = field(default=())
    config: tuple[AttrUpdate, ...] = ()  # fields of a Hugging Face config ("config", field, old, new)
    drops: tuple[str, ...] = ()  # whole layers removed from their ModuleList / Sequential

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["format"] = FORMAT
        d["slices"] = [dict(tensor=s.tensor, dim=s.dim, size=s.size, keep=_runs(s.keep)) for s in self.slices]
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        if d.pop("format", None) != FORMAT:
            raise ValueError(f"unsupported plan format; this surgeon reads format {FORMAT}")
        d["slices"] = tuple(Slice(s["tensor"], s["dim"], s["size"], _unruns(s["keep"])) for s in d["slices"])
        d["attrs"] = tuple(AttrUpdate(**a) for a in d["attrs"])
        d["decisions"] = tuple(Decision(**{**x, "tensors": tuple(x["tensors"])}) for x in d["decisions"])
        d["shapes"] = tuple((n, tuple(s)) for n, s in d["shapes"])
        d["extra"] = tuple(tuple(e) for e in d.get("extra", ()))
        d["config"] = tuple(AttrUpdate(**a) for a in d.get("config", ()))
        d["drops"] = tuple(d.get("drops", ()))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_json(Path(path).read_text())

    # -- reading ---------------------------------------------------------------------------------
    @property
    def ratio(self) -> float:
        return self.cost_after / self.cost_before if self.cost_before else 1.0

    def summary(self) -> str:
        """Cost before and after and one line per group that changes."""
        lines = [
            f"Plan for {self.model}: {self.metric} {self.cost_before:,.0f} -> {self.cost_after:,.0f} "
            f"({self.ratio:.3f} of the original; target {self.target}), criterion {self.criterion}"
            + (f", round_to {self.round_to}" if self.round_to else ""),
        ]
        extra = dict(self.extra)
        for key in ("flops_before", "flops_after", "params_before", "params_after"):
            if key in extra:
                lines.append(f"  {key}: {extra[key]:,.0f}")
        changed = [d for d in self.decisions if d.kept < d.units]
        kept_whole = len(self.decisions) - len(changed)
        lines.append(f"  {len(changed)} groups shrink, {kept_whole} kept whole")
        for d in changed:
            names = ", ".join(d.tensors[:3]) + (" ..." if len(d.tensors) > 3 else "")
            lines.append(f"  group {d.group:>4} {d.kind:<7} {d.units:>5} -> {d.kept:<5} {names}")
        return "\n".join(lines)
