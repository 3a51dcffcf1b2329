"""IEMOCAP, 4-class protocol: neutral, happy (+ excited merged in), angry, sad.

Layout (../shared/REFERENCE.md section 2):
    Session{1..5}/sentences/wav/<dialog>/<utt>.wav
    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt     "[start - end]<TAB>utt<TAB>label<TAB>[V, A, D]"
    Session{1..5}/dialog/transcriptions/<dialog>.txt    "utt [start-end]: text"
Every utterance keeps its session ("Session3") so leave-one-session-out folds can be built; with
`test_session=N` that session's rows get split "test" and the rest "train". Labels outside the
protocol (frustrated, surprised, xxx...) are reported as `excluded_label`, not silently dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from sed_ray.data.corpora.base import ConnectorOptions
from sed_ray.data.schema import SourceRow

PROTOCOL = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
_EVAL_LINE = re.compile(r"^\[(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\]\s+(?P<utt>\S+)\s+(?P<label>\S+)\s+\[")
_TRANSCRIPT_LINE = re.compile(r"^(?P<utt>\S+)\s+\[[^\]]*\]:\s*(?P<text>.*)$")
_SESSION = re.compile(r"^Session(\d+)$")


def _transcripts(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    texts = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _TRANSCRIPT_LINE.match(line.strip())
        if match:
            texts[match["utt"]] = match["text"].strip()
    return texts


def _speaker(utt: str, session: int) -> str:
    # Ses01F_impro01_M012: the last part's letter is the speaker's gender; each session has one F, one M
    return f"Ses{session:02d}{utt.rsplit('_', 1)[-1][0]}"


def list_rows(source: Path, options: ConnectorOptions) -> Iterator[SourceRow]:
    sessions = sorted((int(m[1]), p) for p in source.iterdir() if (m := _SESSION.match(p.name)) and p.is_dir())
    if not sessions:
        raise FileNotFoundError(f"{source} holds no Session1..Session5 folders: point --source at the "
                                "IEMOCAP_full_release folder")
    for number, session_dir in sessions:
        split = "train" if options.test_session is None else ("test" if number == options.test_session else "train")
        evaluations = sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt"))
        for evaluation in evaluations:
            dialog = evaluation.stem
            texts = _transcripts(session_dir / "dialog" / "transcriptions" / f"{dialog}.txt")
            for line in evaluation.read_text(encoding="utf-8", errors="replace").splitlines():
                match = _EVAL_LINE.match(line.strip())
                if not match:
                    continue
                utt, raw = match["utt"], match["label"].lower()
                row = SourceRow(id=utt, corpus="iemocap", speaker=_speaker(utt, number), split=split,
                                session=f"Session{number}", text=texts.get(utt, ""),
                                audio=str(session_dir / "sentences" / "wav" / dialog / f"{utt}.wav"),
                                declared_duration=float(match["end"]) - float(match["start"]))
                if raw in PROTOCOL:
                    row.emotion = PROTOCOL[raw]
                else:
                    row.reject = f"excluded_label: IEMOCAP label {raw!r} is outside the 4-class protocol ({evaluation.name})"
                yield row
