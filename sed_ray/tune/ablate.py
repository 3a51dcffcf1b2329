"""`sed-ray ablate`: a grid of ablation cells x seeds on the Tune machinery (one shared frozen base),
each checkpoint evaluated on the test split, emotion scored after the model's own descriptors and after
the reference ones; then a table per measure with mean, sd and a 95 % bootstrap interval over seeds and
utterances, and paired differences against the reference cell (CSV, console, HTML with a figure).

Relaunching with the same name resumes: finished trials are kept, finished evaluations reused."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import replace
from pathlib import Path

import numpy as np

from sed_ray.config import InferenceOptions, TrainConfig
from sed_ray.eval.report import FIGURES_LOADED_SCRIPT, figure_png, figures_html
from sed_ray.files import atomic_write, atomic_write_text
from sed_ray.model.prompt import get_task
from sed_ray.train.plan import problems
from sed_ray.train.stages import schedule_for
from sed_ray.tune.ablations import REFERENCE, grid_cells
from sed_ray.tune.intervals import METRICS, SeedPredictions, summarise
from sed_ray.tune.space import trial_config

SOURCES = {"predicted": "after its own descriptor", "ground-truth": "after the reference descriptor"}
# (metric, descriptor source) pairs reported; the reference-descriptor source only for emotion
MEASURES = [("ua", "predicted"), ("wa", "predicted"), ("bleu4", "predicted"), ("listening_gain", "predicted"),
            ("ua", "ground-truth"), ("wa", "ground-truth")]


def cell_problems(config: TrainConfig, cells: dict[str, dict], seeds: list[int]) -> list[str]:
    found = []
    for cell, overrides in cells.items():
        try:
            bad = problems(trial_config(config, {**overrides, "seed": seeds[0]}), check_sources=False)
        except ValueError as exc:
            bad = [str(exc)]
        found += [f"cell {cell}: {p}" for p in bad]
    return found


def ablate(config: TrainConfig, name: str, grid: str = "paper", seeds: int = 3, split: str = "test",
           replicates: int = 1000, reference_descriptors: bool = True, pool: InferenceOptions = InferenceOptions(),
           log=print) -> dict:
    """`pool`: how the evaluations' model replicas are sized (its actors, gpus_per_actor, cpus_per_actor);
    the rest of each evaluation's options follow from its cell."""
    from sed_ray.tune.search import run_search, search_dir

    cells = grid_cells(config, grid)
    seed_values = [config.seed + k for k in range(seeds)]
    found = cell_problems(config, cells, seed_values) + ([] if seeds >= 2 else ["--seeds: at least 2 for a spread"])
    found += [f"--{p.replace('_', '-')}" for p in pool.problems()]
    if found:
        raise ValueError("invalid ablation (nothing was started):\n  - " + "\n  - ".join(found))
    search = replace(config, tune=replace(config.tune, space={"seed": {"grid": seed_values}}, metric="val_ce",
                                          mode="min", trials=1, searcher="random", scheduler="fifo"))
    log(f"[ablate] grid {grid!r}: {len(cells)} cells x {seeds} seeds = {len(cells) * seeds} training runs")
    results, shared = run_search(search, name, log, cells=cells)
    folder = search_dir(config, name)
    runs = _evaluate_all(folder, results, shared, cells, split, reference_descriptors, pool, log)
    table = _tables(runs, cells, replicates)
    return _write(folder, table, grid, seeds, log)


