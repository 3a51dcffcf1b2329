"""What a finished (or resumed) search leaves in its folder: results.csv and a console table with every
trial's values, objective and status; best.yaml, a complete training config `sed-ray train` runs as is;
report.html with the objective against each searched key and over each trial's validation reports."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import yaml

from sed_ray.config import TrainConfig
from sed_ray.eval.report import FIGURES_LOADED_SCRIPT, figure_png, figures_html
from sed_ray.files import atomic_write, atomic_write_text
from sed_ray.train.stages import schedule_for
from sed_ray.tune.space import distribution, trial_config

STATUS_COLOURS = {"finished": "#1a7f37", "stopped early": "#bf8700", "failed": "#cf222e", "unfinished": "#6e7781"}


def trial_rows(grid, config: TrainConfig) -> list[dict]:
    """One row per trial of Tune's ResultGrid: trial id, status, objective (its last reported value),
    validation reports, the searched values, and the objective after each report (for the report).
    A trial finished if its training reached its last step (a trial restarted by a relaunch reports
    fewer times than one that ran through), else ASHA stopped it early."""
    keys, metric = list(config.tune.space), config.tune.metric
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        reports = int(metrics.get("training_iteration", 0) or 0)
        last_step = schedule_for(trial_config(config, {k: (result.config or {}).get(k) for k in keys
                                                        if k in (result.config or {})})).total_steps
        if result.error is not None:
            status = "failed"
        elif metric not in metrics:
            status = "unfinished"
        else:
            status = "finished" if int(metrics.get("step", 0)) >= last_step else "stopped early"
        history = []
        frame = getattr(result, "metrics_dataframe", None)
        if frame is not None and metric in frame:
            history = [float(v) for v in frame[metric].dropna().tolist()]
        rows.append({"trial": metrics.get("trial_id") or Path(result.path).name, "status": status,
                     "objective": metrics.get(metric), "reports": reports,
                     **{key: (result.config or {}).get(key) for key in keys},
                     "error": "" if result.error is None else str(result.error).splitlines()[0][:200],
                     "_history": history})
    return sorted(rows, key=lambda r: r["trial"])


def best_row(rows: list[dict], mode: str) -> dict | None:
    scored = [r for r in rows if r["status"] != "failed" and isinstance(r["objective"], (int, float))
              and not math.isnan(r["objective"])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r["objective"])


def console_table(rows: list[dict], keys: list[str], metric: str) -> str:
    columns = ["trial", "status", metric, "reports", *keys]
    cells = [[str(r["trial"]), r["status"], _objective(r),
              str(r["reports"]), *[_short(r[k]) for k in keys]] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def _objective(row: dict) -> str:
    return "" if row["objective"] is None else f"{row['objective']:.4f}"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_outputs(folder: Path, rows: list[dict], search: TrainConfig, shared: TrainConfig, name: str) -> dict:
    """results.csv, best.yaml (from `shared`, the config the trials ran on) and report.html; returns paths."""
    keys, metric = list(search.tune.space), search.tune.metric
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["trial", "status", metric, "reports", *keys, "error"])
    writer.writeheader()
    for r in rows:
        writer.writerow({"trial": r["trial"], "status": r["status"], metric: r["objective"], "reports": r["reports"],
                         "error": r["error"], **{k: r[k] for k in keys}})
    written = {"results": atomic_write_text(folder / "results.csv", buffer.getvalue())}
    best = best_row(rows, search.tune.mode)
    if best is not None:
        config = trial_config(shared, {k: best[k] for k in keys})
        config = replace(config, name=f"{name}-best", storage=search.storage)
        tree = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, for YAML
        header = (f"# The best trial of search {name!r} ({best['trial']}: {metric} {best['objective']:.4f}), "
                  f"as a complete training config:\n#   sed-ray train --config {folder / 'best.yaml'}\n")
        written["best"] = atomic_write_text(folder / "best.yaml", header + yaml.safe_dump(tree, sort_keys=False))
    written["report"] = write_report(folder, rows, search, name, best)
    return written


def _key_figure(rows: list[dict], key: str, spec, metric: str) -> bytes:
    import matplotlib.pyplot as plt

    name, args = distribution(key, spec)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    numeric = name in ("uniform", "loguniform", "randint") or all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)
    categories = [str(v) for v in args] if not numeric else []
    for status, colour in STATUS_COLOURS.items():
        points = [(r[key], r["objective"]) for r in rows if r["status"] == status and r["objective"] is not None]
        if not points:
            continue
        xs = [float(x) if numeric else categories.index(str(x)) for x, _ in points]
        ax.scatter(xs, [y for _, y in points], c=colour, label=status, s=36, alpha=0.85)
    if name == "loguniform" or (numeric and min(args) > 0 and max(args) / min(args) >= 100):
        ax.set_xscale("log")
    if categories:
        ax.set_xticks(range(len(categories)), categories, rotation=20)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def _history_figure(rows: list[dict], metric: str) -> bytes | None:
    import matplotlib.pyplot as plt

    if not any(r["_history"] for r in rows):
        return None
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    labelled = set()
    for r in rows:
        if r["_history"]:
            ax.plot(range(1, len(r["_history"]) + 1), r["_history"], marker="o", alpha=0.8,
                    color=STATUS_COLOURS.get(r["status"], "#000"),
                    label=None if r["status"] in labelled else r["status"])
            labelled.add(r["status"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.set_xlabel("validation report (ASHA's time unit)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def write_report(folder: Path, rows: list[dict], search: TrainConfig, name: str, best: dict | None) -> Path:
    esc, metric = html.escape, search.tune.metric
    figures = [(f"objective-vs-{key}", f"{metric} against {key}", _key_figure(rows, key, spec, metric))
               for key, spec in search.tune.space.items()]
    history = _history_figure(rows, metric)
    if history:
        figures.append(("objective-over-reports", f"{metric} over each trial's validation reports "
                        "(colour: status)", history))
    (folder / "figures").mkdir(exist_ok=True)
    for stem, _, png in figures:
        atomic_write(folder / "figures" / f"{stem}.png", lambda tmp, png=png: tmp.write_bytes(png))
    keys = list(search.tune.space)
    table = "".join(
        f"<tr class='{esc(r['status'].replace(' ', '-'))}'><td>{esc(str(r['trial']))}</td><td>{esc(r['status'])}</td>"
        f"<td>{_objective(r)}</td><td>{r['reports']}</td>"
        + "".join(f"<td>{esc(_short(r[k]))}</td>" for k in keys) + "</tr>" for r in rows)
    images = figures_html(figures)
    best_line = ("no trial reported the objective" if best is None else
                 f"best: trial {esc(str(best['trial']))}, {esc(metric)} {best['objective']:.4f} "
                 f"(<a href='best.yaml'>best.yaml</a>)")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>search {esc(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; }}
tr.stopped-early td {{ color: #7a5b00; }} tr.failed td {{ color: #a40e26; }}
img.figure {{ max-width: 100%; border: 1px solid #ddd; }} figure {{ display: inline-block; margin: 1rem; }}
</style></head>
<body data-figures-expected="{len(figures)}">
<h1>Search {esc(name)}</h1>
<p>{len(rows)} trials; objective {esc(metric)} ({esc(search.tune.mode)}), the last value each trial reported;
{best_line}.</p>
<h2>Trials</h2>
<table><tr><th>trial</th><th>status</th><th>{esc(metric)}</th><th>reports</th>{''.join(f'<th>{esc(k)}</th>' for k in keys)}</tr>
{table}</table>
<h2>Figures</h2>{images}
{FIGURES_LOADED_SCRIPT}
</body></html>
"""
    return atomic_write_text(folder / "report.html", page)
