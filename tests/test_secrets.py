"""Credentials in source URLs (`user:password@`, signed query parameters) are used for the fetch only and
never written; a 429's Retry-After is honoured (capped)."""
from __future__ import annotations

import base64
import email.utils
import json
import subprocess
import time
import urllib.error
from email.message import Message
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import config
from pipeline.redact import MASK, redact_obj, redact_text, redact_url, secret_literals
from pipeline.stage import PartContext
from stages.download import Download
from stages.lib import ytdlp
from tests.support.http_server import LoopbackServer
from tests.support.runs import manifest, run_pretrain

PASSWORD = "Pw-s3cret-9f2kq"
TOKEN = "tok-8d7c6b5a4e"
SIG = "sig-1a2b3c4d5e"
AMZ = "amzsig-0f9e8d7c6b"
CAPSIG = "capsig-5e6f7a8b9c"
SECRETS = [PASSWORD, TOKEN, SIG, AMZ, CAPSIG, base64.b64encode(f"alice:{PASSWORD}".encode()).decode()]
VTT = "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nhello there general kenobi\n"


# ------------------------------------------------------------------------------------------ redact

def test_redact_url():
    url = (f"https://alice:{PASSWORD}@cdn.example.com:8443/v/a.mp4?id=7&Token={TOKEN}&sig={SIG}"
           f"&X-Amz-Signature={AMZ}&X-Amz-Expires=60&keep=a%20b#access_token={TOKEN}&t=3")
    out = redact_url(url)
    assert out == (f"https://cdn.example.com:8443/v/a.mp4?id=7&Token={MASK}&sig={MASK}"
                   f"&X-Amz-Signature={MASK}&X-Amz-Expires={MASK}&keep=a%20b#access_token={MASK}&t=3")
    assert redact_url(out) == out
    # the list is configurable: names and globs, case-insensitive
    assert redact_url("http://h/x?Session=1&code=2&my_thing=3", ("code", "MY_*")) == \
        f"http://h/x?Session=1&code={MASK}&my_thing={MASK}"
    for untouched in ("/data/talk.mp4", "file:///data/talk.mp4", "dQw4w9WgXcQ", "http://h/x?page=2", ""):
        assert redact_url(untouched) == untouched
    assert redact_url("http://bob@h/x") == "http://h/x"    # a user name alone goes too


def test_redact_text_and_obj():
    url = f"http://alice:{PASSWORD}@127.0.0.1:9/notmedia.mp4?token={TOKEN}&sig={SIG}"
    message = f"corrupt_media: {url}: Invalid data found when processing input."
    out = redact_text(message)
    assert out == (f"corrupt_media: http://127.0.0.1:9/notmedia.mp4?token={MASK}&sig={MASK}: "
                   "Invalid data found when processing input.")
    # a message cut inside a URL (ffprobe's last 200 characters) still loses its secrets
    assert PASSWORD not in redact_text(url[12:]) and TOKEN not in redact_text(url[40:])
    assert SIG not in redact_text(f"...mp4?a=1&sig={SIG}: Server returned 403")
    # known secrets of a row are masked wherever a message quotes them
    literals = secret_literals(url)
    assert {PASSWORD, TOKEN, SIG} <= literals
    assert redact_text(f"auth failed for {PASSWORD!r}", literals=literals) == f"auth failed for '{MASK}'"
    # yt-dlp's messages (reasons, its logger) are redacted before they are cut short
    failure = ytdlp.failure_from_exception(RuntimeError(f"ERROR: Unsupported URL: {url}"))
    assert failure.code == "unsupported_url" and not any(s in failure.message for s in SECRETS)
    assert "127.0.0.1:9/notmedia.mp4" in failure.message
    info = {"webpage_url": url, "n": 3, "list": [url], "title": "key facts"}
    cleaned = redact_obj(info)
    assert cleaned["n"] == 3 and cleaned["title"] == "key facts"
    assert not any(s in json.dumps(cleaned) for s in SECRETS)


def test_redact_params_setting():
    cfg = config.load("pretrain", config.parse_overrides(["run.redact_params=[code, 'x-my-*']"]))
    assert cfg.run.redact_params == ("code", "x-my-*")
    assert "token" in config.load("pretrain").run.redact_params


# ------------------------------------------------------------------------------------------ Retry-After

def test_parse_retry_after():
    now = time.time()
    assert ytdlp.parse_retry_after("2") == 2.0
    assert ytdlp.parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == \
        pytest.approx(30, abs=1)
    assert ytdlp.parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    for bad in (None, "", "soon", "-3"):
        assert ytdlp.parse_retry_after(bad) is None
    headers = Message()
    headers["Retry-After"] = "7"
    exc = urllib.error.HTTPError("http://h/x", 429, "Too Many Requests", headers, None)
    failure = ytdlp.failure_from_exception(exc)
    assert (failure.code, failure.transient, failure.retry_after) == ("http_error", True, 7.0)
    exc = urllib.error.HTTPError("http://h/x", 404, "Not Found", headers, None)
    assert ytdlp.failure_from_exception(exc).retry_after is None


