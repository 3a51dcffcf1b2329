"""The seam between the training loop and where it runs: Ray Train workers or a plain process.

The loop only talks to a `TrainContext`: its rank, device, batches per epoch, the checkpoint it should
resume from, and `report` (a barrier under Ray Train: every rank calls it the same number of times).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, Protocol

import torch

from sed_ray.storage import RemotePath, local_copy, location, upload_folder
from sed_ray.train.checkpoint import POSITION


class TrainContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def batches(self, split: str, epoch: int) -> Iterator: ...

    def latest_checkpoint(self) -> Path | None: ...

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None: ...

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor: ...


def _device(use_gpu: bool, local_rank: int) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class RayTrainContext:
    """Inside a TorchTrainer worker. Imports Ray lazily so the loop module stays Ray-free."""

    def __init__(self, use_gpu: bool) -> None:
        import ray.train

        self._train = ray.train
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = _device(use_gpu, context.get_local_rank())
        self._restored: Path | None = None

    def batches(self, split: str, epoch: int) -> Iterator:
        from sed_ray.data.stream import iter_shard

        return iter_shard(self._train.get_dataset_shard(split))

    def latest_checkpoint(self) -> Path | None:
        checkpoint = self._train.get_checkpoint()
        if checkpoint is None:
            return None
        if self._restored is None:
            self._restored = Path(checkpoint.to_directory())
        return self._restored

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        from ray.train import Checkpoint

        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        name = f"checkpoint_step{int(metrics['step']):07d}" if checkpoint is not None else None
        self._train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        if checkpoint_dir is not None:  # Ray copied it into the run's storage; drop the staging copy
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values


class LocalContext:
    """One process, no Ray: the plain pyarrow stream, checkpoints in RUN_DIR/checkpoints/step-NNNNNNN."""

    def __init__(self, run_dir, shards, stream_config, use_gpu: bool = False, train_split: str = "train") -> None:
        self.rank, self.world_size = 0, 1
        self.device = _device(use_gpu, 0)
        self.run_dir = location(run_dir)
        self.shards, self.train_split = shards, train_split
        self.stream_config = stream_config
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    def batches(self, split: str, epoch: int) -> Iterator:
        from dataclasses import replace

        from sed_ray.data.stream import plain_batches

        config = self.stream_config if split == self.train_split else replace(self.stream_config, shuffle=False)
        return plain_batches(self.shards, split, config, epoch=epoch)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (position.json is written, or uploaded, last), as a local folder."""
        found = [p for p in sorted((self.run_dir / "checkpoints").glob("step-*"), key=str) if (p / POSITION).exists()]
        return local_copy(found[-1]) if found else None

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        final = self.run_dir / "checkpoints" / f"step-{int(metrics['step']):07d}"
        if isinstance(final, RemotePath):  # no rename in object storage: position.json goes last
            final.rmtree()
            upload_folder(checkpoint_dir, final, last=(POSITION,))
            shutil.rmtree(checkpoint_dir)
            return
        if final.exists():
            shutil.rmtree(final)
        os.replace(checkpoint_dir, final)  # atomic: a checkpoint folder is complete or absent

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values
