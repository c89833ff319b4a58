"""LiveCC's own annotation format (LIVECC_SPEC section 8): export a run's kept clips, read such files back.

One conversation per line:
    [{"role": "user", "content": [
         {"type": "video", "video": <path>, "video_start": <s>, "video_end": <s>},
         {"type": "text", "text": <query, "" for pretraining>, "previous": ..., "title": ..., "category": ...}]},
     {"role": "assistant", "content": [{"type": "text_stream", "text_stream": [[start, end, word], ...]}]}]
and a last line holding the JSON list of the *byte* offsets of every row (0 first), so a loader seeks to
row k directly (LiveCC's own scripts counted characters, which differ from bytes past ASCII).

`video` is the downloaded source file the clip was cut from (absolute, or relative to the run folder
with `relative=True`); `video_start`/`video_end` and the word times are in that file's timeline.
Clips are written in clip-id order and the file is written atomically, so an export of the same run
gives the same bytes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import ConfigError
from pipeline.store import RunStore

SHARD = "shard"


@dataclass(frozen=True)
class ExportResult:
    path: str
    rows: int
    clips_stage: str


def conversation(row: dict, video: str) -> list[dict]:
    words = [[w["start"], w["end"], w["word"]] for w in row.get("words") or ()]
    return [
        {"role": "user", "content": [
            {"type": "video", "video": video, "video_start": row["start"], "video_end": row["end"]},
            {"type": "text", "text": row.get("query") or "", "previous": row.get("previous") or "",
             "title": row.get("title") or "", "category": row.get("category") or ""}]},
        {"role": "assistant", "content": [{"type": "text_stream", "text_stream": words}]},
    ]


def kept_clips(store: RunStore) -> tuple[str, list[dict]]:
    """(the stage read, its ok clip rows that also made it into the shards when the run has a shard
    stage), in clip-id order."""
    stages = list(store.read_json("run.json").get("stages", []))
    clip_stages = [s for s in stages if s != SHARD]
    for name in reversed(clip_stages):
        table = store.read_stage(name)
        if table is not None and "clip_id" in table.schema.names and "words" in table.schema.names:
            break
    else:
        raise ConfigError(f"{store.uri}: no finished stage with clips (clip_id, words); run the profile first")
    table = table.filter(pc.equal(table.column("status"), "ok"))
    if SHARD in stages:   # only what reached the tars
        shards = store.read_stage(SHARD)
        ids = pa.array([], pa.string()) if shards is None else \
            shards.filter(pc.equal(shards.column("status"), "ok")).column("id").combine_chunks()
        table = table.filter(pc.is_in(table.column("id"), value_set=ids))
    rows = sorted(table.to_pylist(), key=lambda r: r["clip_id"])
    return name, rows


def export_livecc(run_dir: str, out: str, *, relative: bool = False) -> ExportResult:
    store = RunStore(run_dir if "://" in run_dir else str(Path(run_dir).resolve()))
    if not store.exists(store.path("run.json")):
        raise ConfigError(f"{run_dir} is not a run folder (no run.json)")
    name, rows = kept_clips(store)
    lines, offsets, size = [], [], 0
    for row in rows:
        video = row["media_path"] if relative or "://" in row["media_path"] or row["media_path"].startswith("/") \
            else f"{store.root}/{row['media_path']}"
        line = (json.dumps(conversation(row, video), ensure_ascii=False) + "\n").encode()
        offsets.append(size)
        size += len(line)
        lines.append(line)
    data = b"".join(lines) + json.dumps(offsets).encode() + b"\n"
    target = RunStore(os.path.dirname(os.path.abspath(out)) if "://" not in out else out.rsplit("/", 1)[0])
    target.write_bytes(target.path(os.path.basename(out)), data)
    return ExportResult(path=out, rows=len(rows), clips_stage=name)


def read_offsets(path: str) -> list[int]:
    """The byte offsets of the rows, from the file's last line (a local path or an fsspec URL)."""
    import fsspec

    with fsspec.open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block, position = b"", end
        while position > 0 and block.rstrip(b"\n").count(b"\n") == 0:
            step = min(65536, position)
            position -= step
            f.seek(position)
            block = f.read(step) + block
    last = block.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    offsets = json.loads(last)
    if not isinstance(offsets, list) or not all(isinstance(o, int) and o >= 0 for o in offsets):
        raise ValueError(f"{path}: the last line is not a list of byte offsets")
    return offsets


class LiveCCJsonl:
    """Random access to a LiveCC JSONL file by its offsets line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offsets = read_offsets(path)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> list[dict]:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[index])
            return json.loads(f.readline())

    def __iter__(self) -> Iterator[list[dict]]:
        with open(self.path, "rb") as f:
            for offset in self.offsets:
                f.seek(offset)
                yield json.loads(f.readline())
