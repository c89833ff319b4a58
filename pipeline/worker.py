"""What runs on a Ray worker: one (stage, part) from its upstream manifest to its own manifest."""
from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa

from pipeline.stage import OK, STATUSES, PartContext, Stage
from pipeline.store import RunStore, part_name


class StaleRunError(RuntimeError):
    """This worker belongs to a run whose driver is gone and whose folder a new run has taken."""


def check_fence(store: RunStore, run_id: str) -> None:
    try:
        holder = store.read_json(".lock").get("run_id")
    except FileNotFoundError:
        holder = None
    if holder is not None and holder != run_id:   # no lock: no driver runs (direct use, tests)
        raise StaleRunError(f"run {run_id} no longer owns {store.uri} (now {holder}); not committing")


def reason_code(reason: str | None) -> str:
    return (reason or "").split(":", 1)[0].strip() or "unspecified"


def run_part(stage: Stage, run_uri: str, part: int, upstream: str, chain: str, input_sha: str,
             run_id: str) -> dict:
    started = time.time()
    store = RunStore(run_uri)
    table = store.read_manifest(upstream, part)
    if "status" in table.schema.names:
        table = table.filter(pa.compute.equal(table.column("status"), OK))
    rows = table.to_pylist()
    out = stage.process(rows, PartContext(run_dir=run_uri, part=part))

    tracebacks = []
    for row in out:
        trace = row.pop("_traceback", None)
        if trace:
            tracebacks.append(f"--- {row.get('id')}\n{trace}")
        if row.get("status") not in STATUSES or not row.get("id"):
            row.update(status="error", reason=f"StageContractError: bad status/id in {row.get('id')!r}")
    if tracebacks:
        store.write_bytes(store.path("logs", "errors", stage.name, part_name(part) + ".log"),
                          "\n".join(tracebacks).encode())
    result = pa.Table.from_pylist(out, schema=stage.schema)
    check_fence(store, run_id)
    output_sha = store.write_manifest(stage.name, part, result)

    counts: dict[str, dict[str, int]] = {s: {} for s in STATUSES}
    for (status, code), n in Counter((r["status"], reason_code(r["reason"]) if r["status"] != OK else "")
                                     for r in out).items():
        counts[status][code] = n
    scores = {}
    for column in stage.score_columns():
        values = [v for v in result.column(column).to_pylist() if v is not None]
        if values:
            scores[column] = values
    marker = {
        "stage": stage.name, "part": part, "chain": chain, "input_sha": input_sha,
        "output_sha": output_sha, "rows_in": len(rows), "rows_out": len(out), "counts": counts,
        "scores": scores, "seconds": round(time.time() - started, 3), "run_id": run_id,
        "finished_at": time.time(),
    }
    check_fence(store, run_id)
    store.write_marker(stage.name, part, marker)
    return marker


class StageActor:
    """A long-lived worker for model stages: `setup` (model loading) once, then many parts."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        stage.setup()

    def run(self, run_uri: str, part: int, upstream: str, chain: str, input_sha: str, run_id: str) -> dict:
        return run_part(self.stage, run_uri, part, upstream, chain, input_sha, run_id)


def run_task(stage: Stage, run_uri: str, part: int, upstream: str, chain: str, input_sha: str,
             run_id: str) -> dict:
    stage.setup()
    return run_part(stage, run_uri, part, upstream, chain, input_sha, run_id)
