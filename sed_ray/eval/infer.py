"""Batch inference as a Ray Data job: inputs -> decode (CPU tasks) -> an actor pool, one model per actor
(a GPU each when the cluster has them, CPUs otherwise) -> predictions.

Several jobs (checkpoints of one base, each with its own task and descriptor source) can share one pass:
the inputs are read once and fed job by job, and each replica keeps its model and swaps only the trained
weights between jobs of the same model config (an ablation's cells and seeds), so the frozen base is
loaded once per replica instead of once per job.

Inputs: a folder of audio files, a manifest (JSONL/CSV/Parquet, as `prepare` reads them), or a
`prepare` output folder (already 16 kHz int16). A file that cannot be decoded becomes an error record
naming the file and the reason; it never stops the job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sed_ray.config import InferenceOptions
from sed_ray.data.audio import CONTAINER_SUFFIXES, AudioLimits, AudioRejected, load_utterance
from sed_ray.data.collate import collate_rows
from sed_ray.files import atomic_write, atomic_write_text
from sed_ray.model.prompt import FIELD_TITLES, TASKS as TASKS_NAMES, get_task
from sed_ray.model.speech_llm import DESCRIPTOR_SOURCES
from sed_ray.storage import is_remote, location

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3"} | CONTAINER_SUFFIXES
META = ("text", "emotion", "descriptor", "speaker", "session", "split")
REFERENCE_COLUMNS = {"transcript": "text", "descriptor": "descriptor", "emotion": "emotion"}  # target field -> column
# prediction columns -> the key of SpeechEmotionLLM.predict's row they come from
PREDICTED = {"emotion_pred": "emotion", "transcript": "transcript", "descriptor_pred": "descriptor",
             "descriptor_generated": "descriptor_generated",  # the LLM's own, whichever the emotion followed
             "descriptor_draft": "descriptor_draft",  # the descriptor draft's guess, if the model has one
             "posterior": "posterior", "z_content": "z_content", "z_descriptor": "z_descriptor"}
LISTENING = ("nll_own", "nll_silence", "nll_other", "target_tokens")  # see SpeechEmotionLLM.listening_check
# the same split by target field: nll_own_descriptor, ..., tokens_emotion (NaN for a field the task lacks),
# named from listening_check's per-field figures
_FIELD_COLUMNS = {"own": "nll_own", "silence": "nll_silence", "other": "nll_other", "tokens": "tokens"}
LISTENING_BY_FIELD = tuple(f"{column}_{field}" for field in FIELD_TITLES for column in _FIELD_COLUMNS.values())


def list_inputs(path: str | os.PathLike) -> tuple[str, list[dict]]:
    """('shards', []) for a prepare output, else ('rows', [{id, audio, ...metadata}])."""
    path = location(path)
    if not path.exists():  # named here: the connector below would call it a --source
        raise FileNotFoundError(f"{path} does not exist: give a `sed-ray prepare` output folder, a folder of "
                                f"audio files, or a manifest (.jsonl, .csv, .parquet)")
    if (path / "summary.json").exists() and (path / "shards").is_dir():
        return "shards", []
    if is_remote(path):
        raise ValueError(f"{path}: in object storage, inference reads `sed-ray prepare` outputs only (no summary.json "
                         "and shards/ there); prepare the audio first, or give a local folder or manifest")
    if path.is_dir() and not any((path / f"manifest{s}").exists() for s in (".jsonl", ".csv", ".parquet")):
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
        return "rows", [{"id": str(p.relative_to(path).with_suffix("")), "audio": str(p)} for p in files]
    from sed_ray.data.corpora import ConnectorOptions, list_rows

    rows = []
    for row in list_rows("manifest", path, ConnectorOptions(labels=("neutral", "happy", "angry", "sad", "surprised",
                                                                    "fearful", "disgusted"))):
        record = {"id": row.id, "audio": row.audio, "start": row.start, "end": row.end,
                  **{k: getattr(row, k) for k in META}}
        if row.reject:
            record["error"] = row.reject
        rows.append(record)
    return "rows", rows


def decode_row(row: dict, limits: AudioLimits = AudioLimits()) -> dict:
    """One input row -> {id, pcm bytes, num_samples, metadata} or {id, error}."""
    out = {"id": row["id"], "source": row.get("audio", ""), **{k: row.get(k) for k in META}}
    if row.get("error"):
        return {**out, "pcm": b"", "num_samples": 0, "error": row["error"]}
    try:
        pcm = load_utterance(row["audio"], row.get("start"), row.get("end"), limits)
    except AudioRejected as exc:
        return {**out, "pcm": b"", "num_samples": 0, "error": f"{exc.reason}: {exc.detail}"}
    except Exception as exc:  # a decoder crash on one file costs that file only
        return {**out, "pcm": b"", "num_samples": 0, "error": f"unreadable: {type(exc).__name__}: {exc}"}
    return {**out, "pcm": pcm.tobytes(), "num_samples": len(pcm), "error": ""}


@dataclass(frozen=True)
class InferenceJob:
    """A trained model (a model folder or a training checkpoint) and how to run it."""

    checkpoint: str
    options: InferenceOptions = field(default_factory=InferenceOptions)


# options that size the shared actor pool and its batches: one value for every job of a pass
POOL_OPTIONS = ("batch_size", "actors", "gpus_per_actor", "cpus_per_actor", "group_window")


class Predictor:
    """One model per actor; each call predicts a batch of decoded rows, each row for its job (the `job`
    column; job 0 when there is none). Switching to a job of the same model config copies in its trained
    weights only; another config rebuilds the model."""

    def __init__(self, jobs: list[InferenceJob]) -> None:
        import torch

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.jobs = jobs
        self.model = self.model_config = self.loaded = None

    def _use(self, job: int) -> None:
        from sed_ray.model.speech_llm import SpeechEmotionLLM
        from sed_ray.model.weights import load_trainable, read_config

        checkpoint, self.options = self.jobs[job].checkpoint, self.jobs[job].options
        if checkpoint == self.loaded:
            return
        config = read_config(checkpoint)
        if config != self.model_config:
            self.model = None  # the old one freed before the new one is built
            self._release_memory()
            self.model = SpeechEmotionLLM.from_config(config).to(self.device).eval()
            self.model_config = config
        load_trainable(self.model, checkpoint)
        self.loaded = checkpoint

    def __call__(self, batch: dict) -> dict:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        jobs = [int(r.get("job", 0)) for r in rows]
        results: dict[tuple[int, str], dict] = {}
        for job in dict.fromkeys(jobs):  # in order of appearance: rows arrive job by job
            good = [r for r, j in zip(rows, jobs) if j == job and not failed(r)]
            if good:
                self._use(job)
                results |= {(job, key): p for key, p in self._predict_or_split(good).items()}
        return self._columns(rows, jobs, results)

    def _predict_or_split(self, good: list[dict]) -> dict[str, dict]:
        """Predictions by id. If the model fails on a batch (out of memory, a row it cannot take), each row
        is tried alone, and a row that still fails gets an error record: a bad batch costs only its bad rows."""
        try:
            return self._predict(good)
        except Exception as exc:
            self._release_memory()
            if len(good) == 1:
                return {good[0]["id"]: {"error": f"prediction failed: {type(exc).__name__}: {exc}"}}
            results: dict[str, dict] = {}
            for row in good:
                results |= self._predict_or_split([row])
            return results

    def _release_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _predict(self, good: list[dict]) -> dict[str, dict]:
        results: dict[str, dict] = {}
        if good:
            options = self.options
            tensors = collate_rows(good, self.model.prompts, (options.task,), fields=options.listening)
            tensors = tensors.to(self.device)
            references = [{"descriptor": r.get("descriptor") or ""} for r in good]
            predictions = self.model.predict(tensors.pcm_BT, tensors.lengths_B, options.task, references=references,
                                             descriptors=options.descriptors, max_new_tokens=options.max_new_tokens,
                                             num_beams=options.num_beams, return_latents=options.latents,
                                             labels=options.labels)
            results = {r["id"]: p for r, p in zip(good, predictions)}
            if options.listening:
                self._listening_check(good, tensors, results)
        return results

    @staticmethod
    def _columns(rows: list[dict], jobs: list[int], results: dict[tuple[int, str], dict]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("id", "job", "source", *META, "error", *PREDICTED, *LISTENING,
                                                *LISTENING_BY_FIELD)}
        for r, job in zip(rows, jobs):
            p = results.get((job, r["id"]), {})
            out["job"].append(job)
            for key in ("id", "source", *META):
                out[key].append(r.get(key))
            out["error"].append(p.get("error") or r.get("error"))
            for key, source in PREDICTED.items():
                value = p.get(source)
                out[key].append(json.dumps(value) if key == "posterior" and value is not None else value)
            for key in (*LISTENING, *LISTENING_BY_FIELD):  # NaN, not None: Ray's batches turn None into NaN anyway
                out[key].append(float("nan") if p.get(key) is None else float(p[key]))
        return out

    def _listening_check(self, rows: list[dict], tensors, results: dict) -> None:
        """The reference target's likelihood with the utterance's own audio, same-length silence and another
        utterance's audio (model.listening_check), for the rows that have every reference field."""
        task = self.options.task
        needed = [REFERENCE_COLUMNS[f] for f in get_task(task).fields]
        keep = [i for i, r in enumerate(rows) if all(isinstance(r.get(k), str) and r[k] for k in needed)]
        if not keep:
            return
        check = self.model.listening_check(tensors.pcm_BT[keep], tensors.lengths_B[keep], tensors.targets[task][keep],
                                           task, tensors.fields[task][keep])
        for j, i in enumerate(keep):
            results[rows[i]["id"]].update({key: check[key][j] for key in LISTENING})
            results[rows[i]["id"]].update({f"{_FIELD_COLUMNS[key]}_{field}": value
                                           for field, figures in (check["fields"][j] or {}).items()
                                           for key, value in figures.items()})


