"""talking_head: score how much a clip is a person talking to the camera (LIVECC_SPEC section 6, A3).

Reads:   the `ok` rows of the stage before it (clip rows: `id`, `clip_id`, `video_id`, `start`, `end`,
         `media_path` relative to the run folder, `words`, `previous`, `title`, `category`).
Adds:    `talking_head` (float64 score in [0, 1]), `th_frames` (frames scored), `th_backend` (the backend
         name); the clip_split columns are passed on (word_count, span, wps too); other upstream columns
         (lm_filter's lm_loss, lm_tokens) stay in their own manifest, joinable on `id`.
Drops:   `talking_head: 0.82 >= 0.3`: score >= `max_score` (paper: keep score < 0.3).
Errors:  an unreadable media or clip range becomes an `error` row (`MediaError: corrupt_media: ...`).
Resources: a long-lived actor (the model loads once per worker, lazily: a re-decision loads nothing);
         max(cpu_threads, decode_threads) CPUs; one GPU when the vlm backend runs on cuda.

Scores are cached by ScoredStage (pipeline/scores.py): `max_score` only steers the decision, so changing
it re-decides every row from the stored scores without decoding a frame or loading a model.

Frames (stages/lib/frames.py): `frames` frames at the centres of `frames` equal slices of [start, end],
t_i = start + (i + 0.5) * (end - start) / frames, each the first frame at or after t_i, decoded by one
ffmpeg process per clip (one fast input seek per frame; a `select` filter for clips shorter than
`select_below` seconds, where decoding the whole clip once is cheaper).

Backends (`backend`):
- `face` (CPU, default): share of the sampled frames that show a large frontal face (OpenCV Haar
  cascade `haarcascade_frontalface_default.xml`, box height >= `min_face_fraction` of the frame height,
  frames `face_height` px high with their aspect ratio kept; rotations `face_angles` for tilted heads and
  an eye check against false faces: stages/lib/faces.py). Denser sampling (`frames: 16`) is cheap here.
- `vlm`: the paper's method: Qwen2-VL (`model`, Qwen2-VL-2B-Instruct in the paper profile) sees the 8
  frames at 320x180 as one video and the question of section 6; the score is the probability of "Yes"
  as the next token (stages/lib/vlm.py says how the inputs and the token are built).
- `asd`: refused with a pointer to the `active_speaker` stage (Light-ASD needs audio and 25 fps frame
  runs, not sampled frames). A backend is a class in BACKENDS (frame_spec, check, resources, load, score).
"""
from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import pyarrow as pa

from pipeline.config import ConfigError, digest
from pipeline.scores import ScoredStage
from pipeline.stage import PartContext, Resources, dropped, ok
from stages.lib import frames as frames_lib
from stages.lib import media
from stages.lib.faces import FaceParams

from manifests.schemas import TALKING_HEAD

DECODE_METHODS = ("auto", "seek", "select")
PAPER_MODEL = "Qwen/Qwen2-VL-2B-Instruct"


