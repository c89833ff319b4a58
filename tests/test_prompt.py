"""The `prompt` stage called directly (no Ray) against a loopback OpenAI-compatible server
(fixtures/openai_server.py): every scripted failure gives its documented row, a rerun asks again for
exactly the failed rows, the API key goes to the server and nowhere else, replies land in the reply
cache as they arrive; plus unit tests of the rate limiter (fake clock), the retry loop and task files.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from fixtures.openai_server import DESCRIPTION, QUERY, OpenAIServer, transcript_key
from manifests.schemas import CLIP_SPLIT
from pipeline.stage import PartContext
from stages.lib import prompt_tasks
from stages.lib.prompt_tasks import BadReply, extract_json, load_task
from stages.lib.rate_limit import GaveUp, RateLimiter, RetryPolicy, TokenBucket, Transient, call_with_retries
from stages.prompt import Config, Prompt

KEY_ENV = "LIVECC_PROMPT_TEST_KEY"
MAX_ATTEMPTS = 3
TIMEOUT_S = 0.5


# ---------------------------------------------------------------------------------------------- helpers
def transcript(case: str) -> str:
    """A distinct transcript per case; `case_<name>_` is what the server's script matches."""
    return (f"case_{case}_ here the presenter points at the {case} gadget on the bench and shows how its "
            f"switch turns the light on while the camera follows the beam across the wall")


def clip_row(case: str, text: str | None = None, **extra) -> dict:
    text = transcript(case) if text is None else text
    words = [{"start": 10.0 + i * 0.5, "end": 10.3 + i * 0.5, "word": w} for i, w in enumerate(text.split())]
    end = words[-1]["end"] if words else 10.0
    row = {name: None for name in CLIP_SPLIT.names}
    row.update({"id": f"clip_{case}", "status": "ok", "reason": None, "clip_id": f"clip_{case}",
                "video_id": f"video_{case}", "start": 10.0, "end": end, "words": words, "previous": None,
                "title": f"Title of {case}", "category": "Science & Technology", "media_path": f"media/{case}.mp4",
                "word_count": len(words), "span": end - 10.0, "wps": len(words) / max(end - 10.0, 1e-9)})
    row.update(extra)
    return row


def table_of(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=CLIP_SPLIT)


def user_message(row: dict, task: str = "livecc_query") -> str:
    return load_task(task).render(row)


def stage_for(srv: OpenAIServer, **overrides) -> Prompt:
    values = dict(backend="openai", base_url=srv.base_url, model="gpt-test", api_key_env=KEY_ENV,
                  timeout_s=TIMEOUT_S, max_attempts=MAX_ATTEMPTS, backoff_s=0.05, max_backoff_s=0.2, concurrency=8)
    values.update(overrides)
    return Prompt(Config(**values))


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


def reply_entries(run_dir: Path, part: int = 0) -> list[dict]:
    folder = run_dir / "prompt" / "_replies" / f"part-{part:05d}"
    return [json.loads(line) for line in (folder / "replies.jsonl").read_text().splitlines() if line.strip()]


