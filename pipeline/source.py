"""Read a source list (JSONL, Parquet or CSV) into source rows, and cut it into parts.

A source row is kept whole as JSON in `raw`; `metadata_filter` interprets it. A line that does not
parse, a row without `url` and a repeated id become rows with `parse_error` set, never a silent drop.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import fsspec
import pyarrow as pa

from manifests import ids
from pipeline.config import ConfigError
from manifests.schemas import SOURCE

FORMATS = (".jsonl", ".json", ".parquet", ".csv")


def check_source(uri: str) -> None:
    if not any(uri.endswith(ext) for ext in FORMATS):
        raise ConfigError(f"source {uri!r}: expected a file ending in one of {', '.join(FORMATS)}")
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise ConfigError(f"source {uri!r} does not exist: pass --source FILE (JSONL, Parquet or CSV)")


def _records(uri: str) -> list[tuple[dict | None, str]]:
    """(parsed record or None, raw text) per row."""
    fs, path = fsspec.core.url_to_fs(uri)
    if uri.endswith((".jsonl", ".json")):
        with fs.open(path, "rt", encoding="utf-8", errors="replace") as f:
            lines = [line.rstrip("\n") for line in f]
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                out.append((None, line))
                continue
            out.append((record if isinstance(record, dict) else None, line))
        return out
    if uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    else:
        import pyarrow.csv as pcsv

        with fs.open(path, "rb") as f:
            table = pcsv.read_csv(f)
    records = table.to_pylist()
    return [(r, json.dumps(r, default=str)) for r in records]


def read_source(uri: str, limit: int | None = None) -> list[dict]:
    rows: list[dict] = []
    seen: dict[str, int] = {}
    for index, (record, raw) in enumerate(_records(uri)):
        if limit is not None and index >= limit:
            break
        problem = None
        vid = None
        if record is None:
            problem = "not a JSON object"
        elif not isinstance(record.get("url"), str) or not record["url"].strip():
            problem = "no url"
        else:
            given = record.get("id")
            vid = ids.video_id(record["url"], str(given) if given not in (None, "") else None)
            if vid in seen:
                problem = f"duplicate id (first at source row {seen[vid]})"
            else:
                seen[vid] = index
        rows.append({
            "id": vid or f"row{index:08d}",
            "source_row": index,
            "raw": raw if record is None else json.dumps(record, default=str, sort_keys=True),
            "parse_error": problem,
        })
    return rows


def split_parts(rows: list[dict], part_size: int) -> list[pa.Table]:
    count = max(1, math.ceil(len(rows) / part_size))
    return [pa.Table.from_pylist(rows[i * part_size:(i + 1) * part_size], schema=SOURCE)
            for i in range(count)]


def source_digest(uri: str) -> str:
    fs, path = fsspec.core.url_to_fs(uri)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_source_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "samples"
