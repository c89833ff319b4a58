"""Id rules. Ids never contain dots: WebDataset splits a sample key at its first dot."""
from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qs, urlparse

_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def youtube_id(url: str) -> str | None:
    """The 11-character id of a YouTube URL (or of a bare id), else None."""
    url = url.strip()
    if _YOUTUBE_ID.match(url):
        return url
    parsed = urlparse(url if "//" in url else "https://" + url)
    host = (parsed.hostname or "").removeprefix("www.").removeprefix("m.")
    candidate = None
    if host == "youtu.be":
        candidate = parsed.path.lstrip("/").split("/")[0]
    elif host in ("youtube.com", "music.youtube.com", "youtube-nocookie.com"):
        if parsed.path == "/watch":
            candidate = (parse_qs(parsed.query).get("v") or [None])[0]
        else:
            parts = parsed.path.strip("/").split("/")
            if len(parts) >= 2 and parts[0] in ("shorts", "embed", "live", "v"):
                candidate = parts[1]
    return candidate if candidate and _YOUTUBE_ID.match(candidate) else None


def is_youtube(url: str) -> bool:
    return youtube_id(url) is not None


def youtube_url(video_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}"


def video_id(url: str, given: str | None = None) -> str:
    """A video's id: the source's own id (made safe), else the YouTube id, else a hash of the URL."""
    if given:
        safe = _UNSAFE.sub("_", str(given).strip()).strip("_")
        if safe:
            return safe
    yt = youtube_id(url)
    if yt:
        return yt
    return "u" + hashlib.sha1(url.strip().encode()).hexdigest()[:15]


def clip_id(video: str, start: float, end: float) -> str:
    """`<video id>_<start ms>_<end ms>`: integer milliseconds, so no dot."""
    return f"{video}_{round(start * 1000):08d}_{round(end * 1000):08d}"
