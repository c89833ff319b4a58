"""shard: WebDataset tars of the kept clips, with a Parquet index beside each tar.

Reads: the `ok` rows of `clip_split` (`clip_id`, `video_id`, `start`, `end`, `words`, `previous`,
`title`, `category`, `media_path`).
Writes: `RUN/shards/part-NNNNN-SSSS.tar` (at most `max_shard_bytes` each, names deterministic) and
`part-NNNNN-SSSS.parquet` beside it (one row per sample: key, ids, times, byte sizes and offsets).
A sample is `<key>.mp4` (the clip's segment, cut with ffmpeg) and `<key>.json` (words with their times
in the source video's timeline, `video_start`/`video_end`, title, category, previous, ids). Keys are
clip ids: no dots, since WebDataset splits a key at its first dot.
Adds to the manifest: `shard`, `key`, `video_bytes`, `video_duration`.
Errors: `cut_failed` / `corrupt_media` when ffmpeg cannot cut or the cut does not decode.
Resources: one CPU per part (ffmpeg re-encodes, single-threaded, so bytes are reproducible).

Tars are written with fixed mtimes and owners, so a re-run writes identical bytes.
"""
from __future__ import annotations

import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from manifests.schemas import SHARD
from pipeline.stage import PartContext, Resources, Stage, error, error_from_exception, ok
from pipeline.store import RunStore, part_name
from stages.lib import media


@dataclass(frozen=True)
class Config:
    max_shard_bytes: int = 512 * 2**20
    reencode: bool = True      # frame-exact cuts; false: stream copy (fast, starts at a keyframe)
    video_ext: str = "mp4"

    def __post_init__(self) -> None:
        if self.max_shard_bytes < 1:
            raise ValueError("max_shard_bytes must be >= 1")
        if self.video_ext != "mp4":
            raise ValueError("video_ext: only mp4 is supported")


INDEX_SCHEMA = pa.schema([
    ("key", pa.string()), ("clip_id", pa.string()), ("video_id", pa.string()),
    ("start", pa.float64()), ("end", pa.float64()), ("video_duration", pa.float64()),
    ("video_bytes", pa.int64()), ("json_bytes", pa.int64()), ("offset", pa.int64()),
])


def sample_json(row: dict) -> bytes:
    record = {
        "clip_id": row["clip_id"], "video_id": row["video_id"],
        "video_start": row["start"], "video_end": row["end"],
        "title": row["title"], "category": row["category"], "previous": row["previous"],
        "words": [[w["start"], w["end"], w["word"]] for w in row["words"]],
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def _member(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Size-bounded tars with deterministic names for one part."""

    def __init__(self, store: RunStore, part: int, max_bytes: int) -> None:
        self.store, self.part, self.max_bytes = store, part, max_bytes
        self.shard_no, self.buffer, self.tar, self.index = 0, None, None, []

    @property
    def shard_name(self) -> str:
        return f"{part_name(self.part)}-{self.shard_no:04d}"

    def add(self, key: str, files: list[tuple[str, bytes]], meta: dict) -> str:
        size = sum(len(data) + 1024 for _, data in files)
        if self.tar is not None and self.buffer.tell() + size > self.max_bytes and self.index:
            self._flush()
            self.shard_no += 1
        if self.tar is None:
            self.buffer = io.BytesIO()
            self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.USTAR_FORMAT)
        offset = self.buffer.tell()
        for name, data in files:
            self.tar.addfile(_member(f"{key}.{name}", data), io.BytesIO(data))
        self.index.append({**meta, "key": key, "offset": offset})
        return self.shard_name + ".tar"

    def _flush(self) -> None:
        self.tar.close()
        self.store.write_bytes(self.store.path("shards", self.shard_name + ".tar"), self.buffer.getvalue())
        index = io.BytesIO()
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(self.index, schema=INDEX_SCHEMA), index)
        self.store.write_bytes(self.store.path("shards", self.shard_name + ".parquet"), index.getvalue())
        self.tar, self.index = None, []

    def close(self) -> None:
        if self.tar is not None:
            self._flush()


class Shard(Stage):
    name = "shard"
    Config = Config
    schema = SHARD

    def resources(self) -> Resources:
        return Resources(cpus=1)

    def check(self) -> None:
        media.require_binaries("ffmpeg", "ffprobe")

    def process(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        store = RunStore(ctx.run_dir)
        for stale in store.glob(f"shards/{part_name(ctx.part)}-*"):  # an earlier run of this part
            store.remove(stale)
        writer = ShardWriter(store, ctx.part, self.config.max_shard_bytes)
        out = []
        with tempfile.TemporaryDirectory(prefix="shard-") as tmp:
            for row in sorted(rows, key=lambda r: r["clip_id"]):
                base = {k: row[k] for k in ("id", "clip_id", "video_id", "start", "end")}
                try:
                    video = self._cut(row, ctx, Path(tmp) / "clip.mp4")
                    duration = media.probe(str(video)).duration
                    data = video.read_bytes()
                except media.MediaError as exc:
                    out.append(error(base, str(exc)))
                    continue
                except Exception as exc:
                    out.append(error_from_exception(base, exc))
                    continue
                key = row["clip_id"]
                text = sample_json(row)
                shard = writer.add(key, [("json", text), ("mp4", data)], {
                    "clip_id": key, "video_id": row["video_id"], "start": row["start"], "end": row["end"],
                    "video_duration": duration, "video_bytes": len(data), "json_bytes": len(text)})
                out.append(ok(base, shard=shard, key=key, video_bytes=len(data), video_duration=duration))
        writer.close()
        return out

    def _cut(self, row: dict, ctx: PartContext, dest: Path) -> Path:
        if not row.get("media_path"):
            raise media.MediaError("no_media", "the clip row has no media_path")
        media.cut(ctx.resolve(row["media_path"]), row["start"], row["end"], str(dest),
                  reencode=self.config.reencode)
        return dest
