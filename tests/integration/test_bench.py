"""`sed-ray bench step`: the config's per-worker step timed without Ray, beside a naive loop."""

from __future__ import annotations

import json
from pathlib import Path

from sed_ray.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_bench_step_prints_one_json_line_with_the_naive_baseline_beside_it(synth_shards, tmp_path, capsys):
    assert main(["bench", "step", "--config", str(ROOT / "jobs" / "configs" / "tiny.yaml"), "--steps", "2",
                 "--warmup", "1", "--baseline", "naive", f"data.shards={synth_shards}", f"storage={tmp_path}",
                 "data.batch_seconds=16"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    figures = json.loads(lines[-1])
    assert figures["benchmark"] == "step" and "4 x N_llm_non_embedding" in figures["flop_model"]
    for run in ("optimised", "naive"):
        assert figures[run]["steps"] == 2 and figures[run]["samples_per_s"] > 0
        assert figures[run]["llm_tokens_per_s"] > 0 and 0 <= figures[run]["padding_fraction"] < 1
        assert figures[run]["mfu"] is None  # no peak FLOP/s for a CPU
    assert figures["optimised_over_naive"]["samples_per_s"] > 0


def test_bench_step_refuses_a_bad_config_before_building_anything(tmp_path, capsys):
    assert main(["bench", "step", "--config", str(ROOT / "jobs" / "configs" / "tiny.yaml"), "optim.decay=step"]) == 2
    assert "optim.decay: 'step' is not one of" in capsys.readouterr().err
