"""synth.speech: the speech the word-time gates measure on. Its word times must be right, or every
figure built on them is wrong: each word starts on sound, and what lies between words is silence."""
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng")


def levels_db(audio: np.ndarray, start: float, end: float, rate: int) -> float:
    x = audio[int(start * rate):int(end * rate)].astype(np.float64)
    return 10 * np.log10((x ** 2).mean() + 1.0) if x.size else 0.0


@pytest.mark.parametrize("voice, speed", [("en-us", 140), ("en-gb", 210), ("en+f3", 175)])
def test_connected_speech_word_times_come_from_espeaks_own_events(voice, speed):
    from synth.speech import RATE, speak_timed

    text = "Turn left at the next corner, and walk two blocks."
    audio, truth = speak_timed(text, voice, speed)
    assert [w for _, _, w in truth] == text.split()
    assert all(s < e for s, e, _ in truth) and all(a[1] <= b[0] for a, b in zip(truth, truth[1:]))
    assert truth[-1][1] <= audio.size / RATE
    for start, end, word in truth:
        assert levels_db(audio, start, start + 0.01, RATE) > 40, (word, "no sound at its start")
        loudest = max(levels_db(audio, t, t + 0.01, RATE) for t in np.arange(start, end - 0.005, 0.01))
        assert loudest > 55, (word, "no speech in it")
    # between words: the silent closure of the next word's stop, or the comma's pause
    gaps = [(a[1], b[0]) for a, b in zip(truth, truth[1:]) if b[0] - a[1] >= 0.02]
    assert gaps and all(levels_db(audio, a, b, RATE) < 50 for a, b in gaps)


def test_clips_place_words_where_they_are_heard(tmp_path):
    import wave

    from synth.speech import SENTENCES, VOICES, talk_clip, words_clip

    for make in (words_clip, talk_clip):
        truth = make(SENTENCES[:2], tmp_path / "clip.wav", voices=VOICES[:2], seed=4)
        with wave.open(str(tmp_path / "clip.wav")) as f:
            rate, audio = f.getframerate(), np.frombuffer(f.readframes(f.getnframes()), "<i2")
        assert [w for _, _, w in truth] == " ".join(SENTENCES[:2]).split()
        assert truth[0][0] == pytest.approx(0.5, abs=0.01)             # the lead-in silence
        assert levels_db(audio, 0, truth[0][0], rate) < 1                # digital silence before
        for start, end, word in truth:
            assert levels_db(audio, start, min(end, start + 0.02), rate) > 40, (make.__name__, word)
