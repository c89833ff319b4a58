"""Throughput of the prompt stage: the `openai` backend against the loopback OpenAI-compatible server
(fixtures/openai_server.py, a fixed latency per request) under a configured requests/min limit, and the
embedded `local` backend (SmolLM2-135M-Instruct in llama.cpp) on real-ish transcripts.

    python -m bench.prompt [--rows 400] [--parts 8] [--latency 0.2] [--rpm 1200] [--concurrency 16]
                           [--baseline-rows 40] [--local-clips 6] [--local-threads 1] [--skip-local]

openai: `--rows` clips (distinct transcripts of 60-150 words from the sample corpus' prose) in `--parts`
parts, run the way the engine runs them on one actor with `Resources.concurrency`: every part's
`process_table` in a thread of its own, all sharing one stage instance (one connection pool of
`--concurrency`, one rate limit). A warm-up part goes first (imports, task files, connections). Each
measurement writes to a fresh run folder (the reply cache would answer a second pass). Printed: the
achieved requests/s and its share of the limit (the limiter's bucket holds 1 s of the rate, so a run
starts with one burst), prompt+completion tokens/s as the server billed them, and the baseline measured
in the same run: `concurrency=1`, no limit (one request at a time: 1 / latency at best).

local: `--local-clips` transcripts through the stage with the default config (llama.cpp, the reply's
JSON schema as a grammar, one request at a time); printed: model load, replies/s, completion tokens/s,
the verdicts and the most common query (what the model writes, at a glance).

Figures only, no timed assertions.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import tempfile
import threading
import time

import pyarrow as pa


def sample_words() -> list[list[str]]:
    from synth import corpus as samples

    texts = []
    for name, value in sorted(vars(samples).items()):
        if name.startswith("TEXT_") and isinstance(value, str) and name != "TEXT_GERMAN":
            words = re.sub(r"\[[^\]]*\]", " ", value).split()
            if len(words) > 50:
                texts.append(words)
    if not texts:
        raise SystemExit("no sample texts found in synth/corpus.py")
    return texts


def make_rows(n: int, seed: int, tag: str) -> list[dict]:
    """Clip rows (CLIP_SPLIT columns) with distinct transcripts of 60-150 words."""
    from manifests.schemas import CLIP_SPLIT

    rng = random.Random(seed)
    texts = sample_words()
    rows = []
    for i in range(n):
        pool = [w for t in rng.sample(texts, k=min(2, len(texts))) for w in t]
        size = rng.randint(60, 150)
        at = rng.randint(0, max(0, len(pool) - size))
        words = pool[at:at + size] + [f"({tag}{i})"]   # distinct per row and per measurement
        timed = [{"start": 5.0 + k * 0.4, "end": 5.3 + k * 0.4, "word": w} for k, w in enumerate(words)]
        row = {name: None for name in CLIP_SPLIT.names}
        row.update({"id": f"{tag}{i}", "status": "ok", "clip_id": f"{tag}{i}", "video_id": f"v{i}", "start": 5.0,
                    "end": timed[-1]["end"], "words": timed, "previous": None, "title": "A sample video",
                    "category": "Education", "media_path": "media/x.mp4", "word_count": len(words),
                    "span": timed[-1]["end"] - 5.0, "wps": 2.5})
        rows.append(row)
    return rows


def run_parts(stage, rows: list[dict], parts: int, run_dir: str) -> tuple[float, list[pa.Table]]:
    """Every part's process_table in its own thread, one shared stage (an actor with concurrency)."""
    from manifests.schemas import CLIP_SPLIT
    from pipeline.stage import PartContext

    size = -(-len(rows) // parts)
    chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
    results: list = [None] * len(chunks)

    def one(k: int) -> None:
        results[k] = stage.process_table(pa.Table.from_pylist(chunks[k], schema=CLIP_SPLIT),
                                         PartContext(run_dir=run_dir, part=k))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(chunks))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, results


