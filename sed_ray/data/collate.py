"""Rows -> tensors: padded int16 audio, the target token ids of each task, the descriptor's ids.

Tokenisation happens here, in the data path, so a training step only moves tensors: under Ray it runs
inside the ingest tasks (`stream.bucket_window` calls `tokenize_columns` on each window's batch rows,
on CPU nodes), in a plain process inside `plain_batches`, and `infer` calls `collate_rows` on its
decoded rows. Targets are tokenised exactly as `model.prompt.PromptBuilder` defines them; token lists
travel as Arrow list columns and are padded into tensors on the worker (`Batch.from_row`).

No Ray here. Shape legend: B batch, T samples (16 kHz), S target tokens, D descriptor tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa

from sed_ray.data.schema import SAMPLE_RATE, binary_value, pcm_from_bytes, pcm_to_float
from sed_ray.model.prompt import IGNORE, PromptBuilder, get_task

# what a batch carries besides audio and token ids, each as a list with one entry per utterance
BATCH_META = ("id", "text", "emotion", "descriptor", "speaker", "split", "corpus")
FIELD_PAD = -1  # no target field (padding)


@dataclass(frozen=True)
class Collate:
    """What to tokenise: with the tokenizer of `tokenizer` (the LLM's folder or hub id), the targets of
    each of `tasks` and the descriptor (for the descriptor draft); with `fields`, also the target field
    each token belongs to (the listening check's split by field)."""

    tokenizer: str
    tasks: tuple[str, ...]
    fields: bool = False

    def builder(self) -> PromptBuilder:
        return _builder(self.tokenizer)


@lru_cache(maxsize=4)
def _builder(tokenizer: str) -> PromptBuilder:
    """One tokenizer per ingest process (Ray reuses its worker processes, so this loads once)."""
    from transformers import AutoTokenizer

    from sed_ray.storage import pretrained_source

    return PromptBuilder(AutoTokenizer.from_pretrained(pretrained_source(tokenizer), trust_remote_code=False),
                         system_prompt="")


def target_values(text, descriptor, emotion) -> dict:
    """One utterance's reference fields as the prompt's target names them."""
    return {"transcript": text, "descriptor": descriptor, "emotion": emotion}


def missing(value) -> bool:
    return not " ".join(str(value or "").split())


def unscored_places(builder: PromptBuilder, task, values: dict) -> list[int]:
    """Target places not to learn: the tokens of a field this utterance has no value for (a corpus
    without emotions or descriptors), its title and line break included, so the model is not taught to
    write an empty field. Needs a fast tokenizer's offsets; without them every place is scored."""
    if not any(missing(values.get(f)) for f in task.fields):
        return []
    owners = builder.token_fields(task, values)
    return [i for i, f in enumerate(owners or []) if missing(values.get(f))]


def token_lists(values: list[dict], builder: PromptBuilder, tasks: tuple[str, ...], fields: bool) -> dict[str, list]:
    """Per task: `targets.<task>` (ids per utterance), `unscored.<task>` (places of the target the loss
    skips, `unscored_places`) and, with `fields`, `fields.<task>` (the index in the task's field list of
    each token); `descriptor_ids` (the descriptor as the draft reads it)."""
    out: dict[str, list] = {"descriptor_ids": [builder.descriptor_ids(v) for v in values]}
    for name in tasks:
        task = get_task(name)
        out[f"targets.{name}"] = [builder.target_ids(task, v) for v in values]
        out[f"unscored.{name}"] = [unscored_places(builder, task, v) for v in values]
        if fields:
            owners = [builder.token_fields(task, v) for v in values]
            out[f"fields.{name}"] = [[task.fields.index(f) for f in o] if o is not None else [FIELD_PAD] * len(ids)
                                     for o, ids in zip(owners, out[f"targets.{name}"])]
    return out


def token_schema(collate: Collate | None) -> list[pa.Field]:
    """The token columns a batch row carries (none without a Collate)."""
    if collate is None:
        return []
    ids = pa.list_(pa.list_(pa.int32()))
    columns = [pa.field("descriptor_ids", ids)] + [pa.field(f"{kind}.{t}", ids) for t in collate.tasks
                                                   for kind in ("targets", "unscored")]
    if collate.fields:
        columns += [pa.field(f"fields.{t}", pa.list_(pa.list_(pa.int8()))) for t in collate.tasks]
    return columns


def tokenize_columns(meta: dict[str, list[list]], collate: Collate) -> dict[str, list]:
    """Batch rows' metadata (each value a list per utterance) -> their token columns, one entry per row."""
    builder = collate.builder()
    out: dict[str, list] = {f.name: [] for f in token_schema(collate)}
    for texts, descriptors, emotions in zip(meta["text"], meta["descriptor"], meta["emotion"]):
        values = [target_values(*v) for v in zip(texts, descriptors, emotions)]
        for name, lists in token_lists(values, builder, collate.tasks, collate.fields).items():
            out[name].append(lists)
    return out


def pad_ids(lists: list[list[int]], pad: int = IGNORE) -> np.ndarray:
    """Ragged token lists -> a B x S int64 matrix, right-padded with `pad` (S >= 1)."""
    width = max((len(x) for x in lists), default=0) or 1
    out = np.full((len(lists), width), pad, dtype=np.int64)
    for row, ids in enumerate(lists):
        out[row, :len(ids)] = ids
    return out


@dataclass
class Batch:
    """One batch of tensors. `pcm_BT` is int16 until `to(device)` turns it into float in [-1, 1).
    `targets[task]` B x S and `descriptor_ids_BD` are right-padded with IGNORE; `scored[task]` B x S says
    which target tokens the loss counts; `fields[task]` (when collated with fields) gives each target
    token's field index, FIELD_PAD on padding."""

    pcm_BT: "object"  # torch.Tensor, int16 on the host or float32 on the device
    lengths_B: "object"  # torch.Tensor int64, samples per utterance
    meta: dict[str, list]
    targets: dict[str, "object"] = field(default_factory=dict)
    fields: dict[str, "object"] = field(default_factory=dict)
    descriptor_ids_BD: "object" = None
    scored: dict[str, "object"] = field(default_factory=dict)

    @classmethod
    def from_row(cls, table: pa.Table) -> "Batch":
        """A batch row of the stream (`stream.bucket_window`) -> tensors; the one copy of the audio."""
        import torch

        if table.num_rows != 1:
            raise ValueError(f"expected one batch row, got {table.num_rows}")
        row = table.drop_columns(["pcm"]).to_pylist()[0]
        shape = (row["batch_size"], row["max_len"])
        pcm = binary_value(table.column("pcm").combine_chunks(), 0, "<i2").reshape(shape)
        tensor = lambda lists, pad=IGNORE: torch.from_numpy(pad_ids(lists, pad))  # noqa: E731
        audio = torch.from_numpy(pcm.copy())  # Arrow buffers are read-only
        if torch.cuda.is_available():  # page-locked, so `to(device, non_blocking=True)` really overlaps
            audio = audio.pin_memory()
        return cls(pcm_BT=audio,
                   lengths_B=torch.tensor(row["lengths"], dtype=torch.int64),
                   meta={name: row[name] for name in BATCH_META if name in row},
                   targets={k.split(".", 1)[1]: tensor(v) for k, v in row.items() if k.startswith("targets.")},
                   fields={k.split(".", 1)[1]: tensor(v, FIELD_PAD) for k, v in row.items() if k.startswith("fields.")},
                   descriptor_ids_BD=tensor(row["descriptor_ids"]) if "descriptor_ids" in row else None,
                   scored={k.split(".", 1)[1]: scored_mask(row[f"targets.{k.split('.', 1)[1]}"], v)
                           for k, v in row.items() if k.startswith("unscored.")})

    @property
    def size(self) -> int:
        return int(self.pcm_BT.shape[0])

    @property
    def audio_seconds(self) -> float:
        return float(self.lengths_B.sum()) / SAMPLE_RATE

    @property
    def padding_fraction(self) -> float:
        return 1.0 - float(self.lengths_B.sum()) / float(self.pcm_BT.numel())

    def to(self, device) -> "Batch":
        """Move to `device` as int16 (half the bytes of float), then convert there. Idempotent: a batch
        that is already float is moved, not scaled again."""
        pcm = self.pcm_BT.to(device, non_blocking=True)
        if not pcm.is_floating_point():
            pcm = pcm_to_float(pcm)
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(pcm_BT=pcm, lengths_B=move(self.lengths_B), meta=self.meta,
                     targets={k: move(v) for k, v in self.targets.items()},
                     fields={k: move(v) for k, v in self.fields.items()},
                     descriptor_ids_BD=move(self.descriptor_ids_BD), scored={k: move(v) for k, v in self.scored.items()})


def collate_rows(rows: list[dict], builder: PromptBuilder | None = None, tasks: tuple[str, ...] = (),
                 fields: bool = False) -> Batch:
    """Decoded rows ({pcm: int16 bytes, num_samples, text, descriptor, emotion, ...}) -> one host Batch:
    the path `infer` takes. With a `builder`, the reference targets of `tasks` are tokenised too."""
    import torch

    lengths = [int(r["num_samples"]) for r in rows]
    pcm = np.zeros((len(rows), max(lengths, default=0) or 1), dtype=np.int16)
    for i, r in enumerate(rows):
        pcm[i, :lengths[i]] = pcm_from_bytes(r["pcm"])
    batch = Batch(pcm_BT=torch.from_numpy(pcm), lengths_B=torch.tensor(lengths, dtype=torch.int64),
                  meta={name: [r.get(name) for r in rows] for name in BATCH_META})
    if builder is not None:
        values = [target_values(r.get("text"), r.get("descriptor"), r.get("emotion")) for r in rows]
        lists = token_lists(values, builder, tasks, fields)
        batch.descriptor_ids_BD = torch.from_numpy(pad_ids(lists["descriptor_ids"]))
        batch.targets = {t: torch.from_numpy(pad_ids(lists[f"targets.{t}"])) for t in tasks}
        batch.scored = {t: scored_mask(lists[f"targets.{t}"], lists[f"unscored.{t}"]) for t in tasks}
        if fields:
            batch.fields = {t: torch.from_numpy(pad_ids(lists[f"fields.{t}"], FIELD_PAD)) for t in tasks}
    return batch


def scored_mask(targets: list[list[int]], unscored: list[list[int]]):
    """B x S bool: the real target places, less the unscored ones."""
    import torch

    mask = torch.from_numpy(pad_ids(targets)) != IGNORE
    for row, places in enumerate(unscored):
        mask[row, places] = False
    return mask


def padding_fraction(batches) -> float:
    """Padded samples / all samples over a stream of batches (0 = no padding)."""
    real = padded = 0
    for batch in batches:
        real += int(batch.lengths_B.sum())
        padded += int(batch.pcm_BT.numel())
    return 1.0 - real / padded if padded else 0.0
