"""Metrics: a local JSONL file (always), Weights & Biases (rank 0, offline unless a key is set), and a
console line. Nothing here decides anything; it only records."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from sed_ray.config import TrainConfig
from sed_ray.files import RUN_METRICS
from sed_ray.storage import RemotePath, location

UPLOAD_EVERY_S = 30.0  # object storage: how often the metrics file is uploaded between checkpoints

# dense bf16 peak FLOP/s by GPU name, for the MFU estimate; the first name found in the device's wins,
# so the PCIe and NVL parts come before the SXM one they contain ("NVIDIA H100 PCIe" vs "NVIDIA H100 80GB HBM3")
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12),
              ("L40S", 362e12), ("A10G", 125e12))


def peak_flops(name: str | None = None) -> float | None:
    """The device's dense bf16 peak (None off CUDA or for an unknown part)."""
    import torch

    if name is None:
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_FLOPS if k in name), None)


class Tracker:
    """Rank 0 records; the other ranks' calls do nothing (one rank-zero gate, here)."""

    def __init__(self, config: TrainConfig, rank: int) -> None:
        self.rank = rank
        run_dir = config.run_dir
        self.path = run_dir / RUN_METRICS
        self.wandb = None
        # In object storage a file cannot be appended to: records go to a local mirror (which starts as the
        # run's file, so a resumed run continues it), uploaded whole at most every UPLOAD_EVERY_S, at every
        # checkpoint and at the end.
        self.mirror: Path | None = None
        self.uploaded = 0.0
        if rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        local_dir = run_dir
        if isinstance(self.path, RemotePath):
            local_dir = Path(tempfile.mkdtemp(prefix="sed-ray-run-"))
            self.mirror = local_dir / RUN_METRICS
            self.mirror.write_bytes(self.path.read_bytes() if self.path.exists() else b"")
        logging = config.logging
        if logging.wandb:
            mode = logging.wandb_mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            if mode != "disabled":
                import wandb

                self.wandb = wandb.init(project=logging.wandb_project, name=config.name, group=logging.wandb_group,
                                        config=config.to_dict(),
                                        mode=mode, dir=str(local_dir), resume="allow", id=_wandb_id(run_dir))

    def log(self, record: dict) -> None:
        if self.rank != 0:
            return
        record = {"time": time.time(), **record}
        with open(self.mirror or self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.mirror is not None and time.time() - self.uploaded >= UPLOAD_EVERY_S:
            self.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    def console(self, line: str) -> None:
        if self.rank == 0:
            print(line, file=sys.stdout, flush=True)

    def flush(self) -> None:
        """Object storage: upload the records so far (the file is replaced whole)."""
        if self.rank == 0 and self.mirror is not None:
            self.path.upload(self.mirror)
            self.uploaded = time.time()

    def close(self) -> None:
        self.flush()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_id(run_dir: Path) -> str:
    """One W&B run per training run, stable across restarts and relaunches."""
    path = location(run_dir) / "wandb_id"
    if path.exists():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id)
    return run_id
