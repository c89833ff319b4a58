"""clip_split: a video's timed words to candidate clips (LIVECC_SPEC section 3).

Reads:   the `ok` rows of `caption_words` (or of an ASR stage with the same columns): id, title,
         category, media_path, words (list of {start, end, word}).
Adds:    one row per candidate clip: `id` = `clip_id` = `<video>_<start ms>_<end ms>` (manifests.ids;
         `_2`, `_3`... appended in the rare case two candidates of a video share it), `video_id`,
         `start` (first word start), `end` (last word end), `words`, `previous` (every word of the video
         before the clip, space-joined; filled on kept clips only, None on dropped ones), `word_count`,
         `span` (seconds: last - first word END time in pretrain mode, START time in sft mode) and
         `wps` (words / span; None when span <= 0), plus title, category, media_path.
Drops:   `too_short` (span < min_span), `too_slow` (wps < min_wps), `too_fast` (wps > max_wps);
         sft mode also `no_sentence_start` (words between a clip boundary and the next word that may
         start a clip: they are in no clip); `no_clips`: a video without any candidate (no words), as
         one row with `id` = the video id.
Errors:  a row whose words cannot be read (bad structure, non-finite times) becomes an `error` row.
Resources: CPU only, one core; no model. The whole part is split at once (`stages/lib/clips.py`).

Modes: `pretrain` (A1: gaps and span on word end times) and `sft` (B3: on start times; a clip starts
only at a sentence start). `drop_last_word` reproduces the reference script's quirk (the video's last
word is never in a clip); `sft_allcaps_start` the SFT reference's all-caps start test.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from manifests.ids import clip_id
from manifests.schemas import CLIP_SPLIT, WORDS
from pipeline.stage import PartContext, Resources, Stage, dropped, error_from_exception, ok
from stages.lib.clips import KEPT, MODES, NO_CLIPS, REASONS, ClipRules, previous_texts, split_clips
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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of: {', '.join(MODES)} (got {self.mode!r})")
        self.rules()  # validates the thresholds

    def rules(self) -> ClipRules:
        return ClipRules(mode=self.mode, max_gap=self.max_gap, min_span=self.min_span,
                         max_span=self.max_span, min_wps=self.min_wps, max_wps=self.max_wps,
                         drop_last_word=self.drop_last_word, sft_allcaps_start=self.sft_allcaps_start)


class ClipSplit(Stage):
    name = "clip_split"
    Config = Config
    schema = CLIP_SPLIT

    def resources(self) -> Resources:
        return Resources(cpus=1.0)

    def process(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        per_row: list[list[dict]] = [[] for _ in rows]
        good, words = self._read_words(rows, per_row)
        if good:
            try:
                self._clip_rows(rows, good, words, per_row)
            except Exception:
                for k in good:  # isolate the row that breaks the vectorised path
                    try:
                        single = WordArrays.from_list_array(pa.array([rows[k].get("words") or []], type=WORDS))
                        self._clip_rows(rows, [k], single, per_row)
                    except Exception as exc:
                        per_row[k] = [_error_row(rows[k], exc, with_traceback=True)]
        return [r for rs in per_row for r in rs]

    @staticmethod
    def _read_words(rows: list[dict], per_row: list[list[dict]]) -> tuple[list[int], WordArrays | None]:
        """Indices of the rows with readable words, and those words as flat arrays; the other rows
        get an error row in `per_row`."""
        values = [r.get("words") or [] for r in rows]
        try:
            arr = pa.array(values, type=WORDS)
            good = list(range(len(rows)))
        except Exception:
            parts, good = [], []
            for k, v in enumerate(values):
                try:
                    parts.append(pa.array([v], type=WORDS))
                    good.append(k)
                except Exception as exc:
                    per_row[k] = [_error_row(rows[k], exc, with_traceback=True)]
            if not good:
                return good, None
            arr = pa.concat_arrays(parts)
        flat = arr.flatten()
        bad_word = np.asarray(flat.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        for name in ("start", "end", "word"):
            field = flat.field(name)
            if field.null_count:
                bad_word |= field.is_null().to_numpy(zero_copy_only=False)
        for name in ("start", "end"):
            values_np = flat.field(name).fill_null(0.0).to_numpy(zero_copy_only=False)
            bad_word |= ~np.isfinite(values_np)
        if bad_word.any():
            lengths = np.asarray(arr.value_lengths().to_numpy(zero_copy_only=False), dtype=np.int64)
            video_of = np.repeat(np.arange(len(good)), lengths)
            bad_video = np.zeros(len(good), dtype=bool)
            bad_video[video_of[bad_word]] = True
            for q in np.flatnonzero(bad_video).tolist():
                per_row[good[q]] = [_error_row(rows[good[q]], ValueError(
                    "words with a missing or non-finite start, end or word"))]
            keep = np.flatnonzero(~bad_video)
            arr = arr.take(pa.array(keep))
            good = [good[q] for q in keep.tolist()]
        if not good:
            return good, None
        return good, WordArrays.from_list_array(arr)

    def _clip_rows(self, rows: list[dict], which: list[int], words: WordArrays,
                   per_row: list[list[dict]]) -> None:
        clips = split_clips(words, self.config.rules())
        previous = previous_texts(words, clips, clips.code == KEPT)
        offsets = clips.per_video(words.n_videos)
        starts, ends = clips.start.tolist(), clips.end.tolist()
        spans, wps = clips.span.tolist(), clips.wps.tolist()
        firsts = (clips.first - words.offsets[clips.video]).tolist()
        stops = (clips.stop - words.offsets[clips.video]).tolist()
        codes = clips.code.tolist()
        results = {}
        for v, k in enumerate(which):
            row = rows[k]
            vid = row["id"]
            base = {"video_id": vid, "title": row.get("title"), "category": row.get("category"),
                    "media_path": row.get("media_path")}
            a, b = int(offsets[v]), int(offsets[v + 1])
            if a == b:
                results[k] = [dropped({"id": vid, **base}, NO_CLIPS, clip_id=None, words=None,
                                      previous=None, word_count=0, start=None, end=None, span=None,
                                      wps=None)]
                continue
            video_words = row.get("words") or []
            out, seen = [], {}
            for q in range(a, b):
                cid = clip_id(vid, starts[q], ends[q])
                if cid in seen:
                    seen[cid] += 1
                    cid = f"{cid}_{seen[cid]}"
                else:
                    seen[cid] = 1
                fields = dict(base, id=cid, clip_id=cid, start=starts[q], end=ends[q],
                              words=video_words[firsts[q]:stops[q]], previous=previous[q],
                              word_count=stops[q] - firsts[q], span=spans[q],
                              wps=None if math.isnan(wps[q]) else wps[q])
                if codes[q] == KEPT:
                    out.append(ok(fields))
                else:
                    out.append(dropped(fields, REASONS[codes[q]]))
            results[k] = out
        for k, r in results.items():
            per_row[k] = r


def _error_row(row: dict, exc: BaseException, with_traceback: bool = False) -> dict:
    r = error_from_exception({"id": row.get("id"), "video_id": row.get("id")}, exc)
    if with_traceback:
        r["_traceback"] = traceback.format_exc()
    return r
