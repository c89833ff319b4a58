"""CTC forced alignment (stages/lib/align.py) on synthetic emissions whose best path is known."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from stages.lib.align import (AlignmentError, align_words, interpolate, min_frames, token_spans, viterbi,
                              vocabulary_case, word_tokens)

BLANK = 0
# A wav2vec2-style vocabulary: blank, specials, word delimiter, upper-case letters, apostrophe.
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4,
         **{c: i + 5 for i, c in enumerate("ETAONIHSRDLUMWCFGYPBVK'XJQZ")}}


def emissions_for(frames: list[int], vocab_size: int = len(VOCAB), peak: float = 0.9) -> np.ndarray:
    """Log-probs where frame t gives probability `peak` to label frames[t], the rest spread evenly."""
    probs = np.full((len(frames), vocab_size), (1 - peak) / (vocab_size - 1))
    probs[np.arange(len(frames)), frames] = peak
    return np.log(probs)


def ids(text: str) -> list[int]:
    return [VOCAB[c] for c in text]


def path_of(frames_spec: str) -> list[int]:
    """'__CC_AT_' -> frame labels; '_' is the blank."""
    return [BLANK if c == "_" else VOCAB[c] for c in frames_spec]


# -- the Viterbi path ---------------------------------------------------------------------------------

def test_viterbi_recovers_the_designed_path_exactly():
    spec = "__CC_ATT__"
    tokens = ids("CAT")
    path = viterbi(emissions_for(path_of(spec)), tokens, blank=BLANK)
    assert path.tolist() == [-1, -1, 0, 0, -1, 1, 2, 2, -1, -1]
    spans = token_spans(path, emissions_for(path_of(spec)), tokens)
    assert [(s.start, s.end) for s in spans] == [(2, 4), (5, 6), (6, 8)]
    assert all(s.score == pytest.approx(0.9) for s in spans)


def test_repeated_letters_need_a_blank_between_them():
    # "LL": frames L L _ L -> first L over frames 0-1, second L at frame 3
    tokens = ids("LL")
    path = viterbi(emissions_for(path_of("LL_L")), tokens, blank=BLANK)
    assert path.tolist() == [0, 0, -1, 1]
    # with no blank frame the model saw, the path must still put one between the two Ls
    path = viterbi(emissions_for(path_of("LLLL")), tokens, blank=BLANK)
    assert path.tolist().count(-1) >= 1
    first, second = token_spans(path, emissions_for(path_of("LLLL")), tokens)
    assert first.end < second.start
    # "HELLO": the double L is two tokens, aligned to the two L runs the emissions show
    spec = "_HH_E_LL__L_OO_"
    path = viterbi(emissions_for(path_of(spec)), ids("HELLO"), blank=BLANK)
    spans = token_spans(path, emissions_for(path_of(spec)), ids("HELLO"))
    assert [(s.start, s.end) for s in spans] == [(1, 3), (4, 5), (6, 8), (10, 11), (12, 14)]


def test_too_few_frames_raise():
    assert min_frames(ids("LL")) == 3
    assert min_frames(ids("CAT")) == 3
    with pytest.raises(AlignmentError):
        viterbi(emissions_for(path_of("LL")), ids("LL"), blank=BLANK)
    # the minimum is enough
    assert viterbi(emissions_for(path_of("L_L")), ids("LL"), blank=BLANK).tolist() == [0, -1, 1]
    with pytest.raises(AlignmentError):
        viterbi(emissions_for(path_of("__")), [], blank=BLANK)
    with pytest.raises(ValueError):
        viterbi(emissions_for(path_of("__")), [BLANK], blank=BLANK)


def test_every_frame_blank_still_gives_each_token_a_frame():
    frames = emissions_for([BLANK] * 8)
    path = viterbi(frames, ids("AB"), blank=BLANK)
    assert sorted(set(path.tolist()) - {-1}) == [0, 1]


def _ctc_paths(n_frames: int, tokens: list[int]):
    """Every frame labelling (blank = -1, else token index) that collapses to `tokens` under CTC."""
    for labels in itertools.product([-1] + list(range(len(tokens))), repeat=n_frames):
        collapsed, prev = [], None
        for index in labels:
            if index != -1 and (index != prev):
                collapsed.append(index)
            prev = index
        # a repeated token index in a row is one emission; a new index must follow in order
        if collapsed != list(range(len(tokens))):
            continue
        # two equal neighbouring tokens must be separated by a blank in the frame labelling
        ok = all(not (a != b and a != -1 and b != -1 and tokens[a] == tokens[b]) for a, b in zip(labels, labels[1:]))
        if ok:
            yield labels


@pytest.mark.parametrize("seed", range(6))
def test_viterbi_matches_brute_force_on_random_emissions(seed):
    rng = np.random.default_rng(seed)
    vocab_size, n_frames = 5, 6
    tokens = [[1, 2], [1, 1], [2, 3, 2], [1, 1, 2]][seed % 4]
    log_probs = np.log(rng.dirichlet(np.ones(vocab_size), size=n_frames))

    def score(labels):
        return sum(log_probs[t, BLANK if i == -1 else tokens[i]] for t, i in enumerate(labels))

    best = max(_ctc_paths(n_frames, tokens), key=score)
    path = viterbi(log_probs, tokens, blank=BLANK)
    assert score(path.tolist()) == pytest.approx(score(best))


def test_long_sequences_backtrack_past_int8_state_numbers():
    # > 127 states: the backpointers are int8 offsets, the state numbers are not
    text = "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG " * 3
    tokens = [VOCAB["|" if c == " " else c] for c in text.strip()]
    spec = [BLANK]
    for t in tokens:
        spec += [t, t, BLANK]
    path = viterbi(emissions_for(spec), tokens, blank=BLANK)
    spans = token_spans(path, emissions_for(spec), tokens)
    assert [s.start for s in spans] == [1 + 3 * k for k in range(len(tokens))]
    assert all(s.end - s.start == 2 for s in spans)


# -- words --------------------------------------------------------------------------------------------

def test_vocabulary_case_and_word_tokens():
    assert vocabulary_case(VOCAB)("Hello") == "HELLO"
    assert vocabulary_case({"a": 1, "b": 2, "|": 3})("Hello") == "hello"
    # punctuation and characters missing from the vocabulary are skipped; the apostrophe is kept
    assert word_tokens(" don't,", VOCAB) == ids("DON'T")
    assert word_tokens("café", VOCAB) == ids("CAF")
    assert word_tokens("42%", VOCAB) == []


def test_align_words_times_from_the_stride_and_offset():
    # "HI THERE": _HH_|_TTHHEERREE_ at 20 ms frames, starting 1.0 s into the audio
    spec = "_HI_|_THERE__"
    words = align_words(emissions_for(path_of(spec)), ["Hi", "there."], VOCAB, blank=BLANK,
                        frame_seconds=0.02, offset=1.0)
    assert [w.word for w in words] == ["Hi", "there."]
    assert (words[0].start, words[0].end) == (1.02, 1.06)   # frames 1-2
    assert (words[1].start, words[1].end) == (1.12, 1.22)   # frames 6-10
    assert all(w.aligned for w in words)
    assert words[0].score == pytest.approx(0.9)


def test_unalignable_words_are_interpolated_between_neighbours():
    # "I HAVE 5 CATS": "5" is not in the vocabulary; the model heard something between HAVE and CATS
    spec = "_I_|_HAVE_|______|_CATS_"
    words = align_words(emissions_for(path_of(spec)), ["I", "have", "5", "cats"], VOCAB, blank=BLANK,
                        frame_seconds=0.02, offset=0.0)
    have, five, cats = words[1], words[2], words[3]
    assert not five.aligned and five.score is None
    assert (five.start, five.end) == (have.end, cats.start)   # fills the gap between its neighbours
    assert have.end < cats.start
    # two unalignable words in a row share the gap evenly
    words = align_words(emissions_for(path_of(spec)), ["I", "have", "5", "%", "cats"], VOCAB, blank=BLANK,
                        frame_seconds=0.02)
    a, b = words[2], words[3]
    assert a.start == words[1].end and b.end == words[4].start
    assert a.end == pytest.approx(b.start) and a.end - a.start == pytest.approx(b.end - b.start, abs=1e-3)


def test_unalignable_words_at_the_edges_use_the_window():
    spec = "____HI____"
    words = align_words(emissions_for(path_of(spec)), ["$5", "hi", "#1"], VOCAB, blank=BLANK,
                        frame_seconds=0.1, offset=2.0, end=3.5)
    assert (words[0].start, words[0].end) == (2.0, words[1].start)
    assert (words[2].start, words[2].end) == (words[1].end, 3.5)
    times = [t for w in words for t in (w.start, w.end)]
    assert times == sorted(times)


def test_nothing_alignable_raises():
    with pytest.raises(AlignmentError):
        align_words(emissions_for(path_of("____")), ["42", "%"], VOCAB, blank=BLANK, frame_seconds=0.02)


def test_interpolate():
    assert interpolate([None, (1.0, 2.0), None, None, (4.0, 5.0), None], 0.0, 6.0) == [
        (0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.0), (5.0, 6.0)]
    assert interpolate([None, None], 1.0, 2.0) == [(1.0, 1.5), (1.5, 2.0)]
    # neighbours that touch leave a zero-length slot rather than overlapping times
    assert interpolate([(0.0, 1.0), None, (1.0, 2.0)], 0.0, 2.0) == [(0.0, 1.0), (1.0, 1.0), (1.0, 2.0)]
