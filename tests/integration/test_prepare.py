"""`prepare` on a real local Ray cluster: bad input, resume after a real kill, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from corpus_fixtures import write_iemocap, write_meld, write_speechcraft, write_wav
from sed_ray.cli import main
from sed_ray.data.prepare import prepare
from sed_ray.data.schema import SAMPLE_RATE, pcm_from_bytes

QUIET = {"log": lambda _m: None}


def _shard_table(out: Path):
    return pq.read_table(sorted((out / "shards").glob("*.parquet")))


def _rejects(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}


def _bad_input_manifest(root: Path) -> tuple[Path, set[str], dict[str, str]]:
    """Good rows mixed with one row of each kind of bad input; returns (manifest, good ids, bad id -> reason)."""
    good = set()
    lines = []
    for i in range(6):
        write_wav(root / f"good{i}.wav", 0.6 + 0.2 * i, rate=22050 if i % 2 else 16000, channels=1 + i % 2, seed=i)
        lines.append({"id": f"good{i}", "audio": f"good{i}.wav", "text": f"t{i}", "emotion": "happy", "split": "train"})
        good.add(f"good{i}")
    full = write_wav(root / "full.wav", 1.0).read_bytes()
    (root / "cut.wav").write_bytes(full[: len(full) // 3])
    (root / "junk.wav").write_bytes(os.urandom(3000))
    (root / "zero.wav").write_bytes(b"")
    write_wav(root / "short.wav", 0.05)
    write_wav(root / "long.wav", 61.0, rate=8000)
    sf.write(root / "nan.wav", np.array([0.2, np.inf] * 8000, dtype=np.float32), 16000, subtype="FLOAT")
    sf.write(root / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    bad = {"cut": ("cut.wav", {}, "truncated"), "junk": ("junk.wav", {}, "unreadable"),
           "zero": ("zero.wav", {}, "empty"), "short": ("short.wav", {}, "too_short"),
           "long": ("long.wav", {}, "too_long"), "nan": ("nan.wav", {}, "non_finite"),
           "silent": ("silent.wav", {}, "silent"), "missing": ("missing.wav", {}, "missing_file"),
           "bored": ("full.wav", {"emotion": "bored"}, "unknown_emotion"),
           "negdur": ("full.wav", {"duration": -4}, "malformed_row"),
           "hugedur": ("full.wav", {"duration": 86400}, "duration_mismatch")}
    for row_id, (audio, extra, _reason) in bad.items():
        lines.append({"id": row_id, "audio": audio, **extra})
    text = "\n".join(json.dumps(x) for x in lines) + "\n{this line is broken\n"
    (root / "manifest.jsonl").write_text(text)
    reasons = {k: v[2] for k, v in bad.items()} | {"manifest:18": "malformed_row"}
    return root / "manifest.jsonl", good, reasons


def test_every_bad_input_lands_in_rejects_and_good_rows_survive(tmp_path, ray_cluster):
    manifest, good, reasons = _bad_input_manifest(tmp_path / "src")
    result = prepare("manifest", manifest, tmp_path / "out", shard_rows=5, **QUIET)
    table = _shard_table(tmp_path / "out")
    assert set(table.column("id").to_pylist()) == good
    rejects = _rejects(tmp_path / "out")
    assert {k: v["reason"] for k, v in rejects.items()} == reasons
    assert all(r["detail"] and "source" in r for r in rejects.values())
    assert "missing.wav" in rejects["missing"]["source"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["accepted"] == 6 and summary["rejected"] == len(reasons) == result.rejected
    assert summary["rejected_by_reason"]["malformed_row"] == 2
    expected_hours = sum(0.6 + 0.2 * i for i in range(6)) / 3600
    assert summary["hours_by_split"]["train"] == pytest.approx(expected_hours, rel=1e-3)
    assert summary["hours_by_label"] == {"happy": pytest.approx(expected_hours, rel=1e-3)}
    # stored audio: 16 kHz int16 PCM whose length matches its metadata
    row = table.slice(0, 1).to_pylist()[0]
    assert len(pcm_from_bytes(row["pcm"])) == row["num_samples"] == round(row["duration"] * SAMPLE_RATE)
    assert table.schema.field("pcm").metadata[b"encoding"] == b"int16le"


def test_cli_exit_codes(tmp_path, ray_cluster, capsys):
    manifest, _good, _reasons = _bad_input_manifest(tmp_path / "src")
    assert main(["prepare", "--corpus", "manifest", "--source", str(manifest), "--out", str(tmp_path / "a")]) == 0
    assert "6 accepted, 12 rejected" in capsys.readouterr().out
    assert main(["prepare", "--corpus", "manifest", "--source", str(manifest), "--out", str(tmp_path / "b"),
                 "--strict"]) == 1
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "audio": "nothing.wav"}\n')
    assert main(["prepare", "--corpus", "manifest", "--source", str(tmp_path / "bad.jsonl"), "--out",
                 str(tmp_path / "c")]) == 1
    assert (tmp_path / "c" / "summary.json").exists()  # nothing accepted is still a finished, honest run
    assert main(["prepare", "--corpus", "manifest", "--source", str(tmp_path / "nope.jsonl"), "--out",
                 str(tmp_path / "d")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("corpus,writer,options", [("iemocap", write_iemocap, {}), ("meld", write_meld, {}),
                                                    ("speechcraft", write_speechcraft, {"subset": "M"})])
def test_each_corpus_prepares(tmp_path, ray_cluster, corpus, writer, options):
    from sed_ray.data.corpora import ConnectorOptions

    writer(tmp_path / "src")
    result = prepare(corpus, tmp_path / "src", tmp_path / "out", options=ConnectorOptions(**options), **QUIET)
    table = _shard_table(tmp_path / "out")
    assert result.accepted == table.num_rows > 0
    assert set(table.column("corpus").to_pylist()) == {corpus}
    assert all(e is not None for e in table.column("emotion").to_pylist()) or corpus == "speechcraft"


def test_resume_after_a_killed_prepare(tmp_path, ray_cluster, synth_corpus):
    """Kill the prepare process (SIGKILL, whole process group) mid-run, then rerun: nothing lost or doubled."""
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "sed_ray.cli", "prepare", "--corpus", "manifest", "--source",
               str(synth_corpus / "manifest.jsonl"), "--out", str(out), "--shard-rows", "2"]
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "parts").glob("part-*.json")):
        assert process.poll() is None, "prepare exited before the test could interrupt it"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(list((out / "parts").glob("part-*.json")))
    assert 0 < done_before < 48 and not (out / "summary.json").exists()
    (out / "shards" / ".part-00047.parquet.tmp-deadbeef").write_bytes(b"half a file")  # a killed write

    result = prepare("manifest", synth_corpus / "manifest.jsonl", out, shard_rows=2, **QUIET)
    assert result.resumed_shards >= done_before
    ids = _shard_table(out).column("id").to_pylist()
    manifest_ids = [json.loads(x)["id"] for x in (synth_corpus / "manifest.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(manifest_ids)  # no duplicates, no loss
    assert not list((out / "shards").glob(".*tmp*"))

    # a shard written but not marked done (killed between the two renames) is redone, not doubled
    (out / "parts" / "part-00003.json").unlink()
    result = prepare("manifest", synth_corpus / "manifest.jsonl", out, shard_rows=2, **QUIET)
    assert result.resumed_shards == 47
    assert sorted(_shard_table(out).column("id").to_pylist()) == sorted(manifest_ids)


def test_rerun_with_other_settings_is_refused(tmp_path, ray_cluster, synth_corpus):
    prepare("manifest", synth_corpus / "manifest.jsonl", tmp_path / "out", shard_rows=50, **QUIET)
    with pytest.raises(ValueError, match="--overwrite"):
        prepare("manifest", synth_corpus / "manifest.jsonl", tmp_path / "out", shard_rows=10, **QUIET)
    result = prepare("manifest", synth_corpus / "manifest.jsonl", tmp_path / "out", shard_rows=10,
                     overwrite=True, **QUIET)
    assert result.accepted == 96 and len(list((tmp_path / "out" / "shards").glob("*.parquet"))) == 10
