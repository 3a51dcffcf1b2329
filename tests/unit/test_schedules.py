"""Beta schedules and the stage schedule."""

from __future__ import annotations

import pytest

from sed_ray.train.schedules import beta_schedule, schedule_to_dict
from sed_ray.train.stages import StageSchedule, preset_stage


@pytest.mark.parametrize("kind", ["linear", "exponential", "cosine"])
def test_annealing_schedules_go_from_start_to_end_monotonically(kind):
    schedule = beta_schedule({"kind": kind, "start": 1.0, "end": 1e-4, "steps": 100})
    values = [schedule(s) for s in range(0, 130)]
    assert values[0] == pytest.approx(1.0) and values[100] == pytest.approx(1e-4)
    assert values[129] == pytest.approx(1e-4)  # holds at the end
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert beta_schedule(schedule_to_dict(schedule)) == schedule


def test_exponential_is_log_linear():
    schedule = beta_schedule({"kind": "exponential", "start": 1.0, "end": 1e-4, "steps": 4})
    assert [round(schedule(s), 10) for s in range(5)] == [1.0, 0.1, 0.01, 0.001, 0.0001]


def test_constant_and_bad_specs():
    assert beta_schedule({"kind": "constant", "value": 0.5})(1000) == 0.5
    with pytest.raises(ValueError, match="constant, linear, exponential, cosine"):
        beta_schedule({"kind": "sawtooth"})
    with pytest.raises(ValueError, match="valid"):
        beta_schedule({"kind": "linear", "stpes": 5})


def test_alternating_schedule_locates_steps():
    schedule = StageSchedule((preset_stage("stage1", 3), preset_stage("stage2", 2)), rounds=2)
    assert schedule.total_steps == 10 and schedule.boundaries() == [3, 5, 8, 10]
    where = [(p.round, p.stage.name, p.step_in_stage) for p in map(schedule.locate, range(10))]
    assert where[:6] == [(0, "stage1", 0), (0, "stage1", 1), (0, "stage1", 2), (0, "stage2", 0), (0, "stage2", 1),
                         (1, "stage1", 0)]
    assert where[-1] == (1, "stage2", 1)
    assert schedule.locate(10).stage.name == "stage2"


def test_stage_validation_names_the_problem():
    bad = StageSchedule((preset_stage("stage1", 0),), rounds=0)
    problems = " ".join(bad.validate())
    assert "steps must be > 0" in problems and "rounds must be > 0" in problems
    assert preset_stage("stage2", 5).beta_weights(0.3) == {"content": 0.0, "descriptor": 0.3}
