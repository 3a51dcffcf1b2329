"""Writers of small corpora in their real on-disk layouts (../shared/REFERENCE.md section 2).

Audio is real: tones with a little noise, written by soundfile (wav, opus) or PyAV (mp4 with a video
stream and an AAC audio stream, like MELD's clips).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float, rate: int, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.size)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_wav(path: Path, seconds: float, rate: int = 22050, channels: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = tone(seconds, rate, seed=seed)
    sf.write(path, np.stack([audio] * channels, axis=1) if channels > 1 else audio, rate)
    return path


def write_mp4(path: Path, seconds: float, rate: int = 44100) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.stack([tone(seconds, rate)] * 2)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = container.add_stream("aac", rate=rate)
        sound.layout = "stereo"
        for _ in range(max(1, int(seconds * 10))):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        for start in range(0, audio.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:start + 1024]), format="fltp",
                                               layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    return path


def write_iemocap(root: Path) -> dict:
    """Two sessions, one dialog each; labels cover the merge (exc) and an excluded label (fru)."""
    expected = {}
    for session, (dialog, utts) in {1: ("Ses01F_impro01", [("F000", "neu"), ("M000", "exc"), ("F001", "fru")]),
                                    2: ("Ses02M_script01_1", [("M000", "ang"), ("F000", "sad"), ("M001", "hap")])}.items():
        base = root / f"Session{session}"
        evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        transcript = []
        start = 1.0
        for i, (suffix, label) in enumerate(utts):
            utt = f"{dialog}_{suffix}"
            seconds = 1.0 + 0.25 * i
            write_wav(base / "sentences" / "wav" / dialog / f"{utt}.wav", seconds, rate=16000, seed=i)
            evaluation += [f"[{start:.4f} - {start + seconds:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]",
                           "C-E1:\tNeutral;\t()", ""]
            transcript.append(f"{utt} [{start:.4f}-{start + seconds:.4f}]: Words number {i} here.")
            expected[utt] = label
            start += seconds + 0.5
        (base / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        (base / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(evaluation) + "\n")
        (base / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
        (base / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(transcript) + "\n")
    return expected


MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def write_meld(root: Path) -> None:
    """MELD.Raw layout: three CSVs and one folder of dia*_utt*.mp4 per split."""
    layout = {"train": ("train_sent_emo.csv", "train/train_splits",
                        [("Oh my God, he\u00e2\u0080\u0099s lost it.", "Chandler", "surprise", 0, 0),
                         ("Yeah.", "Joey", "joy", 0, 1), ("No way!", "Ross", "anger", 1, 0)]),
              "dev": ("dev_sent_emo.csv", "dev/dev_splits_complete", [("Okay.", "Monica", "neutral", 0, 0)]),
              "test": ("test_sent_emo.csv", "test/output_repeated_splits_test",
                       [("Why?", "Rachel", "sadness", 3, 2), ("Ew.", "Phoebe", "disgust", 3, 3)])}
    for n, (csv_name, media, rows) in enumerate(layout.values()):
        lines = [MELD_HEADER]
        for i, (text, speaker, emotion, dia, utt) in enumerate(rows):
            lines.append(f'{i + 1},"{text}",{speaker},{emotion},neutral,{dia},{utt},1,1,"00:00:01,000","00:00:02,000"')
            write_mp4(root / media / f"dia{dia}_utt{utt}.mp4", 0.8 + 0.2 * i + 0.1 * n)
        (root / csv_name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_speechcraft(root: Path) -> dict:
    """GigaSpeech.json + two long Opus recordings + SpeechCraft annotations in two of the accepted forms."""
    audios = []
    for a, aid in enumerate(["POD0000000001", "YOU0000000002"]):
        rel = f"audio/{'podcast' if a == 0 else 'youtube'}/P0000/{aid}.opus"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, tone(12.0, 48000, freq=180 + 60 * a, seed=a), 48000, format="OGG", subtype="OPUS")
        audios.append({"aid": aid, "path": rel, "duration": 12.0, "segments": [
            {"sid": f"{aid}_S0000001", "begin_time": 0.5, "end_time": 3.0, "subsets": ["{XL}", "{M}"],
             "text_tn": "AS THEY'RE LEAVING <COMMA> CAN I ASK YOU SOMETHING <QUESTIONMARK>"},
            {"sid": f"{aid}_S0000002", "begin_time": 4.0, "end_time": 7.5, "subsets": ["{XL}", "{M}"],
             "text_tn": "THAT IS GREAT <PERIOD> WE WON <EXCLAMATIONPOINT>"},
            {"sid": f"{aid}_S0000003", "begin_time": 8.0, "end_time": 9.0, "subsets": ["{XL}"],
             "text_tn": "<MUSIC>"},
            {"sid": f"{aid}_S0000004", "begin_time": 9.5, "end_time": 11.5, "subsets": ["{XL}"],
             "text_tn": "NOT IN M"},
        ]})
    (root / "GigaSpeech.json").write_text(json.dumps({"dataset": "GigaSpeech", "audios": audios}))
    (root / "speechcraft").mkdir(parents=True, exist_ok=True)
    as_dict = {"POD0000000001_S0000001": {"description": "A man asks calmly, with a low pitch.", "emotion": "Neutral"},
               "POD0000000001_S0000002": "A cheerful voice exclaims loudly and fast.",
               "POD0000000001_S0000003": "Music.",
               "POD0000000001_S0000004": "Not in the M subset."}
    (root / "speechcraft" / "gigaspeech_part1.json").write_text(json.dumps(as_dict))
    as_lines = [{"sid": "YOU0000000002_S0000001", "description": "She speaks slowly and sadly.", "emotion": "Sad"},
                {"sid": "YOU0000000002_S0000002", "description": "An angry shout.", "emotion": "Angry"},
                {"sid": "NOT0000000000_S0000009", "description": "Describes a segment nobody has."}]
    (root / "speechcraft" / "gigaspeech_part2.jsonl").write_text("\n".join(json.dumps(x) for x in as_lines) + "\n")
    return as_dict
