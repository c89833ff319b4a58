"""Read a source list (JSONL, Parquet or CSV) into source rows, and cut it into parts.

A source row is kept whole as JSON in `raw` (credentials in URLs redacted: pipeline/redact.py);
`metadata_filter` interprets it. A line that does not
parse, a row without `url` and a repeated id become rows with `parse_error` set, never a silent drop.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterable

import fsspec
import pyarrow as pa

from manifests import ids
from pipeline.config import ConfigError
from manifests.schemas import SOURCE
from pipeline.redact import DEFAULT_PARAMS, redact_obj, redact_text, redact_url

FORMATS = (".jsonl", ".json", ".parquet", ".csv")
# Bump when the source parts change (2: redacted `raw`, `source_id`, CSV lines read one by one), so
# source parts of older runs are written again.
VERSION = 2
SECRET_FIELDS = ("url", "captions")   # the fields a stage fetches: kept whole in memory, redacted on disk


def check_source(uri: str) -> None:
    if not any(uri.endswith(ext) for ext in FORMATS):
        raise ConfigError(f"source {uri!r}: expected a file ending in one of {', '.join(FORMATS)}")
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise ConfigError(f"source {uri!r} does not exist: pass --source FILE (JSONL, Parquet or CSV)")


def _records(uri: str) -> list[tuple[dict | None, str, str | None]]:
    """(parsed record or None, raw text, why it did not parse) per row."""
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
            except json.JSONDecodeError as exc:
                out.append((None, line, f"not JSON ({exc.msg} at column {exc.colno})"))
                continue
            except RecursionError:   # `[[[[...` nested deeper than Python parses
                out.append((None, line[:1000], "not JSON (nested too deep)"))
                continue
            out.append((record, line, None) if isinstance(record, dict) else (None, line, "not a JSON object"))
        return out
    if uri.endswith(".csv"):
        return _csv_records(fs, path, uri)
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    records = table.to_pylist()
    return [(r, json.dumps(r, default=str), None) for r in records]


def _csv_records(fs, path: str, uri: str) -> list[tuple[dict | None, str, str | None]]:
    """CSV rows as records of strings (metadata_filter parses numbers); a line whose field count
    differs from the header's is a row of its own with no record (an error row), not a failed run."""
    import csv

    # utf-8-sig: spreadsheet exports start with a BOM that would otherwise become part of `url`
    csv.field_size_limit(1 << 24)   # a 10 kB title is a title; 16 MB in one field is an error row
    with fs.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise ConfigError(f"source {uri!r} is empty: a CSV source needs a header line with a `url` "
                              f"column and one line per video")
        names = [h.strip() for h in header]
        out: list[tuple[dict | None, str, str | None]] = []
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:   # e.g. a field past the size limit: this line only
                out.append((None, "", f"unreadable CSV line {reader.line_num}: {exc}"))
                continue
            if not fields or not any(v.strip() for v in fields):
                continue
            raw = ",".join(fields)
            if len(fields) != len(names):
                out.append((None, raw, f"{len(fields)} fields where the header has {len(names)}"))
                continue
            out.append(({k: v for k, v in zip(names, fields) if v != ""}, raw, None))
        return out


def read_source(uri: str, limit: int | None = None, redact_params: Iterable[str] = DEFAULT_PARAMS,
                secrets: dict[str, dict[str, str]] | None = None) -> list[dict]:
    """Source rows whose `raw` is redacted (pipeline/redact.py). The full `url`/`captions` values of
    rows whose redacted text differs go into `secrets` (row id -> {field: value}), for the driver to
    keep in memory: they are never written."""
    redact_params = tuple(redact_params)
    rows: list[dict] = []
    seen: dict[str, int] = {}
    for index, (record, raw, unparsed) in enumerate(_records(uri)):
        if limit is not None and index >= limit:
            break
        problem = None
        vid = None
        given = record.get("id") if record is not None else None
        source_id = None if given in (None, "") else str(given)
        if record is None:
            problem = unparsed or "not a record"
        elif not isinstance(record.get("url"), str) or not record["url"].strip():
            problem = "no url"
        else:
            vid = ids.video_id(record["url"], source_id)
            if vid in seen:
                problem = f"duplicate id (first at source row {seen[vid]})"
            else:
                seen[vid] = index
        if vid is not None and problem is None and secrets is not None:
            full = {k: record[k].strip() for k in SECRET_FIELDS if isinstance(record.get(k), str)}
            full = {k: v for k, v in full.items() if redact_url(v, redact_params) != v}
            if full:
                secrets[vid] = full
        rows.append({
            # a row with no usable id still needs one; NUL keeps it apart from every given id
            "id": vid or ids.safe_id(f"\0row{index}"),
            "source_id": source_id,
            "source_row": index,
            "raw": redact_text(raw, redact_params) if record is None
            else json.dumps(redact_obj(record, redact_params), default=str, sort_keys=True),
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
