"""The row schema every corpus connector produces and every shard stores.

A connector turns a corpus on disk into `SourceRow`s (metadata plus where the audio lives); `prepare`
decodes each row's audio and writes it as 16 kHz int16 PCM next to the metadata (`SHARD_SCHEMA`).

Emotion labels are canonicalised to one vocabulary so corpora can be mixed:
neutral, happy, angry, sad, surprised, fearful, disgusted. Each corpus declares which of them its
protocol uses (IEMOCAP: the first four; MELD: all seven).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pyarrow as pa

from sed_ray.config import CANONICAL_EMOTIONS, FOUR_CLASS  # noqa: F401 (re-exported for the connectors)

SAMPLE_RATE = 16_000  # Hz; HuBERT's rate, and the only rate shards store

# Spellings seen across corpora -> canonical label. Keys are lower-case.
EMOTION_ALIASES = {
    "neutral": "neutral", "neu": "neutral", "calm": "neutral",
    "happy": "happy", "hap": "happy", "happiness": "happy", "joy": "happy",
    "angry": "angry", "ang": "angry", "anger": "angry",
    "sad": "sad", "sadness": "sad",
    "surprised": "surprised", "surprise": "surprised", "sur": "surprised",
    "fearful": "fearful", "fear": "fearful", "fea": "fearful",
    "disgusted": "disgusted", "disgust": "disgusted", "dis": "disgusted",
}

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"train": "train", "valid": "valid", "dev": "valid", "validation": "valid", "val": "valid",
                 "test": "test", "eval": "test"}


def canonical_emotion(label: Any) -> str | None:
    """Canonical label for `label`, None for "no label", or raise ValueError naming the spelling."""
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return None
    text = str(label).strip().lower()
    if not text:
        return None
    if text not in EMOTION_ALIASES:
        raise ValueError(f"unknown emotion label {label!r} (known: {', '.join(CANONICAL_EMOTIONS)})")
    return EMOTION_ALIASES[text]


def canonical_split(split: Any) -> str:
    text = "train" if split is None else str(split).strip().lower() or "train"
    if text not in SPLIT_ALIASES:
        raise ValueError(f"unknown split {split!r} (use one of {', '.join(SPLITS)})")
    return SPLIT_ALIASES[text]


@dataclasses.dataclass
class SourceRow:
    """One utterance as a connector lists it, before its audio is decoded.

    `start`/`end` (seconds) cut a segment out of a longer file; None means the whole file.
    `reject` is set by a connector for a row it could not make sense of (malformed manifest line,
    unknown label...): such a row still travels to `prepare`, which files it in rejects.jsonl.
    """

    id: str
    audio: str  # absolute path of the audio or video file
    corpus: str
    text: str = ""
    emotion: str | None = None
    descriptor: str = ""
    speaker: str = ""
    split: str = "train"
    session: str = ""  # recording session (IEMOCAP's fold unit); "" when the corpus has none
    start: float | None = None
    end: float | None = None
    declared_duration: float | None = None  # what the listing claims, checked against the decoded audio
    reject: str | None = None  # "reason: detail" when the connector already knows the row is bad

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SourceRow":
        return cls(**data)


# What a shard row holds. PCM is mono int16 little-endian at SAMPLE_RATE, stored as raw bytes (one
# binary value per utterance): a list<int16> column makes Parquet decode a repetition level per
# sample, which measured about 10x slower to scan (docs/benchmarks.md). `num_samples` lets planners
# read durations without touching the audio column. Decode a value with `pcm_from_bytes`.
SHARD_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("pcm", pa.large_binary(), nullable=False, metadata={"encoding": "int16le", "sample_rate": "16000"}),
    pa.field("num_samples", pa.int32(), nullable=False),
    pa.field("duration", pa.float32(), nullable=False),  # seconds
    pa.field("text", pa.string()),
    pa.field("emotion", pa.string()),  # canonical label or null
    pa.field("descriptor", pa.string()),
    pa.field("speaker", pa.string()),
    pa.field("split", pa.string()),
    pa.field("session", pa.string()),
    pa.field("corpus", pa.string()),
    pa.field("source", pa.string()),  # the audio file it came from, with [start-end] when a segment
])

METADATA_COLUMNS = [f.name for f in SHARD_SCHEMA if f.name != "pcm"]


def pcm_from_bytes(data: bytes) -> np.ndarray:
    """A shard's `pcm` value -> int16 samples (a view, no copy)."""
    return np.frombuffer(data, dtype="<i2")


def pcm_to_float(pcm):
    """int16 PCM -> float32 in [-1, 1): a numpy array, or a torch tensor on whatever device it is."""
    if isinstance(pcm, np.ndarray):
        return pcm.astype(np.float32) / 32768.0
    assert not pcm.is_floating_point(), "pcm_to_float takes int16 PCM; this tensor is already float"
    return pcm.float().div_(32768.0)  # .float() made a new tensor: the in-place scale is safe


def binary_value(array: pa.LargeBinaryArray, index: int, dtype: str) -> np.ndarray:
    """Value `index` of a large_binary array as a read-only numpy view of its buffer (no copy)."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64, count=2, offset=8 * (array.offset + index))
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[2], dtype=dtype, count=int(offsets[1] - offsets[0]) // itemsize,
                         offset=int(offsets[0]))
