"""clip_split: a video's timed words to candidate clips (LIVECC_SPEC section 3).

Reads:   the `ok` rows of `caption_words` (or of an ASR stage with the same columns): id, title,
         category, media_path, words (list of {start, end, word}).
Adds:    one row per candidate clip: `id` = `clip_id` = `<video>_<start ms>_<end ms>` (manifests.ids;
         `_2`, `_3`... appended in the rare case two candidates of a video share it), `video_id`,
         `start` (first word start), `end` (last word end), `words`, `previous` (every word of the video
         before the clip, space-joined; filled on kept clips only, None on dropped ones), `word_count`,
         `span` (seconds: last - first word END time in pretrain mode, START time in sft mode) and
         `wps` (words / span; None when span <= 0), plus title, category, media_path.
Drops:   `too_short` (span < min_span), `too_slow` (wps < min_wps), `too_fast` (wps > max_wps; both
         rate tests only with `rate_filter`, by default on in pretrain mode and off in sft mode, as in
         the spec and the reference scripts); sft mode also `no_sentence_start` (words between a clip
         boundary and the next word that may start a clip: they are in no clip); `no_clips`: a video
         without any candidate (no words), as one row with `id` = the video id.
Errors:  a row whose words cannot be read (bad structure, non-finite times) becomes an `error` row.
Resources: CPU only, one core; no model. The whole part is split at once (`stages/lib/clips.py`), on
         Arrow tables: a clip's word list is a slice of the input's, never a Python object per word.

Modes: `pretrain` (A1: gaps and span on word end times; reference: showlab/livecc
`data/production/pretrain_to_clips.py`) and `sft` (B3: on start times; a clip starts only at a
sentence start; reference: the public `data/production/sft_to_clips.py`). By default the rules are
the spec's, compared exactly (integer microseconds). `drop_last_word` adds the scripts' quirk that the
video's last word is never in a clip; `sft_allcaps_start` the SFT script's start test (`word.isupper()`,
an all-caps word, instead of the paper's capital first letter). `reference_exact` (both modes)
reproduces the scripts clip for clip: both quirks (it implies the two options), their float
comparisons (ends 30.2 and 33.2 are a gap break there) and, in sft mode, `previous` joined from
stripped words (the script's `preasr`); the clips the scripts leave out stay candidates with a drop
reason. Details: `stages/lib/clips.py`.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from manifests.ids import clip_id
from manifests.schemas import CLIP_SPLIT, WORDS
from pipeline.stage import (DROPPED, ERROR, OK, TRACEBACK, ColumnarStage, PartContext, Resources, column_array,
                            ORDINAL, ROW, conform, error_from_exception, in_input_order)
from stages.lib.clips import KEPT, MODES, NO_CLIPS, REASONS, ClipRules, previous_array, split_clips
from stages.lib.words import WordArrays


@dataclass(frozen=True)
class Config:
    mode: str = "pretrain"        # pretrain | sft
    max_gap: float = 3.0          # s: a larger gap between consecutive words starts a new clip
    min_span: float = 30.0        # s: shorter clips are dropped (too_short)
    max_span: float = 240.0       # s: a clip never spans more
    min_wps: float = 1.0          # words per second, inclusive
    max_wps: float = 4.0
    drop_last_word: bool = False  # reference-script quirk: the last word of a video is in no clip
    sft_allcaps_start: bool = False  # reference-script quirk: SFT clips start at ALL-CAPS words
    rate_filter: bool | None = None  # min_wps/max_wps test; None: on in pretrain, off in sft mode
    reference_exact: bool = False  # the reference scripts clip for clip (implies the two quirks)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of: {', '.join(MODES)} (got {self.mode!r})")
        self.rules()  # validates the thresholds

    def rules(self) -> ClipRules:
        return ClipRules(mode=self.mode, max_gap=self.max_gap, min_span=self.min_span,
                         max_span=self.max_span, min_wps=self.min_wps, max_wps=self.max_wps,
                         drop_last_word=self.drop_last_word, sft_allcaps_start=self.sft_allcaps_start,
                         rate_filter=self.rate_filter, reference_exact=self.reference_exact)


class ClipSplit(ColumnarStage):
    name = "clip_split"
    Config = Config
    schema = CLIP_SPLIT

    def thresholds(self) -> dict[str, tuple[float, ...]]:
        rules = self.config.rules()
        rates = (rules.min_wps, rules.max_wps) if rules.checks_rate else ()
        return {"span": (rules.min_span, rules.max_span), "wps": rates}

    def resources(self) -> Resources:
        return Resources(cpus=1.0)

    def process_table(self, table: pa.Table, ctx: PartContext) -> pa.Table:
        """Columnar: word lists stay Arrow arrays from the input manifest to the output one."""
        words = column_array(table, "words", WORDS)
        bad = _unreadable(words)
        good = np.flatnonzero(~bad)
        pieces = [self._error_rows(table, np.flatnonzero(bad),
                                   "ValueError: words with a missing or non-finite start, end or word")]
        try:
            lists = words if len(good) == len(words) else words.take(pa.array(good, type=pa.int64()))
            pieces.append(self._clip_rows(table, good, lists))
        except Exception:
            # a pathological row broke the vectorised path: isolate it, one video at a time
            for k in good.tolist():
                try:
                    pieces.append(self._clip_rows(table, np.array([k]), words.slice(k, 1)))
                except Exception as exc:
                    row = error_from_exception({"id": table.column("id")[k].as_py()}, exc)
                    pieces.append(self._error_rows(table, np.array([k]), row["reason"],
                                                   traceback.format_exc()))
        pieces = [p for p in pieces if p.num_rows]
        out = pa.concat_tables(pieces, promote_options="default") if pieces else _empty(self.schema)
        return in_input_order(out)

    def _clip_rows(self, table: pa.Table, rows: np.ndarray, lists: pa.Array) -> pa.Table:
        """The candidate clips (and `no_clips` rows) of input rows `rows`, whose word lists are `lists`."""
        words = WordArrays.from_list_array(lists)
        clips = split_clips(words, self.config.rules())
        kept = clips.code == KEPT
        previous = previous_array(words, clips, kept)
        video_ids = table.column("id").take(pa.array(rows, type=pa.int64()))
        per_video = clips.per_video(words.n_videos)
        ordinal = np.arange(len(clips), dtype=np.int64) - per_video[clips.video]
        clip_videos = video_ids.take(pa.array(clips.video, type=pa.int64()))
        ids = _clip_ids(clip_videos, clips.start, clips.end)
        row_of_clip = rows[clips.video]
        count = clips.stop - clips.first
        clip_words = _word_ranges(lists, clips.first, clips.stop)
        reasons = [REASONS.get(c) for c in clips.code.tolist()]
        wps = pa.array(clips.wps, mask=np.isnan(clips.wps))
        clip_table = _with_row_fields(table, row_of_clip, {
            "id": ids, "status": pa.array(np.where(kept, OK, DROPPED).tolist()),
            "reason": pa.array(reasons, pa.string()), "clip_id": ids, "video_id": clip_videos,
            "start": pa.array(clips.start), "end": pa.array(clips.end), "words": clip_words,
            "previous": previous, "word_count": pa.array(count),
            "span": pa.array(clips.span), "wps": wps, ORDINAL: pa.array(ordinal)})
        empty = np.flatnonzero(np.diff(per_video) == 0)
        empty_ids = video_ids.take(pa.array(empty, type=pa.int64()))
        no_clips = _with_row_fields(table, rows[empty], {
            "id": empty_ids, "status": pa.array([DROPPED] * len(empty), pa.string()),
            "reason": pa.array([NO_CLIPS] * len(empty), pa.string()), "video_id": empty_ids,
            "word_count": pa.array(np.zeros(len(empty), dtype=np.int64)),
            ORDINAL: pa.array(np.zeros(len(empty), dtype=np.int64))})
        return pa.concat_tables([_conform(clip_table, self.schema), _conform(no_clips, self.schema)])

    def _error_rows(self, table: pa.Table, rows: np.ndarray, reason: str, trace: str | None = None) -> pa.Table:
        ids = table.column("id").take(pa.array(rows, type=pa.int64()))
        columns = {"id": ids, "status": pa.array([ERROR] * len(rows), pa.string()),
                   "reason": pa.array([reason] * len(rows), pa.string()), "video_id": ids,
                   ORDINAL: pa.array(np.zeros(len(rows), dtype=np.int64))}
        out = _conform(_with_row_fields(table, rows, columns), self.schema)
        if trace:
            out = out.append_column(TRACEBACK, pa.array([trace] * len(rows), pa.string()))
        return out


ROW_FIELDS = ("title", "category", "media_path")


def _unreadable(lists: pa.Array) -> np.ndarray:
    """bool per row: its words hold a null word, start, end or text, or a non-finite time."""
    bad = np.zeros(len(lists), dtype=bool)
    if len(lists) == 0:
        return bad
    flat = pc.list_flatten(lists)
    bad_word = np.zeros(len(flat), dtype=bool)
    if flat.null_count:
        bad_word |= flat.is_null().to_numpy(zero_copy_only=False)
    for name in ("start", "end", "word"):
        field = pc.struct_field(flat, name)
        if field.null_count:
            bad_word |= field.is_null().to_numpy(zero_copy_only=False)
            field = field.fill_null(0.0) if name != "word" else field
        if name != "word":
            bad_word |= ~np.isfinite(field.to_numpy(zero_copy_only=False))
    if bad_word.any():
        parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        bad[parent[bad_word]] = True
    return bad


def _word_ranges(lists: pa.Array, first: np.ndarray, stop: np.ndarray) -> pa.Array:
    """A list array whose element q holds the words [first[q], stop[q]) of the flattened `lists`.
    Candidate clips usually tile the words (each word in one candidate): then the values are shared,
    not copied."""
    values = pc.list_flatten(lists) if len(lists) else pa.array([], type=WORDS.value_type)
    count = stop - first
    offsets = np.zeros(len(first) + 1, dtype=np.int64)
    np.cumsum(count, out=offsets[1:])
    if len(first) and np.array_equal(first[1:], stop[:-1]):
        values = values.slice(int(first[0]), int(offsets[-1]))
    else:
        flat = np.repeat(first - offsets[:-1], count) + np.arange(int(offsets[-1]), dtype=np.int64)
        values = values.take(pa.array(flat, type=pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values, type=WORDS)


def _with_row_fields(table: pa.Table, rows: np.ndarray, columns: dict) -> pa.Table:
    """`columns` plus the fields every output row copies from its input row (title, ...) and `_row`."""
    take = pa.array(rows, type=pa.int64())
    out = dict(columns)
    for name in ROW_FIELDS:
        if name in table.schema.names:
            out[name] = table.column(name).take(take)
    out[ROW] = take
    return pa.table(out)


ORDER = [pa.field(ROW, pa.int64()), pa.field(ORDINAL, pa.int64())]


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The schema's columns (missing ones null) plus the ordering columns `_row` and `_ordinal`."""
    return conform(table, pa.schema([*schema, *ORDER]))


