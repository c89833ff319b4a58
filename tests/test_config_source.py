"""Configuration fails before the run with a message that says what to change; the source reader
turns every bad row into a row; ids follow their rules."""
import json
import os
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
    assert cfg.stages == ("metadata_filter", "download", "caption_words", "transcript_language", "clip_split",
                          "lm_filter", "talking_head", "shard")


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


def test_stages_override_swaps_in_a_stage_whose_section_the_profile_holds():
    swapped = ["metadata_filter", "download", "asr", "clip_split", "lm_filter", "talking_head", "prompt",
               "transcript_language", "shard"]
    cfg = config.load("sft", config.parse_overrides([f"stages=[{', '.join(swapped)}]"]))
    assert list(cfg.stages) == swapped and cfg.stage_configs["talking_head"].max_score == 0.3
    assert "active_speaker" not in cfg.stage_configs
    assert config.load("sft").stages[5] == "active_speaker"
    assert config.parse_overrides(["stages=a, b"]) == {"stages": ["a", "b"]}
    # the section of a stage the profile does not run is still checked
    with pytest.raises(ConfigError, match="talking_head: unknown key"):
        config.load("sft", config.parse_overrides(["talking_head.max_scor=0.2"]))
    with pytest.raises(ConfigError, match="stages="):
        config.parse_overrides(["stages=[]"])
    with pytest.raises(ConfigError, match="unknown stage 'nosuch'"):
        config.load("sft", config.parse_overrides(["stages=[metadata_filter, nosuch]"]))


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
    yaml_value = cli("run", "pretrain", "--set", "download.caption_langs=[", "--run", str(tmp_path / "r"))
    assert yaml_value.returncode == 2 and "not valid YAML" in yaml_value.stderr
    assert "Traceback" not in yaml_value.stderr and len(yaml_value.stderr.strip().splitlines()) == 1
    no_dir = cli("run", "pretrain", "--run", "")
    assert no_dir.returncode == 2 and "run.dir" in no_dir.stderr and "Traceback" not in no_dir.stderr
    (tmp_path / "empty.csv").write_text("")
    empty = cli("run", "pretrain", "--source", str(tmp_path / "empty.csv"), "--run", str(tmp_path / "r2"))
    assert empty.returncode == 2 and "is empty" in empty.stderr and "Traceback" not in empty.stderr
    (tmp_path / "a_file").write_text("x")
    not_dir = cli("run", "pretrain", "--run", str(tmp_path / "a_file"))
    assert not_dir.returncode == 2 and "not a folder" in not_dir.stderr and "Traceback" not in not_dir.stderr
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    broken = cli("run", "pretrain", "--source", str(tmp_path / "broken.parquet"), "--run", str(tmp_path / "r3"))
    assert broken.returncode == 2 and "cannot be read" in broken.stderr and "Traceback" not in broken.stderr


def _hold_lock(run_dir: str, start_at: float, results) -> None:
    import time

    from pipeline import runner
    from pipeline.store import RunStore

    time.sleep(max(0.0, start_at - time.time()))
    try:
        runner.take_lock(RunStore(run_dir), f"run-{os.getpid()}")
    except config.ConfigError:
        results.put("refused")
        return
    results.put("took")
    time.sleep(1.0)                        # hold it while the other driver looks