def _evaluate_all(folder: Path, results, shared: TrainConfig, cells: dict, split: str, reference_descriptors: bool,
                  pool: InferenceOptions, log) -> dict:
    """(cell, source) -> {seed: predictions file} for every trial that finished, predicting what is
    missing: the test split through Ray Data's actor pool (`eval.infer.run_inference_jobs`, the listening
    check on), every missing evaluation in one pass over the split, kept as prediction rows; the metrics are
    this module's (a cell's own report: `sed-ray evaluate`)."""
    from sed_ray.eval.infer import InferenceJob
    from sed_ray.model.weights import model_folder

    runs: dict = {}
    missing: list[tuple[InferenceJob, Path]] = []
    options = replace(pool, max_new_tokens=shared.validation.max_new_tokens, listening=True)
    for result in sorted(results, key=lambda r: str((r.config or {}).get("cell"))):  # a cell's seeds side by side
        params, trial = result.config or {}, (result.metrics or {}).get("trial_id")
        checkpoints = sorted((folder / "runs" / str(trial)).glob("checkpoint_step*"))
        if result.error is not None or not checkpoints:
            log(f"[ablate] cell {params.get('cell')} seed {params.get('seed')}: no finished run, left out")
            continue
        cell, seed = params["cell"], params["seed"]
        task = schedule_for(trial_config(shared, cells[cell])).stages[-1].task
        sources = ["predicted"] + (["ground-truth"] if reference_descriptors and "descriptor" in get_task(task).fields
                                   else [])
        for source in sources:
            path = folder / "eval" / cell / f"seed{seed}" / f"{source}.parquet"
            if not path.exists():  # written whole or not at all
                job = InferenceJob(str(model_folder(checkpoints[-1])), replace(options, task=task, descriptors=source))
                missing.append((job, path))
            runs.setdefault((cell, source), {})[seed] = path
    if missing:
        log(f"[ablate] predicting {split} for {len(missing)} evaluation(s) in one pass: "
            + ", ".join(f"{p.parent.parent.name} {p.parent.name} ({p.stem})" for _, p in missing))
        _predict(missing, shared, split)
    return runs


