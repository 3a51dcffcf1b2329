"""Chat prompt with pseudo-embedding slots, target text per task, and output parsing.

A prompt is the LLM's own chat template (when it has one) rendered around a user message that holds
marker strings where the audio pseudo-tokens go. The rendered text is split at the markers and each
text piece tokenised on its own, so no token is added to the vocabulary and the real Llama tokenizer
works unchanged. Targets are tokenised separately from the prompt, identically in training and
inference, and end with the tokenizer's end-of-sequence token.

Target format (fixed, parseable; fields in the task's order):
    Transcript: <text>
    Descriptor: <how it is spoken>
    Emotion: <label>
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

IGNORE = -100  # a token place that is not scored (the label the loss skips), and the padding of id tensors
FIELD_TITLES = {"transcript": "Transcript", "descriptor": "Descriptor", "emotion": "Emotion"}
STREAM_MARKERS = {"content": "<|speech_content|>", "descriptor": "<|speech_style|>"}
_LINE = re.compile(r"^\s*(Transcript|Descriptor|Emotion)\s*:\s*(.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Task:
    name: str
    inputs: tuple[str, ...]  # pseudo-embedding streams the prompt carries
    fields: tuple[str, ...]  # target fields, in order
    instruction: str


TASKS = {
    "asr": Task("asr", ("content",), ("transcript",), "Transcribe what is said."),
    "joint": Task("joint", ("content", "descriptor"), ("transcript", "descriptor", "emotion"),
                  "Transcribe what is said, describe how it is spoken (pitch, speed, energy, tone, emphasis), "
                  "then name the speaker's emotion."),
    # ablation: the joint task without descriptors in the target
    "joint_no_descriptor": Task("joint_no_descriptor", ("content", "descriptor"), ("transcript", "emotion"),
                                "Transcribe what is said, then name the speaker's emotion."),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def target_text(task: Task, values: dict, upto: str | None = None) -> str:
    """The target for `values` (keys transcript/descriptor/emotion). With `upto`, only the fields
    before it plus `"<Title>:"`, the prefix that label scoring continues."""
    lines = []
    for name in task.fields:
        if name == upto:
            lines.append(f"{FIELD_TITLES[name]}:")
            break
        lines.append(f"{FIELD_TITLES[name]}: {' '.join(str(values.get(name) or '').split())}")
    return "\n".join(lines)


def parse_output(text: str) -> dict[str, str]:
    """Generated text -> {"transcript", "descriptor", "emotion"} (missing fields are "")."""
    found = {name: "" for name in FIELD_TITLES}
    titles = {v: k for k, v in FIELD_TITLES.items()}
    for title, value in _LINE.findall(text):
        if not found[titles[title]]:
            found[titles[title]] = value
    return found


class PromptBuilder:
    def __init__(self, tokenizer, system_prompt: str) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        if tokenizer.eos_token_id is None:
            raise ValueError("the LLM's tokenizer has no eos token; targets could not end")

    def render(self, task: Task) -> str:
        slots = "\n".join(f"{'Speech content' if s == 'content' else 'Speaking style'}: {STREAM_MARKERS[s]}"
                          for s in task.inputs)
        user = f"{slots}\n{task.instruction}"
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = tok.bos_token or ""
        return f"{bos}{self.system_prompt}\n\nUser: {user}\nAssistant: "

    @lru_cache(maxsize=None)
    def pieces(self, task_name: str) -> tuple[tuple[str, object], ...]:
        """The prompt as ("ids", [token ids]) and ("stream", name) pieces, in order."""
        task = get_task(task_name)
        text = self.render(task)
        pattern = "(" + "|".join(re.escape(STREAM_MARKERS[s]) for s in task.inputs) + ")"
        by_marker = {v: k for k, v in STREAM_MARKERS.items()}
        out: list[tuple[str, object]] = []
        for part in re.split(pattern, text):
            if part in by_marker:
                out.append(("stream", by_marker[part]))
            elif part:
                out.append(("ids", tuple(self.encode(part))))
        return tuple(out)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def descriptor_ids(self, values: dict) -> list[int]:
        """The descriptor's token ids as the descriptor draft reads and writes it (the target's wording,
        no title; [] when there is none)."""
        return self.encode(" ".join(str(values.get("descriptor") or "").split()))

    def target_ids(self, task: Task, values: dict) -> list[int]:
        return self.encode(target_text(task, values)) + [self.tokenizer.eos_token_id]

    def token_fields(self, task: Task, values: dict) -> list[str] | None:
        """The field each token of `target_ids(task, values)` belongs to: a field's line is its title, its
        value and the line break that ends it; the end token goes with the last field. Read from the
        tokenizer's character offsets (a token belongs where it starts), so it holds whatever merges the
        tokenizer makes; None for a tokenizer without offsets (a slow one)."""
        if not getattr(self.tokenizer, "is_fast", False):
            return None
        text = target_text(task, values)
        line_starts, position = [], 0
        for line in text.split("\n"):  # one line per field: target_text collapses whitespace in values
            line_starts.append(position)
            position += len(line) + 1
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        owners = [task.fields[max(0, bisect_right(line_starts, start) - 1)] for start, _ in offsets]
        return owners + [task.fields[-1]]

    def label_continuations(self, task: Task, values: dict, labels: tuple[str, ...]) -> tuple[list[int], list[list[int]]]:
        """(prefix ids, per-label continuation ids incl. eos) such that prefix + continuation tokenises
        exactly like the training target with that label."""
        prefix_text = target_text(task, values, upto="emotion")
        prefix = self.encode(prefix_text)
        continuations = []
        for label in labels:
            full = self.target_ids(task, {**values, "emotion": label})
            # holds for byte-level BPE with word pre-tokenisation (Llama 3, the tiny preset): the label
            # starts a new pre-token after "Emotion:"
            assert full[:len(prefix)] == prefix, f"tokeniser merges across 'Emotion:' for label {label!r}"
            continuations.append(full[len(prefix):])
        return prefix, continuations

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
