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

from sed_ray.config import ModelConfig
from sed_ray.model.adapter import Adapter
from sed_ray.model.bottleneck import DisentanglementBlock
from sed_ray.model.draft import DescriptorDraft, bag_of_words_loss, draft_tokens, valid_first
from sed_ray.model.encoder import SpeechEncoder
from sed_ray.model.prompt import IGNORE, PromptBuilder, Task, get_task, parse_output

BRANCHES = ("content", "descriptor")
DESCRIPTOR_SOURCES = ("predicted", "generated", "ground-truth")  # what predict() scores the emotion after
TRAINABLE_GROUPS = ("content_block", "content_adapter", "descriptor_block", "descriptor_adapter", "descriptor_draft",
                    "lora")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # ModelConfig.dtype


@dataclass
class LossOutput:
    loss: torch.Tensor  # ce + beta_con * kl_con + beta_des * kl_des (+ draft_loss_weight * draft_bow)
    ce: torch.Tensor
    kl: dict[str, torch.Tensor]  # per branch used by the task
    target_tokens: torch.Tensor  # 0-dim counts, left on the device: reading them would wait for the step
    sequence_tokens: torch.Tensor
    draft_bow: torch.Tensor | None = None  # the descriptor draft's bag-of-words loss, when the task uses it

    def parts(self) -> dict[str, torch.Tensor]:
        """The loss parts as detached 0-dim tensors (still on the device: no host synchronisation)."""
        parts = {"loss": self.loss.detach(), "ce": self.ce, **{f"kl_{k}": v for k, v in self.kl.items()}}
        if self.draft_bow is not None:
            parts["draft_bow"] = self.draft_bow
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

        from sed_ray.storage import pretrained_source

        dtype = DTYPES[config.dtype]
        encoder = SpeechEncoder.from_pretrained(pretrained_source(config.encoder), config.encoder_normalize, dtype=dtype)
        llm_source = pretrained_source(config.llm)  # a base built in object storage is fetched once per process
        tokenizer = AutoTokenizer.from_pretrained(llm_source, trust_remote_code=False)
        llm = AutoModelForCausalLM.from_pretrained(llm_source, dtype=dtype, trust_remote_code=False,
                                                   attn_implementation=config.attention)
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

    def set_descriptor_bank(self, descriptors: list[str]) -> int:
        """Fill the draft's bank with these descriptors (training ones; see `draft.py`) -> how many it
        holds. A no-op returning 0 for a model without a draft."""
        if self.draft is None:
            return 0
        self.draft.set_bank([self.prompts.descriptor_ids({"descriptor": d}) for d in descriptors])
        return self.draft.bank_count

    def encode_for(self, task: Task, hidden_LBFD: torch.Tensor, mask_BF: torch.Tensor,
                   draft_references: tuple[torch.Tensor, torch.Tensor] | None = None):
        """The task's streams from encoder outputs -> (streams, KLs, DraftGuess or None). With the draft,
        the speaking-style stream starts with the retrieved descriptor's tokens (or, for the rows `use_B`
        of `draft_references = (ids_BD, use_B)`, those reference ids), then the branch's frame pseudo-tokens."""
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

    def _piece_ids(self, task: Task, device: torch.device) -> list[tuple[str, object]]:
        """The prompt's pieces with token ids as tensors on `device`, made once per task and device."""
        cache = self.__dict__.setdefault("_pieces_cache", {})
        key = (task.name, str(device))
        if key not in cache:
            cache[key] = [(kind, torch.tensor(payload, device=device) if kind == "ids" else payload)
                          for kind, payload in self.prompts.pieces(task.name)]
        return cache[key]

    def _assemble(self, task: Task, streams, target_ids_BS: torch.Tensor, scored_BS: torch.Tensor | None = None,
                  repeat: int = 1, first_row: int = 0):
        """Left-padded inputs_embeds for prompt + streams + targets, and labels at the scored target tokens.
        `target_ids_BS`: right-padded with IGNORE (width 0 for none); `scored_BS`: which of them are scored
        (default: all). Row i uses stream row (first_row + i) // repeat (label scoring repeats each
        utterance, and goes through its rows in chunks).

        Built for all rows at once: every piece at its full width with a validity mask, then each row's
        valid places moved, in order, to its end (left padding)."""
        embed = self.llm.get_input_embeddings()
        device = embed.weight.device
        rows = target_ids_BS.shape[0]
        source_B = (torch.arange(rows, device=device) + first_row) // repeat
        parts, valid, labels = [], [], []
        for kind, payload in self._piece_ids(task, device):
            if kind == "ids":
                parts.append(embed(payload)[None].expand(rows, -1, -1))
                valid.append(torch.ones(rows, len(payload), dtype=torch.bool, device=device))
            else:
                tokens_BNH, mask_BN = streams[payload]
                parts.append(tokens_BNH[source_B])
                valid.append(mask_BN[source_B].bool())
            labels.append(torch.full(valid[-1].shape, IGNORE, dtype=torch.long, device=device))
        target_valid_BS = target_ids_BS != IGNORE
        scored_BS = target_valid_BS if scored_BS is None else scored_BS & target_valid_BS
        parts.append(embed(target_ids_BS.clamp(min=0)))
        valid.append(target_valid_BS)
        labels.append(torch.where(scored_BS, target_ids_BS, IGNORE))
        valid_BW = torch.cat(valid, dim=1)
        order_BW = torch.argsort(valid_BW.to(torch.int8), dim=1, stable=True)  # padding first, then in order
        width = int(valid_BW.sum(1).max())  # the longest row: one host sync per batch
        order_BS = order_BW[:, order_BW.shape[1] - width:]
        inputs_BWH = torch.cat(parts, dim=1)
        attention_BS = torch.gather(valid_BW, 1, order_BS)
        inputs_BSH = torch.gather(inputs_BWH, 1, order_BS[..., None].expand(-1, -1, inputs_BWH.shape[-1]))
        inputs_BSH = inputs_BSH * attention_BS[..., None].to(inputs_BSH.dtype)  # padding embeds as zeros
        labels_BS = torch.gather(torch.cat(labels, dim=1), 1, order_BS).masked_fill(~attention_BS, IGNORE)
        attention_BS = attention_BS.long()
        position_BS = (attention_BS.cumsum(-1) - 1).clamp(min=0)
        return inputs_BSH, attention_BS, position_BS, labels_BS

    # --- training -----------------------------------------------------------------------------------
    def forward(self, pcm_BT: torch.Tensor, lengths_B: torch.Tensor, target_ids_BS: torch.Tensor, task: str,
                beta: dict[str, float] | None = None, draft_teacher_share: float = 0.0,
                descriptor_ids_BD: torch.Tensor | None = None, target_scored_BS: torch.Tensor | None = None) -> LossOutput:
        """Loss = cross-entropy on target tokens + sum over the task's branches of beta[b] * KL[b]
        (+ the descriptor draft's weighted bag-of-words loss). Tensors only: `target_ids_BS` are the task's
        target tokens and `descriptor_ids_BD` the reference descriptor's (the draft's bag-of-words target),
        both right-padded with IGNORE, as `data/collate.py` builds them; `target_scored_BS` (default: all)
        says which target tokens the loss counts (a field the corpus lacks for a row is read, not learnt).
        `draft_teacher_share`: the
        expected share of rows whose slot gets the reference descriptor instead of the draft's hypothesis
        (so the LLM first learns to read the slot)."""
        spec = get_task(task)
        hidden_LBFD, mask_BF = self.encoder(pcm_BT, lengths_B)
        references = None
        if self.uses_draft(spec):
            if descriptor_ids_BD is None:
                raise ValueError(f"task {task!r} with a descriptor draft needs descriptor_ids_BD (data/collate.py)")
            use_B = torch.rand(target_ids_BS.shape[0]) < draft_teacher_share  # CPU generator, seeded per rank
            references = (descriptor_ids_BD, use_B)
        streams, kls, guess = self.encode_for(spec, hidden_LBFD, mask_BF, references)
        inputs, attention, positions, labels = self._assemble(spec, streams, target_ids_BS, target_scored_BS)
        # Logits only where a target token is predicted: rows are left-padded, so every row's target sits
        # in the last `width` places, predicted by the `width + 1` last positions' logits (the prompt and the
        # audio pseudo-tokens, most of the sequence, never reach the vocabulary projection).
        width = target_ids_BS.shape[1]
        logits_BKV = self.llm(inputs_embeds=inputs, attention_mask=attention, position_ids=positions,
                              use_cache=False, logits_to_keep=width + 1).logits
        ce = torch.nn.functional.cross_entropy(logits_BKV[:, :-1].float().flatten(0, 1),
                                               labels[:, -width:].flatten(), ignore_index=IGNORE)
        beta = beta or {}
        loss = ce + sum(float(beta.get(b, 0.0)) * kls[b] for b in spec.inputs)
        draft_bow = None
        if guess is not None:
            draft_bow = bag_of_words_loss(guess.logp_BV, descriptor_ids_BD)
            loss = loss + self.config.draft_loss_weight * draft_bow
        return LossOutput(loss=loss, ce=ce.detach(), kl={b: k.detach() for b, k in kls.items()},
                          target_tokens=(labels != IGNORE).sum(), sequence_tokens=attention.sum(),
                          draft_bow=None if draft_bow is None else draft_bow.detach())

    # --- inference ----------------------------------------------------------------------------------
    def _tail_logp(self, spec: Task, streams, target_ids_BS: torch.Tensor, scored_BS: torch.Tensor | None,
                   tail: int, repeat: int = 1, first_row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the last `tail` target places of each row (right-aligned: rows are
        left-padded, so column -1 is every row's last target token), 0 where not scored, and where they
        are scored. The LLM computes logits for the last `tail + 1` positions only."""
        inputs, attention, positions, label_ids = self._assemble(spec, streams, target_ids_BS, scored_BS,
                                                                 repeat=repeat, first_row=first_row)
        logits_BKV = self.llm(inputs_embeds=inputs, attention_mask=attention, position_ids=positions,
                              use_cache=False, logits_to_keep=tail + 1).logits
        next_BK = label_ids[:, label_ids.shape[1] - tail:]
        mask_BK = next_BK != IGNORE
        logp_BKV = torch.log_softmax(logits_BKV[:, :-1].float(), dim=-1)
        return logp_BKV.gather(-1, next_BK.clamp(min=0)[..., None])[..., 0] * mask_BK, mask_BK

    @torch.no_grad()
    def score_labels(self, streams, task: str, prefixes: list[dict], labels: tuple[str, ...] | None = None,
                     chunk_utterances: int = 32) -> torch.Tensor:
        """Posterior over `labels` (default: config.labels; B x C): each label scored as the continuation
        after "Emotion:" (its tokens and the end token), given the prefix fields in `prefixes`.

        Memory and time: the shared prefix (prompt, audio pseudo-tokens, fields up to "Emotion:") goes
        through the LLM once per utterance and stays as a KV cache; each label's few continuation tokens
        then run on top of it. Utterances go `chunk_utterances` at a time, so the peak grows with the
        chunk x the prefix (the cache) and the chunk x the vocabulary (one label's logits), not with
        labels x positions x vocabulary."""
        spec = get_task(task)
        labels = tuple(labels or self.config.labels)
        pairs = [self.prompts.label_continuations(spec, values, labels) for values in prefixes]
        scores = [self._score_chunk(spec, streams, pairs[start:start + chunk_utterances], len(labels), start)
                  for start in range(0, len(pairs), chunk_utterances)]
        return torch.softmax(torch.cat(scores), dim=-1)

    def _score_chunk(self, spec: Task, streams, pairs: list, n_labels: int, first_row: int) -> torch.Tensor:
        """Summed log-probabilities (rows x labels) of each label's continuation for stream rows
        first_row.. (one per (prefix ids, continuations) pair): the prefix once with its KV cache kept,
        then per label its continuation on the cache, which is cropped back to the prefix after each."""
        device = self.llm.get_input_embeddings().weight.device
        embed = self.llm.get_input_embeddings()
        inputs, attention, positions, _ = self._assemble(spec, streams, pad_ids([p for p, _ in pairs], device),
                                                         first_row=first_row)
        out = self.llm(inputs_embeds=inputs, attention_mask=attention, position_ids=positions, use_cache=True,
                       logits_to_keep=1)
        cache = out.past_key_values
        first_logp_BV = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # the first token of every label
        next_B1 = positions[:, -1:] + 1
        columns = []
        for c in range(n_labels):
            ids_BK = pad_ids([conts[c] for _, conts in pairs], device)
            valid_BK = ids_BK != IGNORE
            ids_BK = ids_BK.clamp(min=0)
            logp_B = first_logp_BV.gather(1, ids_BK[:, :1])[:, 0]
            if ids_BK.shape[1] > 1:  # the rest of the continuation, each token predicted by the one before
                fed = ids_BK.shape[1] - 1
                logits_BKV = self.llm(inputs_embeds=embed(ids_BK[:, :-1]),
                                      attention_mask=torch.cat([attention, valid_BK[:, :-1].long()], dim=1),
                                      position_ids=next_B1 + torch.arange(fed, device=device),
                                      past_key_values=cache, use_cache=True).logits
                rest_BK = torch.log_softmax(logits_BKV.float(), dim=-1).gather(-1, ids_BK[:, 1:, None])[..., 0]
                logp_B = logp_B + (rest_BK * valid_BK[:, 1:]).sum(-1)
                cache.crop(-fed)  # back to the prefix (negative: tokens to drop)
            columns.append(logp_B)
        return torch.stack(columns, dim=1)

    @torch.no_grad()
    def listening_check(self, pcm_BT: torch.Tensor, lengths_B: torch.Tensor, target_ids_BS: torch.Tensor,
                        task: str = "joint", fields_BS: torch.Tensor | None = None) -> dict[str, list]:
        """Does the model use what it hears? The reference target's negative log-likelihood (nats, summed
        over its tokens; teacher-forced, z = mu) given the utterance's own audio, given silence of the same
        length (only the duration is left), and given the next utterance's audio in the batch (None for a
        batch of one). Same figures for all three: the model ignores the audio beyond its length.

        `fields_BS` (each target token's index in the task's field list, -1 where unknown or padding;
        `data/collate.py`) splits the same sums by target field, one dict per row: {field: {"tokens", "own",
        "silence", "other"}}, or None for a row without field indices. The transcript's tokens outnumber the
        others, so a whole-target figure can hide whether the audio moves the descriptor and the emotion."""
        spec = get_task(task)
        was_training = self.training
        self.eval()
        valid_BS = target_ids_BS != IGNORE
        counts_B = valid_BS.sum(-1)

        width = target_ids_BS.shape[1]

        def nll(hidden_LBFD, mask_BF):
            streams, _, _ = self.encode_for(spec, hidden_LBFD, mask_BF)
            logp_BK, _ = self._tail_logp(spec, streams, target_ids_BS, None, width)
            # right-aligned -> the target's own columns: the row's n tokens are its last n places
            index_BS = width - counts_B[:, None] + torch.arange(width, device=counts_B.device)
            per_token_BS = -logp_BK.gather(1, index_BS.clamp(0, width - 1)) * valid_BS
            per_field_BF = None
            if fields_BS is not None:
                per_field_BF = torch.stack([(per_token_BS * (fields_BS == f)).sum(-1)
                                            for f in range(len(spec.fields))], -1)
            return (-logp_BK.sum(-1)).tolist(), per_field_BF

        hidden_LBFD, mask_BF = self.encoder(pcm_BT, lengths_B)
        own, own_fields = nll(hidden_LBFD, mask_BF)
        silence, silence_fields = nll(*self.encoder(torch.zeros_like(pcm_BT), lengths_B))
        rows = target_ids_BS.shape[0]
        other, other_fields = [None] * rows, None
        if rows > 1:  # the batch's own encoder outputs, one row on: no second encoder pass
            shift = torch.roll(torch.arange(rows, device=pcm_BT.device), -1)
            other, other_fields = nll(hidden_LBFD[:, shift], mask_BF[shift])
        fields = [None] * rows
        if fields_BS is not None:
            known_B = (((fields_BS >= 0) | ~valid_BS).all(-1) & valid_BS.any(-1)).tolist()
            tokens_BF = torch.stack([(fields_BS == f).sum(-1) for f in range(len(spec.fields))], -1).tolist()
            sums = {"own": own_fields, "silence": silence_fields, "other": other_fields}
            sums = {k: None if v is None else v.tolist() for k, v in sums.items()}
            fields = [{f: {"tokens": tokens_BF[row][i], **{k: None if v is None else v[row][i] for k, v in sums.items()}}
                       for i, f in enumerate(spec.fields)} if known_B[row] else None for row in range(rows)]
        self.train(was_training)
        return {"nll_own": own, "nll_silence": silence, "nll_other": other,
                "target_tokens": counts_B.tolist(), "fields": fields}

    @torch.no_grad()
    def generate_text(self, streams, task: str, batch_size: int, max_new_tokens: int = 96,
                      num_beams: int = 1) -> list[str]:
        spec = get_task(task)
        device = self.llm.get_input_embeddings().weight.device
        no_target_BS = torch.full((batch_size, 0), IGNORE, dtype=torch.long, device=device)
        inputs, attention, positions, _ = self._assemble(spec, streams, no_target_BS)
        tok = self.tokenizer
        out = self.llm.generate(inputs_embeds=inputs, attention_mask=attention, max_new_tokens=max_new_tokens,
                                num_beams=num_beams, do_sample=False, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        return [self.prompts.decode(row) for row in out]

    @torch.no_grad()
    def predict(self, pcm_BT: torch.Tensor, lengths_B: torch.Tensor, task: str = "joint",
                references: list[dict] | None = None, descriptors: str = "predicted",
                max_new_tokens: int = 96, num_beams: int = 1, return_latents: bool = False,
                labels: tuple[str, ...] | None = None) -> list[dict]:
        """Per utterance: transcript, descriptor, emotion and its posterior over the label set; the
        emotion is scored after the transcript and the descriptor that `descriptors` names:

        "predicted": the model's own. With a descriptor draft that is the draft, which the LLM also reads
          in its slot (the bank descriptor the audio fits best; the LLM's generated descriptor where the
          bank is empty); without one, the descriptor the LLM generates.
        "generated": the descriptor the LLM generates, whether or not there is a draft.
        "ground-truth": the reference (`references[i]["descriptor"]`), in the slot too (the paper's ablation).

        Each row also keeps the LLM's generated descriptor (`descriptor_generated`) and the draft
        (`descriptor_draft`, None without one). `labels`: score over these of the model's labels only
        (a 7-label model on IEMOCAP's 4-class protocol); default all."""
        labels = tuple(labels or self.config.labels)
        if set(labels) - set(self.config.labels):
            raise ValueError(f"labels {sorted(set(labels) - set(self.config.labels))} are not among the model's "
                             f"labels {list(self.config.labels)}")
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
            ids_BD = pad_ids([self.prompts.descriptor_ids(r) for r in references], hidden_LBFD.device)
            given = (ids_BD, torch.ones(ids_BD.shape[0], dtype=torch.bool))
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
            posterior = self.score_labels(streams, task, results, labels)
            for row, probs in zip(results, posterior.tolist()):
                row["posterior"] = dict(zip(labels, probs))
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


def pad_ids(lists: list[list[int]], device: torch.device, pad: int = IGNORE) -> torch.Tensor:
    """Ragged token lists (made at inference: label continuations) -> B x S int64, right-padded."""
    width = max((len(x) for x in lists), default=0)
    out = torch.full((len(lists), width), pad, dtype=torch.long)
    for row, ids in enumerate(lists):
        out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out.to(device)
