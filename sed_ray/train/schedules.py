"""Beta (information-bottleneck weight) schedules as small named objects, driven by the global step.

Each is a frozen dataclass with a `kind` name, serialisable with `to_dict()` and rebuilt with
`beta_schedule(dict)`. After `steps` the value stays at `end`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ConstantBeta:
    kind = "constant"
    value: float = 1e-3

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class _Anneal:
    start: float = 1.0
    end: float = 1e-4
    steps: int = 1000  # steps from start to end; the value holds at `end` afterwards

    def _progress(self, step: int) -> float:
        return min(max(step, 0) / max(self.steps, 1), 1.0)


@dataclass(frozen=True)
class LinearBeta(_Anneal):
    kind = "linear"

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * self._progress(step)


@dataclass(frozen=True)
class ExponentialBeta(_Anneal):
    """Log-linear decay: the paper's 1 -> 1e-4 read as equal ratios per step (the default)."""

    kind = "exponential"

    def __call__(self, step: int) -> float:
        return math.exp(math.log(self.start) + (math.log(self.end) - math.log(self.start)) * self._progress(step))


@dataclass(frozen=True)
class CosineBeta(_Anneal):
    kind = "cosine"

    def __call__(self, step: int) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * self._progress(step)))


BETA_SCHEDULES = {cls.kind: cls for cls in (ConstantBeta, LinearBeta, ExponentialBeta, CosineBeta)}


def beta_schedule(spec: dict):
    """{"kind": "exponential", "start": 1.0, "end": 1e-4, "steps": 5000} -> schedule object."""
    spec = dict(spec)
    kind = spec.pop("kind", "exponential")
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule kind {kind!r}; choose one of: {', '.join(BETA_SCHEDULES)}")
    cls = BETA_SCHEDULES[kind]
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = set(spec) - valid
    if unknown:
        raise ValueError(f"beta schedule {kind!r} has no key(s) {sorted(unknown)}; valid: {sorted(valid)}")
    schedule = cls(**spec)
    if kind == "exponential" and (schedule.start <= 0 or schedule.end <= 0):
        raise ValueError("exponential beta schedule needs start > 0 and end > 0")
    return schedule


def schedule_to_dict(schedule) -> dict:
    return {"kind": schedule.kind, **dataclasses.asdict(schedule)}
