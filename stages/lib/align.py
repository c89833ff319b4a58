"""CTC forced alignment of known words to frame log-probabilities (the WhisperX method, no torchaudio).

WhisperX aligns each Whisper segment's text to the frame-wise character log-probabilities of a
wav2vec2 CTC model: the best (Viterbi) path through the CTC trellis of the segment's characters gives
every character a run of frames; a word spans its first character's first frame to its last
character's last frame. Words with no character in the model's vocabulary (numbers, symbols, another
script) cannot be aligned: they get times interpolated from their aligned neighbours instead of being
dropped.

Everything here is plain numpy on a `(T, V)` array of log-probabilities (T frames, V vocabulary
entries, one of them the CTC blank), so it is testable on synthetic emissions with a known best path.

The trellis is the full CTC topology (as `torchaudio.functional.forced_align`): the label sequence
`l_1..l_S` is extended with blanks to `_ l_1 _ l_2 _ ... l_S _` (2S+1 states). At each frame the path
stays in its state, moves to the next one, or skips a blank between two *different* labels. So a
label repeated in a row ("ll" in "hello") needs a blank frame between its two occurrences, and a
label held over several frames is one occurrence (CTC collapses repeats).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

NEG_INF = -np.inf


class AlignmentError(ValueError):
    """The tokens cannot be aligned to the frames (too few frames, or no path at all)."""


@dataclass(frozen=True)
class TokenSpan:
    """Frames `[start, end)` where token `index` of the sequence is emitted, and its mean probability."""

    index: int
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class AlignedWord:
    word: str
    start: float
    end: float
    score: float | None   # mean probability of its characters' frames; None when interpolated
    aligned: bool         # False: no character of it was in the vocabulary, times interpolated


def min_frames(tokens: Sequence[int]) -> int:
    """Fewest frames a CTC path of `tokens` needs: one per token plus a blank between repeats."""
    repeats = sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)
    return len(tokens) + repeats


def viterbi(log_probs: np.ndarray, tokens: Sequence[int], blank: int = 0) -> np.ndarray:
    """The best CTC path of `tokens` through `log_probs` (T x V).

    Returns an int array of length T: for each frame, the index (into `tokens`) of the token emitted
    at that frame, or -1 for a blank frame. Raises AlignmentError when no path exists.
    """
    emissions = np.asarray(log_probs, dtype=np.float64)
    if emissions.ndim != 2:
        raise ValueError(f"log_probs must be 2-D (frames x vocabulary), got shape {emissions.shape}")
    n_frames, vocab = emissions.shape
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size == 0:
        raise AlignmentError("no tokens to align")
    if tokens.min() < 0 or tokens.max() >= vocab:
        raise ValueError(f"token ids must be in [0, {vocab}); got {tokens.min()}..{tokens.max()}")
    if np.any(tokens == blank):
        raise ValueError("the token sequence must not contain the blank id")
    if n_frames < min_frames(tokens.tolist()):
        raise AlignmentError(f"{n_frames} frames cannot hold {tokens.size} tokens "
                             f"(at least {min_frames(tokens.tolist())} needed)")

    n_states = 2 * tokens.size + 1
    labels = np.full(n_states, blank, dtype=np.int64)
    labels[1::2] = tokens
    # A skip from state s-2 to s is allowed when s is a label that differs from the label at s-2.
    can_skip = np.zeros(n_states, dtype=bool)
    can_skip[3::2] = tokens[1:] != tokens[:-1]

    score = np.full(n_states, NEG_INF)
    score[0] = emissions[0, blank]
    score[1] = emissions[0, labels[1]]
    back = np.zeros((n_frames, n_states), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, n_frames):
        stay = score
        step = np.concatenate(([NEG_INF], score[:-1]))
        skip = np.where(can_skip, np.concatenate(([NEG_INF, NEG_INF], score[:-2])), NEG_INF)
        # ties prefer staying, then the single step: earliest transitions, deterministic paths
        best = np.stack([stay, step, skip])
        choice = np.argmax(best, axis=0)
        score = best[choice, np.arange(n_states)] + emissions[t, labels]
        back[t] = choice

    last = n_states - 1 if score[-1] >= score[-2] else n_states - 2
    if not np.isfinite(score[last]):
        raise AlignmentError("no CTC path through these frames (probability 0)")
    states = np.empty(n_frames, dtype=np.int64)
    state = last
    for t in range(n_frames - 1, -1, -1):
        states[t] = state
        state -= int(back[t, state])
    if states[0] > 1:
        raise AlignmentError("backtracking did not reach the first token")  # cannot happen with finite scores
    return np.where(states % 2 == 1, (states - 1) // 2, -1)


def token_spans(path: np.ndarray, log_probs: np.ndarray, tokens: Sequence[int]) -> list[TokenSpan]:
    """Group a Viterbi path (frame -> token index or -1) into one span per token, in order."""
    emissions = np.asarray(log_probs, dtype=np.float64)
    spans = []
    for index, token in enumerate(tokens):
        frames = np.flatnonzero(path == index)
        if frames.size == 0:
            raise AlignmentError(f"token {index} got no frame")  # a valid path gives each token a frame
        probs = np.exp(emissions[frames, token])
        spans.append(TokenSpan(index=index, start=int(frames[0]), end=int(frames[-1]) + 1,
                               score=float(probs.mean())))
    return spans


def vocabulary_case(vocab: dict[str, int]) -> Callable[[str], str]:
    """How to fold text to the vocabulary's letters: most CTC vocabularies are all upper or all lower."""
    letters = [k for k in vocab if len(k) == 1 and k.isalpha()]
    upper = sum(1 for k in letters if k.isupper())
    lower = sum(1 for k in letters if k.islower())
    if upper > lower:
        return str.upper
    if lower > upper:
        return str.lower
    return lambda s: s


