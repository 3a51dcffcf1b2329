"""`sed-ray tune` on the session's real local Ray cluster: a 4-trial grid of the tiny config (one
worker each) where ASHA stops the trials that fall behind, a driver killed mid-search and relaunched
under the same name (finished trials kept, not rerun), the table, best.yaml (which `sed-ray train` then
runs as is) and the report in a real browser."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sed_ray.cli import main
from browser import BROWSER, MISSING, dump_dom, figures_loaded

REPO = Path(__file__).resolve().parents[2]
LRS = [3.0e-3, 2.0e-3, 1.0e-8, 1.0e-9]  # the last two barely train: ASHA must stop at least one of them


def search_yaml(folder: Path, shards: Path) -> Path:
    tiny = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
    tiny.update({"name": "tiny-tune", "storage": str(folder / "runs"), "max_failures": 0,
                 "data": {**tiny["data"], "shards": str(shards), "max_batch_size": 8, "window_rows": 64},
                 "schedule": {"rounds": 1, "stages": [{"preset": "stage2", "steps": 4, "lr": 3.0e-3}]},
                 "optim": {**tiny["optim"], "warmup_steps": 0},
                 "scaling": {**tiny["scaling"], "num_workers": 1},
                 "deepspeed": {**tiny["deepspeed"], "enabled": False},  # DeepSpeed through Ray: test_train.py
                 "checkpoint": {"every_steps": 2, "keep": 1}, "logging": {"every_steps": 2, "wandb": False},
                 "validation": {"every_steps": 2, "max_batches": 1, "max_new_tokens": 8},
                 "tune": {"metric": "val_ce", "mode": "min", "trials": 1, "max_concurrent": 2,
                          "space": {"schedule.stages.0.lr": {"grid": LRS}}}})
    tiny["model"] = {**tiny["model"], "draft_bank_size": 0}
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return path


def terminated_trials(folder: Path) -> set[str]:
    """Trials Tune's saved state marks finished (what a relaunch keeps)."""
    done = set()
    for state in glob.glob(str(folder / "experiment_state-*.json")):
        try:
            trials = json.loads(Path(state).read_text())["trial_data"]
        except (json.JSONDecodeError, KeyError, OSError):
            continue  # being rewritten
        for trial_json, _ in trials:
            trial = json.loads(trial_json)
            if trial["status"] == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def test_a_killed_search_resumes_and_writes_its_table_best_config_and_report(synth_shards, ray_cluster, tmp_path):
    config = search_yaml(tmp_path, synth_shards)
    folder = tmp_path / "runs" / "grid"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
           "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "sed_ray.cli", "tune", "--config", str(config), "--name", "grid"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 600
    while not terminated_trials(folder) and driver.poll() is None and time.time() < deadline:
        time.sleep(2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-search: Tune's trial actors die with it
    driver.wait()
    finished = terminated_trials(folder)
    assert finished, "no trial finished before the driver was killed"
    lines_before = {t: (folder / "runs" / t / "metrics.jsonl").read_text() for t in finished}

    assert main(["tune", "--config", str(config), "--name", "grid"]) == 0  # relaunched: resumes

    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert sorted(float(r["schedule.stages.0.lr"]) for r in rows) == sorted(LRS)
    by_id = {r["trial"]: r for r in rows}
    for trial in finished:  # kept, not rerun: its training run was not touched again
        assert (folder / "runs" / trial / "metrics.jsonl").read_text() == lines_before[trial]
        assert by_id[trial]["status"] in ("finished", "stopped early")
    statuses = [r["status"] for r in rows]
    assert "stopped early" in statuses and "failed" not in statuses, rows
    assert all(r["val_ce"] for r in rows)
    best = min(rows, key=lambda r: float(r["val_ce"]))
    assert float(best["schedule.stages.0.lr"]) in LRS[:2]
    # ASHA is asynchronous: the second good trial to reach a rung can be stopped there by the first, and its
    # early objective can still be the lowest in the table (seen once in four suites). What ASHA does promise:
    # the first trial to report at each rung is never stopped, so a good learning rate runs to the end.
    assert any(r["status"] == "finished" and float(r["schedule.stages.0.lr"]) in LRS[:2] for r in rows), rows

    best_config = yaml.safe_load((folder / "best.yaml").read_text())
    assert best_config["schedule"]["stages"][0]["lr"] == float(best["schedule.stages.0.lr"])
    assert best_config["model"]["preset"] is None and Path(best_config["model"]["llm"]).is_relative_to(folder)
    assert main(["train", "--local", "--config", str(folder / "best.yaml")]) == 0  # as is (Ray Train: the trials)
    assert list((tmp_path / "runs" / "grid-best" / "checkpoints").glob("step-*"))

    if BROWSER is None:
        pytest.skip(MISSING)
    dom = dump_dom(folder / "report.html", tmp_path / "profile").stdout
    assert figures_loaded(dom) == (2, 2)  # lr vs objective, objective over reports
    assert dom.count("<tr class=") == len(LRS) and "stopped early" in dom
