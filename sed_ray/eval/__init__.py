"""Evaluation: metrics, batch inference, the explainability report. Loads models through model/ only."""
