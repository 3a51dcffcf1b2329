"""Bootstrap intervals over seeds and utterances, and paired differences against the reference cell."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from sed_ray.tune.intervals import SeedPredictions, summarise, unweighted_accuracy


def seed_run(truth, predicted, own=None):
    n = len(truth)
    own = np.full(n, 10.0) if own is None else own
    return SeedPredictions(truth=np.array(truth), predicted=np.array(predicted),
                           references=[["a low slow voice"]] * n, hypotheses=[["a low slow voice"]] * n,
                           nll_own=own, nll_silence=np.full(n, 12.0), tokens=np.full(n, 4.0))


def test_ua_is_balanced_accuracy():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    assert unweighted_accuracy(seed_run(truth, predicted), np.arange(60)) == pytest.approx(
        balanced_accuracy_score(truth, predicted))


def test_a_clearly_worse_cell_is_clear_and_an_identical_one_is_not():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, 80)
    good = [seed_run(truth, np.where(rng.random(80) < 0.9, truth, (truth + 1) % 4)) for _ in range(3)]
    bad = [seed_run(truth, rng.integers(0, 4, 80)) for _ in range(3)]
    cells = {"reference": good, "worse": bad, "same": good}
    summary = summarise(cells, "ua", "reference", replicates=300)
    reference, worse, same = summary["reference"], summary["worse"], summary["same"]
    assert reference["low"] <= reference["mean"] <= reference["high"] and reference["mean"] > 0.8
    assert worse["clear"] and worse["diff_high"] < 0 and worse["diff"] == pytest.approx(worse["mean"] - reference["mean"])
    assert not same["clear"] and same["diff"] == 0 and same["diff_low"] == 0 == same["diff_high"]  # paired: identical


def test_listening_gain_and_bleu_are_summarised_and_a_missing_measure_is_none():
    truth = np.arange(12) % 4
    runs = [seed_run(truth, truth, own=np.full(12, 11.0)) for _ in range(2)]
    summary = summarise({"reference": runs}, "listening_gain", "reference", replicates=50)
    assert summary["reference"]["mean"] == pytest.approx((12.0 - 11.0) / 4.0)
    assert summarise({"reference": runs}, "bleu4", "reference", replicates=20)["reference"]["mean"] == pytest.approx(1.0, abs=1e-6)
    silent = [SeedPredictions(truth, truth, None, None, None, None, None)] * 2
    assert summarise({"reference": silent}, "bleu4", "reference", replicates=5)["reference"]["mean"] is None
