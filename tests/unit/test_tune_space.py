"""The search space is checked before any trial starts, each problem naming its key; a trial's values
become a complete training config."""

from __future__ import annotations

import json

from pathlib import Path

import pytest

from sed_ray.config import load_config
from sed_ray.tune.space import apply_params, space_problems, trial_config

TINY = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"


def config_with(space: dict, **tune):
    config = load_config(TINY)
    config.tune.space = space
    for key, value in tune.items():
        setattr(config.tune, key, value)
    return config


def test_a_good_space_has_no_problems_and_its_values_land_in_the_config():
    config = config_with({"beta.end": {"loguniform": [1e-5, 1e-2]}, "model.lora.rank": {"choice": [8, 16]},
                          "schedule.stages.1.lr": {"loguniform": [1e-4, 3e-3]}, "beta.kind": {"grid": ["linear", "cosine"]},
                          "model.adapter_hidden": {"randint": [64, 257]}}, searcher="random")
    assert space_problems(config) == []
    trial = trial_config(config, {"beta.end": 3e-4, "model.lora.rank": 8, "schedule.stages.1.lr": 1e-3})
    assert trial.beta.end == 3e-4 and trial.model.lora.rank == 8
    assert trial.schedule.stages[1].lr == 1e-3 and trial.schedule.stages[0].lr == config.schedule.stages[0].lr
    assert trial.tune.space == {}  # a trial is a plain training config


@pytest.mark.parametrize("space, tune, named", [
    ({"beta.end": {"loguniform": [1e-2, 1e-5]}}, {}, "tune.space.beta.end: loguniform is an empty range"),
    ({"beta.end": {"loguniform": [0, 1e-2]}}, {}, "tune.space.beta.end: loguniform needs low > 0"),
    ({"beta.ending": {"uniform": [0.1, 0.2]}}, {}, "tune.space.beta.ending: unknown key 'ending' under beta"),
    ({"beta.end": {"normal": [0, 1]}}, {}, "tune.space.beta.end: unknown distribution 'normal'"),
    ({"beta.kind": {"choice": ["exponential", "sigmoid"]}}, {}, "tune.space.beta.kind='sigmoid' makes an invalid config"),
    ({"model.lora.rank": {"choice": []}}, {}, "tune.space.model.lora.rank: choice takes a non-empty list"),
    ({"schedule.stages.5.lr": {"uniform": [1e-4, 1e-3]}}, {}, "tune.space.schedule.stages.5.lr: schedule.stages is a list of 2"),
    ({"model.lora.rank": {"randint": [4.5, 16]}}, {}, "tune.space.model.lora.rank: randint takes two integers"),
    ({"beta.end": {"loguniform": [1e-5, 1e-2]}}, {"metric": "val_bleu"}, "tune.metric: the training never reports 'val_bleu'"),
    ({"beta.end": {"loguniform": [1e-5, 1e-2]}}, {"mode": "best"}, "tune.mode: 'best' is not one of max, min"),
    ({"beta.kind": {"grid": ["linear", "cosine"]}}, {"searcher": "optuna"}, "tune.searcher: optuna cannot search grid keys"),
    ({}, {}, "tune.space: list at least one key"),
])
def test_a_bad_space_is_refused_naming_the_key(space, tune, named):
    found = space_problems(config_with(space, **tune))
    assert any(named in problem for problem in found), found


def test_val_ua_is_refused_when_no_stage_scores_the_emotion():
    config = config_with({"beta.end": {"loguniform": [1e-5, 1e-2]}})
    config.schedule.stages = config.schedule.stages[:1]  # stage1 only: ASR
    assert any("never reports 'val_ua'" in p for p in space_problems(config))


def test_apply_params_indexes_lists_and_leaves_the_input_alone():
    tree = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    assert apply_params(tree, {"a.b.1.c": 5}) == {"a": {"b": [{"c": 1}, {"c": 5}]}}
    assert tree["a"]["b"][1]["c"] == 2


def test_the_cli_refuses_a_bad_space_before_anything_starts(tmp_path, capsys):
    from sed_ray.cli import main

    rc = main(["tune", "--config", str(TINY), f"storage={tmp_path / 'runs'}",
               "tune.space={beta.end: {loguniform: [1.0e-2, 1.0e-5]}, model.lora.rnk: {choice: [8]}}"])
    err = capsys.readouterr().err
    assert rc == 2 and "tune.space.beta.end: loguniform is an empty range" in err
    assert "tune.space.model.lora.rnk: unknown key 'rnk' under model.lora" in err
    assert not (tmp_path / "runs").exists()  # no search folder, no base, no Ray


def test_the_cli_refuses_a_bad_ablation_before_anything_starts(tmp_path, capsys):
    from sed_ray.cli import main

    rc = main(["ablate", "--config", str(TINY), "--seeds", "1", "--actors", "0", "--cpus-per-actor", "0",
               f"storage={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "--seeds: at least 2" in err
    assert "--actors: must be >= 1 (got 0)" in err and "--cpus-per-actor: must be > 0 (got 0.0)" in err
    assert not (tmp_path / "runs").exists()  # no search folder, no base, no Ray


@pytest.mark.parametrize("base", ["tiny.yaml", "paper.yaml"])
def test_every_ablation_cell_makes_a_valid_config_with_the_reference_budget(base):
    from sed_ray.train.plan import problems
    from sed_ray.train.stages import schedule_for
    from sed_ray.tune.ablations import GRIDS, grid_cells

    config = load_config(TINY.parent / base)
    cells = grid_cells(config, "paper")
    assert list(cells) == list(GRIDS["paper"])
    made = {name: trial_config(config, overrides) for name, overrides in cells.items()}
    assert all(problems(c, check_sources=False) == [] for c in made.values())
    budget = schedule_for(made["reference"]).total_steps
    assert all(abs(schedule_for(c).total_steps - budget) <= len(c.schedule.stages) for c in made.values())
    reference = made["reference"]
    assert reference.model.draft_bank_size == 0 and reference.schedule.rounds == 2
    assert (reference.beta.kind, reference.beta.start, reference.beta.end) == ("exponential", 1.0, 1e-4)
    assert made["descriptor-draft"].model.draft_bank_size > 0 and made["one-pass"].schedule.rounds == 1
    assert schedule_for(made["no-descriptors"]).stages[-1].task == "joint_no_descriptor"
    assert [s.preset for s in made["both-branches"].schedule.stages] == ["both"]
    assert (made["beta-0"].beta.kind, made["beta-0"].beta.value) == ("constant", 0.0)


def test_a_relaunch_must_ask_for_the_same_search(tmp_path):
    from sed_ray.tune.search import _record_or_match

    config = config_with({"beta.end": {"loguniform": [1e-5, 1e-2]}})
    _record_or_match(tmp_path / "s", config, "s")
    _record_or_match(tmp_path / "s", config, "s")  # the same search: resumes
    recorded = json.loads((tmp_path / "s" / "search.json").read_text())
    del recorded["scaling"]["resize_check_s"]  # written by an older sed-ray: a key it did not know is no change
    (tmp_path / "s" / "search.json").write_text(json.dumps(recorded))
    _record_or_match(tmp_path / "s", config, "s")
    config.tune.space = {"beta.end": {"loguniform": [1e-6, 1e-2]}}
    with pytest.raises(ValueError, match="started with another config \\(differs in: tune.space.beta.end.loguniform\\)"):
        _record_or_match(tmp_path / "s", config, "s")
