"""Forced alignment of known words with pocketsphinx (BSD; its wheel ships the en-us acoustic model and
CMUdict): the words become a linear grammar with optional silences between them, and the decoder's
best path through it gives each word's first and last 10 ms frame.

A token is one dictionary entry whatever it stands for (`42`, `COVID-19`, `3.5`): its pronunciations
are the phones of its spoken forms (stages/lib/spoken_forms.py), so the times map back to the tokens one
to one. Words missing from CMUdict get phones from espeak-ng (its IPA mapped to CMUdict's ARPAbet), all
of a call's unknown words in one espeak-ng process.

Two things around the decoder, both measured on speech with known word times (bench/word_times.py):
- The decoder hears the audio over a noise floor 25 dB under its loud frames. Its silence model was
  trained on room noise: against digital silence (synthetic and produced audio) it loses to the words'
  phones, which then spread into pauses (a "the" starting 350 ms early); a floor it knows puts the
  pauses back in silence. A recording noisier than that is left as it is, give or take 0.4 dB.
- Word edges then snap to the energy of the original audio (`snap_edges`): a leading or trailing
  run of quiet frames inside a word is cut off, and a word end the model cut short runs on through
  loud frames up to the next word. Only where the window has quiet frames to tell from loud ones.

Alignment is all or nothing per call: when no path reaches the grammar's end (a wrong transcript,
audio that does not hold the words) every word comes back None; callers align short spans (a VAD
segment) so that one failure stays local.
"""
from __future__ import annotations

import re
import subprocess

import numpy as np

from stages.lib.spoken_forms import clean_token, readings

SAMPLE_RATE = 16000
FRAME = 160          # 10 ms, the decoder's frame
FLOOR_DB = 25.0      # the noise floor the decoder hears, under the window's loud (95th percentile) frames
MIN_FLOOR = 4.0      # int16 units (-78 dBFS): on exact digital silence the decoder loses every path
SILPROB = 0.5        # silence between words as likely as none (pocketsphinx's default 0.005 favours
                     # stretching a word over a pause; measured: max errors 350 -> 200 ms)
EDGE_MARGIN_DB = 8.0      # a frame is sound when this far above the window's floor (10th percentile)
EDGE_CONTRAST_DB = 15.0   # windows with less between quiet and loud frames (music beds) keep the model's edges
EDGE_MAX_CUT = 0.6        # a quiet run is cut off a word only when the word keeps 40% of its length
EDGE_MAX_EXTEND_S = 0.3   # how far a word end may run on through loud frames
FILLERS = {"<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]", "(NULL)"}
INSTALL = "pip install pocketsphinx==5.1.1 (in the models extra: `make setup-models`)"

# espeak-ng's IPA (en-us and en-gb voices) to the 39 ARPAbet phones of the en-us model, longest first
IPA_ARPABET = {
    "aɪə": "AY ER", "aʊə": "AW ER", "aɪɚ": "AY ER", "aʊɚ": "AW ER", "ɑːɹ": "AA R", "ɔːɹ": "AO R", "oːɹ": "AO R",
    "eɪ": "EY", "aɪ": "AY", "aʊ": "AW", "oʊ": "OW", "əʊ": "OW", "ɔɪ": "OY", "ɪə": "IH R", "eə": "EH R",
    "ʊə": "UH R", "ɛɹ": "EH R", "ɪɹ": "IH R", "ʊɹ": "UH R", "tʃ": "CH", "dʒ": "JH", "ɑː": "AA", "ɔː": "AO",
    "oː": "AO", "uː": "UW", "iː": "IY", "ɜː": "ER", "n̩": "AH N", "l̩": "AH L", "m̩": "AH M",
    "ɚ": "ER", "ɝ": "ER", "ɐ": "AH", "ə": "AH", "ʌ": "AH", "æ": "AE", "a": "AE", "ɑ": "AA", "ɒ": "AA",
    "ɔ": "AO", "o": "OW", "ɛ": "EH", "e": "EH", "ɪ": "IH", "ᵻ": "IH", "i": "IY", "ʊ": "UH", "u": "UW",
    "ɜ": "ER", "y": "UW", "ø": "ER", "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "ɡ": "G", "g": "G",
    "f": "F", "v": "V", "θ": "TH", "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH",
    "m": "M", "n": "N", "ŋ": "NG", "l": "L", "ɫ": "L", "ɹ": "R", "r": "R", "ɾ": "T", "ʔ": "T", "w": "W",
    "ʍ": "W", "j": "Y", "x": "K", "ç": "HH", "ɬ": "L",
}
_IPA_KEYS = sorted(IPA_ARPABET, key=len, reverse=True)


def ipa_to_arpabet(ipa: str) -> list[str]:
    out: list[str] = []
    for chunk in re.sub(r"[ˈˌ‿_\-\s]", " ", ipa).split():
        i = 0
        while i < len(chunk):
            key = next((k for k in _IPA_KEYS if chunk.startswith(k, i)), None)
            if key is None:           # length marks, tie bars, symbols with no English phone
                i += 1
                continue
            out += IPA_ARPABET[key].split()
            i += len(key)
    return out


