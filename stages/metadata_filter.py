"""metadata_filter: the metadata rules of LIVECC_SPEC section 1, before anything is downloaded.

Reads: source rows (`id`, `source_id` (the row's own id as given), `source_row`, `raw` JSON of the
row as given, `parse_error`).
Adds: `url`, `title`, `duration`, `width`, `height`, `language`, `categories`, `category`, `captions`,
`metadata_from` (source | probe | yt-dlp: where missing fields were filled from).
Drops (reason = the rule): `duplicate_id`, `no_title`, `duration`, `resolution`, `language`, `category`.
Errors: `malformed_row` (not JSON, no url, wrong field types), and yt-dlp / ffprobe failures while
filling missing metadata (`private`, `removed`, `not_found`, `corrupt_media`, ...).
Resources: light CPU; filling missing metadata is network/disk bound, so rows run in threads.

The rule on caption words (>= 30 distinct) is applied in `caption_words`, the rule "has captions"
in `download`, once the captions are known.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from manifests import ids
from manifests.schemas import METADATA_FILTER
from pipeline.stage import PartContext, Resources, Stage, dropped, error, ok
from stages.lib import media

_MEDIA_EXT = re.compile(r"\.(mp4|m4v|mkv|webm|mov|avi|mpg|mpeg|ts|flv)$", re.IGNORECASE)


@dataclass(frozen=True)
class Config:
    min_height: int = 480              # the short side of the frame, so portrait videos count too
    min_duration: float = 30.0
    max_duration: float = 600.0
    languages: tuple[str, ...] = ("en",)   # prefixes: "en" accepts en, en-US, en-GB; empty: any
    allow_unknown_language: bool = True    # unknown here; English is checked again on the words
    require_title: bool = True
    categories: tuple[str, ...] = ()       # whitelist (SFT); empty: any category
    fill_missing: bool = True              # probe (ffprobe / yt-dlp) fields the source row lacks
    probe_timeout_s: float = 60.0
    threads: int = 4

    def __post_init__(self) -> None:
        if self.min_duration > self.max_duration:
            raise ValueError(f"min_duration {self.min_duration} > max_duration {self.max_duration}")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")


class MalformedRow(ValueError):
    pass


# Larger values are not a video's: a source row claiming them is malformed (and would not fit int64).
_MAX_NUMBER = {"duration": 1e7, "width": 1e6, "height": 1e6}


def _number(record: dict, key: str, kind: type) -> float | int | None:
    value = record.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MalformedRow(f"{key} {_short(value)} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MalformedRow(f"{key} {_short(value)} is not a number") from None
    if not math.isfinite(number) or not 0 <= number <= _MAX_NUMBER[key]:
        raise MalformedRow(f"{key} {_short(value)} is not within [0, {_MAX_NUMBER[key]:g}]")
    return kind(number)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(record: dict, key: str) -> str | None:
    """A text field: a string (numbers are accepted as their text); lists, objects are malformed."""
    value = record.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MalformedRow(f"{key} {_short(value)} is not a string")
    return str(value).strip() or None


def _categories(record: dict) -> list[str]:
    value = record.get("categories", record.get("category"))
    if value in (None, ""):
        return []
    if isinstance(value, str):
        try:
            parsed = json.loads(value)  # CSV sources carry lists as JSON text
            value = parsed if isinstance(parsed, list) else [value]
        except json.JSONDecodeError:
            value = [value]
    if not isinstance(value, list):
        raise MalformedRow(f"categories {value!r} is not a list")
    if any(isinstance(v, (list, dict)) for v in value):
        raise MalformedRow(f"categories {_short(value)} is not a list of names")
    return [str(v) for v in value if v not in (None, "")]


def parse_record(record: dict) -> dict:
    """The video fields of a source record, typed; MalformedRow when a field cannot be read."""
    return {
        "url": str(record["url"]).strip(),
        "title": _text(record, "title"),
        "duration": _number(record, "duration", float),
        "width": _number(record, "width", int),
        "height": _number(record, "height", int),
        "language": _text(record, "language"),
        "categories": _categories(record),
        "captions": _text(record, "captions"),
    }


def local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url[len("file://"):]
    if "://" in url or ids.youtube_id(url):
        return None
    return url


class MetadataFilter(Stage):
    name = "metadata_filter"
    Config = Config
    schema = METADATA_FILTER
    needs_secrets = True   # probing fetches the url: the manifest's is redacted, ctx has the full one

    def thresholds(self) -> dict[str, tuple[float, ...]]:
        return {"duration": (self.config.min_duration, self.config.max_duration)}

    def resources(self) -> Resources:
        return Resources(cpus=0.5)

    def threads(self) -> int:
        return self.config.threads

    def check(self) -> None:
        if self.config.fill_missing:
            media.require_binaries("ffprobe")

    def process_row(self, row: dict, ctx: PartContext) -> dict:
        base = {"id": row["id"], "source_id": row.get("source_id"), "source_row": row["source_row"]}
        if row.get("parse_error"):
            code = "duplicate_id" if row["parse_error"].startswith("duplicate id") else "malformed_row"
            make = dropped if code == "duplicate_id" else error
            return make(base, f"{code}: {row['parse_error']}")
        try:
            fields = parse_record(json.loads(row["raw"]))
        except MalformedRow as exc:
            return error(base, f"malformed_row: {exc}")
        fields["metadata_from"] = "source"
        out = {**base, **fields}
        if self.config.fill_missing and self._missing(out):
            filled = self._fill(out, ctx)
            if filled.get("status"):
                return filled
            out = filled
        out["category"] = self._category(out["categories"])
        reason = self.violation(out)
        return dropped(out, reason) if reason else ok(out)

    def _missing(self, row: dict) -> bool:
        return (row["title"] is None and self.config.require_title) or row["duration"] is None \
            or row["height"] is None

    def _fill(self, row: dict, ctx: PartContext) -> dict:
        """Fill missing fields: ffprobe for local files and direct media URLs, yt-dlp for pages.
        Fetches use the full url (`ctx.full_value`); what is returned holds only redacted text."""
        from stages.lib.ytdlp import DownloadFailure, fetch_info

        url = ctx.full_value(row, "url")
        probe_target = local_path(url)
        if probe_target is not None and not Path(probe_target).exists():
            return error(row, f"not_found: no file {probe_target}")
        row = dict(row)
        if probe_target is None and not _MEDIA_EXT.search(url.split("?")[0]):
            try:
                info = fetch_info(ids.youtube_url(ids.youtube_id(url)) if ids.is_youtube(url) else url,
                                  timeout=self.config.probe_timeout_s)
            except DownloadFailure as exc:
                return error(row, ctx.redact(f"{exc.code}: {exc}"))
            row["metadata_from"] = "yt-dlp"
            for key in ("title", "duration", "width", "height", "language"):
                if row[key] is None and info.get(key) is not None:
                    row[key] = info[key]
            if not row["categories"] and info.get("categories"):
                row["categories"] = [str(c) for c in info["categories"]]
            probe_target = info.get("url") if row["duration"] is None or row["height"] is None else None
        elif probe_target is None:
            probe_target = url
        if probe_target and (row["duration"] is None or row["height"] is None):
            try:
                probed = media.probe(probe_target, timeout=self.config.probe_timeout_s)
            except media.MediaError as exc:   # ffprobe quotes the URL it could not read
                return error(row, ctx.redact(str(exc)))
            row["metadata_from"] = "probe" if row["metadata_from"] == "source" else row["metadata_from"]
            row["duration"] = row["duration"] if row["duration"] is not None else probed.duration
            if row["height"] is None:
                row["width"], row["height"] = probed.width, probed.height
        if row["title"] is None and probe_target and not self.config.require_title:
            row["title"] = Path(row["url"].split("?")[0]).stem
        return row

    def _category(self, categories: list[str]) -> str | None:
        wanted = {c.lower() for c in self.config.categories}
        for category in categories:
            if not wanted or category.lower() in wanted:
                return category
        return None

    def violation(self, row: dict) -> str | None:
        """The first rule the row breaks, as `rule: detail`, or None."""
        cfg = self.config
        if cfg.require_title and not row["title"]:
            return "no_title: the video has no title"
        duration = row["duration"]
        if duration is None:
            return "duration: unknown"
        if not cfg.min_duration <= duration <= cfg.max_duration:
            return f"duration: {duration:.1f} s outside [{cfg.min_duration:g}, {cfg.max_duration:g}] s"
        if row["height"] is None:
            return "resolution: unknown (no video stream)"
        short_side = min(row["height"], row["width"] or row["height"])
        if short_side < cfg.min_height:
            return f"resolution: {row['width']}x{row['height']} below {cfg.min_height}p"
        language = (row["language"] or "").lower()
        if cfg.languages and not (language == "" and cfg.allow_unknown_language):
            if not any(language == p or language.startswith(p.lower() + "-") for p in cfg.languages):
                return f"language: {row['language'] or 'unknown'} not in {list(cfg.languages)}"
        if cfg.categories and row["category"] is None:
            return f"category: {row['categories']} not in the whitelist"
        return None
