"""Mean, spread and 95 % bootstrap intervals of evaluation metrics over seeds and utterances, and paired
differences against a reference cell.

Every cell was trained with the same seeds and evaluated on the same utterances, so a bootstrap
replicate draws seeds and utterances once (with replacement) and applies the same draw to every cell:
the differences are paired by seed and by utterance. A replicate's value is the metric of each drawn
seed on the drawn utterances, averaged over the drawn seeds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SeedPredictions:
    """One trained seed's predictions on the test utterances, in a fixed utterance order."""

    truth: np.ndarray  # label index per utterance
    predicted: np.ndarray
    references: list[list[str]] | None  # PTB-tokenised reference descriptor per utterance (None: not scored)
    hypotheses: list[list[str]] | None
    nll_own: np.ndarray | None  # listening check, nats per utterance
    nll_silence: np.ndarray | None
    tokens: np.ndarray | None


def unweighted_accuracy(p: SeedPredictions, picks: np.ndarray) -> float:
    truth, predicted = p.truth[picks], p.predicted[picks]
    recalls = [np.mean(predicted[truth == c] == c) for c in np.unique(truth)]
    return float(np.mean(recalls))


def weighted_accuracy(p: SeedPredictions, picks: np.ndarray) -> float:
    return float(np.mean(p.truth[picks] == p.predicted[picks]))


def bleu4(p: SeedPredictions, picks: np.ndarray) -> float | None:
    if p.references is None:
        return None
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {j: p.references[u] for j, u in enumerate(picks)}
    res = {j: p.hypotheses[u] for j, u in enumerate(picks)}
    return float(Bleu(4).compute_score(gts, res, verbose=0)[0][3])


def listening_gain(p: SeedPredictions, picks: np.ndarray) -> float | None:
    """Nats per target token the utterance's own audio saves over same-length silence."""
    if p.nll_own is None:
        return None
    tokens = p.tokens[picks].sum()
    return float((p.nll_silence[picks].sum() - p.nll_own[picks].sum()) / max(tokens, 1))


METRICS = {"ua": unweighted_accuracy, "wa": weighted_accuracy, "bleu4": bleu4,
           "listening_gain": listening_gain}


def summarise(cells: dict[str, list[SeedPredictions]], metric: str, reference: str,
              replicates: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per cell: mean and sd over seeds (all utterances), a 95 % bootstrap interval over seeds and
    utterances, and (other cells) the paired difference against `reference` with its interval."""
    fn = METRICS[metric]
    seeds = min(len(runs) for runs in cells.values())
    utterances = len(next(iter(cells.values()))[0].truth)
    full = np.arange(utterances)
    values = {cell: [fn(run, full) for run in runs[:seeds]] for cell, runs in cells.items()}
    rng = np.random.default_rng(seed)
    draws = [(rng.integers(0, seeds, seeds), rng.integers(0, utterances, utterances)) for _ in range(replicates)]
    scored = [cell for cell, v in values.items() if None not in v]
    boot = {cell: np.array([np.mean([fn(cells[cell][k], picks) for k in ks]) for ks, picks in draws])
            for cell in scored}
    out = {}
    for cell, v in values.items():
        if cell not in boot:
            out[cell] = {"mean": None, "sd": None, "low": None, "high": None}
            continue
        row = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
               "low": float(np.percentile(boot[cell], 2.5)), "high": float(np.percentile(boot[cell], 97.5))}
        if cell != reference and reference in boot:
            diff = boot[cell] - boot[reference]
            row |= {"diff": float(np.mean(np.array(v) - np.array(values[reference]))),
                    "diff_low": float(np.percentile(diff, 2.5)), "diff_high": float(np.percentile(diff, 97.5))}
            row["clear"] = bool(row["diff_low"] > 0 or row["diff_high"] < 0)  # the interval excludes 0
        out[cell] = row
    return out
