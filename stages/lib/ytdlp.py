"""A thin layer over yt-dlp's Python API: error classification, caption choice, one download.

- `classify(message)` maps a yt-dlp / YouTube error message to an enumerated code and whether a retry
  may help (`transient`).
- `choose_captions(info, langs, formats)` picks one caption track from an info dict *before* anything is
  downloaded: manual captions over automatic ones, the original-language ASR track over machine
  translations, the first accepted format in the given order.
- `fetch_info(url)` extracts the info dict without downloading; `download(url, dest_dir, video_id, cfg)`
  downloads the media (height capped, merged to mp4) and the chosen caption track into `dest_dir`.

Retries are the caller's job: yt-dlp's own retries are kept low so that one slow video does not hide
behind minutes of silent retrying. Secrets stay out: a cookies file is copied to a private temporary
file per call (yt-dlp writes the cookie jar back on close, which is not safe under concurrency), the
info dict loses every `cookies` / `http_headers` field, and messages are scrubbed of `Cookie:` and
`Authorization:` values; URLs in messages and in the cleaned info dict are redacted (pipeline/redact.py).
`failure_from_exception` keeps a 429/503's `Retry-After` (yt-dlp's or urllib's HTTPError) as
`DownloadFailure.retry_after`.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pipeline.redact import DEFAULT_PARAMS, redact_obj, redact_text

log = logging.getLogger(__name__)

CODES = ("private", "removed", "unavailable", "not_found", "bot_check", "age_restricted", "geo_blocked",
         "live", "http_error", "network", "unsupported_url", "download_failed")
# Caption formats the caption parser reads; yt-dlp offers more (srv1-3, ttml) that it does not.
SUPPORTED_CAPTION_FORMATS = ("json3", "vtt", "srt")
DEFAULT_CAPTION_LANGS = ("en", "en-.*")
MANUAL, AUTOMATIC = "manual", "automatic"


class DownloadFailure(Exception):
    """A video could not be fetched: `code` is one of CODES, `transient` says whether a retry may help."""

    def __init__(self, code: str, message: str, transient: bool = False,
                 retry_after: float | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown download failure code {code!r}")
        super().__init__(message)
        self.code = code
        self.transient = transient
        self.message = message
        self.retry_after = retry_after   # seconds the server asked to wait (429/503 Retry-After)

    def short(self, limit: int = 200) -> str:
        return shorten(self.message, limit)


class NoCaptions(Exception):
    """No caption track in an accepted language and format; the message lists what there was."""


@dataclass
class DownloadedMedia:
    video_path: Path
    info: dict
    captions_path: Path | None = None
    captions_lang: str | None = None
    captions_kind: str | None = None      # manual | automatic
    captions_format: str | None = None    # json3 | vtt | srt
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# error classification

_SECRET = re.compile(r"(?i)\b(authorization|cookie|set-cookie|proxy-authorization)(\s*[:=]\s*)[^\n,;]*(?:;[^\n,]*)*")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def scrub(text: str) -> str:
    """Remove credentials that could ride along in a message (header values, URLs' userinfo and
    secret query parameters with the default list; the run's own list is applied again on
    everything a worker writes)."""
    text = _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", _ANSI.sub("", text))
    return redact_text(text)


def shorten(message: str, limit: int = 200) -> str:
    text = " ".join(scrub(message).split())
    text = re.sub(r"^ERROR:\s*", "", text)
    # "See https://github.com/yt-dlp/..." and "Use --cookies ..." hints are noise in a manifest.
    text = re.sub(r"\s*(Use --cookies-from-browser|See  ?https://github\.com/yt-dlp).*$", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Order matters: the first rule that matches wins.
_RULES: list[tuple[str, bool, re.Pattern]] = [(code, transient, re.compile(pattern, re.I)) for code, transient, pattern in [
    ("unsupported_url", False, r"unsupported url"),
    # YouTube's per-session rate limit ("This content isn't available, try again later"): an anti-abuse
    # block that lasts up to an hour; retrying within seconds does not help.
    ("bot_check", False, r"not a bot|captcha|content isn.t available, try again later|rate-limited by youtube"),
    ("age_restricted", False, r"confirm your age|age[- ]restricted|inappropriate for some users|age_(verification|check)_required"),
    ("geo_blocked", False, r"not (made this video )?available in your country|not available from your location|"
                           r"geo[- ]?restrict|blocked it in your country"),
    ("private", False, r"private video|video is private|members[- ]only|available to this channel.s members|"
                       r"granted access to this video"),
    ("removed", False, r"has been removed|account associated with this video has been terminated|"
                       r"no longer available (because|due to)|copyright (claim|grounds)|violat\w+ youtube"),
    ("live", False, r"live event will begin|premieres? in|premiere will begin|waiting for scheduled stream|"
                    r"this live event|live stream (is )?offline|is (currently )?live\b|is_upcoming"),
    ("unavailable", False, r"video unavailable|video is (not available|unavailable)|video is no longer available|"
                           r"this video is not available|content isn.t available"),
]]
_HTTP = re.compile(r"HTTP Error (\d{3})")
_NETWORK = re.compile(
    r"timed? ?out|timeout|connection (refused|reset|aborted)|remote end closed|remotedisconnected|"
    r"incompleteread|incomplete read|temporary failure in name resolution|name or service not known|"
    r"network is unreachable|no route to host|eof occurred in violation|did not get any data blocks|"
    r"content too short|bytes, expected \d+|bytes read, \d+ more expected|broken pipe|errno 10[45]|errno 111|errno 110|"
    r"unable to connect|connectionerror|transporterror|ssl: ", re.I)


def classify(message: str) -> tuple[str, bool]:
    """(code, transient) for a yt-dlp or YouTube error message. 429, 5xx, 408, timeouts and connection
    errors are transient; everything else is permanent."""
    text = message or ""
    for code, transient, pattern in _RULES:
        if pattern.search(text):
            return code, transient
    http = _HTTP.search(text)
    if http:
        status = int(http.group(1))
        if status in (404, 410):
            return "not_found", False
        return "http_error", status in (408, 429) or 500 <= status <= 599
    if _NETWORK.search(text):
        return "network", True
    return "download_failed", False


def _exception_chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        exc_info = getattr(cur, "exc_info", None)  # yt_dlp.utils.DownloadError
        if isinstance(exc_info, tuple) and len(exc_info) > 1 and isinstance(exc_info[1], BaseException):
            todo.append(exc_info[1])
        for attr in ("orig_msg_cause", "cause", "__cause__", "__context__"):
            nxt = getattr(cur, attr, None)
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def parse_retry_after(value: Any, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date; None when unreadable."""
    import email.utils
    import time

    if value is None:
        return None
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after(exc: BaseException) -> float | None:
    """The Retry-After of an HTTP 429/503 anywhere in `exc`'s chain (yt-dlp's or urllib's HTTPError)."""
    import urllib.error

    try:
        from yt_dlp.networking.exceptions import HTTPError as YtdlpHTTPError
    except ImportError:  # urllib alone (provided captions) needs no yt-dlp
        YtdlpHTTPError = ()  # noqa: N806
    for cur in _exception_chain(exc):
        if isinstance(cur, YtdlpHTTPError):
            status, headers = cur.status, getattr(cur.response, "headers", None)
        elif isinstance(cur, urllib.error.HTTPError):
            status, headers = cur.code, cur.headers
        else:
            continue
        if status in (429, 503) and headers is not None:
            return parse_retry_after(headers.get("Retry-After"))
        return None
    return None


