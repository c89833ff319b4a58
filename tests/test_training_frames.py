"""Frames at 2 fps read from a real video (ffmpeg-made, 25 fps), by the rule of interleave.sample_frames."""
import subprocess

import numpy as np
import pytest

from training.frames import read_clip
from training.interleave import sample_frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "count.mp4"
    # every frame carries its number in base 16: red, green and blue hold its digits times 16
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=black:s=64x48:r=25:d=12",
                    "-vf", "geq=r='16*mod(N,16)':g='16*mod(floor(N/16),16)':b='16*floor(N/256)'", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p",
                    "-g", "50", str(path)], check=True)
    return str(path)


@pytest.mark.parametrize("start,end", [(0.0, 12.0), (2.0, 7.0), (3.3, 9.9), (11.5, 12.0)])
def test_two_fps_frames_match_the_rule(video, start, end):
    frames, times = read_clip(video, start, end)
    every = [k / 25 for k in range(300)]
    index = sample_frames(every, start, end)
    assert times == pytest.approx([every[i] for i in index], abs=1e-6)
    assert len(frames) % 2 == 0 and len(frames) == len(index)
    numbers = [sum(int(round(f[..., c].mean() / 16)) * 16 ** c for c in range(3)) for f in frames]
    assert numbers == index      # the frames are the chosen ones, not only their times


def test_at_most_480_frames(tmp_path, video):
    frames, times = read_clip(video, 0.0, 12.0, max_frames=10)
    assert len(frames) == 10 and times[-1] == pytest.approx(4.52)   # the first frame at or after 4.5
    assert all(isinstance(f, np.ndarray) and f.shape == (48, 64, 3) for f in frames)
