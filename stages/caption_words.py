"""caption_words: a video's caption file to timed words (LIVECC_SPEC section 2).

Reads:   the `ok` rows of `download`: id, title, category, duration, media_path, captions_path (relative
         to the run folder, absolute, or a URI), captions_kind, captions_format (vtt | srt | json3;
         sniffed from the file when absent).
Adds:    `words` (list of {start, end, word}, seconds rounded to 0.1 s), `word_count`, `distinct_words`.
Drops:   `no_words`: nothing is left after the rules (e.g. only `[Music]` cues);
         `too_few_words`: fewer than `min_distinct_words` distinct words (LIVECC_SPEC section 1: "at
         least 30 distinct caption words"). Distinct = case-insensitive, punctuation stripped from
         both ends of a word ("Hello," == "hello"), a punctuation-only token does not count.
Errors:  a missing, unreadable or unparsable captions file becomes an `error` row of its own
         (`FileNotFoundError: ...`, `CaptionError: ...`); the other rows of the part go on.
Resources: CPU only, one core; no model.

The rules (drop `[...]` cues, split on spaces, drop a word repeating the word before it, spread the cue
evenly or use YouTube's inline word times) live in `stages/lib/words.py`, vectorised over the whole
part; parsing (VTT incl. YouTube's rolling automatic captions, SRT, json3) in `stages/lib/captions.py`.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np

from manifests.schemas import CAPTION_WORDS
from pipeline.stage import PartContext, Resources, Stage, dropped, error_from_exception, ok
from stages.lib.captions import FORMATS, Cue, caption_format, parse_captions
from stages.lib.words import CueArrays, cues_to_words, distinct_word_counts


@dataclass(frozen=True)
class Config:
    use_inline_times: bool = True   # YouTube automatic captions: use the inline per-word times
    min_distinct_words: int = 30    # fewer distinct caption words: dropped `too_few_words`

    def __post_init__(self) -> None:
        if self.min_distinct_words < 0:
            raise ValueError("min_distinct_words must be >= 0")


def read_cues(row: dict, ctx: PartContext) -> list[Cue]:
    """Parse a row's captions file; raises on a missing path, file or bad content.

    `captions_path` is relative to the run folder (as download writes it), absolute, or a URI."""
    path = row.get("captions_path")
    if not path:
        raise FileNotFoundError("row has no captions_path")
    where = ctx.resolve(str(path))
    if "://" in where and not where.startswith("file://"):
        with fsspec.open(where, "rb") as f:
            data = f.read()
    else:
        data = Path(where.removeprefix("file://")).read_bytes()
    text = data.decode("utf-8-sig", errors="replace")
    fmt = row.get("captions_format")
    if fmt not in FORMATS:
        fmt = caption_format(where, text)
    return parse_captions(text, fmt)


class CaptionWords(Stage):
    name = "caption_words"
    Config = Config
    schema = CAPTION_WORDS

    def resources(self) -> Resources:
        return Resources(cpus=1.0)

    def process(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        out: list[dict | None] = [None] * len(rows)
        parsed: list[int] = []
        cue_lists: list[list[Cue]] = []
        for k, row in enumerate(rows):
            try:
                cue_lists.append(read_cues(row, ctx))
                parsed.append(k)
            except Exception as exc:  # one bad file never stops a part
                out[k] = error_from_exception(row, exc)
                out[k]["_traceback"] = traceback.format_exc()
        try:
            self._words_rows(rows, parsed, cue_lists, out)
        except Exception:
            # a bug or a pathological row in the vectorised path: isolate it row by row
            for k, cues in zip(parsed, cue_lists):
                try:
                    self._words_rows(rows, [k], [cues], out)
                except Exception as exc:
                    out[k] = error_from_exception(rows[k], exc)
                    out[k]["_traceback"] = traceback.format_exc()
        return [r for r in out if r is not None]

    def _words_rows(self, rows: list[dict], which: list[int], cue_lists: list[list[Cue]],
                    out: list[dict | None]) -> None:
        cues = CueArrays.from_cue_lists(cue_lists)
        if not np.all(np.isfinite(cues.start)) or not np.all(np.isfinite(cues.end)):
            raise ValueError("captions with non-finite cue times")
        words = cues_to_words(cues, self.config.use_inline_times)
        distinct = distinct_word_counts(words)
        counts = words.counts()
        results = {}
        for v, k in enumerate(which):
            row = rows[k]
            n = int(counts[v])
            fields = {"word_count": n, "distinct_words": int(distinct[v])}
            if n == 0:
                results[k] = dropped(row, "no_words", words=[], **fields)
            elif distinct[v] < self.config.min_distinct_words:
                results[k] = dropped(row, f"too_few_words: {int(distinct[v])} distinct < "
                                          f"{self.config.min_distinct_words}",
                                     words=words.video_dicts(v), **fields)
            else:
                results[k] = ok(row, words=words.video_dicts(v), **fields)
        for k, r in results.items():
            out[k] = r

