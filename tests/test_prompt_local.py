"""The embedded prompt backend (SmolLM2-135M-Instruct in llama.cpp, in process) answers real
transcripts through its real path: every reply parses, and the reply cache spares a second run."""
import json

import pyarrow as pa
import pytest

from manifests.schemas import CLIP_SPLIT
from pipeline.stage import PartContext
from stages import prompt as prompt_stage
from stages.lib import prompt_client

pytestmark = pytest.mark.slow


def clip_rows(samples_dir) -> list[dict]:
    """One clip per sample video with speech: the captions' words with their times."""
    videos = json.loads((samples_dir / "expected.json").read_text())["videos"]
    rows = []
    for name in ("talk_normal", "talk_gap", "talk_slow", "auto_captions"):
        words = [{"start": float(s), "end": float(e), "word": w} for s, e, text in videos[name]["cues"]
                 if "[" not in text for w in text.split()]
        rows.append({"id": f"{name}-0", "status": "ok", "reason": None, "clip_id": f"{name}-0", "video_id": name,
                     "start": words[0]["start"], "end": words[-1]["end"], "words": words, "previous": "",
                     "title": videos[name]["title"], "category": "Education", "media_path": "x.mp4",
                     "word_count": len(words), "span": words[-1]["end"] - words[0]["start"], "wps": 2.0})
    rows.append({**rows[0], "id": "silent-0", "clip_id": "silent-0", "words": []})
    return rows


def test_local_backend_answers_real_transcripts(samples_dir, tmp_path, monkeypatch):
    table = pa.Table.from_pylist(clip_rows(samples_dir), schema=CLIP_SPLIT)
    ctx = PartContext(run_dir=str(tmp_path), part=0)
    stage = prompt_stage.Prompt(prompt_stage.Config())
    stage.check()
    out = stage.process_table(table, ctx).to_pylist()
    by_id = {r["id"]: r for r in out}
    assert [r["id"] for r in out] == table.column("id").to_pylist()
    assert by_id["silent-0"]["status"] == "dropped" and by_id["silent-0"]["reason"] == "no_words"
    answered = [r for r in out if r["id"] != "silent-0"]
    for row in answered:   # the grammar holds the model to the schema: no bad_reply
        assert (row["status"], row["reason"]) in (("ok", None), ("dropped", "prompt: NO")), row["reason"]
        assert row["prompt_verdict"] in ("YES", "NO") and row["prompt_requests"] == 1
        assert row["prompt_tokens"] > 50 and row["completion_tokens"] > 0 and row["prompt_cost_usd"] == 0
        if row["status"] == "ok":
            assert row["query"].strip()
        assert row["words"] == by_id[row["id"]]["words"]   # pass-through: the clip's columns carried on
    replies = [json.loads(line) for line in
               (tmp_path / "prompt" / "_replies" / "part-00000" / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == len(answered) and all(r["backend"] == "local" for r in replies)

    # a second run answers from the reply cache without loading the model
    monkeypatch.setattr(prompt_client, "make_backend", lambda *a: pytest.fail("the model was loaded again"))
    again = prompt_stage.Prompt(prompt_stage.Config()).process_table(table, ctx).to_pylist()
    assert [(r["status"], r["query"]) for r in again] == [(r["status"], r["query"]) for r in out]
    assert all(r["prompt_requests"] == 0 and r["prompt_cached"] == 1 for r in again if r["id"] != "silent-0")
