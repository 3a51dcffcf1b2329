"""Training ingest: shapes and dtypes, bucketing, equal batches per rank through Ray Train, determinism."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from corpus_fixtures import write_wav
from sed_ray.data.prepare import prepare
from sed_ray.data.schema import SAMPLE_RATE, pcm_from_bytes
from sed_ray.config import DataSection
from sed_ray.data.collate import padding_fraction
from sed_ray.data.stream import (StreamConfig, count_rows, data_config, iter_shard,
                                 plain_batches, plan_batches, ray_dataset)


@pytest.fixture(scope="module")
def skewed_shards(tmp_path_factory, ray_cluster):
    """70 utterances: most short (0.3-1.5 s), a few long (6-12 s), spread over 7 shards."""
    root = tmp_path_factory.mktemp("skewed")
    rng = np.random.default_rng(0)
    durations = np.concatenate([rng.uniform(0.3, 1.5, 62), rng.uniform(6, 12, 8)])
    rng.shuffle(durations)
    lines = []
    for i, seconds in enumerate(durations):
        write_wav(root / "src" / f"u{i:03d}.wav", float(seconds), rate=16000, seed=i)
        lines.append(json.dumps({"id": f"u{i:03d}", "audio": f"u{i:03d}.wav", "emotion": ["sad", "happy"][i % 2],
                                 "text": f"utterance {i}"}))
    (root / "src" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    prepare("manifest", root / "src" / "manifest.jsonl", root / "shards", shard_rows=10, log=lambda _m: None)
    return root / "shards"


DATA = DataSection(batch_seconds=12.0, max_batch_size=16, window_rows=32)
CONFIG = StreamConfig(DATA, seed=3)


def test_batches_shapes_dtypes_and_content(skewed_shards):
    batches = list(plain_batches(skewed_shards, "train", CONFIG))
    table = pq.read_table(sorted((skewed_shards / "shards").glob("*.parquet")))
    by_id = dict(zip(table.column("id").to_pylist(), table.column("pcm").to_pylist()))
    seen = []
    for batch in batches:
        assert batch.pcm_BT.dtype == torch.int16 and batch.pcm_BT.ndim == 2
        assert batch.lengths_B.dtype == torch.int64 and batch.lengths_B.shape == (batch.size,)
        assert batch.pcm_BT.shape[1] == int(batch.lengths_B.max())
        assert batch.pcm_BT.shape[1] * batch.size <= CONFIG.data.batch_seconds * SAMPLE_RATE or batch.size == 1
        for b, row_id in enumerate(batch.meta["id"]):
            n = int(batch.lengths_B[b])
            assert batch.pcm_BT[b, :n].tolist() == pcm_from_bytes(by_id[row_id]).tolist()
            assert not batch.pcm_BT[b, n:].any()  # zero padding
        seen += batch.meta["id"]
        assert len(batch.meta["emotion"]) == len(batch.meta["text"]) == batch.size
    assert sorted(seen) == sorted(by_id)  # one rank: every utterance exactly once
    on_device = batches[0].to("cpu")
    assert on_device.pcm_BT.dtype == torch.float32 and on_device.pcm_BT.abs().max() < 1.0


def test_bucketing_keeps_padding_small(skewed_shards):
    bucketed = padding_fraction(plain_batches(skewed_shards, "train", CONFIG))
    lengths = pq.read_table(sorted((skewed_shards / "shards").glob("*.parquet")),
                            columns=["num_samples"]).column("num_samples").to_numpy()
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(lengths)  # unsorted batches of the same sizes, for contrast
    padded = real = 0
    for i in range(0, len(shuffled), 8):
        chunk = shuffled[i:i + 8]
        padded += chunk.max() * len(chunk)
        real += chunk.sum()
    assert bucketed < 0.15 and bucketed < 0.5 * (1 - real / padded)


def test_plan_batches_respects_budget_and_isolates_long_rows():
    lengths = np.array([16000, 16000, 200000, 32000, 16000])
    batches = plan_batches(lengths, StreamConfig(DataSection(batch_seconds=4.0, max_batch_size=2)), rng=None)
    assert sorted(len(b) for b in batches) == [1, 2, 2]
    assert [2] in [list(b) for b in batches]  # 12.5 s alone: over budget, still trained on
    assert sorted(np.concatenate(batches).tolist()) == list(range(5))


def _split_ids(dataset, n: int, epochs: int = 1) -> list[list[list[str]]]:
    """Consume streaming_split(n, equal=True) the way Ray Train does, one consumer thread per rank; each
    epoch is one more pass over the same split (an execution), its batches appended after the last's."""
    dataset.context.execution_options.preserve_order = True
    iterators = dataset.streaming_split(n, equal=True)
    results: list[list[list[str]]] = [[] for _ in range(n)]

    def consume(rank: int) -> None:
        for _epoch in range(epochs):
            for batch in iter_shard(iterators[rank]):
                results[rank].append(batch.meta["id"])

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_ray_path_matches_plain_path_without_shuffle(skewed_shards):
    """Groups of 3 of the 7 shards: windows run across a group's files and end with the group, on both paths."""
    config = StreamConfig(replace(DATA, files_per_task=3), shuffle=False)
    plain = [b.meta["id"] for b in plain_batches(skewed_shards, "train", config)]
    (ray_batches,) = _split_ids(ray_dataset(skewed_shards, "train", config), 1)
    assert ray_batches == plain
    whole = [b.meta["id"] for b in plain_batches(skewed_shards, "train", StreamConfig(DATA, shuffle=False))]
    assert whole != plain  # the grouping is what both paths follow, not a no-op


