"""The config tree: every shipped config loads; overrides win; mistakes name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sed_ray.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.stage_schedule().validate() == []
    assert config.stage_schedule().total_steps > 0
    assert 0 < config.beta_schedule()(0) <= 1.0


def test_overrides_win_and_types_are_checked():
    config = load_config(CONFIGS[0], ["optim.grad_clip=0.5", "model.lora.rank=4", "scaling.num_workers=3"])
    assert config.optim.grad_clip == 0.5 and config.model.lora.rank == 4 and config.scaling.num_workers == 3
    with pytest.raises(ValueError, match="unknown config key 'model.lora.rnk'"):
        load_config(CONFIGS[0], ["model.lora.rnk=4"])
    with pytest.raises(ValueError, match="optim.grad_clip: expected float"):
        load_config(CONFIGS[0], ["optim.grad_clip=high"])
    with pytest.raises(ValueError, match="must look like"):
        load_config(CONFIGS[0], ["optim.grad_clip"])


def test_validate_collects_every_problem(tmp_path):
    config = load_config(CONFIGS[0], [f"data.shards={tmp_path}", "deepspeed.zero_stage=5", "optim.decay=step",
                                      "schedule.stages=[{preset: stage3, steps: 10}]"])
    with pytest.raises(ValueError) as info:
        config.validate()
    message = str(info.value)
    for fragment in ("deepspeed.zero_stage", "optim.decay", "schedule.stages[0].preset", "data.shards"):
        assert fragment in message