# What each case is scripted to do (MAX_ATTEMPTS = 3), and the row it must give.
SCRIPTS = {
    "ok": [], "fence": ["fence"], "nope": [],
    "retry429": ["429"], "bare429": ["429-bare"], "e500": ["500"], "e503twice": ["503", "503"],
    "malformed": ["malformed"], "refusal": ["refusal"], "nochoices": ["empty-choices"],
    "noquery": ["yes-no-query"], "emptyquery": ["yes-empty-query"], "notjson": ["not-json-body"],
    "length": ["length"], "echo": ["echo-auth"],
    "e503always": ["503"] * MAX_ATTEMPTS, "limited": ["429-bare"] * MAX_ATTEMPTS,
    "hang": ["hang"] * MAX_ATTEMPTS, "drop": ["drop"] * MAX_ATTEMPTS, "e400": ["400"], "e401": ["401"],
}
OK_CASES = {"ok": 1, "fence": 1, "retry429": 2, "bare429": 2, "e500": 2, "e503twice": 3}   # case -> requests
BAD_REPLY = {   # case -> what the reason must hold (the problem and the reply's start)
    "malformed": ["no JSON object", "reply starts: '{\"result\": \"YES\", \"query\":"],
    "refusal": ["refusal: I'm sorry, I can't help"],
    "nochoices": ["no choices"],
    "noquery": ["does not match the reply schema", "reply starts: '{\"result\":\"YES\"}'"],
    "emptyquery": ["query empty", "reply starts: '{\"result\":\"YES\",\"query\":\"\"}'"],
    "notjson": ["not JSON", "reply starts: '<html><body>upstream proxy"],
    "length": ["cut at max_tokens"],
    "echo": ["reply starts: 'I received your request"],
}
GAVE_UP = {"e503always": "server_error", "limited": "rate_limited", "hang": "timeout", "drop": "connection_error"}
HTTP_ERROR = {"e400": "HTTP 400", "e401": "HTTP 401"}
ALL_CASES = list(SCRIPTS)


@pytest.fixture(scope="module")
def secret() -> str:
    return f"sk-loopback-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, secret):
    """One part holding a row per case, run once against the scripted server, then rerun after the
    server recovered (a new stage instance, same run folder and part)."""
    run_dir = tmp_path_factory.mktemp("prompt") / "run"
    rows = [clip_row(case, transcript(case) + (" NOPE" if case == "nope" else "")) for case in ALL_CASES]
    with pytest.MonkeyPatch.context() as mp, OpenAIServer(hang_s=TIMEOUT_S * 4) as srv:
        mp.setenv(KEY_ENV, secret)
        for case, behaviours in SCRIPTS.items():
            if behaviours:
                srv.script(f"case_{case}_", behaviours)
        stage = stage_for(srv)
        stage.check()
        first = stage.process_table(table_of(rows), PartContext(run_dir=str(run_dir), part=0))
        first_records = list(srv.records)
        entries = reply_entries(run_dir)
        srv.clear_scripts()
        second = stage_for(srv).process_table(table_of(rows), PartContext(run_dir=str(run_dir), part=0))
        second_records = srv.records[len(first_records):]
        yield {"run_dir": run_dir, "rows": {r["id"]: r for r in rows}, "first": by_id(first), "second": by_id(second),
               "first_records": first_records, "second_records": second_records, "entries": entries,
               "auth": srv.auth_headers, "stage": stage, "schema": first.schema}


def test_ok_rows_carry_the_query_and_their_cost(first_run):
    first, rows = first_run["first"], first_run["rows"]
    for case, requests in OK_CASES.items():
        row = first[f"clip_{case}"]
        assert (row["status"], row["reason"]) == ("ok", None), (case, row["reason"])
        assert row["query"] == QUERY and row["prompt_verdict"] == "YES" and row["prompt_model"] == "loopback-gpt-4o"
        counted = (row["prompt_requests"], row["prompt_retries"], row["prompt_cached"])
        assert counted == (requests, requests - 1, 0), case
        message = user_message(rows[f"clip_{case}"])
        # usage of the reply that was used (the loopback server: len // 4); failed attempts bill nothing
        assert row["prompt_tokens"] == len(message) // 4
        content = json.dumps({"result": "YES", "query": QUERY})
        fenced = f"Sure! Here is the answer:\n```json\n{content}\n```\nLet me know if you need more."
        assert row["completion_tokens"] == len(fenced if case == "fence" else content) // 4
        assert row["prompt_cost_usd"] == 0.0
    # pass-through: every input column is kept unchanged
    for name in CLIP_SPLIT.names:
        if name not in ("status", "reason"):
            assert first["clip_ok"][name] == rows["clip_ok"][name], name


def test_no_is_dropped_with_its_verdict(first_run):
    row = first_run["first"]["clip_nope"]
    assert (row["status"], row["reason"], row["prompt_verdict"]) == ("dropped", "prompt: NO", "NO")
    assert row["query"] == "" and row["prompt_requests"] == 1 and row["prompt_tokens"] > 0


