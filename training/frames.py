"""A clip's frames at exactly 2 fps, decoded with PyAV (the `av` wheel faster-whisper brings).

The rule is interleave.sample_frames' (LIVECC_SPEC section 8): targets first, first + 0.5, ... where
`first` is the timestamp of the first frame at or after `start`, up to the last frame at or before `end`;
each target takes the first frame at or after it; at most 480; the count padded to even. Frames are
decoded once, in order, after one seek, and only the chosen ones are converted to RGB arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import numpy as np

from training.interleave import FPS, FRAME_FACTOR, MAX_FRAMES


class NoVideo(ValueError):
    """The media has no video stream."""


@dataclass
class Clip:
    frames: list[np.ndarray] = field(default_factory=list)   # uint8 RGB
    times: list[float] = field(default_factory=list)         # seconds of the media
    video_end: float | None = None   # where the last frame decoded within [start, end] stops showing


def read_clip(source: str | BinaryIO, start: float, end: float, fps: float = FPS,
              max_frames: int = MAX_FRAMES) -> tuple[list[np.ndarray], list[float]]:
    """(uint8 RGB frames, their timestamps in seconds of the media) of the clip [start, end] of a file
    (path, or a binary file object such as a shard's mp4 bytes)."""
    clip = decode_clip(source, start, end, fps, max_frames)
    return clip.frames, clip.times


def decode_clip(source: str | BinaryIO, start: float, end: float, fps: float = FPS,
                max_frames: int = MAX_FRAMES, threads: int = 0,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Clip:
    """`read_clip`, plus where the clip's video stops (a clip running past the media's end stops early).
    `threads`: decoder threads (0: as many as the codec likes); `transform`: applied to each chosen frame
    as it is decoded (a resize keeps a long video's frames small). Raises NoVideo, or PyAV's errors for
    media that does not open or decode."""
    import av

    clip = Clip()
    frames, times = clip.frames, clip.times
    with av.open(source) as container:
        if not container.streams.video:
            raise NoVideo("the media has no video stream")
        stream = container.streams.video[0]
        step = 1 / float(stream.average_rate) if stream.average_rate else 0.0
        stream.thread_type = "AUTO"
        if threads:
            stream.thread_count = threads
        if start > 0 and stream.time_base is not None:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        target = None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            if t < start - 1e-6:
                continue
            if t > end + 1e-6 or len(times) >= max_frames:
                break
            shown = float(frame.duration * stream.time_base) if frame.duration else step
            clip.video_end = t + shown
            if target is None:
                target = t
            image = None
            while target <= t + 1e-6 and len(times) < max_frames:
                if image is None:
                    image = frame.to_ndarray(format="rgb24")
                    image = transform(image) if transform else image
                frames.append(image)
                times.append(t)
                target = times[0] + len(times) / fps
    while frames and len(frames) % FRAME_FACTOR:
        frames.append(frames[-1])
        times.append(times[-1])
    return clip
