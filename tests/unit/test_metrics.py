"""Scoring: hand-computed emotion metrics, and equality with jiwer and pycocoevalcap called directly."""

from __future__ import annotations

import json

import pytest

from sed_ray.cli import main
from sed_ray.eval.metrics import emotion_scores, normalise_transcript, score_records, spice_available

TRUE = ["sad", "sad", "sad", "happy", "happy", "angry"]
PRED = ["sad", "happy", "sad", "happy", "angry", "angry"]


def test_emotion_metrics_by_hand():
    m = emotion_scores(TRUE, PRED, ["angry", "happy", "sad"])
    # recalls: angry 1/1, happy 1/2, sad 2/3 -> UA = (1 + .5 + 2/3) / 3 ; WA = 4/6
    assert m["ua"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert m["wa"] == pytest.approx(4 / 6)
    # precision: angry 1/2, happy 1/2, sad 2/2; F1: angry 2/3, happy 1/2, sad 0.8
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.8) / 3)
    assert m["confusion"] == {"labels": ["angry", "happy", "sad"], "matrix": [[1, 0, 0], [1, 1, 0], [0, 1, 2]]}


def test_prediction_outside_the_label_set_is_counted():
    m = emotion_scores(["sad", "sad"], ["sad", "bored"], ["sad", "happy"])
    assert m["confusion"]["labels"] == ["sad", "happy", "bored"] and m["wa"] == 0.5


REFS = ["The cat sat on the mat.", "Hello there, General Kenobi!", "It's a fine day, isn't it?"]
HYPS = ["the cat sat on a mat", "hello there general", "its a fine day isn't it"]
DESC_REF = ["The speaker talks slowly, with a low pitch and a flat intonation.",
            "This voice speaks fast, with a high pitch and a lively intonation, loudly.",
            "The person keeps a steady pace, with a moderate pitch, softly."]
DESC_HYP = ["The speaker talks slowly with a low pitch and a flat, dull intonation.",
            "This voice speaks fast, with a raised pitch, loudly and forcefully.",
            "The talker speaks at a normal pace, with a moderate pitch."]


def test_wer_equals_jiwer_after_documented_normalisation():
    import jiwer

    m = score_records([{"text_ref": r, "text_hyp": h} for r, h in zip(REFS, HYPS)])
    expected = jiwer.wer([normalise_transcript(r) for r in REFS], [normalise_transcript(h) for h in HYPS])
    assert m["wer"] == pytest.approx(expected, abs=0) and m["n"]["text"] == 3
    assert normalise_transcript("It's  a FINE day, isn't it?") == "it's a fine day isn't it"


def test_captioning_metrics_equal_pycocoevalcap_and_spice_without_its_jars_is_null():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r}] for i, r in enumerate(DESC_REF)})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in enumerate(DESC_HYP)})
    m = score_records([{"descriptor_ref": r, "descriptor_hyp": h} for r, h in zip(DESC_REF, DESC_HYP)])
    assert m["bleu4"] == Bleu(4).compute_score(gts, res, verbose=0)[0][3]
    assert m["meteor"] == Meteor().compute_score(gts, res)[0]
    assert m["rouge_l"] == Rouge().compute_score(gts, res)[0]
    assert m["cider"] == Cider().compute_score(gts, res)[0]
    assert 0 < m["bleu4"] < 1 and m["cider"] > 0
    assert "descriptor_generated" not in m  # no second descriptor to score
    # SPICE needs Stanford CoreNLP jars this machine cannot download: null with the reason, not 0 (one
    # scoring run checks both: each starts Java)
    if not spice_available()[0]:
        assert m["spice"] is None
        assert any("SPICE not computed" in n and "stanford-corenlp-3.6.0" in n for n in m["notes"])
    # the emotion followed the draft (descriptor_hyp); the LLM's generated descriptor is scored beside it
    both = score_records([{"descriptor_ref": r, "descriptor_hyp": r, "descriptor_generated": h}
                          for r, h in zip(DESC_REF, DESC_HYP)])
    assert both["bleu4"] == pytest.approx(1.0) and both["descriptor_generated"]["bleu4"] == m["bleu4"]
    assert both["descriptor_generated"]["cider"] == m["cider"]