def failure_from_exception(exc: BaseException) -> DownloadFailure:
    """A DownloadFailure for any exception yt-dlp raised: the message first, then the exception types."""
    if isinstance(exc, DownloadFailure):
        return exc
    failure = _failure(exc)
    failure.retry_after = retry_after(exc) if failure.transient else None
    return failure


def _failure(exc: BaseException) -> DownloadFailure:
    message = str(exc) or type(exc).__name__
    code, transient = classify(message)
    if code == "download_failed":
        from yt_dlp.networking.exceptions import HTTPError, TransportError
        from yt_dlp.utils import GeoRestrictedError, UnsupportedError
        for cur in _exception_chain(exc):
            if isinstance(cur, HTTPError):
                code, transient = classify(f"HTTP Error {cur.status}")
                break
            if isinstance(cur, GeoRestrictedError):
                code, transient = "geo_blocked", False
                break
            if isinstance(cur, UnsupportedError):
                code, transient = "unsupported_url", False
                break
            if isinstance(cur, (TransportError, TimeoutError, ConnectionError)):
                code, transient = "network", True
                break
    return DownloadFailure(code, shorten(message, 300), transient)


# ---------------------------------------------------------------------------------------------------
# caption choice

def _lang_rank(lang: str, patterns: tuple[re.Pattern, ...]) -> int | None:
    for i, pattern in enumerate(patterns):
        if pattern.fullmatch(lang):
            return i
    return None


