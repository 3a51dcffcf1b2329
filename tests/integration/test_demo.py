"""The shortened demo end to end: synth -> prepare -> tiny base -> Ray + DeepSpeed training -> evaluate."""

from __future__ import annotations

import json

import pytest

from sed_ray.demo import run_demo


def test_quick_demo_runs_end_to_end(tmp_path, ray_cluster):
    lines: list[str] = []
    summary = run_demo(tmp_path / "demo", quick=True, log=lines.append)
    out = tmp_path / "demo"
    assert (out / "corpus" / "manifest.jsonl").exists() and (out / "shards" / "summary.json").exists()
    assert (out / "eval-demo" / "report.html").exists() and (out / "eval-demo" / "metrics.json").exists()
    assert json.loads((out / "summary-demo.json").read_text())["ua"] == summary["ua"]
    assert summary["chance"] == 0.25
    # it learns: emotion recall averaged over classes on held-out voices and sentences, clearly above
    # chance (0.25; about 0.48 measured, see docs/benchmarks.md)
    assert summary["ua"] >= 0.40, summary
    assert summary["wer"] is not None and summary["bleu4"] is not None
    assert summary["listening_gain"] is not None
    # every step prints the command that reruns it alone, and the results table ends the run
    assert sum("rerun alone: sed-ray" in line for line in lines) == 4
    assert "emotion UA (held-out voices)" in lines[-1] and "report:" in lines[-1]

    # rerunning into the same folder reuses finished steps; a different demo there is refused, untouched
    manifest = (out / "corpus" / "manifest.jsonl").read_bytes()
    with pytest.raises(ValueError) as info:
        run_demo(out, quick=False, log=lines.append)
    assert "utterances=320" in str(info.value) and "utterances=1200" in str(info.value) and "--out" in str(info.value)
    assert (out / "corpus" / "manifest.jsonl").read_bytes() == manifest
