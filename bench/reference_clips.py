"""The two public LiveCC clip scripts, followed line by line, and a check of `reference_exact` mode.

    python -m bench.reference_clips [--videos 4000] [--batch 1000] [--seed 0] [--repeat 3]

`pretrain_clips` follows showlab/livecc `data/production/pretrain_to_clips.py` (`clip4pretrain`, then
`check`), `sft_clips` follows `data/production/sft_to_clips.py` (`clipping`): the same control flow
(a `while` over the start word, an inner `for` whose loop variable survives it, `None` when the inner
range is empty), the same float comparisons, on `[(start, end, word)]` lists. They return only what
the scripts output, the kept clips, as `(first, stop, previous)` word indices of the video. Written
here again on purpose: nothing is shared with `stages/lib/clips.py` (which the tests compare them with)
nor with the spec-clean oracle `bench/loop_rules.py`.

Run as a module, it generates caption videos (`bench.caption_clip.generate_batch`, times on the 0.1 s
grid of caption words), turns them into words with the project's caption_words code and, in both
modes, compares the kept clips of `split_clips(..., reference_exact=True)` (words and `previous`) with
these loops video by video; it also counts how many videos the spec-clean mode (with the two quirk
options) keeps differently, and times `split_clips` in reference and default mode. Figures only.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Sequence

Word = Sequence  # (start, end, word)


def _script_rate_ok(clip: Sequence[Word], min_wps: float, max_wps: float) -> bool:
    """`check` of the pretraining script: words per second over the clip's END times."""
    duration = clip[-1][1] - clip[0][1]
    try:
        wps = len(clip) / duration
    except ZeroDivisionError:
        # the script itself would stop with this error (only possible with min_clip_sec <= 0);
        # the project drops such a clip as too fast
        return False
    return not (wps < min_wps or wps > max_wps)


def pretrain_clips(words: Sequence[Word], min_clip_sec: float = 30, max_clip_sec: float = 240,
                   max_empty_sec: float = 3, min_wps: float = 1, max_wps: float = 4,
                   rate_filter: bool = True) -> list[tuple[int, int, str]]:
    """Kept clips of `clip4pretrain` + `check` (word END times, index 1)."""
    kept = []
    i = 0
    while i < len(words):
        j = None
        for j in range(i + 1, len(words)):
            if words[j][1] - words[i][1] > max_clip_sec:
                break
            if words[j][1] - words[j - 1][1] > max_empty_sec:
                break
        if j is not None and j > i and words[j - 1][1] - words[i][1] >= min_clip_sec:
            if not rate_filter or _script_rate_ok(words[i:j], min_wps, max_wps):
                kept.append((i, j, " ".join(w[2] for w in words[:i])))
        if j is None:
            break
        i = j
    return kept


def sft_clips(words: Sequence[Word], min_clip_sec: float = 30, max_clip_sec: float = 240,
              max_silence_sec: float = 3, min_wps: float = 1, max_wps: float = 4,
              rate_filter: bool = False) -> list[tuple[int, int, str]]:
    """Kept clips of `clipping` (word START times, index 0). The script has no rate test;
    `rate_filter=True` adds the pretraining script's `check` on the start times (not a script)."""
    kept = []
    i = 0
    while i < len(words):
        if i > 0:
            after_end = any(words[i - 1][-1].endswith(mark) for mark in (".", "?", "!"))
            if not (after_end and words[i][-1].isupper()):
                i += 1
                continue
        j = None
        for j in range(i + 1, len(words)):
            if words[j][0] - words[i][0] > max_clip_sec:
                break
            if words[j][0] - words[j - 1][0] > max_silence_sec:
                break
        if j is not None and j > i and words[j - 1][0] - words[i][0] >= min_clip_sec:
            on_starts = [(w[0], w[0], w[2]) for w in words[i:j]]
            if not rate_filter or _script_rate_ok(on_starts, min_wps, max_wps):
                kept.append((i, j, " ".join(w[2].strip() for w in words[:i])))
        if j is None:
            break
        i = j
    return kept


