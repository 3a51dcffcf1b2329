"""What a launch reads from a split on the driver, once, before any worker starts: the texts the tiny
tokenizer learns, the audio its encoder pretrains on, and the descriptor draft's bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from sed_ray.data.schema import pcm_from_bytes, pcm_to_float
from sed_ray.data.stream import shard_dataset
from sed_ray.storage import location, problem


def _split_table(shards: str | Path, split: str, columns: list[str]):
    return shard_dataset(shards).to_table(columns=columns, filter=pads.field("split") == split)


def corpus_texts(shards: str | Path, split: str) -> list[str]:
    """Every non-empty transcript and descriptor of a split."""
    table = _split_table(shards, split, ["text", "descriptor"])
    return [t for column in table.columns for t in column.to_pylist() if t]


def descriptor_bank(shards: str | Path, split: str, size: int, seed: int) -> list[str]:
    """Up to `size` distinct descriptors of a split for the descriptor draft's bank: the split's descriptors
    in a seeded random order, first occurrences kept, so frequent descriptors are likelier to be in it."""
    if size <= 0:
        return []
    table = _split_table(shards, split, ["descriptor"])
    texts = [" ".join(t.split()) for t in table.column("descriptor").to_pylist() if t and t.strip()]
    order = np.random.default_rng(seed).permutation(len(texts))
    return list(dict.fromkeys(texts[i] for i in order))[:size]


def corpus_audio(shards: str | Path, split: str, limit: int = 2000) -> list[np.ndarray]:
    """Up to `limit` utterances of a split as float arrays (for the tiny encoder's pretraining)."""
    table = _split_table(shards, split, ["pcm"])
    return [pcm_to_float(pcm_from_bytes(v)) for v in table.column("pcm").to_pylist()[:limit]]


def shards_problem(shards: str | Path) -> str | None:
    """Why `shards` cannot be trained on (an object store that cannot be read, no finished `sed-ray prepare`
    output there), or None."""
    unusable = problem(shards, "data.shards")
    if unusable:
        return unusable
    if not (location(shards) / "summary.json").exists():
        return f"data.shards: {shards} is not a finished `sed-ray prepare` output (no summary.json)"
    return None
