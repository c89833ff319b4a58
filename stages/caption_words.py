"""caption_words: a video's caption file to timed words (LIVECC_SPEC section 2).

Reads:   the `ok` rows of `download`: id, title, category, duration, media_duration (decodable seconds of
         the video), media_path, captions_path (relative to the run folder, absolute, or a URI),
         captions_kind, captions_format (vtt | srt | json3; sniffed from the file when absent).
Adds:    `words` (list of {start, end, word}, seconds rounded to 0.1 s), `word_count`, `distinct_words`,
         and what checking the file found: `cues` (cues read), `cues_dropped` (negative, reversed,
         zero-length or non-finite times), `cues_unordered` (listed out of start order; sorted),
         `bad_bytes` (undecodable bytes dropped), `words_past_media` (words ending more than
         `media_tolerance_s` after the decodable media: dropped, no frame could show them).
Drops:   `no_words`: nothing is left after the rules (e.g. only `[Music]` cues, or every word past the
         media's end); `too_few_words`: fewer than `min_distinct_words` distinct words (LIVECC_SPEC
         section 1: "at least 30 distinct caption words"). Distinct = case-insensitive, punctuation
         stripped from both ends of a word ("Hello," == "hello"), a punctuation-only token does not count.
Errors:  a missing, unreadable or unparsable captions file becomes an `error` row of its own
         (`FileNotFoundError: ...`, `CaptionError: ...`); the other rows of the part go on.
Resources: CPU only, one core; no model.

Decoding, parsing and cue validation (VTT incl. YouTube's rolling automatic captions, SRT, json3;
markup, entities, encodings; cues sorted, bad times dropped, overlaps cut so word times never go
backwards) live in `stages/lib/captions.py`; the word rules (drop `[...]` cues, split on spaces, drop a
word repeating the word before it, spread the cue evenly or use YouTube's inline word times) in
`stages/lib/words.py`, vectorised over the whole part. The stage works on Arrow tables: word lists
never become Python objects.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa

from manifests.schemas import CAPTION_WORDS
from pipeline.stage import (DROPPED, OK, TRACEBACK, ColumnarStage, PartContext, Resources, column_array,
                            ROW, error_from_exception, in_input_order, rows_to_table)
from stages.lib.captions import FORMATS, CaptionReport, Cue, load_captions
from stages.lib.media import within_media
from stages.lib.words import CueArrays, cues_to_words, distinct_word_counts


@dataclass(frozen=True)
class Config:
    use_inline_times: bool = True   # YouTube automatic captions: use the inline per-word times
    min_distinct_words: int = 30    # fewer distinct caption words: dropped `too_few_words`
    # s: a word ending later than this past the media's decodable end (download's `media_duration`)
    # is dropped and counted in `words_past_media`: no frame can show it
    media_tolerance_s: float = 0.5

    def __post_init__(self) -> None:
        if self.min_distinct_words < 0:
            raise ValueError("min_distinct_words must be >= 0")
        if not self.media_tolerance_s >= 0:
            raise ValueError("media_tolerance_s must be >= 0")


def read_captions(row: dict, ctx: PartContext) -> tuple[list[Cue], CaptionReport]:
    """Decode, parse and validate a row's captions file; raises on a missing path or file and on
    content in no known format.

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
    fmt = row.get("captions_format")
    return load_captions(data, fmt if fmt in FORMATS else None, where)


class CaptionWords(ColumnarStage):
    name = "caption_words"
    Config = Config
    schema = CAPTION_WORDS
    version = 2

    def resources(self) -> Resources:
        return Resources(cpus=1.0)

    def process_table(self, table: pa.Table, ctx: PartContext) -> pa.Table:
        """Files are parsed one by one (Python); the word rules run on the whole part at once and the
        word lists go to the manifest as Arrow arrays (no Python object per word)."""
        rows = table.drop_columns([c for c in ("words",) if c in table.schema.names]).to_pylist()
        errors: list[dict] = []
        parsed: list[int] = []
        cue_lists: list[list[Cue]] = []
        reports: list[CaptionReport] = []
        for k, row in enumerate(rows):
            try:
                cues, report = read_captions(row, ctx)
            except Exception as exc:  # one bad file never stops a part
                errors.append({**error_from_exception(row, exc), ROW: k, TRACEBACK: traceback.format_exc()})
                continue
            parsed.append(k)
            cue_lists.append(cues)
            reports.append(report)
        pieces = [rows_to_table(errors, self.schema.append(pa.field(ROW, pa.int64())))] if errors else []
        try:
            pieces.append(self._words_table(table, parsed, cue_lists, reports))
        except Exception:
            # a bug or a pathological row in the vectorised path: isolate it row by row
            for k, cues, report in zip(parsed, cue_lists, reports):
                try:
                    pieces.append(self._words_table(table, [k], [cues], [report]))
                except Exception as exc:
                    row = {**error_from_exception(rows[k], exc), ROW: k, TRACEBACK: traceback.format_exc()}
                    pieces.append(rows_to_table([row], self.schema.append(pa.field(ROW, pa.int64()))))
        if not pieces:
            return self.schema.empty_table()
        out = pa.concat_tables(pieces, promote_options="default")
        return in_input_order(out)

    def _words_table(self, table: pa.Table, which: list[int], cue_lists: list[list[Cue]],
                     reports: list[CaptionReport]) -> pa.Table:
        cfg = self.config
        words = cues_to_words(CueArrays.from_cue_lists(cue_lists), cfg.use_inline_times)
        take = pa.array(which, type=pa.int64())
        media_duration = column_array(table, "media_duration", pa.float64()).take(take)
        per_word = np.repeat(media_duration.to_numpy(zero_copy_only=False), words.counts())
        keep = within_media(words.start, words.end, per_word, cfg.media_tolerance_s)
        past = words.counts() - words.select(keep).counts()
        words = words.select(keep)
        distinct = distinct_word_counts(words)
        counts = words.counts()
        status, reason = [], []
        for v, n in enumerate(counts.tolist()):
            d = int(distinct[v])
            if n == 0:
                status.append(DROPPED)
                reason.append(f"no_words: all {int(past[v])} words past the media end "
                              f"({media_duration[v].as_py():.1f} s)" if past[v] else "no_words")
            elif d < cfg.min_distinct_words:
                status.append(DROPPED)
                reason.append(f"too_few_words: {d} distinct < {cfg.min_distinct_words}")
            else:
                status.append(OK)
                reason.append(None)
        columns = {name: table.column(name).take(take) for name in PASSED_ON if name in table.schema.names}
        columns.update({
            "status": pa.array(status, pa.string()), "reason": pa.array(reason, pa.string()),
            "words": words.to_list_array(), "word_count": pa.array(counts),
            "distinct_words": pa.array(distinct.astype(np.int64)),
            "words_past_media": pa.array(past.astype(np.int64)),
            "cues": pa.array([r.cues_in for r in reports], pa.int64()),
            "cues_dropped": pa.array([r.bad_time for r in reports], pa.int64()),
            "cues_unordered": pa.array([r.out_of_order for r in reports], pa.int64()),
            "bad_bytes": pa.array([r.bad_bytes for r in reports], pa.int64()),
            ROW: take,
        })
        return pa.table(columns)


# input columns every output row carries unchanged
PASSED_ON = ("id", "title", "category", "duration", "media_duration", "media_path", "captions_kind")
