"""Object storage on a real S3-compatible server (moto on loopback): prepare writes its shards there, and
bad storage input is refused, naming the key, before anything starts. Training, a relaunch, evaluate and
infer against the same bucket: tests/integration/test_train.py and test_eval.py."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sed_ray.config import load_config
from sed_ray.data.prepare import prepare
from sed_ray.data.stream import count_rows
from sed_ray.files import atomic_write_text, read_jsonl
from sed_ray.storage import arrow_paths, location, problem
from sed_ray.train.launcher import fixed_paths, launch

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "jobs" / "configs" / "tiny.yaml"


def test_prepare_writes_its_shards_to_the_bucket_and_a_rerun_resumes(s3_shards, synth_corpus, tmp_path, monkeypatch):
    shards = location(s3_shards)
    files = (shards / "shards").glob("part-*.parquet")
    assert len(files) == 4 and (shards / "summary.json").exists() and (shards / "plan.json").exists()
    fs, paths = arrow_paths([str(f) for f in files])
    rows = sum(pq.read_metadata(p, filesystem=fs).num_rows for p in paths)
    assert rows == count_rows(s3_shards) == len((synth_corpus / "manifest.jsonl").read_text().splitlines())
    assert count_rows(s3_shards, "test") > 0
    # a rerun into the same prefix finds every shard done; nothing was written to a local "s3:" folder
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    result = prepare("manifest", synth_corpus / "manifest.jsonl", s3_shards, shard_rows=24, log=lines.append)
    assert result.resumed_shards == 4 and not any("to do" in line for line in lines)
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()


def test_whole_or_absent_writes_and_reads_in_the_bucket(s3):
    target = location(f"{s3}/misc/notes.txt")
    assert not target.exists()
    with pytest.raises(RuntimeError):  # a write that fails leaves nothing behind
        atomic_write_text_failing(target)
    assert not target.exists()
    atomic_write_text(target, '{"a": 1}\n{"a": 2}\n')
    assert target.read_text().count("\n") == 2 and read_jsonl(target) == [{"a": 1}, {"a": 2}]
    assert [p.name for p in location(f"{s3}/misc").glob("*.txt")] == ["notes.txt"]


def atomic_write_text_failing(target):
    from sed_ray.files import atomic_write

    def write(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    atomic_write(target, write)


def _config(storage, shards):
    return load_config(TINY, [f"data.shards={shards}", f"storage={storage}", "name=refused"])


def test_bad_storage_is_refused_naming_the_key_before_anything_starts(s3, s3_shards, tmp_path, monkeypatch, ray_cluster):
    monkeypatch.chdir(tmp_path)
    # a misspelt bucket, for the run's storage and for prepare's --out
    with pytest.raises(ValueError) as info:
        launch(_config("s3://sed-ray-tset/runs", s3_shards))
    assert "storage: bucket 'sed-ray-tset' does not exist" in str(info.value)
    with pytest.raises(ValueError) as info:
        prepare("manifest", tmp_path / "missing.jsonl", "s3://sed-ray-tset/shards", log=lambda _m: None)
    assert "--out: bucket 'sed-ray-tset'" in str(info.value)
    assert not location("s3://sed-ray-test/refused").exists() and not any(tmp_path.iterdir())
    # shards that are not there
    assert "data.shards" in problem(f"{s3}/no-shards", "data.shards", must_exist=True)
    # an unknown scheme
    assert "hdfs://" in problem("hdfs://cluster/runs", "storage")

    # an endpoint nobody listens on
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(ValueError) as info:
        launch(_config(f"{s3}/runs", s3_shards))
    assert "storage: cannot reach the object store at http://127.0.0.1:9" in str(info.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])

    # no credentials anywhere (environment, profile files, instance metadata)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ValueError) as info:
        launch(_config(f"{s3}/runs", s3_shards))
    assert "storage: s3://sed-ray-test/runs: no AWS credentials" in str(info.value)
    assert "data.shards: s3://sed-ray-test/shards: no AWS credentials" in str(info.value)


def test_relative_paths_are_refused_on_several_nodes_and_resolved_once_on_one(s3, s3_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(TINY, ["storage=runs", "data.shards=data/shards", "model.tiny_base_dir=base"])
    with pytest.raises(ValueError) as info:
        fixed_paths(config, nodes=3)
    message = str(info.value)
    assert "this cluster has 3 nodes" in message
    assert all(key in message for key in ("storage='runs'", "data.shards='data/shards'", "model.tiny_base_dir='base'"))
    one = fixed_paths(config, nodes=1)
    assert one.storage == str(tmp_path / "runs") and one.data.shards == str(tmp_path / "data" / "shards")
    remote = fixed_paths(load_config(TINY, [f"storage={s3}/runs", f"data.shards={s3_shards}"]), nodes=3)
    assert (remote.storage, remote.data.shards) == (f"{s3}/runs", s3_shards)  # object-store URIs pass on several nodes as they are
