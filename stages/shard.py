"""shard: WebDataset tars of the kept clips, with a Parquet index beside each tar.

Reads: the `ok` rows of `clip_split` (`clip_id`, `video_id`, `start`, `end`, `words`, `previous`,
`title`, `category`, `media_path`).
Writes: `RUN/shards/part-NNNNN-SSSS.tar` (at most `max_shard_bytes` each, names deterministic) and
`part-NNNNN-SSSS.parquet` beside it (one row per sample: key, ids, times, byte sizes and offsets).
A sample is `<key>.json` (words with their times in the source video's timeline, `video_start`/
`video_end`, title, category, previous, ids) and the clip's pictures, in one of two formats:
- `frames` (training sets): the frames the packer takes, at 2 fps (training/frames.py's rule) and at
  the size the packer resizes them to (training/vision.py), as `<key>.000.jpg`, `<key>.001.jpg`, ...
  (or `.webp`); the JSON adds `frame_times` (seconds, source timeline) and `frame_size` [h, w].
  Training decodes small images instead of video (bench/packing.py measures both formats).
- `mp4`: `<key>.mp4`, the clip's segment cut with ffmpeg, for people who want video files.
Keys are clip ids: no dots, since WebDataset splits a key at its first dot.
Adds to the manifest: `shard`, `key`, `video_bytes` (the sample's picture bytes), `frames` (frames
format), `video_duration` (mp4: the cut's video stream, from its packets, so an audio track that runs on
does not hide a video that stops; frames: from the clip's start to half a second after its last distinct
frame).
Errors: `cut_failed` / `corrupt_media` when the media cannot be cut or decoded; `cut_short` when the
clip's video is shorter than `end - start` by more than `max_cut_shortfall_s` (the clip runs past the
media's end); `bad_key` when the key cannot be a tar member name (USTAR: ASCII, at most 100 bytes
unless it holds a `/`) or holds a dot. Any failure of one clip is an error row of that clip only: a
sample's headers are all built before a byte of it is written, so a sample is in its tar whole or not
at all.
Resources: one CPU per part (ffmpeg re-encodes single-threaded, the frame decoder is PyAV's, so bytes are
reproducible).

Tars are written with fixed mtimes and owners, so a re-run writes identical bytes.
"""
from __future__ import annotations

import io
import json
import tarfile
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from manifests.schemas import SHARD
from pipeline.stage import PartContext, Resources, Stage, error, error_from_exception, ok
from pipeline.store import RunStore, part_name
from stages.lib import media


FORMATS = ("frames", "mp4")
FRAME_CODECS = {"jpeg": "jpg", "webp": "webp"}   # codec -> member extension

# Columns a sample carries when its manifest has them: what the prompt tasks wrote (SFT).
OPTIONAL_FIELDS = ("query", "description")


@dataclass(frozen=True)
class Config:
    max_shard_bytes: int = 512 * 2**20
    format: str = "frames"     # frames: 2 fps images at the packer's size; mp4: the cut clip
    frame_codec: str = "jpeg"  # frames format: jpeg | webp
    frame_quality: int = 90    # 1-100, of frame_codec
    reencode: bool = True      # mp4: frame-exact cuts; false: stream copy (fast, starts at a keyframe)
    video_ext: str = "mp4"
    # A cut whose video is shorter than `end - start` by more than this is an error (cut_short).
    # Measured: cuts inside the media are never short (re-encoded: 0-30 ms long; stream copy: 50-160 ms
    # long), so this only has to admit words that the word stages let end up to 0.5 s after the media
    # (asr.media_tolerance_s), plus a frame of a low-rate video.
    max_cut_shortfall_s: float = 0.75
    # Manifest columns copied into each sample's JSON when present (the prompt tasks' outputs); add
    # the columns of your own prompt tasks here.
    fields: tuple[str, ...] = OPTIONAL_FIELDS

    def __post_init__(self) -> None:
        if self.max_shard_bytes < 1:
            raise ValueError("max_shard_bytes must be >= 1")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.frame_codec not in FRAME_CODECS:
            raise ValueError(f"frame_codec must be one of {', '.join(FRAME_CODECS)}, not {self.frame_codec!r}")
        if not 1 <= self.frame_quality <= 100:
            raise ValueError("frame_quality must be within 1-100")
        if self.video_ext != "mp4":
            raise ValueError("video_ext: only mp4 is supported")
        if not self.max_cut_shortfall_s >= 0:
            raise ValueError("max_cut_shortfall_s must be >= 0 (seconds a cut may fall short of its clip)")


