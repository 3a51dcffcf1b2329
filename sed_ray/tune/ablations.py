"""The paper's ablations as named grids of cells. A cell is a function of the config the user gives
(the demo corpus's, the paper's) that returns the dotted overrides it changes, one factor at a time
from the reference cell, which is the paper's own path: descriptors in the targets, no descriptor
draft, alternating stages (two rounds of stage 1 then stage 2), beta annealed 1 -> 1e-4.

The cells keep the total training steps of the reference, so a difference is the factor's, not the
budget's."""

from __future__ import annotations

import math
from typing import Callable

from sed_ray.config import TrainConfig

Cell = Callable[[TrainConfig], dict]


def _stages(config: TrainConfig, rounds: int) -> list[dict]:
    """The config's stages (task and lr kept) with their steps spread over `rounds` rounds."""
    total_rounds = config.schedule.rounds
    return [{"preset": s.preset, "steps": max(1, math.ceil(s.steps * total_rounds / rounds)), "lr": s.lr,
             "name": s.name, "task": s.task, "draft_teacher_until": s.draft_teacher_until}
            for s in config.schedule.stages]


def reference(config: TrainConfig) -> dict:
    return {"model.draft_bank_size": 0, "schedule.rounds": 2, "schedule.stages": _stages(config, 2),
            "beta.kind": "exponential", "beta.start": 1.0, "beta.end": 1.0e-4, "beta.steps": None}


def no_descriptors(config: TrainConfig) -> dict:
    stages = [{**s, "task": "joint_no_descriptor"} if s["preset"] == "stage2" else s for s in _stages(config, 2)]
    return {**reference(config), "schedule.stages": stages}


def with_draft(config: TrainConfig) -> dict:
    return {**reference(config), "model.draft_bank_size": 1024}


def one_pass(config: TrainConfig) -> dict:
    return {**reference(config), "schedule.rounds": 1, "schedule.stages": _stages(config, 1)}


def both_branches(config: TrainConfig) -> dict:
    steps = sum(s["steps"] for s in _stages(config, 1))
    lr = config.schedule.stages[-1].lr
    return {**reference(config), "schedule.rounds": 1, "schedule.stages": [{"preset": "both", "steps": steps, "lr": lr}]}


def beta_one(config: TrainConfig) -> dict:
    return {**reference(config), "beta.kind": "constant", "beta.value": 1.0}


def beta_zero(config: TrainConfig) -> dict:
    return {**reference(config), "beta.kind": "constant", "beta.value": 0.0}


REFERENCE = "reference"
GRIDS: dict[str, dict[str, Cell]] = {
    "paper": {REFERENCE: reference, "no-descriptors": no_descriptors, "descriptor-draft": with_draft,
              "one-pass": one_pass, "both-branches": both_branches, "beta-1": beta_one, "beta-0": beta_zero},
    "descriptors": {REFERENCE: reference, "no-descriptors": no_descriptors},  # the smallest question: do they help?
}


def grid_cells(config: TrainConfig, grid: str) -> dict[str, dict]:
    if grid not in GRIDS:
        raise ValueError(f"--grid {grid!r} is not one of {', '.join(GRIDS)}")
    return {name: cell(config) for name, cell in GRIDS[grid].items()}
