"""The streaming trainer: fine-tunes Qwen2-VL on the packed clips of a run.

    python -m training.train --data runs/sft --out runs/sft/train [--model PATH] [--profile sft]
        [--set lr=1e-5 --set max_steps=100] [--workers 2] [--ray-address HOST:PORT]

Reads: a run folder (its `shards/`), a shards folder, tar URLs or a brace pattern, or a LiveCC JSONL.
Each epoch is a seeded permutation of every sample; rank r of W takes every W-th sample of it, so an
optimizer step sees the same `global_batch` samples whatever the worker count. A step accumulates
`global_batch / (micro_batch * W)` micro-batches per worker; the loss is the cross-entropy of the
assistant tokens (the packer's labels) averaged over every labelled token of the global batch.
AdamW, linear warmup then cosine decay to `min_lr_ratio * lr`, gradient clipping.

Writes: OUT/metrics.jsonl (one line per step: loss, lr, tokens, samples, seconds) and checkpoints every
`checkpoint_every` steps (training/checkpoint.py). The same command restarted after a kill continues
from the last checkpoint: model, optimizer, scheduler, RNG and the loader's exact position, so the loss
curve is the uninterrupted one.

One worker runs in this process; `--workers N` (N > 1) or `--ray-address` runs N workers with Ray Train
(`TorchTrainer`), over gloo on CPUs and NCCL on GPUs (`device: cuda`): `strategy: ddp` (DDP) or `fsdp`
(FSDP2, sharded parameters and optimizer state: training/parallel.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training import checkpoint
from training.parallel import STRATEGIES, Parallel
from training.model import ATTENTION, DTYPES, IGNORE, TINY

PROFILES = Path(__file__).resolve().parent.parent / "profiles" / "train"


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""                  # run folder, shards folder, tar URL(s) / brace pattern, or .jsonl
    out: str = ""                   # metrics and checkpoints
    model: str = TINY               # tiny-qwen2-vl (random, CPU) | a model folder | a hub id (cached)
    tokenizer: str = ""             # default: the model's own; the offline Qwen tokenizer for tiny-qwen2-vl
    lr: float = 2e-5                # LIVECC_SPEC §8: 2e-5 pretraining, 1e-5 SFT
    min_lr_ratio: float = 0.0       # cosine decays to lr * this
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0          # max gradient norm; 0: off
    epochs: int = 1
    max_steps: int = 0              # 0: epochs x (samples // global_batch)
    global_batch: int = 8           # samples per optimizer step, all workers together (paper: 512)
    micro_batch: int = 1            # samples per forward pass on one worker
    with_context: bool = False      # title + previous words in the first turn (pretraining)
    freeze_vision: bool = False
    dtype: str = "auto"             # auto (bfloat16 on GPUs that have it, else float32) | float32 | bfloat16 | float16
    attention: str = "auto"         # auto (flash_attention_2 on GPUs with flash_attn, else sdpa) | sdpa | eager
    device: str = "cpu"             # cpu | cuda
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    loader_workers: int = 0         # DataLoader processes per worker (0: load in the training process)
    threads: int = 0                # torch CPU threads per worker (0: torch's default)
    workers: int = 1                # training workers; > 1 runs Ray Train
    strategy: str = "ddp"           # ddp (whole model per worker) | fsdp (sharded; GPUs)
    ray_address: str = ""           # an existing Ray cluster (HOST:PORT or auto)

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data: give a run folder, shards, or a LiveCC JSONL (--data)")
        if not self.out:
            raise ValueError("out: give a folder for checkpoints and metrics (--out)")
        if self.micro_batch < 1 or self.workers < 1 or self.global_batch < 1:
            raise ValueError("global_batch, micro_batch and workers must be >= 1")
        if self.global_batch % (self.micro_batch * self.workers):
            raise ValueError(f"global_batch ({self.global_batch}) must be a multiple of micro_batch x workers "
                             f"({self.micro_batch} x {self.workers})")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, not {self.attention!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, not {self.device!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.checkpoint_every < 1:
            raise ValueError("lr must be > 0, min_lr_ratio within [0, 1], checkpoint_every >= 1")


def data_source(data: str) -> str:
    """The JSONL or shards `data` names (a run folder means its shards/), checked without reading the
    shards' indexes: ValueError when there is nothing to train on."""
    from training.loader import shard_tars

    if "://" not in data and "{" not in data and not Path(data).exists():
        raise ValueError(f"{data}: no such run, shards or JSONL (build a run with `make sft-set` or "
                         f"`make pretrain-set` first)")
    if data.endswith(".jsonl"):
        return data
    if "://" not in data and (Path(data) / "shards").is_dir():
        data = str(Path(data) / "shards")
    shard_tars(data)
    return data


