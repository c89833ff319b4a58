"""Streaming inference latency per step, with the KV cache kept across steps and by re-encoding the
whole conversation at each step, in the same run.

    python -m bench.stream [--seconds 240] [--at 10,60,240] [--max-new-tokens 8]

Model: the tiny random Qwen2-VL (training/models/tiny-qwen2-vl.json) with Qwen's tokenizer, on this CPU;
its greedy answers are noise, so every step generates exactly `--max-new-tokens` tokens unless it emits
`<|im_end|>`/` ...`. Video: ffmpeg's testsrc2, 640x360, 25 fps, read at 2 fps (frames resized by the
packer's rule for the whole video's frame count).

Printed: for each position in `--at` (seconds of video played when the step ends), the latency of the
step at that point with the cache (mean of that step and the 4 before it) and of the same step re-encoding the
conversation so far (a copy of the session at that point), and the conversation's length in tokens.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--at", default="10,60,240", help="seconds of video at which to compare")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    points = sorted(float(a) for a in args.at.split(","))

    import torch

    from training.interleave import step_spans
    from training.model import TINY, load_model
    from training.packer import ChatPieces
    from training.stream import StreamSession, video_frames
    from training.tokenizer import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    try:
        video = tmp / "video.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                        f"testsrc2=s=640x360:r=25:d={args.seconds}", "-c:v", "libx264", "-preset", "ultrafast",
                        "-pix_fmt", "yuv420p", str(video)], check=True)
        t0 = time.perf_counter()
        frames, _ = video_frames(str(video))
        print(f"video: {args.seconds:.0f} s, {len(frames)} frames at 2 fps, {frames.shape[2]}x{frames.shape[1]} "
              f"after resizing (decoded in {time.perf_counter() - t0:.1f} s); model {TINY}, "
              f"{torch.get_num_threads()} threads, {args.max_new_tokens} new tokens per step")
        model = load_model(TINY).eval()
        session = StreamSession(model, ChatPieces(load_tokenizer()), max_new_tokens=args.max_new_tokens)
        latency: list[float] = []
        print("\nplayed (s)   context tokens   cached step (ms)   re-encode step (ms)   speed-up")
        pending = list(points)
        for span in step_spans(len(frames)):
            due = bool(pending) and span.end_s >= pending[0]
            if due:
                copy = session.reencoding()
                baseline = copy.step(frames[span.first:span.last], span.time_text).seconds
                context = len(session.conversation.ids)
            result = session.step(frames[span.first:span.last], span.time_text)
            latency.append(result.seconds)
            if due:
                cached = float(np.mean(latency[-5:]))
                print(f"{span.end_s:10.0f} {context:16d} {1000 * cached:18.1f} {1000 * baseline:21.1f} "
                      f"{baseline / cached:10.1f}x")
                pending.pop(0)
        print(f"\ncached: {len(latency)} steps, mean {1000 * np.mean(latency):.1f} ms, max {1000 * max(latency):.1f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