def run_inference(checkpoint: str, inputs: str | os.PathLike, options: InferenceOptions = InferenceOptions(), *,
                  where: dict | None = None) -> list[dict]:
    """Predictions for every input (error records included), in input order. `where` keeps only rows
    whose metadata equal its values, e.g. {"split": "test"} or {"session": "Session3"}. With
    `options.num_beams` > 1 the transcript and descriptor are decoded with beam search; the emotion is
    scored after the best beam. `options.listening` adds, for rows with reference fields, the listening
    check (SpeechEmotionLLM.listening_check)."""
    return run_inference_jobs([InferenceJob(str(checkpoint), options)], inputs, where=where)[0]


def run_inference_jobs(jobs: list[InferenceJob], inputs: str | os.PathLike, *, where: dict | None = None) -> list[list[dict]]:
    """`run_inference` for several jobs in one pass over the inputs: one list of records per job, each in
    input order. The jobs share one actor pool, so their pool options (POOL_OPTIONS) must agree; give jobs
    of the same model config next to each other (a replica rebuilds its model when the config changes).
    With several jobs the decoded inputs are held in Ray's object store for the pass: meant for an
    evaluation split, not a whole corpus."""
    import ray
    import ray.data

    from sed_ray.ray_env import ensure_ray

    if not jobs:
        return []
    problems = [f"{_job_name(k, jobs)}{p}" for k, job in enumerate(jobs) for p in _job_problems(job)]
    pool = {key: getattr(jobs[0].options, key) for key in POOL_OPTIONS}
    problems += [f"{_job_name(k, jobs)}{key}: {getattr(job.options, key)!r} differs from job 0's {value!r}; the jobs "
                 "of one pass share one actor pool" for k, job in enumerate(jobs)
                 for key, value in pool.items() if getattr(job.options, key) != value]
    if problems:
        raise ValueError("invalid inference options:\n  - " + "\n  - ".join(problems))
    options = jobs[0].options
    ensure_ray()
    kind, rows = list_inputs(inputs)
    if kind == "shards":
        from sed_ray.data.stream import read_shards, shard_dataset

        dataset = read_shards(inputs, ["id", "pcm", "num_samples", "source", *META], where=where)
        dataset = dataset.map(lambda r: {**r, "error": ""})
        listing = shard_dataset(inputs).to_table(columns=["id", *(where or {})]).to_pylist()
        order = [r["id"] for r in listing if all(r.get(k) == v for k, v in (where or {}).items())]
    else:
        rows = [r for r in rows if all(r.get(k) == v for k, v in (where or {}).items())]
        if not rows:
            raise ValueError(f"no input rows in {inputs}")
        dataset = ray.data.from_items(rows).map(decode_row)
        order = [r["id"] for r in rows]
    if len(jobs) > 1:  # read and decode once, then the inputs job by job
        dataset = dataset.materialize()
        dataset = dataset.map(_tag_job, fn_kwargs={"job": 0}).union(
            *[dataset.map(_tag_job, fn_kwargs={"job": k}) for k in range(1, len(jobs))])
    actors, gpus, cpus = actor_pool(options, ray.available_resources())
    window = options.batch_size * options.group_window
    if options.group_window > 1:  # similar lengths in a batch: one long clip no longer pads a whole batch
        dataset = dataset.map_batches(sort_by_length, batch_size=window, batch_format="pyarrow")
    predictions = dataset.map_batches(
        Predictor, fn_constructor_kwargs={"jobs": list(jobs)},
        batch_size=options.batch_size, concurrency=actors, num_gpus=gpus, num_cpus=cpus, batch_format="default")
    predictions.context.execution_options.preserve_order = True
    position = {key: i for i, key in reversed(list(enumerate(order)))}
    by_job: list[list[dict]] = [[] for _ in jobs]
    for record in predictions.iter_rows():
        record = dict(record)
        by_job[int(record.pop("job"))].append(record)
    return [sorted(records, key=lambda r: position.get(r["id"], len(position))) for records in by_job]


