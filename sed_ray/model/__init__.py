"""The model: plain PyTorch + transformers + peft. Imports neither Ray nor DeepSpeed."""
