"""The synthetic corpus: determinism, held-out voices and sentences, balanced emotions, descriptors."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import soundfile as sf

from sed_ray.data.synth import EMOTION_PROFILES, corpus_settings, plan_corpus, sentence_bank, synthesize_corpus


def _rows(manifest):
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_manifest_fields_and_real_audio(synth_corpus):
    rows = _rows(synth_corpus / "manifest.jsonl")
    assert len(rows) == 96
    assert set(rows[0]) == {"id", "audio", "text", "emotion", "descriptor", "speaker", "split", "duration"}
    audio, rate = sf.read(synth_corpus / rows[0]["audio"])
    assert rate == 22050 and abs(len(audio) / rate - rows[0]["duration"]) < 1e-3
    assert np.abs(audio).max() > 0.05


def test_splits_hold_out_voices_and_sentences(synth_corpus):
    rows = _rows(synth_corpus / "manifest.jsonl")
    speakers = {s: {r["speaker"] for r in rows if r["split"] == s} for s in ("train", "valid", "test")}
    texts = {s: {r["text"] for r in rows if r["split"] == s} for s in ("train", "valid", "test")}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not speakers[a] & speakers[b]
        assert not texts[a] & texts[b]


def test_emotions_balanced_per_split_and_per_sentence():
    plan = plan_corpus(400, seed=3, variants=[f"m{i}" for i in range(1, 9)] + [f"f{i}" for i in range(1, 6)],
                       speakers=20)
    for split in ("train", "valid", "test"):
        counts = collections.Counter(u.emotion for u in plan if u.split == split)
        assert max(counts.values()) - min(counts.values()) <= 1, counts
    # the words carry no emotion: each sentence is spoken in all four emotions
    by_text = collections.defaultdict(set)
    for u in plan:
        by_text[u.text].add(u.emotion)
    full = sum(len(e) == 4 for e in by_text.values())
    assert full >= 0.9 * len(by_text)


def test_emotion_cues_overlap_but_differ():
    plan = plan_corpus(2000, seed=0, variants=[f"m{i}" for i in range(1, 9)], speakers=16)
    rate = {e: np.array([u.rate / u.speaker.rate for u in plan if u.emotion == e]) for e in EMOTION_PROFILES}
    assert rate["sad"].mean() < rate["neutral"].mean() < rate["angry"].mean()
    assert (rate["happy"] < rate["neutral"].max()).any()  # overlapping: no cue separates perfectly
    pitch_range = {e: np.array([u.pitch_range for u in plan if u.emotion == e]) for e in EMOTION_PROFILES}
    assert pitch_range["happy"].mean() > pitch_range["neutral"].mean() > pitch_range["sad"].mean()


def test_descriptors_follow_the_parameters_used():
    plan = plan_corpus(800, seed=1, variants=[f"m{i}" for i in range(1, 9)], speakers=16)
    sad = [u.descriptor for u in plan if u.emotion == "sad"]
    happy = [u.descriptor for u in plan if u.emotion == "happy"]
    slow_words = ("slow", "drags")
    assert sum(any(w in d for w in slow_words) for d in sad) > 0.6 * len(sad)
    assert sum(any(w in d for w in slow_words) for d in happy) < 0.1 * len(happy)
    assert len(set(sad)) > len(sad) / 4  # varied wording, not one template


def test_sentence_bank_is_large_and_distinct():
    bank = sentence_bank(400, seed=0)
    assert len(set(bank)) == 400


def test_same_seed_same_corpus(tmp_path):
    a = synthesize_corpus(tmp_path / "a", utterances=24, seed=5, workers=2, speakers=8)
    b = synthesize_corpus(tmp_path / "b", utterances=24, seed=5, workers=1, speakers=8)
    assert a.read_text() == b.read_text()
    first = json.loads(a.read_text().splitlines()[3])["audio"]
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    c = synthesize_corpus(tmp_path / "c", utterances=24, seed=6, workers=2, speakers=8)
    assert c.read_text() != a.read_text()
    # the corpus records what it was made with; synthesising again over it replaces both
    assert corpus_settings(tmp_path / "c") == {"utterances": 24, "speakers": 8, "seed": 6}
    synthesize_corpus(tmp_path / "c", utterances=16, seed=7, workers=2, speakers=8)
    assert corpus_settings(tmp_path / "c") == {"utterances": 16, "speakers": 8, "seed": 7}
    assert len((tmp_path / "c" / "manifest.jsonl").read_text().splitlines()) == 16
    assert corpus_settings(tmp_path / "nothing-here") is None


def test_every_level_of_a_cue_has_as_many_wordings():
    # otherwise the most likely generated sentence favours the level with fewer synonyms
    from sed_ray.data.synth import _WORDING

    per_cue: dict[str, set[int]] = {}
    for (cue, _level), options in _WORDING.items():
        per_cue.setdefault(cue, set()).add(len(options))
    assert all(len(counts) == 1 for counts in per_cue.values()), per_cue


@pytest.mark.parametrize("kwargs,message", [
    ({"utterances": 11}, "--utterances must be at least 12"),
    ({"speakers": 2}, "--speakers must be at least 3"),
    ({"seed": -1}, "--seed must be a non-negative integer"),
])
def test_impossible_corpus_settings_are_refused_clearly(kwargs, message):
    settings = {"utterances": 24, "seed": 0, "speakers": 8} | kwargs
    with pytest.raises(ValueError, match=message):
        plan_corpus(settings.pop("utterances"), settings.pop("seed"), ["m1", "f1", "m2", "f2"], **settings)


def test_an_output_path_that_is_a_file_is_named_without_a_traceback(tmp_path, capsys):
    from sed_ray.cli import main

    (tmp_path / "taken").write_text("not a folder")
    assert main(["synth", "--out", str(tmp_path / "taken"), "--utterances", "12", "--speakers", "3"]) == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and str(tmp_path / "taken") in err and "Traceback" not in err
