"""Frames at 2 fps and the interleaved turns: every word once, in order, the last one included."""
import random

import pytest

from training.interleave import Step, context_text, interleave, sample_frames


def frames_at(fps: float, seconds: float, offset: float = 0.0) -> list[float]:
    return [round(offset + k / fps, 6) for k in range(int(seconds * fps) + 1)]


def emitted(steps: list[Step]) -> list[str]:
    return [w for s in steps for w in s.words]


def test_two_fps_picks_the_first_frame_at_or_after_each_timestamp():
    times = frames_at(30, 20)                     # a 30 fps video
    picked = sample_frames(times, 2.0, 6.0)
    # 9 timestamps 2.0 .. 6.0, then the last frame again: an even count
    assert [times[i] for i in picked] == [pytest.approx(2.0 + k / 2, abs=1e-6) for k in range(9)] + \
        [pytest.approx(6.0)]
    assert len(picked) == 10 and picked[-1] == picked[-2]
    odd = frames_at(25 / 3, 10, offset=0.04)      # 8.33 fps: timestamps fall between frames
    chosen = [odd[i] for i in sample_frames(odd, 1.0, 5.0)]
    wanted = [chosen[0] + k / 2 for k in range(len(chosen))]
    assert all(c >= w - 1e-9 and c - w < 1 / (25 / 3) for c, w in zip(chosen[:-1], wanted[:-1]))
    assert len(sample_frames(frames_at(30, 600), 0, 600)) == 480   # at most 480 frames
    assert sample_frames(times, 30.0, 40.0) == []


def test_every_word_once_in_order_including_the_last():
    frames = [k / 2 for k in range(20)]          # 0.0 .. 9.5 s
    words = [(0.2, 0.4, "before"), (1.0, 2.4, "first"), (3.1, 3.4, "a"), (3.2, 3.5, "b"), (8.0, 9.4, "late"),
             (9.4, 10.3, "after-last-frame")]
    steps = interleave(words, frames)
    assert emitted(steps) == [w for _, _, w in words]
    assert steps[0].time_text == "Time=0.0-3.0s" and steps[0].words == ("before", "first")
    assert steps[1].time_text == "Time=3.0-4.0s" and steps[1].words == ("a", "b")
    assert steps[-1].words[-1] == "after-last-frame" and steps[-1].last == len(frames)
    silent = [s for s in steps if not s.words]
    assert silent and all(s.text == " ..." for s in silent)        # gaps are silent steps
    assert steps[1].text == "a b ..."


def test_trailing_silent_steps_are_removed():
    frames = [k / 2 for k in range(40)]
    steps = interleave([(0.5, 1.0, "only"), (4.0, 4.5, "early")], frames)
    assert emitted(steps) == ["only", "early"] and steps[-1].words == ("early",)
    assert steps[-1].last < len(frames)


def test_a_short_clip_is_one_step():
    steps = interleave([(0.0, 0.4, "hi"), (0.6, 1.4, "there")], [0.0, 0.5, 1.0, 1.0])
    assert len(steps) == 1 and steps[0].words == ("hi", "there") and steps[0].time_text == "Time=0.0-3.0s"


def test_random_clips_never_lose_or_repeat_a_word():
    rng = random.Random(7)
    for _ in range(200):
        t, words = rng.uniform(0, 2), []
        for k in range(rng.randint(1, 60)):
            t += rng.choice([0.05, 0.3, 0.6, 2.5, 7.0])
            words.append((t, t + rng.uniform(0.05, 0.8), f"w{k}"))
        start, end = words[0][0], words[-1][1]
        video = frames_at(rng.choice([24, 25, 30, 7.5]), end + 1)
        frames = [video[i] for i in sample_frames(video, start, end)]
        steps = interleave(words, frames)
        assert emitted(steps) == [w for _, _, w in words]
        for step in steps[:-1]:     # a word appears no later than the first step whose last frame covers it
            assert all(e <= frames[step.last - 1] for s, e, w in words if w in step.words)


def test_context_text():
    assert context_text("Comment live.", "Title", "said before", with_context=False) == "Comment live."
    assert context_text("Comment live.", "Title", "said before", with_context=True) == "Comment live.\nsaid before"
    assert context_text("", "Title", "", with_context=True) == "Title"
