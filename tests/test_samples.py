"""The sample corpus (synth.corpus) and the loopback HTTP fixture server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from synth import corpus as samples
from tests.support.http_server import LoopbackServer

needs_media_tools = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None or shutil.which("espeak-ng") is None,
    reason="ffmpeg/ffprobe/espeak-ng not installed (Debian packages ffmpeg, espeak-ng; make setup does it)",
)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    if shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None:
        pytest.skip("ffmpeg/espeak-ng not installed (make setup installs them)")
    out = tmp_path_factory.mktemp("samples") / "corpus"
    source = samples.build_samples(out)
    assert source == out.resolve() / "source.jsonl"
    return out.resolve()


@pytest.fixture(scope="session")
def expected(corpus) -> dict:
    return json.loads((corpus / "expected.json").read_text())


def _probe(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True, text=True,
    )


def _ydl_opts(out: Path, **extra) -> dict:
    return {"writesubtitles": True, "subtitleslangs": ["en", "de"], "outtmpl": str(out / "%(id)s.%(ext)s"),
            "quiet": True, "no_warnings": True, "noprogress": True, **extra}


# ----------------------------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------------------------


@needs_media_tools
def test_second_build_is_a_no_op(corpus):
    stamp = (corpus / "source.jsonl").stat().st_mtime_ns
    t0 = time.monotonic()
    assert samples.build_samples(corpus) == corpus / "source.jsonl"
    assert time.monotonic() - t0 < 1.0
    assert (corpus / "source.jsonl").stat().st_mtime_ns == stamp
    assert not [p for p in corpus.parent.iterdir() if ".tmp-" in p.name], "temporary build folder left"


@needs_media_tools
def test_media_decode_with_intended_duration_and_streams(corpus, expected):
    videos = expected["videos"]
    assert len(videos) == 12
    for name, info in videos.items():
        if name == "corrupt":
            continue
        proc = _probe(corpus / f"{name}.mp4")
        assert proc.returncode == 0, (name, proc.stderr)
        meta = json.loads(proc.stdout)
        assert abs(float(meta["format"]["duration"]) - info["duration"]) <= 0.5, name
        kinds = [s["codec_type"] for s in meta["streams"]]
        video = next(s for s in meta["streams"] if s["codec_type"] == "video")
        assert video["height"] >= 480 and video["width"] == 640, name
        assert ("audio" in kinds) == info["has_audio"], name
        size_kb = (corpus / f"{name}.mp4").stat().st_size / 1024
        budget = 1000 if name == "talking_face" else 400   # a real face: a richer picture
        assert size_kb <= budget * info["duration"] / 60 + 50, (name, size_kb)
    assert not videos["silent_video"]["has_audio"] and videos["quiet_room"]["has_audio"]


@needs_media_tools
def test_corrupt_mp4_fails_ffprobe(corpus):
    proc = _probe(corpus / "corrupt.mp4")
    assert proc.returncode != 0
    assert (corpus / "corrupt.en.vtt").is_file()


@needs_media_tools
def test_source_jsonl_rows(corpus, expected):
    lines = (corpus / "source.jsonl").read_text().splitlines()
    rows, bad = [], []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            bad.append(i)
    assert len(bad) == 1 and 0 < bad[0] < len(lines) - 1, "exactly one malformed line, in the middle"
    no_url = [r for r in rows if "url" not in r]
    assert [r["id"] for r in no_url] == ["no_url_row"]
    videos = {r["id"]: r for r in rows if "url" in r}
    assert set(videos) == set(expected["videos"])
    for name, row in videos.items():
        assert Path(row["url"]).is_file(), name
        assert ("captions" in row) == (expected["videos"][name]["captions"] is not None), name
        if "captions" in row:
            assert Path(row["captions"]).is_file()
    assert videos["auto_captions"]["captions"].endswith("auto_captions.en.vtt")
    assert videos["talk_german"]["language"] == "de"
    with_meta = [r for r in videos.values() if "duration" in r]
    assert 3 <= len(with_meta) <= 7, "about half the rows carry duration/width/height"


@needs_media_tools
def test_http_template_and_http_source(corpus):
    template = (corpus / "source_http.template.jsonl").read_text()
    assert "{base}/talk_normal.html" in template and '"captions":' not in template
    path = samples.http_source(corpus, "http://127.0.0.1:9/")
    text = path.read_text()
    assert "{base}" not in text and "http://127.0.0.1:9/talk_normal.html" in text


@needs_media_tools
def test_expected_outcomes_hold_under_pretraining_rules(expected):
    v = expected["videos"]
    assert v["talk_normal"]["measured"]["clips_kept"] == 1
    assert v["talk_gap"]["measured"]["clips_kept"] == 2
    assert [c["verdict"] for c in v["talk_slow"]["measured"]["clips"]] == ["too_slow"]
    assert [c["verdict"] for c in v["talk_fast"]["measured"]["clips"]] == ["too_fast"]
    assert v["music_cues"]["measured"]["clips_kept"] == 1
    assert v["auto_captions"]["measured"]["clips_kept"] == 1
    assert v["auto_captions"]["measured_inline_words"]["clips_kept"] == 1
    assert any("[Music]" == c[2] for c in v["music_cues"]["cues"])
    assert any("[Applause]" == c[2] for c in v["music_cues"]["cues"])
    for name in ("talk_normal", "talk_gap", "music_cues", "auto_captions"):
        for clip in v[name]["measured"]["clips"]:  # comfortably inside the thresholds
            assert clip["span"] >= 35 and 1.5 <= clip["words_per_s"] <= 3.5, (name, clip)
    assert v["talk_slow"]["measured"]["clips"][0]["words_per_s"] <= 0.7
    assert v["talk_slow"]["measured"]["max_gap_within_clips"] <= 2.6
    assert v["talk_fast"]["measured"]["clips"][0]["words_per_s"] >= 5.0


@needs_media_tools
def test_caption_files_match_expected_cues(corpus, expected):
    vtt = (corpus / "talk_normal.en.vtt").read_text()
    assert vtt.startswith("WEBVTT\n")
    cues = expected["videos"]["talk_normal"]["cues"]
    assert vtt.count(" --> ") == len(cues)
    assert cues[0][2] in vtt and cues[-1][2] in vtt
    srt = (corpus / "talk_gap.en.srt").read_text()
    assert srt.startswith("1\n00:00:00,500 --> ")
    gap_cues = expected["videos"]["talk_gap"]["cues"]
    gaps = [b[0] - a[1] for a, b in zip(gap_cues, gap_cues[1:])]
    assert max(gaps) == pytest.approx(6.0, abs=0.01)


@needs_media_tools
def test_auto_captions_rolling_vtt_and_json3(corpus, expected):
    text = (corpus / "auto_captions.en.vtt").read_text()
    assert text.startswith("WEBVTT\nKind: captions\nLanguage: en\n\n")
    blocks = [b for b in text.split("\n\n")[1:] if " --> " in b]
    spoken = [c[2] for c in expected["videos"]["auto_captions"]["cues"]]
    new_lines, transitions = [], 0
    for block in blocks:
        timing, *payload = block.rstrip("\n").split("\n")
        assert timing.endswith(" align:start position:0%")
        start, end = (samples_ts(t) for t in timing.split()[0:3:2])
        assert len(payload) == 2
        if round((end - start) * 1000) == 10:
            transitions += 1
            assert payload[1] == " " and "<" not in payload[0]
        else:
            assert "<c>" in payload[1] or len(payload[1].split()) == 1
            new_lines.append(re.sub(r"<[^>]+>", "", payload[1]))
    assert transitions == len(new_lines) == len(spoken)
    assert new_lines == spoken  # one rolling line per spoken line: no doubled words when deduped
    data = json.loads((corpus / "auto_captions.en.json3").read_text())
    lines = [e for e in data["events"] if "segs" in e and not e.get("aAppend")]
    assert ["".join(s["utf8"] for s in e["segs"]) for e in lines] == spoken
    assert sum(1 for e in data["events"] if e.get("aAppend")) == len(spoken) - 1


def samples_ts(value: str) -> float:
    h, m, s = value.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


# ----------------------------------------------------------------------------------------------
# loopback server
# ----------------------------------------------------------------------------------------------


def test_loopback_server_range_head_and_status(tmp_path):
    (tmp_path / "a.mp4").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "page.html").write_text("<html></html>")
    with LoopbackServer(tmp_path, status_for={"/gone.html": 404}, fail_first={"/page.html": 1}) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        req = urllib.request.Request(srv.url("a.mp4"), headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(req) as r:
            assert r.status == 206 and r.headers["Content-Range"] == "bytes 10-19/1024"
            assert r.headers["Content-Type"] == "video/mp4" and r.read() == bytes(range(10, 20))
        req = urllib.request.Request(srv.url("a.mp4"), headers={"Range": "bytes=-4"})
        with urllib.request.urlopen(req) as r:
            assert r.read() == bytes(range(252, 256))
        req = urllib.request.Request(srv.url("a.mp4"), method="HEAD")
        with urllib.request.urlopen(req) as r:
            assert r.status == 200 and r.headers["Content-Length"] == "1024" and r.read() == b""
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(srv.url("a.mp4"), headers={"Range": "bytes=5000-"}))
        assert err.value.code == 416
        for path, code in (("gone.html", 404), ("page.html", 503), ("missing.vtt", 404), ("../etc/passwd", 404)):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(srv.url(path))
            assert err.value.code == code, path
        with urllib.request.urlopen(srv.url("page.html")) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert srv.requests.count("/page.html") == 2


# ----------------------------------------------------------------------------------------------
# yt-dlp through the loopback server
# ----------------------------------------------------------------------------------------------


@needs_media_tools
def test_ytdlp_downloads_page_with_captions(corpus, tmp_path):
    yt_dlp = pytest.importorskip("yt_dlp")
    with LoopbackServer(corpus) as srv, yt_dlp.YoutubeDL(_ydl_opts(tmp_path, writeinfojson=True)) as ydl:
        info = ydl.extract_info(srv.url("talk_normal.html"), download=True)
        assert {"/talk_normal.html", "/talk_normal.en.vtt", "/talk_normal.mp4"} <= set(srv.requests)
    # The generic extractor's html5 parser names the first <video> of the page "<page>-1" / "<title> (1)".
    assert info["id"] == "talk_normal-1"
    assert info["title"] == "How Bicycle Gears Work (1)"
    assert info.get("duration") is None  # a plain page carries no duration: probe the file
    assert (tmp_path / "talk_normal-1.mp4").read_bytes() == (corpus / "talk_normal.mp4").read_bytes()
    assert (tmp_path / "talk_normal-1.en.vtt").read_text() == (corpus / "talk_normal.en.vtt").read_text()
    assert (tmp_path / "talk_normal-1.info.json").is_file()


@needs_media_tools
def test_ytdlp_auto_captions_page_offers_vtt_then_json3(corpus, tmp_path):
    yt_dlp = pytest.importorskip("yt_dlp")
    with LoopbackServer(corpus) as srv:
        with yt_dlp.YoutubeDL(_ydl_opts(tmp_path, skip_download=True)) as ydl:
            info = ydl.extract_info(srv.url("auto_captions.html"), download=True)
        assert [s["ext"] for s in info["subtitles"]["en"]] == ["json3", "vtt"]
        assert (tmp_path / "auto_captions-1.en.vtt").is_file()
        with yt_dlp.YoutubeDL(_ydl_opts(tmp_path, skip_download=True, subtitlesformat="json3")) as ydl:
            ydl.extract_info(srv.url("auto_captions.html"), download=True)
        assert (tmp_path / "auto_captions-1.en.json3").is_file()


@needs_media_tools
def test_ytdlp_first_attempt_fails_with_fail_first(corpus, tmp_path):
    yt_dlp = pytest.importorskip("yt_dlp")
    with LoopbackServer(corpus, fail_first={"/talk_normal.html": 1}) as srv:
        with yt_dlp.YoutubeDL(_ydl_opts(tmp_path)) as ydl:
            with pytest.raises(yt_dlp.utils.DownloadError, match="503"):
                ydl.extract_info(srv.url("talk_normal.html"), download=True)
        assert srv.requests == ["/talk_normal.html"]
        with yt_dlp.YoutubeDL(_ydl_opts(tmp_path)) as ydl:
            ydl.extract_info(srv.url("talk_normal.html"), download=True)
        assert srv.requests.count("/talk_normal.html") == 2
    assert (tmp_path / "talk_normal-1.mp4").is_file()


@needs_media_tools
def test_ytdlp_retries_media_only_when_asked(corpus, tmp_path):
    """yt-dlp's Python API defaults to retries=0; with retries set, a 503 on the media is retried."""
    yt_dlp = pytest.importorskip("yt_dlp")
    with LoopbackServer(corpus, fail_first={"/talk_slow.mp4": 1}) as srv:
        with yt_dlp.YoutubeDL(_ydl_opts(tmp_path, retries=2)) as ydl:
            ydl.extract_info(srv.url("talk_slow.html"), download=True)
        assert srv.requests.count("/talk_slow.mp4") == 2
    assert (tmp_path / "talk_slow-1.mp4").stat().st_size == (corpus / "talk_slow.mp4").stat().st_size
