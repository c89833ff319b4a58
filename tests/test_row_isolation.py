"""One bad row never costs its neighbours: a part holding one poisonous source row between two innocent
ones, for each kind of poison, runs through Ray from the source to the shards; the innocents of every
part reach the shards (read back with webdataset) and every poisonous row is accounted for with a
status and a reason. Plus the engine's own net: rows whose values do not fit the schema."""
import json
import math

import pyarrow as pa
import pytest
import webdataset as wds

from manifests.schemas import METADATA_FILTER
from pipeline.stage import rows_to_table
from tests.support.runs import manifest, run_pretrain

PROFILE = """\
stages: [metadata_filter, download, caption_words, transcript_language, clip_split, shard]
run: {part_size: 3}
metadata_filter: {fill_missing: false}
download: {concurrency: 2}
shard: {format: mp4, reencode: false}   # the video-file format, stream-copied
"""


def _poisons(samples_dir, tmp_path) -> dict[str, dict]:
    """name -> fields that replace or add to an innocent row's fields."""
    garbage = tmp_path / "garbage.en.vtt"
    garbage.write_bytes(bytes(range(256)) * 40)
    long_word = tmp_path / "longword.en.vtt"
    text = (samples_dir / "talk_normal.en.vtt").read_text()
    long_word.write_text(text.replace("gears", "g" * 10_000, 1))
    return {
        "huge_int": {"width": 10**30},
        "huge_negative": {"height": -(10**40)},
        "nested_title": {"title": {"nested": [1, {"x": [2, 3]}]}},
        "list_language": {"language": ["en", "de"]},
        "nan_duration": {"duration": math.nan},
        "inf_duration": {"duration": math.inf},
        "bytes_title": {"title": "__BYTES__"},          # replaced by invalid UTF-8 bytes in the file
        "long_title": {"title": "t" * 10_000},
        "surrogate_title": {"title": "\ud800 lone surrogate"},   # valid JSON, no UTF-8 form
        "long_id": {"id": "x" * 300},
        "object_id": {"id": {"a": [1, 2]}},
        "number_captions": {"captions": 12345},
        "long_url": {"url": "/nowhere/" + "u" * 10_000 + ".mp4"},
        "garbage_captions": {"captions": str(garbage)},
        "long_word_captions": {"captions": str(long_word)},
        "long_categories": {"categories": ["Education", "c" * 10_000]},
    }


@pytest.fixture(scope="module")
def poisoned_run(tmp_path_factory, samples_dir, ray_local):
    tmp = tmp_path_factory.mktemp("poison")
    innocent = {"url": str(samples_dir / "talk_normal.mp4"), "captions": str(samples_dir / "talk_normal.en.vtt"),
                "title": "How Bicycle Gears Work", "language": "en", "categories": ["Education"],
                "duration": 75.0, "width": 854, "height": 480}
    poisons = _poisons(samples_dir, tmp)
    lines: list[bytes] = []
    for name, fields in poisons.items():
        poison = {**innocent, "id": f"poison_{name}", **fields}
        for row in ({**innocent, "id": f"{name}_a"}, poison, {**innocent, "id": f"{name}_b"}):
            line = json.dumps(row).encode()   # NaN and Infinity as Python writes them
            lines.append(line.replace(b"__BYTES__", b"caf\xe9 \xff\xfe title"))
    source = tmp / "source.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    profile = tmp / "isolation.yaml"
    profile.write_text(PROFILE)
    run_dir = tmp / "run"
    result = run_pretrain(run_dir, source, profile=str(profile))
    return run_dir, result, poisons


def test_innocents_reach_the_shards_whatever_their_neighbour_holds(poisoned_run):
    run_dir, result, poisons = poisoned_run
    assert result.ok, result.failed                   # no part failed as a whole
    innocents = {f"{name}_{side}" for name in poisons for side in "ab"}
    shards = manifest(run_dir, "shard")
    sharded = set(shards[shards.status == "ok"].video_id)
    assert innocents <= sharded, sorted(innocents - sharded)
    keys = set()
    for sample in wds.WebDataset(sorted(str(p) for p in (run_dir / "shards").glob("*.tar")), shardshuffle=False):
        meta = json.loads(sample["json"])
        assert meta["clip_id"] == sample["__key__"] and len(sample["mp4"]) > 1000
        keys.add(meta["video_id"])
    assert innocents <= keys