def data_refs(data: str) -> list:
    from training.loader import jsonl_refs, shard_refs

    source = data_source(data)
    return jsonl_refs([source]) if source.endswith(".jsonl") else shard_refs(source)


def epoch_refs(refs: list, seed: int, epoch: int) -> list:
    """The epoch's order: a seeded permutation of every sample (the same for any worker count)."""
    import random

    order = list(refs)
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return order


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(cfg: TrainConfig, keep_model: list | None = None) -> dict:
    """One worker's training loop (all workers run it). Returns the last step's metrics; the trained
    model is appended to `keep_model` when given (for use in the same process)."""
    import torch
    from torch.utils.data import DataLoader

    from training.batches import collate, packing
    from training.loader import ClipStream
    from training.model import load_model, loss_model, resolve
    from training.packer import ChatPieces
    from training.tokenizer import PACKAGE, load_tokenizer

    env = Parallel(cfg.strategy)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cfg.device == "cuda" else "cpu")
    tokenizer = load_tokenizer(cfg.tokenizer or (PACKAGE if cfg.model == TINY else cfg.model))
    pieces = ChatPieces(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else pieces.special["<|endoftext|>"]
    last = checkpoint.latest(cfg.out)       # resume: the model folder of the last whole checkpoint
    # float32 master weights and optimizer state; the forward and backward pass in `compute`
    compute, attention = resolve(cfg.device, cfg.dtype, cfg.attention)
    model = load_model(str(last / "model") if last else cfg.model, "float32", attention, cfg.seed,
                       cfg.device).to(device)
    if cfg.freeze_vision:
        model.model.visual.requires_grad_(False)
    net = env.wrap(loss_model(model), model, device, compute)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    refs = data_refs(cfg.data)
    per_epoch = len(refs) // cfg.global_batch
    if per_epoch == 0:
        raise ValueError(f"{cfg.data}: {len(refs)} samples, fewer than one global batch ({cfg.global_batch})")
    total = cfg.max_steps or per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total, cfg.min_lr_ratio))
    accum = cfg.global_batch // (cfg.micro_batch * env.world)

    step, data_state = 0, None
    if last is not None:
        env.load_optimizer(model, optimizer, last / "optimizer.pt")
        trainer = torch.load(last / "trainer.pt", weights_only=False)
        scheduler.load_state_dict(trainer["scheduler"])
        step = trainer["step"]
        mine = checkpoint.load_rank_state(last, env.rank)
        checkpoint.set_rng_state(mine["rng"])
        data_state = mine["data"]
    metrics = Metrics(Path(cfg.out) / "metrics.jsonl", step, env.rank == 0)
    progress = _progress(total, step, env.rank == 0)
    result: dict = {}
    while step < total:
        epoch = step // per_epoch
        stream = ClipStream(epoch_refs(refs, cfg.seed, epoch), packing(pieces, cfg.with_context),
                            workers=max(1, cfg.loader_workers), rank=env.rank, world_size=env.world,
                            batch_size=cfg.micro_batch)
        stream.set_epoch(epoch)
        if data_state is not None and data_state["epoch"] == epoch:   # not when it stopped at an epoch's end
            stream.load_state_dict(data_state)
        data_state = None
        batches = iter(DataLoader(stream, batch_size=None, num_workers=cfg.loader_workers))
        while step < total and step // per_epoch == epoch:
            t0 = time.perf_counter()
            micro = [next(batches) for _ in range(accum)]
            collated = [collate(b["samples"], pad_id) for b in micro]
            labelled = env.sum(sum(float((c["labels"][:, 1:] != IGNORE).sum()) for c in collated))
            loss_sum = 0.0
            for i, batch in enumerate(collated):
                with env.micro_step(net, last=i == accum - 1):
                    loss, _ = net(batch)
                    (loss * env.world / max(labelled, 1.0)).backward()
                loss_sum += float(loss.detach())
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            for b in micro:
                stream.update(b)
            step += 1
            tokens = env.sum(sum(float(c["attention_mask"].sum()) for c in collated))
            result = {"step": step, "loss": env.sum(loss_sum) / max(labelled, 1.0), "lr": lr,
                      "tokens": int(tokens), "labelled": int(labelled), "samples": cfg.global_batch,
                      "seconds": time.perf_counter() - t0}
            metrics.add(result)
            progress.update(1)
            progress.set_postfix(loss=f"{result['loss']:.3f}")
            if step % cfg.checkpoint_every == 0 or step == total:
                _save(cfg, env, step, model, tokenizer, optimizer, scheduler, stream)
    progress.close()
    if keep_model is not None:
        keep_model.append(model)
    return result