def word_tokens(word: str, vocab: dict[str, int], fold: Callable[[str], str] | None = None) -> list[int]:
    """The vocabulary ids of a word's characters; characters missing from the vocabulary are skipped
    (punctuation around a word, accents a model lacks)."""
    fold = fold or vocabulary_case(vocab)
    return [vocab[c] for c in fold(word.strip()) if c in vocab]


def interpolate(times: list[tuple[float, float] | None], lower: float, upper: float) -> list[tuple[float, float]]:
    """Fill the None entries: each run of missing words shares evenly the gap between the end of the
    aligned word before it (or `lower`) and the start of the aligned word after it (or `upper`)."""
    out: list[tuple[float, float] | None] = list(times)
    i = 0
    while i < len(out):
        if out[i] is not None:
            i += 1
            continue
        j = i
        while j < len(out) and out[j] is None:
            j += 1
        left = out[i - 1][1] if i > 0 else lower
        right = out[j][0] if j < len(out) else upper
        right = max(right, left)
        step = (right - left) / (j - i)
        for k in range(i, j):
            out[k] = (left + (k - i) * step, left + (k - i + 1) * step)
        i = j
    return out  # type: ignore[return-value]


def align_words(
    log_probs: np.ndarray,
    words: Sequence[str],
    vocab: dict[str, int],
    *,
    blank: int,
    frame_seconds: float,
    offset: float = 0.0,
    delimiter: str | None = "|",
    end: float | None = None,
) -> list[AlignedWord]:
    """Align `words` to `log_probs` (T x V frame log-probabilities of a CTC model over the audio that
    starts at `offset` seconds) and return one AlignedWord per input word, in order.

    `frame_seconds` is the model's frame stride (wav2vec2: 320 samples at 16 kHz = 0.02 s). Between
    two alignable words the word delimiter (`|` in wav2vec2 vocabularies) is inserted when the
    vocabulary has it, as the model was trained to emit it. Words with no character in the vocabulary
    are interpolated (see `interpolate`) between `offset` and `end` (default: the end of the frames).
    Raises AlignmentError when no word can be aligned or the frames cannot hold the characters.
    """
    n_frames = int(np.asarray(log_probs).shape[0])
    end = offset + n_frames * frame_seconds if end is None else end
    fold = vocabulary_case(vocab)
    per_word = [word_tokens(w, vocab, fold) for w in words]
    delimiter_id = vocab.get(delimiter) if delimiter else None
    if delimiter_id == blank:
        delimiter_id = None

    sequence: list[int] = []
    ranges: list[tuple[int, int] | None] = []  # per word: [first, last) token indices in `sequence`
    for ids in per_word:
        if not ids:
            ranges.append(None)
            continue
        if sequence and delimiter_id is not None:
            sequence.append(delimiter_id)
        ranges.append((len(sequence), len(sequence) + len(ids)))
        sequence.extend(ids)
    if not sequence:
        raise AlignmentError("no word has a character in the model's vocabulary")

    path = viterbi(log_probs, sequence, blank=blank)
    spans = token_spans(path, log_probs, sequence)

    times: list[tuple[float, float] | None] = []
    scores: list[float | None] = []
    for rng in ranges:
        if rng is None:
            times.append(None)
            scores.append(None)
            continue
        first, last = spans[rng[0]], spans[rng[1] - 1]
        times.append((offset + first.start * frame_seconds, offset + last.end * frame_seconds))
        word_spans = spans[rng[0]:rng[1]]
        scores.append(float(np.mean([s.score for s in word_spans])))
    filled = interpolate(times, offset, end)
    return [AlignedWord(word=w, start=round(s, 3), end=round(e, 3), score=sc, aligned=t is not None)
            for w, (s, e), sc, t in zip(words, filled, scores, times)]
