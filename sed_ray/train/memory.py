"""Memory settings applied around the model, outside it (the model knows nothing of how it is run)."""

from __future__ import annotations


def apply_memory_settings(model, config) -> None:
    """Activation checkpointing of the LLM's layers (`model.activation_checkpointing`): each layer's
    activations are recomputed in the backward instead of kept, for ~1/3 more compute."""
    if config.model.activation_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.llm.enable_input_require_grads()  # the frozen embeddings' output must carry grad through the checkpoints
