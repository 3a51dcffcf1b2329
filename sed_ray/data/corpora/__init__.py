"""Corpus connectors: each lists one corpus's utterances as uniform `SourceRow`s.

A registry maps `--corpus` names to modules, imported only when used. Every module exposes
`list_rows(source: Path, options: ConnectorOptions) -> Iterator[SourceRow]`, in a deterministic order
(prepare's shard plan, and so resuming, relies on it).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator

from sed_ray.data.corpora.base import ConnectorOptions
from sed_ray.data.schema import SourceRow

CONNECTORS = {
    "manifest": "sed_ray.data.corpora.manifest",
    "iemocap": "sed_ray.data.corpora.iemocap",
    "meld": "sed_ray.data.corpora.meld",
    "speechcraft": "sed_ray.data.corpora.speechcraft",
}


def list_rows(corpus: str, source: str | Path, options: ConnectorOptions | None = None) -> Iterator[SourceRow]:
    if corpus not in CONNECTORS:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of: {', '.join(CONNECTORS)}")
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"corpus source {source} does not exist (a manifest file or the corpus root folder)")
    module = importlib.import_module(CONNECTORS[corpus])
    return module.list_rows(source, options or ConnectorOptions())


__all__ = ["CONNECTORS", "ConnectorOptions", "list_rows"]
