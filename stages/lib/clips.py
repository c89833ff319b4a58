"""Clip splitting (LIVECC_SPEC section 3), vectorised over many videos at once.

Pretraining (`mode="pretrain"`, reference: showlab/livecc `data/production/pretrain_to_clips.py`,
`clip4pretrain` + `check`), on word END times t:
- walk the words; word j starts a new clip when `t_j - t_{j-1} > max_gap` or `t_j - t_first > max_span`
  (t_first: the first word of the current clip);
- a clip is kept when `span = t_last - t_first >= min_span` and, with the rate filter (on by default
  in this mode), `min_wps <= words / span <= max_wps`.

SFT (`mode="sft"`, reference: showlab/livecc `data/production/sft_to_clips.py`, public, `clipping`),
on word START times, same gap and span thresholds. No words-per-second filter by default: the spec
and the script have none (`rate_filter=True` adds the pretraining one). A clip may start only at the
video's first word or at a word that follows a word ending in `.`, `?` or `!` and that begins with a
capital letter (the paper: `word[:1].isupper()`); the script tests `word.isupper()` (an all-caps
word such as "I" or "OK"), which `sft_allcaps_start` (and `reference_exact`) reproduce. The script
walks like pretraining, but at a word that may not start a clip it moves on by one word: a gap or
span boundary ENDS a clip at the same word as in pretraining and the next clip begins at the first
word at or after that boundary that may start one. The words in between belong to no clip: they are
reported as a candidate with reason `no_sentence_start` (dropped), and they stay in `previous`.
A span boundary is not moved back to a sentence end (clips may end mid-sentence at the 240 s cap).

Spec-clean mode (the default). Times are compared as integer microseconds (`round(t * 1e6)`),
thresholds too (`round(max_gap * 1e6)`), and rates as integers: `words * 1e9` against
`round(wps * 1000) * span_us`. So a gap of 3.0 computed as 3.0000000000000004 (or
2.9999999999999996) equals 3.0 s and is not a break, while 3.0001 s is; a rate threshold with up to 3
decimals is exact. `bench/loop_rules.py` (the per-word oracle) uses the same integer comparisons.
`drop_last_word` (off by default) adds the scripts' quirk that the video's last word is in no clip
(exactly: splitting the words without the last one); `sft_allcaps_start` the SFT script's start test.

Reference mode (`reference_exact=True`, both modes) reproduces the two scripts clip for clip: the
last word of a video is in no clip (it implies `drop_last_word`), the gap, span and minimum-span
tests are Python float comparisons written as the scripts write them (`t_j - t_{j-1} > max_gap`,
`t_j - t_first > max_span`, `t_last - t_first >= min_span`: ends 30.2 and 33.2 ARE a break there, as
33.2 - 30.2 == 3.0000000000000036, and a 60.3 - 30.3 s span is too short), the pretraining rate test
is the script's float `words / span` with `<` and `>` (a zero span, where the script would divide by
zero, counts as too fast), SFT starts use `word.isupper()` (it implies `sft_allcaps_start`) and the
SFT `previous` joins the words stripped of surrounding whitespace (the script's `preasr`; pretraining
joins them as they are). The clips the scripts do not output are still candidates with a drop
reason here; only the kept set equals the scripts' output. `bench/reference_clips.py` follows the
two scripts line by line; the tests compare it with this mode. `rate_filter` still applies (default:
on in pretrain, off in sft, as the scripts do).

The core works on flat arrays (`WordArrays`) and follows, for all gap-free runs of words at once, the
chain of clip starts inside a run (a few steps: one per 240 s); "first word after i more than
max_span later" is a binary search in a per-run key (integer microseconds) that is sorted, with an
exact slow path only for runs whose times go backwards. In reference mode the search brackets the
float answer within a few microseconds and the few words in the bracket are tested with the float
predicate itself (float subtraction is monotone, so on a sorted run the predicate is too).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.lib.words import WordArrays, string_buffers

MODES = ("pretrain", "sft")
KEPT, TOO_SHORT, TOO_SLOW, TOO_FAST, NO_SENTENCE_START = 0, 1, 2, 3, 4
REASONS = {TOO_SHORT: "too_short", TOO_SLOW: "too_slow", TOO_FAST: "too_fast",
           NO_SENTENCE_START: "no_sentence_start"}
NO_CLIPS = "no_clips"  # a video without any candidate (the stage's row for it)
SENTENCE_END = b".?!"
US = 1_000_000
_SENTENCE_END_BYTE = np.zeros(256, dtype=bool)
_SENTENCE_END_BYTE[np.frombuffer(SENTENCE_END, dtype=np.uint8)] = True
REF_MARGIN_US = 4  # reference mode: the float span test is bracketed within this many us


@dataclass(frozen=True)
class ClipRules:
    mode: str = "pretrain"
    max_gap: float = 3.0
    min_span: float = 30.0
    max_span: float = 240.0
    min_wps: float = 1.0
    max_wps: float = 4.0
    drop_last_word: bool = False
    sft_allcaps_start: bool = False
    rate_filter: bool | None = None   # None: on in pretrain mode, off in sft mode
    reference_exact: bool = False     # the scripts' float comparisons and quirks (module docstring)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.rate_filter not in (None, True, False):
            raise ValueError(f"rate_filter must be true, false or null, got {self.rate_filter!r}")
        for name in ("max_gap", "min_span", "max_span", "min_wps", "max_wps"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.min_span > self.max_span:
            raise ValueError(f"min_span ({self.min_span}) must be <= max_span ({self.max_span})")
        if self.min_wps > self.max_wps:
            raise ValueError(f"min_wps ({self.min_wps}) must be <= max_wps ({self.max_wps})")
        if self.max_span > 1e6 or self.max_wps > 1e3:
            # keeps words * 1e9 and wps_milli * span_us inside int64
            raise ValueError("max_span must be <= 1e6 s and max_wps <= 1000")

    @property
    def checks_rate(self) -> bool:
        return self.mode == "pretrain" if self.rate_filter is None else bool(self.rate_filter)

    @property
    def drops_last_word(self) -> bool:
        return self.drop_last_word or self.reference_exact

    @property
    def allcaps_start(self) -> bool:
        return self.sft_allcaps_start or self.reference_exact

    # integer thresholds: the SAME conversions as bench/loop_rules.py
    @property
    def max_gap_us(self) -> int:
        return round(self.max_gap * US)

    @property
    def min_span_us(self) -> int:
        return round(self.min_span * US)

    @property
    def max_span_us(self) -> int:
        return round(self.max_span * US)

    @property
    def min_wps_milli(self) -> int:
        return round(self.min_wps * 1000)

    @property
    def max_wps_milli(self) -> int:
        return round(self.max_wps * 1000)


@dataclass
class ClipArrays:
    """Candidate clips of many videos, ordered by video then first word. Word indices are flat
    indices into the `WordArrays` the clips were cut from; a clip is words `[first, stop)`."""

    video: np.ndarray   # int64
    first: np.ndarray   # int64
    stop: np.ndarray    # int64
    start: np.ndarray   # float64: first word start
    end: np.ndarray     # float64: last word end
    span: np.ndarray    # float64 seconds (on the mode's times)
    wps: np.ndarray     # float64 words / span (NaN when span <= 0)
    code: np.ndarray    # int8: KEPT or a reason code
    strip_previous: bool = False  # `previous` joins stripped words (reference mode, sft)

    def __len__(self) -> int:
        return len(self.first)

    @property
    def word_count(self) -> np.ndarray:
        return self.stop - self.first

    def reason(self, k: int) -> str | None:
        return REASONS.get(int(self.code[k]))

    def per_video(self, n_videos: int) -> np.ndarray:
        """offsets [n_videos + 1]: the clips of video v are `offsets[v] <= k < offsets[v+1]`."""
        offsets = np.zeros(n_videos + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.video, minlength=n_videos), out=offsets[1:])
        return offsets


def to_us(t: np.ndarray) -> np.ndarray:
    """Seconds to integer microseconds, `round(t * 1e6)` element-wise (ties to even, as Python)."""
    return np.rint(np.asarray(t, dtype=np.float64) * US).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# SFT start rule
# --------------------------------------------------------------------------------------------------


def sentence_starts(word: pa.Array, offsets: np.ndarray, allcaps: bool = False) -> np.ndarray:
    """bool per word: may an SFT clip start here? The first word of each video may; another word
    may when the word before it ends in `.`, `?` or `!` and it begins with a capital letter
    (`w[:1].isupper()`), or with `allcaps` is an all-caps word (`w.isupper()`).

    Byte-level on the UTF-8 buffers; only words after a sentence end are tested, and those whose
    test needs non-ASCII case rules go through Python's `str.isupper` (exactly the oracle's test)."""
    n = len(word)
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return ok
    so, data = string_buffers(word)
    lengths = so[1:] - so[:-1]
    nonempty = lengths > 0
    last = np.zeros(n, dtype=np.uint8)
    last[nonempty] = data[so[1:][nonempty] - 1]
    ends_sentence = _SENTENCE_END_BYTE[last]
    first = np.zeros(n, dtype=np.uint8)
    first[nonempty] = data[so[:-1][nonempty]]
    # only words that follow a sentence end need the (possibly slow) case test
    candidates = np.zeros(n, dtype=bool)
    candidates[1:] = ends_sentence[:-1]
    if not allcaps:
        upper = (first >= 65) & (first <= 90)   # A-Z
        slow = first >= 0x80                     # non-ASCII first letter: Python decides
    else:
        # `w.isupper()`: some cased letter and no lowercase one; in ASCII the cased letters are A-Z
        # and a-z, so counting those bytes of the candidates decides it; a word with a non-ASCII
        # byte: Python decides
        upper = np.zeros(n, dtype=bool)
        slow = np.zeros(n, dtype=bool)
        cand = np.flatnonzero(candidates & nonempty)
        length = lengths[cand]
        owner = np.repeat(np.arange(len(cand)), length)
        pos = np.zeros(len(cand) + 1, dtype=np.int64)
        np.cumsum(length, out=pos[1:])
        b = data[np.arange(pos[-1], dtype=np.int64) + np.repeat(so[cand] - pos[:-1], length)]

        def per_word(mask: np.ndarray) -> np.ndarray:
            return np.bincount(owner[mask], minlength=len(cand))

        upper[cand] = (per_word((b >= 65) & (b <= 90)) > 0) & (per_word((b >= 97) & (b <= 122)) == 0)
        slow[cand] = per_word(b >= 0x80) > 0
    slow &= candidates
    if slow.any():
        idx = np.flatnonzero(slow)
        texts = word.take(pa.array(idx)).to_pylist()
        upper[idx] = [w.isupper() if allcaps else w[:1].isupper() for w in texts]
    ok = candidates & upper
    starts = offsets[:-1][np.diff(offsets) > 0]
    ok[starts] = True
    return ok


# --------------------------------------------------------------------------------------------------
# splitting
# --------------------------------------------------------------------------------------------------


def split_clips(words: WordArrays, rules: ClipRules) -> ClipArrays:
    """Candidate clips (kept or with a drop reason) of every video of `words`."""
    n_videos = words.n_videos
    counts = words.counts()
    ref = rules.reference_exact
    sft = rules.mode == "sft"
    if rules.drops_last_word and len(words.start):
        # the reference quirk == splitting without each video's last word
        last = words.offsets[1:][counts > 0] - 1
        sel = np.ones(len(words.start), dtype=bool)
        sel[last] = False
        eff_to_orig = np.flatnonzero(sel)
        eff_counts = np.maximum(counts - 1, 0)
    else:
        eff_to_orig = None
        eff_counts = counts
    eff_offsets = np.zeros(n_videos + 1, dtype=np.int64)
    np.cumsum(eff_counts, out=eff_offsets[1:])
    n = int(eff_offsets[-1])
    times = words.start if sft else words.end
    tf = np.asarray(times if eff_to_orig is None else times[eff_to_orig], dtype=np.float64)
    t = to_us(tf)

    if sft:
        allowed_all = sentence_starts(words.word, words.offsets, rules.allcaps_start)
        allowed = allowed_all if eff_to_orig is None else allowed_all[eff_to_orig]
    else:
        allowed = None

    strip_previous = ref and sft
    if n == 0:
        return ClipArrays(*(np.zeros(0, dtype=np.int64) for _ in range(3)),
                          *(np.zeros(0, dtype=np.float64) for _ in range(4)), np.zeros(0, dtype=np.int8),
                          strip_previous=strip_previous)

    video_of = np.repeat(np.arange(n_videos, dtype=np.int64), eff_counts)
    is_vstart = np.zeros(n, dtype=bool)
    is_vstart[eff_offsets[:-1][eff_counts > 0]] = True
    if ref:
        fdiffs = np.diff(tf)
        gap_break, goes_back = fdiffs > rules.max_gap, fdiffs < 0
    else:
        diffs = np.diff(t)
        gap_break, goes_back = diffs > rules.max_gap_us, diffs < 0
    run_start = is_vstart.copy()
    run_start[1:] |= gap_break
    run_first = np.flatnonzero(run_start)
    run_stop = np.append(run_first[1:], n)
    run_id = np.cumsum(run_start) - 1

    # per-run key: times shifted so that every run lies above the run before it; cummax keeps the
    # key sorted where times go backwards (those runs take the exact slow path below). A search
    # that runs past its run is clamped to the run's end. In reference mode "backwards" is judged
    # on the float times (a sub-microsecond step back would break the float bracket's monotony).
    S = rules.max_span_us
    S_f = float(rules.max_span)
    rmin = np.minimum.reduceat(t, run_first)
    rmax = np.maximum.reduceat(t, run_first)
    width = rmax - rmin + 1
    base = np.zeros(len(run_first), dtype=np.int64)
    np.cumsum(width[:-1], out=base[1:])
    shifted = t - rmin[run_id] + base[run_id]
    key = np.maximum.accumulate(shifted)
    backwards = np.zeros(len(run_first), dtype=bool)
    neg = np.flatnonzero(goes_back & ~run_start[1:]) + 1
    backwards[run_id[neg]] = True

    def span_break(cur: np.ndarray, rstop: np.ndarray) -> np.ndarray:
        """first j > cur (in cur's run) with t_j - t_cur > max_span, else the run's end."""
        slow = backwards[run_id[cur]]
        if not ref:
            j = np.minimum(np.searchsorted(key, shifted[cur] + S, side="right"), rstop)
        else:
            # microsecond rounding moves a difference by at most ~1 us: words with an integer
            # difference <= S - M fail the float test, words with one > S + M pass it; only the
            # bracket [lo, hi) between needs the float predicate, word by word (a few at most)
            lo = np.clip(np.searchsorted(key, shifted[cur] + (S - REF_MARGIN_US), side="right"), cur + 1, rstop)
            hi = np.minimum(np.searchsorted(key, shifted[cur] + (S + REF_MARGIN_US), side="right"), rstop)
            hi = np.maximum(hi, lo)
            j = hi.copy()
            length = np.where(slow, 0, hi - lo)
            amb = np.flatnonzero(length)
            if len(amb):
                ln = length[amb]
                seg = np.zeros(len(amb) + 1, dtype=np.int64)
                np.cumsum(ln, out=seg[1:])
                idx = np.arange(seg[-1], dtype=np.int64) + np.repeat(lo[amb] - seg[:-1], ln)
                passes = tf[idx] - tf[np.repeat(cur[amb], ln)] > S_f
                hit = np.where(passes, idx, np.iinfo(np.int64).max)
                j[amb] = np.minimum(np.minimum.reduceat(hit, seg[:-1]), hi[amb])
        for q in np.flatnonzero(slow).tolist():
            i, stop = int(cur[q]), int(rstop[q])
            over = np.flatnonzero(tf[i + 1: stop] - tf[i] > S_f) if ref else \
                np.flatnonzero(t[i + 1: stop] - t[i] > S)
            j[q] = i + 1 + over[0] if len(over) else stop
        return j

    if allowed is not None:
        allowed_pos = np.append(np.flatnonzero(allowed), n)

        def next_allowed(pos: np.ndarray) -> np.ndarray:
            return allowed_pos[np.searchsorted(allowed_pos, pos, side="left")]

        cur = next_allowed(run_first)
    else:
        cur = run_first.copy()
    rstop = run_stop
    live = cur < rstop
    cur, rstop = cur[live], rstop[live]
    firsts, stops = [], []
    while len(cur):
        j = span_break(cur, rstop)
        firsts.append(cur)
        stops.append(j)
        nxt = j if allowed is None else next_allowed(j)
        live = nxt < rstop
        cur, rstop = nxt[live], rstop[live]
    first = np.concatenate(firsts)
    stop = np.concatenate(stops)

    count = stop - first
    code = np.full(len(first), KEPT, dtype=np.int8)
    # priority as the oracle's if/elif: too_short, then too_slow, then too_fast
    if ref:
        span_s = tf[stop - 1] - tf[first]
        if rules.checks_rate:
            with np.errstate(divide="ignore"):
                rate = count / span_s   # the script's float words / span; 0 s -> inf: too fast
            code[rate > rules.max_wps] = TOO_FAST
            code[rate < rules.min_wps] = TOO_SLOW
        code[~(span_s >= rules.min_span)] = TOO_SHORT
    else:
        span_us = t[stop - 1] - t[first]
        if rules.checks_rate:
            rate_n = count * 1_000_000_000
            code[rate_n > rules.max_wps_milli * span_us] = TOO_FAST
            code[rate_n < rules.min_wps_milli * span_us] = TOO_SLOW
        code[span_us < rules.min_span_us] = TOO_SHORT
        span_s = span_us / US

    if allowed is not None:
        # words in no clip: maximal uncovered stretches inside a video
        cover = np.bincount(first, minlength=n + 1) - np.bincount(stop, minlength=n + 1)
        covered = np.cumsum(cover[:-1]) > 0
        gap_start = ~covered & (is_vstart | np.concatenate([[True], covered[:-1]]))
        gap_end = ~covered & (np.append(is_vstart[1:], True) | np.append(covered[1:], True))
        g_first = np.flatnonzero(gap_start)
        g_stop = np.flatnonzero(gap_end) + 1
        if len(g_first):
            g_span = tf[g_stop - 1] - tf[g_first] if ref else (t[g_stop - 1] - t[g_first]) / US
            first = np.concatenate([first, g_first])
            stop = np.concatenate([stop, g_stop])
            span_s = np.concatenate([span_s, g_span])
            code = np.concatenate([code, np.full(len(g_first), NO_SENTENCE_START, dtype=np.int8)])

    order = np.argsort(first, kind="stable")
    first, stop, span, code = first[order], stop[order], span_s[order], code[order]
    video = video_of[first]
    if eff_to_orig is not None:
        first_o = eff_to_orig[first]
        stop_o = eff_to_orig[stop - 1] + 1
    else:
        first_o, stop_o = first, stop
    cnt = (stop - first).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        wps = np.where(span > 0, cnt / np.where(span > 0, span, 1.0), np.nan)
    return ClipArrays(video, first_o, stop_o, words.start[first_o], words.end[stop_o - 1], span, wps, code,
                      strip_previous=strip_previous)


# --------------------------------------------------------------------------------------------------
# previous text
# --------------------------------------------------------------------------------------------------


def previous_texts(words: WordArrays, clips: ClipArrays, which: np.ndarray | None = None) -> list[str | None]:
    """`previous_array` as Python strings."""
    return previous_array(words, clips, which).to_pylist()


def previous_array(words: WordArrays, clips: ClipArrays, which: np.ndarray | None = None) -> pa.Array:
    """`previous` of each clip as a string array: every word of its video before the clip, space-joined
    ("" for a clip at the video start). Only clips where `which` is true get a text (null elsewhere).
    With `clips.strip_previous` (reference mode, sft) the words are stripped of surrounding whitespace
    first.

    Each needed video is joined once (pyarrow, as UTF-8 bytes); a clip's text is a byte prefix of it,
    copied into the output buffer (no Python string per clip)."""
    if which is None:
        which = np.ones(len(clips), dtype=bool)
    which = np.asarray(which, dtype=bool)
    sel = np.flatnonzero(which)
    if len(sel) == 0:
        return pa.nulls(len(clips), pa.string())
    vids = np.unique(clips.video[sel])
    word = stripped_words(words.word) if clips.strip_previous else words.word
    so, _ = string_buffers(word)
    big = words.offsets[-1] >= 2**31
    lists = (pa.LargeListArray if big else pa.ListArray).from_arrays(
        pa.array(words.offsets if big else words.offsets.astype(np.int32)), word)
    if len(vids) * 2 < words.n_videos:
        joined = pc.binary_join(lists.take(pa.array(vids)), " ")
    else:  # most videos needed: join all (no copy of the lists), keep the needed texts
        joined = pc.binary_join(lists, " ").take(pa.array(vids))
    jo, jdata = string_buffers(joined)
    video = clips.video[sel]
    first = clips.first[sel]
    a = words.offsets[video]
    # bytes before word `first` in its video's joined text: the words' bytes plus one space each
    n_bytes = np.maximum((so[first] - so[a]) + (first - a) - 1, 0)
    source = jo[np.searchsorted(vids, video)]
    lengths = np.zeros(len(clips), dtype=np.int64)
    lengths[sel] = n_bytes
    offsets = np.zeros(len(clips) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    for dst, src, n in zip(offsets[sel].tolist(), source.tolist(), n_bytes.tolist()):
        data[dst:dst + n] = jdata[src:src + n]
    large = offsets[-1] >= 2**31
    validity = pa.py_buffer(np.packbits(which, bitorder="little"))
    return pa.Array.from_buffers(pa.large_string() if large else pa.string(), len(clips),
                                 [validity, pa.py_buffer(offsets if large else offsets.astype(np.int32)),
                                  pa.py_buffer(data)], null_count=len(clips) - len(sel))


_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True   # Python's str.isspace() in ASCII


def stripped_words(word: pa.Array) -> pa.Array:
    """Python's `w.strip()` of every word. Only words whose first or last byte is an ASCII space
    (Python's set, \\x1c-\\x1f included) or non-ASCII (any Unicode space is) go through Python."""
    so, data = string_buffers(word)
    nonempty = so[1:] > so[:-1]
    may = np.zeros(256, dtype=bool)
    may[_ASCII_SPACE] = True
    may[0x80:] = True
    need = np.zeros(len(word), dtype=bool)
    need[nonempty] = may[data[so[:-1][nonempty]]] | may[data[so[1:][nonempty] - 1]]
    idx = np.flatnonzero(need)
    if len(idx) == 0:
        return word
    texts = word.take(pa.array(idx)).to_pylist()
    changed = [k for k, w in enumerate(texts) if w.strip() != w]
    if not changed:
        return word
    mask = np.zeros(len(word), dtype=bool)
    mask[idx[changed]] = True
    return pc.replace_with_mask(word, pa.array(mask), pa.array([texts[k].strip() for k in changed], type=word.type))
