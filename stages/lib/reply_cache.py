"""The prompt stage's reply cache: every reply a backend returned, kept in the run folder.

Layout: `RUN/prompt/_replies/part-NNNNN/`. Each reply is written the moment it arrives as a file of its
own (`r-<time>-<random>.json`, atomic), so a run killed mid-part keeps every reply it was sent; when the
part is done they are merged into `replies.jsonl` (written atomically, then the single files removed: a
kill in between leaves an entry twice, which reading deduplicates). Entries are keyed by the request's
identity (task template and schema, backend, model, sampling, the rendered prompt): a rerun, a resumed
run or a re-decision finds its answer by key and sends nothing. Bad replies are kept too (they were
paid for and show what the model said); the stage parses every entry again when it reads them.
"""
from __future__ import annotations

import json
import threading
import time
import uuid

from pipeline.store import RunStore, part_name

MERGED = "replies.jsonl"


class ReplyCache:
    def __init__(self, store: RunStore, stage: str, part: int) -> None:
        self.store = store
        self.folder = store.path(stage, "_replies", part_name(part))
        self.lock = threading.Lock()

    def load(self) -> dict[str, list[dict]]:
        """key -> entries, oldest first."""
        entries: dict[tuple, dict] = {}
        for path in self._files():
            try:
                with self.store.fs.open(path, "rb") as f:
                    lines = f.read().decode("utf-8", "replace").splitlines()
            except FileNotFoundError:     # merged away by a concurrent compaction
                continue
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    entries[(entry["key"], entry.get("at"), entry.get("nonce"))] = entry
        by_key: dict[str, list[dict]] = {}
        for entry in sorted(entries.values(), key=lambda e: e.get("at") or 0):
            by_key.setdefault(entry["key"], []).append(entry)
        return by_key

    def add(self, entry: dict) -> dict:
        entry = {**entry, "at": time.time(), "nonce": uuid.uuid4().hex[:8]}
        name = f"r-{time.time_ns()}-{entry['nonce']}.json"
        self.store.write_bytes(f"{self.folder}/{name}", json.dumps(entry, ensure_ascii=False).encode())
        return entry

    def merge(self) -> None:
        """One file for the part: the merged entries, then the single-reply files removed."""
        with self.lock:
            singles = [p for p in self._files() if not p.endswith("/" + MERGED)]
            if not singles:
                return
            entries = [e for group in self.load().values() for e in group]
            text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
            self.store.write_bytes(f"{self.folder}/{MERGED}", text.encode())
            for path in singles:
                self.store.remove(path)

    def _files(self) -> list[str]:
        if not self.store.exists(self.folder):
            return []
        names = [p for p in self.store.fs.ls(self.folder, detail=False)]
        return sorted(p for p in names if p.rsplit("/", 1)[-1].startswith(("r-", MERGED)))
