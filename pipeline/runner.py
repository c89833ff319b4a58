"""The driver: plans which (stage, part) pairs must run, runs them as Ray work, and summarises.

There is no barrier between stages: as soon as a part leaves one stage it is queued for the next,
and the driver prefers later stages, so finished shards appear while other parts still download.
A part is skipped when its done-marker records the current config chain of its stage and upstream
and the digest of the upstream manifest it was built from.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline import config as config_mod
from pipeline import source as source_mod
from pipeline.config import ConfigError, RunConfig
from pipeline.redact import DEFAULT_PARAMS, redact_text, redact_url
from pipeline.resources import parallel_limit, ray_options
from pipeline.stage import Stage
from pipeline.store import RunStore
from pipeline.summary import summarize, write_summary

SOURCE = "source"
LOCK = ".lock"
ACTOR_IDLE_S = 5.0   # an actor with no work for this long is released (its model reloads on demand)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("pipeline")


@dataclass
class RunResult:
    run_dir: str
    parts: int
    ran: dict[str, int] = field(default_factory=dict)       # stage -> parts run now
    skipped: dict[str, int] = field(default_factory=dict)   # stage -> parts already done
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    ray_address: str = ""
    cluster_cpus: float = 0.0
    report: str | None = None                               # RUN/report.html, once written

    @property
    def ok(self) -> bool:
        return not self.failed


def resolve_source(cfg: RunConfig) -> str:
    if cfg.run.source:
        return cfg.run.source
    from synth.corpus import build_samples

    return str(build_samples(source_mod.default_source_dir() / "build"))


def prepare(cfg: RunConfig, only: str | None, from_stage: str | None) -> list[Stage]:
    """Everything that can fail before the run starts: stages, their checks, the source."""
    for flag, name in (("--only", only), ("--from", from_stage)):
        if name is not None and name not in cfg.stages:
            raise ConfigError(f"{flag} {name}: not a stage of profile {cfg.profile} ({', '.join(cfg.stages)})")
    if only and from_stage:
        raise ConfigError("use --only or --from, not both")
    stages = [cfg.stage(name) for name in cfg.stages]
    for stage in stages:
        try:
            stage.check()
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{stage.name}: {exc}") from None
    check_columns(stages)
    if cfg.run.source:
        source_mod.check_source(cfg.run.source)
    return stages


def check_columns(stages: list[Stage]) -> None:
    """Each stage's input carries the columns it reads (a pass-through stage placed wrongly fails here)."""
    from manifests.schemas import SOURCE as SOURCE_SCHEMA

    schema, before = SOURCE_SCHEMA, SOURCE
    for stage in stages:
        missing = [c for c in stage.requires if c not in schema.names]
        if missing:
            raise ConfigError(f"{stage.name} reads {', '.join(missing)}, which {before} does not write: "
                              f"put {stage.name} after a stage that does (see the stage's docstring)")
        schema, before = stage.output_schema(schema), stage.name