def _first_format(tracks: Any, formats: tuple[str, ...]) -> str | None:
    # tracks: yt-dlp's list of {ext, url, ...}, or clean_info's list of ext strings
    exts = {t.get("ext") if isinstance(t, dict) else t for t in tracks or []}
    return next((f for f in formats if f in exts), None)


def choose_captions(info: dict, langs: Iterable[str] = DEFAULT_CAPTION_LANGS,
                    formats: Iterable[str] = SUPPORTED_CAPTION_FORMATS) -> tuple[str, str, str] | None:
    """The caption track to fetch: `(lang key, "manual"|"automatic", ext)`, or None.

    `langs` are regular expressions matched against the whole language key, case-insensitively, in order
    of preference (yt-dlp's `subtitleslangs` convention): ("en", "en-.*") accepts `en`, `en-US`, `en-GB`
    and YouTube's named manual tracks (`en-<track id>`). Rules:
    - a manual track in an accepted language beats any automatic one (the first pattern, then yt-dlp's
      order, decides among manual tracks);
    - YouTube lists its speech-recognition track twice, as `xx-orig` and `xx`, and every other language of
      `automatic_captions` is a machine translation (`tlang=`), including `en-fr` style keys (English
      translated from French manual captions). When any `*-orig` key exists, only `<lang>-orig` keys whose
      `<lang>` is accepted are taken, so a French video never yields translated English captions. Without
      `-orig` keys (other sites, older yt-dlp), automatic keys are matched like manual ones.
    - within the chosen track, the first of `formats` that is offered (json3 carries YouTube's per-word
      times, so it comes first by default).
    """
    patterns = tuple(re.compile(p, re.I) for p in langs)
    formats = tuple(formats)

    def best_track(tracks: dict, rank_of) -> tuple[str, str] | None:
        """(lang, ext) of the track with the best language rank (then the first listed)."""
        best: tuple[int, int, str, str] | None = None
        for order, (lang, entries) in enumerate(tracks.items()):
            rank = rank_of(lang)
            ext = _first_format(entries, formats)
            if rank is not None and ext is not None and (best is None or (rank, order) < best[:2]):
                best = (rank, order, lang, ext)
        return (best[2], best[3]) if best else None

    manual = best_track({k: v for k, v in (info.get("subtitles") or {}).items() if k != "live_chat"},
                        lambda lang: _lang_rank(lang, patterns))
    if manual:
        return manual[0], MANUAL, manual[1]
    auto = info.get("automatic_captions") or {}
    if any(k.endswith("-orig") for k in auto):
        # YouTube: `xx-orig` is the speech recognition track; every other automatic language is a
        # machine translation of it
        chosen = best_track(auto, lambda lang: _lang_rank(lang[: -len("-orig")], patterns)
                            if lang.endswith("-orig") else None)
    else:
        chosen = best_track(auto, lambda lang: _lang_rank(lang, patterns))
    return (chosen[0], AUTOMATIC, chosen[1]) if chosen else None


def describe_captions(info: dict, limit: int = 8) -> str:
    """A short list of the caption tracks an info dict offers, for a `no_captions` reason."""
    def one(kind: str, tracks: dict) -> str:
        items = [f"{lang}({','.join(sorted({t.get('ext') or '?' for t in v}))})" for lang, v in tracks.items()
                 if lang != "live_chat"]
        if not items:
            return ""
        more = f" +{len(items) - limit} more" if len(items) > limit else ""
        return f"{kind} " + " ".join(items[:limit]) + more
    parts = [one("manual", info.get("subtitles") or {}), one("automatic", info.get("automatic_captions") or {})]
    return "; ".join(p for p in parts if p) or "none offered"


# ---------------------------------------------------------------------------------------------------
# yt-dlp calls

