"""Training-side throughput: writing shards in each format, and the streaming loader reading them.

    python -m bench.packing [--clips 8] [--seconds 130] [--repeat 1] [--seed 0]

Media: bench/talking_head.py's two generated videos (854x480, 30 fps, libx264 veryfast, like a YouTube
480p download); `--clips` windows of 30-120 s on them (seeded), each with a word every 0.4 s.

Printed, figures only (each the best of `--repeat` runs: the machine may be shared):
- shard writing, `Shard.process` on one core: clip-seconds/s, output MB/s, bytes per clip-second, for
  the `frames` format (JPEG and WebP at quality 90) and the `mp4` format (libx264 re-encode, the stage's
  frame-exact cut);
- loading, one process: samples/s, frames/s and tokens/s of the streaming loader (`ClipStream` over the
  shards' indexes, `training.batches.packing`: frames + Qwen2-VL vision inputs + chat tokens with the
  Qwen tokenizer) from frame shards and from mp4 shards, next to the baseline the reference loader
  does per sample: decode the mp4's every frame to RGB, take the 2 fps frames, and call transformers'
  Qwen2-VL image processor (its PIL build: its video processor needs torchvision, which does not import
  here) and the tokenizer.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.talking_head import best_of, make_clips, make_media
from pipeline.stage import PartContext
from stages.shard import Shard


def with_words(rows: list[dict]) -> list[dict]:
    for row in rows:
        times = np.arange(row["start"] + 0.1, row["end"] - 0.4, 0.4)
        row["words"] = [{"start": float(t), "end": float(t) + 0.3, "word": f" word{k}"} for k, t in enumerate(times)]
    return rows


def write_shards(run: Path, rows: list[dict], **config) -> float:
    """Seconds to shard `rows` into `run/shards` (the folder is emptied first)."""
    shutil.rmtree(run / "shards", ignore_errors=True)
    t0 = time.perf_counter()
    out = Shard(Shard.Config(**config)).process(rows, PartContext(run_dir=str(run), part=0))
    seconds = time.perf_counter() - t0
    failed = [r.get("reason") for r in out if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"shard failed: {failed}")
    return seconds


def shard_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in (run / "shards").glob("*.tar"))


def load_all(shards: Path, pieces) -> tuple[int, int, int]:
    """(samples, frames, tokens) through the streaming loader, one process."""
    from training.batches import packing
    from training.loader import ClipStream, shard_refs

    samples = frames = tokens = 0
    for batch in ClipStream(shard_refs(str(shards)), packing(pieces), batch_size=1):
        for clip in batch["samples"]:
            samples += 1
            frames += int(clip.video_grid_thw[:, 0].sum()) * 2
            tokens += len(clip.input_ids)
    return samples, frames, tokens


def baseline(shards: Path, tokenizer) -> tuple[int, int, int]:
    """Per sample: every frame of the mp4 decoded to RGB, the 2 fps ones kept, the HF processor on them,
    the chat text tokenized."""
    import av
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from training.interleave import interleave, sample_frames
    from training.loader import read_ref, shard_refs
    from training.vision import frame_pixels

    samples = frames = tokens = 0
    for ref in shard_refs(str(shards)):
        sample = read_ref(ref)
        record = json.loads(sample["json"])
        with av.open(io.BytesIO(sample["mp4"])) as container:
            stream = container.streams.video[0]
            decoded = [(float(f.pts * stream.time_base), f.to_ndarray(format="rgb24"))
                       for f in container.decode(stream)]
        index = sample_frames([t for t, _ in decoded], 0.0, 1e9)
        chosen = [decoded[i][1] for i in index]
        low, high = frame_pixels(len(chosen))
        vision = Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=int(high))(images=chosen, return_tensors="np")
        steps = interleave(record["words"], [decoded[i][0] + record["video_start"] for i in index])
        text = "".join(f"<|im_start|>user\n{s.time_text}<|vision_start|><|video_pad|>"
                       f"<|vision_end|><|im_end|>\n<|im_start|>assistant\n{' '.join(s.words)} ...<|im_end|>\n"
                       for s in steps)
        ids = tokenizer(text)["input_ids"]
        samples += 1
        frames += len(chosen)
        tokens += len(ids) + len(vision["pixel_values"]) // 4
    return samples, frames, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=130.0, help="length of the generated videos")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from training.packer import ChatPieces
    from training.tokenizer import load_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench_packing_"))
    try:
        make_media(tmp, args.seconds)
        rows = with_words(make_clips(args.clips, args.seconds, args.seed))
        for row in rows:
            row["media_path"] = str(tmp / row["media_path"])
        clip_seconds = sum(r["end"] - r["start"] for r in rows)
        print(f"media: 2 videos of {args.seconds:.0f} s, 854x480 30 fps; {len(rows)} clips, "
              f"{clip_seconds:.0f} clip-seconds, {sum(len(r['words']) for r in rows)} words")

        print("\nshard writing (one core)        clip-s/s   out MB/s   kB per clip-s")
        formats = {"frames, jpeg q90 (default)": ("frames", {"format": "frames"}),
                   "frames, webp q90": ("webp", {"format": "frames", "frame_codec": "webp"}),
                   "mp4, libx264 re-encode": ("mp4", {"format": "mp4"})}
        for name, (folder, config) in formats.items():
            run = tmp / folder
            seconds, _ = best_of(args.repeat, lambda: write_shards(run, rows, **config))
            size = shard_bytes(run)
            print(f"  {name:29s} {clip_seconds / seconds:8.1f} {size / seconds / 1e6:10.2f} "
                  f"{size / clip_seconds / 1e3:13.1f}")

        tokenizer = load_tokenizer()
        pieces = ChatPieces(tokenizer)
        print("\nloading (one process)           samples/s   frames/s   tokens/s")
        loaders = {"loader, frame shards (jpeg)": lambda: load_all(tmp / "frames" / "shards", pieces),
                   "loader, frame shards (webp)": lambda: load_all(tmp / "webp" / "shards", pieces),
                   "loader, mp4 shards": lambda: load_all(tmp / "mp4" / "shards", pieces),
                   "baseline: full decode + HF": lambda: baseline(tmp / "mp4" / "shards", tokenizer)}
        for name, fn in loaders.items():
            seconds, (samples, frames, tokens) = best_of(args.repeat, fn)
            print(f"  {name:29s} {samples / seconds:9.2f} {frames / seconds:10.1f} {tokens / seconds:10.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
