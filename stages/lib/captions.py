"""Caption files (WebVTT, SRT, YouTube json3) to cues `[start, end, text]` in seconds.

What every format gets:
- cue text: markup tags (`<c>`, `<i>`, `<b>`, `<v Name>`, `<font ...>`, `{\\an8}`) removed, `<script>` /
  `<style>` blocks removed with their content, HTML entities unescaped (again until stable, so that
  escaped markup such as `&lt;i&gt;` or `&amp;lt;b&amp;gt;` is removed too, never a word), control,
  zero-width and other invisible characters and U+FFFD removed, the cue's lines joined with one space,
  whitespace runs collapsed to one ASCII space, so that `text.split(" ")` is the cue's word list;
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

The parsers return cues in file order. `load_captions` (what the caption_words stage calls) also
decodes the bytes (`decode_captions`: UTF-8/16/32, cp1252 when the file looks like it, undecodable
bytes dropped and counted) and validates the cues (`validate_cues`: start order, bad times dropped,
same-start cues merged, overlaps cut, so that the words never go back in time), and reports what it
did in one `CaptionReport`.
"""
from __future__ import annotations

import codecs
import html
import json
import math
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


# `<script>`/`<style>` with their content (to the end of the text when never closed); a closing tag
# left alone means the block opened in an earlier cue: what comes before it in this text goes too
_SCRIPT = re.compile(r"<\s*(script|style)\b[^>]*>.*?(?:<\s*/\s*\1\s*>|$)", re.I | re.S)
_ORPHAN_CLOSE = re.compile(r"^.*?<\s*/\s*(?:script|style)\s*>", re.I | re.S)
# `&amp;amp;lt;` (escaped n times) -> `&lt;` in one pass, so that deep escaping costs no extra rounds
_AMP_CHAIN = re.compile(r"&(?:amp;)+(?=(?:[a-z][a-z0-9]*|#[0-9]+|#x[0-9a-f]+);)", re.I)
# what still looks escaped after _MAX_UNESCAPE rounds (escaped in more ways than that: `&#38;#38;lt;`):
# the whole run of entity-ish characters is dropped, not shipped
_ESCAPED_RUN = re.compile(r"&[#a-z0-9;&]*;", re.I)
_MAX_UNESCAPE = 4
# invisible characters that would otherwise sit inside words: C0/C1 controls that are not whitespace
# (whitespace controls become spaces), format characters (zero-width space/joiners, bidi marks, soft
# hyphen, BOM, tag characters) and U+FFFD (a character lost before the file reached us)
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u061c\u180e\u200b-\u200f"
                        "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ufffd"
                        "\U000e0000-\U000e007f]")


def _strip_markup(raw: str) -> str:
    """Tags, `<script>`/`<style>` blocks and invisible characters out, entities unescaped.

    Unescaping can reveal markup (`&lt;i&gt;` -> `<i>`, `&amp;lt;b&amp;gt;` -> `&lt;b&gt;`), so strip and
    unescape again until nothing changes; whitespace is left as it is."""
    text = raw
    for _ in range(_MAX_UNESCAPE):
        text = _INVISIBLE.sub("", text)
        if "<" in text:
            text = _TAG.sub("", _ORPHAN_CLOSE.sub(" ", _SCRIPT.sub(" ", text)))
        if "{" in text:
            text = _ASS_TAG.sub("", text)
        if "&" not in text:
            return text
        unescaped = html.unescape(_AMP_CHAIN.sub("&", text))
        if unescaped == text:
            return text
        text = unescaped  # may hold markup again: another round
    text = _ORPHAN_CLOSE.sub(" ", _SCRIPT.sub(" ", text))
    text = _ESCAPED_RUN.sub("", _ASS_TAG.sub("", _TAG.sub("", text)))
    return _INVISIBLE.sub("", text)


