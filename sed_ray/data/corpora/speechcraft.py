"""SpeechCraft descriptions over GigaSpeech audio (the paper's 740 h training set).

Layout under --source:
    GigaSpeech.json                    GigaSpeech metadata: {"audios": [{"aid", "path", "segments":
                                       [{"sid", "begin_time", "end_time", "text_tn", "subsets"}]}]}
    audio/**.opus                      long recordings, `path` above is relative to --source
    speechcraft/*.json | *.jsonl       SpeechCraft annotations, joined to segments by segment id
An annotation is either `{sid: "description"}`, `{sid: {"description": ..., "emotion": ...}}`, or a
list/JSONL of objects with the id under "sid", "segment_id", "id" or "key" and the text under
"description" (or "caption"). Segments are cut by begin/end time at decode time; GigaSpeech's
punctuation tags become punctuation; garbage-tag segments (<SIL>, <MUSIC>, ...) are excluded. Only
segments that have a description are listed (the SpeechCraft portion); `subset` keeps only segments of
that GigaSpeech subset in training. Splits: {DEV} -> valid, {TEST} -> test, the rest train.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from sed_ray.data.corpora.base import ConnectorOptions, check_emotion
from sed_ray.data.schema import CANONICAL_EMOTIONS, SourceRow

PUNCTUATION_TAGS = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
GARBAGE_TAGS = {"<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>"}
_ID_KEYS = ("sid", "segment_id", "id", "key")
_TEXT_KEYS = ("description", "caption", "text_description")


def gigaspeech_text(text_tn: str) -> str | None:
    """GigaSpeech normalised text -> readable sentence case with punctuation; None for garbage segments."""
    words = text_tn.split()
    if not words or all(w in GARBAGE_TAGS for w in words):
        return None
    out: list[str] = []
    for word in words:
        if word in PUNCTUATION_TAGS:
            if out:
                out[-1] += PUNCTUATION_TAGS[word]
        elif word not in GARBAGE_TAGS:
            out.append(word.lower())
    text = " ".join(out)
    text = re.sub(r"\bi\b", "I", text)
    # capitalise the first letter of the text and of each sentence
    return re.sub(r"(^|[.?!]\s+)([a-z])", lambda m: m[1] + m[2].upper(), text)


def _annotation_records(path: Path) -> Iterator[tuple[str, dict]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        if isinstance(data, dict):
            for sid, value in data.items():
                yield sid, (value if isinstance(value, dict) else {"description": value})
            return
        items = data
    for item in items:
        sid = next((item[k] for k in _ID_KEYS if k in item), None)
        if sid is not None:
            yield str(sid), item


def load_annotations(folder: Path) -> dict[str, dict]:
    files = sorted(p for p in folder.glob("*") if p.suffix in (".json", ".jsonl")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no SpeechCraft annotation files (*.json, *.jsonl) in {folder}")
    annotations: dict[str, dict] = {}
    for path in files:
        for sid, record in _annotation_records(path):
            annotations[sid] = record
    return annotations


def list_rows(source: Path, options: ConnectorOptions) -> Iterator[SourceRow]:
    metadata_path = source / "GigaSpeech.json"
    if not metadata_path.exists():
        raise FileNotFoundError(f"{metadata_path} is missing: point --source at the GigaSpeech folder "
                                "that holds GigaSpeech.json, audio/ and speechcraft/")
    annotations = load_annotations(source / "speechcraft")
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    allowed = options.labels or CANONICAL_EMOTIONS
    wanted_subset = "{" + options.subset.strip("{}").upper() + "}" if options.subset else None
    listed: set[str] = set()
    for audio in metadata.get("audios", []):
        audio_path = str((source / audio["path"]).resolve())
        for segment in audio.get("segments", []):
            sid = segment["sid"]
            if sid not in annotations:
                continue
            listed.add(sid)
            note = annotations[sid]
            subsets = set(segment.get("subsets", []))
            split = "valid" if "{DEV}" in subsets else "test" if "{TEST}" in subsets else "train"
            row = SourceRow(id=sid, audio=audio_path, corpus="speechcraft", split=split,
                            speaker=audio.get("aid", ""), session=audio.get("aid", ""),
                            descriptor=" ".join(str(next((note[k] for k in _TEXT_KEYS if k in note), "")).split()))
            try:
                row.start, row.end = float(segment["begin_time"]), float(segment["end_time"])
            except (KeyError, TypeError, ValueError):
                row.reject = f"malformed_row: segment {sid} has no usable begin_time/end_time"
                yield row
                continue
            text = gigaspeech_text(segment.get("text_tn", ""))
            if text is None:
                row.reject = f"excluded_label: segment {sid} is a non-speech (garbage-tag) segment"
            elif split == "train" and wanted_subset and wanted_subset not in subsets:
                continue  # outside the requested training subset: not part of this corpus build
            else:
                row.text = text
                row.emotion, rejection = check_emotion(note.get("emotion"), allowed)
                if rejection:
                    row.reject = f"{rejection} (annotation of {sid})"
            yield row
    for sid in sorted(set(annotations) - listed):
        yield SourceRow(id=sid, audio="", corpus="speechcraft",
                        reject=f"malformed_row: SpeechCraft describes segment {sid}, which GigaSpeech.json does not list")