def write_source(store: RunStore, source_uri: str, cfg: RunConfig,
                 secrets: dict[int, dict] | None = None) -> tuple[int, str]:
    """Write the source parts (redacted); `secrets` receives part -> {row id -> full url/captions}, the
    values the fetching stages need, kept in the driver's memory only."""
    found: dict[str, dict[str, str]] = {}
    try:
        rows = source_mod.read_source(source_uri, cfg.run.limit, cfg.run.redact_params, found)
    except (OSError, ValueError, pa.ArrowException) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"source {redact_url(source_uri, cfg.run.redact_params)} cannot be read as "
                          f"{Path(source_uri.split('?')[0]).suffix or 'a source'}: "
                          f"{redact_text(' '.join(str(exc).split())[:200], cfg.run.redact_params)}") from None
    if not rows:
        raise ConfigError(f"source {redact_url(source_uri, cfg.run.redact_params)} has no rows: give one "
                          f"video per line (JSONL), row "
                          f"(Parquet) or line under a header (CSV), with a `url`")
    # what the source parts hold depends on the reader's version and on the redaction (`raw`)
    source_chain = config_mod.digest(source_mod.source_digest(source_uri), cfg.run.part_size, cfg.run.limit,
                                     source_mod.VERSION, list(cfg.run.redact_params))
    if secrets is not None:
        for index, row in enumerate(rows):
            if row["id"] in found:
                secrets.setdefault(index // cfg.run.part_size, {})[row["id"]] = found[row["id"]]
    tables = source_mod.split_parts(rows, cfg.run.part_size)
    for part, table in enumerate(tables):
        marker = store.marker(SOURCE, part)
        if marker and marker.get("chain") == source_chain:
            continue
        sha = store.write_manifest(SOURCE, part, table)
        store.write_marker(SOURCE, part, {"stage": SOURCE, "part": part, "chain": source_chain,
                                          "output_sha": sha, "rows_out": table.num_rows})
    return len(tables), source_chain


def _init_ray(address: str | None) -> bool:
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    kwargs: dict = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                    "logging_level": logging.WARNING, "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)
    return True


def run(cfg: RunConfig, only: str | None = None, from_stage: str | None = None,
        progress: bool = True) -> RunResult:
    stages = prepare(cfg, only, from_stage)
    source_uri = resolve_source(cfg)
    store = RunStore(cfg.run.dir if "://" in cfg.run.dir else str(Path(cfg.run.dir).resolve()))
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    if store.is_local:
        _check_run_folder(Path(store.root), cfg.run.dir)
    take_lock(store, run_id)
    try:
        return _run_locked(cfg, stages, source_uri, store, run_id, only, from_stage, progress)
    finally:
        release_lock(store, run_id)


def _check_run_folder(root: Path, given: str) -> None:
    """A run folder we can create and write, before anything is written."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--run {given}: exists and is not a folder; name a folder for the run")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--run {given}: cannot create the run folder ({exc.strerror})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"--run {given}: the run folder is not writable")


def take_lock(store: RunStore, run_id: str) -> None:
    """One driver per run folder. The lock also fences a killed driver's workers that still run:
    a worker commits a part only while the lock names its run (see `pipeline.worker`).

    Checking the holder and writing our name is one atomic step: it runs under an exclusive `flock`
    of `RUN/.lock.guard` (released by the kernel if the process dies), so of two drivers started at
    the same instant exactly one gets the folder. A lock whose holder is gone (a killed driver) is
    taken over. Object stores have no flock: there the check-then-write is best effort."""
    with _guard(store):
        try:
            holder = store.read_json(LOCK)
        except FileNotFoundError:
            holder = None
        except ValueError:          # a torn lock file: its writer died mid-write
            holder = None
        if isinstance(holder, dict) and holder.get("host") == socket.gethostname() \
                and holder.get("pid") != os.getpid() and _alive(holder.get("pid")):
            raise ConfigError(f"run folder {store.uri} is in use by run {holder.get('run_id')} "
                              f"(pid {holder.get('pid')}); wait for it or stop it")
        store.write_json(LOCK, {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid()})


def release_lock(store: RunStore, run_id: str) -> None:
    """Remove the lock if it still names this run (never another driver's)."""
    with _guard(store):
        try:
            holder = store.read_json(LOCK)
        except (FileNotFoundError, ValueError):
            return
        if isinstance(holder, dict) and holder.get("run_id") == run_id:
            store.remove(store.path(LOCK))


@contextlib.contextmanager
def _guard(store: RunStore):
    if not store.is_local:
        yield
        return
    import fcntl

    store.fs.makedirs(store.root, exist_ok=True)
    with open(store.path(LOCK + ".guard"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_locked(cfg: RunConfig, stages: list[Stage], source_uri: str, store: RunStore, run_id: str,
                only: str | None, from_stage: str | None, progress: bool) -> RunResult:
    _setup_logging(store, run_id, cfg.run.redact_params)
    removed = store.clean_temporaries()   # after the lock: what is left is a killed run's
    if removed:
        log.info("removed %d temporary files of an interrupted run", removed)
    config_text = redact_text(_yaml(cfg.to_dict()), cfg.run.redact_params)   # run.source may be a signed URL
    store.write_bytes(store.path("config.yaml"), config_text.encode())

    secrets: dict[int, dict] = {}
    parts, source_chain = write_source(store, source_uri, cfg, secrets)
    store.write_json("run.json", {"profile": cfg.profile, "stages": list(cfg.stages), "parts": parts,
                                  "source": redact_url(source_uri, cfg.run.redact_params), "run_id": run_id})
    log.info("run %s: profile %s, %d parts, source %s", run_id, cfg.profile, parts, source_uri)

    chains = []
    previous = source_chain
    for stage in stages:
        previous = config_mod.digest(previous, config_mod.stage_hash(stage))
        chains.append(previous)
    names = [s.name for s in stages]
    forced = set()
    if only:
        forced = {names.index(only)}
    elif from_stage:
        forced = set(range(names.index(from_stage), len(names)))
    last = names.index(only) if only else len(names) - 1
    start = names.index(only) if only else 0   # --only: the stages before it must be done already

    started_ray = _init_ray(cfg.run.ray_address)
    try:
        result = _schedule(store, stages, chains, parts, forced, start, last, run_id, progress,
                           secrets, cfg.run.redact_params)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    result.summary = summarize(store)
    write_summary(store, result.summary)
    try:
        from pipeline.report import write_report

        result.report = write_report(store.uri)
    except Exception as exc:        # the data is written; a report that fails must not fail the run
        log.warning("report.html not written: %s: %s", type(exc).__name__, exc)
    return result


def _schedule(store: RunStore, stages: list[Stage], chains: list[str], parts: int, forced: set[int],
              start: int, last: int, run_id: str, progress: bool, secrets: dict[int, dict] | None = None,
              redact_params: tuple[str, ...] = DEFAULT_PARAMS) -> RunResult:
    import ray

    from pipeline.progress import StageProgress
    from pipeline.worker import StageActor, run_task

    result = RunResult(run_dir=store.uri, parts=parts,
                       ran={s.name: 0 for s in stages}, skipped={s.name: 0 for s in stages})
    cluster = ray.cluster_resources()
    cpus, gpus = cluster.get("CPU", 1.0), cluster.get("GPU", 0.0)
    result.ray_address, result.cluster_cpus = ray.get_runtime_context().gcs_address, cpus
    limits = [parallel_limit(s.resources(), cpus, gpus) for s in stages]
    remote_task = ray.remote(run_task)
    pools = [ActorPool(ray.remote(StageActor), s) if s.resources().actor else None for s in stages]
    in_flight: dict = {}                                # ref -> (part, stage index, actor or None)
    per_stage_flight = [0] * len(stages)
    ready: list[tuple[int, int]] = []                   # (stage index, part)
    position: dict[int, int] = {}                       # part -> the stage it waits for or runs in
    meter = StageProgress([s.name for s in stages], parts, enabled=progress)

    def output_sha(stage_index: int, part: int) -> str | None:
        name = SOURCE if stage_index < 0 else stages[stage_index].name
        marker = store.marker(name, part)
        return marker.get("output_sha") if marker else None

    def advance(part: int, index: int) -> None:
        """Queue the first stage at or after `index` whose marker is stale; count the valid ones."""
        position.pop(part, None)
        while index <= last:
            stage = stages[index]
            marker = store.marker(stage.name, part)
            upstream_sha = output_sha(index - 1, part)
            if upstream_sha is None:
                result.failed.append((stage.name, part, "upstream part not done (run the stages before it)"))
                return
            valid = (marker is not None and marker.get("chain") == chains[index]
                     and marker.get("input_sha") == upstream_sha and not marker.get("retry"))
            if valid and index not in forced:
                result.skipped[stage.name] += 1
                meter.update(index)
                index += 1
                continue
            ready.append((index, part))
            position[part] = index
            return

    for part in range(parts):
        advance(part, start)

    def submit(index: int, part: int) -> None:
        stage = stages[index]
        upstream = SOURCE if index == 0 else stages[index - 1].name
        args = (store.uri, part, upstream, chains[index], output_sha(index - 1, part), run_id)
        # a task argument, never a file: only the stages that fetch see the full URLs
        redaction = {"redact_params": tuple(redact_params),
                     "secrets": (secrets or {}).get(part, {}) if stage.needs_secrets else {},
                     "env_secrets": {name: os.environ[name] for name in stage.secret_env() if name in os.environ}}
        if pools[index] is not None:
            actor = pools[index].take()
            ref = actor.run.remote(*args, **redaction)
        else:
            actor = None
            ref = remote_task.options(**ray_options(stage.resources())).remote(stage, *args, **redaction)
        in_flight[ref] = (part, index, actor)
        per_stage_flight[index] += 1

    def release_idle_actors() -> None:
        """Actors hold their CPUs/GPUs while alive: give them back when their stage has no work now,
        so the stages that feed it can run (no deadlock on a small machine)."""
        for index, pool in enumerate(pools):
            if pool is None or not pool.idle:
                continue
            if not any(i <= index for i in position.values()):
                pool.release(0.0)                       # no part will reach this stage again
            elif not any(i == index for i, _ in ready):
                pool.release(ACTOR_IDLE_S)

    try:
        while ready or in_flight:
            ready.sort(key=lambda item: (-item[0], item[1]))   # later stages first: no barrier
            waiting = []
            for index, part in ready:
                if per_stage_flight[index] < limits[index]:
                    submit(index, part)
                else:
                    waiting.append((index, part))
            ready[:] = waiting
            if not in_flight:
                break
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in done:
                part, index, actor = in_flight.pop(ref)
                per_stage_flight[index] -= 1
                if actor is not None:
                    pools[index].give_back(actor)
                name = stages[index].name
                try:
                    marker = ray.get(ref)
                except Exception as exc:  # the part failed as a whole (I/O, worker death): report it
                    message = redact_text(" ".join(str(exc).split()), redact_params)[-400:]
                    result.failed.append((name, part, message))
                    log.error("stage %s part %d failed: %s", name, part, message)
                    position.pop(part, None)
                    continue
                result.ran[name] += 1
                meter.update(index)
                log.info("stage %s part %d: %d in, %d out, %.2fs", name, part, marker["rows_in"],
                         marker["rows_out"], marker["seconds"])
                if index < last:
                    advance(part, index + 1)
                else:
                    position.pop(part, None)
            release_idle_actors()
            meter.tick()
    finally:
        meter.close()
        for pool in pools:
            if pool is not None:
                pool.release(0.0)
    return result


class ActorPool:
    """The long-lived workers of a model stage: created on demand, reused part after part (the
    model loads once per actor), and killed when idle so their resources go back to the cluster. An
    actor runs up to `Resources.concurrency` parts at once."""

    def __init__(self, actor_class, stage: Stage) -> None:
        self.actor_class, self.stage = actor_class, stage
        self.slots = max(1, stage.resources().concurrency)
        self.load: dict = {}                          # actor -> parts it runs now
        self.idle: list[tuple[object, float]] = []   # (actor, idle since)

    def take(self):
        busy = [a for a, n in self.load.items() if 0 < n < self.slots]
        if busy:
            actor = busy[0]
        elif self.idle:
            actor = self.idle.pop()[0]
        else:
            actor = self.actor_class.options(**ray_options(self.stage.resources())).remote(self.stage)
        self.load[actor] = self.load.get(actor, 0) + 1
        return actor

    def give_back(self, actor) -> None:
        self.load[actor] -= 1
        if self.load[actor] == 0:
            del self.load[actor]
            self.idle.append((actor, time.monotonic()))

    def release(self, idle_for: float) -> None:
        import ray

        now = time.monotonic()
        keep = []
        for actor, since in self.idle:
            if now - since >= idle_for:
                ray.kill(actor)
            else:
                keep.append((actor, since))
        self.idle = keep


class RedactingFilter(logging.Filter):
    """Log records with credentials in URLs redacted (pipeline/redact.py), whatever logged them."""

    def __init__(self, params: tuple[str, ...] = DEFAULT_PARAMS) -> None:
        super().__init__()
        self.params = tuple(params)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage(), self.params), None
        return True


def _setup_logging(store: RunStore, run_id: str, redact_params: tuple[str, ...] = DEFAULT_PARAMS) -> None:
    if not store.is_local:
        return
    logs = store.local_dir("logs")
    handler = logging.FileHandler(logs / f"run-{run_id}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(redact_params))
    for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
