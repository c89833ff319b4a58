"""The streaming loader: split by rank and worker, shuffled, batched by tokens, and resumed exactly."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.loader import ClipStream, StreamState, jsonl_refs, read_ref

ROOT = Path(__file__).resolve().parent.parent
torch = pytest.importorskip("torch")


def write_jsonl(path: Path, n: int) -> None:
    prefix = path.stem
    """n LiveCC-style rows whose assistant streams have 1..13 words; the last line holds the byte offsets."""
    lines, offsets, size = [], [], 0
    for i in range(n):
        words = [[k, k + 0.5, f"w{i}_{k}"] for k in range(1 + i * 7 % 13)]
        row = [{"role": "user", "content": [{"type": "video", "video": f"{prefix}{i}.mp4"}, {"type": "text", "text": "é"}]},
               {"role": "assistant", "content": [{"type": "text_stream", "text_stream": words}]}]
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        offsets.append(size)
        size += len(line)
        lines.append(line)
    path.write_bytes(b"".join(lines) + json.dumps(offsets).encode() + b"\n")


def load(conversation) -> dict:
    words = conversation[1]["content"][0]["text_stream"]
    return {"id": conversation[0]["content"][0]["video"], "input_ids": list(range(len(words) + 2))}


def batches(stream: ClipStream, workers: int, state: StreamState, limit: int | None = None) -> list[list[str]]:
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    out = []
    for batch in loader:
        out.append([s["id"] for s in batch["samples"]])
        state.update(batch)
        if limit is not None and len(out) >= limit:
            break
    return out


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jsonl")
    write_jsonl(folder / "a.jsonl", 30)
    write_jsonl(folder / "b.jsonl", 17)
    return jsonl_refs([str(folder / "a.jsonl"), str(folder / "b.jsonl")])


def stream(refs, workers, state=None, rank=0, world=1):
    return ClipStream(refs, load, workers=workers, rank=rank, world_size=world, seed=3, shuffle_buffer=8,
                      max_tokens=24, state=state)


def test_every_sample_once_split_by_rank_and_worker(refs):
    seen = []
    for rank in range(2):
        got = batches(stream(refs, 2, rank=rank, world=2), 2, StreamState(2))
        seen += [i for b in got for i in b]
    assert len(seen) == len(refs) == 47
    assert sorted(seen) == sorted([f"a{i}.mp4" for i in range(30)] + [f"b{i}.mp4" for i in range(17)])


def test_batches_hold_the_token_budget_and_the_shuffle_is_seeded(refs):
    def ids(seed):
        return [[x["id"] for x in b["samples"]]
                for b in ClipStream(refs, load, seed=seed, shuffle_buffer=8, max_tokens=24)]

    plain = list(ClipStream(refs, load, seed=3, shuffle_buffer=8, max_tokens=24))
    for batch in plain:
        size = sum(len(x["input_ids"]) for x in batch["samples"])
        assert size <= 24 or len(batch["samples"]) == 1
    assert ids(3) == [[x["id"] for x in b["samples"]] for b in plain]
    assert ids(4) != ids(3) and sorted(sum(ids(4), [])) == sorted(sum(ids(3), []))
    assert sum(ids(3), []) != [load(c)["id"] for c in map(read_ref, refs)]   # shuffled


@pytest.mark.parametrize("stop", [1, 4, 7])
def test_resume_from_state_continues_the_sequence(refs, stop):
    full = batches(stream(refs, 2), 2, StreamState(2))
    state = StreamState(2)
    first = batches(stream(refs, 2), 2, state, limit=stop)
    saved = StreamState.from_state_dict(json.loads(json.dumps(state.state_dict())))
    rest = batches(stream(refs, 2, state=saved), 2, saved)
    assert first + rest == full


def test_resume_through_the_datasets_own_state_dict(refs):
    """The same, through ClipStream.update / state_dict / load_state_dict, and a new epoch reshuffles."""
    def run(data, limit=None):
        out = []
        for batch in torch.utils.data.DataLoader(data, batch_size=None, num_workers=2):
            data.update(batch)
            out.append([s["id"] for s in batch["samples"]])
            if limit is not None and len(out) >= limit:
                break
        return out

    full = run(stream(refs, 2))
    first_run = stream(refs, 2)
    first = run(first_run, limit=5)
    resumed = stream(refs, 2)
    resumed.load_state_dict(json.loads(json.dumps(first_run.state_dict())))
    assert first + run(resumed) == full
    with pytest.raises(ValueError, match="2 workers"):
        stream(refs, 3).load_state_dict(first_run.state_dict())
    resumed.set_epoch(1)
    again = run(resumed)
    assert again != full and sorted(sum(again, [])) == sorted(sum(full, []))


SCRIPT = """
import json, os, sys
sys.path.insert(0, {root!r})
import torch
from tests.test_loader import StreamState, jsonl_refs, stream
refs = jsonl_refs({paths!r})
path = {progress!r}
progress = json.load(open(path)) if os.path.exists(path) else {{"batches": [], "state": StreamState(2).state_dict()}}
state = StreamState.from_state_dict(progress["state"])
loader = torch.utils.data.DataLoader(stream(refs, 2, state=state), batch_size=None, num_workers=2)
for batch in loader:
    state.update(batch)
    # a training step, then its checkpoint: the batches trained on and the loader state, in one atomic file
    progress = {{"batches": progress["batches"] + [[s["id"] for s in batch["samples"]]], "state": state.state_dict()}}
    with open(path + ".tmp", "w") as f:
        json.dump(progress, f)
    os.replace(path + ".tmp", path)
    if {slow}:
        import time; time.sleep(0.2)
"""


def test_sigkill_mid_epoch_then_resume(refs, tmp_path):
    paths = sorted({p for p, _ in refs})
    full = batches(stream(refs, 2), 2, StreamState(2))
    progress = str(tmp_path / "progress.json")
    script = lambda slow: SCRIPT.format(root=str(ROOT), paths=paths, progress=progress, slow=slow)  # noqa: E731
    proc = subprocess.Popen([sys.executable, "-c", script(True)], start_new_session=True)
    deadline = time.time() + 60
    while not os.path.exists(progress) or len(json.load(open(progress))["batches"]) < 3:
        assert time.time() < deadline and proc.poll() is None, "the loader ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.load(open(progress))["batches"]
    assert 3 <= len(before) < len(full)
    done = subprocess.run([sys.executable, "-c", script(False)], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.load(open(progress))["batches"] == full      # no sample twice, none skipped, same order


def test_no_shards_is_an_error_not_an_empty_epoch(tmp_path):
    from training.loader import shard_refs

    (tmp_path / "part-00000-0000.tar").write_bytes(b"")   # a tar without its index is not a shard
    with pytest.raises(ValueError, match="no shard"):
        shard_refs(str(tmp_path))
    with pytest.raises(ValueError, match="no shard"):
        shard_refs(str(tmp_path / "missing"))
