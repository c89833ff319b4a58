"""download: fetch each video's media and one caption track into the run's media folder.

Reads:  the `ok` rows of `metadata_filter` (id, url, title, duration, width, height, language, categories,
        category, captions). `url` is a YouTube URL or id, an http(s) URL (a page yt-dlp understands or a
        direct media file), or a local path / `file://` URL. `captions`, when set, names a captions file
        (path or URL) the source provides: it is used as `captions_kind = "provided"` and yt-dlp is not
        asked for captions.
Adds:   media_path, media_bytes, has_audio, media_duration (seconds of video that really demux, whose
        first frame decodes; `duration` stays the metadata's or container's claim), captions_path,
        captions_kind (manual | automatic | provided), captions_format (json3 | vtt | srt), info_path,
        attempts; fills title, categories, duration, width and height where the row lacked them
        (duration/size from ffprobe of the downloaded file).
Drops:  `no_captions` (no caption track in `caption_langs` x `caption_formats` while `require_captions`;
        decided from the info dict, before the media is downloaded), `no_video` (the file has audio only).
Errors: `<code>: <message>` with code from stages.lib.ytdlp.CODES (private, removed, unavailable,
        not_found, bot_check, age_restricted, geo_blocked, live, http_error, network, unsupported_url,
        download_failed), `corrupt_media: ...` when ffprobe cannot read the file or no video frame can
        be read from it (truncated after its header, garbage data), `bad_captions: ...` for a provided
        captions file of an unknown format. `attempts` says how many tries were made.
Files:  (manifest paths are relative to the run folder: `media/{id}.mp4`; see PartContext.resolve)
        RUN/media/{id}.{ext} (mp4 from yt-dlp, the original extension for local files),
        RUN/media/{id}.{lang}.{json3|vtt|srt}, RUN/media/{id}.info.json (cleaned yt-dlp info plus a
        `_livecc` record of what was chosen). Everything is downloaded into RUN/media/.tmp-{id}/ and
        renamed into place, media after captions and the info JSON last: a killed run never leaves a half
        file under a final name, and a row whose info JSON, media and captions exist (and whose media
        probes) is reused without a request. The temporary folder's name is stable, so yt-dlp continues
        a partial download (`.part`) after a transient failure or a killed run.
Resources: network and disk bound. A part's rows run in `concurrency` threads; the stage asks Ray for
        half a CPU per part (the CPU work is ffprobe, the odd ffmpeg merge and JSON parsing).
Retries: transient failures (HTTP 429/5xx/408, timeouts, connection errors) are retried `retries` times
        with exponential backoff and jitter, or after the server's `Retry-After` (429/503, seconds or an
        HTTP date, capped by `max_retry_after_s`); permanent ones (404, private, removed, ...) fail at once.
Secrets: `cookies_file` is handed to yt-dlp as a private temporary copy; its path and contents, cookie
        and Authorization header values never reach the manifest, the info JSON or the logs. The row's
        `url`/`captions` are redacted in the manifests (pipeline/redact.py): fetches use the full values
        the driver passes in memory (`ctx.full_value`); the info JSON and reasons hold redacted URLs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests import ids
from manifests.schemas import DOWNLOAD
from pipeline.redact import basic_auth
from pipeline.stage import PartContext, Resources, Stage, dropped, error, ok
from stages.lib import media
from stages.lib import ytdlp
from stages.lib.hostgate import GATE, host_of
from stages.lib.ytdlp import DownloadFailure, NoCaptions

log = logging.getLogger(__name__)

MEDIA = "media"  # the run's media folder; manifest paths are relative to the run folder (ctx.resolve)

CAPTION_FORMATS = ytdlp.SUPPORTED_CAPTION_FORMATS
# One row per id at a time in this process: a second row with the same id waits and then reuses the
# first one's files instead of sharing its temporary folder. (Module level: a Stage is pickled to Ray.)
_ID_LOCKS: dict[str, threading.Lock] = {}
_ID_LOCKS_GUARD = threading.Lock()
_EXT_ALIASES = {"json": "json3", "json3": "json3", "vtt": "vtt", "webvtt": "vtt", "srt": "srt"}
_LANG = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Config:
    max_height: int = 480                       # highest video height fetched (smallest above it if none)
    caption_langs: tuple[str, ...] = ytdlp.DEFAULT_CAPTION_LANGS  # regexes over language keys, preferred first
    caption_formats: tuple[str, ...] = ("json3", "vtt", "srt")    # preferred first; the parser reads these
    require_captions: bool = True               # drop a video with no caption track as `no_captions`
    concurrency: int = 4                        # rows of one part downloaded at once (threads)
    retries: int = 3                            # extra tries for transient failures
    backoff_s: float = 1.0                      # first retry delay; doubles each time, with jitter
    socket_timeout_s: float = 30.0
    cookies_file: str | None = None             # Netscape cookies file for yt-dlp (never logged)
    max_retry_after_s: float = 60.0             # a 429/503 Retry-After is honoured up to this long
    # crawling at scale (YouTube): see README "Downloading from YouTube"
    proxies: tuple[str, ...] = ()               # proxy URLs; a row's attempts take them in turn
    host_requests_per_min: float = 0.0          # fetches started per host per minute, per worker (0: no limit)
    slowdown_pause_s: float = 120.0             # after a 429 or a bot check the host rests this long (or Retry-After)
    sleep_s: float = 0.0                        # yt-dlp: sleep before each download (random up to max_sleep_s)
    max_sleep_s: float = 0.0
    sleep_requests_s: float = 0.0               # yt-dlp: sleep between its extraction requests
    rate_limit_bytes: int = 0                   # yt-dlp: bytes/s per download (0: no limit)
    concurrent_fragments: int = 1               # yt-dlp: fragments of one DASH/HLS download fetched at once
    # yt-dlp --extractor-args, e.g. "youtube:player_client=web_safari;po_token=$PO_TOKEN": a value written
    # $NAME or ${NAME} is read from that environment variable (kept out of config.yaml and logs)
    extractor_args: tuple[str, ...] = ()
    js_runtime: str = ""                        # deno binary for YouTube's player JS; empty: the deno package's

    def __post_init__(self) -> None:
        if self.max_height < 1:
            raise ValueError("max_height must be >= 1 (e.g. 480)")
        if not self.caption_langs:
            raise ValueError("caption_langs must name at least one language, e.g. [en, 'en-.*']")
        for pattern in self.caption_langs:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"caption_langs: {pattern!r} is not a regular expression ({exc})") from None
        bad = [f for f in self.caption_formats if f not in CAPTION_FORMATS]
        if bad or not self.caption_formats:
            raise ValueError(f"caption_formats {list(self.caption_formats)}: use some of {list(CAPTION_FORMATS)}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.backoff_s < 0:
            raise ValueError("backoff_s must be >= 0")
        if self.socket_timeout_s <= 0:
            raise ValueError("socket_timeout_s must be > 0")
        if self.max_retry_after_s < 0:
            raise ValueError("max_retry_after_s must be >= 0")
        for name in ("host_requests_per_min", "slowdown_pause_s", "sleep_s", "max_sleep_s", "sleep_requests_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_sleep_s and self.max_sleep_s < self.sleep_s:
            raise ValueError("max_sleep_s must be >= sleep_s (or 0)")
        if self.rate_limit_bytes < 0 or self.concurrent_fragments < 1:
            raise ValueError("rate_limit_bytes must be >= 0 and concurrent_fragments >= 1")
        for proxy in self.proxies:
            if urllib.parse.urlparse(proxy).scheme not in ("http", "https", "socks4", "socks4a", "socks5", "socks5h"):
                raise ValueError("proxies: each must be a URL such as http://host:3128 or socks5://host:1080")
        ytdlp.parse_extractor_args(self.extractor_args)

    def __repr__(self) -> str:  # keep the cookies path, proxy credentials and PO tokens out of logs
        secret = ("cookies_file", "proxies", "extractor_args")
        fields = {k: v for k, v in self.__dict__.items() if k not in secret}
        fields.update({k: "<set>" if getattr(self, k) else getattr(self, k) for k in secret})
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


class _Placed:
    """What a finished attempt left in the temporary folder."""

    def __init__(self, media_path: Path, info: dict, captions_path: Path | None = None,
                 captions_lang: str | None = None, captions_kind: str | None = None,
                 captions_format: str | None = None) -> None:
        self.media_path = media_path
        self.info = info
        self.captions_path = captions_path
        self.captions_lang = captions_lang
        self.captions_kind = captions_kind
        self.captions_format = captions_format
        self.from_row = False  # the captions came from the row's `captions` column


class _Dropped(Exception):
    """The row is dropped with `reason` (no retry)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Failed(_Dropped):
    """The row is an error with `reason` (no retry)."""