class _Logger:
    """yt-dlp's logger: debug/info to our debug log, warnings kept (scrubbed), errors raise via yt-dlp."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def debug(self, msg: str) -> None:
        if not msg.startswith("[debug] "):
            log.debug("%s", scrub(msg))

    def info(self, msg: str) -> None:
        log.debug("%s", scrub(msg))

    def warning(self, msg: str) -> None:
        text = shorten(msg, 300)
        self.warnings.append(text)
        log.debug("yt-dlp warning: %s", text)

    def error(self, msg: str) -> None:
        log.debug("yt-dlp error: %s", scrub(msg))


def format_selector(max_height: int | None) -> str:
    """Best video at or under the height cap plus best audio (merged), else the best single file under the
    cap, else the *smallest* thing above it. `?` keeps formats whose height is unknown (direct files and
    HTML5 pages report none)."""
    if not max_height:
        return "bv*+ba/b"
    h = int(max_height)
    return f"bv*[height<=?{h}]+ba/b[height<=?{h}]/wv*+ba/w"


def parse_extractor_args(items: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """yt-dlp's `--extractor-args` syntax, `IE:KEY=V1,V2;KEY2=V` per item, as its API's dict."""
    out: dict[str, dict[str, list[str]]] = {}
    for item in items:
        ie, sep, rest = item.partition(":")
        if not sep or not ie.strip() or "=" not in rest:
            raise ValueError(f"extractor_args {item.split('=')[0]!r}...: expected IE:KEY=VALUE[,VALUE][;KEY=VALUE], "
                             f"e.g. youtube:player_client=web_safari")
        for pair in filter(None, rest.split(";")):
            key, _, values = pair.partition("=")
            out.setdefault(ie.strip().lower(), {})[key.strip().replace("-", "_")] = values.split(",")
    return out


@functools.lru_cache(maxsize=8)
def js_runtime(configured: str = "") -> tuple[str, str] | None:
    """(path, version) of the JavaScript runtime yt-dlp runs YouTube's player code with: the `deno`
    binary `configured` names, else the `deno` package's (a project dependency), else one on PATH; None
    when there is none."""
    import subprocess

    path = configured or None
    if path is None:
        try:
            import deno

            path = deno.find_deno_bin()
        except (ImportError, OSError, RuntimeError):
            pass
    path = path or shutil.which("deno")
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"deno (\S+)", out)
    return (path, match.group(1)) if match else None


def _base_options(timeout: float, logger: _Logger, cookiefile: str | None, cfg: Any = None,
                  proxy: str | None = None) -> dict:
    """yt-dlp's options for one call; `cfg` (the download stage's config, any missing attribute at its
    default) adds the crawling settings: JS runtime, sleeps, rate limit, fragments, extractor args."""
    opts: dict[str, Any] = {
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "logger": logger,
        "noplaylist": True,
        "socket_timeout": timeout,
        # Our own loop retries whole attempts with backoff; yt-dlp retries a broken transfer a little
        # (resuming from the byte it reached) and gives up fast otherwise.
        "retries": 2,
        "fragment_retries": 3,
        "extractor_retries": 1,
        "file_access_retries": 1,
        "skip_unavailable_fragments": False,
        "color": {"stdout": "never", "stderr": "never"},
        "check_formats": False,
    }
    if cookiefile:
        opts["cookiefile"] = cookiefile
    if proxy:
        opts["proxy"] = proxy
    runtime = js_runtime(getattr(cfg, "js_runtime", "") or "")
    if runtime:
        opts["js_runtimes"] = {"deno": {"path": runtime[0]}}
    if getattr(cfg, "sleep_s", 0) or getattr(cfg, "max_sleep_s", 0):
        opts["sleep_interval"] = cfg.sleep_s
        opts["max_sleep_interval"] = max(cfg.sleep_s, cfg.max_sleep_s)
    if getattr(cfg, "sleep_requests_s", 0):
        opts["sleep_interval_requests"] = cfg.sleep_requests_s
    if getattr(cfg, "rate_limit_bytes", 0):
        opts["ratelimit"] = cfg.rate_limit_bytes
    opts["concurrent_fragment_downloads"] = getattr(cfg, "concurrent_fragments", 1)
    if getattr(cfg, "extractor_args", ()):
        opts["extractor_args"] = parse_extractor_args(cfg.extractor_args)
    return opts


class _PrivateCookies:
    """A private copy of a cookies file for one YoutubeDL instance (which writes its jar back on close)."""

    def __init__(self, cookies_file: str | None) -> None:
        self.source = cookies_file
        self.dir: str | None = None
        self.path: str | None = None

    def __enter__(self) -> str | None:
        if not self.source:
            return None
        self.dir = tempfile.mkdtemp(prefix="ytdlp-cookies-")
        os.chmod(self.dir, 0o700)
        self.path = os.path.join(self.dir, "cookies.txt")
        shutil.copyfile(self.source, self.path)
        os.chmod(self.path, 0o600)
        return self.path

    def __exit__(self, *exc: Any) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


_DROP_KEYS = {"cookies", "http_headers", "formats", "requested_formats", "requested_downloads",
              "requested_subtitles", "thumbnails", "fragments", "url", "manifest_url", "filepath",
              "_filename", "filename", "__files_to_move", "__postprocessors", "heatmap"}


_SECRET_KEYS = {"cookies", "authorization", "cookie", "proxy-authorization"}


def strip_secrets(obj: Any) -> Any:
    """`obj` without cookie and Authorization fields at any depth (yt-dlp puts the cookies it would
    send into each format's `cookies` field)."""
    if isinstance(obj, dict):
        return {k: strip_secrets(v) for k, v in obj.items()
                if not (isinstance(k, str) and k.lower() in _SECRET_KEYS)}
    if isinstance(obj, list):
        return [strip_secrets(v) for v in obj]
    return obj


def clean_info(info: dict, redact_params: Iterable[str] = DEFAULT_PARAMS) -> dict:
    """The info dict for a manifest's `.info.json`: no credentials, no signed media URLs, no per-format
    lists (megabytes on YouTube); caption tracks reduced to `{lang: [ext, ...]}`; every URL left
    (`webpage_url`, `original_url`, ...) redacted."""
    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()
                    if k not in _DROP_KEYS and not (isinstance(k, str) and k.lower() in _SECRET_KEYS)}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    out = walk({k: v for k, v in info.items() if k not in ("subtitles", "automatic_captions")})
    for key in ("subtitles", "automatic_captions"):
        tracks = info.get(key) or {}
        out[key] = {lang: [t.get("ext") if isinstance(t, dict) else t for t in v or []]
                    for lang, v in tracks.items()}
    return redact_obj(out, redact_params)


