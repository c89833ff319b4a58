"""Chat-completion backends of the prompt stage: one `complete(request) -> Reply` each.

- `OpenAIBackend`: any OpenAI-compatible endpoint (OpenAI, Azure OpenAI, a vLLM or llama.cpp server)
  over plain httpx. Why not the `openai` client: the stage owns retries, rate limits and Retry-After
  (the client has its own retry loop to switch off), needs the status and headers of every failure,
  and must also talk to servers that are only roughly compatible; httpx is one small dependency.
- `LocalBackend`: llama.cpp in process (`xllamacpp`, prebuilt CPU wheels) reading a GGUF file; output
  constrained to the reply's JSON schema by a grammar, so every reply parses.
- `VllmBackend`: vLLM offline batch inference on a GPU node (the `vllm` extra), with guided JSON.

Failures map to `rate_limit.Transient` (retried) or `BackendError` (the row fails now; the next run
retries it). A reply that came back but is not usable (no choices, a refusal, cut at max_tokens, a
body that is not JSON) is a `Reply` with `problem` set: the stage turns it into a `bad_reply` row.
"""
from __future__ import annotations

import email.utils
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from stages.lib.rate_limit import Transient

RETRIED_STATUS = {408, 409, 500, 502, 503, 504, 520, 522, 524, 529}


class BackendError(Exception):
    """A failure that retrying now will not fix (HTTP 4xx, a backend error); `code` is the reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Request:
    messages: list[dict]
    schema: Mapping[str, Any]
    schema_name: str
    max_tokens: int


@dataclass
class Reply:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    problem: str | None = None      # why the reply is unusable before parsing (None: parse it)
    model: str | None = None
    extra: dict = field(default_factory=dict)


def reply_from_completion(data: Any) -> Reply:
    """A chat.completion object (OpenAI's shape, also llama.cpp's and vLLM's servers') as a Reply."""
    if not isinstance(data, dict):
        return Reply(None, problem="the response is not a JSON object")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    reply = Reply(None, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")),
                  model=data.get("model") if isinstance(data.get("model"), str) else None)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        reply.problem = "the response has no choices"
        return reply
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    reply.text = message.get("content") if isinstance(message.get("content"), str) else None
    if message.get("refusal"):
        reply.problem = f"refusal: {str(message['refusal'])[:200]}"
    elif choice.get("finish_reason") == "length":
        reply.problem = "cut at max_tokens (finish_reason length)"
    elif choice.get("finish_reason") == "content_filter":
        reply.problem = "withheld by the content filter"
    elif reply.text is None:
        reply.problem = "the message has no content"
    return reply


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None when absent."""
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def response_format(kind: str, request: Request) -> dict | None:
    if kind == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": dict(request.schema), "strict": True}}
    if kind == "json_object":
        return {"type": "json_object"}
    return None


class OpenAIBackend:
    def __init__(self, base_url: str, model: str, api_key: str | None, *, auth_header: str = "bearer",
                 api_version: str | None = None, timeout_s: float = 60.0, reply_format: str = "json_schema",
                 sampling: Mapping[str, Any] | None = None, max_tokens_param: str = "max_tokens",
                 connections: int = 16) -> None:
        import httpx

        headers = {}
        if api_key:
            headers = {"Authorization": f"Bearer {api_key}"} if auth_header == "bearer" else {"api-key": api_key}
        self.model, self.reply_format = model, reply_format
        self.sampling, self.max_tokens_param = dict(sampling or {}), max_tokens_param
        self.params = {"api-version": api_version} if api_version else {}
        self.timeout_s = timeout_s
        self.client = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers,
                                   timeout=httpx.Timeout(timeout_s),
                                   limits=httpx.Limits(max_connections=connections,
                                                       max_keepalive_connections=connections))

    def body(self, request: Request) -> dict:
        body = {"model": self.model, "messages": request.messages, self.max_tokens_param: request.max_tokens,
                **self.sampling}
        fmt = response_format(self.reply_format, request)
        if fmt:
            body["response_format"] = fmt
        return body

    def complete(self, request: Request) -> Reply:
        import httpx

        try:
            response = self.client.post("chat/completions", json=self.body(request), params=self.params)
        except httpx.TimeoutException:
            raise Transient("timeout", f"no reply within timeout_s {self.timeout_s:g}") from None
        except httpx.TransportError as exc:
            raise Transient("connection_error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}") from None
        status = response.status_code
        if status == 429:
            raise Transient("rate_limited", "HTTP 429", retry_after(response.headers))
        if status in RETRIED_STATUS or status >= 500:
            raise Transient("server_error", f"HTTP {status}", retry_after(response.headers))
        if status in (401, 403):
            raise BackendError("http_error", f"HTTP {status}: the endpoint refused the key (check prompt.api_key_env)")
        if status >= 400:
            raise BackendError("http_error", f"HTTP {status}: {_error_message(response)}")
        try:
            data = response.json()
        except ValueError:
            return Reply(response.text[:2000], problem="the response body is not JSON")
        return reply_from_completion(data)

    def close(self) -> None:
        self.client.close()


def _error_message(response: Any) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = response.text
    return " ".join(str(message or "").split())[:200]


class LocalBackend:
    """llama.cpp in this process. One context per worker; requests run one at a time (the lock): on a
    CPU a second sequence would only share the same cores."""

    def __init__(self, gguf: str, *, threads: int = 1, context: int = 4096,
                 sampling: Mapping[str, Any] | None = None) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = gguf
        params.n_ctx = context
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.warmup = False
        params.verbosity = -1   # llama.cpp logs every slot step otherwise
        self.server = xllamacpp.Server(params)
        self.sampling = dict(sampling or {})
        self.lock = threading.Lock()

    def complete(self, request: Request) -> Reply:
        body = {"messages": request.messages, "max_tokens": request.max_tokens, **self.sampling,
                "response_format": response_format("json_schema", request)}
        with self.lock:
            data = self.server.handle_chat_completions(body)
        if isinstance(data, dict) and data.get("error"):
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise BackendError("backend_error", " ".join(str(message).split())[:200])
        return reply_from_completion(data)

    def close(self) -> None:
        self.server = None


class VllmBackend:
    """vLLM offline inference on a GPU (GPU nodes; not exercised by the CPU tests)."""

    batched = True

    def __init__(self, model: str, *, sampling: Mapping[str, Any] | None = None, dtype: str = "auto") -> None:
        from vllm import LLM

        self.llm = LLM(model=model, dtype=dtype)
        self.sampling = dict(sampling or {})

    def complete_many(self, requests: list[Request]) -> list[Reply]:
        from vllm import SamplingParams

        params = []
        for request in requests:
            guided = _guided_json(request.schema)
            params.append(SamplingParams(max_tokens=request.max_tokens, temperature=self.sampling.get("temperature", 0.0),
                                         top_p=self.sampling.get("top_p", 1.0), seed=self.sampling.get("seed"),
                                         **guided))
        outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        replies = []
        for out in outputs:
            completion = out.outputs[0]
            reply = Reply(completion.text, len(out.prompt_token_ids or ()), len(completion.token_ids or ()))
            if completion.finish_reason == "length":
                reply.problem = "cut at max_tokens (finish_reason length)"
            replies.append(reply)
        return replies

    def complete(self, request: Request) -> Reply:
        return self.complete_many([request])[0]

    def close(self) -> None:
        self.llm = None


def _guided_json(schema: Mapping[str, Any]) -> dict:
    """Guided decoding arguments across vLLM versions (structured_outputs in new ones)."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=dict(schema))}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=dict(schema))}
