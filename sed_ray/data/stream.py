"""Shards -> duration-bucketed, rank-balanced batches for training workers.

The unit that travels is a *batch row*: the ingest side (Ray Data tasks, off the training process)
reads shard rows, sorts each window of `window_rows` utterances by length, cuts it into batches under
a padded-audio budget, pads each batch into one int16 [B, T] matrix and emits it as a single row.
Because a batch is one row, Ray Train's dataset sharding (`streaming_split(n, equal=True)`) hands
every rank the same number of *batches*, which is what keeps the gradient all-reduce from
deadlocking; with `preserve_order` the assignment of batches to ranks is deterministic for a seed.

int16 stays int16 all the way into the worker; `Batch.to(device)` converts to float there. With a
`Collate` in the config, the same ingest step tokenises each batch's targets (`data/collate.py`), so
the worker receives token ids, never text to tokenise.

The same bucketing runs without Ray (`plain_batches`): the GPU benchmark, tests, and the
single-process reader the ingest benchmark compares against.

Shape legend: B batch size, T samples (16 kHz).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from sed_ray.config import DataSection
from sed_ray.data.collate import BATCH_META, Batch, Collate, token_schema, tokenize_columns
from sed_ray.data.schema import SAMPLE_RATE, SHARD_SCHEMA, binary_value
from sed_ray.storage import arrow_paths, location

READ_COLUMNS = ["pcm", "num_samples", *BATCH_META]


@dataclass(frozen=True)
class StreamConfig:
    """How a split is streamed: the config's data section (batch budget, window), plus what the caller
    decides (shuffling, seed, what to tokenise)."""

    data: DataSection = field(default_factory=DataSection)
    shuffle: bool = True  # shuffle file order, within-window order and batch order (training)
    seed: int = 0
    collate: Collate | None = None  # tokenise targets in the ingest step; None = audio and metadata only


def shard_files(shard_dir) -> list[str]:
    """The Parquet shards of a finished `prepare` run, in shard order: absolute paths or object-store URIs
    (read them through `sed_ray.storage.arrow_paths`)."""
    shard_dir = location(shard_dir)
    if not (shard_dir / "summary.json").exists():
        raise FileNotFoundError(f"{shard_dir} has no summary.json: `sed-ray prepare` has not finished "
                                "there (rerun it with the same --out to resume)")
    files = sorted(str(p) for p in (shard_dir / "shards").glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{shard_dir}/shards holds no part-*.parquet: prepare accepted no rows")
    fs, paths = arrow_paths(files[:1])
    pcm_type = pq.read_schema(paths[0], filesystem=fs).field("pcm").type
    if pcm_type != SHARD_SCHEMA.field("pcm").type:
        raise ValueError(f"{files[0]} stores pcm as {pcm_type}, not {SHARD_SCHEMA.field('pcm').type}: it was "
                         "written by an older sed-ray; rerun `sed-ray prepare ... --overwrite`")
    return files


def shard_dataset(shard_dir) -> pads.Dataset:
    """The shards as one pyarrow dataset (metadata and column reads, local or object storage)."""
    fs, paths = arrow_paths(shard_files(shard_dir))
    return pads.dataset(paths, format="parquet", filesystem=fs)


def _split_filter(split: str | None):
    return _filter(None if split is None else {"split": split})


def count_rows(shard_dir: str | Path, split: str | None = None) -> int:
    """Utterances of a split, from metadata only."""
    return shard_dataset(shard_dir).count_rows(filter=_split_filter(split))


def plan_batches(num_samples: np.ndarray, config: StreamConfig, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Group row indices into batches of similar length under the padded-samples budget.

    Rows are sorted by length (random tie-breaking when `rng` is given); a batch closes when adding the
    next row would exceed `batch_seconds` of padded audio, `max_batch_size` rows, or (when set)
    `batch_tokens` estimated LLM tokens. A row longer than
    the budget gets a batch of its own. Batch order is shuffled when `rng` is given.
    """
    budget = config.data.batch_seconds * SAMPLE_RATE
    data = config.data

    def llm_tokens(rows: int, longest: int) -> float:  # the batch's estimated LLM tokens (padded)
        return rows * (data.row_tokens + longest / SAMPLE_RATE * data.audio_tokens_per_second)

    jitter = rng.random(len(num_samples)) if rng is not None else np.zeros(len(num_samples))
    order = np.lexsort((jitter, num_samples))
    batches: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        size = end - start
        longest = num_samples[order[end - 1]]  # sorted ascending: the last row is the longest
        too_many_tokens = data.batch_tokens and llm_tokens(size, longest) > data.batch_tokens
        if size > 1 and (longest * size > budget or size > data.max_batch_size or too_many_tokens):
            batches.append(order[start:end - 1])
            start = end - 1
    if start < len(order):
        batches.append(order[start:])
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _window_rng(table: pa.Table, config: StreamConfig) -> np.random.Generator | None:
    """Seeded by the window's content, so the same window always buckets the same way."""
    if not config.shuffle or table.num_rows == 0:
        return None
    first_id = table.column("id")[0].as_py()
    return np.random.default_rng([config.seed, zlib.crc32(first_id.encode()), table.num_rows])


