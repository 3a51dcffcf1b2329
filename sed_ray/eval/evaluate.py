"""`sed-ray evaluate`: inference on a split (or on each leave-one-session-out fold), scoring, the report.

Writes OUT/predictions.parquet, OUT/metrics.json and OUT/report.html (+ OUT/figures/*.png).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from sed_ray.config import InferenceOptions
from sed_ray.eval.infer import LISTENING, LISTENING_BY_FIELD, failed, run_inference
from sed_ray.eval.metrics import listening_summary, score_records
from sed_ray.eval.report import write_report
from sed_ray.files import RUN_METRICS, atomic_write, atomic_write_json, read_jsonl
from sed_ray.model.prompt import get_task
from sed_ray.model.weights import model_folder, read_config
from sed_ray.storage import location, require


def _training_metrics(checkpoint, run_dir: str | None) -> list[dict]:
    # model/ sits in a checkpoint folder, which sits in the run folder (Ray) or in run/checkpoints (--local)
    candidates = [location(run_dir)] if run_dir else list(checkpoint.parents)[:3]
    for folder in candidates:
        if (folder / RUN_METRICS).exists():
            return read_jsonl(folder / RUN_METRICS)
    return []


def as_prediction(record: dict, fields: tuple[str, ...] = ("transcript", "descriptor", "emotion")) -> dict:
    """One inference record as a prediction row. A field the task does not generate (the ablation's
    descriptor) gets no hypothesis, so it is reported as not scored rather than scored 0."""
    def generated(field: str, value):
        return value if field in fields else None

    return {"id": record["id"], "speaker": record.get("speaker"), "session": record.get("session"),
            "emotion_true": record.get("emotion"), "emotion_pred": generated("emotion", record.get("emotion_pred")),
            "text_ref": record.get("text"), "text_hyp": generated("transcript", record.get("transcript")),
            "descriptor_ref": record.get("descriptor"),
            "descriptor_hyp": generated("descriptor", record.get("descriptor_pred")),
            "descriptor_generated": generated("descriptor", record.get("descriptor_generated")),  # the LLM's own
            "descriptor_draft": generated("descriptor", record.get("descriptor_draft")),  # None without a draft
            "posterior": record.get("posterior"), "z_content": record.get("z_content"),
            "z_descriptor": record.get("z_descriptor"),
            **{key: record.get(key) for key in (*LISTENING, *LISTENING_BY_FIELD)}}


def evaluate(checkpoints: dict[str, str], data: str, out: str | os.PathLike,
             options: InferenceOptions = InferenceOptions(), *, split: str = "test", protocol: str = "split",
             run_dir: str | None = None) -> dict:
    """`checkpoints`: {"": path} for one model, or {session: path} for leave-one-session-out. Inference
    runs with `options`, plus the latents and the listening check the report shows."""
    options = replace(options, latents=True, listening=True)
    task, descriptors = options.task, options.descriptors
    fields = get_task(task).fields
    require(data, "--data", must_exist=True)
    require(out, "--out")
    for fold, checkpoint in checkpoints.items():
        require(checkpoint, f"--checkpoint {fold}=" if fold else "--checkpoint", must_exist=True)
    out = location(out)
    out.mkdir(parents=True, exist_ok=True)
    folders = {k: model_folder(v) for k, v in checkpoints.items()}
    labels = list(options.labels or read_config(next(iter(folders.values()))).labels)
    # The checkpoints are valid, so this run will go ahead: an earlier evaluation's results must not outlive
    # it if it fails. metrics.json (written last) says a folder is finished; the report must match it.
    for stale in ("metrics.json", "report.html", "predictions.parquet"):
        (out / stale).unlink(missing_ok=True)
    predictions, folds = [], {}
    for fold, folder in folders.items():
        where = {"session": fold} if protocol == "loso" else {"split": split}
        records = run_inference(str(folder), data, options, where=where)
        fold_predictions = [as_prediction(r, fields) for r in records if not failed(r)]
        if not fold_predictions:
            raise ValueError(f"no utterance of {data} matches {where}: check --split / the fold's session name")
        if protocol == "loso":
            folds[fold] = {k: v for k, v in score_records(fold_predictions, labels).items() if k != "notes"}
        predictions += fold_predictions
    metrics = score_records(predictions, labels)
    metrics["protocol"], metrics["descriptors"], metrics["task"] = protocol, descriptors, task
    metrics["listening"] = listening_summary(predictions)
    metrics["checkpoints"] = {k: str(v) for k, v in folders.items()}
    if folds:
        metrics["folds"] = folds
    _write_predictions(predictions, out / "predictions.parquet")
    first = next(iter(folders.values()))
    title = f"sed-ray evaluation: {split if protocol == 'split' else 'leave-one-session-out'} ({descriptors} descriptors)"
    write_report(out, metrics, predictions, title=title, training_metrics=_training_metrics(first, run_dir))
    atomic_write_json(out / "metrics.json", metrics)  # last: a folder with metrics.json is a finished evaluation
    return metrics


def _write_predictions(predictions: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    atomic_write(path, lambda tmp: pq.write_table(pa.Table.from_pylist(predictions), tmp))
