"""`sed-ray`: one console entry point, one thin subcommand per stage of the pipeline.

Each subcommand parses its flags and calls into the package; heavy imports happen inside the
handlers so `sed-ray --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _synth(args: argparse.Namespace) -> int:
    from sed_ray.data.synth import synthesize_corpus

    step = max(1, args.utterances // 10)
    next_report = [step]

    def progress(done: int, total: int) -> None:  # a line per ~10%, readable in logs and terminals alike
        if done >= next_report[0] or done == total:
            print(f"[synth] {done}/{total} utterances", flush=True)
            next_report[0] = done + step

    manifest = synthesize_corpus(args.out, args.utterances, args.seed, workers=args.workers,
                                 speakers=args.speakers, progress=progress)
    print(f"synth: wrote {manifest} ({args.utterances} utterances, {args.speakers} voices, seed {args.seed})")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from sed_ray.data.audio import AudioLimits
    from sed_ray.data.corpora import ConnectorOptions
    from sed_ray.data.prepare import prepare
    from sed_ray.data.schema import canonical_emotion

    labels = None
    if args.labels:
        labels = tuple(canonical_emotion(x) for x in args.labels.split(",") if x.strip())
    options = ConnectorOptions(labels=labels, test_session=args.test_session, subset=args.subset)
    limits = AudioLimits(min_seconds=args.min_seconds, max_seconds=args.max_seconds)
    result = prepare(args.corpus, args.source, args.out, shard_rows=args.shard_rows, limits=limits,
                     options=options, overwrite=args.overwrite)
    print(result.one_line())
    if result.accepted == 0:
        print(f"prepare: no row was accepted; see {result.out / 'rejects.jsonl'}", file=sys.stderr)
        return 1
    if args.strict and result.rejected:
        print(f"prepare: --strict and {result.rejected} row(s) rejected; see {result.out / 'rejects.jsonl'}",
              file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    from sed_ray.config import load_config

    config = load_config(args.config, args.overrides)
    if args.local:
        from sed_ray.train.launcher import run_local

        position = run_local(config)
        print(f"train: finished at step {position.step} ({position.stage}); checkpoints in {config.run_dir / 'checkpoints'}")
        return 0
    from sed_ray.train.launcher import launch

    result = launch(config)
    checkpoint = result.checkpoint.path if result.checkpoint else None
    print(f"train: finished; latest checkpoint {checkpoint}; metrics in {config.run_dir / 'metrics.jsonl'}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from sed_ray.config import load_config
    from sed_ray.tune.search import search

    config = load_config(args.config, args.overrides)
    if args.trials is not None:
        config = replace(config, tune=replace(config.tune, trials=args.trials))
    summary = search(config, args.name or f"{config.name}-search")
    return 0 if summary["best"] is not None else 1


def _ablate(args: argparse.Namespace) -> int:
    from sed_ray.config import InferenceOptions, load_config
    from sed_ray.tune.ablate import ablate

    config = load_config(args.config, args.overrides)
    pool = InferenceOptions(actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor)
    ablate(config, args.name or f"{config.name}-ablate-{args.grid}", grid=args.grid, seeds=args.seeds,
           split=args.split, replicates=args.replicates, reference_descriptors=not args.no_reference_descriptors,
           pool=pool)
    return 0


def _score(args: argparse.Namespace) -> int:
    from sed_ray.eval.metrics import read_predictions, score_records

    metrics = score_records(read_predictions(args.predictions), args.labels.split(",") if args.labels else None)
    text = json.dumps(metrics, indent=2)
    if args.out:
        from sed_ray.files import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"score: wrote {args.out}")
    print(text if not args.out else "\n".join(f"  {k}: {metrics[k]}" for k in
                                              ("ua", "wa", "macro_f1", "wer", "bleu4", "meteor", "rouge_l", "cider", "spice")))
    return 0


def _pool_arguments(parser: argparse.ArgumentParser) -> None:
    """How the model replicas are sized: on an autoscaling cluster, say what to ask for (the autoscaler adds
    the nodes); by default, what is free now."""
    parser.add_argument("--actors", type=int, default=None,
                        help="model replicas (default: one per GPU free now, or up to 2 on CPUs)")
    parser.add_argument("--gpus-per-actor", type=float, default=None,
                        help="GPUs each replica asks for (default: 1 if a GPU is free now, else 0)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each replica asks for (default 1)")


def _options(args: argparse.Namespace):
    from sed_ray.config import InferenceOptions

    labels = tuple(x.strip() for x in args.labels.split(",") if x.strip()) if args.labels else None
    return InferenceOptions(task=args.task, descriptors=getattr(args, "descriptors", "predicted"),
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                            labels=labels, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                            cpus_per_actor=args.cpus_per_actor)


def _infer(args: argparse.Namespace) -> int:
    from sed_ray.eval.infer import failed, run_inference, write_predictions
    from sed_ray.model.weights import model_folder
    from sed_ray.storage import location, require

    require(args.checkpoint, "--checkpoint", must_exist=True)
    require(args.out, "--out")
    folder = model_folder(args.checkpoint)  # a wrong checkpoint path costs nothing: checked before clearing
    for stale in ("predictions.parquet", "errors.jsonl"):  # a failed rerun must not leave older results standing
        (location(args.out) / stale).unlink(missing_ok=True)
    require(args.input, "--input", must_exist=True)
    records = run_inference(str(folder), args.input, _options(args))
    predictions, errors = write_predictions(records, args.out)
    broken = [r for r in records if failed(r)]
    for record in broken:
        print(f"infer: {record.get('source') or record['id']}: {record['error']}", file=sys.stderr)
    print(f"infer: {len(records) - len(broken)} predicted -> {predictions}; {len(broken)} failed -> {errors}")
    return 1 if broken and len(broken) == len(records) else 0


def _evaluate(args: argparse.Namespace) -> int:
    from sed_ray.eval.evaluate import evaluate

    checkpoints = {}
    for item in args.checkpoint:
        if args.protocol == "loso":
            if "=" not in item:
                raise ValueError(f"--protocol loso needs --checkpoint SESSION=PATH per fold, got {item!r}")
            session, path = item.split("=", 1)
            checkpoints[session] = path
        else:
            checkpoints[""] = item
    if args.protocol == "split" and len(args.checkpoint) != 1:
        raise ValueError("--protocol split takes exactly one --checkpoint")
    metrics = evaluate(checkpoints, args.data, args.out, _options(args), split=args.split, protocol=args.protocol,
                       run_dir=args.run_dir)
    summary = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("ua", "wa", "wer", "bleu4", "cider") if metrics.get(k) is not None)
    print(f"evaluate: {summary}\n  report: {args.out}/report.html")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sed_ray.demo import run_demo

    run_demo(args.out, quick=args.quick, descriptors=not args.no_descriptors, seed=args.seed)
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.what == "memory":
        from sed_ray.bench import memory_bench

        figures = memory_bench.run(utterances=args.utterances, layers=args.layers,
                                   chunk_utterances=args.chunk_utterances,
                                   prefix_words=args.prefix_words, sweep=args.sweep,
                                   log=lambda line: print(line, file=sys.stderr, flush=True))
        print(json.dumps(figures))
        return 0
    if args.what == "step":
        from sed_ray.bench import step_bench
        from sed_ray.config import load_config

        if not args.config:
            raise ValueError("bench step needs --config (e.g. jobs/configs/tiny.yaml or jobs/configs/bench-8b.yaml)")
        config = load_config(args.config, args.overrides)
        figures = step_bench.run(config, steps=args.steps, warmup=args.warmup, baseline=args.baseline,
                                 log=lambda line: print(line, file=sys.stderr, flush=True))
        print(json.dumps(figures))  # one line: the figures, for scripts
        return 0
    from sed_ray.bench import data_bench

    if not args.data:
        raise ValueError(f"bench {args.what} needs --data")
    if args.overrides:
        raise ValueError(f"bench {args.what} takes no key=value overrides (got {args.overrides})")
    figures = data_bench.run(args.what, args.data, repeats=args.repeats, batch_seconds=args.batch_seconds)
    print(json.dumps(figures, indent=2))
    return 0


def _model_info(args: argparse.Namespace) -> int:
    from sed_ray.model.speech_llm import count_parameters
    from sed_ray.train.stages import STAGE_PRESETS

    if args.checkpoint:
        from sed_ray.model.weights import load_model

        model, name = load_model(args.checkpoint), args.checkpoint
    else:
        from sed_ray.model.presets import paper_model_on_meta

        model, name = paper_model_on_meta(), "paper (HuBERT-large + Llama-3.1-8B-Instruct, meta device)"
    groups = {k: sum(p.numel() for _, p in v) for k, v in model.parameter_groups().items()}
    report = {"model": name, "groups": groups}
    for stage, spec in STAGE_PRESETS.items():
        model.set_trainable(spec["trains"])
        report[stage] = {**count_parameters(model), "trains": list(spec["trains"])}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{name}")
    print(f"  total parameters     {report['stage1']['total']:>15,}")
    for group, n in groups.items():
        print(f"  {group:<20} {n:>15,}")
    for stage in STAGE_PRESETS:
        r = report[stage]
        print(f"  {stage}: trains {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f} %): {', '.join(r['trains'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sed-ray", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="generate the synthetic emotional-speech corpus",
                                description="Synthesise an emotional-speech corpus with libespeak-ng: "
                                            "DIR/audio/*.wav and DIR/manifest.jsonl.")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--utterances", type=int, default=1200, help="number of utterances (default 1200)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same corpus (default 0)")
    synth.add_argument("--speakers", type=int, default=48, help="voices, split 70/15/15 train/valid/test (default 48)")
    synth.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count, at most 8)")
    synth.set_defaults(handler=_synth)

    prep = commands.add_parser("prepare", help="corpus -> validated 16 kHz Parquet shards (Ray Data job)",
                               description="Decode, downmix, resample to 16 kHz, validate and write Parquet "
                                           "shards, DIR/rejects.jsonl and DIR/summary.json. Rerunning over "
                                           "the same DIR resumes.")
    prep.add_argument("--corpus", required=True, choices=["manifest", "iemocap", "meld", "speechcraft"])
    prep.add_argument("--source", required=True, help="the corpus root, or the manifest file")
    prep.add_argument("--out", required=True, help="output folder for shards, rejects.jsonl, summary.json")
    prep.add_argument("--shard-rows", type=int, default=1000, help="utterances per shard (default 1000)")
    prep.add_argument("--min-seconds", type=float, default=0.25, help="reject shorter audio (default 0.25)")
    prep.add_argument("--max-seconds", type=float, default=60.0, help="reject longer audio (default 60)")
    prep.add_argument("--labels", default=None,
                      help="comma-separated emotion label set (default: the corpus's protocol; manifest: "
                           "neutral,happy,angry,sad)")
    prep.add_argument("--test-session", type=int, default=None,
                      help="iemocap: this session (1-5) becomes the test split (one LOSO fold)")
    prep.add_argument("--subset", default=None, help="speechcraft: keep training segments of this GigaSpeech subset (e.g. M)")
    prep.add_argument("--strict", action="store_true", help="exit non-zero if any row was rejected")
    prep.add_argument("--overwrite", action="store_true", help="discard shards of a different earlier plan in --out")
    prep.set_defaults(handler=_prepare)

    train = commands.add_parser("train", help="train on a Ray cluster (Ray Train + DeepSpeed ZeRO)",
                                description="Train with the YAML config; dotted key=value overrides win. "
                                            "Relaunching with the same name and storage resumes the run.")
    train.add_argument("--config", required=True, help="YAML config (see jobs/configs/)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. scaling.num_workers=4 optim.grad_clip=0.5")
    train.add_argument("--local", action="store_true", help="run in this process without Ray or DeepSpeed (one worker)")
    train.set_defaults(handler=_train)

    tune = commands.add_parser("tune", help="search the config's tune.space with Ray Tune (each trial a training run)",
                               description="Run the search the config's `tune:` section describes; dotted key=value "
                                           "overrides win (tune.* too). Relaunching with the same --name resumes it. "
                                           "Writes results.csv, best.yaml and report.html in <storage>/<name>.")
    tune.add_argument("--config", required=True, help="YAML config with a tune: section (see jobs/configs/)")
    tune.add_argument("--trials", type=int, default=None, help="sampled trials (default: tune.trials)")
    tune.add_argument("--name", default=None, help="search name, its folder under storage (default: <name>-search)")
    tune.add_argument("overrides", nargs="*", help="dotted overrides, e.g. tune.metric=val_wa scaling.num_workers=2")
    tune.set_defaults(handler=_tune)

    ablate = commands.add_parser("ablate", help="the paper's ablations as a grid of cells x seeds, evaluated, with intervals",
                                 description="Train every cell of the grid with each seed (Ray Tune, one shared base), "
                                             "evaluate each on the test split, and write ablation.csv/.html with mean, "
                                             "sd, 95 %% bootstrap intervals and paired differences against the "
                                             "reference cell. Relaunching with the same --name resumes.")
    ablate.add_argument("--config", required=True, help="the config every cell starts from (e.g. the demo's)")
    ablate.add_argument("--grid", default="paper", help="paper (7 cells) or descriptors (reference, no descriptors)")
    ablate.add_argument("--seeds", type=int, default=3, help="seeds per cell: config.seed, +1, ... (default 3)")
    ablate.add_argument("--name", default=None, help="its folder under storage (default: <name>-ablate-<grid>)")
    ablate.add_argument("--split", default="test", help="the split every checkpoint is evaluated on")
    ablate.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates (default 1000)")
    ablate.add_argument("--no-reference-descriptors", action="store_true",
                        help="skip scoring the emotion after the reference descriptors (halves the evaluations)")
    _pool_arguments(ablate)  # the evaluations' model replicas
    ablate.add_argument("overrides", nargs="*", help="dotted overrides of the config")
    ablate.set_defaults(handler=_ablate)

    score = commands.add_parser("score", help="score a predictions file (JSONL or Parquet)",
                                description="UA, WA, macro-F1, confusion (emotion_true/emotion_pred), WER "
                                            "(text_ref/text_hyp), BLEU@4, METEOR, ROUGE-L, CIDEr, SPICE "
                                            "(descriptor_ref/descriptor_hyp); scores the pairs present.")
    score.add_argument("--predictions", required=True)
    score.add_argument("--out", default=None, help="write metrics JSON here (default: print it)")
    score.add_argument("--labels", default=None, help="comma-separated label order for the confusion matrix")
    score.set_defaults(handler=_score)

    infer = commands.add_parser("infer", help="batch inference (Ray Data actor pool)",
                                description="Predict emotion, posterior, descriptor and transcript for a folder "
                                            "of audio files, a manifest, or a prepared shard folder.")
    infer.add_argument("--checkpoint", required=True, help="a model folder or a training checkpoint")
    infer.add_argument("--input", required=True)
    infer.add_argument("--out", required=True, help="writes OUT/predictions.parquet and OUT/errors.jsonl")
    infer.add_argument("--task", default="joint")
    infer.add_argument("--batch-size", type=int, default=8)
    infer.add_argument("--max-new-tokens", type=int, default=96)
    infer.add_argument("--num-beams", type=int, default=1, help="beam search width for the generated text (default 1: greedy)")
    infer.add_argument("--labels", default=None, help="comma-separated: score the emotion over these of the model's "
                                                      "labels only (default: all of them)")
    _pool_arguments(infer)
    infer.set_defaults(handler=_infer)

    ev = commands.add_parser("evaluate", help="inference + scoring + the HTML report",
                             description="Writes OUT/metrics.json, OUT/predictions.parquet and OUT/report.html.")
    ev.add_argument("--checkpoint", required=True, action="append",
                    help="model folder or training checkpoint; with --protocol loso, SESSION=PATH once per fold")
    ev.add_argument("--data", required=True, help="a prepared shard folder")
    ev.add_argument("--split", default="test")
    ev.add_argument("--out", required=True)
    ev.add_argument("--protocol", choices=["split", "loso"], default="split",
                    help="split: one checkpoint on --split (MELD's official test); loso: IEMOCAP leave-one-session-out")
    ev.add_argument("--descriptors", choices=["predicted", "generated", "ground-truth"], default="predicted",
                    help="score the emotion after the model's own descriptor (its descriptor draft where it has "
                         "one), the one the LLM generates, or the reference (ablation)")
    ev.add_argument("--task", default="joint")
    ev.add_argument("--run-dir", default=None, help="training run folder for the curves (default: found from the checkpoint)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-new-tokens", type=int, default=96)
    ev.add_argument("--num-beams", type=int, default=1, help="beam search width for the generated text (default 1: greedy)")
    ev.add_argument("--labels", default=None, help="comma-separated: score over these of the model's labels only, "
                                                   "e.g. neutral,happy,angry,sad for IEMOCAP's 4-class protocol "
                                                   "with a 7-label model (default: all of them)")
    _pool_arguments(ev)
    ev.set_defaults(handler=_evaluate)

    demo = commands.add_parser("demo", help="the whole pipeline on the synthetic corpus (tiny models, CPU)",
                               description="synth -> prepare -> pretrain the tiny base -> train stage 1 and 2 on "
                                           "Ray + DeepSpeed -> evaluate on held-out voices; prints a results table.")
    demo.add_argument("--out", default="sed-ray-demo", help="output folder (default ./sed-ray-demo)")
    demo.add_argument("--quick", action="store_true", help="a shortened run (used by the test suite)")
    demo.add_argument("--no-descriptors", action="store_true",
                      help="ablation: train and evaluate without descriptors in the targets")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)

    info = commands.add_parser("model-info", help="parameter counts: total and trainable per stage",
                               description="Print what trains in each stage. Without --checkpoint: the paper's "
                                           "sizes, instantiated on the meta device (no weights, no download).")
    info.add_argument("--checkpoint", default=None, help="a saved model folder (trainable.safetensors + config)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_model_info)

    bench = commands.add_parser("bench", help="throughput benchmarks (prints figures as JSON)",
                                description="prepare: audio seconds per wall second per core; ingest: the "
                                            "Ray Data stream against a plain pyarrow reader over the same shards; "
                                            "step: a config's per-worker training step without Ray, optionally "
                                            "against a naive loop (one JSON line).")
    bench.add_argument("what", choices=["prepare", "ingest", "step", "memory"])
    bench.add_argument("--data", default=None,
                       help="prepare: a manifest to prepare (e.g. from `sed-ray synth`); ingest: a prepared folder")
    bench.add_argument("--config", default=None, help="step: the YAML config whose step is timed")
    bench.add_argument("overrides", nargs="*", help="step: dotted overrides of the config")
    bench.add_argument("--steps", type=int, default=10, help="step: timed steps after warm-up (default 10)")
    bench.add_argument("--warmup", type=int, default=3, help="step: untimed warm-up steps (default 3)")
    bench.add_argument("--baseline", choices=["naive"], default=None,
                       help="step: also time a straightforward loop in the same process, and the ratio")
    bench.add_argument("--utterances", type=int, default=8, help="memory: utterances scored (x 7 labels)")
    bench.add_argument("--layers", type=int, default=2, help="memory: LLM layers at Llama-3.1-8B's width")
    bench.add_argument("--chunk-utterances", type=int, default=32, help="memory: utterances per label-scoring pass")
    bench.add_argument("--sweep", action="store_true",
                       help="memory: also label scoring's peak across label counts, chunks and prefix lengths")
    bench.add_argument("--prefix-words", type=int, default=40, help="memory: transcript words before 'Emotion:'")
    bench.add_argument("--repeats", type=int, default=3, help="timed repetitions; medians are reported")
    bench.add_argument("--batch-seconds", type=float, default=64.0, help="padded audio seconds per batch")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `bench step --config C key=value`, `tune --trials 4 key=value`: argparse fills the `overrides` positional before the options it
    # follows, so key=value words after them come back here
    if extra and hasattr(args, "overrides") and all("=" in word and not word.startswith("-") for word in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as exc:  # the user's mistake: say what to change, no traceback
        print(f"sed-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError) as exc:  # a path in the way
        print(f"sed-ray {args.command}: error: {exc.strerror}: {exc.filename} (choose another path)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