@dataclass(frozen=True)
class Config:
    backend: str = "face"               # face | vlm | asd (planned)
    max_score: float = 0.3              # keep when score < max_score (threshold only: never rescored)
    frames: int = 8                     # frames sampled per clip (the paper: 8)
    cpu_threads: int = 1                # OpenCV / torch threads = the CPUs a worker asks for
    decode: str = "auto"                # auto | seek | select (how ffmpeg finds the frames)
    select_below: float = 10.0          # s: decode: auto uses select for clips shorter than this
    decode_threads: int = 1             # ffmpeg processes decoding ahead of the scorer (cuda: raise it)
    ffmpeg_timeout_s: float = 120.0
    # face backend
    face_height: int = 180              # px: frames scaled to this height, aspect ratio kept
    min_face_fraction: float = 0.15     # smallest face box height / frame height
    face_scale_factor: float = 1.1      # Haar detectMultiScale pyramid step
    face_min_neighbors: int = 5         # Haar detectMultiScale neighbours
    face_angles: tuple[float, ...] = (0.0, -20.0, 20.0)  # degrees: in-plane rotations tried
    face_eye_check: bool = True         # a face needs an eye (haarcascade_eye) in its upper part
    face_cascade: str = "haarcascade_frontalface_default.xml"  # a file in cv2.data.haarcascades or a path
    # vlm backend
    model: str = PAPER_MODEL            # hub id or local folder of a Qwen2-VL checkpoint
    device: str = "cpu"                 # cpu | cuda | cuda:N
    dtype: str = "auto"                 # auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | float16
    batch_size: int = 4                 # clips per forward pass
    frame_width: int = 320              # frames the VLM sees (the paper: 320x180)
    frame_height: int = 180
    question: str = ("Here are {frames} evenly sampled frames from a YouTube video. Are there someone always "
                     "showing their faces and talking? Answer Yes or No.")
    yes_token: str = "Yes"

    def __post_init__(self) -> None:
        known = (*BACKENDS, *PLANNED)
        if self.backend not in known:
            raise ValueError(f"backend must be one of {', '.join(known)}, got {self.backend!r}")
        if self.max_score <= 0:
            raise ValueError("max_score must be > 0 (clips scoring below it are kept)")
        if not 1 <= self.frames <= 256:
            raise ValueError("frames must be within 1..256")
        for name in ("cpu_threads", "decode_threads", "batch_size", "face_height", "frame_width",
                     "frame_height"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.decode not in DECODE_METHODS:
            raise ValueError(f"decode must be one of {', '.join(DECODE_METHODS)}, got {self.decode!r}")
        if self.ffmpeg_timeout_s <= 0 or self.select_below < 0:
            raise ValueError("ffmpeg_timeout_s must be > 0 and select_below >= 0")
        self.face_params().validate()
        if not (self.device == "cpu" or self.device == "cuda" or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        from stages.lib.vlm import DTYPES

        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        try:
            self.question.format(frames=self.frames)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"question: only {{frames}} may be substituted ({exc})") from None

    def face_params(self) -> FaceParams:
        return FaceParams(min_face_fraction=self.min_face_fraction, scale_factor=self.face_scale_factor,
                          min_neighbors=self.face_min_neighbors, angles=self.face_angles,
                          eye_check=self.face_eye_check, cascade=self.face_cascade)


# Backends ------------------------------------------------------------------------------------------------

class Backend:
    """One way to score clips. `fields`: the config fields its scores depend on (with `frames`, `decode`
    and `select_below`, they make the score cache key; performance knobs and other backends' fields
    do not)."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Config) -> None:
        self.config = config

    def frame_spec(self) -> frames_lib.FrameSpec:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ValueError when the backend cannot run (missing package, bad model path)."""

    def cpus(self) -> float:
        """Detector/model threads or the ffmpeg processes decoding ahead, whichever is more."""
        return float(max(self.config.cpu_threads, self.config.decode_threads))

    def resources(self) -> Resources:
        return Resources(cpus=self.cpus(), actor=True)

    def batch_size(self) -> int:
        return 1

    def load(self) -> None:
        raise NotImplementedError

    def score(self, clips: list[list[np.ndarray]]) -> list[float]:
        raise NotImplementedError


class FaceBackend(Backend):
    name = "face"
    fields = ("face_height", "min_face_fraction", "face_scale_factor", "face_min_neighbors", "face_angles",
              "face_eye_check", "face_cascade")

    def frame_spec(self) -> frames_lib.FrameSpec:
        return frames_lib.FrameSpec(height=self.config.face_height, gray=True)

    def check(self) -> None:
        from stages.lib.faces import EYES, cascade_path

        cascade_path(self.config.face_cascade)
        if self.config.face_eye_check:
            cascade_path(EYES)

    def load(self) -> None:
        from stages.lib.faces import FaceDetector

        self.detector = FaceDetector(self.config.face_params(), threads=self.config.cpu_threads)

    def score(self, clips: list[list[np.ndarray]]) -> list[float]:
        return [self.detector.share_with_face(frames) for frames in clips]


class VlmBackend(Backend):
    name = "vlm"
    fields = ("model", "device", "dtype", "frame_width", "frame_height", "question", "yes_token")

    def frame_spec(self) -> frames_lib.FrameSpec:
        return frames_lib.FrameSpec(size=(self.config.frame_width, self.config.frame_height))

    def check(self) -> None:
        from stages.lib.vlm import INSTALL

        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"talking_head.backend vlm needs torch and transformers ({exc}): {INSTALL}") from None
        model = self.config.model
        if model.startswith(("/", "./", "../", "~")):
            from pathlib import Path

            if not (Path(model).expanduser() / "config.json").is_file():
                raise ValueError(f"talking_head.model {model}: not a model folder (no config.json)")

    def resources(self) -> Resources:
        gpus = 1.0 if self.config.device.startswith("cuda") else 0.0
        return Resources(cpus=self.cpus(), gpus=gpus, actor=True)

    def batch_size(self) -> int:
        return self.config.batch_size

    def load(self) -> None:
        from stages.lib.vlm import QwenVLYesScorer

        c = self.config
        self.scorer = QwenVLYesScorer(c.model, device=c.device, dtype=c.dtype,
                                      question=c.question.format(frames=c.frames), yes_token=c.yes_token,
                                      threads=c.cpu_threads)

    def score(self, clips: list[list[np.ndarray]]) -> list[float]:
        return self.scorer.yes_probs(clips)


