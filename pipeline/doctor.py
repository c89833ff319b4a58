"""`python -m pipeline doctor [--ray-address A] [--run DIR] [--profile P ...]`: what this machine (and
cluster) can run, on one screen: ffmpeg/ffprobe, yt-dlp and its JavaScript runtime, Ray and the
cluster's CPUs/GPUs, every profile's stage checks (model files, backends, keys), the run folder's free
disk, and whether every node of the cluster sees the run folder (a file the driver writes, read by a
task pinned to each node). Exit status 1 when a check fails.
"""
from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_FREE_GB = 20.0


@dataclass
class Check:
    name: str
    status: str
    detail: str


def binary(name: str) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, FAIL, "not on PATH: `make setup` installs it (Debian package ffmpeg)")
    try:
        first = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name, FAIL, f"{path} does not run: {exc}")
    return Check(name, OK, f"{first[:70]} ({path})")


def ytdlp_checks() -> list[Check]:
    from stages.lib.ytdlp import js_runtime

    import yt_dlp.version

    out = [Check("yt-dlp", OK, yt_dlp.version.__version__)]
    runtime = js_runtime()
    if runtime is None:
        out.append(Check("js runtime", FAIL, "no deno: YouTube needs one (`pip install deno`, in the project's deps)"))
    else:
        out.append(Check("js runtime", OK, f"deno {runtime[1]} ({runtime[0]})"))
    return out


def profile_checks(profiles: list[str]) -> list[Check]:
    from pipeline.config import ConfigError, load
    from pipeline.runner import prepare

    out = []
    for profile in profiles:
        try:
            cfg = load(profile)
            prepare(cfg, None, None)
            out.append(Check(f"profile {profile}", OK, ", ".join(cfg.stages)))
        except ConfigError as exc:
            out.append(Check(f"profile {profile}", WARN if profile.startswith("paper") else FAIL, str(exc)[:300]))
    return out


def disk_check(run_dir: str) -> Check:
    if "://" in run_dir:
        return Check("disk", WARN, f"{run_dir}: an object store; free space not measured")
    path = Path(run_dir).resolve()
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free / 1e9
    status = OK if free >= MIN_FREE_GB else WARN
    return Check("disk", status, f"{free:.1f} GB free at {path}" + ("" if status == OK else
                                                                   f" (under {MIN_FREE_GB:g} GB: media needs room)"))


def _read_marker(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cluster_checks(ray_address: str | None, run_dir: str) -> list[Check]:
    """Ray's version and resources; every alive node reads a file the driver wrote into the run folder."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.runner import _init_ray

    started = _init_ray(ray_address)
    try:
        total = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        out = [Check("ray", OK, f"{ray.__version__}, {len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, "
                                f"{total.get('GPU', 0):g} GPUs ({ray.get_runtime_context().gcs_address})")]
        if "://" in run_dir:
            out.append(Check("shared run folder", WARN, "an object store: every node reaches it by URL"))
            return out
        folder = Path(run_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        probe = folder / f".doctor-{token}"
        probe.write_text(token)
        try:
            read = ray.remote(num_cpus=0)(_read_marker)
            refs = {n["NodeManagerAddress"]: read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                n["NodeID"], soft=False)).remote(str(probe)) for n in nodes}
            seen = {node: ray.get(ref, timeout=120) == token for node, ref in refs.items()}
        finally:
            probe.unlink(missing_ok=True)
        blind = [node for node, ok in seen.items() if not ok]
        out.append(Check("shared run folder", FAIL if blind else OK,
                         f"{folder}: not visible on {', '.join(blind)}; use a shared filesystem or an s3:// URI"
                         if blind else f"{folder}: visible on all {len(seen)} node(s)"))
        return out
    finally:
        if started:
            ray.shutdown()


def diagnose(ray_address: str | None, run_dir: str, profiles: list[str]) -> list[Check]:
    checks = [binary("ffmpeg"), binary("ffprobe"), *ytdlp_checks()]
    checks += cluster_checks(ray_address, run_dir)
    checks.append(disk_check(run_dir))
    checks += profile_checks(profiles)
    return checks


def format_checks(checks: list[Check]) -> str:
    return "\n".join(f"[{c.status:^4}] {c.name:<24} {c.detail}" for c in checks)