def test_unusable_replies_are_bad_reply_errors_with_the_reply_start(first_run):
    first = first_run["first"]
    for case, needles in BAD_REPLY.items():
        row = first[f"clip_{case}"]
        assert row["status"] == "error" and row["reason"].startswith("bad_reply: "), (case, row["reason"])
        for needle in needles:
            assert needle in row["reason"], (case, row["reason"])
        # a bad reply is not retried now (the next run does): one request, and its usage is counted
        assert (row["prompt_requests"], row["prompt_retries"]) == (1, 0), case
        assert row["query"] is None
    assert first["clip_malformed"]["prompt_tokens"] == len(user_message(first_run["rows"]["clip_malformed"])) // 4
    assert first["clip_malformed"]["completion_tokens"] == len('{"result": "YES", "query": ') // 4


def test_transient_failures_give_up_after_max_attempts(first_run):
    first = first_run["first"]
    for case, code in GAVE_UP.items():
        row = first[f"clip_{case}"]
        assert row["status"] == "error" and row["reason"].startswith(f"{code}: "), (case, row["reason"])
        assert f"after {MAX_ATTEMPTS} attempts" in row["reason"]
        assert (row["prompt_requests"], row["prompt_retries"]) == (MAX_ATTEMPTS, MAX_ATTEMPTS - 1), case
        assert row["prompt_tokens"] == row["completion_tokens"] == 0
        key = transcript_key(user_message(first_run["rows"][f"clip_{case}"]))
        records = [r for r in first_run["first_records"] if r.key == key]
        assert len(records) == MAX_ATTEMPTS and not any(r.answered for r in records)
    for case, status in HTTP_ERROR.items():
        row = first[f"clip_{case}"]
        assert row["status"] == "error" and row["reason"].startswith(f"http_error: {status}"), row["reason"]
        assert row["prompt_requests"] == 1   # a 4xx is not retried now


def test_retry_after_is_honoured(first_run):
    """The retry after a 429 with Retry-After: 1 arrives >= 1 s later (server arrival times); without
    Retry-After the client backs off (backoff_s 0.05) and the retry comes sooner."""
    rows = first_run["rows"]
    records = first_run["first_records"]

    def arrivals(case):
        key = transcript_key(user_message(rows[f"clip_{case}"]))
        return [r.arrived for r in records if r.key == key]

    with_header = arrivals("retry429")
    assert len(with_header) == 2 and with_header[1] - with_header[0] >= 0.95
    bare = arrivals("bare429")
    assert len(bare) == 2 and bare[1] > bare[0]


def test_every_retry_reason_is_one_the_engine_reruns(first_run):
    stage = first_run["stage"]
    codes = {r["reason"].split(":")[0] for r in first_run["first"].values() if r["status"] == "error"}
    assert codes == {"bad_reply", "server_error", "rate_limited", "timeout", "connection_error", "http_error"}
    assert codes <= stage.retry_reasons


def test_rerun_asks_again_for_exactly_the_failed_rows(first_run):
    first, second, rows = first_run["first"], first_run["second"], first_run["rows"]
    failed = {rid for rid, r in first.items() if r["status"] == "error"}
    asked = {r.key for r in first_run["second_records"]}
    assert asked == {transcript_key(user_message(rows[rid])) for rid in failed}
    assert len(first_run["second_records"]) == len(failed)          # one request each: the server is fine now
    for rid, row in second.items():
        assert row["status"] in ("ok", "dropped"), (rid, row["reason"])
        if rid in failed:
            assert (row["prompt_requests"], row["prompt_cached"]) == (1, 0), rid
            assert row["query"] == QUERY
        else:   # from the reply cache: nothing sent, same answer, same usage
            assert (row["prompt_requests"], row["prompt_retries"], row["prompt_cached"]) == (0, 0, 1), rid
            for column in ("status", "reason", "query", "prompt_verdict", "prompt_model", "prompt_tokens",
                           "completion_tokens"):
                assert row[column] == first[rid][column], (rid, column)


