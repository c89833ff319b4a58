"""The one place that maps a stage's declared Resources to Ray options."""
from __future__ import annotations

from pipeline.stage import Resources


def ray_options(res: Resources) -> dict:
    options: dict = {"num_cpus": res.cpus, "num_gpus": res.gpus}
    if res.actor and res.concurrency > 1:
        options["max_concurrency"] = res.concurrency
    if res.memory_gb:
        options["memory"] = int(res.memory_gb * 2**30)
    return options


def parallel_limit(res: Resources, cluster_cpus: float, cluster_gpus: float) -> int:
    """How many parts of a stage the driver keeps in flight (actor stages: actors x concurrency)."""
    if res.max_parallel is not None:
        return max(1, res.max_parallel)
    fits = []
    if res.cpus:
        fits.append(cluster_cpus / res.cpus)
    if res.gpus:
        fits.append(cluster_gpus / res.gpus)
    fit = int(min(fits)) if fits else int(cluster_cpus)
    return max(1, fit * max(1, res.concurrency) if res.actor else fit * 2)
