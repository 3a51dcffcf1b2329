"""What a Ray cluster can ever hold, so a run it can never place is refused before anything starts.

Ray waits forever for workers that fit no node. On a fixed cluster the nodes it has now are all it will
ever have; on an autoscaling one (GPU groups that start at zero) the answer is in the node types the
autoscaler may add. Ray 2.60 does not tell a driver those types (its GCS cluster-config slot is never
filled), so they are read from the cluster's own file: the cluster launcher's
`~/ray_bootstrap_config.yaml` on the head node (where `ray job submit` drivers run), or any launcher
YAML or KubeRay RayCluster/RayJob manifest named by `scaling.node_types`."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sed_ray.config import ScalingSection
from sed_ray.storage import is_remote, location

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # written by `ray up` on the head node
UNBOUNDED = 10**6  # a group with no upper limit (KubeRay without maxReplicas, the GCS's -1)


@dataclass(frozen=True)
class NodeGroup:
    """Nodes of one shape: `resources` per node (None = not known until a node starts), up to `max_count`."""
    name: str
    resources: dict[str, float] | None
    labels: dict[str, str] = field(default_factory=dict)
    max_count: int = 1
    head: bool = False  # the cluster's global max_workers does not count it


@dataclass(frozen=True)
class ClusterShape:
    groups: list[NodeGroup]
    source: str  # where the groups came from, for messages
    max_worker_nodes: int | None = None  # the launcher's top-level max_workers


def nodes_now(nodes: list[dict]) -> ClusterShape:
    """Each alive node (as `ray.nodes()` lists them) as a group of one."""
    groups = [NodeGroup(node.get("NodeManagerAddress", "node"), dict(node.get("Resources", {})), dict(node.get("Labels") or {}))
              for node in nodes if node.get("Alive")]
    return ClusterShape(groups, f"the {len(groups)} node(s) the cluster has now")


# --- reading a cluster's file --------------------------------------------------------------------------------
def shape_from_file(path: str) -> ClusterShape:
    """Node groups from a cluster-launcher YAML (`available_node_types`) or a KubeRay RayCluster or RayJob
    manifest (`workerGroupSpecs`); a ValueError names the file and what is missing."""
    where = location(path if is_remote(path) else str(Path(path).expanduser()))
    try:
        document = yaml.safe_load(where.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"scaling.node_types={path!r}: cannot read it as YAML ({exc})") from exc
    if isinstance(document, dict) and "available_node_types" in document:
        return _launcher_shape(document, str(path))
    if isinstance(document, dict) and document.get("kind") in ("RayCluster", "RayJob"):
        spec = document.get("spec") or {}
        return _kuberay_shape(spec.get("rayClusterSpec") if document["kind"] == "RayJob" else spec, str(path))
    raise ValueError(f"scaling.node_types={path!r}: neither a Ray cluster-launcher config (available_node_types) "
                     "nor a KubeRay RayCluster/RayJob manifest")


def _launcher_shape(config: dict, source: str) -> ClusterShape:
    head = config.get("head_node_type")
    default_max = int(config.get("max_workers", 2))  # the launcher's own default
    groups = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        resources = node_type.get("resources") or None  # {} = filled in from the instance type at `ray up`
        groups.append(NodeGroup(name, _numbers(resources) if resources else None,
                                {str(k): str(v) for k, v in (node_type.get("labels") or {}).items()},
                                1 if name == head else int(node_type.get("max_workers", default_max)), name == head))
    return ClusterShape(groups, source, default_max)


def _kuberay_shape(spec: dict | None, source: str) -> ClusterShape:
    if not spec or "headGroupSpec" not in spec:
        raise ValueError(f"scaling.node_types={source!r}: the manifest has no RayCluster spec (headGroupSpec)")
    groups = [_kuberay_group("head", spec["headGroupSpec"], 1, head=True)]
    for group in spec.get("workerGroupSpecs") or []:
        count = group.get("maxReplicas", group.get("replicas", 1 if not spec.get("enableInTreeAutoscaling") else UNBOUNDED))
        groups.append(_kuberay_group(group.get("groupName", "workers"), group, int(count)))
    return ClusterShape(groups, source)


def _kuberay_group(name: str, group: dict, count: int, head: bool = False) -> NodeGroup:
    """A group's per-node resources as Ray sees them: rayStartParams override the container's limits."""
    params = group.get("rayStartParams") or {}
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    limits = {**((containers[0].get("resources") or {}).get("requests") or {}),
              **((containers[0].get("resources") or {}).get("limits") or {})}
    resources: dict[str, float] = {}
    if "num-cpus" in params or "cpu" in limits:
        resources["CPU"] = float(params["num-cpus"]) if "num-cpus" in params else math.floor(_quantity(limits["cpu"]))
    gpus = params.get("num-gpus", limits.get("nvidia.com/gpu"))
    if gpus is not None:
        resources["GPU"] = float(gpus)
    if params.get("resources"):  # a JSON object in a string, as `ray start --resources` takes it
        resources |= _numbers(json.loads(str(params["resources"]).strip("'\"")))
    labels = dict(pair.split("=", 1) for pair in str(params.get("labels", "")).split(",") if "=" in pair)
    return NodeGroup(name, resources if "CPU" in resources else None, labels, count, head)


def _quantity(value) -> float:
    """A Kubernetes quantity: 8, "8", "500m"."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _numbers(resources: dict) -> dict[str, float]:
    return {str(k): float(v) for k, v in resources.items()}


