"""Training: schedules, stages, the per-worker step and loop, checkpoints, the Ray Train launcher."""
