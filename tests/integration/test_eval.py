"""`sed-ray evaluate` and `sed-ray infer` on a briefly trained tiny checkpoint, the report in a real browser."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow.parquet as pq
import pytest

from browser import BROWSER, MISSING, dump_dom, figures_loaded
from corpus_fixtures import write_mp4, write_wav
from sed_ray.cli import main



@pytest.fixture(scope="module")
def s3_checkpoint(tiny_checkpoint, s3):
    """The trained run (its checkpoints and metrics), uploaded to the S3 test bucket: evaluate and infer
    read the checkpoint from there (and evaluate the run's curves beside it)."""
    from sed_ray.storage import upload_folder

    run_dir = tiny_checkpoint.parents[1]
    upload_folder(run_dir, f"{s3}/runs/{run_dir.name}")
    return f"{s3}/runs/{run_dir.name}/{tiny_checkpoint.relative_to(run_dir).as_posix()}"


@pytest.fixture(scope="module")
def evaluation(s3_checkpoint, s3_shards, s3, tmp_path_factory, ray_cluster):
    """An evaluation that reads its checkpoint and shards from S3 and writes its outputs there; the tests
    read a local copy of what landed in the bucket."""
    from sed_ray.storage import local_copy

    out = f"{s3}/evaluation"
    code = main(["evaluate", "--checkpoint", s3_checkpoint, "--data", s3_shards, "--split", "test",
                 "--out", out, "--max-new-tokens", "24"])
    assert code == 0
    return local_copy(out)


def test_evaluate_writes_metrics_predictions_and_report(evaluation, synth_shards):
    metrics = json.loads((evaluation / "metrics.json").read_text())
    for key in ("ua", "wa", "macro_f1", "confusion", "wer", "bleu4", "meteor", "rouge_l", "cider", "spice", "n"):
        assert key in metrics, key
    test_rows = pq.read_table(sorted((synth_shards / "shards").glob("*.parquet")), columns=["split"]).column("split")
    expected = sum(1 for s in test_rows.to_pylist() if s == "test")
    predictions = pq.read_table(evaluation / "predictions.parquet").to_pylist()
    assert len(predictions) == expected == metrics["n"]["emotion"]
    assert all(p["emotion_pred"] in metrics["confusion"]["labels"] for p in predictions)
    assert all(abs(sum(json.loads(p["posterior"]).values()) - 1) < 1e-4 for p in predictions)
    # tiny.yaml has the descriptor draft: it retrieves one of the training descriptors, never a test one
    train_descriptors = {" ".join(r["descriptor"].split()) for r in pq.read_table(
        sorted((synth_shards / "shards").glob("*.parquet")), columns=["split", "descriptor"]).to_pylist()
        if r["split"] == "train"}
    assert all(p["descriptor_draft"] in train_descriptors for p in predictions)
    # by default the emotion follows the draft; the LLM's own descriptor is kept and scored beside it
    assert all(p["descriptor_hyp"] == p["descriptor_draft"] for p in predictions)
    assert set(metrics["descriptor_generated"]) == {"bleu4", "cider"}
    assert set(metrics["silhouette"]) == {"content_by_emotion", "content_by_speaker", "descriptor_by_emotion",
                                          "descriptor_by_speaker"}
    figures = sorted(p.name for p in (evaluation / "figures").glob("*.png"))
    assert figures == ["confusion.png", "curves.png", "latents.png", "recall.png"]
    assert (evaluation / "report.html").stat().st_size > 10_000
    listening = metrics["listening"]
    assert listening["utterances"] == expected and listening["target_tokens"] > expected
    for key in ("own_audio", "silence", "other_audio"):
        assert 0 < listening[key] < 20, listening
    assert listening["gain_over_silence"] == pytest.approx(listening["silence"] - listening["own_audio"])
    assert all(p["nll_own"] > 0 and p["target_tokens"] > 0 for p in predictions)
    assert set(listening["fields"]) == {"transcript", "descriptor", "emotion"}
    assert sum(f["target_tokens"] for f in listening["fields"].values()) == listening["target_tokens"]
    assert all(p["nll_own_descriptor"] > 0 and p["tokens_emotion"] >= 1 for p in predictions)
    assert "Listening check" in (evaluation / "report.html").read_text()


@pytest.mark.skipif(BROWSER is None, reason=MISSING)
def test_report_renders_in_headless_chromium_with_every_figure(evaluation, tmp_path):
    result = dump_dom(evaluation / "report.html", tmp_path / "profile")
    dom = result.stdout
    expected, loaded = figures_loaded(dom)
    assert expected == 4 and loaded == expected  # the page's own check: every image decoded
    assert "Uncaught" not in result.stderr  # no JavaScript error
    assert "<h2>Metrics</h2>" in dom and "Explanations" in dom
    listening = dom[dom.index("<h2>Listening check</h2>"):]
    assert all(f"<th>{column}</th>" in listening for column in ("whole target", "transcript", "descriptor", "emotion"))
    # the emotion followed the draft, so the LLM's own (different) descriptor is shown beside it
    explanations = dom[dom.index("Explanations"):]
    assert re.search(r"<th>reference descriptor</th>\s*<th>predicted descriptor \(the emotion follows it\)</th>"
                     r"\s*<th>descriptor the LLM generated</th>", explanations)


def test_infer_reports_broken_files_and_predicts_the_rest(s3_checkpoint, s3, tmp_path, ray_cluster, capsys):
    """Reads the checkpoint from S3 and writes its outputs there."""
    from sed_ray.storage import arrow, location

    folder = tmp_path / "audio"
    write_wav(folder / "one.wav", 1.2, rate=22050)
    write_wav(folder / "nested" / "two.flac", 0.9, rate=16000)
    write_mp4(folder / "three.mp4", 1.0)
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEjunk" * 10)
    (folder / "empty.mp3").write_bytes(b"")
    full = write_wav(tmp_path / "full.wav", 1.0).read_bytes()
    (folder / "cut.wav").write_bytes(full[: len(full) // 3])
    out = location(f"{s3}/infer")
    assert main(["infer", "--checkpoint", s3_checkpoint, "--input", str(folder), "--out", str(out),
                 "--max-new-tokens", "16", "--num-beams", "2", "--actors", "1", "--gpus-per-actor", "0"]) == 0
    fs, inside = arrow(out / "predictions.parquet")
    predictions = pq.read_table(inside, filesystem=fs).to_pylist()
    # in input order, although each window of inputs ran sorted by length (0.9 s, 1.0 s, 1.2 s)
    assert [p["id"] for p in predictions] == ["nested/two", "one", "three"]
    for p in predictions:
        posterior = json.loads(p["posterior"])
        assert p["emotion_pred"] == max(posterior, key=posterior.get)
        assert "transcript" in p and "descriptor_pred" in p and isinstance(p["descriptor_draft"], str)
    errors = {e["id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert sorted(errors) == ["broken", "cut", "empty"]
    assert errors["cut"]["error"].startswith("truncated") and errors["empty"]["error"].startswith("empty")
    assert errors["broken"]["source"].endswith("broken.wav")
    err = capsys.readouterr().err
    assert "broken.wav: unreadable" in err


def test_infer_refuses_a_beam_width_below_one(tiny_checkpoint, tmp_path, ray_cluster, capsys):
    write_wav(tmp_path / "audio" / "one.wav", 1.0)
    assert main(["infer", "--checkpoint", str(tiny_checkpoint), "--input", str(tmp_path / "audio"),
                 "--out", str(tmp_path / "out"), "--num-beams", "0"]) == 2
    assert "num_beams: must be >= 1 (got 0)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_rerun_leaves_no_earlier_results_behind(evaluation, tiny_checkpoint, synth_shards, tmp_path, capsys):
    out = tmp_path / "rerun"
    shutil.copytree(evaluation, out)
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_shards), "--split", "nosuch",
                 "--out", str(out)]) == 2
    assert "no utterance" in capsys.readouterr().err
    assert not any((out / name).exists() for name in ("metrics.json", "report.html", "predictions.parquet"))


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_infer_names_an_input_it_cannot_use(tiny_checkpoint, tmp_path, ray_cluster, capsys, make):
    source = tmp_path / "audio"
    if make == "empty":
        source.mkdir()
    assert main(["infer", "--checkpoint", str(tiny_checkpoint), "--input", str(source),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(source) in err and ("does not exist" if make == "missing" else "holds no audio files") in err
    assert "--source" not in err and not (tmp_path / "out").exists()


def test_infer_rerun_that_fails_leaves_no_earlier_results(tiny_checkpoint, tmp_path, ray_cluster, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.parquet").write_bytes(b"from an earlier run")
    (out / "errors.jsonl").write_text("{}\n")
    assert main(["infer", "--checkpoint", str(tiny_checkpoint), "--input", str(tmp_path / "gone"),
                 "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (out / "predictions.parquet").exists() and not (out / "errors.jsonl").exists()


def test_leave_one_session_out_with_ground_truth_descriptors(tiny_checkpoint, tmp_path, ray_cluster):
    """IEMOCAP protocol: one checkpoint per session fold; results per fold and pooled."""
    from corpus_fixtures import write_iemocap
    from sed_ray.data.prepare import prepare

    write_iemocap(tmp_path / "iemocap")
    prepare("iemocap", tmp_path / "iemocap", tmp_path / "shards", log=lambda _m: None)
    out = tmp_path / "loso"
    assert main(["evaluate", "--protocol", "loso", "--checkpoint", f"Session1={tiny_checkpoint}",
                 "--checkpoint", f"Session2={tiny_checkpoint}", "--data", str(tmp_path / "shards"),
                 "--out", str(out), "--descriptors", "ground-truth", "--max-new-tokens", "8"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["folds"]) == {"Session1", "Session2"}
    assert metrics["folds"]["Session1"]["n"]["emotion"] == 2  # the 'fru' utterance is outside the protocol
    assert metrics["folds"]["Session2"]["n"]["emotion"] == 3
    assert metrics["n"]["emotion"] == 5 and metrics["descriptors"] == "ground-truth"
    sessions = {p["session"] for p in pq.read_table(out / "predictions.parquet").to_pylist()}
    assert sessions == {"Session1", "Session2"}


def test_a_batch_the_model_fails_on_costs_only_its_bad_rows(tiny_checkpoint, synth_shards):
    """The predictor itself (no Ray): one row whose audio passed decoding but cannot be collated (an odd
    number of PCM bytes, as in a damaged shard) fails the batch; the batch is retried row by row and only
    that row becomes an error record."""
    from sed_ray.config import InferenceOptions
    from sed_ray.eval.infer import InferenceJob, Predictor, failed, sort_by_length
    from sed_ray.model.weights import model_folder

    table = pq.read_table(sorted((synth_shards / "shards").glob("*.parquet"))[0],
                          columns=["id", "pcm", "num_samples", "source", "split"]).slice(0, 4)
    rows = table.to_pylist()
    rows[2]["pcm"] = rows[2]["pcm"][:-1]
    batch = {key: [r.get(key) for r in rows] for key in ("id", "pcm", "num_samples", "source")}
    batch["error"] = [""] * len(rows)
    out = Predictor([InferenceJob(str(model_folder(tiny_checkpoint)), InferenceOptions(max_new_tokens=4))])(batch)
    records = [dict(zip(out, values)) for values in zip(*out.values())]
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert [failed(r) for r in records] == [False, False, True, False]
    assert records[2]["error"].startswith("prediction failed: ValueError")
    assert all(r["emotion_pred"] for i, r in enumerate(records) if i != 2)

    # length grouping reorders a window by length; inference restores the input order afterwards
    sorted_window = sort_by_length(table).column("num_samples").to_pylist()
    assert sorted_window == sorted(table.column("num_samples").to_pylist())


def test_one_pass_predicts_several_jobs_as_separate_passes_would(tiny_checkpoint, synth_shards):
    """The predictor of a several-job pass (an ablation's evaluations): rows of three jobs in one batch
    (two checkpoints of one config, one of them twice with another descriptor source) come out exactly as
    each job's own predictor gives them, whatever job the replica ran before (weights swapped, not rebuilt)."""
    from dataclasses import replace

    from sed_ray.config import InferenceOptions
    from sed_ray.eval.infer import InferenceJob, Predictor
    from sed_ray.model.weights import model_folder

    checkpoints = sorted(tiny_checkpoint.parent.glob("step-*"))
    assert len(checkpoints) >= 2
    options = InferenceOptions(max_new_tokens=4, listening=True)
    jobs = [InferenceJob(str(model_folder(checkpoints[-1])), options),
            InferenceJob(str(model_folder(checkpoints[0])), options),
            InferenceJob(str(model_folder(checkpoints[-1])), replace(options, descriptors="ground-truth"))]
    table = pq.read_table(sorted((synth_shards / "shards").glob("*.parquet"))[0],
                          columns=["id", "pcm", "num_samples", "source", "text", "emotion", "descriptor"]).slice(0, 3)
    rows = [{**r, "error": ""} for r in table.to_pylist()]

    def columns(rows):
        return {key: [r.get(key) for r in rows] for key in rows[0]}

    def records(out):
        return [dict(zip(out, values)) for values in zip(*out.values())]

    alone = [records(Predictor([job])(columns(rows))) for job in jobs]
    together = records(Predictor(jobs)(columns([{**r, "job": k} for k in (0, 1, 2) for r in rows])))
    for k in (0, 1, 2):
        mine = [{**r, "job": 0} for r in together if r["job"] == k]
        assert [r["id"] for r in mine] == [r["id"] for r in rows]
        for got, want in zip(mine, alone[k]):
            assert got.keys() == want.keys()
            for key in got:  # NaN where a figure does not apply
                assert got[key] == want[key] or (got[key] != got[key] and want[key] != want[key]), (k, key)
    # the two checkpoints differ, so a missed swap would show
    assert [r["posterior"] for r in alone[0]] != [r["posterior"] for r in alone[1]]
