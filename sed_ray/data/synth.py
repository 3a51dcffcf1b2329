"""The embedded synthetic emotional-speech corpus: `sed-ray synth`.

Speakers are espeak-ng voice variants, each with its own baseline rate, pitch, pitch range and vocal
effort. An emotion shifts those relative to the speaker's baseline, drawn from overlapping normal
distributions so no single cue separates the classes. Vocal effort is carried by loudness *and*
spectral tilt (brighter when loud, duller when soft) because HuBERT-style encoders normalise gain away
(../shared/REFERENCE.md section 8). Sad speech also gets longer pauses between words.

Every utterance's descriptor sentence is written from the parameters actually used, relative to the
speaker's baseline, with varied wording. Text is emotionally neutral and every sentence is spoken in
every emotion equally often, so the words carry no emotion.

Splits hold out voices *and* sentences: test speakers and test sentences are never seen in training.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from sed_ray.data.schema import FOUR_CLASS
from sed_ray.files import atomic_write, atomic_write_text

# --- sentence bank: emotionally neutral sentences of 5-9 words built from small word lists ---------
_SUBJECTS = ["The old man", "My neighbour", "The teacher", "Our driver", "The little girl", "His sister",
             "The farmer", "A student", "The doctor", "Her brother", "The painter", "Each visitor",
             "The baker", "My cousin", "The pilot", "A stranger"]
_VERBS = ["carried", "opened", "painted", "found", "moved", "cleaned", "counted", "checked", "fixed",
          "brought", "sold", "measured", "watched", "wrapped", "returned", "described"]
_OBJECTS = ["the blue box", "a wooden chair", "the kitchen window", "two paper bags", "the garden gate",
            "a heavy coat", "the morning letters", "an empty bottle", "the station map", "a small table",
            "the red bicycle", "three green apples", "the library books", "a glass of water"]
_ENDINGS = ["", "", "before lunch", "on Tuesday", "near the bridge", "after the meeting", "this morning",
            "in the hall", "at the market", "last week"]


def sentence_bank(size: int, seed: int) -> list[str]:
    """`size` distinct sentences, shuffled deterministically by `seed`."""
    all_sentences = [" ".join(part for part in (s, v, o, e) if part) + "."
                     for s in _SUBJECTS for v in _VERBS for o in _OBJECTS for e in _ENDINGS]
    if size > len(all_sentences):
        raise ValueError(f"sentence bank holds at most {len(all_sentences)} sentences, asked for {size}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(all_sentences), size=size, replace=False)
    return [all_sentences[i] for i in picks]


# --- emotions as shifts from each speaker's baseline ------------------------------------------------
@dataclass(frozen=True)
class EmotionProfile:
    rate_ratio: tuple[float, float]  # (mean, sd) of speaking rate / speaker's rate
    pitch_shift: tuple[float, float]  # (mean, sd) in espeak pitch units (0-99 scale)
    range_ratio: tuple[float, float]  # (mean, sd) of pitch range / speaker's range
    effort: tuple[float, float]  # (mean, sd) of vocal effort, -1 soft ... +1 loud
    word_gap: tuple[float, float]  # (mean, sd) extra pause between words, units of 10 ms


# Each cue's spread overlaps its neighbours' (no single cue separates two emotions perfectly); the
# emotions differ in the combination. Shifts are large next to the spread of speaker baselines below,
# so held-out voices remain recognisable by how far they move from their own baseline.
EMOTION_PROFILES = {
    "neutral": EmotionProfile((1.00, 0.06), (0.0, 3.5), (1.00, 0.12), (0.0, 0.22), (0.5, 0.8)),
    "happy": EmotionProfile((1.12, 0.07), (16.0, 4.0), (1.80, 0.20), (0.35, 0.22), (0.3, 0.6)),
    "angry": EmotionProfile((1.22, 0.07), (4.0, 4.0), (0.95, 0.14), (1.20, 0.22), (0.2, 0.5)),
    "sad": EmotionProfile((0.74, 0.06), (-12.0, 3.5), (0.50, 0.10), (-0.90, 0.22), (5.0, 1.5)),
}
assert tuple(EMOTION_PROFILES) == FOUR_CLASS


@dataclass(frozen=True)
class Speaker:
    name: str  # e.g. "en-us+m3"
    rate: float  # words per minute
    pitch: float  # espeak 0-99
    pitch_range: float  # espeak 0-99
    effort: float  # baseline vocal effort


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    emotion: str
    speaker: Speaker
    split: str
    rate: int
    pitch: int
    pitch_range: int
    effort: float
    word_gap: int
    descriptor: str


# --- descriptor sentences ---------------------------------------------------------------------------
# Every level of a cue has the same number of wordings, in the same sentence frame, so the most likely
# sentence a model can generate is not biased toward a level that has fewer synonyms.
_WORDING = {
    ("speed", "fast"): ["speaks fast", "talks quickly"],
    ("speed", "slow"): ["speaks slowly", "talks slowly, at an unhurried pace"],
    ("speed", "normal"): ["speaks at a normal pace", "talks at an even speed"],
    ("pitch", "high"): ["with a high pitch", "with a raised pitch"],
    ("pitch", "low"): ["with a low pitch", "with a deep, lowered pitch"],
    ("pitch", "normal"): ["with a normal pitch", "with a moderate pitch"],
    ("tone", "lively"): ["and a lively, varied intonation", "and a bright, bouncing melody"],
    ("tone", "flat"): ["and a flat, monotone intonation", "and a dull, level melody"],
    ("tone", "normal"): ["and a natural intonation", "and a plain, ordinary melody"],
    ("energy", "loud"): ["loudly and forcefully", "loudly, with tension"],
    ("energy", "soft"): ["softly and weakly", "softly, with little energy"],
    ("energy", "normal"): ["at a normal volume", "at a moderate volume"],
    ("pauses", "long"): ["pausing between words", "leaving long gaps between words"],
}


def describe(rate_ratio: float, pitch_shift: float, range_ratio: float, effort_shift: float,
             word_gap: float, rng: np.random.Generator) -> str:
    """A descriptor sentence from the parameters actually used, relative to the speaker's baseline."""
    levels = {
        "speed": "fast" if rate_ratio > 1.08 else "slow" if rate_ratio < 0.90 else "normal",
        "pitch": "high" if pitch_shift > 6 else "low" if pitch_shift < -5 else "normal",
        "tone": "lively" if range_ratio > 1.3 else "flat" if range_ratio < 0.75 else "normal",
        "energy": "loud" if effort_shift > 0.45 else "soft" if effort_shift < -0.35 else "normal",
    }

    def pick(key: str) -> str:
        options = _WORDING[key]
        return options[int(rng.integers(len(options)))]

    parts = [pick(("speed", levels["speed"])), pick(("pitch", levels["pitch"])) + " " +
             pick(("tone", levels["tone"])), pick(("energy", levels["energy"]))]
    if word_gap >= 3:
        parts.append(pick(("pauses", "long")))
    subject = ["The speaker", "This voice", "The person", "The talker"][int(rng.integers(4))]
    return f"{subject} {parts[0]}, {parts[1]}, {', '.join(parts[2:])}."


