"""Streaming inference with the tiny random Qwen2-VL: with the KV cache kept across steps, the logits at
every step equal those of re-encoding the whole conversation (the model's own positions) within 1e-4;
the command reads a file or a URL through yt-dlp (a loopback server) and prints each step's words."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    from training.model import TINY, load_model
    from training.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("stream")
    video = folder / "www" / "match.mp4"
    video.parent.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x180:r=25:d=9",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(video)], check=True)
    model = folder / "model"
    load_model(TINY, seed=1).save_pretrained(model)
    load_tokenizer().save_pretrained(model)
    return {"video": video, "model": model}


def test_cached_steps_give_the_logits_of_a_full_reencode(media):
    import torch

    from training.model import load_model
    from training.packer import ChatPieces
    from training.stream import StreamSession, run, video_frames
    from training.tokenizer import load_tokenizer

    model = load_model(str(media["model"])).eval()
    pieces = ChatPieces(load_tokenizer(str(media["model"])))
    frames, times = video_frames(str(media["video"]))
    assert len(frames) == 18 and times[1] - times[0] == pytest.approx(0.5, abs=0.04)   # 25 fps
    runs = {}
    for reencode in (False, True):
        session = StreamSession(model, pieces, query="What happens?", max_new_tokens=3, reencode=reencode)
        runs[reencode] = (run(session, frames), session)
    cached, full = runs[False][0], runs[True][0]
    assert [(r.start_s, r.end_s) for r in cached] == [(0.0, 3.0)] + [(s, s + 1.0) for s in range(3, 9)]
    for a, b in zip(cached, full):
        assert a.tokens == b.tokens
        assert torch.allclose(a.logits, b.logits, atol=1e-4), float((a.logits - b.logits).abs().max())
    # the cache holds every token of the conversation but the last generated one (it opens the next chunk)
    session = runs[False][1]
    assert session.cache.get_seq_length() == len(session.conversation.ids) - 1
    decoded = pieces.tokenizer.decode(session.conversation.ids)
    assert decoded.count("Time=") == 7 and "Time=0.0-3.0s" in decoded and "What happens?" in decoded


def test_the_command_reads_a_url_with_ytdlp(media):
    from tests.support.http_server import LoopbackServer

    with LoopbackServer(media["video"].parent) as server:
        proc = subprocess.run([sys.executable, "-m", "training.stream", server.url("match.mp4"), "--model",
                               str(media["model"]), "--seconds", "4.9", "--max-new-tokens", "2"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert server.count("/match.mp4") >= 1
    lines = proc.stdout.splitlines()
    assert [line[:18] for line in lines] == ["[   0.0-   3.0 s] ", "[   3.0-   4.0 s] ", "[   4.0-   5.0 s] "]
    assert "3 steps, 10 frames" in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "training.stream", str(media["video"].parent / "nope.mp4"),
                              "--model", str(media["model"])], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "error:" in missing.stderr and "nope.mp4" in missing.stderr
