"""Connecting to Ray: the one place that decides between a running cluster and a local one."""

from __future__ import annotations

import os

LOOPBACK = "127.0.0.1"


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster this process belongs to, or start a local one.

    Under `ray job submit` (RAY_ADDRESS set by Ray) or with RAY_ADDRESS exported, connect to it;
    otherwise start a private local instance. An already-initialised Ray (tests, notebooks) is kept.
    A local instance's dashboard listens on loopback only (127.0.0.1), never a public port. It runs because
    Ray Train's cleanup of a run whose controller was killed (a trial Tune's early stopping ends) asks the
    State API, which the dashboard serves; without it the run's placement group leaks and later trials
    wait forever for CPUs.

    A local instance advertises at least 4 logical CPUs whatever the core count: a 2-worker training
    run reserves 2 and Ray Data's read and bucketing tasks need some beside them, or ingest starves.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, 4), include_dashboard=True,
                 dashboard_host=LOOPBACK, log_to_driver=True)


def cluster_cpus() -> int:
    """Logical CPUs of the connected Ray cluster (this machine's cores when Ray is not initialised)."""
    import ray

    if ray.is_initialized():
        return int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return os.cpu_count() or 1