def bucket_window(table: pa.Table, config: StreamConfig) -> pa.Table:
    """Shard rows (one utterance each) -> batch rows (one padded batch each), tokenised when the config
    has a Collate."""
    schema = batch_schema(config.collate)
    if table.num_rows == 0:
        return schema.empty_table()
    lengths = table.column("num_samples").to_numpy().astype(np.int64)
    rng = _window_rng(table, config)
    pcm_column = table.column("pcm").combine_chunks()
    meta = {name: table.column(name).to_pylist() for name in BATCH_META}
    out: dict[str, list] = {"pcm": [], "lengths": [], "batch_size": [], "max_len": [],
                            **{name: [] for name in BATCH_META}}
    for rows in plan_batches(lengths, config, rng):
        row_lengths = lengths[rows]
        longest = int(row_lengths.max())
        pcm_BT = np.zeros((len(rows), longest), dtype=np.int16)
        for b, r in enumerate(rows):
            pcm_BT[b, :row_lengths[b]] = binary_value(pcm_column, int(r), "<i2")
        out["pcm"].append(pcm_BT.tobytes())
        out["lengths"].append(row_lengths.astype(np.int32).tolist())
        out["batch_size"].append(len(rows))
        out["max_len"].append(longest)
        for name in BATCH_META:
            column = meta[name]
            out[name].append([column[r] for r in rows])
    if config.collate is not None:
        out |= tokenize_columns(out, config.collate)
    return pa.Table.from_pydict(out, schema=schema)


def batch_schema(collate: Collate | None) -> pa.Schema:
    return pa.schema([
        pa.field("pcm", pa.large_binary()),  # int16 little-endian, B x T, row-major
        pa.field("lengths", pa.list_(pa.int32())),
        pa.field("batch_size", pa.int32()),
        pa.field("max_len", pa.int32()),
        *[pa.field(name, pa.list_(pa.string())) for name in BATCH_META],
        *token_schema(collate),
    ])


# --- the Ray Data path ------------------------------------------------------------------------------
def file_dataset(files: list[str], shuffle_seed: int | None = None):
    """A Ray Dataset of shard paths, one per block. With a seed, the file order changes every execution
    (every epoch) and is the same for a seed (Ray's `randomize_block_order` reseeded per execution).

    Why not `ray.data.read_parquet`: Ray 2.60's Parquet reader lists the files through a footer-reader
    actor, a new worker process for every execution; an epoch or validation pass paid 2-4 s for it
    before its first batch (docs/benchmarks.md). Readers downstream open the files themselves."""
    import ray.data

    dataset = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    if shuffle_seed is None:
        return dataset
    return dataset.randomize_block_order(seed=ray.data.RandomSeedConfig(seed=shuffle_seed,
                                                                        reseed_after_execution=True))


def read_files(paths: pa.Table, columns: list[str], filesystem=None, where: dict | None = None) -> Iterator[pa.Table]:
    """A `map_batches` step over `file_dataset` rows: each file's rows (`columns`, those matching
    `where`), streamed a record batch at a time."""
    row_filter = _filter(where)
    for path in paths.column("path").to_pylist():
        yield from _scan(path, columns, row_filter, filesystem)


def read_shards(shard_dir: str | Path, columns: list[str], where: dict | None = None):
    """The shards' rows as a Ray Dataset (file order, unshuffled): inference inputs."""
    from sed_ray.ray_env import ensure_ray

    ensure_ray()
    files = shard_files(shard_dir)
    filesystem, inside = arrow_paths(files)
    return file_dataset(inside).map_batches(read_files, fn_kwargs={"columns": columns, "filesystem": filesystem,
                                                                   "where": where},
                                            batch_size=1, batch_format="pyarrow")


def bucket_files(paths: pa.Table, split: str | None, config: StreamConfig, filesystem=None) -> Iterator[pa.Table]:
    """A `map_batches` step over a group of `file_dataset` rows: the group's rows of `split`, in windows of
    `window_rows` across its files, each window bucketed into batch rows (`bucket_window`)."""
    for window in _windows(paths.column("path").to_pylist(), split, config.data.window_rows, READ_COLUMNS,
                           filesystem):
        yield bucket_window(window, config)


