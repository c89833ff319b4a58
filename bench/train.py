"""Training throughput on this machine: the tiny random Qwen2-VL, one worker vs two Ray Train workers
(DDP over gloo) with the same global batch, in the same run.

    python -m bench.train [--clips 16] [--steps 6] [--global-batch 4]

Data: frame shards (the default shard format) of `--clips` clips of 10-20 s cut from a generated
640x360 video with a word every 0.4 s. Printed: tokens/s, samples/s and seconds a step for each setting
(the first step left out), and the largest difference between the two loss curves.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global-batch", type=int, default=4)
    args = parser.parse_args(argv)

    import os

    import ray

    from bench.packing import with_words, write_shards
    from training.train import TrainConfig, launch, throughput

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        video = tmp / "video.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=640x360:r=25:d=120",
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(video)], check=True)
        rows = [{"id": "v", "clip_id": f"v_{k}", "video_id": "v", "start": 5.0 * k, "end": 5.0 * k + 10 + k % 11,
                 "previous": "", "title": "t", "category": None, "media_path": str(video)} for k in range(args.clips)]
        write_shards(tmp / "data", with_words(rows), format="frames")
        cpus = os.cpu_count() or 2
        print(f"{args.clips} clips of 10-20 s (frame shards), tiny-qwen2-vl, global batch {args.global_batch}, "
              f"{args.steps} steps, {cpus} CPUs")
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        common = dict(data=str(tmp / "data"), global_batch=args.global_batch, max_steps=args.steps,
                      checkpoint_every=10**6, lr=1e-3, warmup_steps=1)
        settings = {"1 worker, in process": dict(workers=1, threads=cpus),
                    "2 Ray workers (DDP, gloo)": dict(workers=2, threads=max(1, cpus // 2))}
        curves = {}
        for name, extra in settings.items():
            out = tmp / name.split()[0]
            launch(TrainConfig(out=str(out), **common, **extra))
            curves[name] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
            print(f"  {name:27s} {throughput(out / 'metrics.jsonl')}")
        one, two = curves.values()
        print(f"  loss curves differ by at most {max(abs(a - b) for a, b in zip(one, two)):.2e}")
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
