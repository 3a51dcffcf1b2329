"""Save and load the trainable parts of a model (layer weights, blocks, adapters, LoRA) as safetensors,
next to the JSON config that rebuilds the rest from its base checkpoints. Nothing is unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sed_ray.model.config import ModelConfig

WEIGHTS = "trainable.safetensors"
CONFIG = "model_config.json"


def storable(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy to save: half-precision floats as float32; float64 (the draft's feature sums) and integers
    (its bank of token ids) as they are."""
    dtype = torch.float32 if tensor.is_floating_point() and tensor.dtype != torch.float64 else tensor.dtype
    return tensor.detach().to("cpu", dtype).contiguous()


def save_trainable(model, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: storable(t) for name, t in model.trainable_state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "sed-ray", "version": "1"})
    (folder / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
    return folder


def load_trainable(model, folder: str | Path) -> None:
    """Copy saved trainable weights into `model`; the key sets must match exactly."""
    path = Path(folder) / WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: not a sed-ray model checkpoint folder")
    saved = load_file(str(path))
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


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: not a sed-ray model checkpoint folder")
    return ModelConfig.from_dict(json.loads(path.read_text()))


def load_model(folder: str | Path):
    """Rebuild the model from the folder's config (base checkpoints by from_pretrained) and load its weights."""
    from sed_ray.model.speech_llm import SpeechEmotionLLM

    model = SpeechEmotionLLM.from_config(read_config(folder))
    load_trainable(model, folder)
    return model
