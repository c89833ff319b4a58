"""Qwen2-VL's video inputs built here (torchvision, which transformers' video processor needs, does not
import on these machines): frames resized under the pixel rules of LIVECC_SPEC section 8, normalised,
and cut into the 2-frame x 14 x 14 patches of Qwen2-VL, grouped 2 x 2 for the merger.

`video_inputs(frames)` returns what Qwen2-VL's processor returns for the same frames: `pixel_values_videos`
(patches x 1176, float32) and `video_grid_thw` ([frames / 2, height / 14, width / 14]). The resize is PIL's
bicubic, as transformers' PIL image processor; tests/test_vision.py checks patch for patch against it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

PATCH = 14
MERGE = 2
TEMPORAL = 2
FACTOR = PATCH * MERGE                      # 28: sides are multiples of this
MIN_PIXELS = 100 * FACTOR * FACTOR          # per frame, at least (section 8)
MAX_PIXELS = 768 * FACTOR * FACTOR          # per frame, at most (qwen-vl-utils' video default)
TOTAL_PIXELS = 24576 * FACTOR * FACTOR      # the whole clip, at most (section 8)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Sides that are multiples of `factor`, with an area between the bounds, keeping the aspect."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} exceeds 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def frame_pixels(frames: int) -> tuple[int, int]:
    """(min, max) pixels of one frame of a clip of `frames` frames: the clip's total budget shared."""
    return MIN_PIXELS, max(min(MAX_PIXELS, TOTAL_PIXELS / frames * TEMPORAL), int(MIN_PIXELS * 1.05))


def clip_frame_size(height: int, width: int, frames: int) -> tuple[int, int]:
    """(height, width) every frame of a clip of `frames` frames is resized to before patching."""
    low, high = frame_pixels(frames)
    return smart_resize(height, width, FACTOR, low, int(high))


def resize_frames(frames: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 frames -> (T, H, W, 3) uint8 at `size` (height, width), PIL bicubic."""
    from PIL import Image

    height, width = size
    if all(f.shape[:2] == (height, width) for f in frames):   # frame shards: stored at this size already
        return np.stack(frames)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(f)).resize((width, height), Image.BICUBIC))
                     for f in frames])


def patchify(video: np.ndarray, patch: int = PATCH, merge: int = MERGE,
             temporal: int = TEMPORAL) -> tuple[np.ndarray, list[int]]:
    """(T, H, W, C) frames (T a multiple of `temporal`; any dtype) -> (patches, C * temporal * patch * patch)
    of that dtype, channel-major, and [t, h, w] in patches."""
    frames, height, width, channels = video.shape
    t, h, w = frames // temporal, height // patch, width // patch
    x = video.transpose(0, 3, 1, 2).reshape(t, temporal, channels, h // merge, merge, patch, w // merge, merge, patch)
    # (t, h/2, w/2, 2, 2, C, temporal, 14, 14): merger groups stay together, as the model expects
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(t * h * w, channels * temporal * patch * patch)), [t, h, w]


def normalise(patches: np.ndarray, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """uint8 patches (channel-major rows, as `patchify` gives) -> float32 (x / 255 - mean) / std.
    Patching the uint8 frames first and normalising in place moves a quarter of the bytes."""
    out = patches.astype(np.float32)
    rows = out.reshape(len(out), len(mean), -1)
    rows *= np.float32(1 / 255)
    rows -= np.asarray(mean, np.float32)[:, None]
    rows /= np.asarray(std, np.float32)[:, None]
    return out


def sized_frames(frames: Sequence[np.ndarray], budget_frames: int | None = None) -> np.ndarray:
    """uint8 RGB frames resized under the pixel rules of a clip of `budget_frames` frames (default: these):
    (T, H, W, 3) uint8, ready for `patchify`."""
    height, width = frames[0].shape[:2]
    return resize_frames(frames, clip_frame_size(height, width, budget_frames or len(frames)))


def video_inputs(frames: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Qwen2-VL's `pixel_values_videos` and `video_grid_thw` for uint8 RGB frames (count padded to even
    by repeating the last frame)."""
    frames = list(frames)
    if not frames:
        raise ValueError("a video needs at least one frame")
    if len(frames) % TEMPORAL:
        frames.append(frames[-1])
    patches, grid = patchify(sized_frames(frames))
    return {"pixel_values_videos": normalise(patches), "video_grid_thw": np.array([grid], dtype=np.int64)}


def tokens_per_video(grid_thw: Sequence[int]) -> int:
    """`<|video_pad|>` tokens the model expects for a video of this grid (after the 2 x 2 merge)."""
    t, h, w = grid_thw
    return t * h * w // (MERGE * MERGE)
