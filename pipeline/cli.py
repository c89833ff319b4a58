"""`python -m pipeline run|status|inspect|report|export|doctor`: the command line. Heavy imports happen per command."""
from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="LiveCC-style dataset builder")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a profile (pretrain, sft, or a YAML file)")
    run.add_argument("profile")
    run.add_argument("--source", help="video list: JSONL, Parquet or CSV with a `url` column")
    run.add_argument("--run", dest="run_dir", help="run folder (local path or URI); default runs/<profile>")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--only", metavar="STAGE", help="re-run this stage only (downstream becomes stale)")
    group.add_argument("--from", dest="from_stage", metavar="STAGE", help="re-run this stage and all after it")
    run.add_argument("--limit", type=int, help="only the first N source rows")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                     help="override a config value, e.g. clip_split.max_gap=5 (repeatable)")
    run.add_argument("--ray-address", help="an existing Ray cluster (host:port or 'auto'); default: local")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    status = sub.add_parser("status", help="per stage: parts done/total, rows by status and reason")
    status.add_argument("run_dir")

    inspect = sub.add_parser("inspect", help="a stage manifest: schema, counts and a few rows")
    inspect.add_argument("run_dir")
    inspect.add_argument("stage")
    inspect.add_argument("--rows", type=int, default=5)
    inspect.add_argument("--status", choices=["ok", "dropped", "error"], help="show rows of this status")

    doctor = sub.add_parser("doctor", help="check ffmpeg, yt-dlp and its JS runtime, Ray, profiles, disk, shared folder")
    doctor.add_argument("--ray-address", help="check this cluster (host:port or 'auto'); default: a local Ray")
    doctor.add_argument("--run", dest="run_dir", default="runs", help="the run folder to check (default: runs)")
    doctor.add_argument("--profile", dest="profiles", action="append",
                        help="profiles to check (repeatable; default: every profile in profiles/)")

    report = sub.add_parser("report", help="(re)write RUN/report.html: funnel, histograms, clip gallery")
    report.add_argument("run_dir")
    report.add_argument("--no-thumbnails", action="store_true", help="no frames in the gallery (faster)")

    export = sub.add_parser("export", help="the run's kept clips in another format (livecc: LiveCC's JSONL)")
    export.add_argument("run_dir")
    export.add_argument("out", help="the file to write, e.g. sft.jsonl")
    export.add_argument("--format", choices=["livecc"], default="livecc")
    export.add_argument("--relative", action="store_true",
                        help="video paths relative to the run folder (default: absolute)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args.run_dir)
        if args.command == "export":
            return _export(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "report":
            return _report(args.run_dir, not args.no_thumbnails)
        return _inspect(args.run_dir, args.stage, args.rows, args.status)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from pipeline import config, runner
    from pipeline.summary import format_summary

    overrides = config.parse_overrides(args.overrides)
    run_section = overrides.setdefault("run", {})
    for key, value in (("source", args.source), ("dir", args.run_dir), ("limit", args.limit),
                       ("ray_address", args.ray_address)):
        if value is not None:
            run_section[key] = value
    cfg = config.load(args.profile, overrides)
    result = runner.run(cfg, only=args.only, from_stage=args.from_stage, progress=not args.no_progress)
    print()
    print(f"run {result.run_dir} on ray cluster {result.ray_address} ({result.cluster_cpus:g} CPUs)")
    print(format_summary(result.summary))
    ran = ", ".join(f"{k} {v}" for k, v in result.ran.items())
    skipped = ", ".join(f"{k} {v}" for k, v in result.skipped.items() if v)
    print(f"parts run now: {ran}" + (f"; already done: {skipped}" if skipped else ""))
    if result.report:
        print(f"report: {result.report}")
    for stage, part, message in result.failed:
        print(f"FAILED {stage} part {part}: {message}", file=sys.stderr)
    return 0 if result.ok else 1


def _export(args: argparse.Namespace) -> int:
    from training.livecc_jsonl import export_livecc

    result = export_livecc(args.run_dir, args.out, relative=args.relative)
    print(f"{result.rows} clips of {args.run_dir} ({result.clips_stage}) -> {result.path}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from pipeline.config import PROFILES_DIR
    from pipeline.doctor import FAIL, diagnose, format_checks

    profiles = args.profiles or sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    checks = diagnose(args.ray_address, args.run_dir, profiles)
    print(format_checks(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def _report(run_dir: str, thumbnails: bool) -> int:
    from pipeline.report import write_report
    from pipeline.store import RunStore

    if not RunStore(run_dir).exists(RunStore(run_dir).path("run.json")):
        raise ConfigError(f"{run_dir} is not a run folder (no run.json)")
    print(write_report(run_dir, thumbnails))
    return 0


def _status(run_dir: str) -> int:
    from pipeline.store import RunStore
    from pipeline.summary import format_summary, summarize

    store = RunStore(run_dir)
    if not store.exists(store.path("run.json")):
        raise ConfigError(f"{run_dir} is not a run folder (no run.json)")
    print(format_summary(summarize(store)))
    return 0


def _inspect(run_dir: str, stage: str, rows: int, status: str | None) -> int:
    import pyarrow.compute as pc

    from pipeline.store import RunStore

    store = RunStore(run_dir)
    if not store.exists(store.path("run.json")):
        raise ConfigError(f"{run_dir} is not a run folder (no run.json)")
    table = store.read_stage(stage)
    if table is None:
        raise ConfigError(f"no finished parts of stage {stage!r} in {run_dir} "
                          f"(stages: source, {', '.join(_stages(store))})")
    print(table.schema)
    print()
    if "status" in table.schema.names:   # every stage manifest; the source parts have none
        counts = table.group_by(["status", "reason"]).aggregate([("id", "count")]).to_pylist()
        for c in sorted(counts, key=lambda c: (c["status"], -c["id_count"])):
            print(f"{c['status']:<8} {c['id_count']:>7}  {c['reason'] or ''}")
        print()
    if status:
        if "status" not in table.schema.names:
            raise ConfigError(f"{stage} has no status column (the source parts hold the input rows as "
                              f"given); --status works on the stages: {', '.join(_stages(store))}")
        table = table.filter(pc.equal(table.column("status"), status))
    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 160, "display.max_colwidth", 40):
        print(table.slice(0, rows).to_pandas())
    return 0


def _stages(store) -> list[str]:
    try:
        return list(store.read_json("run.json").get("stages", []))
    except (FileNotFoundError, ValueError):
        return []
