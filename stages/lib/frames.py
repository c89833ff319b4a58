"""Frames of a clip, decoded by the ffmpeg CLI into numpy arrays (uint8).

Where the frames are (`sample_times`): N frames spread evenly over [start, end] are the centres of N
equal slices, t_i = start + (i + 0.5) * (end - start) / N for i = 0..N-1 (neither end of the clip, where a
cut or a title card is likely, is ever a sample). The frame decoded for t_i is the first frame whose
timestamp is >= t_i (seconds from the start of the media, like the clip's word times), the rule of the
2 fps training reader in LIVECC_SPEC section 8.

How (`decode_frames`): one ffmpeg process per clip that opens the media once per sample with a fast
input seek (`-ss t_i -i media`: jump to the keyframe before t_i, decode and drop the frames before t_i),
keeps the first frame of each input (`trim=end_frame=1`), scales it and concatenates the N one-frame
streams into one PPM/PGM pipe. PPM/PGM carry their size in a header, so an aspect-preserving scale
(`height=`) needs no probe. The alternative, `select_command`, decodes every frame from the first target
to the last once and keeps the first frame at or after each target (a `select` filter).
Measured (`python -m bench.talking_head`, 854x480 30 fps h264, keyframe every 2 s, 8 frames of clips of
30-120 s, 2 cores): N seeks in one process 14.9 frames/s, N ffmpeg processes 5.0, select 2.4. On clips
of 4-6 s select wins (120 vs 340 ms a clip): the stage uses it below `select_below` seconds.

A target past the last frame of the media (a clip end that runs past the video, a few ms of rounding)
gives no frame; then the media is probed once and the targets are clamped to its last frame time.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from stages.lib.media import MediaError, _ffmpeg_message


def sample_times(start: float, end: float, n: int) -> list[float]:
    """Centres of `n` equal slices of [start, end] (seconds)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if not (np.isfinite(start) and np.isfinite(end)) or end < start or start < 0:
        raise ValueError(f"bad clip range [{start}, {end}]")
    step = (end - start) / n
    return [start + (i + 0.5) * step for i in range(n)]


@dataclass(frozen=True)
class FrameSpec:
    """What frames a consumer wants: an exact `size` (width, height), or a `height` with the width that
    keeps the display aspect ratio (even); `gray` for one channel (H, W) instead of RGB (H, W, 3)."""

    size: tuple[int, int] | None = None
    height: int | None = None
    gray: bool = False

    def __post_init__(self) -> None:
        if (self.size is None) == (self.height is None):
            raise ValueError("FrameSpec: give exactly one of size=(w, h) or height=h")
        if self.size is not None and (self.size[0] < 2 or self.size[1] < 2):
            raise ValueError("FrameSpec: size must be at least 2x2")
        if self.height is not None and self.height < 2:
            raise ValueError("FrameSpec: height must be >= 2")

    def scale_filter(self) -> str:
        if self.size is not None:
            w, h = self.size
            scale = f"scale={w}:{h}:flags=bicubic"
        else:
            # width from the display aspect ratio (sample aspect ratio applied), rounded to even
            scale = f"scale=-2:{self.height}:flags=bicubic"
        return f"{scale},setsar=1,format={'gray' if self.gray else 'rgb24'}"


@contextmanager
def local_media(path: str) -> Iterator[str]:
    """A path ffmpeg can seek in: local paths and http(s) URLs as they are; other URIs (s3://, gs://...)
    are copied to a temporary file through fsspec."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    scheme = path.split("://", 1)[0] if "://" in path else ""
    if not scheme or scheme in ("http", "https"):
        yield path
        return
    import fsspec

    with tempfile.NamedTemporaryFile(suffix=Path(path).suffix) as tmp:
        with fsspec.open(path, "rb") as src:
            while block := src.read(1 << 22):
                tmp.write(block)
        tmp.flush()
        yield tmp.name


def _ffmpeg(cmd: list[str], timeout: float) -> bytes:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError("decode_timeout", f"ffmpeg took more than {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise MediaError("corrupt_media", _ffmpeg_message(proc.stderr.decode(errors="replace"))
                         or f"ffmpeg exit {proc.returncode}")
    return proc.stdout


_PNM_HEADER = re.compile(rb"(P[56])\s+(\d+)\s+(\d+)\s+(\d+)\s")


def parse_pnm_stream(data: bytes) -> list[np.ndarray]:
    """Concatenated binary PGM (P5) / PPM (P6) images, 8 bit, as uint8 arrays (H, W) / (H, W, 3)."""
    frames, pos = [], 0
    while pos < len(data):
        m = _PNM_HEADER.match(data, pos)
        if not m:
            raise MediaError("corrupt_media", f"unexpected ffmpeg output at byte {pos}")
        kind, w, h, maxval = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        if maxval != 255:
            raise MediaError("corrupt_media", f"unexpected PNM maxval {maxval}")
        channels = 3 if kind == b"P6" else 1
        n = w * h * channels
        start = m.end()
        if start + n > len(data):
            raise MediaError("corrupt_media", "truncated ffmpeg output")
        arr = np.frombuffer(data, dtype=np.uint8, count=n, offset=start)
        frames.append(arr.reshape((h, w, 3) if channels == 3 else (h, w)))
        pos = start + n
    return frames


def _pnm_codec(spec: FrameSpec) -> str:
    return "pgm" if spec.gray else "ppm"


def seek_command(path: str, times: list[float], spec: FrameSpec, threads: int = 1) -> list[str]:
    """One ffmpeg process, one fast input seek per target, the first frame of each, concatenated."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error"]
    for t in times:
        cmd += ["-threads", str(threads), "-ss", f"{t:.6f}", "-an", "-sn", "-dn", "-i", path]
    chains = [f"[{k}:v:0]trim=end_frame=1,setpts=PTS-STARTPTS,{spec.scale_filter()}[v{k}]"
              for k in range(len(times))]
    joined = "".join(f"[v{k}]" for k in range(len(times)))
    graph = ";".join(chains) + f";{joined}concat=n={len(times)}:v=1:a=0[out]"
    return cmd + ["-filter_complex", graph, "-map", "[out]", "-fps_mode", "passthrough",
                  "-threads", str(threads), "-c:v", _pnm_codec(spec), "-f", "image2pipe", "pipe:1"]