class Download(Stage):
    name = "download"
    Config = Config
    schema = DOWNLOAD
    version = 1
    needs_secrets = True   # fetches use the full url/captions (ctx.full_value); manifests hold redacted ones

    # ------------------------------------------------------------------------------------ contract
    def resources(self) -> Resources:
        # I/O bound: threads inside a part do the waiting; half a CPU lets two parts share a core.
        return Resources(cpus=0.5)

    def check(self) -> None:
        media.require_binaries("ffprobe", "ffmpeg")
        try:
            import yt_dlp  # noqa: F401
        except ImportError:
            raise ValueError("the download stage needs yt-dlp: pip install yt-dlp") from None
        unset = [name for name in self.secret_env() if not os.environ.get(name)]
        if unset:
            raise ValueError(f"download.extractor_args reads ${', $'.join(unset)} from the environment, which is not "
                             f"set: export it before the run")
        cookies = self.config.cookies_file
        if cookies:
            path = Path(os.path.expanduser(cookies))
            if not path.is_file():
                raise ValueError("download.cookies_file does not exist or is not a file")
            if not os.access(path, os.R_OK):
                raise ValueError("download.cookies_file is not readable")

    def threads(self) -> int:
        return self.config.concurrency

    def secret_env(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.group(1) or m.group(2) for item in self.config.extractor_args
                                   for m in _ENV_REF.finditer(item)))

    def _with_secrets(self, ctx: PartContext) -> Config:
        """The config with `$NAME` references in extractor_args replaced by their values."""
        if not self.config.extractor_args:
            return self.config

        def value(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            return ctx.env_secrets.get(name) or os.environ.get(name, "")

        args = tuple(_ENV_REF.sub(value, item) for item in self.config.extractor_args)
        return dataclasses.replace(self.config, extractor_args=args)

    def process_row(self, row: dict, ctx: PartContext) -> dict:
        media_dir = self._media_dir(ctx)
        key = str(media_dir / str(row["id"]))
        with _ID_LOCKS_GUARD:
            lock = _ID_LOCKS.setdefault(key, threading.Lock())
        with lock:
            return self._row(row, ctx, media_dir)

    # ------------------------------------------------------------------------------------ one row
    @staticmethod
    def _media_dir(ctx: PartContext) -> Path:
        run_dir = ctx.run_dir.removeprefix("file://")
        if "://" in run_dir:
            raise ValueError(f"download needs a run folder on a local or shared filesystem, not {run_dir}")
        path = Path(run_dir) / MEDIA
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _row(self, row: dict, ctx: PartContext, media_dir: Path) -> dict:
        cfg = self.config
        vid = row["id"]
        url = (row.get("url") or "").strip()
        if not url:
            return error(row, "unsupported_url: the row has no url", attempts=0)

        reused = self._reuse(row, ctx, media_dir)
        if reused is not None:
            return reused

        tmp = media_dir / f".tmp-{vid}"
        attempts = 0
        placed: _Placed | None = None
        full_url = ctx.full_value(row, "url").strip()
        if _local_path(full_url) is None and "://" in full_url:
            host = host_of(full_url)                    # fetches are paced per host (stages/lib/hostgate.py)
        else:
            host = "youtube.com" if _local_path(full_url) is None and ids.is_youtube(full_url) else ""
        while True:
            attempts += 1
            if host:
                GATE.wait(host, cfg.host_requests_per_min)
            proxy = cfg.proxies[(zlib.crc32(vid.encode()) + attempts) % len(cfg.proxies)] if cfg.proxies else None
            try:
                placed = self._fetch(row, full_url, tmp, ctx, proxy)
                break
            except _Dropped as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                make = error if isinstance(exc, _Failed) else dropped
                return make(row, exc.reason, attempts=attempts)
            except DownloadFailure as exc:
                slow_down = exc.code == "bot_check" or exc.retry_after is not None or \
                    bool(re.search(r"\b429\b", exc.message))
                if host and slow_down:      # every row bound for this host waits, not only this one
                    pause = cfg.slowdown_pause_s if exc.retry_after is None else \
                        min(exc.retry_after, cfg.max_retry_after_s)
                    GATE.pause(host, pause)
                    log.warning("download: %s asked to slow down (%s): no fetch from it for %.0fs",
                                host, exc.code, pause)
                if exc.transient and attempts <= cfg.retries:
                    delay = 0.0 if host and slow_down else self._backoff(attempts, exc.retry_after)
                    log.info("download %s: %s (attempt %d, retry in %.1fs)", vid, exc.code, attempts, delay)
                    time.sleep(delay)
                    continue
                if not exc.transient:  # a transient failure keeps its partial file for the next run
                    shutil.rmtree(tmp, ignore_errors=True)
                log.info("download %s failed: %s: %s", vid, exc.code, exc.short())
                return error(row, f"{exc.code}: {exc.short()}", attempts=attempts)

        try:
            probe = media.probe(str(placed.media_path))
        except media.MediaError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            return error(row, f"{exc}", attempts=attempts)
        if not probe.has_video:
            shutil.rmtree(tmp, ignore_errors=True)
            return dropped(row, "no_video: the file has an audio stream only", attempts=attempts)
        try:  # the container's duration can claim far more than the file holds (a truncated download)
            media_duration = media.decodable_duration(str(placed.media_path))
        except media.MediaError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            return error(row, f"{exc}", attempts=attempts)

        final = self._place(vid, placed, media_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        return self._ok_row(row, ctx, final, probe, placed.info, attempts, media_duration)

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:   # the server said how long (429/503 Retry-After), within reason
            return min(retry_after, self.config.max_retry_after_s)
        base = self.config.backoff_s * (2 ** (attempt - 1))
        return min(60.0, base * random.uniform(0.5, 1.0))

    # ------------------------------------------------------------------------------------ fetching
    def _fetch(self, row: dict, url: str, tmp: Path, ctx: PartContext, proxy: str | None = None) -> _Placed:
        """One attempt: everything lands in `tmp`. Raises DownloadFailure or _Dropped. `url` and the
        captions are the full values (credentials included): messages quote them redacted."""
        cfg = self.config
        vid = row["id"]
        tmp.mkdir(parents=True, exist_ok=True)
        provided = (ctx.full_value(row, "captions") or "").strip() or None
        local = _local_path(url)

        captions: tuple[Path, str, str] | None = None  # (path, lang, format) of provided captions
        if local is not None and not local.is_file():
            raise DownloadFailure("not_found", f"no such file: {url}")
        if provided:
            captions = self._fetch_provided_captions(row, provided, tmp, ctx)
        elif local is not None:
            captions = _sidecar_captions(local, row, cfg)

        if local is not None:
            if captions is None and cfg.require_captions:
                raise _Dropped(f"no_captions: no captions given and no {'/'.join(cfg.caption_formats)} "
                               f"file beside {local.name}")
            dest = tmp / f"{vid}{local.suffix.lower() or '.mp4'}"
            _link_or_copy(local, dest)
            info = {"id": vid, "title": row.get("title") or local.stem, "source": "local",
                    "original_name": local.name, "filesize": dest.stat().st_size}
            placed = _Placed(dest, info)
        else:
            target = ids.youtube_url(ids.youtube_id(url)) if ids.is_youtube(url) else url
            if urllib.parse.urlparse(target).scheme not in ("http", "https"):
                raise DownloadFailure("unsupported_url",
                                      f"not a URL, YouTube id or existing file: {ctx.redact_url(url)[:100]}")
            try:
                got = ytdlp.download(target, tmp, vid, self._with_secrets(ctx), captions=provided is None, proxy=proxy)
            except NoCaptions as exc:
                raise _Dropped(f"no_captions: {exc}") from None
            placed = _Placed(got.video_path, ytdlp.clean_info(got.info, ctx.redact_params), got.captions_path,
                             got.captions_lang, got.captions_kind, got.captions_format)
            placed.info["source"] = "youtube" if ids.is_youtube(url) else "http"

        if captions is not None:
            placed.captions_path, placed.captions_lang, placed.captions_format = captions
            placed.captions_kind = "provided"
            placed.from_row = provided is not None
        elif placed.captions_path is None and cfg.require_captions:
            raise _Dropped("no_captions: none offered")
        return placed

    def _fetch_provided_captions(self, row: dict, where: str, tmp: Path,
                                 ctx: PartContext) -> tuple[Path, str, str]:
        vid = row["id"]
        name = urllib.parse.unquote(urllib.parse.urlparse(where).path) if "://" in where else where
        fmt, lang = _caption_name_parts(Path(name).name, row)
        if fmt is None:
            raise _Failed(f"bad_captions: {Path(name).suffix or 'no'} extension; "
                          f"captions must be {'/'.join(CAPTION_FORMATS)}")
        dest = tmp / f"{vid}.{lang}.{fmt}"
        local = _local_path(where)
        if local is not None:
            if not local.is_file():
                raise DownloadFailure("not_found", f"captions file not found: {where}")
            _link_or_copy(local, dest)
            return dest, lang, fmt
        if urllib.parse.urlparse(where).scheme not in ("http", "https"):
            raise DownloadFailure("unsupported_url",
                                  f"captions: not a URL or existing file: {ctx.redact_url(where)[:100]}")
        part = dest.with_name(dest.name + ".part")
        try:
            target, auth = basic_auth(where)   # urllib does not read user:password@ from a URL
            headers = {"User-Agent": "livecc-dataset-builder", **({"Authorization": auth} if auth else {})}
            request = urllib.request.Request(target, headers=headers)
            with urllib.request.urlopen(request, timeout=self.config.socket_timeout_s) as response, \
                    open(part, "wb") as f:
                shutil.copyfileobj(response, f)
        except Exception as exc:
            part.unlink(missing_ok=True)
            failure = ytdlp.failure_from_exception(exc)
            raise DownloadFailure(failure.code, f"captions: {ctx.redact(failure.message)}", failure.transient,
                                  failure.retry_after) from None
        os.replace(part, dest)
        return dest, lang, fmt

    # ------------------------------------------------------------------------------------ placing
    def _place(self, vid: str, placed: _Placed, media_dir: Path) -> dict:
        """Rename the finished files into place, captions first, media next, the info JSON last."""
        record: dict[str, Any] = {"media": None, "captions": None, "captions_lang": placed.captions_lang,
                                  "captions_kind": placed.captions_kind,
                                  "captions_format": placed.captions_format,
                                  "captions_from_row": placed.from_row, "downloaded_at": time.time()}
        if placed.captions_path is not None:
            name = f"{vid}.{placed.captions_lang}.{placed.captions_format}"
            os.replace(placed.captions_path, media_dir / name)
            record["captions"] = name
        name = f"{vid}{placed.media_path.suffix or '.mp4'}"
        os.replace(placed.media_path, media_dir / name)
        record["media"] = name
        info = {**ytdlp.clean_info(placed.info), "_livecc": record}
        _write_json_atomic(media_dir / f"{vid}.info.json", info)
        return {"info": info, "record": record}

    def _reuse(self, row: dict, ctx: PartContext, media_dir: Path) -> dict | None:
        """The row from files a previous run finished, or None when something is missing or unreadable."""
        vid = row["id"]
        info_file = media_dir / f"{vid}.info.json"
        try:
            info = json.loads(info_file.read_text())
            record = info["_livecc"]
            media_file = media_dir / record["media"]
            captions = record.get("captions")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not media_file.is_file() or (captions and not (media_dir / captions).is_file()):
            return None
        if captions is None and self.config.require_captions:
            return None
        if bool((row.get("captions") or "").strip()) != bool(record.get("captions_from_row")):
            return None  # the source now gives (or no longer gives) its own captions
        try:
            probe = media.probe(str(media_file))
        except media.MediaError:
            return None
        if not probe.has_video:
            return None
        try:
            media_duration = media.decodable_duration(str(media_file))
        except media.MediaError:
            return None  # fetched again: the fresh file is checked (and reported) like any other
        return self._ok_row(row, ctx, {"info": info, "record": record}, probe, info, attempts=0,
                            media_duration=media_duration)

    def _ok_row(self, row: dict, ctx: PartContext, final: dict, probe: media.MediaInfo, info: dict,
                attempts: int, media_duration: float) -> dict:
        record = final["record"]
        vid = row["id"]
        media_dir = self._media_dir(ctx)
        fields: dict[str, Any] = {
            "media_path": f"{MEDIA}/{record['media']}",
            "media_bytes": (media_dir / record["media"]).stat().st_size,
            "has_audio": probe.has_audio,
            "captions_path": f"{MEDIA}/{record['captions']}" if record.get("captions") else None,
            "captions_kind": record.get("captions_kind") if record.get("captions") else None,
            "captions_format": record.get("captions_format") if record.get("captions") else None,
            "info_path": f"{MEDIA}/{vid}.info.json",
            "attempts": attempts,
            "media_duration": media_duration,
        }
        if row.get("duration") is None:
            fields["duration"] = probe.duration if probe.duration is not None else _num(info.get("duration"))
        if row.get("width") is None:
            fields["width"] = probe.width
        if row.get("height") is None:
            fields["height"] = probe.height
        if not row.get("title") and info.get("title"):
            fields["title"] = str(info["title"])
        if not row.get("categories") and isinstance(info.get("categories"), list):
            fields["categories"] = [str(c) for c in info["categories"]]
        return ok(row, **fields)


# ---------------------------------------------------------------------------------------------- helpers

def _num(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _local_path(url: str) -> Path | None:
    """The local path a row's url names, or None for YouTube ids and http(s) URLs."""
    if url.startswith("file://"):
        parsed = urllib.parse.urlparse(url)
        return Path(urllib.parse.unquote(parsed.path))
    scheme = urllib.parse.urlparse(url).scheme
    if scheme and not re.fullmatch(r"[A-Za-z]", scheme):  # a Windows drive letter is not a scheme
        return None
    path = Path(os.path.expanduser(url))
    if ids.is_youtube(url) and not path.exists():
        return None
    return path


def _caption_name_parts(name: str, row: dict) -> tuple[str | None, str]:
    """(format, lang) of a captions file name like `talk.en.vtt`; lang falls back on the row's language."""
    parts = name.split(".")
    fmt = _EXT_ALIASES.get(parts[-1].lower()) if len(parts) > 1 else None
    lang = parts[-2] if len(parts) > 2 and _LANG.match(parts[-2]) else None
    lang = lang or (row.get("language") or "").strip() or "und"
    lang = re.sub(r"[^A-Za-z0-9_-]", "_", lang)
    return fmt, lang


def _sidecar_captions(local: Path, row: dict, cfg: Config) -> tuple[Path, str, str] | None:
    """Captions beside a local media file: `NAME.LANG.EXT` in an accepted language (or `NAME.EXT`)."""
    if not local.parent.is_dir():
        return None
    patterns = [re.compile(p, re.I) for p in cfg.caption_langs]
    best: tuple[int, int, Path, str, str] | None = None
    stem = local.stem
    for candidate in local.parent.iterdir():
        if candidate == local or not candidate.name.startswith(stem + ".") or not candidate.is_file():
            continue
        middle = candidate.name[len(stem) + 1:]
        pieces = middle.split(".")
        fmt = _EXT_ALIASES.get(pieces[-1].lower())
        if fmt not in cfg.caption_formats:
            continue
        if len(pieces) == 1:
            lang, rank = (row.get("language") or "und"), len(patterns)
        elif len(pieces) == 2:
            lang = pieces[0]
            rank = next((i for i, p in enumerate(patterns) if p.fullmatch(lang)), None)
            if rank is None:
                continue
        else:
            continue
        key = (rank, cfg.caption_formats.index(fmt))
        if best is None or key < best[:2]:
            best = (*key, candidate, lang, fmt)
    if best is None:
        return None
    return best[2], re.sub(r"[^A-Za-z0-9_-]", "_", best[3]), best[4]


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link `src` to `dest` when both are on one filesystem, else copy; `dest` appears whole."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str, ensure_ascii=False))
    os.replace(tmp, path)
