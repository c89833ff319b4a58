"""Frames at 2 fps and the interleaved frame-word turns of LiveCC's streaming format (LIVECC_SPEC section 8).

`sample_frames` picks, from the decoded frames' timestamps, the frame at or after each of start, start+0.5,
... (at most 480; the count padded to even by repeating the last). `interleave` cuts those frames into
steps (the first 3 s = 6 frames, then 1 s = 2 frames) and gives each step the words whose end time is at
or before the timestamp of the step's last frame and that were not emitted yet, space-joined, then " ...".

Unlike the reference loader, every word of the clip is emitted exactly once and in order: words that end
after the last frame go to the last step (the reference never emitted them), and the word cursor always
points past the last emitted word (the reference could repeat it). Trailing silent steps are removed, as
in the reference.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Any, Sequence

FPS = 2.0
MAX_FRAMES = 480
FRAME_FACTOR = 2          # Qwen2-VL's temporal patch: frame counts are even
INITIAL_FRAMES = 6        # the first step: 3 s
STEP_FRAMES = 2           # then 1 s per step
STREAMING = " ..."        # ends every assistant turn: the stream goes on


def sample_frames(frame_times: Sequence[float], start: float, end: float, fps: float = FPS,
                  max_frames: int = MAX_FRAMES) -> list[int]:
    """Indices into `frame_times` (the decoded frames' timestamps, ascending) of the clip's frames."""
    inside = [i for i, t in enumerate(frame_times) if start <= t <= end]
    if not inside:
        return []
    first, last = frame_times[inside[0]], frame_times[inside[-1]]
    wanted = [first + k / fps for k in range(int((last - first) * fps + 1e-6) + 1)][:max_frames]
    times = [frame_times[i] for i in inside]
    picked = [inside[min(bisect.bisect_left(times, t - 1e-9), len(inside) - 1)] for t in wanted]
    while len(picked) % FRAME_FACTOR:
        picked.append(picked[-1])
    return picked


@dataclass(frozen=True)
class Step:
    first: int          # frames [first, last) of the clip's sampled frames
    last: int
    start_s: float      # the step's span, seconds from the clip's first frame (Time=a-b s)
    end_s: float
    words: tuple[str, ...]

    @property
    def time_text(self) -> str:
        return f"Time={self.start_s:.1f}-{self.end_s:.1f}s"

    @property
    def text(self) -> str:
        """The assistant turn: the step's words, then " ..." (a silent step is just " ...")."""
        return " ".join(self.words) + STREAMING


def step_spans(count: int, fps: float = FPS, initial_frames: int = INITIAL_FRAMES,
               step_frames: int = STEP_FRAMES) -> list[Step]:
    """The steps over `count` sampled frames, without words: frames [0, 6), then 2 at a time."""
    edges = [0] + [b for b in range(0, count, step_frames) if b >= initial_frames]
    return [Step(first, edges[n + 1] if n + 1 < len(edges) else count, first / fps,
                 (first + (initial_frames if n == 0 else step_frames)) / fps, ())
            for n, first in enumerate(edges) if count]


def interleave(words: Sequence[Sequence[Any]], frame_times: Sequence[float], fps: float = FPS,
               initial_frames: int = INITIAL_FRAMES, step_frames: int = STEP_FRAMES) -> list[Step]:
    """Steps over the clip's sampled frames (`frame_times`: their timestamps, in the words' timeline).
    `words`: [start, end, word] in time order."""
    steps: list[Step] = []
    cursor = 0
    spans = step_spans(len(frame_times), fps, initial_frames, step_frames)
    for n, span in enumerate(spans):
        final = n + 1 == len(spans)
        stamp = frame_times[span.last - 1]
        taken = []
        while cursor < len(words) and (final or words[cursor][1] <= stamp):
            taken.append(str(words[cursor][2]).strip())
            cursor += 1
        steps.append(replace(span, words=tuple(w for w in taken if w)))
    while steps and not steps[-1].words:
        steps.pop()
    return steps


def context_text(query: str | None, title: str | None, previous: str | None, with_context: bool) -> str:
    """The text of the first user turn: the query, and with context the title and previous words (the
    title dropped when there are previous words)."""
    query = (query or "").strip()
    if not with_context:
        return query
    previous = (previous or "").strip()
    title = "" if previous else (title or "").strip()
    return "\n".join(part for part in (query, title, previous) if part)