def test_score_cli_reads_jsonl_and_parquet_and_scores_what_is_present(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"emotion_true": t, "emotion_pred": p} for t, p in zip(TRUE, PRED)]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "p.parquet")
    for name in ("p.jsonl", "p.parquet"):
        assert main(["score", "--predictions", str(tmp_path / name), "--out", str(tmp_path / f"{name}.json")]) == 0
        m = json.loads((tmp_path / f"{name}.json").read_text())
        assert m["wa"] == pytest.approx(4 / 6) and m["wer"] is None and m["bleu4"] is None
        assert m["n"] == {"records": 6, "emotion": 6, "text": 0, "descriptor": 0}
    (tmp_path / "bad.jsonl").write_text('{"emotion_true": "sad"}\n{oops\n')
    assert main(["score", "--predictions", str(tmp_path / "bad.jsonl")]) == 2
    assert "line 2" in capsys.readouterr().err


def test_listening_summary_weighs_by_target_tokens_and_skips_missing_rows():
    from sed_ray.eval.metrics import listening_summary

    rows = [{"nll_own": 2.0, "nll_silence": 6.0, "nll_other": 8.0, "target_tokens": 2},
            {"nll_own": 6.0, "nll_silence": 6.0, "nll_other": float("nan"), "target_tokens": 6},
            {"nll_own": float("nan"), "nll_silence": 1.0, "nll_other": 1.0, "target_tokens": 3},
            {"emotion_true": "sad"}]
    summary = listening_summary(rows)
    assert summary["utterances"] == 2 and summary["target_tokens"] == 8
    assert summary["own_audio"] == pytest.approx(1.0) and summary["silence"] == pytest.approx(1.5)
    assert summary["gain_over_silence"] == pytest.approx(0.5)
    assert summary["other_audio"] == pytest.approx(4.0) and summary["gain_over_other_audio"] == pytest.approx(3.0)
    assert summary["fields"] == {}  # records without per-field figures
    assert listening_summary([{"emotion_true": "sad"}]) is None


def test_listening_summary_per_field():
    from sed_ray.eval.metrics import listening_summary

    rows = [{"nll_own": 8.0, "nll_silence": 12.0, "nll_other": 12.0, "target_tokens": 4,
             "nll_own_transcript": 6.0, "nll_silence_transcript": 6.0, "nll_other_transcript": 6.0, "tokens_transcript": 3,
             "nll_own_emotion": 2.0, "nll_silence_emotion": 6.0, "nll_other_emotion": 6.0, "tokens_emotion": 1,
             "nll_own_descriptor": float("nan"), "nll_silence_descriptor": float("nan"), "tokens_descriptor": float("nan")}]
    fields = listening_summary(rows)["fields"]
    assert set(fields) == {"transcript", "emotion"}  # a field the task lacks (NaN) is left out
    assert fields["transcript"]["gain_over_silence"] == pytest.approx(0.0)
    assert fields["emotion"]["gain_over_silence"] == pytest.approx(4.0)
    assert fields["emotion"]["target_tokens"] == 1


def test_a_field_the_task_does_not_generate_is_not_scored():
    # the --no-descriptors ablation generates no descriptor: BLEU is "not scored", not 0
    from sed_ray.eval.evaluate import as_prediction

    record = {"id": "u1", "emotion": "sad", "emotion_pred": "sad", "text": "a cat", "transcript": "a cat",
              "descriptor": "The pace is slow.", "descriptor_pred": ""}
    ablation = score_records([as_prediction(record, ("transcript", "emotion"))])
    assert ablation["bleu4"] is None and ablation["cider"] is None and ablation["n"]["descriptor"] == 0
    assert ablation["ua"] == 1.0 and ablation["wer"] == 0.0
    joint = score_records([as_prediction(record, ("transcript", "descriptor", "emotion"))])
    assert joint["bleu4"] is not None and joint["n"]["descriptor"] == 1
