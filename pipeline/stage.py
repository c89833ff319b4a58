"""The stage contract.

A stage reads the `ok` rows of the stage before it (one part at a time) and returns its own rows. Every
row it returns keeps an `id` and carries `status` (ok | dropped | error) and `reason`. A bad sample
never raises out of a stage: `process` turns any exception of one row into an `error` row.
"""
from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

OK, DROPPED, ERROR = "ok", "dropped", "error"
STATUSES = (OK, DROPPED, ERROR)


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; `pipeline.resources` maps it to Ray options."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 0.0
    # At most this many parts of the stage in flight at once (None: as many as the cluster fits).
    max_parallel: int | None = None
    # Long-lived workers that load a model once in `setup` (Ray actors) instead of one task per part.
    actor: bool = False


@dataclass(frozen=True)
class PartContext:
    """Where a part's work lands: the run layout and the part number."""

    run_dir: str
    part: int

    @property
    def media_dir(self) -> str:
        return f"{self.run_dir}/media"

    @property
    def shards_dir(self) -> str:
        return f"{self.run_dir}/shards"

    def resolve(self, path: str) -> str:
        """Media paths in manifests are relative to the run folder (a run can be moved); absolute
        paths and URIs pass through."""
        if path.startswith("/") or "://" in path:
            return path
        return f"{self.run_dir}/{path}"

    def relative(self, path: str | Path) -> str:
        path = str(path)
        prefix = self.run_dir.rstrip("/") + "/"
        return path[len(prefix):] if path.startswith(prefix) else path


def ok(row: dict, **fields: Any) -> dict:
    return {**row, **fields, "status": OK, "reason": None}


def dropped(row: dict, reason: str, **fields: Any) -> dict:
    return {**row, **fields, "status": DROPPED, "reason": reason}


def error(row: dict, reason: str, **fields: Any) -> dict:
    return {**row, **fields, "status": ERROR, "reason": reason}


def error_from_exception(row: dict, exc: BaseException) -> dict:
    """An error row; exceptions that carry a reason `code` (MediaError, DownloadFailure) read
    `code: message`, others `ErrorClass: message`."""
    message = " ".join(str(exc).split())[:300]
    if isinstance(getattr(exc, "code", None), str) and message.startswith(exc.code):
        return error(row, message)
    return error(row, f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


class Stage:
    """Base class of every stage. Subclasses set the class attributes and implement `process_row`
    (or `process` for stages that work on a whole part at once)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    schema: ClassVar[pa.Schema]
    # Bump when the stage's logic changes its output, so done-markers of older runs go stale.
    version: ClassVar[int] = 1

    def __init__(self, config: Any) -> None:
        self.config = config

    def resources(self) -> Resources:
        return Resources()

    def check(self) -> None:
        """Validate configuration and environment before the run starts; raise ValueError with a
        message that says what to change."""

    def setup(self) -> None:
        """Load models and other per-worker state; called once per worker, never on the driver."""

    def threads(self) -> int:
        """Rows of a part processed at once in threads (I/O-bound stages: downloads, probes)."""
        return 1

    def process(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        def one(row: dict) -> list[dict]:
            try:
                result = self.process_row(row, ctx)
            except Exception as exc:  # one bad row never stops a part
                result = error_from_exception(row, exc)
                result["_traceback"] = traceback.format_exc()
            return result if isinstance(result, list) else [result]

        if self.threads() > 1 and len(rows) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(self.threads(), len(rows))) as pool:
                results = list(pool.map(one, rows))  # map keeps the input order
        else:
            results = [one(row) for row in rows]
        return [row for result in results for row in result]

    def process_row(self, row: dict, ctx: PartContext) -> dict | list[dict]:
        raise NotImplementedError

    def score_columns(self) -> list[str]:
        """Numeric columns whose quantiles the summary shows (model scores)."""
        return []


def config_fields(config_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_cls)}
