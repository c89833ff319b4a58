"""The streaming trainer on CPU with the tiny random Qwen2-VL: it can overfit (labels and masks are right),
a checkpoint reloads to the same logits, a SIGKILLed job restarted with the same command continues the
uninterrupted loss curve step for step, and 2 Ray Train workers (DDP over gloo) match 1 with the same
global batch. Data: frame shards of a generated video (testsrc2), words every 0.45 s."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    from pipeline.stage import PartContext
    from stages.shard import Shard

    folder = tmp_path_factory.mktemp("train_data")
    video = folder / "v.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=30",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(video)], check=True)

    def run(name: str, spans: list[tuple[float, float]]) -> Path:
        rows = [{"id": "v", "clip_id": f"v_{i}", "video_id": "v", "start": s, "end": e, "previous": "",
                 "title": "t", "category": None, "media_path": str(video),
                 "words": [{"start": float(t), "end": float(t) + 0.3, "word": f" word{k % 7}"}
                           for k, t in enumerate(np.arange(s + 0.2, e - 0.4, 0.45))]}
                for i, (s, e) in enumerate(spans)]
        out = Shard(Shard.Config()).process(rows, PartContext(run_dir=str(folder / name), part=0))
        assert all(r["status"] == "ok" for r in out)
        return folder / name

    return {"two": run("two", [(0.0, 6.0), (5.0, 12.0)]),
            "eight": run("eight", [(s, s + 5.0 + s % 3) for s in (0.0, 2.0, 4.0, 7.0, 10.0, 13.0, 16.0, 20.0)])}


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_falls_on_a_repeated_batch_and_the_checkpoint_reloads(shards, tmp_path):
    import torch

    from training.batches import collate, packing
    from training.loader import read_ref, shard_refs
    from training.model import load_model, model_inputs
    from training.packer import ChatPieces
    from training.tokenizer import load_tokenizer
    from training.train import TrainConfig, train

    kept: list = []
    cfg = TrainConfig(data=str(shards["two"]), out=str(tmp_path / "out"), global_batch=2, epochs=30, lr=1e-2,
                      min_lr_ratio=1.0, warmup_steps=1, checkpoint_every=100, threads=2)
    last = train(cfg, keep_model=kept)
    curve = losses(tmp_path / "out")
    assert len(curve) == 30 and last["step"] == 30
    assert curve[0] > 11 and curve[-1] < 2.0 and min(curve[-5:]) < curve[0] / 5   # ln(151936) = 11.9 at start
    assert last["labelled"] > 0 and last["tokens"] > last["labelled"]
    # the saved folder is a model of its own: same logits as the one in memory
    folder = tmp_path / "out" / "checkpoints" / "step-000030" / "model"
    reloaded = load_model(str(folder))
    pieces = ChatPieces(load_tokenizer(str(folder)))
    batch = collate([packing(pieces)(read_ref(r)) for r in shard_refs(str(shards["two"] / "shards"))], 151643)
    with torch.no_grad():
        inputs = model_inputs(batch, reloaded.config.video_token_id)
        a, b = kept[0].eval()(**inputs).logits, reloaded.eval()(**inputs).logits
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_a_killed_job_resumes_the_same_loss_curve(shards, tmp_path):
    from training.train import TrainConfig, train

    settings = ["global_batch=2", "max_steps=7", "checkpoint_every=2", "lr=1e-3", "warmup_steps=2", "threads=2"]
    train(TrainConfig(data=str(shards["eight"]), out=str(tmp_path / "whole"), global_batch=2, max_steps=7,
                      checkpoint_every=2, lr=1e-3, warmup_steps=2, threads=2))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "training.train", "--data", str(shards["eight"]), "--out", str(out),
               *[a for s in settings for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:    # past the step-2 checkpoint
        assert proc.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(losses(out)) < 7
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained to step 7" in done.stdout
    assert losses(out) == losses(tmp_path / "whole")      # step for step, bit for bit
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["latest", "step-000006", "step-000007"]   # keep_checkpoints: 2, no .tmp left


def test_two_ray_workers_match_one_with_the_same_global_batch(shards, tmp_path, ray_local):
    from training.train import TrainConfig, launch

    common = dict(data=str(shards["eight"]), global_batch=4, max_steps=4, checkpoint_every=4, lr=1e-3,
                  warmup_steps=1, threads=1)
    one = launch(TrainConfig(out=str(tmp_path / "one"), **common))
    two = launch(TrainConfig(out=str(tmp_path / "two"), workers=2, **common))
    assert one["step"] == two["step"] == 4
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    # each worker took half of every global batch; together the same tokens as one worker
    rows = [[json.loads(line) for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("one", "two")]
    assert [r["tokens"] for r in rows[0]] == [r["tokens"] for r in rows[1]]


def test_fsdp_workers_match_and_resume_at_an_epoch_boundary(shards, tmp_path, ray_local):
    """FSDP2 (sharded parameters and optimizer state, gloo) gives the single worker's curve; its
    checkpoint gathers a plain model folder, and a job resumed from the checkpoint that closed epoch 0
    starts epoch 1 from its beginning."""
    from training.train import TrainConfig, launch

    common = dict(data=str(shards["eight"]), global_batch=4, max_steps=4, checkpoint_every=2, lr=1e-3,
                  warmup_steps=1, threads=1)
    launch(TrainConfig(out=str(tmp_path / "one"), **common))
    sharded = TrainConfig(out=str(tmp_path / "fsdp"), workers=2, strategy="fsdp", **common)
    launch(sharded)
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    folder = tmp_path / "fsdp" / "checkpoints"
    assert (folder / "step-000004" / "model" / "model.safetensors").exists()
    (folder / "latest").write_text("step-000002")          # 8 samples, 4 a step: step 2 ended epoch 0
    shutil.rmtree(folder / "step-000004")
    launch(sharded)
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert len(losses(tmp_path / "fsdp")) == 4


def test_bad_configuration_fails_before_training(shards, tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "training.train", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})

    out = ["--out", str(tmp_path / "o")]
    bad = cli("--data", str(shards["eight"]), *out, "--set", "global_batch=3", "--workers", "2")
    assert bad.returncode == 2 and "multiple of micro_batch x workers" in bad.stderr
    missing = cli("--data", str(tmp_path / "nothing"), *out)
    assert missing.returncode == 2 and "make sft-set" in missing.stderr
    unknown = cli("--data", str(shards["eight"]), *out, "--set", "learning_rate=1")
    assert unknown.returncode == 2 and "unknown key" in unknown.stderr
    profile = cli("--data", str(shards["eight"]), *out, "--profile", "nope")
    assert profile.returncode == 2 and "known: paper-7b, pretrain, sft" in profile.stderr
    assert not (tmp_path / "o").exists()
