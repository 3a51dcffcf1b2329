"""What connectors share: their options and the label check."""

from __future__ import annotations

from dataclasses import dataclass

from sed_ray.data.schema import CANONICAL_EMOTIONS, canonical_emotion


@dataclass(frozen=True)
class ConnectorOptions:
    labels: tuple[str, ...] | None = None  # allowed canonical emotions; None = the corpus's own set
    test_session: int | None = None  # IEMOCAP: this session becomes split "test" (one LOSO fold)
    subset: str | None = None  # SpeechCraft/GigaSpeech: keep training segments of this subset, e.g. "M"


def check_emotion(raw, allowed: tuple[str, ...] | None) -> tuple[str | None, str | None]:
    """(canonical label or None, rejection or None) for a raw label against the allowed set."""
    allowed = allowed or CANONICAL_EMOTIONS
    try:
        label = canonical_emotion(raw)
    except ValueError as exc:
        return None, f"unknown_emotion: {exc}; allowed here: {', '.join(allowed)}"
    if label is not None and label not in allowed:
        return None, f"unknown_emotion: label {raw!r} is not in the label set ({', '.join(allowed)}); pass --labels to change it"
    return label, None
