"""The config tree: every shipped config loads; overrides win; mistakes name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sed_ray.config import load_config
from sed_ray.train.plan import problems, validate
from sed_ray.train.schedules import beta_for
from sed_ray.train.stages import schedule_for

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path):
    config = load_config(path)
    found = problems(config, check_sources=False)
    if config.model.preset == "paper-random":  # bench-8b.yaml: for `sed-ray bench step`, refused by training
        assert len(found) == 1 and "sed-ray bench step" in found[0]
    else:
        assert found == []
    assert schedule_for(config).total_steps > 0
    assert 0 < beta_for(config, schedule_for(config).total_steps)(0) <= 1.0


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
                                      "schedule.stages=[{preset: stage3, steps: 10}]", "model.draft_bank_size=-1"])
    with pytest.raises(ValueError) as info:
        validate(config)
    message = str(info.value)
    for fragment in ("deepspeed.zero_stage", "optim.decay", "schedule.stages[0].preset", "data.shards",
                     "model.draft_bank_size"):
        assert fragment in message


def test_model_checkpoints_the_workers_could_not_load_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text("{}")
    config = load_config(CONFIGS[0], [f"data.shards={tmp_path}", "model.preset=null", "model.encoder=/no/such/folder",
                                      f"model.llm={tmp_path / 'llm'}"])
    with pytest.raises(ValueError) as info:
        validate(config)
    message = str(info.value)
    assert "model.encoder: /no/such/folder is not a model folder" in message and "model.llm" not in message
    hub = load_config(CONFIGS[0], [f"data.shards={tmp_path}", "model.preset=null", "model.encoder=sed-ray-tests/no-such-model",
                                   f"model.llm={tmp_path / 'llm'}"])
    with pytest.raises(ValueError, match="'sed-ray-tests/no-such-model' is not in the local Hugging Face cache"):
        validate(hub)


def test_resume_conflicts_name_what_changed_and_allow_operational_changes():
    import json

    from sed_ray.train.run_folder import resume_conflicts

    tiny = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"
    saved = json.loads(json.dumps(load_config(tiny).to_dict()))
    operational = json.loads(json.dumps(load_config(tiny, [
        "scaling.num_workers=4", "checkpoint.every_steps=7", "logging.every_steps=3", "validation.max_batches=9",
        "deepspeed.zero_stage=3", "max_failures=0", "name=other", "storage=/elsewhere"]).to_dict()))
    assert resume_conflicts(saved, operational) == []
    changed = json.loads(json.dumps(load_config(tiny, [
        "seed=3", "optim.weight_decay=0.5", "schedule.stages=[{preset: stage1, steps: 9, lr: 0.003}]",
        "model.lora.rank=4", "data.batch_seconds=5"]).to_dict()))
    conflicts = resume_conflicts(saved, changed)
    keys = [c.split(":")[0] for c in conflicts]
    assert keys == ["data.batch_seconds", "model.lora.rank", "optim.weight_decay", "schedule.stages", "seed"]
    assert "'seed': 0" not in conflicts[-1] and conflicts[-1] == "seed: 0 -> 3"
    # a key only one side has (a config saved by another version) is not a conflict
    older = {k: v for k, v in saved.items() if k != "beta"}
    assert resume_conflicts(older, saved) == []


def test_num_workers_takes_a_count_or_an_elastic_range():
    from sed_ray.config import load_config
    from sed_ray.train.checkpoint import TrainPosition
    from sed_ray.train.loop import batches_to_skip

    config = load_config(None, ["scaling.num_workers=[2, 4]"])
    assert config.scaling.num_workers == (2, 4) and (config.scaling.min_workers, config.scaling.max_workers) == (2, 4)
    assert not config.problems()
    for bad in ("[4, 2]", "[0, 2]", "[1, 2, 3]", "[]", "0"):
        problems = load_config(None, [f"scaling.num_workers={bad}"]).problems()
        assert any(p.startswith("scaling.num_workers:") for p in problems), (bad, problems)
    assert load_config(None, ["scaling.start_timeout_s=15"]).scaling.start_timeout_s == 15
    for bad in ("0", "-5"):
        problems = load_config(None, [f"scaling.start_timeout_s={bad}"]).problems()
        assert any(p.startswith("scaling.start_timeout_s:") for p in problems), (bad, problems)
    # a resume on another number of workers skips the batches the old group consumed, divided over the new one
    assert batches_to_skip(TrainPosition(batches_in_epoch=6, world_size=2), 2) == 6
    assert batches_to_skip(TrainPosition(batches_in_epoch=6, world_size=2), 3) == 4
    assert batches_to_skip(TrainPosition(batches_in_epoch=6, world_size=0), 3) == 6  # an older checkpoint