def cluster_shape(scaling: ScalingSection) -> ClusterShape | None:
    """The node types the cluster can add: `scaling.node_types`, else the launcher's bootstrap config when
    this driver runs on a launcher cluster's head, else None (only the nodes it has now are known)."""
    if scaling.node_types:
        return shape_from_file(scaling.node_types)
    bootstrap = Path(BOOTSTRAP_CONFIG).expanduser()
    return shape_from_file(str(bootstrap)) if bootstrap.exists() else None


# --- how many workers fit ----------------------------------------------------------------------------------
def worker_bundle(scaling: ScalingSection) -> dict[str, float]:
    return ({"CPU": scaling.cpus_per_worker} | ({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})
            | dict(scaling.worker_resources))


def most_workers(shape: ClusterShape, scaling: ScalingSection) -> int | None:
    """The most workers of `scaling`'s size the cluster can ever hold at once with its placement strategy
    and worker labels; None when a group that could hold them has sizes known only once a node starts."""
    need = worker_bundle(scaling)
    per_node = []  # (workers one node holds, nodes, is the head)
    for group in shape.groups:
        if not all(group.labels.get(k) == v for k, v in scaling.worker_labels.items()):
            continue
        if group.resources is None:
            return None
        fits = min((math.floor(group.resources.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0), default=UNBOUNDED)
        if fits > 0:
            per_node.append((fits, group.max_count, group.head))
    if scaling.placement_strategy == "STRICT_PACK":  # every worker on one node
        return max((fits for fits, _, _ in per_node), default=0)
    per_node.sort(reverse=True)  # the roomiest nodes first
    counts = _within_budget(shape, [(nodes, head) for _, nodes, head in per_node])
    return sum(count * (1 if scaling.placement_strategy == "STRICT_SPREAD" else fits)
               for count, (fits, _, _) in zip(counts, per_node))


def _within_budget(shape: ClusterShape, groups: list[tuple[int, bool]]) -> list[int]:
    """Nodes usable from each (max_count, is head) in order, under the launcher's global max_workers."""
    budget = shape.max_worker_nodes if shape.max_worker_nodes is not None else UNBOUNDED
    counts = []
    for nodes, head in groups:
        counts.append(nodes if head else min(nodes, budget))
        budget -= 0 if head else counts[-1]
    return counts


def most_cpus(shape: ClusterShape, labels: dict[str, str]) -> float | None:
    """CPUs the cluster can ever have on nodes carrying `labels` (None: a size is not known yet)."""
    groups = [g for g in shape.groups if all(g.labels.get(k) == v for k, v in labels.items())]
    if any(g.resources is None for g in groups):
        return None
    groups = sorted(groups, key=lambda g: -g.resources.get("CPU", 0.0))
    counts = _within_budget(shape, [(g.max_count, g.head) for g in groups])
    return float(sum(count * g.resources.get("CPU", 0.0) for count, g in zip(counts, groups)))


def describe(shape: ClusterShape) -> str:
    def one(group: NodeGroup) -> str:
        size = ", ".join(f"{k} {v:g}" for k, v in sorted((group.resources or {}).items())
                         if k in ("CPU", "GPU") or not re.match(r"(node:|memory|object_store)", k)) or "size unknown"
        labels = f" labels {group.labels}" if group.labels else ""
        count = "" if group.max_count == 1 else f" up to {group.max_count} x"
        return f"{group.name}:{count} {{{size}}}{labels}"
    return "; ".join(one(g) for g in shape.groups)
