"""Decoding, resampling and validation on real files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from corpus_fixtures import write_mp4, write_wav
from sed_ray.data.audio import AudioLimits, AudioRejected, load_utterance, to_int16
from sed_ray.data.schema import SAMPLE_RATE


def _reason(path, **kwargs):
    with pytest.raises(AudioRejected) as info:
        load_utterance(str(path), kwargs.get("start"), kwargs.get("end"), kwargs.get("limits", AudioLimits()),
                       kwargs.get("declared"))
    return info.value.reason


def test_stereo_44k_becomes_mono_16k_int16(tmp_path):
    path = write_wav(tmp_path / "x.wav", 2.0, rate=44100, channels=2)
    pcm = load_utterance(str(path), None, None, AudioLimits())
    assert pcm.dtype == np.int16 and pcm.ndim == 1 and len(pcm) == 2 * SAMPLE_RATE
    reference = sf.read(path, dtype="float32")[0].mean(axis=1)
    assert abs(np.abs(pcm).max() / 32767 - np.abs(reference).max()) < 0.02  # level preserved


def test_mp4_audio_is_demuxed(tmp_path):
    pcm = load_utterance(str(write_mp4(tmp_path / "v.mp4", 1.0)), None, None, AudioLimits())
    assert abs(len(pcm) / SAMPLE_RATE - 1.0) < 0.1


def test_opus_segment_seek(tmp_path):
    rate = 48000
    t = np.arange(4 * rate) / rate
    audio = np.where(t < 2, 0.3 * np.sin(2 * np.pi * 200 * t), 0.3 * np.sin(2 * np.pi * 800 * t)).astype(np.float32)
    sf.write(tmp_path / "long.opus", audio, rate, format="OGG", subtype="OPUS")
    pcm = load_utterance(str(tmp_path / "long.opus"), 2.5, 3.5, AudioLimits()).astype(np.float32)
    assert len(pcm) == SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(pcm) - 800) < 10  # the second half's tone


def test_rejection_reasons(tmp_path):
    good = write_wav(tmp_path / "good.wav", 1.0)
    assert _reason(tmp_path / "nope.wav") == "missing_file"
    (tmp_path / "zero.wav").write_bytes(b"")
    assert _reason(tmp_path / "zero.wav") == "empty"
    (tmp_path / "junk.wav").write_bytes(b"this is not audio" * 50)
    assert _reason(tmp_path / "junk.wav") == "unreadable"
    data = good.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "cut.wav") == "truncated"
    assert _reason(write_wav(tmp_path / "short.wav", 0.1)) == "too_short"
    assert _reason(good, limits=AudioLimits(max_seconds=0.5)) == "too_long"
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan] * 8000, dtype=np.float32), 16000, subtype="FLOAT")
    assert _reason(tmp_path / "nan.wav") == "non_finite"
    sf.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    assert _reason(tmp_path / "silent.wav") == "silent"
    assert _reason(good, start=0.8, end=0.2) == "bad_segment"
    assert _reason(good, start=0.5, end=9.0) == "bad_segment"
    assert _reason(good, declared=30.0) == "duration_mismatch"


def test_int16_conversion_clips_instead_of_wrapping():
    pcm = to_int16(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], dtype=np.float32))
    assert pcm.tolist() == [-32767, -32767, 0, 16384, 32767, 32767]