def test_every_poisonous_row_is_accounted_for(poisoned_run):
    run_dir, _, poisons = poisoned_run
    source = manifest(run_dir, "source")
    assert len(source) == 3 * len(poisons)
    decided: dict[str, tuple[str, str]] = {}
    for stage in ("metadata_filter", "download", "caption_words", "transcript_language", "clip_split", "shard"):
        df = manifest(run_dir, stage)
        key = "video_id" if "video_id" in df.columns else "id"
        for vid, status, reason in zip(df[key], df.status, df.reason):
            if status != "ok" or stage == "shard":
                decided.setdefault(vid, (status, reason))
    by_source_id = dict(zip(source.source_id, source.id))
    for name, fields in poisons.items():
        vid = by_source_id[str(fields.get("id", f"poison_{name}"))]
        assert vid in decided, (name, vid)
    md = manifest(run_dir, "metadata_filter").set_index("source_id")
    for name in ("huge_int", "huge_negative", "nested_title", "list_language", "nan_duration", "inf_duration"):
        row = md.loc[f"poison_{name}"]
        assert row.status == "error" and row.reason.startswith("malformed_row"), (name, row.reason)
    surrogate = md.loc["poison_surrogate_title"]   # caught by the engine when the part is written
    assert surrogate.status == "error" and surrogate.reason.startswith("unwritable_row: title")
    long_id = md.loc["x" * 300]
    assert len(long_id.id) <= 64 and long_id.status == "ok"
    # the long id and the 10 kB title are harmless: they are sharded like the innocents
    shards = manifest(run_dir, "shard")
    assert long_id.id in set(shards[shards.status == "ok"].video_id)
    assert md.loc["poison_long_title", "status"] == "ok"


def test_unwritable_values_become_error_rows_of_their_own():
    rows = [{"id": f"r{k}", "status": "ok", "reason": None, "url": "u", "width": 640} for k in range(9)]
    rows[2]["width"] = 10**30
    rows[5]["title"] = {"nested": 1}
    rows[6]["title"] = b"\xff\xfe"
    rows[7]["id"] = 7
    table = rows_to_table(rows, METADATA_FILTER)
    got = table.to_pylist()
    assert [r["status"] for r in got] == ["ok", "ok", "error", "ok", "ok", "error", "error", "error", "ok"]
    assert got[2]["reason"].startswith("unwritable_row: width") and got[2]["url"] == "u"
    assert got[5]["reason"].startswith("unwritable_row: title") and got[7]["id"] == "7"
    assert [r["width"] for r in got if r["status"] == "ok"] == [640] * 5


def test_caption_words_drops_words_past_the_decodable_media(tmp_path):
    from pipeline.stage import PartContext
    from stages.caption_words import CaptionWords, Config

    cues = "".join(f"{k + 1}\n00:00:{k:02d},000 --> 00:00:{k + 1:02d},000\nword{k} next{k}\n\n" for k in range(40))
    (tmp_path / "v.en.srt").write_text(cues)
    base = {"status": "ok", "reason": None, "title": "T", "captions_path": str(tmp_path / "v.en.srt"),
            "captions_format": "srt", "media_path": "m.mp4"}
    table = pa.Table.from_pylist([{**base, "id": "short", "media_duration": 1.0},
                                  {**base, "id": "half", "media_duration": 20.0},
                                  {**base, "id": "unknown", "media_duration": None}])
    out = {r["id"]: r for r in CaptionWords(Config(min_distinct_words=0)).process_table(
        table, PartContext(str(tmp_path), 0)).to_pylist()}
    assert out["unknown"]["word_count"] == 80 and out["unknown"]["words_past_media"] == 0
    assert max(w["end"] for w in out["half"]["words"]) <= 20.5
    assert out["half"]["word_count"] + out["half"]["words_past_media"] == 80
    assert out["half"]["words_past_media"] == 39         # every word ending after 20.5 s
    assert out["short"]["word_count"] == 3 and out["short"]["cues"] == 40
    none = CaptionWords(Config(min_distinct_words=0, media_tolerance_s=0.0)).process_table(
        pa.Table.from_pylist([{**base, "id": "none", "media_duration": 0.4}]), PartContext(str(tmp_path), 0))
    row = none.to_pylist()[0]
    assert row["status"] == "dropped" and row["reason"].startswith("no_words: all 80 words past the media end")