def test_each_execution_reads_the_files_in_a_new_order(skewed_shards):
    """An epoch is one execution of the dataset: a seed fixes the sequence of file orders, not one order."""
    dataset = ray_dataset(skewed_shards, "train", replace(CONFIG, data=replace(DATA, files_per_task=1)))
    (both,) = _split_ids(dataset, 1, epochs=2)
    first, second = both[:len(both) // 2], both[len(both) // 2:]
    assert sorted(sum(first, [])) == sorted(sum(second, []))
    assert first != second


def test_split_order_is_deterministic_for_a_seed(skewed_shards):
    first = _split_ids(ray_dataset(skewed_shards, "train", CONFIG), 2)
    second = _split_ids(ray_dataset(skewed_shards, "train", CONFIG), 2)
    assert first == second
    other_seed = _split_ids(ray_dataset(skewed_shards, "train", StreamConfig(DATA, seed=4)), 2)
    assert other_seed != first


def test_equal_batches_per_rank_through_ray_train(skewed_shards, tmp_path):
    """Real TorchTrainer workers consume their dataset shard; every rank must see the same number of
    batches (two epochs, so re-execution is covered too). Three ranks, which the batches do not divide
    evenly; two ranks run in every training test (where DeepSpeed would hang on unequal batches)."""
    world_size = 3
    import ray.train
    from ray.train.torch import TorchTrainer

    report_dir = tmp_path / "reports"
    report_dir.mkdir()

    def loop(config):
        import ray.train as train
        from sed_ray.data.stream import iter_shard

        context = train.get_context()
        shard = train.get_dataset_shard("train")
        counts = []
        ids = []
        for _epoch in range(2):
            batches = list(iter_shard(shard))
            counts.append(len(batches))
            ids.append([i for b in batches for i in b.meta["id"]])
        Path(config["dir"], f"rank{context.get_world_rank()}.json").write_text(json.dumps({"counts": counts, "ids": ids}))

    trainer = TorchTrainer(
        loop, train_loop_config={"dir": str(report_dir)},
        scaling_config=ray.train.ScalingConfig(num_workers=world_size, use_gpu=False,
                                               resources_per_worker={"CPU": 1}),
        datasets={"train": ray_dataset(skewed_shards, "train", CONFIG)},
        dataset_config=data_config(["train"]),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "runs"), name=f"ingest{world_size}"),
    )
    trainer.fit()
    reports = [json.loads((report_dir / f"rank{r}.json").read_text()) for r in range(world_size)]
    for epoch in range(2):
        counts = {r["counts"][epoch] for r in reports}
        assert len(counts) == 1 and counts.pop() > 0, reports
        ids = [i for r in reports for i in r["ids"][epoch]]
        assert len(ids) == len(set(ids))  # no utterance on two ranks
        total = count_rows(skewed_shards, "train")
        assert len(ids) >= total - (world_size - 1) * CONFIG.data.max_batch_size  # at most a few batches dropped


def test_a_token_budget_bounds_batches_of_short_clips():
    """Audio seconds alone let 64 one-second clips form one batch of 64 x ~180 LLM tokens."""
    lengths = np.full(64, 16_000)
    by_audio = plan_batches(lengths, StreamConfig(DataSection(batch_seconds=64, max_batch_size=64)), rng=None)
    assert [len(b) for b in by_audio] == [64]
    data = DataSection(batch_seconds=64, max_batch_size=64, batch_tokens=1800, row_tokens=160,
                       audio_tokens_per_second=20)
    by_tokens = plan_batches(lengths, StreamConfig(data), rng=None)
    assert all(len(b) * (160 + 20) <= 1800 for b in by_tokens) and sum(len(b) for b in by_tokens) == 64
