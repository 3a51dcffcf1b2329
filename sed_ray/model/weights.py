"""The trained-model folder: the trainable parts of a model (layer weights, blocks, adapters, LoRA, the
draft) as safetensors, next to the JSON config that rebuilds the rest from its base checkpoints.
Nothing is unpickled.

    FOLDER/trainable.safetensors   WEIGHTS
    FOLDER/model_config.json       CONFIG

A training checkpoint holds one under MODEL_DIR (`model/`); `model_folder` resolves either to it, so
evaluation and inference load a trained model through this module alone."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save_file

from sed_ray.config import ModelConfig
from sed_ray.storage import RemotePath, location

WEIGHTS = "trainable.safetensors"
CONFIG = "model_config.json"
MODEL_DIR = "model"  # inside a training checkpoint


def storable(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy to save: half-precision floats as float32; float64 (the draft's feature sums) and integers
    (its bank of token ids) as they are."""
    dtype = torch.float32 if tensor.is_floating_point() and tensor.dtype != torch.float64 else tensor.dtype
    return tensor.detach().to("cpu", dtype).contiguous()


def write_model_folder(folder: str | Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    """Write trainable weights `state` and the model config (ModelConfig.to_dict()) as a model folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: storable(t) for name, t in state.items()}, str(folder / WEIGHTS),
              metadata={"format": "sed-ray", "version": "1"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    return folder


def save_trainable(model, folder: str | Path) -> Path:
    return write_model_folder(folder, model.trainable_state_dict(), model.config.to_dict())


def read_weights(folder: str | Path | RemotePath) -> dict[str, torch.Tensor]:
    path = location(folder) / WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: not a sed-ray model checkpoint folder")
    return load(path.read_bytes()) if isinstance(path, RemotePath) else load_file(str(path))


def model_folder(path: str | Path | RemotePath) -> Path | RemotePath:
    """A model folder, or a training checkpoint holding one under model/ -> the model folder (local or in
    object storage)."""
    path = location(path)
    if (path / WEIGHTS).exists():
        return path
    if (path / MODEL_DIR / WEIGHTS).exists():
        return path / MODEL_DIR
    raise FileNotFoundError(f"{path} is neither a model folder ({WEIGHTS}) nor a training checkpoint "
                            f"({MODEL_DIR}/{WEIGHTS})")


def load_trainable(model, folder: str | Path | RemotePath) -> None:
    """Copy saved trainable weights into `model`; the key sets must match exactly."""
    path = location(folder) / WEIGHTS
    saved = read_weights(folder)
    current = dict(model.trainable_state_dict())
    missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected); was it saved with another config?")
    with torch.no_grad():
        for name, tensor in saved.items():
            if current[name].shape != tensor.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects "
                                 f"{tuple(current[name].shape)}")
            current[name].copy_(tensor.to(current[name].dtype))


def read_config(folder: str | Path | RemotePath) -> ModelConfig:
    path = location(folder) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: not a sed-ray model checkpoint folder")
    return ModelConfig.from_dict(json.loads(path.read_text()))


def load_model(folder: str | Path | RemotePath):
    """Rebuild the model from the folder's config (base checkpoints by from_pretrained) and load its weights."""
    from sed_ray.model.speech_llm import SpeechEmotionLLM

    model = SpeechEmotionLLM.from_config(read_config(folder))
    load_trainable(model, folder)
    return model