def test_two_drivers_at_the_same_instant_never_both_get_the_lock(tmp_path):
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("fork")
    for trial in range(6):
        run_dir = str(tmp_path / f"r{trial}")
        results = ctx.Queue()
        start_at = time.time() + 0.5
        procs = [ctx.Process(target=_hold_lock, args=(run_dir, start_at, results)) for _ in range(2)]
        for p in procs:
            p.start()
        outcome = sorted(results.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert outcome == ["refused", "took"], (trial, outcome)


def test_source_rows_never_silently_dropped(tmp_path):
    lines = [
        json.dumps({"url": "https://www.youtube.com/watch?v=dQw4w9WgXcQ", "title": "a"}),
        '{"url": "broken',
        json.dumps({"title": "no url"}),
        "",
        json.dumps({"url": "https://youtu.be/dQw4w9WgXcQ"}),
        json.dumps({"url": "/videos/talk.mp4", "id": "my.talk"}),
        json.dumps([1, 2]),
        "[" * 100_000 + "]" * 100_000,
    ]
    path = tmp_path / "src.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows = source.read_source(str(path))
    assert [r["source_row"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]  # blank lines are not rows
    assert rows[0]["id"] == "dQw4w9WgXcQ" and rows[0]["parse_error"] is None
    assert rows[1]["parse_error"].startswith("not JSON") and rows[1]["raw"] == '{"url": "broken'
    assert rows[2]["parse_error"] == "no url"
    assert rows[3]["parse_error"].startswith("duplicate id")
    assert rows[4]["id"].startswith("my_talk--") and "." not in rows[4]["id"]
    assert rows[4]["source_id"] == "my.talk"
    assert rows[5]["parse_error"] == "not a JSON object"
    assert rows[6]["parse_error"] == "not JSON (nested too deep)"
    parts = source.split_parts(rows, 4)
    assert [p.num_rows for p in parts] == [4, 3]
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


def test_csv_lines_with_extra_or_missing_fields_are_rows(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("\ufeffurl,title,duration\n/a.mp4,A,31\n/b.mp4,B,32,extra\n/c.mp4\n/d.mp4,\"D, the talk\",40\n")
    rows = source.read_source(str(path))
    assert [r["source_row"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["parse_error"] is None and json.loads(rows[0]["raw"])["duration"] == "31"
    assert "4 fields where the header has 3" in rows[1]["parse_error"] and "extra" in rows[1]["raw"]
    assert "1 fields where the header has 3" in rows[2]["parse_error"]
    assert rows[3]["parse_error"] is None and json.loads(rows[3]["raw"])["title"] == "D, the talk"
    assert len({r["id"] for r in rows}) == 4
    huge = tmp_path / "huge.csv"
    huge.write_text("url,title\n/a.mp4," + "t" * (1 << 24) + "x\n/b.mp4,B\n")
    hrows = source.read_source(str(huge))
    assert hrows[0]["parse_error"].startswith("unreadable CSV line") and hrows[1]["parse_error"] is None
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(config.ConfigError, match="is empty"):
        source.read_source(str(tmp_path / "empty.csv"))


def test_cleaned_ids_never_merge_and_stay_short():
    given = ["a/b", "a_b", "日本語", "日本人", "x" * 300, "x" * 301, "-rf", "rf", "my.talk", "my_talk",
             "id--0123456789ab", "Zx9-_", "e\u0301", "\u00e9"]
    made = [ids.video_id("http://h/v.mp4", g) for g in given]
    assert len(set(made)) == len(given)                     # no two source ids merge
    assert made[given.index("a_b")] == "a_b" and made[given.index("Zx9-_")] == "Zx9-_"  # clean ids kept
    for g, m in zip(given, made):
        assert 0 < len(m) <= ids.MAX_ID and not m.startswith("-"), (g, m)
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in m), (g, m)
        assert ids.video_id("http://other/x.mp4", g) == m    # deterministic, from the id alone
    # a clip id of the longest video id still fits a USTAR tar member name with its extension
    assert len(ids.clip_id(made[4], 599.999, 600.0) + "_99.json") <= 100
    # an empty id falls back on the URL and never meets a cleaned non-ASCII id
    assert ids.video_id("http://h/v.mp4", "") not in made


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
    assert sft.stages.index("active_speaker") == sft.stages.index("lm_filter") + 1 and "talking_head" not in sft.stages
    assert sft.stage_configs["active_speaker"].max_ratio == 0.05 and sft.stage_configs["active_speaker"].device == "cuda"
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
