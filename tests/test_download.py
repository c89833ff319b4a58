"""The download stage through real yt-dlp against a loopback HTTP server (no network), plus the pure
parts of stages.lib.ytdlp (caption choice on YouTube-like info dicts, error classification)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from manifests.schemas import DOWNLOAD, check_table
from pipeline.stage import PartContext
from stages.download import Download
from stages.lib import ytdlp
from stages.lib.ytdlp import choose_captions, classify
from tests.support.http_server import LoopbackServer

VTT = """WEBVTT

00:00:00.000 --> 00:00:01.000
hello there

00:00:01.000 --> 00:00:02.000
general kenobi
"""


def _page(title: str, media: str, tracks: list[str]) -> str:
    track = "".join(f'<track kind="captions" srclang="en" label="English" src="{t}">' for t in tracks)
    return (f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
            f'<video controls><source src="{media}" type="video/mp4">{track}</video></body></html>')


def _mp4(path: Path, faststart: bool = True) -> None:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y",
           "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
           "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-b:a", "32k", "-shortest"]
    if faststart:
        cmd += ["-movflags", "+faststart"]
    subprocess.run(cmd + [str(path)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def www(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("www")
    _mp4(root / "clip.mp4")
    (root / "clip.en.vtt").write_text(VTT)
    (root / "clip.en.json3").write_text(json.dumps({"events": [
        {"tStartMs": 0, "dDurationMs": 1000, "segs": [{"utf8": "hello there"}]}]}))
    for name in ("flaky", "resume", "cookie"):
        shutil.copyfile(root / "clip.mp4", root / f"{name}.mp4")
    (root / "page.html").write_text(_page("A page", "clip.mp4", ["clip.en.vtt"]))
    (root / "both.html").write_text(_page("Two formats", "clip.mp4", ["clip.en.vtt", "clip.en.json3"]))
    (root / "nocap.html").write_text(_page("No captions", "clip.mp4", []))
    (root / "flaky.html").write_text(_page("Flaky", "flaky.mp4", ["clip.en.vtt"]))
    (root / "resume.html").write_text(_page("Resume", "resume.mp4", ["clip.en.vtt"]))
    (root / "cookie.html").write_text(_page("Cookie", "cookie.mp4", ["clip.en.vtt"]))
    # moov atom at the end, then cut off: ffprobe says "moov atom not found"
    _mp4(root / "whole.mp4", faststart=False)
    data = (root / "whole.mp4").read_bytes()
    (root / "broken.mp4").write_bytes(data[: len(data) // 2])
    (root / "broken.html").write_text(_page("Broken", "broken.mp4", ["clip.en.vtt"]))
    return root


@pytest.fixture(scope="module")
def server(www):
    with LoopbackServer(www, fail_first={"/flaky.html": 2}, status_for={"/gone.html": 404}) as srv:
        yield srv


def _run(tmp_path: Path, rows: list[dict], **cfg) -> list[dict]:
    cfg.setdefault("backoff_s", 0.01)
    cfg.setdefault("socket_timeout_s", 5.0)
    stage = Download(Download.Config(**cfg))
    out = stage.process(rows, PartContext(run_dir=str(tmp_path), part=0))
    check_table(pa.Table.from_pylist(out, schema=DOWNLOAD), DOWNLOAD)
    return out


def _row(vid: str, url: str, **extra) -> dict:
    return {"id": vid, "url": url, "title": None, "duration": None, "width": None, "height": None,
            "language": "en", "categories": None, "category": None, "captions": None, **extra}


# ------------------------------------------------------------------------------------------ stage

def test_page_with_captions(tmp_path, server):
    rows = [_row("page", server.url("page.html")), _row("both", server.url("both.html"))]
    page, both = _run(tmp_path, rows)
    assert page["status"] == "ok", page["reason"]
    media = tmp_path / "media"
    assert page["media_path"] == "media/page.mp4"  # relative to the run folder
    assert page["captions_path"] == "media/page.en.vtt"
    assert page["info_path"] == "media/page.info.json"
    assert (page["captions_kind"], page["captions_format"]) == ("manual", "vtt")
    assert (media / "page.en.vtt").read_text() == VTT
    assert page["media_bytes"] == (media / "page.mp4").stat().st_size > 0
    assert page["has_audio"] is True and page["attempts"] == 1
    assert (page["width"], page["height"]) == (160, 120) and 1.5 < page["duration"] < 2.5
    assert page["title"] == "A page (1)"  # the generic extractor's title of an HTML5 embed
    info = json.loads((media / "page.info.json").read_text())
    assert info["_livecc"]["captions"] == "page.en.vtt" and "formats" not in info
    # json3 is preferred over vtt when the page offers both
    assert both["status"] == "ok" and both["captions_format"] == "json3"
    assert both["captions_path"].endswith("/both.en.json3")
    assert sorted(p.name for p in media.iterdir()) == [
        "both.en.json3", "both.info.json", "both.mp4", "page.en.vtt", "page.info.json", "page.mp4"]


def test_direct_mp4_and_no_captions(tmp_path, server):
    rows = [_row("direct", server.url("clip.mp4")), _row("nocap", server.url("nocap.html"))]
    direct, nocap = _run(tmp_path, rows)
    assert direct["status"] == "dropped" and direct["reason"].startswith("no_captions")
    assert nocap["status"] == "dropped" and nocap["reason"].startswith("no_captions")
    assert not (tmp_path / "media" / "nocap.mp4").exists()
    direct, nocap = _run(tmp_path, rows, require_captions=False)
    for row in (direct, nocap):
        assert row["status"] == "ok", row["reason"]
        assert row["captions_path"] is None and row["captions_kind"] is None
        assert (tmp_path / row["media_path"]).is_file() and row["has_audio"]


def test_local_paths(tmp_path, www):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(www / "clip.mp4", src / "talk.mp4")
    (src / "talk.en.vtt").write_text(VTT)
    (src / "talk.de.vtt").write_text(VTT)
    shutil.copyfile(www / "clip.mp4", src / "bare.mp4")
    shutil.copyfile(www / "clip.en.vtt", src / "given.vtt")
    rows = [_row("talk", str(src / "talk.mp4")),
            _row("given", "file://" + str(src / "bare.mp4"), captions=str(src / "given.vtt")),
            _row("bare", str(src / "bare.mp4")),
            _row("gone", str(src / "missing.mp4"), captions=str(src / "given.vtt"))]
    talk, given, bare, gone = _run(tmp_path, rows)
    assert talk["status"] == "ok", talk["reason"]
    assert talk["captions_kind"] == "provided" and talk["captions_path"].endswith("/talk.en.vtt")
    assert os.stat(tmp_path / talk["media_path"]).st_ino == os.stat(src / "talk.mp4").st_ino  # hard link
    assert given["status"] == "ok" and given["captions_path"].endswith("/given.en.vtt")
    assert given["captions_format"] == "vtt" and given["media_path"].endswith("/given.mp4")
    assert bare["status"] == "dropped" and bare["reason"].startswith("no_captions")
    assert gone["status"] == "error" and gone["reason"].startswith("not_found")
    again = _run(tmp_path, rows[:2])
    assert [r["attempts"] for r in again] == [0, 0]
    assert [r["captions_path"] for r in again] == [talk["captions_path"], given["captions_path"]]


def test_captions_given_by_the_source(tmp_path, server):
    rows = [_row("given", server.url("nocap.html"), captions=server.url("clip.en.json3")),
            _row("lost", server.url("nocap.html"), captions=server.url("gone.vtt")),
            _row("odd", server.url("nocap.html"), captions=server.url("notes.txt"))]
    given, lost, odd = _run(tmp_path, rows)
    assert given["status"] == "ok", given["reason"]
    assert (given["captions_kind"], given["captions_format"]) == ("provided", "json3")
    assert given["captions_path"] == "media/given.en.json3"
    assert lost["status"] == "error" and lost["reason"].startswith("not_found: captions")
    assert odd["status"] == "error" and odd["reason"].startswith("bad_captions")


def test_not_found_is_not_retried(tmp_path, server):
    (row,) = _run(tmp_path, [_row("gone", server.url("gone.html"))])
    assert row["status"] == "error" and row["reason"].startswith("not_found: ")
    assert row["attempts"] == 1 and server.count("/gone.html") == 1


def test_transient_failures_are_retried(tmp_path, server):
    (row,) = _run(tmp_path, [_row("flaky", server.url("flaky.html"))])
    assert row["status"] == "ok", row["reason"]
    assert row["attempts"] == 3 and server.count("/flaky.html") == 3
    assert not list((tmp_path / "media").glob(".tmp-*"))


def test_transient_failures_give_up(tmp_path, www):
    with LoopbackServer(www, status_for={"/page.html": 503}) as srv:
        (row,) = _run(tmp_path, [_row("down", srv.url("page.html"))], retries=1)
        assert srv.count("/page.html") == 2
    assert row["status"] == "error" and row["reason"].startswith("http_error: ")
    assert row["attempts"] == 2


def test_corrupt_media(tmp_path, server):
    (row,) = _run(tmp_path, [_row("broken", server.url("broken.html"))])
    assert row["status"] == "error" and row["reason"].startswith("corrupt_media: ")
    assert "moov" in row["reason"]
    assert not (tmp_path / "media" / "broken.mp4").exists()
    assert not list((tmp_path / "media").glob(".tmp-*"))


def test_resume_reuses_files(tmp_path, server):
    rows = [_row("resume", server.url("resume.html"))]
    (first,) = _run(tmp_path, rows)
    assert first["status"] == "ok" and first["attempts"] == 1
    seen = len(server.requests)
    assert server.count("/resume.mp4") >= 1
    (again,) = _run(tmp_path, rows)
    assert len(server.requests) == seen  # not even the page
    assert again["status"] == "ok" and again["attempts"] == 0
    for key in ("media_path", "media_bytes", "captions_path", "captions_kind", "captions_format", "info_path"):
        assert again[key] == first[key]
    # a half-written leftover under a temporary name does not count as done; a missing media file
    # makes the row download again
    os.remove(tmp_path / first["media_path"])
    (third,) = _run(tmp_path, rows)
    assert third["status"] == "ok" and third["attempts"] == 1 and len(server.requests) > seen


def test_cookies_stay_secret(tmp_path, server):
    cookies = tmp_path / "cookies.txt"
    text = "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tSECRET-VALUE-123\n"
    cookies.write_text(text)
    cfg = Download.Config(cookies_file=str(cookies))
    assert str(cookies) not in repr(cfg) and "SECRET" not in repr(cfg)
    Download(cfg).check()
    (row,) = _run(tmp_path, [_row("cookie", server.url("cookie.html"))], cookies_file=str(cookies))
    assert row["status"] == "ok", row["reason"]
    assert cookies.read_text() == text  # yt-dlp saved its jar into a private copy, not here
    assert "SECRET" not in json.dumps(row, default=str)
    for path in (tmp_path / "media").iterdir():
        assert b"SECRET" not in path.read_bytes(), path
    with pytest.raises(ValueError, match="cookies_file"):
        Download(Download.Config(cookies_file=str(tmp_path / "nope.txt"))).check()


def test_live_streams_are_refused():
    class FakeYDL:
        def extract_info(self, url, download):
            return {"id": "x", "title": "now live", "live_status": "is_live", "formats": []}

    with pytest.raises(ytdlp.DownloadFailure) as failure:
        ytdlp._extract(FakeYDL(), "https://example.com/live")
    assert failure.value.code == "live" and not failure.value.transient


def test_config_validation():
    with pytest.raises(ValueError, match="caption_formats"):
        Download.Config(caption_formats=("srv3",))
    with pytest.raises(ValueError, match="concurrency"):
        Download.Config(concurrency=0)
    assert Download(Download.Config()).resources().cpus <= 1


# ------------------------------------------------------------------------------------------ captions

def _tracks(*exts: str, lang: str = "en") -> list[dict]:
    return [{"ext": e, "url": f"https://www.youtube.com/api/timedtext?lang={lang}&fmt={e}"} for e in exts]


YT_FORMATS = ("json3", "srv1", "srv2", "srv3", "ttml", "srt", "vtt")


def _auto(orig: str, *translations: str) -> dict:
    """YouTube's automatic_captions: the ASR track as `xx-orig` and `xx`, then machine translations."""
    out = {f"{orig}-orig": _tracks(*YT_FORMATS), orig: _tracks(*YT_FORMATS)}
    for lang in translations:
        out[lang] = _tracks(*YT_FORMATS, lang=lang)
    return out