def _save(cfg: TrainConfig, env: Parallel, step: int, model: Any, tokenizer: Any, optimizer: Any,
          scheduler: Any, stream: Any) -> None:
    import torch

    weights, state = env.full_state(model, optimizer)      # every rank takes part (FSDP gathers)

    def write_main(tmp: Path) -> None:
        from transformers.utils import logging

        logging.disable_progress_bar()
        model.save_pretrained(tmp / "model", state_dict=weights)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(state, tmp / "optimizer.pt")
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "config": dataclasses.asdict(cfg)},
                   tmp / "trainer.pt")

    checkpoint.save(cfg.out, step, env.rank, env.barrier, {"rng": checkpoint.rng_state(), "data": stream.state_dict()},
                    write_main, keep=cfg.keep_checkpoints)


class Metrics:
    """OUT/metrics.jsonl on rank 0; a resumed job first drops the lines after its checkpoint's step."""

    def __init__(self, path: Path, resumed_step: int, writer: bool) -> None:
        self.path, self.writer = path, writer
        if not writer:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in (path.read_text().splitlines() if path.exists() else [])
                if line.strip() and json.loads(line)["step"] <= resumed_step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    def add(self, row: dict) -> None:
        if self.writer:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def _progress(total: int, done: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", disable=not show, file=sys.stderr)


def launch(cfg: TrainConfig) -> dict:
    """Train in this process (one worker) or with Ray Train (several, or on a cluster)."""
    if cfg.workers == 1 and not cfg.ray_address:
        return train(cfg)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address=cfg.ray_address or None, ignore_reinit_error=True, log_to_driver=True)
    trainer = TorchTrainer(
        _ray_worker, train_loop_config=dataclasses.asdict(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.device == "cuda" else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.device == "cuda"),
        run_config=RunConfig(storage_path=str(Path(cfg.out).resolve() / "ray"), name="train"))
    trainer.fit()
    lines = (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _ray_worker(config: dict) -> None:
    train(TrainConfig(**config))


def load_config(profile: str | None, values: dict) -> TrainConfig:
    from pipeline.config import ConfigError, build_dataclass

    merged: dict = {}
    if profile:
        path = Path(profile) if profile.endswith((".yaml", ".yml")) else PROFILES / f"{profile}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
            raise ConfigError(f"unknown training profile {profile!r}; known: {known} (or a YAML path)")
        merged.update(yaml.safe_load(path.read_text()) or {})
    merged.update(values)
    return build_dataclass(TrainConfig, merged, "train")


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--model")
    parser.add_argument("--profile", help="profiles/train/<name>.yaml or a YAML path")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--ray-address")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    values = {k: v for k, v in {"data": args.data, "out": args.out, "model": args.model, "workers": args.workers,
                                "ray_address": args.ray_address}.items() if v is not None}
    try:
        for item in args.set:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. lr=1e-5")
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        cfg = load_config(args.profile, values)
        data_source(cfg.data)   # a missing or empty data source fails here, before any model loads
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = launch(cfg)
    print(f"trained to step {last.get('step')}: loss {last.get('loss', float('nan')):.4f}; "
          f"checkpoint {checkpoint.latest(cfg.out)}; metrics {Path(cfg.out) / 'metrics.jsonl'}")
    print(throughput(Path(cfg.out) / "metrics.jsonl"))
    return 0


def throughput(metrics: Path) -> str:
    """Tokens/s and samples/s over the logged steps (the first step left out: it warms up)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()][1:]
    seconds = sum(r["seconds"] for r in rows)
    if not rows or seconds <= 0:
        return "throughput: too few steps to measure"
    return (f"throughput over steps {rows[0]['step']}-{rows[-1]['step']}: "
            f"{sum(r['tokens'] for r in rows) / seconds:.0f} tokens/s, {sum(r['samples'] for r in rows) / seconds:.2f} "
            f"samples/s ({seconds / len(rows):.2f} s a step)")


if __name__ == "__main__":
    raise SystemExit(main())
