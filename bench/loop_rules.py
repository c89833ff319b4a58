"""The LiveCC word and clip rules as plain per-word Python loops.

Deliberately straightforward: one video at a time, one word at a time, close to the reference
scripts (showlab/livecc `data/production/pretrain_to_clips.py` and `sft_to_clips.py`) but in the
spec-clean convention below (the scripts' own float comparisons: `bench/reference_clips.py`). It is
the baseline of `bench/caption_clip.py` and the oracle the tests compare the vectorised code
(`stages/lib/words.py`, `stages/lib/clips.py`) with. It shares no code with them: the rules and
the exact-boundary convention (integer microseconds, rates as integers) are written out again here.
"""
from __future__ import annotations

from typing import Sequence

US = 1_000_000


def cue_words(cues: Sequence, use_inline_times: bool = True) -> list[tuple[float, float, str]]:
    """cues (objects with start, end, text, word_times) -> [(start, end, word)]."""
    out = []
    for cue in cues:
        if "[" in cue.text or "]" in cue.text:
            continue
        tokens = [w for w in cue.text.split(" ") if w]
        times = cue.word_times if use_inline_times else None
        if times is not None and (len(times) == 0 or len(times) != len(tokens)):
            times = None
        words, word_times = [], []
        for k, w in enumerate(tokens):
            if words and words[-1] == w:
                continue
            words.append(w)
            word_times.append(times[k] if times is not None else None)
        if not words:
            continue
        if times is not None:
            for k, w in enumerate(words):
                start = word_times[k]
                end = word_times[k + 1] if k + 1 < len(words) else cue.end
                out.append((round(start, 1), round(end, 1), w))
        else:
            duration = cue.end - cue.start
            per_word = duration / len(words)
            for i, w in enumerate(words):
                out.append((round(cue.start + i * per_word, 1), round(cue.start + (i + 1) * per_word, 1), w))
    return out


def _us(t: float) -> int:
    return round(t * US)


def can_start(words: list[tuple[float, float, str]], i: int, allcaps: bool) -> bool:
    if i == 0:
        return True
    prev = words[i - 1][2]
    if not (prev.endswith(".") or prev.endswith("?") or prev.endswith("!")):
        return False
    w = words[i][2]
    return w.isupper() if allcaps else w[:1].isupper()


def split(words: list[tuple[float, float, str]], mode: str = "pretrain", max_gap: float = 3.0,
          min_span: float = 30.0, max_span: float = 240.0, min_wps: float = 1.0, max_wps: float = 4.0,
          drop_last_word: bool = False, sft_allcaps_start: bool = False,
          rate_filter: bool | None = None) -> list[dict]:
    """One video's candidate clips: dicts with first, stop (word indices), verdict, span, previous.

    The rate test applies when `rate_filter` is true, or when it is None and the mode is pretrain
    (the SFT rules have no rate test)."""
    gap_us, min_us, max_us = round(max_gap * US), round(min_span * US), round(max_span * US)
    min_milli, max_milli = round(min_wps * 1000), round(max_wps * 1000)
    sft = mode == "sft"
    check_rate = (not sft) if rate_filter is None else rate_filter
    t = [_us(w[0] if sft else w[1]) for w in words]
    limit = len(words) - 1 if drop_last_word else len(words)
    clips = []
    i = 0
    while i < limit:
        if sft and not can_start(words, i, sft_allcaps_start):
            k = i
            while k < limit and not can_start(words, k, sft_allcaps_start):
                k += 1
            clips.append(_clip(words, t, i, k, "no_sentence_start"))
            i = k
            continue
        j = i + 1
        while j < limit:
            if t[j] - t[j - 1] > gap_us or t[j] - t[i] > max_us:
                break
            j += 1
        span = t[j - 1] - t[i]
        n = j - i
        if span < min_us:
            verdict = "too_short"
        elif check_rate and n * 1_000_000_000 < min_milli * span:
            verdict = "too_slow"
        elif check_rate and n * 1_000_000_000 > max_milli * span:
            verdict = "too_fast"
        else:
            verdict = "kept"
        clips.append(_clip(words, t, i, j, verdict))
        i = j
    return clips


def _clip(words, t, i, j, verdict):
    return {"first": i, "stop": j, "verdict": verdict, "span_us": t[j - 1] - t[i],
            "start": words[i][0], "end": words[j - 1][1],
            "previous": " ".join(w[2] for w in words[:i]) if verdict == "kept" else None}