def test_manual_captions_beat_automatic():
    info = {"subtitles": {"en": _tracks("json3", "vtt", "srv3")}, "automatic_captions": _auto("en", "de", "fr")}
    assert choose_captions(info) == ("en", "manual", "json3")
    assert choose_captions(info, formats=("vtt", "json3")) == ("en", "manual", "vtt")


def test_automatic_fallback_takes_the_original_asr_track():
    info = {"subtitles": {}, "automatic_captions": _auto("en", "de", "fr", "es")}
    assert choose_captions(info) == ("en-orig", "automatic", "json3")
    # a French video: automatic `en` is a machine translation, and `en-fr` (English translated from
    # French manual captions) too
    info = {"subtitles": {"fr": _tracks("vtt")}, "automatic_captions": {**_auto("fr", "en", "de"),
                                                                        "en-fr": _tracks("vtt")}}
    assert choose_captions(info) is None
    assert choose_captions(info, langs=("fr",)) == ("fr", "manual", "vtt")


def test_language_patterns_and_order():
    info = {"subtitles": {"en-GB": _tracks("vtt"), "en": _tracks("vtt"), "live_chat": _tracks("json")}}
    assert choose_captions(info) == ("en", "manual", "vtt")
    info = {"subtitles": {"en-nP7-2PuUl7o": _tracks("json3"), "de": _tracks("json3")}}
    assert choose_captions(info) == ("en-nP7-2PuUl7o", "manual", "json3")
    assert choose_captions(info, langs=("en",)) is None
    assert choose_captions({"subtitles": {"EN": _tracks("srt")}}) == ("EN", "manual", "srt")