def _empty(schema: pa.Schema) -> pa.Table:
    return _conform(schema.empty_table(), schema)


def _clip_ids(videos: pa.Array, start: np.ndarray, end: np.ndarray) -> pa.Array:
    """`manifests.ids.clip_id` of every clip, built on columns; `_2`, `_3`... when two candidates of a
    video share one (rare: times going backwards)."""
    ms = [np.rint(np.asarray(t, dtype=np.float64) * 1000) for t in (start, end)]
    if len(videos) == 0 or any((m < 0).any() or not np.isfinite(m).all() for m in ms):
        ids = [clip_id(v, a, b) for v, a, b in zip(videos.to_pylist(), start.tolist(), end.tolist())]
    else:
        padded = [pc.utf8_lpad(pa.array(m.astype(np.int64)).cast(pa.string()), 8, "0") for m in ms]
        ids = pc.binary_join_element_wise(videos.cast(pa.string()), *padded, "_")
        if pc.count_distinct(ids).as_py() == len(ids):
            return ids
        ids = ids.to_pylist()
    out, seen = [], {}
    for cid in ids:
        seen[cid] = seen.get(cid, 0) + 1
        out.append(cid if seen[cid] == 1 else f"{cid}_{seen[cid]}")
    return pa.array(out, pa.string())