def _predict(jobs: list, shared: TrainConfig, split: str) -> None:
    """Each job's predictions on `split`, written to its path (whole or not at all)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sed_ray.eval.evaluate import as_prediction
    from sed_ray.eval.infer import failed, run_inference_jobs

    outputs = run_inference_jobs([job for job, _ in jobs], shared.data.shards, where={"split": split})
    for (job, path), records in zip(jobs, outputs):
        rows = [as_prediction(r, get_task(job.options.task).fields) for r in records if not failed(r)]
        if not rows:
            raise ValueError(f"no utterance of {shared.data.shards} is in split {split!r}: check --split")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp))


def _load(paths: dict[int, Path], ids: list[str], labels: list[str]) -> list[SeedPredictions]:
    import pyarrow.parquet as pq

    from sed_ray.eval.metrics import ptb_tokenized

    loaded = []
    for _, path in sorted(paths.items()):
        rows = {r["id"]: r for r in pq.read_table(path).to_pylist()}
        rows = [rows[i] for i in ids]
        described = all(r.get("descriptor_hyp") is not None and str(r.get("descriptor_ref") or "").strip() for r in rows)
        refs = hyps = None
        if described:
            gts, res = ptb_tokenized([r["descriptor_ref"] for r in rows], [r["descriptor_hyp"] for r in rows])
            refs, hyps = [gts[i] for i in range(len(rows))], [res[i] for i in range(len(rows))]
        listening = all(r.get("nll_own") is not None and r.get("nll_silence") is not None for r in rows)
        column = (lambda key: np.array([float(r[key]) for r in rows])) if listening else (lambda key: None)
        loaded.append(SeedPredictions(
            truth=np.array([labels.index(r["emotion_true"]) for r in rows]),
            predicted=np.array([labels.index(r["emotion_pred"]) if r["emotion_pred"] in labels else -1 for r in rows]),
            references=refs, hypotheses=hyps, nll_own=column("nll_own"), nll_silence=column("nll_silence"),
            tokens=column("target_tokens")))
    return loaded


def _tables(runs: dict, cells: dict, replicates: int) -> list[dict]:
    import pyarrow.parquet as pq

    paths = [p for seeds in runs.values() for p in seeds.values()]
    if not paths:
        raise ValueError("no cell finished training: nothing to evaluate (see the search's results)")
    id_sets = [set(pq.read_table(p, columns=["id"]).column("id").to_pylist()) for p in paths]
    ids = sorted(set.intersection(*id_sets))  # the utterances every evaluation scored: the pairing
    labels = sorted({r for p in paths for r in pq.read_table(p, columns=["emotion_true"]).column(0).to_pylist()})
    loaded = {key: _load(seeds, ids, labels) for key, seeds in runs.items()}  # read and tokenised once
    table = []
    for metric, source in MEASURES:
        present = {cell: loaded[(cell, source)] for cell in cells if (cell, source) in loaded}
        if REFERENCE not in present:
            continue
        summary = summarise(present, metric, REFERENCE, replicates=replicates)
        for cell, row in summary.items():
            if row["mean"] is not None:
                table.append({"measure": metric, "descriptors": source, "cell": cell,
                              "seeds": len(runs[(cell, source)]), "utterances": len(ids), **row})
    return table


COLUMNS = ["measure", "descriptors", "cell", "seeds", "utterances", "mean", "sd", "low", "high", "diff", "diff_low",
           "diff_high", "clear"]


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _write(folder: Path, table: list[dict], grid: str, seeds: int, log) -> dict:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    written = {"table": atomic_write_text(folder / "ablation.csv", buffer.getvalue())}
    lines = [f"{'measure':<16}{'descriptors':<14}{'cell':<18}{'mean':>8}{'sd':>8}  {'95% interval':<17}"
             f"{'vs reference':>13}  {'95% interval':<17}"]
    for r in table:
        interval = f"[{r['low']:.3f}, {r['high']:.3f}]"
        diff = "" if "diff" not in r else f"{r['diff']:+.3f}"
        diff_interval = "" if "diff" not in r else f"[{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]" + (
            " *" if r["clear"] else "")
        lines.append(f"{r['measure']:<16}{r['descriptors']:<14}{r['cell']:<18}{r['mean']:>8.3f}{r['sd']:>8.3f}  "
                     f"{interval:<17}{diff:>13}  {diff_interval:<17}")
    console = "\n".join(lines) + "\n(* the paired difference's interval excludes 0)"
    log(console)
    written["report"] = _report(folder, table, grid, seeds, console)
    return {**written, "rows": table}


def _figure(table: list[dict]) -> bytes:
    import matplotlib.pyplot as plt

    measures = list(dict.fromkeys((r["measure"], r["descriptors"]) for r in table))
    fig, axes = plt.subplots(len(measures), 1, figsize=(6.4, 1.9 * len(measures) + 0.6), squeeze=False)
    for ax, (metric, source) in zip(axes[:, 0], measures):
        rows = [r for r in table if r["measure"] == metric and r["descriptors"] == source]
        ys = range(len(rows))
        means = [r["mean"] for r in rows]
        errors = [[r["mean"] - r["low"] for r in rows], [r["high"] - r["mean"] for r in rows]]
        colours = ["#1f4e99" if r["cell"] == REFERENCE else "#cf222e" if r.get("clear") else "#6e7781" for r in rows]
        for y, mean, low, high, colour in zip(ys, means, *errors, colours):
            ax.errorbar([mean], [y], xerr=[[low], [high]], fmt="o", color=colour, capsize=3)
        ax.axvline(next(r["mean"] for r in rows if r["cell"] == REFERENCE), color="#1f4e99", lw=0.8, ls="--")
        ax.set_yticks(list(ys), [r["cell"] for r in rows], fontsize=8)
        ax.set_title(f"{metric} ({SOURCES[source]})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def _report(folder: Path, table: list[dict], grid: str, seeds: int, console: str) -> Path:
    esc = html.escape
    figures = [("ablation", "Mean and 95 % interval per cell (blue: reference; red: a paired difference whose "
                "interval excludes 0)", _figure(table))] if table else []
    (folder / "figures").mkdir(exist_ok=True)
    for stem, _, png in figures:
        atomic_write(folder / "figures" / f"{stem}.png", lambda tmp, png=png: tmp.write_bytes(png))
    rows = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r.get(c)))}</td>" for c in COLUMNS) + "</tr>" for r in table)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ablation {esc(grid)}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2rem; }} table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; }} img.figure {{ max-width: 100%; }}</style></head>
<body data-figures-expected="{len(figures)}">
<h1>Ablation grid {esc(grid)} ({seeds} seeds per cell)</h1>
<p>Each cell changes one factor of the reference (the paper's own path). Mean and sd over seeds on every
test utterance; the 95 % interval and the paired difference against the reference come from a bootstrap
over seeds and utterances drawn once for all cells.</p>
{figures_html(figures)}
<h2>Table</h2><table><tr>{''.join(f'<th>{c}</th>' for c in COLUMNS)}</tr>{rows}</table>
<pre>{esc(console)}</pre>
{FIGURES_LOADED_SCRIPT}
</body></html>
"""
    return atomic_write_text(folder / "ablation.html", page)
