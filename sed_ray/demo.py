"""`sed-ray demo`: the whole pipeline on the embedded synthetic corpus with the tiny preset.

synth -> prepare (Ray Data) -> tiny base (label-free stand-in pretraining) -> train stage 1 and stage 2
(Ray Train, 2 CPU workers, DeepSpeed ZeRO-2) -> evaluate on the held-out voices and sentences.
Every step's output stays under OUT, so any step can be rerun alone with the command the demo prints.
The model only ever sees waveforms: no generator parameter reaches it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoSize:
    utterances: int
    speakers: int
    encoder_steps: int
    lm_steps: int
    stage1_steps: int
    stage2_steps: int
    max_new_tokens: int


FULL = DemoSize(utterances=1200, speakers=48, encoder_steps=600, lm_steps=200, stage1_steps=80, stage2_steps=300,
                max_new_tokens=64)
# --quick (the test suite's run) skips the encoder's stand-in pretraining: 40 steps of it cost ~45 s of ~225 s
# on 2 cores and barely moved its masked-unit loss (4.2 -> 4.0 nats; chance ln 64 = 4.16). The run still
# learns without it: UA 0.60 vs 0.73 with it, one run each (docs/benchmarks.md).
QUICK = DemoSize(utterances=320, speakers=48, encoder_steps=0, lm_steps=60, stage1_steps=20, stage2_steps=120,
                 max_new_tokens=48)


def run_demo(out: str | Path = "sed-ray-demo", quick: bool = False, descriptors: bool = True, seed: int = 0,
             log=print) -> dict:
    from sed_ray.config import InferenceOptions, load_config
    from sed_ray.data.prepare import prepare
    from sed_ray.data.synth import corpus_settings, synthesize_corpus
    from sed_ray.eval.evaluate import evaluate
    from sed_ray.train.launcher import launch

    size = QUICK if quick else FULL
    out = Path(out).expanduser().resolve()
    corpus, shards, runs = out / "corpus", out / "shards", out / "runs"
    name = "demo" if descriptors else "demo-no-descriptors"
    task = "joint" if descriptors else "joint_no_descriptor"
    started = time.time()
    timings = {}

    def step(title: str, command: str):
        log(f"\n== {title}\n   (rerun alone: {command})")
        return time.time()

    wanted = {"utterances": size.utterances, "speakers": size.speakers, "seed": seed}
    if (corpus / "manifest.jsonl").exists():
        check_reusable(out, corpus_settings(corpus), wanted, quick)
    t = step("1/4 synthesise the corpus", f"sed-ray synth --out {corpus} --utterances {size.utterances} --speakers {size.speakers} --seed {seed}")
    if not (corpus / "manifest.jsonl").exists():
        synthesize_corpus(corpus, size.utterances, seed, speakers=size.speakers)
    timings["synth"] = time.time() - t

    t = step("2/4 prepare 16 kHz shards", f"sed-ray prepare --corpus manifest --source {corpus / 'manifest.jsonl'} --out {shards}")
    result = prepare("manifest", corpus / "manifest.jsonl", shards, shard_rows=200, log=lambda _m: None)
    log("   " + result.one_line())
    timings["prepare"] = time.time() - t

    overrides = [f"data.shards={shards}", f"storage={runs}", f"name={name}", f"seed={seed}",
                 f"model.tiny_encoder_steps={size.encoder_steps}", f"model.tiny_lm_steps={size.lm_steps}",
                 f"model.tiny_base_dir={out / 'base'}",  # shared: the ablation reuses the same frozen base
                 f"schedule.stages=[{{preset: stage1, steps: {size.stage1_steps}, lr: 0.003}}, "
                 f"{{preset: stage2, steps: {size.stage2_steps}, lr: 0.003, task: {task}}}]",
                 f"checkpoint.every_steps={size.stage1_steps + size.stage2_steps}", "logging.every_steps=10",
                 "validation.max_batches=2"]
    config_path = ROOT / "jobs" / "configs" / "tiny.yaml"
    t = step("3/4 train stage 1 (ASR, content branch) then stage 2 (joint, descriptor branch) on Ray + DeepSpeed",
             f"sed-ray train --config {config_path} " + " ".join(f"'{o}'" for o in overrides))
    fit = launch(load_config(config_path, overrides))
    checkpoint = Path(fit.checkpoint.path)
    timings["train"] = time.time() - t

    evaluation = out / f"eval-{name}"
    t = step("4/4 evaluate on the held-out voices and sentences",
             f"sed-ray evaluate --checkpoint {checkpoint} --data {shards} --split test --out {evaluation} --task {task} "
             f"--max-new-tokens {size.max_new_tokens}")
    metrics = evaluate({"": str(checkpoint)}, str(shards), evaluation,
                       InferenceOptions(task=task, max_new_tokens=size.max_new_tokens), split="test")
    timings["evaluate"] = time.time() - t
    timings["total"] = time.time() - started
    labels = metrics["confusion"]["labels"] if metrics.get("confusion") else []
    summary = {"ua": metrics.get("ua"), "wa": metrics.get("wa"), "wer": metrics.get("wer"),
               "bleu4": metrics.get("bleu4"), "cider": metrics.get("cider"),
               # with the descriptor draft, bleu4/cider score the draft the emotion follows; these the LLM's text
               "bleu4_generated": (metrics.get("descriptor_generated") or {}).get("bleu4"),
               "listening_gain": (metrics.get("listening") or {}).get("gain_over_silence"),
               "listening_gain_descriptor": (((metrics.get("listening") or {}).get("fields") or {}).get("descriptor")
                                             or {}).get("gain_over_silence"),
               "chance": 1 / len(labels) if labels else None, "report": str(evaluation / "report.html"),
               "descriptors": descriptors, "quick": quick, "seconds": timings}
    (out / f"summary-{name}.json").write_text(json.dumps(summary, indent=2))
    log("\n" + summary_table(summary))
    return summary


def check_reusable(out: Path, found: dict | None, wanted: dict, quick: bool) -> None:
    """A rerun into the same OUT reuses every finished step (corpus, shards, base, training runs). That
    is only right for the same demo: a corpus made with other settings (`--quick`, another `--seed`)
    would be trained on silently, under this demo's name."""
    if found == wanted:
        return
    made = "unknown settings" if found is None else ", ".join(f"{k}={v}" for k, v in found.items())
    raise ValueError(f"{out} holds a demo made with other settings (corpus: {made}); this "
                     f"{'quick ' if quick else ''}demo needs {', '.join(f'{k}={v}' for k, v in wanted.items())}. "
                     f"Give this run its own folder with --out (e.g. --out {out.name}-{'quick' if quick else 'full'}), "
                     f"or delete {out} to start over")


def summary_table(summary: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    rows = [("emotion UA (held-out voices)", fmt(summary["ua"])), ("emotion WA", fmt(summary["wa"])),
            ("chance (UA)", fmt(summary["chance"])), ("transcript WER", fmt(summary["wer"])),
            ("descriptor BLEU@4", fmt(summary["bleu4"])), ("descriptor CIDEr", fmt(summary["cider"])),
            *([("  the LLM's generated descriptor", f"BLEU@4 {summary['bleu4_generated']:.3f}")]
              if summary.get("bleu4_generated") is not None else []),
            ("audio over same-length silence", "n/a" if summary.get("listening_gain") is None
             else f"{summary['listening_gain']:+.3f} nats/token (listening check)"),
            ("  on the descriptor's tokens", "n/a" if summary.get("listening_gain_descriptor") is None
             else f"{summary['listening_gain_descriptor']:+.3f} nats/token"),
            ("total time", f"{summary['seconds']['total']:.0f} s")]
    width = max(len(r[0]) for r in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "sed-ray demo results\n" + "\n".join(lines) + f"\n  report: {summary['report']}"
