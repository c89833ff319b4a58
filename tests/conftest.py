import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The sample corpus, built once (it is also the default source of `make pretrain-set`)."""
    from synth.corpus import build_samples
    from pipeline.source import default_source_dir

    return build_samples(default_source_dir() / "build").parent


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the in-process runs of the session (2 CPUs, like CI)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()
