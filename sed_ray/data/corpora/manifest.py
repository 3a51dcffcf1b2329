"""Generic manifest: JSONL, CSV or Parquet, one utterance per row.

Fields: `audio` (required; a path relative to the manifest, or absolute), and optionally `id`, `text`,
`emotion`, `descriptor`, `speaker`, `split`, `duration` (seconds), `session`, `start`/`end` (seconds,
to cut a segment). `--source` is the manifest file, or a folder holding manifest.{jsonl,csv,parquet}.
A row that cannot be understood is not dropped: it becomes a SourceRow with `reject` set.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterator

from sed_ray.data.corpora.base import ConnectorOptions, check_emotion
from sed_ray.data.schema import FOUR_CLASS, SourceRow, canonical_split

KNOWN_FIELDS = {"id", "audio", "text", "emotion", "descriptor", "speaker", "split", "duration", "session",
                "start", "end"}
SUFFIXES = (".jsonl", ".csv", ".parquet")


def find_manifest(source: Path) -> Path:
    if source.is_file():
        return source
    for suffix in SUFFIXES:
        if (source / f"manifest{suffix}").exists():
            return source / f"manifest{suffix}"
    raise FileNotFoundError(f"{source} is a folder without manifest.jsonl, manifest.csv or manifest.parquet")


def _raw_records(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(1-based row number, record or None, parse error or None) for each row of the file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, None, f"line {number} is not valid JSON ({exc.msg} at column {exc.colno})"
                    continue
                if not isinstance(record, dict):
                    yield number, None, f"line {number} is a JSON {type(record).__name__}, not an object"
                    continue
                yield number, record, None
    elif suffix == ".csv":
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            for number, record in enumerate(csv.DictReader(f), 2):  # row 1 is the header
                if None in record:
                    yield number, None, f"row {number} has more cells than the header has columns"
                    continue
                yield number, {k: v for k, v in record.items() if v not in ("", None)}, None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for number, record in enumerate(pq.read_table(path).to_pylist(), 1):
            yield number, {k: v for k, v in record.items() if v is not None}, None
    else:
        raise ValueError(f"manifest {path} must end in one of {', '.join(SUFFIXES)}")


def _seconds(record: dict, key: str) -> float | None:
    if key not in record:
        return None
    value = float(record[key])  # ValueError/TypeError for junk: the caller rejects the row
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{key}={record[key]!r} is not a non-negative number of seconds")
    return value


def list_rows(source: Path, options: ConnectorOptions) -> Iterator[SourceRow]:
    path = find_manifest(source)
    base = path.parent
    allowed = options.labels or FOUR_CLASS
    seen: set[str] = set()
    for number, record, error in _raw_records(path):
        where = f"{path.name} row {number}"
        if record is None:
            yield SourceRow(id=f"{path.stem}:{number}", audio="", corpus="manifest",
                            reject=f"malformed_row: {error}")
            continue
        row_id = str(record.get("id") or f"{path.stem}:{number}")
        row = SourceRow(id=row_id, audio="", corpus="manifest")
        try:
            if not record.get("audio"):
                raise ValueError("the 'audio' field is missing or empty")
            audio = Path(str(record["audio"]))
            row.audio = str(audio if audio.is_absolute() else (base / audio).resolve())
            for key in ("text", "descriptor", "speaker", "session"):
                if key in record:
                    setattr(row, key, str(record[key]))
            row.split = canonical_split(record.get("split"))
            row.declared_duration = _seconds(record, "duration")
            if row.declared_duration is not None and row.declared_duration == 0:
                raise ValueError("duration=0: an utterance needs some audio")
            row.start, row.end = _seconds(record, "start"), _seconds(record, "end")
        except (ValueError, TypeError) as exc:
            row.reject = f"malformed_row: {where}: {exc}"
            yield row
            continue
        label, rejection = check_emotion(record.get("emotion"), allowed)
        row.emotion = label
        if rejection:
            row.reject = f"{rejection} ({where})"
        elif row_id in seen:
            row.reject = f"malformed_row: {where}: duplicate id {row_id!r}"
        seen.add(row_id)
        yield row