def _sanitize(ydl: Any, info: dict) -> dict:
    return ydl.sanitize_info(info)


def _extract(ydl: Any, url: str) -> dict:
    try:
        info = ydl.extract_info(url, download=False)
    except Exception as exc:  # yt-dlp raises DownloadError (and, rarely, anything else)
        raise failure_from_exception(exc) from None
    if info is None:
        raise DownloadFailure("download_failed", "yt-dlp returned no information")
    if info.get("_type") == "playlist":
        entries = [e for e in info.get("entries") or [] if e]
        if len(entries) != 1:
            raise DownloadFailure("unsupported_url", f"a playlist of {len(entries)} entries, not one video")
        info = entries[0]
    live = info.get("live_status")
    if info.get("is_live") or live in ("is_live", "is_upcoming", "post_live"):
        raise DownloadFailure("live", f"live_status={live or 'is_live'}: only finished videos are downloaded")
    return info


def fetch_info(url: str, timeout: float = 30.0, cookies_file: str | None = None, cfg: Any = None) -> dict:
    """The info dict of `url` (no download), sanitized to plain JSON types and without cookie or
    Authorization fields (formats and caption URLs kept: `choose_captions` works on it); raises
    DownloadFailure."""
    import yt_dlp

    logger = _Logger()
    with _PrivateCookies(cookies_file) as cookiefile:
        with yt_dlp.YoutubeDL(_base_options(timeout, logger, cookiefile, cfg)) as ydl:
            return strip_secrets(_sanitize(ydl, _extract(ydl, url)))


