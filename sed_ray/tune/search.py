"""`sed-ray tune`: a Ray Tune search over the `tune:` section's space, each trial a Ray Train run.

Ray 2.60's pattern for Tune over Train: a Tuner runs a light driver function per trial (1 CPU), which
builds a `TorchTrainer` from the trial's config (`train.launcher.trainer_for`) and fits it; the
training's validation reports reach Tune through `TuneReportCallback`. The search folder is
<storage>/<name>: Tune's own state, each trial's training run under runs/<trial id> (so a restarted trial
resumes its own checkpoints), the shared base, and what `tune.results` writes. Relaunching with the same
name resumes the search: finished trials are kept, unfinished ones resume from their last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from sed_ray.base.tiny import fixed_base
from sed_ray.config import TrainConfig, build
from sed_ray.storage import RemotePath, location
from sed_ray.train.capacity import cluster_shape
from sed_ray.train.launcher import alive_nodes, check_resources, fixed_paths, run_needs
from sed_ray.train.plan import validate, validation_reports
from sed_ray.train.run_folder import differing, start_run_dir
from sed_ray.tune.space import check_space, distribution, grid_size, trial_config

DRIVER_CPUS = 1.0  # the trial's driver function; its training workers ask for their own resources


def search_dir(config: TrainConfig, name: str) -> Path | RemotePath:
    return location(config.storage) / name


def trials_at_once(config: TrainConfig, cluster: dict[str, float]) -> int:
    """How many trials the cluster holds at once: each needs its driver's CPU, its workers' CPUs (and
    GPUs) and a CPU for its data ingest. 0 when not even one fits."""
    cpus, gpus = run_needs(config)
    fits = int(cluster.get("CPU", 0) // (DRIVER_CPUS + cpus))
    return min(fits, int(cluster.get("GPU", 0) // gpus)) if gpus else fits


def _tune_space(config: TrainConfig) -> dict:
    from ray import tune

    made = {"choice": tune.choice, "grid": tune.grid_search,
            "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(*a)}
    return {key: made[name](args) for key, (name, args) in
            ((key, distribution(key, spec)) for key, spec in config.tune.space.items())}


def _searcher(config: TrainConfig):
    tune = config.tune
    if tune.searcher == "random" or (tune.searcher == "auto" and grid_size(config) > 1):
        return None  # Tune's own variant generator: random sampling, and every grid point
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=tune.metric, mode=tune.mode, seed=config.seed)


def _scheduler(config: TrainConfig):
    tune = config.tune
    if tune.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # time unit: one validation report that carries the metric (Tune's training_iteration)
    return ASHAScheduler(time_attr="training_iteration", max_t=objective_reports(config),
                         grace_period=tune.grace_period, reduction_factor=tune.reduction_factor)


def objective_reports(config: TrainConfig) -> int:
    """How many validation reports of a whole trial carry the objective: ASHA's max_t."""
    return sum(config.tune.metric in names for _, names in validation_reports(config))