def _mp4(path: Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "2", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "32k", "-shortest",
                    "-movflags", "+faststart", str(path)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def www(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("www")
    _mp4(root / "clip.mp4")
    (root / "clip.en.vtt").write_text(VTT)
    (root / "track.en.vtt").write_text(VTT)
    (root / "notmedia.mp4").write_text("<html>this is not a video</html>\n" * 20)
    (root / "page.html").write_text(
        '<!DOCTYPE html><html><head><title>A page</title></head><body><video controls>'
        '<source src="clip.mp4" type="video/mp4"><track kind="captions" srclang="en" label="English" '
        'src="track.en.vtt"></video></body></html>')
    return root


def _row(vid: str, url: str, **extra) -> dict:
    return {"id": vid, "url": url, "title": None, "duration": None, "width": None, "height": None,
            "language": "en", "categories": None, "category": None, "captions": None, **extra}


def test_retry_after_is_honoured_and_capped(tmp_path, www):
    """yt-dlp (the page) waits the 2 s the server asked for; urllib (provided captions) is asked for
    30 s and waits the 1 s cap. Times are the server's arrival times of the requests."""
    throttle = {"/page.html": (1, "2"), "/clip.en.vtt": (1, "30")}
    with LoopbackServer(www, throttle=throttle) as srv:
        def run(row: dict, **cfg) -> dict:
            stage = Download(Download.Config(backoff_s=0.01, socket_timeout_s=5.0, **cfg))
            return stage.process([row], PartContext(run_dir=str(tmp_path), part=0))[0]

        paced = run(_row("paced", srv.url("page.html")))
        capped = run(_row("capped", srv.url("clip.mp4"), captions=srv.url("clip.en.vtt")), max_retry_after_s=1.0)
        page, captions = srv.times_of("/page.html"), srv.times_of("/clip.en.vtt")
    assert paced["status"] == "ok" and capped["status"] == "ok", (paced["reason"], capped["reason"])
    assert paced["attempts"] == 2 and capped["attempts"] == 2
    assert len(page) == 2 and len(captions) == 2
    assert 1.9 <= page[1] - page[0] < 10        # the 2 s asked for, not the 0.01 s backoff
    assert 0.9 <= captions[1] - captions[0] < 10   # the 1 s cap, not 30 s


# ------------------------------------------------------------------------------------------ a real run

PROFILE = """
stages: [metadata_filter, download]
run: {part_size: 2}
metadata_filter: {min_height: 100, min_duration: 1, max_duration: 600, languages: [en]}
download: {require_captions: true, retries: 1, backoff_s: 0.01, socket_timeout_s: 5}
"""


def _files_with_secrets(folder: Path) -> list[str]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts = [data]
        if path.suffix == ".parquet":   # compressed pages: look at the values too
            texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str).encode())
        found += [f"{path}: {s}" for s in SECRETS for t in texts if s.encode() in t]
    return found


def test_a_run_writes_no_credentials(tmp_path, www, ray_local, capfd):
    with LoopbackServer(www, status_for={"/gone.html": 404}) as srv:
        port = srv.base_url.rsplit(":", 1)[1]
        base = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
        signed = f"token={TOKEN}&sig={SIG}&X-Amz-Signature={AMZ}"
        rows = [
            {"id": "page", "url": f"{base}/page.html?{signed}&v=1", "language": "en"},
            {"id": "direct", "url": f"{base}/clip.mp4?{signed}", "title": "Direct", "language": "en",
             "captions": f"{base}/clip.en.vtt?sig={CAPSIG}"},
            {"id": "gone", "url": f"{base}/gone.html?{signed}", "title": "Gone", "duration": 60,
             "width": 640, "height": 480, "language": "en"},
            {"id": "notmedia", "url": f"{base}/notmedia.mp4?{signed}", "title": "Not media", "language": "en"},
        ]
        source = tmp_path / "source.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
        profile = tmp_path / "secrets.yaml"
        profile.write_text(PROFILE)
        run_dir = tmp_path / "run"
        result = run_pretrain(run_dir, source, profile=str(profile))
        auth = dict(srv.auth)
        targets = list(srv.targets)
    assert result.ok, result.failed
    md = manifest(run_dir, "metadata_filter").set_index("id")
    dl = manifest(run_dir, "download").set_index("id")
    assert md.loc["notmedia", "status"] == "error"
    assert md.loc["notmedia", "reason"].startswith("corrupt_media") and "notmedia.mp4" in md.loc["notmedia", "reason"]
    assert md.loc["page", "metadata_from"] == "yt-dlp" and md.loc["direct", "metadata_from"] == "probe"
    assert dl.loc["gone", "status"] == "error" and dl.loc["gone", "reason"].startswith("not_found")
    for vid in ("page", "direct"):
        assert dl.loc[vid, "status"] == "ok", dl.loc[vid, "reason"]
    assert dl.loc["direct", "captions_kind"] == "provided"
    assert dl.loc["page", "url"] == (f"http://127.0.0.1:{port}/page.html?token={MASK}&sig={MASK}"
                                     f"&X-Amz-Signature={MASK}&v=1")
    assert dl.loc["direct", "captions"] == f"http://127.0.0.1:{port}/clip.en.vtt?sig={MASK}"
    # the fetches used the full values: credentials and signatures reached the server
    expected_auth = "Basic " + SECRETS[-1]
    assert auth["/page.html"] == auth["/track.en.vtt"] == auth["/clip.en.vtt"] == expected_auth
    assert any(TOKEN in t for t in targets if t.startswith("/page.html"))
    assert any(CAPSIG in t for t in targets if t.startswith("/clip.en.vtt"))
    # ... and nothing written or printed holds them
    assert (run_dir / "media" / "page.info.json").is_file()
    assert _files_with_secrets(run_dir) == []
    out, err = capfd.readouterr()
    assert not [s for s in SECRETS if s in out + err]