def reference_kept(words: Sequence[Word], mode: str = "pretrain", **rules) -> list[tuple[int, int, str]]:
    """The script of `mode` with ClipRules-style keyword names (max_gap, min_span, max_span,
    min_wps, max_wps, rate_filter: None = the script's own choice)."""
    kw = {"min_clip_sec": rules.get("min_span", 30), "max_clip_sec": rules.get("max_span", 240),
          "min_wps": rules.get("min_wps", 1), "max_wps": rules.get("max_wps", 4)}
    rate = rules.get("rate_filter")
    if mode == "pretrain":
        return pretrain_clips(words, max_empty_sec=rules.get("max_gap", 3),
                              rate_filter=True if rate is None else rate, **kw)
    return sft_clips(words, max_silence_sec=rules.get("max_gap", 3),
                     rate_filter=False if rate is None else rate, **kw)


# --------------------------------------------------------------------------------------------------


def _kept_per_video(words, clips, previous) -> list[list[tuple[int, int, str]]]:
    from stages.lib.clips import KEPT

    out: list[list[tuple[int, int, str]]] = [[] for _ in range(words.n_videos)]
    for k in (clips.code == KEPT).nonzero()[0].tolist():
        v = int(clips.video[k])
        a = int(words.offsets[v])
        out[v].append((int(clips.first[k]) - a, int(clips.stop[k]) - a, previous[k]))
    return out


def _best(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from bench.caption_clip import _vocabulary, generate_batch
    from stages.lib.clips import KEPT, ClipRules, previous_texts, split_clips
    from stages.lib.words import CueArrays, cues_to_words

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timings: best of N runs")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    vocab = _vocabulary(rng)
    modes = ("pretrain", "sft")
    differ = dict.fromkeys(modes, 0)        # reference mode vs the scripts: must stay 0
    clean_differ = dict.fromkeys(modes, 0)  # spec-clean mode (+ quirk options) vs the scripts
    kept = dict.fromkeys(modes, 0)
    t_ref = dict.fromkeys(modes, 0.0)
    t_default = dict.fromkeys(modes, 0.0)
    t_loop = dict.fromkeys(modes, 0.0)
    n_videos = n_words = 0
    done = 0
    while done < args.videos:
        n = min(args.batch, args.videos - done)
        videos = generate_batch(rng, vocab, n)
        words = cues_to_words(CueArrays.from_cue_lists(videos), True)
        lists = [words.video(v) for v in range(words.n_videos)]
        n_videos += n
        n_words += len(words.start)
        for mode in modes:
            ref = ClipRules(mode=mode, reference_exact=True)
            clean = ClipRules(mode=mode, drop_last_word=True, sft_allcaps_start=True)
            t_ref[mode] += _best(lambda: split_clips(words, ref), args.repeat)
            t_default[mode] += _best(lambda: split_clips(words, ClipRules(mode=mode)), args.repeat)
            got = {}
            for name, rules in (("ref", ref), ("clean", clean)):
                clips = split_clips(words, rules)
                got[name] = _kept_per_video(words, clips, previous_texts(words, clips, clips.code == KEPT))
            t0 = time.perf_counter()
            expected = [reference_kept(w, mode) for w in lists]
            t_loop[mode] += time.perf_counter() - t0
            for v, exp in enumerate(expected):
                kept[mode] += len(exp)
                differ[mode] += got["ref"][v] != exp
                clean_differ[mode] += got["clean"][v] != exp
        done += n

    print(f"{n_videos} videos, {n_words} words (caption words, 0.1 s grid)")
    for mode in modes:
        print(f"{mode:8s}: {kept[mode]} clips kept by the script; videos whose kept clips differ: "
              f"reference_exact {differ[mode]}, spec-clean+quirks {clean_differ[mode]}; "
              f"split_clips reference {t_ref[mode]:.3f} s, default {t_default[mode]:.3f} s "
              f"(x{t_ref[mode] / t_default[mode]:.2f}); script loop {t_loop[mode]:.2f} s")
    return 1 if any(differ.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
