"""`python -m pipeline export RUN OUT --format livecc`: LiveCC's JSONL, read back by its byte offsets."""
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from manifests.schemas import CLIP_SPLIT, SHARD
from pipeline.config import ConfigError
from pipeline.store import RunStore
from training.livecc_jsonl import LiveCCJsonl, export_livecc, read_offsets

ROOT = Path(__file__).resolve().parent.parent


def clip(clip_id: str, words: list[tuple[float, float, str]], status: str = "ok", **extra) -> dict:
    return {"id": clip_id, "status": status, "reason": None if status == "ok" else "x", "clip_id": clip_id,
            "video_id": clip_id.split("_")[0], "start": words[0][0], "end": words[-1][1],
            "words": [{"start": s, "end": e, "word": w} for s, e, w in words], "previous": "", "title": "t",
            "category": "Sports", "media_path": f"media/{clip_id.split('_')[0]}.mp4", "word_count": len(words),
            "span": words[-1][1] - words[0][0], "wps": 1.0, **extra}


def write_part(store: RunStore, stage: str, part: int, table: pa.Table) -> None:
    store.write_manifest(stage, part, table)
    store.write_marker(stage, part, {"stage": stage, "part": part})


@pytest.fixture
def run(tmp_path) -> Path:
    """A finished run of clip_split -> shard: three ok clips (one with non-ASCII text), one dropped, one
    ok clip whose cut failed in shard."""
    store = RunStore(str(tmp_path / "run"))
    store.write_json("run.json", {"stages": ["clip_split", "shard"], "parts": 2})
    clips = [
        [clip("vb_00001000_00005000", [(1.0, 1.5, "Zwölf"), (2.0, 5.0, "Grüße — naïve café")], title="Ünïcode ✓"),
         clip("va_00000000_00004000", [(0.0, 0.5, "hello"), (3.5, 4.0, "world")], previous="before this")],
        [clip("vc_00000000_00002000", [(0.0, 2.0, "dropped")], status="dropped"),
         clip("vd_00000000_00003000", [(0.0, 3.0, "uncut")]),
         clip("ve_00002000_00009000", [(2.0, 2.4, "last"), (8.6, 9.0, "words")])],
    ]
    for part, rows in enumerate(clips):
        write_part(store, "clip_split", part, pa.Table.from_pylist(rows, schema=CLIP_SPLIT))
        shard_rows = [{"id": r["id"], "status": "error" if r["clip_id"].startswith("vd") else "ok",
                       "reason": None, "clip_id": r["clip_id"]} for r in rows if r["status"] == "ok"]
        write_part(store, "shard", part, pa.Table.from_pylist(shard_rows, schema=SHARD))
    return tmp_path / "run"


def test_export_writes_the_kept_clips_with_byte_offsets(run, tmp_path):
    out = tmp_path / "out" / "set.jsonl"
    result = export_livecc(str(run), str(out))
    assert result.rows == 3 and result.clips_stage == "clip_split"
    data = out.read_bytes()
    offsets = json.loads(data.rstrip(b"\n").rsplit(b"\n", 1)[1])
    assert offsets == read_offsets(str(out))
    lines = data.split(b"\n")[:-2]
    assert offsets == [sum(len(line) + 1 for line in lines[:i]) for i in range(len(lines))]
    rows = [json.loads(line) for line in lines]
    ids = [Path(r[0]["content"][0]["video"]).stem for r in rows]
    assert ids == ["va", "vb", "ve"]          # clip-id order; dropped and uncut clips are not exported
    dataset = LiveCCJsonl(str(out))
    assert len(dataset) == 3 and [dataset[i] for i in range(3)] == rows == list(dataset)
    user, assistant = dataset[1]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    video, text = user["content"]
    assert video == {"type": "video", "video": str(run / "media" / "vb.mp4"), "video_start": 1.0, "video_end": 5.0}
    assert text == {"type": "text", "text": "", "previous": "", "title": "Ünïcode ✓", "category": "Sports"}
    assert assistant["content"] == [{"type": "text_stream",
                                     "text_stream": [[1.0, 1.5, "Zwölf"], [2.0, 5.0, "Grüße — naïve café"]]}]
    assert dataset[0][0]["content"][1]["previous"] == "before this"


def test_export_is_reproducible_atomic_and_can_keep_paths_relative(run, tmp_path):
    out = tmp_path / "set.jsonl"
    export_livecc(str(run), str(out))
    first = out.read_bytes()
    export_livecc(str(run), str(out))
    assert out.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "set.jsonl"]   # no temporaries left
    export_livecc(str(run), str(out), relative=True)
    assert LiveCCJsonl(str(out))[0][0]["content"][0]["video"] == "media/va.mp4"


def test_the_sft_query_becomes_the_user_text(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    store.write_json("run.json", {"stages": ["clip_split", "prompt"], "parts": 1})
    row = clip("va_00000000_00004000", [(0.0, 0.5, "hello"), (3.5, 4.0, "world")])
    schema = pa.schema(list(CLIP_SPLIT) + [pa.field("query", pa.string())])
    write_part(store, "prompt", 0, pa.Table.from_pylist([{**row, "query": "Comment live."}], schema=schema))
    export_livecc(str(tmp_path / "run"), str(tmp_path / "x.jsonl"))
    assert LiveCCJsonl(str(tmp_path / "x.jsonl"))[0][0]["content"][1]["text"] == "Comment live."


def test_export_command_and_its_errors(run, tmp_path):
    out = tmp_path / "cli.jsonl"
    done = subprocess.run([sys.executable, "-m", "pipeline", "export", str(run), str(out), "--format", "livecc"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 clips" in done.stdout and len(LiveCCJsonl(str(out))) == 3
    with pytest.raises(ConfigError, match="not a run folder"):
        export_livecc(str(tmp_path / "nothing"), str(out))
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="byte offsets"):
        read_offsets(str(tmp_path / "bad.jsonl"))