def single_seek_command(path: str, t: float, spec: FrameSpec, threads: int = 1) -> list[str]:
    """One ffmpeg process for one target (the baseline of the benchmark, and the fallback)."""
    return ["ffmpeg", "-nostdin", "-v", "error", "-threads", str(threads), "-ss", f"{t:.6f}", "-an", "-sn",
            "-dn", "-i", path, "-frames:v", "1", "-vf", spec.scale_filter(), "-threads", str(threads),
            "-c:v", _pnm_codec(spec), "-f", "image2pipe", "pipe:1"]


def select_command(path: str, times: list[float], spec: FrameSpec, threads: int = 1) -> list[str]:
    """One ffmpeg process that decodes [first target, last target] once and keeps, for each target, the
    first frame at or after it (a `select` filter): the alternative the benchmark compares with."""
    t0 = times[0]
    rel = [t - t0 for t in times]
    # frame kept when some target lies in (previous frame time, this frame time]
    terms = "+".join(f"gte(t,{r:.6f})*lt(prev_t,{r:.6f})" for r in rel[1:])
    # gt(): a frame that serves two targets (both between two frames) is sent once, to the one output;
    # the count then differs and decode_frames falls back to seeks
    expr = "gt(eq(n,0)" + (f"+{terms}" if terms else "") + ",0)"
    return ["ffmpeg", "-nostdin", "-v", "error", "-threads", str(threads), "-ss", f"{t0:.6f}",
            "-t", f"{rel[-1] + 1.0:.6f}", "-an", "-sn", "-dn", "-i", path,
            "-vf", f"select='{expr}',{spec.scale_filter()}", "-fps_mode", "passthrough",
            "-threads", str(threads), "-c:v", _pnm_codec(spec), "-f", "image2pipe", "pipe:1"]


def frame_times(path: str, timeout: float = 60.0) -> tuple[float, float] | None:
    """(last frame time, frame interval) of the first video stream in seconds, from the container's
    stream duration and frame rate; None when unknown."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
           "stream=duration,avg_frame_rate,r_frame_rate:format=duration", "-of", "default=nw=1", "-i", path]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return None
    values: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        values.setdefault(key, value)  # stream entries come first
    try:
        duration = float(values.get("duration", "nan"))
    except ValueError:
        duration = float("nan")
    rate = 0.0
    for key in ("avg_frame_rate", "r_frame_rate"):
        num, _, den = values.get(key, "0/0").partition("/")
        try:
            rate = float(num) / float(den or 1)
        except (ValueError, ZeroDivisionError):
            rate = 0.0
        if rate > 0:
            break
    if not np.isfinite(duration) or rate <= 0:
        return None
    step = 1.0 / rate
    return max(0.0, duration - step), step


METHODS = ("seek", "select")


def decode_frames(path: str, times: list[float], spec: FrameSpec, timeout: float = 300.0,
                  threads: int = 1, method: str = "seek") -> list[np.ndarray]:
    """The first frame at or after each time in `times` (seconds, ascending), as uint8 arrays of `spec`.
    `method`: `seek` (one input seek per time) or `select` (decode from the first time to the last once).

    Raises MediaError (`corrupt_media`, `decode_timeout`, `no_frames`) when the frames cannot be had."""
    if not times:
        return []
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if any(b < a for a, b in zip(times, times[1:])):
        raise ValueError("times must be ascending")
    command = seek_command if method == "seek" else select_command
    with local_media(path) as local:
        frames = parse_pnm_stream(_ffmpeg(command(local, times, spec, threads), timeout))
        if len(frames) == len(times):
            return frames
        # Some target lay past the last frame: clamp the targets to the last frame and decode again.
        last = frame_times(local)
        if last is None:
            raise MediaError("no_frames", f"{len(frames)} of {len(times)} frames decoded and the media "
                                          f"has no readable duration")
        last_t, step = last
        clamped = [min(t, last_t) for t in times]
        frames = parse_pnm_stream(_ffmpeg(seek_command(local, clamped, spec, threads), timeout))
        if len(frames) != len(times):
            # the container's duration over-states the video: one seek per target, stepping back
            frames = []
            for t in clamped:
                got: list[np.ndarray] = []
                for back in range(10):
                    target = max(0.0, t - back * step * 5)
                    got = parse_pnm_stream(_ffmpeg(single_seek_command(local, target, spec, threads), timeout))
                    if got or target == 0.0:
                        break
                if not got:
                    raise MediaError("no_frames", f"no video frame at or after {t:.3f}s")
                frames.append(got[0])
        return frames
