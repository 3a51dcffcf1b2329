"""`sed-ray ablate` on the session's real local Ray cluster: the smallest grid (reference, no
descriptors) x 2 seeds of the tiny config, each checkpoint evaluated, the table with intervals and
paired differences, the page in a real browser."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from sed_ray.cli import main
from browser import BROWSER, MISSING, dump_dom, figures_loaded

REPO = Path(__file__).resolve().parents[2]


def test_an_ablation_grid_writes_its_table_with_intervals(synth_shards, ray_cluster, tmp_path):
    tiny = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
    tiny.update({"name": "tiny-ablate", "storage": str(tmp_path / "runs"), "max_failures": 0,
                 "data": {**tiny["data"], "shards": str(synth_shards), "max_batch_size": 8, "window_rows": 64},
                 "schedule": {"rounds": 1, "stages": [{"preset": "stage1", "steps": 2, "lr": 3.0e-3},
                                                      {"preset": "stage2", "steps": 2, "lr": 3.0e-3}]},
                 "scaling": {**tiny["scaling"], "num_workers": 1},
                 "deepspeed": {**tiny["deepspeed"], "enabled": False},  # DeepSpeed through Ray: test_train.py
                 "checkpoint": {"every_steps": 4, "keep": 1}, "logging": {"every_steps": 4, "wandb": False},
                 "validation": {"every_steps": 0, "max_batches": 1, "max_new_tokens": 8},
                 "tune": {"max_concurrent": 2, "space": {}}})
    config = tmp_path / "ablate.yaml"
    config.write_text(yaml.safe_dump(tiny))
    assert main(["ablate", "--config", str(config), "--grid", "descriptors", "--seeds", "2", "--name", "abl",
                 "--replicates", "100", "--actors", "1"]) == 0
    folder = tmp_path / "runs" / "abl"
    rows = list(csv.DictReader((folder / "ablation.csv").open()))
    cells = {(r["measure"], r["descriptors"]): {} for r in rows}
    for r in rows:
        cells[(r["measure"], r["descriptors"])][r["cell"]] = r
    assert set(cells[("ua", "predicted")]) == {"reference", "no-descriptors"}
    assert set(cells[("bleu4", "predicted")]) == {"reference"}  # no descriptor to score without descriptors
    assert set(cells[("ua", "ground-truth")]) == {"reference"}  # the emotion after the reference descriptor
    assert ("listening_gain", "predicted") in cells
    for r in rows:
        assert r["seeds"] == "2" and float(r["low"]) <= float(r["high"]) and float(r["sd"]) >= 0
    paired = cells[("ua", "predicted")]["no-descriptors"]
    assert float(paired["diff_low"]) <= float(paired["diff_high"]) and paired["clear"] in ("True", "False")
    assert cells[("ua", "predicted")]["reference"]["diff"] == ""  # the reference is not compared with itself
    for seed in (0, 1):  # every trained seed was evaluated; the reference cell both ways
        assert (folder / "eval" / "reference" / f"seed{seed}" / "ground-truth.parquet").exists()
        assert (folder / "eval" / "no-descriptors" / f"seed{seed}" / "predicted.parquet").exists()
        assert not (folder / "eval" / "no-descriptors" / f"seed{seed}" / "ground-truth.parquet").exists()

    if BROWSER is None:
        pytest.skip(MISSING)
    dom = dump_dom(folder / "ablation.html", tmp_path / "profile").stdout
    assert figures_loaded(dom) == (1, 1) and "no-descriptors" in dom
