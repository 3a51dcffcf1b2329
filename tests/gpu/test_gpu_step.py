"""On a GPU: the tiny model trains in bf16 (frozen base bf16, trainable fp32, autocast), label scoring's
memory grows with its chunk and not with the sequence, and the step figures come out."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dataclasses import replace

    from sed_ray.base.tiny import build_tiny
    from sed_ray.bench.step_bench import DESCRIPTOR_WORDS, WORDS, synthetic_rows
    from sed_ray.model.speech_llm import SpeechEmotionLLM

    config = build_tiny(tmp_path_factory.mktemp("tiny"), [" ".join(WORDS), " ".join(DESCRIPTOR_WORDS)] * 4, seed=0)
    model = SpeechEmotionLLM.from_config(replace(config, dtype="bfloat16", draft_bank_size=16)).cuda()
    return model, synthetic_rows(8, model.config.labels)


def test_a_bf16_step_on_the_gpu_is_finite_and_moves_the_trainable_weights(tiny):
    from sed_ray.data.collate import collate_rows
    from sed_ray.train.stages import STAGE_PRESETS

    model, rows = tiny
    batch = collate_rows(rows, model.prompts, ("joint",)).to("cuda")
    model.set_trainable(STAGE_PRESETS["stage2"]["trains"])
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in params)  # trainable parts in fp32 beside the bf16 base
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch.pcm_BT, batch.lengths_B, batch.targets["joint"], "joint", {"descriptor": 1e-3}, 0.5,
                    batch.descriptor_ids_BD)
    out.loss.backward()
    optimizer.step()
    assert torch.isfinite(out.loss) and any(not torch.equal(a, p) for a, p in zip(before, params))


def test_label_scoring_peak_grows_with_the_chunk_not_with_the_prefix(tiny):
    from sed_ray.model.prompt import get_task

    model, rows = tiny
    model.eval()
    from sed_ray.data.collate import collate_rows

    batch = collate_rows(rows, model.prompts, ("joint",)).to("cuda")
    streams, _, _ = model.encode_for(get_task("joint"), *model.encoder(batch.pcm_BT, batch.lengths_B))
    peaks = {}
    for words in (5, 200):
        prefixes = [{"transcript": " ".join(["word"] * words), "descriptor": "a low voice"}] * len(rows)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        model.score_labels(streams, "joint", prefixes, chunk_utterances=4)
        peaks[words] = torch.cuda.max_memory_allocated() - start
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    # a 40x longer prefix may grow the attention's activations, but not the logits (4 rows x few x vocab)
    assert peaks[200] < peaks[5] + 4 * 200 * vocab * 4
