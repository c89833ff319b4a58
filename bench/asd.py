"""Active speaker detection throughput (the `active_speaker` stage) on this CPU, by part, in video-seconds
per second of clip, next to the reference's way of scoring (one model call per face track) in the same run.

    python -m bench.asd [--clips 4] [--seconds 60] [--weights PATH]

Media: bench/talking_head.py's two 854x480 30 fps videos (a man talking to the camera; a test pattern),
with a tone as audio; `--clips` clips of `--seconds` s (a 6 s window every 30 s: 2 windows per minute).
Printed: video-seconds/s and share of the time for decode (ffmpeg, 25 fps at 288x160), MFCC,
detection (`--detector`, a window's frames in batches), tracking, crops and the model (all tracks of a clip
batched by length), and the whole `clip_asd`. Baseline, in the same run: the per-frame way (one detector
call per frame, as LiveCC's SCRFD loop and Light-ASD's demo; and one model call per frame, each frame
scored alone with its 4 MFCC rows), and the model with one call per track (Light-ASD's demo unit).
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
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--weights", default="")
    parser.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet", "haar"))
    args = parser.parse_args(argv)

    import torch

    from bench.talking_head import make_media
    from stages.lib import asd, light_asd

    torch.set_num_threads(1)
    model = light_asd.load_model(str(light_asd.resolve_weights(args.weights)))
    faces = asd.face_detector(args.detector)
    params = asd.AsdParams()
    tmp = Path(tempfile.mkdtemp(prefix="bench_asd_"))
    try:
        videos = make_media(tmp, args.seconds + 1)
        clips = []
        for name, path in videos.items():
            with_audio = tmp / f"{name}_audio.mp4"
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "lavfi", "-i",
                            "sine=frequency=220:sample_rate=16000", "-map", "0:v", "-map", "1:a", "-c:v", "copy",
                            "-c:a", "aac", "-shortest", str(with_audio)], check=True)
            clips += [(str(with_audio), name)] * max(1, args.clips // len(videos))
        seconds = args.seconds * len(clips)
        print(f"{len(clips)} clips of {args.seconds:.0f} s (854x480 30 fps; talker and pattern), 1 thread, "
              f"{args.detector} faces")
        # warm up (the first calls set up oneDNN's kernels)
        light_asd.score_tracks(model, [(np.zeros((25, 112, 112), np.float32), np.zeros((100, 13), np.float32))])
        faces(np.zeros((2, params.detect_height, params.detect_width, 3), np.uint8))
        parts: dict[str, float] = dict.fromkeys(("decode", "mfcc", "detect", "track", "crop", "model"), 0.0)
        baseline: dict[str, float] = dict.fromkeys(("detect", "per_track", "per_frame"), 0.0)
        inputs_all = []
        for path, _ in clips:
            t = time.perf_counter()
            mfcc = light_asd.mfcc(asd.clip_audio(path, 0.0, args.seconds, 60)).astype(np.float32)
            parts["mfcc"] += time.perf_counter() - t
            frames = len(mfcc) // 4
            inputs = []
            for w, first in enumerate(range(0, frames - params.window_frames + 1, params.window_every)):
                t = time.perf_counter()
                rgb = asd.window_rgb(path, first / 25, params.window_frames, params)
                gray = asd.gray(rgb)
                parts["decode"] += time.perf_counter() - t
                t = time.perf_counter()
                boxes = faces(rgb)
                parts["detect"] += time.perf_counter() - t
                t = time.perf_counter()
                for frame in rgb:
                    faces(frame[None])
                baseline["detect"] += time.perf_counter() - t
                t = time.perf_counter()
                tracks = asd.link_tracks(boxes, w, params)
                parts["track"] += time.perf_counter() - t
                t = time.perf_counter()
                for track in tracks:
                    rows = mfcc[4 * (first + track.first):4 * (first + track.first + len(track.boxes))]
                    inputs.append((asd.crop_faces(gray, track), rows))
                parts["crop"] += time.perf_counter() - t
            t = time.perf_counter()
            light_asd.score_tracks(model, inputs)
            parts["model"] += time.perf_counter() - t
            t = time.perf_counter()
            for one in inputs:
                light_asd.score_tracks(model, [one])
            baseline["per_track"] += time.perf_counter() - t
            t = time.perf_counter()
            for crops, rows in inputs:
                for f in range(len(crops)):
                    light_asd.score_tracks(model, [(crops[f:f + 1], rows[4 * f:4 * f + 4])])
            baseline["per_frame"] += time.perf_counter() - t
            inputs_all += inputs
        total = sum(parts.values())
        print(f"\n{len(inputs_all)} face tracks, {sum(len(f) for f, _ in inputs_all)} track-frames\n")
        print("part                         video-s/s   share")
        for name, spent in parts.items():
            print(f"  {name:26s} {seconds / max(spent, 1e-9):10.1f} {100 * spent / total:6.1f}%")
        print(f"  {'all parts':26s} {seconds / total:10.1f}")
        t = time.perf_counter()
        for path, _ in clips:
            asd.clip_asd(path, 0.0, args.seconds, model, faces, params)
        print(f"  {'clip_asd (end to end)':26s} {seconds / (time.perf_counter() - t):10.1f}")
        rate = {name: seconds / max(spent, 1e-9) for name, spent in baseline.items()}
        print("\nbaseline                     video-s/s   (this way)")
        print(f"  {'detect, a call per frame':26s} {rate['detect']:10.1f}   ({seconds / parts['detect']:.1f})")
        print(f"  {'model, a call per track':26s} {rate['per_track']:10.1f}   ({seconds / parts['model']:.1f})")
        print(f"  {'model, a call per frame':26s} {rate['per_frame']:10.1f}   ({seconds / parts['model']:.1f})")
        per_frame_total = total - parts["detect"] - parts["model"] + baseline["detect"] + baseline["per_frame"]
        print(f"  {'all parts, per-frame way':26s} {seconds / per_frame_total:10.1f}   ({seconds / total:.1f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