def run_trial(params: dict, *, base: dict, runs: str, metric: str, group: str, cells: dict | None = None) -> None:
    """One trial, in its Tune actor: the trial's config, named by its trial id (stable across a
    relaunch, so the run resumes its own checkpoints), fitted as a TorchTrainer. An ablation's trial
    names its cell (params["cell"]); the cell's overrides come first, the other values after."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from sed_ray.train.launcher import trainer_for

    class ObjectiveReports(TuneReportCallback):
        """Only reports that carry the objective reach Tune: checkpoint-only reports and the validations
        of stages that do not score it would fail Tune's metric check and blur ASHA's time unit."""

        def after_report(self, run_context, metrics, checkpoint):
            if metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    params = dict(params)
    if "cell" in params:
        params = {**cells[params.pop("cell")], **params}
    config = trial_config(build(TrainConfig, base), params)
    config = replace(config, name=ray.tune.get_context().get_trial_id(), storage=runs,
                     logging=replace(config.logging, wandb_group=group))
    validate(config)
    start_run_dir(config, any(config.run_dir.glob("checkpoint_step*")))
    trainer_for(config, callbacks=[ObjectiveReports()]).fit()


def _record_or_match(folder: Path, config: TrainConfig, name: str) -> None:
    """The first launch records the search's config; a relaunch must ask for the same search (Tune resumes
    the recorded one and would silently ignore a changed space or schedule)."""
    from sed_ray.files import atomic_write_text

    recorded, wanted = folder / "search.json", json.loads(json.dumps(config.to_dict(), default=list))
    if recorded.exists():
        before = json.loads(recorded.read_text())
        changed = list(differing(before, wanted))  # keys a newer sed-ray added are not a change
        if changed:
            raise ValueError(f"search {name!r} in {folder} was started with another config (differs in: "
                             f"{', '.join(changed)}); relaunch with the same config to resume it, or pick a new --name")
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(recorded, json.dumps(wanted, indent=1))


def run_search(config: TrainConfig, name: str, log=print, cells: dict[str, dict] | None = None):
    """Check everything, resolve the base once, run (or resume) the search; returns Tune's ResultGrid and
    the config the trials share. `cells`: an ablation's cells (name -> overrides), a grid key of their own."""
    import ray
    from ray import tune

    from sed_ray.ray_env import ensure_ray

    check_space(config)
    validate(config)
    ensure_ray()
    config = fixed_paths(config, alive_nodes())
    at_once = trials_at_once(config, ray.cluster_resources())
    shape = cluster_shape(config.scaling) if config.scaling.check_resources else None
    if at_once == 0 and config.scaling.check_resources and shape is None:
        raise ValueError(f"the cluster cannot hold one trial: scaling.num_workers={config.scaling.num_workers} x "
                         f"scaling.cpus_per_worker={config.scaling.cpus_per_worker}, plus {DRIVER_CPUS:g} CPU for the "
                         f"trial's driver and 1 for its data ingest; the cluster has {ray.cluster_resources()}. Lower "
                         "scaling.num_workers; on an autoscaling cluster name its node groups with "
                         "scaling.node_types=<cluster-launcher YAML or KubeRay manifest>, or set scaling.check_resources=false")
    if at_once == 0 and shape is not None:  # refused if the node groups can never hold it, else trials wait for them
        log(check_resources(config, ray.nodes(), shape) or "[tune] no trial fits now: trials wait for the autoscaler")
    folder = search_dir(config, name)
    _record_or_match(folder, config, name)
    shared = replace(config, model=replace(config.model, tiny_base_dir=config.model.tiny_base_dir or str(folder / "base")))
    shared = fixed_base(shared, log)  # built once here; every trial reads it
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=shared.to_dict(), runs=str(folder / "runs"), metric=config.tune.metric,
                             group=name, cells=cells),
        {"CPU": DRIVER_CPUS})
    if tune.Tuner.can_restore(str(folder)):
        log(f"[tune] resuming search {name!r} in {folder}: finished trials are kept")
        tuner = tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=True)
    else:
        space = _tune_space(config) | ({"cell": tune.grid_search(list(cells))} if cells else {})
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=config.tune.metric, mode=config.tune.mode, search_alg=_searcher(config),
                                        scheduler=_scheduler(config), num_samples=config.tune.trials,
                                        max_concurrent_trials=config.tune.max_concurrent or max(at_once, 1)),
            run_config=tune.RunConfig(name=name, storage_path=str(folder.parent),
                                      failure_config=tune.FailureConfig(max_failures=config.tune.trial_max_failures)))
    return tuner.fit(), shared


def search(config: TrainConfig, name: str, log=print) -> dict:
    """Run (or resume) the search, then write its table, best.yaml and report; returns their paths and
    the best row (None when no trial reported the objective)."""
    from sed_ray.tune.results import best_row, console_table, trial_rows, write_outputs

    folder = search_dir(config, name)
    grid, shared = run_search(config, name, log)
    rows = trial_rows(grid, config)
    written = write_outputs(folder, rows, config, shared, name)
    log(console_table(rows, list(config.tune.space), config.tune.metric))
    best = best_row(rows, config.tune.mode)
    log(f"[tune] {len(rows)} trials; results {written['results']}; report {written['report']}" +
        (f"; best config {written['best']}" if "best" in written else "; no trial reported the objective"))
    return {**written, "best": best, "rows": rows}
