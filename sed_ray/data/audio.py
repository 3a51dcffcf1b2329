"""Decode, downmix, resample and validate audio; every failure becomes a named rejection reason.

Backends: soundfile (libsndfile: wav, flac, ogg/vorbis, ogg/opus, mp3) for audio files, with seeking
for segments cut out of long recordings; PyAV (FFmpeg in the wheel) for video containers such as
MELD's mp4 and for anything libsndfile cannot open. Resampling: soxr. torchaudio is deliberately not
used (it breaks `import transformers` next to torch 2.13; see README).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from sed_ray.data.schema import SAMPLE_RATE

# Files whose audio lives in a container libsndfile does not read.
CONTAINER_SUFFIXES = {".mp4", ".m4a", ".mkv", ".webm", ".mov", ".avi", ".aac", ".wma"}

# Rejection reasons: the keys of summary.json's `rejected` counts. Values say what they mean.
REASONS = {
    "malformed_row": "the listing row itself is unusable (missing field, bad value)",
    "unknown_emotion": "emotion label outside the label set",
    "excluded_label": "label valid in the corpus but outside the chosen protocol (e.g. IEMOCAP 'fru')",
    "missing_file": "the audio file does not exist",
    "unreadable": "no decoder could read the file",
    "truncated": "the file ends before its header says it should",
    "bad_segment": "segment times are inverted or outside the file",
    "empty": "no samples",
    "too_short": "shorter than --min-seconds",
    "too_long": "longer than --max-seconds",
    "non_finite": "NaN or infinite samples",
    "silent": "every sample is zero",
    "duration_mismatch": "decoded duration disagrees with the duration the listing declares",
}


class AudioRejected(Exception):
    """A row that cannot become a training example. `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AudioLimits:
    min_seconds: float = 0.25  # HuBERT needs a few 20 ms frames; k=5 stacking needs 100 ms per token
    max_seconds: float = 60.0  # a longer "utterance" is a listing error or an unsegmented recording
    duration_tolerance: float = 1.0  # seconds allowed between declared and decoded duration (plus 10%)


def _wav_missing_bytes(path: str) -> int:
    """Bytes the WAV header promises in its data chunk but the file does not hold (0 if complete).

    libsndfile silently shortens a truncated WAV to what is there, so the header is checked directly."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return 0
        order = "little" if head[:4] == b"RIFF" else "big"
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return 0
            chunk_size = int.from_bytes(chunk[4:], order)
            if chunk[:4] == b"data":
                if chunk_size in (0, 0xFFFFFFFF):  # streamed WAV: size unknown by design
                    return 0
                return max(0, f.tell() + chunk_size - size)
            f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)


def _read_soundfile(path: str, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    missing = _wav_missing_bytes(path) if path.lower().endswith((".wav", ".wave")) else 0
    if missing:
        raise AudioRejected("truncated", f"the WAV header promises {missing} more bytes of audio than "
                            "the file holds (cut-off copy?)")
    with sf.SoundFile(path) as f:
        rate, frames = f.samplerate, f.frames
        first = 0 if start is None else int(round(start * rate))
        last = frames if end is None else int(round(end * rate))
        if start is not None or end is not None:
            if first < 0 or last <= first:
                raise AudioRejected("bad_segment", f"segment [{start}-{end}] s is empty or inverted")
            if first >= frames or last > frames + int(0.05 * rate):
                raise AudioRejected("bad_segment", f"segment [{start}-{end}] s runs past the end of the "
                                    f"file ({frames / rate:.2f} s)")
            last = min(last, frames)
        f.seek(first)
        data = f.read(last - first, dtype="float32", always_2d=True)
    if len(data) < last - first:
        raise AudioRejected("truncated", f"header declares {last - first} frames from {first}, "
                            f"the file holds {len(data)}")
    return data.T, rate  # channels x samples


def _read_pyav(path: str, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    import av

    try:
        container = av.open(path)
    except av.error.FFmpegError as exc:
        raise AudioRejected("unreadable", f"FFmpeg cannot open it ({exc})") from exc
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioRejected("unreadable", "the container has no audio stream")
        rate = stream.codec_context.sample_rate or stream.rate
        # planar float output whatever the codec's native sample format
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name if stream.layout else "mono",
                                      rate=rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except av.error.FFmpegError as exc:
            if not chunks:
                raise AudioRejected("unreadable", f"FFmpeg failed to decode it ({exc})") from exc
            raise AudioRejected("truncated", f"decoding stopped part-way ({exc})") from exc
    if not chunks:
        raise AudioRejected("empty", "the audio stream decodes to no samples")
    data = np.concatenate(chunks, axis=1).astype(np.float32)
    if start is not None or end is not None:
        first = 0 if start is None else int(round(start * rate))
        last = data.shape[1] if end is None else int(round(end * rate))
        if first < 0 or last <= first or first >= data.shape[1]:
            raise AudioRejected("bad_segment", f"segment [{start}-{end}] s is empty, inverted or outside "
                                f"the file ({data.shape[1] / rate:.2f} s)")
        data = data[:, first:last]
    return data, int(rate)


def decode(path: str, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int]:
    """Decode `path` (optionally the segment [start, end) seconds) -> (channels x samples float32, rate)."""
    if not os.path.exists(path):
        raise AudioRejected("missing_file", f"no such file: {path}")
    if os.path.getsize(path) == 0:
        raise AudioRejected("empty", "the file is 0 bytes")
    if os.path.splitext(path)[1].lower() in CONTAINER_SUFFIXES:
        return _read_pyav(path, start, end)
    try:
        return _read_soundfile(path, start, end)
    except AudioRejected:
        raise
    except (sf.LibsndfileError, RuntimeError) as sf_exc:
        try:  # formats libsndfile lacks (some mp3/aac variants) may still decode with FFmpeg
            return _read_pyav(path, start, end)
        except AudioRejected as av_exc:
            if av_exc.reason != "unreadable":
                raise
            raise AudioRejected("unreadable", f"libsndfile: {sf_exc}; FFmpeg: {av_exc.detail}") from sf_exc


def to_mono_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """Average the channels, then resample to SAMPLE_RATE with soxr's high-quality filter."""
    mono = audio.mean(axis=0) if audio.ndim == 2 else audio
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate == SAMPLE_RATE or mono.size == 0:
        return mono
    return soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)


def validate(samples: np.ndarray, limits: AudioLimits, declared_duration: float | None = None) -> None:
    """Raise AudioRejected when 16 kHz mono `samples` cannot be a training example."""
    if samples.size == 0:
        raise AudioRejected("empty", "no samples after decoding")
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise AudioRejected("non_finite", f"{bad} of {samples.size} samples are NaN or infinite")
    seconds = samples.size / SAMPLE_RATE
    if seconds < limits.min_seconds:
        raise AudioRejected("too_short", f"{seconds:.3f} s < --min-seconds {limits.min_seconds}")
    if seconds > limits.max_seconds:
        raise AudioRejected("too_long", f"{seconds:.1f} s > --max-seconds {limits.max_seconds}")
    if not np.any(samples):
        raise AudioRejected("silent", "every sample is zero")
    if declared_duration is not None:
        allowed = limits.duration_tolerance + 0.1 * declared_duration
        if abs(seconds - declared_duration) > allowed:
            raise AudioRejected("duration_mismatch", f"the listing says {declared_duration:.2f} s, "
                                f"the audio lasts {seconds:.2f} s")


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 PCM; out-of-range samples are clipped, not wrapped."""
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def load_utterance(path: str, start: float | None, end: float | None, limits: AudioLimits,
                   declared_duration: float | None = None) -> np.ndarray:
    """The whole audio path for one row: decode -> mono 16 kHz -> validate -> int16."""
    audio, rate = decode(path, start, end)
    if audio.size and not np.isfinite(audio).all():  # checked before resampling, which smears NaNs
        bad = int((~np.isfinite(audio)).sum())
        raise AudioRejected("non_finite", f"{bad} of {audio.size} decoded samples are NaN or infinite")
    if not rate or not math.isfinite(rate) or rate <= 0:
        raise AudioRejected("unreadable", f"the file reports a sample rate of {rate}")
    samples = to_mono_16k(audio, rate)
    validate(samples, limits, declared_duration)
    return to_int16(samples)
