"""The ablation's table and page from prediction files like the ones `sed-ray ablate` writes: cells
paired by seed and utterance, a cell without descriptors left out of BLEU, the page in a real browser."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from browser import BROWSER, MISSING, dump_dom, figures_loaded
from sed_ray.tune.ablate import _tables, _write

LABELS = ["angry", "happy", "neutral", "sad"]


def predictions(path, accuracy: float, seed: int, descriptors: bool):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(24):
        truth = LABELS[i % 4]
        rows.append({"id": f"u{i:02d}", "emotion_true": truth,
                     "emotion_pred": truth if rng.random() < accuracy else LABELS[(i + 1) % 4],
                     "descriptor_ref": "a low slow voice", "descriptor_hyp": "a low voice" if descriptors else None,
                     "nll_own": 10.0 - accuracy, "nll_silence": 12.0, "target_tokens": 4})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_the_table_pairs_cells_and_the_page_renders(tmp_path):
    runs = {}
    for seed in (0, 1):
        runs.setdefault(("reference", "predicted"), {})[seed] = predictions(
            tmp_path / f"ref{seed}.parquet", 0.95, seed, True)
        runs.setdefault(("reference", "ground-truth"), {})[seed] = predictions(
            tmp_path / f"refgt{seed}.parquet", 0.9, seed + 10, True)
        runs.setdefault(("no-descriptors", "predicted"), {})[seed] = predictions(
            tmp_path / f"nod{seed}.parquet", 0.2, seed + 20, False)
    cells = {"reference": {}, "no-descriptors": {}}
    table = _tables(runs, cells, replicates=60)
    _write(tmp_path, table, "descriptors", 2, log=lambda _line: None)
    rows = list(csv.DictReader((tmp_path / "ablation.csv").open()))
    by = {(r["measure"], r["descriptors"], r["cell"]): r for r in rows}
    assert ("bleu4", "predicted", "no-descriptors") not in by and ("bleu4", "predicted", "reference") in by
    assert ("ua", "ground-truth", "reference") in by and ("ua", "ground-truth", "no-descriptors") not in by
    worse = by[("ua", "predicted", "no-descriptors")]
    assert worse["clear"] == "True" and float(worse["diff_high"]) < 0 and worse["seeds"] == "2"
    assert float(by[("listening_gain", "predicted", "reference")]["mean"]) == pytest.approx((12 - 9.05) / 4)
    if BROWSER is None:
        pytest.skip(MISSING)
    dom = dump_dom(tmp_path / "ablation.html", tmp_path / "profile").stdout
    assert figures_loaded(dom) == (1, 1) and "no-descriptors" in dom