def espeak_phones(words: list[str], voice: str = "en-us") -> dict[str, list[str]]:
    """ARPAbet phones of each word from espeak-ng's IPA, in one process (one word per line)."""
    if not words:
        return {}
    proc = subprocess.run(["espeak-ng", "-q", "--ipa", "--sep=_", "-v", voice], input="\n".join(words) + "\n",
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or len(lines) != len(words):     # a word espeak split or joined: one at a time
        lines = [subprocess.run(["espeak-ng", "-q", "--ipa", "--sep=_", "-v", voice, w], capture_output=True,
                                text=True, timeout=30).stdout.strip() for w in words]
    return {w: ipa_to_arpabet(line) for w, line in zip(words, lines)}


class SphinxAligner:
    """`align(words, audio)`: (start, end) seconds per word, or None per word when it cannot be aligned."""

    def __init__(self, wide_beams: bool = True) -> None:
        from pocketsphinx import Decoder

        # wide beams: fewer words lost to pruning (measured: mean errors 42/45 ms vs 46/50 ms, 15% slower)
        beams = dict(beam=1e-80, wbeam=1e-60, pbeam=1e-80, maxhmmpf=-1) if wide_beams else {}
        self.decoder = Decoder(lm=None, bestpath=False, loglevel="FATAL", silprob=SILPROB, **beams)
        self.frame_rate = float(self.decoder.config["frate"])
        self.added: set[str] = set()

    def _add_words(self, tokens: list[str]) -> None:
        """Dictionary entries for the tokens CMUdict lacks (lowercase keys; alternatives as `key(2)`)."""
        lookup = self.decoder.lookup_word
        todo = {t.lower(): t for t in tokens if t.lower() not in self.added and lookup(t.lower()) is None}
        plans = {key: readings(token) for key, token in todo.items()}
        unknown = sorted({w for seqs in plans.values() for seq in seqs for w in seq if lookup(w.lower()) is None})
        guessed = espeak_phones(unknown)
        for key, seqs in plans.items():
            prons: list[str] = []
            for seq in seqs:
                phones = [p for w in seq for p in ((lookup(w.lower()) or "").split() or guessed.get(w, []))]
                if phones and " ".join(phones) not in prons:
                    prons.append(" ".join(phones))
            for i, pron in enumerate(prons or ["+SPN+"]):      # nothing pronounceable: the garbage phone
                self.decoder.add_word(key if i == 0 else f"{key}({i + 1})", pron, False)
            self.added.add(key)

    def align(self, words: list[str], audio: np.ndarray) -> list[tuple[float, float] | None]:
        """Times within `audio` (16 kHz mono, int16 or float in [-1, 1]) of each of `words`; None for a
        token with nothing to say (punctuation only) and for all of them when the alignment fails."""
        samples = np.asarray(audio, np.float32) * (32768.0 if audio.dtype != np.int16 else 1.0)
        levels = frame_db(samples)
        floor = max(MIN_FLOOR, 10 ** ((np.percentile(levels, 95) - FLOOR_DB) / 20)) if levels.size else MIN_FLOOR
        # seeded: the same audio aligns the same way
        heard = samples + np.random.default_rng(len(samples)).normal(0.0, floor, len(samples)).astype(np.float32)
        audio = np.clip(np.round(heard), -32768, 32767).astype(np.int16)
        tokens = [clean_token(w) for w in words]
        spoken = [i for i, t in enumerate(tokens) if t]
        out: list[tuple[float, float] | None] = [None] * len(words)
        if not spoken or len(audio) < SAMPLE_RATE // 10:
            return out
        self._add_words([tokens[i] for i in spoken])
        decoder = self.decoder
        decoder.set_align_text(" ".join(tokens[i].lower() for i in spoken))
        decoder.start_utt()
        decoder.process_raw(audio.tobytes(), full_utt=True)
        decoder.end_utt()
        segments = [s for s in (decoder.seg() or []) if s.word not in FILLERS]
        if len(segments) != len(spoken):
            return out
        frames = snap_edges([(seg.start_frame, seg.end_frame + 1) for seg in segments], levels)
        for i, (first, end) in zip(spoken, frames):
            out[i] = (first / self.frame_rate, end / self.frame_rate)
        return out


def frame_db(samples: np.ndarray) -> np.ndarray:
    """Energy (dB over int16 units) of each whole 10 ms frame."""
    n = len(samples) // FRAME
    frames = np.asarray(samples[: n * FRAME], np.float64).reshape(n, FRAME)
    return 10 * np.log10((frames ** 2).mean(axis=1) + 1.0)


def snap_edges(spans: list[tuple[int, int]], levels: np.ndarray) -> list[tuple[int, int]]:
    """Word spans (first frame, end frame), in order, moved onto the sound in `levels` (frame_db): a
    quiet run at a word's start or end is cut off (when the word keeps EDGE_MAX_CUT of its length), and
    an end followed by loud frames runs on through them, up to the next word and EDGE_MAX_EXTEND_S.
    Unchanged where quiet and loud frames are not EDGE_CONTRAST_DB apart (no pause in the window, or a
    bed of music or noise louder than the speech's quiet parts)."""
    if levels.size < 10:
        return spans
    floor = np.percentile(levels, 10)
    if np.percentile(levels, 90) - floor < EDGE_CONTRAST_DB:
        return spans
    loud = levels > floor + EDGE_MARGIN_DB
    extend = int(round(EDGE_MAX_EXTEND_S * SAMPLE_RATE / FRAME))
    out = []
    for k, (first, end) in enumerate(spans):
        first, end = min(first, loud.size), min(end, loud.size)
        cut = int(EDGE_MAX_CUT * (end - first))
        lead = first
        while lead < end and not loud[lead]:
            lead += 1
        if lead < end and lead - first <= cut:
            first = lead
        tail = end
        while tail > first + 1 and not loud[tail - 1]:
            tail -= 1
        if tail < end and end - tail <= cut:
            end = tail
        elif tail == end:
            limit = min(loud.size, end + extend, spans[k + 1][0] if k + 1 < len(spans) else loud.size)
            while end < limit and loud[end]:
                end += 1
        out.append((first, end))
    return out