INDEX_SCHEMA = pa.schema([
    ("key", pa.string()), ("clip_id", pa.string()), ("video_id", pa.string()),
    ("start", pa.float64()), ("end", pa.float64()), ("video_duration", pa.float64()),
    ("video_bytes", pa.int64()), ("json_bytes", pa.int64()), ("offset", pa.int64()), ("frames", pa.int64()),
])


def sample_json(row: dict, optional: tuple[str, ...] = OPTIONAL_FIELDS, extra: dict | None = None) -> bytes:
    record = {
        "clip_id": row["clip_id"], "video_id": row["video_id"],
        "video_start": row["start"], "video_end": row["end"],
        "title": row["title"], "category": row["category"], "previous": row["previous"],
        "words": [[w["start"], w["end"], w["word"]] for w in row["words"]],
    }
    record.update({name: row[name] for name in optional if row.get(name) is not None})
    record.update(extra or {})
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


TAR_ENCODING = "ascii"  # member names other tools and WebDataset readers all read the same way


class BadKey(ValueError):
    code = "bad_key"

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.code}: {message}")


def _member(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info


def sample_members(key: str, files: list[tuple[str, bytes]]) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The tar members of one sample, every header built (and so checked) before any is written:
    BadKey when a name cannot be written."""
    shown = repr(key[:60]) + (f"... ({len(key)} chars)" if len(key) > 60 else "")
    if not key or "." in key:  # WebDataset splits a member name into key and extension at the first dot
        raise BadKey(f"{shown}: a key must be non-empty and hold no dot")
    members = []
    for name, data in files:
        info = _member(f"{key}.{name}", data)
        try:
            info.tobuf(tarfile.USTAR_FORMAT, TAR_ENCODING, "strict")
        except ValueError as exc:  # name too long for USTAR; UnicodeEncodeError: not ASCII
            raise BadKey(f"{shown}.{name} is no USTAR member name: {exc}") from None
        members.append((info, data))
    return members


class ShardWriter:
    """Size-bounded tars with deterministic names for one part."""

    def __init__(self, store: RunStore, part: int, max_bytes: int) -> None:
        self.store, self.part, self.max_bytes = store, part, max_bytes
        self.shard_no, self.buffer, self.tar, self.index = 0, None, None, []

    @property
    def shard_name(self) -> str:
        return f"{part_name(self.part)}-{self.shard_no:04d}"

    def add(self, key: str, members: list[tuple[tarfile.TarInfo, bytes]], meta: dict) -> str:
        """Append a sample whose members `sample_members` built (so no header can fail half-way)."""
        size = sum(len(data) + 1024 for _, data in members)
        if self.tar is not None and self.buffer.tell() + size > self.max_bytes and self.index:
            self._flush()
            self.shard_no += 1
        if self.tar is None:
            self.buffer = io.BytesIO()
            self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.USTAR_FORMAT,
                                    encoding=TAR_ENCODING, errors="strict")
        offset = self.buffer.tell()
        for info, data in members:
            self.tar.addfile(info, io.BytesIO(data))
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
            for row in sorted(rows, key=lambda r: str(r.get("clip_id") or "")):
                base = {k: row.get(k) for k in ("id", "clip_id", "video_id", "start", "end")}
                duration = None
                try:  # everything that can fail for this clip alone, before its first byte is written
                    pictures, extra, duration = self._pictures(row, ctx, Path(tmp) / "clip.mp4")
                    self._check_length(row, duration)
                    key = row["clip_id"]
                    text = sample_json(row, self.config.fields, extra)
                    members = sample_members(key, [("json", text), *pictures])
                except (media.MediaError, BadKey) as exc:
                    out.append(error(base, str(exc), video_duration=duration))
                    continue
                except Exception as exc:
                    result = error_from_exception(base, exc)
                    result["_traceback"] = traceback.format_exc()
                    out.append(result)
                    continue
                # a failure to write the tar itself is the part's (its other samples would be lost): raised
                size = sum(len(data) for _, data in pictures)
                frames = len(extra["frame_times"]) if extra else None
                shard = writer.add(key, members, {
                    "clip_id": key, "video_id": row["video_id"], "start": row["start"], "end": row["end"],
                    "video_duration": duration, "video_bytes": size, "json_bytes": len(text), "frames": frames})
                out.append(ok(base, shard=shard, key=key, video_bytes=size, video_duration=duration,
                              frames=frames))
        writer.close()
        return out

    def _check_length(self, row: dict, duration: float | None) -> None:
        want = row["end"] - row["start"]
        if duration is None:
            raise media.MediaError("cut_short", f"the cut of {row['start']:.2f}-{row['end']:.2f} s holds no "
                                                f"video (the media has none, or the clip starts after it ends)")
        if want - duration > self.config.max_cut_shortfall_s:
            raise media.MediaError("cut_short", f"the cut's video lasts {duration:.2f} s of the clip's "
                                                f"{want:.2f} s ({row['start']:.2f}-{row['end']:.2f} s): the "
                                                f"media ends early")

    def _pictures(self, row: dict, ctx: PartContext, scratch: Path) -> tuple[list[tuple[str, bytes]], dict, float | None]:
        """(the sample's picture members, what they add to its JSON, the clip's video duration)."""
        if not row.get("media_path"):
            raise media.MediaError("no_media", "the clip row has no media_path")
        source = ctx.resolve(row["media_path"])
        if self.config.format == "mp4":
            media.cut(source, row["start"], row["end"], str(scratch), reencode=self.config.reencode)
            return [("mp4", scratch.read_bytes())], {}, media.demuxed_duration(str(scratch))
        frames, times, size, duration = self._frames(source, row["start"], row["end"])
        ext = FRAME_CODECS[self.config.frame_codec]
        files = [(f"{i:03d}.{ext}", encode_image(f, self.config.frame_codec, self.config.frame_quality))
                 for i, f in enumerate(frames)]
        return files, {"frame_times": times, "frame_size": list(size)}, duration

    @staticmethod
    def _frames(source: str, start: float, end: float) -> tuple[list, list[float], tuple[int, int], float | None]:
        """The clip's 2 fps frames resized as the packer resizes them, their times, size and the clip's
        video duration (None: no frame in the clip)."""
        import av

        from training.frames import NoVideo, decode_clip
        from training.vision import clip_frame_size, resize_frames

        try:
            clip = decode_clip(source, start, end, threads=1)
        except NoVideo:
            return [], [], (0, 0), None
        except FileNotFoundError as exc:
            raise media.MediaError("no_media", f"the media file is missing: {exc}") from None
        except (av.error.FFmpegError, OSError) as exc:
            raise media.MediaError("corrupt_media", f"the clip does not decode: {exc}") from None
        if not clip.frames:
            return [], [], (0, 0), None
        size = clip_frame_size(*clip.frames[0].shape[:2], len(clip.frames))
        return list(resize_frames(clip.frames, size)), clip.times, size, clip.video_end - start


def encode_image(frame, codec: str, quality: int) -> bytes:
    """One uint8 RGB frame as JPEG or WebP bytes (deterministic for the same Pillow)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format=codec.upper(), quality=quality)
    return buffer.getvalue()
