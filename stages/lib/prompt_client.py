"""How the prompt stage asks: one backend, one rate limit and one pool of request threads per worker,
shared by every part the worker runs; each reply lands in the reply cache the moment it arrives."""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stages.lib import llm_backends, lm
from stages.lib.llm_backends import BackendError, Reply, Request
from stages.lib.prompt_tasks import BadReply, Task
from stages.lib.rate_limit import GaveUp, RateLimiter, RetryPolicy, call_with_retries
from stages.lib.reply_cache import ReplyCache


@dataclasses.dataclass
class Answer:
    """One task's outcome for one row, and what it cost."""

    keep: bool | None = None
    verdict: str | None = None
    columns: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None


def local_model(model: str) -> str:
    """The GGUF file the local backend reads; ValueError says what to change."""
    if model == lm.PACKAGE_MODEL:
        return str(lm.package_gguf())
    if not model.endswith(".gguf") or not Path(model).is_file():
        raise ValueError(f"backend local reads a GGUF file: model must be {lm.PACKAGE_MODEL} or a path to a "
                         f".gguf file, got {model!r}")
    return model


def parse_answer(task: Task, text: str | None, problem: str | None) -> Answer:
    """The task's verdict and columns from a reply text, or an Answer with the bad_reply reason."""
    try:
        if problem:
            raise BadReply(problem, text)
        keep, columns = task.parse(text)
    except BadReply as exc:
        return Answer(error=str(exc))
    verdict = None
    if task.decision:
        verdict = task.decision["keep"] if keep else task.decision["drop"]
    return Answer(keep=keep, verdict=verdict, columns=columns)


def answer_from_cache(task: Task, entries: list[dict], config: Any) -> Answer | None:
    """The newest cached reply that parses under the task's current rules (None: ask again)."""
    for entry in reversed(entries):
        answer = parse_answer(task, entry.get("text"), entry.get("problem"))
        if answer.error is None:
            answer.cached = 1
            answer.prompt_tokens = int(entry.get("prompt_tokens") or 0)
            answer.completion_tokens = int(entry.get("completion_tokens") or 0)
            answer.model = entry.get("model") or config.model
            return answer
    return None


class PromptClient:
    def __init__(self, config: Any, key: str | None = None) -> None:
        self.config = config
        self.secret = key
        self.backend = make_backend(config, self.secret)
        self.limiter = RateLimiter(config.requests_per_min, config.tokens_per_min)
        self.policy = RetryPolicy(config.max_attempts, config.backoff_s, config.max_backoff_s,
                                  config.max_retry_after_s)
        threads = config.concurrency if config.backend == "openai" else 1
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prompt")

    def ask_all(self, asks: list[tuple[Any, Task, Request, str]], cache: ReplyCache) -> dict[Any, Answer]:
        """asks: (position, task, request, cache key) -> {position: Answer}."""
        if getattr(self.backend, "batched", False):   # vLLM: the whole part in one generate call
            try:
                replies = self.backend.complete_many([request for _, _, request, _ in asks])
            except Exception as exc:
                return {pos: Answer(error=self._clean(f"backend_error: {type(exc).__name__}: {exc}"), requests=1)
                        for pos, _, _, _ in asks}
            return {pos: self._answer(task, key, reply, 1, cache)
                    for (pos, task, _, key), reply in zip(asks, replies, strict=True)}
        futures = {pos: self.pool.submit(self.ask, task, request, key, cache) for pos, task, request, key in asks}
        return {pos: future.result() for pos, future in futures.items()}

    def ask(self, task: Task, request: Request, key: str, cache: ReplyCache) -> Answer:
        sent = 0

        def send() -> Reply:
            nonlocal sent
            sent += 1
            return self.backend.complete(request)

        estimate = sum(len(m["content"]) for m in request.messages) // 3 + request.max_tokens
        try:
            reply, _ = call_with_retries(send, self.limiter, self.policy, estimate)
        except GaveUp as exc:
            return Answer(error=self._clean(str(exc)), requests=sent)
        except BackendError as exc:
            return Answer(error=self._clean(f"{exc.code}: {exc}"), requests=sent)
        except Exception as exc:   # a client bug or an unexpected reply shape: this row only
            return Answer(error=self._clean(f"backend_error: {type(exc).__name__}: {exc}"), requests=sent)
        if reply.prompt_tokens or reply.completion_tokens:
            self.limiter.settle(estimate, reply.prompt_tokens + reply.completion_tokens)
        return self._answer(task, key, reply, sent, cache)

    def _answer(self, task: Task, key: str, reply: Reply, sent: int, cache: ReplyCache) -> Answer:
        text, problem, model = (self._clean(v) for v in (reply.text, reply.problem, reply.model or self.config.model))
        cache.add({"key": key, "task": task.name, "backend": self.config.backend, "model": model, "text": text,
                   "problem": problem, "prompt_tokens": reply.prompt_tokens,
                   "completion_tokens": reply.completion_tokens})
        answer = parse_answer(task, text, problem)
        answer.requests = sent
        answer.prompt_tokens, answer.completion_tokens = reply.prompt_tokens, reply.completion_tokens
        answer.model = model
        return answer

    def _clean(self, text: str | None) -> str | None:
        """Text as it may be stored: the key masked, should an endpoint echo it."""
        if text and self.secret:
            return text.replace(self.secret, "***")
        return text


def make_backend(config: Any, secret: str | None):
    if config.backend == "openai":
        return llm_backends.OpenAIBackend(
            config.base_url, config.model, secret, auth_header=config.auth_header, api_version=config.api_version,
            timeout_s=config.timeout_s, reply_format=config.reply_format, sampling=config.sampling,
            max_tokens_param=config.max_tokens_param, connections=config.concurrency)
    if config.backend == "local":
        return llm_backends.LocalBackend(local_model(config.model), threads=config.cpu_threads,
                                         context=config.context, sampling=config.sampling)
    return llm_backends.VllmBackend(config.model, sampling=config.sampling)
