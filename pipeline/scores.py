"""Model scores are cached; keep/drop decisions are cheap thresholds over them.

A `ScoredStage` splits its work in two: `score` (expensive: a model, loaded lazily by `load_model`)
returns score columns per row; `decide` (cheap) turns a row with its scores into ok or dropped.
Scores are cached in the run folder by (row id, scorer config = the stage config without its
thresholds), so a resumed or repeated run never scores a row twice, and changing only a threshold
re-decides every row from the stored scores without loading the model.

Cache layout: `RUN/<stage>/_scores/<scorer hash>/part-NNNNN.parquet` (id + score columns).
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import digest
from pipeline.stage import PartContext, Stage, error_from_exception
from pipeline.store import RunStore, part_name


class ScoredStage(Stage):
    # Config fields that only steer the decision: changing them never invalidates cached scores.
    threshold_fields: ClassVar[tuple[str, ...]] = ()
    # Config fields that change how fast, never what: batch sizes, threads. Not in the cache key either.
    runtime_fields: ClassVar[tuple[str, ...]] = ()
    # The score columns `score` returns, with their Arrow types.
    score_schema: ClassVar[pa.Schema]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._model_loaded = False

    # what subclasses implement ------------------------------------------------------------------
    def load_model(self) -> None:
        """Load the model (once per worker, on first need)."""

    def score(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        """Score columns for each row, in order. Raise only for a whole-batch failure."""
        raise NotImplementedError

    def decide(self, row: dict) -> dict:
        """The row with status/reason set from its scores and the thresholds."""
        raise NotImplementedError

    # the mechanism ----------------------------------------------------------------------------
    def scorer_hash(self) -> str:
        skip = set(self.threshold_fields) | set(self.runtime_fields)
        fields = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in skip}
        return digest(self.name, self.version, fields)

    def score_columns(self) -> list[str]:
        return [f.name for f in self.score_schema if pa.types.is_floating(f.type)]

    def process(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        store = RunStore(ctx.run_dir)
        path = store.path(self.name, "_scores", self.scorer_hash(), part_name(ctx.part) + ".parquet")
        cached = read_scores(store, path)
        missing = [r for r in rows if r["id"] not in cached]
        failed: dict[str, dict] = {}
        if missing:
            if not self._model_loaded:
                self.load_model()
                self._model_loaded = True
            fresh = self._score_isolated(missing, ctx, failed)
            if fresh:
                cached.update(fresh)
                table = pa.Table.from_pylist([{"id": k, **v} for k, v in sorted(cached.items())],
                                             schema=pa.schema([("id", pa.string()), *self.score_schema]))
                buf = io.BytesIO()
                pq.write_table(table, buf)
                store.write_bytes(path, buf.getvalue())
        out = []
        for row in rows:
            if row["id"] in failed:
                out.append(failed[row["id"]])
            else:
                out.append(self.decide({**row, **cached[row["id"]]}))
        return out

    def _score_isolated(self, rows: list[dict], ctx: PartContext, failed: dict[str, dict]) -> dict:
        """Score a batch; if the batch fails, score row by row so one bad row becomes one error row."""
        if len(rows) > 1:
            try:
                return {r["id"]: s for r, s in zip(rows, self.score(rows, ctx), strict=True)}
            except Exception:
                pass
        fresh = {}
        for row in rows:
            try:
                fresh[row["id"]] = self.score([row], ctx)[0]
            except Exception as exc:
                failed[row["id"]] = error_from_exception(row, exc)
        return fresh


def read_scores(store: RunStore, path: str) -> dict[str, dict]:
    if not store.exists(path):
        return {}
    with store.fs.open(path, "rb") as f:
        table = pq.read_table(f)
    return {r.pop("id"): r for r in table.to_pylist()}
