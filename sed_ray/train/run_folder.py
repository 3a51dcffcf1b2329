"""A run's folder: what a relaunch may change and still resume, and the config recorded beside it.

Relaunching a run (same name and storage) resumes it from its latest checkpoint; a relaunch that
changed what the run trains is refused instead of silently continuing the old run under new settings.
"""

from __future__ import annotations

import json

from sed_ray.config import TrainConfig
from sed_ray.files import atomic_write_json

RUN_CONFIG = "config.json"  # in the run folder: the resolved config of its latest launch

# What a relaunch may change and still resume: how many workers, how often to checkpoint, log and
# validate, how DeepSpeed shards the state. Everything else decides what is trained and how.
RESUMABLE = ("scaling", "checkpoint", "logging", "validation", "deepspeed", "max_failures", "data.ingest_labels")


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def differing(saved: dict, current: dict) -> dict[str, tuple]:
    """Dotted keys whose values differ between a saved config and a relaunch's, as (saved, current). Keys
    only one side knows (a config written by another sed-ray version) are not compared."""
    old, new = _flatten(saved), _flatten(current)
    return {key: (old[key], new[key]) for key in sorted(old.keys() & new.keys()) if old[key] != new[key]}


def resume_conflicts(saved: dict, current: dict) -> list[str]:
    """Settings (dotted keys) that differ between a run's saved config and a relaunch of it."""
    return [f"{key}: {old!r} -> {new!r}" for key, (old, new) in differing(saved, current).items() if not _may_change(key)]


def _may_change(key: str) -> bool:
    return any(key == part or key.startswith(part + ".") for part in RESUMABLE + ("name", "storage"))


def check_resumable(config: TrainConfig, has_checkpoint: bool) -> None:
    saved = config.run_dir / RUN_CONFIG
    if not (has_checkpoint and saved.exists()):
        return
    current = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as they were saved
    conflicts = resume_conflicts(json.loads(saved.read_text()), current)
    if conflicts:
        raise ValueError(f"run {config.run_dir} already has checkpoints, and this launch would resume it with other "
                         f"settings:\n  - " + "\n  - ".join(conflicts) + "\n  start a new run with another name=, "
                         f"or delete {config.run_dir} to start this one over (a relaunch may change only: "
                         f"{', '.join(RESUMABLE)})")


def start_run_dir(config: TrainConfig, has_checkpoint: bool) -> None:
    """Refuse a relaunch that changed what the run trains, then record the run's config in its folder."""
    check_resumable(config, has_checkpoint)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config.run_dir / RUN_CONFIG, config.to_dict())
