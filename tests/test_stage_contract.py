"""Engine pieces of the stage contract: pass-through schemas, the column check before a run, and the
actor pool that lets one worker run several parts at once."""
import pyarrow as pa
import pytest

from manifests.schemas import CAPTION_WORDS, DOWNLOAD, PROMPT
from pipeline import config
from pipeline.config import ConfigError
from pipeline.runner import ActorPool, check_columns
from pipeline.stage import Resources, Stage


def test_a_passthrough_stage_keeps_its_input_columns_and_adds_its_own():
    stage = config.stage_class("prompt")(config.stage_class("prompt").Config())
    out = stage.output_schema(CAPTION_WORDS)
    assert out.names[:3] == ["id", "status", "reason"]
    assert [n for n in out.names if n in CAPTION_WORDS.names] == CAPTION_WORDS.names
    assert set(PROMPT.names) <= set(out.names)
    assert "query" in out.names and out.field("query").type == pa.string()
    # an input that already has one of the stage's columns does not get it twice
    again = stage.output_schema(out)
    assert again.names == out.names


def test_a_stage_placed_after_one_that_lacks_its_columns_fails_before_the_run():
    cfg = config.load("sft")
    stages = [cfg.stage(n) for n in ("metadata_filter", "download")] + [cfg.stage("prompt")]
    with pytest.raises(ConfigError, match="prompt reads words, which download does not write"):
        check_columns(stages)
    assert DOWNLOAD.get_field_index("words") < 0
    check_columns([cfg.stage(n) for n in cfg.stages])   # the profile's own order is fine


class _FakeActor:
    created = 0

    @classmethod
    def options(cls, **_):
        return cls

    @classmethod
    def remote(cls, _stage):
        cls.created += 1
        return object()


class _Concurrent(Stage):
    name = "fake"

    def resources(self) -> Resources:
        return Resources(cpus=0.5, actor=True, concurrency=3)


def test_one_actor_takes_up_to_its_concurrency_of_parts():
    _FakeActor.created = 0
    pool = ActorPool(_FakeActor, _Concurrent(None))
    first = [pool.take() for _ in range(3)]
    assert len({id(a) for a in first}) == 1 and _FakeActor.created == 1
    fourth = pool.take()
    assert fourth is not first[0] and _FakeActor.created == 2
    for actor in first:
        pool.give_back(actor)
    assert [a for a, _ in pool.idle] == [first[0]]     # idle only once all its parts are back
    assert pool.take() is fourth                        # a busy actor with a free slot comes first
