"""Parts done per stage while a run goes: tqdm bars on a terminal; elsewhere (a log file, CI, a pipe) one
plain line per stage that moved, every `every` seconds, so a log holds lines rather than redraws."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class StageProgress:
    def __init__(self, names: list[str], total: int, enabled: bool = True, stream: TextIO | None = None,
                 every: float = 5.0) -> None:
        self.names, self.total, self.every = names, total, every
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = [0] * len(names)
        self.shown = [0] * len(names)
        self.started = self.last = time.monotonic()
        self.bars = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bars = [tqdm(total=total, desc=f"{name:<19}", position=i, leave=True, unit="part",
                              dynamic_ncols=True, file=self.stream) for i, name in enumerate(names)]

    def update(self, index: int, n: int = 1) -> None:
        self.done[index] += n
        if self.bars is not None:
            self.bars[index].update(n)

    def tick(self, force: bool = False) -> None:
        """Prints the stages that moved since the last lines, when `every` seconds passed (plain mode)."""
        now = time.monotonic()
        if not self.enabled or self.bars is not None or (not force and now - self.last < self.every):
            return
        self.last = now
        for i, name in enumerate(self.names):
            if self.done[i] != self.shown[i]:
                self.shown[i] = self.done[i]
                print(f"[{now - self.started:7.1f}s] {name:<19} {self.done[i]}/{self.total} parts",
                      file=self.stream, flush=True)

    def close(self) -> None:
        if self.bars is not None:
            for bar in self.bars:
                bar.close()
        else:
            self.tick(force=True)
