"""The run folder: manifests, done-markers, media and shards, on a local path or any fsspec URI.

Every write lands under a temporary name and is renamed into place, so a reader (or a resumed run)
sees a whole file or none. A part's done-marker is written after its manifest, last.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def _tmp_name(path: str) -> str:
    """A hidden sibling name: readers of the folder skip it, the rename is atomic."""
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.tmp-{uuid.uuid4().hex[:8]}"


def part_name(part: int) -> str:
    return f"part-{part:05d}"


class RunStore:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self.is_local = self.fs.protocol in ("file", "local") or "file" in self.fs.protocol

    # paths -------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def local_dir(self, *parts: str) -> Path:
        """A local folder under the run (for ffmpeg, yt-dlp); only on local runs."""
        if not self.is_local:
            raise ValueError("this operation needs a run folder on a local or shared filesystem")
        path = Path(self.path(*parts))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def manifest_path(self, stage: str, part: int) -> str:
        return self.path(stage, part_name(part) + ".parquet")

    def marker_path(self, stage: str, part: int) -> str:
        # "_" prefix: pyarrow, pandas and polars skip it when they read the stage folder as a dataset
        return self.path(stage, "_" + part_name(part) + ".done")

    # atomic writes ------------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        self.fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _tmp_name(path)
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self._rename(tmp, path)

    def put_file(self, local_path: str | Path, path: str) -> None:
        """Copy (or move, on the same local filesystem) a finished local file into the run."""
        self.fs.makedirs(os.path.dirname(path), exist_ok=True)
        if self.is_local:
            os.replace(local_path, path)
            return
        tmp = _tmp_name(path)
        self.fs.put_file(str(local_path), tmp)
        self._rename(tmp, path)

    def _rename(self, src: str, dst: str) -> None:
        if self.is_local:
            os.replace(src, dst)
        else:
            self.fs.mv(src, dst)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path)

    def clean_temporaries(self) -> int:
        """Remove what a killed run left under temporary names (files and folders `.NAME.tmp-*`)."""
        found = [p for p in self.fs.find(self.root, withdirs=True, detail=False)
                 if ".tmp-" in p.rsplit("/", 1)[-1] and p.rsplit("/", 1)[-1].startswith(".")]
        for path in found:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        return len(found)

    def glob(self, pattern: str) -> list[str]:
        return sorted(self.fs.glob(self.path(pattern)))

    # manifests and markers --------------------------------------------------------------------
    def write_manifest(self, stage: str, part: int, table: pa.Table) -> str:
        """Write a part's manifest atomically; return the SHA-256 of its bytes."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        self.write_bytes(self.manifest_path(stage, part), data)
        return hashlib.sha256(data).hexdigest()

    def read_manifest(self, stage: str, part: int, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.manifest_path(stage, part), "rb") as f:
            return pq.read_table(f, columns=columns)

    def read_stage(self, stage: str, columns: list[str] | None = None) -> pa.Table | None:
        """All done parts of a stage's manifest (only `columns`, when given)."""
        tables = [self.read_manifest(stage, p, columns) for p in self.done_parts(stage)]
        return pa.concat_tables(tables) if tables else None

    def marker(self, stage: str, part: int) -> dict | None:
        path = self.marker_path(stage, part)
        try:
            with self.fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def write_marker(self, stage: str, part: int, marker: dict) -> None:
        self.write_bytes(self.marker_path(stage, part), json.dumps(marker, indent=1).encode())

    def remove_marker(self, stage: str, part: int) -> None:
        self.remove(self.marker_path(stage, part))

    def done_parts(self, stage: str) -> list[int]:
        return [int(Path(p).name[6:11]) for p in self.glob(f"{stage}/_part-*.done")]

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(self.path(path), json.dumps(obj, indent=1, default=str).encode())

    def read_json(self, path: str) -> Any:
        with self.fs.open(self.path(path), "rb") as f:
            return json.loads(f.read())
