"""Every connector on a small fixture tree written in the corpus's real layout."""

from __future__ import annotations

import json

import pytest

from corpus_fixtures import write_iemocap, write_meld, write_speechcraft, write_wav
from sed_ray.data.audio import AudioLimits, load_utterance
from sed_ray.data.corpora import ConnectorOptions, list_rows
from sed_ray.data.corpora.speechcraft import gigaspeech_text
from sed_ray.data.schema import SAMPLE_RATE


def _by_id(rows):
    return {r.id: r for r in rows}


def test_iemocap_four_class_protocol_with_sessions(tmp_path):
    labels = write_iemocap(tmp_path)
    rows = _by_id(list_rows("iemocap", tmp_path, ConnectorOptions(test_session=2)))
    assert set(rows) == set(labels)
    assert rows["Ses01F_impro01_M000"].emotion == "happy"  # excited merged into happy
    assert rows["Ses01F_impro01_F000"].emotion == "neutral"
    assert rows["Ses01F_impro01_F001"].reject.startswith("excluded_label")  # frustrated: outside protocol
    assert rows["Ses02M_script01_1_M001"].emotion == "happy"
    assert rows["Ses02M_script01_1_M000"].session == "Session2" and rows["Ses02M_script01_1_M000"].split == "test"
    assert rows["Ses01F_impro01_F000"].split == "train"
    assert rows["Ses01F_impro01_F000"].speaker == "Ses01F" and rows["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert rows["Ses01F_impro01_M000"].text == "Words number 1 here."
    audio = load_utterance(rows["Ses01F_impro01_M000"].audio, None, None, AudioLimits(),
                           rows["Ses01F_impro01_M000"].declared_duration)
    assert len(audio) == int(1.25 * SAMPLE_RATE)


def test_iemocap_wrong_root_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="Session1..Session5"):
        list(list_rows("iemocap", tmp_path, ConnectorOptions()))


def test_meld_official_split_and_mp4_audio(tmp_path):
    write_meld(tmp_path)
    rows = _by_id(list_rows("meld", tmp_path, ConnectorOptions()))
    assert len(rows) == 6
    first = rows["meld-train-dia0_utt0"]
    assert first.emotion == "surprised" and first.speaker == "Chandler"
    assert first.text == "Oh my God, he's lost it."  # mojibake repaired
    assert rows["meld-valid-dia0_utt0"].split == "valid" and rows["meld-valid-dia0_utt0"].emotion == "neutral"
    assert rows["meld-test-dia3_utt3"].emotion == "disgusted"
    assert "train_splits" in first.audio and "dev_splits_complete" in rows["meld-valid-dia0_utt0"].audio
    audio = load_utterance(first.audio, None, None, AudioLimits())  # demuxed from the video container
    assert abs(len(audio) / SAMPLE_RATE - 0.8) < 0.1


def test_meld_label_set_can_be_restricted(tmp_path):
    write_meld(tmp_path)
    rows = _by_id(list_rows("meld", tmp_path, ConnectorOptions(labels=("neutral", "happy", "angry", "sad"))))
    assert rows["meld-train-dia0_utt0"].reject.startswith("unknown_emotion")
    assert rows["meld-train-dia1_utt0"].emotion == "angry" and rows["meld-train-dia1_utt0"].reject is None


def test_speechcraft_joins_descriptions_and_cuts_segments(tmp_path):
    write_speechcraft(tmp_path)
    rows = _by_id(list_rows("speechcraft", tmp_path, ConnectorOptions(subset="M")))
    first = rows["POD0000000001_S0000001"]
    assert first.text == "As they're leaving, can I ask you something?"
    assert first.descriptor == "A man asks calmly, with a low pitch." and first.emotion == "neutral"
    assert (first.start, first.end) == (0.5, 3.0)
    assert rows["POD0000000001_S0000002"].descriptor.startswith("A cheerful voice")
    assert rows["POD0000000001_S0000002"].text == "That is great. We won!"
    assert rows["YOU0000000002_S0000001"].emotion == "sad"
    assert rows["POD0000000001_S0000003"].reject.startswith("excluded_label")  # <MUSIC> only
    assert "POD0000000001_S0000004" not in rows  # not in subset M
    assert rows["NOT0000000000_S0000009"].reject.startswith("malformed_row")
    audio = load_utterance(first.audio, first.start, first.end, AudioLimits())
    assert abs(len(audio) / SAMPLE_RATE - 2.5) < 0.02


def test_gigaspeech_text_normalisation():
    assert gigaspeech_text("I THINK <COMMA> YES <PERIOD> I DO <EXCLAMATIONPOINT>") == "I think, yes. I do!"
    assert gigaspeech_text("<SIL>") is None
    assert gigaspeech_text("HELLO <NOISE> THERE") == "Hello there"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_manifest_formats(tmp_path, fmt):
    write_wav(tmp_path / "a.wav", 1.0)
    write_wav(tmp_path / "sub" / "b.wav", 1.5, rate=16000)
    records = [{"id": "a", "audio": "a.wav", "text": "hello", "emotion": "Happy", "split": "dev", "speaker": None},
               {"audio": "sub/b.wav", "emotion": "ang", "speaker": "s1"}]
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    elif fmt == "csv":
        path.write_text("id,audio,text,emotion,split,speaker\na,a.wav,hello,Happy,dev,\n,sub/b.wav,,ang,,s1\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    rows = list(list_rows("manifest", tmp_path, ConnectorOptions()))  # folder form: finds manifest.*
    assert [r.reject for r in rows] == [None, None]
    assert rows[0].id == "a" and rows[0].emotion == "happy" and rows[0].split == "valid"
    assert rows[1].emotion == "angry" and rows[1].speaker == "s1" and rows[1].audio.endswith("sub/b.wav")
    assert rows[1].id.startswith("manifest:")  # id made from the row number when absent


def test_manifest_malformed_rows_are_kept_as_rejects(tmp_path):
    write_wav(tmp_path / "a.wav", 1.0)
    lines = ['{"id": "ok", "audio": "a.wav", "emotion": "sad"}', "{not json", '["a list"]',
             '{"id": "noaudio", "text": "x"}', '{"id": "weird", "audio": "a.wav", "emotion": "bored"}',
             '{"id": "baddur", "audio": "a.wav", "duration": "long"}', '{"id": "ok", "audio": "a.wav"}',
             '{"id": "badsplit", "audio": "a.wav", "split": "holdout"}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    rows = list(list_rows("manifest", tmp_path / "m.jsonl", ConnectorOptions()))
    reasons = [(r.id, (r.reject or "").split(":")[0]) for r in rows]
    assert reasons == [("ok", ""), ("m:2", "malformed_row"), ("m:3", "malformed_row"), ("noaudio", "malformed_row"),
                       ("weird", "unknown_emotion"), ("baddur", "malformed_row"), ("ok", "malformed_row"),
                       ("badsplit", "malformed_row")]
    assert "line 2" in rows[1].reject and "duplicate id" in rows[6].reject and "holdout" in rows[7].reject


def test_unknown_corpus_lists_choices(tmp_path):
    with pytest.raises(ValueError, match="manifest, iemocap, meld, speechcraft"):
        list_rows("timit", tmp_path)
