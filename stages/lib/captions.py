"""Caption files (WebVTT, SRT, YouTube json3) to cues `[start, end, text]` in seconds.

What every format gets:
- cue text: markup tags (`<c>`, `<i>`, `<b>`, `<v Name>`, `<font ...>`, `{\\an8}`) removed, HTML entities
  unescaped, the cue's lines joined with one space, whitespace runs collapsed to one ASCII space, so
  that `text.split(" ")` is the cue's word list;
- `word_times`: per-word start times, one per space-separated word of `text`, when the format carries
  them (YouTube automatic captions: inline `<00:00:01.234>` tags in VTT, `tOffsetMs` in json3). They are
  kept only when they are non-decreasing and inside the cue; otherwise the cue has none.

YouTube's *rolling* automatic VTT shows each caption line twice (once as the new, tagged line and again
as the plain top line of the next cue) plus ~10 ms transition cues that repeat the line without tags.
A file is treated as rolling when it carries inline timestamps, or when most cues repeat a line of
the cue before (the same captions converted to SRT or to VTT without tags). In a rolling file a line
is new unless it is untagged and equal to a line of the cue just before; each cue yields one `Cue`
made of its new lines, so every spoken word comes out once, in order. A tagged line's first word
has no tag of its own: its time is the cue start.

json3: events without `segs` (window definitions) and whitespace-only events (the `aAppend` newline
events) are ignored. When the file carries `tOffsetMs` (automatic captions), an event is shown until
a later line scrolls it away; its end is cut at the next event's start so that the last word does
not overlap the next line.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("vtt", "srt", "json3")


class CaptionError(ValueError):
    """The captions text is not in the format it claims (or in any format we read)."""


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str
    word_times: tuple[float, ...] | None = None


# --------------------------------------------------------------------------------------------------
# text helpers
# --------------------------------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]*>")
_ASS_TAG = re.compile(r"\{\\[^}]*\}")
_WS = re.compile(r"\s+")
# an inline word time: <00:00:01.234> or <00:01.234>
_TS_TAG = re.compile(r"<((?:\d+:)?\d{1,2}:\d{1,2}[.,]\d{1,3})>")
_TIMESTAMP = r"(?:\d+:)?\d{1,2}:\d{1,2}(?:[.,]\d{1,3})?"
_TIMING = re.compile(rf"^\s*({_TIMESTAMP})\s*-->\s*({_TIMESTAMP})(?:\s|$)")


def clean_text(raw: str) -> str:
    """Markup removed, entities unescaped, whitespace collapsed to single spaces, stripped."""
    text = _ASS_TAG.sub("", _TAG.sub("", raw))
    if "&" in text:
        text = html.unescape(text)
    return _WS.sub(" ", text).strip()


def parse_timestamp(value: str) -> float:
    """`[hh:]mm:ss[.ttt]` (`,` accepted for the decimal mark) to seconds."""
    value = value.strip().replace(",", ".")
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise CaptionError(f"bad timestamp {value!r}")
    try:
        seconds = float(parts[-1])
        minutes = int(parts[-2])
        hours = int(parts[0]) if len(parts) == 3 else 0
    except ValueError:
        raise CaptionError(f"bad timestamp {value!r}") from None
    return hours * 3600 + minutes * 60 + seconds


def _spread_words(segments: list[tuple[float | None, str]], end: float) -> tuple[list[str], list[float | None]]:
    """Words of timed text segments with each word's start time.

    A segment that continues the previous segment's word (no space between them) extends that word.
    Several words inside one segment share its time span evenly (up to the next known time, else the
    end). A segment with time None gives its words no time.
    """
    words: list[str] = []
    times: list[float | None] = []
    seg_of: list[int] = []
    glue = False  # the text so far ends inside a word
    for k, (_, text) in enumerate(segments):
        if not text:
            continue
        tokens = text.split()
        if glue and not text[0].isspace() and tokens and words:
            words[-1] += tokens.pop(0)
        for tok in tokens:
            words.append(tok)
            seg_of.append(k)
        glue = not text[-1].isspace()
    # times: the first word of a segment starts at the segment time; more words in the same
    # segment are spread up to the next segment's time
    seg_times = [t for t, _ in segments]
    i = 0
    while i < len(words):
        k = seg_of[i]
        j = i
        while j < len(words) and seg_of[j] == k:
            j += 1
        t0 = seg_times[k]
        if t0 is None:
            times.extend([None] * (j - i))
        else:
            nxt = next((seg_times[m] for m in range(k + 1, len(segments)) if seg_times[m] is not None
                        and segments[m][1].strip()), end)
            n = j - i
            step = (nxt - t0) / n if nxt is not None and nxt > t0 else 0.0
            times.extend(t0 + q * step for q in range(n))
        i = j
    return words, times


def _make_cue(start: float, end: float, words: list[str], times: list[float | None] | None) -> Cue | None:
    if not words:
        return None
    text = " ".join(words)
    word_times = None
    if times is not None and all(t is not None for t in times):
        ok = times[0] >= start - 1e-6 and times[-1] <= end + 1e-6 and all(
            a <= b for a, b in zip(times, times[1:]))
        if ok:
            word_times = tuple(float(t) for t in times)  # type: ignore[arg-type]
    return Cue(start, end, text, word_times)


# --------------------------------------------------------------------------------------------------
# VTT and SRT: timing blocks
# --------------------------------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _timed_blocks(text: str, strict_blank: bool) -> list[tuple[float, float, list[str]]]:
    """(start, end, payload lines) for every timing line.

    The payload runs to the first empty line (WebVTT: YouTube's rolling cues carry a line holding a
    single space, which is payload) or, for SRT (`strict_blank=False`), to the first whitespace-only
    line; it also stops at the next timing line (a missing separator), leaving out a cue id that
    stands right before it.
    """
    lines = _lines(text)
    blocks = []
    i, n = 0, len(lines)
    while i < n:
        m = _TIMING.match(lines[i])
        if not m:
            i += 1
            continue
        start, end = parse_timestamp(m.group(1)), parse_timestamp(m.group(2))
        j = i + 1
        payload: list[str] = []
        while j < n:
            line = lines[j]
            if line == "" or (not strict_blank and not line.strip()):
                break
            if _TIMING.match(line):
                # no blank line before the next cue: its id (if any) ended up in this payload
                if len(payload) >= 2 and (payload[-1].strip().isdigit() or not payload[-2].strip()):
                    payload.pop()
                break
            payload.append(line)
            j += 1
        blocks.append((start, end, payload))
        i = j
    return blocks


def _is_rolling(blocks: list[tuple[float, float, list[str]]]) -> bool:
    if any(_TS_TAG.search(line) for _, _, payload in blocks for line in payload):
        return True
    prev: set[str] = set()
    repeats = candidates = 0
    for _, _, payload in blocks:
        plain = [clean_text(line) for line in payload]
        plain = [p for p in plain if p]
        if plain and prev:
            candidates += 1
            repeats += plain[0] in prev
        prev = set(plain)
    return candidates >= 3 and repeats >= 0.5 * candidates


def _line_segments(line: str) -> tuple[list[tuple[float | None, str]], bool]:
    """A payload line split at its inline timestamps: [(time or None, text)], and whether it had any."""
    parts = _TS_TAG.split(line)
    if len(parts) == 1:
        return [(None, clean_text(line))], False
    segments: list[tuple[float | None, str]] = [(None, _segment_text(parts[0]))]
    for k in range(1, len(parts), 2):
        segments.append((parse_timestamp(parts[k]), _segment_text(parts[k + 1])))
    return segments, True


def _segment_text(raw: str) -> str:
    """Tags and entities out, but keep a leading/trailing space: it separates words across segments."""
    text = _ASS_TAG.sub("", _TAG.sub("", raw))
    if "&" in text:
        text = html.unescape(text)
    return _WS.sub(" ", text)


def _blocks_to_cues(blocks: list[tuple[float, float, list[str]]]) -> list[Cue]:
    cues: list[Cue] = []
    if not _is_rolling(blocks):
        for start, end, payload in blocks:
            text = clean_text(" ".join(payload))
            if text:
                cues.append(Cue(start, end, text))
        return cues
    prev: set[str] = set()
    for start, end, payload in blocks:
        segments: list[tuple[float | None, str]] = []
        plain_lines = []
        for line in payload:
            plain = clean_text(line)
            if not plain:
                continue
            plain_lines.append(plain)
            line_segments, tagged = _line_segments(line)
            if not tagged and plain in prev:
                continue  # the line shown again (top row of a rolling cue, or a transition cue)
            if segments:
                # a second new line: a line break separates words; an untagged first word of this
                # line has no known time (the cue then spreads its words evenly)
                segments.append((None, " "))
            elif line_segments[0][0] is None:
                line_segments[0] = (start, line_segments[0][1])  # the first new word starts the cue
            segments.extend(line_segments)
        prev = set(plain_lines)
        if not segments:
            continue
        words, times = _spread_words(segments, end)
        cue = _make_cue(start, end, words, times)
        if cue is not None:
            cues.append(cue)
    return cues


def parse_vtt(text: str) -> list[Cue]:
    stripped = text.lstrip("\ufeff \t\r\n")
    blocks = _timed_blocks(text, strict_blank=True)
    if not blocks and stripped and not stripped.startswith("WEBVTT"):
        raise CaptionError("not WebVTT: no WEBVTT header and no cue timings")
    return _blocks_to_cues(blocks)


def parse_srt(text: str) -> list[Cue]:
    blocks = _timed_blocks(text, strict_blank=False)
    if not blocks and text.strip("\ufeff \t\r\n"):
        raise CaptionError("not SRT: no cue timings found")
    return _blocks_to_cues(blocks)


# --------------------------------------------------------------------------------------------------
# json3
# --------------------------------------------------------------------------------------------------


def parse_json3(text: str) -> list[Cue]:
    try:
        doc = json.loads(text.lstrip("\ufeff"))
    except ValueError as exc:
        raise CaptionError(f"not json3: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("events", []), list):
        raise CaptionError("not json3: no 'events' list")
    events = []
    timed = False
    for ev in doc.get("events", []):
        if not isinstance(ev, dict):
            continue
        segs = ev.get("segs")
        if not isinstance(segs, list) or not segs:
            continue
        texts = [str(s.get("utf8", "")) if isinstance(s, dict) else "" for s in segs]
        if not "".join(texts).strip():
            continue  # aAppend newline events and empty events
        try:
            start_ms = float(ev.get("tStartMs", 0))
            dur_ms = float(ev.get("dDurationMs", 0) or 0)
        except (TypeError, ValueError):
            raise CaptionError(f"json3 event with bad times: {str(ev)[:100]}") from None
        offsets = []
        for s in segs:
            off = s.get("tOffsetMs") if isinstance(s, dict) else None
            offsets.append(None if off is None else float(off))
        timed = timed or any(o is not None for o in offsets)
        events.append((start_ms, start_ms + dur_ms, texts, offsets))
    cues: list[Cue] = []
    for k, (start_ms, end_ms, texts, offsets) in enumerate(events):
        if timed and k + 1 < len(events) and start_ms < events[k + 1][0] < end_ms:
            end_ms = events[k + 1][0]
        start, end = start_ms / 1000.0, end_ms / 1000.0
        if timed:
            segments = [((start_ms + (o or 0.0)) / 1000.0, t) for t, o in zip(texts, offsets)]
            words, times = _spread_words(segments, end)
            cue = _make_cue(start, end, words, times)
        else:
            # segs carry their own spaces (a styled seg may sit inside a word): join them as they are
            cue = _make_cue(start, end, clean_text("".join(texts)).split(" "), None)
        if cue is not None:
            cues.append(cue)
    return cues


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------

_PARSERS = {"vtt": parse_vtt, "srt": parse_srt, "json3": parse_json3}
_EXTENSIONS = {".vtt": "vtt", ".webvtt": "vtt", ".srt": "srt", ".json3": "json3"}


def parse_captions(text: str, fmt: str) -> list[Cue]:
    """Cues of a captions text in format `fmt` (vtt | srt | json3), in file order."""
    try:
        parser = _PARSERS[fmt]
    except KeyError:
        raise CaptionError(f"unknown captions format {fmt!r}; known: {', '.join(FORMATS)}") from None
    return parser(text)


def sniff_format(text: str) -> str | None:
    head = text.lstrip("\ufeff \t\r\n")
    if head.startswith("WEBVTT"):
        return "vtt"
    if head.startswith("{"):
        return "json3"
    for line in _lines(head)[:50]:
        m = _TIMING.match(line)
        if m:
            return "srt" if "," in m.group(1) else "vtt"
    return None


def caption_format(path: str, text: str | None = None) -> str:
    """The format of a captions file: by its extension, else (`.json`, `.txt`, none) by its content."""
    fmt = _EXTENSIONS.get(Path(str(path)).suffix.lower())
    if fmt is not None:
        return fmt
    if text is None:
        raise CaptionError(f"cannot tell the captions format of {path!r} from its name; pass its text")
    fmt = sniff_format(text)
    if fmt is None:
        raise CaptionError(f"{path!r} is not WebVTT, SRT or json3")
    return fmt
