"""A minimal ctypes binding to libespeak-ng as shipped by the `espeakng-loader` wheel.

libespeak-ng keeps global state (one voice, one set of parameters per process), so a process uses one
`Espeak` object and parallel synthesis uses several processes. Its output also depends slightly on
what the process synthesised before (a few samples of drift that survive re-initialisation), so
reproducible output needs a fixed history: a fresh process per fixed chunk of utterances.
"""

from __future__ import annotations

import ctypes

import numpy as np

# enum values from espeak-ng's speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# Variants that do not sound like a human speaker (robots, whisper without pitch, joke voices):
# an emotion carried by pitch and rate would be meaningless on them.
_EXCLUDED_VARIANTS = {"Demonic", "UniRobot", "anikaRobot", "whisper", "whisperf", "croak", "Tweaky",
                      "fast", "Mr serious", "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm"}


def voice_variants() -> list[str]:
    """Names of the voice variants (the `+name` suffix) the wheel ships, human-like ones only."""
    from pathlib import Path

    import espeakng_loader

    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in _EXCLUDED_VARIANTS
                  and not p.name.startswith("robosoft"))


class Espeak:
    """Synthesise text to int16 audio with settable rate, pitch, pitch range, volume and word gap."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._data_path = espeakng_loader.get_data_path()
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path.encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"libespeak-ng failed to initialise from {self._data_path}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept on self: ctypes must not free it
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, _events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, *, rate: int, pitch: int, pitch_range: int,
                   volume: int, word_gap: int) -> np.ndarray:
        """int16 samples at `self.sample_rate`. rate in words/minute, pitch and range 0-99,
        volume 0-200 (100 = normal), word_gap in units of 10 ms."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for name, value in (("rate", rate), ("pitch", pitch), ("range", pitch_range),
                            ("volume", volume), ("wordgap", word_gap)):
            self._lib.espeak_SetParameter(_PARAM[name], int(value), 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} on {text!r}")
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
