"""The stage contract.

A stage reads the `ok` rows of the stage before it (one part at a time) and returns its own rows. Every
row it returns keeps an `id` and carries `status` (ok | dropped | error) and `reason`. A bad sample
never raises out of a stage: `process` turns any exception of one row into an `error` row.

The engine calls `process_table` (the part as an Arrow table in, the stage's manifest out). By default
it hands the rows to `process` as dicts; stages whose work is columnar (caption_words, clip_split)
override it and never build a Python object per word. Rows whose values do not fit the stage's schema
(an int beyond int64, an object where a string belongs, invalid UTF-8) become `error` rows of their own
(`unwritable_row`), found by bisection, so they never cost the other rows of their part.
"""
from __future__ import annotations

import dataclasses
import functools
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.redact import DEFAULT_PARAMS, redact_text, redact_url, secret_literals

OK, DROPPED, ERROR = "ok", "dropped", "error"
STATUSES = (OK, DROPPED, ERROR)
ROW_COLUMNS = ("id", "status", "reason")   # every manifest starts with them


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
    # Parts one actor runs at once, in threads (I/O-bound stages whose worker holds one client, one
    # rate limit and one cache for all its parts: prompt).
    concurrency: int = 1


@dataclass(frozen=True)
class PartContext:
    """Where a part's work lands: the run layout and the part number. For stages that fetch
    (`needs_secrets`), also the full `url`/`captions` values of the part's rows whose manifest values
    are redacted (row id -> {column: full value}); they live in memory only (pipeline/redact.py)."""

    run_dir: str
    part: int
    secrets: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict, repr=False,
                                                                 compare=False)
    redact_params: tuple[str, ...] = dataclasses.field(default=DEFAULT_PARAMS, repr=False)
    # Values of the environment variables the stage names in `secret_env` (API keys), read on the
    # driver: workers on other nodes need not have them. Memory only; masked by `redact`.
    env_secrets: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def full_value(self, row: dict, column: str) -> Any:
        """The value to fetch with: the full one the driver kept, else the row's own."""
        kept = self.secrets.get(row.get("id"), {}).get(column)
        return kept if kept is not None else row.get(column)

    @functools.cached_property
    def _literals(self) -> frozenset[str]:
        return frozenset([s for values in self.secrets.values() for v in values.values()
                          for s in secret_literals(v, self.redact_params)] + [v for v in self.env_secrets.values() if v])

    def redact(self, text: Any) -> Any:
        """`text` as it may be written: URLs redacted, this part's known secrets masked."""
        return redact_text(text, self.redact_params, self._literals) if isinstance(text, str) else text

    def redact_url(self, url: Any) -> Any:
        return redact_url(url, self.redact_params) if isinstance(url, str) else url

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
    # Stages that fetch a row's url/captions get the full values (PartContext.secrets); the manifests
    # hold redacted ones.
    needs_secrets: ClassVar[bool] = False
    # A pass-through stage (a filter that may sit after different stages: transcript_language, prompt)
    # keeps every column of its input and adds the columns of its `schema`; see `output_schema`.
    passthrough: ClassVar[bool] = False
    # Input columns the stage reads: a profile that puts it after a stage not writing them fails
    # before the run starts.
    requires: ClassVar[tuple[str, ...]] = ()
    # Reason codes of transient errors (rate limits, timeouts): a part holding such error rows is run
    # again by the next run (its done-marker records them), so only those rows are redone.
    retry_reasons: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: Any) -> None:
        self.config = config

    def resources(self) -> Resources:
        return Resources()

    def fingerprint(self) -> Any:
        """What decides the output besides the config (the content of files it names), or None; part
        of the stage's identity, so editing such a file re-runs the stage."""
        return None

    def secret_env(self) -> tuple[str, ...]:
        """Names of environment variables holding secrets the stage needs (PartContext.env_secrets)."""
        return ()

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

    def process_table(self, table: pa.Table, ctx: PartContext) -> pa.Table:
        """The part's `ok` input rows in, this stage's manifest out (schema columns, plus an optional
        `_traceback` column the engine moves to the error log)."""
        return rows_to_table(self.process(table.to_pylist(), ctx), self.output_schema(table.schema))

    def output_schema(self, upstream: pa.Schema) -> pa.Schema:
        """The manifest schema given the input's: `schema`, or for a pass-through stage the row
        columns, then the input's other columns, then the stage's own."""
        if not self.passthrough:
            return self.schema
        own = self.own_fields()
        taken = set(ROW_COLUMNS) | {f.name for f in own}
        carried = [f for f in upstream if f.name not in taken and not f.name.startswith("_")]
        return pa.schema([self.schema.field(n) for n in ROW_COLUMNS] + carried + own)

    def own_fields(self) -> list[pa.Field]:
        """The columns a pass-through stage adds (its schema's, after the row columns)."""
        return [f for f in self.schema if f.name not in ROW_COLUMNS]

    def score_columns(self) -> list[str]:
        """Numeric columns whose quantiles the summary shows (model scores)."""
        return []

    def total_columns(self) -> list[str]:
        """Numeric columns whose sums the summary shows (requests, tokens, cost)."""
        return []

    def thresholds(self) -> dict[str, tuple[float, ...]]:
        """Numeric columns this stage decides on, with the configured limits (the run report draws
        them on the column's histogram)."""
        return {}