def clean_text(raw: str) -> str:
    """Markup (tags, `<script>`/`<style>` blocks) removed, entities unescaped (markup revealed by
    unescaping removed too), invisible characters removed, whitespace collapsed to single spaces,
    stripped."""
    return _WS.sub(" ", _strip_markup(raw)).strip()


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
    """clean_text, but keep a leading/trailing space: it separates words across segments."""
    return _WS.sub(" ", _strip_markup(raw))


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
            segments = [((start_ms + (o or 0.0)) / 1000.0, _segment_text(t)) for t, o in zip(texts, offsets)]
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


# --------------------------------------------------------------------------------------------------
# bytes -> text
# --------------------------------------------------------------------------------------------------

_MARK = "livecc_captions_mark"


def _mark_bad_bytes(exc: UnicodeError) -> tuple[str, int]:
    # like `surrogateescape`, for every byte value and every codec: each undecodable byte becomes one
    # lone surrogate U+DC00+byte, which strict decoding never yields, so the marks can be counted
    # and removed afterwards (a stateless handler: safe in threads)
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "".join(chr(0xDC00 + b) for b in exc.object[exc.start:exc.end]), exc.end


codecs.register_error(_MARK, _mark_bad_bytes)
_MARKED = re.compile("[\udc00-\udcff]")
_HIGH_RUN = re.compile(rb"[\x80-\xff]+")


def _decode_marked(data: bytes, encoding: str) -> tuple[str, int]:
    # UTF-8 and cp1252 reject only bytes >= 0x80: the built-in `surrogateescape` marks them the same
    # way, in C; UTF-16/32 can reject any byte
    text = data.decode(encoding, "surrogateescape" if encoding in ("utf-8", "cp1252") else _MARK)
    bad = len(_MARKED.findall(text))
    return (_MARKED.sub("", text) if bad else text), bad


def _utf16_without_bom(data: bytes) -> str | None:
    """utf-16-le / utf-16-be when the NUL bytes say so (mostly-ASCII text: every other byte is NUL)."""
    head = data[:4096]
    if len(head) < 8 or len(head) % 2:
        return None
    even, odd = head[0::2].count(0) / (len(head) / 2), head[1::2].count(0) / (len(head) / 2)
    if odd > 0.4 and even < 0.05:
        return "utf-16-le"
    if even > 0.4 and odd < 0.05:
        return "utf-16-be"
    return None


def _looks_cp1252(data: bytes, bad: int, multi: int) -> bool:
    """Is a file that is not valid UTF-8 rather a Western 8-bit (cp1252 / latin-1) file?

    - at least 4 undecodable bytes per valid non-ASCII UTF-8 character: a cp1252 file has few byte
      pairs that happen to be valid UTF-8 (`ß“`, `Ã©`), while in a UTF-8 file with some broken
      bytes the valid multi-byte characters are usually the many (a few of each: UTF-8 wins, as
      decoding it as cp1252 would garble every valid character);
    - at most 30 % of all bytes are >= 0x80, and at most a fifth of the runs of such bytes are longer
      than 2: Western text has an accented letter or a typographic quote between ASCII letters
      (`caf\\xe9`, `don\\x92t`), while binary junk and other legacy scripts (cp1251 Cyrillic, Shift-JIS,
      GBK: whole words of high bytes) do not; those are decoded as UTF-8 with the bad bytes dropped
      and counted rather than turned into wrong Latin letters."""
    if bad < 4 * multi:
        return False
    runs = _HIGH_RUN.findall(data)
    high = sum(map(len, runs))
    return high <= 0.3 * len(data) and sum(len(r) > 2 for r in runs) <= 0.2 * len(runs)


def _decode(data: bytes) -> tuple[str, int, str]:
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        encoding = "utf-32"  # before UTF-16: the UTF-32-LE BOM starts with the UTF-16-LE one
    elif data.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = _utf16_without_bom(data) or "utf-8"
    if encoding != "utf-8":
        return (*_decode_marked(data, encoding), encoding)
    try:
        return data.decode("utf-8"), 0, "utf-8"
    except UnicodeDecodeError:
        pass
    text, bad = _decode_marked(data, "utf-8")
    multi = len(text) - len(text.encode("ascii", "ignore"))  # valid non-ASCII characters
    if _looks_cp1252(data, bad, multi):
        # the 5 bytes cp1252 leaves undefined (0x81 0x8D 0x8F 0x90 0x9D) are still dropped and counted
        text, bad = _decode_marked(data, "cp1252")
        return text, bad, "cp1252"
    return text, bad, "utf-8"