def measure_openai(args) -> None:
    from fixtures.openai_server import OpenAIServer
    from stages.prompt import Config, Prompt

    os.environ["BENCH_PROMPT_KEY"] = "sk-bench-loopback"
    with OpenAIServer(latency_s=args.latency) as srv:
        def stage_with(**overrides) -> Prompt:
            values = dict(backend="openai", base_url=srv.base_url, model="gpt-loopback", api_key_env="BENCH_PROMPT_KEY",
                          concurrency=args.concurrency, parts_in_flight=args.parts, max_attempts=3, backoff_s=0.2)
            values.update(overrides)
            return Prompt(Config(**values))

        def measure(stage, rows, parts, tag):
            with tempfile.TemporaryDirectory(prefix=f"bench-prompt-{tag}-") as run_dir:
                run_parts(stage, make_rows(4, 99, f"warm{tag}"), 1, run_dir)     # warm-up
                first = srv.count
                seconds, tables = run_parts(stage, rows, parts, run_dir)
                records = srv.records[first:]
            arrivals = sorted(r.arrived for r in records)
            burst_end = arrivals[0] + 1.0     # the bucket's first second of the rate
            later = [t for t in arrivals if t >= burst_end]
            steady = (len(later) - 1) / (later[-1] - later[0]) if len(later) > 2 else float("nan")
            statuses = [s for t in tables for s in t.column("status").to_pylist()]
            tokens = sum(sum(t.column(c).to_pylist()) for t in tables for c in ("prompt_tokens", "completion_tokens"))
            return seconds, len(records), statuses, tokens, steady

        limited = stage_with(requests_per_min=args.rpm)
        rows = make_rows(args.rows, 0, "r")
        sec, sent, statuses, tokens, steady = measure(limited, rows, args.parts, "lim")
        limit = args.rpm / 60
        print(f"openai backend vs loopback server: latency {args.latency * 1e3:.0f} ms per request, "
              f"{args.rows} clips ({sum(len(r['words']) for r in rows) // args.rows} words each on average)")
        print(f"{'mode':<42} {'clips':>6} {'requests':>9} {'seconds':>8} {'req/s':>7} {'% limit':>8} {'tokens/s':>9}")
        print(f"{f'{args.parts} parts, concurrency {args.concurrency}, {args.rpm:g}/min':<42} {len(statuses):>6} "
              f"{sent:>9} {sec:8.2f} {sent / sec:7.2f} {100 * sent / sec / limit:7.1f}% {tokens / sec:9.0f}")
        print(f"  steady rate after the first second (server arrivals): {steady:.2f} req/s = "
              f"{100 * steady / limit:.1f}% of the limit")
        bad = len(statuses) - statuses.count("ok")
        if bad:
            print(f"  ({bad} rows not ok: {sorted(set(statuses))})")

        baseline = stage_with(concurrency=1, parts_in_flight=1)
        rows = make_rows(args.baseline_rows, 1, "b")
        sec_b, sent_b, statuses_b, tokens_b, _ = measure(baseline, rows, 1, "base")
        print(f"{'baseline: 1 part, concurrency 1, no limit':<42} {len(statuses_b):>6} {sent_b:>9} {sec_b:8.2f} "
              f"{sent_b / sec_b:7.2f} {'-':>8} {tokens_b / sec_b:9.0f}")
        print(f"speed-up over one request at a time: {(sent / sec) / (sent_b / sec_b):.1f}x "
              f"(the limit allows {limit:g}/s; one at a time allows at most {1 / args.latency:.1f}/s)")


def measure_local(args) -> None:
    from manifests.schemas import CLIP_SPLIT
    from pipeline.stage import PartContext
    from stages.prompt import Config, Prompt

    stage = Prompt(Config(backend="local", cpu_threads=args.local_threads))
    try:
        stage.check()
    except ValueError as exc:
        print(f"local backend: skipped ({exc})")
        return
    rows = make_rows(args.local_clips, 2, "l")
    with tempfile.TemporaryDirectory(prefix="bench-prompt-local-") as run_dir:
        started = time.perf_counter()
        stage.process_table(pa.Table.from_pylist(make_rows(1, 3, "lw"), schema=CLIP_SPLIT),
                            PartContext(run_dir=run_dir, part=99))   # loads the model (+ one reply)
        load_s = time.perf_counter() - started
        seconds, tables = run_parts(stage, rows, 1, run_dir)
    out = [r for t in tables for r in t.to_pylist()]
    completion = sum(r["completion_tokens"] or 0 for r in out)
    prompt_tokens = sum(r["prompt_tokens"] or 0 for r in out)
    verdicts = {}
    for r in out:
        label = r["prompt_verdict"] or r["reason"].split(":")[0]
        verdicts[label] = verdicts.get(label, 0) + 1
    print(f"local backend (SmolLM2-135M-Instruct GGUF, llama.cpp, {args.local_threads} thread(s)): model load "
          f"+ one warm-up reply {load_s:.1f} s")
    print(f"{len(out)} clips of {min(len(r['words']) for r in rows)}-{max(len(r['words']) for r in rows)} words: "
          f"{seconds:.1f} s, {len(out) / seconds:.2f} replies/s, {completion / seconds:.1f} completion tokens/s, "
          f"{prompt_tokens / len(out):.0f} prompt tokens per clip; verdicts {verdicts}")
    queries = [r["query"] for r in out if r.get("query")]
    if queries:
        common = max(set(queries), key=queries.count)
        print(f"{len(set(queries))} distinct queries; most common ({queries.count(common)}x): {common!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the loopback server takes per request")
    parser.add_argument("--rpm", type=float, default=1200, help="requests_per_min of the limited run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--baseline-rows", type=int, default=40)
    parser.add_argument("--local-clips", type=int, default=6)
    parser.add_argument("--local-threads", type=int, default=1)
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    measure_openai(args)
    if not args.skip_local:
        print()
        measure_local(args)


if __name__ == "__main__":
    main()