def test_the_reply_cache_holds_every_reply_received(first_run):
    """One entry per 200 reply the client read (bad ones too), merged into replies.jsonl."""
    entries = first_run["entries"]
    received = [r for r in first_run["first_records"]
                if r.behaviour not in ("429", "429-bare", "500", "503", "400", "401", "hang", "drop")]
    assert len(entries) == len(received)
    assert sum(e["text"] is None for e in entries) == 2                      # refusal, empty choices
    assert {e["task"] for e in entries} == {"livecc_query"} and len({e["key"] for e in entries}) == len(entries)
    folder = first_run["run_dir"] / "prompt" / "_replies" / "part-00000"
    assert sorted(p.name for p in folder.iterdir()) == ["replies.jsonl"]    # the single files merged away
    assert len(reply_entries(first_run["run_dir"])) == len(entries) + len(first_run["second_records"])


def test_the_key_reaches_the_server_and_nothing_else(first_run, secret):
    assert first_run["auth"] and set(first_run["auth"]) == {f"Bearer {secret}"}
    run_dir = first_run["run_dir"]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    for table in (first_run["first"], first_run["second"]):
        for row in table.values():
            assert secret not in json.dumps(row, default=str)
    # an endpoint that echoes the key: masked in the reason (and the cache, checked above)
    assert "Bearer ***" in first_run["first"]["clip_echo"]["reason"]
    assert "***" in first_run["first"]["clip_e400"]["reason"]
    stage = first_run["stage"]
    for text in (repr(stage), repr(stage.config), json.dumps(dataclasses.asdict(stage.config))):
        assert secret not in text


def test_check_names_the_missing_key_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with OpenAIServer() as srv, pytest.raises(ValueError, match=KEY_ENV):
        stage_for(srv).check()
    with OpenAIServer() as srv:     # an endpoint without a key: no Authorization header at all
        stage = stage_for(srv, api_key_env=None)
        stage.check()
        out = stage.process_table(table_of([clip_row("ok")]), PartContext(run_dir=str(tmp_path), part=0))
        assert out.column("status").to_pylist() == ["ok"] and srv.auth_headers == [None]


