"""Caption cues to timed words (LIVECC_SPEC section 2), vectorised over many videos at once.

The rules, per cue, in order:
1. drop the cue when its text contains `[` or `]` (`[Music]`, `[Applause]`);
2. split the text on the ASCII space; empty tokens (from repeated, leading or trailing spaces) are
   not words. (The reference's `text.split(' ')` would turn them into empty words; the caption parser
   collapses whitespace anyway, so this only matters for texts from elsewhere.);
3. drop a word equal to the word just before it inside the same cue (so a run `a a a` keeps one `a`);
4. spread the cue's duration evenly over the words LEFT after step 3: word i of n gets
   `[start + i*d/n, start + (i+1)*d/n]` with `d = end - start`. This is the reference script's
   order (showlab/livecc `data/production/pretrain_to_clips.py`, `split2words`: it builds the
   de-duplicated word list first, then uses `len(words)` and `enumerate(words)`), computed with the
   same float operations (`d / n` once, then `start + i * (d / n)`);
5. or, when the cue carries inline word times (YouTube automatic captions) and `use_inline_times` is
   on: a word starts at its own inline time and ends at the next kept word's inline time (the cue end
   for the last word); a dropped duplicate's time is absorbed by the word before it. A cue whose
   inline times do not match its word count falls back to step 4;
6. round every start and end to 0.1 s exactly as Python's `round(x, 1)` does (the reference call).
   Inline times are rounded too: one time grid for all caption words (as the spec states for
   caption words), and 50 ms is far below the 0.5 s frame step of the 2 fps training reader.

Everything works on flat arrays of a whole part (cue starts/ends/texts plus per-video offsets) with
numpy and pyarrow compute; no Python loop runs per word. `bench/loop_rules.py` is the per-word
reference implementation that tests compare this module with.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.lib.captions import Cue


@dataclass
class CueArrays:
    """The cues of many videos: cue k of video v is at index `offsets[v] <= k < offsets[v+1]`.

    Inline word times of cue k (if any) are `times[time_offsets[k]:time_offsets[k+1]]`."""

    start: np.ndarray        # float64 [n_cues]
    end: np.ndarray          # float64 [n_cues]
    text: pa.Array           # string [n_cues]
    offsets: np.ndarray      # int64 [n_videos + 1]
    times: np.ndarray        # float64 [n_times]
    time_offsets: np.ndarray  # int64 [n_cues + 1]

    @property
    def n_videos(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_cue_lists(cls, videos: Sequence[Sequence[Cue]]) -> "CueArrays":
        counts = np.fromiter(map(len, videos), dtype=np.int64, count=len(videos))
        offsets = np.zeros(len(videos) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        cues = list(chain.from_iterable(videos))
        n = len(cues)
        start = np.fromiter(map(attrgetter("start"), cues), dtype=np.float64, count=n)
        end = np.fromiter(map(attrgetter("end"), cues), dtype=np.float64, count=n)
        text = pa.array(list(map(attrgetter("text"), cues)), type=pa.string())
        word_times = [t if t is not None else () for t in map(attrgetter("word_times"), cues)]
        time_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, word_times), dtype=np.int64, count=n), out=time_offsets[1:])
        times = np.fromiter(chain.from_iterable(word_times), dtype=np.float64, count=int(time_offsets[-1]))
        return cls(start, end, text, offsets, times, time_offsets)


@dataclass
class WordArrays:
    """The timed words of many videos: word k of video v is at `offsets[v] <= k < offsets[v+1]`."""

    start: np.ndarray    # float64 [n_words]
    end: np.ndarray      # float64 [n_words]
    word: pa.Array       # string [n_words]
    offsets: np.ndarray  # int64 [n_videos + 1]

    @property
    def n_videos(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def video(self, v: int) -> list[tuple[float, float, str]]:
        a, b = int(self.offsets[v]), int(self.offsets[v + 1])
        return list(zip(self.start[a:b].tolist(), self.end[a:b].tolist(), self.word[a:b].to_pylist()))

    def video_dicts(self, v: int) -> list[dict]:
        """One video's words as the manifest's `list<struct<start, end, word>>` Python value."""
        a, b = int(self.offsets[v]), int(self.offsets[v + 1])
        return [{"start": s, "end": e, "word": w} for s, e, w in
                zip(self.start[a:b].tolist(), self.end[a:b].tolist(), self.word[a:b].to_pylist())]

    def select(self, keep: np.ndarray) -> "WordArrays":
        """The words where `keep` is true (each video keeps its place, maybe with no words)."""
        if keep.all():
            return self
        video = np.repeat(np.arange(self.n_videos, dtype=np.int64), self.counts())
        offsets = np.zeros(self.n_videos + 1, dtype=np.int64)
        np.cumsum(np.bincount(video[keep], minlength=self.n_videos), out=offsets[1:])
        return WordArrays(self.start[keep], self.end[keep], self.word.filter(pa.array(keep)), offsets)

    def to_list_array(self) -> pa.Array:
        """The manifest's `list<struct<start, end, word>>`, one list per video (no per-word objects)."""
        values = pa.StructArray.from_arrays([pa.array(self.start), pa.array(self.end), _as_string_array(self.word)],
                                            names=["start", "end", "word"])
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), values)

    @classmethod
    def from_lists(cls, videos: Sequence[Sequence[tuple[float, float, str]]]) -> "WordArrays":
        counts = np.fromiter((len(v) for v in videos), dtype=np.int64, count=len(videos))
        offsets = np.zeros(len(videos) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat = [w for v in videos for w in v]
        n = len(flat)
        return cls(np.fromiter((w[0] for w in flat), dtype=np.float64, count=n),
                   np.fromiter((w[1] for w in flat), dtype=np.float64, count=n),
                   pa.array([w[2] for w in flat], type=pa.string()), offsets)

    @classmethod
    def from_list_array(cls, words: pa.Array) -> "WordArrays":
        """From a `list<struct<start, end, word>>` array (one list per video; null = no words)."""
        if isinstance(words, pa.ChunkedArray):
            words = pa.concat_arrays(words.chunks) if words.num_chunks != 1 else words.chunk(0)
        if words.null_count:
            words = words.fill_null(pa.scalar([], type=words.type))
        lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = words.flatten()
        children = dict(zip([f.name for f in flat.type], flat.flatten()))
        start, end, word = children["start"], children["end"], children["word"]
        if start.null_count or end.null_count or word.null_count:
            raise ValueError("words with a null start, end or word")
        return cls(start.to_numpy(zero_copy_only=False).astype(np.float64, copy=False),
                   end.to_numpy(zero_copy_only=False).astype(np.float64, copy=False), word, offsets)


# --------------------------------------------------------------------------------------------------
# rounding
# --------------------------------------------------------------------------------------------------


def round1(x: np.ndarray) -> np.ndarray:
    """Python's `round(v, 1)` for every element, vectorised, bit for bit.

    Python rounds the exact binary value of v to one decimal, ties to even, and returns the double
    nearest to the decimal result. `np.rint(10 * v) / 10` does the same unless `10 * v` lies (within
    float error) on a half: e.g. 1.05 is stored as 1.05000000000000004441, which Python rounds up,
    while `10 * 1.05` rounds to exactly 10.5 and `rint` goes to even. For those elements the exact
    sign of `20 * v - (2k + 1)` decides: `20 * v = 16 v + 4 v` (both products exact) is summed with
    an exact error term (Knuth's TwoSum)."""
    x = np.asarray(x, dtype=np.float64)
    y = x * 10.0
    r = np.rint(y)
    dist = np.subtract(y, r)
    np.abs(dist, out=dist)
    near_half = dist > 0.5 - 1e-6
    out = np.divide(r, 10.0, out=r)
    if near_half.any():
        idx = np.flatnonzero(near_half)
        xv = x[idx]
        kv = np.floor(y[idx])
        a, b = xv * 16.0, xv * 4.0
        s = a + b
        bb = s - a
        err = (a - (s - bb)) + (b - bb)          # s + err == 20 * v exactly
        half = 2.0 * kv + 1.0                    # exact: small integers
        above = (s > half) | ((s == half) & (err > 0))
        tie = (s == half) & (err == 0)
        up = above | (tie & (np.fmod(kv, 2.0) != 0))
        out[idx] = (kv + up) / 10.0
    return out


# --------------------------------------------------------------------------------------------------
# cues -> words
# --------------------------------------------------------------------------------------------------


def _as_string_array(arr: pa.Array) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n+1] int64, data uint8) of a (large_)string array, sliced arrays included."""
    arr = _as_string_array(arr)
    _, off_buf, data_buf = arr.buffers()
    dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(off_buf, dtype=dtype)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets, data


def _has_bracket(text: pa.Array) -> np.ndarray:
    """bool per string: contains `[` or `]` (bytes 0x5B / 0x5D never occur inside UTF-8 sequences)."""
    so, data = string_buffers(text)
    if len(text) == 0:
        return np.zeros(0, dtype=bool)
    part = data[so[0]: so[-1]]
    hits = np.flatnonzero((part == 0x5B) | (part == 0x5D)) + so[0]
    out = np.zeros(len(text), dtype=bool)
    if len(hits):
        out[np.searchsorted(so, hits, side="right") - 1] = True
    return out


def cues_to_words(cues: CueArrays, use_inline_times: bool = True) -> WordArrays:
    """The words of every video of `cues` (rules in the module docstring)."""
    n_cues = len(cues.start)
    text = _as_string_array(cues.text)
    if text.null_count:
        text = text.fill_null("")
    n_videos = cues.n_videos
    if n_cues == 0:
        return WordArrays(np.zeros(0), np.zeros(0), pa.array([], type=pa.string()),
                          np.zeros(n_videos + 1, dtype=np.int64))
    bracket = _has_bracket(text)

    tokens = pc.split_pattern(text, " ")
    flat = tokens.flatten()
    cue_of = pc.list_parent_indices(tokens).to_numpy().astype(np.int64)
    nonempty = pc.binary_length(flat).to_numpy(zero_copy_only=False) > 0

    # inline times: the r-th non-empty token of cue k gets times[time_offsets[k] + r]
    ne_count = np.bincount(cue_of[nonempty], minlength=n_cues)
    t_count = np.diff(cues.time_offsets)
    has_times = (t_count > 0) & (t_count == ne_count) if use_inline_times else np.zeros(n_cues, bool)

    keep = nonempty & ~bracket[cue_of]
    # rank of each token among the non-empty tokens of its cue (to index its inline times)
    ne_rank = np.cumsum(nonempty) - 1
    first_ne = np.zeros(n_cues, dtype=np.int64)
    np.cumsum(ne_count[:-1], out=first_ne[1:])

    # drop a word equal to the word just before it in the same cue
    n_tok = len(flat)
    if n_tok > 1 and nonempty.all():
        # no empty tokens: neighbours in `flat` are neighbours among the kept words of a cue
        # (a `[...]` cue goes as a whole), so compare in place, without copying strings first
        same = pc.equal(flat.slice(1), flat.slice(0, n_tok - 1)).to_numpy(zero_copy_only=False)
        keep[1:] &= ~(same & (cue_of[1:] == cue_of[:-1]))
        idx = np.flatnonzero(keep)
        words = flat if len(idx) == n_tok else flat.take(pa.array(idx))
    else:
        idx = np.flatnonzero(keep)
        words = flat.take(pa.array(idx))
        if len(idx) > 1:
            cue_i = cue_of[idx]
            same = pc.equal(words.slice(1), words.slice(0, len(idx) - 1)).to_numpy(zero_copy_only=False)
            dup = np.zeros(len(idx), dtype=bool)
            dup[1:] = same & (cue_i[1:] == cue_i[:-1])
            if dup.any():
                idx = idx[~dup]
                words = words.filter(pa.array(~dup))
    # words per cue after the rules; the words of a cue are consecutive, so per-cue values expand
    # with np.repeat (sequential) rather than gathers
    n_words = len(idx)
    n = np.bincount(cue_of[idx], minlength=n_cues) if n_words else np.zeros(n_cues, dtype=np.int64)
    first_word = np.zeros(n_cues, dtype=np.int64)
    np.cumsum(n[:-1], out=first_word[1:])
    i = np.arange(n_words, dtype=np.int64) - np.repeat(first_word, n)

    with np.errstate(divide="ignore", invalid="ignore"):
        per_cue = (cues.end - cues.start) / n
    cs = np.repeat(cues.start, n)
    per_word = np.repeat(per_cue, n)
    start = cs + i * per_word
    end = cs + (i + 1) * per_word

    timed_cue = has_times & (n > 0)
    if timed_cue.any():
        timed = np.repeat(timed_cue, n)
        tw = np.flatnonzero(timed)
        cue_t = np.repeat(np.arange(n_cues, dtype=np.int64)[timed_cue], n[timed_cue])
        tok_rank = ne_rank[idx[tw]] - first_ne[cue_t]
        start[tw] = cues.times[cues.time_offsets[cue_t] + tok_rank]
        # the end of a timed word: the next word's start in the same cue, else the cue end
        t_end = cues.end[cue_t]
        inner = np.zeros(len(tw), dtype=bool)
        inner[:-1] = cue_t[1:] == cue_t[:-1]
        t_end[inner] = start[tw[inner] + 1]
        end[tw] = t_end

    # words before cue k = first_word[k]; a video's words start at its first cue's
    offsets = np.append(first_word, n_words)[cues.offsets]
    return WordArrays(round1(start), round1(end), words, offsets)


def words_from_cue_lists(videos: Sequence[Sequence[Cue]], use_inline_times: bool = True) -> WordArrays:
    return cues_to_words(CueArrays.from_cue_lists(videos), use_inline_times)


# --------------------------------------------------------------------------------------------------
# distinct words
# --------------------------------------------------------------------------------------------------

_EDGE_PUNCT = r"^[^\pL\pN]+|[^\pL\pN]+$"


def distinct_word_counts(words: WordArrays) -> np.ndarray:
    """Distinct words per video, case-insensitive, punctuation stripped from both ends of a word
    ("Hello," == "hello"; "don't" keeps its apostrophe); a word of punctuation only does not count."""
    n_videos = words.n_videos
    if len(words.start) == 0:
        return np.zeros(n_videos, dtype=np.int64)
    # normalise each distinct spelling once: dictionary-encode, normalise the dictionary, re-encode
    enc = pc.dictionary_encode(_as_string_array(words.word))
    norm = pc.replace_substring_regex(pc.utf8_lower(enc.dictionary), _EDGE_PUNCT, "")
    norm_enc = pc.dictionary_encode(norm)
    norm_codes = norm_enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    real_code = pc.binary_length(norm_enc.dictionary).to_numpy(zero_copy_only=False) > 0
    codes = norm_codes[enc.indices.to_numpy(zero_copy_only=False)]
    real = real_code[codes]
    width = len(norm_enc.dictionary)
    video = np.repeat(np.arange(n_videos, dtype=np.int64), words.counts())
    pairs = pd.unique(video[real] * width + codes[real])  # hash-based: no sort
    return np.bincount(pairs // width, minlength=n_videos).astype(np.int64)