def test_format_preference_and_unsupported_formats():
    # manual English only as formats the parser cannot read: the automatic track wins
    info = {"subtitles": {"en": _tracks("srv3", "ttml")}, "automatic_captions": _auto("en")}
    assert choose_captions(info) == ("en-orig", "automatic", "json3")
    assert choose_captions(info, formats=("srt", "vtt")) == ("en-orig", "automatic", "srt")
    assert choose_captions({"subtitles": {"en": _tracks("ttml")}}) is None
    # other sites: automatic captions without `-orig` keys are matched like manual ones
    assert choose_captions({"automatic_captions": {"en": _tracks("vtt")}}) == ("en", "automatic", "vtt")
    # clean_info's reduced form ({lang: [ext, ...]}) works as well
    assert choose_captions({"subtitles": {"en": ["vtt", "json3"]}}) == ("en", "manual", "json3")
    assert choose_captions({}) is None


# ------------------------------------------------------------------------------------------ errors

HINT = (" Use --cookies-from-browser or --cookies for the authentication. See  https://github.com/yt-dlp/"
        "yt-dlp/wiki/FAQ#how-do-i-pass-cookies-to-yt-dlp  for how to manually pass cookies.")


@pytest.mark.parametrize("message, code, transient", [
    ("ERROR: [youtube] dQw4w9WgXcQ: Private video. Sign in if you've been granted access to this video."
     + HINT, "private", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Join this channel to get access to members-only content like this "
     "video, and other exclusive perks.", "private", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video has been removed by the uploader",
     "removed", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video is no longer available because the "
     "YouTube account associated with this video has been terminated.", "removed", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video has been removed for violating "
     "YouTube's Terms of Service", "removed", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable", "unavailable", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video is not available", "unavailable", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm you\u2019re not a bot." + HINT, "bot_check", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm you're not a bot." + HINT, "bot_check", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: This content isn't available, try again later. The current session "
     "has been rate-limited by YouTube for up to an hour.", "bot_check", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm your age. This video may be inappropriate for "
     "some users." + HINT, "age_restricted", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. The uploader has not made this video available "
     "in your country", "geo_blocked", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: This video is not available from your location due to geo "
     "restriction", "geo_blocked", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: This live event will begin in 3 hours.", "live", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Premieres in 20 hours", "live", False),
    ("ERROR: [generic] gone: Unable to download webpage: HTTP Error 404: Not Found (caused by "
     "<HTTPError 404: Not Found>)", "not_found", False),
    ("ERROR: unable to download video data: HTTP Error 410: Gone", "not_found", False),
    ("ERROR: unable to download video data: HTTP Error 403: Forbidden", "http_error", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Unable to download API page: HTTP Error 429: Too Many Requests",
     "http_error", True),
    ("ERROR: [generic] x: Unable to download webpage: HTTP Error 503: Service Unavailable", "http_error", True),
    ("ERROR: unable to download video data: HTTP Error 500: Internal Server Error", "http_error", True),
    ("ERROR: [generic] x: Unable to download webpage: The read operation timed out", "network", True),
    ("ERROR: [generic] x: Unable to download webpage: [Errno 111] Connection refused (caused by "
     "TransportError('[Errno 111] Connection refused'))", "network", True),
    ("ERROR: [download] Got error: Connection reset by peer", "network", True),
    ("ERROR: [download] Got error: 1234 bytes read, 5678 more expected. Giving up after 2 retries",
     "network", True),
    ("ERROR: Downloaded 1234 bytes, expected 5678 bytes", "network", True),
    ("ERROR: Unsupported URL: https://example.com/", "unsupported_url", False),
    ("ERROR: [youtube] dQw4w9WgXcQ: Requested format is not available. Use --list-formats for a list "
     "of available formats", "download_failed", False),
])
def test_classify(message, code, transient):
    assert classify(message) == (code, transient)
    assert code in ytdlp.CODES


