"""Training checkpoints, written atomically: a job killed at any moment restarts from the last whole one.

    OUT/checkpoints/step-000020/
        model/            the model as `save_pretrained` writes it (+ the tokenizer): loadable on its own
        optimizer.pt      optimizer state
        trainer.pt        step, epoch, scheduler state
        rank-00000.pt     per rank: RNG states and the data loader's state
    OUT/checkpoints/latest    the name of the newest whole checkpoint

Every rank writes its own file into `step-N.tmp/`, then rank 0 writes the rest, renames the folder to
`step-N` and only then points `latest` at it (each rename atomic), so `latest` never names a partial
checkpoint. OUT must be one folder all ranks see (a shared filesystem on a cluster).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np


def folder(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def latest(out: str | Path) -> Path | None:
    pointer = folder(out) / "latest"
    if not pointer.exists():
        return None
    path = folder(out) / pointer.read_text().strip()
    return path if path.is_dir() else None


def rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out: str | Path, step: int, rank: int, barrier: Callable[[], None], rank_state: dict,
         write_main: Callable[[Path], None], keep: int = 2) -> None:
    """Every rank calls this at the same step. `write_main(tmp)` (rank 0 only) writes the model,
    optimizer and trainer files into the temporary folder."""
    import torch

    root = folder(out)
    name = f"step-{step:06d}"
    tmp = root / f"{name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)      # left by a job killed while writing it
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rank_state, tmp / f"rank-{rank:05d}.pt")
    barrier()
    if rank == 0:
        write_main(tmp)
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / "latest.tmp"
        pointer.write_text(name)
        os.replace(pointer, root / "latest")
        for old in sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_rank_state(path: Path, rank: int) -> dict:
    import torch

    return torch.load(path / f"rank-{rank:05d}.pt", weights_only=False)
