"""Profiles and overrides: one YAML per profile, `--set key=value`, frozen dataclasses; no framework.

A profile names its stages in order and gives each stage's settings. Unknown stages or keys and
values of the wrong type fail here, before any work starts, with a message that says what to change.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.redact import DEFAULT_PARAMS
from pipeline.stage import Stage

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


class ConfigError(ValueError):
    """Wrong configuration: the message says what to change."""


@dataclass(frozen=True)
class RunSettings:
    source: str | None = None     # None: the sample corpus shipped with the project
    dir: str = "runs/pretrain"
    part_size: int = 100          # source rows per part; a part is the unit of work and of resume
    ray_address: str | None = None  # None: a local Ray; "auto" or host:port: an existing cluster
    limit: int | None = None      # only the first N source rows
    # Query parameters whose values are masked in everything a run writes (names, case-insensitive
    # globs); userinfo (user:password@) is always dropped. See pipeline/redact.py.
    redact_params: tuple[str, ...] = DEFAULT_PARAMS

    def __post_init__(self) -> None:
        if not str(self.dir).strip():
            raise ConfigError("run.dir (--run) must name a folder, e.g. --run runs/mine")
        if self.part_size < 1:
            raise ConfigError("run.part_size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("run.limit (--limit) must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    profile: str
    stages: tuple[str, ...]
    run: RunSettings
    stage_configs: dict[str, Any]

    def stage(self, name: str) -> Stage:
        return stage_class(name)(self.stage_configs[name])

    def to_dict(self) -> dict:
        return {"profile": self.profile, "stages": list(self.stages), "run": dataclasses.asdict(self.run),
                **{n: dataclasses.asdict(c) for n, c in self.stage_configs.items()}}


def stage_class(name: str) -> type[Stage]:
    try:
        module = importlib.import_module(f"stages.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"stages.{name}":
            raise ConfigError(f"unknown stage {name!r}: no module stages/{name}.py") from None
        raise
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Stage) and getattr(obj, "name", None) == name]
    if len(found) != 1:
        raise ConfigError(f"stages/{name}.py must define exactly one Stage subclass with name = {name!r}")
    return found[0]


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, str):   # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def build_dataclass(cls: type, values: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set` items as {section: {key: value}}; `stages=[a, b, ...]` replaces the profile's stage list
    (kept as {"stages": [...]})."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if sep and key.strip() == "stages":
            names = yaml.safe_load(raw) if raw.strip() else None
            if isinstance(names, str):
                names = [n.strip() for n in names.split(",") if n.strip()]
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"--set {item!r}: expected stages=[stage, stage, ...]")
            out["stages"] = names
            continue
        section, dot, field = key.strip().partition(".")
        if not sep or not dot or not section or not field:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE (e.g. clip_split.max_gap=5) "
                              f"or stages=[...]")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}); quote strings, "
                              f"write lists as [a, b]") from None
        out.setdefault(section, {})[field] = value
    return out


def profile_path(profile: str) -> Path:
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown profile {profile!r}; known profiles: {known} (or a path to a YAML file)")
    return path


def load(profile: str, overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    raw = yaml.safe_load(profile_path(profile).read_text()) or {}
    for section, values in (overrides or {}).items():
        if section == "stages":
            raw["stages"] = list(values)
            continue
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"--set {section}.*: {section} is not a section")
        raw[section].update(values)
    stages = tuple(raw.pop("stages", ()))
    if not stages:
        raise ConfigError(f"profile {profile!r} lists no stages")
    run = build_dataclass(RunSettings, raw.pop("run", {}) or {}, "run")
    stage_configs = {}
    for name in stages:
        cls = stage_class(name)
        stage_configs[name] = build_dataclass(cls.Config, raw.pop(name, {}) or {}, name)
    for name in list(raw):
        # a section for a stage the profile does not run: an alternative (e.g. sft's talking_head) that
        # `--set stages=[...]` swaps in; checked now so that its typos do not wait for that run
        try:
            cls = stage_class(name)
        except ConfigError:
            continue
        build_dataclass(cls.Config, raw.pop(name) or {}, name)
    if raw:
        raise ConfigError(f"profile {profile!r}: sections {sorted(raw)} are not stages of this profile "
                          f"({', '.join(stages)}) nor 'run'")
    return RunConfig(profile=Path(profile).stem, stages=stages, run=run, stage_configs=stage_configs)


def digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_hash(stage: Stage) -> str:
    """Identity of a stage's work: its name, code version and whole config."""
    fingerprint = stage.fingerprint()
    if fingerprint is None:
        return digest(stage.name, stage.version, dataclasses.asdict(stage.config))
    return digest(stage.name, stage.version, dataclasses.asdict(stage.config), fingerprint)
