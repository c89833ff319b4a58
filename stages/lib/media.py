"""ffprobe and ffmpeg through their command lines (PyAV returned no audio for AC-3 here)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass


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


def require_binaries(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} not found on PATH: install the Debian package ffmpeg "
                         f"(`make setup` does it)")


def probe(path_or_url: str, timeout: float = 60.0) -> MediaInfo:
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", path_or_url]
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