def test_messages_are_scrubbed():
    failure = ytdlp.failure_from_exception(RuntimeError(
        "ERROR: boom Authorization: Bearer abc.def Cookie: SID=xyz; HSID=uvw" + HINT))
    assert "abc.def" not in failure.message and "SID=xyz" not in failure.message
    assert "HSID" not in failure.message and "--cookies" not in failure.short()


# ------------------------------------------------------------------------------------------ crawling

def test_a_429_rests_the_whole_host_and_fetches_keep_the_host_rate(tmp_path, www):
    """Three rows of one host, 60 fetches a minute: they start a second apart; the first gets a 429 with
    Retry-After 2, after which no request reaches the host for 2 s (the other rows wait, not only the
    throttled one), and the throttled row then succeeds."""
    from stages.lib.hostgate import GATE

    GATE.next_start.clear()
    GATE.paused_until.clear()
    with LoopbackServer(www, throttle={"/page.html": (1, "2")}) as srv:
        rows = [_row("a", srv.url("page.html")), _row("b", srv.url("both.html")), _row("c", srv.url("nocap.html"))]
        out = _run(tmp_path, rows, concurrency=3, host_requests_per_min=60, require_captions=False)
        times = list(srv.times)
    assert [r["status"] for r in out] == ["ok"] * 3, [r["reason"] for r in out]
    throttled_at = next(t for p, t in times if p == "/page.html")
    after = [t - throttled_at for p, t in times if t > throttled_at]
    assert after and min(after) >= 1.9, after
    firsts = sorted(next(t for p, t in times if p == page) for page in ("/page.html", "/both.html", "/nocap.html"))
    assert all(b - a >= 0.95 for a, b in zip(firsts, firsts[1:])), firsts