def decode_captions(data: bytes) -> tuple[str, int]:
    """A caption file's bytes to text, and the number of bytes that could not be decoded (dropped).

    UTF-8 with or without BOM, UTF-16/UTF-32 with BOM, UTF-16 without BOM when every other byte is
    NUL. A file that is not valid UTF-8 as a whole and looks like Western 8-bit text
    (`_looks_cp1252`) is decoded as cp1252, so that `caf\\xe9` stays the one word `café`. Otherwise
    each undecodable byte is dropped (never a U+FFFD inside a word) and counted."""
    text, bad, _ = _decode(data)
    return text, bad


# --------------------------------------------------------------------------------------------------
# cue validation
# --------------------------------------------------------------------------------------------------

# caption times are in milliseconds: starts closer than half a millisecond are the same start, and a
# cue shorter than that has zero length
_TIME_EPS = 0.0005


@dataclass(frozen=True)
class CueReport:
    """What validate_cues did to a cue list (counts of cues)."""

    cues_in: int = 0        # cues given
    cues_out: int = 0       # cues returned
    bad_time: int = 0       # dropped: a non-finite time, a negative start, end <= start (reversed
                            # or zero-length: shorter than 0.5 ms)
    no_text: int = 0        # dropped: no words (empty text, or `[...]`: the word rules drop it anyway;
                            # dropped first so that it cannot cut or merge into a spoken cue)
    out_of_order: int = 0   # starting before a cue listed earlier in the file (counted before sorting)
    merged: int = 0         # folded into a cue with the same start (texts joined in file order; an
                            # identical text of the same start joined once)
    overlaps_cut: int = 0   # end cut at the next cue's start
    times_dropped: int = 0  # inline word times dropped (outside the possibly cut cue, going back,
                            # non-finite, or not one per word): the cue's words are spread evenly


@dataclass(frozen=True)
class CaptionReport(CueReport):
    """load_captions' report: validate_cues' counts plus how the file was read."""

    bad_bytes: int = 0      # undecodable bytes dropped (decode_captions)
    encoding: str = ""      # utf-8 | utf-8-sig | utf-16 | utf-16-le | utf-16-be | utf-32 | cp1252
    format: str = ""        # vtt | srt | json3


def _word_count(text: str) -> int:
    """Words the cue gives under the word rules of stages/lib/words.py (rules 1-3), which imports
    this module (so they are restated here): none for a `[`/`]` cue; split on the space; a word equal
    to the one before it does not count."""
    if "[" in text or "]" in text:
        return 0
    n, prev = 0, None
    for tok in text.split(" "):
        if tok and tok != prev:
            n += 1
            prev = tok
    return n


def _spread_safe_end(start: float, end: float, n: int) -> float:
    """`end`, lowered by a few ulps when needed so that the word rules' even spread
    (`start + n * ((end - start) / n)`, float arithmetic) does not end after `end`: otherwise the last
    word could end past the next cue's start, and at a rounding boundary (0.15 -> 0.2 instead of
    0.1) after the next cue's first word ends."""
    if n <= 0:
        return end
    e = end
    for _ in range(8):
        if start + n * ((e - start) / n) <= end:
            return e
        e = math.nextafter(e, -math.inf)
    return e


def _checked_times(times: tuple[float, ...] | None, start: float, end: float, n_tokens: int
                   ) -> tuple[tuple[float, ...] | None, bool]:
    """(the inline times to keep, whether given times were dropped)."""
    if times is None:
        return None, False
    ok = (len(times) == n_tokens > 0 and all(math.isfinite(t) for t in times)
          and times[0] >= start - 1e-6 and times[-1] <= end + 1e-6
          and all(a <= b for a, b in zip(times, times[1:])))
    if not ok:
        return None, True
    # within the 1 us tolerance: clamp, so a word never starts before its cue or after its end
    return tuple(min(max(float(t), start), end) for t in times), False


