"""The `prompt` stage through the engine (Ray), with `prompt.backend=openai` against the loopback server
(fixtures/openai_server.py): transient failures leave a done-marker with `retry` > 0 and the next run
asks again for exactly those clips; the summary totals count requests, tokens and cost; the shards carry
the query; the API key reaches the server (the Ray workers' environment does not hold it) and no file
of the run; a driver SIGKILLed while requests are in flight resumes with no clip answered twice.

Time: the stages before prompt (ASR, LM filter, ...) run once, on three of the sample videos, with a
profile that is the SFT profile cut before `prompt` (same stage configs, so the same config chains);
every prompt run works on a copy of that folder and finds those stages done.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from fixtures.openai_server import QUERY, OpenAIServer, transcript_key
from pipeline.config import PROFILES_DIR
from pipeline.store import RunStore
from stages.lib.prompt_tasks import load_task, transcript
from tests.support.runs import manifest, run_pretrain, sft_head, sft_sets, shard_samples

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "LIVECC_PROMPT_RUN_TEST_KEY"
VIDEOS = ("talk_normal", "talk_gap", "music_cues")   # 4 SFT clips reach prompt (talk_gap has 2)
MAX_ATTEMPTS = 2
PRICE_PROMPT, PRICE_COMPLETION = 2.5, 10.0            # USD per million tokens
COMMON = ["run.part_size=1", *sft_sets()]            # one video per part: several prompt parts at once


def prompt_sets(base_url: str) -> list[str]:
    return ["prompt.backend=openai", f"prompt.base_url={base_url}", f"prompt.api_key_env={KEY_ENV}",
            "prompt.model=gpt-loopback", f"prompt.max_attempts={MAX_ATTEMPTS}", "prompt.backoff_s=0.05",
            "prompt.timeout_s=60", f"prompt.price_prompt_per_mtok={PRICE_PROMPT}",
            f"prompt.price_completion_per_mtok={PRICE_COMPLETION}"]


def profile_before_prompt(path: Path) -> Path:
    """profiles/sft.yaml with the stages from `prompt` on removed (the same configs for the others)."""
    raw = yaml.safe_load((PROFILES_DIR / "sft.yaml").read_text())
    raw["stages"][raw["stages"].index("active_speaker")] = sft_head()
    cut = raw["stages"].index("prompt")
    for name in raw["stages"][cut:]:
        raw.pop(name, None)
    raw["stages"] = raw["stages"][:cut]
    path.write_text(yaml.safe_dump(raw))
    return path


def key_of(row: dict) -> str:
    """The server's record key of a clip: its transcript, as livecc_query quotes it."""
    return transcript_key(load_task("livecc_query").render(row))


def markers(run_dir: Path, stage: str) -> dict[int, dict]:
    return {int(p.name[6:11]): json.loads(p.read_text()) for p in sorted((run_dir / stage).glob("_part-*.done"))}


def outcome(run_dir: Path) -> dict[str, tuple]:
    df = manifest(run_dir, "prompt")
    return {r.clip_id: (r.status, r.reason, r.query, r.prompt_verdict) for r in df.itertuples()}


