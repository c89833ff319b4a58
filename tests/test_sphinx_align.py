"""Forced alignment with pocketsphinx (stages/lib/sphinx_align.py) on speech whose word times are known:
espeak-ng words joined by known silences (bench/asr_rtf.py's synth_clip), numbers and a word CMUdict
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
    from bench.asr_rtf import SENTENCES, synth_clip

    folder = tmp_path_factory.mktemp("align")
    sentences = SENTENCES[:3] + ["We paid 42 dollars for Kubernetes lessons in 2021."]
    truth = synth_clip(sentences, folder / "clip.wav", word_gap=(0.05, 0.5), seed=3)
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(folder / "clip.wav"), "-ar", "16000",
                          "-f", "s16le", "-"], capture_output=True, check=True).stdout
    # a noise floor at -64 dBFS: recordings are never digital zero between words (and the model's silence
    # is trained on noise: on digital zero its narrow default beams lose the path)
    noise = np.random.default_rng(0).normal(0, 20, len(raw) // 2)
    return truth, np.clip(np.frombuffer(raw, np.int16) + noise, -32768, 32767).astype(np.int16)


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


def test_what_cannot_be_aligned_comes_back_as_none(clip):
    from stages.lib.sphinx_align import SphinxAligner

    truth, audio = clip
    aligner = SphinxAligner()
    assert aligner.align(["hello", "world"], np.zeros(160, np.int16)) == [None, None]     # 10 ms of audio
    words = [w for _, _, w in truth][:9]
    cut = audio[: int(truth[8][1] * 16000) + 1600]
    assert aligner.align(["--"] + words, cut)[0] is None                                # nothing to say
    assert all(t is not None for t in aligner.align(["--"] + words, cut)[1:])
