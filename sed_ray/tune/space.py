"""The `tune:` section's search space: its distributions, what is wrong with it (checked before any
trial starts, each problem naming the key), and how a trial's values become a training config.

Ray-free: `search.py` turns the checked space into Ray Tune's sample objects."""

from __future__ import annotations

import copy
import math
from typing import Any

from sed_ray.config import TrainConfig, build
from sed_ray.train.plan import problems, validation_reports


def _range_problem(args, integer: bool = False, positive: bool = False) -> str | None:
    if not (isinstance(args, (list, tuple)) and len(args) == 2):
        return "takes [low, high]"
    low, high = args
    kinds = (int,) if integer else (int, float)
    if not all(isinstance(v, kinds) and not isinstance(v, bool) for v in (low, high)):
        return f"takes two {'integers' if integer else 'numbers'}, got {args!r}"
    if not low < high:
        return f"is an empty range: low {low!r} must be below high {high!r}"
    if positive and low <= 0:
        return f"needs low > 0 (a log scale), got {low!r}"
    return None


def _values_problem(args) -> str | None:
    if not isinstance(args, (list, tuple)) or not args:
        return "takes a non-empty list of values"
    return None


# name -> (what is wrong with its arguments, the values a config is checked with)
DISTRIBUTIONS = {
    "choice": (_values_problem, lambda args: list(args)),
    "grid": (_values_problem, lambda args: list(args)),
    "uniform": (_range_problem, lambda args: list(args)),
    "loguniform": (lambda args: _range_problem(args, positive=True), lambda args: list(args)),
    "randint": (lambda args: _range_problem(args, integer=True), lambda args: [args[0], args[1] - 1]),
}
SEARCHERS = ("auto", "optuna", "random")
SCHEDULERS = ("asha", "fifo")


def distribution(key: str, spec: Any) -> tuple[str, Any]:
    """(name, arguments) of one space entry, or ValueError naming the key."""
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise ValueError(f"tune.space.{key}: give one distribution as a mapping, e.g. {{loguniform: [1e-5, 1e-2]}} "
                         f"(one of {', '.join(DISTRIBUTIONS)}); got {spec!r}")
    (name, args), = spec.items()
    if name not in DISTRIBUTIONS:
        raise ValueError(f"tune.space.{key}: unknown distribution {name!r}; use one of {', '.join(DISTRIBUTIONS)}")
    return name, args


def apply_params(tree: dict, params: dict[str, Any]) -> dict:
    """A copy of the config mapping `tree` with each dotted key set; a number in the path indexes a list
    (schedule.stages.1.lr). Raises ValueError naming a key whose path does not exist."""
    tree = copy.deepcopy(tree)
    for dotted, value in params.items():
        node: Any = tree
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ValueError(f"tune.space.{dotted}: {'.'.join(parts[:depth]) or 'the config'} is a list of "
                                     f"{len(node)}; {part!r} is not an index into it")
                part = int(part)
            elif not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth]) or "the config"
                raise ValueError(f"tune.space.{dotted}: unknown key {part!r} under {where}")
            if last:
                node[part] = value
            else:
                node = node[part]
    return tree


def trial_config(config: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The training config one trial runs: `config` with the trial's values, its tune section emptied."""
    tree = apply_params(config.to_dict(), params)
    tree["tune"] = {}
    return build(TrainConfig, tree)


def grid_size(config: TrainConfig) -> int:
    return math.prod(len(spec["grid"]) for spec in config.tune.space.values()
                     if isinstance(spec, dict) and "grid" in spec)


def space_problems(config: TrainConfig) -> list[str]:
    """Everything wrong with the search, before any trial starts: the section's own settings, each
    space entry (its distribution, its arguments, its key, and the config every one of its edge values
    makes, against the training's own checks), and a metric the training would never report."""
    tune, found = config.tune, []
    if not isinstance(tune.space, dict) or not tune.space:
        return ["tune.space: list at least one key to search, e.g. beta.end: {loguniform: [1.0e-5, 1.0e-2]}"]
    checks = [(tune.mode in ("max", "min"), f"tune.mode: {tune.mode!r} is not one of max, min"),
              (tune.searcher in SEARCHERS, f"tune.searcher: {tune.searcher!r} is not one of {', '.join(SEARCHERS)}"),
              (tune.scheduler in SCHEDULERS, f"tune.scheduler: {tune.scheduler!r} is not one of {', '.join(SCHEDULERS)}"),
              (tune.trials >= 1, f"tune.trials: must be >= 1 (got {tune.trials})"),
              (tune.grace_period >= 1, f"tune.grace_period: must be >= 1 validation report (got {tune.grace_period})"),
              (tune.reduction_factor > 1, f"tune.reduction_factor: must be > 1 (got {tune.reduction_factor})"),
              (tune.max_concurrent >= 0, f"tune.max_concurrent: must be >= 0 (0 = from the cluster)"),
              (tune.trial_max_failures >= 0, "tune.trial_max_failures: must be >= 0")]
    found += [message for ok, message in checks if not ok]
    if tune.searcher == "optuna" and grid_size(config) > 1:
        found.append("tune.searcher: optuna cannot search grid keys; use choice, or searcher: random")
    for key, spec in tune.space.items():
        try:
            name, args = distribution(key, spec)
        except ValueError as exc:
            found.append(str(exc))
            continue
        check, edges = DISTRIBUTIONS[name]
        problem = check(args)
        if problem:
            found.append(f"tune.space.{key}: {name} {problem}")
            continue
        found += _value_problems(config, key, edges(args))
    reported = {name for _, names in validation_reports(config) for name in names}
    if tune.metric not in reported:
        found.append(f"tune.metric: the training never reports {tune.metric!r} with this schedule; it reports "
                     f"{', '.join(sorted(reported)) or 'nothing'} (val_ua needs a stage whose task scores the emotion)")
    return found


def _value_problems(config: TrainConfig, key: str, values: list) -> list[str]:
    """The training config's own checks on each value a space entry can take (its ends, or every choice)."""
    found = []
    for value in values:
        try:
            candidate = trial_config(config, {key: value})
        except ValueError as exc:
            found.append(str(exc) if str(exc).startswith("tune.space.") else f"tune.space.{key}={value!r}: {exc}")
            break
        bad = problems(candidate, check_sources=False)
        if bad:
            found.append(f"tune.space.{key}={value!r} makes an invalid config: " + "; ".join(bad))
    return found


def check_space(config: TrainConfig) -> None:
    found = space_problems(config)
    if found:
        raise ValueError("invalid search (nothing was started):\n  - " + "\n  - ".join(found))
