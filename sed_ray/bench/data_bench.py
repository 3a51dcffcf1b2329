"""Data-path throughput: `sed-ray bench prepare|ingest`.

prepare: audio seconds written per wall second per CPU core, Ray already started (steady state).
ingest:  batches of bucketed int16 audio per second through (a) the Ray Data path a training worker
         uses (shard paths -> read + bucket_window per file group -> streaming_split -> Batch) and (b) the same
         bucketing in one process with pyarrow alone, over the same shards, measured side by side
         after a warm-up pass; plus (c) a raw pyarrow scan of the PCM column for scale.
Medians over `repeats`; ratios are taken between figures from the same run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from sed_ray.data.schema import SAMPLE_RATE
from sed_ray.config import DataSection
from sed_ray.data.stream import StreamConfig, iter_shard, plain_batches, ray_dataset, shard_files


def bench_prepare(manifest: str, repeats: int) -> dict:
    from sed_ray.data.prepare import prepare
    from sed_ray.ray_env import cluster_cpus, ensure_ray

    ensure_ray()
    cores = cluster_cpus()
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = prepare("manifest", manifest, out, shard_rows=100, log=lambda _m: None)
            seconds = time.perf_counter() - started
        audio = sum(result.hours_by_split.values()) * 3600
        runs.append(audio / seconds)
    median = statistics.median(runs)
    return {"benchmark": "prepare", "audio_hours": round(audio / 3600, 3), "cores": cores,
            "audio_s_per_s": round(median, 1), "x_realtime_per_core": round(median / cores, 1),
            "runs_x_realtime_per_core": [round(r / cores, 1) for r in runs], "target_x_realtime_per_core": 500}


def _consume(batches) -> dict:
    """Touch every batch like a worker would; time the whole pass and the steady part after the first
    batch (which carries the pipeline's start-up: scheduling tasks, starting the split coordinator)."""
    started = time.perf_counter()
    audio = padded = count = 0
    first_at = first_audio = None
    for batch in batches:
        audio += int(batch.lengths_B.sum())
        padded += batch.pcm_BT.numel()
        count += 1
        if first_at is None:
            first_at, first_audio = time.perf_counter(), audio
    ended = time.perf_counter()
    steady = (audio - first_audio) / SAMPLE_RATE / (ended - first_at) if count > 1 else 0.0
    return {"audio_s": audio / SAMPLE_RATE, "batches": count, "padding_fraction": 1 - audio / padded if padded else 0.0,
            "pass_rate": audio / SAMPLE_RATE / (ended - started), "steady_rate": steady,
            "first_batch_s": (first_at or ended) - started}


def bench_ingest(shards: str, repeats: int, batch_seconds: float) -> dict:
    from sed_ray.ray_env import cluster_cpus, ensure_ray

    ensure_ray()
    cores = cluster_cpus()
    config = StreamConfig(DataSection(batch_seconds=batch_seconds), seed=0)

    def ray_path():
        dataset = ray_dataset(shards, None, config)
        dataset.context.execution_options.preserve_order = True
        (split,) = dataset.streaming_split(1, equal=True)
        return _consume(iter_shard(split))

    def plain_path():
        return _consume(plain_batches(shards, None, config))

    def raw_scan():
        started = time.perf_counter()
        samples = 0
        for path in shard_files(shards):
            for chunk in pq.read_table(path, columns=["pcm"]).column("pcm").chunks:
                samples += len(chunk.buffers()[2] or b"") // 2  # int16 bytes
        rate = samples / SAMPLE_RATE / (time.perf_counter() - started)
        return {"audio_s": samples / SAMPLE_RATE, "pass_rate": rate, "steady_rate": rate}

    figures = {}
    for name, fn in (("ray_data", ray_path), ("plain_pyarrow", plain_path), ("raw_scan", raw_scan)):
        fn()  # warm-up: page cache, worker processes, imports
        runs = [fn() for _ in range(repeats)]
        figures[name] = {
            "steady_audio_s_per_s": round(statistics.median(r["steady_rate"] for r in runs), 1),
            "pass_audio_s_per_s": round(statistics.median(r["pass_rate"] for r in runs), 1),
            **({"batches": runs[0]["batches"], "padding_fraction": round(runs[0]["padding_fraction"], 4),
                "first_batch_s": round(statistics.median(r["first_batch_s"] for r in runs), 2)}
               if "batches" in runs[0] else {})}
    ray_rate = figures["ray_data"]["steady_audio_s_per_s"]
    plain_rate = figures["plain_pyarrow"]["steady_audio_s_per_s"]
    return {"benchmark": "ingest", "shards": len(shard_files(shards)), "cores": cores, "repeats": repeats,
            "audio_hours": round(runs[0]["audio_s"] / 3600, 3), **figures,
            "ray_over_plain_steady": round(ray_rate / plain_rate, 3),
            "ray_over_plain_pass": round(figures["ray_data"]["pass_audio_s_per_s"]
                                         / figures["plain_pyarrow"]["pass_audio_s_per_s"], 3),
            "ray_x_realtime_per_core": round(ray_rate / cores, 1),
            "targets": {"ray_over_plain_steady": 0.5, "ray_x_realtime_per_core": 2000}}


def run(what: str, data: str, *, repeats: int = 3, batch_seconds: float = 64.0) -> dict:
    data = str(Path(data).expanduser().resolve())
    if what == "prepare":
        return bench_prepare(data, repeats)
    return bench_ingest(data, repeats, batch_seconds)
