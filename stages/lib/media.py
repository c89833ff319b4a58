"""ffprobe and ffmpeg through their command lines (PyAV returned no audio for AC-3 here)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np


class MediaError(Exception):
    """The media could not be read: `code` is the reason code for the manifest."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class MediaInfo:
    duration: float | None
    width: int | None
    height: int | None
    has_video: bool
    has_audio: bool


def _ffmpeg_message(stderr: str) -> str:
    """ffmpeg's last words, without per-process pointers (`[mov,mp4 @ 0x55...]`), so equal
    failures give equal reasons."""
    return re.sub(r"\[[^\]]* @ 0x[0-9a-f]+\] ?", "", " ".join(stderr.split()))[-200:]


def ffmpeg_output(cmd: list[str], timeout: float, stream: str) -> bytes:
    """What an ffmpeg command that decodes one `stream` ("audio" or "video") writes to stdout; failures
    as MediaError with the manifest's reason code: `no_media` (no such file), `no_audio`/`no_video`
    (the media has no such stream), `decode_timeout`, `corrupt_media`."""
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError("decode_timeout", f"ffmpeg took more than {timeout:.0f}s") from None
    if proc.returncode == 0:
        return proc.stdout
    detail = _ffmpeg_message(proc.stderr.decode("utf-8", "replace")) or f"ffmpeg exit {proc.returncode}"
    if "No such file" in detail:
        raise MediaError("no_media", "the media file is missing")
    if "matches no streams" in detail:
        raise MediaError(f"no_{stream}", f"the media has no {stream} stream")
    raise MediaError("corrupt_media", f"the {stream} does not decode: {detail}")


def require_binaries(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} not found on PATH: install the Debian package ffmpeg "
                         f"(`make setup` does it)")


def probe(path_or_url: str, timeout: float = 60.0) -> MediaInfo:
    # `-i`: a path starting with `-` is an input, never an option
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", "-i", path_or_url]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError("probe_timeout", f"ffprobe took more than {timeout:.0f}s") from None
    if proc.returncode != 0:
        detail = _ffmpeg_message(proc.stderr) or f"ffprobe exit {proc.returncode}"
        raise MediaError("corrupt_media", detail)
    data = json.loads(proc.stdout or "{}")
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise MediaError("corrupt_media", "no audio or video stream")
    duration = data.get("format", {}).get("duration") or (video or audio or {}).get("duration")
    return MediaInfo(
        duration=float(duration) if duration not in (None, "N/A") else None,
        width=int(video["width"]) if video and video.get("width") else None,
        height=int(video["height"]) if video and video.get("height") else None,
        has_video=video is not None,
        has_audio=audio is not None,
    )


def cut(src: str, start: float, end: float, dest: str, reencode: bool = True, timeout: float = 600.0) -> None:
    """Cut [start, end] of `src` into `dest` (mp4). Re-encoding gives frame-exact cuts; stream copy is
    fast but starts at the keyframe before `start`."""
    duration = max(0.0, end - start)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{start:.3f}", "-i", src, "-t", f"{duration:.3f}"]
    if reencode:
        cmd += ["-map", "0:v:0?", "-map", "0:a:0?", "-c:v", "libx264", "-preset", "veryfast", "-crf", "28",
                "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k"]
    else:
        cmd += ["-c", "copy"]
    cmd += ["-movflags", "+faststart", "-f", "mp4", dest]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise MediaError("cut_failed", _ffmpeg_message(proc.stderr))


def _video_packet_span(path: str, timeout: float) -> tuple[float, float | None]:
    """(the file's start time, the end of the last video packet that can really be read, counted from
    that start; None: no packet).

    The packets are demuxed, not decoded: a container whose index claims more than the file holds
    (a faststart mp4 cut short, an mkv or MPEG-TS cut short) yields packets only up to the cut, where
    the container's own duration field still claims the whole length. The end is the largest
    pts + duration (pts, not dts: with B-frames the last packet in file order is not the last shown).
    Times are on the file's timeline: minus the format's start time (MPEG-TS starts at ~1.4 s), as
    `ffmpeg -ss` and players count. `V` skips cover-art pictures."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "V:0",
           "-show_entries", "packet=pts_time,duration_time:format=start_time", "-of", "csv", "-i", path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError("probe_timeout", f"ffprobe took more than {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise MediaError("corrupt_media", _ffmpeg_message(proc.stderr) or f"ffprobe exit {proc.returncode}")
    first = last = None
    file_start = None
    for line in proc.stdout.splitlines():
        fields = line.split(",")
        if fields[0] == "format" and len(fields) > 1:
            file_start = _seconds(fields[1])
        elif fields[0] == "packet" and len(fields) > 2:
            pts = _seconds(fields[1])
            if pts is None:
                continue
            end = pts + (_seconds(fields[2]) or 0.0)
            first = pts if first is None else min(first, pts)
            last = end if last is None else max(last, end)
    start = file_start if file_start is not None else (first or 0.0)
    return start, (None if last is None else last - start)


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:  # N/A
        return None
    return value if np.isfinite(value) else None


def first_frame_decodes(path: str, timeout: float = 60.0) -> bool:
    """Whether the first video frame decodes: a file with a valid header and garbage data demuxes its
    packets fine but yields no picture. The frame is scaled to 8x8 grey so that reading it costs nothing."""
    cmd = ["ffmpeg", "-nostdin", "-v", "quiet", "-i", path, "-map", "0:V:0", "-frames:v", "1",
           "-vf", "scale=8:8", "-pix_fmt", "gray", "-f", "rawvideo", "pipe:1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError("probe_timeout", f"ffmpeg took more than {timeout:.0f}s to decode one frame") from None
    return len(proc.stdout) == 64


def demuxed_duration(path: str, timeout: float = 120.0) -> float | None:
    """Seconds of the file's timeline covered by the video packets that can be read (None: none can)."""
    _, end = _video_packet_span(path, timeout)
    return None if end is None else round(end, 3)


def decodable_duration(path: str, timeout: float = 120.0, check_decode: bool = True) -> float:
    """Seconds of the file's timeline that its first video stream really covers (the end of the last
    video packet that can be read), whatever the container claims. Raises MediaError("corrupt_media")
    when no video packet can be read or (check_decode) the first frame does not decode.
    Cost: one demux pass without decoding plus one decoded frame; a 10-minute 480p mp4 (30 fps):
    ~0.45 s of ffprobe/ffmpeg CPU, 0.6-0.8 s wall on a busy 2-core machine. (`ffmpeg -c copy -f null
    -progress` demuxes faster but reports the last dts: short of the end by the B-frame delay.)"""
    end = demuxed_duration(path, timeout)
    if end is None or end <= 0:
        raise MediaError("corrupt_media", "no video packet can be read (the file holds no media data)")
    if check_decode and not first_frame_decodes(path, timeout):
        raise MediaError("corrupt_media", "the first video frame does not decode")
    return end


def within_media(start: np.ndarray, end: np.ndarray, media_duration: float | np.ndarray | None,
                 tolerance_s: float) -> np.ndarray:
    """Keep mask of words that are not past the media: a word is past it when it ends (its latest
    time: end, or start when end is missing or earlier) after `media_duration + tolerance_s`.
    `media_duration` is one value or one per word; an unknown one (None, NaN) keeps the word."""
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    limit = np.asarray(np.nan if media_duration is None else media_duration, dtype=np.float64) + tolerance_s
    latest = np.fmax(start, end)  # fmax: a NaN end falls back on the start
    return ~(latest > limit)      # a NaN limit compares false: kept
