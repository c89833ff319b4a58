"""Streaming inference: what a trained model says while a video plays (LIVECC_SPEC §9).

    python -m training.stream VIDEO_OR_URL --model runs/sft/train/checkpoints/step-000006/model
        [--query "Comment on the match."] [--max-new-tokens 24] [--seconds 120] [--reencode]

The video is read at 2 fps (a URL is fetched with yt-dlp first). The conversation is the packer's
(training/packer.py): the system turn, then per step a user turn (`Time=0.0-3.0s` and the first 6
frames, later `Time=a-b s` and 2 frames; the query in the first turn) and the assistant's answer,
generated greedily until it ends the turn (`<|im_end|>`) or says ` ...`. The KV cache holds everything
fed so far (prompt, frames, generated text), so a step costs its own new tokens only. `--reencode` feeds
the whole conversation again at every step instead (the baseline bench/stream.py measures).

Positions: Qwen2-VL's multimodal RoPE gives text tokens one position each and a video a (t, h, w) block
that advances the text position by max(h, w) / 2; `Positions` keeps that running count the way the
model's own `get_rope_index` computes it for a whole sequence, so cached chunks get the positions a full
re-encode would give them (tests/test_stream.py checks the logits of both).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training import vision
from training.interleave import STREAMING, step_spans
from training.packer import ChatPieces


@dataclass
class StepResult:
    start_s: float
    end_s: float
    text: str                          # the words the model said in this step (" ..." removed)
    tokens: list[int]                  # generated token ids
    seconds: float                     # wall time of the step (prefill + generation)
    logits: Any = None                 # float32 logits after the step's prompt (before generating)


class Positions:
    """The running multimodal RoPE position of a growing conversation."""

    def __init__(self, model: Any) -> None:
        self.model = model.model
        self.merge = model.config.vision_config.spatial_merge_size
        self.video_token = model.config.video_token_id
        self.next = 0

    def of(self, ids: list[int], grids: list[list[int]]) -> Any:
        """(3, 1, len(ids)) positions of `ids` appended to the conversation; `grids`: its videos in order."""
        import torch

        blocks, grids_left, i = [], iter(grids), 0
        while i < len(ids):
            j = i
            is_video = ids[i] == self.video_token
            while j < len(ids) and (ids[j] == self.video_token) == is_video:
                j += 1
            if is_video:
                grid = torch.tensor(next(grids_left))
                blocks.append(self.model.get_vision_position_ids(self.next, grid, 1, self.merge))
                self.next += int(max(grid[1], grid[2])) // self.merge
            else:
                blocks.append(torch.arange(self.next, self.next + j - i).view(1, -1).expand(3, -1))
                self.next += j - i
            i = j
        return torch.cat(blocks, dim=1).view(3, 1, -1)


@dataclass
class Conversation:
    ids: list[int] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)     # one array of patches per video
    grids: list[list[int]] = field(default_factory=list)


class StreamSession:
    def __init__(self, model: Any, pieces: ChatPieces, query: str = "", max_new_tokens: int = 24,
                 reencode: bool = False) -> None:
        self.model, self.pieces, self.query = model, pieces, query
        self.max_new_tokens, self.reencode = max_new_tokens, reencode
        self.end = pieces.special["<|im_end|>"]
        self.conversation = Conversation()
        self.pending = pieces.system_turn()     # fed with the next step
        self.cache: Any = None
        self.positions = Positions(model)
        self.steps = 0

    def reencoding(self) -> "StreamSession":
        """A copy of this session at its current point that re-encodes the whole conversation each step."""
        other = StreamSession(self.model, self.pieces, self.query, self.max_new_tokens, reencode=True)
        conv = self.conversation
        other.conversation = Conversation(list(conv.ids), list(conv.pixels), [list(g) for g in conv.grids])
        other.pending, other.steps = list(self.pending), self.steps
        return other

    def step(self, frames: np.ndarray, time_text: str) -> StepResult:
        """Feed one step's frames (uint8, already at the clip's frame size, an even count) and generate."""
        import torch

        t0 = time.perf_counter()
        patches, grid = vision.patchify(frames)
        pixels = vision.normalise(patches)
        chunk = self.pending + self.pieces.user_step(time_text, grid, self.query if self.steps == 0 else "")
        conv = self.conversation
        conv.ids += chunk[1:] if self.steps else chunk     # after step 1 the chunk repeats the last token
        conv.pixels.append(pixels)
        conv.grids.append(grid)
        with torch.no_grad():
            if self.reencode:       # the whole conversation again, a fresh cache for this step's tokens
                logits = self._forward(conv.ids, np.concatenate(conv.pixels), conv.grids, fresh=True)
            else:
                logits = self._forward(chunk, pixels, [grid], fresh=self.cache is None)
            first = logits.float()
            tokens: list[int] = []
            while True:
                token = int(logits.argmax())
                tokens.append(token)
                if token == self.end or len(tokens) >= self.max_new_tokens or \
                        self.pieces.tokenizer.decode(tokens).endswith(STREAMING.strip()):
                    break
                logits = self._forward([token], None, [], fresh=False)
        conv.ids += tokens
        # the last generated token is not in the cache yet: it opens the next step's chunk
        self.pending = [tokens[-1]] + (self.pieces.newline if tokens[-1] == self.end else self.pieces.end_turn())
        self.steps += 1
        text = self.pieces.tokenizer.decode([t for t in tokens if t != self.end]).strip()
        text = text[:-len(STREAMING.strip())].strip() if text.endswith(STREAMING.strip()) else text
        return StepResult(0.0, 0.0, text, tokens, time.perf_counter() - t0, first[0])

    def _forward(self, ids: list[int], pixels: np.ndarray | None, grids: list[list[int]], fresh: bool) -> Any:
        """Feed `ids` (with their videos) on top of the cache; the logits of the last position."""
        import torch
        from transformers import DynamicCache

        if fresh:
            self.cache = DynamicCache()
        inputs = torch.tensor([ids])
        kwargs: dict = {"input_ids": inputs, "past_key_values": self.cache, "use_cache": True, "logits_to_keep": 1}
        if not self.reencode:      # re-encoding leaves positions to the model itself (the reference)
            kwargs["position_ids"] = self.positions.of(ids, grids)
        if pixels is not None:
            kwargs.update(pixel_values_videos=torch.from_numpy(pixels), video_grid_thw=torch.tensor(grids),
                          mm_token_type_ids=(inputs == self.model.config.video_token_id).int() * 2)
        out = self.model(**kwargs)
        self.cache = out.past_key_values
        return out.logits[:, -1]


def video_frames(source: str, seconds: float | None = None) -> tuple[np.ndarray, list[float]]:
    """The video's frames at 2 fps, each resized as it is decoded to one size: the packer's rule for
    the frame count the video's duration gives."""
    import av

    from training.frames import NoVideo, decode_clip

    with av.open(source) as container:
        if not container.streams.video:
            raise NoVideo(f"{source}: no video stream")
        stream = container.streams.video[0]
        height, width = stream.codec_context.height, stream.codec_context.width
        duration = float(stream.duration * stream.time_base) if stream.duration else \
            (container.duration / 1e6 if container.duration else 240.0)
    span = min(duration, seconds) if seconds is not None else duration
    size = vision.clip_frame_size(height, width, max(2, int(span * 2) + 2))
    clip = decode_clip(source, 0.0, seconds if seconds is not None else 1e9, max_frames=10**7,
                       transform=lambda frame: vision.resize_frames([frame], size)[0])
    if not clip.frames:
        raise NoVideo(f"{source}: no video frames")
    return np.stack(clip.frames), clip.times


