"""Id rules. Ids never contain dots: WebDataset splits a sample key at its first dot."""
from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qs, urlparse

_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# A video id is at most this long: a clip id adds 18 characters (and rarely `_N`), a shard member
# `.json`, and USTAR tar headers hold 100 bytes; file names (`{id}.info.json`) stay far below 255.
MAX_ID = 64
_HASH_CHARS = 12
# Ids that were cleaned or cut end in `--` and a hash of the original; an id that merely looks like
# one is hashed too, so two different source ids never map to the same id.
_HASHED = re.compile(r"--[0-9a-f]{%d}$" % _HASH_CHARS)


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


def safe_id(text: str) -> str:
    """`text` itself when it is already a safe id (letters, digits, `_`, `-`; no leading `-`, which
    ffmpeg and yt-dlp would read as an option; at most MAX_ID characters); otherwise its safe
    characters, cut, plus `--` and a hash of the whole original. Different texts never share an id
    (up to a 48-bit hash collision)."""
    if (len(text) <= MAX_ID and _SAFE.fullmatch(text) and not text.startswith("-")
            and not _HASHED.search(text)):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    prefix = _UNSAFE.sub("_", text).strip("-_")[: MAX_ID - _HASH_CHARS - 2].rstrip("-_")
    return f"{prefix or 'id'}--{digest}"


def video_id(url: str, given: str | None = None) -> str:
    """A video's id: the source's own id (made safe), else the YouTube id, else a hash of the URL."""
    if given is not None and given != "":
        return safe_id(str(given))
    yt = youtube_id(url)
    if yt:
        return safe_id(yt)
    return "u" + hashlib.sha1(url.strip().encode()).hexdigest()[:15]


def clip_id(video: str, start: float, end: float) -> str:
    """`<video id>_<start ms>_<end ms>`: integer milliseconds, so no dot."""
    return f"{video}_{round(start * 1000):08d}_{round(end * 1000):08d}"
