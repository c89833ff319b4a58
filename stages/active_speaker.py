"""active_speaker: how much of a clip shows a face that is speaking (LIVECC_SPEC section 6: the paper's SFT
filter keeps clips with `asd_ratio <= 0.05`, so a clip where someone talks to the camera is dropped).

Reads:   the `ok` rows of the stage before it (clip rows: `id`, `clip_id`, `start`, `end`, `media_path`).
Adds:    `asd_ratio` (share of the sampled frames in which some face track speaks), `asd_windows`,
         `asd_frames`, `asd_tracks`, `asd_speaking_tracks`, `asd_max_track_share`.
Drops:   `asd_ratio: 0.40 > 0.05` when the ratio is above `max_ratio`.
Errors:  a clip whose audio or video does not decode is an error row of its own.
Resources: a long-lived actor (Light-ASD loads once per worker); `cpu_threads` CPUs; a GPU on cuda.

How (stages/lib/asd.py): 6 s windows every 30 s of the clip at 25 fps, faces per frame (MTCNN by
default: it finds small, tilted and turned faces that OpenCV's Haar cascade misses, bench/faces.py), IoU
tracks, 112x112 gray crops, MFCC of the clip's audio, Light-ASD
(stages/lib/light_asd.py, the official weights: `weights`, $LIGHT_ASD_WEIGHTS, the shared copy, or a
sha256-checked download into the cache) scoring every track of every window in batched passes.

Why a stage of its own and not a `talking_head` backend: talking_head's backends score a few sampled
frames; this one needs the audio and 25 fps runs of frames, keeps its own per-track figures and
threshold (`max_ratio`, keep at or below), and can run next to `talking_head` in one profile.
Scores are cached (pipeline/scores.py): changing `max_ratio` re-decides without decoding a frame.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import pyarrow as pa

from manifests.schemas import ACTIVE_SPEAKER
from pipeline.config import ConfigError
from pipeline.scores import ScoredStage
from pipeline.stage import PartContext, Resources, dropped, ok
from stages.lib import media


@dataclass(frozen=True)
class Config:
    max_ratio: float = 0.05             # keep when asd_ratio <= max_ratio (the paper: 0.05)
    weights: str = ""                   # Light-ASD weights file; empty: $LIGHT_ASD_WEIGHTS, shared copy, cache, download
    device: str = "cpu"                 # cpu | cuda | cuda:N
    cpu_threads: int = 1
    window_frames: int = 150            # 25 fps frames per window (6 s)
    window_every: int = 750             # a window starts every this many frames (30 s)
    track_iou: float = 0.5              # a box continues a track when their IoU is above this
    max_gap: int = 12                   # frames a track may miss its face (0: the reference's rule)
    min_track: int = 5                  # shorter tracks are ignored
    detector: str = "mtcnn"             # mtcnn (facenet-pytorch's weights) | yunet (yuface) | haar: bench/faces.py
    face_min_size: int = 16             # px, at the 288x160 detection size

    def __post_init__(self) -> None:
        if not 0 <= self.max_ratio <= 1:
            raise ValueError("max_ratio must be within [0, 1]")
        if self.window_frames < 1 or self.window_every < 1 or self.min_track < 1 or self.cpu_threads < 1:
            raise ValueError("window_frames, window_every, min_track and cpu_threads must be >= 1")
        if not 0 <= self.track_iou < 1 or self.max_gap < 0:
            raise ValueError("track_iou must be within [0, 1) and max_gap >= 0")
        from stages.lib.asd import DETECTORS

        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, not {self.detector!r}")
        if not (self.device == "cpu" or self.device == "cuda" or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")


class ActiveSpeaker(ScoredStage):
    name = "active_speaker"
    Config = Config
    schema = ACTIVE_SPEAKER
    threshold_fields = ("max_ratio",)
    runtime_fields = ("device", "cpu_threads", "weights")
    score_schema = pa.schema([ACTIVE_SPEAKER.field(n) for n in (
        "asd_ratio", "asd_windows", "asd_frames", "asd_tracks", "asd_speaking_tracks", "asd_max_track_share")])

    def thresholds(self) -> dict[str, tuple[float, ...]]:
        return {"asd_ratio": (self.config.max_ratio,), "asd_max_track_share": ()}

    def check(self) -> None:
        media.require_binaries("ffmpeg")
        from stages.lib.light_asd import resolve_weights

        if self.config.detector == "mtcnn":
            from stages.lib.mtcnn import weights_dir

            try:
                weights_dir()
            except ValueError as exc:
                raise ConfigError(f"active_speaker.detector mtcnn: {exc}") from None
        if self.config.detector == "yunet" and importlib.util.find_spec("yuface") is None:
            raise ConfigError("active_speaker.detector yunet needs the `yuface` wheel (CPython 3.10/3.11): "
                              "pip install yuface==2023.5.1, or detector: mtcnn")
        try:
            resolve_weights(self.config.weights)      # downloads once here, before any worker starts
        except ValueError as exc:
            raise ConfigError(f"{exc}; or filter talking heads by face count instead: `--set stages=[...]` "
                              f"with talking_head in place of active_speaker (profiles/sft.yaml)") from None

    def resources(self) -> Resources:
        gpus = 1.0 if self.config.device.startswith("cuda") else 0.0
        return Resources(cpus=float(self.config.cpu_threads), gpus=gpus, actor=True)

    def load_model(self) -> None:
        import torch

        from stages.lib.asd import AsdParams, face_detector
        from stages.lib.light_asd import load_model, resolve_weights

        c = self.config
        torch.set_num_threads(c.cpu_threads)
        self.model = load_model(str(resolve_weights(c.weights))).to(c.device)
        self.faces = face_detector(c.detector, c.face_min_size, c.device)
        self.params = AsdParams(window_frames=c.window_frames, window_every=c.window_every,
                                track_iou=c.track_iou, max_gap=c.max_gap, min_track=c.min_track)

    def score(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        from stages.lib.asd import clip_asd

        out = []
        for row in rows:
            if not row.get("media_path") or row.get("start") is None or row.get("end") is None:
                raise ValueError("clip has no media_path/start/end")
            result = clip_asd(ctx.resolve(row["media_path"]), float(row["start"]), float(row["end"]),
                              self.model, self.faces, self.params)
            out.append({"asd_ratio": result.ratio, "asd_windows": result.windows, "asd_frames": result.frames,
                        "asd_tracks": len(result.tracks), "asd_speaking_tracks": result.speaking_tracks,
                        "asd_max_track_share": result.max_track_share})
        return out

    def decide(self, row: dict) -> dict:
        ratio, limit = row["asd_ratio"], self.config.max_ratio
        if ratio <= limit:
            return ok(row)
        return dropped(row, f"asd_ratio: {ratio:.2f} > {limit:g}")
