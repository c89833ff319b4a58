"""Clips never outrun their media: the decodable duration of truncated files (media.decodable_duration),
download's `media_duration` / `corrupt_media`, ASR words past the media, shard's `cut_short` and
`bad_key` rows. Media are tiny lavfi files made once per module."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from manifests.schemas import ASR, DOWNLOAD, SHARD, check_table
from pipeline.stage import PartContext
from stages.asr import SAMPLE_RATE, Asr
from stages.download import Download
from stages.lib import media
from stages.shard import Shard
from training import vision
from training.frames import decode_clip

FPS = 25
SECONDS = 10.0
VTT = "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nhello there\n"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)


def _decoded_seconds(path: Path) -> float:
    """The oracle: frames that really decode (a full decode, not the demux pass under test) / fps."""
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "quiet", "-i", str(path), "-map", "0:v:0",
                           "-f", "null", "-", "-progress", "pipe:1"], capture_output=True, text=True)
    frames = [int(line.split("=")[1]) for line in proc.stdout.splitlines() if line.startswith("frame=")]
    return (frames[-1] if frames else 0) / FPS


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    whole = d / "whole.mp4"  # faststart: the index (moov) up front claims all 10 s
    _ffmpeg("-f", "lavfi", "-i", f"testsrc=size=160x120:rate={FPS}",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", str(SECONDS),
            "-c:v", "libx264", "-preset", "ultrafast", "-g", str(FPS), "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "32k", "-movflags", "+faststart", str(whole))
    _ffmpeg("-i", str(whole), "-c", "copy", str(d / "whole.mkv"))
    _ffmpeg("-i", str(whole), "-c", "copy", "-f", "mpegts", str(d / "whole.ts"))
    out = {"mp4": whole}
    for ext in ("mp4", "mkv", "ts"):
        data = (d / f"whole.{ext}").read_bytes()
        out[f"cut_{ext}"] = d / f"cut.{ext}"
        out[f"cut_{ext}"].write_bytes(data[: int(len(data) * 0.4)])
    data = whole.read_bytes()
    mdat = data.index(b"mdat") - 4  # the size field of the media data box
    out["header_only"] = d / "header_only.mp4"
    out["header_only"].write_bytes(data[:mdat])
    rng = np.random.default_rng(0)
    out["garbage"] = d / "garbage.mp4"  # a whole, valid index over random bytes
    out["garbage"].write_bytes(data[: mdat + 8] + rng.integers(0, 256, len(data) - mdat - 8, np.uint8).tobytes())
    return out


# ------------------------------------------------------------------------------ decodable_duration

def test_whole_file(files):
    assert media.decodable_duration(str(files["mp4"])) == pytest.approx(SECONDS, abs=0.05)


@pytest.mark.parametrize("ext", ["mp4", "mkv", "ts"])
def test_truncated_file_gives_what_decodes(files, ext):
    path = files[f"cut_{ext}"]
    claimed = media.probe(str(path)).duration
    got = media.decodable_duration(str(path))
    real = _decoded_seconds(path)
    assert 0.5 < real < 0.6 * SECONDS
    assert got == pytest.approx(real, abs=2.0 / FPS)
    if ext != "ts":  # mp4's index and mkv's header keep claiming the whole length
        assert claimed == pytest.approx(SECONDS, abs=0.1)


@pytest.mark.parametrize("name", ["header_only", "garbage"])
def test_nothing_decodes(files, name):
    with pytest.raises(media.MediaError) as info:
        media.decodable_duration(str(files[name]))
    assert info.value.code == "corrupt_media"
    assert media.probe(str(files[name])).duration == pytest.approx(SECONDS, abs=0.1)  # the header's claim


def test_within_media_mask():
    start = np.array([0.0, 9.0, 10.2, 10.4, 11.0, 12.0])
    end = np.array([1.0, 10.0, 10.5, 10.6, np.nan, 11.0])  # nan: unknown end, the start counts
    keep = media.within_media(start, end, 10.0, 0.5)
    assert keep.tolist() == [True, True, True, False, False, False]
    assert media.within_media(start, end, None, 0.5).all()


# ------------------------------------------------------------------------------ download

def _download_row(vid: str, path: Path) -> dict:
    return {"id": vid, "url": str(path), "title": None, "duration": None, "width": None, "height": None,
            "language": "en", "categories": None, "category": None, "captions": None}


def test_download_records_the_decodable_duration(tmp_path, files):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("cut_mp4", "header_only", "mp4"):
        (src / f"{name}.mp4").write_bytes(files[name].read_bytes())
        (src / f"{name}.en.vtt").write_text(VTT)
    stage = Download(Download.Config())
    ctx = PartContext(run_dir=str(tmp_path / "run"), part=0)
    rows = [stage.process_row(_download_row(name, src / f"{name}.mp4"), ctx)
            for name in ("cut_mp4", "header_only", "mp4")]
    check_table(pa.Table.from_pylist(rows, schema=DOWNLOAD), DOWNLOAD)
    cut, header_only, whole = rows
    assert cut["status"] == "ok", cut["reason"]
    assert cut["media_duration"] == pytest.approx(_decoded_seconds(files["cut_mp4"]), abs=2.0 / FPS)
    assert cut["duration"] == pytest.approx(SECONDS, abs=0.1)  # the container's claim stays metadata
    assert header_only["status"] == "error" and header_only["reason"].startswith("corrupt_media: ")
    assert not (tmp_path / "run" / "media" / "header_only.mp4").exists()
    assert whole["status"] == "ok" and whole["media_duration"] == pytest.approx(SECONDS, abs=0.05)
    again = stage.process_row(_download_row("cut_mp4", src / "cut_mp4.mp4"), ctx)  # reused files
    assert again["attempts"] == 0 and again["media_duration"] == cut["media_duration"]


# ------------------------------------------------------------------------------ asr

def test_asr_drops_and_counts_words_past_the_media():
    stage = Asr(Asr.Config(media_tolerance_s=0.5))
    words = [(0.5, 1.0, "one"), (4.0, 4.5, "two"), (4.9, 5.4, "three"), (5.2, 5.6, "four"), (20.0, 21.0, "five")]
    stage.transcribe = lambda audio: {
        "language": "en", "language_prob": 1.0, "segments": [{"start": 0.5, "end": 21.0, "text": "x"}],
        "words": [{"start": s, "end": e, "word": w, "prob": i / 10} for i, (s, e, w) in enumerate(words)]}
    audio = np.zeros(SAMPLE_RATE * 30, dtype=np.float32)  # the audio track outlasts the 5 s video
    row = {"id": "v", "title": "t", "category": None, "duration": 30.0, "media_path": "media/v.mp4",
           "media_duration": 5.0}
    out = stage._row(row, audio)
    assert out["status"] == "ok", out["reason"]
    assert [w["word"] for w in out["words"]] == ["one", "two", "three"]
    assert out["word_probs"] == [0.0, 0.1, 0.2] and out["words_past_media"] == 2
    late = stage._row({**row, "media_duration": 0.2}, audio)
    assert late["status"] == "dropped" and late["reason"].startswith("past_media")
    unknown = stage._row({**row, "media_duration": None}, audio)  # manifests from before the column
    assert len(unknown["words"]) == 5 and unknown["words_past_media"] == 0
    check_table(pa.Table.from_pylist([out, late, unknown], schema=ASR), ASR)


# ------------------------------------------------------------------------------ shard

def _clip(clip_id: str, start: float, end: float, media_path: str) -> dict:
    return {"id": "v", "clip_id": clip_id, "video_id": "v", "start": start, "end": end,
            "words": [{"start": start, "end": end, "word": "hi"}], "previous": "", "title": "t",
            "category": None, "media_path": media_path}


def _shard(run: Path, rows: list[dict], **cfg) -> list[dict]:
    out = Shard(Shard.Config(**cfg)).process(rows, PartContext(run_dir=str(run), part=0))
    check_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "_traceback"} for r in out],
                                     schema=SHARD), SHARD)
    return out


@pytest.mark.parametrize("fmt", ["frames", "mp4"])
def test_shard_errors_a_cut_short_clip_and_a_bad_key_only(tmp_path, files, fmt):
    run = tmp_path / "run"
    (run / "media").mkdir(parents=True)
    (run / "media" / "v.mp4").write_bytes(files["mp4"].read_bytes())
    (run / "media" / "garbage.mp4").write_bytes(files["garbage"].read_bytes())
    rows = [_clip("v_01000_04000", 1.0, 4.0, "media/v.mp4"),
            _clip("v_02000_10300", 2.0, 10.3, "media/v.mp4"),   # 0.3 s past the end: within tolerance
            _clip("v_05000_38400", 5.0, 38.4, "media/v.mp4"),   # the issue: words far past the video
            _clip("v_12000_20000", 12.0, 20.0, "media/v.mp4"),  # starts after the media ends
            _clip("v_" + "x" * 120, 1.0, 2.0, "media/v.mp4"),   # too long for a USTAR name
            _clip("v_caf\u00e9", 1.0, 2.0, "media/v.mp4"),       # not ASCII
            _clip("v_03000_04000", 3.0, 4.0, "media/missing.mp4"),
            _clip("v_00000_03000", 0.0, 3.0, "media/garbage.mp4")]
    out = {r["clip_id"]: r for r in _shard(run, rows, format=fmt)}
    ok_keys = ["v_01000_04000", "v_02000_10300"]
    assert [k for k, r in sorted(out.items()) if r["status"] == "ok"] == ok_keys
    assert out["v_01000_04000"]["video_duration"] == pytest.approx(3.0, abs=0.1)
    assert out["v_05000_38400"]["reason"].startswith("cut_short: ")
    assert out["v_05000_38400"]["video_duration"] == pytest.approx(5.0, abs=0.1)
    assert out["v_12000_20000"]["reason"].startswith("cut_short: ")
    assert out["v_" + "x" * 120]["reason"].startswith("bad_key: ")
    assert out["v_caf\u00e9"]["reason"].startswith("bad_key: ")
    assert out["v_03000_04000"]["status"] == "error"  # any failure of one clip is its own row
    assert out["v_00000_03000"]["status"] == "error"

    (tar_name,) = {r["shard"] for r in out.values() if r["status"] == "ok"}
    tar_bytes = (run / "shards" / tar_name).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = tar.getnames()
        samples = {k: json.loads(tar.extractfile(f"{k}.json").read()) for k in ok_keys}
        if fmt == "frames":
            frames = {k: [tar.extractfile(n).read() for n in names if n.startswith(k + ".0")] for k in ok_keys}
    index = pq.read_table(run / "shards" / tar_name.replace(".tar", ".parquet")).to_pylist()
    assert [r["key"] for r in index] == ok_keys
    if fmt == "mp4":
        assert names == [f"{k}.{ext}" for k in ok_keys for ext in ("json", "mp4")]
        assert all(r["frames"] is None for r in index)
    else:
        for key in ok_keys:   # the 2 fps rule's frames of the source, at the packer's size
            record, row = samples[key], out[key]
            clip = decode_clip(str(files["mp4"]), record["video_start"], record["video_end"])
            assert record["frame_times"] == clip.times and len(clip.times) % 2 == 0
            assert row["frames"] == len(frames[key]) == len(clip.times)
            assert [r["frames"] for r in index if r["key"] == key] == [row["frames"]]
            assert names[names.index(f"{key}.json") + 1:][:row["frames"]] == \
                [f"{key}.{i:03d}.jpg" for i in range(row["frames"])]
            size = vision.clip_frame_size(120, 160, len(clip.times))
            images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in frames[key]]
            assert record["frame_size"] == list(size) and all(i.shape == (*size, 3) for i in images)
            want = vision.resize_frames(clip.frames, size).astype(int)
            assert np.abs(np.stack(images).astype(int) - want).mean() < 3   # JPEG at quality 90

    _shard(run, list(reversed(rows)), format=fmt)  # a rerun writes the same bytes
    assert (run / "shards" / tar_name).read_bytes() == tar_bytes


def test_stream_copied_cut_past_the_end_is_short(tmp_path, files):
    rows = [_clip("v_01000_04000", 1.0, 4.0, str(files["mp4"])),
            _clip("v_05000_38400", 5.0, 38.4, str(files["mp4"]))]
    good, short = _shard(tmp_path, rows, format="mp4", reencode=False)
    assert good["status"] == "ok", good["reason"]
    assert short["status"] == "error" and short["reason"].startswith("cut_short: ")
