"""Forced alignment with pocketsphinx (stages/lib/sphinx_align.py) on speech whose word times are known:
espeak-ng words joined by known silences (synth.speech.words_clip), numbers and a word CMUdict
lacks included; and what it returns when it cannot align."""
import subprocess

import numpy as np
import pytest

from stages.lib.spoken_forms import clean_token, readings


def test_spoken_forms_of_numbers_and_symbols():
    assert readings("42") == [["forty", "two"]]
    assert readings("2021") == [["two", "thousand", "twenty", "one"], ["twenty", "twenty", "one"]]
    assert readings("3.5") == [["three", "point", "five"]]
    assert readings("15%") == [["fifteen", "percent"]]
    assert readings("3rd") == [["third"]] and readings("1990s") == [["one", "thousand", "nine", "hundred", "nineties"],
                                                                  ["nineteen", "nineties"]]
    assert readings("COVID-19") == [["COVID", "nineteen"]] and readings("1,200")[0] == ["one", "thousand", "two", "hundred"]
    assert clean_token('"Hello,') == "Hello" and clean_token("...") == ""


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from synth.speech import SENTENCES, words_clip

    folder = tmp_path_factory.mktemp("align")
    sentences = SENTENCES[:3] + ["We paid 42 dollars for Kubernetes lessons in 2021."]
    truth = words_clip(sentences, folder / "clip.wav", word_gap=(0.05, 0.5), seed=3)
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(folder / "clip.wav"), "-ar", "16000",
                          "-f", "s16le", "-"], capture_output=True, check=True).stdout
    return truth, np.frombuffer(raw, np.int16)      # the pauses are digital zeros, as in produced videos


def test_words_align_within_tens_of_milliseconds(clip):
    from stages.lib.sphinx_align import SphinxAligner

    truth, audio = clip
    times = SphinxAligner().align([w for _, _, w in truth], audio)
    assert all(t is not None for t in times)
    starts = np.array([abs(t[0] - s) for t, (s, _, _) in zip(times, truth)])
    ends = np.array([abs(t[1] - e) for t, (_, e, _) in zip(times, truth)])
    assert starts.mean() < 0.03 and ends.mean() < 0.03, (starts.mean(), ends.mean())
    assert max(starts.max(), ends.max()) < 0.2, (starts.max(), ends.max())
    # the number and the word CMUdict lacks are aligned like the others
    for word in ("42", "Kubernetes", "2021."):
        i = [w for _, _, w in truth].index(word)
        assert starts[i] < 0.1 and ends[i] < 0.1, (word, starts[i], ends[i])


@pytest.mark.parametrize("kind, snr", [("white", 15), ("music", 15)])
def test_under_noise_words_align_to_what_can_be_heard_of_them(clip, kind, snr):
    """Under a noise bed the parts of a word quieter than the noise are gone (a breathy end): against
    the audible part of each word, errors stay in tens of ms."""
    from stages.lib.sphinx_align import SphinxAligner
    from synth.speech import audible_times, mix_noise

    truth, audio = clip
    clean = audio.astype(np.float64) / 32768
    noisy = mix_noise(clean, kind, snr, 16000, seed=1)
    heard = audible_times(truth, clean, noisy, 16000)
    times = SphinxAligner().align([w for _, _, w in truth], noisy.astype(np.float32))
    assert all(t is not None for t in times)
    starts = np.array([abs(t[0] - s) for t, (s, _, _) in zip(times, heard)])
    ends = np.array([abs(t[1] - e) for t, (_, e, _) in zip(times, heard)])
    assert starts.mean() < 0.05 and ends.mean() < 0.05, (starts.mean(), ends.mean())
    assert max(starts.max(), ends.max()) < 0.3, (starts.max(), ends.max())


def test_word_edges_snap_to_the_sound():
    from stages.lib.sphinx_align import snap_edges

    quiet, loud = 10.0, 60.0
    levels = np.full(200, quiet)
    levels[20:50] = loud           # word A sounds in frames 20-49
    levels[60:100] = loud          # word B in 60-99, then a pause
    levels[130:140] = loud         # word C
    # A starts 8 frames early (a pause taken into its first phone), B ends 15 frames early, C is right
    assert snap_edges([(12, 50), (60, 85), (130, 140)], levels) == [(20, 50), (60, 100), (130, 140)]
    # a run on through loud frames stops at the next word's start and after 30 frames
    assert snap_edges([(20, 40), (45, 100)], levels)[0] == (20, 45)
    assert snap_edges([(60, 65)], np.where(np.arange(200) < 150, loud, quiet))[0] == (60, 95)
    # a quiet run is not cut when the word would keep less than 40% of its length
    assert snap_edges([(0, 30)], np.where((np.arange(200) >= 25) & (np.arange(200) < 30), loud, quiet)) == [(0, 30)]
    # no pause in the window (a music bed): the model's edges stay
    assert snap_edges([(12, 50)], np.where(levels > quiet, loud, loud - 10)) == [(12, 50)]


def test_what_cannot_be_aligned_comes_back_as_none(clip):
    from stages.lib.sphinx_align import SphinxAligner

    truth, audio = clip
    aligner = SphinxAligner()
    assert aligner.align(["hello", "world"], np.zeros(160, np.int16)) == [None, None]     # 10 ms of audio
    words = [w for _, _, w in truth][:9]
    cut = audio[: int(truth[8][1] * 16000) + 1600]
    assert aligner.align(["--"] + words, cut)[0] is None                                # nothing to say
    assert all(t is not None for t in aligner.align(["--"] + words, cut)[1:])
