"""A streaming, resumable PyTorch `IterableDataset` of training samples.

Items are references until they are used (a LiveCC JSONL file and a row's byte offset; a shard tar and
a sample's offset in it, from the Parquet index beside the tar), so splitting, shuffling and skipping
never read a video:
- split: rank `r` of `world_size` takes every world_size-th reference, and DataLoader worker `w` of `W`
  every W-th of those;
- shuffle: a seeded buffer of `shuffle_buffer` references per worker (seed, epoch, rank, worker);
- batches: samples are loaded (`load(row)`: e.g. frames + packer) and grouped until `max_tokens` (a
  sample longer than the budget goes alone) or `batch_size`;
- resume: every batch says which worker made it and how many references that worker has consumed;
  `StreamState` (on the training process) keeps that and the next worker in DataLoader's round-robin
  order. A dataset built with that state skips exactly the consumed references and rotates the worker
  order, so the batches after a restart are the rest of the uninterrupted sequence.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

# a PyTorch dataset: this module is imported by training code only, never by the pipeline's CLI
from torch.utils.data import IterableDataset

from training.livecc_jsonl import read_offsets

Ref = tuple[str, int]


def jsonl_refs(paths: Sequence[str]) -> list[Ref]:
    return [(path, offset) for path in paths for offset in read_offsets(path)]


def read_ref(ref: Ref) -> Any:
    """A LiveCC JSONL row (a conversation), or a shard sample ({extension: bytes}) for a `.tar`."""
    import json

    import fsspec

    path, offset = ref
    with fsspec.open(path, "rb") as f:
        f.seek(offset)
        if path.endswith(".tar"):
            return read_tar_sample(f)
        return json.loads(f.readline())


def shard_refs(shards: str | Sequence[str]) -> list[Ref]:
    """Every sample of a run's shards, tar by tar, from the Parquet index beside each tar (key, offset).
    `shards`: a folder that can be listed (`RUN/shards`, local or an fsspec URL such as s3://...), or
    tar URLs (a list, or a brace pattern as webdataset takes: `https://host/shards/part-{00000..00003}-0000.tar`)
    for stores that cannot list, such as plain http."""
    import fsspec
    import pyarrow.parquet as pq

    refs: list[Ref] = []
    for tar in shard_tars(shards):
        with fsspec.open(tar[:-len(".tar")] + ".parquet", "rb") as f:
            offsets = pq.read_table(f, columns=["offset"]).column("offset").to_pylist()
        refs.extend((tar, offset) for offset in offsets)
    return refs


def shard_tars(shards: str | Sequence[str]) -> list[str]:
    """The tar URLs `shard_refs` reads (a folder listed by its Parquet indexes, or expanded patterns),
    without reading an index; ValueError when there is none."""
    import fsspec
    from braceexpand import braceexpand

    if not isinstance(shards, str):
        tars = [url for pattern in shards for url in braceexpand(pattern)]
    elif shards.endswith(".tar"):
        tars = list(braceexpand(shards))
    else:
        fs, root = fsspec.core.url_to_fs(shards)
        protocol = "" if "://" not in shards else shards.split("://", 1)[0] + "://"
        tars = [protocol + index[:-len(".parquet")] + ".tar" for index in sorted(fs.glob(f"{root.rstrip('/')}/*.parquet"))]
    if not tars:
        raise ValueError(f"no shard (a .tar with its .parquet index) in {shards!r}")
    return tars


def read_tar_sample(f: Any) -> dict[str, bytes]:
    """The members of the sample whose first header is at the file's position: {extension: bytes}."""
    import tarfile

    sample: dict[str, bytes] = {}
    key = None
    while True:
        header = f.read(tarfile.BLOCKSIZE)
        if len(header) < tarfile.BLOCKSIZE or header == tarfile.NUL * tarfile.BLOCKSIZE:
            break
        info = tarfile.TarInfo.frombuf(header, "ascii", "strict")
        name_key, _, extension = info.name.partition(".")
        if key is not None and name_key != key:
            break
        key = name_key
        sample[extension] = f.read(info.size)
        f.read(-info.size % tarfile.BLOCKSIZE)
    if not sample:
        raise ValueError("no tar member at this offset")
    return {"__key__": key.encode(), **sample}


def shuffled(items: Sequence[Ref], buffer: int, rng: random.Random) -> Iterator[Ref]:
    """A shuffle buffer: fill `buffer` items, then emit a random one for each new item."""
    if buffer <= 1:
        yield from items
        return
    pool: list[Ref] = []
    for item in items:
        pool.append(item)
        if len(pool) >= buffer:
            yield pool.pop(rng.randrange(len(pool)))
    while pool:
        yield pool.pop(rng.randrange(len(pool)))


def sample_tokens(sample: Any) -> int:
    """Tokens of a sample: a Packed clip, or a dict with `input_ids`."""
    ids = sample.input_ids if hasattr(sample, "input_ids") else sample["input_ids"]
    return len(ids)


@dataclass
class StreamState:
    """What the training process records per batch; `state_dict()` is what a checkpoint stores."""

    workers: int
    epoch: int = 0
    consumed: dict[int, int] = field(default_factory=dict)   # logical worker -> references consumed
    next_worker: int = 0

    def update(self, batch: dict) -> None:
        self.consumed[batch["worker"]] = batch["consumed"]
        self.next_worker = (batch["worker"] + 1) % self.workers

    def state_dict(self) -> dict:
        return {"workers": self.workers, "epoch": self.epoch, "next_worker": self.next_worker,
                "consumed": {str(k): v for k, v in self.consumed.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "StreamState":
        return cls(workers=state["workers"], epoch=state["epoch"], next_worker=state["next_worker"],
                   consumed={int(k): v for k, v in state["consumed"].items()})


class ClipStream(IterableDataset):
    def __init__(self, refs: Sequence[Ref], load: Callable[[Any], Any], *, workers: int = 1, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle_buffer: int = 0, max_tokens: int | None = None,
                 batch_size: int | None = None, tokens: Callable[[Any], int] | None = None,
                 read: Callable[[Ref], Any] = read_ref, state: StreamState | None = None) -> None:
        if (max_tokens is None) == (batch_size is None):
            raise ValueError("give max_tokens (a token budget per batch) or batch_size, not both")
        if state is not None and state.workers != workers:
            raise ValueError(f"the state was saved with {state.workers} workers; resume with as many")
        self.refs, self.load, self.read, self.tokens = list(refs), load, read, tokens or sample_tokens
        self.workers, self.rank, self.world_size = workers, rank, world_size
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.state = state or StreamState(workers)

    # The training process's record of progress (DataLoader workers hold copies of the dataset): call
    # `update(batch)` for every batch it trains on, save `state_dict()` with the checkpoint, and
    # `load_state_dict()` before iterating again.
    def update(self, batch: dict) -> None:
        self.state.update(batch)

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, state: dict) -> None:
        loaded = StreamState.from_state_dict(state)
        if loaded.workers != self.workers:
            raise ValueError(f"the state was saved with {loaded.workers} workers; resume with as many")
        self.state = loaded

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning (its own shuffle order)."""
        self.state = StreamState(self.workers, epoch=epoch)

    def worker_refs(self, worker: int) -> list[Ref]:
        mine = self.refs[self.rank::self.world_size][worker::self.workers]
        rng = random.Random(f"{self.seed}/{self.state.epoch}/{self.rank}/{worker}")
        return list(shuffled(mine, self.shuffle_buffer, rng))

    def __iter__(self) -> Iterator[dict]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        physical, count = (info.id, info.num_workers) if info else (0, 1)
        if count != self.workers:
            raise ValueError(f"ClipStream(workers={self.workers}) runs in a DataLoader with {count} workers")
        # DataLoader asks its workers in turn from worker 0: rotate so that it asks the one that was next
        worker = (physical + self.state.next_worker) % self.workers
        refs = self.worker_refs(worker)
        done = self.state.consumed.get(worker, 0)
        batch: list[dict] = []
        used = 0
        for ref in refs[done:]:
            sample = self.load(self.read(ref))
            done += 1
            size = self.tokens(sample)
            if batch and (self.batch_size is not None and len(batch) >= self.batch_size
                          or self.max_tokens is not None and used + size > self.max_tokens):
                yield {"samples": batch, "worker": worker, "consumed": done - 1}
                batch, used = [], 0
            batch.append(sample)
            used += size
        if batch:
            yield {"samples": batch, "worker": worker, "consumed": done}
