"""Helpers for tests that run the pipeline and read runs back."""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path

import pandas as pd

from pipeline import config, runner
from pipeline.store import RunStore


def sft_head() -> str:
    """The talking-head stage of the tests' sft runs: the profile's own `active_speaker` where the
    Light-ASD weights are at hand without a network (../shared, $LIGHT_ASD_WEIGHTS, the cache); else
    `talking_head` (the face-count filter), swapped in as a user without the weights would do."""
    from stages.lib.light_asd import resolve_weights

    try:
        resolve_weights(download=False)
        return "active_speaker"
    except ValueError:
        return "talking_head"


def sft_sets() -> list[str]:
    """`--set` items that make a run of the sft profile use `sft_head()`."""
    stages = list(config.load("sft").stages)
    if sft_head() in stages:
        return []
    stages[stages.index("active_speaker")] = sft_head()
    return [f"stages=[{', '.join(stages)}]"]


def run_pretrain(run_dir: Path, source: Path, *sets: str, only: str | None = None,
                 from_stage: str | None = None, profile: str = "pretrain") -> runner.RunResult:
    overrides = config.parse_overrides([f"run.dir={run_dir}", f"run.source={source}", *sets])
    cfg = config.load(profile, overrides)
    return runner.run(cfg, only=only, from_stage=from_stage, progress=False)


def manifest(run_dir: Path, stage: str) -> pd.DataFrame:
    table = RunStore(str(run_dir)).read_stage(stage)
    return table.to_pandas() if table is not None else pd.DataFrame()


def reasons(run_dir: Path, stage: str) -> Counter:
    """(status, reason code) -> rows."""
    df = manifest(run_dir, stage)
    return Counter((s, r.split(":")[0] if isinstance(r, str) else "") for s, r in zip(df["status"], df["reason"]))


# Columns that record what this run did rather than what the data is: `attempts` counts the fetches of
# this run (0 when a resumed run reuses a file an earlier run downloaded).
RUN_HISTORY = {"attempts"}


def canonical_manifests(run_dir: Path, stages: list[str]) -> dict[str, list[dict]]:
    out = {}
    for stage in stages:
        table = RunStore(str(run_dir)).read_stage(stage)
        rows = table.to_pylist() if table is not None else []
        out[stage] = sorted(({k: v for k, v in r.items() if k not in RUN_HISTORY} for r in rows),
                            key=lambda r: r["id"])
    return out


def shard_digests(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run_dir / "shards").glob("*")) if p.suffix in (".tar", ".parquet")}


def shard_samples(run_dir: Path) -> dict[str, dict]:
    """clip id -> the sample JSON of every clip in the run's WebDataset tars."""
    samples = {}
    for tar in sorted((run_dir / "shards").glob("*.tar")):
        with tarfile.open(tar) as f:
            for member in f.getmembers():
                if member.name.endswith(".json"):
                    record = json.loads(f.extractfile(member).read())
                    samples[record["clip_id"]] = record
    return samples
