"""Configuration fails before the run with a message that says what to change; the source reader
turns every bad row into a row; ids follow their rules."""
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests import ids
from pipeline import config, source
from pipeline.config import ConfigError

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_profile_loads_with_overrides():
    cfg = config.load("pretrain", config.parse_overrides(["clip_split.max_gap=5", "run.part_size=7",
                                                          "metadata_filter.languages=en,fr"]))
    assert cfg.stage_configs["clip_split"].max_gap == 5.0
    assert isinstance(cfg.stage_configs["clip_split"].max_gap, float)
    assert cfg.run.part_size == 7
    assert cfg.stage_configs["metadata_filter"].languages == ("en", "fr")
    assert cfg.stages == ("metadata_filter", "download", "caption_words", "clip_split", "lm_filter",
                          "talking_head", "shard")


@pytest.mark.parametrize("override, message", [
    ("clip_split.max_gapp=5", "valid keys"),
    ("clip_split.max_gap=abc", "expected a number"),
    ("clip_split.mode=weird", "mode"),
    ("nosuchstage.x=1", "not stages of this profile"),
    ("run.part_size=0", "part_size"),
    ("metadata_filter.min_duration=900", "min_duration"),
    ("clip_split=5", "SECTION.KEY=VALUE"),
])
def test_bad_config_is_refused_with_a_message(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load("pretrain", config.parse_overrides([override]))


def test_stage_hash_changes_with_config_only():
    a = config.load("pretrain")
    b = config.load("pretrain", config.parse_overrides(["clip_split.min_span=40"]))
    assert config.stage_hash(a.stage("clip_split")) != config.stage_hash(b.stage("clip_split"))
    assert config.stage_hash(a.stage("download")) == config.stage_hash(b.stage("download"))


def test_cli_reports_config_errors_before_running(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    bad = cli("run", "pretrain", "--set", "clip_split.nope=1", "--run", str(tmp_path / "r"))
    assert bad.returncode == 2 and "valid keys" in bad.stderr and not (tmp_path / "r").exists()
    missing = cli("run", "pretrain", "--source", str(tmp_path / "none.jsonl"), "--run", str(tmp_path / "r"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    only = cli("run", "pretrain", "--only", "asr", "--run", str(tmp_path / "r"))
    assert only.returncode == 2 and "not a stage" in only.stderr
    profile = cli("run", "nosuchprofile")
    assert profile.returncode == 2 and "known profiles" in profile.stderr


def test_source_rows_never_silently_dropped(tmp_path):
    lines = [
        json.dumps({"url": "https://www.youtube.com/watch?v=dQw4w9WgXcQ", "title": "a"}),
        '{"url": "broken',
        json.dumps({"title": "no url"}),
        "",
        json.dumps({"url": "https://youtu.be/dQw4w9WgXcQ"}),
        json.dumps({"url": "/videos/talk.mp4", "id": "my.talk"}),
        json.dumps([1, 2]),
    ]
    path = tmp_path / "src.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows = source.read_source(str(path))
    assert [r["source_row"] for r in rows] == [0, 1, 2, 3, 4, 5]  # blank lines are not rows
    assert rows[0]["id"] == "dQw4w9WgXcQ" and rows[0]["parse_error"] is None
    assert rows[1]["parse_error"] == "not a JSON object" and rows[1]["raw"] == '{"url": "broken'
    assert rows[2]["parse_error"] == "no url"
    assert rows[3]["parse_error"].startswith("duplicate id")
    assert rows[4]["id"] == "my_talk" and "." not in rows[4]["id"]
    assert rows[5]["parse_error"] == "not a JSON object"
    parts = source.split_parts(rows, 4)
    assert [p.num_rows for p in parts] == [4, 2]
    assert source.read_source(str(path), limit=2) == rows[:2]


def test_source_parquet_and_csv(tmp_path):
    table = pa.table({"url": ["/a.mp4", "/b.mp4"], "title": ["A", "B"], "duration": [31.0, None]})
    pq.write_table(table, tmp_path / "s.parquet")
    (tmp_path / "s.csv").write_text("url,title,categories\n/a.mp4,A,\"[\"\"Education\"\"]\"\n,B,\n")
    prows = source.read_source(str(tmp_path / "s.parquet"))
    assert [json.loads(r["raw"])["title"] for r in prows] == ["A", "B"]
    crows = source.read_source(str(tmp_path / "s.csv"))
    assert crows[0]["parse_error"] is None and crows[1]["parse_error"] == "no url"
    with pytest.raises(ValueError, match="expected a file ending"):
        source.check_source(str(tmp_path / "s.txt"))


def test_ids_have_no_dots_and_recognise_youtube():
    assert ids.youtube_id("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1s") == "dQw4w9WgXcQ"
    assert ids.youtube_id("https://youtube.com/shorts/dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert ids.youtube_id("dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert ids.youtube_id("https://example.com/watch?v=dQw4w9WgXcQ") is None
    assert ids.youtube_id("/local/file.mp4") is None
    assert ids.video_id("http://h/a.b.mp4").startswith("u") and "." not in ids.video_id("http://h/a.b.mp4")
    assert ids.clip_id("vid", 12.3456, 45.6) == "vid_00012346_00045600"


def test_paper_profiles_name_the_papers_models():
    sft = config.load("paper-sft")
    assert sft.stage_configs["asr"].model == "large-v3-turbo" and sft.stage_configs["asr"].device == "cuda"
    assert sft.stage_configs["lm_filter"].model == "Qwen/Qwen2-1.5B-Instruct"
    assert sft.stage_configs["lm_filter"].max_loss == 5.0
    pre = config.load("paper-pretrain")
    assert pre.stage_configs["talking_head"].model == "Qwen/Qwen2-VL-2B-Instruct"
    assert pre.stage_configs["lm_filter"].max_loss == 6.5
    assert config.load("pretrain").stage_configs["lm_filter"].max_loss == 6.5
    assert config.load("sft").stage_configs["lm_filter"].max_loss == 5.0


def test_missing_gpu_backend_fails_before_the_run(tmp_path):
    from pipeline import runner

    cfg = config.load("paper-pretrain", config.parse_overrides([f"run.dir={tmp_path / 'r'}"]))
    with pytest.raises(ConfigError, match="vllm"):
        runner.prepare(cfg, None, None)
    assert not (tmp_path / "r").exists()
