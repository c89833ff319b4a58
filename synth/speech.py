"""English speech synthesized by espeak-ng with every word's time known: what the sample corpus speaks
(synth.corpus) and what the ASR benchmarks and tests measure word times on (bench/word_times.py).

- `speak(text, voice, speed)`: int16 samples at 22.05 kHz from the espeak-ng CLI.
- `words_clip`: every word spoken on its own, its leading and trailing digital silence trimmed, the
  words joined by random pauses: starts and ends are sample-exact. Isolated words are slow and fully
  articulated (each is an utterance of its own).
- `talk_clip`: whole sentences as connected speech. Word times come from espeak-ng's own word and
  phoneme events (libespeak-ng through ctypes; its sample counter): a word starts at its first
  phoneme (after the silent closure of a word-initial stop) and ends at its last sound before the
  next word's first, as `speak_word` cuts a word.
- `mix_noise`: a white, pink or music-like bed under speech at a given SNR; `audible_times`: the part
  of each word louder than that bed (what a listener, or an aligner, can hear of it).

Needs the Debian packages espeak-ng (its libespeak-ng1 comes with it).
"""
from __future__ import annotations

import ctypes
import io
import re
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np

RATE = 22_050        # espeak-ng's native rate

# Plain sentences written for this project (no licence constraint).
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "We walked along the river until the sun went down.",
    "My brother bought seven apples at the market.",
    "Please open the window because the room is very warm.",
    "The train leaves the station at nine in the morning.",
    "She painted the old fence a bright shade of green.",
    "Our team finished the project two days early.",
    "A small bird sang outside my window every morning.",
    "He forgot his umbrella and got wet in the rain.",
    "The children played football in the park after school.",
    "Fresh bread smells wonderful when it comes out of the oven.",
    "They watched the stars from the top of the hill.",
    "The library closes early on Sunday afternoons.",
    "I need to buy milk, eggs and butter for the cake.",
    "The doctor told him to drink more water every day.",
    "Snow covered the mountains during the long winter.",
    "Her new phone has a very large screen.",
    "The museum opened a new exhibit about ancient Egypt.",
    "We should leave now if we want to catch the bus.",
    "The cat slept on the warm blanket near the fire.",
    "Turn left at the next corner and walk two blocks.",
    "The farmer planted corn and beans in the spring.",
    "Music filled the hall as the concert began.",
    "The waves crashed against the rocks on the shore.",
    "He wrote a long letter to his grandmother.",
    "The soup was too hot so we waited a few minutes.",
    "A bright red kite flew high above the beach.",
    "The students listened carefully to the teacher.",
]

VOICE, SPEED = "en", 175   # measured: the clearest isolated words for Whisper tiny.en
# espeak-ng voices and speeds (words per minute) for a set with several speakers
VOICES = (("en", 175), ("en-us", 140), ("en-gb", 210), ("en+f3", 175), ("en+m3", 160), ("en-us+f2", 190))

Truth = list[tuple[float, float, str]]     # (start s, end s, word) in clip order


def speak(text: str, voice: str = VOICE, speed: int = SPEED) -> np.ndarray:
    """`text` spoken by the espeak-ng CLI: int16 samples at RATE, with espeak's own leading and
    trailing silence."""
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                         capture_output=True, check=True, timeout=120).stdout
    with wave.open(io.BytesIO(raw)) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != RATE:
            raise RuntimeError(f"unexpected espeak-ng WAV format for {text!r}")
        # espeak streams a WAV of unknown length: read all that came
        return np.frombuffer(w.readframes(len(raw)), dtype="<i2").astype(np.int16)


def speak_word(word: str, voice: str = VOICE, speed: int = SPEED) -> np.ndarray:
    """One word, its leading and trailing digital silence cut: the first and last samples above a tiny
    threshold (16/32768, -66 dBFS) are the word's true start and end."""
    samples = speak(word, voice, speed)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 16)
    if loud.size == 0:
        raise ValueError(f"espeak-ng produced silence for {word!r}")
    return samples[loud[0]:loud[-1] + 1]


