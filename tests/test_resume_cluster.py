"""A run killed with SIGKILL in the middle of a stage resumes to the same manifests and shards as an
uninterrupted run (no duplicated, no missing id); and a run against `ray start --head` on loopback."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from synth.corpus import http_source
from tests.support.http_server import LoopbackServer
from tests.support.runs import canonical_manifests, manifest, shard_digests

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# the model filters left out: they resume like any stage (their scores are cached, test_pretrain_run)
# and would cost three model loads per run here
STAGES = ["metadata_filter", "download", "caption_words", "transcript_language", "clip_split", "shard"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}


def pipeline_cmd(src: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "pretrain", "--source", str(src), "--run", str(run_dir),
            "--set", "run.part_size=1", "--set", f"stages=[{', '.join(STAGES)}]", "--no-progress", *extra]


def run_cli(cmd: list[str], timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def test_sigkill_mid_stage_then_resume(tmp_path, samples_dir):
    run_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    with LoopbackServer(samples_dir, delay_s=0.4) as server:
        src = http_source(samples_dir, server.base_url)
        proc = subprocess.Popen(pipeline_cmd(src, run_dir), cwd=ROOT, env=ENV, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            done = list((run_dir / "download").glob("*.done"))
            if len(done) >= 2:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        kill_group(proc)
        interrupted = len(list((run_dir / "download").glob("*.done")))
        total = len(list((run_dir / "source").glob("*.done")))
        assert 2 <= interrupted < total, "kill did not land in the middle of download"
        # a part may have been killed after its manifest but before its marker: leftovers are harmless
        server.delay_s = 0.0          # the delay only made the kill land mid-download
        run_cli(pipeline_cmd(src, run_dir))
        run_cli(pipeline_cmd(src, clean_dir))
    assert canonical_manifests(run_dir, STAGES) == canonical_manifests(clean_dir, STAGES)
    assert shard_digests(run_dir) == shard_digests(clean_dir)
    for stage in STAGES:
        ids = manifest(run_dir, stage)["id"]
        assert ids.is_unique, stage
    assert not list((run_dir / "media").glob("*.part")) and not list(run_dir.rglob(".*.tmp-*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_against_ray_start_head(tmp_path, samples_dir):
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    port = free_port()
    # a short temp dir: Ray's unix sockets live there and their paths have a 107-byte limit
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**ENV, "RAY_AUTH_MODE": "disabled"}   # a loopback test cluster: no token to distribute
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard",
                             "false", "--disable-usage-stats", "--temp-dir", temp_dir],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while subprocess.run([ray_bin, "status", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            assert time.time() < deadline and head.poll() is None, "ray start --head did not come up"
            time.sleep(1)
        proc = run_cli(pipeline_cmd(samples_dir / "source.jsonl", tmp_path / "run", "--ray-address", address,
                                    "--limit", "3"), env=env)
        assert "shard" in proc.stdout
        clips = manifest(tmp_path / "run", "clip_split")
        kept = clips[clips.status == "ok"]
        assert sorted(kept.video_id) == ["talk_gap", "talk_gap", "talk_normal"]   # the first 3 rows
        assert len(list((tmp_path / "run" / "shards").glob("*.tar"))) == 2
        assert f":{port} (2 CPUs)" in proc.stdout    # it joined that cluster, not a new local one
        doctor = subprocess.run([sys.executable, "-m", "pipeline", "doctor", "--ray-address", address, "--run",
                                 str(tmp_path / "run"), "--profile", "pretrain"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        lines = {line[7:31].strip(): line for line in doctor.stdout.splitlines()}
        assert "2 CPUs, 0 GPUs (" in lines["ray"] and lines["ray"].endswith(f":{port})")
        assert "visible on all 1 node(s)" in lines["shared run folder"] and lines["js runtime"].startswith("[ ok ]")
        assert not list((tmp_path / "run").glob(".doctor-*"))          # its probe file is gone
    finally:
        head.send_signal(signal.SIGTERM)     # `ray start --block` stops its processes on SIGTERM
        try:
            head.wait(timeout=60)
        finally:
            kill_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
