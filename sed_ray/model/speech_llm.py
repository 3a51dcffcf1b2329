"""The whole model: frozen encoder -> content and descriptor blocks -> adapters -> LLM with LoRA.

`forward` returns the loss parts for a task; `predict` produces transcript, descriptor and an emotion
posterior scored over the label set. What trains is decided outside, by `set_trainable(groups)`.

Shape legend: B batch, T samples, L hidden states, F frames, Z latent, N pseudo-tokens, S sequence,
H LLM width, C labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from sed_ray.model.adapter import Adapter
from sed_ray.model.bottleneck import DisentanglementBlock
from sed_ray.model.config import ModelConfig
from sed_ray.model.draft import DescriptorDraft, bag_of_words_loss, draft_tokens, valid_first
from sed_ray.model.encoder import SpeechEncoder
from sed_ray.model.prompt import PromptBuilder, Task, get_task, parse_output

BRANCHES = ("content", "descriptor")
DESCRIPTOR_SOURCES = ("predicted", "generated", "ground-truth")  # what predict() scores the emotion after
TRAINABLE_GROUPS = ("content_block", "content_adapter", "descriptor_block", "descriptor_adapter", "descriptor_draft",
                    "lora")
IGNORE = -100


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass
class LossOutput:
    loss: torch.Tensor  # ce + beta_con * kl_con + beta_des * kl_des (+ draft_loss_weight * draft_bow)
    ce: torch.Tensor
    kl: dict[str, torch.Tensor]  # per branch used by the task
    target_tokens: int
    sequence_tokens: int
    draft_bow: torch.Tensor | None = None  # the descriptor draft's bag-of-words loss, when the task uses it

    def parts(self) -> dict[str, float]:
        parts = {"loss": float(self.loss.detach()), "ce": float(self.ce), **{f"kl_{k}": float(v) for k, v in self.kl.items()}}
        if self.draft_bow is not None:
            parts["draft_bow"] = float(self.draft_bow)
        return parts


@dataclass
class DraftGuess:
    """What the descriptor draft made of a batch: its bag of words and the bank descriptor it chose."""
    logp_BV: torch.Tensor  # log-probabilities over the vocabulary (what the bag-of-words loss trains)
    ids_BT: torch.Tensor  # the chosen descriptor's token ids
    valid_BT: torch.Tensor  # which of them are real tokens (none where the bank is empty)


class SpeechEmotionLLM(nn.Module):
    def __init__(self, config: ModelConfig, encoder: SpeechEncoder, llm: nn.Module, tokenizer) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.llm = llm
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer, config.system_prompt)
        width = llm.get_input_embeddings().weight.shape[1]
        layers, dim = encoder.num_hidden_states, encoder.hidden_size
        self.blocks = nn.ModuleDict({b: DisentanglementBlock(layers, dim, config.bottleneck_hidden, config.latent_dim,
                                                             config.bottleneck_init_logvar) for b in BRANCHES})
        self.adapters = nn.ModuleDict({b: Adapter(config.latent_dim, config.stack_frames, config.adapter_hidden, width)
                                       for b in BRANCHES})
        self.draft = (DescriptorDraft(layers, dim, config.draft_hidden, width, config.draft_bank_size,
                                      config.draft_bank_tokens) if config.draft_bank_size else None)

    # --- building -----------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig) -> "SpeechEmotionLLM":
        """Load the encoder and LLM with from_pretrained (local folder or hub id; never remote code),
        wrap the LLM with LoRA, add fresh blocks and adapters."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = _dtype(config.dtype)
        encoder = SpeechEncoder.from_pretrained(config.encoder, config.encoder_normalize, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(config.llm, trust_remote_code=False)
        llm = AutoModelForCausalLM.from_pretrained(config.llm, dtype=dtype, trust_remote_code=False)
        return cls(config, encoder, with_lora(llm, config), tokenizer)

    # --- trainability -------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """The trainable groups by name; everything else (encoder, LLM base weights) is always frozen."""
        groups = {f"{b}_block": list(self.blocks[b].named_parameters(prefix=f"blocks.{b}")) for b in BRANCHES}
        groups |= {f"{b}_adapter": list(self.adapters[b].named_parameters(prefix=f"adapters.{b}")) for b in BRANCHES}
        groups["descriptor_draft"] = list(self.draft.named_parameters(prefix="draft")) if self.draft is not None else []
        groups["lora"] = [(n, p) for n, p in self.llm.named_parameters(prefix="llm") if "lora_" in n]
        return groups

    def set_trainable(self, groups: Iterable[str]) -> None:
        groups = set(groups)
        unknown = groups - set(TRAINABLE_GROUPS)
        if unknown:
            raise ValueError(f"unknown trainable group(s) {sorted(unknown)}; valid: {', '.join(TRAINABLE_GROUPS)}")
        self.requires_grad_(False)
        for name, params in self.parameter_groups().items():
            for _, p in params:
                p.requires_grad_(name in groups)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter of every trainable group (whatever the current stage freezes), and the draft's
        buffers: its running feature statistics and its bank of descriptors."""
        state = {n: p.detach() for params in self.parameter_groups().values() for n, p in params}
        if self.draft is not None:
            state |= {n: b.detach() for n, b in self.draft.named_buffers(prefix="draft")}
        return state

    # --- encoding -----------------------------------------------------------------------------------
    def encode(self, pcm_BT: torch.Tensor, lengths_B: torch.Tensor, task: str):
        """A task's streams from audio: `encode_for` on the encoder's outputs (so with the descriptor draft
        wherever the task uses it) -> (streams, KLs, DraftGuess or None)."""
        return self.encode_for(get_task(task), *self.encoder(pcm_BT, lengths_B))

    def encode_hidden(self, hidden_LBFD: torch.Tensor, mask_BF: torch.Tensor, branches: Iterable[str]):
        """`encode` from encoder outputs already computed."""
        streams, kls = {}, {}
        embed_dtype = self.llm.get_input_embeddings().weight.dtype
        for branch in branches:
            z_BFZ, kls[branch] = self.blocks[branch](hidden_LBFD, mask_BF)
            tokens_BNH, mask_BN = self.adapters[branch](z_BFZ, mask_BF)
            streams[branch] = (tokens_BNH.to(embed_dtype), mask_BN)
        return streams, kls

    def uses_draft(self, task: Task) -> bool:
        """The draft serves tasks that generate a descriptor from the speaking-style stream (so not the
        no-descriptor ablation, which must not see descriptor supervision)."""
        return self.draft is not None and "descriptor" in task.fields and "descriptor" in task.inputs

    def descriptor_ids(self, values: dict) -> list[int]:
        """The descriptor's token ids as the draft reads and writes it (the target's wording, no title)."""
        return self.prompts.encode(" ".join(str(values.get("descriptor") or "").split()))

    def set_descriptor_bank(self, descriptors: list[str]) -> int:
        """Fill the draft's bank with these descriptors (training ones; see `draft.py`) -> how many it
        holds. A no-op returning 0 for a model without a draft."""
        if self.draft is None:
            return 0
        self.draft.set_bank([self.descriptor_ids({"descriptor": d}) for d in descriptors])
        return self.draft.bank_count

    def encode_for(self, task: Task, hidden_LBFD: torch.Tensor, mask_BF: torch.Tensor,
                   draft_references: list[list[int] | None] | None = None):
        """The task's streams from encoder outputs -> (streams, KLs, DraftGuess or None). With the draft,
        the speaking-style stream starts with the retrieved descriptor's tokens (or, for the rows of
        `draft_references` that are not None, those ids), then the branch's frame pseudo-tokens."""
        streams, kls = self.encode_hidden(hidden_LBFD, mask_BF, task.inputs)
        if not self.uses_draft(task):
            return streams, kls, None
        embedding = self.llm.get_input_embeddings().weight
        logp_BV = self.draft(hidden_LBFD, mask_BF, embedding)
        ids_BT, valid_BT, _ = self.draft.retrieve(logp_BV)
        guess = DraftGuess(logp_BV, ids_BT, valid_BT)
        tokens_BTH, valid_BT = draft_tokens(guess.ids_BT, guess.valid_BT, embedding, draft_references)
        frames_BNH, frames_mask_BN = streams["descriptor"]
        streams["descriptor"] = valid_first(torch.cat([tokens_BTH.to(frames_BNH.dtype), frames_BNH], dim=1),
                                            torch.cat([valid_BT, frames_mask_BN.bool()], dim=1))
        return streams, kls, guess

    def draft_texts(self, guess: "DraftGuess") -> list[str]:
        """The retrieved descriptors as text ("" where the bank was empty)."""
        return [self.prompts.decode(ids[valid].tolist()) for ids, valid in zip(guess.ids_BT, guess.valid_BT)]

    def _assemble(self, task: Task, streams, targets: list[list[int]], scored: list[list[bool]],
                  repeat: int = 1):
        """Left-padded inputs_embeds for prompt + streams + target ids; labels only where `scored`.
        Sample i of the output uses stream row i // repeat (label scoring repeats each utterance)."""
        embed = self.llm.get_input_embeddings()
        device = embed.weight.device
        rows, labels = [], []
        pieces = self.prompts.pieces(task.name)
        for i, (target, score) in enumerate(zip(targets, scored)):
            parts, row_labels = [], []
            for kind, payload in pieces:
                if kind == "ids":
                    parts.append(embed(torch.tensor(payload, device=device)))
                    row_labels += [IGNORE] * len(payload)
                else:
                    tokens_BNH, mask_BN = streams[payload]
                    n = int(mask_BN[i // repeat].sum())
                    parts.append(tokens_BNH[i // repeat, :n])
                    row_labels += [IGNORE] * n
            if target:
                parts.append(embed(torch.tensor(target, device=device)))
                row_labels += [t if s else IGNORE for t, s in zip(target, score)]
            rows.append(torch.cat(parts, dim=0))
            labels.append(row_labels)
        longest = max(r.shape[0] for r in rows)
        width = rows[0].shape[1]
        inputs_BSH = rows[0].new_zeros(len(rows), longest, width)
        attention_BS = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
        labels_BS = torch.full((len(rows), longest), IGNORE, dtype=torch.long, device=device)
        for i, (row, row_labels) in enumerate(zip(rows, labels)):
            inputs_BSH[i, longest - row.shape[0]:] = row
            attention_BS[i, longest - row.shape[0]:] = 1
            labels_BS[i, longest - row.shape[0]:] = torch.tensor(row_labels, device=device)
        position_BS = (attention_BS.cumsum(-1) - 1).clamp(min=0)
        return inputs_BSH, attention_BS, position_BS, labels_BS

    # --- training -----------------------------------------------------------------------------------
    def forward(self, pcm_BT: torch.Tensor, lengths_B: torch.Tensor, targets: list[dict], task: str,
                beta: dict[str, float] | None = None, draft_teacher_share: float = 0.0) -> LossOutput:
        """Loss = cross-entropy on target tokens + sum over the task's branches of beta[b] * KL[b]
        (+ the descriptor draft's weighted bag-of-words loss). `targets[i]` holds the utterance's transcript,
        descriptor and emotion. `draft_teacher_share`: the expected share of rows whose slot gets the
        reference descriptor instead of the draft's hypothesis (so the LLM first learns to read the slot)."""
        spec = get_task(task)
        hidden_LBFD, mask_BF = self.encoder(pcm_BT, lengths_B)
        descriptors = references = None
        if self.uses_draft(spec):
            descriptors = [self.descriptor_ids(t) for t in targets]  # the draft's bag-of-words targets
            chosen = (torch.rand(len(targets)) < draft_teacher_share).tolist()
            references = [ids if pick else None for ids, pick in zip(descriptors, chosen)]
        streams, kls, guess = self.encode_for(spec, hidden_LBFD, mask_BF, references)
        ids = [self.prompts.target_ids(spec, t) for t in targets]
        inputs, attention, positions, labels = self._assemble(spec, streams, ids, [[True] * len(x) for x in ids])
        out = self.llm(inputs_embeds=inputs, attention_mask=attention, position_ids=positions, labels=labels,
                       use_cache=False)
        beta = beta or {}
        loss = out.loss + sum(float(beta.get(b, 0.0)) * kls[b] for b in spec.inputs)
        draft_bow = None
        if guess is not None:
            draft_bow = bag_of_words_loss(guess.logp_BV, descriptors)
            loss = loss + self.config.draft_loss_weight * draft_bow
        return LossOutput(loss=loss, ce=out.loss.detach(), kl={b: k.detach() for b, k in kls.items()},
                          target_tokens=int((labels != IGNORE).sum()), sequence_tokens=int(attention.sum()),
                          draft_bow=None if draft_bow is None else draft_bow.detach())

    # --- inference ----------------------------------------------------------------------------------
    def _token_logp(self, spec: Task, streams, targets: list[list[int]], scored: list[list[bool]],
                    repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row and position: the log-probability of the next token where it is scored (0 elsewhere),
        and where that is. Rows are left-padded, so each row's target ends at the last position."""
        inputs, attention, positions, label_ids = self._assemble(spec, streams, targets, scored, repeat=repeat)
        logits = self.llm(inputs_embeds=inputs, attention_mask=attention, position_ids=positions,
                          use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        next_ids = label_ids[:, 1:]
        mask = next_ids != IGNORE
        return logp.gather(-1, next_ids.clamp(min=0)[..., None])[..., 0] * mask, mask

    def _target_logp(self, spec: Task, streams, targets: list[list[int]], scored: list[list[bool]],
                     repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: summed log-probability of its scored target tokens, and how many there are."""
        token_logp, mask = self._token_logp(spec, streams, targets, scored, repeat)
        return token_logp.sum(-1), mask.sum(-1)

    @torch.no_grad()
    def score_labels(self, streams, task: str, prefixes: list[dict]) -> torch.Tensor:
        """Posterior over config.labels (B x C): each label scored as the continuation after
        "Emotion:" (its tokens and the end token), given the prefix fields in `prefixes`."""
        spec = get_task(task)
        labels = self.config.labels
        targets, scored = [], []
        for values in prefixes:
            prefix, continuations = self.prompts.label_continuations(spec, values, labels)
            for cont in continuations:
                targets.append(prefix + cont)
                scored.append([False] * len(prefix) + [True] * len(cont))
        scores, _ = self._target_logp(spec, streams, targets, scored, repeat=len(labels))
        return torch.softmax(scores.view(len(prefixes), len(labels)), dim=-1)

    @torch.no_grad()
    def listening_check(self, pcm_BT: torch.Tensor, lengths_B: torch.Tensor, targets: list[dict],
                        task: str = "joint") -> dict[str, list]:
        """Does the model use what it hears? The reference target's negative log-likelihood (nats, summed
        over its tokens; teacher-forced, z = mu) given the utterance's own audio, given silence of the same
        length (only the duration is left), and given the next utterance's audio in the batch (None for a
        batch of one). Same figures for all three: the model ignores the audio beyond its length.

        `fields` splits the same sums by target field (PromptBuilder.token_fields), one dict per row:
        {field: {"tokens", "own", "silence", "other"}}, or None where the tokenizer gives no offsets. The
        transcript's tokens outnumber the others, so a whole-target figure can hide whether the audio
        moves the descriptor and the emotion."""
        spec = get_task(task)
        was_training = self.training
        self.eval()
        ids = [self.prompts.target_ids(spec, t) for t in targets]
        scored = [[True] * len(x) for x in ids]
        owners = [self.prompts.token_fields(spec, t) for t in targets]

        def nll(hidden_LBFD, mask_BF):
            streams, _, _ = self.encode_for(spec, hidden_LBFD, mask_BF)
            token_logp, _ = self._token_logp(spec, streams, ids, scored)
            per_field = []
            for row, (target, owner) in enumerate(zip(ids, owners)):
                if owner is None:
                    per_field.append(None)
                    continue
                # the row's n target tokens are predicted at its last n positions (left padding)
                tokens = (-token_logp[row, token_logp.shape[1] - len(target):]).tolist()
                sums = {f: 0.0 for f in spec.fields}
                for field, value in zip(owner, tokens):
                    sums[field] += value
                per_field.append(sums)
            return (-token_logp.sum(-1)).tolist(), per_field

        hidden_LBFD, mask_BF = self.encoder(pcm_BT, lengths_B)
        own, own_fields = nll(hidden_LBFD, mask_BF)
        silence, silence_fields = nll(*self.encoder(torch.zeros_like(pcm_BT), lengths_B))
        other, other_fields = [None] * len(ids), [None] * len(ids)
        if len(ids) > 1:  # the batch's own encoder outputs, one row on: no second encoder pass
            shift = torch.roll(torch.arange(len(ids), device=pcm_BT.device), -1)
            other, other_fields = nll(hidden_LBFD[:, shift], mask_BF[shift])
        fields = []
        for row, owner in enumerate(owners):
            if owner is None:
                fields.append(None)
                continue
            fields.append({f: {"tokens": owner.count(f), "own": own_fields[row][f], "silence": silence_fields[row][f],
                               "other": None if other_fields[row] is None else other_fields[row][f]}
                           for f in spec.fields})
        self.train(was_training)
        return {"nll_own": own, "nll_silence": silence, "nll_other": other,
                "target_tokens": [len(x) for x in ids], "fields": fields}

    @torch.no_grad()
    def generate_text(self, streams, task: str, batch_size: int, max_new_tokens: int = 96,
                      num_beams: int = 1) -> list[str]:
        spec = get_task(task)
        inputs, attention, positions, _ = self._assemble(spec, streams, [[] for _ in range(batch_size)],
                                                         [[] for _ in range(batch_size)])
        tok = self.tokenizer
        out = self.llm.generate(inputs_embeds=inputs, attention_mask=attention, max_new_tokens=max_new_tokens,
                                num_beams=num_beams, do_sample=False, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        return [self.prompts.decode(row) for row in out]

    @torch.no_grad()
    def predict(self, pcm_BT: torch.Tensor, lengths_B: torch.Tensor, task: str = "joint",
                references: list[dict] | None = None, descriptors: str = "predicted",
                max_new_tokens: int = 96, num_beams: int = 1, return_latents: bool = False) -> list[dict]:
        """Per utterance: transcript, descriptor, emotion and its posterior over the label set; the
        emotion is scored after the transcript and the descriptor that `descriptors` names:

        "predicted": the model's own. With a descriptor draft that is the draft, which the LLM also reads
          in its slot (the bank descriptor the audio fits best; the LLM's generated descriptor where the
          bank is empty); without one, the descriptor the LLM generates.
        "generated": the descriptor the LLM generates, whether or not there is a draft.
        "ground-truth": the reference (`references[i]["descriptor"]`), in the slot too (the paper's ablation).

        Each row also keeps the LLM's generated descriptor (`descriptor_generated`) and the draft
        (`descriptor_draft`, None without one)."""
        if descriptors not in DESCRIPTOR_SOURCES:
            raise ValueError(f"descriptors must be one of {', '.join(DESCRIPTOR_SOURCES)} (got {descriptors!r})")
        if descriptors == "ground-truth" and references is None:
            raise ValueError("descriptors='ground-truth' needs references with a descriptor per utterance")
        spec = get_task(task)
        was_training = self.training
        self.eval()
        hidden_LBFD, mask_BF = self.encoder(pcm_BT, lengths_B)  # once, for the streams and the latents
        given = None  # in ground-truth mode the slot holds the reference descriptor too, not the draft's guess
        if descriptors == "ground-truth" and self.uses_draft(spec):
            given = [self.descriptor_ids(r) for r in references]
        streams, _, guess = self.encode_for(spec, hidden_LBFD, mask_BF, given)
        texts = self.generate_text(streams, task, pcm_BT.shape[0], max_new_tokens, num_beams)
        drafts = self.draft_texts(guess) if guess is not None else [None] * len(texts)
        results = []
        for i, text in enumerate(texts):
            parsed = parse_output(text)
            descriptor = parsed["descriptor"]
            if descriptors == "ground-truth":
                descriptor = references[i].get("descriptor", "")
            elif descriptors == "predicted" and drafts[i]:
                descriptor = drafts[i]
            results.append({"transcript": parsed["transcript"], "descriptor": descriptor,
                            "generated_emotion": parsed["emotion"], "raw": text,
                            "descriptor_generated": parsed["descriptor"], "descriptor_draft": drafts[i]})
        if "emotion" in spec.fields:
            posterior = self.score_labels(streams, task, results)
            for row, probs in zip(results, posterior.tolist()):
                row["posterior"] = dict(zip(self.config.labels, probs))
                row["emotion"] = max(row["posterior"], key=row["posterior"].get)
        if return_latents:  # Z pooled over valid frames, for the report's projections
            for branch in BRANCHES:
                z, _ = self.blocks[branch](hidden_LBFD, mask_BF)
                pooled = (z * mask_BF[..., None]).sum(1) / mask_BF.sum(1, keepdim=True).clamp(min=1)
                for row, vec in zip(results, pooled.tolist()):
                    row[f"z_{branch}"] = vec
        self.train(was_training)
        return results


def with_lora(llm: nn.Module, config: ModelConfig) -> nn.Module:
    """LoRA adapters from peft on the configured projection modules; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=list(config.lora.target_modules), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(llm, lora)


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
