"""The run report's clip gallery: for kept clips and for each drop or error reason of the clip stages, a
few clips, each with a strip of thumbnails (frames from the clip, JPEG inlined as data URIs), its words
on a timeline, its scores and its reason."""
from __future__ import annotations

import base64
import html
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

THUMB_WIDTH = 160


@dataclass
class Card:
    stage: str
    status: str
    reason: str
    code: str                           # the reason's code (worker.reason_codes)
    clip_id: str
    title: str
    start: float
    end: float
    words: list[dict]
    scores: dict[str, float]
    media: str | None                   # a local media file, or None when the run's media is not at hand
    thumbs: list[str] = field(default_factory=list)   # data URIs


def pick_cards(stage: str, rows: list[dict], scores: list[str], per_reason: int, kept: int) -> list[Card]:
    """Up to `per_reason` rows for each (status, reason code) of a clip stage's manifest, `kept` of its ok
    rows; spread over the manifest (every n-th), not its first rows. Rows carry their `reason_code`
    (report.sample_rows)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["status"], row["reason_code"]), []).append(row)
    cards = []
    for (status, code), members in sorted(groups.items()):
        want = kept if status == "ok" else per_reason
        step = max(1, len(members) // max(1, want))
        for row in members[::step][:want]:
            cards.append(Card(stage=stage, status=status, reason=row.get("reason") or "", code=code,
                              clip_id=str(row.get("clip_id") or row["id"]), title=str(row.get("title") or ""),
                              start=float(row.get("start") or 0.0), end=float(row.get("end") or 0.0),
                              words=list(row.get("words") or []),
                              scores={c: row[c] for c in scores if isinstance(row.get(c), (int, float))},
                              media=row.get("media_path")))
    return cards


def thumbnail(path: str, at: float, timeout: float = 30.0) -> str | None:
    """One frame at `at` seconds as a JPEG data URI (None when it does not decode)."""
    try:
        proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{max(0.0, at):.3f}", "-i", path,
                               "-frames:v", "1", "-vf", f"scale={THUMB_WIDTH}:-2", "-q:v", "5", "-f", "image2pipe",
                               "-vcodec", "mjpeg", "-"], capture_output=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if proc.returncode != 0 or not proc.stdout:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(proc.stdout).decode()


def add_thumbnails(cards: list[Card], per_clip: int = 4, threads: int = 4) -> None:
    """Fills each card's `thumbs`: `per_clip` frames spread over the clip (ffmpeg, `threads` at a time)."""
    jobs = []
    for card in cards:
        if card.media:
            span = max(card.end - card.start, 0.0)
            jobs += [(card, card.start + span * (i + 0.5) / per_clip) for i in range(per_clip)]
    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(lambda job: thumbnail(job[0].media, job[1]), jobs))
    for (card, _), uri in zip(jobs, found):
        if uri:
            card.thumbs.append(uri)


def timeline_html(card: Card, row_seconds: float = 10.0) -> str:
    """The clip's words in rows of `row_seconds` of clip time, each word titled with its times."""
    rows: dict[int, list[str]] = {}
    for w in card.words:
        if w.get("start") is None or w.get("end") is None:
            continue
        start, end = float(w["start"]), float(w["end"])
        rows.setdefault(int(max(start - card.start, 0.0) // row_seconds), []).append(
            f'<span class="w" title="{start:.2f}-{end:.2f} s">{html.escape(str(w["word"]).strip())}</span>')
    return "".join(f'<div class="trow"><span class="t">{card.start + k * row_seconds:.0f} s</span>{" ".join(words)}</div>'
                   for k, words in sorted(rows.items()))


def card_html(card: Card) -> str:
    esc = html.escape
    thumbs = "".join(f'<img src="{uri}" alt="frame">' for uri in card.thumbs) or \
        '<div class="nomedia">no frames: media not at hand</div>'
    scores = " ".join(f"<code>{esc(k)} {v:.3g}</code>" for k, v in card.scores.items())
    reason = f'<div class="reason">{esc(card.reason)}</div>' if card.reason else ""
    return (f'<div class="clip {esc(card.status)}" data-stage="{esc(card.stage)}" data-status="{esc(card.status)}" '
            f'data-reason="{esc(card.code)}">'
            f'<div class="head"><b>{esc(card.clip_id)}</b> {esc(card.title)} '
            f'<span class="time">{card.start:.1f}-{card.end:.1f} s, {len(card.words)} words</span></div>'
            f'<div class="thumbs">{thumbs}</div><div class="timeline">{timeline_html(card)}</div>'
            f'<div class="scores">{scores}</div>{reason}</div>')