def ray_dataset(shard_dir: str | Path, split: str | None, config: StreamConfig):
    """A Ray Dataset of batch rows for `split`; pass it to a TorchTrainer and let Ray Train shard it
    with `data_config()` (equal batches per rank, deterministic order). One ingest task reads, windows
    and buckets `data.files_per_task` shards: windows run across the files of a group and end with it,
    as in `plain_batches`."""
    from sed_ray.ray_env import ensure_ray

    ensure_ray()
    filesystem, inside = arrow_paths(shard_files(shard_dir))
    dataset = file_dataset(inside, config.seed if config.shuffle else None)
    return dataset.map_batches(bucket_files, fn_kwargs={"split": split, "config": config, "filesystem": filesystem},
                               batch_size=config.data.files_per_task, batch_format="pyarrow")


def data_config(split_datasets: Iterable[str] = ("train",), ingest_labels: dict[str, str] | None = None):
    """Ray Train DataConfig: split the named datasets across ranks into equal numbers of batch rows,
    preserving order so the split is deterministic; with `ingest_labels`, every ingest task runs on nodes
    carrying those labels."""
    import ray.train
    from ray.data import ExecutionOptions

    options = ExecutionOptions(preserve_order=True, label_selector=dict(ingest_labels) if ingest_labels else None)
    return ray.train.DataConfig(datasets_to_split=list(split_datasets), execution_options=options)


def iter_shard(shard, prefetch_batches: int = 2) -> Iterator[Batch]:
    """What a training worker loops over: `iter_shard(ray.train.get_dataset_shard("train"))`."""
    for table in shard.iter_batches(batch_size=1, batch_format="pyarrow", prefetch_batches=prefetch_batches):
        yield Batch.from_row(table)


# --- the plain path (no Ray) ------------------------------------------------------------------------
def plain_batches(shard_dir: str | Path, split: str | None, config: StreamConfig, *, epoch: int = 0,
                  rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """The same bucketing in one process with pyarrow alone: rank `rank` of `world_size` gets every
    world_size-th batch, and every rank the same count (the remainder is dropped). Streams: with
    several ranks, a metadata-only pass first counts the batches."""
    files = shard_files(shard_dir)
    if config.shuffle:
        files = [files[i] for i in np.random.default_rng([config.seed, epoch]).permutation(len(files))]
    filesystem, files = arrow_paths(files)
    usable = None
    if world_size > 1:
        total = sum(len(plan_batches(w.column("num_samples").to_numpy(), config, _window_rng(w, config)))
                    for w in _group_windows(files, split, config, ["id", "num_samples"], filesystem))
        usable = total - total % world_size
    index = 0
    for window in _group_windows(files, split, config, READ_COLUMNS, filesystem):
        for row in _rows_of(bucket_window(window, config)):
            if usable is not None and index >= usable:
                return
            if index % world_size == rank:
                yield Batch.from_row(row)
            index += 1


def _group_windows(files: list[str], split: str | None, config: StreamConfig, columns: list[str],
                   filesystem) -> Iterator[pa.Table]:
    """Windows group by group, as the Ray path's ingest tasks cut them."""
    step = config.data.files_per_task
    for start in range(0, len(files), step):
        yield from _windows(files[start:start + step], split, config.data.window_rows, columns, filesystem)


def _windows(files: list[str], split: str | None, window_rows: int, columns: list[str],
             filesystem) -> Iterator[pa.Table]:
    """Consecutive windows of `window_rows` rows across `files` (the last one shorter)."""
    pending: list[pa.Table] = []
    pending_rows = 0
    split_filter = _split_filter(split)
    for path in files:
        for table in _scan(path, columns, split_filter, filesystem):
            pending.append(table)
            pending_rows += table.num_rows
            while pending_rows >= window_rows:
                merged = pa.concat_tables(pending)
                yield merged.slice(0, window_rows)
                rest = merged.slice(window_rows)
                pending, pending_rows = [rest], rest.num_rows
    if pending_rows:
        yield pa.concat_tables(pending)


def _filter(where: dict | None):
    """A pyarrow expression for `column == value` pairs (None: every row)."""
    expression = None
    for key, value in (where or {}).items():
        term = pads.field(key) == value
        expression = term if expression is None else expression & term
    return expression


def _scan(path: str, columns: list[str], row_filter, filesystem) -> Iterator[pa.Table]:
    """One Parquet file's matching rows, a record batch at a time (row groups the filter rules out are
    skipped from their statistics)."""
    scanner = pads.dataset(path, format="parquet", filesystem=filesystem).scanner(columns=columns, filter=row_filter)
    for batch in scanner.to_batches():
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def _rows_of(table: pa.Table) -> Iterator[pa.Table]:
    for i in range(table.num_rows):
        yield table.slice(i, 1)
