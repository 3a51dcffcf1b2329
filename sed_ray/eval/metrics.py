"""Scores for emotion (UA, WA, macro-F1, confusion), transcripts (WER) and descriptors (captioning metrics).

Captioning metrics are coco-caption's own implementations (pycocoevalcap): texts are tokenised with its
PTB tokenizer (Java), then BLEU@4, METEOR (its bundled jar), ROUGE-L and CIDEr(-D) are computed
corpus-level exactly as coco-caption does. SPICE needs the Stanford CoreNLP 3.6.0 jars, which
pycocoevalcap downloads on first use; where they are absent `spice` is null and `notes` says how to
enable it. No value is ever made up.

WER uses jiwer after this normalisation of both sides: lower-case, punctuation removed (apostrophes
inside words kept), whitespace collapsed.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from sed_ray.model.prompt import FIELD_TITLES

_PUNCT = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")


def normalise_transcript(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", (text or "").lower()).split())


def emotion_scores(truth: list[str], predicted: list[str], labels: list[str] | None = None) -> dict:
    """scikit-learn's definitions: UA = balanced accuracy (mean recall over the classes in the truth),
    WA = accuracy, macro-F1 over the classes seen in truth or predictions; confusion[i][j] counts true
    label i predicted as j, in the returned label order."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, recall_score

    labels = list(labels or sorted(set(truth) | set(predicted)))
    labels += sorted({p for p in predicted if p not in labels})  # an out-of-set prediction still counts
    present = [label for label in labels if label in set(truth)]
    recalls = recall_score(truth, predicted, labels=present, average=None, zero_division=0)
    return {"ua": float(balanced_accuracy_score(truth, predicted)),
            "wa": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "per_class_recall": {label: float(r) for label, r in zip(present, recalls)},
            "confusion": {"labels": labels, "matrix": confusion_matrix(truth, predicted, labels=labels).tolist()}}


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    pairs = [(normalise_transcript(r), normalise_transcript(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]  # an empty reference has no words to err on
    if not pairs:
        return float("nan")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def spice_available() -> tuple[bool, str]:
    import pycocoevalcap.spice as spice_pkg

    lib = Path(spice_pkg.__file__).parent / "lib"
    missing = [j for j in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar") if not (lib / j).exists()]
    if missing:
        return False, (f"SPICE not computed: Stanford CoreNLP 3.6.0 jars ({', '.join(missing)}) are missing from "
                       f"{lib}; with network access run `python -c \"from pycocoevalcap.spice.get_stanford_models "
                       "import get_stanford_models; get_stanford_models()\"` (or copy the two jars there) to enable it")
    return True, ""


def ptb_tokenized(references: list[str], hypotheses: list[str]) -> tuple[dict, dict]:
    """coco-caption's PTB tokenisation of one reference and one hypothesis per utterance."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # one Java run for both sides (it tokenises line by line, so the result is the same as two runs)
    tokens = PTBTokenizer().tokenize({**{("ref", i): [{"caption": r}] for i, r in enumerate(references)},
                                      **{("hyp", i): [{"caption": h}] for i, h in enumerate(hypotheses)}})
    return ({i: tokens[("ref", i)] for i in range(len(references))},
            {i: tokens[("hyp", i)] for i in range(len(hypotheses))})


def _bleu4_cider(gts: dict, res: dict) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    return {"bleu4": float(Bleu(4).compute_score(gts, res, verbose=0)[0][3]),
            "cider": float(Cider().compute_score(gts, res)[0])}


def bleu_cider(references: list[str], hypotheses: list[str]) -> dict:
    """coco-caption BLEU@4 and CIDEr alone (no Java scorers)."""
    return _bleu4_cider(*ptb_tokenized(references, hypotheses))


def caption_scores(references: list[str], hypotheses: list[str]) -> dict:
    """coco-caption BLEU@4, METEOR, ROUGE-L, CIDEr and SPICE (one reference per utterance)."""
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = ptb_tokenized(references, hypotheses)
    scores = {**_bleu4_cider(gts, res), "rouge_l": float(Rouge().compute_score(gts, res)[0])}
    meteor = Meteor()  # a Java subprocess, ended when the object is collected
    scores["meteor"] = float(meteor.compute_score(gts, res)[0])
    del meteor
    notes = []
    available, why = spice_available()
    if available:
        from pycocoevalcap.spice.spice import Spice

        scores["spice"] = float(Spice().compute_score(gts, res)[0])
    else:
        scores["spice"] = None
        notes.append(why)
    return {**scores, "notes": notes}


def score_records(records: list[dict], labels: list[str] | None = None) -> dict:
    """Score whatever pairs the records carry: emotion_true/pred, text_ref/hyp, descriptor_ref/hyp."""
    def pairs(a: str, b: str) -> list[tuple]:
        return [(r[a], r[b]) for r in records if r.get(a) is not None and r.get(b) is not None]

    out: dict = {"n": {"records": len(records)}, "notes": []}
    emotions = pairs("emotion_true", "emotion_pred")
    out["n"]["emotion"] = len(emotions)
    if emotions:
        out |= emotion_scores([str(t) for t, _ in emotions], [str(p) for _, p in emotions], labels)
    texts = pairs("text_ref", "text_hyp")
    out["n"]["text"] = len(texts)
    if texts:
        out["wer"] = word_error_rate([str(r) for r, _ in texts], [str(h) for _, h in texts])
    descriptors = [(r, h) for r, h in pairs("descriptor_ref", "descriptor_hyp") if str(r).strip()]
    out["n"]["descriptor"] = len(descriptors)
    if descriptors:
        captions = caption_scores([str(r) for r, _ in descriptors], [str(h) for _, h in descriptors])
        out["notes"] += captions.pop("notes")
        out |= captions
    # With a descriptor draft the emotion is scored after the draft; the LLM's own generated descriptor
    # is scored too, so the two can be compared (BLEU@4 and CIDEr only: the Java scorers are slow).
    generated = [(r, h) for r, h in pairs("descriptor_ref", "descriptor_generated") if str(r).strip()]
    if generated and any(r.get("descriptor_generated") != r.get("descriptor_hyp") for r in records):
        out["descriptor_generated"] = bleu_cider([str(r) for r, _ in generated], [str(h) for _, h in generated])
    for key in ("ua", "wa", "macro_f1", "confusion", "wer", "bleu4", "meteor", "rouge_l", "cider", "spice"):
        out.setdefault(key, None)
    return out


def listening_summary(records: list[dict]) -> dict | None:
    """Nats per target token of the reference targets given each utterance's own audio, same-length
    silence, and another utterance's audio (SpeechEmotionLLM.listening_check), and what the audio is
    worth: `gain_over_silence` (what it says beyond its length) and `gain_over_other_audio`. `fields`
    gives the same per target field (transcript, descriptor, emotion) where the records have them."""
    out = _listening("nll_own", "nll_silence", "nll_other", "target_tokens", records)
    if out is None:
        return None
    fields = {}
    for field in FIELD_TITLES:
        figures = _listening(f"nll_own_{field}", f"nll_silence_{field}", f"nll_other_{field}", f"tokens_{field}", records)
        if figures is not None:
            fields[field] = figures
    return {**out, "fields": fields}


def _listening(own_key: str, silence_key: str, other_key: str, tokens_key: str, records: list[dict]) -> dict | None:
    def finite(value) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    rows = [r for r in records if finite(r.get(own_key)) and finite(r.get(silence_key))
            and finite(r.get(tokens_key)) and r[tokens_key] > 0]
    if not rows:
        return None
    tokens = sum(r[tokens_key] for r in rows)
    own = sum(r[own_key] for r in rows) / tokens
    silence = sum(r[silence_key] for r in rows) / tokens
    out = {"utterances": len(rows), "target_tokens": int(tokens), "own_audio": own, "silence": silence,
           "gain_over_silence": silence - own, "other_audio": None, "gain_over_other_audio": None}
    paired = [r for r in rows if finite(r.get(other_key))]
    if paired:
        paired_tokens = sum(r[tokens_key] for r in paired)
        out["other_audio"] = sum(r[other_key] for r in paired) / paired_tokens
        out["gain_over_other_audio"] = out["other_audio"] - sum(r[own_key] for r in paired) / paired_tokens
    return out


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """JSONL or Parquet predictions file -> records; a malformed line names its number."""
    import json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {number} is not valid JSON ({exc.msg}); fix or remove it") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records