class ColumnarStage(Stage):
    """A stage that works on whole columns: it implements `process_table`. `process` (rows as dicts,
    for callers that hold rows rather than a manifest) goes through it."""

    def process(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        try:
            return self.process_table(pa.Table.from_pylist(rows), ctx).to_pylist()
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            out: list[dict] = []
            for row in rows:  # the rows do not share one Arrow type: one at a time
                try:
                    table = pa.Table.from_pylist([row])
                except Exception as exc:
                    out.append(error_from_exception(row, exc))
                    continue
                out.extend(self.process_table(table, ctx).to_pylist())
            return out


def config_fields(config_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_cls)}


TRACEBACK = "_traceback"   # optional output column: the traceback of an error row, for logs/errors/


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) as a table of `schema` (plus `_traceback` when a row has one). A row whose values do
    not convert becomes an `unwritable_row` error row; the others convert unchanged (bisection, so a
    clean part costs one conversion)."""
    if any(TRACEBACK in r for r in rows):
        schema = schema.append(pa.field(TRACEBACK, pa.string()))
    return _convert(rows, schema)


def _convert(rows: list[dict], schema: pa.Schema) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except Exception:
        if len(rows) == 1:
            return pa.Table.from_pylist([unwritable(rows[0], schema)], schema=schema)
        mid = len(rows) // 2
        return pa.concat_tables([_convert(rows[:mid], schema), _convert(rows[mid:], schema)])


def unwritable(row: dict, schema: pa.Schema) -> dict:
    """An error row for a row some of whose values do not fit `schema`: the values that fit are kept,
    the others are named in the reason."""
    kept: dict[str, Any] = {}
    bad: list[str] = []
    problem = ""
    for field in schema:
        value = row.get(field.name) if isinstance(row, dict) else None
        try:
            pa.array([value], type=field.type)
            kept[field.name] = value
        except Exception as exc:
            bad.append(field.name)
            problem = problem or " ".join(str(exc).split())[:120]
    rid = kept.get("id")
    if not isinstance(rid, str) or not rid:
        raw = row.get("id") if isinstance(row, dict) else None
        kept["id"] = repr(raw)[:64] if raw is not None else None
    kept["status"] = ERROR
    kept["reason"] = f"unwritable_row: {', '.join(bad)}: {problem}"
    kept.pop(TRACEBACK, None)
    return kept


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The schema's columns in its order and types (a missing column is all null)."""
    columns = []
    for field in schema:
        if field.name in table.schema.names:
            column = table.column(field.name)
            columns.append(column if column.type.equals(field.type) else column.cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def column_array(table: pa.Table, name: str, type_: pa.DataType) -> pa.Array:
    """Column `name` as one array of `type_` (all null when the table has no such column)."""
    if name not in table.schema.names:
        return pa.nulls(table.num_rows, type_)
    column = table.column(name)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column if column.type.equals(type_) else column.cast(type_)


ROW, ORDINAL = "_row", "_ordinal"   # columnar stages' ordering columns: input row, rank within it


def in_input_order(table: pa.Table) -> pa.Table:
    """Rows by input row (`_row`), then by `_ordinal` where there is one; both columns dropped. Sorts
    (a copy of every column) only when the rows are out of order."""
    key = pc.multiply(table.column(ROW), 1 << 32)
    if ORDINAL in table.schema.names:
        key = pc.add(key, table.column(ORDINAL))
    key = key.to_numpy()
    if len(key) > 1 and not (np.diff(key) >= 0).all():
        table = table.take(pa.array(np.argsort(key, kind="stable")))
    return table.drop_columns([c for c in (ROW, ORDINAL) if c in table.schema.names])