def assert_no_secret(run_dir: Path, secret: str) -> None:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any("logs" in p.parts for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def secret() -> str:
    return f"sk-loopback-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def source(tmp_path_factory, samples_dir) -> Path:
    lines = [line for line in (samples_dir / "source.jsonl").read_text().splitlines()
             if any(f'"id": "{video}"' in line for video in VIDEOS)]
    assert len(lines) == len(VIDEOS)
    path = tmp_path_factory.mktemp("source") / "source.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, source, ray_local):
    """A run folder with every stage before prompt done."""
    folder = tmp_path_factory.mktemp("upstream")
    run_dir = folder / "run"
    result = run_pretrain(run_dir, source, *COMMON, profile=str(profile_before_prompt(folder / "sft-upto.yaml")))
    assert result.ok, result.failed
    heads = RunStore(str(run_dir)).read_stage(sft_head()).to_pylist()
    clips = {r["clip_id"]: r for r in heads if r["status"] == "ok"}
    assert len(clips) >= 4, [(r["clip_id"], r["status"], r["reason"]) for r in heads]
    assert len({key_of(r) for r in clips.values()}) == len(clips)     # the server tells clips apart
    return run_dir, clips


@pytest.fixture(scope="module")
def engine(tmp_path_factory, upstream, source, secret):
    """Run 1: two clips fail (503 x max_attempts), one is answered NO; run 2: the server recovered."""
    base, clips = upstream
    run_dir = tmp_path_factory.mktemp("engine") / "run"
    shutil.copytree(base, run_dir, symlinks=True)
    by_video: dict[str, list[str]] = {}
    for clip_id, row in sorted(clips.items()):
        by_video.setdefault(row["video_id"], []).append(clip_id)
    multi = next(v for v, ids in by_video.items() if len(ids) > 1)
    failing = {by_video[multi][0]}                                   # one clip of a two-clip part
    other = [v for v in by_video if v != multi]
    failing.add(by_video[other[0]][0])                               # a part whose only clip fails
    refused = by_video[other[1]][0]                                  # a part answered NO: never rerun
    with pytest.MonkeyPatch.context() as mp, OpenAIServer() as srv:
        # set after Ray started: its workers do not inherit it, the engine must hand it over
        mp.setenv(KEY_ENV, secret)
        for clip_id in failing:
            srv.script(transcript(clips[clip_id]["words"]), ["503"] * MAX_ATTEMPTS)
        srv.script(transcript(clips[refused]["words"]), [], then="no")
        first = run_pretrain(run_dir, source, *COMMON, *prompt_sets(srv.base_url), profile="sft")
        first_records = list(srv.records)
        state = {"markers": markers(run_dir, "prompt"), "prompt": manifest(run_dir, "prompt"),
                 "shard": manifest(run_dir, "shard"), "samples": shard_samples(run_dir)}
        srv.clear_scripts()
        srv.script(transcript(clips[refused]["words"]), [], then="no")
        second = run_pretrain(run_dir, source, *COMMON, *prompt_sets(srv.base_url), profile="sft")
        second_records = srv.records[len(first_records):]
        yield {"run_dir": run_dir, "clips": clips, "failing": failing, "refused": refused,
               "first": first, "second": second, "first_records": first_records,
               "second_records": second_records, "after_first": state, "auth": srv.auth_headers}


def test_transient_failures_are_error_rows_and_mark_their_part_for_retry(engine):
    first, state, clips = engine["first"], engine["after_first"], engine["clips"]
    assert first.ok, first.failed
    prompt = state["prompt"].set_index("clip_id")
    assert sorted(prompt.index) == sorted(clips) and prompt.index.is_unique
    for clip_id in engine["failing"]:
        assert prompt.loc[clip_id, "status"] == "error"
        assert prompt.loc[clip_id, "reason"].startswith(f"server_error: HTTP 503 (after {MAX_ATTEMPTS} attempts)")
        assert prompt.loc[clip_id, "prompt_requests"] == MAX_ATTEMPTS
    refused = prompt.loc[engine["refused"]]
    assert (refused.status, refused.reason) == ("dropped", "prompt: NO")
    others = set(clips) - engine["failing"] - {engine["refused"]}
    assert all(prompt.loc[c, "status"] == "ok" and prompt.loc[c, "query"] == QUERY for c in others)
    # the done-markers: retry counts the part's transient errors
    failing_parts = {part for part, m in state["markers"].items() if m["retry"]}
    assert len(failing_parts) == 2 and all(state["markers"][p]["retry"] == 1 for p in failing_parts)
    assert len(state["markers"]) == len(VIDEOS)   # one part per video
    # only the ok clips reached the shards, each with its query
    assert sorted(state["samples"]) == sorted(others)
    assert all(s["query"] == QUERY for s in state["samples"].values())


def test_the_summary_totals_count_requests_tokens_and_cost(engine):
    records = engine["first_records"]
    totals = engine["first"].summary["stages"]["prompt"]["totals"]
    retries = len(engine["failing"]) * (MAX_ATTEMPTS - 1)
    assert totals["prompt_requests"] == len(records) == len(engine["clips"]) + retries
    assert totals["prompt_retries"] == len(engine["failing"]) * (MAX_ATTEMPTS - 1)
    assert totals["prompt_cached"] == 0
    assert totals["prompt_tokens"] == sum(len(r.message) // 4 for r in records if r.answered)
    prompt = engine["after_first"]["prompt"]
    assert totals["completion_tokens"] == prompt.completion_tokens.sum() > 0
    cost = (totals["prompt_tokens"] * PRICE_PROMPT + totals["completion_tokens"] * PRICE_COMPLETION) / 1e6
    assert totals["prompt_cost_usd"] == pytest.approx(cost)


def test_the_next_run_asks_again_for_exactly_the_failed_clips(engine):
    second, clips, run_dir = engine["second"], engine["clips"], engine["run_dir"]
    assert second.ok, second.failed
    asked = [r.key for r in engine["second_records"]]
    assert sorted(asked) == sorted(key_of(clips[c]) for c in engine["failing"])   # once each, nothing else
    assert second.ran["prompt"] == 2 and second.skipped["prompt"] == len(VIDEOS) - 2
    assert second.ran[sft_head()] == 0 and second.ran["asr"] == 0
    prompt = manifest(run_dir, "prompt").set_index("clip_id")
    assert prompt.index.is_unique and sorted(prompt.index) == sorted(clips)
    assert set(prompt.status) <= {"ok", "dropped"}
    for clip_id in engine["failing"]:
        assert (prompt.loc[clip_id, "status"], prompt.loc[clip_id, "query"]) == ("ok", QUERY)
        assert prompt.loc[clip_id, "prompt_requests"] == 1
    assert all(m["retry"] == 0 for m in markers(run_dir, "prompt").values())
    # the clip that shared its part with a failing one came from the reply cache
    rerun_parts = {p for p, m in engine["after_first"]["markers"].items() if m["retry"]}
    shared = [c for c in clips if c not in engine["failing"]
              and any(clips[f]["video_id"] == clips[c]["video_id"] for f in engine["failing"])]
    assert shared and all(prompt.loc[c, "prompt_cached"] == 1 and prompt.loc[c, "prompt_requests"] == 0
                          for c in shared) and len(rerun_parts) == 2
    samples = shard_samples(run_dir)
    ok = sorted(prompt[prompt.status == "ok"].index)
    assert sorted(samples) == ok and engine["refused"] not in samples
    assert all(samples[c]["query"] == QUERY for c in ok)
    shard = manifest(run_dir, "shard")
    assert sorted(shard[shard.status == "ok"].clip_id) == ok


def test_the_key_reaches_the_server_and_no_file_of_the_run(engine, secret):
    assert engine["auth"] and set(engine["auth"]) == {f"Bearer {secret}"}
    assert_no_secret(engine["run_dir"], secret)
    config_text = (engine["run_dir"] / "config.yaml").read_text()
    assert f"api_key_env: {KEY_ENV}" in config_text


def test_sigkill_mid_prompt_then_resume(tmp_path, upstream, engine, source, secret):
    """Held requests keep prompt parts in flight; the driver is killed once request N+1 arrived (and the
    N answered replies are stored); the resumed run asks only for the clips with no stored reply, and
    ends with the manifests of the uninterrupted run."""
    base, clips = upstream
    run_dir = tmp_path / "run"
    shutil.copytree(base, run_dir, symlinks=True)
    held_from = 2
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), KEY_ENV: secret}
    with OpenAIServer(hold_after=held_from) as srv:
        srv.script(transcript(clips[engine["refused"]]["words"]), [], then="no")
        cmd = [sys.executable, "-m", "pipeline", "run", "sft", "--source", str(source), "--run", str(run_dir),
               "--no-progress"] + [a for s in COMMON + prompt_sets(srv.base_url) for a in ("--set", s)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while not srv.arrived_nth.wait(0.2):
                assert time.monotonic() < deadline and proc.poll() is None, "the run ended before it could be killed"
            time.sleep(1.0)   # the answered replies reach the reply cache
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        answered_before = {r.key for r in srv.records if r.answered}
        assert len(answered_before) == held_from
        srv.hold_after = None   # new requests are answered; the held ones stay unanswered
        before = srv.count
        resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        after = srv.records[before:]
        keys = {key_of(row) for row in clips.values()}
        assert all(srv.answered_for(k) == 1 for k in keys), {k[:40]: srv.answered_for(k) for k in keys}
        assert {r.key for r in after} == keys - answered_before and len(after) == len(keys) - held_from
    prompt = manifest(run_dir, "prompt")
    assert prompt.id.is_unique and sorted(prompt.clip_id) == sorted(clips)
    assert outcome(run_dir) == outcome(engine["run_dir"])
    shard = manifest(run_dir, "shard")
    reference = manifest(engine["run_dir"], "shard")
    assert sorted(shard[shard.status == "ok"].clip_id) == sorted(reference[reference.status == "ok"].clip_id)
    assert sorted(shard_samples(run_dir)) == sorted(shard_samples(engine["run_dir"]))
    assert_no_secret(run_dir, secret)