# --- corpus design ----------------------------------------------------------------------------------
def _speakers(variants: list[str], count: int, rng: np.random.Generator) -> list[Speaker]:
    names = [f"{lang}+{variant}" for variant in variants for lang in ("en-us", "en")]
    if count > len(names):
        raise ValueError(f"at most {len(names)} speakers are available, asked for {count}")
    chosen = [names[i] for i in rng.choice(len(names), size=count, replace=False)]
    return [Speaker(name=n, rate=float(rng.uniform(160, 182)), pitch=float(rng.uniform(43, 57)),
                    pitch_range=float(rng.uniform(44, 56)), effort=float(rng.uniform(-0.1, 0.1)))
            for n in chosen]


def plan_corpus(utterances: int, seed: int, variants: list[str], *, speakers: int = 48,
                sentences: int = 400) -> list[Utterance]:
    """Decide every utterance (text, voice, emotion, parameters, descriptor) without synthesising.

    Speakers split 70/15/15 and sentences 80/10/10 into train/valid/test; utterances split in the same
    proportions and within a split cycle through emotions so each is equally frequent.
    """
    if utterances < 12:
        raise ValueError("--utterances must be at least 12 (a few per emotion in every split)")
    if speakers < 3:
        raise ValueError(f"--speakers must be at least 3 (train, valid and test each need voices of their own), got {speakers}")
    if seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")
    rng = np.random.default_rng(seed)
    voice_pool = _speakers(variants, speakers, rng)
    bank = sentence_bank(sentences, seed)
    n_valid_spk = n_test_spk = max(1, round(0.15 * speakers))
    by_split_speakers = {"test": voice_pool[:n_test_spk], "valid": voice_pool[n_test_spk:n_test_spk + n_valid_spk],
                         "train": voice_pool[n_test_spk + n_valid_spk:]}
    n_valid_sent = n_test_sent = max(4, sentences // 10)
    by_split_sentences = {"test": bank[:n_test_sent], "valid": bank[n_test_sent:n_test_sent + n_valid_sent],
                          "train": bank[n_test_sent + n_valid_sent:]}
    n_valid = n_test = max(4, round(0.15 * utterances))
    counts = {"train": utterances - n_valid - n_test, "valid": n_valid, "test": n_test}

    plan: list[Utterance] = []
    for split, count in counts.items():
        sents, voices = by_split_sentences[split], by_split_speakers[split]
        sentence_order = rng.permutation(count) % len(sents)
        for i in range(count):
            emotion = FOUR_CLASS[i % len(FOUR_CLASS)]
            # each sentence is spoken in every emotion: sentence index advances once per emotion cycle
            text = sents[sentence_order[i // len(FOUR_CLASS) % count] % len(sents)]
            speaker = voices[int(rng.integers(len(voices)))]
            profile = EMOTION_PROFILES[emotion]
            rate_ratio = rng.normal(*profile.rate_ratio)
            pitch_shift = rng.normal(*profile.pitch_shift)
            range_ratio = max(0.2, rng.normal(*profile.range_ratio))
            effort_shift = rng.normal(*profile.effort)
            word_gap = max(0.0, rng.normal(*profile.word_gap))
            plan.append(Utterance(
                id=f"{split}-{len(plan):06d}", text=text, emotion=emotion, speaker=speaker, split=split,
                rate=int(np.clip(round(speaker.rate * rate_ratio), 80, 400)),
                pitch=int(np.clip(round(speaker.pitch + pitch_shift), 0, 99)),
                pitch_range=int(np.clip(round(speaker.pitch_range * range_ratio), 0, 99)),
                effort=float(np.clip(speaker.effort + effort_shift, -1.5, 1.5)),
                word_gap=int(round(word_gap)),
                descriptor=describe(rate_ratio, pitch_shift, range_ratio, effort_shift, word_gap, rng)))
    return plan


# --- synthesis --------------------------------------------------------------------------------------
CHUNK_UTTERANCES = 32  # utterances per fresh synthesis process
_ENGINE = None  # one libespeak-ng per worker process


def _engine():
    global _ENGINE
    if _ENGINE is None:
        from sed_ray.data.espeak import Espeak

        _ENGINE = Espeak()
    return _ENGINE


def apply_effort(audio: np.ndarray, effort: float) -> np.ndarray:
    """Spectral tilt and gain for vocal effort: first-order pre-emphasis when loud, a one-pole low-pass
    when soft. Tilt survives the per-utterance normalisation an SSL encoder applies; gain does not."""
    x = audio.astype(np.float64)
    if effort > 0:
        a = min(0.95, 0.6 * effort)
        x = lfilter([1.0, -a], [1.0], x) / (1 - a / 2)
    elif effort < 0:
        b = min(0.9, 0.55 * -effort)
        x = lfilter([1 - b], [1.0, -b], x)
    gain = 10 ** (6.0 * effort / 20)  # +-6 dB per unit of effort
    return x * gain


def _render(utt: Utterance) -> tuple[np.ndarray, int]:
    engine = _engine()
    raw = engine.synthesize(utt.text, utt.speaker.name, rate=utt.rate, pitch=utt.pitch,
                            pitch_range=utt.pitch_range, volume=100, word_gap=utt.word_gap)
    audio = apply_effort(raw.astype(np.float32) / 32768.0, utt.effort)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0.99:  # never clip: scale down rather than distort
        audio = audio * (0.99 / peak)
    return audio.astype(np.float32), engine.sample_rate


def _render_chunk(args: tuple[list[Utterance], str]) -> list[dict]:
    utts, audio_dir = args
    rows = []
    for utt in utts:
        audio, rate = _render(utt)
        path = Path(audio_dir) / f"{utt.id}.wav"
        atomic_write(path, lambda tmp: sf.write(tmp, audio, rate, subtype="PCM_16", format="WAV"))
        rows.append({"id": utt.id, "audio": f"audio/{path.name}", "text": utt.text, "emotion": utt.emotion,
                     "descriptor": utt.descriptor, "speaker": utt.speaker.name, "split": utt.split,
                     "duration": round(len(audio) / rate, 4)})
    return rows


SETTINGS = "synth.json"  # beside the manifest: the settings the corpus was synthesised with


def corpus_settings(out: str | os.PathLike) -> dict | None:
    """The settings a complete corpus in OUT was synthesised with; None when OUT holds no complete
    corpus, or one that does not say (made by hand or by an older version)."""
    out = Path(out)
    if not (out / "manifest.jsonl").exists() or not (out / SETTINGS).exists():
        return None
    return json.loads((out / SETTINGS).read_text())


def synthesize_corpus(out: str | os.PathLike, utterances: int = 1200, seed: int = 0, *,
                      workers: int | None = None, speakers: int = 48, progress=None) -> Path:
    """Write OUT/audio/*.wav, OUT/synth.json (the settings) and OUT/manifest.jsonl; returns the manifest path.

    Deterministic for a given seed (the plan is drawn up front in one process; synthesis is pure),
    parallel over `workers` processes. The manifest is written last, under a temporary name, so a
    manifest on disk always describes a complete corpus.
    """
    from sed_ray.data.espeak import voice_variants

    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(utterances, seed, voice_variants(), speakers=speakers)
    manifest = out / "manifest.jsonl"
    manifest.unlink(missing_ok=True)  # the audio is about to be rewritten: until the new manifest lands, no corpus
    (out / SETTINGS).write_text(json.dumps({"utterances": utterances, "speakers": speakers, "seed": seed}, indent=2))
    workers = workers or min(os.cpu_count() or 1, 8)
    # libespeak-ng's output drifts with what the process synthesised before, so each fixed-size chunk
    # runs in a fresh process (max_tasks_per_child=1): same chunks, same history, same bytes, whatever
    # the worker count. forkserver with the module preloaded keeps the fresh processes cheap.
    jobs = [(plan[i:i + CHUNK_UTTERANCES], str(out / "audio")) for i in range(0, len(plan), CHUNK_UTTERANCES)]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["sed_ray.data.synth"])
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool:
        for done in pool.map(_render_chunk, jobs):
            rows.extend(done)
            if progress:
                progress(len(rows), len(plan))
    atomic_write_text(manifest, "".join(json.dumps(row) + "\n" for row in rows))
    return manifest
