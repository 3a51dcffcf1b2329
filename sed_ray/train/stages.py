"""Training stages as data: what each stage trains, on which task, for how long; repeated in rounds.

The paper's recipe: stage 1 (ASR on the content branch, descriptor branch frozen), then stage 2 (the
joint emotion + descriptor + ASR task on the descriptor branch, content branch frozen), alternated for
R rounds. `both` trains every branch at once: the paper's weaker baseline, kept for ablations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from sed_ray.model.prompt import TASKS
from sed_ray.model.speech_llm import TRAINABLE_GROUPS


@dataclass(frozen=True)
class Stage:
    name: str
    task: str  # a prompt task: asr, joint, joint_no_descriptor
    trains: tuple[str, ...]  # trainable groups (model.speech_llm.TRAINABLE_GROUPS)
    steps: int  # optimiser steps per round
    lr: float = 1e-4  # peak learning rate of this stage
    # With a descriptor draft (model/draft.py): the share of rows whose speaking-style slot holds the
    # reference descriptor instead of the draft's guess falls linearly from 1 to 0 over this fraction of
    # the stage, so the LLM learns to read the slot before the draft can fill it. 0 = never.
    draft_teacher_until: float = 0.5

    def validate(self) -> list[str]:
        problems = []
        if self.task not in TASKS:
            problems.append(f"stage {self.name!r}: unknown task {self.task!r} (valid: {', '.join(TASKS)})")
        bad = set(self.trains) - set(TRAINABLE_GROUPS)
        if bad:
            problems.append(f"stage {self.name!r}: unknown trainable group(s) {sorted(bad)} "
                            f"(valid: {', '.join(TRAINABLE_GROUPS)})")
        if not self.trains:
            problems.append(f"stage {self.name!r}: trains nothing; list at least one group")
        if self.steps <= 0:
            problems.append(f"stage {self.name!r}: steps must be > 0 (got {self.steps})")
        if self.lr <= 0:
            problems.append(f"stage {self.name!r}: lr must be > 0 (got {self.lr})")
        if not 0.0 <= self.draft_teacher_until <= 1.0:
            problems.append(f"stage {self.name!r}: draft_teacher_until is a fraction of the stage, 0 to 1 "
                            f"(got {self.draft_teacher_until})")
        return problems

    def draft_teacher_share(self, step_in_stage: int) -> float:
        """The expected share of rows given the reference descriptor in the draft's place at this step."""
        if self.draft_teacher_until <= 0:
            return 0.0
        return max(0.0, 1.0 - step_in_stage / (self.draft_teacher_until * self.steps))

    def beta_weights(self, beta: float) -> dict[str, float]:
        """beta for each branch this stage trains; a frozen branch's KL carries no gradient, so 0."""
        return {b: (beta if f"{b}_block" in self.trains else 0.0) for b in ("content", "descriptor")}


STAGE_PRESETS = {
    "stage1": dict(task="asr", trains=("content_block", "content_adapter", "lora")),
    "stage2": dict(task="joint", trains=("descriptor_block", "descriptor_adapter", "descriptor_draft", "lora")),
    "both": dict(task="joint", trains=TRAINABLE_GROUPS),
}


def preset_stage(preset: str, steps: int, lr: float = 1e-4, name: str | None = None) -> Stage:
    if preset not in STAGE_PRESETS:
        raise ValueError(f"unknown stage preset {preset!r}; choose one of: {', '.join(STAGE_PRESETS)}")
    return Stage(name=name or preset, steps=steps, lr=lr, **STAGE_PRESETS[preset])


def schedule_for(config) -> "StageSchedule":
    """The run's stage schedule from its `schedule:` section (a config.ScheduleSection of StageSections)."""
    stages = []
    for section in config.schedule.stages:
        stage = preset_stage(section.preset, section.steps, section.lr, section.name or section.preset)
        stages.append(replace(stage, task=section.task or stage.task, draft_teacher_until=section.draft_teacher_until))
    return StageSchedule(tuple(stages), config.schedule.rounds)


@dataclass(frozen=True)
class Position:
    """Where a global step falls in the schedule."""

    index: int  # position in the expanded list of (round, stage)
    round: int
    stage: Stage
    step_in_stage: int


@dataclass(frozen=True)
class StageSchedule:
    stages: tuple[Stage, ...]
    rounds: int = 1

    def validate(self) -> list[str]:
        problems = [p for s in self.stages for p in s.validate()]
        if not self.stages:
            problems.append("the stage schedule is empty")
        if self.rounds <= 0:
            problems.append(f"rounds must be > 0 (got {self.rounds})")
        return problems

    def expanded(self) -> list[tuple[int, Stage]]:
        return [(r, s) for r in range(self.rounds) for s in self.stages]

    @property
    def total_steps(self) -> int:
        return self.rounds * sum(s.steps for s in self.stages)

    def locate(self, global_step: int) -> Position:
        """The stage that step `global_step` (0-based) belongs to; past the end -> the last stage."""
        remaining = global_step
        expanded = self.expanded()
        for index, (rnd, stage) in enumerate(expanded):
            if remaining < stage.steps:
                return Position(index, rnd, stage, remaining)
            remaining -= stage.steps
        rnd, stage = expanded[-1]
        return Position(len(expanded) - 1, rnd, stage, stage.steps)

    def boundaries(self) -> list[int]:
        """Global steps at which a stage ends (checkpoint points)."""
        out, total = [], 0
        for _, stage in self.expanded():
            total += stage.steps
            out.append(total)
        return out

    def to_dict(self) -> dict:
        return {"rounds": self.rounds, "stages": [asdict(s) for s in self.stages]}