def validate_cues(cues: list[Cue]) -> tuple[list[Cue], CueReport]:
    """Cues in start order whose words (stages/lib/words.py rules) never go back in time.

    1. drop cues with a bad time (see CueReport.bad_time), then cues without words;
    2. sort by start (stable: file order among equal starts);
    3. merge cues with the same start (within 0.5 ms) into one: texts joined in file order, the
       latest end, the inline times concatenated (kept only if still valid, step 5);
    4. cut a cue's end at the next cue's start when they overlap;
    5. keep a cue's inline word times only when there is one per word, inside the cue, non-decreasing;
    6. lower a cue's end by float ulps where the even spread would overshoot it.
    Then for `words_from_cue_lists([cues])`, with or without inline times, every word ends at or
    after its start and at or before the next word's start (so starts and ends are non-decreasing)."""
    bad_time = no_text = out_of_order = merged = cut = dropped_times = 0
    kept: list[Cue] = []
    for cue in cues:
        s, e = float(cue.start), float(cue.end)
        if not (math.isfinite(s) and math.isfinite(e)) or s < 0 or e - s < _TIME_EPS:
            bad_time += 1
        elif _word_count(cue.text) == 0:
            no_text += 1
        else:
            kept.append(cue)
    latest = -math.inf
    for cue in kept:
        out_of_order += cue.start < latest
        latest = max(latest, cue.start)
    ordered = sorted(kept, key=lambda c: c.start)  # stable

    # same start: one cue
    groups: list[list[Cue]] = []
    for cue in ordered:
        if groups and cue.start - groups[-1][0].start < _TIME_EPS:
            groups[-1].append(cue)
        else:
            groups.append([cue])
    merged_cues: list[tuple[float, float, str, tuple[float, ...] | None]] = []
    for group in groups:
        if len(group) == 1:
            c = group[0]
            merged_cues.append((float(c.start), float(c.end), c.text, c.word_times))
            continue
        merged += len(group) - 1
        texts: list[str] = []
        times: list[float] | None = []
        for c in group:  # file order: the sort is stable within the 0.5 ms of a group too
            if c.text in texts:
                continue
            texts.append(c.text)
            if times is not None and c.word_times is not None:
                times.extend(c.word_times)
            else:
                times = None
        merged_cues.append((float(group[0].start), max(float(c.end) for c in group), " ".join(texts),
                            None if times is None else tuple(times)))

    out: list[Cue] = []
    for k, (s, e, text, times) in enumerate(merged_cues):
        if k + 1 < len(merged_cues) and e > merged_cues[k + 1][0]:
            e = merged_cues[k + 1][0]  # >= s + 0.5 ms: starts of different groups are that far apart
            cut += 1
        e = _spread_safe_end(s, e, _word_count(text))
        times, dropped = _checked_times(times, s, e, sum(1 for t in text.split(" ") if t))
        dropped_times += dropped
        out.append(Cue(s, e, text, times))
    return out, CueReport(cues_in=len(cues), cues_out=len(out), bad_time=bad_time, no_text=no_text,
                          out_of_order=out_of_order, merged=merged, overlaps_cut=cut,
                          times_dropped=dropped_times)


def load_captions(data: bytes, fmt: str | None, name: str) -> tuple[list[Cue], CaptionReport]:
    """A caption file's bytes to validated cues: decode, format (`fmt` when it is one of FORMATS, else
    by `name`'s extension or the content: caption_format), parse, validate_cues.

    Raises CaptionError when the file is in no format we read or does not parse."""
    text, bad, encoding = _decode(data)
    if fmt not in FORMATS:
        fmt = caption_format(name, text)
    cues, report = validate_cues(parse_captions(text, fmt))
    return cues, CaptionReport(**vars(report), bad_bytes=bad, encoding=encoding, format=fmt)