def write_wav(path: str | Path, samples: np.ndarray, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def words_clip(sentences: list[str], path: str | Path, *, word_gap: tuple[float, float] = (0.12, 0.20),
               sentence_gap: float = 0.6, lead: float = 0.5, tail: float = 0.5, seed: int = 0,
               cache: dict | None = None, voices: tuple[tuple[str, int], ...] = ((VOICE, SPEED),)) -> Truth:
    """Write a WAV (RATE, mono) of the sentences, each word synthesized on its own and followed by a
    random silence in `word_gap` seconds (`sentence_gap` more after a sentence); sentence k is spoken by
    voices[k % len(voices)] (espeak-ng voice, words per minute). Returns every word's exact times."""
    rng = np.random.default_rng(seed)
    cache = {} if cache is None else cache
    pieces = [np.zeros(int(lead * RATE), np.int16)]
    pos = pieces[0].size
    truth = []
    for k, sentence in enumerate(sentences):
        voice, speed = voices[k % len(voices)]
        for word in sentence.split():
            key = (voice, speed, re.sub(r"[^\w']", "", word))
            if key not in cache:
                cache[key] = speak_word(key[2], voice, speed)
            audio = cache[key]
            gap = np.zeros(int(rng.uniform(*word_gap) * RATE), np.int16)
            truth.append((pos / RATE, (pos + audio.size) / RATE, word))
            pieces += [audio, gap]
            pos += audio.size + gap.size
        pieces.append(np.zeros(int(sentence_gap * RATE), np.int16))
        pos += pieces[-1].size
    pieces.append(np.zeros(int(tail * RATE), np.int16))
    write_wav(path, np.concatenate(pieces))
    return truth


# -- connected speech: libespeak-ng's events ------------------------------------------------------------

_WORD, _PHONEME = 1, 7                 # espeak_EVENT_TYPE values (speak_lib.h)
_SYNCHRONOUS, _PHONEME_EVENTS = 2, 1   # AUDIO_OUTPUT_SYNCHRONOUS; espeakINITIALIZE_PHONEME_EVENTS


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Espeak:
    """libespeak-ng in synchronous mode with phoneme events; one synthesis at a time per process."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libespeak-ng.so.1")
        if self.lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _PHONEME_EVENTS) != RATE:
            raise RuntimeError("libespeak-ng did not start at 22.05 kHz")
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, int, int, str]] = []
        self.callback = _Callback(self._collect)     # kept referenced: libespeak holds the pointer
        self.lib.espeak_SetSynthCallback(self.callback)
        self.lock = threading.Lock()

    def _collect(self, wav, n, events) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != 0:
            e = events[i]
            self.events.append((e.type, e.text_position, e.sample, e.id.decode("utf-8", "replace")))
            i += 1
        return 0

    def synth(self, text: str, voice: str, speed: int) -> tuple[np.ndarray, list[tuple[int, int, int, str]]]:
        with self.lock:
            self.chunks, self.events = [], []
            # a voice name ("en", "en-us+f2"), else a language as the CLI takes it ("en-gb")
            if (self.lib.espeak_SetVoiceByName(voice.encode()) != 0
                    and self.lib.espeak_SetVoiceByProperties(ctypes.byref(_Voice(languages=voice.encode()))) != 0):
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self.lib.espeak_SetParameter(1, int(speed), 0)                 # espeakRATE, absolute
            data = text.encode()
            self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)   # POS_CHARACTER, CHARS_AUTO
            self.lib.espeak_Synchronize()
            audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
            return audio.astype(np.int16), list(self.events)


_ESPEAK: _Espeak | None = None


def speak_timed(text: str, voice: str = VOICE, speed: int = SPEED) -> tuple[np.ndarray, Truth]:
    """`text` as connected speech (int16 at RATE) and the (start, end, token) of each of its
    whitespace tokens that espeak spoke, in seconds from the first sample."""
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = _Espeak()
    audio, events = _ESPEAK.synth(text, voice, speed)
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    starts: dict[int, int] = {}                  # token index -> its first phoneme's first sample
    current = None
    for kind, position, sample, name in events:
        if kind == _WORD:
            current = next((i for i, (a, b) in enumerate(spans) if a <= position - 1 < b), None)
        elif kind == _PHONEME and current is not None and not name.startswith("_"):   # "_": a pause
            starts.setdefault(current, sample)
    # a word ends at its last sound before the next word's first (as speak_word cuts a word): the
    # silence of a pause, or of the next word's stop closure, lies between words
    sound = np.flatnonzero(np.abs(audio.astype(np.int32)) > 16)
    order = sorted(starts)
    truth = []
    for k, i in enumerate(order):
        limit = starts[order[k + 1]] if k + 1 < len(order) else audio.size
        inside = sound[(sound >= starts[i]) & (sound < limit)]
        if inside.size:
            truth.append((inside[0] / RATE, (inside[-1] + 1) / RATE, text[spans[i][0]:spans[i][1]]))
    return audio, truth


def talk_clip(sentences: list[str], path: str | Path, *, sentence_gap: tuple[float, float] = (0.3, 0.9),
              lead: float = 0.5, tail: float = 0.5, seed: int = 0,
              voices: tuple[tuple[str, int], ...] = ((VOICE, SPEED),)) -> Truth:
    """Write a WAV (RATE, mono) of the sentences spoken as connected speech, sentence k by
    voices[k % len(voices)], each trimmed of espeak's leading and trailing silence and followed by a
    random pause in `sentence_gap` seconds. Returns every word's times (espeak-ng's own)."""
    rng = np.random.default_rng(seed)
    pieces = [np.zeros(int(lead * RATE), np.int16)]
    pos = pieces[0].size
    truth: Truth = []
    for k, sentence in enumerate(sentences):
        voice, speed = voices[k % len(voices)]
        audio, words = speak_timed(sentence, voice, speed)
        first, last = int(round(words[0][0] * RATE)), int(round(words[-1][1] * RATE))
        truth += [(pos / RATE + s - first / RATE, pos / RATE + e - first / RATE, w) for s, e, w in words]
        gap = np.zeros(int(rng.uniform(*sentence_gap) * RATE), np.int16)
        pieces += [audio[first:last], gap]
        pos += last - first + gap.size
    pieces.append(np.zeros(int(tail * RATE), np.int16))
    write_wav(path, np.concatenate(pieces))
    return truth


# -- noise beds -----------------------------------------------------------------------------------------

NOISES = ("white", "pink", "music")


def noise_bed(kind: str, n: int, rate: int, seed: int = 0) -> np.ndarray:
    """`n` samples of unit-RMS noise: white, pink (1/f power) or music (a chord of six tones, each
    swelling at its own phase)."""
    rng = np.random.default_rng(seed)
    if kind == "white":
        bed = rng.normal(size=n)
    elif kind == "pink":
        spectrum = np.fft.rfft(rng.normal(size=n))
        bed = np.fft.irfft(spectrum / np.sqrt(np.maximum(1, np.arange(spectrum.size))), n)
    elif kind == "music":
        t = np.arange(n) / rate
        bed = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) * (1 + 0.5 * np.sin(np.pi * t + k))
                  for k, f in enumerate((110, 220, 277, 330, 440, 554)))
    else:
        raise ValueError(f"noise {kind!r}: one of {NOISES}")
    return bed / np.sqrt(np.mean(bed ** 2))


def mix_noise(speech: np.ndarray, kind: str, snr_db: float, rate: int, seed: int = 0) -> np.ndarray:
    """float speech (in [-1, 1]) with a noise bed `snr_db` under the RMS of its non-silent samples."""
    speech = np.asarray(speech, np.float64)
    level = np.sqrt(np.mean(speech[speech != 0] ** 2))
    return speech + noise_bed(kind, speech.size, rate, seed) * level / 10 ** (snr_db / 20)


def audible_times(truth: Truth, clean: np.ndarray, noisy: np.ndarray, rate: int) -> Truth:
    """Each word cut to its first and last 10 ms frame where the clean speech is at least as loud as
    the noise added to it (a word wholly under the noise keeps its times)."""
    noise = np.asarray(noisy, np.float64) - np.asarray(clean, np.float64)
    hop = rate // 100
    out = []
    for start, end, word in truth:
        a = int(start * rate)
        n = max(1, (int(end * rate) - a) // hop)
        speech_db = 10 * np.log10((np.asarray(clean[a:a + n * hop], np.float64).reshape(n, -1) ** 2).mean(1) + 1e-12)
        noise_db = 10 * np.log10((noise[a:a + n * hop].reshape(n, -1) ** 2).mean(1) + 1e-12)
        heard = np.flatnonzero(speech_db >= noise_db)
        out.append((start + heard[0] / 100, start + (heard[-1] + 1) / 100, word) if heard.size else (start, end, word))
    return out
