"""Small file helpers every layer uses: writes that land whole, and JSON-lines reading, for local paths
and object storage alike (sed_ray.storage).

A reader never sees a half-written file: each local write goes to a temporary name in the same folder,
then `os.replace` renames it into place (atomic on POSIX file systems); an object is written to a local
temporary file first, then uploaded as one object (visible only once complete).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from sed_ray.storage import RemotePath, location

RUN_METRICS = "metrics.jsonl"  # in a run folder: one JSON record per logged step (training writes, reports read)


def atomic_write(path: str | os.PathLike | RemotePath, write: Callable[[Path], None]) -> Path | RemotePath:
    """Call `write(tmp_path)`, then rename (or upload) it to `path`. On failure the temporary file is
    removed and `path` keeps whatever it held before."""
    path = location(path)
    if isinstance(path, RemotePath):
        with tempfile.TemporaryDirectory(prefix="sed-ray-upload-") as folder:
            tmp = Path(folder) / path.name
            write(tmp)
            path.upload(tmp)
        return path
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")  # unique: concurrent writers never share one
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike, value) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2))


def read_jsonl(path: str | os.PathLike | RemotePath) -> list[dict]:
    """Every line of a JSON-lines file as a dict ([] when the file does not exist); a bad line is
    named by file and line number."""
    path = location(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return records