def download(url: str, dest_dir: Path, video_id: str, cfg: Any, *, captions: bool = True,
             proxy: str | None = None) -> DownloadedMedia:
    """Download `url` into `dest_dir` as `{video_id}.<ext>` (and `{video_id}.<lang>.<ext>` captions).

    `cfg` provides `max_height`, `caption_langs`, `caption_formats`, `require_captions`,
    `socket_timeout_s` and `cookies_file` (any missing attribute takes its default). With
    `captions=False` no caption track is fetched (the source provided one). When captions are wanted,
    required and none is offered, raises NoCaptions before any media is downloaded.
    """
    import yt_dlp

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    timeout = float(getattr(cfg, "socket_timeout_s", 30.0))
    langs = tuple(getattr(cfg, "caption_langs", DEFAULT_CAPTION_LANGS))
    formats = tuple(f for f in getattr(cfg, "caption_formats", SUPPORTED_CAPTION_FORMATS)
                    if f in SUPPORTED_CAPTION_FORMATS)
    logger = _Logger()
    with _PrivateCookies(getattr(cfg, "cookies_file", None)) as cookiefile:
        base = _base_options(timeout, logger, cookiefile, cfg, proxy)
        with yt_dlp.YoutubeDL(base) as ydl:
            info = _extract(ydl, url)

        choice = choose_captions(info, langs, formats) if captions else None
        if captions and choice is None and getattr(cfg, "require_captions", False):
            raise NoCaptions(f"no caption track in {'|'.join(langs)} as {'/'.join(formats)}; "
                             f"offered: {describe_captions(info)}")

        safe_id = video_id.replace("%", "%%")
        opts = {
            **base,
            "format": format_selector(getattr(cfg, "max_height", None)),
            "format_sort": ["ext:mp4:m4a"],  # h264/aac where a choice exists: every decoder reads them
            "merge_output_format": "mp4",
            "paths": {"home": str(dest_dir), "temp": str(dest_dir)},
            "outtmpl": {"default": f"{safe_id}.%(ext)s", "subtitle": f"{safe_id}.%(ext)s"},
            "overwrites": True,
            "continuedl": True,
            "nopart": False,
            "writesubtitles": bool(choice and choice[1] == MANUAL),
            "writeautomaticsub": bool(choice and choice[1] == AUTOMATIC),
            "subtitleslangs": [re.escape(choice[0])] if choice else [],
            "subtitlesformat": choice[2] if choice else "best",
            "writeinfojson": False,   # the caller writes a cleaned copy (no cookies, no signed URLs)
            "updatetime": False,
        }
        with yt_dlp.YoutubeDL(opts) as ydl:
            try:
                # The pattern of yt-dlp's --load-info-json: the already extracted info, processed again
                # with the download options; the page is not fetched a second time.
                result = ydl.process_ie_result(copy.deepcopy(info), download=True)
            except Exception as exc:
                raise failure_from_exception(exc) from None
            clean = _sanitize(ydl, result or info)

    video_path = _downloaded_path(result or {}, dest_dir, video_id)
    out = DownloadedMedia(video_path=video_path, info=clean_info(clean), warnings=logger.warnings)
    if choice:
        lang, kind, ext = choice
        sub = ((result or {}).get("requested_subtitles") or {}).get(lang) or {}
        path = Path(sub["filepath"]) if sub.get("filepath") else dest_dir / f"{video_id}.{lang}.{ext}"
        if path.exists() and path.stat().st_size > 0:
            out.captions_path, out.captions_lang, out.captions_kind, out.captions_format = path, lang, kind, ext
        elif getattr(cfg, "require_captions", False):
            # yt-dlp raises when a caption download fails; an empty or missing file is a server quirk
            raise DownloadFailure("download_failed", f"captions {lang}.{ext}: empty or missing file")
    return out


def _downloaded_path(result: dict, dest_dir: Path, video_id: str) -> Path:
    for item in result.get("requested_downloads") or []:
        path = item.get("filepath") or item.get("_filename")
        if path and Path(path).exists():
            return Path(path)
    candidates = [p for p in dest_dir.glob(f"{glob_escape(video_id)}.*")
                  if p.suffix not in (".part", ".ytdl", ".json", ".vtt", ".srt", ".json3")
                  and not p.name.endswith(".part")]
    if len(candidates) == 1:
        return candidates[0]
    raise DownloadFailure("download_failed", f"yt-dlp reported no media file ({len(candidates)} candidates)")


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
