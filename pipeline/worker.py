"""What runs on a Ray worker: one (stage, part) from its upstream manifest to its own manifest."""
from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.redact import DEFAULT_PARAMS
from pipeline.stage import ERROR, OK, STATUSES, TRACEBACK, PartContext, Stage, conform
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


def run_part(stage: Stage, run_uri: str, part: int, upstream: str, chain: str, input_sha: str,
             run_id: str, secrets: dict | None = None,
             redact_params: tuple[str, ...] = DEFAULT_PARAMS, env_secrets: dict | None = None) -> dict:
    """`secrets`: the full url/captions of rows whose manifest values are redacted, for stages that
    fetch (in memory only); `redact_params`: run.redact_params; `env_secrets`: the driver's values of
    the stage's `secret_env` variables."""
    started = time.time()
    store = RunStore(run_uri)
    table = store.read_manifest(upstream, part)
    if "status" in table.schema.names:
        table = table.filter(pc.equal(table.column("status"), OK))
    ctx = PartContext(run_dir=run_uri, part=part, secrets=secrets or {}, redact_params=tuple(redact_params),
                      env_secrets=env_secrets or {})
    result = stage.process_table(table, ctx)
    result, tracebacks = _split_tracebacks(result)
    result = _enforce_contract(conform(result, stage.output_schema(table.schema)))
    result, tracebacks = redact_columns(result, ctx), [ctx.redact(t) for t in tracebacks]
    if tracebacks:
        store.write_bytes(store.path("logs", "errors", stage.name, part_name(part) + ".log"),
                          "\n".join(tracebacks).encode())
    check_fence(store, run_id)
    output_sha = store.write_manifest(stage.name, part, result)

    scores = {}
    for column in stage.score_columns():
        values = [v for v in result.column(column).to_pylist() if v is not None]
        if values:
            scores[column] = values
    counts = status_counts(result)
    marker = {
        "stage": stage.name, "part": part, "chain": chain, "input_sha": input_sha,
        "output_sha": output_sha, "rows_in": table.num_rows, "rows_out": result.num_rows,
        "counts": counts, "scores": scores, "seconds": round(time.time() - started, 3),
        "totals": {c: pc.sum(result.column(c)).as_py() or 0 for c in stage.total_columns()},
        # transient errors: the next run runs this part again (the runner reads this count)
        "retry": sum(n for code, n in counts[ERROR].items() if code in stage.retry_reasons),
        "run_id": run_id, "finished_at": time.time(),
    }
    check_fence(store, run_id)
    store.write_marker(stage.name, part, marker)
    return marker


def _split_tracebacks(table: pa.Table) -> tuple[pa.Table, list[str]]:
    if TRACEBACK not in table.schema.names:
        return table, []
    traces = [f"--- {rid}\n{trace}" for rid, trace in
              zip(table.column("id").to_pylist(), table.column(TRACEBACK).to_pylist()) if trace]
    return table.drop_columns([TRACEBACK]), traces


def _enforce_contract(table: pa.Table) -> pa.Table:
    """Rows without an id or with an unknown status become error rows (a stage bug, made visible)."""
    status, ids = table.column("status"), table.column("id")
    bad = pc.or_(pc.invert(pc.fill_null(pc.is_in(status, pa.array(STATUSES)), False)),
                 pc.fill_null(pc.equal(pc.utf8_length(ids), 0), True))
    if not pc.any(bad).as_py():
        return table
    reason = pc.binary_join_element_wise(
        "StageContractError: bad status/id in ", pc.fill_null(ids, "None"), "")
    table = table.set_column(table.schema.get_field_index("status"), "status",
                             pc.if_else(bad, pa.scalar(ERROR), status))
    return table.set_column(table.schema.get_field_index("reason"), "reason",
                            pc.if_else(bad, reason, table.column("reason")))


def reason_codes(table: pa.Table) -> pa.Array:
    """Each row's reason code: its reason up to the first `:`, "unspecified" when it gives none, ""
    for ok rows. The one definition the summary, the report and its gallery count rows by."""
    code = pc.utf8_trim_whitespace(pc.list_element(
        pc.split_pattern(pc.fill_null(table.column("reason"), ""), ":", max_splits=1), 0))
    code = pc.if_else(pc.equal(code, ""), "unspecified", code)
    return pc.if_else(pc.equal(table.column("status"), OK), "", code)


def status_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """{status: {reason code: rows}} (reason_codes)."""
    counts: dict[str, dict[str, int]] = {s: {} for s in STATUSES}
    if table.num_rows == 0:
        return counts
    code = reason_codes(table)
    grouped = pa.table({"status": table.column("status"), "code": code}).group_by(
        ["status", "code"]).aggregate([([], "count_all")])
    for status, c, n in zip(*(grouped.column(k).to_pylist() for k in ("status", "code", "count_all"))):
        counts[status][c] = n
    return counts


REDACTED_COLUMNS = ("url", "captions", "raw", "reason")   # where a row's URLs can end up


def redact_columns(table: pa.Table, ctx: PartContext) -> pa.Table:
    """Credentials out of the columns that can carry a URL (once, for every stage): whatever a stage
    or a library put in a reason, the manifest holds it redacted."""
    for name in REDACTED_COLUMNS:
        if name not in table.schema.names or not pa.types.is_string(table.schema.field(name).type):
            continue
        column = table.column(name)
        if not ctx.secrets and not ctx.env_secrets and not pc.any(pc.match_substring_regex(column, r"://|=|@")).as_py():
            continue
        values = pa.array([ctx.redact(v) for v in column.to_pylist()], type=pa.string())
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table


class StageActor:
    """A long-lived worker for model stages: `setup` (model loading) once, then many parts."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        stage.setup()

    def run(self, run_uri: str, part: int, upstream: str, chain: str, input_sha: str, run_id: str,
            **redaction) -> dict:
        return run_part(self.stage, run_uri, part, upstream, chain, input_sha, run_id, **redaction)


def run_task(stage: Stage, run_uri: str, part: int, upstream: str, chain: str, input_sha: str,
             run_id: str, **redaction) -> dict:
    """`redaction`: run_part's `secrets`, `redact_params` and `env_secrets`."""
    stage.setup()
    return run_part(stage, run_uri, part, upstream, chain, input_sha, run_id, **redaction)
