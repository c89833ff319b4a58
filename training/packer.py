"""One clip -> the token ids, labels and video inputs of Qwen2-VL's streaming conversation (LIVECC_SPEC 8).

The conversation alternates a user turn per step (`Time=a-b s`, the step's frames as one video; the first
turn also carries the context text) and an assistant turn (the step's words, then " ..."). It is written
in Qwen2-VL's chat format, each video as `<|vision_start|>` + one `<|video_pad|>` per merged patch +
`<|vision_end|>`:

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\nTime=0.0-3.0s<|vision_start|><|video_pad|>...<|vision_end|>{context}<|im_end|>\\n
    <|im_start|>assistant\\n{words} ...<|im_end|>\\n
    <|im_start|>user\\nTime=3.0-4.0s<|vision_start|>...<|vision_end|><|im_end|>\\n ...

Labels are the token ids of every assistant turn's text and its `<|im_end|>`; everything else is -100.
Pieces are tokenized one by one and concatenated, so the label spans are exact by construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from training import interleave, vision

IGNORE = -100
SYSTEM = "You are a helpful assistant."


@dataclass
class Packed:
    input_ids: np.ndarray            # int64 (tokens,)
    labels: np.ndarray               # int64 (tokens,), IGNORE outside assistant turns
    pixel_values_videos: np.ndarray  # float32 (patches, 1176)
    video_grid_thw: np.ndarray       # int64 (steps, 3): one video per step
    steps: list[interleave.Step]


class ChatPieces:
    """Token ids of the chat format's fixed pieces, and of text, for a Qwen2-VL tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special = {name: self.single(name) for name in
                        ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>")}
        self.newline = self.text("\n")

    def text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def single(self, token: str) -> int:
        ids = self.text(token)
        if len(ids) != 1 or self.tokenizer.decode(ids) != token:
            raise ValueError(f"the tokenizer has no single token for {token}: not a Qwen2-VL tokenizer")
        return ids[0]

    def turn_start(self, role: str) -> list[int]:
        return [self.special["<|im_start|>"]] + self.text(f"{role}\n")

    def video(self, pads: int) -> list[int]:
        return [self.special["<|vision_start|>"]] + [self.special["<|video_pad|>"]] * pads + \
            [self.special["<|vision_end|>"]]

    def system_turn(self) -> list[int]:
        return self.turn_start("system") + self.text(SYSTEM) + self.end_turn()

    def end_turn(self) -> list[int]:
        return [self.special["<|im_end|>"]] + self.newline

    def user_step(self, time_text: str, grid_thw: Sequence[int], context: str = "") -> list[int]:
        """A step's user turn (its `Time=` text, its video, the context on the first step), then the
        assistant turn's opening."""
        return (self.turn_start("user") + self.text(time_text) + self.video(vision.tokens_per_video(grid_thw))
                + self.text(context) + self.end_turn() + self.turn_start("assistant"))


def pack(words: Sequence[Sequence[Any]], frames: Sequence[np.ndarray], frame_times: Sequence[float],
         pieces: ChatPieces, context: str = "") -> Packed:
    """`words`: [start, end, word] in the frames' timeline; `frames`: the clip's sampled uint8 RGB frames
    (interleave.sample_frames), `frame_times` their timestamps."""
    steps = interleave.interleave(words, frame_times)
    if not steps:
        raise ValueError("the clip has no frames, or no word")
    # one size for the whole clip (its pixel budget), applied to the frames the steps use
    sized = vision.sized_frames(frames[:steps[-1].last], budget_frames=len(frames))
    ids: list[int] = []
    labels: list[int] = []

    def add(tokens: list[int], trained: bool = False) -> None:
        ids.extend(tokens)
        labels.extend(tokens if trained else [IGNORE] * len(tokens))

    add(pieces.system_turn())
    patches, grids = [], []
    for n, step in enumerate(steps):
        step_frames = sized[step.first:step.last]
        if len(step_frames) % vision.TEMPORAL:
            step_frames = np.concatenate([step_frames, step_frames[-1:]])
        values, grid = vision.patchify(step_frames)
        patches.append(values)
        grids.append(grid)
        add(pieces.user_step(step.time_text, grid, context if n == 0 else ""))
        add(pieces.text(step.text) + [pieces.special["<|im_end|>"]], trained=True)
        add(pieces.newline)
    return Packed(np.array(ids, dtype=np.int64), np.array(labels, dtype=np.int64),
                  vision.normalise(np.concatenate(patches)), np.array(grids, dtype=np.int64), steps)
