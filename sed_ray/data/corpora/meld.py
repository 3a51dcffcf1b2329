"""MELD: 7 emotions, official train/dev/test split, audio demuxed from the mp4 clips with PyAV.

Layout (MELD.Raw): {train,dev,test}_sent_emo.csv with columns Utterance, Speaker, Emotion,
Dialogue_ID, Utterance_ID (others ignored); clips dia{D}_utt{U}.mp4 in one folder per split, found by
the folder names of the official archives (train_splits, dev_splits_complete,
output_repeated_splits_test) or a folder named after the split.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterator

from sed_ray.data.corpora.base import ConnectorOptions, check_emotion
from sed_ray.data.schema import CANONICAL_EMOTIONS, SourceRow

SPLITS = {"train": ("train_sent_emo.csv", ("train_splits", "train")),
          "valid": ("dev_sent_emo.csv", ("dev_splits_complete", "dev_splits", "dev")),
          "test": ("test_sent_emo.csv", ("output_repeated_splits_test", "test_splits", "test"))}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")


def _find_file(source: Path, name: str) -> Path | None:
    for root, _dirs, files in sorted(os.walk(source)):
        if name in files:
            return Path(root) / name
    return None


def _media_dir(source: Path, names: tuple[str, ...]) -> Path | None:
    """The first folder, searched breadth-first in name order, whose name is one of `names`."""
    for name in names:
        for root, dirs, _files in sorted(os.walk(source)):
            if name in dirs:
                return Path(root) / name
    return None


def _clean(text: str) -> str:
    # MELD's CSVs carry Windows-1252 punctuation decoded as UTF-8 mojibake; repair the usual cases.
    for bad, good in (("\u00e2\u0080\u0099", "'"), ("\u00e2\u0080\u0094", "-"), ("\u00e2\u0080\u0093", "-"),
                      ("\u00e2\u0080\u009c", '"'), ("\u00e2\u0080\u009d", '"'), ("\u0092", "'"),
                      ("\u0085", "...")):
        text = text.replace(bad, good)
    return " ".join(text.split())


def list_rows(source: Path, options: ConnectorOptions) -> Iterator[SourceRow]:
    allowed = options.labels or CANONICAL_EMOTIONS
    found_any = False
    for split, (csv_name, media_names) in SPLITS.items():
        csv_path = _find_file(source, csv_name)
        if csv_path is None:
            continue
        found_any = True
        media = _media_dir(source, media_names) or csv_path.parent
        with open(csv_path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{csv_path} lacks the column(s) {', '.join(missing)}")
            for number, record in enumerate(reader, 2):
                dialogue, utterance = (record.get("Dialogue_ID") or "").strip(), (record.get("Utterance_ID") or "").strip()
                row = SourceRow(id=f"meld-{split}-dia{dialogue}_utt{utterance}", corpus="meld", split=split,
                                audio=str(media / f"dia{dialogue}_utt{utterance}.mp4"),
                                text=_clean(record.get("Utterance") or ""), speaker=(record.get("Speaker") or "").strip(),
                                session=f"{split}-dia{dialogue}")
                if not dialogue.isdigit() or not utterance.isdigit():
                    row.reject = f"malformed_row: {csv_path.name} row {number}: Dialogue_ID/Utterance_ID must be integers"
                else:
                    row.emotion, rejection = check_emotion(record.get("Emotion"), allowed)
                    if rejection:
                        row.reject = f"{rejection} ({csv_path.name} row {number})"
                yield row
    if not found_any:
        raise FileNotFoundError(f"{source} holds none of {', '.join(c for c, _ in SPLITS.values())}: point "
                                "--source at the MELD.Raw folder")