def test_fetches_go_through_the_configured_proxies_in_turn(tmp_path, www):
    """Two forward proxies (loopback servers that serve the same files for absolute-URI requests): every
    request reaches a proxy, none the origin, and each retry of a row moves to the next proxy (each
    proxy fails the flaky page once: attempts 1 and 2 fail on different proxies, 3 succeeds)."""
    with LoopbackServer(www) as origin, LoopbackServer(www, fail_first={"/flaky.html": 1}) as p1, \
            LoopbackServer(www, fail_first={"/flaky.html": 1}) as p2:
        rows = [_row("flaky", origin.url("flaky.html")), _row("plain", origin.url("page.html"))]
        out = _run(tmp_path, rows, proxies=(p1.base_url, p2.base_url))
        assert [r["status"] for r in out] == ["ok", "ok"], [r["reason"] for r in out]
        assert origin.requests == []
        sent = p1.targets + p2.targets
        assert sent and all(t.startswith(origin.base_url) for t in sent)      # absolute URIs: a proxy's requests
        assert out[0]["attempts"] == 3
        assert sorted((p1.count("/flaky.html"), p2.count("/flaky.html"))) == [1, 2]


def test_crawl_settings_reach_ytdlp_and_bad_ones_are_refused():
    from stages.download import Config

    cfg = Config(extractor_args=("youtube:player_client=web_safari,default;po_token=web.gvs+TOKEN",),
                 sleep_s=1.0, max_sleep_s=3.0, sleep_requests_s=0.5, rate_limit_bytes=2_000_000,
                 concurrent_fragments=4, proxies=("socks5://user:secret@10.0.0.1:1080",))
    opts = ytdlp._base_options(30.0, None, None, cfg, cfg.proxies[0])
    assert opts["extractor_args"] == {"youtube": {"player_client": ["web_safari", "default"],
                                                  "po_token": ["web.gvs+TOKEN"]}}
    assert (opts["sleep_interval"], opts["max_sleep_interval"], opts["sleep_interval_requests"]) == (1.0, 3.0, 0.5)
    assert (opts["ratelimit"], opts["concurrent_fragment_downloads"]) == (2_000_000, 4)
    assert opts["proxy"] == cfg.proxies[0] and Path(opts["js_runtimes"]["deno"]["path"]).is_file()
    assert "secret" not in repr(cfg) and "TOKEN" not in repr(cfg)
    for bad, message in ((dict(extractor_args=("player_client=web",)), "IE:KEY=VALUE"),
                         (dict(proxies=("10.0.0.1:3128",)), "proxies"),
                         (dict(sleep_s=2.0, max_sleep_s=1.0), "max_sleep_s"),
                         (dict(concurrent_fragments=0), "concurrent_fragments")):
        with pytest.raises(ValueError, match=message):
            Config(**bad)


def test_extractor_args_read_secrets_from_the_environment(tmp_path, monkeypatch):
    stage = Download(Download.Config(extractor_args=("youtube:player_client=web;po_token=web.gvs+${PO_TOKEN}",
                                                     "generic:key=$OTHER_SECRET")))
    assert stage.secret_env() == ("PO_TOKEN", "OTHER_SECRET")
    monkeypatch.delenv("PO_TOKEN", raising=False)
    with pytest.raises(ValueError, match=r"\$PO_TOKEN, \$OTHER_SECRET .*not set"):
        stage.check()
    ctx = PartContext(run_dir=str(tmp_path), part=0, env_secrets={"PO_TOKEN": "s3cr3t", "OTHER_SECRET": "k"})
    resolved = ytdlp.parse_extractor_args(stage._with_secrets(ctx).extractor_args)
    assert resolved == {"youtube": {"player_client": ["web"], "po_token": ["web.gvs+s3cr3t"]},
                        "generic": {"key": ["k"]}}
    assert "s3cr3t" not in ctx.redact("token web.gvs+s3cr3t")          # messages never quote it
