"""A training checkpoint: model weights, optimizer state and the position in the schedule.

    model/                                                  a model folder: every trainable group (model/weights.py)
    optimizer.safetensors                                   Adam moments of the stage's trainable params
    position.json                                           step, stage, round, epoch, batches, beta, lr,
                                                            optimizer step count, the resolved config

All tensors are gathered full-size (DeepSpeed's safe_get_full_* under ZeRO), so a checkpoint does
not depend on the number of workers, and nothing is pickled.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sed_ray.model.weights import MODEL_DIR, load_trainable, read_weights, write_model_folder

POSITION = "position.json"
OPTIMIZER = "optimizer.safetensors"


@dataclass
class TrainPosition:
    step: int = 0  # optimiser steps done
    stage_index: int = 0  # in the expanded (round, stage) list
    stage: str = ""
    round: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already consumed, per rank
    world_size: int = 0  # ranks that consumed them (0: not recorded, an older checkpoint)
    beta: float = 0.0
    lr: float = 0.0
    optimizer_step: int = 0  # the optimiser's own step count within the stage

    def to_dict(self) -> dict:
        return asdict(self)


def write_checkpoint(model_state: dict[str, torch.Tensor], config_dict: dict, optimizer_state: dict[str, torch.Tensor],
                     position: TrainPosition, run_config: dict, staging_root: str | Path | None = None) -> Path:
    """Write a checkpoint folder under a fresh temporary directory and return it (rank 0 only)."""
    folder = Path(tempfile.mkdtemp(prefix="sed-ray-ckpt-", dir=staging_root))
    write_model_folder(folder / MODEL_DIR, model_state, config_dict)
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in optimizer_state.items()},
              str(folder / OPTIMIZER))
    (folder / POSITION).write_text(json.dumps({**position.to_dict(), "config": run_config}, indent=2))
    return folder


def read_position(folder: str | Path) -> TrainPosition:
    data = json.loads((Path(folder) / POSITION).read_text())
    data.pop("config", None)
    return TrainPosition(**data)


def read_optimizer_state(folder: str | Path) -> dict[str, torch.Tensor]:
    path = Path(folder) / OPTIMIZER
    return load_file(str(path)) if path.exists() else {}


def restore_model(model, folder: str | Path) -> dict[str, torch.Tensor]:
    """Load the checkpoint's trainable weights into `model`; returns them (fp32) for the optimiser."""
    load_trainable(model, Path(folder) / MODEL_DIR)
    return read_weights(Path(folder) / MODEL_DIR)