BACKENDS: dict[str, type[Backend]] = {"face": FaceBackend, "vlm": VlmBackend}
# Named in the spec, not built yet: accepted by the config parser so that check() can say so clearly.
PLANNED = {"asd": "active speaker detection as a talking_head backend (it is the `active_speaker` stage: put "
                  "active_speaker in the profile's stage list)"}


# The stage -----------------------------------------------------------------------------------------------

class TalkingHead(ScoredStage):
    name = "talking_head"
    Config = Config
    schema = TALKING_HEAD
    threshold_fields = ("max_score",)
    score_schema = pa.schema([TALKING_HEAD.field(n) for n in ("talking_head", "th_frames", "th_backend")])

    def thresholds(self) -> dict[str, tuple[float, ...]]:
        return {"talking_head": (self.config.max_score,)}

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            if self.config.backend not in BACKENDS:
                raise ConfigError(self._planned_message())
            self._backend = BACKENDS[self.config.backend](self.config)
        return self._backend

    def _planned_message(self) -> str:
        return f"talking_head.backend {self.config.backend}: {PLANNED[self.config.backend]}; use one of: {', '.join(BACKENDS)}"

    def check(self) -> None:
        if self.config.backend in PLANNED:
            raise ConfigError(self._planned_message())
        media.require_binaries("ffmpeg", "ffprobe")
        try:
            self.backend.check()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def resources(self) -> Resources:
        if self.config.backend in PLANNED:
            return Resources(actor=True)
        return self.backend.resources()

    def scorer_hash(self) -> str:
        """Cache key of the scores: the fields that change a score (frames, decoding, the backend's own
        fields), not thresholds, performance knobs or other backends' settings."""
        config = dataclasses.asdict(self.config)
        keys = ("backend", "frames", "decode", "select_below", *self.backend.fields)
        return digest(self.name, self.version, {k: config[k] for k in keys})

    def load_model(self) -> None:
        self.backend.load()

    # scoring -------------------------------------------------------------------------------------------
    def sample_times(self, row: dict) -> list[float]:
        start, end = row.get("start"), row.get("end")
        if start is None or end is None:
            raise ValueError("clip has no start/end")
        return frames_lib.sample_times(float(start), float(end), self.config.frames)

    def clip_frames(self, row: dict, ctx: PartContext) -> list[np.ndarray]:
        c = self.config
        if not row.get("media_path"):
            raise ValueError("clip has no media_path")
        times = self.sample_times(row)
        method = c.decode
        if method == "auto":
            method = "select" if times[-1] - times[0] < c.select_below else "seek"
        return frames_lib.decode_frames(ctx.resolve(row["media_path"]), times, self.backend.frame_spec(),
                                        timeout=c.ffmpeg_timeout_s, method=method)

    def score(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        backend = self.backend
        size = backend.batch_size()
        out: list[dict] = []
        batch: list[list[np.ndarray]] = []
        for frames in self._decoded(rows, ctx, ahead=self.config.decode_threads + size):
            batch.append(frames)
            if len(batch) == size:
                out += self._scores(backend, batch)
                batch = []
        if batch:
            out += self._scores(backend, batch)
        return out

    def _decoded(self, rows: list[dict], ctx: PartContext, ahead: int) -> Iterator[list[np.ndarray]]:
        """Frames of each row, in order, decoded by `decode_threads` threads (ffmpeg processes) while the
        caller scores; at most `ahead` clips wait decoded (memory stays bounded on large parts)."""
        with ThreadPoolExecutor(max_workers=max(1, min(self.config.decode_threads, len(rows)))) as pool:
            pending: deque = deque()
            todo = iter(rows)
            try:
                for row in itertools.islice(todo, ahead):
                    pending.append(pool.submit(self.clip_frames, row, ctx))
                while pending:
                    frames = pending.popleft().result()
                    for row in itertools.islice(todo, 1):
                        pending.append(pool.submit(self.clip_frames, row, ctx))
                    yield frames
            finally:
                for future in pending:
                    future.cancel()

    def _scores(self, backend: Backend, batch: list[list[np.ndarray]]) -> list[dict]:
        values = backend.score(batch)
        result = []
        for frames, value in zip(batch, values, strict=True):
            value = float(value)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"backend {backend.name} returned a score outside [0, 1]: {value}")
            result.append({"talking_head": value, "th_frames": len(frames), "th_backend": backend.name})
        return result

    def decide(self, row: dict) -> dict:
        score, limit = row["talking_head"], self.config.max_score
        if score < limit:
            return ok(row)
        return dropped(row, f"talking_head: {score:.2f} >= {limit:g}")