def _tag_job(row: dict, job: int) -> dict:
    return {**row, "job": job}


def _job_name(k: int, jobs: list) -> str:
    return f"job {k} ({jobs[k].checkpoint}): " if len(jobs) > 1 else ""


def _job_problems(job: InferenceJob) -> list[str]:
    options = job.options
    problems = options.problems() + [p for p in [_name_problem("task", options.task, TASKS_NAMES),
                                                 _name_problem("descriptors", options.descriptors, DESCRIPTOR_SOURCES)] if p]
    if options.labels is not None:
        from sed_ray.model.weights import model_folder, read_config

        known = read_config(model_folder(job.checkpoint)).labels
        if not options.labels or set(options.labels) - set(known):
            problems.append(f"labels: {list(options.labels)} must be a non-empty subset of the model's labels "
                            f"{list(known)}")
    return problems


def actor_pool(options: InferenceOptions, available: dict[str, float]) -> tuple[int, float, float]:
    """(replicas, GPUs each, CPUs each). Explicit options are asked for as they are (an autoscaler adds the
    nodes); otherwise one replica per GPU free now (never the GPUs a training job holds), or up to 2 on CPUs."""
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if available.get("GPU", 0) >= 1 else 0.0
    if options.actors:
        return options.actors, gpus, options.cpus_per_actor
    if gpus:
        return max(1, int(available.get("GPU", 0) // gpus)), gpus, options.cpus_per_actor
    free = int(available.get("CPU", 1) // options.cpus_per_actor)
    return max(1, min(2, free // 2 or 1)), 0.0, options.cpus_per_actor


def sort_by_length(window):
    """A window of inputs reordered by length (failed decodes first: they cost no model time), job by job
    when there are several."""
    import pyarrow.compute as pc

    keys = [("job", "ascending")] if "job" in window.column_names else []
    return window.take(pc.sort_indices(window, sort_keys=keys + [("num_samples", "ascending")]))


def write_predictions(records: list[dict], out: str | os.PathLike) -> tuple[Path, Path]:
    """DIR/errors.jsonl (one per failure) and, last, DIR/predictions.parquet (one row per input that
    decoded); each lands whole (temporary name, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = location(out)
    out.mkdir(parents=True, exist_ok=True)
    good = [r for r in records if not failed(r)]
    bad = [r for r in records if failed(r)]
    columns = ["id", "source", *META, "emotion_pred", "transcript", "descriptor_pred", "descriptor_generated",
               "descriptor_draft", "posterior"]
    table = pa.Table.from_pylist([{k: _plain(r.get(k)) for k in columns} for r in good])
    errors = atomic_write_text(out / "errors.jsonl", "".join(
        json.dumps({"id": r["id"], "source": r.get("source"), "error": r["error"]}) + "\n" for r in bad))
    path = atomic_write(out / "predictions.parquet", lambda tmp: pq.write_table(table, tmp))
    return path, errors


def failed(record: dict) -> bool:
    """An error is a non-empty string ("" = none: Ray's batches turn None into NaN, so None is not used)."""
    return isinstance(record.get("error"), str) and record["error"] != ""


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _name_problem(key: str, value: str, valid) -> str | None:
    return None if value in valid else f"{key}: {value!r} is not one of {', '.join(valid)}"
