"""From what the loader reads to what the model takes: a LiveCC conversation or a shard sample becomes a
packed clip (frames at 2 fps + packer), and packed clips become one padded batch of tensors."""
from __future__ import annotations

import io
import json
from typing import Any, Callable

import numpy as np

from training.frames import read_clip
from training.interleave import context_text
from training.packer import IGNORE, ChatPieces, Packed, pack


def clip_of(item: Any) -> tuple[list[np.ndarray], list[float], list, dict]:
    """(uint8 RGB frames at 2 fps, their times, words, text fields) of a LiveCC conversation or a shard
    sample. Times are in the words' timeline (the source video's): a frame sample stores them; a shard's
    mp4 is the cut clip, starting at 0 s of the clip."""
    if isinstance(item, dict):
        record = json.loads(item["json"])
        start, end = record["video_start"], record["video_end"]
        if "frame_times" in record:
            names = sorted(name for name in item if name[:1].isdigit())   # 000.jpg, 001.jpg, ...
            if len(names) != len(record["frame_times"]):
                raise ValueError(f"sample {record.get('clip_id')}: {len(names)} frames for "
                                 f"{len(record['frame_times'])} frame times")
            return [decode_image(item[name]) for name in names], record["frame_times"], record["words"], record
        frames, times = read_clip(io.BytesIO(item["mp4"]), 0.0, end - start)
        return frames, [t + start for t in times], record["words"], record
    user, assistant = item
    video, text = user["content"][0], user["content"][1]
    frames, times = read_clip(video["video"], video["video_start"], video["video_end"])
    return frames, times, assistant["content"][0]["text_stream"], {**text, "query": text.get("text", "")}


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def packing(pieces: ChatPieces, with_context: bool = False) -> Callable[[Any], Packed]:
    """The loader's `load`: one conversation or shard sample -> a Packed clip."""
    def load(item: Any) -> Packed:
        frames, times, words, fields = clip_of(item)
        context = context_text(fields.get("query"), fields.get("title"), fields.get("previous"), with_context)
        return pack(words, frames, times, pieces, context)
    return load


def collate(clips: list[Packed], pad_id: int) -> dict[str, Any]:
    """Right-padded `input_ids`, `attention_mask`, `labels` (IGNORE on padding), and every clip's videos
    concatenated in order (`pixel_values_videos`, `video_grid_thw`), as torch tensors."""
    import torch

    length = max(len(c.input_ids) for c in clips)
    ids = np.full((len(clips), length), pad_id, dtype=np.int64)
    labels = np.full((len(clips), length), IGNORE, dtype=np.int64)
    mask = np.zeros((len(clips), length), dtype=np.int64)
    for row, clip in enumerate(clips):
        n = len(clip.input_ids)
        ids[row, :n], labels[row, :n], mask[row, :n] = clip.input_ids, clip.labels, 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels),
            "pixel_values_videos": torch.from_numpy(np.concatenate([c.pixel_values_videos for c in clips])),
            "video_grid_thw": torch.from_numpy(np.concatenate([c.video_grid_thw for c in clips]))}