def fetch(source: str, folder: str) -> str:
    """A local path as it is; a URL downloaded with yt-dlp (a page or a media URL)."""
    if "://" not in source:
        return source
    import yt_dlp

    options = {"outtmpl": f"{folder}/video.%(ext)s", "format": "bv*[height<=480]+ba/b[height<=480]/b",
               "quiet": True, "no_warnings": True, "noprogress": True}
    with yt_dlp.YoutubeDL(options) as ydl:
        info = ydl.extract_info(source, download=True)
        return ydl.prepare_filename(info)


def run(session: StreamSession, frames: np.ndarray, emit: Any = None) -> list[StepResult]:
    results = []
    for span in step_spans(len(frames)):
        result = session.step(frames[span.first:span.last], span.time_text)
        result.start_s, result.end_s = span.start_s, span.end_s
        results.append(result)
        if emit:
            emit(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("video", help="a video file or a URL yt-dlp reads")
    parser.add_argument("--model", required=True, help="a model folder (a checkpoint's model/) or hub id")
    parser.add_argument("--tokenizer", help="default: the model folder's")
    parser.add_argument("--query", default="")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seconds", type=float, help="stop after this much of the video")
    parser.add_argument("--reencode", action="store_true", help="no cache across steps (baseline)")
    args = parser.parse_args(argv)

    from training.model import load_model
    from training.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="stream-") as folder:
        try:
            frames, _ = video_frames(fetch(args.video, folder), args.seconds)
        except Exception as exc:       # a missing file, a URL yt-dlp cannot read, no video stream
            print(f"error: {args.video}: {exc}", file=sys.stderr)
            return 2
    model = load_model(args.model).eval()
    pieces = ChatPieces(load_tokenizer(args.tokenizer or args.model))
    session = StreamSession(model, pieces, args.query, args.max_new_tokens, args.reencode)
    results = run(session, frames, lambda r: print(f"[{r.start_s:6.1f}-{r.end_s:6.1f} s] {r.text}", flush=True))
    latency = [r.seconds for r in results]
    print(f"{len(results)} steps, {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]}; step latency "
          f"mean {1000 * np.mean(latency):.0f} ms, max {1000 * max(latency):.0f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