def test_no_words_rows_are_dropped_without_a_request(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-x")
    with OpenAIServer() as srv:
        rows = [clip_row("empty", text=""), clip_row("blank", text="   "), clip_row("ok")]
        out = by_id(stage_for(srv).process_table(table_of(rows), PartContext(run_dir=str(tmp_path), part=3)))
        assert out["clip_empty"]["reason"] == "no_words" and out["clip_blank"]["reason"] == "no_words"
        assert out["clip_ok"]["status"] == "ok" and srv.count == 1


def test_a_reply_is_stored_the_moment_it_arrives(tmp_path, monkeypatch):
    """While one row of the part hangs, the other row's reply is already a file of its own in the
    reply cache: a run killed now keeps it."""
    monkeypatch.setenv(KEY_ENV, "sk-x")
    with OpenAIServer(hang_s=30) as srv:
        srv.script("case_slow_", ["hang"])
        stage = stage_for(srv, timeout_s=20.0, max_attempts=1)
        rows = [clip_row("fast"), clip_row("slow")]
        done = {}
        thread = threading.Thread(target=lambda: done.update(
            out=stage.process_table(table_of(rows), PartContext(run_dir=str(tmp_path), part=1))))
        thread.start()
        folder = tmp_path / "prompt" / "_replies" / "part-00001"
        deadline = time.monotonic() + 10
        fast_key = transcript_key(user_message(rows[0]))
        while not (srv.answered_for(fast_key) and list(folder.glob("r-*.json"))):
            assert time.monotonic() < deadline, "the answered reply was not stored while the part ran"
            time.sleep(0.05)
        singles = list(folder.glob("r-*.json"))
        assert len(singles) == 1 and thread.is_alive() and not (folder / "replies.jsonl").exists()
        entry = json.loads(singles[0].read_text())
        assert json.loads(entry["text"]) == {"result": "YES", "query": QUERY}
        srv.end_hangs()         # the hanging request is closed now: the row fails, the part finishes
        thread.join(timeout=30)
        assert not thread.is_alive()
        out = by_id(done["out"])
        assert out["clip_fast"]["status"] == "ok" and out["clip_slow"]["reason"].startswith("connection_error")


def test_a_key_echoed_in_a_refusal_is_masked_everywhere(tmp_path, monkeypatch):
    """An endpoint whose refusal quotes the key: neither the reason nor the reply cache holds it."""
    secret = f"sk-refusal-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, secret)
    with OpenAIServer() as srv:
        srv.script("case_refusing_", ["refusal-echo-auth"])
        out = by_id(stage_for(srv).process_table(table_of([clip_row("refusing")]),
                                                 PartContext(run_dir=str(tmp_path), part=0)))
    reason = out["clip_refusing"]["reason"]
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert reason.startswith("bad_reply: refusal: I won't answer")
    assert secret not in reason and not leaks, (reason, leaks)


def test_request_body_and_headers_follow_the_config(tmp_path, monkeypatch):
    """Azure-style: the key in `api-key`, `?api-version=`; newer models' max_completion_tokens;
    json_object and text reply formats; sampling settings as given."""
    monkeypatch.setenv(KEY_ENV, "sk-azure")
    with OpenAIServer() as srv:
        stage = stage_for(srv, auth_header="api-key", api_version="2024-10-21",
                          max_tokens_param="max_completion_tokens", temperature=0.2, top_p=0.9, seed=7)
        out = stage.process_table(table_of([clip_row("azure")]), PartContext(run_dir=str(tmp_path / "a"), part=0))
        record = srv.records[-1]
        assert out.column("status").to_pylist() == ["ok"]
        assert (record.auth, record.api_key) == (None, "sk-azure")
        assert record.target == "/v1/chat/completions?api-version=2024-10-21"
        body = record.body
        assert body["model"] == "gpt-test" and body["max_completion_tokens"] == 256 and "max_tokens" not in body
        assert (body["temperature"], body["top_p"], body["seed"]) == (0.2, 0.9, 7)
        schema = body["response_format"]["json_schema"]
        assert schema["strict"] is True and schema["schema"] == dict(load_task("livecc_query").reply_schema)
        assert body["messages"] == [{"role": "user", "content": user_message(clip_row("azure"))}]
        for fmt, expected in (("json_object", {"type": "json_object"}), ("text", None)):
            stage = stage_for(srv, reply_format=fmt, temperature=None, seed=None)
            stage.process_table(table_of([clip_row(fmt)]), PartContext(run_dir=str(tmp_path / fmt), part=0))
            body = srv.records[-1].body
            assert body.get("response_format") == expected and "temperature" not in body and "seed" not in body
            assert body["max_tokens"] == 256


def test_reply_cache_reads_each_entry_once_after_an_interrupted_merge(tmp_path):
    """A kill between writing replies.jsonl and removing the single files leaves entries twice on disk;
    reading counts each once, oldest first."""
    from pipeline.store import RunStore
    from stages.lib.reply_cache import ReplyCache

    cache = ReplyCache(RunStore(str(tmp_path)), "prompt", 2)
    first = cache.add({"key": "k1", "text": "a"})
    second = cache.add({"key": "k1", "text": "b"})
    cache.add({"key": "k2", "text": "c"})
    folder = tmp_path / "prompt" / "_replies" / "part-00002"
    singles = sorted(folder.glob("r-*.json"))
    assert len(singles) == 3
    saved = {p: p.read_bytes() for p in singles}
    cache.merge()
    assert sorted(p.name for p in folder.iterdir()) == ["replies.jsonl"]
    for path, data in saved.items():      # the interrupted merge: single files back beside the merged one
        path.write_bytes(data)
    loaded = ReplyCache(RunStore(str(tmp_path)), "prompt", 2).load()
    assert [e["text"] for e in loaded["k1"]] == ["a", "b"] and [e["text"] for e in loaded["k2"]] == ["c"]
    assert loaded["k1"][0]["nonce"] == first["nonce"] and loaded["k1"][1]["nonce"] == second["nonce"]
    (folder / "r-torn.json").write_bytes(b'{"key": "k3", "te')    # a torn write is skipped
    assert set(ReplyCache(RunStore(str(tmp_path)), "prompt", 2).load()) == {"k1", "k2"}


def test_stage_pickles_for_ray(monkeypatch):
    """The engine sends the stage object to its Ray actor (pickled): it must pickle before and after
    use, and never carry the key."""
    from ray import cloudpickle

    monkeypatch.setenv(KEY_ENV, "sk-never-pickled")
    with OpenAIServer() as srv:
        stage = stage_for(srv)
        blob = cloudpickle.dumps(stage)
        assert b"sk-never-pickled" not in blob
        copy = pickle.loads(blob)
        assert copy.config == stage.config


# ------------------------------------------------------------------------------------------- tasks
def test_dense_description_through_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-x")
    with OpenAIServer() as srv:
        rows = [clip_row("desc", title="Fixing a lamp")]
        out = stage_for(srv, tasks=("dense_description",)).process_table(
            table_of(rows), PartContext(run_dir=str(tmp_path), part=0))
        row = by_id(out)["clip_desc"]
        assert row["status"] == "ok" and row["description"] == DESCRIPTION
        assert row["prompt_verdict"] is None and "query" not in out.schema.names
        body = srv.records[0].body
        assert body["response_format"]["json_schema"]["name"] == "dense_description"
        assert "[0.0-" in srv.records[0].message     # the timed transcript: seconds from the clip start
        assert srv.records[0].key == "Fixing a lamp"  # the first quoted text of this template is the title


def test_both_tasks_fill_both_columns(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-x")
    with OpenAIServer() as srv:
        rows = [clip_row("both", title="Both tasks"), clip_row("nope", transcript("nope") + " NOPE", title="No")]
        out = by_id(stage_for(srv, tasks=("livecc_query", "dense_description")).process_table(
            table_of(rows), PartContext(run_dir=str(tmp_path), part=0)))
        row = out["clip_both"]
        assert row["status"] == "ok" and row["query"] == QUERY and row["description"] == DESCRIPTION
        assert row["prompt_requests"] == 2 and row["prompt_retries"] == 0
        nope = out["clip_nope"]
        assert nope["status"] == "dropped" and nope["reason"] == "prompt: NO" and nope["description"] == DESCRIPTION
        assert srv.count == 4


def test_extract_json():
    assert extract_json('{"result": "YES", "query": "q"}') == {"result": "YES", "query": "q"}
    assert extract_json('Here:\n```json\n{"a": 1}\n```\nbye') == {"a": 1}
    assert extract_json('```\n{"a": 2}\n```') == {"a": 2}
    assert extract_json('Sure, the answer is {"a": {"b": [1, {"c": 2}]}} as asked.') == {"a": {"b": [1, {"c": 2}]}}
    assert extract_json('  {"a": "}{"}  ') == {"a": "}{"}
    for text, problem in (("[1, 2]", "no JSON object"), ('"YES"', "no JSON object"), ("", "empty reply"),
                          ("   \n", "empty reply"), (None, "empty reply"), ('{"a": 1', "no JSON object"),
                          ("no braces at all", "no JSON object")):
        with pytest.raises(BadReply, match=problem):
            extract_json(text)


def test_task_parse_checks_schema_decision_and_nonempty():
    task = load_task("livecc_query")
    assert task.parse('{"result": "YES", "query": " Describe it. "}') == (True, {"query": "Describe it."})
    assert task.parse('{"result": "NO", "query": ""}') == (False, {"query": ""})
    for text, problem in (('{"result": "MAYBE", "query": "q"}', "reply schema"),
                          ('{"result": "YES", "query": "q", "extra": 1}', "reply schema"),
                          ('{"result": "YES", "query": "  "}', "query empty")):
        with pytest.raises(BadReply, match=problem):
            task.parse(text)


TASK = {"name": "t", "template": 'Transcript: "{asr}" of {title}', "columns": {"query": "query"},
        "reply_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


def write_task(tmp_path: Path, **changes) -> str:
    import yaml

    task = {**TASK, **changes}
    for key in [k for k, v in changes.items() if v is None]:
        task.pop(key)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return str(path)


@pytest.mark.parametrize("changes, problem", [
    ({"templat": "x"}, r"unknown keys \['templat'\]"),
    ({"template": "Describe {title} please"}, r"must contain \{asr\} or \{timed_asr\}"),
    ({"columns": {"query": "Query Column"}}, r"columns: 'query' must be a reply_schema property and 'Query Column'"),
    ({"columns": {"answer": "answer"}}, r"columns: 'answer' must be a reply_schema property"),
    ({"columns": None}, "columns must map reply fields"),
    ({"reply_schema": {"type": "array"}}, "reply_schema must be a JSON Schema of type object"),
    ({"decision": {"field": "nope", "keep": "Y", "drop": "N"}}, "decision must be"),
    ({"nonempty": ["missing"]}, r"nonempty names fields not in reply_schema: \['missing'\]"),
])
def test_bad_task_files_name_the_problem(tmp_path, changes, problem):
    path = write_task(tmp_path, **changes)
    with pytest.raises(ValueError, match=problem) as info:
        load_task(path)
    assert path in str(info.value)


def test_task_files_load_and_unknown_names_list_the_known_ones(tmp_path):
    task = load_task(write_task(tmp_path))
    words = [{"start": 1.0, "end": 1.2, "word": " hi"}, {"start": 1.3, "end": 1.5, "word": "there "}]
    assert task.render({"words": words, "title": "T"}) == 'Transcript: "hi there" of T'
    with pytest.raises(ValueError, match="known tasks: dense_description, livecc_query"):
        load_task("no_such_task")
    assert [load_task(n).name for n in ("livecc_query", "dense_description")] == ["livecc_query", "dense_description"]


def test_timed_transcript_lines_start_at_pauses():
    row = {"start": 100.0, "words": [{"start": 100.5, "end": 101.0, "word": "one"},
                                      {"start": 101.2, "end": 101.5, "word": "two"},
                                      {"start": 103.0, "end": 103.4, "word": "three"}]}
    assert prompt_tasks.timed_transcript(row) == "[0.5-1.5] one two\n[3.0-3.4] three"


# ------------------------------------------------------------------------------------ rate limits
class FakeClock:
    """time.monotonic and time.sleep for the limiter. A sleep takes at least 1 us, as a real one does
    (a wait computed as 1e-17 s would otherwise leave a float clock where it is, forever)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 1e-6)


def limiter(rpm=None, tpm=None) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(rpm, tpm, clock=clock, sleep=clock.sleep), clock


def test_requests_per_minute_paces_requests():
    lim, clock = limiter(rpm=60)           # 1/s, a bucket of 1 s
    start = clock.now
    for _ in range(5):
        lim.acquire(10)
    assert clock.now - start == pytest.approx(4.0, abs=1e-3)


def test_tokens_per_minute_binds_when_it_is_the_tighter_limit():
    lim, clock = limiter(rpm=600, tpm=6000)   # 10 requests/s, 100 tokens/s
    start = clock.now
    for _ in range(5):
        lim.acquire(100)                      # 5 x 100 tokens: tokens bind (4 s), requests would allow 0.4 s
    assert clock.now - start == pytest.approx(4.0, abs=1e-3)
    lim, clock = limiter(rpm=600, tpm=6000)
    start = clock.now
    for _ in range(21):
        lim.acquire(1)                        # 21 tiny requests: requests bind: a burst of 10 (1 s of
    assert clock.now - start == pytest.approx(1.1, abs=1e-3)   # the rate), then 11 at 10/s


def test_an_oversized_request_passes_and_leaves_debt():
    lim, clock = limiter(tpm=60)              # 1 token/s: the bucket holds 1
    start = clock.now
    lim.acquire(10)                           # bigger than the bucket: passes on a full bucket
    assert clock.now == start
    lim.acquire(1)                            # ...and the next waits for the 10 tokens to be paid back
    assert clock.now - start == pytest.approx(10.0, abs=1e-3)


def test_settle_corrects_the_token_estimate():
    lim, clock = limiter(tpm=6000)            # 100 tokens/s, bucket 100
    lim.acquire(100)
    lim.settle(100, 10)                       # used 10, not 100: 90 come back
    start = clock.now
    lim.acquire(90)
    assert clock.now == start
    lim.settle(90, 190)                       # used 100 more than counted
    lim.acquire(100)
    assert clock.now - start == pytest.approx(2.0, abs=1e-3)


def test_a_pause_holds_every_request():
    lim, clock = limiter(rpm=6000)
    lim.pause(5.0)
    start = clock.now
    lim.acquire(1)
    assert clock.now - start == pytest.approx(5.0, abs=1e-3)
    lim.pause(1.0)
    lim.pause(0.5)                            # a shorter pause never shortens a longer one
    start = clock.now
    lim.acquire(1)
    assert clock.now - start == pytest.approx(1.0, abs=1e-3)


def test_token_bucket_refills_continuously_up_to_its_capacity():
    clock = FakeClock()
    bucket = TokenBucket(120, clock)          # 2/s, capacity 2
    assert bucket.capacity == 2 and bucket.wait_for(2, clock.now) == 0
    bucket.take(2)
    assert bucket.wait_for(1, clock.now) == pytest.approx(0.5)
    clock.now += 100
    assert bucket.wait_for(2, clock.now) == 0 and bucket.level == 2


def test_call_with_retries_gives_up_after_max_attempts():
    lim, clock = limiter()
    calls = []

    def send():
        calls.append(clock.now)
        raise Transient("server_error", "HTTP 503")

    with pytest.raises(GaveUp) as info:
        call_with_retries(send, lim, RetryPolicy(max_attempts=4, backoff_s=1.0, max_backoff_s=3.0), 10,
                          sleep=clock.sleep)
    assert info.value.code == "server_error" and info.value.attempts == 4 and len(calls) == 4
    assert str(info.value) == "server_error: HTTP 503 (after 4 attempts)"
    # exponential backoff with jitter in [0.5, 1] of 1, 2, then capped at 3
    for wait, full in zip(clock.sleeps, (1.0, 2.0, 3.0)):
        assert 0.5 * full <= wait <= full


def test_call_with_retries_honours_retry_after_and_pauses_the_limiter():
    lim, clock = limiter()
    replies = iter([Transient("rate_limited", "HTTP 429", 2.0), "answer"])

    def send():
        value = next(replies)
        if isinstance(value, Exception):
            raise value
        return value

    assert call_with_retries(send, lim, RetryPolicy(backoff_s=0.01), 1, sleep=clock.sleep) == ("answer", 2)
    assert 2.0 <= clock.sleeps[0] <= 2.2
    assert lim.paused_until >= 1000.0 + 2.0   # the whole limiter waited: other threads too


def test_a_retry_after_beyond_the_limit_gives_up_at_once():
    lim, clock = limiter()
    calls = []

    def send():
        calls.append(1)
        raise Transient("rate_limited", "HTTP 429", 3600.0)

    with pytest.raises(GaveUp, match="exceeds max_retry_after_s 300") as info:
        call_with_retries(send, lim, RetryPolicy(max_attempts=6, max_retry_after_s=300), 1, sleep=clock.sleep)
    assert info.value.attempts == 1 and len(calls) == 1 and clock.sleeps == []


def test_other_exceptions_pass_through():
    lim, clock = limiter()

    def send():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        call_with_retries(send, lim, RetryPolicy(), 1, sleep=clock.sleep)
