"""Schedules, as registries of named builders: beta (the information-bottleneck weight, driven by the
global step) and the learning rate's decay within a stage.

Each beta schedule is a frozen dataclass with a `kind` name, serialisable with `schedule_to_dict()` and
rebuilt with `beta_schedule(dict)`; after `steps` the value stays at `end`. `beta_for(config)` builds
the run's from its `beta:` section.
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


# Learning-rate decay after warm-up: progress through the rest of the stage (0 -> 1) and the floor ratio
# -> the factor on the stage's peak rate.
LR_DECAYS = {
    "cosine": lambda progress, floor: floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * progress)),
    "linear": lambda progress, floor: 1.0 - (1.0 - floor) * progress,
    "constant": lambda progress, floor: 1.0,
}


def lr_at(stage, step_in_stage: int, warmup: int, decay: str, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then `LR_DECAYS[decay]` to min_ratio * stage.lr by the end of
    the stage (a train.stages.Stage)."""
    if warmup and step_in_stage < warmup:
        return stage.lr * (step_in_stage + 1) / warmup
    progress = min(max(step_in_stage - warmup, 0) / max(stage.steps - warmup, 1), 1.0)
    return stage.lr * LR_DECAYS[decay](progress, min_ratio)


def beta_for(config, total_steps: int):
    """The run's beta schedule from its `beta:` section (a config.BetaSection); annealing over the whole
    run (`total_steps`) unless the section gives its own length."""
    section = config.beta
    if section.kind == "constant":
        return beta_schedule({"kind": "constant", "value": section.value})
    return beta_schedule({"kind": section.kind, "start": section.start, "end": section.end,
                          "steps": section.steps or total_steps})
